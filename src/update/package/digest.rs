//! SHA-256 for the bulk of package verification, from ring's assembly implementation.
//!
//! Why not `sha2`: verifying a package hashes every payload byte twice and the image once, and
//! on CPUs without SHA extensions (common in gateways, and the benchmark machine) `sha2`'s
//! portable code ran at 102 MB/s against ring's 261 MB/s (`tests/bench/firmware.sh` profile:
//! 85 % of a pull's CPU was SHA-256). ring is already linked for TLS. Small digests (key ids,
//! manifest identity) keep using `sha2`, and the tests compute expected digests with `sha2`, so
//! the two implementations check each other.

use ring::digest::{Context, SHA256};

/// A running SHA-256 the package reader feeds the whole payload into. The reader is sans-IO
/// and hashes inline ([`Sha256`]); the daemon plugs in one that hashes on another core, so the
/// whole-payload hash costs no time on the verifying thread.
pub trait StreamDigest: Send + Sync + std::fmt::Debug {
    /// Hashes more bytes.
    fn update(&mut self, data: &[u8]);
    /// Hashes the bytes in `data`, which it may keep; returns a buffer for the caller to reuse
    /// (`data` itself, or an earlier one; its contents are stale). For digests that work
    /// elsewhere, this saves the copy `update` has to make.
    fn update_owned(&mut self, data: Vec<u8>) -> Vec<u8> {
        self.update(&data);
        data
    }
    /// The digest of everything given.
    fn finish(self: Box<Self>) -> [u8; 32];
}

impl StreamDigest for Sha256 {
    fn update(&mut self, data: &[u8]) {
        Self::update(self, data);
    }

    fn finish(self: Box<Self>) -> [u8; 32] {
        self.finalize()
    }
}

/// An incremental SHA-256.
#[derive(Clone)]
pub struct Sha256(Context);

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha256")
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    /// An empty hash.
    pub fn new() -> Self {
        Self(Context::new(&SHA256))
    }

    /// Hashes more bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest.
    pub fn finalize(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }

    /// The digest of `data`.
    pub fn digest(data: &[u8]) -> [u8; 32] {
        let mut h = Self::new();
        h.update(data);
        h.finalize()
    }
}

#[cfg(test)]
mod tests {
    use sha2::Digest as _;

    use super::Sha256;

    #[test]
    fn agrees_with_sha2_in_pieces() {
        let data: Vec<u8> = (0..200_003u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let expected: [u8; 32] = sha2::Sha256::digest(&data).into();
        assert_eq!(Sha256::digest(&data), expected);
        let mut h = Sha256::new();
        for piece in data.chunks(4093) {
            h.update(piece);
        }
        assert_eq!(h.clone().finalize(), expected);
        assert_eq!(
            Sha256::digest(b""),
            <[u8; 32]>::from(sha2::Sha256::digest(b""))
        );
    }
}

//! Shared by the package tests: a fixed test key, packages built with it, a sink that records
//! what reached it, and helpers to craft signed packages the builder would never make.

use std::io::Cursor;
use std::sync::Arc;

use ed25519_dalek::{Signer as _, SigningKey};
use sha2::{Digest as _, Sha256};

use super::builder::{BuildOptions, build};
use super::{
    ChunkInfo, Compression, Header, ImageSink, Manifest, PackageError, PackageReader, Policy,
    TrustedKeys, Verified,
};

pub(crate) const COMPATIBLE: &str = "acme-gw-x86";

pub(crate) fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[0x5a; 32])
}

pub(crate) fn other_key() -> SigningKey {
    SigningKey::from_bytes(&[0xa5; 32])
}

pub(crate) fn trusted() -> Arc<TrustedKeys> {
    let mut keys = TrustedKeys::new();
    keys.add_key(signing_key().verifying_key());
    Arc::new(keys)
}

pub(crate) fn policy() -> Policy {
    Policy {
        compatible: COMPATIBLE.into(),
        min_security_version: 3,
        max_image_size: 1 << 30,
    }
}

pub(crate) fn options(compression: Compression, chunk_size: u32) -> BuildOptions {
    BuildOptions {
        compatible: COMPATIBLE.into(),
        name: "acme-os".into(),
        version: "2026.11.1".into(),
        security_version: 5,
        compression,
        chunk_size,
    }
}

/// A deterministic image that compresses somewhat (text-like runs with noise), like a rootfs.
pub(crate) fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if (i / 64) % 3 == 0 {
                (x & 0xff) as u8
            } else {
                b"lwm2md firmware "[i % 16]
            }
        })
        .collect()
}

/// Builds a package with the test key.
pub(crate) fn package(image: &[u8], options: &BuildOptions) -> (Vec<u8>, Manifest) {
    package_with(image, options, &signing_key())
}

pub(crate) fn package_with(
    image: &[u8],
    options: &BuildOptions,
    key: &SigningKey,
) -> (Vec<u8>, Manifest) {
    let mut out = Vec::new();
    let manifest = build(
        &mut &image[..],
        &mut Cursor::new(Vec::new()),
        &mut out,
        options,
        key,
    )
    .expect("build");
    (out, manifest)
}

/// Header + manifest + signature for `manifest` exactly as given (no consistency check), then
/// `payload`: how a forger holding the key (or a buggy signer) would make one.
pub(crate) fn assemble(manifest: &Manifest, payload: &[u8], key: &SigningKey) -> Vec<u8> {
    let encoded = manifest.encode();
    let mut out = Header::encode(encoded.len() as u32).to_vec();
    out.extend_from_slice(&encoded);
    let signature = key.sign(&out);
    out.extend_from_slice(&signature.to_bytes());
    out.extend_from_slice(payload);
    out
}

/// A signed package whose chunks are `stored` verbatim (correct chunk hashes), declaring
/// `image_size` bytes in chunks of `chunk_size`. The whole hashes are those of the stored bytes
/// and of `image` (what the chunks are supposed to inflate to).
pub(crate) fn raw_package(
    compression: Compression,
    chunk_size: u32,
    image: &[u8],
    stored: &[Vec<u8>],
) -> Vec<u8> {
    let payload: Vec<u8> = stored.concat();
    let manifest = Manifest {
        format: 1,
        key_id: super::keys::key_id(&signing_key().verifying_key()).0,
        compatible: COMPATIBLE.into(),
        name: "raw".into(),
        version: "1".into(),
        security_version: 5,
        compression,
        payload_size: payload.len() as u64,
        payload_sha256: Sha256::digest(&payload).into(),
        image_size: image.len() as u64,
        image_sha256: Sha256::digest(image).into(),
        chunk_size,
        chunks: stored
            .iter()
            .map(|s| ChunkInfo {
                stored_len: s.len() as u32,
                sha256: Sha256::digest(s).into(),
            })
            .collect(),
    };
    assemble(&manifest, &payload, &signing_key())
}

/// Records what reached it, and checks the reader's promises as it goes: `begin` once and
/// first, chunks in order at contiguous offsets.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    pub(crate) begun: Option<Manifest>,
    pub(crate) chunks: Vec<u32>,
    pub(crate) image: Vec<u8>,
    /// Image offset where the first chunk landed (non-zero after a resume).
    pub(crate) start: Option<u64>,
    /// Makes `chunk` fail at this index.
    pub(crate) fail_at: Option<u32>,
}

impl ImageSink for Recorder {
    fn begin(&mut self, manifest: &Verified<Manifest>) -> Result<(), PackageError> {
        assert!(self.begun.is_none(), "begin twice");
        self.begun = Some(manifest.get().clone());
        Ok(())
    }

    fn chunk(&mut self, index: u32, image_offset: u64, data: &[u8]) -> Result<(), PackageError> {
        assert!(self.begun.is_some(), "chunk before begin");
        if self.fail_at == Some(index) {
            return Err(PackageError::Sink("disk on fire".into()));
        }
        if let Some(&last) = self.chunks.last() {
            assert_eq!(index, last + 1, "chunks out of order");
        }
        let start = *self.start.get_or_insert(image_offset);
        assert_eq!(
            image_offset,
            start + self.image.len() as u64,
            "gap in image"
        );
        self.chunks.push(index);
        self.image.extend_from_slice(data);
        Ok(())
    }
}

/// Feeds `package` in pieces of the given sizes (cycled; the rest in one piece if empty).
pub(crate) fn read_in_pieces(
    package: &[u8],
    pieces: &[usize],
    keys: Arc<TrustedKeys>,
    policy: Policy,
) -> (Result<Verified<Manifest>, PackageError>, Recorder) {
    let mut reader = PackageReader::new(keys, policy);
    let mut sink = Recorder::default();
    let mut rest = package;
    let mut sizes = pieces.iter().copied().cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (piece, tail) = rest.split_at(n);
        if let Err(e) = reader.feed(piece, &mut sink) {
            return (Err(e), sink);
        }
        rest = tail;
    }
    let result = reader.finish(&mut sink);
    (result, sink)
}

/// Feeds the whole package at once with the test key and policy.
pub(crate) fn read(package: &[u8]) -> (Result<Verified<Manifest>, PackageError>, Recorder) {
    read_in_pieces(package, &[], trusted(), policy())
}

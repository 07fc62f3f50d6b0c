//! The signed package format (v1): a header, a manifest signed with ed25519, and a payload cut
//! into independently compressed chunks, each with its SHA-256 in the manifest — so a package is
//! verified before a single payload byte is used, every chunk is checked as it streams, and an
//! interrupted transfer resumes at a verified chunk boundary.
//!
//! Layout (every integer big-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `LWM2MPKG` |
//! | 8 | 2 | format version, 1 |
//! | 10 | 2 | reserved, 0 |
//! | 12 | 4 | manifest length `M` (1 ..= `MAX_MANIFEST`) |
//! | 16 | `M` | manifest (CBOR map, see [`Manifest`]) |
//! | 16 + `M` | 64 | ed25519 signature over bytes `0 .. 16 + M` |
//! | 80 + `M` | … | payload: the chunks, back to back |
//!
//! The README's "Package format" section documents every byte, the manifest keys, resume
//! semantics, key files and how each refusal maps to an Update Result.

pub mod builder;
pub mod digest;
pub mod keys;
pub mod manifest;
pub mod reader;

pub use keys::{KeyId, TrustedKeys};
pub use manifest::{ChunkInfo, Compression, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, Manifest};
pub use reader::{Checks, ImageSink, ImageVerifier, PackageReader, Policy, Verified};

/// `LWM2MPKG`.
pub const MAGIC: [u8; 8] = *b"LWM2MPKG";
/// The only format version so far.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes before the manifest.
pub const HEADER_LEN: usize = 16;
/// Bytes of the signature after the manifest.
pub const SIGNATURE_LEN: usize = 64;
/// Largest manifest accepted (a 2 GiB image in 64 KiB chunks needs about 1.3 MiB).
pub const MAX_MANIFEST: u32 = 4 << 20;

/// Why a package is refused. `update_result()` gives the /5/0/5 (and /9) result it causes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    /// Not an lwm2md package (wrong magic).
    #[error("not an lwm2md package (bad magic)")]
    BadMagic,
    /// A format version this build does not know.
    #[error("package format {0} is not supported")]
    UnsupportedFormat(u16),
    /// The manifest length field is zero or too large.
    #[error("manifest length {0} is out of range")]
    ManifestLength(u32),
    /// The manifest does not parse or is inconsistent (sizes, chunk table).
    #[error("malformed manifest: {0}")]
    Malformed(String),
    /// The manifest names a key we do not trust.
    #[error("signed with unknown key {0}")]
    UnknownKey(String),
    /// The manifest names a revoked key.
    #[error("signed with revoked key {0}")]
    RevokedKey(String),
    /// The signature does not verify (`verify_strict`).
    #[error("bad signature")]
    BadSignature,
    /// The package is for other hardware or another OS.
    #[error("package is for {got:?}, this device is {expected:?}")]
    Incompatible {
        /// Our compatible string.
        expected: String,
        /// The package's.
        got: String,
    },
    /// The anti-rollback version is lower than the installed one.
    #[error("downgrade refused: security version {got} < {floor}")]
    Downgrade {
        /// The lowest version we accept.
        floor: u64,
        /// The package's.
        got: u64,
    },
    /// The image does not fit the target slot.
    #[error("image of {size} bytes does not fit the slot ({capacity} bytes)")]
    TooLarge {
        /// Image size.
        size: u64,
        /// Slot capacity.
        capacity: u64,
    },
    /// Chunk `index` does not match its hash: corrupted or forged in transit.
    #[error("chunk {index} does not match its hash")]
    ChunkHash {
        /// Which chunk.
        index: u32,
    },
    /// The whole-payload hash does not match.
    #[error("payload hash mismatch")]
    PayloadHash,
    /// The decompressed image does not match its hash or size.
    #[error("image hash or size mismatch")]
    ImageHash,
    /// A chunk does not decompress, or to the wrong size.
    #[error("chunk {index} does not decompress: {reason}")]
    Decompress {
        /// Which chunk.
        index: u32,
        /// Why.
        reason: String,
    },
    /// The package ended early.
    #[error("package truncated")]
    Truncated,
    /// Bytes after the last chunk.
    #[error("data after the end of the payload")]
    TrailingData,
    /// The sink (slot writer) failed.
    #[error("writing the image failed: {0}")]
    Sink(String),
    /// The sink ran out of space.
    #[error("no space left for the image: {0}")]
    NoSpace(String),
    /// `skip_to_chunk` was called at the wrong moment or past the last chunk.
    #[error("cannot resume: {0}")]
    Resume(String),
    /// Reading the image or writing the package failed (the builder only).
    #[error("I/O error: {0}")]
    Io(String),
}

impl From<std::io::Error> for PackageError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e.to_string())
    }
}

impl PackageError {
    /// The Firmware Update Result this refusal is reported as.
    ///
    /// - 2 (not enough storage): the image does not fit the slot, or the slot ran out of space.
    /// - 6 (unsupported package type): well-formed and possibly authentic, but not for this
    ///   device: not our format, a format version we do not know, another compatible string,
    ///   or a security version below the installed one. Retrying the same package can never
    ///   succeed, and the server should pick another package, not re-send this one.
    /// - 8 (update failed): our side failed (writing the slot, the builder's I/O).
    /// - 5 (integrity) for everything else: the package is not what its signer made (bad or
    ///   untrusted signature, revoked key, malformed or inconsistent manifest, a chunk or the
    ///   whole payload or image not matching its hash, bad compression, truncation, trailing
    ///   bytes, a resume that does not fit the package).
    pub fn update_result(&self) -> u8 {
        use super::result;
        match self {
            Self::TooLarge { .. } | Self::NoSpace(_) => result::NO_SPACE,
            Self::BadMagic
            | Self::UnsupportedFormat(_)
            | Self::Incompatible { .. }
            | Self::Downgrade { .. } => result::UNSUPPORTED_TYPE,
            Self::Sink(_) | Self::Io(_) => result::UPDATE_FAILED,
            Self::ManifestLength(_)
            | Self::Malformed(_)
            | Self::UnknownKey(_)
            | Self::RevokedKey(_)
            | Self::BadSignature
            | Self::ChunkHash { .. }
            | Self::PayloadHash
            | Self::ImageHash
            | Self::Decompress { .. }
            | Self::Truncated
            | Self::TrailingData
            | Self::Resume(_) => result::INTEGRITY,
        }
    }
}

/// The fixed 16-byte header, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version (always [`FORMAT_VERSION`] once parsed).
    pub version: u16,
    /// Manifest length `M`.
    pub manifest_len: u32,
}

impl Header {
    /// Parses and checks the header: magic, version, reserved field, manifest length.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Self, PackageError> {
        // Destructuring the fixed-size array: no index can go out of bounds.
        let [
            m0,
            m1,
            m2,
            m3,
            m4,
            m5,
            m6,
            m7,
            v0,
            v1,
            r0,
            r1,
            l0,
            l1,
            l2,
            l3,
        ] = *bytes;
        if [m0, m1, m2, m3, m4, m5, m6, m7] != MAGIC {
            return Err(PackageError::BadMagic);
        }
        let version = u16::from_be_bytes([v0, v1]);
        let reserved = u16::from_be_bytes([r0, r1]);
        let manifest_len = u32::from_be_bytes([l0, l1, l2, l3]);
        if version != FORMAT_VERSION {
            return Err(PackageError::UnsupportedFormat(version));
        }
        if reserved != 0 {
            return Err(PackageError::Malformed(format!(
                "reserved header field is {reserved:#06x}, not 0"
            )));
        }
        if manifest_len == 0 || manifest_len > MAX_MANIFEST {
            return Err(PackageError::ManifestLength(manifest_len));
        }
        Ok(Self {
            version,
            manifest_len,
        })
    }

    /// Encodes the header for a manifest of `manifest_len` bytes.
    pub fn encode(manifest_len: u32) -> [u8; HEADER_LEN] {
        let [m0, m1, m2, m3, m4, m5, m6, m7] = MAGIC;
        let [v0, v1] = FORMAT_VERSION.to_be_bytes();
        let [l0, l1, l2, l3] = manifest_len.to_be_bytes();
        [m0, m1, m2, m3, m4, m5, m6, m7, v0, v1, 0, 0, l0, l1, l2, l3]
    }

    /// Offset of the first payload byte.
    pub fn payload_start(&self) -> u64 {
        (HEADER_LEN + SIGNATURE_LEN) as u64 + u64::from(self.manifest_len)
    }
}

/// What a package's first bytes say, read *without* trusting them (`lwm2md-package inspect`):
/// header, manifest and signature are parsed, nothing is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    /// The header.
    pub header: Header,
    /// The manifest as decoded (strictly, but its signature is not checked).
    pub manifest: Manifest,
    /// The signature bytes.
    pub signature: [u8; SIGNATURE_LEN],
}

impl Unverified {
    /// Parses header, manifest and signature from the start of a package; `prefix` must hold at
    /// least `HEADER_LEN + M + SIGNATURE_LEN` bytes (more is ignored).
    pub fn parse(prefix: &[u8]) -> Result<Self, PackageError> {
        let head: &[u8; HEADER_LEN] = prefix
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(PackageError::Truncated)?;
        let header = Header::parse(head)?;
        let m = header.manifest_len as usize;
        let manifest = prefix
            .get(HEADER_LEN..HEADER_LEN + m)
            .ok_or(PackageError::Truncated)?;
        let signature = prefix
            .get(HEADER_LEN + m..HEADER_LEN + m + SIGNATURE_LEN)
            .and_then(|s| <[u8; SIGNATURE_LEN]>::try_from(s).ok())
            .ok_or(PackageError::Truncated)?;
        Ok(Self {
            header,
            manifest: Manifest::decode(manifest)?,
            signature,
        })
    }
}

/// Lowercase hex of `bytes` (key ids, hashes in JSON).
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;

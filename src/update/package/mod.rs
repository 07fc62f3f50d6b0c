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
//! (Implementation: another engineer; this file fixes the API the rest of the code uses.)

pub mod builder;
pub mod keys;
pub mod manifest;
pub mod reader;

pub use keys::{KeyId, TrustedKeys};
pub use manifest::{ChunkInfo, Compression, Manifest};
pub use reader::{ImageSink, PackageReader, Policy, Verified};

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
}

impl PackageError {
    /// The Firmware Update Result this refusal is reported as.
    pub fn update_result(&self) -> u8 {
        use super::result;
        match self {
            Self::TooLarge { .. } | Self::NoSpace(_) => result::NO_SPACE,
            Self::BadMagic
            | Self::UnsupportedFormat(_)
            | Self::Incompatible { .. }
            | Self::Downgrade { .. } => result::UNSUPPORTED_TYPE,
            Self::Sink(_) => result::UPDATE_FAILED,
            _ => result::INTEGRITY,
        }
    }
}

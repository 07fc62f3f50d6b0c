//! The manifest: what a package is for, what it contains, and the hash of every chunk. Encoded
//! as a CBOR map with text keys (minicbor), documented byte by byte in the README.

use serde::{Deserialize, Serialize};

/// How each payload chunk is compressed (every chunk independently, so any chunk boundary is a
/// resume point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    /// Stored as is.
    None,
    /// One zstd frame per chunk.
    Zstd,
    /// One gzip member per chunk.
    Gzip,
}

/// One payload chunk: its stored (possibly compressed) length and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkInfo {
    /// Bytes of this chunk in the payload.
    pub stored_len: u32,
    /// SHA-256 of those bytes.
    pub sha256: [u8; 32],
}

/// The signed description of a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format (1).
    pub format: u16,
    /// The signing key's id.
    pub key_id: String,
    /// The hardware/OS this image is for; must equal the device's configured string.
    pub compatible: String,
    /// Package name (/5/0/6).
    pub name: String,
    /// Package version (/5/0/7).
    pub version: String,
    /// Anti-rollback version: never lower than the installed one.
    pub security_version: u64,
    /// Compression of every chunk.
    pub compression: Compression,
    /// Payload bytes (sum of the chunks' stored lengths).
    pub payload_size: u64,
    /// SHA-256 of the whole payload.
    pub payload_sha256: [u8; 32],
    /// Image bytes after decompression (what is written to the slot).
    pub image_size: u64,
    /// SHA-256 of the image.
    pub image_sha256: [u8; 32],
    /// Image bytes per chunk (every chunk but the last decompresses to exactly this).
    pub chunk_size: u32,
    /// The chunks in payload order.
    pub chunks: Vec<ChunkInfo>,
}

impl Manifest {
    /// Encodes as the canonical CBOR map.
    pub fn encode(&self) -> Vec<u8> {
        todo!("Manifest::encode")
    }

    /// Decodes and checks internal consistency (sizes add up, chunk count matches).
    pub fn decode(_bytes: &[u8]) -> Result<Self, super::PackageError> {
        todo!("Manifest::decode")
    }

    /// Offset of chunk `index` in the payload.
    pub fn chunk_offset(&self, _index: u32) -> u64 {
        todo!("Manifest::chunk_offset")
    }
}

//! Creating packages (used by `lwm2md-package create`): chunk, compress and hash an image, then
//! write header, signed manifest and payload. Streams the image twice (hash pass, write pass) and
//! never holds it in memory.

use std::io::{Read, Seek, Write};

use super::{Compression, Manifest, PackageError};

/// What goes into a package besides the image.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Compatible string.
    pub compatible: String,
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: String,
    /// Anti-rollback version.
    pub security_version: u64,
    /// Chunk compression.
    pub compression: Compression,
    /// Image bytes per chunk.
    pub chunk_size: u32,
}

/// Builds a package from `image` into `out`, signed with `key`. `scratch` holds the compressed
/// payload between the passes.
pub fn build(
    _image: &mut dyn Read,
    _scratch: &mut (impl Read + Write + Seek),
    _out: &mut dyn Write,
    _options: &BuildOptions,
    _key: &ed25519_dalek::SigningKey,
) -> Result<Manifest, PackageError> {
    todo!("builder::build")
}

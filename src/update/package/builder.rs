//! Creating packages (used by `lwm2md-package create`): chunk, compress and hash an image, then
//! write header, signed manifest and payload. Streams the image twice (hash pass, write pass) and
//! never holds it in memory.
//!
//! Pass 1 reads the image one chunk at a time, compresses each chunk, hashes it (chunk, payload
//! and image hashes) and appends the stored bytes to `scratch`. Only then is the manifest known,
//! and it comes first in the package, so pass 2 writes header, manifest and signature to `out`
//! and copies the payload from `scratch` behind them. Memory: one chunk and its compressed form.

use std::io::{Read, Seek, SeekFrom, Write};

use super::digest::Sha256;
use ed25519_dalek::Signer as _;

use super::manifest::{MANIFEST_FORMAT, max_stored_len};
use super::{
    ChunkInfo, Compression, HEADER_LEN, Header, MAX_MANIFEST, Manifest, PackageError, keys,
};

/// The chunk size `lwm2md-package create` uses unless told otherwise: small enough that a
/// resumed transfer loses little and the device buffers little, large enough that per-chunk
/// compression still works well and the manifest stays small (40 bytes per chunk).
pub const DEFAULT_CHUNK_SIZE: u32 = 256 << 10;

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
///
/// `scratch` is rewound and written from its start; only the bytes written here are read back,
/// so it need not be empty. Returns the manifest that was signed.
pub fn build(
    image: &mut dyn Read,
    scratch: &mut (impl Read + Write + Seek),
    out: &mut dyn Write,
    options: &BuildOptions,
    key: &ed25519_dalek::SigningKey,
) -> Result<Manifest, PackageError> {
    let chunk_size = options.chunk_size;
    if !(super::MIN_CHUNK_SIZE..=super::MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(PackageError::Malformed(format!(
            "chunk size {chunk_size} outside {}..={}",
            super::MIN_CHUNK_SIZE,
            super::MAX_CHUNK_SIZE
        )));
    }
    scratch.seek(SeekFrom::Start(0))?;
    let payload = compress_pass(image, scratch, options.compression, chunk_size)?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        key_id: keys::key_id(&key.verifying_key()).0,
        compatible: options.compatible.clone(),
        name: options.name.clone(),
        version: options.version.clone(),
        security_version: options.security_version,
        compression: options.compression,
        payload_size: payload.payload_size,
        payload_sha256: payload.payload_sha256,
        image_size: payload.image_size,
        image_sha256: payload.image_sha256,
        chunk_size,
        chunks: payload.chunks,
    };
    // The reader will hold the package to these rules: refuse to sign anything it would refuse.
    manifest.check()?;
    write_head(&manifest, key, out)?;
    scratch.seek(SeekFrom::Start(0))?;
    copy_exact(scratch, out, manifest.payload_size)?;
    out.flush()?;
    Ok(manifest)
}

/// What pass 1 learns.
struct Payload {
    chunks: Vec<ChunkInfo>,
    payload_size: u64,
    payload_sha256: [u8; 32],
    image_size: u64,
    image_sha256: [u8; 32],
}

fn compress_pass(
    image: &mut dyn Read,
    scratch: &mut impl Write,
    compression: Compression,
    chunk_size: u32,
) -> Result<Payload, PackageError> {
    let mut chunk = vec![0u8; chunk_size as usize];
    let mut packed = Vec::new();
    let mut image_hash = Sha256::new();
    let mut payload_hash = Sha256::new();
    let mut chunks = Vec::new();
    let (mut image_size, mut payload_size) = (0u64, 0u64);
    loop {
        let n = read_full(image, &mut chunk)?;
        if n == 0 {
            break;
        }
        let plain = chunk.get(..n).unwrap_or_default();
        image_hash.update(plain);
        image_size += n as u64;
        let stored = compress(compression, plain, &mut packed)?;
        let stored_len = u32::try_from(stored.len())
            .ok()
            .filter(|&l| l <= max_stored_len(chunk_size))
            .ok_or_else(|| {
                PackageError::Malformed(format!(
                    "chunk {} grows to {} bytes when compressed; use compression none",
                    chunks.len(),
                    stored.len()
                ))
            })?;
        if compression != Compression::None {
            // Uncompressed, the payload is the image: its hash is the image hash (below).
            payload_hash.update(stored);
        }
        payload_size += u64::from(stored_len);
        scratch.write_all(stored)?;
        chunks.push(ChunkInfo {
            stored_len,
            sha256: Sha256::digest(stored),
        });
    }
    scratch.flush()?;
    let image_sha256: [u8; 32] = image_hash.finalize();
    let payload_sha256 = match compression {
        Compression::None => image_sha256,
        Compression::Zstd | Compression::Gzip => payload_hash.finalize(),
    };
    Ok(Payload {
        chunks,
        payload_size,
        payload_sha256,
        image_size,
        image_sha256,
    })
}

/// Compresses one chunk into `packed` (reused between chunks) and returns the stored bytes.
fn compress<'a>(
    compression: Compression,
    plain: &'a [u8],
    packed: &'a mut Vec<u8>,
) -> Result<&'a [u8], PackageError> {
    packed.clear();
    match compression {
        Compression::None => return Ok(plain),
        Compression::Zstd => {
            // ruzstd 0.9 implements `Uncompressed` and `Fastest` (≈ zstd level 1) only.
            ruzstd::encoding::compress(
                plain,
                &mut *packed,
                ruzstd::encoding::CompressionLevel::Fastest,
            );
        }
        Compression::Gzip => {
            // Default level 6; GzEncoder writes mtime 0 and no file name, so the output is
            // reproducible.
            let mut gz =
                flate2::write::GzEncoder::new(&mut *packed, flate2::Compression::default());
            gz.write_all(plain)?;
            gz.finish()?;
        }
    }
    Ok(packed.as_slice())
}

/// Writes header, manifest and signature.
fn write_head(
    manifest: &Manifest,
    key: &ed25519_dalek::SigningKey,
    out: &mut dyn Write,
) -> Result<(), PackageError> {
    let encoded = manifest.encode();
    let len = u32::try_from(encoded.len())
        .ok()
        .filter(|&l| l <= MAX_MANIFEST)
        .ok_or_else(|| {
            PackageError::Malformed(format!(
                "manifest of {} bytes ({} chunks) exceeds {MAX_MANIFEST} bytes; use larger chunks",
                encoded.len(),
                manifest.chunks.len()
            ))
        })?;
    let mut signed = Vec::with_capacity(HEADER_LEN + encoded.len());
    signed.extend_from_slice(&Header::encode(len));
    signed.extend_from_slice(&encoded);
    let signature = key.sign(&signed);
    out.write_all(&signed)?;
    out.write_all(&signature.to_bytes())?;
    Ok(())
}

/// Fills `buf` from `r` unless the input ends first; returns the bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> Result<usize, PackageError> {
    let mut filled = 0;
    while let Some(room) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        match r.read(room) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(filled)
}

fn copy_exact(from: &mut impl Read, to: &mut dyn Write, len: u64) -> Result<(), PackageError> {
    let copied = std::io::copy(&mut from.take(len), to)?;
    if copied != len {
        return Err(PackageError::Io(format!(
            "scratch file returned {copied} of {len} payload bytes"
        )));
    }
    Ok(())
}

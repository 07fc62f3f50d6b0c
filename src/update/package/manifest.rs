//! The manifest: what a package is for, what it contains, and the hash of every chunk. Encoded
//! as a CBOR map with text keys (minicbor), documented byte by byte in the README.
//!
//! The encoding is deterministic (RFC 8949 §4.2.1: definite lengths, shortest integer forms,
//! map keys sorted by their encoded bytes), and decoding insists on it: after parsing, the
//! manifest is re-encoded and must give back exactly the bytes that were signed. So one manifest
//! has exactly one byte representation, and no parser differential (duplicate keys, long integer
//! forms, indefinite lengths) can make two readers see different fields under one signature.

use std::convert::Infallible;

use minicbor::{Decoder, Encoder};
use serde::{Deserialize, Serialize};

use super::PackageError;

/// Smallest `chunk_size` (one page: below it the per-chunk overhead dominates).
pub const MIN_CHUNK_SIZE: u32 = 4 << 10;
/// Largest `chunk_size` (the reader buffers one chunk, so this bounds its memory).
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Longest `compatible`, `name` and `version` (bytes; /5/0/6 and /5/0/7 are String 0..255).
pub const MAX_STRING_LEN: usize = 255;
/// The manifest format this build writes and reads.
pub const MANIFEST_FORMAT: u16 = 1;

// Map keys, in the order the deterministic encoding sorts them (shorter keys first, then
// bytewise). `ENCODED_ORDER` is checked against that rule by a unit test.
const K_NAME: &str = "name";
const K_CHUNKS: &str = "chunks";
const K_FORMAT: &str = "format";
const K_KEY_ID: &str = "key_id";
const K_VERSION: &str = "version";
const K_CHUNK_SIZE: &str = "chunk_size";
const K_COMPATIBLE: &str = "compatible";
const K_IMAGE_SIZE: &str = "image_size";
const K_COMPRESSION: &str = "compression";
const K_IMAGE_SHA256: &str = "image_sha256";
const K_PAYLOAD_SIZE: &str = "payload_size";
const K_PAYLOAD_SHA256: &str = "payload_sha256";
const K_SECURITY_VERSION: &str = "security_version";

/// Every key of the manifest map, in encoded order.
pub const ENCODED_ORDER: [&str; 13] = [
    K_NAME,
    K_CHUNKS,
    K_FORMAT,
    K_KEY_ID,
    K_VERSION,
    K_CHUNK_SIZE,
    K_COMPATIBLE,
    K_IMAGE_SIZE,
    K_COMPRESSION,
    K_IMAGE_SHA256,
    K_PAYLOAD_SIZE,
    K_PAYLOAD_SHA256,
    K_SECURITY_VERSION,
];

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

impl Compression {
    /// The manifest's text for it: `none`, `zstd` or `gzip`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Zstd => "zstd",
            Self::Gzip => "gzip",
        }
    }

    /// Parses the manifest's text (exact, lowercase).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "none" => Some(Self::None),
            "zstd" => Some(Self::Zstd),
            "gzip" => Some(Self::Gzip),
            _ => None,
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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

/// Largest stored (compressed) length a chunk of `chunk_size` image bytes may have.
///
/// Incompressible data grows a little under zstd (3 bytes per 128 KiB block plus the frame
/// header and checksum) and gzip (5 bytes per 64 KiB stored block plus 18 bytes of framing);
/// 1/8 plus 1 KiB covers both with a wide margin while still bounding what the reader buffers.
pub fn max_stored_len(chunk_size: u32) -> u32 {
    chunk_size
        .saturating_add(chunk_size / 8)
        .saturating_add(1024)
}

fn malformed(what: impl Into<String>) -> PackageError {
    PackageError::Malformed(what.into())
}

impl Manifest {
    /// Encodes as the canonical CBOR map.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.chunks.len() * 40);
        // A `Vec` writer cannot fail and every value here is encodable, so the only error
        // minicbor could report is impossible; failing loudly beats emitting a short manifest.
        self.encode_into(&mut Encoder::new(&mut out))
            .expect("CBOR encoding into a Vec is infallible");
        out
    }

    fn encode_into(
        &self,
        e: &mut Encoder<&mut Vec<u8>>,
    ) -> Result<(), minicbor::encode::Error<Infallible>> {
        e.map(ENCODED_ORDER.len() as u64)?;
        e.str(K_NAME)?.str(&self.name)?;
        e.str(K_CHUNKS)?.array(self.chunks.len() as u64)?;
        for chunk in &self.chunks {
            e.array(2)?.u32(chunk.stored_len)?.bytes(&chunk.sha256)?;
        }
        e.str(K_FORMAT)?.u16(self.format)?;
        e.str(K_KEY_ID)?.str(&self.key_id)?;
        e.str(K_VERSION)?.str(&self.version)?;
        e.str(K_CHUNK_SIZE)?.u32(self.chunk_size)?;
        e.str(K_COMPATIBLE)?.str(&self.compatible)?;
        e.str(K_IMAGE_SIZE)?.u64(self.image_size)?;
        e.str(K_COMPRESSION)?.str(self.compression.as_str())?;
        e.str(K_IMAGE_SHA256)?.bytes(&self.image_sha256)?;
        e.str(K_PAYLOAD_SIZE)?.u64(self.payload_size)?;
        e.str(K_PAYLOAD_SHA256)?.bytes(&self.payload_sha256)?;
        e.str(K_SECURITY_VERSION)?.u64(self.security_version)?;
        Ok(())
    }

    /// Decodes and checks internal consistency (sizes add up, chunk count matches).
    ///
    /// Strict: a definite-length map holding exactly the thirteen keys, no trailing bytes, every
    /// value of the right type and range, and the bytes must be the canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, super::PackageError> {
        let mut d = Decoder::new(bytes);
        let manifest = Fields::decode(&mut d)?.complete()?;
        if d.position() != bytes.len() {
            return Err(malformed("bytes after the manifest map"));
        }
        manifest.check()?;
        // Catches everything the field parser tolerates but the canonical form forbids (key
        // order, integer widths); see the module comment for why that matters.
        if manifest.encode() != bytes {
            return Err(malformed("not in canonical (deterministic) CBOR encoding"));
        }
        Ok(manifest)
    }

    /// Checks the rules every manifest obeys (the decoder and the builder both call it).
    pub fn check(&self) -> Result<(), PackageError> {
        if self.format != MANIFEST_FORMAT {
            return Err(PackageError::UnsupportedFormat(self.format));
        }
        check_key_id(&self.key_id)?;
        check_string(K_COMPATIBLE, &self.compatible)?;
        check_string(K_NAME, &self.name)?;
        check_string(K_VERSION, &self.version)?;
        if self.compatible.is_empty() {
            return Err(malformed("empty compatible string"));
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(malformed(format!(
                "chunk_size {} outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
                self.chunk_size
            )));
        }
        if self.image_size == 0 {
            return Err(malformed("empty image"));
        }
        self.check_chunk_table()?;
        if self.compression == Compression::None && self.payload_sha256 != self.image_sha256 {
            // Uncompressed, the payload is the image: two different hashes cannot both be right.
            return Err(malformed("uncompressed payload and image hashes differ"));
        }
        Ok(())
    }

    fn check_chunk_table(&self) -> Result<(), PackageError> {
        let expected = self.image_size.div_ceil(u64::from(self.chunk_size));
        if self.chunks.len() as u64 != expected {
            return Err(malformed(format!(
                "{} chunks for an image of {} bytes in chunks of {} (expected {expected})",
                self.chunks.len(),
                self.image_size,
                self.chunk_size
            )));
        }
        let max_stored = max_stored_len(self.chunk_size);
        let mut total: u64 = 0;
        for (index, chunk) in (0u32..).zip(&self.chunks) {
            let image_len = self.chunk_image_len(index);
            let fits = match self.compression {
                // Stored as is: the stored bytes are the image bytes.
                Compression::None => chunk.stored_len == image_len,
                Compression::Zstd | Compression::Gzip => {
                    (1..=max_stored).contains(&chunk.stored_len)
                }
            };
            if !fits {
                return Err(malformed(format!(
                    "chunk {index}: stored length {} is impossible for {image_len} image bytes",
                    chunk.stored_len
                )));
            }
            total = total.saturating_add(u64::from(chunk.stored_len));
        }
        if total != self.payload_size {
            return Err(malformed(format!(
                "chunks add up to {total} payload bytes, payload_size says {}",
                self.payload_size
            )));
        }
        Ok(())
    }

    /// Offset of chunk `index` in the payload. `index` = the chunk count gives `payload_size`;
    /// beyond that it stays there.
    pub fn chunk_offset(&self, index: u32) -> u64 {
        self.chunks
            .iter()
            .take(index as usize)
            .map(|c| u64::from(c.stored_len))
            .sum()
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        // `check` bounds the table by the image size; a table this long cannot exist in a
        // manifest of at most `MAX_MANIFEST` bytes anyway.
        u32::try_from(self.chunks.len()).unwrap_or(u32::MAX)
    }

    /// Offset of chunk `index`'s bytes in the image.
    pub fn chunk_image_offset(&self, index: u32) -> u64 {
        u64::from(index)
            .saturating_mul(u64::from(self.chunk_size))
            .min(self.image_size)
    }

    /// Image bytes chunk `index` decompresses to: `chunk_size`, the remainder for the last one,
    /// 0 past the end.
    pub fn chunk_image_len(&self, index: u32) -> u32 {
        let left = self.image_size - self.chunk_image_offset(index);
        // min() with a u32 keeps the value in range.
        u32::try_from(left.min(u64::from(self.chunk_size))).unwrap_or(self.chunk_size)
    }

    /// The manifest as JSON, hashes in lowercase hex (what `lwm2md-package inspect` prints and
    /// what the test vectors under `tests/fixtures/packages/` hold).
    pub fn to_json(&self) -> serde_json::Value {
        let chunks: Vec<serde_json::Value> = self
            .chunks
            .iter()
            .map(|c| serde_json::json!([c.stored_len, super::to_hex(&c.sha256)]))
            .collect();
        serde_json::json!({
            "format": self.format,
            "key_id": self.key_id,
            "compatible": self.compatible,
            "name": self.name,
            "version": self.version,
            "security_version": self.security_version,
            "compression": self.compression.as_str(),
            "payload_size": self.payload_size,
            "payload_sha256": super::to_hex(&self.payload_sha256),
            "image_size": self.image_size,
            "image_sha256": super::to_hex(&self.image_sha256),
            "chunk_size": self.chunk_size,
            "chunks": chunks,
        })
    }
}

fn check_key_id(id: &str) -> Result<(), PackageError> {
    let hex = id
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if id.len() != 16 || !hex {
        return Err(malformed("key_id is not 16 lowercase hex digits"));
    }
    Ok(())
}

fn check_string(key: &str, value: &str) -> Result<(), PackageError> {
    if value.len() > MAX_STRING_LEN {
        return Err(malformed(format!(
            "{key} is longer than {MAX_STRING_LEN} bytes"
        )));
    }
    Ok(())
}

/// The fields as they are found, before "all present" is established.
#[derive(Default)]
struct Fields {
    format: Option<u16>,
    key_id: Option<String>,
    compatible: Option<String>,
    name: Option<String>,
    version: Option<String>,
    security_version: Option<u64>,
    compression: Option<Compression>,
    payload_size: Option<u64>,
    payload_sha256: Option<[u8; 32]>,
    image_size: Option<u64>,
    image_sha256: Option<[u8; 32]>,
    chunk_size: Option<u32>,
    chunks: Option<Vec<ChunkInfo>>,
}

/// Turns a minicbor error into a refusal that says which field was wrong.
fn cbor(what: &'static str) -> impl Fn(minicbor::decode::Error) -> PackageError {
    move |e| malformed(format!("{what}: {e}"))
}

/// Stores a field, refusing a second occurrence of its key.
fn set<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), PackageError> {
    if slot.replace(value).is_some() {
        return Err(malformed(format!("duplicate key {key:?}")));
    }
    Ok(())
}

fn hash(d: &mut Decoder<'_>, what: &'static str) -> Result<[u8; 32], PackageError> {
    let bytes = d.bytes().map_err(cbor(what))?;
    <[u8; 32]>::try_from(bytes).map_err(|_| malformed(format!("{what} is not 32 bytes")))
}

fn text(d: &mut Decoder<'_>, what: &'static str) -> Result<String, PackageError> {
    let s = d.str().map_err(cbor(what))?;
    if s.len() > MAX_STRING_LEN {
        // Checked here too so an oversized string is never copied.
        return Err(malformed(format!(
            "{what} is longer than {MAX_STRING_LEN} bytes"
        )));
    }
    Ok(s.to_owned())
}

fn definite(len: Option<u64>, what: &'static str) -> Result<u64, PackageError> {
    len.ok_or_else(|| malformed(format!("{what}: indefinite length")))
}

fn chunk_table(d: &mut Decoder<'_>) -> Result<Vec<ChunkInfo>, PackageError> {
    let declared = definite(d.array().map_err(cbor(K_CHUNKS))?, K_CHUNKS)?;
    // The declared count is untrusted: grow with the entries actually present (each takes at
    // least 37 bytes), never pre-allocate from the count.
    let mut chunks = Vec::new();
    for _ in 0..declared {
        let pair = definite(d.array().map_err(cbor("chunk entry"))?, "chunk entry")?;
        if pair != 2 {
            return Err(malformed("chunk entry is not [stored_len, sha256]"));
        }
        let stored_len = d.u32().map_err(cbor("chunk stored_len"))?;
        let sha256 = hash(d, "chunk sha256")?;
        chunks.push(ChunkInfo { stored_len, sha256 });
    }
    Ok(chunks)
}

impl Fields {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, PackageError> {
        let entries = definite(d.map().map_err(cbor("manifest map"))?, "manifest map")?;
        let mut f = Self::default();
        // Bounded by the input: each entry consumes at least two bytes or fails.
        for _ in 0..entries {
            let key = d.str().map_err(cbor("map key"))?;
            f.field(key, d)?;
        }
        Ok(f)
    }

    fn field(&mut self, key: &str, d: &mut Decoder<'_>) -> Result<(), PackageError> {
        match key {
            K_FORMAT => set(&mut self.format, key, d.u16().map_err(cbor(K_FORMAT))?),
            K_KEY_ID => set(&mut self.key_id, key, text(d, K_KEY_ID)?),
            K_COMPATIBLE => set(&mut self.compatible, key, text(d, K_COMPATIBLE)?),
            K_NAME => set(&mut self.name, key, text(d, K_NAME)?),
            K_VERSION => set(&mut self.version, key, text(d, K_VERSION)?),
            K_SECURITY_VERSION => set(
                &mut self.security_version,
                key,
                d.u64().map_err(cbor(K_SECURITY_VERSION))?,
            ),
            K_COMPRESSION => {
                let name = d.str().map_err(cbor(K_COMPRESSION))?;
                let c = Compression::parse(name)
                    .ok_or_else(|| malformed(format!("unknown compression {name:?}")))?;
                set(&mut self.compression, key, c)
            }
            K_PAYLOAD_SIZE => set(
                &mut self.payload_size,
                key,
                d.u64().map_err(cbor(K_PAYLOAD_SIZE))?,
            ),
            K_PAYLOAD_SHA256 => set(&mut self.payload_sha256, key, hash(d, K_PAYLOAD_SHA256)?),
            K_IMAGE_SIZE => set(
                &mut self.image_size,
                key,
                d.u64().map_err(cbor(K_IMAGE_SIZE))?,
            ),
            K_IMAGE_SHA256 => set(&mut self.image_sha256, key, hash(d, K_IMAGE_SHA256)?),
            K_CHUNK_SIZE => set(
                &mut self.chunk_size,
                key,
                d.u32().map_err(cbor(K_CHUNK_SIZE))?,
            ),
            K_CHUNKS => set(&mut self.chunks, key, chunk_table(d)?),
            other => {
                let shown: String = other.chars().take(40).collect();
                Err(malformed(format!("unknown key {shown:?}")))
            }
        }
    }

    fn complete(self) -> Result<Manifest, PackageError> {
        fn need<T>(v: Option<T>, key: &str) -> Result<T, PackageError> {
            v.ok_or_else(|| malformed(format!("missing key {key:?}")))
        }
        Ok(Manifest {
            format: need(self.format, K_FORMAT)?,
            key_id: need(self.key_id, K_KEY_ID)?,
            compatible: need(self.compatible, K_COMPATIBLE)?,
            name: need(self.name, K_NAME)?,
            version: need(self.version, K_VERSION)?,
            security_version: need(self.security_version, K_SECURITY_VERSION)?,
            compression: need(self.compression, K_COMPRESSION)?,
            payload_size: need(self.payload_size, K_PAYLOAD_SIZE)?,
            payload_sha256: need(self.payload_sha256, K_PAYLOAD_SHA256)?,
            image_size: need(self.image_size, K_IMAGE_SIZE)?,
            image_sha256: need(self.image_sha256, K_IMAGE_SHA256)?,
            chunk_size: need(self.chunk_size, K_CHUNK_SIZE)?,
            chunks: need(self.chunks, K_CHUNKS)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Manifest {
        Manifest {
            format: 1,
            key_id: "0123456789abcdef".into(),
            compatible: "acme-gw".into(),
            name: "acme-os".into(),
            version: "1.2.3".into(),
            security_version: 7,
            compression: Compression::Zstd,
            payload_size: 3000 + 1000 + 10,
            payload_sha256: [1; 32],
            image_size: 2 * 4096 + 100,
            image_sha256: [2; 32],
            chunk_size: 4096,
            chunks: vec![
                ChunkInfo {
                    stored_len: 3000,
                    sha256: [3; 32],
                },
                ChunkInfo {
                    stored_len: 1000,
                    sha256: [4; 32],
                },
                ChunkInfo {
                    stored_len: 10,
                    sha256: [5; 32],
                },
            ],
        }
    }

    /// Writes one value into a hand-made manifest.
    type Value<'a> = &'a dyn Fn(&mut Encoder<&mut Vec<u8>>);
    /// Changes a valid manifest into an inconsistent one.
    type Change = fn(&mut Manifest);

    /// Encodes a map from `(key, value-writer)` pairs, for hand-made manifests.
    fn map(entries: &[(&str, Value<'_>)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut e = Encoder::new(&mut out);
        e.map(entries.len() as u64).unwrap();
        for (k, v) in entries {
            e.str(k).unwrap();
            v(&mut e);
        }
        out
    }

    fn err(bytes: &[u8]) -> String {
        match Manifest::decode(bytes) {
            Err(PackageError::Malformed(m)) => m,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn keys_are_in_deterministic_order() {
        // RFC 8949 §4.2.1: sorted by the bytes of the encoded key, i.e. shorter text first,
        // then bytewise.
        let encoded = |k: &str| {
            let mut v = Vec::new();
            Encoder::new(&mut v).str(k).unwrap();
            v
        };
        assert!(
            ENCODED_ORDER
                .windows(2)
                .all(|w| encoded(w[0]) < encoded(w[1]))
        );
    }

    #[test]
    fn encoding_starts_as_documented() {
        // README "Package format": a0+13 map header, then "name".
        let bytes = sample().encode();
        assert_eq!(bytes[0], 0xad);
        assert_eq!(&bytes[1..6], b"\x64name");
    }

    #[test]
    fn chunk_offsets_and_lengths() {
        let m = sample();
        assert_eq!(m.chunk_offset(0), 0);
        assert_eq!(m.chunk_offset(1), 3000);
        assert_eq!(m.chunk_offset(3), m.payload_size);
        assert_eq!(m.chunk_offset(99), m.payload_size);
        assert_eq!(m.chunk_image_len(0), 4096);
        assert_eq!(m.chunk_image_len(2), 100);
        assert_eq!(m.chunk_image_len(3), 0);
        assert_eq!(m.chunk_image_offset(2), 8192);
        assert_eq!(m.chunk_count(), 3);
    }

    #[test]
    fn inconsistent_manifests_are_refused() {
        let cases: [(&str, Change); 14] = [
            ("payload_size", |m| m.payload_size += 1),
            ("chunks for an image", |m| {
                m.chunks.pop();
            }),
            ("chunks for an image", |m| m.image_size += 4096),
            ("chunk_size", |m| m.chunk_size = 4095),
            ("chunk_size", |m| m.chunk_size = MAX_CHUNK_SIZE + 1),
            ("empty image", |m| {
                m.image_size = 0;
                m.chunks.clear();
                m.payload_size = 0;
            }),
            ("stored length", |m| m.chunks[0].stored_len = 0),
            ("stored length", |m| {
                m.chunks[0].stored_len = max_stored_len(4096) + 1;
                m.payload_size = m.chunk_offset(3);
            }),
            ("stored length", |m| m.compression = Compression::None),
            ("key_id", |m| m.key_id = "0123456789ABCDEF".into()),
            ("key_id", |m| m.key_id = "0123".into()),
            ("compatible", |m| m.compatible = "x".repeat(256)),
            ("empty compatible", |m| m.compatible.clear()),
            ("version", |m| m.version = "v".repeat(256)),
        ];
        for (what, change) in cases {
            let mut m = sample();
            change(&mut m);
            let msg = err(&m.encode());
            assert!(msg.contains(what), "{what}: {msg}");
        }
        let mut m = sample();
        m.format = 2;
        assert_eq!(
            Manifest::decode(&m.encode()),
            Err(PackageError::UnsupportedFormat(2))
        );
        // Uncompressed: stored lengths are the image lengths and the two hashes agree.
        let mut m = sample();
        m.compression = Compression::None;
        m.chunks[0].stored_len = 4096;
        m.chunks[1].stored_len = 4096;
        m.chunks[2].stored_len = 100;
        m.payload_size = m.image_size;
        assert!(err(&m.encode()).contains("hashes differ"));
        m.payload_sha256 = m.image_sha256;
        assert!(Manifest::decode(&m.encode()).is_ok());
    }

    #[test]
    fn structural_refusals() {
        let good = sample().encode();
        // Trailing byte.
        let mut longer = good.clone();
        longer.push(0);
        assert!(err(&longer).contains("after the manifest"));
        // Truncated anywhere.
        for cut in 0..good.len() {
            assert!(Manifest::decode(&good[..cut]).is_err(), "cut {cut}");
        }
        // Unknown, duplicate and missing keys.
        let one = |e: &mut Encoder<&mut Vec<u8>>| {
            e.u32(1).unwrap();
        };
        assert!(err(&map(&[("bogus", &one)])).contains("unknown key"));
        assert!(err(&map(&[("format", &one), ("format", &one)])).contains("duplicate"));
        assert!(err(&map(&[("format", &one)])).contains("missing key"));
        // Not a map, indefinite map.
        assert!(err(&[0x80]).contains("manifest map"));
        assert!(err(&[0xbf, 0xff]).contains("indefinite"));
        // Wrong hash length.
        let short_hash = |e: &mut Encoder<&mut Vec<u8>>| {
            e.bytes(&[0; 31]).unwrap();
        };
        assert!(err(&map(&[("image_sha256", &short_hash)])).contains("32 bytes"));
        // Unknown compression.
        let lz4 = |e: &mut Encoder<&mut Vec<u8>>| {
            e.str("lz4").unwrap();
        };
        assert!(err(&map(&[("compression", &lz4)])).contains("unknown compression"));
        // A chunk entry with three elements.
        let triple = |e: &mut Encoder<&mut Vec<u8>>| {
            e.array(1).unwrap().array(3).unwrap();
        };
        assert!(err(&map(&[("chunks", &triple)])).contains("stored_len, sha256"));
    }

    #[test]
    fn non_canonical_encodings_are_refused() {
        let good = sample().encode();
        // The same fields with two keys swapped ("name" moved to the end).
        let m = sample();
        let mut reordered = Vec::new();
        {
            let mut e = Encoder::new(&mut reordered);
            m.encode_into(&mut e).unwrap();
        }
        let name_entry = 1 + 5 + 1 + m.name.len();
        let mut swapped = vec![reordered[0]];
        swapped.extend_from_slice(&reordered[name_entry..]);
        swapped.extend_from_slice(&reordered[1..name_entry]);
        assert_ne!(swapped, good);
        assert!(err(&swapped).contains("canonical"));
        // A non-minimal integer: format 1 as a two-byte uint (0x19 0x00 0x01).
        let pos = good.windows(7).position(|w| w == b"\x66format").unwrap() + 7;
        assert_eq!(good[pos], 0x01);
        let mut wide = good.clone();
        wide.splice(pos..pos + 1, [0x19, 0x00, 0x01]);
        assert!(err(&wide).contains("canonical"));
    }

    #[test]
    fn huge_declared_lengths_do_not_allocate() {
        // A chunk array claiming 2^64-1 entries, then nothing: fails fast, no allocation.
        let huge = |e: &mut Encoder<&mut Vec<u8>>| {
            e.array(u64::MAX).unwrap();
        };
        assert!(Manifest::decode(&map(&[("chunks", &huge)])).is_err());
        // A map claiming 2^64-1 entries.
        assert!(Manifest::decode(&[0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        // A string claiming 2^32 bytes.
        assert!(Manifest::decode(&[0xa1, 0x7a, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn json_uses_hex_hashes() {
        let j = sample().to_json();
        assert_eq!(j["payload_sha256"], "01".repeat(32));
        assert_eq!(j["chunks"][2][0], 10);
        assert_eq!(j["compression"], "zstd");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Manifest::decode(&bytes);
        }

        /// Bytes that start like a manifest get deeper into the parser.
        #[test]
        fn mutated_manifests_never_panic(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let mut bytes = sample().encode();
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            if let Ok(m) = Manifest::decode(&bytes) {
                // Whatever decodes is canonical and consistent.
                prop_assert_eq!(m.encode(), bytes);
                prop_assert!(m.check().is_ok());
            }
        }
    }
}

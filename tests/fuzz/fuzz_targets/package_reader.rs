//! package_reader: arbitrary bytes into the streaming package verifier.
//!
//! The test-vector key (tests/fixtures/packages/) is trusted, so the committed test vectors —
//! which run.sh copies into the corpus — verify, and mutations of them reach every stage. The
//! fuzzer cannot forge signatures, so a second mode signs a manifest around arbitrary chunk
//! bytes with the (public) test-vector secret key: that is how the zstd and gzip decoders get
//! attacker-shaped input, as they would from a compromised signer.
//!
//! Input: byte 0 picks the mode (bit 0) and the feed piece size (the other bits); mode 0 feeds
//! the rest as a package, mode 1 builds a signed package whose chunks come from the rest as
//! (2-byte big-endian length, bytes) records, with byte 1 choosing compression and the last
//! chunk's image length.
#![no_main]

use std::sync::{Arc, LazyLock};

use ed25519_dalek::{Signer as _, SigningKey};
use libfuzzer_sys::fuzz_target;
use lwm2md::update::package::manifest::max_stored_len;
use lwm2md::update::package::{
    ChunkInfo, Compression, Header, ImageSink, ImageVerifier, MAX_MANIFEST, Manifest,
    PackageError, PackageReader, Policy, TrustedKeys, Verified, keys,
};
use sha2::{Digest as _, Sha256};

const COMPATIBLE: &str = "lwm2md-test-vector";
const CHUNK: u32 = 4096;

static KEY: LazyLock<SigningKey> = LazyLock::new(|| {
    keys::parse_secret_key(include_str!("../../fixtures/packages/test-vector.key"))
        .expect("test-vector key")
});

static TRUSTED: LazyLock<Arc<TrustedKeys>> = LazyLock::new(|| {
    let mut keys = TrustedKeys::new();
    keys.add_key_file(include_str!("../../fixtures/packages/test-vector.pub"))
        .expect("test-vector public key");
    Arc::new(keys)
});

/// Checks the reader's promises to the sink as the bytes arrive.
#[derive(Default)]
struct Checker {
    manifest: Option<Manifest>,
    next: u32,
    offset: u64,
    image: Option<ImageVerifier>,
}

impl ImageSink for Checker {
    fn begin(&mut self, manifest: &Verified<Manifest>) -> Result<(), PackageError> {
        assert!(self.manifest.is_none(), "begin twice");
        assert!(manifest.check().is_ok(), "verified manifest is inconsistent");
        self.manifest = Some(manifest.get().clone());
        self.image = Some(ImageVerifier::new(manifest));
        Ok(())
    }

    fn chunk(&mut self, index: u32, image_offset: u64, data: &[u8]) -> Result<(), PackageError> {
        let m = self.manifest.as_ref().expect("chunk before begin");
        assert_eq!(index, self.next, "chunks out of order");
        assert_eq!(image_offset, self.offset, "gap in the image");
        assert_eq!(data.len(), m.chunk_image_len(index) as usize, "wrong chunk length");
        self.next += 1;
        self.offset += data.len() as u64;
        if let Some(v) = &mut self.image {
            v.update(data);
        }
        Ok(())
    }
}

fn run(package: &[u8], piece: usize) {
    let policy = Policy {
        compatible: COMPATIBLE.into(),
        min_security_version: 0,
        max_image_size: u64::MAX,
    };
    let mut reader = PackageReader::new(TRUSTED.clone(), policy);
    let mut sink = Checker::default();
    for bytes in package.chunks(piece) {
        let fed = reader.feed(bytes, &mut sink);
        // Memory: the manifest while it is collected, afterwards one stored plus one image chunk.
        let bound = match &sink.manifest {
            None => 2 * (MAX_MANIFEST as usize + 80),
            Some(m) => max_stored_len(m.chunk_size) as usize + m.chunk_size as usize + 1,
        };
        assert!(reader.buffer_capacity() <= bound, "{} > {bound}", reader.buffer_capacity());
        if fed.is_err() {
            assert_eq!(reader.feed(b"x", &mut sink), fed, "a failed reader must stay failed");
            return;
        }
    }
    if let Ok(manifest) = reader.finish(&mut sink) {
        assert_eq!(sink.offset, manifest.image_size);
        let verifier = sink.image.take().expect("begun");
        assert_eq!(verifier.finish(), Ok(()), "accepted image does not match its hash");
    }
}

/// Up to 8 non-empty (length, bytes) records.
fn split_chunks(mut body: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while out.len() < 8 {
        let [hi, lo, rest @ ..] = body else {
            break;
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
        let (chunk, tail) = rest.split_at(len);
        if !chunk.is_empty() {
            out.push(chunk);
        }
        body = tail;
    }
    out
}

/// Mode 1: a manifest around arbitrary stored chunks, signed with the trusted key.
fn signed_package(control: u8, body: &[u8]) -> Vec<u8> {
    let compression = match control % 3 {
        0 => Compression::None,
        1 => Compression::Zstd,
        _ => Compression::Gzip,
    };
    let stored = split_chunks(body);
    if stored.is_empty() {
        return Vec::new();
    }
    // The last chunk's image length varies with the control byte.
    let last_len = u64::from(control >> 2) * 64 + 1;
    let image_size = (stored.len() as u64 - 1) * u64::from(CHUNK) + last_len.min(u64::from(CHUNK));
    let payload: Vec<u8> = stored.concat();
    let manifest = Manifest {
        format: 1,
        key_id: keys::key_id(&KEY.verifying_key()).0,
        compatible: COMPATIBLE.into(),
        name: "fuzz".into(),
        version: "0".into(),
        security_version: 0,
        compression,
        payload_size: payload.len() as u64,
        payload_sha256: Sha256::digest(&payload).into(),
        image_size,
        image_sha256: [0; 32],
        chunk_size: CHUNK,
        chunks: stored
            .iter()
            .map(|s| ChunkInfo {
                stored_len: s.len() as u32,
                sha256: Sha256::digest(s).into(),
            })
            .collect(),
    };
    let encoded = manifest.encode();
    let mut out = Header::encode(encoded.len() as u32).to_vec();
    out.extend_from_slice(&encoded);
    let signature = KEY.sign(&out);
    out.extend_from_slice(&signature.to_bytes());
    out.extend_from_slice(&payload);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let piece = usize::from(first >> 1) * 37 + 1;
    if first & 1 == 0 {
        run(rest, piece);
    } else if let Some((&control, body)) = rest.split_first() {
        run(&signed_package(control, body), piece);
    }
});

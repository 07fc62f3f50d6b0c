//! Package tests across builder and reader: round trips, the committed test vectors, every
//! forgery and policy refusal with its Update Result, resume, memory bound, and robustness.

use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use proptest::prelude::*;
use sha2::{Digest as _, Sha256};

use super::testkit::*;
use super::*;
use crate::update::result;

const SMALL_CHUNK: u32 = MIN_CHUNK_SIZE;

fn assert_refused(package: &[u8], expected: PackageError, update_result: u8) -> Recorder {
    let (got, sink) = read(package);
    assert_eq!(got, Err(expected.clone()));
    assert_eq!(expected.update_result(), update_result, "{expected}");
    sink
}

// ---------------------------------------------------------------- round trips

#[test]
fn every_compression_round_trips() {
    let img = image(3 * SMALL_CHUNK as usize + 1234, 1);
    for compression in [Compression::None, Compression::Zstd, Compression::Gzip] {
        let (pkg, built) = package(&img, &options(compression, SMALL_CHUNK));
        let (got, sink) = read(&pkg);
        let manifest = got.unwrap_or_else(|e| panic!("{compression}: {e}"));
        assert_eq!(manifest.get(), &built);
        assert_eq!(sink.begun.as_ref(), Some(&built));
        assert_eq!(sink.image, img, "{compression}");
        assert_eq!(sink.chunks, vec![0, 1, 2, 3]);
        assert_eq!(built.chunk_count(), 4);
        assert_eq!(built.image_size, img.len() as u64);
        assert_eq!(built.image_sha256, <[u8; 32]>::from(Sha256::digest(&img)));
        if compression != Compression::None {
            assert!(
                built.payload_size < built.image_size,
                "{compression} compresses"
            );
        }
    }
}

#[test]
fn image_of_exactly_n_chunks_and_of_one_byte() {
    for len in [1, SMALL_CHUNK as usize, 2 * SMALL_CHUNK as usize] {
        for compression in [Compression::None, Compression::Zstd, Compression::Gzip] {
            let img = image(len, 2);
            let (pkg, built) = package(&img, &options(compression, SMALL_CHUNK));
            assert_eq!(
                built.chunk_count() as usize,
                len.div_ceil(SMALL_CHUNK as usize)
            );
            let (got, sink) = read(&pkg);
            assert!(got.is_ok(), "{len} {compression}: {got:?}");
            assert_eq!(sink.image, img);
        }
    }
}

#[test]
fn reader_state_while_streaming() {
    let img = image(2 * SMALL_CHUNK as usize + 7, 3);
    let (pkg, built) = package(&img, &options(Compression::Zstd, SMALL_CHUNK));
    let mut reader = PackageReader::new(trusted(), policy());
    let mut sink = Recorder::default();
    assert_eq!(reader.payload_start(), None);
    reader.feed(&pkg[..HEADER_LEN], &mut sink).unwrap();
    let start = reader.payload_start().unwrap();
    assert_eq!(
        start,
        (HEADER_LEN + SIGNATURE_LEN) as u64 + built.encode().len() as u64
    );
    assert!(reader.manifest().is_none());
    reader
        .feed(&pkg[HEADER_LEN..start as usize], &mut sink)
        .unwrap();
    assert_eq!(reader.manifest().map(|m| m.get()), Some(&built));
    assert_eq!(reader.position(), start);
    assert_eq!(reader.chunks_done(), 0);
    let first = built.chunks[0].stored_len as usize;
    reader
        .feed(&pkg[start as usize..start as usize + first], &mut sink)
        .unwrap();
    assert_eq!(reader.chunks_done(), 1);
    assert_eq!(sink.image.len(), SMALL_CHUNK as usize);
    reader
        .feed(&pkg[start as usize + first..], &mut sink)
        .unwrap();
    assert_eq!(reader.position(), pkg.len() as u64);
    assert_eq!(reader.chunks_done(), 3);
    reader.finish(&mut sink).unwrap();
    assert_eq!(
        reader.checks(),
        Checks {
            first_chunk: 0,
            payload_hash: true,
            image_hash: true
        }
    );
    assert!(!reader.checks().readback_required());
    // A finished reader refuses more bytes.
    assert_eq!(
        reader.feed(b"x", &mut sink),
        Err(PackageError::TrailingData)
    );
}

// ---------------------------------------------------------------- test vectors

const VECTOR_IMAGE: &[u8] = include_bytes!("../../../tests/fixtures/packages/image.bin");
const VECTOR_KEY: &str = include_str!("../../../tests/fixtures/packages/test-vector.key");
const VECTOR_PUB: &str = include_str!("../../../tests/fixtures/packages/test-vector.pub");
const VECTORS: [(Compression, &[u8], &str); 3] = [
    (
        Compression::None,
        include_bytes!("../../../tests/fixtures/packages/v1-none.pkg"),
        include_str!("../../../tests/fixtures/packages/v1-none.manifest.json"),
    ),
    (
        Compression::Zstd,
        include_bytes!("../../../tests/fixtures/packages/v1-zstd.pkg"),
        include_str!("../../../tests/fixtures/packages/v1-zstd.manifest.json"),
    ),
    (
        Compression::Gzip,
        include_bytes!("../../../tests/fixtures/packages/v1-gzip.pkg"),
        include_str!("../../../tests/fixtures/packages/v1-gzip.manifest.json"),
    ),
];

fn vector_options(compression: Compression) -> builder::BuildOptions {
    builder::BuildOptions {
        compatible: "lwm2md-test-vector".into(),
        name: "test-vector".into(),
        version: "1.0.0".into(),
        security_version: 1,
        compression,
        chunk_size: 4096,
    }
}

fn vector_policy() -> Policy {
    Policy {
        compatible: "lwm2md-test-vector".into(),
        min_security_version: 0,
        max_image_size: u64::MAX,
    }
}

/// The committed packages (made by `lwm2md-package create`, see the fixtures' README) still
/// verify, give the committed image, and decode to the committed manifest JSON: a change to
/// the reader or the manifest encoding that breaks packages in the field fails here.
#[test]
fn committed_test_vectors_verify_and_decode() {
    let mut keys = TrustedKeys::new();
    let id = keys.add_key_file(VECTOR_PUB).unwrap();
    let keys = Arc::new(keys);
    for (compression, pkg, json) in VECTORS {
        let (got, sink) = read_in_pieces(pkg, &[], keys.clone(), vector_policy());
        let manifest = got.unwrap_or_else(|e| panic!("{compression}: {e}"));
        assert_eq!(sink.image, VECTOR_IMAGE, "{compression}");
        assert_eq!(manifest.key_id, id.0);
        assert_eq!(manifest.compression, compression);
        let expected: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(manifest.to_json(), expected, "{compression}");
    }
}

/// The builder still writes the committed bytes. Only the uncompressed vector is compared byte
/// for byte: compressed bytes may legitimately change with a zstd or deflate encoder upgrade.
#[test]
fn builder_reproduces_the_uncompressed_test_vector() {
    let key = keys::parse_secret_key(VECTOR_KEY).unwrap();
    assert_eq!(
        keys::format_public_key(&key.verifying_key(), "")
            .split_whitespace()
            .nth(1),
        VECTOR_PUB
            .lines()
            .find(|l| !l.starts_with('#'))
            .and_then(|l| l.split_whitespace().nth(1))
    );
    let (_, pkg, _) = VECTORS[0];
    let (built, _) = package_with(VECTOR_IMAGE, &vector_options(Compression::None), &key);
    assert!(
        built == pkg,
        "the builder's output drifted from tests/fixtures/packages/v1-none.pkg"
    );
    for (compression, pkg, _) in &VECTORS[1..] {
        let (built, manifest) = package_with(VECTOR_IMAGE, &vector_options(*compression), &key);
        let committed = Unverified::parse(pkg).unwrap().manifest;
        assert_eq!(manifest.image_sha256, committed.image_sha256);
        assert_eq!(manifest.chunk_count(), committed.chunk_count());
        assert!(
            read_in_pieces(
                &built,
                &[],
                Arc::new({
                    let mut k = TrustedKeys::new();
                    k.add_key(key.verifying_key());
                    k
                }),
                vector_policy()
            )
            .0
            .is_ok()
        );
    }
}

// ---------------------------------------------------------------- forgeries

fn small_package() -> (Vec<u8>, Manifest) {
    package(
        &image(3 * SMALL_CHUNK as usize + 100, 4),
        &options(Compression::Zstd, SMALL_CHUNK),
    )
}

fn manifest_range(pkg: &[u8]) -> std::ops::Range<usize> {
    let header = Header::parse(pkg[..HEADER_LEN].try_into().unwrap()).unwrap();
    HEADER_LEN..HEADER_LEN + header.manifest_len as usize
}

#[test]
fn flipped_signature_byte_is_a_bad_signature() {
    let (pkg, _) = small_package();
    let sig_start = manifest_range(&pkg).end;
    for i in [0, 31, 32, 63] {
        let mut forged = pkg.clone();
        forged[sig_start + i] ^= 0x01;
        let sink = assert_refused(&forged, PackageError::BadSignature, result::INTEGRITY);
        assert!(sink.begun.is_none() && sink.image.is_empty());
    }
}

#[test]
fn flipped_manifest_byte_never_verifies() {
    let (pkg, built) = small_package();
    // Inside a string value: still valid CBOR, so it is the signature that catches it.
    let name_at = pkg
        .windows(built.name.len())
        .position(|w| w == built.name.as_bytes())
        .unwrap();
    let mut forged = pkg.clone();
    forged[name_at] ^= 0x20;
    assert_refused(&forged, PackageError::BadSignature, result::INTEGRITY);
    // Anywhere else: refused one way or another, and never before anything reached the sink.
    for i in manifest_range(&pkg) {
        let mut forged = pkg.clone();
        forged[i] ^= 0x01;
        let (got, sink) = read(&forged);
        let e = got.expect_err("a flipped manifest byte verified");
        assert!(
            matches!(
                e,
                PackageError::BadSignature
                    | PackageError::Malformed(_)
                    | PackageError::UnknownKey(_)
                    | PackageError::UnsupportedFormat(_)
            ),
            "byte {i}: {e:?}"
        );
        assert_eq!(
            e.update_result(),
            if matches!(e, PackageError::UnsupportedFormat(_)) {
                result::UNSUPPORTED_TYPE
            } else {
                result::INTEGRITY
            }
        );
        assert!(sink.begun.is_none(), "byte {i}: the sink was started");
    }
}

#[test]
fn unknown_key_is_refused() {
    let img = image(5000, 5);
    let (pkg, built) = package_with(&img, &options(Compression::None, SMALL_CHUNK), &other_key());
    assert_refused(
        &pkg,
        PackageError::UnknownKey(built.key_id),
        result::INTEGRITY,
    );
}

#[test]
fn a_trusted_key_id_with_another_keys_signature_is_a_bad_signature() {
    let (pkg, built) = small_package();
    let forged = assemble(
        &built,
        &pkg[manifest_range(&pkg).end + SIGNATURE_LEN..],
        &other_key(),
    );
    assert_refused(&forged, PackageError::BadSignature, result::INTEGRITY);
}

#[test]
fn revoked_key_is_refused_even_when_present() {
    let (pkg, built) = small_package();
    let mut keys = TrustedKeys::new();
    let id = keys.add_key(signing_key().verifying_key());
    keys.add_key(other_key().verifying_key());
    keys.revoke(id.clone());
    let (got, sink) = read_in_pieces(&pkg, &[], Arc::new(keys), policy());
    assert_eq!(got, Err(PackageError::RevokedKey(built.key_id.clone())));
    assert_eq!(
        PackageError::RevokedKey(id.0).update_result(),
        result::INTEGRITY
    );
    assert!(sink.begun.is_none());
}

#[test]
fn key_rotation_accepts_old_and_new_key() {
    let mut keys = TrustedKeys::new();
    keys.add_key(signing_key().verifying_key());
    keys.add_key(other_key().verifying_key());
    let keys = Arc::new(keys);
    let img = image(9000, 6);
    for key in [signing_key(), other_key()] {
        let (pkg, _) = package_with(&img, &options(Compression::Gzip, SMALL_CHUNK), &key);
        let (got, sink) = read_in_pieces(&pkg, &[], keys.clone(), policy());
        assert!(got.is_ok());
        assert_eq!(sink.image, img);
    }
}

#[test]
fn truncated_at_every_offset() {
    let img = image(2 * SMALL_CHUNK as usize + 50, 7);
    for compression in [Compression::None, Compression::Gzip] {
        let (pkg, built) = package(&img, &options(compression, SMALL_CHUNK));
        let start = manifest_range(&pkg).end + SIGNATURE_LEN;
        for cut in 0..pkg.len() {
            let (got, sink) = read(&pkg[..cut]);
            assert_eq!(got, Err(PackageError::Truncated), "cut at {cut}");
            // Only whole, verified chunks reached the sink.
            let complete = (0..built.chunk_count())
                .take_while(|&k| start as u64 + built.chunk_offset(k + 1) <= cut as u64)
                .count();
            assert_eq!(sink.chunks.len(), complete, "cut at {cut}");
            assert_eq!(sink.image[..], img[..sink.image.len()]);
            assert_eq!(sink.begun.is_some(), cut >= start, "cut at {cut}");
        }
    }
    assert_eq!(PackageError::Truncated.update_result(), result::INTEGRITY);
}

#[test]
fn flipped_byte_in_chunk_k_names_k_and_nothing_of_k_or_later_reaches_the_sink() {
    let (pkg, built) = small_package();
    let start = manifest_range(&pkg).end + SIGNATURE_LEN;
    for k in 0..built.chunk_count() {
        let offset = start + built.chunk_offset(k) as usize;
        for at in [
            offset,
            offset + built.chunks[k as usize].stored_len as usize - 1,
        ] {
            let mut forged = pkg.clone();
            forged[at] ^= 0x80;
            for pieces in [&[][..], &[1][..], &[777, 3][..]] {
                let (got, sink) = read_in_pieces(&forged, pieces, trusted(), policy());
                assert_eq!(got, Err(PackageError::ChunkHash { index: k }));
                assert_eq!(sink.chunks, (0..k).collect::<Vec<_>>());
                assert_eq!(sink.image.len(), (k * SMALL_CHUNK) as usize);
            }
        }
    }
    assert_eq!(
        PackageError::ChunkHash { index: 0 }.update_result(),
        result::INTEGRITY
    );
}

#[test]
fn trailing_data_is_refused_at_feed_time() {
    let (pkg, _) = small_package();
    let mut longer = pkg.clone();
    longer.push(0);
    assert_refused(&longer, PackageError::TrailingData, result::INTEGRITY);
    // Also when the extra byte comes in its own piece, after the whole package went through.
    let mut reader = PackageReader::new(trusted(), policy());
    let mut sink = Recorder::default();
    reader.feed(&pkg, &mut sink).unwrap();
    assert_eq!(
        reader.feed(&[0], &mut sink),
        Err(PackageError::TrailingData)
    );
    // The reader is spent: finish reports the same refusal.
    assert_eq!(reader.finish(&mut sink), Err(PackageError::TrailingData));
}

#[test]
fn policy_refusals() {
    let (pkg, built) = small_package();
    let check = |policy: Policy, expected: PackageError, code: u8| {
        let (got, sink) = read_in_pieces(&pkg, &[], trusted(), policy);
        assert_eq!(got, Err(expected.clone()));
        assert_eq!(expected.update_result(), code);
        assert!(sink.begun.is_none(), "the sink was started for {expected}");
    };
    check(
        Policy {
            compatible: "other-board".into(),
            ..policy()
        },
        PackageError::Incompatible {
            expected: "other-board".into(),
            got: COMPATIBLE.into(),
        },
        result::UNSUPPORTED_TYPE,
    );
    check(
        Policy {
            min_security_version: 6,
            ..policy()
        },
        PackageError::Downgrade { floor: 6, got: 5 },
        result::UNSUPPORTED_TYPE,
    );
    check(
        Policy {
            max_image_size: built.image_size - 1,
            ..policy()
        },
        PackageError::TooLarge {
            size: built.image_size,
            capacity: built.image_size - 1,
        },
        result::NO_SPACE,
    );
    // Equal security version and exactly fitting image are fine.
    let (got, _) = read_in_pieces(
        &pkg,
        &[],
        trusted(),
        Policy {
            min_security_version: 5,
            max_image_size: built.image_size,
            ..policy()
        },
    );
    assert!(got.is_ok());
}

#[test]
fn header_refusals() {
    let (pkg, _) = small_package();
    let with = |at: usize, bytes: &[u8]| {
        let mut p = pkg.clone();
        p[at..at + bytes.len()].copy_from_slice(bytes);
        p
    };
    assert_refused(
        &with(0, b"X"),
        PackageError::BadMagic,
        result::UNSUPPORTED_TYPE,
    );
    assert_refused(
        &with(7, b"H"),
        PackageError::BadMagic,
        result::UNSUPPORTED_TYPE,
    );
    assert_refused(
        &with(8, &[0, 2]),
        PackageError::UnsupportedFormat(2),
        result::UNSUPPORTED_TYPE,
    );
    assert_refused(
        &with(12, &[0, 0, 0, 0]),
        PackageError::ManifestLength(0),
        result::INTEGRITY,
    );
    let too_long = MAX_MANIFEST + 1;
    assert_refused(
        &with(12, &too_long.to_be_bytes()),
        PackageError::ManifestLength(too_long),
        result::INTEGRITY,
    );
    let (got, _) = read(&with(10, &[0, 1]));
    assert!(matches!(got, Err(PackageError::Malformed(_))), "{got:?}");
    // A non-package is refused at its first byte, not after 16.
    let mut reader = PackageReader::new(trusted(), policy());
    assert_eq!(
        reader.feed(b"<", &mut Recorder::default()),
        Err(PackageError::BadMagic)
    );
}

#[test]
fn signed_but_inconsistent_chunk_table_is_malformed() {
    let (pkg, built) = small_package();
    let payload = &pkg[manifest_range(&pkg).end + SIGNATURE_LEN..];
    let mut bad = built.clone();
    bad.payload_size += 1;
    let (got, sink) = read(&assemble(&bad, payload, &signing_key()));
    assert!(
        matches!(&got, Err(PackageError::Malformed(m)) if m.contains("add up")),
        "{got:?}"
    );
    assert_eq!(got.unwrap_err().update_result(), result::INTEGRITY);
    assert!(sink.begun.is_none());
    let mut bad = built.clone();
    bad.chunks.pop();
    let (got, _) = read(&assemble(&bad, payload, &signing_key()));
    assert!(
        matches!(&got, Err(PackageError::Malformed(m)) if m.contains("chunks")),
        "{got:?}"
    );
}

#[test]
fn signed_but_wrong_whole_hashes() {
    let (pkg, built) = small_package();
    let payload = &pkg[manifest_range(&pkg).end + SIGNATURE_LEN..];
    let mut bad = built.clone();
    bad.payload_sha256[0] ^= 1;
    let (got, sink) = read(&assemble(&bad, payload, &signing_key()));
    assert_eq!(got, Err(PackageError::PayloadHash));
    assert_eq!(PackageError::PayloadHash.update_result(), result::INTEGRITY);
    // Chunks are individually authentic, so they were written; the slot stays inactive.
    assert_eq!(sink.chunks.len(), 4);
    let mut bad = built.clone();
    bad.image_sha256[0] ^= 1;
    let (got, _) = read(&assemble(&bad, payload, &signing_key()));
    assert_eq!(got, Err(PackageError::ImageHash));
    assert_eq!(PackageError::ImageHash.update_result(), result::INTEGRITY);
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

#[test]
fn decompression_bombs_stop_at_chunk_size() {
    let chunk = SMALL_CHUNK as usize;
    // 4 MiB of zeros (1024 times the chunk) claims to be one 4 KiB chunk; compressed it fits
    // the stored-length bound for gzip (deflate tops out near 1:1032) and zstd alike.
    let bomb = vec![0u8; 4 << 20];
    for (compression, stored) in [
        (Compression::Zstd, zstd(&bomb)),
        (Compression::Gzip, gzip(&bomb)),
    ] {
        assert!(stored.len() <= manifest::max_stored_len(SMALL_CHUNK) as usize);
        let pkg = raw_package(compression, SMALL_CHUNK, &bomb[..chunk], &[stored]);
        let mut reader = PackageReader::new(trusted(), policy());
        let mut sink = Recorder::default();
        let got = reader.feed(&pkg, &mut sink);
        assert!(
            matches!(&got, Err(PackageError::Decompress { index: 0, reason }) if reason.contains("beyond")),
            "{compression}: {got:?}"
        );
        assert!(sink.image.is_empty());
        // The bound held: nothing near the bomb's size was ever allocated by the reader.
        assert!(
            reader.buffer_capacity() < 4 * chunk + (64 << 10),
            "{}",
            reader.buffer_capacity()
        );
    }
    assert_eq!(
        PackageError::Decompress {
            index: 0,
            reason: String::new()
        }
        .update_result(),
        result::INTEGRITY
    );
}

#[test]
fn wrong_decompressed_size_is_refused() {
    let img = image(SMALL_CHUNK as usize + 10, 8);
    for (compression, squeeze) in [
        (Compression::Zstd, zstd as fn(&[u8]) -> Vec<u8>),
        (Compression::Gzip, gzip),
    ] {
        // Chunk 0 inflates to 100 bytes short of chunk_size.
        let short = squeeze(&img[..SMALL_CHUNK as usize - 100]);
        let last = squeeze(&img[SMALL_CHUNK as usize..]);
        let (got, sink) = read(&raw_package(compression, SMALL_CHUNK, &img, &[short, last]));
        assert!(
            matches!(&got, Err(PackageError::Decompress { index: 0, reason }) if reason.contains("expected")),
            "{compression}: {got:?}"
        );
        assert!(sink.image.is_empty());
        // The last chunk inflates to more than the remainder.
        let first = squeeze(&img[..SMALL_CHUNK as usize]);
        let long = squeeze(&img[SMALL_CHUNK as usize - 5..]);
        let (got, sink) = read(&raw_package(compression, SMALL_CHUNK, &img, &[first, long]));
        assert!(
            matches!(&got, Err(PackageError::Decompress { index: 1, .. })),
            "{compression}: {got:?}"
        );
        assert_eq!(sink.chunks, vec![0]);
    }
}

#[test]
fn garbage_and_trailing_bytes_inside_a_compressed_chunk_are_refused() {
    let img = image(SMALL_CHUNK as usize, 9);
    for (compression, squeeze) in [
        (Compression::Zstd, zstd as fn(&[u8]) -> Vec<u8>),
        (Compression::Gzip, gzip),
    ] {
        let mut two_frames = squeeze(&img);
        two_frames.extend_from_slice(&squeeze(b""));
        let (got, _) = read(&raw_package(compression, SMALL_CHUNK, &img, &[two_frames]));
        assert!(
            matches!(&got, Err(PackageError::Decompress { index: 0, reason }) if reason.contains("after")),
            "{compression}: {got:?}"
        );
        let garbage = image(3000, 10);
        let (got, _) = read(&raw_package(compression, SMALL_CHUNK, &img, &[garbage]));
        assert!(
            matches!(&got, Err(PackageError::Decompress { index: 0, .. })),
            "{compression}: {got:?}"
        );
    }
    // Stored as the other compression.
    let (got, _) = read(&raw_package(
        Compression::Zstd,
        SMALL_CHUNK,
        &img,
        &[gzip(&img)],
    ));
    assert!(
        matches!(&got, Err(PackageError::Decompress { index: 0, .. })),
        "{got:?}"
    );
}

#[test]
fn sink_failure_stops_the_reader() {
    let (pkg, _) = small_package();
    let mut reader = PackageReader::new(trusted(), policy());
    let mut sink = Recorder {
        fail_at: Some(1),
        ..Recorder::default()
    };
    let err = PackageError::Sink("disk on fire".into());
    assert_eq!(reader.feed(&pkg, &mut sink), Err(err.clone()));
    assert_eq!(err.update_result(), result::UPDATE_FAILED);
    assert_eq!(sink.chunks, vec![0]);
    sink.fail_at = None;
    assert_eq!(reader.feed(&[], &mut sink), Err(err.clone()));
    assert_eq!(reader.finish(&mut sink), Err(err));
    assert_eq!(sink.chunks, vec![0]);
}

// ---------------------------------------------------------------- resume

/// Feeds the header, skips to `k`, feeds the rest: the image bytes from chunk `k` on.
fn resume_at(pkg: &[u8], k: u32) -> (Result<Verified<Manifest>, PackageError>, Recorder, Checks) {
    let mut reader = PackageReader::new(trusted(), policy());
    let mut sink = Recorder::default();
    reader.feed(&pkg[..HEADER_LEN], &mut sink).unwrap();
    let start = reader.payload_start().unwrap() as usize;
    reader.feed(&pkg[HEADER_LEN..start], &mut sink).unwrap();
    reader.skip_to_chunk(k).unwrap();
    let offset = reader.manifest().unwrap().chunk_offset(k) as usize;
    assert_eq!(reader.position(), (start + offset) as u64);
    assert_eq!(reader.chunks_done(), k);
    let fed = reader.feed(&pkg[start + offset..], &mut sink);
    let result = fed.and_then(|()| reader.finish(&mut sink));
    (result, sink, reader.checks())
}

#[test]
fn resumed_run_produces_the_same_image_bytes() {
    let img = image(4 * SMALL_CHUNK as usize + 321, 11);
    for compression in [Compression::None, Compression::Zstd, Compression::Gzip] {
        let (pkg, built) = package(&img, &options(compression, SMALL_CHUNK));
        let (_, full) = read(&pkg);
        for k in 0..=built.chunk_count() {
            let (got, sink, checks) = resume_at(&pkg, k);
            assert_eq!(
                got.as_ref().map(|m| m.get()),
                Ok(&built),
                "{compression} k={k}"
            );
            let from = built.chunk_image_offset(k) as usize;
            assert_eq!(sink.image, full.image[from..], "{compression} k={k}");
            assert_eq!(sink.start.unwrap_or(built.image_size), from as u64);
            assert_eq!(checks.first_chunk, k);
            assert_eq!(checks.readback_required(), k > 0);
            // The caller's read-back check of the whole slot passes.
            let mut verify = ImageVerifier::new(got.as_ref().unwrap());
            verify.update(&full.image[..from]);
            verify.update(&sink.image);
            assert_eq!(verify.finish(), Ok(()));
        }
    }
}

#[test]
fn resumed_run_still_checks_chunk_hashes() {
    let (pkg, built) = small_package();
    let start = manifest_range(&pkg).end + SIGNATURE_LEN;
    let mut forged = pkg.clone();
    forged[start + built.chunk_offset(3) as usize] ^= 1;
    let (got, sink, _) = resume_at(&forged, 2);
    assert_eq!(got, Err(PackageError::ChunkHash { index: 3 }));
    assert_eq!(sink.chunks, vec![2]);
}

#[test]
fn image_verifier_catches_a_miswritten_slot() {
    let (pkg, _) = small_package();
    let (got, full) = read(&pkg);
    let manifest = got.unwrap();
    let mut bad = full.image.clone();
    bad[10] ^= 1;
    let mut v = ImageVerifier::new(&manifest);
    v.update(&bad);
    assert_eq!(v.finish(), Err(PackageError::ImageHash));
    let mut v = ImageVerifier::new(&manifest);
    v.update(&full.image[1..]);
    assert_eq!(v.finish(), Err(PackageError::ImageHash));
}

#[test]
fn skip_to_chunk_misuse_is_refused() {
    let (pkg, built) = small_package();
    let start = manifest_range(&pkg).end + SIGNATURE_LEN;
    let mut sink = Recorder::default();
    // Before the manifest.
    let mut reader = PackageReader::new(trusted(), policy());
    reader.feed(&pkg[..HEADER_LEN], &mut sink).unwrap();
    assert!(matches!(
        reader.skip_to_chunk(1),
        Err(PackageError::Resume(_))
    ));
    // After payload bytes.
    let mut reader = PackageReader::new(trusted(), policy());
    reader
        .feed(&pkg[..start + 1], &mut Recorder::default())
        .unwrap();
    assert!(matches!(
        reader.skip_to_chunk(1),
        Err(PackageError::Resume(_))
    ));
    // Past the end.
    let mut reader = PackageReader::new(trusted(), policy());
    reader
        .feed(&pkg[..start], &mut Recorder::default())
        .unwrap();
    let past = built.chunk_count() + 1;
    let err = reader.skip_to_chunk(past).unwrap_err();
    assert!(matches!(err, PackageError::Resume(_)));
    assert_eq!(err.update_result(), result::INTEGRITY);
}

// ---------------------------------------------------------------- memory bound

/// Discards writes and reads back zeros: the payload of an uncompressed all-zero image, so a
/// 256 MiB package can be built without storing it anywhere.
#[derive(Default)]
struct ZeroScratch {
    len: u64,
    pos: u64,
}

impl Write for ZeroScratch {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Only ever given zeros (checking all 256 MiB would dominate a debug run).
        assert_eq!(buf.first(), Some(&0));
        self.pos += buf.len() as u64;
        self.len = self.len.max(self.pos);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Read for ZeroScratch {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.len - self.pos).min(buf.len() as u64) as usize;
        buf[..n].fill(0);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ZeroScratch {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        match pos {
            SeekFrom::Start(p) => self.pos = p,
            _ => unimplemented!("the builder only rewinds"),
        }
        Ok(self.pos)
    }
}

/// Counts image bytes and nothing else.
struct Discard(u64);

impl ImageSink for Discard {
    fn begin(&mut self, _: &Verified<Manifest>) -> Result<(), PackageError> {
        Ok(())
    }
    fn chunk(&mut self, _: u32, offset: u64, data: &[u8]) -> Result<(), PackageError> {
        assert_eq!(offset, self.0);
        self.0 += data.len() as u64;
        Ok(())
    }
}

/// The builder's output goes straight into a reader, in the pieces the builder writes.
struct IntoReader {
    reader: PackageReader,
    sink: Discard,
    peak_capacity: usize,
}

impl Write for IntoReader {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.reader
            .feed(buf, &mut self.sink)
            .map_err(std::io::Error::other)?;
        self.peak_capacity = self.peak_capacity.max(self.reader.buffer_capacity());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn memory_stays_bounded_by_one_chunk_for_a_256_mib_image() {
    const IMAGE: u64 = 256 << 20;
    const CHUNK: u32 = 1 << 20;
    let mut out = IntoReader {
        reader: PackageReader::new(trusted(), policy()),
        sink: Discard(0),
        peak_capacity: 0,
    };
    let manifest = builder::build(
        &mut std::io::repeat(0).take(IMAGE),
        &mut ZeroScratch::default(),
        &mut out,
        &options(Compression::None, CHUNK),
        &signing_key(),
    )
    .unwrap();
    assert_eq!(manifest.chunk_count(), 256);
    let verified = out.reader.finish(&mut out.sink).unwrap();
    assert_eq!(verified.image_size, IMAGE);
    assert_eq!(out.sink.0, IMAGE);
    // One chunk of stored bytes (uncompressed: no separate image buffer); the manifest buffer
    // (a few KiB) was released once verified.
    assert!(
        out.peak_capacity <= CHUNK as usize + (64 << 10),
        "peak buffer capacity {} for a {CHUNK}-byte chunk",
        out.peak_capacity
    );
}

#[test]
fn compressed_chunks_hold_at_most_one_stored_and_one_image_chunk() {
    let img = image(6 * SMALL_CHUNK as usize, 12);
    for compression in [Compression::Zstd, Compression::Gzip] {
        let (pkg, _) = package(&img, &options(compression, SMALL_CHUNK));
        let mut reader = PackageReader::new(trusted(), policy());
        let mut sink = Recorder::default();
        let mut peak = 0;
        for piece in pkg.chunks(100) {
            reader.feed(piece, &mut sink).unwrap();
            peak = peak.max(reader.buffer_capacity());
        }
        reader.finish(&mut sink).unwrap();
        let bound = manifest::max_stored_len(SMALL_CHUNK) as usize + SMALL_CHUNK as usize + 1;
        // While the manifest is collected the buffer holds it (small here) instead.
        assert!(
            peak <= bound.max(2 * pkg.len() / 6),
            "{compression}: {peak}"
        );
    }
}

// ---------------------------------------------------------------- robustness

fn all_at_once(pkg: &[u8]) -> (Result<Verified<Manifest>, PackageError>, Vec<u8>) {
    let (got, sink) = read(pkg);
    (got, sink.image)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Feeding in random pieces gives exactly what feeding everything at once gives, for good
    /// packages and for damaged ones.
    #[test]
    fn random_piece_sizes_give_identical_results(
        compression in prop_oneof![Just(Compression::None), Just(Compression::Zstd), Just(Compression::Gzip)],
        len in 1usize..20_000,
        pieces in proptest::collection::vec(1usize..3000, 1..20),
        damage in proptest::option::of((any::<prop::sample::Index>(), 1u8..=255)),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let (mut pkg, _) = package(&image(len, len as u64), &options(compression, SMALL_CHUNK));
        if let Some((at, xor)) = damage {
            let i = at.index(pkg.len());
            pkg[i] ^= xor;
        }
        if let Some(cut) = cut {
            pkg.truncate(cut.index(pkg.len() + 1));
        }
        let (once, image_once) = all_at_once(&pkg);
        let (split, sink) = read_in_pieces(&pkg, &pieces, trusted(), policy());
        prop_assert_eq!(once, split);
        prop_assert_eq!(image_once, sink.image);
    }

    /// Arbitrary bytes never panic the reader, with or without a valid header in front.
    #[test]
    fn random_bytes_never_panic_the_reader(
        bytes in proptest::collection::vec(any::<u8>(), 0..2000),
        with_header in any::<bool>(),
        pieces in proptest::collection::vec(1usize..500, 1..5),
    ) {
        let mut pkg = Vec::new();
        if with_header {
            pkg.extend_from_slice(&Header::encode(bytes.len().saturating_sub(64).max(1) as u32));
        }
        pkg.extend_from_slice(&bytes);
        let (got, sink) = read_in_pieces(&pkg, &pieces, trusted(), policy());
        prop_assert!(got.is_err());
        prop_assert!(sink.begun.is_none());
    }

    /// A valid package with random bytes spliced into its payload never panics and never
    /// passes.
    #[test]
    fn random_payload_never_panics(
        compression in prop_oneof![Just(Compression::Zstd), Just(Compression::Gzip)],
        junk in proptest::collection::vec(any::<u8>(), 1..3000),
        at in any::<prop::sample::Index>(),
    ) {
        let (mut pkg, _) = small_package_with(compression);
        let start = manifest_range(&pkg).end + SIGNATURE_LEN;
        let i = start + at.index(pkg.len() - start);
        pkg.splice(i..i, junk);
        let (got, _) = read(&pkg);
        prop_assert!(got.is_err());
    }
}

fn small_package_with(compression: Compression) -> (Vec<u8>, Manifest) {
    package(
        &image(2 * SMALL_CHUNK as usize + 9, 13),
        &options(compression, SMALL_CHUNK),
    )
}

#[test]
fn one_byte_at_a_time() {
    for compression in [Compression::None, Compression::Zstd, Compression::Gzip] {
        let img = image(2 * SMALL_CHUNK as usize + 99, 14);
        let (pkg, built) = package(&img, &options(compression, SMALL_CHUNK));
        let (got, sink) = read_in_pieces(&pkg, &[1], trusted(), policy());
        assert_eq!(got.map(Verified::into_inner), Ok(built));
        assert_eq!(sink.image, img);
    }
}

#[test]
fn unverified_parse_for_inspect() {
    let (pkg, built) = small_package();
    let u = Unverified::parse(&pkg).unwrap();
    assert_eq!(u.manifest, built);
    assert_eq!(
        u.header.payload_start(),
        (manifest_range(&pkg).end + SIGNATURE_LEN) as u64
    );
    assert_eq!(
        &u.signature[..],
        &pkg[manifest_range(&pkg).end..][..SIGNATURE_LEN]
    );
    assert_eq!(
        Unverified::parse(&pkg[..HEADER_LEN + 3]),
        Err(PackageError::Truncated)
    );
}

#[test]
fn builder_refuses_what_the_reader_would_refuse() {
    let img = image(100, 15);
    let build = |o: &builder::BuildOptions, img: &[u8]| {
        builder::build(
            &mut &img[..],
            &mut Cursor::new(Vec::new()),
            &mut Vec::new(),
            o,
            &signing_key(),
        )
    };
    let mut o = options(Compression::None, MIN_CHUNK_SIZE - 1);
    assert!(matches!(build(&o, &img), Err(PackageError::Malformed(_))));
    o.chunk_size = MAX_CHUNK_SIZE + 1;
    assert!(matches!(build(&o, &img), Err(PackageError::Malformed(_))));
    o.chunk_size = MIN_CHUNK_SIZE;
    assert!(matches!(build(&o, &[]), Err(PackageError::Malformed(_))));
    o.name = "n".repeat(256);
    assert!(matches!(build(&o, &img), Err(PackageError::Malformed(_))));
    o.name = "ok".into();
    o.compatible = String::new();
    assert!(matches!(build(&o, &img), Err(PackageError::Malformed(_))));
}

#[test]
fn update_result_mapping() {
    use PackageError as E;
    let cases = [
        (E::BadMagic, result::UNSUPPORTED_TYPE),
        (E::UnsupportedFormat(2), result::UNSUPPORTED_TYPE),
        (
            E::Incompatible {
                expected: "a".into(),
                got: "b".into(),
            },
            result::UNSUPPORTED_TYPE,
        ),
        (E::Downgrade { floor: 2, got: 1 }, result::UNSUPPORTED_TYPE),
        (
            E::TooLarge {
                size: 2,
                capacity: 1,
            },
            result::NO_SPACE,
        ),
        (E::NoSpace("full".into()), result::NO_SPACE),
        (E::Sink("eio".into()), result::UPDATE_FAILED),
        (E::Io("eio".into()), result::UPDATE_FAILED),
        (E::ManifestLength(0), result::INTEGRITY),
        (E::Malformed("x".into()), result::INTEGRITY),
        (E::UnknownKey("k".into()), result::INTEGRITY),
        (E::RevokedKey("k".into()), result::INTEGRITY),
        (E::BadSignature, result::INTEGRITY),
        (E::ChunkHash { index: 1 }, result::INTEGRITY),
        (E::PayloadHash, result::INTEGRITY),
        (E::ImageHash, result::INTEGRITY),
        (
            E::Decompress {
                index: 1,
                reason: "x".into(),
            },
            result::INTEGRITY,
        ),
        (E::Truncated, result::INTEGRITY),
        (E::TrailingData, result::INTEGRITY),
        (E::Resume("x".into()), result::INTEGRITY),
    ];
    for (e, code) in cases {
        assert_eq!(e.update_result(), code, "{e}");
    }
}

/// With the image checked by a read-back, the reader still verifies every test vector (chunk
/// and whole-payload hashes) but reports that the caller must read the image back.
#[test]
fn readback_mode_skips_only_the_running_image_hash() {
    let mut keys = TrustedKeys::new();
    keys.add_key_file(VECTOR_PUB).unwrap();
    let keys = Arc::new(keys);
    for (compression, pkg, _) in VECTORS {
        let mut reader = PackageReader::new(keys.clone(), vector_policy());
        reader.image_checked_by_readback();
        let mut sink = Recorder::default();
        reader.feed(pkg, &mut sink).unwrap();
        reader
            .finish(&mut sink)
            .unwrap_or_else(|e| panic!("{compression}: {e}"));
        assert_eq!(sink.image, VECTOR_IMAGE, "{compression}");
        let checks = reader.checks();
        assert!(checks.payload_hash && !checks.image_hash && checks.readback_required());
        let mut verifier = ImageVerifier::new(reader.manifest().unwrap());
        verifier.update(&sink.image);
        verifier.finish().unwrap();
    }
}

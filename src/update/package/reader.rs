//! The streaming verifier: fed the package bytes in order (from Block1 pushes, CoAP or HTTP
//! downloads), it checks the signature before releasing anything, hands over each chunk's
//! decompressed image bytes only after the chunk's hash matched, and checks the whole-payload and
//! image hashes at the end. Memory stays bounded by one chunk, whatever the image size.
//!
//! Sans-IO: it never reads a file or a clock; the caller feeds bytes in pieces of any size (one
//! byte at a time works) and gets the same result as feeding everything at once.
//!
//! Once a call returned an error the reader is spent: every later `feed`, `finish` or
//! `skip_to_chunk` returns that same error, so a caller that ignores one refusal still cannot push
//! unverified bytes through.

use std::io::Read;
use std::sync::Arc;

use super::digest::{Sha256, StreamDigest};
use ed25519_dalek::Signature;

use super::{
    Compression, HEADER_LEN, Header, KeyId, MAGIC, Manifest, PackageError, SIGNATURE_LEN,
    TrustedKeys,
};

/// Proof that a value passed verification: only this module can construct it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    /// The verified value.
    pub fn get(&self) -> &T {
        &self.0
    }

    /// Takes the verified value out.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// What a package must satisfy on this device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// This device's compatible string.
    pub compatible: String,
    /// The lowest security version accepted (the installed one).
    pub min_security_version: u64,
    /// The target slot's capacity in bytes.
    pub max_image_size: u64,
}

impl Policy {
    /// Checks a (signature-verified) manifest against this device: compatible string, then
    /// anti-rollback, then size.
    pub fn check(&self, manifest: &Manifest) -> Result<(), PackageError> {
        if manifest.compatible != self.compatible {
            return Err(PackageError::Incompatible {
                expected: self.compatible.clone(),
                got: manifest.compatible.clone(),
            });
        }
        if manifest.security_version < self.min_security_version {
            return Err(PackageError::Downgrade {
                floor: self.min_security_version,
                got: manifest.security_version,
            });
        }
        if manifest.image_size > self.max_image_size {
            return Err(PackageError::TooLarge {
                size: manifest.image_size,
                capacity: self.max_image_size,
            });
        }
        Ok(())
    }
}

/// Where verified image bytes go (the slot writer).
pub trait ImageSink {
    /// The manifest verified; nothing has been written yet.
    ///
    /// Also called on a resumed run (before `skip_to_chunk`), where the chunks before the resume
    /// point were written by the earlier run: a sink that resumes must not erase them here.
    fn begin(&mut self, manifest: &Verified<Manifest>) -> Result<(), PackageError>;
    /// Verified, decompressed image bytes of chunk `index`, at `image_offset` in the image.
    fn chunk(&mut self, index: u32, image_offset: u64, data: &[u8]) -> Result<(), PackageError>;
}

/// Which checks a reader performed; after a successful [`PackageReader::finish`] this says what
/// the package was verified against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks {
    /// The first chunk this reader verified: 0 for a whole run, `k` after `skip_to_chunk(k)`.
    pub first_chunk: u32,
    /// The whole-payload SHA-256 was (or will be, at `finish`) compared.
    pub payload_hash: bool,
    /// The image SHA-256 was (or will be, at `finish`) compared.
    pub image_hash: bool,
}

impl Checks {
    /// True when the image hash could not be checked here (a resumed run): before activating
    /// the slot the caller must read the written image back through an [`ImageVerifier`].
    /// Every payload byte is still covered by a signed chunk hash, so this is defence in depth
    /// against a sink that mis-wrote the earlier run's chunks, not a gap in authentication.
    pub fn readback_required(&self) -> bool {
        !self.image_hash
    }
}

/// Checks an image read back from the slot against the verified manifest's size and SHA-256
/// (after a resumed transfer, see [`Checks::readback_required`]).
#[derive(Debug, Clone)]
pub struct ImageVerifier {
    size: u64,
    sha256: [u8; 32],
    seen: u64,
    hash: Sha256,
}

impl ImageVerifier {
    /// Expects the image `manifest` describes.
    pub fn new(manifest: &Verified<Manifest>) -> Self {
        Self {
            size: manifest.image_size,
            sha256: manifest.image_sha256,
            seen: 0,
            hash: Sha256::new(),
        }
    }

    /// The next bytes of the image, in order.
    pub fn update(&mut self, data: &[u8]) {
        self.seen = self.seen.saturating_add(data.len() as u64);
        self.hash.update(data);
    }

    /// All bytes were given: size and hash must match.
    pub fn finish(self) -> Result<(), PackageError> {
        let digest: [u8; 32] = self.hash.finalize();
        if self.seen != self.size || digest != self.sha256 {
            return Err(PackageError::ImageHash);
        }
        Ok(())
    }
}

/// Where the reader is in the package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Collecting the 16 header bytes.
    Header,
    /// Collecting header + manifest + signature (the header is kept: it is signed too).
    Manifest(Header),
    /// Collecting chunk `next_chunk`.
    Payload,
    /// Every chunk went through; more bytes are trailing data.
    Done,
}

/// The running whole-payload and image hashes (absent after a skip: the skipped bytes were
/// never seen).
struct WholeHashes {
    payload: Box<dyn StreamDigest>,
    /// `None` when the caller reads the written image back instead (see
    /// [`PackageReader::image_checked_by_readback`]).
    image: Option<Sha256>,
}

impl std::fmt::Debug for WholeHashes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WholeHashes")
    }
}

impl WholeHashes {
    fn new(payload: Box<dyn StreamDigest>, image: bool) -> Self {
        Self {
            payload,
            image: image.then(Sha256::new),
        }
    }

    /// The image bytes of the next chunk.
    fn update_image(&mut self, compression: Compression, image: &[u8]) {
        // Uncompressed, payload and image are the same bytes (the manifest check guarantees
        // equal hashes): they are hashed once, as the payload.
        if compression != Compression::None
            && let Some(h) = &mut self.image
        {
            h.update(image);
        }
    }

    /// Compares the digests with the manifest.
    fn check(self, manifest: &Manifest) -> Result<(), PackageError> {
        let payload: [u8; 32] = self.payload.finish();
        if payload != manifest.payload_sha256 {
            return Err(PackageError::PayloadHash);
        }
        let image: Option<[u8; 32]> = match manifest.compression {
            Compression::None => Some(payload),
            Compression::Zstd | Compression::Gzip => self.image.map(|h| h.finalize()),
        };
        if image.is_some_and(|i| i != manifest.image_sha256) {
            return Err(PackageError::ImageHash);
        }
        Ok(())
    }
}

/// Decompresses one chunk into a reused buffer, never producing more than the chunk's expected
/// image length (plus the one byte that proves a bomb).
#[derive(Default)]
struct Inflater {
    out: Vec<u8>,
    zstd: ruzstd::decoding::FrameDecoder,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("out_capacity", &self.out.capacity())
            .finish_non_exhaustive()
    }
}

/// Smallest zstd window accepted whatever the chunk size: what ruzstd's encoder declares
/// (128 KiB) with room to spare, so a small `chunk_size` does not refuse ordinary frames.
const MIN_ZSTD_WINDOW: u64 = 1 << 20;

impl Inflater {
    fn inflate<'a>(
        &'a mut self,
        compression: Compression,
        stored: &'a [u8],
        expected: usize,
        chunk_size: u32,
    ) -> Result<&'a [u8], String> {
        match compression {
            Compression::None if stored.len() == expected => Ok(stored),
            Compression::None => Err(format!(
                "stored chunk of {} bytes, expected {expected}",
                stored.len()
            )),
            Compression::Zstd => {
                self.zstd_frame(stored, expected, chunk_size)?;
                Ok(self.out.get(..expected).unwrap_or_default())
            }
            Compression::Gzip => {
                gzip_member(stored, expected, &mut self.out)?;
                Ok(self.out.get(..expected).unwrap_or_default())
            }
        }
    }

    fn zstd_frame(
        &mut self,
        stored: &[u8],
        expected: usize,
        chunk_size: u32,
    ) -> Result<(), String> {
        // The window is what the decoder allocates: a frame may not ask for more than a chunk
        // (or the small floor), whatever its header says.
        self.zstd
            .set_max_window_size(u64::from(chunk_size).max(MIN_ZSTD_WINDOW));
        let mut rest = stored;
        {
            let decoder =
                ruzstd::decoding::StreamingDecoder::new_with_decoder(&mut rest, &mut self.zstd)
                    .map_err(|e| format!("zstd: {e}"))?;
            read_bounded(decoder, &mut self.out, expected)?;
        }
        if !rest.is_empty() {
            return Err(format!("{} bytes after the zstd frame", rest.len()));
        }
        if let (Some(stated), Some(computed)) = (
            self.zstd.get_checksum_from_data(),
            self.zstd.get_calculated_checksum(),
        ) && stated != computed
        {
            return Err("zstd content checksum mismatch".into());
        }
        Ok(())
    }
}

fn gzip_member(stored: &[u8], expected: usize, out: &mut Vec<u8>) -> Result<(), String> {
    // The bufread decoder consumes exactly the member from the slice, so what is left over is
    // trailing data (a second member, or garbage).
    let mut decoder = flate2::bufread::GzDecoder::new(stored);
    read_bounded(&mut decoder, out, expected)?;
    let rest = decoder.get_ref().len();
    if rest != 0 {
        return Err(format!("{rest} bytes after the gzip member"));
    }
    Ok(())
}

/// Reads `decoder` to its end into `out`, failing as soon as it yields more than `expected`
/// bytes: the buffer never grows past `expected + 1`, whatever the compressed data claims.
fn read_bounded(mut decoder: impl Read, out: &mut Vec<u8>, expected: usize) -> Result<(), String> {
    // Stale bytes from the previous chunk are fine: only `..filled` is ever used.
    out.resize(expected.saturating_add(1), 0);
    let mut filled = 0usize;
    loop {
        let room = out.get_mut(filled..).unwrap_or_default();
        match decoder.read(room) {
            Ok(0) => break,
            Ok(n) => {
                filled = filled.saturating_add(n);
                if filled > expected {
                    return Err(format!("inflates beyond its {expected} image bytes"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    if filled != expected {
        return Err(format!("inflates to {filled} bytes, expected {expected}"));
    }
    Ok(())
}

/// Verifies a package as it streams.
#[derive(Debug)]
pub struct PackageReader {
    keys: Arc<TrustedKeys>,
    policy: Policy,
    stage: Stage,
    /// The unit being collected: the header, then header + manifest + signature, then the
    /// current chunk (when it arrives split over several `feed`s).
    buf: Vec<u8>,
    position: u64,
    header: Option<Header>,
    manifest: Option<Verified<Manifest>>,
    /// Index of the chunk being collected (= chunks verified so far, skipped ones included).
    next_chunk: u32,
    resumed_at: Option<u32>,
    hashes: Option<WholeHashes>,
    /// The caller verifies the image by reading the slot back: no running image hash.
    readback: bool,
    /// Where the whole-payload hash is computed (taken when the payload starts).
    payload_digest: Option<Box<dyn StreamDigest>>,
    inflater: Inflater,
    failed: Option<PackageError>,
}

impl PackageReader {
    /// A reader for a whole package, from its first byte.
    pub fn new(keys: Arc<TrustedKeys>, policy: Policy) -> Self {
        Self {
            keys,
            policy,
            stage: Stage::Header,
            buf: Vec::new(),
            position: 0,
            header: None,
            manifest: None,
            next_chunk: 0,
            resumed_at: None,
            hashes: None,
            readback: false,
            payload_digest: None,
            inflater: Inflater::default(),
            failed: None,
        }
    }

    /// The caller will read the written image back and check its SHA-256 against the manifest
    /// (an [`ImageVerifier`]) before using it, so this reader skips its own running image hash:
    /// for a compressed package that is the largest hashing cost (the image is the biggest of
    /// the three streams), and the read-back is the stronger check (it sees what the medium
    /// holds). Every chunk and the whole payload are still checked here. Call before feeding.
    pub fn image_checked_by_readback(&mut self) {
        self.readback = true;
    }

    /// Computes the whole-payload SHA-256 with `digest` instead of inline (e.g. on another
    /// core). The reader still compares it at `finish`. Call before feeding.
    pub fn hash_payload_with(&mut self, digest: Box<dyn StreamDigest>) {
        self.payload_digest = Some(digest);
    }

    /// Feeds the next bytes of the package.
    ///
    /// Nothing reaches `sink` before the signature and the policy checks passed, and no byte of
    /// a chunk reaches it before that chunk's hash matched. Bytes past the last chunk are
    /// refused here (`TrailingData`), not at `finish`.
    pub fn feed(&mut self, data: &[u8], sink: &mut dyn ImageSink) -> Result<(), PackageError> {
        self.guard(|r| r.feed_all(data, sink))
    }

    /// The package ended: checks that it is complete and every hash matches.
    ///
    /// After a whole run that is: every chunk hash (as they streamed), the decompressed size of
    /// every chunk, and the whole-payload and image SHA-256. After a resumed run the whole
    /// hashes cannot be computed (the skipped bytes were never seen here); every payload byte is
    /// still covered by the signed per-chunk hashes, and [`checks`](Self::checks) tells the
    /// caller to read the written image back through an [`ImageVerifier`].
    pub fn finish(
        &mut self,
        _sink: &mut dyn ImageSink,
    ) -> Result<Verified<Manifest>, PackageError> {
        self.guard(Self::finish_inner)
    }

    /// The verified manifest, once the header and signature went through.
    pub fn manifest(&self) -> Option<&Verified<Manifest>> {
        self.manifest.as_ref()
    }

    /// Package bytes consumed so far (after `skip_to_chunk`, as if the skipped chunks had been
    /// fed).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Chunks fully verified and handed to the sink so far, counting the chunks skipped by
    /// `skip_to_chunk` (verified by the earlier run): always the index of the next chunk, so
    /// it is the value to persist as the next resume point.
    pub fn chunks_done(&self) -> u32 {
        self.next_chunk
    }

    /// After the header was fed again (a resumed transfer), skips the payload to chunk `index`
    /// (the chunks before it were verified and written in an earlier run). The next `feed` must
    /// start at `manifest().chunk_offset(index)` past the header. The whole-payload hash cannot be
    /// checked after a skip; `finish` then relies on the chunk hashes, which cover every byte.
    ///
    /// Feed exactly [`payload_start`](Self::payload_start) bytes before calling this (the header
    /// alone tells that length); it fails with `Resume` if any payload byte was already fed, if
    /// the manifest has not verified yet, or if `index` is past the last chunk. `index` equal to
    /// the chunk count is allowed (everything was written; only `finish` remains).
    pub fn skip_to_chunk(&mut self, index: u32) -> Result<(), PackageError> {
        self.guard(|r| r.skip_inner(index))
    }

    /// Absolute package offset of the first payload byte (valid once the manifest is known).
    ///
    /// Known as soon as the 16-byte header was parsed, before the manifest arrives, so a
    /// resuming caller knows how many bytes to feed before `skip_to_chunk`.
    pub fn payload_start(&self) -> Option<u64> {
        self.header.map(|h| h.payload_start())
    }

    /// Which checks this run makes (or made, after `finish`). See [`Checks`].
    pub fn checks(&self) -> Checks {
        let whole = self.resumed_at.is_none();
        Checks {
            first_chunk: self.resumed_at.unwrap_or(0),
            payload_hash: whole,
            image_hash: whole && !self.readback,
        }
    }

    /// Bytes of buffer the reader holds now (capacity, not length): the bound the memory tests
    /// check. At most one chunk's stored bytes plus one chunk's image bytes (and the manifest
    /// while it is collected), whatever the image size. Not counted: the zstd decoder's window,
    /// which is refused above max(`chunk_size`, 1 MiB).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity() + self.inflater.out.capacity()
    }

    /// Runs `f` unless the reader already failed; a failure makes the reader spent.
    fn guard<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, PackageError>,
    ) -> Result<T, PackageError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = f(self);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn feed_all(&mut self, mut data: &[u8], sink: &mut dyn ImageSink) -> Result<(), PackageError> {
        while !data.is_empty() {
            let used = match self.stage {
                Stage::Header => self.feed_header(data)?,
                Stage::Manifest(header) => self.feed_manifest(header, data, sink)?,
                Stage::Payload => self.feed_payload(data, sink)?,
                Stage::Done => return Err(PackageError::TrailingData),
            };
            self.position += used as u64;
            data = data.get(used..).unwrap_or_default();
        }
        Ok(())
    }

    /// Appends up to `want - buf.len()` bytes of `data` to the buffer; returns how many.
    fn collect(&mut self, data: &[u8], want: usize) -> usize {
        let take = want.saturating_sub(self.buf.len()).min(data.len());
        self.buf
            .extend_from_slice(data.get(..take).unwrap_or_default());
        take
    }

    fn feed_header(&mut self, data: &[u8]) -> Result<usize, PackageError> {
        let used = self.collect(data, HEADER_LEN);
        // Refuse a non-package at its first wrong byte rather than after 16.
        let n = self.buf.len().min(MAGIC.len());
        if self.buf.get(..n) != MAGIC.get(..n) {
            return Err(PackageError::BadMagic);
        }
        if let Ok(bytes) = <&[u8; HEADER_LEN]>::try_from(self.buf.as_slice()) {
            let header = Header::parse(bytes)?;
            self.header = Some(header);
            self.stage = Stage::Manifest(header);
        }
        Ok(used)
    }

    fn feed_manifest(
        &mut self,
        header: Header,
        data: &[u8],
        sink: &mut dyn ImageSink,
    ) -> Result<usize, PackageError> {
        // Bounded by MAX_MANIFEST (checked with the header); grows with what actually arrives.
        let want = HEADER_LEN + header.manifest_len as usize + SIGNATURE_LEN;
        let used = self.collect(data, want);
        if self.buf.len() == want {
            let manifest = Verified(self.verify_manifest(header)?);
            sink.begin(&manifest)?;
            self.manifest = Some(manifest);
            let payload = self
                .payload_digest
                .take()
                .unwrap_or_else(|| Box::new(Sha256::new()));
            self.hashes = Some(WholeHashes::new(payload, !self.readback));
            // The manifest bytes are no longer needed: give their memory back.
            self.buf = Vec::new();
            self.stage = Stage::Payload;
        }
        Ok(used)
    }

    /// Decodes the buffered manifest, checks its signature with the key it names, then the
    /// device policy. The order matters: nothing about an unauthenticated manifest is acted on.
    fn verify_manifest(&self, header: Header) -> Result<Manifest, PackageError> {
        let signed_len = HEADER_LEN + header.manifest_len as usize;
        let (signed, signature) = self
            .buf
            .split_at_checked(signed_len)
            .ok_or(PackageError::Truncated)?;
        let signature =
            <[u8; SIGNATURE_LEN]>::try_from(signature).map_err(|_| PackageError::Truncated)?;
        let manifest = Manifest::decode(signed.get(HEADER_LEN..).unwrap_or_default())?;
        let key = self.keys.get(&KeyId(manifest.key_id.clone()))?;
        key.verify_strict(signed, &Signature::from_bytes(&signature))
            .map_err(|_| PackageError::BadSignature)?;
        self.policy.check(&manifest)?;
        Ok(manifest)
    }

    fn current_stored_len(&self) -> Result<usize, PackageError> {
        self.manifest
            .as_ref()
            .and_then(|m| m.chunks.get(self.next_chunk as usize))
            .map(|c| c.stored_len as usize)
            .ok_or(PackageError::TrailingData)
    }

    fn feed_payload(
        &mut self,
        data: &[u8],
        sink: &mut dyn ImageSink,
    ) -> Result<usize, PackageError> {
        let need = self.current_stored_len()?;
        if self.buf.is_empty()
            && let Some(whole) = data.get(..need)
        {
            // The whole chunk is in this piece: verify it in place, no copy.
            self.process_chunk(whole, sink)?;
            if let Some(h) = &mut self.hashes {
                h.payload.update(whole);
            }
            return Ok(need);
        }
        if self.buf.is_empty() {
            // Signed and bounded by max_stored_len(chunk_size): safe to reserve at once, and
            // reserving exactly keeps the buffer at one chunk.
            self.buf.reserve_exact(need);
        }
        let used = self.collect(data, need);
        if self.buf.len() == need {
            let chunk = std::mem::take(&mut self.buf);
            let result = self.process_chunk(&chunk, sink);
            // The collected chunk is handed to the payload hash as it is (a background one
            // takes it without a copy); the buffer that comes back collects the next chunk.
            self.buf = match (&result, &mut self.hashes) {
                (Ok(()), Some(h)) => h.payload.update_owned(chunk),
                _ => chunk,
            };
            self.buf.clear();
            result?;
        }
        Ok(used)
    }

    /// One complete chunk: hash, decompress, size, image hash, then the sink. The caller adds
    /// the chunk to the whole-payload hash after it was accepted.
    fn process_chunk(
        &mut self,
        stored: &[u8],
        sink: &mut dyn ImageSink,
    ) -> Result<(), PackageError> {
        let Self {
            manifest,
            inflater,
            hashes,
            next_chunk,
            stage,
            ..
        } = self;
        let manifest = manifest.as_ref().ok_or(PackageError::Truncated)?;
        let index = *next_chunk;
        let info = manifest
            .chunks
            .get(index as usize)
            .ok_or(PackageError::TrailingData)?;
        let digest: [u8; 32] = Sha256::digest(stored);
        if digest != info.sha256 {
            return Err(PackageError::ChunkHash { index });
        }
        let expected = manifest.chunk_image_len(index) as usize;
        let image = inflater
            .inflate(manifest.compression, stored, expected, manifest.chunk_size)
            .map_err(|reason| PackageError::Decompress { index, reason })?;
        if let Some(h) = hashes {
            h.update_image(manifest.compression, image);
        }
        sink.chunk(index, manifest.chunk_image_offset(index), image)?;
        *next_chunk = index + 1;
        if *next_chunk >= manifest.chunk_count() {
            *stage = Stage::Done;
        }
        Ok(())
    }

    fn finish_inner(&mut self) -> Result<Verified<Manifest>, PackageError> {
        let Some(manifest) = self.manifest.clone() else {
            return Err(PackageError::Truncated);
        };
        if self.stage != Stage::Done {
            return Err(PackageError::Truncated);
        }
        if let Some(hashes) = self.hashes.take() {
            hashes.check(&manifest)?;
        }
        Ok(manifest)
    }

    fn skip_inner(&mut self, index: u32) -> Result<(), PackageError> {
        let resume = |why: &str| Err(PackageError::Resume(why.to_string()));
        let Some(manifest) = &self.manifest else {
            return resume("the manifest has not been verified yet");
        };
        if self.stage != Stage::Payload || self.next_chunk != 0 || !self.buf.is_empty() {
            return resume("payload bytes were already fed");
        }
        let count = manifest.chunk_count();
        if index > count {
            return Err(PackageError::Resume(format!(
                "chunk {index} is past the last of {count} chunks"
            )));
        }
        self.position += manifest.chunk_offset(index);
        self.next_chunk = index;
        if index > 0 {
            // The skipped bytes were never hashed here; see `finish`.
            self.resumed_at = Some(index);
            self.hashes = None;
        }
        if index == count {
            self.stage = Stage::Done;
        }
        Ok(())
    }
}

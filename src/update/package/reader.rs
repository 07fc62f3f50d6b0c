//! The streaming verifier: fed the package bytes in order (from Block1 pushes, CoAP or HTTP
//! downloads), it checks the signature before releasing anything, hands over each chunk's
//! decompressed image bytes only after the chunk's hash matched, and checks the whole-payload and
//! image hashes at the end. Memory stays bounded by one chunk, whatever the image size.

use std::sync::Arc;

use super::{Manifest, PackageError, TrustedKeys};

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

/// Where verified image bytes go (the slot writer).
pub trait ImageSink {
    /// The manifest verified; nothing has been written yet.
    fn begin(&mut self, manifest: &Verified<Manifest>) -> Result<(), PackageError>;
    /// Verified, decompressed image bytes of chunk `index`, at `image_offset` in the image.
    fn chunk(&mut self, index: u32, image_offset: u64, data: &[u8]) -> Result<(), PackageError>;
}

/// Verifies a package as it streams.
#[derive(Debug)]
pub struct PackageReader {
    keys: Arc<TrustedKeys>,
    policy: Policy,
}

impl PackageReader {
    /// A reader for a whole package, from its first byte.
    pub fn new(keys: Arc<TrustedKeys>, policy: Policy) -> Self {
        Self { keys, policy }
    }

    /// Feeds the next bytes of the package.
    pub fn feed(&mut self, _data: &[u8], _sink: &mut dyn ImageSink) -> Result<(), PackageError> {
        todo!("PackageReader::feed")
    }

    /// The package ended: checks that it is complete and every hash matches.
    pub fn finish(
        &mut self,
        _sink: &mut dyn ImageSink,
    ) -> Result<Verified<Manifest>, PackageError> {
        todo!("PackageReader::finish")
    }

    /// The verified manifest, once the header and signature went through.
    pub fn manifest(&self) -> Option<&Verified<Manifest>> {
        todo!("PackageReader::manifest")
    }

    /// Package bytes consumed so far.
    pub fn position(&self) -> u64 {
        todo!("PackageReader::position")
    }

    /// Chunks fully verified and handed to the sink so far.
    pub fn chunks_done(&self) -> u32 {
        todo!("PackageReader::chunks_done")
    }

    /// After the header was fed again (a resumed transfer), skips the payload to chunk `index`
    /// (the chunks before it were verified and written in an earlier run). The next `feed` must
    /// start at `manifest().chunk_offset(index)` past the header. The whole-payload hash cannot be
    /// checked after a skip; `finish` then relies on the chunk hashes, which cover every byte.
    pub fn skip_to_chunk(&mut self, _index: u32) -> Result<(), PackageError> {
        todo!("PackageReader::skip_to_chunk")
    }

    /// Absolute package offset of the first payload byte (valid once the manifest is known).
    pub fn payload_start(&self) -> Option<u64> {
        todo!("PackageReader::payload_start")
    }
}

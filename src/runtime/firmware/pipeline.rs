//! The transfer pipelines: package bytes (pushed with Block1, or pulled by a download) go
//! through the streaming verifier into the slot writer. A pull runs the download on the runtime
//! and the verification on a blocking thread, joined by a bounded channel (the slower side sets
//! the pace; nothing is buffered beyond a few pieces), and leaves checkpoints so a lost connection
//! or a restart resumes at a verified chunk boundary.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::AbortSignal;
use super::hasher::BackgroundSha256;
use super::slot::SlotWriter;
use crate::core::effect::FwOutcome;
use crate::persist::Store;
use crate::runtime::download::{self, DownloadConfig, DownloadError, FetchRequest};
use crate::update::fota::{Journal, PkgInfo};
use crate::update::package::{
    HEADER_LEN, ImageSink, Manifest, PackageError, PackageReader, Policy, SIGNATURE_LEN,
    TrustedKeys, Verified,
};
use crate::update::result;

/// The resume checkpoint's document name.
pub const CHECKPOINT: &str = "firmware-download";
/// Pieces in flight between the download and the verifier.
const CHANNEL_DEPTH: usize = 16;

/// What the pipelines need.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Trusted signing keys.
    pub keys: Arc<TrustedKeys>,
    /// This device's compatible string.
    pub compatible: String,
    /// Download settings for pulls.
    pub download: DownloadConfig,
    /// Write a checkpoint after at least this many image bytes.
    pub checkpoint_bytes: u64,
}

/// Where an interrupted pull stands (persisted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Checkpoint {
    uri: String,
    etag: Option<Vec<u8>>,
    manifest_sha256: [u8; 32],
    payload_start: u64,
    chunks_done: u32,
}

/// One transfer into an open slot.
#[derive(Debug)]
pub struct Pipeline {
    settings: PipelineSettings,
    store: Arc<Store>,
    writer: SlotWriter,
    reader: Option<PackageReader>,
}

impl Pipeline {
    /// Opens the target slot. Unless `resume`, any earlier checkpoint is forgotten.
    pub fn open(
        settings: PipelineSettings,
        store: Arc<Store>,
        device: &Path,
        resume: bool,
    ) -> Result<Self, PackageError> {
        let writer = SlotWriter::open(device)?;
        if !resume {
            clear_checkpoint(&store);
        }
        Ok(Self {
            settings,
            store,
            writer,
            reader: None,
        })
    }

    fn new_reader(&self) -> PackageReader {
        reader_for(&self.store, &self.settings, &self.writer)
    }

    /// One pushed block, in order.
    pub fn push(&mut self, offset: u64, data: &[u8], last: bool) -> FwOutcome {
        if offset == 0 || self.reader.is_none() {
            self.reader = Some(self.new_reader());
        }
        let Some(reader) = self.reader.as_mut() else {
            return FwOutcome::Done;
        };
        if reader.position() != offset {
            return failed_pkg(&PackageError::Malformed(format!(
                "block at {offset}, expected {}",
                reader.position()
            )));
        }
        if let Err(e) = reader.feed(data, &mut self.writer) {
            return failed_pkg(&e);
        }
        if !last {
            return FwOutcome::Done;
        }
        finish(reader, &mut self.writer)
    }

    /// Pulls the package from `uri` (resuming from the checkpoint when asked and possible).
    pub async fn fetch(self, uri: &str, resume: bool, abort: Arc<AbortSignal>) -> FwOutcome {
        let checkpoint = if resume {
            load_checkpoint(&self.store).filter(|c| c.uri == uri)
        } else {
            None
        };
        let mut this = self;
        // At most one restart from zero when the package changed on the server.
        let mut checkpoint = checkpoint;
        for _ in 0..2 {
            match this
                .fetch_once(uri, checkpoint.take(), Arc::clone(&abort))
                .await
            {
                Err(Retry::FromZero(me)) => {
                    log::warn!(
                        "firmware: the package at {uri} changed; downloading again from the start"
                    );
                    clear_checkpoint(&me.store);
                    this = me;
                }
                Ok(outcome) => return outcome,
            }
        }
        FwOutcome::Failed {
            result: result::CONNECTION_LOST,
            reason: "the package keeps changing on the server".into(),
        }
    }

    async fn fetch_once(
        self,
        uri: &str,
        checkpoint: Option<Checkpoint>,
        abort: Arc<AbortSignal>,
    ) -> Result<FwOutcome, Retry> {
        let Self {
            settings,
            store,
            mut writer,
            ..
        } = self;
        let mut reader = reader_for(&store, &settings, &writer);
        let mut etag = None;
        let mut start = 0;
        if let Some(cp) = &checkpoint {
            // The header again (a few KiB) to re-verify the signature, then skip what is done.
            //
            // The identity check of the resume is the signed manifest's digest: it pins every
            // chunk's hash, so an equal digest means the server still has the package whose
            // first chunks are in the slot. The transport's validator is only needed to keep the
            // *rest* of this transfer consistent with the header just fetched, so it is learnt
            // here, not taken from the checkpoint: a fresh transfer never knows it while it
            // checkpoints (the download reports it only at the end), and an HTTP resume without
            // one is refused as "changed" (it used to restart every interrupted pull from
            // zero); libcoap even sends a new ETag for every transfer that starts at block 0.
            let header = FetchRequest {
                uri: uri.to_string(),
                start: 0,
                end: Some(cp.payload_start),
                etag: None,
            };
            match fetch_all(header, &settings.download, &abort).await {
                Ok((bytes, meta)) => {
                    let resumed = reader
                        .feed(&bytes, &mut writer)
                        .ok()
                        .and_then(|()| reader.manifest().map(manifest_digest))
                        .filter(|d| *d == cp.manifest_sha256)
                        .and_then(|_| reader.skip_to_chunk(cp.chunks_done).ok());
                    match (
                        resumed,
                        reader.manifest().map(|m| m.chunk_offset(cp.chunks_done)),
                    ) {
                        (Some(()), Some(off)) => {
                            log::info!("firmware: resuming {uri} at chunk {}", cp.chunks_done);
                            start = cp.payload_start + off;
                            etag = meta.etag.or_else(|| cp.etag.clone());
                        }
                        _ => {
                            log::warn!(
                                "firmware: the checkpoint does not match the package; starting over"
                            );
                            reader = reader_for(&store, &settings, &writer);
                        }
                    }
                }
                Err(DownloadError::EtagChanged) => {
                    return Err(Retry::FromZero(Self {
                        settings,
                        store,
                        writer,
                        reader: None,
                    }));
                }
                Err(e) => {
                    return Ok(FwOutcome::Failed {
                        result: e.update_result(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        let (tx, rx) = mpsc::channel::<Vec<u8>>(CHANNEL_DEPTH);
        let verify = {
            let store = Arc::clone(&store);
            let uri = uri.to_string();
            let every = settings.checkpoint_bytes;
            let etag0 = etag.clone();
            let (done, verified) = tokio::sync::oneshot::channel();
            let spawned = super::background::spawn("lwm2md-verify", move || {
                let _ = done.send(verify_stream(rx, reader, writer, store, uri, etag0, every));
            });
            if let Err(e) = spawned {
                return Ok(FwOutcome::Failed {
                    result: result::UPDATE_FAILED,
                    reason: format!("cannot start the verifier: {e}"),
                });
            }
            verified
        };
        let request = FetchRequest {
            uri: uri.to_string(),
            start,
            end: None,
            etag,
        };
        let fetched = tokio::select! {
            r = download::fetch(request, &settings.download, tx) => Some(r),
            () = abort.raised() => None,
        };
        let Ok((writer, verified)) = verify.await else {
            return Ok(FwOutcome::Failed {
                result: result::UPDATE_FAILED,
                reason: "the verifier thread died".into(),
            });
        };
        match fetched {
            None => Ok(FwOutcome::Failed {
                result: result::CANCELLED,
                reason: "aborted".into(),
            }),
            Some(Err(DownloadError::EtagChanged)) => Err(Retry::FromZero(Self {
                settings,
                store,
                writer,
                reader: None,
            })),
            // The verifier refused the package and hung up: its reason is the one that counts.
            Some(Err(DownloadError::Aborted)) | Some(Ok(_)) => Ok(verified),
            Some(Err(e)) => {
                if let FwOutcome::Failed { result: r, reason } = &verified
                    && *r != result::CONNECTION_LOST
                {
                    return Ok(FwOutcome::Failed {
                        result: *r,
                        reason: reason.clone(),
                    });
                }
                log::warn!("firmware: download of {uri} failed: {e}");
                Ok(FwOutcome::Failed {
                    result: e.update_result(),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// The floor is re-read at every transfer: a commit in this process raised it in the journal.
    fn policy_of(store: &Store, settings: &PipelineSettings, writer: &SlotWriter) -> Policy {
        let floor = store
            .load(super::JOURNAL)
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_value::<Journal>(v).ok())
            .map_or(0, |j| j.security_floor);
        Policy {
            compatible: settings.compatible.clone(),
            min_security_version: floor,
            max_image_size: writer.capacity(),
        }
    }
}

/// A reader for one transfer. `finish` always reads the slot back (`SlotWriter::finish`), so
/// the reader need not hash the image as it streams; the whole-payload hash runs on a thread
/// of its own.
fn reader_for(store: &Store, settings: &PipelineSettings, writer: &SlotWriter) -> PackageReader {
    let mut reader = PackageReader::new(
        Arc::clone(&settings.keys),
        Pipeline::policy_of(store, settings, writer),
    );
    reader.image_checked_by_readback();
    reader.hash_payload_with(Box::new(BackgroundSha256::start()));
    reader
}

/// Why a fetch attempt hands the pipeline back.
enum Retry {
    /// The package changed: start over with this pipeline.
    FromZero(Pipeline),
}

/// Feeds downloaded pieces to the verifier and the slot; checkpoints as it goes. Returns the
/// writer and the outcome; dropping `rx` early tells the download to stop.
fn verify_stream(
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut reader: PackageReader,
    writer: SlotWriter,
    store: Arc<Store>,
    uri: String,
    etag: Option<Vec<u8>>,
    every: u64,
) -> (SlotWriter, FwOutcome) {
    let mut sink = Checkpointing {
        writer,
        store,
        uri,
        etag,
        every,
        since: 0,
        digest: None,
        payload_start: 0,
        chunks: 0,
    };
    while let Some(piece) = rx.blocking_recv() {
        if sink.digest.is_none()
            && let (Some(m), Some(start)) = (reader.manifest(), reader.payload_start())
        {
            sink.digest = Some(manifest_digest(m));
            sink.payload_start = start;
            sink.chunks = m.chunk_count();
        }
        if let Err(e) = reader.feed(&piece, &mut sink) {
            log::warn!("firmware: package refused: {e}");
            return (sink.writer, failed_pkg(&e));
        }
    }
    // The channel closed: the download finished (or failed: then the caller's reason wins).
    if reader.manifest().is_none() || reader.chunks_done() == 0 && reader.position() == 0 {
        return (
            sink.writer,
            FwOutcome::Failed {
                result: result::CONNECTION_LOST,
                reason: "no data".into(),
            },
        );
    }
    // The checkpoint is not cleared here: the next thing written is the journal's Downloaded,
    // after which no resume happens, and the next transfer clears it when it starts
    // (`Pipeline::open`). Clearing it cost one more fsync-rename-fsync while the server waits
    // for State 2.
    let outcome = finish(&mut reader, &mut sink.writer);
    (sink.writer, outcome)
}

/// The slot writer plus checkpoints every `every` bytes.
struct Checkpointing {
    writer: SlotWriter,
    store: Arc<Store>,
    uri: String,
    etag: Option<Vec<u8>>,
    every: u64,
    since: u64,
    digest: Option<[u8; 32]>,
    payload_start: u64,
    /// The package's chunk count (from the manifest, at `begin`).
    chunks: u32,
}

impl ImageSink for Checkpointing {
    fn begin(&mut self, manifest: &Verified<Manifest>) -> Result<(), PackageError> {
        let encoded = manifest.encode();
        self.digest = Some(Sha256::digest(&encoded).into());
        // Where the payload starts must be recorded here, together with the digest: once the
        // digest is set, `verify_stream` no longer asks the reader, and a checkpoint may be due
        // within this very `feed`. (It used to stay 0, so every resume re-fetched nothing of the
        // header, found "no manifest" and started the whole download over.) The reader only
        // accepts a manifest whose deterministic re-encoding equals the received bytes, so the
        // encoded length is the length on the wire.
        self.payload_start = (HEADER_LEN + SIGNATURE_LEN + encoded.len()) as u64;
        self.chunks = manifest.chunk_count();
        self.writer.begin(manifest)
    }

    fn chunk(&mut self, index: u32, image_offset: u64, data: &[u8]) -> Result<(), PackageError> {
        self.writer.chunk(index, image_offset, data)?;
        self.since += data.len() as u64;
        // None after the last chunk: the transfer is complete and only `finish` and the
        // journal's Downloaded remain, so a checkpoint there would be one more
        // fsync-rename-fsync on the way to State 2 for a resume that cannot be needed (a crash
        // before Downloaded resumes from the previous checkpoint).
        if self.since >= self.every
            && index + 1 < self.chunks
            && let Some(digest) = self.digest
        {
            self.since = 0;
            let cp = Checkpoint {
                uri: self.uri.clone(),
                etag: self.etag.clone(),
                manifest_sha256: digest,
                payload_start: self.payload_start,
                chunks_done: index + 1,
            };
            let store = Arc::clone(&self.store);
            // Data first, then the claim: the writer runs this once the bytes are on the
            // medium, so a checkpoint never covers bytes that a power cut could lose.
            self.writer.checkpoint(Box::new(move || {
                if let Ok(v) = serde_json::to_value(&cp)
                    && let Err(e) = store.save(CHECKPOINT, &v)
                {
                    log::warn!("firmware: checkpoint not saved: {e}");
                }
            }))?;
        }
        Ok(())
    }
}

/// Completes a verified transfer: all hashes, then the read-back check of the slot.
fn finish(reader: &mut PackageReader, writer: &mut SlotWriter) -> FwOutcome {
    let manifest = match reader.finish(writer) {
        Ok(m) => m,
        Err(e) => return failed_pkg(&e),
    };
    if let Err(e) = writer.finish(&manifest) {
        return failed_pkg(&e);
    }
    FwOutcome::Downloaded {
        package: PkgInfo {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            security_version: manifest.security_version,
            image_size: manifest.image_size,
        },
    }
}

fn failed_pkg(e: &PackageError) -> FwOutcome {
    FwOutcome::Failed {
        result: e.update_result(),
        reason: e.to_string(),
    }
}

fn manifest_digest(m: &Verified<Manifest>) -> [u8; 32] {
    Sha256::digest(m.encode()).into()
}

fn load_checkpoint(store: &Store) -> Option<Checkpoint> {
    store
        .load(CHECKPOINT)
        .ok()
        .flatten()
        .and_then(|v| serde_json::from_value(v).ok())
}

fn clear_checkpoint(store: &Store) {
    if let Err(e) = store.save(CHECKPOINT, &serde_json::Value::Null) {
        log::warn!("firmware: cannot clear the download checkpoint: {e}");
    }
}

/// Fetches a small range completely (the package header on resume).
async fn fetch_all(
    req: FetchRequest,
    config: &DownloadConfig,
    abort: &AbortSignal,
) -> Result<(Vec<u8>, download::FetchMeta), DownloadError> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CHANNEL_DEPTH);
    let collect = async {
        let mut all = Vec::new();
        while let Some(p) = rx.recv().await {
            all.extend_from_slice(&p);
        }
        all
    };
    let (fetched, bytes) = tokio::select! {
        r = async { tokio::join!(download::fetch(req, config, tx), collect) } => r,
        () = abort.raised() => return Err(DownloadError::Aborted),
    };
    fetched.map(|meta| (bytes, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::package::Compression;
    use crate::update::package::testkit;

    /// A state store and a zeroed 1 MiB slot file in a fresh directory (kept while the first
    /// value lives).
    fn store_and_slot() -> (tempfile::TempDir, Arc<Store>, std::path::PathBuf) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(tmp.path().join("state")).expect("store"));
        let slot = tmp.path().join("slot.img");
        std::fs::write(&slot, vec![0u8; 1 << 20]).expect("slot");
        (tmp, store, slot)
    }

    /// A checkpointing sink on `slot`, a checkpoint due every 64 KiB.
    fn checkpointing(slot: &std::path::Path, store: &Arc<Store>) -> Checkpointing {
        Checkpointing {
            writer: SlotWriter::open(slot).expect("open"),
            store: Arc::clone(store),
            uri: "http://x/p".into(),
            etag: None,
            every: 65536,
            since: 0,
            digest: None,
            payload_start: 0,
            chunks: 0,
        }
    }

    /// A fresh pull's checkpoint must let a new reader resume: the header range it names
    /// (`0..payload_start`) holds the whole signed manifest, whose digest matches, and the
    /// chunk index is one `skip_to_chunk` accepts. Regression: `payload_start` stayed 0 when the
    /// manifest was verified inside the sink (a fresh, not resumed, transfer), so no interrupted
    /// pull ever resumed.
    #[test]
    fn a_fresh_transfer_checkpoints_a_resumable_position() {
        let (_tmp, store, slot) = store_and_slot();
        let image = testkit::image(300_000, 7);
        let (pkg, _) = testkit::package(&image, &testkit::options(Compression::Zstd, 65536));
        let mut reader = PackageReader::new(testkit::trusted(), testkit::policy());
        let mut sink = checkpointing(&slot, &store);
        // Interrupted after most of the package (fed in one piece, as a fast link does).
        let header_len = reader_payload_start(&pkg);
        reader
            .feed(&pkg[..pkg.len() * 3 / 4], &mut sink)
            .expect("feed");
        // Checkpoints are saved by the writer's follower once their bytes are durable.
        sink.writer.settle().expect("settled");
        let cp = load_checkpoint(&store).expect("a checkpoint");
        assert_eq!(cp.payload_start, header_len as u64);
        assert!(cp.chunks_done >= 1, "{cp:?}");
        // Resume as `fetch_once` does.
        let mut resumed = PackageReader::new(testkit::trusted(), testkit::policy());
        let mut writer = SlotWriter::open(&slot).expect("open");
        let start = usize::try_from(cp.payload_start).expect("usize");
        resumed.feed(&pkg[..start], &mut writer).expect("header");
        let manifest = resumed.manifest().expect("manifest after the header range");
        assert_eq!(manifest_digest(manifest), cp.manifest_sha256);
        let offset = manifest.chunk_offset(cp.chunks_done);
        resumed.skip_to_chunk(cp.chunks_done).expect("skip");
        let rest = start + usize::try_from(offset).expect("usize");
        resumed.feed(&pkg[rest..], &mut writer).expect("rest");
        assert!(matches!(
            finish(&mut resumed, &mut writer),
            FwOutcome::Downloaded { .. }
        ));
    }

    fn reader_payload_start(pkg: &[u8]) -> usize {
        let m = u32::from_be_bytes([pkg[12], pkg[13], pkg[14], pkg[15]]) as usize;
        HEADER_LEN + m + SIGNATURE_LEN
    }

    /// The last chunk writes no checkpoint: only `finish` and the journal's Downloaded follow,
    /// and each checkpoint is an fsync-rename-fsync while the server waits for State 2. The
    /// checkpoint left is the one before, so a crash before Downloaded still resumes.
    #[test]
    fn no_checkpoint_after_the_last_chunk() {
        let (_tmp, store, slot) = store_and_slot();
        let image = testkit::image(4 * 65536, 9);
        let (pkg, _) = testkit::package(&image, &testkit::options(Compression::None, 65536));
        let mut reader = PackageReader::new(testkit::trusted(), testkit::policy());
        let mut sink = checkpointing(&slot, &store);
        reader.feed(&pkg, &mut sink).expect("feed");
        let outcome = finish(&mut reader, &mut sink.writer);
        assert!(
            matches!(outcome, FwOutcome::Downloaded { .. }),
            "{outcome:?}"
        );
        let cp = load_checkpoint(&store).expect("the checkpoint of chunk 2");
        assert_eq!(cp.chunks_done, 3, "{cp:?}");
    }
}

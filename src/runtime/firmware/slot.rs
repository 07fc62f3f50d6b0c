//! Writing an image into the inactive slot (a block device or, for the fake backend, a file):
//! verified chunks are staged in aligned buffers, and follower threads write them with direct
//! I/O, make them durable and read them back from the medium while the transfer goes on.
//!
//! Why followers: syncing and reading a gigabyte back after the download took as long as the
//! download itself, all of it on the verifying thread. Now the writer cuts the image into
//! regions (at every checkpoint, at most [`REGION`] bytes); one follower writes the staged
//! buffers, syncs each region and runs the checkpoint that waited for it (a checkpoint never
//! claims bytes not yet on the medium); the other reads each synced region back, comparing its
//! CRC-32 with the CRC of the bytes that were written. When the transfer ends only the last
//! region is left to check.
//!
//! Why direct I/O (`O_DIRECT`, where the file system allows it): the image bypasses the page
//! cache. Buffered, every image byte was copied into the cache, written back by the kernel,
//! evicted again for the read-back and read through it: on the 2-core benchmark machine about a
//! third of a 512 MiB pull, and on a gateway with little memory an image twice its RAM would
//! push everything else out of the cache. Direct I/O needs [`DIRECT_ALIGN`]-aligned memory,
//! offsets and lengths: the writer stages whole aligned blocks, and only an unaligned end (of
//! the image, or of a region at a checkpoint) goes through the page cache; the next buffer
//! starts with that block again, so it is rewritten whole. Where direct I/O is refused, the
//! same buffers are written through the cache.
//!
//! Why a CRC and not the image SHA-256: the read-back answers "does the medium hold what we
//! wrote", not "is it authentic" — every written byte already passed its signed chunk hash and
//! the whole payload hash, and the image is a deterministic function of that payload. A CRC-32
//! per region (crc32fast, carry-less multiply) catches lost and corrupted writes at memory
//! speed, where the SHA-256 read-back cost two seconds per GiB on the benchmark CPU. A transfer
//! that did not write the whole image itself (a resumed pull: the earlier part was written by
//! another process) still reads the whole image back against the manifest's SHA-256.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::update::package::digest::Sha256;

use crate::update::package::{ImageSink, Manifest, PackageError, Verified};

/// Largest region the follower syncs and reads back at once (checkpoints cut regions earlier).
/// Small, because what is left when the last byte arrives is synced and read back while the
/// server waits for State 2 (up to 8 MiB was about 10 ms on the benchmark disk, which syncs at
/// 940 MB/s and reads cold at 660 MB/s).
pub const REGION: u64 = 1 << 20;
/// Jobs (staged buffers and region ends) queued for the followers before the writer waits for
/// them (back-pressure: the slower of network and medium sets the pace, and memory does not
/// grow).
const QUEUE: usize = 8;
/// One staged buffer: the unit of a direct write.
const STAGE: usize = 256 << 10;
/// Staged buffers in circulation (being filled, queued, being written).
const POOL: usize = 4;
/// The read-back buffer.
const READ_BUF: usize = 512 << 10;
/// Direct I/O alignment of memory, offsets and lengths: the largest logical block size in
/// practice (devices with 512-byte blocks accept it too).
const DIRECT_ALIGN: usize = 4096;

/// Runs once the region it was given with is durable (a checkpoint).
pub type AfterSync = Box<dyn FnOnce() + Send>;

/// The open target slot.
#[derive(Debug)]
pub struct SlotWriter {
    path: PathBuf,
    file: File,
    capacity: u64,
    /// The next image offset of an in-order transfer.
    next: u64,
    /// Every byte of `[0, next)` was written by this writer, in order: the region CRCs cover
    /// the image, and no SHA-256 read-back is needed.
    from_start: bool,
    /// The region being written: `[region_start, next)`, and the CRC of its bytes.
    region_start: u64,
    region_crc: crc32fast::Hasher,
    /// The buffer being filled: slot bytes `[stage_at, next)`; `stage_at` is aligned. `None`
    /// when nothing is staged (then `stage_at == next`).
    stage: Option<Aligned>,
    stage_at: u64,
    /// Started with the first chunk, joined at `finish`.
    follower: Option<Follower>,
    /// Try direct I/O (off only in tests of the page-cache path).
    direct_io: bool,
}

impl SlotWriter {
    /// Opens `path` for writing; its capacity is its size (block devices report it through
    /// `lseek(SEEK_END)`, files must already have their slot size).
    pub fn open(path: &Path) -> Result<Self, PackageError> {
        let sink_error = |e: std::io::Error| PackageError::Sink(format!("{}: {e}", path.display()));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(sink_error)?;
        let capacity = file.seek(SeekFrom::End(0)).map_err(sink_error)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            capacity,
            next: 0,
            from_start: true,
            region_start: 0,
            region_crc: crc32fast::Hasher::new(),
            stage: None,
            stage_at: 0,
            follower: None,
            direct_io: true,
        })
    }

    /// The slot size in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Ends the current region: once it is durable, `then` runs (on the follower), and the
    /// region is read back. Errors of earlier regions are reported here.
    pub fn checkpoint(&mut self, then: AfterSync) -> Result<(), PackageError> {
        self.cut(Some(then))
    }

    /// Waits until every region handed to the follower is written and synced, its checkpoint
    /// run and its read-back done; the first failure. Bytes staged since the last region end
    /// are not written (a region end writes them).
    pub fn settle(&mut self) -> Result<(), PackageError> {
        self.stage = None;
        self.stage_at = self.next;
        self.follower.take().map_or(Ok(()), Follower::join)
    }

    /// Ends the transfer of the image `manifest` describes: every region synced and read back;
    /// after a transfer that did not write the whole image in order, the whole image read back
    /// against its SHA-256.
    pub fn finish(&mut self, manifest: &Manifest) -> Result<(), PackageError> {
        self.cut(None)?;
        self.settle()?;
        if self.from_start && self.next == manifest.image_size {
            return Ok(());
        }
        self.verify_sha256(manifest.image_size, &manifest.image_sha256)
    }

    fn follower(&mut self) -> Result<&mut Follower, PackageError> {
        if self.follower.is_none() {
            let started = Follower::start(&self.path, &self.file, self.direct_io)
                .map_err(|e| self.error(e))?;
            self.follower = Some(started);
        }
        self.follower
            .as_mut()
            .ok_or_else(|| PackageError::Sink("write thread is gone".into()))
    }

    /// Appends `data` (slot bytes from `next` on) to the staged buffers, handing every full one
    /// to the follower.
    fn stage(&mut self, mut data: &[u8]) -> Result<(), PackageError> {
        while !data.is_empty() {
            let mut buf = match self.stage.take() {
                Some(buf) => buf,
                None => self.fresh_stage()?,
            };
            let take = (STAGE - buf.len).min(data.len());
            let (now, rest) = data.split_at(take);
            buf.extend(now);
            data = rest;
            self.next += take as u64;
            if buf.len == STAGE {
                let at = self.stage_at;
                self.stage_at += STAGE as u64;
                self.follower()?.send(Job::Write { at, buf })?;
            } else {
                self.stage = Some(buf);
            }
        }
        Ok(())
    }

    /// A buffer for slot bytes from `next` on, starting at the aligned offset below it. The
    /// bytes between (when `next` is not aligned: a resumed transfer, or a restart after
    /// `settle`) are read from the slot first; no write of them is pending then.
    fn fresh_stage(&mut self) -> Result<Aligned, PackageError> {
        let mut buf = self.follower()?.buffer()?;
        let before = (self.next % DIRECT_ALIGN as u64) as usize;
        self.stage_at = self.next - before as u64;
        if before > 0 {
            let mut head = vec![0u8; before];
            self.file
                .read_exact_at(&mut head, self.stage_at)
                .map_err(|e| self.error(e))?;
            buf.extend(&head);
        }
        Ok(buf)
    }

    fn cut(&mut self, then: Option<AfterSync>) -> Result<(), PackageError> {
        self.follower()?.check()?;
        if let Some(buf) = self.stage.take() {
            // The region's last bytes must be written before it is synced. When they end
            // inside a block, the next buffer starts with that block again.
            let carry = (self.next % DIRECT_ALIGN as u64) as usize;
            let at = self.stage_at;
            if carry > 0 {
                let mut next = self.follower()?.buffer()?;
                next.extend(buf.bytes().get(buf.len - carry..).unwrap_or_default());
                self.stage_at = self.next - carry as u64;
                self.stage = Some(next);
            } else {
                self.stage_at = self.next;
            }
            self.follower()?.send(Job::Write { at, buf })?;
        }
        let crc = std::mem::take(&mut self.region_crc).finalize();
        let region = Region {
            start: self.region_start,
            end: self.next,
            crc,
            readback: self.from_start,
            then,
        };
        self.region_start = self.next;
        self.follower()?.send(Job::Region(region))
    }

    fn error(&self, e: std::io::Error) -> PackageError {
        io_error(&self.path, &e)
    }

    /// Reads `[0, size)` back from the medium and compares its SHA-256 with `expected`.
    fn verify_sha256(&self, size: u64, expected: &[u8; 32]) -> Result<(), PackageError> {
        self.file.sync_data().map_err(|e| self.error(e))?;
        drop_cache(&self.file, 0, 0);
        let mut reader = File::open(&self.path).map_err(|e| self.error(e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; READ_BUF];
        let mut left = size;
        while left > 0 {
            let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            let n = reader.read(&mut buf[..want]).map_err(|e| self.error(e))?;
            if n == 0 {
                return Err(PackageError::ImageHash);
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        if hasher.finalize().as_slice() == expected.as_slice() {
            Ok(())
        } else {
            Err(PackageError::ImageHash)
        }
    }
}

impl ImageSink for SlotWriter {
    fn begin(&mut self, manifest: &Verified<Manifest>) -> Result<(), PackageError> {
        if manifest.image_size > self.capacity {
            return Err(PackageError::TooLarge {
                size: manifest.image_size,
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    fn chunk(&mut self, _index: u32, image_offset: u64, data: &[u8]) -> Result<(), PackageError> {
        let end = image_offset + data.len() as u64;
        if end > self.capacity {
            return Err(PackageError::TooLarge {
                size: end,
                capacity: self.capacity,
            });
        }
        if image_offset != self.next {
            // Whatever was queued is written first: the regions queued for an abandoned
            // transfer would read back bytes being overwritten, and the block the new bytes
            // start in is read from the slot (`fresh_stage`).
            let _ = self.settle();
            // From 0: a new transfer into the same slot (a push started over). Elsewhere: a
            // resumed transfer, and what lies before was written by someone else.
            self.from_start = image_offset == 0;
            self.next = image_offset;
            self.stage_at = image_offset;
            self.region_start = image_offset;
            self.region_crc = crc32fast::Hasher::new();
        }
        self.region_crc.update(data);
        self.stage(data)?;
        if self.next - self.region_start >= REGION {
            self.cut(None)?;
        }
        Ok(())
    }
}

/// A buffer whose bytes start at a [`DIRECT_ALIGN`]-aligned address (what direct I/O needs;
/// found inside a larger allocation, so no unsafe code).
struct Aligned {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for Aligned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aligned({} bytes)", self.len)
    }
}

impl Aligned {
    fn new(capacity: usize) -> Self {
        let raw = vec![0u8; capacity + DIRECT_ALIGN];
        // `align_offset` of a byte pointer is always below the alignment; where it were not,
        // the buffer would only be unaligned, and direct I/O refuses it (then buffered).
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        Self { raw, start, len: 0 }
    }

    fn capacity(&self) -> usize {
        self.raw.len() - DIRECT_ALIGN
    }

    fn extend(&mut self, data: &[u8]) {
        let at = self.start + self.len;
        if let Some(dst) = self.raw.get_mut(at..at + data.len()) {
            dst.copy_from_slice(data);
            self.len += data.len();
        }
    }

    fn bytes(&self) -> &[u8] {
        self.raw
            .get(self.start..self.start + self.len)
            .unwrap_or_default()
    }

    /// The whole capacity, for reading into.
    fn space(&mut self) -> &mut [u8] {
        let end = self.start + self.capacity();
        self.raw.get_mut(self.start..end).unwrap_or_default()
    }
}

/// A stretch of the image for the follower.
struct Region {
    start: u64,
    end: u64,
    /// CRC-32 of the bytes written there.
    crc: u32,
    /// Read it back (false when the writer's CRC does not describe the medium's bytes).
    readback: bool,
    then: Option<AfterSync>,
}

/// Work for the write-and-sync follower, in slot order.
enum Job {
    /// `buf`'s bytes belong at slot offset `at` (aligned).
    Write { at: u64, buf: Aligned },
    /// Everything before `Region::end` is written: sync, checkpoint, read back.
    Region(Region),
}

/// The threads behind the writer: one writes the staged buffers, syncs each region and runs its
/// checkpoint; the other reads the synced regions back, so the medium takes one region while
/// the previous one is read.
#[derive(Debug)]
struct Follower {
    tx: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// Written buffers come back here; `allocated` buffers exist (at most [`POOL`]). In a
    /// mutex only so that the writer can be shared with async code (it is `Sync` then).
    pool: Mutex<Receiver<Aligned>>,
    allocated: usize,
    /// The first failure; later jobs are only drained (their checkpoints must not run).
    failed: Arc<Mutex<Option<PackageError>>>,
    /// Set when the writer goes away: queued checkpoints are skipped (a cancelled transfer
    /// must not leave a checkpoint behind after the caller cleared it).
    dropped: Arc<AtomicBool>,
}

impl Follower {
    fn start(path: &Path, file: &File, direct_io: bool) -> std::io::Result<Self> {
        let mut out = SlotOutput::open(path, file, direct_io)?;
        let mut reader = ReadBack::open(path, direct_io)?;
        let (tx, rx) = sync_channel(QUEUE);
        let (back, pool) = sync_channel(POOL);
        let (read_tx, read_rx) = sync_channel::<Region>(QUEUE);
        let failed = Arc::new(Mutex::new(None));
        let dropped = Arc::new(AtomicBool::new(false));
        let reading = {
            let failed = Arc::clone(&failed);
            super::background::spawn_io("lwm2md-readback", move || {
                for region in read_rx {
                    if failed.lock().map_or(true, |f| f.is_some()) {
                        continue;
                    }
                    if let Err(e) = reader.check(&region) {
                        record(&failed, e);
                    }
                }
            })?
        };
        let thread = {
            let (failed, dropped) = (Arc::clone(&failed), Arc::clone(&dropped));
            super::background::spawn_io("lwm2md-slotwrite", move || {
                follow(&rx, &back, &read_tx, &mut out, &failed, &dropped);
                drop(read_tx);
                if reading.join().is_err() {
                    record(
                        &failed,
                        PackageError::Sink("read-back thread panicked".into()),
                    );
                }
            })?
        };
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            pool: Mutex::new(pool),
            allocated: 0,
            failed,
            dropped,
        })
    }

    /// The first failure so far, if any.
    fn check(&self) -> Result<(), PackageError> {
        match self.failed.lock() {
            Ok(f) => f.clone().map_or(Ok(()), Err),
            Err(_) => Err(PackageError::Sink("write thread failed".into())),
        }
    }

    /// An empty staging buffer: a returned one, a new one while fewer than [`POOL`] exist,
    /// else the next one the follower is done with.
    fn buffer(&mut self) -> Result<Aligned, PackageError> {
        let gone = || PackageError::Sink("write thread is gone".into());
        let pool = self.pool.get_mut().map_err(|_| gone())?;
        let mut buf = match pool.try_recv() {
            Ok(buf) => buf,
            Err(_) if self.allocated < POOL => {
                self.allocated += 1;
                Aligned::new(STAGE)
            }
            Err(_) => pool.recv().map_err(|_| gone())?,
        };
        buf.len = 0;
        Ok(buf)
    }

    fn send(&self, job: Job) -> Result<(), PackageError> {
        let gone = || PackageError::Sink("write thread is gone".into());
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send(job)
            .map_err(|_| gone())
    }

    /// Waits for every queued job; the first failure.
    fn join(mut self) -> Result<(), PackageError> {
        self.tx = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            return Err(PackageError::Sink("write thread panicked".into()));
        }
        self.check()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            // At most QUEUE jobs of writing, syncing and reading; the checkpoints are skipped.
            let _ = thread.join();
        }
    }
}

/// Keeps the first failure.
fn record(failed: &Mutex<Option<PackageError>>, e: PackageError) {
    if let Ok(mut f) = failed.lock() {
        f.get_or_insert(e);
    }
}

/// The write-and-sync follower: writes each buffer and hands it back; at a region end, syncs,
/// runs the checkpoint and passes the region to the reader.
fn follow(
    rx: &Receiver<Job>,
    back: &SyncSender<Aligned>,
    read_tx: &SyncSender<Region>,
    out: &mut SlotOutput,
    failed: &Mutex<Option<PackageError>>,
    dropped: &AtomicBool,
) {
    for job in rx {
        let healthy = failed.lock().is_ok_and(|f| f.is_none());
        match job {
            Job::Write { at, buf } => {
                if healthy && let Err(e) = out.write(at, buf.bytes()) {
                    record(failed, e);
                }
                // Never blocks: the pool holds every buffer there is.
                let _ = back.try_send(buf);
            }
            Job::Region(mut region) if healthy => {
                if let Err(e) = out.file.sync_data() {
                    record(failed, io_error(&out.path, &e));
                    continue;
                }
                if let Some(then) = region.then.take()
                    && !dropped.load(Ordering::SeqCst)
                {
                    then();
                }
                if region.readback && read_tx.send(region).is_err() {
                    record(
                        failed,
                        PackageError::Sink("read-back thread is gone".into()),
                    );
                }
            }
            Job::Region(_) => {}
        }
    }
}

/// Where the follower writes: the slot opened with `O_DIRECT` for whole aligned blocks where
/// that is allowed, and through the page cache for the rest.
struct SlotOutput {
    path: PathBuf,
    file: File,
    direct: Option<File>,
}

impl SlotOutput {
    fn open(path: &Path, file: &File, direct_io: bool) -> std::io::Result<Self> {
        let direct = direct_io.then(|| open_direct(path, true)).flatten();
        Ok(Self {
            path: path.to_path_buf(),
            file: file.try_clone()?,
            direct,
        })
    }

    fn write(&mut self, at: u64, bytes: &[u8]) -> Result<(), PackageError> {
        let whole = if at.is_multiple_of(DIRECT_ALIGN as u64) {
            bytes.len() - bytes.len() % DIRECT_ALIGN
        } else {
            0
        };
        let (blocks, rest) = bytes.split_at(whole);
        let mut buffered: &[u8] = &[];
        match &self.direct {
            Some(direct) if !blocks.is_empty() => {
                if let Err(e) = direct.write_all_at(blocks, at) {
                    if e.raw_os_error() != Some(nix::libc::EINVAL) {
                        return Err(io_error(&self.path, &e));
                    }
                    // The file system refuses this alignment after all: the page cache from
                    // now on.
                    log::debug!("firmware: direct write to {}: {e}", self.path.display());
                    self.direct = None;
                    buffered = blocks;
                }
            }
            _ => buffered = blocks,
        }
        self.file
            .write_all_at(buffered, at)
            .map_err(|e| io_error(&self.path, &e))?;
        self.file
            .write_all_at(rest, at + whole as u64)
            .map_err(|e| io_error(&self.path, &e))
    }
}

/// Reads regions back from the medium and compares their CRC with what was written: with
/// `O_DIRECT` where the file system allows it (nothing to evict first, no copy through the
/// cache), else through the page cache after dropping the range from it.
struct ReadBack {
    path: PathBuf,
    /// The slot opened with `O_DIRECT`; `None` where that is refused.
    direct: Option<File>,
    buffered: File,
    buf: Aligned,
}

impl ReadBack {
    fn open(path: &Path, direct_io: bool) -> std::io::Result<Self> {
        let direct = direct_io.then(|| open_direct(path, false)).flatten();
        Ok(Self {
            path: path.to_path_buf(),
            direct,
            buffered: File::open(path)?,
            buf: Aligned::new(READ_BUF),
        })
    }

    fn check(&mut self, region: &Region) -> Result<(), PackageError> {
        let crc = match self.direct_crc(region) {
            Some(crc) => crc,
            None => self.buffered_crc(region)?,
        };
        if crc == Some(region.crc) {
            Ok(())
        } else {
            Err(PackageError::Sink(format!(
                "{}: bytes {}..{} read back differ from what was written",
                self.path.display(),
                region.start,
                region.end
            )))
        }
    }

    /// The CRC of `region` read with direct I/O (`Some(None)`: the medium ended before the
    /// region did); `None` where direct I/O is refused, which then stays off for this slot.
    fn direct_crc(&mut self, region: &Region) -> Option<Option<u32>> {
        let file = self.direct.as_ref()?;
        let buf = self.buf.space();
        let align = DIRECT_ALIGN as u64;
        let mut crc = crc32fast::Hasher::new();
        // Whole aligned blocks around the region; only the region's bytes count.
        let mut at = region.start - region.start % align;
        while at < region.end {
            let want = (region.end - at)
                .next_multiple_of(align)
                .min(buf.len() as u64);
            let want = usize::try_from(want).unwrap_or(buf.len());
            let n = match file.read_at(&mut buf[..want], at) {
                Ok(n) => n,
                Err(e) => {
                    log::debug!("firmware: direct read-back of {}: {e}", self.path.display());
                    self.direct = None;
                    return None;
                }
            };
            let (lo, hi) = (region.start.max(at), region.end.min(at + n as u64));
            if hi > lo {
                crc.update(buf.get((lo - at) as usize..(hi - at) as usize)?);
            }
            at += n as u64;
            if n < want {
                break;
            }
        }
        Some((at >= region.end).then(|| crc.finalize()))
    }

    /// The CRC of `region` read through the page cache after dropping it there.
    fn buffered_crc(&mut self, region: &Region) -> Result<Option<u32>, PackageError> {
        drop_cache(&self.buffered, region.start, region.end - region.start);
        let buf = self.buf.space();
        let mut crc = crc32fast::Hasher::new();
        let mut at = region.start;
        while at < region.end {
            let want =
                usize::try_from((region.end - at).min(buf.len() as u64)).unwrap_or(buf.len());
            let n = self
                .buffered
                .read_at(&mut buf[..want], at)
                .map_err(|e| io_error(&self.path, &e))?;
            if n == 0 {
                break;
            }
            crc.update(&buf[..n]);
            at += n as u64;
        }
        Ok((at == region.end).then(|| crc.finalize()))
    }
}

/// `path` opened with `O_DIRECT` for writing or reading; `None` where the file system refuses.
fn open_direct(path: &Path, write: bool) -> Option<File> {
    let opened = OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(path);
    if let Err(e) = &opened {
        log::debug!("firmware: no direct I/O on {}: {e}", path.display());
    }
    opened.ok()
}

/// Asks the kernel to drop `[offset, offset + len)` (0: to the end) from the page cache, so the
/// next read comes from the medium. Advisory: where it does nothing, the check reads the cache.
fn drop_cache(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    let _ = nix::fcntl::posix_fadvise(
        file,
        offset,
        len,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

fn io_error(path: &Path, e: &std::io::Error) -> PackageError {
    if e.raw_os_error() == Some(28) {
        PackageError::NoSpace(format!("{}: {e}", path.display()))
    } else {
        PackageError::Sink(format!("{}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;
    use crate::update::package::Compression;
    use crate::update::package::testkit;

    const CHUNK: usize = 256 << 10;

    struct Case {
        _tmp: tempfile::TempDir,
        path: PathBuf,
        image: Vec<u8>,
        manifest: Manifest,
    }

    /// A slot file of 12 MiB and a package manifest for an image of `len` bytes.
    fn case(len: usize) -> Case {
        case_with(len, CHUNK)
    }

    /// The same with chunks of `chunk` image bytes.
    fn case_with(len: usize, chunk: usize) -> Case {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("slot.img");
        std::fs::write(&path, vec![0u8; 12 << 20]).expect("slot");
        let image = testkit::image(len, 11);
        let (_, manifest) =
            testkit::package(&image, &testkit::options(Compression::None, chunk as u32));
        Case {
            _tmp: tmp,
            path,
            image,
            manifest,
        }
    }

    fn write_from(writer: &mut SlotWriter, image: &[u8], first: usize) {
        for (i, chunk) in image.chunks(CHUNK).enumerate().skip(first) {
            writer
                .chunk(i as u32, (i * CHUNK) as u64, chunk)
                .expect("chunk");
        }
    }

    /// Writes `image` from chunk `first` on in chunks of `size`, with a checkpoint after every
    /// third chunk, finishes, and checks the slot's bytes.
    fn transfer(c: &Case, mut writer: SlotWriter, size: usize, first: usize) {
        for (i, chunk) in c.image.chunks(size).enumerate().skip(first) {
            writer
                .chunk(i as u32, (i * size) as u64, chunk)
                .expect("chunk");
            if i % 3 == 2 {
                writer.checkpoint(Box::new(|| {})).expect("checkpoint");
            }
        }
        writer.finish(&c.manifest).expect("verified");
        let slot = std::fs::read(&c.path).expect("read");
        assert_eq!(slot[..c.image.len()], c.image[..]);
        // Past the image the slot is untouched.
        assert!(slot[c.image.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn chunks_and_checkpoints_off_the_block_grid_land_exactly() {
        // 5000-byte chunks: every region ends inside a 4 KiB block, so each one's last block is
        // written through the page cache and again, whole, with the next buffer.
        for direct_io in [true, false] {
            let c = case_with((3 << 20) + 777, 5000);
            let mut writer = SlotWriter::open(&c.path).expect("open");
            writer.direct_io = direct_io;
            transfer(&c, writer, 5000, 0);
        }
    }

    #[test]
    fn a_transfer_resumed_inside_a_block_keeps_the_bytes_before_it() {
        let c = case_with((2 << 20) + 123, 5000);
        // An earlier process wrote the first 7 chunks (35 000 bytes: inside the ninth block).
        {
            let f = OpenOptions::new().write(true).open(&c.path).expect("open");
            f.write_all_at(&c.image[..7 * 5000], 0)
                .expect("earlier run");
        }
        transfer(&c, SlotWriter::open(&c.path).expect("open"), 5000, 7);
    }

    /// Unmounts a test file system when dropped.
    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    #[test]
    fn a_medium_that_runs_out_of_space_is_no_space() {
        // A slot file larger than the file system under it (sparse, on a 1 MiB tmpfs): the
        // writes run out of space, which must come back as NoSpace (Update Result 2), with
        // direct I/O and through the page cache.
        for direct_io in [true, false] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let mounted = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=1m", "lwm2md-test"])
                .arg(tmp.path())
                .status();
            if !mounted.is_ok_and(|s| s.success()) {
                // Only root can mount; CI runs as root.
                eprintln!("skipped: cannot mount a tmpfs here");
                return;
            }
            let _unmount = Mounted(tmp.path().to_path_buf());
            let path = tmp.path().join("slot.img");
            File::create(&path)
                .and_then(|f| f.set_len(4 << 20))
                .expect("sparse slot");
            let image = testkit::image(3 << 20, 3);
            let (_, manifest) =
                testkit::package(&image, &testkit::options(Compression::None, CHUNK as u32));
            let mut writer = SlotWriter::open(&path).expect("open");
            writer.direct_io = direct_io;
            let failed = image
                .chunks(CHUNK)
                .enumerate()
                .find_map(|(i, chunk)| writer.chunk(i as u32, (i * CHUNK) as u64, chunk).err());
            let err = failed
                .or_else(|| writer.finish(&manifest).err())
                .expect("must fail");
            assert!(matches!(err, PackageError::NoSpace(_)), "{err:?}");
        }
    }

    #[test]
    fn an_in_order_transfer_is_read_back_region_by_region() {
        // 10 MiB: many automatic regions, plus checkpoints that cut some earlier.
        let c = case(10 << 20);
        let mut writer = SlotWriter::open(&c.path).expect("open");
        let ran = Arc::new(AtomicU32::new(0));
        for (i, chunk) in c.image.chunks(CHUNK).enumerate() {
            writer
                .chunk(i as u32, (i * CHUNK) as u64, chunk)
                .expect("chunk");
            if i % 7 == 6 {
                let (ran, path, end) = (Arc::clone(&ran), c.path.clone(), (i + 1) * CHUNK);
                writer
                    .checkpoint(Box::new(move || {
                        // Runs after the sync: the bytes it claims are in the file.
                        let on_disk = std::fs::read(&path).expect("read");
                        assert!(on_disk.len() >= end);
                        ran.fetch_add(1, Ordering::SeqCst);
                    }))
                    .expect("checkpoint");
            }
        }
        writer.finish(&c.manifest).expect("verified");
        assert_eq!(ran.load(Ordering::SeqCst), 5);
        assert_eq!(
            std::fs::read(&c.path).expect("read")[..c.image.len()],
            c.image[..]
        );
    }

    #[test]
    fn a_medium_that_changed_what_was_written_fails_the_transfer() {
        // Read back with direct I/O, and through the page cache where that is refused.
        for direct_io in [true, false] {
            let c = case(2 << 20);
            let mut writer = SlotWriter::open(&c.path).expect("open");
            writer.direct_io = direct_io;
            // Less than a region, so the checkpoint below is what cuts it.
            write_from(&mut writer, &c.image[..512 << 10], 0);
            // The hook runs between the sync and the read-back: a bit flips on the medium.
            let path = c.path.clone();
            writer
                .checkpoint(Box::new(move || {
                    let f = OpenOptions::new().write(true).open(&path).expect("open");
                    f.write_all_at(&[0xff], 4242).expect("corrupt");
                    f.sync_all().expect("sync");
                }))
                .expect("checkpoint");
            let err = writer.finish(&c.manifest).expect_err("must fail");
            assert!(
                matches!(&err, PackageError::Sink(m) if m.contains("0..524288")),
                "{err:?}"
            );
        }
    }

    #[test]
    fn a_resumed_transfer_reads_the_whole_image_back_against_its_sha256() {
        let c = case(3 << 20);
        // An earlier process wrote the first 4 chunks.
        {
            let f = OpenOptions::new().write(true).open(&c.path).expect("open");
            f.write_all_at(&c.image[..4 * CHUNK], 0)
                .expect("earlier run");
        }
        let mut writer = SlotWriter::open(&c.path).expect("open");
        write_from(&mut writer, &c.image, 4);
        writer.finish(&c.manifest).expect("verified");

        // The same, but the earlier run's bytes did not survive.
        {
            let f = OpenOptions::new().write(true).open(&c.path).expect("open");
            f.write_all_at(&[0u8; 16], 100).expect("damage");
        }
        let mut writer = SlotWriter::open(&c.path).expect("open");
        write_from(&mut writer, &c.image, 4);
        assert_eq!(
            writer.finish(&c.manifest).expect_err("must fail"),
            PackageError::ImageHash
        );
    }

    #[test]
    fn a_transfer_started_over_is_verified_from_its_new_start() {
        let c = case(3 << 20);
        let mut writer = SlotWriter::open(&c.path).expect("open");
        // A first push of other bytes, abandoned half way.
        let other = testkit::image(9 << 20, 5);
        write_from(&mut writer, &other[..2 << 20], 0);
        write_from(&mut writer, &c.image, 0);
        writer.finish(&c.manifest).expect("verified");
    }

    #[test]
    fn an_incomplete_image_is_not_accepted() {
        let c = case(3 << 20);
        let mut writer = SlotWriter::open(&c.path).expect("open");
        write_from(&mut writer, &c.image[..2 << 20], 0);
        assert_eq!(
            writer.finish(&c.manifest).expect_err("must fail"),
            PackageError::ImageHash
        );
    }
}

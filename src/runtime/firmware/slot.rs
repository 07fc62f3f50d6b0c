//! Writing an image into the inactive slot (a block device or, for the fake backend, a file):
//! positioned writes of verified chunks, and a follower thread that makes them durable and reads
//! them back from the medium while the transfer goes on.
//!
//! Why a follower: syncing and reading a gigabyte back after the download took as long as the
//! download itself, all of it on the verifying thread. Now the writer cuts the image into
//! regions (at every checkpoint, at most [`REGION`] bytes); the follower syncs each region, runs
//! the checkpoint that waited for it (a checkpoint never claims bytes not yet on the medium),
//! drops it from the page cache and reads it back, comparing its CRC-32 with the CRC of the
//! bytes that were written. When the transfer ends only the last region is left to check.
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
use std::os::unix::fs::FileExt;
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
/// Regions queued for the follower before the writer waits for it (back-pressure: the slower
/// of network and medium sets the pace, and memory does not grow).
const QUEUE: usize = 4;
/// The follower's read buffer.
const READ_BUF: usize = 256 << 10;

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
    /// Started with the first region, joined at `finish`.
    follower: Option<Follower>,
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
            follower: None,
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

    /// Waits until every region handed to the follower is synced, its checkpoint run and its
    /// read-back done; the first failure.
    pub fn settle(&mut self) -> Result<(), PackageError> {
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

    fn cut(&mut self, then: Option<AfterSync>) -> Result<(), PackageError> {
        if self.follower.is_none() {
            let started = Follower::start(&self.path, &self.file).map_err(|e| self.error(e))?;
            self.follower = Some(started);
        }
        let Some(follower) = &self.follower else {
            return Err(PackageError::Sink("read-back thread is gone".into()));
        };
        follower.check()?;
        let crc = std::mem::take(&mut self.region_crc).finalize();
        let region = Region {
            start: self.region_start,
            end: self.next,
            crc,
            readback: self.from_start,
            then,
        };
        self.region_start = self.next;
        follower.send(region)
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
            if image_offset == 0 {
                // A new transfer into the same slot (a push started over): the regions queued
                // for the old one would read back bytes being overwritten.
                let _ = self.settle();
                self.from_start = true;
            } else {
                // A resumed transfer: what lies before was written by someone else.
                self.from_start = false;
            }
            self.region_start = image_offset;
            self.region_crc = crc32fast::Hasher::new();
        }
        self.file
            .write_all_at(data, image_offset)
            .map_err(|e| self.error(e))?;
        self.region_crc.update(data);
        self.next = end;
        if self.next - self.region_start >= REGION {
            self.cut(None)?;
        }
        Ok(())
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

/// The thread that syncs and reads back regions behind the writer.
#[derive(Debug)]
struct Follower {
    tx: Option<SyncSender<Region>>,
    thread: Option<JoinHandle<()>>,
    /// The first failure; later regions are only drained (their checkpoints must not run).
    failed: Arc<Mutex<Option<PackageError>>>,
    /// Set when the writer goes away: queued checkpoints are skipped (a cancelled transfer
    /// must not leave a checkpoint behind after the caller cleared it).
    dropped: Arc<AtomicBool>,
}

impl Follower {
    fn start(path: &Path, file: &File) -> std::io::Result<Self> {
        let sync_fd = file.try_clone()?;
        let read_fd = File::open(path)?;
        let (tx, rx) = sync_channel(QUEUE);
        let failed = Arc::new(Mutex::new(None));
        let dropped = Arc::new(AtomicBool::new(false));
        let thread = {
            let (failed, dropped) = (Arc::clone(&failed), Arc::clone(&dropped));
            let path = path.to_path_buf();
            super::background::spawn("lwm2md-readback", move || {
                follow(&rx, &sync_fd, &read_fd, &path, &failed, &dropped);
            })?
        };
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            failed,
            dropped,
        })
    }

    /// The first failure so far, if any.
    fn check(&self) -> Result<(), PackageError> {
        match self.failed.lock() {
            Ok(f) => f.clone().map_or(Ok(()), Err),
            Err(_) => Err(PackageError::Sink("read-back thread failed".into())),
        }
    }

    fn send(&self, region: Region) -> Result<(), PackageError> {
        let gone = || PackageError::Sink("read-back thread is gone".into());
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send(region)
            .map_err(|_| gone())
    }

    /// Waits for every queued region; the first failure.
    fn join(mut self) -> Result<(), PackageError> {
        self.tx = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            return Err(PackageError::Sink("read-back thread panicked".into()));
        }
        self.check()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            // At most QUEUE regions of syncing; the checkpoints are skipped.
            let _ = thread.join();
        }
    }
}

fn follow(
    rx: &Receiver<Region>,
    sync_fd: &File,
    read_fd: &File,
    path: &Path,
    failed: &Mutex<Option<PackageError>>,
    dropped: &AtomicBool,
) {
    let mut buf = vec![0u8; READ_BUF];
    let fail = |e: PackageError| {
        if let Ok(mut f) = failed.lock() {
            f.get_or_insert(e);
        }
    };
    for mut region in rx {
        let already = failed.lock().map_or(true, |f| f.is_some());
        if already {
            continue;
        }
        if let Err(e) = sync_fd.sync_data() {
            fail(io_error(path, &e));
            continue;
        }
        if let Some(then) = region.then.take()
            && !dropped.load(Ordering::SeqCst)
        {
            then();
        }
        if region.readback
            && let Err(e) = read_back(read_fd, path, &region, &mut buf)
        {
            fail(e);
        }
    }
}

/// Reads `region` from the medium (not from the page cache) and compares its CRC.
fn read_back(
    file: &File,
    path: &Path,
    region: &Region,
    buf: &mut [u8],
) -> Result<(), PackageError> {
    let len = region.end - region.start;
    drop_cache(file, region.start, len);
    let mut crc = crc32fast::Hasher::new();
    let mut at = region.start;
    while at < region.end {
        let want = usize::try_from((region.end - at).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = file
            .read_at(&mut buf[..want], at)
            .map_err(|e| io_error(path, &e))?;
        if n == 0 {
            break;
        }
        crc.update(&buf[..n]);
        at += n as u64;
    }
    if at == region.end && crc.finalize() == region.crc {
        Ok(())
    } else {
        Err(PackageError::Sink(format!(
            "{}: bytes {}..{} read back differ from what was written",
            path.display(),
            region.start,
            region.end
        )))
    }
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
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("slot.img");
        std::fs::write(&path, vec![0u8; 12 << 20]).expect("slot");
        let image = testkit::image(len, 11);
        let (_, manifest) =
            testkit::package(&image, &testkit::options(Compression::None, CHUNK as u32));
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
        let c = case(2 << 20);
        let mut writer = SlotWriter::open(&c.path).expect("open");
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

//! Writing an image into the inactive slot (a block device or, for the fake backend, a file):
//! positioned writes of verified chunks, durable syncs at checkpoints, and a read-back check of
//! what actually reached the medium.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::update::package::digest::Sha256;

use crate::update::package::{ImageSink, Manifest, PackageError, Verified};

/// The open target slot.
#[derive(Debug)]
pub struct SlotWriter {
    path: PathBuf,
    file: File,
    capacity: u64,
    /// Highest image byte written + 1 (what the read-back check covers).
    written: u64,
}

impl SlotWriter {
    /// Opens `path` for writing; its capacity is its size (block devices report it through
    /// `lseek(SEEK_END)`, files must already have their slot size).
    pub fn open(path: &Path) -> Result<Self, PackageError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| PackageError::Sink(format!("{}: {e}", path.display())))?;
        let capacity = file
            .seek(SeekFrom::End(0))
            .map_err(|e| PackageError::Sink(format!("{}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            capacity,
            written: 0,
        })
    }

    /// The slot size in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Makes everything written so far durable (before a checkpoint claims it).
    pub fn sync(&self) -> Result<(), PackageError> {
        self.file.sync_data().map_err(|e| self.error(e))
    }

    fn error(&self, e: std::io::Error) -> PackageError {
        if e.raw_os_error() == Some(28) {
            PackageError::NoSpace(format!("{}: {e}", self.path.display()))
        } else {
            PackageError::Sink(format!("{}: {e}", self.path.display()))
        }
    }

    /// Reads `[0, size)` back from the medium and compares its SHA-256 with `expected`: catches
    /// writes that were lost or corrupted below us (and covers resumed transfers, whose whole
    /// image hash could not be computed while streaming).
    pub fn verify(&mut self, size: u64, expected: &[u8; 32]) -> Result<(), PackageError> {
        self.sync()?;
        // Drop our pages from the cache so the read comes from the medium, not from memory.
        let _ = nix::fcntl::posix_fadvise(
            &self.file,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
        let mut reader = File::open(&self.path).map_err(|e| self.error(e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
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
        self.file
            .write_all_at(data, image_offset)
            .map_err(|e| self.error(e))?;
        self.written = self.written.max(end);
        Ok(())
    }
}

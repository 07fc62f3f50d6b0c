//! The state directory: named JSON documents that survive power cuts.
//!
//! * **One owner.** [`Store::open`] takes an exclusive `flock` on `<dir>/lock` for the life of the
//!   [`Store`], so a second daemon (or a test run next to a live one) pointed at the same
//!   directory fails at start-up instead of interleaving writes.
//! * **Atomic writes.** [`Store::save`] writes `<name>.json.tmp`, `fsync`s it, renames it over
//!   `<name>.json` and `fsync`s the directory: after a crash the document is either the old one
//!   or the new one, never a mix. A `.tmp` left by a crash is deleted at the next open.
//! * **Versioned envelope.** Documents are stored as `{"format": N, "data": …}`. Older formats are
//!   upconverted on load (see `upconvert`); a newer format, written by a newer lwm2md before a
//!   downgrade, is refused with an error rather than misread or destroyed.
//! * **Corruption is evidence, not a crash.** A document that is not a valid envelope (truncated
//!   by a broken disk, edited by hand) is renamed to `<name>.json.corrupt-<n>`, logged as an
//!   error and treated as absent, so the daemon starts from defaults and the file stays for
//!   inspection.
//! * **Private.** The directory is mode 0700 and documents 0600: secrets (PSKs, keys written by
//!   a server) will live here.
//!
//! The API is synchronous; documents are small and written rarely, so the runtime calls it
//! directly or through `spawn_blocking`.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;
use serde_json::Value;

/// The envelope format this build writes, and the newest it reads.
pub const FORMAT: u64 = 1;

/// The lock file inside the state directory.
const LOCK_FILE: &str = "lock";
/// Suffix of documents on disk.
const SUFFIX: &str = ".json";
/// Suffix of a document being written.
const TMP_SUFFIX: &str = ".tmp";
/// Longest document name.
const MAX_NAME_LEN: usize = 64;

/// Why the store could not be opened, or a document loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The state directory could not be created or made private.
    #[error("cannot create state directory {} with mode 0700", dir.display())]
    CreateDir {
        /// The state directory.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Another process holds the state directory's lock.
    #[error(
        "state directory {} is in use by another lwm2md process{} (lock file {} is held); \
         each daemon needs its own --state-dir",
        dir.display(),
        holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default(),
        dir.join(LOCK_FILE).display()
    )]
    Locked {
        /// The state directory.
        dir: PathBuf,
        /// The process id recorded in the lock file by the holder, if readable.
        holder: Option<u32>,
    },
    /// The lock could not be taken for another reason than contention.
    #[error("cannot lock state directory {}", dir.display())]
    Lock {
        /// The state directory.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Reading, writing, renaming or syncing a file failed.
    #[error("{}: {action}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What we were doing, e.g. "cannot write".
        action: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A document name that could escape the directory or clash with our own files.
    #[error("invalid document name {name:?}: use 1 to 64 ASCII letters, digits, '-' or '_'")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// The document was written by a newer lwm2md in a format this one cannot read.
    #[error(
        "{}: format {found} is newer than this lwm2md understands (up to {FORMAT}); \
         upgrade lwm2md or remove the file",
        path.display()
    )]
    NewerFormat {
        /// The document.
        path: PathBuf,
        /// The format number found.
        found: u64,
    },
    /// The document could not be encoded (cannot happen for JSON values; kept for honesty).
    #[error("cannot encode document {name}")]
    Encode {
        /// The document name.
        name: String,
        /// The encoder error.
        #[source]
        source: serde_json::Error,
    },
}

/// An open, locked state directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Held for the life of the store; the kernel drops it if the process dies.
    _lock: Flock<File>,
}

impl Store {
    /// Creates `dir` (mode 0700) if needed, locks it exclusively and removes `.tmp` files left
    /// by an interrupted write. Fails with [`PersistError::Locked`] if another process (or
    /// another `Store` in this one) holds the directory.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, PersistError> {
        let dir = dir.as_ref().to_owned();
        let create_error = |source| PersistError::CreateDir {
            dir: dir.clone(),
            source,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(create_error)?;
        // An existing directory may have been created with looser permissions (or the umask
        // narrowed ours): make it exactly 0700, as systemd's StateDirectoryMode would.
        let mode = fs::metadata(&dir)
            .map_err(create_error)?
            .permissions()
            .mode();
        if mode & 0o7777 != 0o700 {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(create_error)?;
        }

        let lock_path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|source| PersistError::Lock {
                dir: dir.clone(),
                source,
            })?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                return Err(PersistError::Locked {
                    holder: read_pid(&mut file),
                    dir,
                });
            }
            Err((_, errno)) => {
                return Err(PersistError::Lock {
                    dir,
                    source: io::Error::from(errno),
                });
            }
        };
        // Record our pid for the error message of whoever comes next; only diagnostics, so a
        // failure here is not fatal.
        let _ = lock
            .set_len(0)
            .and_then(|()| writeln!(*lock, "{}", std::process::id()));

        let store = Self { dir, _lock: lock };
        store.remove_stale_tmp_files()?;
        Ok(store)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The document `name`, upconverted to the current format; `None` if it was never saved or
    /// was corrupt (a corrupt file is moved aside and logged).
    pub fn load(&self, name: &str) -> Result<Option<Value>, PersistError> {
        let path = self.path(name)?;
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(PersistError::Io {
                    path,
                    action: "cannot read",
                    source,
                });
            }
        };
        match decode(&bytes) {
            Ok(data) => Ok(Some(data)),
            Err(Decode::Newer(found)) => Err(PersistError::NewerFormat { path, found }),
            Err(Decode::Corrupt(reason)) => {
                let aside = self.move_aside(&path)?;
                log::error!(
                    "{}: corrupt state document ({reason}); moved to {} and starting without it",
                    path.display(),
                    aside.display()
                );
                Ok(None)
            }
        }
    }

    /// Replaces the document `name` atomically and durably with `data`.
    pub fn save(&self, name: &str, data: &Value) -> Result<(), PersistError> {
        #[derive(Serialize)]
        struct Envelope<'a> {
            format: u64,
            data: &'a Value,
        }

        let path = self.path(name)?;
        let mut bytes = serde_json::to_vec_pretty(&Envelope {
            format: FORMAT,
            data,
        })
        .map_err(|source| PersistError::Encode {
            name: name.to_owned(),
            source,
        })?;
        bytes.push(b'\n');

        let tmp = with_suffix(&path, TMP_SUFFIX);
        let result = self.write_and_rename(&tmp, &path, &bytes);
        if result.is_err() {
            // Best effort: a leftover would be removed at the next open anyway.
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn write_and_rename(&self, tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), PersistError> {
        let io_error = |path: &Path, action| {
            let path = path.to_owned();
            move |source| PersistError::Io {
                path,
                action,
                source,
            }
        };
        // `create_new` after removing a leftover makes sure the mode below applies: `mode`
        // only affects files that the open creates.
        match fs::remove_file(tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_error(tmp, "cannot remove leftover temporary file")(e));
            }
            _ => {}
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)
            .map_err(io_error(tmp, "cannot create"))?;
        file.write_all(bytes)
            .map_err(io_error(tmp, "cannot write"))?;
        // The data must be on disk before the rename makes it the document, else a power cut
        // can leave a renamed but empty file.
        file.sync_all().map_err(io_error(tmp, "cannot fsync"))?;
        drop(file);
        fs::rename(tmp, path).map_err(io_error(path, "cannot rename temporary file over"))?;
        // The rename itself is only durable once the directory is synced.
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<(), PersistError> {
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| PersistError::Io {
                path: self.dir.clone(),
                action: "cannot fsync directory",
                source,
            })
    }

    /// `<dir>/<name>.json`, after checking `name` cannot escape the directory or collide with
    /// the lock, temporary or corrupt files.
    fn path(&self, name: &str) -> Result<PathBuf, PersistError> {
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(PersistError::InvalidName {
                name: name.to_owned(),
            });
        }
        Ok(self.dir.join(format!("{name}{SUFFIX}")))
    }

    /// Renames a corrupt document to the first free `<file>.corrupt-<n>`, never overwriting an
    /// earlier piece of evidence.
    fn move_aside(&self, path: &Path) -> Result<PathBuf, PersistError> {
        for n in 1..=u16::MAX {
            let aside = with_suffix(path, &format!(".corrupt-{n}"));
            if fs::symlink_metadata(&aside).is_ok() {
                continue;
            }
            fs::rename(path, &aside).map_err(|source| PersistError::Io {
                path: path.to_owned(),
                action: "cannot move corrupt document aside",
                source,
            })?;
            self.sync_dir()?;
            return Ok(aside);
        }
        Err(PersistError::Io {
            path: path.to_owned(),
            action: "cannot move corrupt document aside",
            source: io::Error::other("too many .corrupt-<n> files"),
        })
    }

    /// Deletes `*.tmp` files: they are writes that never reached their rename, so the document
    /// next to them is the last complete version.
    fn remove_stale_tmp_files(&self) -> Result<(), PersistError> {
        let list_error = |source| PersistError::Io {
            path: self.dir.clone(),
            action: "cannot list state directory",
            source,
        };
        for entry in fs::read_dir(&self.dir).map_err(list_error)? {
            let entry = entry.map_err(list_error)?;
            if !entry.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
                continue;
            }
            let path = entry.path();
            fs::remove_file(&path).map_err(|source| PersistError::Io {
                path: path.clone(),
                action: "cannot remove interrupted write",
                source,
            })?;
            log::warn!(
                "{}: removed a write interrupted by a crash or power cut",
                path.display()
            );
        }
        Ok(())
    }
}

/// Why a document could not be decoded.
enum Decode {
    /// Not a valid envelope: move it aside.
    Corrupt(String),
    /// A valid envelope of a newer format: leave it alone.
    Newer(u64),
}

fn decode(bytes: &[u8]) -> Result<Value, Decode> {
    let envelope: Value =
        serde_json::from_slice(bytes).map_err(|e| Decode::Corrupt(format!("invalid JSON: {e}")))?;
    let Value::Object(mut envelope) = envelope else {
        return Err(Decode::Corrupt("not a JSON object".to_owned()));
    };
    let format = envelope
        .get("format")
        .and_then(Value::as_u64)
        .ok_or_else(|| Decode::Corrupt("no \"format\" number".to_owned()))?;
    let data = envelope
        .remove("data")
        .ok_or_else(|| Decode::Corrupt("no \"data\"".to_owned()))?;
    upconvert(format, data)
}

/// Brings `data` from envelope `format` up to [`FORMAT`]. When the format changes, bump
/// `FORMAT`, keep a fixture of the old format in the tests, and add one arm per old format that
/// converts it to the next one and recurses, e.g. `1 => upconvert(2, v1_to_v2(data)?)`.
fn upconvert(format: u64, data: Value) -> Result<Value, Decode> {
    match format {
        FORMAT => Ok(data),
        newer if newer > FORMAT => Err(Decode::Newer(newer)),
        // Format 0 never existed: whatever wrote it was not lwm2md.
        older => Err(Decode::Corrupt(format!("unknown format {older}"))),
    }
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The pid a lock holder wrote into the lock file.
fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn round_trip_and_absent_documents() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("state")).unwrap();
        assert_eq!(store.load("registration").unwrap(), None);

        let doc =
            json!({"location": ["rd", "5a3f"], "lifetime": 86400, "nested": {"k": [1, 2.5, null]}});
        store.save("registration", &doc).unwrap();
        assert_eq!(store.load("registration").unwrap(), Some(doc.clone()));

        // Overwrite, then reopen: the newest version survives a restart.
        let doc2 = json!("second");
        store.save("registration", &doc2).unwrap();
        drop(store);
        let store = Store::open(tmp.path().join("state")).unwrap();
        assert_eq!(store.load("registration").unwrap(), Some(doc2));

        // The on-disk envelope is the documented one.
        let raw: Value =
            serde_json::from_slice(&fs::read(store.dir().join("registration.json")).unwrap())
                .unwrap();
        assert_eq!(raw, json!({"format": 1, "data": "second"}));
    }

    #[test]
    fn directory_and_files_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/state");
        let store = Store::open(&dir).unwrap();
        store
            .save("secrets", &json!({"psk": "not logged"}))
            .unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("secrets.json")), 0o600);
        assert_eq!(mode(&dir.join("lock")), 0o600);
        drop(store);

        // An existing directory with loose permissions is tightened.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let _store = Store::open(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn torn_tmp_from_a_crash_loses_to_the_good_file_and_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        store.save("objects", &json!({"good": true})).unwrap();
        drop(store);
        // A crash between writing the temporary file and the rename: half a document.
        let torn = tmp.path().join("objects.json.tmp");
        fs::write(&torn, br#"{"format": 1, "data": {"good": fa"#).unwrap();
        // And one for a document that was never completed at all.
        fs::write(tmp.path().join("new.json.tmp"), b"{").unwrap();

        let store = Store::open(tmp.path()).unwrap();
        assert!(!torn.exists(), "stale .tmp files are removed on open");
        assert_eq!(names(tmp.path()), ["lock", "objects.json"]);
        assert_eq!(store.load("objects").unwrap(), Some(json!({"good": true})));
        assert_eq!(store.load("new").unwrap(), None);
    }

    #[test]
    fn corrupt_documents_are_moved_aside_and_treated_as_absent() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let path = tmp.path().join("device.json");
        let cases: [&[u8]; 7] = [
            b"",
            // Format 0 never existed: not something lwm2md wrote.
            b"{\"format\": 0, \"data\": 1}",
            b"{\"format\": 1, \"da",
            b"\x00\xff garbage",
            b"[1, 2]",
            b"{\"format\": \"one\", \"data\": 1}",
            b"{\"format\": 1}",
        ];
        for (i, content) in cases.iter().enumerate() {
            fs::write(&path, content).unwrap();
            assert_eq!(store.load("device").unwrap(), None, "case {i}");
            assert!(!path.exists(), "case {i}");
            // The evidence is kept, byte for byte, and never overwritten by the next one.
            let aside = tmp.path().join(format!("device.json.corrupt-{}", i + 1));
            assert_eq!(fs::read(&aside).unwrap(), *content, "case {i}");
        }
        // The store stays usable.
        store.save("device", &json!(1)).unwrap();
        assert_eq!(store.load("device").unwrap(), Some(json!(1)));
    }

    #[test]
    fn newer_format_is_refused_and_left_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let path = tmp.path().join("firmware.json");
        let content = br#"{"format": 2, "data": {"slot": "B"}}"#;
        fs::write(&path, content).unwrap();
        let err = store.load("firmware").unwrap_err();
        assert!(
            matches!(err, PersistError::NewerFormat { found: 2, .. }),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains(
                "firmware.json: format 2 is newer than this lwm2md understands (up to 1)"
            ),
            "{message}"
        );
        assert_eq!(fs::read(&path).unwrap(), content, "not moved, not modified");
    }

    #[test]
    fn a_second_store_on_the_same_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let first = Store::open(tmp.path()).unwrap();
        let err = Store::open(tmp.path()).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, PersistError::Locked { holder: Some(pid), .. } if pid == std::process::id()),
            "{err:?}"
        );
        assert!(
            message.contains(&format!(
                "state directory {} is in use by another lwm2md process",
                tmp.path().display()
            )),
            "{message}"
        );
        // Released with the store.
        drop(first);
        Store::open(tmp.path()).unwrap();
    }

    #[test]
    fn names_cannot_escape_or_collide() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        for name in [
            "",
            "../etc/passwd",
            "a/b",
            "x.tmp",
            "lock.json",
            ".hidden",
            &"n".repeat(65),
        ] {
            assert!(
                matches!(
                    store.save(name, &json!(1)),
                    Err(PersistError::InvalidName { .. })
                ),
                "{name:?}"
            );
            assert!(store.load(name).is_err(), "{name:?}");
        }
        store.save("ok-name_2", &json!(1)).unwrap();
    }
}

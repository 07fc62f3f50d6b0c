//! A file-backed fake boot loader for tests and the demo: slot images are files, the boot state
//! is a JSON file, and [`simulate_boot`] applies the same try-once / fallback rule as the real
//! boot scripts.
//!
//! Directory layout:
//!
//! * `slot-a.img`, `slot-b.img`: the slot "devices" (files of the configured size; a test can
//!   point [`FakeSlots::with_devices`] at loop devices over them instead);
//! * `bootstate.json`: the boot variables (`{"lwm2md_slot": "A", "lwm2md_trial": "", …}`, the
//!   same names and values the real backends store), replaced atomically (temp file, fsync,
//!   rename, fsync of the directory): a crash leaves the old or the new file, never a mix;
//! * `booted`: which slot the simulated machine runs (`A` or `B`), written by
//!   [`simulate_boot`] and read by [`FakeSlots::booted`];
//! * `boots`: how many times the machine booted, the simulated kernel boot id
//!   ([`boot_id_of`]) so the daemon can tell a reboot from a restart.
//!
//! A "reboot" in a test or the demo is: stop the daemon, call [`simulate_boot`], start the
//! daemon again.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::vars::{BootPlan, BootVars};
use super::{AbError, Slot, VarsBackend};

/// The boot-state file.
pub const STATE_FILE: &str = "bootstate.json";
/// The file naming the running slot.
pub const BOOTED_FILE: &str = "booted";
/// The boot counter file.
pub const BOOTS_FILE: &str = "boots";
/// The slot image files (A, B).
pub const IMAGE_FILES: [&str; 2] = ["slot-a.img", "slot-b.img"];

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AbError + '_ {
    move |source| AbError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Replaces `dir/name` atomically: write a temporary file, fsync it, rename it over the old
/// one, fsync the directory (without the last step the rename itself may be lost in a crash).
pub(crate) fn write_atomically(dir: &Path, name: &str, data: &[u8]) -> Result<(), AbError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(data).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)
}

/// fsyncs a directory, making renames and new files in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), AbError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn read_map(dir: &Path) -> Result<BTreeMap<String, String>, AbError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read(&path).map_err(io_err(&path))?;
    serde_json::from_slice(&text).map_err(|e| AbError::Corrupt(format!("{}: {e}", path.display())))
}

fn write_vars(dir: &Path, vars: &BootVars) -> Result<(), AbError> {
    let map: BTreeMap<&str, String> = vars.to_pairs().into_iter().collect();
    let mut json = serde_json::to_vec_pretty(&map)
        .map_err(|e| AbError::Corrupt(format!("cannot encode the boot state: {e}")))?;
    json.push(b'\n');
    write_atomically(dir, STATE_FILE, &json)
}

/// Reads the boot state in `dir` strictly, as userspace does.
pub fn read_vars(dir: &Path) -> Result<BootVars, AbError> {
    BootVars::from_map(&read_map(dir)?)
}

fn read_booted(dir: &Path) -> Result<Slot, AbError> {
    let path = dir.join(BOOTED_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| AbError::UnknownBootedSlot(format!("{}: {e}", path.display())))?;
    match text.trim() {
        "A" => Ok(Slot::A),
        "B" => Ok(Slot::B),
        other => Err(AbError::UnknownBootedSlot(format!(
            "{}: {other:?} is not A or B",
            path.display()
        ))),
    }
}

/// The simulated kernel boot id of the fake machine in `dir`: changes with every
/// [`simulate_boot`], like `/proc/sys/kernel/random/boot_id` does with every real boot.
pub fn boot_id_of(dir: &Path) -> String {
    format!("fake-boot-{}", read_boots(dir))
}

/// Boots the simulated machine once: applies the boot rule to `dir/bootstate.json` exactly as
/// `packaging/grub/lwm2md.cfg` and `packaging/uboot/boot.cmd` do (the state is read as the
/// scripts read it; the trial is booted only if re-reading shows `tried=1` landed), records
/// the chosen slot in `dir/booted` and returns it.
///
/// With no usable `lwm2md_slot` the scripts boot slot A and write nothing; so does this.
pub fn simulate_boot(dir: &Path) -> Result<Slot, AbError> {
    let loaded = read_map(dir)
        .ok()
        .and_then(|m| BootVars::parse_as_boot_loader(|n| m.get(n).map(String::as_str)));
    let slot = match loaded {
        None => Slot::A,
        Some(vars) => {
            let plan: BootPlan = vars.plan_boot();
            if let Some(next) = plan.save {
                write_vars(dir, &next)?;
            }
            let reread = read_map(dir)
                .ok()
                .and_then(|m| BootVars::parse_as_boot_loader(|n| m.get(n).map(String::as_str)));
            vars.boot_after_save(&plan, reread.as_ref())
        }
    };
    write_atomically(dir, BOOTED_FILE, format!("{slot}\n").as_bytes())?;
    let boots = read_boots(dir).saturating_add(1);
    write_atomically(dir, BOOTS_FILE, format!("{boots}\n").as_bytes())?;
    Ok(slot)
}

/// The boot counter (0 when missing or unreadable: the next boot makes it 1).
fn read_boots(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(BOOTS_FILE))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// The fake backend: see the module documentation.
#[derive(Debug, Clone)]
pub struct FakeSlots {
    dir: PathBuf,
    devices: [PathBuf; 2],
}

impl FakeSlots {
    /// Creates a fake machine in `dir` (created if missing): two zero-filled images of
    /// `image_size` bytes, a boot state with `primary` as the primary, and `primary` running.
    /// Refuses a directory that already holds a boot state.
    pub fn create(dir: &Path, image_size: u64, primary: Slot) -> Result<Self, AbError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let state = dir.join(STATE_FILE);
        if state.exists() {
            return Err(AbError::Unsafe(format!(
                "{} exists; open the fake instead of creating it again",
                state.display()
            )));
        }
        for name in IMAGE_FILES {
            let path = dir.join(name);
            let file = File::create(&path).map_err(io_err(&path))?;
            file.set_len(image_size).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
        }
        write_vars(dir, &BootVars::new(primary))?;
        write_atomically(dir, BOOTED_FILE, format!("{primary}\n").as_bytes())?;
        write_atomically(dir, BOOTS_FILE, b"1\n")?;
        Self::open(dir)
    }

    /// Opens an existing fake machine.
    pub fn open(dir: &Path) -> Result<Self, AbError> {
        read_map(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            devices: IMAGE_FILES.map(|name| dir.join(name)),
        })
    }

    /// Uses `devices` (for example loop devices over the image files) as the slot devices.
    #[must_use]
    pub fn with_devices(mut self, devices: [PathBuf; 2]) -> Self {
        self.devices = devices;
        self
    }

    /// The fake machine's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn change(
        &mut self,
        plan: impl FnOnce(BootVars, Slot) -> Result<BootVars, AbError>,
    ) -> Result<(), AbError> {
        let booted = self.running_slot()?;
        let old = read_vars(&self.dir)?;
        let new = plan(old, booted)?;
        if new != old {
            write_vars(&self.dir, &new)?;
        }
        Ok(())
    }
}

impl VarsBackend for FakeSlots {
    fn running_slot(&self) -> Result<Slot, AbError> {
        read_booted(&self.dir)
    }

    fn vars(&self) -> Result<BootVars, AbError> {
        read_vars(&self.dir)
    }

    fn change_vars(
        &mut self,
        plan: impl FnOnce(BootVars, Slot) -> Result<BootVars, AbError>,
    ) -> Result<(), AbError> {
        self.change(plan)
    }

    fn slot_device(&self, slot: Slot) -> &Path {
        &self.devices[super::vars::slot_index(slot)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ab::BootSlots as _;

    #[test]
    fn creates_images_and_state_and_boots() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("machine");
        let mut fake = FakeSlots::create(&dir, 4096, Slot::A).expect("create");
        assert!(
            FakeSlots::create(&dir, 4096, Slot::A).is_err(),
            "never re-created"
        );
        for slot in [Slot::A, Slot::B] {
            let len = std::fs::metadata(fake.device(slot)).expect("image").len();
            assert_eq!(len, 4096);
        }
        assert_eq!(fake.booted().expect("booted"), Slot::A);
        let json = std::fs::read_to_string(dir.join(STATE_FILE)).expect("json");
        assert!(json.contains("\"lwm2md_slot\": \"A\""), "{json}");
        fake.mark_unbootable(Slot::B).expect("mark");
        assert_eq!(simulate_boot(&dir).expect("boot"), Slot::A);
        fake.set_trial(Slot::B).expect("trial");
        assert_eq!(simulate_boot(&dir).expect("boot"), Slot::B);
        assert_eq!(fake.booted().expect("booted"), Slot::B);
        // No temporary files are left behind.
        let names: Vec<String> = std::fs::read_dir(&dir)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn unusable_state_boots_a_and_is_refused_by_userspace() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fake = FakeSlots::create(tmp.path(), 0, Slot::B).expect("create");
        std::fs::write(tmp.path().join(STATE_FILE), b"{\"lwm2md_slot\": \"b\"}").expect("w");
        assert!(matches!(fake.state(), Err(AbError::Corrupt(_))));
        assert_eq!(simulate_boot(tmp.path()).expect("boot"), Slot::A);
        std::fs::write(tmp.path().join(STATE_FILE), b"{\"lwm2md_sl").expect("w");
        assert!(matches!(fake.state(), Err(AbError::Corrupt(_))));
        assert_eq!(simulate_boot(tmp.path()).expect("boot"), Slot::A);
        std::fs::write(tmp.path().join(BOOTED_FILE), b"C\n").expect("w");
        assert!(matches!(fake.booted(), Err(AbError::UnknownBootedSlot(_))));
    }
}

//! Which slot is running: the kernel command line (`lwm2md.slot=`, `rauc.slot=`, `root=`)
//! cross-checked with the device mounted at `/`.
//!
//! Installing into "the other slot" is only safe if we know which slot we run from: writing the
//! running slot destroys the system, and a wrong guess at commit time commits a slot that never
//! booted. So detection collects two independent facts and refuses when they disagree (as
//! Mender's `check_device_matches_root` does):
//!
//! 1. what the boot loader said: `lwm2md.slot=A|B` (our boot scripts), else `rauc.slot=A|B`,
//!    else the device `root=` names (`/dev/…`, `PARTUUID=`, `UUID=`, `PARTLABEL=`, `LABEL=`
//!    through the `/dev/disk/by-*` symlinks udev maintains, or `major:minor`); when both a slot
//!    name and a resolvable `root=` are given they must agree;
//! 2. what is mounted: the device number of `/` (plus the devices under it, when `/` is a
//!    device-mapper or md device such as dm-verity) compared with each slot device's
//!    `st_rdev`.
//!
//! [`decide`] is a pure function of the [`Facts`]; [`gather`] reads them, with every path
//! injectable through [`DetectInputs`] so tests can use temporary files and device nodes.

use std::path::{Path, PathBuf};

use nix::sys::stat::{SFlag, major, makedev, minor, stat};

use super::vars::slot_index;
use super::{AbError, Slot};

/// Where the backends get the running slot from.
#[derive(Debug, Clone)]
pub enum BootedSlot {
    /// Detect it at each call from the kernel command line and `/`.
    Detect(DetectInputs),
    /// A fixed answer: tests, or a system whose integrator knows better than detection.
    Fixed(Slot),
}

impl BootedSlot {
    /// The running slot, given the configured slot devices.
    pub fn resolve(&self, devices: &[PathBuf; 2]) -> Result<Slot, AbError> {
        match self {
            Self::Fixed(slot) => Ok(*slot),
            Self::Detect(inputs) => {
                let [a, b] = devices;
                detect_booted(inputs, [a.as_path(), b.as_path()])
            }
        }
    }
}

/// The paths detection reads (system defaults from [`DetectInputs::default`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectInputs {
    /// The kernel command line (`/proc/cmdline`).
    pub cmdline: PathBuf,
    /// The mount point whose device is cross-checked (`/`).
    pub root: PathBuf,
    /// The device directory holding `disk/by-partuuid`, `disk/by-uuid`… (`/dev`).
    pub dev_dir: PathBuf,
    /// sysfs' block devices by number, to look under device-mapper / md roots
    /// (`/sys/dev/block`).
    pub sys_dev_block: PathBuf,
    /// Refuse when `/` is on neither slot device. Turn off only for root file systems whose
    /// device cannot be traced to a slot (overlay or network roots).
    pub require_root_match: bool,
}

impl Default for DetectInputs {
    fn default() -> Self {
        Self {
            cmdline: PathBuf::from("/proc/cmdline"),
            root: PathBuf::from("/"),
            dev_dir: PathBuf::from("/dev"),
            sys_dev_block: PathBuf::from("/sys/dev/block"),
            require_root_match: true,
        }
    }
}

/// The facts detection decides from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Facts {
    /// The kernel command line.
    pub cmdline: String,
    /// `st_rdev` of each slot device (`None`: missing or not a block device).
    pub slot_devs: [Option<u64>; 2],
    /// The device `root=` names, resolved to a device number (`None`: no `root=`, or it
    /// cannot be resolved).
    pub root_param_dev: Option<u64>,
    /// The device `/` is mounted from, then the devices under it (dm / md slaves). Empty when
    /// it cannot be read.
    pub mounted_devs: Vec<u64>,
}

fn dev_name(dev: u64) -> String {
    format!("{}:{}", major(dev), minor(dev))
}

fn dev_or_unknown(dev: Option<u64>) -> String {
    dev.map_or_else(|| "not a block device".to_owned(), dev_name)
}

/// Splits a kernel command line into parameters the way the kernel does: on whitespace,
/// except inside double quotes, which are removed; everything after a lone `--` belongs to
/// init.
pub fn cmdline_params(cmdline: &str) -> Vec<String> {
    let mut params = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut started = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                started = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if started {
                    if current == "--" {
                        return params;
                    }
                    params.push(std::mem::take(&mut current));
                    started = false;
                }
            }
            c => {
                current.push(c);
                started = true;
            }
        }
    }
    if started && current != "--" {
        params.push(current);
    }
    params
}

/// The last value of `key=` on the command line (the kernel also lets the last one win).
pub fn cmdline_value<'a>(params: &'a [String], key: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find_map(|p| p.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

/// Decides the running slot from `facts` (see the module documentation for the rules).
pub fn decide(facts: &Facts, require_root_match: bool) -> Result<Slot, AbError> {
    let params = cmdline_params(&facts.cmdline);
    let slot_of = |dev: u64| {
        [Slot::A, Slot::B]
            .into_iter()
            .find(|s| facts.slot_devs[slot_index(*s)] == Some(dev))
    };
    let named = match ["lwm2md.slot", "rauc.slot"]
        .into_iter()
        .find_map(|key| cmdline_value(&params, key).map(|v| (key, v)))
    {
        None => None,
        Some((key, value)) => Some((
            format!("{key}={value}"),
            Slot::parse(value).ok_or_else(|| {
                AbError::UnknownBootedSlot(format!("{key}={value} names no slot (A or B)"))
            })?,
        )),
    };
    let root_param = cmdline_value(&params, "root");
    let by_root = facts.root_param_dev.and_then(slot_of).map(|slot| {
        (
            format!(
                "root={} ({})",
                root_param.unwrap_or_default(),
                dev_or_unknown(facts.root_param_dev)
            ),
            slot,
        )
    });
    let (said, slot) = match (named, by_root) {
        (Some((n, a)), Some((r, b))) if a != b => {
            return Err(AbError::UnknownBootedSlot(format!(
                "the kernel command line disagrees with itself: {n} says slot {a}, {r} is \
                 slot {b}'s device"
            )));
        }
        (Some(fact), _) | (None, Some(fact)) => fact,
        (None, None) => {
            return Err(AbError::UnknownBootedSlot(format!(
                "the kernel command line names no slot: no lwm2md.slot= or rauc.slot=, and \
                 root={} is neither slot device (A: {}, B: {})",
                root_param.unwrap_or("(none)"),
                dev_or_unknown(facts.slot_devs[0]),
                dev_or_unknown(facts.slot_devs[1]),
            )));
        }
    };
    let mounted = facts.mounted_devs.iter().find_map(|d| slot_of(*d));
    match mounted {
        Some(m) if m == slot => Ok(slot),
        Some(m) => Err(AbError::UnknownBootedSlot(format!(
            "the kernel command line says slot {slot} ({said}) but / is mounted from {}, slot \
             {m}'s device",
            dev_or_unknown(facts.slot_devs[slot_index(m)])
        ))),
        None if !require_root_match => Ok(slot),
        None => Err(AbError::UnknownBootedSlot(format!(
            "the kernel command line says slot {slot} ({said}) but / is mounted from {}, \
             which is neither slot device (A: {}, B: {})",
            if facts.mounted_devs.is_empty() {
                "an unknown device".to_owned()
            } else {
                facts
                    .mounted_devs
                    .iter()
                    .map(|d| dev_name(*d))
                    .collect::<Vec<_>>()
                    .join(" over ")
            },
            dev_or_unknown(facts.slot_devs[0]),
            dev_or_unknown(facts.slot_devs[1]),
        ))),
    }
}

/// `st_rdev` of `path` (following symlinks) if it is a block device.
fn block_dev(path: &Path) -> Option<u64> {
    let st = stat(path).ok()?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    (kind == SFlag::S_IFBLK).then_some(st.st_rdev)
}

/// Resolves a `root=` value to a device number.
fn resolve_root_param(value: &str, dev_dir: &Path) -> Option<u64> {
    let by = |dir: &str, id: &str| block_dev(&dev_dir.join("disk").join(dir).join(id));
    if let Some(id) = value.strip_prefix("PARTUUID=") {
        // udev names by-partuuid links in lower case; the kernel matches case-insensitively.
        return by("by-partuuid", &id.to_ascii_lowercase());
    }
    if let Some(id) = value.strip_prefix("UUID=") {
        return by("by-uuid", id).or_else(|| by("by-uuid", &id.to_ascii_lowercase()));
    }
    if let Some(id) = value.strip_prefix("PARTLABEL=") {
        return by("by-partlabel", id);
    }
    if let Some(id) = value.strip_prefix("LABEL=") {
        return by("by-label", id);
    }
    if let Some((ma, mi)) = value.split_once(':')
        && let (Ok(ma), Ok(mi)) = (ma.parse::<u64>(), mi.parse::<u64>())
    {
        return Some(makedev(ma, mi));
    }
    if value.starts_with('/') {
        return block_dev(Path::new(value));
    }
    None
}

/// The device numbers under `dev` (dm / md slaves), depth first, a few levels deep.
fn slaves(sys_dev_block: &Path, dev: u64, depth: usize, out: &mut Vec<u64>) {
    if depth == 0 {
        return;
    }
    let dir = sys_dev_block.join(dev_name(dev)).join("slaves");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("dev")) else {
            continue;
        };
        let Some((ma, mi)) = text.trim().split_once(':') else {
            continue;
        };
        if let (Ok(ma), Ok(mi)) = (ma.parse(), mi.parse()) {
            let slave = makedev(ma, mi);
            out.push(slave);
            slaves(sys_dev_block, slave, depth - 1, out);
        }
    }
}

/// Reads the [`Facts`] (the thin, impure half of detection).
pub fn gather(inputs: &DetectInputs, devices: [&Path; 2]) -> Result<Facts, AbError> {
    let cmdline = std::fs::read_to_string(&inputs.cmdline).map_err(|source| AbError::Io {
        path: inputs.cmdline.display().to_string(),
        source,
    })?;
    let root_param_dev = cmdline_value(&cmdline_params(&cmdline), "root")
        .and_then(|value| resolve_root_param(value, &inputs.dev_dir));
    let mut mounted_devs = Vec::new();
    if let Ok(st) = stat(&inputs.root) {
        mounted_devs.push(st.st_dev);
        slaves(&inputs.sys_dev_block, st.st_dev, 4, &mut mounted_devs);
    }
    Ok(Facts {
        cmdline: cmdline.trim().to_owned(),
        slot_devs: devices.map(block_dev),
        root_param_dev,
        mounted_devs,
    })
}

/// Detects the running slot: [`gather`] then [`decide`].
pub fn detect_booted(inputs: &DetectInputs, devices: [&Path; 2]) -> Result<Slot, AbError> {
    decide(&gather(inputs, devices)?, inputs.require_root_match)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::{Mode, mknod};

    fn facts(cmdline: &str, root_param_dev: Option<u64>, mounted: &[u64]) -> Facts {
        Facts {
            cmdline: cmdline.to_owned(),
            slot_devs: [Some(makedev(179, 2)), Some(makedev(179, 3))],
            root_param_dev,
            mounted_devs: mounted.to_vec(),
        }
    }

    #[test]
    fn command_line_parsing() {
        let p =
            cmdline_params(r#"console=ttyS0 "quoted=a b" lwm2md.slot=A x="1 2" -- lwm2md.slot=B"#);
        assert_eq!(p, ["console=ttyS0", "quoted=a b", "lwm2md.slot=A", "x=1 2"]);
        let p = cmdline_params("root=/dev/a root=/dev/b rootwait");
        assert_eq!(cmdline_value(&p, "root"), Some("/dev/b"));
        assert_eq!(cmdline_value(&p, "rootwait"), None);
    }

    #[test]
    fn command_line_variants() {
        let (a, b) = (makedev(179, 2), makedev(179, 3));
        let ok = |f: Facts| decide(&f, true).expect("decided");
        assert_eq!(ok(facts("ro lwm2md.slot=B", None, &[b])), Slot::B);
        assert_eq!(ok(facts("rauc.slot=A quiet", None, &[a])), Slot::A);
        // lwm2md.slot wins over rauc.slot.
        assert_eq!(ok(facts("rauc.slot=A lwm2md.slot=B", None, &[b])), Slot::B);
        // root= alone, resolved to slot B's device.
        assert_eq!(ok(facts("root=PARTUUID=x", Some(b), &[b])), Slot::B);
        // dm-verity: / is dm-0 over slot A's partition.
        assert_eq!(
            ok(facts("lwm2md.slot=A", None, &[makedev(254, 0), a])),
            Slot::A
        );
        // Without a root match, only when explicitly allowed.
        assert_eq!(
            decide(&facts("lwm2md.slot=A", None, &[makedev(0, 30)]), false).expect("allowed"),
            Slot::A
        );
        let err = |f: Facts| decide(&f, true).expect_err("refused").to_string();
        let e = err(facts("lwm2md.slot=A", None, &[b]));
        assert!(
            e.contains("lwm2md.slot=A") && e.contains("179:3") && e.contains("slot B"),
            "{e}"
        );
        let e = err(facts("lwm2md.slot=A", None, &[makedev(8, 1)]));
        assert!(e.contains("8:1") && e.contains("neither slot"), "{e}");
        let e = err(facts("lwm2md.slot=A", None, &[]));
        assert!(e.contains("unknown device"), "{e}");
        let e = err(facts("lwm2md.slot=A root=/dev/mmcblk0p3", Some(b), &[a]));
        assert!(
            e.contains("disagrees") && e.contains("root=/dev/mmcblk0p3"),
            "{e}"
        );
        let e = err(facts("root=/dev/sda1", Some(makedev(8, 1)), &[a]));
        assert!(
            e.contains("names no slot") && e.contains("root=/dev/sda1"),
            "{e}"
        );
        let e = err(facts("lwm2md.slot=C", None, &[a]));
        assert!(e.contains("lwm2md.slot=C"), "{e}");
    }

    /// The reader against real device nodes: slot A's node carries the device number of the
    /// file system the temporary directory is on, so "/" (the temporary directory) is
    /// mounted from slot A.
    #[test]
    fn reader_resolves_partuuid_and_checks_the_mounted_device() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let here = stat(tmp.path()).expect("stat").st_dev;
        let other = makedev(major(here).wrapping_add(1), minor(here));
        let node = |name: &str, dev| {
            let path = tmp.path().join(name);
            mknod(&path, SFlag::S_IFBLK, Mode::from_bits_truncate(0o600), dev).map(|()| path)
        };
        let (slot_a, slot_b) = match (node("slot-a", here), node("slot-b", other)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("SKIP reader test: cannot create block device nodes here ({e})");
                return;
            }
        };
        let dev_dir = tmp.path().join("dev");
        let by_partuuid = dev_dir.join("disk/by-partuuid");
        std::fs::create_dir_all(&by_partuuid).expect("mkdir");
        std::os::unix::fs::symlink(&slot_a, by_partuuid.join("0fc63daf-02")).expect("link");
        std::os::unix::fs::symlink(&slot_b, by_partuuid.join("0fc63daf-03")).expect("link");
        let cmdline = tmp.path().join("cmdline");
        let inputs = DetectInputs {
            cmdline: cmdline.clone(),
            root: tmp.path().to_owned(),
            dev_dir,
            sys_dev_block: tmp.path().join("sys"),
            require_root_match: true,
        };
        let devices = [slot_a.as_path(), slot_b.as_path()];
        let detect = |text: &str| {
            std::fs::write(&cmdline, text).expect("write cmdline");
            detect_booted(&inputs, devices)
        };
        // root=PARTUUID (upper case on the command line) resolves to slot A: agrees with /.
        assert_eq!(
            detect("root=PARTUUID=0FC63DAF-02 rw\n").expect("A"),
            Slot::A
        );
        // root= names slot B's device but / is on slot A's: refused, both facts named.
        let e = detect("root=PARTUUID=0fc63daf-03\n")
            .expect_err("mismatch")
            .to_string();
        assert!(
            e.contains("root=PARTUUID=0fc63daf-03") && e.contains("slot A's device"),
            "{e}"
        );
        let e = detect("lwm2md.slot=B\n").expect_err("mismatch").to_string();
        assert!(e.contains("lwm2md.slot=B"), "{e}");
        assert_eq!(detect("lwm2md.slot=A\n").expect("A"), Slot::A);
        // A root= device path (the node itself).
        assert_eq!(
            detect(&format!("root={}\n", slot_a.display())).expect("A"),
            Slot::A
        );
        // An unknown PARTUUID and no slot name: refused.
        assert!(detect("root=PARTUUID=ffff\n").is_err());
        // No command line file at all.
        std::fs::remove_file(&cmdline).expect("rm");
        assert!(matches!(
            detect_booted(&inputs, devices),
            Err(AbError::Io { .. })
        ));
        // BootedSlot::Fixed short-circuits detection.
        assert_eq!(
            BootedSlot::Fixed(Slot::B)
                .resolve(&[slot_a.clone(), slot_b.clone()])
                .expect("fixed"),
            Slot::B
        );
    }
}

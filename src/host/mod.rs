//! Real host data for the objects (memory, OS release, DMI, network interfaces, modem): the only
//! place that reads /proc, /sys and /etc on behalf of objects.
//!
//! Every reader takes the filesystem root as a parameter (`/` in production, a temp dir tree in
//! tests) and turns missing files or garbage into "absent" (`None`, empty lists), never into a
//! panic: a resource without a real source is left out of the object, not invented.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The host side of the Device object: `DeviceProbe` over /proc, /sys and the local time zone.
mod device;
/// Static identity fallbacks from DMI, `/etc/machine-id` and os-release.
pub mod dmi;
/// `/proc/meminfo` parsing.
pub mod meminfo;
/// Watches ModemManager on the system bus and caches what object 4 needs.
pub mod modem;
/// Interfaces, addresses and default routes: `NetProbe` over getifaddrs, /proc and /sys.
pub mod net;
/// `os-release(5)` parsing.
pub mod os_release;
/// Power sources and battery from `/sys/class/power_supply`.
pub mod power_supply;
/// The host's UTC offset and IANA zone name.
pub mod timezone;

pub use device::HostDevice;
pub use dmi::device_info;
pub use modem::ModemHandle;
pub use net::HostNet;

/// Host files we read are small; anything larger is not what we expect and is not read whole.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// `root` joined with an absolute host path such as `/proc/meminfo`.
fn under(root: &Path, absolute: &str) -> PathBuf {
    root.join(absolute.trim_start_matches('/'))
}

/// Reads a small UTF-8 text file; `None` when it is missing, unreadable, too large or not UTF-8.
fn read_text(path: &Path) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    let read = file
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .ok()?;
    (read as u64 <= MAX_FILE_BYTES).then_some(text)
}

/// Reads a one-value sysfs-style file, trimmed; `None` when missing or empty.
fn read_value(path: &Path) -> Option<String> {
    let text = read_text(path)?;
    let value = text.trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// A base instant for the sans-IO objects' tests, which may not read the clock themselves.
#[cfg(test)]
pub(crate) fn test_instant() -> std::time::Instant {
    std::time::Instant::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_tolerates_missing_binary_and_huge_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(read_text(&dir.path().join("missing")), None);
        let binary = dir.path().join("binary");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).expect("write");
        assert_eq!(read_text(&binary), None);
        let huge = dir.path().join("huge");
        std::fs::write(&huge, vec![b'a'; (MAX_FILE_BYTES + 1) as usize]).expect("write");
        assert_eq!(read_text(&huge), None);
        let blank = dir.path().join("blank");
        std::fs::write(&blank, " \n").expect("write");
        assert_eq!(read_value(&blank), None);
        assert_eq!(read_value(dir.path()), None, "a directory is not a value");
        assert_eq!(
            under(Path::new("/tmp/root"), "/proc/meminfo"),
            PathBuf::from("/tmp/root/proc/meminfo")
        );
    }

    proptest::proptest! {
        /// Whatever a host file holds, parsing never panics.
        #[test]
        fn parsers_never_panic(text in "(?s).{0,400}", line in "[0-9A-Fa-f :,x./+-]{0,120}") {
            let _ = meminfo::parse(&text);
            let _ = os_release::parse(&text);
            let _ = net::parse_ipv4_routes(&text);
            let _ = net::parse_ipv6_routes(&text);
            let _ = net::parse_ipv4_routes(&line);
            let _ = net::parse_ipv6_routes(&line);
            let _ = crate::objects::device::parse_utc_offset(&text);
            let _ = crate::objects::device::parse_utc_offset(&line);
            let _ = crate::objects::device::is_plausible_timezone(&text);
        }
    }
}

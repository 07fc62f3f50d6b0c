//! `/proc/meminfo`: total and available memory for /3/0/21 and /3/0/10.

use std::path::Path;

use crate::objects::device::Memory;

/// Reads `<root>/proc/meminfo`; fields that are missing or malformed are `None`.
pub fn read(root: &Path) -> Memory {
    super::read_text(&super::under(root, "/proc/meminfo"))
        .map(|text| parse(&text))
        .unwrap_or_default()
}

/// Parses meminfo text. `MemTotal` and `MemAvailable` are in KiB despite the `kB` label; the
/// result is in bytes. `MemAvailable` (Linux ≥ 3.14) is the kernel's estimate of memory usable
/// without swapping, which is what "free" means to an operator; `MemFree` would understate it by
/// the whole page cache, so it is not used as a substitute.
pub fn parse(text: &str) -> Memory {
    Memory {
        total_bytes: field(text, "MemTotal"),
        available_bytes: field(text, "MemAvailable"),
    }
}

/// The value of `name` in bytes, if present exactly once in the `<name>: <n> kB` form.
fn field(text: &str, name: &str) -> Option<u64> {
    let mut found = text.lines().filter_map(|line| {
        let (key, rest) = line.split_once(':')?;
        (key.trim() == name).then_some(rest)
    });
    let rest = found.next()?;
    if found.next().is_some() {
        // Two lines for one key: this is not a meminfo file we understand.
        return None;
    }
    let mut words = rest.split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    match (words.next(), words.next()) {
        (Some("kB"), None) => kib.checked_mul(1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head of a real /proc/meminfo (Linux 6.1).
    const MEMINFO: &str = "\
MemTotal:        4025836 kB
MemFree:          215364 kB
MemAvailable:    3121248 kB
Buffers:          190736 kB
Cached:          2720240 kB
SwapCached:            0 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
";

    #[test]
    fn parses_total_and_available_in_bytes() {
        assert_eq!(
            parse(MEMINFO),
            Memory {
                total_bytes: Some(4_025_836 * 1024),
                available_bytes: Some(3_121_248 * 1024),
            }
        );
    }

    #[test]
    fn old_kernels_without_memavailable() {
        let text = "MemTotal: 1024 kB\nMemFree: 10 kB\n";
        assert_eq!(
            parse(text),
            Memory {
                total_bytes: Some(1024 * 1024),
                available_bytes: None,
            }
        );
    }

    #[test]
    fn garbage_is_absent_not_a_panic() {
        for text in [
            "",
            "\0\0\0",
            "MemTotal: lots kB",
            "MemTotal: 12 MB",
            "MemTotal: 12",
            "MemTotal: 12 kB extra",
            "MemTotal: -5 kB",
            "MemTotal: 99999999999999999999 kB",
            "MemTotal: 18446744073709551615 kB",
            "MemTotal: 1 kB\nMemTotal: 2 kB",
            "MemTotal 12 kB",
        ] {
            assert_eq!(parse(text).total_bytes, None, "{text:?}");
        }
    }

    #[test]
    fn reads_from_a_root_directory() {
        let root = tempfile::tempdir().expect("temp dir");
        assert_eq!(read(root.path()), Memory::default(), "missing file");
        std::fs::create_dir_all(root.path().join("proc")).expect("mkdir");
        std::fs::write(root.path().join("proc/meminfo"), MEMINFO).expect("write");
        assert_eq!(read(root.path()).total_bytes, Some(4_025_836 * 1024));
    }
}

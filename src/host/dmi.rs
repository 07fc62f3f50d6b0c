//! Host fallbacks for the Device object's static identity: DMI (`/sys/class/dmi/id`),
//! `/etc/machine-id` and os-release.

use std::path::Path;

use crate::objects::device::DeviceInfo;

/// Strings firmware vendors leave in DMI fields they did not fill. Reporting them would be
/// inventing a value, so they count as absent (compared case-insensitively).
const PLACEHOLDERS: &[&str] = &[
    "to be filled by o.e.m.",
    "to be filled by oem",
    "default string",
    "system manufacturer",
    "system product name",
    "system version",
    "system serial number",
    "base board serial number",
    "chassis serial number",
    "not specified",
    "not applicable",
    "not available",
    "none",
    "n/a",
    "na",
    "oem",
    "o.e.m.",
    "invalid",
    "unknown",
    "type1productconfigid",
    "0123456789",
    "123456789",
];

/// The identity the host itself can vouch for, to be used where `[device]` configuration leaves
/// a field unset: manufacturer, model and hardware version from DMI, serial from DMI or else
/// `/etc/machine-id`, firmware version from os-release. `device_type` and `factory_reset` are
/// configuration-only and stay unset here. `root` is `/` in production.
pub fn device_info(root: &Path) -> DeviceInfo {
    let firmware_version = super::os_release::read(root)
        .as_ref()
        .and_then(super::os_release::firmware_version);
    DeviceInfo {
        manufacturer: dmi(root, "sys_vendor"),
        model: dmi(root, "product_name"),
        serial: dmi(root, "product_serial").or_else(|| machine_id(root)),
        firmware_version,
        hardware_version: dmi(root, "product_version").or_else(|| dmi(root, "board_version")),
        device_type: None,
        factory_reset: false,
    }
}

/// A DMI field, unless missing, unreadable (product_serial is root-only) or a placeholder.
fn dmi(root: &Path, field: &str) -> Option<String> {
    let value = super::read_value(&super::under(root, &format!("/sys/class/dmi/id/{field}")))?;
    meaningful(&value).then_some(value)
}

/// False for vendor placeholders and filler such as `00000000` or `FFFFFFFF`.
fn meaningful(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    let filler = |c: char| lower.chars().all(|x| x == c || x == ' ' || x == '-');
    !PLACEHOLDERS.contains(&lower.as_str())
        && !filler('0')
        && !filler('f')
        && !filler('x')
        && !filler('.')
        && value.chars().all(|c| !c.is_control())
}

/// `/etc/machine-id` when it holds a valid id (32 lowercase hex digits, not all zero; the
/// literal `uninitialized` of a first boot is not an id).
fn machine_id(root: &Path) -> Option<String> {
    let id = super::read_value(&super::under(root, "/etc/machine-id"))?;
    let valid = id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && id.bytes().any(|b| b != b'0');
    valid.then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, path: &str, text: &str) {
        let path = super::super::under(root, path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn dmi_os_release_and_machine_id() {
        let root = tempfile::tempdir().expect("temp dir");
        let r = root.path();
        write(r, "/sys/class/dmi/id/sys_vendor", "Acme Industrial\n");
        write(r, "/sys/class/dmi/id/product_name", "EdgeBox 3000\n");
        write(r, "/sys/class/dmi/id/product_serial", "AB123456\n");
        write(r, "/sys/class/dmi/id/product_version", "Default string\n");
        write(r, "/sys/class/dmi/id/board_version", "Rev 1.02\n");
        write(
            r,
            "/etc/os-release",
            "VERSION_ID=\"4.2\"\nVERSION=\"4.2 (x)\"\n",
        );
        write(r, "/etc/machine-id", "3d1219c7c4c5404aaa1f6d2a48adfda4\n");
        assert_eq!(
            device_info(r),
            DeviceInfo {
                manufacturer: Some("Acme Industrial".into()),
                model: Some("EdgeBox 3000".into()),
                serial: Some("AB123456".into()),
                firmware_version: Some("4.2".into()),
                hardware_version: Some("Rev 1.02".into()),
                device_type: None,
                factory_reset: false,
            }
        );
    }

    #[test]
    fn placeholders_fall_back_or_stay_absent() {
        let root = tempfile::tempdir().expect("temp dir");
        let r = root.path();
        write(
            r,
            "/sys/class/dmi/id/sys_vendor",
            "To Be Filled By O.E.M.\n",
        );
        write(r, "/sys/class/dmi/id/product_name", "System Product Name");
        write(r, "/sys/class/dmi/id/product_serial", "0000000000\n");
        write(r, "/sys/class/dmi/id/product_version", "\n");
        write(r, "/etc/machine-id", "3d1219c7c4c5404aaa1f6d2a48adfda4\n");
        let info = device_info(r);
        assert_eq!(info.manufacturer, None);
        assert_eq!(info.model, None);
        assert_eq!(
            info.serial.as_deref(),
            Some("3d1219c7c4c5404aaa1f6d2a48adfda4")
        );
        assert_eq!(info.hardware_version, None);
        assert_eq!(info.firmware_version, None);
    }

    #[test]
    fn empty_root_gives_nothing() {
        let root = tempfile::tempdir().expect("temp dir");
        assert_eq!(device_info(root.path()), DeviceInfo::default());
    }

    #[test]
    fn invalid_machine_ids() {
        let root = tempfile::tempdir().expect("temp dir");
        for bad in [
            "uninitialized\n",
            "00000000000000000000000000000000",
            "3D1219C7C4C5404AAA1F6D2A48ADFDA4",
            "3d1219c7",
            "\u{fffd}\u{fffd}",
        ] {
            write(root.path(), "/etc/machine-id", bad);
            assert_eq!(machine_id(root.path()), None, "{bad:?}");
        }
    }

    #[test]
    fn filler_values() {
        for bad in ["FFFFFFFF", "xxxx-xxxx", "None", "N/A", "....", "a\u{7}b"] {
            assert!(!meaningful(bad), "{bad:?}");
        }
        for good in ["0A12", "ThinkPad X1", "1.0", "F00"] {
            assert!(meaningful(good), "{good:?}");
        }
    }
}

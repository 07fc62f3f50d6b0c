//! Power sources and the internal battery from `/sys/class/power_supply` (/3/0/6..9, /3/0/20).
//!
//! Only supplies that power this device count: `scope=Device` supplies are the batteries of
//! peripherals (mice, headsets) and are skipped. Types other than Battery, Mains and USB have no
//! faithful /3/0/6 code and are skipped too.

use std::path::Path;

use crate::objects::device::{Battery, BatteryStatus, PowerInfo, PowerSource, PowerSourceKind};

/// Reads every supply under `<root>/sys/class/power_supply`, in name order (so instance ids of
/// /3/0/6..8 are stable). A missing directory means no power information.
pub fn read(root: &Path) -> PowerInfo {
    let dir = super::under(root, "/sys/class/power_supply");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return PowerInfo::default();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    let mut info = PowerInfo::default();
    for name in names {
        let supply_dir = dir.join(&name);
        let attribute = |a: &str| super::read_value(&supply_dir.join(a));
        let Some(supply) = parse_supply(&attribute) else {
            continue;
        };
        if let Some(source) = supply.source {
            info.sources.push(source);
        }
        // The first internal battery is "the" battery of /3/0/9 and /3/0/20.
        if info.battery.is_none() {
            info.battery = supply.battery;
        }
    }
    info
}

/// What one supply contributes.
#[derive(Debug, PartialEq, Eq)]
struct Supply {
    /// The available source, if it is one right now.
    source: Option<PowerSource>,
    /// Battery level and status, for an internal battery.
    battery: Option<Battery>,
}

/// Interprets one supply from its sysfs attributes (`attribute("type")` etc.).
fn parse_supply(attribute: &dyn Fn(&str) -> Option<String>) -> Option<Supply> {
    if attribute("scope").as_deref() == Some("Device") {
        return None;
    }
    let kind = match attribute("type")?.as_str() {
        "Battery" => PowerSourceKind::InternalBattery,
        "Mains" => PowerSourceKind::AcMains,
        t if t.starts_with("USB") => PowerSourceKind::Usb,
        _ => return None,
    };
    let flag = |a: &str| attribute(a).map(|v| v != "0");
    let source = PowerSource {
        kind,
        voltage_mv: micro_to_milli(attribute("voltage_now")),
        current_ma: micro_to_milli(attribute("current_now")),
    };
    if kind != PowerSourceKind::InternalBattery {
        // An unplugged charger is not an available source; without `online` assume it is.
        let online = flag("online").unwrap_or(true);
        return Some(Supply {
            source: online.then_some(source),
            battery: None,
        });
    }
    let present = flag("present").unwrap_or(true);
    let health = attribute("health");
    if !present || health.as_deref() == Some("No battery") {
        return Some(Supply {
            source: None,
            battery: Some(Battery {
                level_percent: None,
                status: Some(BatteryStatus::NotInstalled),
            }),
        });
    }
    let battery = Battery {
        level_percent: attribute("capacity")
            .and_then(|c| c.parse::<i64>().ok())
            .filter(|c| (0..=100).contains(c)),
        status: battery_status(
            attribute("status").as_deref(),
            attribute("capacity_level").as_deref(),
            health.as_deref(),
        ),
    };
    Some(Supply {
        source: Some(source),
        battery: Some(battery),
    })
}

/// Maps the kernel's `status`, `capacity_level` and `health` strings to /3/0/20.
fn battery_status(
    status: Option<&str>,
    capacity_level: Option<&str>,
    health: Option<&str>,
) -> Option<BatteryStatus> {
    if health == Some("Dead") {
        return Some(BatteryStatus::Damaged);
    }
    let low = matches!(capacity_level, Some("Low" | "Critical"));
    match status? {
        "Charging" => Some(BatteryStatus::Charging),
        "Full" => Some(BatteryStatus::ChargeComplete),
        "Discharging" | "Not charging" if low => Some(BatteryStatus::Low),
        "Discharging" | "Not charging" => Some(BatteryStatus::Normal),
        "Unknown" => Some(BatteryStatus::Unknown),
        _ => None,
    }
}

/// µV → mV or µA → mA, rounded to the nearest integer; garbage is `None`.
fn micro_to_milli(value: Option<String>) -> Option<i64> {
    let micro: i64 = value?.parse().ok()?;
    // Round half away from zero without overflow at the extremes.
    let (q, r) = (micro / 1000, micro % 1000);
    Some(match r {
        r if r >= 500 => q + 1,
        r if r <= -500 => q - 1,
        _ => q,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supply(root: &Path, name: &str, attributes: &[(&str, &str)]) {
        let dir = super::super::under(root, "/sys/class/power_supply").join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for (attribute, value) in attributes {
            std::fs::write(dir.join(attribute), format!("{value}\n")).expect("write");
        }
    }

    #[test]
    fn laptop_with_charger_usb_and_a_mouse() {
        let root = tempfile::tempdir().expect("temp dir");
        let r = root.path();
        supply(r, "AC", &[("type", "Mains"), ("online", "1")]);
        supply(
            r,
            "BAT0",
            &[
                ("type", "Battery"),
                ("present", "1"),
                ("status", "Discharging"),
                ("capacity", "64"),
                ("capacity_level", "Normal"),
                ("voltage_now", "12153000"),
                ("current_now", "-1534499"),
                ("health", "Good"),
            ],
        );
        supply(
            r,
            "hidpp_battery_0",
            &[("type", "Battery"), ("scope", "Device"), ("capacity", "5")],
        );
        supply(
            r,
            "ucsi-source-psy-USBC000:001",
            &[("type", "USB"), ("online", "0")],
        );
        supply(
            r,
            "usb-charger",
            &[
                ("type", "USB_PD"),
                ("online", "1"),
                ("voltage_now", "5000000"),
            ],
        );
        supply(r, "wireless", &[("type", "Wireless"), ("online", "1")]);
        let info = read(r);
        assert_eq!(
            info.sources,
            vec![
                PowerSource {
                    kind: PowerSourceKind::AcMains,
                    voltage_mv: None,
                    current_ma: None
                },
                PowerSource {
                    kind: PowerSourceKind::InternalBattery,
                    voltage_mv: Some(12_153),
                    current_ma: Some(-1_534)
                },
                PowerSource {
                    kind: PowerSourceKind::Usb,
                    voltage_mv: Some(5_000),
                    current_ma: None
                },
            ]
        );
        assert_eq!(
            info.battery,
            Some(Battery {
                level_percent: Some(64),
                status: Some(BatteryStatus::Normal)
            })
        );
    }

    #[test]
    fn missing_battery_is_not_installed_and_not_a_source() {
        let root = tempfile::tempdir().expect("temp dir");
        supply(
            root.path(),
            "BAT1",
            &[("type", "Battery"), ("present", "0")],
        );
        let info = read(root.path());
        assert!(info.sources.is_empty());
        assert_eq!(
            info.battery.and_then(|b| b.status),
            Some(BatteryStatus::NotInstalled)
        );
    }

    #[test]
    fn status_mapping() {
        use BatteryStatus as S;
        let cases = [
            (Some("Charging"), None, None, Some(S::Charging)),
            (Some("Full"), None, None, Some(S::ChargeComplete)),
            (Some("Discharging"), Some("Critical"), None, Some(S::Low)),
            (Some("Not charging"), Some("Low"), None, Some(S::Low)),
            (Some("Discharging"), Some("High"), None, Some(S::Normal)),
            (Some("Unknown"), None, None, Some(S::Unknown)),
            (Some("Charging"), None, Some("Dead"), Some(S::Damaged)),
            (Some("bogus"), None, None, None),
            (None, Some("Low"), None, None),
        ];
        for (status, level, health, expected) in cases {
            assert_eq!(
                battery_status(status, level, health),
                expected,
                "{status:?}"
            );
        }
    }

    #[test]
    fn garbage_attributes_are_absent() {
        let root = tempfile::tempdir().expect("temp dir");
        supply(
            root.path(),
            "BAT0",
            &[
                ("type", "Battery"),
                ("capacity", "142"),
                ("voltage_now", "lots"),
                ("current_now", "99999999999999999999999"),
                ("status", "\u{1}"),
            ],
        );
        supply(root.path(), "junk", &[("type", "\u{0}\u{0}")]);
        supply(root.path(), "untyped", &[]);
        let info = read(root.path());
        assert_eq!(
            info.sources,
            vec![PowerSource {
                kind: PowerSourceKind::InternalBattery,
                voltage_mv: None,
                current_ma: None
            }]
        );
        assert_eq!(info.battery, Some(Battery::default()));
    }

    #[test]
    fn no_power_supply_class() {
        let root = tempfile::tempdir().expect("temp dir");
        assert_eq!(read(root.path()), PowerInfo::default());
    }

    #[test]
    fn rounding() {
        let m = |s: &str| micro_to_milli(Some(s.into()));
        assert_eq!(m("1499"), Some(1));
        assert_eq!(m("1500"), Some(2));
        assert_eq!(m("-1500"), Some(-2));
        assert_eq!(m("-1499"), Some(-1));
        assert_eq!(m("9223372036854775807"), Some(9_223_372_036_854_776));
        assert_eq!(m("-9223372036854775808"), Some(-9_223_372_036_854_776));
        assert_eq!(m(""), None);
    }
}

//! Object 3, Device (v1.2): identity, reboot and factory reset, power, memory, error codes and the
//! device's notion of time.
//!
//! The object is pure. Static identity comes in as a [`DeviceInfo`] built by the runtime from
//! configuration with host fallbacks (`host::device_info`); changing host data comes from a
//! [`DeviceProbe`] (the real one is `host::HostDevice`); wall-clock time is `ctx.unix_time`.
//! Resources without a real source are left out of `resources()` rather than invented.
//!
//! Time: the server may write Current Time, UTC Offset and Timezone. None of these writes touch
//! the host: a written Current Time becomes an offset added to the host clock for this object,
//! a written UTC Offset or Timezone overrides what the host reports. All three are persisted.
//!
//! Error codes are derived from live conditions, evaluated whenever /3/0/11 is read. Reset Error
//! Code acknowledges the conditions active at that moment: they are no longer reported until they
//! clear (as seen by a later evaluation) and come back. Without that, "reset then re-evaluate"
//! would re-create every persistent condition at once and the Execute would do nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::core::effect::Effect;
use crate::core::lwm2m::error::Error;
use crate::core::lwm2m::path::Path;
use crate::core::lwm2m::value::{ExecArg, ResourceValue, Value};
use crate::core::object::{Ctx, Object};
use crate::model::ObjectMeta;

const MANUFACTURER: u16 = 0;
const MODEL_NUMBER: u16 = 1;
const SERIAL_NUMBER: u16 = 2;
const FIRMWARE_VERSION: u16 = 3;
const REBOOT: u16 = 4;
const FACTORY_RESET: u16 = 5;
const POWER_SOURCES: u16 = 6;
const POWER_VOLTAGE: u16 = 7;
const POWER_CURRENT: u16 = 8;
const BATTERY_LEVEL: u16 = 9;
/// Memory Free and Memory Total (21) report RAM (`MemAvailable` / `MemTotal`), as this daemon's
/// specification chose, although the OMA text speaks of storage for data and software.
const MEMORY_FREE: u16 = 10;
const ERROR_CODE: u16 = 11;
const RESET_ERROR_CODE: u16 = 12;
const CURRENT_TIME: u16 = 13;
const UTC_OFFSET: u16 = 14;
const TIMEZONE: u16 = 15;
const BINDING_MODES: u16 = 16;
const DEVICE_TYPE: u16 = 17;
const HARDWARE_VERSION: u16 = 18;
const SOFTWARE_VERSION: u16 = 19;
const BATTERY_STATUS: u16 = 20;
const MEMORY_TOTAL: u16 = 21;

/// Error code 0: no error.
const NO_ERROR: u8 = 0;
/// Error code 1: low battery power.
const ERROR_LOW_BATTERY: u8 = 1;
/// Error code 5: out of memory.
const ERROR_OUT_OF_MEMORY: u8 = 5;
/// Error code 7: IP connectivity failure.
const ERROR_IP_CONNECTIVITY: u8 = 7;

/// Below this share of total memory available (in percent), the device reports "out of memory".
const LOW_MEMORY_PERCENT: u64 = 5;

/// Version of the persisted state document.
const STATE_VERSION: u32 = 1;

/// Static identity of the device. Every field is optional: a missing value leaves its resource
/// out. The runtime builds it from `[device]` configuration, falling back to
/// `host::device_info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// /3/0/0 Manufacturer.
    pub manufacturer: Option<String>,
    /// /3/0/1 Model Number.
    pub model: Option<String>,
    /// /3/0/2 Serial Number.
    pub serial: Option<String>,
    /// /3/0/3 Firmware Version.
    pub firmware_version: Option<String>,
    /// /3/0/18 Hardware Version.
    pub hardware_version: Option<String>,
    /// /3/0/17 Device Type.
    pub device_type: Option<String>,
    /// A factory-reset command is configured, so /3/0/5 is offered.
    pub factory_reset: bool,
}

impl DeviceInfo {
    /// Field by field, `self`'s values where set, else `fallback`'s (configuration over host
    /// data). `factory_reset` is kept from `self`: it is a configuration decision only.
    pub fn or(self, fallback: Self) -> Self {
        Self {
            manufacturer: self.manufacturer.or(fallback.manufacturer),
            model: self.model.or(fallback.model),
            serial: self.serial.or(fallback.serial),
            firmware_version: self.firmware_version.or(fallback.firmware_version),
            hardware_version: self.hardware_version.or(fallback.hardware_version),
            device_type: self.device_type.or(fallback.device_type),
            factory_reset: self.factory_reset,
        }
    }
}

/// Memory figures in bytes; `None` where the host does not report them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Total usable memory.
    pub total_bytes: Option<u64>,
    /// Memory available for new work without swapping.
    pub available_bytes: Option<u64>,
}

/// The power source kinds of /3/0/6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerSourceKind {
    /// 0: DC power.
    Dc,
    /// 1: internal battery.
    InternalBattery,
    /// 2: external battery.
    ExternalBattery,
    /// 3: fuel cell.
    FuelCell,
    /// 4: power over Ethernet.
    PoE,
    /// 5: USB.
    Usb,
    /// 6: AC (mains) power.
    AcMains,
    /// 7: solar.
    Solar,
}

impl PowerSourceKind {
    /// The /3/0/6 code.
    pub fn code(self) -> i64 {
        match self {
            Self::Dc => 0,
            Self::InternalBattery => 1,
            Self::ExternalBattery => 2,
            Self::FuelCell => 3,
            Self::PoE => 4,
            Self::Usb => 5,
            Self::AcMains => 6,
            Self::Solar => 7,
        }
    }
}

/// One available power source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerSource {
    /// What it is.
    pub kind: PowerSourceKind,
    /// Present voltage in mV, when measured.
    pub voltage_mv: Option<i64>,
    /// Present current in mA, when measured.
    pub current_ma: Option<i64>,
}

/// /3/0/20 Battery Status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatteryStatus {
    /// 0: operating normally, not charging.
    Normal,
    /// 1: charging.
    Charging,
    /// 2: fully charged.
    ChargeComplete,
    /// 3: damaged.
    Damaged,
    /// 4: low.
    Low,
    /// 5: not installed.
    NotInstalled,
    /// 6: the battery information is not available.
    Unknown,
}

impl BatteryStatus {
    /// The /3/0/20 code.
    pub fn code(self) -> i64 {
        match self {
            Self::Normal => 0,
            Self::Charging => 1,
            Self::ChargeComplete => 2,
            Self::Damaged => 3,
            Self::Low => 4,
            Self::NotInstalled => 5,
            Self::Unknown => 6,
        }
    }
}

/// The internal battery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Battery {
    /// Charge in percent, 0..=100.
    pub level_percent: Option<i64>,
    /// Status.
    pub status: Option<BatteryStatus>,
}

/// Power sources and the internal battery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PowerInfo {
    /// Available sources; the position in the list is the resource instance id of 6, 7 and 8.
    pub sources: Vec<PowerSource>,
    /// The internal battery, when there is one.
    pub battery: Option<Battery>,
}

/// Source of changing host data for the Device object.
pub trait DeviceProbe: Send {
    /// Memory figures.
    fn memory(&self) -> Memory;
    /// Power sources and battery.
    fn power(&self) -> PowerInfo;
    /// Whether the host has IP connectivity (`None`: cannot tell, so no error is raised).
    fn ip_connectivity(&self) -> Option<bool>;
    /// The host's local UTC offset in seconds at `unix_time`, when it knows its zone.
    fn utc_offset(&self, unix_time: i64) -> Option<i32>;
    /// The host's IANA time zone name, when it knows it.
    fn timezone(&self) -> Option<String>;
}

/// The persisted part of the object: what servers wrote.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Persisted {
    version: u32,
    time_offset: i64,
    utc_offset: Option<String>,
    timezone: Option<String>,
}

/// The Device object (single instance 0).
pub struct Device {
    info: DeviceInfo,
    probe: Box<dyn DeviceProbe>,
    /// Seconds added to the host clock since a server wrote Current Time.
    time_offset: i64,
    /// UTC Offset written by a server, verbatim.
    utc_offset: Option<String>,
    /// Timezone written by a server.
    timezone: Option<String>,
    /// Error codes acknowledged by Reset Error Code and still active.
    acknowledged: BTreeSet<u8>,
    /// The last wall-clock time seen, so `resources()` (which gets no context) can ask the probe
    /// whether it knows a UTC offset.
    last_unix_time: i64,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("info", &self.info)
            .field("time_offset", &self.time_offset)
            .field("utc_offset", &self.utc_offset)
            .field("timezone", &self.timezone)
            .field("acknowledged", &self.acknowledged)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// A Device object with static `info` and host data from `probe`.
    pub fn new(info: DeviceInfo, probe: Box<dyn DeviceProbe>) -> Self {
        Self {
            info,
            probe,
            time_offset: 0,
            utc_offset: None,
            timezone: None,
            acknowledged: BTreeSet::new(),
            last_unix_time: 0,
        }
    }

    /// The conditions currently true, as error codes.
    fn active_conditions(&self) -> BTreeSet<u8> {
        let mut active = BTreeSet::new();
        let memory = self.probe.memory();
        if let (Some(total), Some(available)) = (memory.total_bytes, memory.available_bytes)
            && total > 0
            && u128::from(available) * 100 < u128::from(total) * u128::from(LOW_MEMORY_PERCENT)
        {
            active.insert(ERROR_OUT_OF_MEMORY);
        }
        if self.probe.ip_connectivity() == Some(false) {
            active.insert(ERROR_IP_CONNECTIVITY);
        }
        let battery_low = self
            .probe
            .power()
            .battery
            .is_some_and(|b| b.status == Some(BatteryStatus::Low));
        if battery_low {
            active.insert(ERROR_LOW_BATTERY);
        }
        active
    }

    /// Evaluates the conditions and returns the codes to report (a single 0 when none).
    /// Acknowledgements of conditions that have cleared are forgotten here, which is what lets a
    /// condition that comes back be reported again.
    fn error_codes(&mut self) -> Vec<u8> {
        let active = self.active_conditions();
        self.acknowledged.retain(|c| active.contains(c));
        let shown: Vec<u8> = active.difference(&self.acknowledged).copied().collect();
        if shown.is_empty() {
            vec![NO_ERROR]
        } else {
            shown
        }
    }

    fn host_utc_offset(&self, unix_time: i64) -> Option<String> {
        self.probe.utc_offset(unix_time).map(format_utc_offset)
    }

    fn current_utc_offset(&self, unix_time: i64) -> Option<String> {
        self.utc_offset
            .clone()
            .or_else(|| self.host_utc_offset(unix_time))
    }

    fn current_timezone(&self) -> Option<String> {
        self.timezone.clone().or_else(|| self.probe.timezone())
    }

    fn text(value: &Option<String>) -> Option<ResourceValue> {
        value
            .clone()
            .map(|s| ResourceValue::Single(Value::String(s)))
    }

    fn kilobytes(bytes: Option<u64>) -> Option<ResourceValue> {
        // The object defines 1 kB as 1000 bytes.
        let kb = i64::try_from(bytes? / 1000).ok()?;
        Some(ResourceValue::Single(Value::Integer(kb)))
    }

    fn power_values(
        sources: &[PowerSource],
        field: impl Fn(&PowerSource) -> Option<i64>,
    ) -> BTreeMap<u16, Value> {
        (0..=u16::MAX)
            .zip(sources)
            .filter_map(|(id, s)| field(s).map(|v| (id, Value::Integer(v))))
            .collect()
    }

    /// The value of a readable resource, `None` when it has no source (or no longer has one).
    fn value(&mut self, unix_time: i64, resource: u16) -> Option<ResourceValue> {
        let int = |v: i64| Some(ResourceValue::Single(Value::Integer(v)));
        match resource {
            MANUFACTURER => Self::text(&self.info.manufacturer),
            MODEL_NUMBER => Self::text(&self.info.model),
            SERIAL_NUMBER => Self::text(&self.info.serial),
            FIRMWARE_VERSION => Self::text(&self.info.firmware_version),
            POWER_SOURCES => {
                let power = self.probe.power();
                let codes = Self::power_values(&power.sources, |s| Some(s.kind.code()));
                (!codes.is_empty()).then_some(ResourceValue::Multiple(codes))
            }
            POWER_VOLTAGE | POWER_CURRENT => {
                let power = self.probe.power();
                let values = Self::power_values(&power.sources, |s| {
                    if resource == POWER_VOLTAGE {
                        s.voltage_mv
                    } else {
                        s.current_ma
                    }
                });
                (!values.is_empty()).then_some(ResourceValue::Multiple(values))
            }
            BATTERY_LEVEL => self.probe.power().battery?.level_percent.and_then(int),
            BATTERY_STATUS => self
                .probe
                .power()
                .battery?
                .status
                .map(|s| s.code())
                .and_then(int),
            MEMORY_FREE => Self::kilobytes(self.probe.memory().available_bytes),
            MEMORY_TOTAL => Self::kilobytes(self.probe.memory().total_bytes),
            ERROR_CODE => {
                let codes = self.error_codes();
                let map = (0..=u16::MAX)
                    .zip(codes)
                    .map(|(id, c)| (id, Value::Integer(i64::from(c))))
                    .collect();
                Some(ResourceValue::Multiple(map))
            }
            CURRENT_TIME => Some(ResourceValue::Single(Value::Time(
                unix_time.saturating_add(self.time_offset),
            ))),
            UTC_OFFSET => Self::text(&self.current_utc_offset(unix_time)),
            TIMEZONE => Self::text(&self.current_timezone()),
            BINDING_MODES => Some(ResourceValue::Single(Value::String("U".into()))),
            DEVICE_TYPE => Self::text(&self.info.device_type),
            HARDWARE_VERSION => Self::text(&self.info.hardware_version),
            SOFTWARE_VERSION => Some(ResourceValue::Single(Value::String(
                env!("CARGO_PKG_VERSION").into(),
            ))),
            _ => None,
        }
    }

    fn written_string(value: ResourceValue) -> Result<String, Error> {
        match value {
            ResourceValue::Single(Value::String(s)) => Ok(s),
            other => Err(Error::bad(format!("expected a string, got {other:?}"))),
        }
    }

    fn written_time(value: ResourceValue) -> Result<i64, Error> {
        match value {
            ResourceValue::Single(Value::Time(t) | Value::Integer(t)) => Ok(t),
            other => Err(Error::bad(format!("expected a time, got {other:?}"))),
        }
    }

    /// Records a state change: saved, and observers of `resource` notified.
    fn changed(ctx: &mut Ctx<'_>, resource: u16) {
        ctx.persist();
        ctx.changed(Path::resource(3, 0, resource));
    }
}

impl Object for Device {
    fn meta(&self) -> &'static ObjectMeta {
        // The OMA model is compiled in from the registry XML shipped in the crate; object 3 is
        // part of it by construction (the model's own tests check it).
        crate::model::object(3).expect("object 3 is part of the compiled OMA model")
    }

    fn instances(&self) -> Vec<u16> {
        vec![0]
    }

    fn resources(&self, instance: u16) -> Vec<u16> {
        if instance != 0 {
            return Vec::new();
        }
        let info = &self.info;
        let power = self.probe.power();
        let memory = self.probe.memory();
        let battery = power.battery.unwrap_or_default();
        let candidates = [
            (MANUFACTURER, info.manufacturer.is_some()),
            (MODEL_NUMBER, info.model.is_some()),
            (SERIAL_NUMBER, info.serial.is_some()),
            (FIRMWARE_VERSION, info.firmware_version.is_some()),
            (REBOOT, true),
            (FACTORY_RESET, info.factory_reset),
            (POWER_SOURCES, !power.sources.is_empty()),
            (
                POWER_VOLTAGE,
                power.sources.iter().any(|s| s.voltage_mv.is_some()),
            ),
            (
                POWER_CURRENT,
                power.sources.iter().any(|s| s.current_ma.is_some()),
            ),
            (BATTERY_LEVEL, battery.level_percent.is_some()),
            (MEMORY_FREE, memory.available_bytes.is_some()),
            (ERROR_CODE, true),
            (RESET_ERROR_CODE, true),
            (CURRENT_TIME, true),
            (
                UTC_OFFSET,
                self.utc_offset.is_some() || self.probe.utc_offset(self.last_unix_time).is_some(),
            ),
            (
                TIMEZONE,
                self.timezone.is_some() || self.probe.timezone().is_some(),
            ),
            (BINDING_MODES, true),
            (DEVICE_TYPE, info.device_type.is_some()),
            (HARDWARE_VERSION, info.hardware_version.is_some()),
            (SOFTWARE_VERSION, true),
            (BATTERY_STATUS, battery.status.is_some()),
            (MEMORY_TOTAL, memory.total_bytes.is_some()),
        ];
        candidates
            .into_iter()
            .filter_map(|(id, present)| present.then_some(id))
            .collect()
    }

    fn read(
        &mut self,
        ctx: &mut Ctx<'_>,
        instance: u16,
        resource: u16,
    ) -> Result<ResourceValue, Error> {
        if instance != 0 {
            return Err(Error::NotFound);
        }
        self.last_unix_time = ctx.unix_time;
        // A host value can vanish between `resources()` and here (a battery removed): 4.04.
        self.value(ctx.unix_time, resource).ok_or(Error::NotFound)
    }

    fn write(
        &mut self,
        ctx: &mut Ctx<'_>,
        instance: u16,
        resource: u16,
        value: ResourceValue,
    ) -> Result<(), Error> {
        if instance != 0 {
            return Err(Error::NotFound);
        }
        self.last_unix_time = ctx.unix_time;
        match resource {
            CURRENT_TIME => {
                // The host clock is not ours to set (NTP or the administrator own it): keep the
                // server's view as an offset.
                let time = Self::written_time(value)?;
                self.time_offset = time.saturating_sub(ctx.unix_time);
            }
            UTC_OFFSET => {
                let text = Self::written_string(value)?;
                if parse_utc_offset(&text).is_none() {
                    return Err(Error::bad(format!(
                        "UTC offset {text:?} is not of the form UTC+X, UTC-HH:MM or +HH:MM"
                    )));
                }
                self.utc_offset = Some(text);
            }
            TIMEZONE => {
                let text = Self::written_string(value)?;
                if !is_plausible_timezone(&text) {
                    return Err(Error::bad(format!(
                        "timezone {text:?} is not an IANA time zone name"
                    )));
                }
                self.timezone = Some(text);
            }
            _ => return Err(Error::not_allowed("resource is not writable")),
        }
        Self::changed(ctx, resource);
        Ok(())
    }

    fn reset(&mut self, ctx: &mut Ctx<'_>, instance: u16, resource: u16) -> Result<(), Error> {
        if instance != 0 {
            return Err(Error::NotFound);
        }
        let was_set = match resource {
            CURRENT_TIME => std::mem::take(&mut self.time_offset) != 0,
            UTC_OFFSET => self.utc_offset.take().is_some(),
            TIMEZONE => self.timezone.take().is_some(),
            _ => false,
        };
        if was_set {
            Self::changed(ctx, resource);
        }
        Ok(())
    }

    fn execute(
        &mut self,
        ctx: &mut Ctx<'_>,
        instance: u16,
        resource: u16,
        _args: &[ExecArg],
    ) -> Result<(), Error> {
        if instance != 0 {
            return Err(Error::NotFound);
        }
        match resource {
            // The core sends the 2.04 before the runtime performs the effect.
            REBOOT => ctx.effect(Effect::Reboot),
            FACTORY_RESET if self.info.factory_reset => ctx.effect(Effect::FactoryReset),
            FACTORY_RESET => return Err(Error::NotFound),
            RESET_ERROR_CODE => {
                self.acknowledged = self.active_conditions();
                ctx.changed(Path::resource(3, 0, ERROR_CODE));
            }
            _ => return Err(Error::not_allowed("resource is not executable")),
        }
        Ok(())
    }

    fn is_volatile(&self, _instance: u16, resource: u16) -> bool {
        // Host data that changes on its own. 6 (a charger unplugged), 14 (daylight saving time)
        // and 15 (the administrator changing the zone) belong here too.
        matches!(
            resource,
            POWER_SOURCES
                | POWER_VOLTAGE
                | POWER_CURRENT
                | BATTERY_LEVEL
                | MEMORY_FREE
                | ERROR_CODE
                | CURRENT_TIME
                | UTC_OFFSET
                | TIMEZONE
                | BATTERY_STATUS
        )
    }

    fn save_state(&self) -> Option<serde_json::Value> {
        let state = Persisted {
            version: STATE_VERSION,
            time_offset: self.time_offset,
            utc_offset: self.utc_offset.clone(),
            timezone: self.timezone.clone(),
        };
        serde_json::to_value(state).ok()
    }

    fn restore_state(&mut self, state: serde_json::Value) -> Result<(), String> {
        let state: Persisted =
            serde_json::from_value(state).map_err(|e| format!("device state: {e}"))?;
        if state.version != STATE_VERSION {
            return Err(format!(
                "device state version {} is not {STATE_VERSION}",
                state.version
            ));
        }
        if let Some(offset) = &state.utc_offset
            && parse_utc_offset(offset).is_none()
        {
            return Err(format!("device state: bad UTC offset {offset:?}"));
        }
        if let Some(zone) = &state.timezone
            && !is_plausible_timezone(zone)
        {
            return Err(format!("device state: bad timezone {zone:?}"));
        }
        self.time_offset = state.time_offset;
        self.utc_offset = state.utc_offset;
        self.timezone = state.timezone;
        Ok(())
    }
}

/// Formats a UTC offset in seconds as ISO 8601 `UTC±HH:MM` (seconds of historical offsets are
/// dropped: the form has no place for them).
pub fn format_utc_offset(seconds: i32) -> String {
    let sign = if seconds < 0 { '-' } else { '+' };
    let minutes = seconds.unsigned_abs() / 60;
    format!("UTC{sign}{:02}:{:02}", minutes / 60, minutes % 60)
}

/// Parses a UTC offset as servers write it, returning seconds east of UTC: `UTC+X`, `UTC-HH`,
/// `UTC+HHMM`, `UTC-HH:MM`, the same without the `UTC` prefix, `UTC` and `Z`. Offsets beyond the
/// ones in use on Earth (-12:00..=+14:00) are refused.
pub fn parse_utc_offset(text: &str) -> Option<i32> {
    if text == "Z" || text == "UTC" {
        return Some(0);
    }
    let rest = text.strip_prefix("UTC").unwrap_or(text);
    let (sign, digits) = if let Some(digits) = rest.strip_prefix('+') {
        (1, digits)
    } else if let Some(digits) = rest.strip_prefix('-') {
        (-1, digits)
    } else {
        return None;
    };
    // With minutes, hours take two digits as in ISO 8601 (`+05:30`); alone, `UTC+X` allows one.
    let (hours, minutes) = match digits.split_once(':') {
        Some((h, m)) if h.len() == 2 && m.len() == 2 => (h, m),
        Some(_) => return None,
        None if digits.len() == 4 => digits.split_at(2),
        None => (digits, "0"),
    };
    let number = |s: &str| -> Option<i32> {
        (!s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (hours, minutes) = (number(hours)?, number(minutes)?);
    if minutes >= 60 {
        return None;
    }
    let total = sign * (hours * 60 + minutes);
    (-12 * 60..=14 * 60).contains(&total).then_some(total * 60)
}

/// True for a plausible IANA time zone name (`UTC`, `Europe/Berlin`, `Etc/GMT+5`,
/// `America/Argentina/Buenos_Aires`): slash-separated parts starting with a letter and made of
/// letters, digits, `_`, `-` and `+`. Whether the zone exists is not checked: the tz database is
/// host data, and a server may know newer zones than the host.
pub fn is_plausible_timezone(name: &str) -> bool {
    let part_ok = |part: &str| {
        let mut bytes = part.bytes();
        bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
            && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+'))
    };
    name.len() <= 64 && name.split('/').all(part_ok)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::core::object::CtxOutput;

    /// What the fake probe returns; tests change it through the shared handle.
    #[derive(Debug, Clone)]
    struct HostState {
        memory: Memory,
        power: PowerInfo,
        connectivity: Option<bool>,
        utc_offset: Option<i32>,
        timezone: Option<String>,
    }

    impl Default for HostState {
        fn default() -> Self {
            Self {
                memory: Memory {
                    total_bytes: Some(2_000_000_000),
                    available_bytes: Some(1_500_000_000),
                },
                power: PowerInfo::default(),
                connectivity: Some(true),
                utc_offset: Some(3600),
                timezone: Some("Europe/Berlin".into()),
            }
        }
    }

    #[derive(Clone, Default)]
    struct FakeHost(Arc<Mutex<HostState>>);

    impl FakeHost {
        fn with(&self, change: impl FnOnce(&mut HostState)) {
            if let Ok(mut s) = self.0.lock() {
                change(&mut s);
            }
        }
        fn get(&self) -> HostState {
            self.0.lock().map(|s| s.clone()).unwrap_or_default()
        }
    }

    impl DeviceProbe for FakeHost {
        fn memory(&self) -> Memory {
            self.get().memory
        }
        fn power(&self) -> PowerInfo {
            self.get().power
        }
        fn ip_connectivity(&self) -> Option<bool> {
            self.get().connectivity
        }
        fn utc_offset(&self, _unix_time: i64) -> Option<i32> {
            self.get().utc_offset
        }
        fn timezone(&self) -> Option<String> {
            self.get().timezone
        }
    }

    const NOW: i64 = 1_700_000_000;

    fn info() -> DeviceInfo {
        DeviceInfo {
            manufacturer: Some("Acme".into()),
            model: Some("GW-1".into()),
            serial: Some("SN42".into()),
            firmware_version: Some("12".into()),
            hardware_version: Some("rev B".into()),
            device_type: Some("gateway".into()),
            factory_reset: false,
        }
    }

    fn device(info: DeviceInfo) -> (Device, FakeHost) {
        let host = FakeHost::default();
        (Device::new(info, Box::new(host.clone())), host)
    }

    /// Runs `f` with a context at `NOW` and returns its outputs.
    fn call<T>(d: &mut Device, f: impl FnOnce(&mut Device, &mut Ctx<'_>) -> T) -> (T, CtxOutput) {
        let mut out = CtxOutput::default();
        let mut ctx = Ctx {
            now: crate::host::test_instant(),
            unix_time: NOW,
            server: Some(1),
            out: &mut out,
        };
        let result = f(d, &mut ctx);
        (result, out)
    }

    fn read(d: &mut Device, resource: u16) -> Result<ResourceValue, Error> {
        call(d, |d, ctx| d.read(ctx, 0, resource)).0
    }

    fn write(d: &mut Device, resource: u16, value: Value) -> (Result<(), Error>, CtxOutput) {
        call(d, |d, ctx| {
            d.write(ctx, 0, resource, ResourceValue::Single(value))
        })
    }

    fn execute(d: &mut Device, resource: u16) -> (Result<(), Error>, CtxOutput) {
        call(d, |d, ctx| d.execute(ctx, 0, resource, &[]))
    }

    fn string(s: &str) -> ResourceValue {
        ResourceValue::Single(Value::String(s.into()))
    }

    fn int(v: i64) -> ResourceValue {
        ResourceValue::Single(Value::Integer(v))
    }

    fn ints(values: &[(u16, i64)]) -> ResourceValue {
        ResourceValue::Multiple(
            values
                .iter()
                .map(|&(i, v)| (i, Value::Integer(v)))
                .collect(),
        )
    }

    fn errors(d: &mut Device) -> ResourceValue {
        read(d, ERROR_CODE).expect("error code is readable")
    }

    #[test]
    fn identity_and_constants() {
        let (mut d, _) = device(info());
        assert_eq!(read(&mut d, 0), Ok(string("Acme")));
        assert_eq!(read(&mut d, 1), Ok(string("GW-1")));
        assert_eq!(read(&mut d, 2), Ok(string("SN42")));
        assert_eq!(read(&mut d, 3), Ok(string("12")));
        assert_eq!(read(&mut d, 16), Ok(string("U")));
        assert_eq!(read(&mut d, 17), Ok(string("gateway")));
        assert_eq!(read(&mut d, 18), Ok(string("rev B")));
        assert_eq!(read(&mut d, 19), Ok(string(env!("CARGO_PKG_VERSION"))));
        assert_eq!(read(&mut d, 22), Err(Error::NotFound));
        assert_eq!(d.instances(), vec![0]);
        assert_eq!(d.meta().id, 3);
    }

    #[test]
    fn missing_identity_and_host_data_leave_resources_out() {
        let (d, host) = device(DeviceInfo::default());
        host.with(|h| {
            h.memory = Memory::default();
            h.utc_offset = None;
            h.timezone = None;
        });
        assert_eq!(d.resources(0), vec![4, 11, 12, 13, 16, 19]);
        assert_eq!(d.resources(1), Vec::<u16>::new());
    }

    #[test]
    fn full_resource_list() {
        let (d, host) = device(DeviceInfo {
            factory_reset: true,
            ..info()
        });
        host.with(|h| h.power = laptop_power());
        assert_eq!(
            d.resources(0),
            (0..=21).collect::<Vec<u16>>(),
            "everything but ExtDevInfo"
        );
    }

    #[test]
    fn reboot_requests_the_effect() {
        let (mut d, _) = device(info());
        let (result, out) = execute(&mut d, REBOOT);
        assert_eq!(result, Ok(()));
        assert_eq!(out.effects, vec![Effect::Reboot]);
    }

    #[test]
    fn factory_reset_only_when_configured() {
        let (mut d, _) = device(info());
        assert!(!d.resources(0).contains(&FACTORY_RESET));
        let (result, out) = execute(&mut d, FACTORY_RESET);
        assert_eq!(result, Err(Error::NotFound));
        assert!(out.effects.is_empty());

        let (mut d, _) = device(DeviceInfo {
            factory_reset: true,
            ..info()
        });
        assert!(d.resources(0).contains(&FACTORY_RESET));
        let (result, out) = execute(&mut d, FACTORY_RESET);
        assert_eq!(result, Ok(()));
        assert_eq!(out.effects, vec![Effect::FactoryReset]);
    }

    #[test]
    fn executing_other_resources_is_not_allowed() {
        let (mut d, _) = device(info());
        assert!(matches!(
            execute(&mut d, CURRENT_TIME).0,
            Err(Error::MethodNotAllowed(_))
        ));
    }

    #[test]
    fn create_and_delete_are_not_allowed() {
        let (mut d, _) = device(info());
        let (create, _) = call(&mut d, |d, ctx| d.create(ctx, 1, &[]));
        assert!(matches!(create, Err(Error::MethodNotAllowed(_))));
        let (delete, _) = call(&mut d, |d, ctx| d.delete(ctx, 0));
        assert!(matches!(delete, Err(Error::MethodNotAllowed(_))));
    }

    #[test]
    fn memory_in_kilobytes_of_1000_bytes() {
        let (mut d, host) = device(info());
        host.with(|h| {
            h.memory = Memory {
                total_bytes: Some(1_024_000_999),
                available_bytes: Some(512_000),
            }
        });
        assert_eq!(read(&mut d, MEMORY_TOTAL), Ok(int(1_024_000)));
        assert_eq!(read(&mut d, MEMORY_FREE), Ok(int(512)));
        host.with(|h| h.memory.available_bytes = None);
        assert!(!d.resources(0).contains(&MEMORY_FREE));
        assert_eq!(read(&mut d, MEMORY_FREE), Err(Error::NotFound));
    }

    fn laptop_power() -> PowerInfo {
        PowerInfo {
            sources: vec![
                PowerSource {
                    kind: PowerSourceKind::AcMains,
                    voltage_mv: None,
                    current_ma: None,
                },
                PowerSource {
                    kind: PowerSourceKind::InternalBattery,
                    voltage_mv: Some(12_400),
                    current_ma: Some(-850),
                },
                PowerSource {
                    kind: PowerSourceKind::Usb,
                    voltage_mv: Some(5_000),
                    current_ma: None,
                },
            ],
            battery: Some(Battery {
                level_percent: Some(87),
                status: Some(BatteryStatus::Charging),
            }),
        }
    }

    #[test]
    fn power_sources_pair_by_instance_id() {
        let (mut d, host) = device(info());
        assert!(!d.resources(0).contains(&POWER_SOURCES));
        host.with(|h| h.power = laptop_power());
        assert_eq!(
            read(&mut d, POWER_SOURCES),
            Ok(ints(&[(0, 6), (1, 1), (2, 5)]))
        );
        assert_eq!(
            read(&mut d, POWER_VOLTAGE),
            Ok(ints(&[(1, 12_400), (2, 5_000)]))
        );
        assert_eq!(read(&mut d, POWER_CURRENT), Ok(ints(&[(1, -850)])));
        assert_eq!(read(&mut d, BATTERY_LEVEL), Ok(int(87)));
        assert_eq!(read(&mut d, BATTERY_STATUS), Ok(int(1)));
        host.with(|h| h.power = PowerInfo::default());
        assert_eq!(read(&mut d, BATTERY_LEVEL), Err(Error::NotFound));
        assert_eq!(read(&mut d, POWER_SOURCES), Err(Error::NotFound));
    }

    #[test]
    fn battery_status_codes() {
        let all = [
            (BatteryStatus::Normal, 0),
            (BatteryStatus::Charging, 1),
            (BatteryStatus::ChargeComplete, 2),
            (BatteryStatus::Damaged, 3),
            (BatteryStatus::Low, 4),
            (BatteryStatus::NotInstalled, 5),
            (BatteryStatus::Unknown, 6),
        ];
        for (status, code) in all {
            assert_eq!(status.code(), code);
        }
        let kinds = [
            PowerSourceKind::Dc,
            PowerSourceKind::InternalBattery,
            PowerSourceKind::ExternalBattery,
            PowerSourceKind::FuelCell,
            PowerSourceKind::PoE,
            PowerSourceKind::Usb,
            PowerSourceKind::AcMains,
            PowerSourceKind::Solar,
        ];
        assert_eq!(kinds.map(PowerSourceKind::code), [0, 1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn error_code_starts_as_a_single_zero() {
        let (mut d, _) = device(info());
        assert_eq!(errors(&mut d), ints(&[(0, 0)]));
    }

    #[test]
    fn derived_error_conditions() {
        let (mut d, host) = device(info());
        host.with(|h| {
            // 4.9 % available: below the 5 % threshold.
            h.memory = Memory {
                total_bytes: Some(1000),
                available_bytes: Some(49),
            };
            h.connectivity = Some(false);
        });
        assert_eq!(errors(&mut d), ints(&[(0, 5), (1, 7)]));
        host.with(|h| {
            h.memory.available_bytes = Some(50);
            h.power.battery = Some(Battery {
                level_percent: Some(3),
                status: Some(BatteryStatus::Low),
            });
        });
        assert_eq!(errors(&mut d), ints(&[(0, 1), (1, 7)]));
        host.with(|h| {
            h.connectivity = None;
            h.power = PowerInfo::default();
        });
        assert_eq!(errors(&mut d), ints(&[(0, 0)]), "unknown is not a failure");
    }

    #[test]
    fn reset_error_code_acknowledges_until_the_condition_clears_and_returns() {
        let (mut d, host) = device(info());
        host.with(|h| h.connectivity = Some(false));
        assert_eq!(errors(&mut d), ints(&[(0, 7)]));

        let (result, out) = execute(&mut d, RESET_ERROR_CODE);
        assert_eq!(result, Ok(()));
        assert_eq!(out.changed, vec![Path::resource(3, 0, 11)]);
        assert_eq!(errors(&mut d), ints(&[(0, 0)]), "acknowledged");

        // A new condition is still reported while the old one stays acknowledged.
        host.with(|h| h.memory.available_bytes = Some(0));
        assert_eq!(errors(&mut d), ints(&[(0, 5)]));

        // Connectivity comes back: the acknowledgement is forgotten...
        host.with(|h| h.connectivity = Some(true));
        assert_eq!(errors(&mut d), ints(&[(0, 5)]));
        // ...so a new failure is reported again.
        host.with(|h| h.connectivity = Some(false));
        assert_eq!(errors(&mut d), ints(&[(0, 5), (1, 7)]));
    }

    #[test]
    fn current_time_is_host_time_plus_the_written_offset() {
        let (mut d, _) = device(info());
        assert_eq!(
            read(&mut d, CURRENT_TIME),
            Ok(ResourceValue::Single(Value::Time(NOW)))
        );
        let (result, out) = write(&mut d, CURRENT_TIME, Value::Time(NOW + 90));
        assert_eq!(result, Ok(()));
        assert!(out.persist);
        assert_eq!(out.changed, vec![Path::resource(3, 0, 13)]);
        assert_eq!(
            read(&mut d, CURRENT_TIME),
            Ok(ResourceValue::Single(Value::Time(NOW + 90)))
        );
        // The offset follows the host clock.
        let (later, _) = call(&mut d, |d, ctx| {
            ctx.unix_time += 10;
            d.read(ctx, 0, CURRENT_TIME)
        });
        assert_eq!(later, Ok(ResourceValue::Single(Value::Time(NOW + 100))));
        let (bad, out) = write(&mut d, CURRENT_TIME, Value::String("noon".into()));
        assert!(matches!(bad, Err(Error::BadRequest(_))));
        assert!(!out.persist);
    }

    #[test]
    fn current_time_survives_a_restart() {
        let (mut d, _) = device(info());
        assert_eq!(
            write(&mut d, CURRENT_TIME, Value::Time(NOW - 3600)).0,
            Ok(())
        );
        assert_eq!(
            write(&mut d, UTC_OFFSET, Value::String("UTC+5".into())).0,
            Ok(())
        );
        assert_eq!(
            write(&mut d, TIMEZONE, Value::String("Asia/Karachi".into())).0,
            Ok(())
        );
        let state = d.save_state().expect("state");

        let (mut restarted, _) = device(info());
        assert_eq!(restarted.restore_state(state), Ok(()));
        assert_eq!(
            read(&mut restarted, CURRENT_TIME),
            Ok(ResourceValue::Single(Value::Time(NOW - 3600)))
        );
        assert_eq!(read(&mut restarted, UTC_OFFSET), Ok(string("UTC+5")));
        assert_eq!(read(&mut restarted, TIMEZONE), Ok(string("Asia/Karachi")));
    }

    #[test]
    fn bad_persisted_state_is_refused_whole() {
        let (mut d, _) = device(info());
        let bad = [
            serde_json::json!({"version": 2, "time_offset": 5, "utc_offset": null, "timezone": null}),
            serde_json::json!({"version": 1, "time_offset": 5, "utc_offset": "soon", "timezone": null}),
            serde_json::json!({"version": 1, "time_offset": 5, "utc_offset": null, "timezone": "../etc"}),
            serde_json::json!({"version": 1, "time_offset": "x"}),
            serde_json::json!([1, 2]),
        ];
        for state in bad {
            assert!(d.restore_state(state.clone()).is_err(), "{state}");
        }
        assert_eq!(
            read(&mut d, CURRENT_TIME),
            Ok(ResourceValue::Single(Value::Time(NOW)))
        );
    }

    #[test]
    fn utc_offset_comes_from_the_host_until_written() {
        let (mut d, host) = device(info());
        assert_eq!(read(&mut d, UTC_OFFSET), Ok(string("UTC+01:00")));
        host.with(|h| h.utc_offset = Some(-(3 * 3600 + 30 * 60)));
        assert_eq!(read(&mut d, UTC_OFFSET), Ok(string("UTC-03:30")));

        let (result, out) = write(&mut d, UTC_OFFSET, Value::String("UTC+05:45".into()));
        assert_eq!(result, Ok(()));
        assert!(out.persist);
        assert_eq!(out.changed, vec![Path::resource(3, 0, 14)]);
        assert_eq!(read(&mut d, UTC_OFFSET), Ok(string("UTC+05:45")));

        for bad in [
            "UTC+5:3",
            "UTC+15",
            "GMT+1",
            "UTC 1",
            "",
            "+1:00",
            "UTC+01:60",
            "UTC-13",
        ] {
            let (result, out) = write(&mut d, UTC_OFFSET, Value::String(bad.into()));
            assert!(matches!(result, Err(Error::BadRequest(_))), "{bad:?}");
            assert!(!out.persist, "{bad:?}");
        }
        assert!(matches!(
            write(&mut d, UTC_OFFSET, Value::Integer(1)).0,
            Err(Error::BadRequest(_))
        ));
        assert_eq!(read(&mut d, UTC_OFFSET), Ok(string("UTC+05:45")));
    }

    #[test]
    fn timezone_comes_from_the_host_until_written() {
        let (mut d, host) = device(info());
        assert_eq!(read(&mut d, TIMEZONE), Ok(string("Europe/Berlin")));
        let (result, out) = write(
            &mut d,
            TIMEZONE,
            Value::String("America/Argentina/Buenos_Aires".into()),
        );
        assert_eq!(result, Ok(()));
        assert!(out.persist);
        host.with(|h| h.timezone = None);
        assert_eq!(
            read(&mut d, TIMEZONE),
            Ok(string("America/Argentina/Buenos_Aires"))
        );
        for bad in [
            "",
            "Europe/",
            "/etc/passwd",
            "../x",
            "Europe/Ber lin",
            "3Zone",
        ] {
            let (result, _) = write(&mut d, TIMEZONE, Value::String(bad.into()));
            assert!(matches!(result, Err(Error::BadRequest(_))), "{bad:?}");
        }
    }

    #[test]
    fn replace_write_without_time_resources_clears_the_overrides() {
        let (mut d, _) = device(info());
        for (r, v) in [
            (CURRENT_TIME, Value::Time(NOW + 50)),
            (UTC_OFFSET, Value::String("UTC-8".into())),
            (TIMEZONE, Value::String("America/Los_Angeles".into())),
        ] {
            assert_eq!(write(&mut d, r, v).0, Ok(()));
        }
        for r in [CURRENT_TIME, UTC_OFFSET, TIMEZONE] {
            let (result, out) = call(&mut d, |d, ctx| d.reset(ctx, 0, r));
            assert_eq!(result, Ok(()));
            assert!(out.persist, "/3/0/{r}");
        }
        assert_eq!(
            read(&mut d, CURRENT_TIME),
            Ok(ResourceValue::Single(Value::Time(NOW)))
        );
        assert_eq!(read(&mut d, UTC_OFFSET), Ok(string("UTC+01:00")));
        assert_eq!(read(&mut d, TIMEZONE), Ok(string("Europe/Berlin")));
        // Nothing left to clear: no state change to save.
        let (result, out) = call(&mut d, |d, ctx| d.reset(ctx, 0, TIMEZONE));
        assert_eq!(result, Ok(()));
        assert!(!out.persist);
    }

    #[test]
    fn read_only_resources_refuse_writes() {
        let (mut d, _) = device(info());
        assert!(matches!(
            write(&mut d, MANUFACTURER, Value::String("x".into())).0,
            Err(Error::MethodNotAllowed(_))
        ));
    }

    #[test]
    fn volatility() {
        let (d, _) = device(info());
        for r in [6, 7, 8, 9, 10, 11, 13, 14, 15, 20] {
            assert!(d.is_volatile(0, r), "/3/0/{r}");
        }
        for r in [0, 1, 2, 3, 16, 17, 18, 19, 21] {
            assert!(!d.is_volatile(0, r), "/3/0/{r}");
        }
    }

    #[test]
    fn values_match_the_oma_model() {
        let (mut d, host) = device(DeviceInfo {
            factory_reset: true,
            ..info()
        });
        host.with(|h| h.power = laptop_power());
        let meta = d.meta();
        for id in d.resources(0) {
            let r = meta.resource(id).expect("resource is in the model");
            if !r.operations.read {
                continue;
            }
            let values = match read(&mut d, id).expect("readable") {
                ResourceValue::Single(v) => vec![v],
                ResourceValue::Multiple(m) => m.into_values().collect(),
            };
            for v in values {
                assert_eq!(v.kind(), r.kind, "/3/0/{id}");
                assert_eq!(v.check_range(r), Ok(()), "/3/0/{id}");
            }
        }
    }

    #[test]
    fn info_merges_configuration_over_host_values() {
        let config = DeviceInfo {
            manufacturer: Some("Configured".into()),
            device_type: Some("gateway".into()),
            factory_reset: true,
            ..DeviceInfo::default()
        };
        let host = DeviceInfo {
            manufacturer: Some("DMI vendor".into()),
            serial: Some("abc".into()),
            factory_reset: false,
            ..DeviceInfo::default()
        };
        let merged = config.or(host);
        assert_eq!(merged.manufacturer.as_deref(), Some("Configured"));
        assert_eq!(merged.serial.as_deref(), Some("abc"));
        assert_eq!(merged.model, None);
        assert!(merged.factory_reset);
    }

    #[test]
    fn utc_offset_forms() {
        let ok = [
            ("UTC+1".to_string(), 3600),
            ("UTC-8".into(), -8 * 3600),
            ("UTC+05:30".into(), 5 * 3600 + 1800),
            ("UTC+0545".into(), 5 * 3600 + 45 * 60),
            ("+02:00".into(), 7200),
            ("-03".into(), -3 * 3600),
            ("UTC".into(), 0),
            ("Z".into(), 0),
            ("UTC+14".into(), 14 * 3600),
            ("UTC-12:00".into(), -12 * 3600),
        ];
        for (text, seconds) in ok {
            assert_eq!(parse_utc_offset(&text), Some(seconds), "{text}");
        }
        for bad in [
            "UTC+",
            "UTC+123",
            "UTC+1:05",
            "UTC++1",
            "UTC+14:01",
            "utc+1",
            "1",
        ] {
            assert_eq!(parse_utc_offset(bad), None, "{bad}");
        }
        assert_eq!(format_utc_offset(0), "UTC+00:00");
        assert_eq!(format_utc_offset(19_800), "UTC+05:30");
        assert_eq!(format_utc_offset(-36_000), "UTC-10:00");
        assert_eq!(format_utc_offset(-(3600 + 1800 + 7)), "UTC-01:30");
        for seconds in [-43_200, -9000, 0, 3600, 20_700, 50_400] {
            assert_eq!(
                parse_utc_offset(&format_utc_offset(seconds)),
                Some(seconds),
                "round trip"
            );
        }
    }

    #[test]
    fn timezone_names() {
        for ok in [
            "UTC",
            "Europe/Berlin",
            "Etc/GMT+5",
            "EST5EDT",
            "America/Port-au-Prince",
        ] {
            assert!(is_plausible_timezone(ok), "{ok}");
        }
        for bad in [
            "",
            "/UTC",
            "Europe//Berlin",
            "Europe/..",
            "a b",
            "Zone\n",
            &"A".repeat(65),
        ] {
            assert!(!is_plausible_timezone(bad), "{bad:?}");
        }
    }
}

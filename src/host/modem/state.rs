//! ModemManager's D-Bus objects mirrored as typed state, and the [`ModemInfo`] object 4 derives
//! from them. Pure: fed with the property dictionaries that `GetManagedObjects`,
//! `InterfacesAdded`, `InterfacesRemoved`, `PropertiesChanged` and `Properties.GetAll` carry.
//!
//! Property names, types and enumerations follow ModemManager's D-Bus API
//! (`org.freedesktop.ModemManager1.*`, `ModemManager-enums.h`). Values of unexpected types are
//! treated as absent: a misbehaving or newer ModemManager must not take the daemon down.

use std::collections::{BTreeMap, HashMap};

use zbus::{OwnedVariant, Variant};

use crate::objects::connectivity::{CellularTech, ModemInfo};

/// The modem interface; an object with it is a modem.
pub(super) const IFACE_MODEM: &str = "org.freedesktop.ModemManager1.Modem";
/// 3GPP registration details (operator code).
pub(super) const IFACE_3GPP: &str = "org.freedesktop.ModemManager1.Modem.Modem3gpp";
/// Extended signal measurements.
pub(super) const IFACE_SIGNAL: &str = "org.freedesktop.ModemManager1.Modem.Signal";
/// Location sources (3GPP LAC/CI).
pub(super) const IFACE_LOCATION: &str = "org.freedesktop.ModemManager1.Modem.Location";
/// A data bearer (not part of the ObjectManager tree; fetched with `GetAll`).
pub(super) const IFACE_BEARER: &str = "org.freedesktop.ModemManager1.Bearer";

/// The properties of one interface.
pub(super) type Properties = HashMap<String, OwnedVariant>;
/// The interfaces of one object with their properties.
pub(super) type Interfaces = HashMap<String, Properties>;

/// `MMModemPortType` of a network data port.
const PORT_TYPE_NET: u32 = 2;
/// `MMModemLocationSource` of 3GPP LAC/CI data.
const LOCATION_3GPP_LAC_CI: u32 = 1;

/// `MMModemAccessTechnology` bits, grouped by the bearer code they map to.
mod access {
    pub(super) const GSM: u32 = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4);
    pub(super) const UMTS: u32 = (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9);
    pub(super) const CDMA: u32 = (1 << 10) | (1 << 11) | (1 << 12) | (1 << 13);
    /// LTE and LTE Cat-M (Cat-M is an LTE category on LTE carriers).
    pub(super) const LTE: u32 = (1 << 14) | (1 << 16);
    pub(super) const NR5G: u32 = 1 << 15;
    pub(super) const NB_IOT: u32 = 1 << 17;
}

/// The Signal interface's per-technology dictionaries.
const SIGNAL_TECHNOLOGIES: [&str; 6] = ["Cdma", "Evdo", "Gsm", "Umts", "Lte", "Nr5g"];

/// What we keep of one modem object.
#[derive(Debug, Clone, Default, PartialEq)]
struct ModemObject {
    /// The object has the Modem interface (other interfaces may arrive first).
    is_modem: bool,
    access_technologies: Option<u32>,
    /// `SignalQuality`: percent and whether it is recent.
    signal_quality: Option<(u32, bool)>,
    bearers: Vec<String>,
    net_ports: Vec<String>,
    operator_code: Option<String>,
    /// Signal technology (`Lte`) → measurement (`rsrp`) → value.
    signal: BTreeMap<String, BTreeMap<String, f64>>,
    /// The 3GPP LAC/CI location string `MCC,MNC,LAC,CI[,TAC]`.
    location_3gpp: Option<String>,
}

/// What we keep of one bearer object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct BearerObject {
    interface: Option<String>,
    connected: bool,
    apn: Option<String>,
}

/// The mirrored ModemManager state.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct MmState {
    modems: BTreeMap<String, ModemObject>,
    bearers: BTreeMap<String, BearerObject>,
}

impl MmState {
    /// The state from a `GetManagedObjects` reply.
    pub(super) fn from_managed(objects: impl IntoIterator<Item = (String, Interfaces)>) -> Self {
        let mut state = Self::default();
        for (path, interfaces) in objects {
            state.interfaces_added(&path, &interfaces);
        }
        state
    }

    /// Applies `InterfacesAdded`.
    pub(super) fn interfaces_added(&mut self, path: &str, interfaces: &Interfaces) {
        let object = self.modems.entry(path.to_string()).or_default();
        for (interface, properties) in interfaces {
            if interface == IFACE_MODEM {
                object.is_modem = true;
            }
            for (name, value) in properties {
                apply_modem(object, interface, name, Some(value));
            }
        }
    }

    /// Applies `InterfacesRemoved`: the interface's properties are gone; without the Modem
    /// interface the object is no modem any more.
    pub(super) fn interfaces_removed(&mut self, path: &str, interfaces: &[String]) {
        let Some(object) = self.modems.get_mut(path) else {
            return;
        };
        for interface in interfaces {
            clear_interface(object, interface);
        }
        if !object.is_modem {
            self.modems.remove(path);
        }
    }

    /// Applies `PropertiesChanged` to a modem or bearer we know.
    pub(super) fn properties_changed(
        &mut self,
        path: &str,
        interface: &str,
        changed: &Properties,
        invalidated: &[String],
    ) {
        if let Some(object) = self.modems.get_mut(path) {
            for (name, value) in changed {
                apply_modem(object, interface, name, Some(value));
            }
            for name in invalidated {
                apply_modem(object, interface, name, None);
            }
        } else if let Some(bearer) = self.bearers.get_mut(path)
            && interface == IFACE_BEARER
        {
            for (name, value) in changed {
                apply_bearer(bearer, name, Some(value));
            }
            for name in invalidated {
                apply_bearer(bearer, name, None);
            }
        }
    }

    /// Records a bearer's properties (from `GetAll`; empty when the bearer could not be read,
    /// so it is not asked for again until it changes).
    pub(super) fn set_bearer(&mut self, path: &str, properties: &Properties) {
        let mut bearer = BearerObject::default();
        for (name, value) in properties {
            apply_bearer(&mut bearer, name, Some(value));
        }
        self.bearers.insert(path.to_string(), bearer);
    }

    /// Bearers the modems list that we have not read yet.
    pub(super) fn missing_bearers(&self) -> Vec<String> {
        self.modems
            .values()
            .flat_map(|m| m.bearers.iter())
            .filter(|p| !self.bearers.contains_key(*p))
            .cloned()
            .collect()
    }

    /// Forgets bearers no modem lists any more.
    pub(super) fn prune_bearers(&mut self) {
        let listed: Vec<&String> = self.modems.values().flat_map(|m| &m.bearers).collect();
        self.bearers.retain(|path, _| listed.contains(&path));
    }

    /// What object 4 gets: the first modem (lowest modem number), if any.
    pub(super) fn info(&self) -> Option<ModemInfo> {
        let (_, modem) = self
            .modems
            .iter()
            .filter(|(_, m)| m.is_modem)
            .min_by_key(|(path, _)| (path.len(), path.as_str()))?;
        let connected: Vec<&BearerObject> = modem
            .bearers
            .iter()
            .filter_map(|p| self.bearers.get(p))
            .filter(|b| b.connected)
            .collect();
        let technology = modem.access_technologies.and_then(technology);
        let mut data_interfaces = modem.net_ports.clone();
        let mut apns: Vec<String> = Vec::new();
        for bearer in &connected {
            if let Some(i) = &bearer.interface
                && !data_interfaces.contains(i)
            {
                data_interfaces.push(i.clone());
            }
            if let Some(apn) = &bearer.apn
                && !apns.contains(apn)
            {
                apns.push(apn.clone());
            }
        }
        let cell = modem.location_3gpp.as_deref().and_then(parse_lac_ci);
        let operator = modem.operator_code.as_deref().and_then(parse_operator_code);
        let (mcc, mnc) = match (operator, cell) {
            (Some((mcc, mnc)), _) => (Some(mcc), Some(mnc)),
            (None, Some(cell)) => (cell.mcc, cell.mnc),
            (None, None) => (None, None),
        };
        Some(ModemInfo {
            technology,
            data_interfaces,
            signal_strength_dbm: modem.signal_strength(technology),
            snr_db: modem.snr(technology),
            link_quality: modem
                .signal_quality
                .filter(|(_, recent)| *recent)
                .map(|(percent, _)| i64::from(percent.min(100))),
            apns,
            cell_id: cell.and_then(|c| c.cell_id),
            lac: cell.and_then(|c| c.lac),
            mcc,
            mnc,
        })
    }
}

impl ModemObject {
    fn measurement(&self, technology: &str, key: &str) -> Option<f64> {
        self.signal.get(technology)?.get(key).copied()
    }

    /// The strength measure /4/0/2 names for the technology in use: RSRP for LTE and NR, RSCP
    /// for UMTS, RSSI otherwise (falling back to RSSI of the same technology).
    fn signal_strength(&self, technology: Option<CellularTech>) -> Option<i64> {
        let order: &[(&str, &str)] = match technology {
            Some(CellularTech::NrFdd) => &[("Nr5g", "rsrp"), ("Lte", "rsrp"), ("Lte", "rssi")],
            Some(CellularTech::LteFdd | CellularTech::NbIot) => &[("Lte", "rsrp"), ("Lte", "rssi")],
            Some(CellularTech::Wcdma) => &[("Umts", "rscp"), ("Umts", "rssi")],
            Some(CellularTech::Gsm) => &[("Gsm", "rssi")],
            Some(CellularTech::Cdma2000) => &[("Evdo", "rssi"), ("Cdma", "rssi")],
            None => &[
                ("Nr5g", "rsrp"),
                ("Lte", "rsrp"),
                ("Umts", "rscp"),
                ("Gsm", "rssi"),
                ("Lte", "rssi"),
                ("Umts", "rssi"),
                ("Evdo", "rssi"),
                ("Cdma", "rssi"),
            ],
        };
        order
            .iter()
            .find_map(|(t, k)| self.measurement(t, k))
            .and_then(|v| rounded(v, -200.0..=0.0))
    }

    /// Signal to noise ratio of the technology in use.
    fn snr(&self, technology: Option<CellularTech>) -> Option<i64> {
        let order: &[(&str, &str)] = match technology {
            Some(CellularTech::NrFdd) => &[("Nr5g", "snr"), ("Lte", "snr")],
            Some(CellularTech::LteFdd | CellularTech::NbIot) => &[("Lte", "snr")],
            Some(CellularTech::Cdma2000) => &[("Evdo", "sinr")],
            Some(CellularTech::Gsm | CellularTech::Wcdma) => &[],
            None => &[("Nr5g", "snr"), ("Lte", "snr"), ("Evdo", "sinr")],
        };
        order
            .iter()
            .find_map(|(t, k)| self.measurement(t, k))
            .and_then(|v| rounded(v, -50.0..=100.0))
    }
}

/// A finite measurement within a plausible range, rounded to an integer.
fn rounded(value: f64, plausible: std::ops::RangeInclusive<f64>) -> Option<i64> {
    // The range check bounds the value, so the cast cannot saturate.
    (value.is_finite() && plausible.contains(&value)).then(|| value.round() as i64)
}

/// The bearer technology for an `AccessTechnologies` mask; the most capable one wins (a 5G
/// non-standalone modem reports LTE and 5GNR together).
fn technology(bits: u32) -> Option<CellularTech> {
    [
        (access::NR5G, CellularTech::NrFdd),
        (access::LTE, CellularTech::LteFdd),
        (access::NB_IOT, CellularTech::NbIot),
        (access::UMTS, CellularTech::Wcdma),
        (access::CDMA, CellularTech::Cdma2000),
        (access::GSM, CellularTech::Gsm),
    ]
    .into_iter()
    .find_map(|(mask, tech)| (bits & mask != 0).then_some(tech))
}

fn apply_modem(object: &mut ModemObject, interface: &str, name: &str, value: Option<&Variant<'_>>) {
    let value = value.map(unwrap_variant);
    match (interface, name) {
        (IFACE_MODEM, "AccessTechnologies") => object.access_technologies = value.and_then(as_u32),
        (IFACE_MODEM, "SignalQuality") => object.signal_quality = value.and_then(as_quality),
        (IFACE_MODEM, "Bearers") => object.bearers = value.map(as_paths).unwrap_or_default(),
        (IFACE_MODEM, "Ports") => object.net_ports = value.map(net_ports).unwrap_or_default(),
        (IFACE_3GPP, "OperatorCode") => {
            object.operator_code = value.and_then(as_string).filter(|s| !s.is_empty());
        }
        (IFACE_SIGNAL, technology) if SIGNAL_TECHNOLOGIES.contains(&technology) => {
            match value.map(as_measurements) {
                Some(m) if !m.is_empty() => {
                    object.signal.insert(technology.to_string(), m);
                }
                _ => {
                    object.signal.remove(technology);
                }
            }
        }
        (IFACE_LOCATION, "Location") => object.location_3gpp = value.and_then(location_3gpp),
        _ => {}
    }
}

/// Forgets everything an interface contributed.
fn clear_interface(object: &mut ModemObject, interface: &str) {
    match interface {
        IFACE_MODEM => {
            *object = ModemObject {
                operator_code: object.operator_code.take(),
                signal: std::mem::take(&mut object.signal),
                location_3gpp: object.location_3gpp.take(),
                ..ModemObject::default()
            };
        }
        IFACE_3GPP => object.operator_code = None,
        IFACE_SIGNAL => object.signal.clear(),
        IFACE_LOCATION => object.location_3gpp = None,
        _ => {}
    }
}

fn apply_bearer(bearer: &mut BearerObject, name: &str, value: Option<&Variant<'_>>) {
    let value = value.map(unwrap_variant);
    match name {
        "Interface" => bearer.interface = value.and_then(as_string).filter(|s| !s.is_empty()),
        "Connected" => bearer.connected = value.and_then(as_bool).unwrap_or(false),
        "Properties" => {
            bearer.apn = value
                .and_then(|v| dict_entry(v, |k| as_string(k).as_deref() == Some("apn")))
                .and_then(as_string)
                .filter(|s| !s.is_empty());
        }
        _ => {}
    }
}

/// Looks through `v` (variant) wrappers.
fn unwrap_variant<'v, 'a>(value: &'v Variant<'a>) -> &'v Variant<'a> {
    match value {
        Variant::Variant(inner) => unwrap_variant(inner),
        other => other,
    }
}

fn as_u32(value: &Variant<'_>) -> Option<u32> {
    match unwrap_variant(value) {
        Variant::U32(v) => Some(*v),
        _ => None,
    }
}

fn as_bool(value: &Variant<'_>) -> Option<bool> {
    match unwrap_variant(value) {
        Variant::Bool(v) => Some(*v),
        _ => None,
    }
}

fn as_f64(value: &Variant<'_>) -> Option<f64> {
    match unwrap_variant(value) {
        Variant::F64(v) => Some(*v),
        _ => None,
    }
}

fn as_string(value: &Variant<'_>) -> Option<String> {
    match unwrap_variant(value) {
        Variant::Str(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// `SignalQuality` `(ub)`.
fn as_quality(value: &Variant<'_>) -> Option<(u32, bool)> {
    match unwrap_variant(value) {
        Variant::Structure(s) => match s.fields() {
            [percent, recent] => Some((as_u32(percent)?, as_bool(recent)?)),
            _ => None,
        },
        _ => None,
    }
}

/// An `ao` as path strings.
fn as_paths(value: &Variant<'_>) -> Vec<String> {
    match unwrap_variant(value) {
        Variant::Array(a) => a
            .inner()
            .iter()
            .filter_map(|v| match unwrap_variant(v) {
                Variant::ObjectPath(p) => Some(p.as_str().to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Names of the network ports in `Ports` `a(su)`.
fn net_ports(value: &Variant<'_>) -> Vec<String> {
    let Variant::Array(a) = unwrap_variant(value) else {
        return Vec::new();
    };
    a.inner()
        .iter()
        .filter_map(|port| match unwrap_variant(port) {
            Variant::Structure(s) => match s.fields() {
                [name, kind] if as_u32(kind) == Some(PORT_TYPE_NET) => as_string(name),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A signal dictionary `a{sv}` of doubles.
fn as_measurements(value: &Variant<'_>) -> BTreeMap<String, f64> {
    let Variant::Dict(d) = unwrap_variant(value) else {
        return BTreeMap::new();
    };
    d.iter()
        .filter_map(|(k, v)| Some((as_string(k)?, as_f64(v)?)))
        .collect()
}

/// The value of the first entry of dictionary `value` whose key satisfies `key`.
fn dict_entry<'v, 'a>(
    value: &'v Variant<'a>,
    key: impl Fn(&Variant<'_>) -> bool,
) -> Option<&'v Variant<'a>> {
    let Variant::Dict(d) = unwrap_variant(value) else {
        return None;
    };
    d.iter()
        .find(|(k, _)| key(k))
        .map(|(_, v)| unwrap_variant(v))
}

/// The 3GPP LAC/CI entry of `Location` `a{uv}`.
fn location_3gpp(value: &Variant<'_>) -> Option<String> {
    dict_entry(value, |k| as_u32(k) == Some(LOCATION_3GPP_LAC_CI)).and_then(as_string)
}

/// MCC and MNC from an operator code such as `26201` or `310260`.
fn parse_operator_code(code: &str) -> Option<(i64, i64)> {
    let digits = code.len() == 5 || code.len() == 6;
    if !digits || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (mcc, mnc) = code.split_at(3);
    Some((mcc.parse().ok()?, mnc.parse().ok()?))
}

/// What the 3GPP location string tells.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Cell {
    mcc: Option<i64>,
    mnc: Option<i64>,
    lac: Option<i64>,
    cell_id: Option<i64>,
}

/// Parses `MCC,MNC,LAC,CI[,TAC]` (MCC and MNC decimal, LAC, CI and TAC hex). Zero and the
/// reserved LACs 0xFFFE / 0xFFFF mean "unknown" and are left out.
fn parse_lac_ci(text: &str) -> Option<Cell> {
    let fields: Vec<&str> = text.split(',').map(str::trim).collect();
    let [mcc, mnc, lac, ci, ..] = fields[..] else {
        return None;
    };
    let decimal = |s: &str| {
        (!s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<i64>().ok())
            .flatten()
    };
    let hex = |s: &str| {
        (!s.is_empty() && s.len() <= 8)
            .then(|| i64::from_str_radix(s, 16).ok())
            .flatten()
            .filter(|v| *v >= 0)
    };
    Some(Cell {
        mcc: decimal(mcc),
        mnc: decimal(mnc),
        lac: hex(lac).filter(|v| !matches!(v, 0 | 0xfffe | 0xffff)),
        cell_id: hex(ci).filter(|v| *v != 0),
    })
}

#[cfg(test)]
mod tests {
    use zbus::ObjectPath;

    use super::*;

    fn owned<'a>(v: impl Into<Variant<'a>>) -> OwnedVariant {
        OwnedVariant::try_from(v.into()).expect("plain values convert")
    }

    fn props(entries: Vec<(&str, OwnedVariant)>) -> Properties {
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    fn path(p: &'static str) -> ObjectPath<'static> {
        ObjectPath::try_from(p).expect("object path")
    }

    fn lte_dict(rsrp: f64, snr: f64) -> OwnedVariant {
        let m: HashMap<String, OwnedVariant> = [
            ("rsrp".to_string(), owned(Variant::new(rsrp))),
            ("rssi".to_string(), owned(Variant::new(-65.0f64))),
            ("snr".to_string(), owned(Variant::new(snr))),
        ]
        .into_iter()
        .collect();
        owned(m)
    }

    fn modem_interfaces() -> Interfaces {
        let bearers = vec![path("/org/freedesktop/ModemManager1/Bearer/0")];
        let ports = vec![
            ("cdc-wdm0".to_string(), 6u32),
            ("wwan0".to_string(), PORT_TYPE_NET),
            ("ttyUSB2".to_string(), 3u32),
        ];
        let location: HashMap<u32, OwnedVariant> = [
            (
                LOCATION_3GPP_LAC_CI,
                owned(Variant::new("262,01,1F,1A2B3C,0")),
            ),
            (4u32, owned(Variant::new("$GPGGA"))),
        ]
        .into_iter()
        .collect();
        [
            (
                IFACE_MODEM.to_string(),
                props(vec![
                    ("AccessTechnologies", owned(1u32 << 14)),
                    ("SignalQuality", owned((73u32, true))),
                    ("Bearers", owned(bearers)),
                    ("Ports", owned(ports)),
                    ("Model", owned("EM7455")),
                ]),
            ),
            (
                IFACE_3GPP.to_string(),
                props(vec![("OperatorCode", owned("26201"))]),
            ),
            (
                IFACE_SIGNAL.to_string(),
                props(vec![("Lte", lte_dict(-97.4, 12.6)), ("Rate", owned(0u32))]),
            ),
            (
                IFACE_LOCATION.to_string(),
                props(vec![("Location", owned(location))]),
            ),
        ]
        .into_iter()
        .collect()
    }

    fn bearer_properties(connected: bool) -> Properties {
        let settings: HashMap<String, OwnedVariant> = [
            ("apn".to_string(), owned(Variant::new("internet"))),
            ("ip-type".to_string(), owned(Variant::new(8u32))),
        ]
        .into_iter()
        .collect();
        props(vec![
            ("Interface", owned("wwan0")),
            ("Connected", owned(connected)),
            ("Properties", owned(settings)),
        ])
    }

    const MODEM0: &str = "/org/freedesktop/ModemManager1/Modem/0";
    const BEARER0: &str = "/org/freedesktop/ModemManager1/Bearer/0";

    fn synced() -> MmState {
        let mut state = MmState::from_managed([(MODEM0.to_string(), modem_interfaces())]);
        assert_eq!(state.missing_bearers(), vec![BEARER0.to_string()]);
        state.set_bearer(BEARER0, &bearer_properties(true));
        assert!(state.missing_bearers().is_empty());
        state
    }

    #[test]
    fn full_modem_state() {
        assert_eq!(
            synced().info(),
            Some(ModemInfo {
                technology: Some(CellularTech::LteFdd),
                data_interfaces: vec!["wwan0".into()],
                signal_strength_dbm: Some(-97),
                snr_db: Some(13),
                link_quality: Some(73),
                apns: vec!["internet".into()],
                cell_id: Some(0x1a2b3c),
                lac: Some(0x1f),
                mcc: Some(262),
                mnc: Some(1),
            })
        );
    }

    #[test]
    fn no_modem_no_info() {
        assert_eq!(MmState::default().info(), None);
        let only_signal: Interfaces = [(IFACE_SIGNAL.to_string(), Properties::new())].into();
        let state = MmState::from_managed([(MODEM0.to_string(), only_signal)]);
        assert_eq!(state.info(), None, "an object without the Modem interface");
    }

    #[test]
    fn property_changes_and_invalidation() {
        let mut state = synced();
        state.properties_changed(
            MODEM0,
            IFACE_MODEM,
            &props(vec![(
                "AccessTechnologies",
                owned((1u32 << 15) | (1 << 14)),
            )]),
            &[],
        );
        state.properties_changed(
            MODEM0,
            IFACE_SIGNAL,
            &props(vec![("Nr5g", lte_dict(-88.0, 20.0))]),
            &[],
        );
        let info = state.info().expect("modem");
        assert_eq!(info.technology, Some(CellularTech::NrFdd));
        assert_eq!(info.signal_strength_dbm, Some(-88));
        assert_eq!(info.snr_db, Some(20));

        state.properties_changed(MODEM0, IFACE_SIGNAL, &Properties::new(), &["Nr5g".into()]);
        assert_eq!(
            state.info().and_then(|i| i.signal_strength_dbm),
            Some(-97),
            "LTE anchor"
        );

        state.properties_changed(
            MODEM0,
            IFACE_MODEM,
            &props(vec![("SignalQuality", owned((10u32, false)))]),
            &[],
        );
        assert_eq!(
            state.info().and_then(|i| i.link_quality),
            None,
            "stale quality"
        );

        state.properties_changed(
            BEARER0,
            IFACE_BEARER,
            &props(vec![("Connected", owned(false))]),
            &[],
        );
        let info = state.info().expect("modem");
        assert!(info.apns.is_empty());
        assert_eq!(
            info.data_interfaces,
            vec!["wwan0".to_string()],
            "still a net port"
        );

        // Changes to objects we do not know are ignored.
        let before = state.clone();
        state.properties_changed("/elsewhere", IFACE_MODEM, &props(vec![]), &[]);
        assert_eq!(state, before);
    }

    #[test]
    fn interfaces_come_and_go() {
        let mut state = synced();
        state.interfaces_removed(MODEM0, &[IFACE_SIGNAL.into(), IFACE_LOCATION.into()]);
        let info = state.info().expect("modem");
        assert_eq!((info.signal_strength_dbm, info.snr_db), (None, None));
        assert_eq!((info.cell_id, info.lac), (None, None));
        assert_eq!(
            (info.mcc, info.mnc),
            (Some(262), Some(1)),
            "from the operator code"
        );

        let two = "/org/freedesktop/ModemManager1/Modem/10";
        state.interfaces_added(two, &modem_interfaces());
        state.interfaces_removed(MODEM0, &[IFACE_MODEM.into()]);
        state.prune_bearers();
        assert_eq!(
            state.info().and_then(|i| i.technology),
            Some(CellularTech::LteFdd)
        );
        state.interfaces_removed(two, &[IFACE_MODEM.into()]);
        state.prune_bearers();
        assert_eq!(state.info(), None);
        assert_eq!(state, MmState::default());
    }

    #[test]
    fn first_modem_is_the_lowest_number() {
        let mut state = MmState::default();
        let mut gsm = modem_interfaces();
        if let Some(modem) = gsm.get_mut(IFACE_MODEM) {
            modem.insert("AccessTechnologies".into(), owned(1u32 << 3));
        }
        state.interfaces_added(
            "/org/freedesktop/ModemManager1/Modem/10",
            &modem_interfaces(),
        );
        state.interfaces_added("/org/freedesktop/ModemManager1/Modem/9", &gsm);
        assert_eq!(
            state.info().and_then(|i| i.technology),
            Some(CellularTech::Gsm)
        );
    }

    #[test]
    fn wrong_types_are_absent() {
        let garbage: Interfaces = [
            (
                IFACE_MODEM.to_string(),
                props(vec![
                    ("AccessTechnologies", owned("LTE")),
                    ("SignalQuality", owned(73u32)),
                    ("Bearers", owned("not a list")),
                    ("Ports", owned(vec!["wwan0"])),
                ]),
            ),
            (
                IFACE_3GPP.to_string(),
                props(vec![("OperatorCode", owned(26201u32))]),
            ),
            (
                IFACE_SIGNAL.to_string(),
                props(vec![("Lte", owned(-97.0f64))]),
            ),
            (
                IFACE_LOCATION.to_string(),
                props(vec![("Location", owned(1u32))]),
            ),
        ]
        .into();
        let state = MmState::from_managed([(MODEM0.to_string(), garbage)]);
        assert_eq!(state.info(), Some(ModemInfo::default()));
    }

    #[test]
    fn access_technology_mapping() {
        let cases = [
            (0, None),
            (1, None),
            (1 << 1, Some(CellularTech::Gsm)),
            (1 << 4, Some(CellularTech::Gsm)),
            (1 << 5, Some(CellularTech::Wcdma)),
            (1 << 9, Some(CellularTech::Wcdma)),
            (1 << 10, Some(CellularTech::Cdma2000)),
            (1 << 14, Some(CellularTech::LteFdd)),
            (1 << 16, Some(CellularTech::LteFdd)),
            (1 << 17, Some(CellularTech::NbIot)),
            ((1 << 15) | (1 << 14), Some(CellularTech::NrFdd)),
            ((1 << 14) | (1 << 5), Some(CellularTech::LteFdd)),
        ];
        for (bits, expected) in cases {
            assert_eq!(technology(bits), expected, "{bits:#x}");
        }
    }

    #[test]
    fn signal_values_are_bounded() {
        assert_eq!(rounded(f64::NEG_INFINITY, -200.0..=0.0), None);
        assert_eq!(rounded(f64::NAN, -200.0..=0.0), None);
        assert_eq!(rounded(-1e300, -200.0..=0.0), None);
        assert_eq!(rounded(-113.5, -200.0..=0.0), Some(-114));
    }

    #[test]
    fn location_and_operator_strings() {
        assert_eq!(
            parse_lac_ci("310,260,FFFE,0A1B2C3,3F1"),
            Some(Cell {
                mcc: Some(310),
                mnc: Some(260),
                lac: None,
                cell_id: Some(0x0a1b2c3)
            })
        );
        assert_eq!(
            parse_lac_ci("262,01,0,0"),
            Some(Cell {
                mcc: Some(262),
                mnc: Some(1),
                lac: None,
                cell_id: None
            })
        );
        assert_eq!(parse_lac_ci("262,01"), None);
        assert_eq!(
            parse_lac_ci("x,y,zz,-1"),
            Some(Cell::default()),
            "garbage fields are absent"
        );
        assert_eq!(parse_operator_code("310260"), Some((310, 260)));
        assert_eq!(parse_operator_code("26201"), Some((262, 1)));
        for bad in ["", "2620", "2620123", "26a01", "+2620"] {
            assert_eq!(parse_operator_code(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn object_paths_convert() {
        // The test helpers build values the way zbus delivers them.
        let p = ObjectPath::try_from(BEARER0).expect("path");
        assert_eq!(as_paths(&Variant::from(vec![p])), vec![BEARER0.to_string()]);
    }

    proptest::proptest! {
        /// Location and operator strings from the bus never panic the parsers.
        #[test]
        fn location_parsers_never_panic(text in "[0-9A-Fa-fx, -]{0,60}|(?s).{0,60}") {
            let _ = parse_lac_ci(&text);
            let _ = parse_operator_code(&text);
        }
    }
}

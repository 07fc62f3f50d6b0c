//! Object 4, Connectivity Monitoring (v1.3): which network the gateway uses, its addresses and
//! routers, and, when a cellular modem is managed by ModemManager, the radio data.
//!
//! The object is pure: everything it reports comes from a [`NetProbe`] snapshot (the real one is
//! `host::net::HostNet`). Resources without a real source are left out of `resources()`, even
//! mandatory ones: without a modem there is no radio signal strength, so /4/0/2 is omitted rather
//! than filled with a made-up number (the rule: "omitted, not invented").

// Address types come from `::core::net` (the crate `core`, not our `crate::core`): plain data,
// no sockets, as befits the sans-IO core.
use ::core::net::IpAddr;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::core::lwm2m::error::Error;
use crate::core::lwm2m::value::{ResourceValue, Value};
use crate::core::object::{Ctx, Object};
use crate::model::ObjectMeta;

/// /4/0/0 Network Bearer.
const NETWORK_BEARER: u16 = 0;
/// /4/0/1 Available Network Bearer.
const AVAILABLE_BEARERS: u16 = 1;
/// /4/0/2 Radio Signal Strength (dBm).
const SIGNAL_STRENGTH: u16 = 2;
/// /4/0/3 Link Quality.
const LINK_QUALITY: u16 = 3;
/// /4/0/4 IP Addresses.
const IP_ADDRESSES: u16 = 4;
/// /4/0/5 Router IP Addresses.
const ROUTER_ADDRESSES: u16 = 5;
/// /4/0/7 APN.
const APN: u16 = 7;
/// /4/0/8 Cell ID.
const CELL_ID: u16 = 8;
/// /4/0/9 SMNC.
const SMNC: u16 = 9;
/// /4/0/10 SMCC.
const SMCC: u16 = 10;
/// /4/0/11 SignalSNR (dB).
const SIGNAL_SNR: u16 = 11;
/// /4/0/12 LAC.
const LAC: u16 = 12;

/// Network Bearer code for WLAN.
const BEARER_WLAN: i64 = 21;
/// Network Bearer code for Ethernet.
const BEARER_ETHERNET: i64 = 41;

/// Host network state as the object needs it. Produced by a [`NetProbe`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetSnapshot {
    /// Every network interface, or `None` when they could not be listed.
    pub interfaces: Option<Vec<NetInterface>>,
    /// The default routes (IPv4 and IPv6), or `None` when no routing table could be read.
    pub default_routes: Option<Vec<DefaultRoute>>,
    /// The cellular modem, when ModemManager manages one.
    pub modem: Option<ModemInfo>,
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetInterface {
    /// Kernel name, e.g. `eth0`.
    pub name: String,
    /// Administratively up and with a carrier (IFF_UP and IFF_RUNNING).
    pub up: bool,
    /// The loopback interface.
    pub loopback: bool,
    /// What kind of link it is, as far as the host can tell.
    pub link: LinkKind,
    /// Every address of the interface (link-local ones included; the object filters).
    pub addresses: Vec<IpAddr>,
}

/// The link layer of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// Ethernet framing (ARPHRD_ETHER) and not wireless: wired Ethernet, but also bridges and
    /// veth pairs, which carry Ethernet frames too.
    Ethernet,
    /// An 802.11 interface (`wireless` or `phy80211` in sysfs).
    Wlan,
    /// Anything else (PPP, raw-IP modems, tunnels, loopback): no bearer code unless the modem
    /// claims the interface.
    Other,
}

/// A default route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultRoute {
    /// The interface the route leaves through.
    pub interface: String,
    /// The next hop; `None` for a device route (point-to-point links such as PPP).
    pub gateway: Option<IpAddr>,
    /// Route metric; the lowest wins.
    pub metric: u32,
    /// True for an IPv6 route.
    pub ipv6: bool,
}

/// Cellular radio technologies, as far as LwM2M's Network Bearer (/4/0/0) can name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellularTech {
    /// GSM, GPRS, EDGE.
    Gsm,
    /// UMTS, HSPA.
    Wcdma,
    /// CDMA2000 1xRTT, EV-DO.
    Cdma2000,
    /// LTE (ModemManager does not tell FDD from TDD; FDD is by far the common case).
    LteFdd,
    /// LTE NB-IoT.
    NbIot,
    /// 5G NR (ModemManager does not tell FDD from TDD either).
    NrFdd,
}

impl CellularTech {
    /// The Network Bearer code (/4/0/0 range 0..20).
    pub fn bearer_code(self) -> i64 {
        match self {
            Self::Gsm => 0,
            Self::Wcdma => 2,
            Self::Cdma2000 => 3,
            Self::LteFdd => 6,
            Self::NbIot => 7,
            Self::NrFdd => 9,
        }
    }
}

/// What ModemManager reports about the first modem. Every field is optional because modems and
/// ModemManager versions differ in what they expose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModemInfo {
    /// The current access technology.
    pub technology: Option<CellularTech>,
    /// Interfaces that carry the modem's data (connected bearers and net ports).
    pub data_interfaces: Vec<String>,
    /// Signal strength in dBm (RSRP for LTE/NR, RSCP for UMTS, RSSI otherwise).
    pub signal_strength_dbm: Option<i64>,
    /// Signal to noise ratio in dB.
    pub snr_db: Option<i64>,
    /// Signal quality in percent.
    pub link_quality: Option<i64>,
    /// APNs of the connected bearers.
    pub apns: Vec<String>,
    /// Serving cell id.
    pub cell_id: Option<i64>,
    /// Location area code.
    pub lac: Option<i64>,
    /// Serving mobile country code.
    pub mcc: Option<i64>,
    /// Serving mobile network code.
    pub mnc: Option<i64>,
}

/// Source of host network state for object 4 (and for the Device object's connectivity error).
pub trait NetProbe: Send {
    /// The current network state. Must not block on anything slower than /proc and /sys.
    fn snapshot(&self) -> NetSnapshot;
}

/// True for an address worth reporting: global or site-scoped unicast (private IPv4 ranges and
/// IPv6 ULAs count, since gateways are often on private networks), never loopback, link-local,
/// unspecified or multicast.
pub fn is_reportable_address(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            !(a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_broadcast())
        }
        IpAddr::V6(a) => {
            let link_local = (a.segments()[0] & 0xffc0) == 0xfe80;
            !(a.is_loopback() || a.is_unspecified() || a.is_multicast() || link_local)
        }
    }
}

/// Whether the host has IP connectivity: some up, non-loopback interface has a reportable address
/// and a default route leaves through an up, non-loopback interface. `None` when either input
/// could not be read, so an unreadable /proc never raises a connectivity error.
pub fn has_ip_connectivity(snapshot: &NetSnapshot) -> Option<bool> {
    let interfaces = snapshot.interfaces.as_ref()?;
    let routes = snapshot.default_routes.as_ref()?;
    let usable = |i: &&NetInterface| i.up && !i.loopback;
    let addressed = interfaces
        .iter()
        .filter(usable)
        .any(|i| i.addresses.iter().any(is_reportable_address));
    let routed = routes.iter().any(|r| {
        interfaces
            .iter()
            .filter(usable)
            .any(|i| i.name == r.interface)
    });
    Some(addressed && routed)
}

/// Interface names left out of /4: exact names, or prefixes written with a trailing `*`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceFilter {
    patterns: Vec<String>,
}

impl InterfaceFilter {
    /// A filter from configuration patterns (`lo`, `docker*`).
    pub fn new(patterns: Vec<String>) -> Self {
        Self { patterns }
    }

    /// True when `name` matches one of the patterns.
    pub fn ignores(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => p == name,
        })
    }
}

/// The Connectivity Monitoring object (single instance 0).
pub struct Connectivity {
    probe: Box<dyn NetProbe>,
    filter: InterfaceFilter,
    /// The snapshot taken for the request being handled: every read of one request sees the same
    /// state, keyed by the request's `ctx.now`.
    cached: Option<(Instant, NetSnapshot)>,
}

impl std::fmt::Debug for Connectivity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connectivity")
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

impl Connectivity {
    /// A Connectivity Monitoring object reading `probe`, leaving out interfaces matching
    /// `ignore_interfaces` (`[connectivity] ignore_interfaces`: names, trailing `*` = prefix).
    pub fn new(probe: Box<dyn NetProbe>, ignore_interfaces: Vec<String>) -> Self {
        Self {
            probe,
            filter: InterfaceFilter::new(ignore_interfaces),
            cached: None,
        }
    }

    fn snapshot_at(&mut self, now: Instant) -> NetSnapshot {
        if let Some((at, snapshot)) = &self.cached
            && *at == now
        {
            return snapshot.clone();
        }
        let snapshot = self.probe.snapshot();
        self.cached = Some((now, snapshot.clone()));
        snapshot
    }
}

/// The resources' values derived from one snapshot; `None` / empty where there is no source.
#[derive(Debug, Default, PartialEq)]
struct View {
    bearer: Option<i64>,
    available: Option<BTreeSet<i64>>,
    addresses: Option<Vec<String>>,
    routers: Vec<String>,
    modem: Option<ModemInfo>,
}

impl View {
    fn of(snapshot: &NetSnapshot, filter: &InterfaceFilter) -> Self {
        let interfaces: Option<Vec<&NetInterface>> = snapshot.interfaces.as_ref().map(|all| {
            all.iter()
                .filter(|i| i.up && !filter.ignores(&i.name))
                .collect()
        });
        let routes: Vec<&DefaultRoute> = snapshot
            .default_routes
            .iter()
            .flatten()
            .filter(|r| !filter.ignores(&r.interface))
            .collect();
        let modem = snapshot.modem.as_ref();
        let bearer_of = |i: &NetInterface| bearer_code(i, modem);
        Self {
            bearer: interfaces.as_ref().and_then(|up| {
                let route = primary_route(&routes, up)?;
                up.iter()
                    .find(|i| i.name == route.interface)
                    .and_then(|i| bearer_of(i))
            }),
            available: interfaces
                .as_ref()
                .map(|up| up.iter().filter_map(|i| bearer_of(i)).collect()),
            addresses: interfaces.as_ref().map(|up| {
                up.iter()
                    .flat_map(|i| i.addresses.iter())
                    .filter(|a| is_reportable_address(a))
                    .map(IpAddr::to_string)
                    .collect()
            }),
            routers: routers(&routes),
            modem: snapshot.modem.clone(),
        }
    }

    fn resources(&self) -> Vec<u16> {
        let mut ids = Vec::new();
        let mut add = |id: u16, present: bool| {
            if present {
                ids.push(id);
            }
        };
        add(NETWORK_BEARER, self.bearer.is_some());
        // Mandatory multi-instance resources are present whenever their source was readable,
        // even empty: "no bearer is up" is a real answer.
        add(AVAILABLE_BEARERS, self.available.is_some());
        let m = self.modem.as_ref();
        add(
            SIGNAL_STRENGTH,
            m.is_some_and(|m| m.signal_strength_dbm.is_some()),
        );
        add(LINK_QUALITY, m.is_some_and(|m| m.link_quality.is_some()));
        add(IP_ADDRESSES, self.addresses.is_some());
        add(ROUTER_ADDRESSES, !self.routers.is_empty());
        add(APN, m.is_some_and(|m| !m.apns.is_empty()));
        add(CELL_ID, m.is_some_and(|m| m.cell_id.is_some()));
        add(SMNC, m.is_some_and(|m| m.mnc.is_some()));
        add(SMCC, m.is_some_and(|m| m.mcc.is_some()));
        add(SIGNAL_SNR, m.is_some_and(|m| m.snr_db.is_some()));
        add(LAC, m.is_some_and(|m| m.lac.is_some()));
        ids
    }

    fn value(&self, resource: u16) -> Option<ResourceValue> {
        let m = self.modem.as_ref();
        let int = |v: Option<i64>| v.map(|v| ResourceValue::Single(Value::Integer(v)));
        match resource {
            NETWORK_BEARER => int(self.bearer),
            AVAILABLE_BEARERS => self
                .available
                .as_ref()
                .map(|set| multiple(set.iter().map(|&b| Value::Integer(b)))),
            SIGNAL_STRENGTH => int(m.and_then(|m| m.signal_strength_dbm)),
            LINK_QUALITY => int(m.and_then(|m| m.link_quality)),
            IP_ADDRESSES => self
                .addresses
                .as_ref()
                .map(|list| multiple(list.iter().cloned().map(Value::String))),
            ROUTER_ADDRESSES => Some(multiple(self.routers.iter().cloned().map(Value::String))),
            APN => m.map(|m| multiple(m.apns.iter().cloned().map(Value::String))),
            CELL_ID => int(m.and_then(|m| m.cell_id)),
            SMNC => int(m.and_then(|m| m.mnc)),
            SMCC => int(m.and_then(|m| m.mcc)),
            SIGNAL_SNR => int(m.and_then(|m| m.snr_db)),
            LAC => int(m.and_then(|m| m.lac)),
            _ => None,
        }
    }
}

/// A multi-instance value with instance ids 0..n.
fn multiple(values: impl Iterator<Item = Value>) -> ResourceValue {
    let map: BTreeMap<u16, Value> = (0..=u16::MAX).zip(values).collect();
    ResourceValue::Multiple(map)
}

/// The bearer code of an interface: the modem's technology when the modem claims the interface,
/// else what its link layer says.
fn bearer_code(interface: &NetInterface, modem: Option<&ModemInfo>) -> Option<i64> {
    if let Some(m) = modem
        && m.data_interfaces.contains(&interface.name)
    {
        return m.technology.map(CellularTech::bearer_code);
    }
    match interface.link {
        LinkKind::Wlan => Some(BEARER_WLAN),
        LinkKind::Ethernet => Some(BEARER_ETHERNET),
        LinkKind::Other => None,
    }
}

/// The route traffic most likely takes: the lowest-metric IPv4 default route over an up
/// interface, else the lowest-metric IPv6 one.
fn primary_route<'a>(
    routes: &[&'a DefaultRoute],
    up: &[&NetInterface],
) -> Option<&'a DefaultRoute> {
    let usable = |r: &&&DefaultRoute| up.iter().any(|i| i.name == r.interface);
    let best = |ipv6: bool| {
        routes
            .iter()
            .filter(usable)
            .filter(|r| r.ipv6 == ipv6)
            .min_by_key(|r| r.metric)
            .copied()
    };
    best(false).or_else(|| best(true))
}

/// Distinct default gateways as text; link-local IPv6 gateways carry their zone (`fe80::1%eth0`)
/// because they mean nothing without it.
fn routers(routes: &[&DefaultRoute]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for route in routes {
        let Some(gateway) = route.gateway else {
            continue;
        };
        let text = match gateway {
            IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80 => {
                format!("{a}%{}", route.interface)
            }
            other => other.to_string(),
        };
        if !out.contains(&text) {
            out.push(text);
        }
    }
    out
}

impl Object for Connectivity {
    fn meta(&self) -> &'static ObjectMeta {
        // The OMA model is compiled in from the registry XML shipped in the crate; object 4 is
        // part of it by construction (the model's own tests check the shipped set).
        crate::model::object(4).expect("object 4 is part of the compiled OMA model")
    }

    fn instances(&self) -> Vec<u16> {
        vec![0]
    }

    fn resources(&self, instance: u16) -> Vec<u16> {
        if instance != 0 {
            return Vec::new();
        }
        View::of(&self.probe.snapshot(), &self.filter).resources()
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
        let snapshot = self.snapshot_at(ctx.now);
        // The state may have changed since `resources()` listed the resource: report it gone.
        View::of(&snapshot, &self.filter)
            .value(resource)
            .ok_or(Error::NotFound)
    }

    fn is_volatile(&self, _instance: u16, _resource: u16) -> bool {
        // Every resource of this object is host state that changes on its own.
        true
    }
}

#[cfg(test)]
mod tests {
    use ::core::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::core::object::CtxOutput;

    /// A probe returning whatever the test put in the shared slot.
    #[derive(Clone, Default)]
    struct FakeNet(Arc<Mutex<NetSnapshot>>);

    impl FakeNet {
        fn set(&self, snapshot: NetSnapshot) {
            if let Ok(mut slot) = self.0.lock() {
                *slot = snapshot;
            }
        }
    }

    impl NetProbe for FakeNet {
        fn snapshot(&self) -> NetSnapshot {
            self.0.lock().map(|s| s.clone()).unwrap_or_default()
        }
    }

    fn iface(name: &str, link: LinkKind, addresses: &[&str]) -> NetInterface {
        NetInterface {
            name: name.into(),
            up: true,
            loopback: name == "lo",
            link,
            addresses: addresses
                .iter()
                .map(|a| a.parse().expect("test address"))
                .collect(),
        }
    }

    fn route(interface: &str, gateway: Option<&str>, metric: u32) -> DefaultRoute {
        let gateway: Option<IpAddr> = gateway.map(|g| g.parse().expect("test gateway"));
        DefaultRoute {
            interface: interface.into(),
            ipv6: gateway.is_some_and(|g| g.is_ipv6()),
            gateway,
            metric,
        }
    }

    fn lan_snapshot() -> NetSnapshot {
        NetSnapshot {
            interfaces: Some(vec![
                iface("lo", LinkKind::Other, &["127.0.0.1", "::1"]),
                iface(
                    "eth0",
                    LinkKind::Ethernet,
                    &["192.0.2.2", "fd00::2", "fe80::fc:ff:fe00:1"],
                ),
                iface("wlan0", LinkKind::Wlan, &["198.51.100.7", "169.254.3.3"]),
                iface("docker0", LinkKind::Ethernet, &["172.17.0.1"]),
            ]),
            default_routes: Some(vec![
                route("eth0", Some("192.0.2.1"), 100),
                route("wlan0", Some("198.51.100.1"), 600),
                route("eth0", Some("fe80::1"), 1024),
                route("eth0", Some("fd00::1"), 1024),
            ]),
            modem: None,
        }
    }

    fn lte_modem() -> ModemInfo {
        ModemInfo {
            technology: Some(CellularTech::LteFdd),
            data_interfaces: vec!["wwan0".into()],
            signal_strength_dbm: Some(-97),
            snr_db: Some(12),
            link_quality: Some(71),
            apns: vec!["internet".into()],
            cell_id: Some(0x1a2b3c),
            lac: Some(0x1f),
            mcc: Some(262),
            mnc: Some(1),
        }
    }

    fn object(snapshot: NetSnapshot, ignore: &[&str]) -> (Connectivity, FakeNet) {
        let fake = FakeNet::default();
        fake.set(snapshot);
        let ignore = ignore.iter().map(|s| s.to_string()).collect();
        (Connectivity::new(Box::new(fake.clone()), ignore), fake)
    }

    fn read_at(o: &mut Connectivity, now: Instant, resource: u16) -> Result<ResourceValue, Error> {
        let mut out = CtxOutput::default();
        let mut ctx = Ctx {
            now,
            unix_time: 1_700_000_000,
            server: Some(1),
            out: &mut out,
        };
        o.read(&mut ctx, 0, resource)
    }

    /// Reads every listed resource, each at a fresh instant so the cache is bypassed.
    fn read(o: &mut Connectivity, resource: u16) -> Result<ResourceValue, Error> {
        read_at(o, crate::host::test_instant(), resource)
    }

    fn ints(values: &[i64]) -> ResourceValue {
        multiple(values.iter().map(|&v| Value::Integer(v)))
    }

    fn strings(values: &[&str]) -> ResourceValue {
        multiple(values.iter().map(|v| Value::String(v.to_string())))
    }

    fn single(v: i64) -> ResourceValue {
        ResourceValue::Single(Value::Integer(v))
    }

    #[test]
    fn ethernet_host_without_modem() {
        let (mut o, _) = object(lan_snapshot(), &["lo", "docker*"]);
        assert_eq!(o.resources(0), vec![0, 1, 4, 5]);
        assert_eq!(read(&mut o, 0), Ok(single(41)));
        assert_eq!(read(&mut o, 1), Ok(ints(&[21, 41])));
        assert_eq!(
            read(&mut o, 4),
            Ok(strings(&["192.0.2.2", "fd00::2", "198.51.100.7"]))
        );
        assert_eq!(
            read(&mut o, 5),
            Ok(strings(&[
                "192.0.2.1",
                "198.51.100.1",
                "fe80::1%eth0",
                "fd00::1"
            ]))
        );
        for absent in [2, 3, 6, 7, 8, 9, 10, 11, 12, 13] {
            assert_eq!(read(&mut o, absent), Err(Error::NotFound), "/4/0/{absent}");
        }
    }

    #[test]
    fn ignored_interfaces_and_their_routes_are_left_out() {
        let (mut o, _) = object(lan_snapshot(), &["lo", "eth*"]);
        assert_eq!(
            read(&mut o, 0),
            Ok(single(21)),
            "wlan0 carries the route now"
        );
        assert_eq!(read(&mut o, 1), Ok(ints(&[21, 41])));
        assert_eq!(
            read(&mut o, 4),
            Ok(strings(&["198.51.100.7", "172.17.0.1"]))
        );
        assert_eq!(read(&mut o, 5), Ok(strings(&["198.51.100.1"])));
    }

    #[test]
    fn down_interfaces_are_not_available_and_their_routes_do_not_count() {
        let mut snapshot = lan_snapshot();
        if let Some(list) = snapshot.interfaces.as_mut() {
            for i in list.iter_mut().filter(|i| i.name == "eth0") {
                i.up = false;
            }
        }
        let (mut o, _) = object(snapshot, &["lo", "docker*"]);
        assert_eq!(read(&mut o, 0), Ok(single(21)));
        assert_eq!(read(&mut o, 1), Ok(ints(&[21])));
        assert_eq!(read(&mut o, 4), Ok(strings(&["198.51.100.7"])));
    }

    #[test]
    fn ipv6_only_host_uses_the_ipv6_default_route() {
        let snapshot = NetSnapshot {
            interfaces: Some(vec![iface("wlp2s0", LinkKind::Wlan, &["2001:db8::5"])]),
            default_routes: Some(vec![route("wlp2s0", Some("fe80::1"), 1024)]),
            modem: None,
        };
        let (mut o, _) = object(snapshot, &["lo"]);
        assert_eq!(read(&mut o, 0), Ok(single(21)));
        assert_eq!(read(&mut o, 5), Ok(strings(&["fe80::1%wlp2s0"])));
    }

    #[test]
    fn modem_carrying_the_default_route_names_the_cellular_bearer() {
        let mut snapshot = lan_snapshot();
        if let Some(list) = snapshot.interfaces.as_mut() {
            list.push(iface("wwan0", LinkKind::Other, &["10.64.1.9"]));
        }
        snapshot.default_routes = Some(vec![
            route("wwan0", None, 50),
            route("eth0", Some("192.0.2.1"), 100),
        ]);
        snapshot.modem = Some(lte_modem());
        let (mut o, _) = object(snapshot, &["lo", "docker*"]);
        assert_eq!(o.resources(0), vec![0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]);
        assert_eq!(read(&mut o, 0), Ok(single(6)));
        assert_eq!(read(&mut o, 1), Ok(ints(&[6, 21, 41])));
        assert_eq!(read(&mut o, 2), Ok(single(-97)));
        assert_eq!(read(&mut o, 3), Ok(single(71)));
        assert_eq!(read(&mut o, 5), Ok(strings(&["192.0.2.1"])));
        assert_eq!(read(&mut o, 7), Ok(strings(&["internet"])));
        assert_eq!(read(&mut o, 8), Ok(single(0x1a2b3c)));
        assert_eq!(read(&mut o, 9), Ok(single(1)));
        assert_eq!(read(&mut o, 10), Ok(single(262)));
        assert_eq!(read(&mut o, 11), Ok(single(12)));
        assert_eq!(read(&mut o, 12), Ok(single(0x1f)));
    }

    #[test]
    fn every_technology_maps_to_its_bearer_code() {
        for (tech, code) in [
            (CellularTech::Gsm, 0),
            (CellularTech::Wcdma, 2),
            (CellularTech::Cdma2000, 3),
            (CellularTech::LteFdd, 6),
            (CellularTech::NbIot, 7),
            (CellularTech::NrFdd, 9),
        ] {
            let snapshot = NetSnapshot {
                interfaces: Some(vec![iface("wwan0", LinkKind::Other, &["10.0.0.2"])]),
                default_routes: Some(vec![route("wwan0", None, 0)]),
                modem: Some(ModemInfo {
                    technology: Some(tech),
                    data_interfaces: vec!["wwan0".into()],
                    ..ModemInfo::default()
                }),
            };
            let (mut o, _) = object(snapshot, &[]);
            assert_eq!(read(&mut o, 0), Ok(single(code)), "{tech:?}");
        }
    }

    #[test]
    fn modem_with_unknown_technology_or_other_links_give_no_bearer() {
        let snapshot = NetSnapshot {
            interfaces: Some(vec![
                iface("wwan0", LinkKind::Other, &["10.0.0.2"]),
                iface("tun0", LinkKind::Other, &["10.8.0.2"]),
            ]),
            default_routes: Some(vec![route("wwan0", None, 0)]),
            modem: Some(ModemInfo {
                data_interfaces: vec!["wwan0".into()],
                ..ModemInfo::default()
            }),
        };
        let (mut o, _) = object(snapshot, &[]);
        assert_eq!(o.resources(0), vec![1, 4]);
        assert_eq!(read(&mut o, 1), Ok(ints(&[])));
        assert_eq!(read(&mut o, 0), Err(Error::NotFound));
    }

    #[test]
    fn unreadable_host_state_leaves_resources_out() {
        let (o, _) = object(NetSnapshot::default(), &["lo"]);
        assert_eq!(o.resources(0), Vec::<u16>::new());
        assert_eq!(o.resources(1), Vec::<u16>::new());
        assert_eq!(o.instances(), vec![0]);
    }

    #[test]
    fn reads_within_one_request_share_a_snapshot() {
        let (mut o, fake) = object(lan_snapshot(), &["lo", "docker*"]);
        let now = crate::host::test_instant();
        assert_eq!(read_at(&mut o, now, 0), Ok(single(41)));
        fake.set(NetSnapshot::default());
        assert_eq!(read_at(&mut o, now, 0), Ok(single(41)), "same request");
        let later = now + Duration::from_secs(1);
        assert_eq!(read_at(&mut o, later, 0), Err(Error::NotFound));
    }

    #[test]
    fn values_match_the_oma_model() {
        let mut snapshot = lan_snapshot();
        snapshot.modem = Some(lte_modem());
        let (mut o, _) = object(snapshot, &["lo"]);
        let meta = o.meta();
        assert_eq!(meta.id, 4);
        for id in o.resources(0) {
            let r = meta.resource(id).expect("resource is in the model");
            assert!(o.is_volatile(0, id));
            let values = match read(&mut o, id).expect("readable") {
                ResourceValue::Single(v) => {
                    assert!(!r.multiple, "/4/0/{id}");
                    vec![v]
                }
                ResourceValue::Multiple(m) => {
                    assert!(r.multiple, "/4/0/{id}");
                    m.into_values().collect()
                }
            };
            for v in values {
                assert_eq!(v.kind(), r.kind, "/4/0/{id}");
                assert_eq!(v.check_range(r), Ok(()), "/4/0/{id}");
            }
        }
    }

    #[test]
    fn writes_and_executes_are_refused() {
        let (mut o, _) = object(lan_snapshot(), &[]);
        let mut out = CtxOutput::default();
        let mut ctx = Ctx {
            now: crate::host::test_instant(),
            unix_time: 0,
            server: Some(1),
            out: &mut out,
        };
        let v = ResourceValue::Single(Value::Integer(1));
        assert!(matches!(
            o.write(&mut ctx, 0, 0, v),
            Err(Error::MethodNotAllowed(_))
        ));
        assert!(matches!(
            o.execute(&mut ctx, 0, 0, &[]),
            Err(Error::MethodNotAllowed(_))
        ));
        assert!(matches!(
            o.create(&mut ctx, 1, &[]),
            Err(Error::MethodNotAllowed(_))
        ));
        assert!(matches!(
            o.delete(&mut ctx, 0),
            Err(Error::MethodNotAllowed(_))
        ));
    }

    #[test]
    fn address_scopes() {
        let yes: [IpAddr; 5] = [
            Ipv4Addr::new(192, 168, 1, 2).into(),
            Ipv4Addr::new(8, 8, 8, 8).into(),
            Ipv4Addr::new(10, 0, 0, 1).into(),
            "2001:db8::1".parse::<Ipv6Addr>().expect("v6").into(),
            "fd12::1".parse::<Ipv6Addr>().expect("v6").into(),
        ];
        let no: [IpAddr; 7] = [
            Ipv4Addr::LOCALHOST.into(),
            Ipv4Addr::new(169, 254, 0, 1).into(),
            Ipv4Addr::UNSPECIFIED.into(),
            Ipv4Addr::new(224, 0, 0, 1).into(),
            Ipv6Addr::LOCALHOST.into(),
            "fe80::1".parse::<Ipv6Addr>().expect("v6").into(),
            "ff02::1".parse::<Ipv6Addr>().expect("v6").into(),
        ];
        assert!(yes.iter().all(is_reportable_address));
        assert!(!no.iter().any(is_reportable_address));
    }

    #[test]
    fn connectivity_needs_an_address_and_a_default_route() {
        assert_eq!(has_ip_connectivity(&lan_snapshot()), Some(true));
        let mut no_route = lan_snapshot();
        no_route.default_routes = Some(Vec::new());
        assert_eq!(has_ip_connectivity(&no_route), Some(false));
        let only_link_local = NetSnapshot {
            interfaces: Some(vec![
                iface("lo", LinkKind::Other, &["127.0.0.1"]),
                iface("eth0", LinkKind::Ethernet, &["fe80::1", "169.254.1.1"]),
            ]),
            default_routes: Some(vec![route("eth0", Some("fe80::2"), 1)]),
            modem: None,
        };
        assert_eq!(has_ip_connectivity(&only_link_local), Some(false));
        let route_via_loopback = NetSnapshot {
            interfaces: Some(vec![
                iface("lo", LinkKind::Other, &["127.0.0.1"]),
                iface("eth0", LinkKind::Ethernet, &["192.0.2.2"]),
            ]),
            default_routes: Some(vec![route("lo", None, 1)]),
            modem: None,
        };
        assert_eq!(has_ip_connectivity(&route_via_loopback), Some(false));
        assert_eq!(has_ip_connectivity(&NetSnapshot::default()), None);
    }

    #[test]
    fn interface_patterns() {
        let f = InterfaceFilter::new(vec!["lo".into(), "veth*".into(), "*".into()]);
        assert!(f.ignores("lo") && f.ignores("veth12") && f.ignores("anything"));
        let f = InterfaceFilter::new(vec!["lo".into(), "veth*".into()]);
        assert!(!f.ignores("lo0") && !f.ignores("eth0") && f.ignores("veth"));
    }
}

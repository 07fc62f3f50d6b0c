//! Host network state for object 4 and the Device object's connectivity error: interfaces and
//! addresses (getifaddrs), link kinds (`/sys/class/net`), default routes (`/proc/net/route`,
//! `/proc/net/ipv6_route`) and the modem cache.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;
use nix::sys::socket::SockaddrStorage;

use super::modem::ModemHandle;
use crate::objects::connectivity::{DefaultRoute, LinkKind, NetInterface, NetProbe, NetSnapshot};

/// Route flag: the route is usable.
const RTF_UP: u32 = 0x0001;
/// Route flag: the route goes through a gateway.
const RTF_GATEWAY: u32 = 0x0002;
/// Route flag: the route rejects traffic (unreachable / prohibit).
const RTF_REJECT: u32 = 0x0200;
/// `/sys/class/net/<if>/type` of Ethernet framing (ARPHRD_ETHER).
const ARPHRD_ETHER: &str = "1";

/// The real [`NetProbe`]. Cheap to clone; clones share the modem cache.
#[derive(Debug, Clone)]
pub struct HostNet {
    root: PathBuf,
    modem: Option<ModemHandle>,
}

impl HostNet {
    /// A probe reading `/proc` and `/sys` below `root` (`/` in production) and the modem data
    /// cached by `modem` (`None` when `[connectivity] modem_manager = false` or there is no
    /// system bus). Interfaces and addresses always come from the kernel (getifaddrs): `root`
    /// cannot redirect them.
    pub fn new(root: impl Into<PathBuf>, modem: Option<ModemHandle>) -> Self {
        Self {
            root: root.into(),
            modem,
        }
    }
}

impl NetProbe for HostNet {
    fn snapshot(&self) -> NetSnapshot {
        NetSnapshot {
            interfaces: interfaces(&self.root),
            default_routes: default_routes(&self.root),
            modem: self.modem.as_ref().and_then(ModemHandle::info),
        }
    }
}

/// Every interface with its flags and addresses, in kernel order; `None` if getifaddrs fails.
fn interfaces(root: &Path) -> Option<Vec<NetInterface>> {
    let mut list: Vec<NetInterface> = Vec::new();
    for entry in getifaddrs().ok()? {
        // getifaddrs yields one entry per address; fold them into one record per interface.
        if !list.iter().any(|i| i.name == entry.interface_name) {
            let flags = entry.flags;
            list.push(NetInterface {
                link: link_kind(root, &entry.interface_name),
                up: flags.contains(InterfaceFlags::IFF_UP | InterfaceFlags::IFF_RUNNING),
                loopback: flags.contains(InterfaceFlags::IFF_LOOPBACK),
                name: entry.interface_name.clone(),
                addresses: Vec::new(),
            });
        }
        let ip = entry.address.as_ref().and_then(ip_of);
        let record = list.iter_mut().find(|i| i.name == entry.interface_name);
        if let (Some(ip), Some(record)) = (ip, record)
            && !record.addresses.contains(&ip)
        {
            record.addresses.push(ip);
        }
    }
    Some(list)
}

fn ip_of(address: &SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(IpAddr::V4(v4.ip()));
    }
    address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
}

/// The link kind from sysfs: 802.11 devices have a `wireless` or `phy80211` entry; other
/// Ethernet-framed devices are Ethernet; everything else (PPP, raw IP, tunnels) is `Other`.
fn link_kind(root: &Path, name: &str) -> LinkKind {
    // Interface names never contain '/', but the name ends up in a path: refuse anything odd.
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return LinkKind::Other;
    }
    let dir = super::under(root, "/sys/class/net").join(name);
    if dir.join("wireless").exists() || dir.join("phy80211").exists() {
        return LinkKind::Wlan;
    }
    match super::read_value(&dir.join("type")).as_deref() {
        Some(ARPHRD_ETHER) => LinkKind::Ethernet,
        _ => LinkKind::Other,
    }
}

/// Default routes of both families; `None` only when neither table is readable.
fn default_routes(root: &Path) -> Option<Vec<DefaultRoute>> {
    let v4 =
        super::read_text(&super::under(root, "/proc/net/route")).map(|t| parse_ipv4_routes(&t));
    let v6 = super::read_text(&super::under(root, "/proc/net/ipv6_route"))
        .map(|t| parse_ipv6_routes(&t));
    match (v4, v6) {
        (None, None) => None,
        (v4, v6) => Some(v4.into_iter().chain(v6).flatten().collect()),
    }
}

/// Default routes in `/proc/net/route` text. Columns: Iface, Destination, Gateway, Flags, RefCnt,
/// Use, Metric, Mask, ... Addresses are the kernel's network-order 32-bit values printed as host
/// integers in hex, so on little-endian machines `0100A8C0` is 192.168.0.1.
pub fn parse_ipv4_routes(text: &str) -> Vec<DefaultRoute> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [
                iface,
                destination,
                gateway,
                flags,
                _refcnt,
                _use,
                metric,
                mask,
                ..,
            ] = f[..]
            else {
                return None;
            };
            let hex = |s: &str| u32::from_str_radix(s, 16).ok();
            let (destination, gateway, flags, mask) =
                (hex(destination)?, hex(gateway)?, hex(flags)?, hex(mask)?);
            let default = destination == 0 && mask == 0;
            if !default || flags & RTF_UP == 0 || flags & RTF_REJECT != 0 {
                return None;
            }
            let via = flags & RTF_GATEWAY != 0 && gateway != 0;
            Some(DefaultRoute {
                interface: iface.to_string(),
                gateway: via.then(|| IpAddr::V4(Ipv4Addr::from(gateway.to_ne_bytes()))),
                metric: metric.parse().ok()?,
                ipv6: false,
            })
        })
        .collect()
}

/// Default routes in `/proc/net/ipv6_route` text. Columns: destination, prefix length, source,
/// source prefix length, next hop (32 hex digits, network order), metric, refcnt, use, flags
/// (hex), interface. The kernel's `lo` reject route for unreachable destinations is skipped.
pub fn parse_ipv6_routes(text: &str) -> Vec<DefaultRoute> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [
                destination,
                prefix,
                _src,
                _src_prefix,
                next_hop,
                metric,
                _ref,
                _use,
                flags,
                iface,
            ] = f[..]
            else {
                return None;
            };
            let destination = hex128(destination)?;
            let prefix = u8::from_str_radix(prefix, 16).ok()?;
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let default = destination == 0 && prefix == 0;
            if !default || flags & RTF_UP == 0 || flags & RTF_REJECT != 0 {
                return None;
            }
            let next_hop = hex128(next_hop)?;
            Some(DefaultRoute {
                interface: iface.to_string(),
                gateway: (next_hop != 0).then(|| IpAddr::V6(Ipv6Addr::from(next_hop))),
                metric: u32::from_str_radix(metric, 16).ok()?,
                ipv6: true,
            })
        })
        .collect()
}

/// A 128-bit value written as exactly 32 hex digits.
fn hex128(text: &str) -> Option<u128> {
    (text.len() == 32)
        .then(|| u128::from_str_radix(text, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::lwm2m::value::{ResourceValue, Value};
    use crate::core::object::{Ctx, CtxOutput, Object};
    use crate::objects::connectivity::{Connectivity, has_ip_connectivity, is_reportable_address};

    /// /proc/net/route of a gateway with a wired and a cellular default route (little-endian).
    const ROUTE: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
wwan0\t00000000\t00000000\t0001\t0\t0\t700\t00000000\t0\t0\t0
eth0\t0000A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
eth1\t00000000\t0101A8C0\t0002\t0\t0\t50\t00000000\t0\t0\t0
eth2\t00000000\t0102A8C0\t0203\t0\t0\t10\t00000000\t0\t0\t0
";

    /// /proc/net/ipv6_route as printed on this kind of host.
    const IPV6_ROUTE: &str = "\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00450003    wlan0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo
";

    #[cfg(target_endian = "little")]
    #[test]
    fn ipv4_default_routes_with_little_endian_gateways() {
        let routes = parse_ipv4_routes(ROUTE);
        assert_eq!(
            routes,
            vec![
                DefaultRoute {
                    interface: "eth0".into(),
                    gateway: Some("192.168.0.1".parse().expect("ip")),
                    metric: 100,
                    ipv6: false,
                },
                DefaultRoute {
                    interface: "wwan0".into(),
                    gateway: None,
                    metric: 700,
                    ipv6: false,
                },
            ],
            "eth1 is not up, eth2 is a reject route"
        );
    }

    #[test]
    fn ipv6_default_routes() {
        let routes = parse_ipv6_routes(IPV6_ROUTE);
        assert_eq!(
            routes,
            vec![
                DefaultRoute {
                    interface: "eth0".into(),
                    gateway: Some("fd00::1".parse().expect("ip")),
                    metric: 1024,
                    ipv6: true,
                },
                DefaultRoute {
                    interface: "wlan0".into(),
                    gateway: Some("fe80::1".parse().expect("ip")),
                    metric: 1024,
                    ipv6: true,
                },
            ]
        );
    }

    #[test]
    fn garbage_route_tables_give_no_routes() {
        for text in [
            "",
            "\0\0\0\n\n",
            "Iface Destination Gateway",
            "eth0 zzzzzzzz 0100A8C0 0003 0 0 100 00000000 0 0 0",
            "eth0 00000000 0100A8C0 0003 0 0 -1 00000000 0 0 0",
            "eth0 00000000 0100A8C0 0003",
            "00 00 00 00 00 00 00 00 00 eth0",
            "0000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000003 eth0",
            "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd00000000000000000000000000000g 00000400 00000001 00000000 00000003 eth0",
        ] {
            assert_eq!(parse_ipv4_routes(text), vec![], "{text:?}");
            assert_eq!(parse_ipv6_routes(text), vec![], "{text:?}");
        }
    }

    #[test]
    fn route_tables_are_read_below_the_root() {
        let root = tempfile::tempdir().expect("temp dir");
        assert_eq!(default_routes(root.path()), None, "no tables at all");
        std::fs::create_dir_all(root.path().join("proc/net")).expect("mkdir");
        std::fs::write(root.path().join("proc/net/ipv6_route"), IPV6_ROUTE).expect("write");
        assert_eq!(default_routes(root.path()).map(|r| r.len()), Some(2));
        std::fs::write(root.path().join("proc/net/route"), ROUTE).expect("write");
        assert_eq!(default_routes(root.path()).map(|r| r.len()), Some(4));
    }

    #[test]
    fn link_kinds_from_sysfs() {
        let root = tempfile::tempdir().expect("temp dir");
        let net = root.path().join("sys/class/net");
        for (name, kind, extra) in [
            ("eth0", "1", None),
            ("wlan0", "1", Some("wireless")),
            ("wlp2s0", "1", Some("phy80211")),
            ("wwan0", "65534", None),
            ("ppp0", "512", None),
        ] {
            std::fs::create_dir_all(net.join(name)).expect("mkdir");
            std::fs::write(net.join(name).join("type"), format!("{kind}\n")).expect("write");
            if let Some(extra) = extra {
                std::fs::create_dir_all(net.join(name).join(extra)).expect("mkdir");
            }
        }
        let r = root.path();
        assert_eq!(link_kind(r, "eth0"), LinkKind::Ethernet);
        assert_eq!(link_kind(r, "wlan0"), LinkKind::Wlan);
        assert_eq!(link_kind(r, "wlp2s0"), LinkKind::Wlan);
        assert_eq!(link_kind(r, "wwan0"), LinkKind::Other);
        assert_eq!(link_kind(r, "ppp0"), LinkKind::Other);
        assert_eq!(link_kind(r, "missing"), LinkKind::Other);
        assert_eq!(link_kind(r, "../../etc"), LinkKind::Other);
        assert_eq!(link_kind(r, ".."), LinkKind::Other);
    }

    /// Runs the real probe on this machine, and object 4 on top of it.
    #[test]
    fn real_host_is_sane() {
        let snapshot = HostNet::new("/", None).snapshot();
        let Some(interfaces) = snapshot.interfaces.clone() else {
            eprintln!("skipped: getifaddrs is not available here");
            return;
        };
        assert!(
            interfaces.iter().any(|i| i.loopback),
            "every Linux host has a loopback interface: {interfaces:?}"
        );
        let up: Vec<&NetInterface> = interfaces.iter().filter(|i| i.up && !i.loopback).collect();
        if up.is_empty() {
            eprintln!("skipped: no non-loopback interface is up");
            return;
        }
        assert!(
            up.iter().any(|i| !i.addresses.is_empty()),
            "interfaces are up but none has an address: {up:?}"
        );
        let routes = snapshot.default_routes.clone().unwrap_or_default();
        for route in &routes {
            assert!(
                interfaces.iter().any(|i| i.name == route.interface),
                "route via unknown interface {route:?}"
            );
        }
        let reportable = up
            .iter()
            .flat_map(|i| &i.addresses)
            .any(is_reportable_address);
        if !reportable {
            assert_eq!(has_ip_connectivity(&snapshot), Some(false));
        }

        let mut object = Connectivity::new(Box::new(HostNet::new("/", None)), vec!["lo".into()]);
        let resources = object.resources(0);
        assert!(
            resources.contains(&1) && resources.contains(&4),
            "{resources:?}"
        );
        let mut out = CtxOutput::default();
        let mut ctx = Ctx {
            now: crate::host::test_instant(),
            unix_time: 0,
            server: None,
            out: &mut out,
        };
        let addresses = object.read(&mut ctx, 0, 4);
        let Ok(ResourceValue::Multiple(addresses)) = addresses else {
            panic!("/4/0/4 is a list: {addresses:?}");
        };
        assert_eq!(!addresses.is_empty(), reportable, "{addresses:?}");
        for address in addresses.values() {
            let Value::String(text) = address else {
                panic!("{address:?}");
            };
            assert!(text.parse::<IpAddr>().is_ok(), "{text}");
        }
    }
}

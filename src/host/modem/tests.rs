//! The watcher against a mock ModemManager on a private `dbus-daemon`.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use zbus::connection::Builder;
use zbus::{ObjectPath, OwnedObjectPath, OwnedVariant, Variant};

use super::state::{IFACE_3GPP, IFACE_LOCATION, IFACE_MODEM, IFACE_SIGNAL, Interfaces};
use super::*;
use crate::core::object::Object;
use crate::host::HostNet;
use crate::objects::connectivity::{CellularTech, Connectivity};

const MODEM0: &str = "/org/freedesktop/ModemManager1/Modem/0";
const BEARER0: &str = "/org/freedesktop/ModemManager1/Bearer/0";

/// A private bus daemon for one test, killed (by its pid) when dropped.
struct TestBus {
    address: String,
    pid: Pid,
    _dir: tempfile::TempDir,
}

impl TestBus {
    /// Starts `dbus-daemon` with a minimal config; `None` when it is not installed.
    fn start() -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("bus.sock");
        let config = dir.path().join("bus.conf");
        // Only our own socket and policy: no host service directories, so the test is hermetic.
        let text = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
            socket.display()
        );
        std::fs::write(&config, text).expect("write bus config");
        let output = match Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--fork", "--print-address=1", "--print-pid=1"])
            .output()
        {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => panic!("cannot run dbus-daemon: {e}"),
        };
        assert!(output.status.success(), "dbus-daemon failed: {output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let mut lines = stdout.lines();
        let address = lines.next().expect("address line").trim().to_string();
        let pid: i32 = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("pid line");
        Some(Self {
            address,
            pid: Pid::from_raw(pid),
            _dir: dir,
        })
    }

    async fn connect(&self) -> Connection {
        Builder::address(self.address.as_str())
            .build()
            .await
            .expect("connect to the test bus")
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        let _ = kill(self.pid, Signal::SIGTERM);
    }
}

/// The objects the mock's ObjectManager reports, shared with the test.
type Tree = Arc<Mutex<BTreeMap<String, Interfaces>>>;

struct MockObjectManager {
    tree: Tree,
}

#[zbus::interface(name = "org.freedesktop.DBus.ObjectManager")]
impl MockObjectManager {
    async fn get_managed_objects(&self) -> HashMap<OwnedObjectPath, Interfaces> {
        let tree = self.tree.lock().map(|t| t.clone()).unwrap_or_default();
        tree.into_iter()
            .filter_map(|(path, interfaces)| {
                Some((OwnedObjectPath::try_from(path).ok()?, interfaces))
            })
            .collect()
    }
}

struct MockBearer {
    connected: Arc<Mutex<bool>>,
}

#[zbus::interface(name = "org.freedesktop.ModemManager1.Bearer")]
impl MockBearer {
    #[zbus(property)]
    fn interface(&self) -> String {
        "wwan0".into()
    }

    #[zbus(property)]
    fn connected(&self) -> bool {
        self.connected.lock().map(|c| *c).unwrap_or(false)
    }

    #[zbus(property)]
    fn properties(&self) -> HashMap<String, OwnedVariant> {
        [("apn".to_string(), owned(Variant::new("internet")))].into()
    }
}

fn owned<'a>(v: impl Into<Variant<'a>>) -> OwnedVariant {
    OwnedVariant::try_from(v.into()).expect("plain values convert")
}

fn props(entries: Vec<(&str, OwnedVariant)>) -> Properties {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn signal_dict(entries: &[(&str, f64)]) -> OwnedVariant {
    let m: HashMap<String, OwnedVariant> = entries
        .iter()
        .map(|(k, v)| (k.to_string(), owned(Variant::new(*v))))
        .collect();
    owned(m)
}

fn modem_interfaces() -> Interfaces {
    let bearers = vec![ObjectPath::try_from(BEARER0).expect("path")];
    let ports = vec![("cdc-wdm0".to_string(), 6u32), ("wwan0".to_string(), 2u32)];
    let location: HashMap<u32, OwnedVariant> =
        [(1u32, owned(Variant::new("262,01,1F,1A2B3C,2F")))].into();
    [
        (
            IFACE_MODEM.to_string(),
            props(vec![
                ("AccessTechnologies", owned(1u32 << 14)),
                ("SignalQuality", owned((73u32, true))),
                ("Bearers", owned(bearers)),
                ("Ports", owned(ports)),
            ]),
        ),
        (
            IFACE_3GPP.to_string(),
            props(vec![("OperatorCode", owned("26201"))]),
        ),
        (
            IFACE_SIGNAL.to_string(),
            props(vec![(
                "Lte",
                signal_dict(&[("rsrp", -97.0), ("rssi", -65.0), ("snr", 12.0)]),
            )]),
        ),
        (
            IFACE_LOCATION.to_string(),
            props(vec![("Location", owned(location))]),
        ),
    ]
    .into()
}

/// A mock ModemManager: its own connection owning the name, serving the ObjectManager and one
/// bearer, and emitting signals the way ModemManager does.
struct MockModemManager {
    conn: Connection,
    tree: Tree,
    bearer_connected: Arc<Mutex<bool>>,
}

impl MockModemManager {
    async fn start(bus: &TestBus) -> Self {
        let tree: Tree = Arc::new(Mutex::new(
            [(MODEM0.to_string(), modem_interfaces())].into(),
        ));
        let bearer_connected = Arc::new(Mutex::new(true));
        // Serve the objects before taking the name, so no call can arrive before they exist.
        let conn = Builder::address(bus.address.as_str())
            .serve_at(MM_PATH, MockObjectManager { tree: tree.clone() })
            .serve_at(
                BEARER0,
                MockBearer {
                    connected: bearer_connected.clone(),
                },
            )
            .name(MM_NAME)
            .build()
            .await
            .expect("mock ModemManager connects");
        Self {
            conn,
            tree,
            bearer_connected,
        }
    }

    /// Changes properties of the modem and announces them.
    async fn change(&self, interface: &str, changed: Properties) {
        if let Ok(mut tree) = self.tree.lock()
            && let Some(props) = tree.get_mut(MODEM0).and_then(|o| o.get_mut(interface))
        {
            props.extend(changed.clone());
        }
        self.emit_properties_changed(MODEM0, interface, changed)
            .await;
    }

    async fn emit_properties_changed(&self, path: &str, interface: &str, changed: Properties) {
        self.conn
            .emit_signal(
                None::<&str>,
                path,
                PROPERTIES,
                "PropertiesChanged",
                &(interface, changed, Vec::<String>::new()),
            )
            .await
            .expect("emit PropertiesChanged");
    }

    async fn set_bearer_connected(&self, connected: bool) {
        if let Ok(mut c) = self.bearer_connected.lock() {
            *c = connected;
        }
        let changed = props(vec![("Connected", owned(connected))]);
        self.emit_properties_changed(BEARER0, IFACE_BEARER, changed)
            .await;
    }

    async fn remove_interfaces(&self, interfaces: &[&str]) {
        if let Ok(mut tree) = self.tree.lock()
            && let Some(object) = tree.get_mut(MODEM0)
        {
            for i in interfaces {
                object.remove(*i);
            }
        }
        let path = ObjectPath::try_from(MODEM0).expect("path");
        self.conn
            .emit_signal(
                None::<&str>,
                MM_PATH,
                OBJECT_MANAGER,
                "InterfacesRemoved",
                &(path, interfaces),
            )
            .await
            .expect("emit InterfacesRemoved");
    }

    /// Leaves the bus, as a stopping ModemManager does.
    async fn stop(self) {
        self.conn
            .close()
            .await
            .expect("close the mock's connection");
    }

    async fn add_interfaces(&self, interfaces: Interfaces) {
        if let Ok(mut tree) = self.tree.lock() {
            tree.entry(MODEM0.to_string())
                .or_default()
                .extend(interfaces.clone());
        }
        let path = ObjectPath::try_from(MODEM0).expect("path");
        self.conn
            .emit_signal(
                None::<&str>,
                MM_PATH,
                OBJECT_MANAGER,
                "InterfacesAdded",
                &(path, interfaces),
            )
            .await
            .expect("emit InterfacesAdded");
    }
}

/// Waits until the cache satisfies `ok`; fails the test after a few seconds.
async fn wait_for(
    handle: &ModemHandle,
    what: &str,
    ok: impl Fn(&Option<ModemInfo>) -> bool,
) -> Option<ModemInfo> {
    let mut rx = handle.subscribe();
    let waited = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|i| ok(i))).await;
    match waited {
        Ok(Ok(info)) => info.clone(),
        _ => panic!("timed out waiting for {what}; cache: {:?}", handle.info()),
    }
}

#[tokio::test]
async fn watcher_follows_a_mock_modem_manager() {
    let Some(bus) = TestBus::start() else {
        eprintln!("SKIPPED: dbus-daemon is not installed (apt-get install dbus)");
        return;
    };
    let client = bus.connect().await;
    let handle = watch(client.clone());

    // No ModemManager on the bus: nothing cached, radio resources absent from /4.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(handle.info(), None);
    let object = Connectivity::new(
        Box::new(HostNet::new("/", Some(handle.clone()))),
        vec!["lo".into()],
    );
    for radio in [2, 3, 7, 8, 9, 10, 11, 12, 13] {
        assert!(!object.resources(0).contains(&radio), "/4/0/{radio}");
    }

    // ModemManager appears: the whole tree is read.
    let mm = MockModemManager::start(&bus).await;
    let info = wait_for(&handle, "the modem", Option::is_some).await;
    assert_eq!(
        info,
        Some(ModemInfo {
            technology: Some(CellularTech::LteFdd),
            data_interfaces: vec!["wwan0".into()],
            signal_strength_dbm: Some(-97),
            snr_db: Some(12),
            link_quality: Some(73),
            apns: vec!["internet".into()],
            cell_id: Some(0x1a2b3c),
            lac: Some(0x1f),
            mcc: Some(262),
            mnc: Some(1),
        })
    );
    let resources = object.resources(0);
    for radio in [2, 3, 7, 8, 9, 10, 11, 12] {
        assert!(resources.contains(&radio), "/4/0/{radio} in {resources:?}");
    }

    // PropertiesChanged on the modem: 5G NSA.
    mm.change(
        IFACE_MODEM,
        props(vec![(
            "AccessTechnologies",
            owned((1u32 << 15) | (1 << 14)),
        )]),
    )
    .await;
    mm.change(
        IFACE_SIGNAL,
        props(vec![(
            "Nr5g",
            signal_dict(&[("rsrp", -85.6), ("snr", 21.0)]),
        )]),
    )
    .await;
    let info = wait_for(&handle, "5G NR", |i| {
        i.as_ref()
            .is_some_and(|i| i.signal_strength_dbm == Some(-86))
    })
    .await;
    assert_eq!(info.and_then(|i| i.technology), Some(CellularTech::NrFdd));

    // PropertiesChanged on the bearer: disconnected, so no APN.
    mm.set_bearer_connected(false).await;
    wait_for(&handle, "no APN", |i| {
        i.as_ref().is_some_and(|i| i.apns.is_empty())
    })
    .await;
    mm.set_bearer_connected(true).await;
    wait_for(&handle, "the APN again", |i| {
        i.as_ref().is_some_and(|i| i.apns == ["internet"])
    })
    .await;

    // InterfacesRemoved: the Signal interface goes away (e.g. extended signal disabled).
    mm.remove_interfaces(&[IFACE_SIGNAL]).await;
    let info = wait_for(&handle, "no signal data", |i| {
        i.as_ref().is_some_and(|i| i.signal_strength_dbm.is_none())
    })
    .await;
    assert_eq!(info.and_then(|i| i.snr_db), None);

    // InterfacesAdded: it comes back.
    let signal: Interfaces = [(
        IFACE_SIGNAL.to_string(),
        props(vec![("Lte", signal_dict(&[("rsrp", -101.0)]))]),
    )]
    .into();
    mm.add_interfaces(signal).await;
    wait_for(&handle, "LTE RSRP again", |i| {
        i.as_ref()
            .is_some_and(|i| i.signal_strength_dbm == Some(-101))
    })
    .await;

    // The whole modem goes away, then ModemManager itself.
    mm.remove_interfaces(&[IFACE_MODEM, IFACE_3GPP, IFACE_SIGNAL, IFACE_LOCATION])
        .await;
    wait_for(&handle, "the modem removed", Option::is_none).await;
    mm.add_interfaces(modem_interfaces()).await;
    wait_for(&handle, "the modem back", Option::is_some).await;
    mm.stop().await;
    wait_for(&handle, "ModemManager gone", Option::is_none).await;

    // A restarted ModemManager is read again from scratch.
    let mm = MockModemManager::start(&bus).await;
    let info = wait_for(&handle, "the restarted modem", Option::is_some).await;
    assert_eq!(info.and_then(|i| i.technology), Some(CellularTech::LteFdd));
    mm.stop().await;
    drop(handle);
}

#[tokio::test]
async fn no_modem_manager_means_absent_radio_resources() {
    let Some(bus) = TestBus::start() else {
        eprintln!("SKIPPED: dbus-daemon is not installed (apt-get install dbus)");
        return;
    };
    let handle = watch(bus.connect().await);
    let mut rx = handle.subscribe();
    // Nothing must ever be published: wait a while for a (wrong) change.
    let changed = tokio::time::timeout(Duration::from_millis(300), rx.changed()).await;
    assert!(changed.is_err(), "the cache changed without ModemManager");
    assert_eq!(handle.info(), None);
    let object = Connectivity::new(Box::new(HostNet::new("/", Some(handle))), vec!["lo".into()]);
    let resources = object.resources(0);
    for radio in [2, 3, 7, 8, 9, 10, 11, 12, 13] {
        assert!(!resources.contains(&radio), "/4/0/{radio} in {resources:?}");
    }
}

#[test]
fn handles_without_a_watcher() {
    assert_eq!(ModemHandle::disabled().info(), None);
    // Outside a tokio runtime, watching degrades to a disabled handle instead of panicking.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let bus = TestBus::start();
    let Some(bus) = bus else {
        eprintln!("SKIPPED: dbus-daemon is not installed");
        return;
    };
    let conn = runtime.block_on(bus.connect());
    let handle = watch(conn);
    assert_eq!(handle.info(), None);
    assert!(handle._task.is_none(), "no task outside a runtime");
}

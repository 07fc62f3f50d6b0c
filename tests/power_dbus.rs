//! Reboot through systemd-logind, against a mock `org.freedesktop.login1` on a private
//! `dbus-daemon` (development machines and CI have no system bus). Needs `dbus-daemon` on PATH
//! (Debian: `apt-get install dbus`).

use std::io::{BufRead as _, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use lwm2md::config::{Environment, Settings};
use lwm2md::runtime::power::{self, PowerError};
use tempfile::TempDir;

/// Set in the environment of the child process of `reboot_uses_the_system_bus_address`.
const CHILD_MARKER: &str = "LWM2MD_POWER_DBUS_CHILD";

/// A minimal bus: our own socket, EXTERNAL auth, everything allowed, and no service directories
/// of the host, so the test is hermetic. (With only send/own rules, clients get no reply to
/// Hello on dbus 1.14.)
const BUS_CONFIG: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path=@SOCKET@</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#;

/// A private `dbus-daemon`, killed on drop.
struct PrivateBus {
    daemon: Child,
    address: String,
    _stdout: BufReader<ChildStdout>,
    _dir: TempDir,
}

impl PrivateBus {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("bus.conf");
        let socket = dir.path().join("bus.socket");
        std::fs::write(
            &config,
            BUS_CONFIG.replace("@SOCKET@", &socket.display().to_string()),
        )
        .unwrap();
        // Its stderr goes to a file: as root it complains about fd limits on every start, and
        // the file is only interesting when it fails to start.
        let log = dir.path().join("bus.log");
        let mut daemon = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot start dbus-daemon; install it with `apt-get install dbus`");
        let mut stdout = BufReader::new(daemon.stdout.take().unwrap());
        let mut address = String::new();
        // The daemon prints its address once it listens.
        stdout.read_line(&mut address).unwrap();
        assert!(
            !address.trim().is_empty(),
            "dbus-daemon printed no address: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Self {
            daemon,
            address: address.trim().to_owned(),
            _stdout: stdout,
            _dir: dir,
        }
    }

    async fn connect(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .build()
            .await
            .unwrap()
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// Records `Reboot` calls; refuses them like an inhibited logind when `refuse` is set.
#[derive(Clone, Default)]
struct MockLogind {
    calls: Arc<Mutex<Vec<bool>>>,
    refuse: bool,
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl MockLogind {
    fn reboot(&self, interactive: bool) -> zbus::fdo::Result<()> {
        self.calls.lock().unwrap().push(interactive);
        if self.refuse {
            Err(zbus::fdo::Error::AccessDenied(
                "Operation inhibited by \"lwm2md-test\"".into(),
            ))
        } else {
            Ok(())
        }
    }
}

impl MockLogind {
    /// Serves the mock on `bus` under logind's name; keep the connection alive while testing.
    async fn serve(&self, bus: &PrivateBus) -> zbus::Connection {
        zbus::connection::Builder::address(bus.address.as_str())
            // Object first, then the name: a call arriving right after the name is taken must
            // find the object.
            .serve_at("/org/freedesktop/login1", self.clone())
            .name("org.freedesktop.login1")
            .build()
            .await
            .unwrap()
    }

    fn calls(&self) -> Vec<bool> {
        self.calls.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn reboot_asks_logind_non_interactively() {
    let bus = PrivateBus::start();
    let logind = MockLogind::default();
    let _service = logind.serve(&bus).await;
    let client = bus.connect().await;

    power::reboot_via_logind(&client).await.unwrap();
    assert_eq!(logind.calls(), [false]);
}

#[tokio::test]
async fn logind_refusal_is_an_error_with_its_reason() {
    let bus = PrivateBus::start();
    let logind = MockLogind {
        refuse: true,
        ..MockLogind::default()
    };
    let _service = logind.serve(&bus).await;
    let client = bus.connect().await;

    let err = power::reboot_via_logind(&client).await.unwrap_err();
    assert!(matches!(err, PowerError::Logind(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "systemd-logind did not accept the reboot request"
    );
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("inhibited"), "{cause}");
    assert_eq!(logind.calls(), [false]);
}

#[tokio::test]
async fn missing_logind_is_an_error() {
    let bus = PrivateBus::start();
    let client = bus.connect().await;
    let err = power::reboot_via_logind(&client).await.unwrap_err();
    assert!(matches!(err, PowerError::Logind(_)), "{err:?}");
}

/// `power::reboot` with no reboot command goes to the *system* bus. The test re-runs itself as
/// a child process with `DBUS_SYSTEM_BUS_ADDRESS` pointing at the private bus (changing our own
/// environment would need `unsafe`).
#[tokio::test]
async fn reboot_uses_the_system_bus_address() {
    if std::env::var_os(CHILD_MARKER).is_some() {
        let tmp = tempfile::tempdir().unwrap();
        let settings = Settings::from_toml(
            "[[server]]\nuri = \"coap://127.0.0.1\"\nshort_id = 1\n",
            &Environment::rooted_at(tmp.path(), Some("test")),
        )
        .unwrap();
        assert_eq!(settings.device.reboot_command, None);
        power::reboot(&settings.device).await.unwrap();
        return;
    }

    let bus = PrivateBus::start();
    let logind = MockLogind::default();
    let _service = logind.serve(&bus).await;
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "reboot_uses_the_system_bus_address",
            "--test-threads=1",
        ])
        .env(CHILD_MARKER, "1")
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .output()
        .await
        .unwrap();
    assert!(
        child.status.success(),
        "child test failed: {}\n{}{}",
        child.status,
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
    assert_eq!(logind.calls(), [false]);
}

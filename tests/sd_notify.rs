//! sd_notify against real `UnixDatagram` receivers, standing in for systemd: on a filesystem path,
//! on an abstract address, and through the real process environment of a child process.

use std::ffi::OsString;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::Command;
use std::time::Duration;

use lwm2md::runtime::notify::Notifier;

/// Set in the environment of the child process of `from_env_reads_the_process_environment`.
const CHILD_MARKER: &str = "LWM2MD_SD_NOTIFY_CHILD";

fn receiver_timeout(socket: &UnixDatagram) {
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
}

fn recv(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

fn vars(pairs: Vec<(&'static str, OsString)>) -> impl Fn(&str) -> Option<OsString> {
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    }
}

fn exercise(notifier: &Notifier, receiver: &UnixDatagram) {
    notifier.ready().unwrap();
    assert_eq!(recv(receiver), "READY=1");
    notifier
        .status("registered to 2 servers\nall good")
        .unwrap();
    assert_eq!(recv(receiver), "STATUS=registered to 2 servers all good");
    notifier.watchdog().unwrap();
    assert_eq!(recv(receiver), "WATCHDOG=1");
    notifier.stopping().unwrap();
    assert_eq!(recv(receiver), "STOPPING=1");
}

#[test]
fn notifications_reach_a_filesystem_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let receiver = UnixDatagram::bind(&path).unwrap();
    receiver_timeout(&receiver);

    let notifier = Notifier::from_lookup(
        vars(vec![
            ("NOTIFY_SOCKET", path.clone().into_os_string()),
            ("WATCHDOG_USEC", "20000000".into()),
            ("WATCHDOG_PID", "4242".into()),
        ]),
        4242,
    )
    .unwrap();
    assert!(notifier.is_enabled());
    assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(10)));
    exercise(&notifier, &receiver);
}

#[test]
fn notifications_reach_an_abstract_socket() {
    // Unique per run: the abstract namespace is shared by the whole network namespace.
    let name = format!(
        "lwm2md-test-notify-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    );
    let receiver =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    receiver_timeout(&receiver);

    let notifier =
        Notifier::from_lookup(vars(vec![("NOTIFY_SOCKET", format!("@{name}").into())]), 1).unwrap();
    assert_eq!(notifier.watchdog_interval(), None);
    exercise(&notifier, &receiver);
}

#[test]
fn a_vanished_receiver_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let receiver = UnixDatagram::bind(&path).unwrap();
    let notifier = Notifier::from_lookup(
        vars(vec![("NOTIFY_SOCKET", path.clone().into_os_string())]),
        1,
    )
    .unwrap();
    notifier.ready().unwrap();
    drop(receiver);
    // Another test of this binary spawns a child process; until that child execs, it holds a
    // copy of every open descriptor, so for a moment the receiver may still exist. It must be
    // an error as soon as the socket is really gone, never a hang.
    let gone = (0..100).any(|_| {
        let failed = notifier.watchdog().is_err();
        if !failed {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        failed
    });
    assert!(gone, "sending to a vanished receiver kept succeeding");
}

/// `from_env` itself, with a real environment: the test re-runs itself as a child process with
/// `NOTIFY_SOCKET` and `WATCHDOG_USEC` set (changing our own environment would need `unsafe`).
#[test]
fn from_env_reads_the_process_environment() {
    if std::env::var_os(CHILD_MARKER).is_some() {
        let notifier = Notifier::from_env().unwrap();
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(3)));
        notifier.ready().unwrap();
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let receiver = UnixDatagram::bind(&path).unwrap();
    receiver_timeout(&receiver);
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "from_env_reads_the_process_environment",
            "--test-threads=1",
        ])
        .env(CHILD_MARKER, "1")
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "6000000")
        .env_remove("WATCHDOG_PID")
        .output()
        .unwrap();
    assert!(
        child.status.success(),
        "child test failed: {}\n{}{}",
        child.status,
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
    assert_eq!(recv(&receiver), "READY=1");
}

//! The systemd notification protocol (sd_notify(3)): readiness, status text, watchdog pings and
//! shutdown, as datagrams to `$NOTIFY_SOCKET`.
//!
//! Implemented here over `std::os::unix::net::UnixDatagram` rather than with the `sd-notify`
//! crate because that crate cannot address abstract-namespace sockets (`NOTIFY_SOCKET=@name`),
//! which systemd uses for some services and test harnesses use routinely.
//!
//! The environment is read once, by [`Notifier::from_env`]; without `NOTIFY_SOCKET` (not started
//! by systemd, or `Type=simple`) every method is a no-op. The watchdog period is only reported
//! when `WATCHDOG_PID` is unset or names this process, so a child that inherited the variables
//! does not ping on our behalf. *When* to ping is the main loop's decision: it should ping from
//! the loop itself, at [`Notifier::watchdog_interval`], so that a stuck loop stops the pings and
//! systemd restarts us.
//!
//! The socket is non-blocking: if systemd is not reading its queue we get an error, instead of
//! stalling the daemon's single thread.

use std::ffi::OsString;
use std::io;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::time::Duration;

/// Why the notifier could not be set up, or a notification not sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` is set to something we cannot address.
    #[error(
        "NOTIFY_SOCKET={value:?} is neither an absolute socket path nor an abstract socket name \
         (@name)"
    )]
    InvalidSocket {
        /// The variable's value.
        value: String,
    },
    /// `WATCHDOG_USEC` or `WATCHDOG_PID` is malformed.
    #[error("{var}={value:?} is not {expected}")]
    InvalidVariable {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// The sending socket could not be created.
    #[error("cannot create a socket for systemd notifications")]
    Socket(#[source] io::Error),
    /// A notification could not be sent (systemd gone, or its queue full).
    #[error("cannot send {state:?} to the systemd notification socket {socket}")]
    Send {
        /// The message, e.g. `READY=1`.
        state: String,
        /// `NOTIFY_SOCKET` as given.
        socket: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Sends service state to systemd; a no-op when not running under a notify-type unit.
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// `NOTIFY_SOCKET` as given, for error messages.
    name: String,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self {
            target: None,
            watchdog: None,
        }
    }

    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the process environment.
    pub fn from_env() -> Result<Self, NotifyError> {
        Self::from_lookup(|name| std::env::var_os(name), std::process::id())
    }

    /// Like [`Self::from_env`], with the variables looked up by `lookup` and `own_pid` standing
    /// for this process's id (tests cannot safely change the real environment).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<OsString>,
        own_pid: u32,
    ) -> Result<Self, NotifyError> {
        let Some(socket_var) = lookup("NOTIFY_SOCKET").filter(|v| !v.is_empty()) else {
            return Ok(Self::disabled());
        };
        let name = socket_var.to_string_lossy().into_owned();
        let invalid = || NotifyError::InvalidSocket {
            value: name.clone(),
        };
        let bytes = socket_var.as_bytes();
        let addr = match bytes.first() {
            // Abstract namespace: the name after '@' (Linux only, like systemd).
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]).map_err(|_| invalid())?,
            Some(b'/') => {
                SocketAddr::from_pathname(Path::new(&socket_var)).map_err(|_| invalid())?
            }
            // Relative paths and `vsock:` addresses are not something systemd hands a service.
            _ => return Err(invalid()),
        };
        let socket = UnixDatagram::unbound().map_err(NotifyError::Socket)?;
        socket.set_nonblocking(true).map_err(NotifyError::Socket)?;

        let watchdog = watchdog_period(&lookup, own_pid)?;
        Ok(Self {
            target: Some(Target { socket, addr, name }),
            watchdog,
        })
    }

    /// Whether notifications go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often the main loop should call [`Self::watchdog`]: half of `WATCHDOG_USEC`, as
    /// sd_watchdog_enabled(3) recommends. `None` when systemd does not watch us.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|period| period / 2)
    }

    /// `READY=1`: start-up is complete (configuration loaded, state directory locked).
    pub fn ready(&self) -> Result<(), NotifyError> {
        self.send("READY=1")
    }

    /// `STATUS=…`: a one-line human-readable status for `systemctl status`. Newlines are
    /// replaced by spaces since the protocol is line-based.
    pub fn status(&self, text: &str) -> Result<(), NotifyError> {
        self.send(&format!("STATUS={}", text.replace('\n', " ")))
    }

    /// `WATCHDOG=1`: the main loop is alive.
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.send("WATCHDOG=1")
    }

    /// `STOPPING=1`: an orderly shutdown has begun (deregistration may take a moment).
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.send("STOPPING=1")
    }

    fn send(&self, state: &str) -> Result<(), NotifyError> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        target
            .socket
            .send_to_addr(state.as_bytes(), &target.addr)
            .map(drop)
            .map_err(|source| NotifyError::Send {
                state: state.to_owned(),
                socket: target.name.clone(),
                source,
            })
    }
}

/// `WATCHDOG_USEC` when `WATCHDOG_PID` is unset or ours.
fn watchdog_period(
    lookup: &impl Fn(&str) -> Option<OsString>,
    own_pid: u32,
) -> Result<Option<Duration>, NotifyError> {
    let Some(usec) = lookup("WATCHDOG_USEC") else {
        return Ok(None);
    };
    let usec_text = usec.to_string_lossy();
    let usec: u64 = match usec_text.parse() {
        Ok(usec) if usec > 0 => usec,
        _ => {
            return Err(NotifyError::InvalidVariable {
                var: "WATCHDOG_USEC",
                value: usec_text.into_owned(),
                expected: "a positive number of microseconds",
            });
        }
    };
    if let Some(pid) = lookup("WATCHDOG_PID") {
        let pid_text = pid.to_string_lossy();
        let pid: u32 = pid_text.parse().map_err(|_| NotifyError::InvalidVariable {
            var: "WATCHDOG_PID",
            value: pid_text.clone().into_owned(),
            expected: "a process id",
        })?;
        if pid != own_pid {
            // Inherited from a parent that is being watched, not us.
            return Ok(None);
        }
    }
    Ok(Some(Duration::from_micros(usec)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn unset_or_empty_socket_is_a_no_op() {
        for vars in [
            &[][..],
            &[("NOTIFY_SOCKET", "")],
            &[("WATCHDOG_USEC", "1000")],
        ] {
            let n = Notifier::from_lookup(lookup(vars), 1).unwrap();
            assert!(!n.is_enabled());
            assert_eq!(n.watchdog_interval(), None);
            n.ready().unwrap();
            n.status("x").unwrap();
            n.watchdog().unwrap();
            n.stopping().unwrap();
        }
    }

    #[test]
    fn watchdog_is_half_the_period_and_only_for_our_pid() {
        let sock = [
            ("NOTIFY_SOCKET", "@lwm2md-unit-test"),
            ("WATCHDOG_USEC", "30000000"),
        ];
        let n = Notifier::from_lookup(lookup(&sock), 42).unwrap();
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));

        let ours = [sock[0], sock[1], ("WATCHDOG_PID", "42")];
        let n = Notifier::from_lookup(lookup(&ours), 42).unwrap();
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));

        let theirs = [sock[0], sock[1], ("WATCHDOG_PID", "41")];
        let n = Notifier::from_lookup(lookup(&theirs), 42).unwrap();
        assert!(n.is_enabled());
        assert_eq!(n.watchdog_interval(), None);
    }

    #[test]
    fn malformed_variables_are_errors() {
        let cases: [&[(&str, &str)]; 5] = [
            &[("NOTIFY_SOCKET", "relative/path")],
            &[("NOTIFY_SOCKET", "vsock:2:1234")],
            &[("NOTIFY_SOCKET", "@n"), ("WATCHDOG_USEC", "0")],
            &[("NOTIFY_SOCKET", "@n"), ("WATCHDOG_USEC", "30s")],
            &[
                ("NOTIFY_SOCKET", "@n"),
                ("WATCHDOG_USEC", "1"),
                ("WATCHDOG_PID", "me"),
            ],
        ];
        for vars in cases {
            let err = Notifier::from_lookup(lookup(vars), 1).unwrap_err();
            let message = err.to_string();
            let var = vars.last().unwrap().0;
            assert!(message.starts_with(var), "{vars:?}: {message}");
        }
    }

    #[test]
    fn send_failure_names_the_socket_and_message() {
        let n = Notifier::from_lookup(
            lookup(&[("NOTIFY_SOCKET", "/nonexistent/lwm2md-notify")]),
            1,
        )
        .unwrap();
        let message = n.ready().unwrap_err().to_string();
        assert!(
            message.contains("\"READY=1\"") && message.contains("/nonexistent/lwm2md-notify"),
            "{message}"
        );
    }
}

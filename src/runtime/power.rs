//! Power actions: reboot (Execute /3/0/4) and factory reset (Execute /3/0/5).
//!
//! A reboot runs `device.reboot_command` when one is configured, else asks systemd-logind over
//! the system D-Bus (`org.freedesktop.login1.Manager.Reboot`). logind performs an orderly
//! shutdown (services stopped, file systems synced and unmounted), which is why we neither
//! `sync` nor call reboot(2) ourselves. A factory reset only ever runs the configured command:
//! what "factory state" means is the image's business, not ours.
//!
//! Commands run directly (no shell), with stdin closed and without systemd's notification
//! variables, and their output is logged. There is no timeout here: a factory reset may take
//! long, so the caller wraps the future in `tokio::time::timeout` if it wants one; dropping the
//! future kills the command.

use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

use crate::config::{DeviceSettings, ExecCommand};

/// The logind bus name, object and interface.
const LOGIND_SERVICE: &str = "org.freedesktop.login1";

/// At most this many bytes of each of a command's stdout and stderr are logged.
const MAX_LOGGED_OUTPUT: usize = 4096;

/// Why a power action failed.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// The action needs a command and none is configured.
    #[error("no {action} command is configured (device.{key})")]
    NotConfigured {
        /// "reboot" or "factory reset".
        action: &'static str,
        /// The configuration key that would name the command.
        key: &'static str,
    },
    /// The command could not be started (missing, not executable).
    #[error("cannot run the {action} command {}", program.display())]
    Spawn {
        /// "reboot" or "factory reset".
        action: &'static str,
        /// The program.
        program: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The command ran and failed.
    #[error(
        "the {action} command {} failed with {status}{}",
        program.display(),
        if stderr.is_empty() { String::new() } else { format!(": {stderr}") }
    )]
    Failed {
        /// "reboot" or "factory reset".
        action: &'static str,
        /// The program.
        program: PathBuf,
        /// How it exited.
        status: ExitStatus,
        /// The last line of its stderr, if any.
        stderr: String,
    },
    /// No connection to the system bus.
    #[error("cannot connect to the system D-Bus to reboot through systemd-logind")]
    Bus(#[source] zbus::Error),
    /// logind is absent, refused (polkit, inhibitors) or failed the request.
    #[error("systemd-logind did not accept the reboot request")]
    Logind(#[source] zbus::Error),
}

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
trait Login1Manager {
    /// Reboots the system; `interactive` allows polkit to ask a user for authorisation.
    fn reboot(&self, interactive: bool) -> zbus::Result<()>;
}

/// Reboots the device: runs `device.reboot_command` if set, else asks systemd-logind on the
/// system bus (`$DBUS_SYSTEM_BUS_ADDRESS`, else the standard socket). Returns once the command
/// succeeded or logind accepted the request; the actual shutdown follows.
pub async fn reboot(device: &DeviceSettings) -> Result<(), PowerError> {
    if let Some(command) = &device.reboot_command {
        return run_command("reboot", command).await;
    }
    let bus = zbus::Connection::system().await.map_err(PowerError::Bus)?;
    reboot_via_logind(&bus).await
}

/// Asks systemd-logind on `bus` to reboot, non-interactively (a daemon has nobody to ask).
pub async fn reboot_via_logind(bus: &zbus::Connection) -> Result<(), PowerError> {
    log::info!("reboot: asking {LOGIND_SERVICE} to reboot");
    let logind = Login1ManagerProxy::builder(bus)
        // The manager has many properties we never read; do not fetch them.
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .map_err(PowerError::Logind)?;
    logind.reboot(false).await.map_err(PowerError::Logind)
}

/// Runs `device.factory_reset_command`; an error if none is configured (then /3/0/5 should not
/// have been offered).
pub async fn factory_reset(device: &DeviceSettings) -> Result<(), PowerError> {
    let command = device
        .factory_reset_command
        .as_ref()
        .ok_or(PowerError::NotConfigured {
            action: "factory reset",
            key: "factory_reset_command",
        })?;
    run_command("factory reset", command).await
}

async fn run_command(action: &'static str, command: &ExecCommand) -> Result<(), PowerError> {
    let program = command.program();
    // Only the program: arguments are configuration we do not vet for secrets.
    log::info!("{action}: running {}", program.display());
    let output = tokio::process::Command::new(program)
        .args(command.args())
        .stdin(Stdio::null())
        // systemd's notification variables are the daemon's alone: a child that used them could
        // report readiness or feed the watchdog on our behalf.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| PowerError::Spawn {
            action,
            program: program.to_owned(),
            source,
        })?;
    log_output(action, "stdout", &output.stdout, log::Level::Info);
    log_output(action, "stderr", &output.stderr, log::Level::Warn);
    if output.status.success() {
        log::info!("{action}: {} succeeded", program.display());
        Ok(())
    } else {
        Err(PowerError::Failed {
            action,
            program: program.to_owned(),
            status: output.status,
            stderr: last_line(&output.stderr),
        })
    }
}

fn log_output(action: &str, stream: &str, bytes: &[u8], level: log::Level) {
    let shown = &bytes[..bytes.len().min(MAX_LOGGED_OUTPUT)];
    for line in String::from_utf8_lossy(shown).lines() {
        log::log!(level, "{action} command {stream}: {line}");
    }
    if bytes.len() > MAX_LOGGED_OUTPUT {
        log::log!(
            level,
            "{action} command {stream}: ({} more bytes not logged)",
            bytes.len() - MAX_LOGGED_OUTPUT
        );
    }
}

/// The last non-empty line of `bytes`, at most 200 characters: the usual place of the reason.
fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .map(|line| line.trim().chars().take(200).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Environment, Settings};

    /// Device settings with the given TOML `[device]` body.
    fn device(tmp: &std::path::Path, device_toml: &str) -> DeviceSettings {
        let text = format!(
            "[[server]]\nuri = \"coap://127.0.0.1\"\nshort_id = 1\n[device]\n{device_toml}\n"
        );
        Settings::from_toml(&text, &Environment::rooted_at(tmp, Some("test")))
            .unwrap()
            .device
    }

    /// A `[device]` key running `/bin/sh -c script arg1 arg2`.
    fn shell(key: &str, script: &str) -> String {
        format!("{key} = [\"/bin/sh\", \"-c\", {script:?}, \"sh\", \"arg one\", \"arg2\"]")
    }

    #[tokio::test]
    async fn reboot_runs_the_configured_command_with_its_arguments() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("rebooted");
        let script = format!(
            "printf '%s|' \"$@\" > '{}'; echo to stdout; echo to stderr >&2",
            marker.display()
        );
        reboot(&device(tmp.path(), &shell("reboot_command", &script)))
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "arg one|arg2|");
    }

    #[tokio::test]
    async fn factory_reset_runs_its_own_command() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("reset");
        let script = format!("touch '{}'", marker.display());
        let settings = device(
            tmp.path(),
            &format!(
                "{}\n{}",
                shell("factory_reset_command", &script),
                shell("reboot_command", "exit 1")
            ),
        );
        factory_reset(&settings).await.unwrap();
        assert!(marker.exists());
    }

    #[tokio::test]
    async fn failing_command_is_an_error_with_status_and_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let settings = device(
            tmp.path(),
            &shell(
                "reboot_command",
                "echo progress; echo 'inhibited by update' >&2; exit 3",
            ),
        );
        let err = reboot(&settings).await.unwrap_err();
        assert!(
            matches!(&err, PowerError::Failed { status, .. } if status.code() == Some(3)),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "the reboot command /bin/sh failed with exit status: 3: inhibited by update"
        );
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let tmp = tempfile::tempdir().unwrap();
        let settings = device(
            tmp.path(),
            "factory_reset_command = [\"/nonexistent/lwm2md-reset\"]",
        );
        let err = factory_reset(&settings).await.unwrap_err();
        assert!(matches!(err, PowerError::Spawn { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "cannot run the factory reset command /nonexistent/lwm2md-reset"
        );
    }

    #[tokio::test]
    async fn factory_reset_without_command_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let err = factory_reset(&device(tmp.path(), "")).await.unwrap_err();
        assert!(matches!(err, PowerError::NotConfigured { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "no factory reset command is configured (device.factory_reset_command)"
        );
    }

    #[test]
    fn last_line_skips_trailing_blank_lines() {
        assert_eq!(last_line(b"a\nreason here \n\n  \n"), "reason here");
        assert_eq!(last_line(b""), "");
    }
}

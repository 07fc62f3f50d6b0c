//! Builds the core from validated settings: the objects with their host probes, the client
//! configuration, and the runtime's implementations of the driver's traits (clock, executor,
//! persister, supervisor).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::driver::{Executor, Persister, Supervisor};
use super::notify::Notifier;
use super::power;
use crate::config::{self, DeviceSettings, NotificationMode, ServerSecurity, Settings};
use crate::core::client::{ClientConfig, Command, ServerPrefs, WallClock};
use crate::core::coap::endpoint::CoapConfig;
use crate::core::effect::{Effect, Outcome};
use crate::core::lwm2m::links::Lwm2mVersion;
use crate::core::lwm2m::path::Path as Lwm2mPath;
use crate::core::object::Registry;
use crate::host::{self, HostDevice, HostNet, ModemHandle};
use crate::objects::access_control::AccessControl;
use crate::objects::connectivity::Connectivity;
use crate::objects::device::{Device, DeviceInfo};
use crate::objects::firmware::Firmware;
use crate::objects::security::{Security, SecurityAccount, SecurityMode};
use crate::objects::server::{Server, ServerAccount};
use crate::persist::Store;

/// The host's wall clock.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn unix_time(&self, _now: Instant) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        }
    }
}

/// A seed for the core's RNG, drawn once from the OS.
pub fn random_seed() -> Result<u64, String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| e.to_string())?;
    Ok(u64::from_le_bytes(bytes))
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// The core's configuration.
pub fn client_config(settings: &Settings, seed: u64) -> ClientConfig {
    let coap = CoapConfig {
        ack_timeout: settings.coap.ack_timeout,
        ack_random_factor: settings.coap.ack_random_factor,
        max_retransmit: u32::from(settings.coap.max_retransmit),
        ..CoapConfig::default()
    };
    let server_prefs: BTreeMap<u16, ServerPrefs> = settings
        .servers
        .iter()
        .map(|s| {
            let version = match s.lwm2m_version {
                config::Lwm2mVersion::V1_0 => Lwm2mVersion::V1_0,
                config::Lwm2mVersion::V1_1 => Lwm2mVersion::V1_1,
            };
            (
                s.short_id.get(),
                ServerPrefs {
                    version,
                    content_format: s.content_format.number(),
                },
            )
        })
        .collect();
    ClientConfig {
        endpoint: settings.agent.endpoint.clone(),
        coap,
        block_szx: settings.coap.block_size.szx(),
        max_body_size: settings.coap.max_body_size as usize,
        retry_initial: settings.registration.retry_initial,
        retry_max: settings.registration.retry_max,
        sample_interval: settings.observe.sample_interval,
        server_prefs,
        bootstrap_fallback_after: settings.bootstrap.as_ref().map_or(0, |b| b.fallback_after),
        bootstrap_timeout: settings
            .bootstrap
            .as_ref()
            .map_or(Duration::from_secs(247), |b| b.timeout),
        seed,
    }
}

/// The host network probe, with a ModemManager watcher when enabled and a system bus exists.
/// Modem changes are forwarded to the core as `Command::ValueChanged(/4/0)` so observations of
/// /4 see them at once.
pub async fn host_net(settings: &Settings, commands: mpsc::Sender<Command>) -> HostNet {
    let modem = if settings.connectivity.modem_manager {
        match zbus::Connection::system().await {
            Ok(conn) => {
                let handle = host::modem::watch(conn);
                let mut changes = handle.subscribe();
                tokio::spawn(async move {
                    while changes.changed().await.is_ok() {
                        let path = Lwm2mPath::instance(4, 0);
                        if commands.send(Command::ValueChanged(path)).await.is_err() {
                            return;
                        }
                    }
                });
                handle
            }
            Err(e) => {
                log::info!("no system D-Bus ({e}); radio data from ModemManager is unavailable");
                ModemHandle::disabled()
            }
        }
    } else {
        ModemHandle::disabled()
    };
    HostNet::new("/", Some(modem))
}

/// The objects: Security and Server from the configured servers, Device and Connectivity
/// Monitoring with host probes, and Firmware Update when `[update]` assembled one.
/// `running_version` is the version the update journal recorded for the running slot: it beats
/// both the configuration and the OS's own claim, which an update does not rewrite.
pub fn registry(
    settings: &Settings,
    net: HostNet,
    firmware: Option<Firmware>,
    running_version: Option<String>,
) -> Registry {
    let mut security: Vec<SecurityAccount> = settings
        .servers
        .iter()
        .map(|s| security_account(s.uri.as_str(), Some(s.short_id.get()), &s.security))
        .collect();
    if let Some(b) = &settings.bootstrap {
        let mut account = security_account(b.uri.as_str(), None, &b.security);
        account.hold_off = Some(secs(b.hold_off));
        security.push(account);
    }
    let servers: Vec<ServerAccount> = settings
        .servers
        .iter()
        .map(|s| ServerAccount {
            ssid: s.short_id.get(),
            lifetime: secs(s.lifetime),
            default_pmin: secs(s.default_pmin),
            default_pmax: s.default_pmax.map(secs),
            disable_timeout: secs(s.disable_timeout),
            notification_storing: s.notification_storing,
            binding: s.binding.as_str().to_string(),
            confirmable_notifications: s.notification_mode == NotificationMode::Con,
        })
        .collect();
    let d = &settings.device;
    let configured = DeviceInfo {
        manufacturer: d.manufacturer.clone(),
        model: d.model.clone(),
        serial: d.serial.clone(),
        firmware_version: running_version.or_else(|| d.firmware_version.clone()),
        hardware_version: d.hardware_version.clone(),
        device_type: Some(d.device_type.clone()),
        factory_reset: d.factory_reset_command.is_some(),
    };
    let info = configured.or(host::device_info(Path::new("/")));
    let ignore: Vec<String> = settings
        .connectivity
        .ignore_interfaces
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut reg = Registry::new();
    reg.insert(Box::new(Security::new(security)));
    reg.insert(Box::new(Server::new(servers)));
    reg.insert(Box::new(AccessControl::default()));
    reg.insert(Box::new(Device::new(
        info,
        Box::new(HostDevice::new("/", net.clone())),
    )));
    reg.insert(Box::new(Connectivity::new(Box::new(net), ignore)));
    if let Some(fw) = firmware {
        reg.insert(Box::new(fw));
    }
    reg
}

/// The Security instance for a configured server (`ssid`) or Bootstrap-Server (`None`).
fn security_account(uri: &str, ssid: Option<u16>, security: &ServerSecurity) -> SecurityAccount {
    let mut account = SecurityAccount::nosec(uri, ssid.unwrap_or(0));
    account.ssid = ssid;
    account.bootstrap = ssid.is_none();
    match security {
        ServerSecurity::NoSec => {}
        ServerSecurity::Psk { identity, key } => {
            account.mode = SecurityMode::Psk;
            account.identity.clone_from(identity);
            account.secret_key.clone_from(&key.0);
        }
        ServerSecurity::Certificate {
            certificate,
            private_key,
            server_certificate,
            server_name,
        } => {
            account.mode = SecurityMode::Certificate;
            account.identity.clone_from(certificate);
            account.secret_key.clone_from(&private_key.0);
            account.server_public_key.clone_from(server_certificate);
            account.sni.clone_from(server_name);
        }
    }
    account
}

/// Carries out host effects: reboot and factory reset.
#[derive(Debug)]
pub struct HostExecutor {
    device: DeviceSettings,
}

impl HostExecutor {
    /// An executor using the `[device]` commands.
    pub fn new(device: DeviceSettings) -> Self {
        Self { device }
    }
}

impl Executor for HostExecutor {
    fn execute(&self, effect: Effect) -> Pin<Box<dyn Future<Output = Outcome> + Send>> {
        let device = self.device.clone();
        Box::pin(async move {
            let result = match effect {
                Effect::Reboot => {
                    log::warn!("rebooting on the server's request");
                    power::reboot(&device).await
                }
                Effect::FactoryReset => {
                    log::warn!("factory reset on the server's request");
                    power::factory_reset(&device).await
                }
                Effect::SaveState(_) => {
                    return Outcome::Failed("state is saved by the persister".into());
                }
                Effect::Firmware(_) => {
                    return Outcome::Failed("firmware steps go to the firmware worker".into());
                }
            };
            match result {
                Ok(()) => Outcome::Done,
                Err(e) => Outcome::Failed(e.to_string()),
            }
        })
    }
}

/// Saves the core's state document in the state directory.
#[derive(Debug)]
pub struct StorePersister {
    store: Arc<Store>,
    name: &'static str,
}

impl StorePersister {
    /// Writes `name` in `store`.
    pub fn new(store: Arc<Store>, name: &'static str) -> Self {
        Self { store, name }
    }
}

impl Persister for StorePersister {
    fn save(&mut self, state: &serde_json::Value) -> Result<(), String> {
        self.store.save(self.name, state).map_err(|e| e.to_string())
    }
}

impl Supervisor for Notifier {
    fn ready(&self) {
        if let Err(e) = Self::ready(self) {
            log::warn!("sd_notify READY: {e}");
        }
    }
    fn status(&self, text: &str) {
        if let Err(e) = Self::status(self, text) {
            log::debug!("sd_notify STATUS: {e}");
        }
    }
    fn watchdog(&self) {
        if let Err(e) = Self::watchdog(self) {
            log::warn!("sd_notify WATCHDOG: {e}");
        }
    }
    fn stopping(&self) {
        if let Err(e) = Self::stopping(self) {
            log::debug!("sd_notify STOPPING: {e}");
        }
    }
    fn watchdog_interval(&self) -> Option<Duration> {
        Self::watchdog_interval(self)
    }
}

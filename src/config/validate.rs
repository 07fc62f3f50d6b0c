//! Merged fragment + command-line overrides + defaults → [`Settings`], checking every rule of the
//! README's configuration reference. The first violation is returned, attributed to the file
//! (or flag) that set the offending key.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::fragments::{CoapsFragment, Fragment, ServerFragment};
use super::layers::{Layers, Origins};
use super::settings::{
    AgentSettings, Binding, BlockSize, BootstrapSettings, CoapSettings, CoapsCredential,
    ConnectivitySettings, ContentFormat, DeviceSettings, ExecCommand, InterfacePattern, LogLevel,
    Lwm2mVersion, NotificationMode, ObserveSettings, RegistrationSettings, Secret, ServerSecurity,
    ServerSettings, Settings, ShortServerId, UpdateBackend, UpdateSettings,
};
use super::uri::ServerUri;
use super::{ConfigError, Environment, Origin, Overrides};

/// Default state directory.
const DEFAULT_STATE_DIR: &str = "/var/lib/lwm2md";
/// Largest accepted `coap.ack_timeout`, in seconds: anything above is almost certainly a value
/// meant in milliseconds.
const MAX_ACK_TIMEOUT: f64 = 300.0;
/// Largest accepted `coap.max_body_size`: a sanity cap on memory, not a protocol limit.
const MAX_BODY_SIZE: i64 = 16 * 1024 * 1024;
/// `ep=` plus the name must fit one Uri-Query option (at most 255 bytes).
const MAX_ENDPOINT_LEN: usize = 252;
/// Durations that end up in 32-bit LwM2M resources (/1/x/1, /1/x/2, ...).
const U32_MAX: i64 = u32::MAX as i64;

/// Applies `overrides` to the merged `layers`, fills in defaults and validates everything.
pub(super) fn build(
    layers: Layers,
    main: &Path,
    overrides: &Overrides,
    env: &Environment,
) -> Result<Settings> {
    let (mut fragment, mut origins) = layers.into_parts()?;
    apply_overrides(&mut fragment, &mut origins, overrides);
    let v = Validator {
        origins: &origins,
        main,
    };
    Ok(Settings {
        agent: v.agent(fragment.agent.unwrap_or_default(), env)?,
        coap: v.coap(fragment.coap.unwrap_or_default())?,
        registration: v.registration(fragment.registration.unwrap_or_default())?,
        observe: v.observe(fragment.observe.unwrap_or_default())?,
        servers: v.servers(fragment.server, fragment.bootstrap.is_some())?,
        bootstrap: fragment.bootstrap.map(|b| v.bootstrap(b)).transpose()?,
        device: v.device(fragment.device.unwrap_or_default())?,
        connectivity: v.connectivity(fragment.connectivity.unwrap_or_default())?,
        update: fragment.update.map(|u| v.update(u)).transpose()?.flatten(),
    })
}

/// Command-line flags replace whatever the files said, and become the origin of those keys.
fn apply_overrides(fragment: &mut Fragment, origins: &mut Origins, overrides: &Overrides) {
    if let Some(uri) = &overrides.server_uri {
        fragment.server = Some(vec![ServerFragment {
            uri: Some(uri.clone()),
            short_id: Some(1),
            ..ServerFragment::default()
        }]);
        origins.clear_under("server");
        origins.set("server", Origin::Flag("--server-uri"));
    }
    let agent = fragment.agent.get_or_insert_default();
    if let Some(endpoint) = &overrides.endpoint {
        agent.endpoint = Some(endpoint.clone());
        origins.set("agent.endpoint", Origin::Flag("--endpoint"));
    }
    if let Some(dir) = &overrides.state_dir {
        agent.state_dir = Some(dir.clone());
        origins.set("agent.state_dir", Origin::Flag("--state-dir"));
    }
    if let Some(level) = &overrides.log_level {
        agent.log_level = Some(level.clone());
        origins.set("agent.log_level", Origin::Flag("--log-level"));
    }
}

struct Validator<'a> {
    origins: &'a Origins,
    /// Blamed for keys that no file set (a required key that is missing everywhere).
    main: &'a Path,
}

type Result<T> = std::result::Result<T, ConfigError>;

impl Validator<'_> {
    fn error(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        let origin = self
            .origins
            .of(key)
            .cloned()
            .unwrap_or_else(|| Origin::File {
                path: self.main.to_owned(),
                position: None,
            });
        ConfigError::Invalid {
            origin,
            key: key.to_owned(),
            reason: reason.into(),
        }
    }

    fn int(&self, key: &str, value: Option<i64>, default: i64, lo: i64, hi: i64) -> Result<i64> {
        let value = value.unwrap_or(default);
        if (lo..=hi).contains(&value) {
            Ok(value)
        } else {
            Err(self.error(key, format!("must be between {lo} and {hi}, found {value}")))
        }
    }

    fn seconds(&self, key: &str, value: Option<i64>, default: i64, lo: i64) -> Result<Duration> {
        let secs = self.int(key, value, default, lo, U32_MAX)?;
        // The range check above makes the value non-negative.
        Ok(Duration::from_secs(secs.unsigned_abs()))
    }

    fn choice<T>(
        &self,
        key: &str,
        value: Option<&str>,
        default: T,
        parse: impl Fn(&str) -> Option<T>,
        names: &[&str],
    ) -> Result<T> {
        let Some(value) = value else {
            return Ok(default);
        };
        parse(value).ok_or_else(|| {
            let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
            self.error(
                key,
                format!("must be one of {}; found \"{value}\"", names.join(", ")),
            )
        })
    }

    fn agent(
        &self,
        agent: super::fragments::AgentFragment,
        env: &Environment,
    ) -> Result<AgentSettings> {
        let endpoint = match agent.endpoint {
            Some(endpoint) => endpoint,
            None => default_endpoint(env).ok_or_else(|| {
                self.error(
                    "agent.endpoint",
                    format!(
                        "no default endpoint name: {} is missing or malformed and the host name \
                         is unset or \"localhost\"; set agent.endpoint or pass --endpoint",
                        env.machine_id.display()
                    ),
                )
            })?,
        };
        if endpoint.is_empty() || endpoint.len() > MAX_ENDPOINT_LEN {
            return Err(self.error(
                "agent.endpoint",
                format!(
                    "must be 1 to {MAX_ENDPOINT_LEN} bytes long, found {} bytes",
                    endpoint.len()
                ),
            ));
        }
        if endpoint.chars().any(char::is_control) {
            return Err(self.error("agent.endpoint", "must not contain control characters"));
        }
        let state_dir = agent
            .state_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        if !state_dir.is_absolute() {
            return Err(self.error(
                "agent.state_dir",
                format!(
                    "must be an absolute path, found \"{}\"",
                    state_dir.display()
                ),
            ));
        }
        let log_level = self.choice(
            "agent.log_level",
            agent.log_level.as_deref(),
            LogLevel::Info,
            LogLevel::from_name,
            &LogLevel::NAMES,
        )?;
        Ok(AgentSettings {
            endpoint,
            state_dir,
            log_level,
        })
    }

    fn coap(&self, coap: super::fragments::CoapFragment) -> Result<CoapSettings> {
        let ack_timeout = coap.ack_timeout.unwrap_or(2.0);
        if !(ack_timeout > 0.0 && ack_timeout <= MAX_ACK_TIMEOUT) {
            return Err(self.error(
                "coap.ack_timeout",
                format!(
                    "must be more than 0 and at most {MAX_ACK_TIMEOUT} seconds, found {ack_timeout}"
                ),
            ));
        }
        let ack_random_factor = coap.ack_random_factor.unwrap_or(1.5);
        if !(ack_random_factor.is_finite() && ack_random_factor >= 1.0) {
            return Err(self.error(
                "coap.ack_random_factor",
                format!("must be at least 1.0, found {ack_random_factor}"),
            ));
        }
        let max_retransmit = self.int("coap.max_retransmit", coap.max_retransmit, 4, 0, 10)?;
        let block_size = coap.block_size.unwrap_or(1024);
        let block_size = u16::try_from(block_size)
            .ok()
            .and_then(BlockSize::new)
            .ok_or_else(|| {
                self.error(
                    "coap.block_size",
                    format!("must be 16, 32, 64, 128, 256, 512 or 1024, found {block_size}"),
                )
            })?;
        let max_body_size = self.int(
            "coap.max_body_size",
            coap.max_body_size,
            65536,
            16,
            MAX_BODY_SIZE,
        )?;
        Ok(CoapSettings {
            // Range-checked above: positive, finite and small.
            ack_timeout: Duration::from_secs_f64(ack_timeout),
            ack_random_factor,
            max_retransmit: u8::try_from(max_retransmit).unwrap_or(u8::MAX),
            block_size,
            max_body_size: u32::try_from(max_body_size).unwrap_or(u32::MAX),
        })
    }

    fn registration(
        &self,
        registration: super::fragments::RegistrationFragment,
    ) -> Result<RegistrationSettings> {
        let retry_initial = self.seconds(
            "registration.retry_initial",
            registration.retry_initial,
            15,
            1,
        )?;
        let retry_max = self.seconds("registration.retry_max", registration.retry_max, 3600, 1)?;
        if retry_max < retry_initial {
            // Blame whichever of the two was set explicitly; the default cannot be wrong alone.
            let (key, reason) = if registration.retry_max.is_some() {
                (
                    "registration.retry_max",
                    format!(
                        "must not be less than registration.retry_initial ({} s), found {} s",
                        retry_initial.as_secs(),
                        retry_max.as_secs()
                    ),
                )
            } else {
                (
                    "registration.retry_initial",
                    format!(
                        "must not be more than registration.retry_max ({} s, the default), \
                         found {} s",
                        retry_max.as_secs(),
                        retry_initial.as_secs()
                    ),
                )
            };
            return Err(self.error(key, reason));
        }
        Ok(RegistrationSettings {
            retry_initial,
            retry_max,
        })
    }

    fn observe(&self, observe: super::fragments::ObserveFragment) -> Result<ObserveSettings> {
        Ok(ObserveSettings {
            sample_interval: self.seconds(
                "observe.sample_interval",
                observe.sample_interval,
                10,
                1,
            )?,
        })
    }

    fn servers(
        &self,
        servers: Option<Vec<ServerFragment>>,
        bootstrap: bool,
    ) -> Result<Vec<ServerSettings>> {
        let servers = servers.unwrap_or_default();
        if servers.is_empty() && !bootstrap {
            return Err(self.error(
                "server",
                "no LwM2M server configured: add a [[server]] table, a [bootstrap] table or \
                 pass --server-uri",
            ));
        }
        let mut seen: HashMap<ShortServerId, usize> = HashMap::new();
        let mut out = Vec::with_capacity(servers.len());
        for (i, server) in servers.into_iter().enumerate() {
            let settings = self.server(&format!("server[{i}]"), server)?;
            if let Some(first) = seen.insert(settings.short_id, i) {
                return Err(self.error(
                    &format!("server[{i}].short_id"),
                    format!(
                        "short id {} is already used by server[{first}]; short ids must be unique",
                        settings.short_id.get()
                    ),
                ));
            }
            out.push(settings);
        }
        Ok(out)
    }

    /// `[bootstrap]`: the factory Bootstrap-Server account.
    fn bootstrap(&self, b: super::fragments::BootstrapFragment) -> Result<BootstrapSettings> {
        let uri = b.uri.ok_or_else(|| {
            self.error(
                "bootstrap.uri",
                "missing: [bootstrap] needs the Bootstrap-Server's uri",
            )
        })?;
        let uri = ServerUri::parse(&uri).map_err(|reason| self.error("bootstrap.uri", reason))?;
        let mut fragment = ServerFragment {
            security: b.security,
            psk_identity: b.psk_identity,
            psk_key_file: b.psk_key_file,
            certificate_file: b.certificate_file,
            private_key_file: b.private_key_file,
            server_certificate_file: b.server_certificate_file,
            server_name: b.server_name,
            ..ServerFragment::default()
        };
        let security = self.server_security("bootstrap", &uri, &mut fragment)?;
        Ok(BootstrapSettings {
            uri,
            security,
            hold_off: self.seconds("bootstrap.hold_off", b.hold_off, 0, 0)?,
            fallback_after: u32::try_from(self.int(
                "bootstrap.fallback_after",
                b.fallback_after,
                3,
                0,
                1000,
            )?)
            .unwrap_or(3),
            timeout: self.seconds("bootstrap.timeout", b.timeout, 247, 1)?,
        })
    }

    fn server(&self, prefix: &str, mut server: ServerFragment) -> Result<ServerSettings> {
        let key = |name: &str| format!("{prefix}.{name}");
        let required = |name: &str| {
            self.error(
                &key(name),
                format!("missing: every [[server]] needs {name}"),
            )
        };

        let uri = server.uri.take().ok_or_else(|| required("uri"))?;
        let uri = ServerUri::parse(&uri).map_err(|reason| self.error(&key("uri"), reason))?;
        let security = self.server_security(prefix, &uri, &mut server)?;

        let short_id = server.short_id.ok_or_else(|| required("short_id"))?;
        let short_id = self.int(&key("short_id"), Some(short_id), 0, 1, 65534)?;
        let short_id = u16::try_from(short_id)
            .ok()
            .and_then(ShortServerId::new)
            .ok_or_else(|| self.error(&key("short_id"), "must be between 1 and 65534"))?;

        let lifetime = self.seconds(&key("lifetime"), server.lifetime, 86400, 1)?;
        let default_pmin = self.seconds(&key("default_pmin"), server.default_pmin, 0, 0)?;
        let default_pmax = match server.default_pmax {
            None => None,
            Some(pmax) => {
                let pmax = self.seconds(&key("default_pmax"), Some(pmax), 0, 1)?;
                if pmax < default_pmin {
                    return Err(self.error(
                        &key("default_pmax"),
                        format!(
                            "must not be less than default_pmin ({} s), found {} s",
                            default_pmin.as_secs(),
                            pmax.as_secs()
                        ),
                    ));
                }
                Some(pmax)
            }
        };
        let disable_timeout =
            self.seconds(&key("disable_timeout"), server.disable_timeout, 86400, 0)?;

        let binding = server.binding.as_deref().unwrap_or("U");
        let binding = Binding::new(binding).ok_or_else(|| {
            self.error(
                &key("binding"),
                format!(
                    "must be one or more of the letters U, T, S, N, Q, each at most once; \
                     found \"{binding}\""
                ),
            )
        })?;
        if !binding.has('U') {
            return Err(self.error(
                &key("binding"),
                format!(
                    "must include U: the server URI is coap://, which is CoAP over UDP; found \"{}\"",
                    binding.as_str()
                ),
            ));
        }

        let notification_mode = self.choice(
            &key("notification_mode"),
            server.notification_mode.as_deref(),
            NotificationMode::Non,
            |s| match s {
                "non" => Some(NotificationMode::Non),
                "con" => Some(NotificationMode::Con),
                _ => None,
            },
            &["non", "con"],
        )?;
        let lwm2m_version = self.choice(
            &key("lwm2m_version"),
            server.lwm2m_version.as_deref(),
            Lwm2mVersion::V1_1,
            |s| match s {
                "1.0" => Some(Lwm2mVersion::V1_0),
                "1.1" => Some(Lwm2mVersion::V1_1),
                _ => None,
            },
            &["1.0", "1.1"],
        )?;
        // LwM2M 1.0 has no SenML formats, so its default (and only choice here) is TLV.
        let default_format = match lwm2m_version {
            Lwm2mVersion::V1_0 => ContentFormat::Tlv,
            Lwm2mVersion::V1_1 => ContentFormat::SenmlCbor,
        };
        let content_format = self.choice(
            &key("content_format"),
            server.content_format.as_deref(),
            default_format,
            |s| match s {
                "senml-cbor" => Some(ContentFormat::SenmlCbor),
                "senml-json" => Some(ContentFormat::SenmlJson),
                "tlv" => Some(ContentFormat::Tlv),
                _ => None,
            },
            &["senml-cbor", "senml-json", "tlv"],
        )?;
        if lwm2m_version == Lwm2mVersion::V1_0 && content_format != ContentFormat::Tlv {
            return Err(self.error(
                &key("content_format"),
                format!(
                    "\"{}\" is not defined by LwM2M 1.0: use \"tlv\" or set lwm2m_version = \"1.1\"",
                    content_format.as_str()
                ),
            ));
        }

        Ok(ServerSettings {
            uri,
            short_id,
            lifetime,
            default_pmin,
            default_pmax,
            disable_timeout,
            notification_storing: server.notification_storing.unwrap_or(true),
            binding,
            notification_mode,
            lwm2m_version,
            content_format,
            security,
        })
    }

    fn command(&self, key: &str, argv: Option<Vec<String>>) -> Result<Option<ExecCommand>> {
        let Some(argv) = argv else {
            return Ok(None);
        };
        match argv.first() {
            None => Err(self.error(
                key,
                "must not be empty: give the program's absolute path and its arguments, \
                 e.g. [\"/usr/sbin/reboot\"]",
            )),
            Some(program) => ExecCommand::new(&argv).map(Some).ok_or_else(|| {
                self.error(
                    &format!("{key}[0]"),
                    format!("must be an absolute path to the program, found \"{program}\""),
                )
            }),
        }
    }

    fn device(&self, device: super::fragments::DeviceFragment) -> Result<DeviceSettings> {
        Ok(DeviceSettings {
            reboot_command: self.command("device.reboot_command", device.reboot_command)?,
            factory_reset_command: self
                .command("device.factory_reset_command", device.factory_reset_command)?,
            manufacturer: device.manufacturer,
            model: device.model,
            serial: device.serial,
            firmware_version: device.firmware_version,
            hardware_version: device.hardware_version,
            device_type: device.device_type.unwrap_or_else(|| "gateway".to_owned()),
        })
    }

    fn connectivity(
        &self,
        connectivity: super::fragments::ConnectivityFragment,
    ) -> Result<ConnectivitySettings> {
        let patterns = connectivity
            .ignore_interfaces
            .unwrap_or_else(|| vec!["lo".to_owned()]);
        let ignore_interfaces = patterns
            .iter()
            .enumerate()
            .map(|(i, pattern)| {
                InterfacePattern::new(pattern).ok_or_else(|| {
                    self.error(
                        &format!("connectivity.ignore_interfaces[{i}]"),
                        format!(
                            "must be an interface name of 1 to 15 characters (no '/', ':', '*' \
                             or spaces), optionally ending in '*'; found \"{pattern}\""
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ConnectivitySettings {
            modem_manager: connectivity.modem_manager.unwrap_or(true),
            ignore_interfaces,
        })
    }
}

impl Validator<'_> {
    fn required_path(&self, key: &str, value: Option<PathBuf>, backend: &str) -> Result<PathBuf> {
        match value {
            Some(p) if p.is_absolute() => Ok(p),
            Some(p) => Err(self.error(
                key,
                format!("must be an absolute path, found \"{}\"", p.display()),
            )),
            None => Err(self.error(key, format!("is required with backend = \"{backend}\""))),
        }
    }

    fn optional_path(&self, key: &str, value: Option<PathBuf>) -> Result<Option<PathBuf>> {
        match value {
            Some(p) if !p.is_absolute() => Err(self.error(
                key,
                format!("must be an absolute path, found \"{}\"", p.display()),
            )),
            other => Ok(other),
        }
    }

    /// `security` and its credentials. `coap://` means NoSec (the URI says so); a `coaps://`
    /// URI never falls back to NoSec: it needs credentials.
    fn server_security(
        &self,
        prefix: &str,
        uri: &ServerUri,
        server: &mut ServerFragment,
    ) -> Result<ServerSecurity> {
        let key = |name: &str| format!("{prefix}.{name}");
        let psk_identity = server.psk_identity.take();
        let psk_key_file = server.psk_key_file.take();
        let cert_keys = [
            server.certificate_file.is_some(),
            server.private_key_file.is_some(),
            server.server_certificate_file.is_some(),
            server.server_name.is_some(),
        ];
        let mode = match (server.security.as_deref(), uri.is_secure()) {
            (None | Some("nosec"), false) => Mode::NoSec,
            (None, true) => {
                return Err(self.error(
                    &key("uri"),
                    "coaps:// needs DTLS credentials: set security = \"psk\" with psk_identity \
                     and psk_key_file",
                ));
            }
            (Some("nosec"), true) => {
                return Err(self.error(
                    &key("security"),
                    "\"nosec\" cannot be used with a coaps:// URI; use coap:// for an \
                     unencrypted server",
                ));
            }
            (Some("psk"), true) => Mode::Psk,
            (Some("certificate"), true) => Mode::Certificate,
            (Some(m @ ("psk" | "certificate")), false) => {
                return Err(self.error(
                    &key("security"),
                    format!("\"{m}\" needs a coaps:// URI (DTLS); the URI is coap://"),
                ));
            }
            (Some("rpk"), _) => {
                return Err(self.error(
                    &key("security"),
                    "raw public keys are not supported: the DTLS library cannot do them",
                ));
            }
            (Some(other), _) => {
                return Err(self.error(
                    &key("security"),
                    format!(
                        "must be one of \"nosec\", \"psk\", \"certificate\", found \"{other}\""
                    ),
                ));
            }
        };
        if mode != Mode::Psk && (psk_identity.is_some() || psk_key_file.is_some()) {
            return Err(self.error(
                &key("security"),
                "psk_identity and psk_key_file need security = \"psk\"",
            ));
        }
        if mode != Mode::Certificate && cert_keys.contains(&true) {
            return Err(self.error(
                &key("security"),
                "certificate_file, private_key_file, server_certificate_file and server_name \
                 need security = \"certificate\"",
            ));
        }
        match mode {
            Mode::NoSec => Ok(ServerSecurity::NoSec),
            Mode::Psk => self.psk_security(prefix, psk_identity, psk_key_file),
            Mode::Certificate => self.certificate_security(prefix, server),
        }
    }

    /// `security = "psk"`: the identity and the key from its private file.
    fn psk_security(
        &self,
        prefix: &str,
        psk_identity: Option<String>,
        psk_key_file: Option<PathBuf>,
    ) -> Result<ServerSecurity> {
        let key = |name: &str| format!("{prefix}.{name}");
        let identity = psk_identity.filter(|i| !i.is_empty()).ok_or_else(|| {
            self.error(&key("psk_identity"), "missing: security \"psk\" needs it")
        })?;
        if identity.len() > 128 {
            return Err(self.error(
                &key("psk_identity"),
                format!("at most 128 bytes, found {}", identity.len()),
            ));
        }
        let file = self
            .optional_path(&key("psk_key_file"), psk_key_file)?
            .ok_or_else(|| {
                self.error(&key("psk_key_file"), "missing: security \"psk\" needs it")
            })?;
        let psk = read_secret_file(&file).map_err(|why| self.error(&key("psk_key_file"), why))?;
        if psk.is_empty() || psk.len() > 64 {
            return Err(self.error(
                &key("psk_key_file"),
                format!(
                    "{}: a PSK is 1 to 64 bytes, the file holds {}",
                    file.display(),
                    psk.len()
                ),
            ));
        }
        Ok(ServerSecurity::Psk {
            identity: identity.into_bytes(),
            key: Secret(psk),
        })
    }

    /// `[[update.coaps]]`: per-prefix DTLS credentials for package downloads (a download
    /// server is not the LwM2M server, so it has credentials of its own).
    fn coaps_credentials(&self, tables: Vec<CoapsFragment>) -> Result<Vec<CoapsCredential>> {
        let mut out = Vec::new();
        for (i, t) in tables.into_iter().enumerate() {
            let prefix_key = format!("update.coaps[{i}]");
            let prefix = t.prefix.clone().ok_or_else(|| {
                self.error(
                    &format!("{prefix_key}.prefix"),
                    "missing: every [[update.coaps]] needs a coaps:// prefix",
                )
            })?;
            let uri = ServerUri::parse(&prefix)
                .ok()
                .filter(ServerUri::is_secure)
                .ok_or_else(|| {
                    self.error(
                        &format!("{prefix_key}.prefix"),
                        format!("must be a coaps://host[:port][/path] prefix, found \"{prefix}\""),
                    )
                })?;
            let mut fragment = ServerFragment {
                security: t.security,
                psk_identity: t.psk_identity,
                psk_key_file: t.psk_key_file,
                certificate_file: t.certificate_file,
                private_key_file: t.private_key_file,
                server_certificate_file: t.server_certificate_file,
                server_name: t.server_name,
                ..ServerFragment::default()
            };
            let security = self.server_security(&prefix_key, &uri, &mut fragment)?;
            out.push(CoapsCredential { prefix, security });
        }
        Ok(out)
    }

    /// `security = "certificate"`: the client certificate and key, the server's trust anchor.
    fn certificate_security(
        &self,
        prefix: &str,
        server: &mut ServerFragment,
    ) -> Result<ServerSecurity> {
        use rustls_pki_types::pem::PemObject as _;
        use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
        let key = |name: &str| format!("{prefix}.{name}");
        let file = |name: &str, value: Option<PathBuf>| {
            self.optional_path(&key(name), value)?
                .ok_or_else(|| self.error(&key(name), "missing: security \"certificate\" needs it"))
        };
        let first_cert = |name: &str, path: &std::path::Path| {
            CertificateDer::pem_file_iter(path)
                .map_err(|e| self.error(&key(name), format!("{}: {e}", path.display())))?
                .next()
                .ok_or_else(|| {
                    self.error(
                        &key(name),
                        format!("{}: no PEM CERTIFICATE in it", path.display()),
                    )
                })?
                .map(|c| c.to_vec())
                .map_err(|e| self.error(&key(name), format!("{}: {e}", path.display())))
        };
        let cert_file = file("certificate_file", server.certificate_file.take())?;
        let certificate = first_cert("certificate_file", &cert_file)?;
        let anchor_file = file(
            "server_certificate_file",
            server.server_certificate_file.take(),
        )?;
        let server_certificate = first_cert("server_certificate_file", &anchor_file)?;
        let key_file = file("private_key_file", server.private_key_file.take())?;
        let pem =
            read_secret_file(&key_file).map_err(|why| self.error(&key("private_key_file"), why))?;
        let private_key = PrivatePkcs8KeyDer::from_pem_slice(&pem).map_err(|e| {
            self.error(
                &key("private_key_file"),
                format!(
                    "{}: not a PEM PKCS#8 private key (\"BEGIN PRIVATE KEY\"; convert with \
                     openssl pkcs8 -topk8 -nocrypt): {e}",
                    key_file.display()
                ),
            )
        })?;
        Ok(ServerSecurity::Certificate {
            certificate,
            private_key: Secret(private_key.secret_pkcs8_der().to_vec()),
            server_certificate,
            server_name: server.server_name.take().filter(|n| !n.is_empty()),
        })
    }

    /// `[update]`; `None` when no backend is set (firmware updates off).
    fn update(&self, u: super::fragments::UpdateFragment) -> Result<Option<UpdateSettings>> {
        let Some(name) = u.backend.clone() else {
            return Ok(None);
        };
        let backend = match name.as_str() {
            "grub" => UpdateBackend::Grub {
                env_dir: self
                    .optional_path("update.grub_env_dir", u.grub_env_dir)?
                    .unwrap_or_else(|| PathBuf::from("/boot/grub/lwm2md")),
                slot_a: self.required_path("update.slot_a", u.slot_a, "grub")?,
                slot_b: self.required_path("update.slot_b", u.slot_b, "grub")?,
            },
            "uboot" => UpdateBackend::Uboot {
                config: self
                    .optional_path("update.uboot_config", u.uboot_config)?
                    .unwrap_or_else(|| PathBuf::from("/etc/fw_env.config")),
                allow_single_env: u.uboot_allow_single_env.unwrap_or(false),
                slot_a: self.required_path("update.slot_a", u.slot_a, "uboot")?,
                slot_b: self.required_path("update.slot_b", u.slot_b, "uboot")?,
            },
            "fake" => UpdateBackend::Fake {
                dir: self.required_path("update.fake_dir", u.fake_dir, "fake")?,
                slot_size: self
                    .int(
                        "update.fake_slot_size",
                        u.fake_slot_size,
                        64 << 20,
                        4096,
                        16 << 30,
                    )?
                    .unsigned_abs(),
            },
            other => {
                return Err(self.error(
                    "update.backend",
                    format!("must be \"grub\", \"uboot\" or \"fake\", found \"{other}\""),
                ));
            }
        };
        let compatible = match u.compatible {
            Some(c) if !c.is_empty() && c.len() <= 255 => c,
            Some(_) => return Err(self.error("update.compatible", "must be 1 to 255 bytes")),
            None => {
                return Err(self.error(
                    "update.compatible",
                    "is required with a backend: packages for other hardware are refused by it",
                ));
            }
        };
        let revoked_keys = u.revoked_keys.unwrap_or_default();
        for (i, id) in revoked_keys.iter().enumerate() {
            if id.len() != 16
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                return Err(self.error(
                    &format!("update.revoked_keys[{i}]"),
                    format!("must be a key id of 16 lowercase hex digits, found \"{id}\""),
                ));
            }
        }
        let inhibit_files = u.inhibit_files.unwrap_or_default();
        for (i, p) in inhibit_files.iter().enumerate() {
            if !p.is_absolute() {
                return Err(self.error(
                    &format!("update.inhibit_files[{i}]"),
                    "must be an absolute path",
                ));
            }
        }
        let retry_initial = self.seconds(
            "update.download_retry_initial",
            u.download_retry_initial,
            5,
            1,
        )?;
        let retry_max = self.seconds("update.download_retry_max", u.download_retry_max, 300, 1)?;
        if retry_max < retry_initial {
            return Err(self.error(
                "update.download_retry_max",
                "must not be below download_retry_initial",
            ));
        }
        Ok(Some(UpdateSettings {
            backend,
            compatible,
            keys_dir: self
                .optional_path("update.keys_dir", u.keys_dir)?
                .unwrap_or_else(|| PathBuf::from("/etc/lwm2md/keys.d")),
            revoked_keys,
            health_target: match u.health_target {
                Some(t) if t.is_empty() => None,
                Some(t) => Some(t),
                None => Some("boot-complete.target".to_owned()),
            },
            health_timeout: self.seconds("update.health_timeout", u.health_timeout, 600, 10)?,
            require_registration: u.require_registration.unwrap_or(true),
            inhibit_files,
            defer_retry: self.seconds("update.defer_retry", u.defer_retry, 60, 1)?,
            checkpoint_bytes: self
                .int(
                    "update.checkpoint_bytes",
                    u.checkpoint_bytes,
                    4 << 20,
                    64 << 10,
                    1 << 30,
                )?
                .unsigned_abs(),
            ca_file: self.optional_path("update.ca_file", u.ca_file)?,
            coaps: self.coaps_credentials(u.coaps.unwrap_or_default())?,
            download_connect_timeout: self.seconds(
                "update.download_connect_timeout",
                u.download_connect_timeout,
                30,
                1,
            )?,
            download_idle_timeout: self.seconds(
                "update.download_idle_timeout",
                u.download_idle_timeout,
                60,
                1,
            )?,
            download_timeout: self.seconds(
                "update.download_timeout",
                u.download_timeout,
                3600,
                10,
            )?,
            download_retries: u32::try_from(self.int(
                "update.download_retries",
                u.download_retries,
                10,
                0,
                1000,
            )?)
            .unwrap_or(10),
            download_retry_initial: retry_initial,
            download_retry_max: retry_max,
        }))
    }
}

/// `urn:uuid:` + the machine id as a UUID, else `urn:dev:os:` + the host name. `None` when
/// neither is usable; a host name of `localhost` is not, since every unconfigured device in a
/// fleet would register under the same name and evict each other.
fn default_endpoint(env: &Environment) -> Option<String> {
    if let Some(uuid) = fs::read_to_string(&env.machine_id)
        .ok()
        .and_then(|id| machine_id_uuid(id.trim()))
    {
        return Some(format!("urn:uuid:{uuid}"));
    }
    let host = env.hostname.as_deref()?.trim();
    let unusable = host.is_empty()
        || host == "(none)"
        || host == "localhost"
        || host.starts_with("localhost.");
    (!unusable).then(|| format!("urn:dev:os:{host}"))
}

/// A machine id (32 hex digits, systemd's format) as a lowercase 8-4-4-4-12 UUID. An empty,
/// `uninitialized` or all-zero id (images before first boot) is not one.
fn machine_id_uuid(id: &str) -> Option<String> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) || id.bytes().all(|b| b == b'0')
    {
        return None;
    }
    let id = id.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &id[0..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..32]
    ))
}

/// Reads a key file that only its owner may read: a key readable by others is refused (it is
/// already compromised, and a daemon that used it would hide that). One trailing newline is
/// not part of the key (`echo secret > file`).
fn read_secret_file(path: &std::path::Path) -> std::result::Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is readable by others (mode {mode:04o}): the key must be private to the \
             daemon (chmod 600)",
            path.display()
        ));
    }
    let mut key = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if key.last() == Some(&b'\n') {
        key.pop();
    }
    Ok(key)
}

/// The `security` of a `[[server]]` or `[[update.coaps]]` table, once it fits the URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    NoSec,
    Psk,
    Certificate,
}

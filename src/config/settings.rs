//! The validated configuration and its value types.
//!
//! Every type here is only built by `validate` (or its own checked constructor), so holding one
//! is proof that the README's rules hold for it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::uri::ServerUri;

/// The whole validated configuration (README "Configuration reference").
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `[agent]`.
    pub agent: AgentSettings,
    /// `[coap]`.
    pub coap: CoapSettings,
    /// `[registration]`.
    pub registration: RegistrationSettings,
    /// `[observe]`.
    pub observe: ObserveSettings,
    /// `[[server]]`, in file order; short server ids unique. Empty only with `bootstrap`.
    pub servers: Vec<ServerSettings>,
    /// `[bootstrap]`: the factory Bootstrap-Server account, if any.
    pub bootstrap: Option<BootstrapSettings>,
    /// `[device]`.
    pub device: DeviceSettings,
    /// `[connectivity]`.
    pub connectivity: ConnectivitySettings,
    /// `[update]`: firmware updates (object 5); `None` when no backend is configured.
    pub update: Option<UpdateSettings>,
}

/// `[agent]`: identity, state and logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSettings {
    /// Endpoint Client Name sent as `ep=` (1 to 252 bytes, so that `ep=` + name fits one
    /// Uri-Query option; no control characters).
    pub endpoint: String,
    /// Absolute path of the state directory.
    pub state_dir: PathBuf,
    /// The most verbose level logged.
    pub log_level: LogLevel,
}

/// `[coap]`: RFC 7252 transmission parameters and block-wise limits.
#[derive(Debug, Clone, PartialEq)]
pub struct CoapSettings {
    /// ACK_TIMEOUT (more than 0, at most 300 s).
    pub ack_timeout: Duration,
    /// ACK_RANDOM_FACTOR (≥ 1.0, finite).
    pub ack_random_factor: f64,
    /// MAX_RETRANSMIT (0..=10).
    pub max_retransmit: u8,
    /// The largest block we send or ask for.
    pub block_size: BlockSize,
    /// The largest structured request body assembled from Block1 blocks, in bytes.
    pub max_body_size: u32,
}

/// `[registration]`: back-off after failed registrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationSettings {
    /// The first back-off delay (≥ 1 s).
    pub retry_initial: Duration,
    /// The back-off cap (≥ `retry_initial`).
    pub retry_max: Duration,
}

/// `[observe]`: sampling of host values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObserveSettings {
    /// How often an observed host value is re-evaluated when the server set no `epmax` (≥ 1 s).
    pub sample_interval: Duration,
}

/// One `[[server]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Where the server listens.
    pub uri: ServerUri,
    /// Short Server ID (/0/x/10, /1/x/0).
    pub short_id: ShortServerId,
    /// Registration lifetime (`lt=`, /1/x/1), 1 s to 2^32 - 1 s.
    pub lifetime: Duration,
    /// Default minimum period (/1/x/2).
    pub default_pmin: Duration,
    /// Default maximum period (/1/x/3); `None` when unset. Never less than `default_pmin`.
    pub default_pmax: Option<Duration>,
    /// Disable timeout (/1/x/5).
    pub disable_timeout: Duration,
    /// Notification storing when disabled or offline (/1/x/6).
    pub notification_storing: bool,
    /// Binding (/1/x/7); always includes `U` since the URI is CoAP over UDP.
    pub binding: Binding,
    /// Whether notifications are sent non-confirmable or confirmable (/1/x/26).
    pub notification_mode: NotificationMode,
    /// The LwM2M version spoken to this server (`lwm2m=`).
    pub lwm2m_version: Lwm2mVersion,
    /// The format of multi-value reads without Accept. Never a SenML format with LwM2M 1.0.
    pub content_format: ContentFormat,
    /// How the client authenticates to the server (/0/x/2, /0/x/3, /0/x/5).
    pub security: ServerSecurity,
}

/// `[bootstrap]`: where and how to bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapSettings {
    /// The Bootstrap-Server (/0/x/0 of the Bootstrap-Server account).
    pub uri: ServerUri,
    /// How the client authenticates to it.
    pub security: ServerSecurity,
    /// Client Hold Off Time (/0/x/11): wait this long before a client-initiated bootstrap.
    pub hold_off: Duration,
    /// Bootstrap after this many failed registration attempts with every server (0: never).
    pub fallback_after: u32,
    /// A bootstrap fails when no Bootstrap-Finish arrives this long after the last request.
    pub timeout: Duration,
}

/// `security`, with its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSecurity {
    /// Security mode 3, for `coap://` URIs.
    NoSec,
    /// Security mode 0 (DTLS with a pre-shared key), for `coaps://` URIs.
    Psk {
        /// The PSK identity (/0/x/3).
        identity: Vec<u8>,
        /// The key (/0/x/5), read from `psk_key_file` (which must be private to the daemon).
        key: Secret,
    },
    /// Security mode 2 (DTLS with certificates), for `coaps://` URIs.
    Certificate {
        /// The client certificate, DER (/0/x/3), from `certificate_file`.
        certificate: Vec<u8>,
        /// Its private key, PKCS#8 DER (/0/x/5), from `private_key_file` (private to the daemon).
        private_key: Secret,
        /// The trust anchor for the server's certificate, DER (/0/x/4).
        server_certificate: Vec<u8>,
        /// The name the server's certificate must carry when not the URI's host (/0/x/14).
        server_name: Option<String>,
    },
}

/// Credentials for the `coaps://` package URIs that start with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoapsCredential {
    /// A `coaps://host[:port]/…` prefix; the longest one that matches a URI applies.
    pub prefix: String,
    /// PSK or certificate credentials (never `NoSec`).
    pub security: ServerSecurity,
}

/// Key material: `Debug` shows its length only.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} secret bytes>", self.0.len())
    }
}

/// `[device]`: Device object (/3) values and power actions. `None` means "probe the host".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSettings {
    /// /3/0/0, else DMI `sys_vendor`.
    pub manufacturer: Option<String>,
    /// /3/0/1, else DMI `product_name`.
    pub model: Option<String>,
    /// /3/0/2, else DMI `product_serial`, else `/etc/machine-id`.
    pub serial: Option<String>,
    /// /3/0/3, else `VERSION_ID` (or `VERSION`) of `/etc/os-release`.
    pub firmware_version: Option<String>,
    /// /3/0/18, else DMI `product_version` / `board_version`.
    pub hardware_version: Option<String>,
    /// /3/0/17.
    pub device_type: String,
    /// Run for Execute /3/0/4; `None`: reboot through systemd-logind over D-Bus.
    pub reboot_command: Option<ExecCommand>,
    /// Run for Execute /3/0/5; `None`: /3/0/5 is not offered.
    pub factory_reset_command: Option<ExecCommand>,
}

/// `[connectivity]`: Connectivity Monitoring (/4) sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectivitySettings {
    /// Read radio data from ModemManager on the system bus when it is present.
    pub modem_manager: bool,
    /// Interfaces left out of /4.
    pub ignore_interfaces: Vec<InterfacePattern>,
}

/// The boot-loader backend of A/B updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateBackend {
    /// GRUB with the power-safe two-copy environment in `env_dir`.
    Grub {
        /// Directory of the env copies and lock files.
        env_dir: PathBuf,
        /// Slot A's block device.
        slot_a: PathBuf,
        /// Slot B's block device.
        slot_b: PathBuf,
    },
    /// U-Boot through `fw_setenv -c config`.
    Uboot {
        /// The `fw_env.config` file.
        config: PathBuf,
        /// Accept a single-copy environment (a power cut during a write can lose it).
        allow_single_env: bool,
        /// Slot A's block device.
        slot_a: PathBuf,
        /// Slot B's block device.
        slot_b: PathBuf,
    },
    /// File-backed slots and boot state in `dir` (tests and the demo).
    Fake {
        /// Directory of the slot files and the boot state (created when missing).
        dir: PathBuf,
        /// Size of each slot file when the directory is created.
        slot_size: u64,
    },
}

/// `[update]`: firmware updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateSettings {
    /// The boot-loader backend and the slots.
    pub backend: UpdateBackend,
    /// This device's compatible string (packages must carry the same).
    pub compatible: String,
    /// Directory of trusted public keys (`*.pub`; `*.pub.revoked` are revoked).
    pub keys_dir: PathBuf,
    /// Key ids refused even if their key file is present.
    pub revoked_keys: Vec<String>,
    /// systemd unit whose activity means "healthy" after a trial boot; `None` skips that check.
    pub health_target: Option<String>,
    /// How long a trial boot may take to pass the health gate.
    pub health_timeout: Duration,
    /// The health gate also requires a successful registration.
    pub require_registration: bool,
    /// An update is deferred while one of these files exists.
    pub inhibit_files: Vec<PathBuf>,
    /// How often a deferred update checks again.
    pub defer_retry: Duration,
    /// Image bytes between two resume checkpoints of a pull.
    pub checkpoint_bytes: u64,
    /// Extra CA certificates (PEM) for `https://` downloads.
    pub ca_file: Option<PathBuf>,
    /// Per-attempt connect timeout.
    pub download_connect_timeout: Duration,
    /// Give up an attempt after this long without data.
    pub download_idle_timeout: Duration,
    /// Give up a download after this long in all.
    pub download_timeout: Duration,
    /// Attempts after a lost connection.
    pub download_retries: u32,
    /// First back-off between attempts.
    pub download_retry_initial: Duration,
    /// Back-off cap.
    pub download_retry_max: Duration,
    /// DTLS credentials for `coaps://` package URIs, by URI prefix (`[[update.coaps]]`).
    pub coaps: Vec<CoapsCredential>,
}

/// A Short Server ID: 1..=65534 (0 and 65535 are reserved, LwM2M Core §E.1 /0/x/10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShortServerId(u16);

impl ShortServerId {
    /// `None` for the reserved values 0 and 65535.
    pub const fn new(id: u16) -> Option<Self> {
        match id {
            1..=65534 => Some(Self(id)),
            _ => None,
        }
    }

    /// The id.
    pub const fn get(self) -> u16 {
        self.0
    }
}

/// A CoAP block size: a power of two from 16 to 1024 bytes (RFC 7959 SZX 0..=6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockSize(u16);

impl BlockSize {
    /// `None` unless `size` is 16, 32, 64, 128, 256, 512 or 1024.
    pub const fn new(size: u16) -> Option<Self> {
        if size.is_power_of_two() && size >= 16 && size <= 1024 {
            Some(Self(size))
        } else {
            None
        }
    }

    /// The size in bytes.
    pub const fn get(self) -> u16 {
        self.0
    }

    /// The RFC 7959 SZX exponent: size = 2^(SZX + 4).
    pub const fn szx(self) -> u8 {
        // 16..=1024 are 2^4..=2^10, so the result is 0..=6 and fits.
        (self.0.trailing_zeros() - 4) as u8
    }
}

/// The LwM2M binding (/1/x/7): one or more of the letters U, T, S, N, Q, each at most once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding(String);

impl Binding {
    /// The letters that may appear in a binding.
    pub const LETTERS: &'static str = "UTSNQ";

    /// `None` when `binding` is empty, has another letter or repeats one.
    pub fn new(binding: &str) -> Option<Self> {
        let bytes = binding.as_bytes();
        let valid = !bytes.is_empty()
            && bytes
                .iter()
                .enumerate()
                .all(|(i, b)| Self::LETTERS.as_bytes().contains(b) && !bytes[..i].contains(b));
        valid.then(|| Self(binding.to_owned()))
    }

    /// The binding as written in /1/x/7 and `b=`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the binding includes transport or mode `letter`.
    pub fn has(&self, letter: char) -> bool {
        self.0.contains(letter)
    }
}

/// How notifications are sent (/1/x/26).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationMode {
    /// Non-confirmable (a CON one still goes out at least every 24 h, RFC 7641 §4.5).
    Non,
    /// Confirmable.
    Con,
}

/// The LwM2M enabler version spoken to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lwm2mVersion {
    /// LwM2M 1.0: TLV is the multi-value default, no SenML.
    V1_0,
    /// LwM2M 1.1.
    V1_1,
}

impl Lwm2mVersion {
    /// The version as sent in `lwm2m=` (`"1.0"`, `"1.1"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V1_0 => "1.0",
            Self::V1_1 => "1.1",
        }
    }
}

/// The content format of multi-value reads without Accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentFormat {
    /// application/senml+cbor (112), the LwM2M 1.1 default.
    SenmlCbor,
    /// application/senml+json (110).
    SenmlJson,
    /// application/vnd.oma.lwm2m+tlv (11542), the LwM2M 1.0 default.
    Tlv,
}

impl ContentFormat {
    /// The CoAP Content-Format number.
    pub const fn number(self) -> u16 {
        match self {
            Self::SenmlCbor => 112,
            Self::SenmlJson => 110,
            Self::Tlv => 11542,
        }
    }

    /// The configuration spelling (`"senml-cbor"`, `"senml-json"`, `"tlv"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SenmlCbor => "senml-cbor",
            Self::SenmlJson => "senml-json",
            Self::Tlv => "tlv",
        }
    }
}

/// The most verbose log level written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// The default: state changes worth seeing in production.
    Info,
    /// Protocol detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The accepted spellings, least verbose first (also the `--log-level` choices).
    pub const NAMES: [&'static str; 5] = ["error", "warn", "info", "debug", "trace"];

    /// The level named `name` (one of [`Self::NAMES`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "error" => Self::Error,
            "warn" => Self::Warn,
            "info" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => return None,
        })
    }

    /// The equivalent `log` filter.
    pub const fn to_level_filter(self) -> log::LevelFilter {
        match self {
            Self::Error => log::LevelFilter::Error,
            Self::Warn => log::LevelFilter::Warn,
            Self::Info => log::LevelFilter::Info,
            Self::Debug => log::LevelFilter::Debug,
            Self::Trace => log::LevelFilter::Trace,
        }
    }
}

/// A command run for a power action: an absolute program path and its arguments, executed
/// directly (no shell).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecCommand {
    program: PathBuf,
    args: Vec<String>,
}

impl ExecCommand {
    /// `None` when `argv` is empty or its first element is not an absolute path.
    pub fn new(argv: &[String]) -> Option<Self> {
        let (program, args) = argv.split_first()?;
        let program = PathBuf::from(program);
        program.is_absolute().then(|| Self {
            program,
            args: args.to_vec(),
        })
    }

    /// The program.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The arguments after the program.
    pub fn args(&self) -> &[String] {
        &self.args
    }
}

/// An interface name, or a prefix when written with a trailing `*` (`veth*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePattern {
    name: String,
    prefix: bool,
}

/// Prints the pattern as written in the configuration (`veth*`).
impl std::fmt::Display for InterfacePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.name, if self.prefix { "*" } else { "" })
    }
}

impl InterfacePattern {
    /// `None` unless `pattern` is 1 to 15 characters of an interface name (no `/`, whitespace
    /// or `*`), optionally followed by one `*`. A lone `*` matches every interface.
    pub fn new(pattern: &str) -> Option<Self> {
        let (name, prefix) = match pattern.strip_suffix('*') {
            Some(name) => (name, true),
            None => (pattern, false),
        };
        // IFNAMSIZ is 16 including the terminating NUL.
        let valid = name.len() <= 15
            && (prefix || !name.is_empty())
            && name
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '/' && c != '*' && c != ':');
        valid.then(|| Self {
            name: name.to_owned(),
            prefix,
        })
    }

    /// Whether interface `ifname` matches.
    pub fn matches(&self, ifname: &str) -> bool {
        if self.prefix {
            ifname.starts_with(&self.name)
        } else {
            ifname == self.name
        }
    }
}

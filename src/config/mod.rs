//! Configuration: TOML files and command-line flags → validated [`Settings`].
//!
//! Three stages, after zincati's fragments → inputs → settings:
//!
//! 1. **Fragments.** Each file is parsed on its own into a fragment whose fields are all optional
//!    and which rejects unknown keys, so a typo fails in the file that contains it, with its line
//!    and column.
//! 2. **Layers.** The main file, then `config.d/*.toml` next to it in lexical order, are merged:
//!    tables merge recursively, scalars and arrays (the `[[server]]` list included) replace. The
//!    loader remembers which file (and where in it) set each key, so a value that is well-typed
//!    but wrong is reported against the file that set it, not the last file read.
//! 3. **Settings.** Command-line overrides are applied on top, defaults filled in and every value
//!    validated once into [`Settings`], whose newtypes and enums make the checked invariants
//!    visible in the types (a [`ShortServerId`] is never 0, a [`BlockSize`] is a power of two).
//!
//! Every error names the file (or the flag), the key path (`server[0].lifetime`) and the reason.
//! [`Settings`] deliberately has no `Default`: the only ways to get one are [`load`] and
//! [`Settings::from_toml`], so a test cannot silently run with values no file could produce.

mod fragments;
mod layers;
mod settings;
mod uri;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

pub use settings::{
    AgentSettings, Binding, BlockSize, BootstrapSettings, CoapSettings, CoapsCredential,
    ConnectivitySettings, ContentFormat, DeviceSettings, ExecCommand, InterfacePattern, LogLevel,
    Lwm2mVersion, NotificationMode, ObserveSettings, RegistrationSettings, Secret, ServerSecurity,
    ServerSettings, Settings, ShortServerId, UpdateBackend, UpdateSettings,
};
pub use uri::{ServerHost, ServerUri};

/// The main configuration file read when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/lwm2md/config.toml";

/// The drop-in directory name, looked up next to the main configuration file.
pub const DROP_IN_DIR: &str = "config.d";

/// Values given on the command line. They are applied after every file, so they always win.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `-c, --config`: the main file. When set, a missing file is an error; when unset the
    /// default file may be absent.
    pub config: Option<PathBuf>,
    /// `--server-uri`: replaces the whole `[[server]]` list with one server, short id 1.
    pub server_uri: Option<String>,
    /// `--endpoint`: the endpoint client name.
    pub endpoint: Option<String>,
    /// `--state-dir`: the state directory (must be absolute; `main` makes a relative flag
    /// absolute against the working directory before it gets here).
    pub state_dir: Option<PathBuf>,
    /// `--log-level`: one of [`LogLevel::NAMES`].
    pub log_level: Option<String>,
}

/// What the loader needs from the host besides the configuration files. Tests point it at a
/// temporary directory so they never depend on the machine they run on.
#[derive(Debug, Clone)]
pub struct Environment {
    /// The main file used when `--config` is not given.
    pub default_config: PathBuf,
    /// The systemd machine id file, the source of the default endpoint name.
    pub machine_id: PathBuf,
    /// The host name, used for the endpoint name when the machine id is missing or malformed.
    pub hostname: Option<String>,
}

impl Environment {
    /// The real host: [`DEFAULT_CONFIG_FILE`], `/etc/machine-id` and the kernel's host name.
    pub fn system() -> Self {
        Self {
            default_config: PathBuf::from(DEFAULT_CONFIG_FILE),
            machine_id: PathBuf::from("/etc/machine-id"),
            hostname: nix::unistd::gethostname()
                .ok()
                .and_then(|name| name.into_string().ok()),
        }
    }

    /// A host whose files live under `root` (`root/etc/lwm2md/config.toml`,
    /// `root/etc/machine-id`), with the given host name.
    pub fn rooted_at(root: &Path, hostname: Option<&str>) -> Self {
        Self {
            default_config: root.join("etc/lwm2md/config.toml"),
            machine_id: root.join("etc/machine-id"),
            hostname: hostname.map(str::to_owned),
        }
    }
}

/// Where a configuration value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A configuration file; `position` is the 1-based (line, column) of the value when known.
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line and column of the value in the file.
        position: Option<(usize, usize)>,
    },
    /// A command-line flag such as `--server-uri`.
    Flag(&'static str),
}

impl Origin {
    /// The file name or flag, as the first part of an error message.
    fn source_name(&self) -> String {
        match self {
            Self::File { path, .. } => path.display().to_string(),
            Self::Flag(flag) => format!("command line {flag}"),
        }
    }

    /// ` (line L, column C)` when the position is known, else nothing.
    fn position_suffix(&self) -> String {
        match self {
            Self::File {
                position: Some((line, column)),
                ..
            } => format!(" (line {line}, column {column})"),
            _ => String::new(),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.source_name(), self.position_suffix())
    }
}

/// Why the configuration could not be loaded. Every variant names the file (or flag); the parse
/// and validation variants also name the key path and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A configuration file exists (or was required) but could not be read.
    #[error("{}: cannot read configuration file", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The drop-in directory exists but could not be listed.
    #[error("{}: cannot list drop-in directory", dir.display())]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error(
        "{}: {}{reason} (line {line}, column {column})",
        file.display(),
        key.as_deref().map(|k| format!("{k}: ")).unwrap_or_default()
    )]
    Parse {
        /// The file.
        file: PathBuf,
        /// The key path (`server[0].lifetime`), when the error is inside a key or value.
        key: Option<String>,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What is wrong, as the TOML parser reports it.
        reason: String,
    },
    /// A well-formed value is out of range, malformed or inconsistent with another one.
    #[error("{}: {key}: {reason}{}", origin.source_name(), origin.position_suffix())]
    Invalid {
        /// The file (and position) or flag that set the offending key.
        origin: Origin,
        /// The key path, e.g. `server[0].lifetime`.
        key: String,
        /// What is wrong and what is expected.
        reason: String,
    },
}

/// Loads the configuration files named by `overrides.config` (else `env.default_config`) and
/// their drop-ins, applies the command-line `overrides` and validates the result.
pub fn load(overrides: &Overrides, env: &Environment) -> Result<Settings, ConfigError> {
    let (main, required) = match &overrides.config {
        Some(path) => (path.clone(), true),
        None => (env.default_config.clone(), false),
    };
    let layers = layers::Layers::read(&main, required)?;
    validate::build(layers, &main, overrides, env)
}

impl Settings {
    /// Validates one in-memory TOML document (no drop-ins, no overrides). Errors name the file
    /// `<inline>`. Meant for tests and tools that need real [`Settings`] without files.
    pub fn from_toml(text: &str, env: &Environment) -> Result<Self, ConfigError> {
        let name = Path::new("<inline>");
        let mut layers = layers::Layers::default();
        layers.add(name, text)?;
        validate::build(layers, name, &Overrides::default(), env)
    }
}

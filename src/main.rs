//! The `lwm2md` binary: command line → configuration → logging → a single-threaded tokio
//! runtime running [`lwm2md::runtime::run`]. The only place where `anyhow` is used.
//!
//! Exit codes: 0 after an orderly shutdown, 1 when the daemon fails, 2 for command-line and
//! configuration errors (clap uses 2 for usage errors too), so a unit's `Restart=on-failure`
//! restart loop is easy to tell apart from a configuration that can never start.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use clap::builder::PossibleValuesParser;
use lwm2md::config::{self, Environment, LogLevel, Overrides};

/// LwM2M 1.1 client daemon for Linux edge gateways.
#[derive(Debug, Parser)]
#[command(name = "lwm2md", version, about)]
struct Cli {
    /// Main configuration file; a missing default file is not an error, a missing --config file
    /// is. The config.d/*.toml drop-ins next to it are read too.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Replace the [[server]] list with one server at URI (short server id 1).
    #[arg(long, value_name = "URI")]
    server_uri: Option<String>,
    /// Endpoint client name.
    #[arg(long, value_name = "NAME")]
    endpoint: Option<String>,
    /// State directory.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Log level.
    #[arg(long, value_name = "LEVEL", value_parser = PossibleValuesParser::new(LogLevel::NAMES))]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();

    // Before logging is up (its level comes from the configuration): errors go to stderr,
    // which under systemd is the journal anyway.
    let settings = match load_settings(cli) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("lwm2md: {e:#}");
            return ExitCode::from(2);
        }
    };

    if let Err(e) = lwm2md::logging::init(settings.agent.log_level.to_level_filter()) {
        eprintln!("lwm2md: cannot set up logging: {e}");
        return ExitCode::FAILURE;
    }

    match run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_settings(cli: Cli) -> anyhow::Result<config::Settings> {
    // A relative --state-dir means "relative to where I ran this", which only the binary knows;
    // the configuration requires absolute paths.
    let state_dir = cli
        .state_dir
        .map(|dir| {
            std::path::absolute(&dir).with_context(|| format!("--state-dir {}", dir.display()))
        })
        .transpose()?;
    let overrides = Overrides {
        config: cli.config,
        server_uri: cli.server_uri,
        endpoint: cli.endpoint,
        state_dir,
        log_level: cli.log_level,
    };
    Ok(config::load(&overrides, &Environment::system())?)
}

fn run(settings: config::Settings) -> anyhow::Result<()> {
    // One thread: the daemon is I/O-bound and mostly idle, and a current-thread runtime has no
    // worker threads to wake up (and no Send bounds on the core).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime
        .block_on(lwm2md::runtime::run(
            settings,
            lwm2md::runtime::shutdown_signal(),
        ))
        .context("lwm2md stopped")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_of_the_readme_exists_and_no_other() {
        let readme = include_str!("../README.md");
        let table = &readme[readme
            .find("| Flag | Meaning |")
            .expect("README flag table")..];
        let table = &table[..table.find("\n\n").unwrap_or(table.len())];
        let mut documented: Vec<String> = table
            .lines()
            .skip(2)
            .filter_map(|row| row.split('`').nth(1))
            .flat_map(|flags| flags.split(", "))
            .map(|flag| flag.split(' ').next().unwrap_or_default().to_owned())
            .collect();
        documented.sort();

        let command = Cli::command();
        let mut actual: Vec<String> = command
            .get_arguments()
            .flat_map(|arg| {
                let short = arg.get_short().map(|s| format!("-{s}"));
                let long = arg.get_long().map(|l| format!("--{l}"));
                short.into_iter().chain(long)
            })
            .chain(["-h", "--help", "-V", "--version"].map(String::from))
            .collect();
        actual.sort();
        actual.dedup();
        assert_eq!(documented, actual);
    }

    #[test]
    fn flags_map_onto_overrides() {
        let cli = Cli::try_parse_from([
            "lwm2md",
            "-c",
            "/etc/alt.toml",
            "--server-uri",
            "coap://[::1]",
            "--endpoint",
            "ep",
            "--state-dir",
            "/run/lwm2md",
            "--log-level",
            "debug",
        ])
        .unwrap();
        assert_eq!(
            cli.config.as_deref(),
            Some(std::path::Path::new("/etc/alt.toml"))
        );
        assert_eq!(cli.server_uri.as_deref(), Some("coap://[::1]"));
        assert_eq!(cli.endpoint.as_deref(), Some("ep"));
        assert_eq!(
            cli.state_dir.as_deref(),
            Some(std::path::Path::new("/run/lwm2md"))
        );
        assert_eq!(cli.log_level.as_deref(), Some("debug"));

        let err = Cli::try_parse_from(["lwm2md", "--log-level", "loud"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}

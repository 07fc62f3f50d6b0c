//! Logging through the `log` facade: to the systemd journal when stderr is connected to it,
//! else to stderr as `<LEVEL> <target>: <message> [key=value ...]`.
//!
//! The journal check is `systemd_journal_logger::connected_to_journal()`, which is true only
//! when systemd made stderr the journal stream. `JournalLog` itself has no fallback (it fails
//! where journald is absent, as on development machines), so the choice is made here, once.
//! Key/value pairs of records become upper-cased journal fields (`log::info!(server = 101;
//! "registered")` → `SERVER=101`), which makes the journal filterable by them.
//!
//! **Rule: never log secrets.** Pre-shared keys, private keys, passwords, bearer tokens, and
//! the secret resources of the Security object (/0/x/3, /0/x/5) must never reach a log record
//! at any level, nor a `Debug` impl that a log record could print: log an identity, a length or
//! a fingerprint instead. Journals are persisted and often shipped off the device, so a secret
//! logged once must be considered leaked. Types holding secrets must implement `Debug` by hand
//! and redact them.

use std::fmt::Write as _;
use std::io::{self, Write as _};

use log::{LevelFilter, Log, Metadata, Record};
use systemd_journal_logger::{JournalLog, connected_to_journal};

/// The syslog identifier of our journal entries (`journalctl -t lwm2md`).
const SYSLOG_IDENTIFIER: &str = "lwm2md";

/// Installs the process-wide logger for records up to `level`. Call once, early in `main`;
/// a second call fails because `log` accepts one logger per process.
pub fn init(level: LevelFilter) -> Result<(), log::SetLoggerError> {
    if connected_to_journal() {
        match JournalLog::new() {
            Ok(journal) => {
                journal
                    .with_syslog_identifier(SYSLOG_IDENTIFIER.to_owned())
                    .install()?;
                log::set_max_level(level);
                return Ok(());
            }
            Err(e) => {
                // stderr is the journal stream, so this line still reaches the journal.
                let _ = writeln!(
                    io::stderr(),
                    "WARN lwm2md::logging: cannot open the journal socket ({e}), logging to stderr"
                );
            }
        }
    }
    log::set_boxed_logger(Box::new(StderrLogger { level }))?;
    log::set_max_level(level);
    Ok(())
}

/// Writes one line per record to stderr. No timestamps: under a service manager the collector
/// adds them, and on a terminal they are noise.
struct StderrLogger {
    level: LevelFilter,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            // One write per line so that lines from different threads do not interleave.
            let _ = io::stderr()
                .lock()
                .write_all(format_record(record).as_bytes());
        }
    }

    fn flush(&self) {
        let _ = io::stderr().flush();
    }
}

/// `<LEVEL> <target>: <message>[ key=value...]\n`.
fn format_record(record: &Record<'_>) -> String {
    let mut line = format!("{} {}: {}", record.level(), record.target(), record.args());
    let mut pairs = KeyValues(&mut line);
    // Formatting into a String cannot fail, and neither can this visitor.
    let _ = record.key_values().visit(&mut pairs);
    line.push('\n');
    line
}

struct KeyValues<'a>(&'a mut String);

impl<'kvs> log::kv::VisitSource<'kvs> for KeyValues<'_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_lines_have_level_target_message_and_pairs() {
        let pairs: &[(&str, log::kv::Value<'_>)] =
            &[("server", 101.into()), ("state", "up".into())];
        let line = format_record(
            &Record::builder()
                .level(log::Level::Warn)
                .target("lwm2md::runtime")
                .args(format_args!("registration failed: {}", "timeout"))
                .key_values(&pairs)
                .build(),
        );
        assert_eq!(
            line,
            "WARN lwm2md::runtime: registration failed: timeout server=101 state=up\n"
        );
    }

    #[test]
    fn level_filter_applies() {
        let logger = StderrLogger {
            level: LevelFilter::Info,
        };
        let meta = |level| Metadata::builder().level(level).target("t").build();
        assert!(logger.enabled(&meta(log::Level::Error)));
        assert!(logger.enabled(&meta(log::Level::Info)));
        assert!(!logger.enabled(&meta(log::Level::Debug)));
    }
}

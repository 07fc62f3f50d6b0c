//! The thin tokio layer around the core. **Placeholder owned by the lead**: this stub only
//! declares the daemon-shell modules and a `run` that logs and returns, so that `main` builds;
//! the main loop replaces it.

pub mod notify;
pub mod power;

use crate::config::Settings;

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The state directory could not be opened or written.
    #[error(transparent)]
    Persist(#[from] crate::persist::PersistError),
    /// systemd could not be notified.
    #[error(transparent)]
    Notify(#[from] notify::NotifyError),
}

/// Runs the daemon until shutdown. Stub: logs the configuration summary and returns.
pub async fn run(settings: Settings) -> Result<(), RunError> {
    log::info!(
        "lwm2md {} starting as {} with {} server(s); the main loop is not implemented yet",
        env!("CARGO_PKG_VERSION"),
        settings.agent.endpoint,
        settings.servers.len()
    );
    Ok(())
}

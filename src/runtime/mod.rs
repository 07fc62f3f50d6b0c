//! The thin tokio runtime around the sans-IO core: sockets, timers, signals, effects.

pub mod download;
pub mod driver;
pub mod dtls;
pub mod firmware;
pub mod notify;
pub mod power;
pub mod setup;
pub mod transport;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Notify;

use crate::config::Settings;
use crate::core::client::Client;
use crate::objects::firmware::Firmware;
use crate::persist::Store;

/// The name of the core's state document in the state directory.
const CORE_STATE: &str = "core";

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The state directory could not be opened or read.
    #[error(transparent)]
    Persist(#[from] crate::persist::PersistError),
    /// systemd could not be notified (a malformed NOTIFY_SOCKET).
    #[error(transparent)]
    Notify(#[from] notify::NotifyError),
    /// The OS random number generator failed.
    #[error("cannot seed the random number generator: {0}")]
    Random(String),
    /// The main loop failed.
    #[error(transparent)]
    Drive(#[from] driver::DriveError),
}

/// Runs the daemon until `shutdown` resolves, then de-registers and returns.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    log::info!(
        "lwm2md {} starting as {:?} with {} server(s)",
        env!("CARGO_PKG_VERSION"),
        settings.agent.endpoint,
        settings.servers.len()
    );
    let store = Arc::new(Store::open(&settings.agent.state_dir)?);
    let state = store.load(CORE_STATE)?;
    let seed = setup::random_seed().map_err(RunError::Random)?;
    let (commands_tx, commands) = tokio::sync::mpsc::channel(16);
    let net = setup::host_net(&settings, commands_tx).await;
    let restart = Arc::new(Notify::new());
    let (object, worker, running_version) = match firmware_updates(&settings, &store, &restart) {
        Some(a) => {
            let version = a.running_version();
            let object = Firmware::new(a.object, a.journal, a.boot);
            (Some(object), Some((a.worker, a.slots)), version)
        }
        None => (None, None, None),
    };
    let registry = setup::registry(&settings, net, object, running_version);
    let config = setup::client_config(&settings, seed);
    let client = Client::new(
        config,
        registry,
        Box::new(setup::SystemClock),
        state,
        Instant::now(),
    );
    let notifier = notify::Notifier::from_env()?;
    let executor = Arc::new(setup::HostExecutor::new(settings.device.clone()));
    let mut worker_task = None;
    let firmware = worker.map(|(settings, slots)| {
        let (tx, outcomes) = tokio::sync::mpsc::channel(16);
        let (handle, task) = firmware::spawn(settings, slots, Arc::clone(&store), tx);
        worker_task = Some(task);
        driver::Firmware { handle, outcomes }
    });
    let persister = Box::new(setup::StorePersister::new(Arc::clone(&store), CORE_STATE));
    // A fake machine's reboot stops the daemon like the real one would (orderly, so the
    // server sees a de-registration).
    let stop = async {
        tokio::select! {
            () = shutdown => {}
            () = restart.notified() => log::info!("stopping for the fake machine's reboot"),
        }
    };
    let driven = driver::drive(
        client, executor, persister, &notifier, commands, firmware, stop,
    )
    .await;
    if let Some(task) = worker_task {
        task.stop(std::time::Duration::from_secs(3)).await;
    }
    driven?;
    log::info!("lwm2md stopped");
    Ok(())
}

/// Firmware updates from `[update]`, or `None` (not configured, or the backend cannot be used:
/// then the daemon runs without object 5 rather than not at all, so the device stays
/// manageable and the log says why).
fn firmware_updates(
    settings: &Settings,
    store: &Store,
    restart: &Arc<Notify>,
) -> Option<firmware::Assembled> {
    let update = settings.update.as_ref()?;
    match firmware::assemble(
        update,
        &settings.device,
        &settings.coap,
        store,
        Arc::clone(restart),
    ) {
        Ok(a) => Some(a),
        Err(e) => {
            log::error!("firmware updates are disabled: {e}");
            None
        }
    }
}

/// Resolves on SIGTERM or SIGINT (the daemon's orderly stop).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (term, int) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => log::info!("SIGTERM received"),
                _ = int.recv() => log::info!("SIGINT received"),
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            // Without signal handlers we can only stop on Ctrl-C through tokio's fallback.
            log::error!("cannot install signal handlers: {e}");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

//! The main loop: the one task that owns the core. It feeds the core datagrams, timer expiries,
//! commands and effect outcomes, and carries out what the core asks for. Everything here is
//! mechanism; every decision is the core's.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::transport::{PeerSocket, Received};
use crate::core::client::{Client, Command, Event, Peer, PeerSecurity, ServerStatus, Transmit};
use crate::core::effect::{Effect, EffectId, Outcome};

/// How long shutdown waits for de-registration before leaving anyway (the unit gives us 10 s
/// and the issue asks for 5 s).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// Runs effects that act on the host (reboot, factory reset).
pub trait Executor: Send + Sync + 'static {
    /// Carries out `effect` (never `SaveState`, which goes to the `Persister`).
    fn execute(&self, effect: Effect) -> Pin<Box<dyn Future<Output = Outcome> + Send>>;
}

/// Writes the core's state document.
pub trait Persister: Send + 'static {
    /// Saves `state` durably (atomic replace).
    fn save(&mut self, state: &serde_json::Value) -> Result<(), String>;
}

/// Tells the service manager how we are doing (sd_notify).
pub trait Supervisor {
    /// `READY=1`.
    fn ready(&self);
    /// `STATUS=…`.
    fn status(&self, text: &str);
    /// `WATCHDOG=1`.
    fn watchdog(&self);
    /// `STOPPING=1`.
    fn stopping(&self);
    /// How often to ping the watchdog, if it is enabled.
    fn watchdog_interval(&self) -> Option<Duration>;
}

/// A fatal runtime failure.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The persistence task died.
    #[error("state persistence stopped: {0}")]
    Persist(String),
}

/// Socket state per peer.
enum Link {
    /// Resolving and binding; datagrams wait here.
    Opening(VecDeque<Vec<u8>>),
    /// Ready.
    Open(PeerSocket),
}

/// What background tasks report to the loop.
enum Input {
    Opened(Peer, Result<PeerSocket, String>),
    EffectDone(EffectId, Outcome),
}

/// Drives `client` until `shutdown` resolves and de-registration finished (or the grace period
/// ran out).
pub async fn drive(
    mut client: Client,
    executor: Arc<dyn Executor>,
    persister: Box<dyn Persister>,
    supervisor: &(dyn Supervisor + Sync),
    mut commands: mpsc::Receiver<Command>,
    firmware: Option<Firmware>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DriveError> {
    let (firmware, mut fw_outcomes) = match firmware {
        Some(f) => (Some(f.handle), Some(f.outcomes)),
        None => (None, None),
    };
    let (tx, mut rx) = mpsc::channel::<Input>(256);
    let (dgram_tx, mut dgram_rx) = mpsc::channel::<Received>(256);
    let (persist_tx, persist_task) = spawn_persister(persister);
    let mut links: BTreeMap<Peer, Link> = BTreeMap::new();
    // Where each peer is and how it is secured, to open its link again after a failure.
    let mut peers: BTreeMap<Peer, (String, PeerSecurity)> = BTreeMap::new();
    let mut status = String::new();
    let watchdog = supervisor.watchdog_interval();
    let mut next_ping = watchdog.map(|d| Instant::now() + d);
    let mut exit_at: Option<Instant> = None;
    tokio::pin!(shutdown);
    let mut shutdown_seen = false;
    supervisor.ready();

    loop {
        // 1. Carry out everything the core produced: events first (a Connect must open the link
        //    before the first datagram to that peer), then datagrams, then effects (after the
        //    datagrams, so the answer to an Execute leaves before the reboot it causes).
        let mut stopped = false;
        while let Some(event) = client.poll_event() {
            match event {
                Event::Connect {
                    peer,
                    uri,
                    security,
                } => {
                    peers.insert(peer, (uri.clone(), security.clone()));
                    open_link(&mut links, peer, uri, security, &tx, &dgram_tx);
                }
                Event::Disconnect { peer } => {
                    peers.remove(&peer);
                    links.remove(&peer);
                }
                Event::Stopped => stopped = true,
                Event::Registered { ssid } => log::info!("registered with server {ssid}"),
                Event::Deregistered { ssid } => log::info!("de-registered from server {ssid}"),
                Event::RegistrationFailed { ssid, .. } => {
                    // A server that forgot us (restarted, or a NAT lost its binding) never says
                    // so over DTLS: its answers just stop. So does a server whose address
                    // changed. A fresh link resolves the name again and, for coaps://,
                    // handshakes again, before the core's next attempt.
                    let peer = Peer(ssid);
                    if let Some((uri, security)) = peers.get(&peer).cloned() {
                        log::info!(
                            "server {ssid}: opening the link again (new resolution{})",
                            if uri.to_ascii_lowercase().starts_with("coaps") {
                                ", new DTLS handshake"
                            } else {
                                ""
                            }
                        );
                        open_link(&mut links, peer, uri, security, &tx, &dgram_tx);
                    }
                }
            }
        }
        while let Some(t) = client.poll_transmit() {
            send(&mut links, t, &mut client).await;
        }
        while let Some((id, effect)) = client.poll_effect() {
            match effect {
                Effect::SaveState(state) => {
                    // `watch` keeps only the newest document: states are snapshots, not deltas.
                    let _ = persist_tx.send(Some(state));
                }
                Effect::Firmware(step) => match &firmware {
                    Some(worker) => {
                        if let Some((id, outcome)) = worker.submit(id, step) {
                            client.handle_effect_done(Instant::now(), id, outcome);
                        }
                    }
                    None => client.handle_effect_done(
                        Instant::now(),
                        id,
                        Outcome::Failed("firmware updates are not configured".into()),
                    ),
                },
                other => {
                    let executor = Arc::clone(&executor);
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let outcome = executor.execute(other).await;
                        let _ = tx.send(Input::EffectDone(id, outcome)).await;
                    });
                }
            }
        }
        let now_status = status_line(&client.status());
        if now_status != status {
            status = now_status;
            supervisor.status(&status);
        }
        if stopped || exit_at.is_some_and(|t| Instant::now() >= t) {
            break;
        }

        // 2. Wait for the next input or timer. With nothing pending this sleeps indefinitely:
        //    no polling timers, no idle wake-ups.
        let deadline = [client.poll_timeout(), next_ping, exit_at]
            .into_iter()
            .flatten()
            .min();
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown, if !shutdown_seen => {
                shutdown_seen = true;
                log::info!("shutting down: de-registering");
                supervisor.stopping();
                exit_at = Some(Instant::now() + SHUTDOWN_GRACE);
                client.handle_command(Instant::now(), Command::Shutdown);
            }
            Some(d) = dgram_rx.recv() => client.handle_datagram(Instant::now(), d.peer, &d.data),
            Some(command) = commands.recv() => client.handle_command(Instant::now(), command),
            Some((id, outcome)) = recv_opt(&mut fw_outcomes) => client.handle_effect_done(Instant::now(), id, outcome),
            Some(input) = rx.recv() => match input {
                Input::Opened(peer, Ok(socket)) => {
                    log::info!("{peer}: using {}", socket.remote());
                    let queued = match links.insert(peer, Link::Open(socket.clone())) {
                        Some(Link::Opening(q)) => q,
                        _ => VecDeque::new(),
                    };
                    for data in queued {
                        if let Err(e) = socket.send(&data).await {
                            log::warn!("{peer}: send failed: {e}");
                        }
                    }
                }
                Input::Opened(peer, Err(e)) => {
                    log::warn!("{peer}: cannot reach it: {e}");
                    links.remove(&peer);
                    client.handle_unreachable(Instant::now(), peer);
                }
                Input::EffectDone(id, outcome) => client.handle_effect_done(Instant::now(), id, outcome),
            },
            () = sleep => {
                let now = Instant::now();
                client.handle_timeout(now);
                if let (Some(at), Some(every)) = (next_ping, watchdog)
                    && now >= at {
                        // Pinged from the loop itself: a wedged loop stops the pings and systemd
                        // restarts us.
                        supervisor.watchdog();
                        next_ping = Some(now + every);
                    }
            }
        }
    }
    // Let the last state reach the disk before we leave.
    drop(persist_tx);
    persist_task
        .await
        .map_err(|e| DriveError::Persist(e.to_string()))?;
    Ok(())
}

/// The firmware worker as the driver sees it: where steps go and where their outcomes come from.
#[derive(Debug)]
pub struct Firmware {
    /// Submits steps.
    pub handle: super::firmware::FirmwareHandle,
    /// Outcomes of submitted steps.
    pub outcomes: mpsc::Receiver<(EffectId, Outcome)>,
}

/// Receives from an optional channel (pending forever when there is none).
async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Starts opening the socket for `peer` (resolution happens in the background).
fn open_link(
    links: &mut BTreeMap<Peer, Link>,
    peer: Peer,
    uri: String,
    security: PeerSecurity,
    tx: &mpsc::Sender<Input>,
    dgram_tx: &mpsc::Sender<Received>,
) {
    links.insert(peer, Link::Opening(VecDeque::new()));
    let tx = tx.clone();
    let dgram_tx = dgram_tx.clone();
    tokio::spawn(async move {
        let result = PeerSocket::open(peer, &uri, &security, dgram_tx)
            .await
            .map_err(|e| format!("{uri}: {e}"));
        let _ = tx.send(Input::Opened(peer, result)).await;
    });
}

async fn send(links: &mut BTreeMap<Peer, Link>, t: Transmit, client: &mut Client) {
    match links.get_mut(&t.peer) {
        Some(Link::Open(socket)) => {
            if let Err(e) = socket.send(&t.data).await {
                // Retransmission covers transient errors (e.g. no route while the link comes up).
                log::debug!("{}: send failed: {e}", t.peer);
            }
        }
        Some(Link::Opening(queue)) => {
            // Bounded: the core retransmits anyway, so old copies can go.
            if queue.len() >= 32 {
                queue.pop_front();
            }
            queue.push_back(t.data);
        }
        None => {
            log::debug!("no link to {}; reporting it unreachable", t.peer);
            client.handle_unreachable(Instant::now(), t.peer);
        }
    }
}

/// Persists on a blocking thread so fsync never stalls the protocol; newest snapshot wins.
fn spawn_persister(
    mut persister: Box<dyn Persister>,
) -> (
    watch::Sender<Option<serde_json::Value>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = watch::channel::<Option<serde_json::Value>>(None);
    let task = tokio::spawn(async move {
        loop {
            let changed = rx.changed().await;
            let state = rx.borrow_and_update().clone();
            if let Some(state) = state {
                let result = tokio::task::spawn_blocking(move || {
                    let r = persister.save(&state);
                    (persister, r)
                })
                .await;
                match result {
                    Ok((p, r)) => {
                        persister = p;
                        if let Err(e) = r {
                            log::error!("saving state failed (will retry on the next change): {e}");
                        }
                    }
                    Err(e) => {
                        log::error!("state writer crashed: {e}");
                        return;
                    }
                }
            }
            if changed.is_err() {
                return; // sender dropped: the newest state has been written
            }
        }
    });
    (tx, task)
}

/// `STATUS=` text: e.g. `registered with 1/1 servers (1: registered)`.
fn status_line(servers: &[ServerStatus]) -> String {
    // ssid 0 is the Bootstrap-Server, listed while a bootstrap is under way.
    let dm = servers.iter().filter(|s| s.ssid != 0).count();
    let registered = servers.iter().filter(|s| s.state == "registered").count();
    let detail: Vec<String> = servers
        .iter()
        .map(|s| match s.ssid {
            0 => s.state.to_string(),
            ssid => format!("{ssid}: {}", s.state),
        })
        .collect();
    format!(
        "registered with {registered}/{dm} servers ({})",
        detail.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_counts_registrations() {
        let s = status_line(&[
            ServerStatus {
                ssid: 1,
                state: "registered",
            },
            ServerStatus {
                ssid: 2,
                state: "waiting",
            },
        ]);
        assert_eq!(s, "registered with 1/2 servers (1: registered, 2: waiting)");
    }
}

//! A DTLS link to one server that stays usable: it handshakes, re-handshakes with back-off
//! whenever the association is lost, resolves the server's name again before each handshake
//! (a server whose address changed gets a new handshake at its new address), and holds back
//! the datagrams sent while no association is up.

use std::collections::VecDeque;
use std::net::SocketAddr;

use tokio::sync::mpsc;

use super::session::{Credentials, DtlsError, DtlsSession, DtlsSettings, backoff};

/// Largest datagram we accept.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams queued towards the link (the main loop never waits: beyond this they are dropped
/// and the CoAP layer's retransmission resends them).
const OUTGOING: usize = 32;
/// Datagrams held back while re-handshaking (the newest are kept).
const HELD: usize = 16;

/// Where the link's events go.
#[derive(Debug)]
pub enum LinkEvent {
    /// A decrypted datagram from the server.
    Datagram(Vec<u8>),
    /// A handshake completed (the first, or after a loss).
    Up(SocketAddr),
    /// A handshake or the association failed; the link retries after `retry_in`.
    Down {
        /// Why.
        error: DtlsError,
        /// The wait before the next handshake.
        retry_in: std::time::Duration,
    },
}

/// The sending side of a running link; dropping it ends the link (with close_notify).
#[derive(Debug, Clone)]
pub struct DtlsLink {
    tx: mpsc::Sender<Vec<u8>>,
}

impl DtlsLink {
    /// Starts the link to `host:port` on the current runtime.
    pub fn spawn(
        host: String,
        port: u16,
        creds: Credentials,
        settings: DtlsSettings,
        events: mpsc::Sender<LinkEvent>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(OUTGOING);
        tokio::spawn(run(host, port, creds, settings, rx, events));
        Self { tx }
    }

    /// Queues one datagram; never waits. False when it had to be dropped.
    pub fn send(&self, data: Vec<u8>) -> bool {
        self.tx.try_send(data).is_ok()
    }
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, DtlsError> {
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| DtlsError::Socket(format!("{host}: {e}")))?
        .next()
        .ok_or_else(|| DtlsError::Socket(format!("{host} does not resolve")))
}

fn hold(held: &mut VecDeque<Vec<u8>>, data: Vec<u8>) {
    if held.len() == HELD {
        held.pop_front();
    }
    held.push_back(data);
}

async fn run(
    host: String,
    port: u16,
    creds: Credentials,
    settings: DtlsSettings,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    events: mpsc::Sender<LinkEvent>,
) {
    let mut held = VecDeque::new();
    let mut failures = 0u32;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let connected = match resolve(&host, port).await {
            Ok(peer) => DtlsSession::connect(peer, &creds, &settings).await,
            Err(e) => Err(e),
        };
        let session = match connected {
            Ok(s) => s,
            Err(error) => {
                let retry_in = backoff(&settings, failures);
                failures = failures.saturating_add(1);
                log::warn!("dtls: {error}; next handshake in {retry_in:?}");
                if events
                    .send(LinkEvent::Down { error, retry_in })
                    .await
                    .is_err()
                {
                    return;
                }
                // Wait, keeping what is sent meanwhile (the newest few).
                let wake = tokio::time::sleep(retry_in);
                tokio::pin!(wake);
                loop {
                    tokio::select! {
                        () = &mut wake => break,
                        data = outgoing.recv() => match data {
                            Some(d) => hold(&mut held, d),
                            None => return,
                        },
                    }
                }
                continue;
            }
        };
        failures = 0;
        log::info!(
            "dtls: association with {host} ({}) established",
            session.peer()
        );
        if events.send(LinkEvent::Up(session.peer())).await.is_err() {
            session.close().await;
            return;
        }
        let lost = serve(&session, &mut held, &mut outgoing, &events, &mut buf).await;
        match lost {
            None => {
                session.close().await;
                return;
            }
            Some(error) => {
                log::warn!("dtls: {error}; handshaking again");
                let retry_in = std::time::Duration::ZERO;
                if events
                    .send(LinkEvent::Down { error, retry_in })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Moves datagrams both ways until the association is lost (`Some`) or the link is dropped.
async fn serve(
    session: &DtlsSession,
    held: &mut VecDeque<Vec<u8>>,
    outgoing: &mut mpsc::Receiver<Vec<u8>>,
    events: &mpsc::Sender<LinkEvent>,
    buf: &mut [u8],
) -> Option<DtlsError> {
    while let Some(data) = held.pop_front() {
        if let Err(e) = session.send(&data).await {
            hold(held, data);
            return Some(e);
        }
    }
    loop {
        tokio::select! {
            data = outgoing.recv() => {
                let data = data?;
                if let Err(e) = session.send(&data).await {
                    hold(held, data);
                    return Some(e);
                }
            }
            got = session.recv(buf) => match got {
                Ok(n) => {
                    let datagram = buf.get(..n).map(<[u8]>::to_vec).unwrap_or_default();
                    events.send(LinkEvent::Datagram(datagram)).await.ok()?;
                }
                Err(e) => return Some(e),
            },
        }
    }
}

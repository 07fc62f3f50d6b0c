//! A minimal LwM2M server for the demo: accepts registrations on /rd, sends device-management
//! requests to the registered client (with retransmission and Block2 reassembly), collects
//! notifications and serves firmware files for pulls (`/fw/…`, see `files`). Not a product: just
//! enough to show the agent at work.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lwm2md::core::coap::block::BlockOpt;
use lwm2md::core::coap::codec;
use lwm2md::core::coap::message::{Code, Message, MsgType, opt};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::files::{self, Files};

/// Something the client did on its own initiative.
#[derive(Debug)]
pub(crate) enum ServerEvent {
    /// POST /rd.
    Registered {
        /// Uri-Query items (`ep=…`, `lt=…`).
        query: Vec<String>,
        /// The link-format object list.
        links: String,
    },
    /// POST /rd/<id>.
    Updated {
        /// Uri-Query items (empty for a plain Update).
        query: Vec<String>,
    },
    /// DELETE /rd/<id>.
    Deregistered,
    /// A notification for an observation.
    Notification {
        /// Its Observe value.
        observe: u64,
        /// The payload.
        payload: Vec<u8>,
    },
}

#[derive(Default)]
struct Shared {
    client: Option<SocketAddr>,
    pending: HashMap<Vec<u8>, oneshot::Sender<Message>>,
    observations: Vec<Vec<u8>>,
    files: Files,
}

/// The demo server.
pub(crate) struct DemoServer {
    socket: Arc<UdpSocket>,
    shared: Arc<Mutex<Shared>>,
    events: mpsc::Receiver<ServerEvent>,
    next_mid: u16,
    next_token: u64,
}

impl DemoServer {
    /// Binds to an ephemeral port on loopback and starts serving.
    pub(crate) async fn start() -> std::io::Result<Self> {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (tx, events) = mpsc::channel(64);
        tokio::spawn(serve(Arc::clone(&socket), Arc::clone(&shared), tx));
        Ok(Self {
            socket,
            shared,
            events,
            next_mid: 0x4000,
            next_token: 0x00de_0000,
        })
    }

    /// The port we listen on.
    pub(crate) fn port(&self) -> u16 {
        self.socket.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Offers `bytes` for download at `coap://127.0.0.1:<port>/fw/<name>`; returns the counter
    /// of bytes sent so far.
    pub(crate) fn serve_file(&self, name: &str, bytes: Vec<u8>) -> Arc<AtomicU64> {
        match self.shared.lock() {
            Ok(mut s) => s.files.add(name, bytes),
            // Only a panic in the server task poisons the lock; the download then fails visibly.
            Err(_) => Arc::new(AtomicU64::new(0)),
        }
    }

    /// The next thing the client did, if it happens within `within`.
    pub(crate) async fn next_event(&mut self, within: Duration) -> Option<ServerEvent> {
        tokio::time::timeout(within, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Sends `msg` to the registered client as a confirmable request and returns the complete
    /// response (following Block2 blocks if the answer is large).
    pub(crate) async fn request(&mut self, mut msg: Message) -> Result<Message, String> {
        let mut body = Vec::new();
        let mut num = 0u32;
        loop {
            let resp = self.exchange(msg.clone()).await?;
            let block = resp
                .option(opt::BLOCK2)
                .and_then(|b| BlockOpt::decode(b).ok());
            body.extend_from_slice(&resp.payload);
            match block {
                Some(b) if b.more => {
                    num += 1;
                    let next = BlockOpt::new(num, false, b.szx)
                        .encode()
                        .map_err(|e| e.to_string())?;
                    msg.set_option(opt::BLOCK2, next);
                    msg.remove_option(opt::OBSERVE);
                }
                _ => {
                    let mut whole = resp;
                    whole.payload = body;
                    return Ok(whole);
                }
            }
        }
    }

    /// Starts an observation of `path`; notifications arrive as `ServerEvent::Notification`.
    pub(crate) async fn observe(
        &mut self,
        path: &str,
        accept: Option<u16>,
    ) -> Result<(Message, Vec<u8>), String> {
        let mut msg = get(path, accept);
        msg.set_uint_option(opt::OBSERVE, 0);
        let token = self.token();
        msg.token = token.clone();
        if let Ok(mut s) = self.shared.lock() {
            s.observations.push(token.clone());
        }
        let resp = self.exchange(msg).await?;
        Ok((resp, token))
    }

    /// Cancels an observation with a GET carrying Observe = 1 and the same token.
    pub(crate) async fn cancel(&mut self, path: &str, token: Vec<u8>) -> Result<Message, String> {
        if let Ok(mut s) = self.shared.lock() {
            s.observations.retain(|t| *t != token);
        }
        let mut msg = get(path, None);
        msg.set_uint_option(opt::OBSERVE, 1);
        msg.token = token;
        self.exchange(msg).await
    }

    fn token(&mut self) -> Vec<u8> {
        self.next_token += 1;
        self.next_token.to_be_bytes()[4..].to_vec()
    }

    /// One CON exchange with RFC 7252 retransmission (2 s, doubling, 4 retries).
    pub(crate) async fn exchange(&mut self, mut msg: Message) -> Result<Message, String> {
        let client = self
            .shared
            .lock()
            .ok()
            .and_then(|s| s.client)
            .ok_or("no client registered")?;
        self.next_mid = self.next_mid.wrapping_add(1);
        msg.mid = self.next_mid;
        msg.mtype = MsgType::Con;
        if msg.token.is_empty() {
            msg.token = self.token();
        }
        let (tx, mut rx) = oneshot::channel();
        if let Ok(mut s) = self.shared.lock() {
            s.pending.insert(msg.token.clone(), tx);
        }
        let bytes = codec::encode(&msg).map_err(|e| e.to_string())?;
        let mut wait = Duration::from_secs(2);
        for _ in 0..5 {
            self.socket
                .send_to(&bytes, client)
                .await
                .map_err(|e| e.to_string())?;
            match tokio::time::timeout(wait, &mut rx).await {
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(_)) => return Err("server task stopped".into()),
                Err(_) => wait *= 2,
            }
        }
        Err("the client did not answer".into())
    }
}

/// A GET for `path` with an optional Accept.
pub(crate) fn get(path: &str, accept: Option<u16>) -> Message {
    let mut msg = Message::request(Code::GET);
    msg.set_uri_path(path);
    if let Some(a) = accept {
        msg.set_uint_option(opt::ACCEPT, u64::from(a));
    }
    msg
}

async fn serve(
    socket: Arc<UdpSocket>,
    shared: Arc<Mutex<Shared>>,
    events: mpsc::Sender<ServerEvent>,
) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(msg) = codec::decode(&buf[..n]) else {
            continue;
        };
        if msg.code.is_request() {
            let (reply, event) = answer(&msg, &shared);
            if matches!(event, Some(ServerEvent::Registered { .. }))
                && let Ok(mut s) = shared.lock()
            {
                s.client = Some(from);
            }
            if let Ok(bytes) = codec::encode(&reply) {
                let _ = socket.send_to(&bytes, from).await;
            }
            if let Some(e) = event {
                let _ = events.send(e).await;
            }
            continue;
        }
        if msg.mtype == MsgType::Con {
            // A separate response or a confirmable notification: acknowledge it.
            let mut ack = Message::new(MsgType::Ack, Code::EMPTY);
            ack.mid = msg.mid;
            if let Ok(bytes) = codec::encode(&ack) {
                let _ = socket.send_to(&bytes, from).await;
            }
        }
        if msg.code == Code::EMPTY {
            continue;
        }
        let (waiter, observed) = match shared.lock() {
            Ok(mut s) => (
                s.pending.remove(&msg.token),
                s.observations.contains(&msg.token),
            ),
            Err(_) => continue,
        };
        match waiter {
            Some(w) => {
                let _ = w.send(msg);
            }
            None if observed => {
                let observe = msg.observe().ok().flatten().map_or(0, u64::from);
                let _ = events
                    .send(ServerEvent::Notification {
                        observe,
                        payload: msg.payload,
                    })
                    .await;
            }
            None => {}
        }
    }
}

/// Answers a request: file downloads under `/fw`, else the registration interface. Returns the
/// piggy-backed answer and the event.
fn answer(msg: &Message, shared: &Mutex<Shared>) -> (Message, Option<ServerEvent>) {
    let path = msg.uri_path().unwrap_or_default();
    if path.first() == Some(&files::PREFIX) {
        let body = match shared.lock() {
            Ok(s) => s.files.answer(msg, &path),
            Err(_) => Message::response(Code::INTERNAL_SERVER_ERROR),
        };
        return (reply_to(msg, body), None);
    }
    registration(msg, &path)
}

/// Handles the registration interface.
fn registration(msg: &Message, path: &[&str]) -> (Message, Option<ServerEvent>) {
    let query: Vec<String> = msg
        .uri_query()
        .unwrap_or_default()
        .into_iter()
        .map(str::to_string)
        .collect();
    let (code, event, location) = match (msg.code, path) {
        (Code::POST, ["rd"]) => {
            let links = String::from_utf8_lossy(&msg.payload).into_owned();
            (
                Code::CREATED,
                Some(ServerEvent::Registered { query, links }),
                true,
            )
        }
        (Code::POST, ["rd", "demo"]) => {
            (Code::CHANGED, Some(ServerEvent::Updated { query }), false)
        }
        (Code::DELETE, ["rd", "demo"]) => (Code::DELETED, Some(ServerEvent::Deregistered), false),
        _ => (Code::NOT_FOUND, None, false),
    };
    let mut body = Message::response(code);
    if location {
        body.add_option(opt::LOCATION_PATH, b"rd".to_vec());
        body.add_option(opt::LOCATION_PATH, b"demo".to_vec());
    }
    (reply_to(msg, body), event)
}

/// `body` as the piggy-backed answer to `msg` (ACK to a CON, NON to a NON; same MID and token).
fn reply_to(msg: &Message, mut body: Message) -> Message {
    body.mtype = if msg.mtype == MsgType::Con {
        MsgType::Ack
    } else {
        MsgType::Non
    };
    body.mid = msg.mid;
    body.token = msg.token.clone();
    body
}

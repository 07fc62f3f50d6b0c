//! `coap://` pull: Block2 GETs (RFC 7959) on a UDP socket of the download's own, through our
//! sans-IO [`Endpoint`] (CON retransmission, message IDs, tokens) and [`Block2Download`]
//! (block bookkeeping, ETag check, late size negotiation).
//!
//! Resume: a new [`Block2Download`] asks for the block holding byte `next − 1` (or block 0) with
//! the ETag known so far, and [`Delivery`] drops the bytes already delivered. Asking for the
//! block *before* `next` costs one block per resume but means a resume exactly at the end of the
//! representation gets the last block (M = 0) instead of a 4.02 for a block that does not exist,
//! so it ends cleanly, as HTTP's 416 at EOF does.
//!
//! The socket is kept across attempts of one fetch: the server may keep per-client transfer
//! state (libcoap keeps the body and the ETag of a transfer per session). It is replaced after a
//! socket error, and after [`REQUESTS_PER_SOCKET`] requests, because message IDs must not repeat
//! towards one endpoint within EXCHANGE_LIFETIME (RFC 7252 §4.4): with 65 536 IDs per 247 s a
//! single socket cannot move more than ~264 blocks/s for long, while a new source port is a new
//! endpoint with a fresh ID space.

use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::retry::Retry;
use super::sink::Delivery;
use super::{DownloadConfig, DownloadError, FetchMeta, FetchRequest};
use crate::core::coap::block::MAX_SZX;
use crate::core::coap::blockwise::{Block2Download, BlockwiseError};
use crate::core::coap::endpoint::{Endpoint, EndpointEvent};
use crate::core::coap::message::{Code, Message, opt};
use crate::runtime::dtls::{Credentials, DtlsError, DtlsSession, DtlsSettings};
use crate::runtime::transport::{CoapUri, UriError};

/// Requests on one socket before a fresh one is used. The endpoint's message-ID allocator
/// guarantees at least 65 280 IDs per EXCHANGE_LIFETIME; stay well below.
pub(super) const REQUESTS_PER_SOCKET: u32 = 60_000;

/// Largest datagram we accept.
const MAX_DATAGRAM: usize = 65_535;

/// A parsed `coap://` URI: where to send, and the request options that name the resource
/// (RFC 7252 §6.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    host: String,
    port: u16,
    /// `coaps://`: over DTLS.
    secure: bool,
    /// Uri-Host, Uri-Path and Uri-Query options.
    options: Vec<(u16, Vec<u8>)>,
}

impl Target {
    /// Parses `coap://host[:port][/path][?query]`; percent-escapes are decoded per option.
    pub(super) fn parse(uri: &str) -> Result<Self, DownloadError> {
        let base = CoapUri::parse(uri).map_err(|e| match e {
            UriError::Scheme(s) => DownloadError::UnsupportedScheme(s),
            other => DownloadError::InvalidUri(other.to_string()),
        })?;
        let invalid = |why: &str| DownloadError::InvalidUri(format!("{uri:?}: {why}"));
        if uri.contains('#') {
            // RFC 7252 §6.4 step 4: a fragment makes the URI unusable for a request.
            return Err(invalid("fragment not allowed"));
        }
        if uri.chars().any(|c| !c.is_ascii_graphic()) {
            return Err(invalid("spaces, controls or non-ASCII characters"));
        }
        let rest = uri.split_once("://").map_or("", |(_, rest)| rest);
        let after_authority = rest.find(['/', '?']).map_or("", |at| &rest[at..]);
        let (path, query) = match after_authority.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (after_authority, None),
        };
        let mut options = Vec::new();
        // Step 5: a host name (not an IP literal) goes into Uri-Host, for virtual servers.
        if base.host.parse::<std::net::IpAddr>().is_err() {
            options.push((opt::URI_HOST, base.host.to_ascii_lowercase().into_bytes()));
        }
        // Step 8: "" and "/" mean no Uri-Path; otherwise every segment, empty ones included.
        if !path.is_empty() && path != "/" {
            for segment in path.trim_start_matches('/').split('/') {
                let value = percent_decode(segment).ok_or_else(|| invalid("bad %-escape"))?;
                options.push((opt::URI_PATH, value));
            }
        }
        if let Some(query) = query {
            for arg in query.split('&') {
                let value = percent_decode(arg).ok_or_else(|| invalid("bad %-escape"))?;
                options.push((opt::URI_QUERY, value));
            }
        }
        Ok(Self {
            secure: base.scheme == "coaps",
            host: base.host,
            port: base.port,
            options,
        })
    }

    /// The GET every block request is made from (the endpoint adds a fresh token to each).
    fn template(&self) -> Message {
        let mut msg = Message::request(Code::GET);
        for (number, value) in &self.options {
            msg.add_option(*number, value.clone());
        }
        msg
    }

    async fn resolve(&self) -> Result<SocketAddr, String> {
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("{}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", self.host))
    }
}

/// RFC 3986 percent-decoding of one path segment or query argument (`None`: a malformed escape).
fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(out)
}

/// How an attempt ended, when it did not finish the fetch.
#[derive(Debug)]
enum Failure {
    /// Retry with back-off; give up with this error when the retries are used up.
    Transient(DownloadError),
    /// Give up now.
    Fatal(DownloadError),
}

/// What the server has told us about the representation so far.
#[derive(Debug)]
struct Known {
    etag: Option<Vec<u8>>,
    total: Option<u64>,
    /// Block size exponent, lowered when the server answers with smaller blocks.
    szx: u8,
}

/// Fetches `req.uri` (a `coap://` URI) into `delivery`.
pub(super) async fn fetch(
    req: &FetchRequest,
    config: &DownloadConfig,
    delivery: &mut Delivery,
    retry: &mut Retry,
    seed: u64,
) -> Result<FetchMeta, DownloadError> {
    let target = Target::parse(&req.uri)?;
    let credentials = match target.secure {
        false => None,
        true => Some(
            config
                .coaps_credentials(&req.uri, &target.host)
                .ok_or_else(|| {
                    DownloadError::UnsupportedScheme(format!(
                        "coaps (no [[update.coaps]] credentials for {})",
                        req.uri
                    ))
                })?,
        ),
    };
    let mut known = Known {
        etag: req.etag.clone(),
        total: None,
        szx: config.block_szx.min(MAX_SZX),
    };
    let mut link: Option<Link> = None;
    let mut sockets = 0u64;
    loop {
        let before = delivery.next();
        let failure = match attempt(
            &target,
            credentials.as_ref(),
            config,
            delivery,
            &mut known,
            &mut link,
            || {
                sockets += 1;
                seed.wrapping_add(sockets)
            },
        )
        .await
        {
            Ok(()) => {
                return Ok(FetchMeta {
                    etag: known.etag,
                    total: known.total,
                });
            }
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Transient(e)) => e,
        };
        retry
            .after_failure(failure, delivery.next() > before)
            .await?;
    }
}

/// One attempt: blocks from `delivery.next()` on until the end, a failure, or the idle timeout.
async fn attempt(
    target: &Target,
    credentials: Option<&Credentials>,
    config: &DownloadConfig,
    delivery: &mut Delivery,
    known: &mut Known,
    link: &mut Option<Link>,
    mut next_seed: impl FnMut() -> u64,
) -> Result<(), Failure> {
    let template = target.template();
    let resume_at = delivery.next().saturating_sub(1);
    let mut dl = Block2Download::resume(resume_at, known.szx, known.etag.clone());
    let mut first = true;
    loop {
        if delivery.is_done() {
            return Ok(());
        }
        if link.as_ref().is_some_and(Link::worn_out) {
            *link = None;
        }
        let l = match link {
            Some(l) => l,
            None => {
                let opened = tokio::time::timeout(
                    config.connect_timeout,
                    Link::open(target, credentials, config, next_seed()),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(DownloadError::InvalidUri(format!(
                        "{}: name resolution timed out",
                        target.host
                    )))
                });
                // Even an unresolvable host is retried before it counts as an invalid URI: a
                // gateway whose cellular link is still coming up fails DNS for a while.
                link.insert(opened.map_err(Failure::Transient)?)
            }
        };
        // The first answer of an attempt may take the connect timeout (a server that is
        // waking up); after that no block may take longer than the idle timeout.
        let patience = if first {
            config.connect_timeout
        } else {
            config.idle_timeout
        };
        let response = match l.exchange(dl.next_request(&template), patience).await {
            Ok(msg) => msg,
            Err(lost) => {
                if lost.broken_socket {
                    *link = None;
                }
                return Err(Failure::Transient(DownloadError::ConnectionLost(lost.why)));
            }
        };
        first = false;
        let chunk = match dl.on_response(&response) {
            Ok(chunk) => chunk,
            Err(BlockwiseError::EtagChanged) => {
                return Err(Failure::Fatal(DownloadError::EtagChanged));
            }
            Err(BlockwiseError::Peer(code)) => return Err(peer_error(code)),
            // A response that does not fit (wrong block, bad length): a confused or restarted
            // server; a new attempt starts clean.
            Err(other) => {
                return Err(Failure::Transient(DownloadError::ConnectionLost(format!(
                    "unexpected answer: {other}"
                ))));
            }
        };
        if known.etag.is_none() {
            known.etag = dl.etag().map(<[u8]>::to_vec);
        }
        known.total = dl.total().or(known.total);
        known.szx = dl.szx();
        delivery
            .offer(chunk.offset, chunk.data)
            .await
            .map_err(Failure::Fatal)?;
        if chunk.last {
            return Ok(());
        }
    }
}

/// The failure an error code means: 4.04 → InvalidUri; 5.xx → retried (the server may be
/// overloaded or restarting), then Refused; any other 4.xx → Refused.
fn peer_error(code: Code) -> Failure {
    let text = format!("CoAP {code}");
    match code.class() {
        _ if code == Code::NOT_FOUND => Failure::Fatal(DownloadError::InvalidUri(text)),
        5 => Failure::Transient(DownloadError::Refused(text)),
        _ => Failure::Fatal(DownloadError::Refused(text)),
    }
}

/// Why an exchange failed.
#[derive(Debug)]
struct Lost {
    why: String,
    /// The socket itself failed: open a new one before the next attempt.
    broken_socket: bool,
}

/// The datagram socket of a link: plain UDP, or a DTLS association for `coaps://`.
///
/// Plain UDP is watched for readability only. Why not tokio's `UdpSocket`: it registers for
/// writability too, and on loopback every sent datagram is followed by a write-space edge, so
/// each block request woke the runtime once for nothing before its response arrived (one more
/// `epoll_wait` per block than libcoap's client). A UDP send does not wait for buffer space
/// anyway: one that finds the buffer full is a lost datagram, which the endpoint retransmits.
#[derive(Debug)]
enum Socket {
    Udp(AsyncFd<std::net::UdpSocket>),
    /// Boxed: an association is large, and a link holds one or the other.
    Dtls(Box<DtlsSession>),
}

/// Registers `socket` with the runtime for readability only.
///
/// `AsyncFd::with_interest` is deprecated because a generic `T` may return a different (or a
/// closed) descriptor from `as_raw_fd` during the registration's lifetime, which the `unsafe`
/// replacement makes the caller promise not to do. A `std::net::UdpSocket` owns its descriptor
/// and always returns that one, so the promise holds; the crate forbids `unsafe`, so the
/// deprecated safe form is used.
#[allow(deprecated)]
fn watch_readable(socket: std::net::UdpSocket) -> std::io::Result<AsyncFd<std::net::UdpSocket>> {
    AsyncFd::with_interest(socket, Interest::READABLE)
}

impl Socket {
    async fn send(&self, data: &[u8]) -> Result<(), String> {
        match self {
            Self::Udp(s) => s
                .get_ref()
                .send(data)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Self::Dtls(s) => s.send(data).await.map_err(|e| e.to_string()),
        }
    }

    /// One datagram; `Err(fatal)` where `fatal` says whether the socket is unusable now (a
    /// lost DTLS association: the next attempt needs a new handshake).
    async fn recv(&self, buf: &mut [u8]) -> Result<usize, (String, bool)> {
        match self {
            Self::Udp(s) => s
                .async_io(Interest::READABLE, |socket| socket.recv(buf))
                .await
                .map_err(|e| (e.to_string(), false)),
            Self::Dtls(s) => s.recv(buf).await.map_err(|e| (e.to_string(), true)),
        }
    }
}

/// A socket towards the server with the endpoint that runs the message layer on it.
#[derive(Debug)]
struct Link {
    socket: Socket,
    endpoint: Endpoint,
    requests: u32,
    buf: Vec<u8>,
    /// The wake-up for the endpoint's timers and the patience, kept across exchanges (see
    /// `exchange`).
    alarm: Alarm,
}

/// A sleep that is only moved earlier, or re-armed once it went off.
///
/// Why: tokio's timer wakes its own driver (a write to its eventfd, then a spurious return
/// from `epoll_wait` and a failed `recvfrom`) whenever a timer is set earlier than the earliest
/// one it knows. A new sleep per block request, at the retransmission timer's random 2–3 s,
/// did that for about half of the blocks of a CoAP pull. Waking up early is harmless (the
/// endpoint's timers are checked, nothing is due, the alarm is re-armed), so the alarm stays at
/// the earliest deadline asked for until it goes off: about one re-arm per ACK_TIMEOUT.
#[derive(Debug)]
struct Alarm {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The deadline `sleep` is set to; `None` once it went off.
    armed: Option<tokio::time::Instant>,
}

impl Alarm {
    fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            armed: None,
        }
    }

    /// Makes sure the alarm goes off at `wake` or earlier.
    fn at_or_before(&mut self, wake: tokio::time::Instant) {
        if self.armed.is_none_or(|armed| wake < armed) {
            self.sleep.as_mut().reset(wake);
            self.armed = Some(wake);
        }
    }

    /// Goes off at the deadline set last.
    async fn ring(&mut self) {
        (&mut self.sleep).await;
        self.armed = None;
    }
}

impl Link {
    /// Resolves the server (a failure is `InvalidUri`) and opens a connected socket to it.
    async fn open(
        target: &Target,
        credentials: Option<&Credentials>,
        config: &DownloadConfig,
        seed: u64,
    ) -> Result<Self, DownloadError> {
        let remote = target.resolve().await.map_err(DownloadError::InvalidUri)?;
        let lost = |e: String| DownloadError::ConnectionLost(e);
        if let Some(credentials) = credentials {
            let settings = DtlsSettings {
                handshake_timeout: config.connect_timeout,
                ..DtlsSettings::default()
            };
            let session = DtlsSession::connect(remote, credentials, &settings)
                .await
                .map_err(|e| match e {
                    // A certificate or key the server refuses will not change on a retry, but
                    // a server that is not up yet looks the same as a wrong PSK (no answer):
                    // both are retried, and reported as TLS failures when the retries run out.
                    DtlsError::Handshake { .. } | DtlsError::Timeout { .. } => {
                        DownloadError::Tls(e.to_string())
                    }
                    other => lost(other.to_string()),
                })?;
            log::debug!("download: coaps association with {remote}");
            return Ok(Self {
                socket: Socket::Dtls(Box::new(session)),
                endpoint: Endpoint::new(config.coap.clone(), seed),
                requests: 0,
                buf: vec![0; MAX_DATAGRAM],
                alarm: Alarm::new(),
            });
        }
        let local: SocketAddr = if remote.is_ipv6() {
            SocketAddr::from(([0u16; 8], 0))
        } else {
            SocketAddr::from(([0u8; 4], 0))
        };
        // Binding and connecting a UDP socket never wait (connect only sets the peer).
        let socket = std::net::UdpSocket::bind(local).map_err(|e| lost(format!("bind: {e}")))?;
        // Connected: only the server's datagrams reach us, and ICMP errors are reported.
        socket
            .connect(remote)
            .map_err(|e| lost(format!("connect to {remote}: {e}")))?;
        log::debug!("download: coap socket {:?} → {remote}", socket.local_addr());
        let socket = socket
            .set_nonblocking(true)
            .and_then(|()| watch_readable(socket))
            .map_err(|e| lost(format!("socket: {e}")))?;
        Ok(Self {
            socket: Socket::Udp(socket),
            endpoint: Endpoint::new(config.coap.clone(), seed),
            requests: 0,
            buf: vec![0; MAX_DATAGRAM],
            alarm: Alarm::new(),
        })
    }

    fn worn_out(&self) -> bool {
        self.requests >= REQUESTS_PER_SOCKET
    }

    /// Sends `request` and drives the endpoint until its response, its failure or `patience`
    /// (the same loop as the main driver: flush datagrams, take events, sleep until the
    /// endpoint's next timer or the next datagram).
    async fn exchange(
        &mut self,
        request: Message,
        patience: std::time::Duration,
    ) -> Result<Message, Lost> {
        let give_up = tokio::time::Instant::now() + patience;
        let id = self.endpoint.send_request(Instant::now(), request);
        self.requests += 1;
        let mut send_error = None;
        loop {
            while let Some(datagram) = self.endpoint.poll_transmit() {
                if let Err(e) = self.socket.send(&datagram).await {
                    // Retransmission covers a transient error; a persistent one ends in TimedOut
                    // and then a new socket.
                    log::debug!("download: coap send: {e}");
                    send_error = Some(e);
                }
            }
            while let Some(event) = self.endpoint.poll_event() {
                match event {
                    EndpointEvent::Response { request, msg } if request == id => return Ok(msg),
                    EndpointEvent::TimedOut { request } if request == id => {
                        return Err(Lost {
                            broken_socket: send_error.is_some(),
                            why: match send_error {
                                Some(e) => format!("no answer from the server (send: {e})"),
                                None => "no answer from the server".into(),
                            },
                        });
                    }
                    EndpointEvent::Reset { request } if request == id => {
                        return Err(Lost {
                            why: "the server reset the request".into(),
                            broken_socket: false,
                        });
                    }
                    EndpointEvent::Request { id: incoming, .. } => {
                        // A download server has nothing to ask us.
                        self.endpoint.respond(
                            Instant::now(),
                            incoming,
                            Message::response(Code::NOT_FOUND),
                        );
                    }
                    _ => {}
                }
            }
            // `respond` may have queued a datagram: send it before sleeping.
            if let Some(datagram) = self.endpoint.poll_transmit() {
                let _ = self.socket.send(&datagram).await;
                continue;
            }
            let timer = self
                .endpoint
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            self.alarm
                .at_or_before(timer.map_or(give_up, |t| t.min(give_up)));
            tokio::select! {
                received = self.socket.recv(&mut self.buf) => match received {
                    Ok(n) => {
                        let data = self.buf.get(..n).unwrap_or_default();
                        self.endpoint.handle_datagram(Instant::now(), data);
                    }
                    // A lost DTLS association: this socket is done, a new attempt handshakes.
                    Err((e, true)) => {
                        return Err(Lost {
                            why: format!("DTLS: {e}"),
                            broken_socket: true,
                        });
                    }
                    // ICMP port unreachable and the like: the server is not there (yet); the
                    // endpoint's retransmission decides when to give up.
                    Err((e, false)) => log::debug!("download: coap receive: {e}"),
                },
                () = self.alarm.ring() => {
                    if tokio::time::Instant::now() >= give_up {
                        self.endpoint.cancel(id);
                        return Err(Lost {
                            why: format!("no answer within {patience:?}"),
                            broken_socket: false,
                        });
                    }
                    self.endpoint.handle_timeout(Instant::now());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_alarm_keeps_the_earliest_deadline_until_it_goes_off() {
        use tokio::time::{Duration, Instant};
        /// Whether the alarm goes off within `limit`.
        async fn rings_within(alarm: &mut Alarm, limit: Duration) -> bool {
            tokio::time::timeout(limit, alarm.ring()).await.is_ok()
        }
        let start = Instant::now();
        let mut alarm = Alarm::new();
        alarm.at_or_before(start + Duration::from_millis(30));
        // A later deadline does not postpone it ...
        alarm.at_or_before(start + Duration::from_secs(60));
        assert!(
            rings_within(&mut alarm, Duration::from_secs(5)).await,
            "the earlier deadline"
        );
        assert!(start.elapsed() >= Duration::from_millis(30));
        // ... once it went off, the next deadline arms it again, and an earlier one moves it.
        let again = Instant::now();
        alarm.at_or_before(again + Duration::from_secs(60));
        alarm.at_or_before(again + Duration::from_millis(20));
        assert!(
            rings_within(&mut alarm, Duration::from_secs(5)).await,
            "moved earlier"
        );
        assert!(again.elapsed() >= Duration::from_millis(20));
        alarm.at_or_before(Instant::now() + Duration::from_secs(60));
        assert!(
            !rings_within(&mut alarm, Duration::from_millis(50)).await,
            "re-armed for later, not left ringing"
        );
    }

    #[test]
    fn uri_to_options() {
        let t = Target::parse("coap://Example.NET:5690/fw/v%201/img.bin?k=v&x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("Example.NET", 5690));
        assert_eq!(
            t.options,
            vec![
                (opt::URI_HOST, b"example.net".to_vec()),
                (opt::URI_PATH, b"fw".to_vec()),
                (opt::URI_PATH, b"v 1".to_vec()),
                (opt::URI_PATH, b"img.bin".to_vec()),
                (opt::URI_QUERY, b"k=v".to_vec()),
                (opt::URI_QUERY, b"x".to_vec()),
            ]
        );
        // IP literals need no Uri-Host; "/" and "" mean no Uri-Path; a trailing slash is an
        // empty last segment.
        assert!(Target::parse("coap://10.1.2.3").unwrap().options.is_empty());
        assert!(Target::parse("coap://[::1]/").unwrap().options.is_empty());
        assert_eq!(
            Target::parse("coap://[::1]/a/").unwrap().options,
            vec![(opt::URI_PATH, b"a".to_vec()), (opt::URI_PATH, Vec::new())]
        );
        let t = Target::parse("coap://[::1]:7/a").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 7));
    }

    #[test]
    fn bad_uris() {
        for bad in [
            "coap://h/a#b",
            "coap://h/%4",
            "coap://h/%g0",
            "coap://h/a b",
            "coap://",
        ] {
            assert!(
                matches!(Target::parse(bad), Err(DownloadError::InvalidUri(_))),
                "{bad}"
            );
        }
        assert!(Target::parse("coaps://h/a").is_ok_and(|t| t.secure && t.port == 5684));
        assert_eq!(
            Target::parse("coap+tcp://h/a"),
            Err(DownloadError::UnsupportedScheme("coap+tcp".into()))
        );
    }

    #[test]
    fn error_codes() {
        assert!(matches!(
            peer_error(Code::NOT_FOUND),
            Failure::Fatal(DownloadError::InvalidUri(_))
        ));
        assert!(matches!(
            peer_error(Code::FORBIDDEN),
            Failure::Fatal(DownloadError::Refused(_))
        ));
        assert!(matches!(
            peer_error(Code::SERVICE_UNAVAILABLE),
            Failure::Transient(DownloadError::Refused(_))
        ));
    }
}

//! Datagram transport for the core's peers: per LwM2M server, a connected UDP socket resolved
//! from its `coap://` URI, or a DTLS link for a `coaps://` one; a reader task per peer feeds the
//! main loop with plaintext datagrams either way.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::core::client::{Peer, PeerSecurity};
use crate::runtime::dtls::{
    CertCredentials, Credentials, DtlsLink, DtlsSettings, LinkEvent, PskCredentials,
};

/// Largest datagram we accept (a UDP payload cannot be larger).
const MAX_DATAGRAM: usize = 65_535;

/// A parsed `coap://` / `coaps://` URI (RFC 7252 §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoapUri {
    /// `coap` or `coaps`.
    pub scheme: String,
    /// Host name or IP literal (without IPv6 brackets).
    pub host: String,
    /// Port (default 5683 / 5684).
    pub port: u16,
}

/// Why a URI cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// Not `scheme://authority`.
    #[error("{0:?} is not a URI of the form coap://host[:port]")]
    Malformed(String),
    /// A scheme this build cannot speak.
    #[error("scheme {0:?} is not supported (coap:// and coaps:// only)")]
    Scheme(String),
    /// A port that is not 1..=65535.
    #[error("bad port in {0:?}")]
    Port(String),
}

impl CoapUri {
    /// Parses `coap[s]://host[:port][/path]` (IPv6 literals in brackets).
    pub fn parse(text: &str) -> Result<Self, UriError> {
        let malformed = || UriError::Malformed(text.to_string());
        let (scheme, rest) = text.split_once("://").ok_or_else(malformed)?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "coap" => 5683,
            "coaps" => 5684,
            other => return Err(UriError::Scheme(other.to_string())),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.contains('@') {
            return Err(malformed());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(malformed)?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(malformed());
        }
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| UriError::Port(text.to_string()))?,
        };
        Ok(Self {
            scheme,
            host: host.to_string(),
            port,
        })
    }
}

/// A datagram received from a peer.
#[derive(Debug)]
pub struct Received {
    /// From whom.
    pub peer: Peer,
    /// The bytes.
    pub data: Vec<u8>,
}

/// The transport towards one peer.
#[derive(Debug, Clone)]
pub struct PeerSocket {
    inner: Inner,
    remote: SocketAddr,
}

#[derive(Debug, Clone)]
enum Inner {
    /// The socket, and the guard whose drop (with the last clone) ends the reader task.
    Udp {
        socket: Arc<UdpSocket>,
        _reader: Arc<ReaderGuard>,
    },
    Dtls(DtlsLink),
}

/// Ends a reader task when dropped: the driver replaces a peer's link after a failed
/// registration, and the old socket must not live on in its reader.
#[derive(Debug)]
struct ReaderGuard(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}

fn invalid(why: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, why.into())
}

/// The DTLS credentials of a Security instance, or why it cannot be used over `coaps://`.
/// `host` is the URI's host: the name a server certificate must carry unless /0/x/14 says
/// otherwise.
fn credentials(security: &PeerSecurity, host: &str) -> Result<Credentials, std::io::Error> {
    match security.mode {
        0 if security.identity.is_empty() || security.secret_key.is_empty() => Err(invalid(
            "security mode PSK without an identity or a key (/0/x/3, /0/x/5)",
        )),
        0 => Ok(Credentials::Psk(PskCredentials {
            identity: security.identity.clone(),
            key: security.secret_key.clone(),
        })),
        1 => Err(invalid(
            "security mode 1 (raw public key) is not supported: the DTLS library cannot do it",
        )),
        2 if security.identity.is_empty()
            || security.secret_key.is_empty()
            || security.server_public_key.is_empty() =>
        {
            Err(invalid(
                "security mode 2 (certificate) needs a client certificate, its private key and \
                 the server's trust anchor (/0/x/3, /0/x/5, /0/x/4)",
            ))
        }
        2 => Ok(Credentials::Certificate(CertCredentials {
            certificate: security.identity.clone(),
            private_key: security.secret_key.clone(),
            trust_anchor: security.server_public_key.clone(),
            server_name: security.sni.clone().unwrap_or_else(|| host.to_string()),
        })),
        4 => Err(invalid(
            "security mode 4 (certificate with EST) is not supported",
        )),
        3 => Err(invalid("a coaps:// server with security mode 3 (NoSec)")),
        other => Err(invalid(format!("unknown security mode {other}"))),
    }
}

impl PeerSocket {
    /// Resolves `uri` and opens the transport: for `coap://` a socket of the matching family,
    /// connected (so only datagrams from the server arrive); for `coaps://` a DTLS link with the
    /// credentials of `security`. A reader task forwards the server's datagrams to `tx`.
    pub async fn open(
        peer: Peer,
        uri: &str,
        security: &PeerSecurity,
        tx: mpsc::Sender<Received>,
    ) -> Result<Self, std::io::Error> {
        let parsed = CoapUri::parse(uri).map_err(invalid_err)?;
        let remote = tokio::net::lookup_host((parsed.host.as_str(), parsed.port))
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{} does not resolve", parsed.host),
                )
            })?;
        if parsed.scheme == "coaps" {
            let creds = credentials(security, &parsed.host)?;
            let (events_tx, mut events) = mpsc::channel(64);
            let link = DtlsLink::spawn(
                parsed.host.clone(),
                parsed.port,
                creds,
                DtlsSettings::default(),
                events_tx,
            );
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    if let LinkEvent::Datagram(data) = event
                        && tx.send(Received { peer, data }).await.is_err()
                    {
                        return; // the main loop is gone
                    }
                }
            });
            return Ok(Self {
                inner: Inner::Dtls(link),
                remote,
            });
        }
        if security.mode != 3 {
            return Err(invalid(format!(
                "security mode {} needs a coaps:// URI",
                security.mode
            )));
        }
        let local: SocketAddr = if remote.is_ipv6() {
            "[::]:0".parse()
        } else {
            "0.0.0.0:0".parse()
        }
        .map_err(invalid_err)?;
        let socket = UdpSocket::bind(local).await?;
        socket.connect(remote).await?;
        let socket = Arc::new(socket);
        let reader = Arc::clone(&socket);
        let (stop_tx, mut stop) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                let received = tokio::select! {
                    r = reader.recv(&mut buf) => r,
                    _ = &mut stop => return, // the link was replaced or dropped
                };
                match received {
                    Ok(n) => {
                        let data = buf.get(..n).map(<[u8]>::to_vec).unwrap_or_default();
                        if tx.send(Received { peer, data }).await.is_err() {
                            return; // the main loop is gone
                        }
                    }
                    // ICMP port unreachable and similar arrive as errors on a connected socket;
                    // the CoAP layer's retransmission deals with the loss.
                    Err(e) => log::debug!("{peer}: receive error: {e}"),
                }
            }
        });
        Ok(Self {
            inner: Inner::Udp {
                socket,
                _reader: Arc::new(ReaderGuard(Some(stop_tx))),
            },
            remote,
        })
    }

    /// Sends one datagram. Over DTLS it is queued (never waits): while the link handshakes
    /// it is held back, and beyond the queue's bound the CoAP layer's retransmission resends.
    pub async fn send(&self, data: &[u8]) -> Result<(), std::io::Error> {
        match &self.inner {
            Inner::Udp { socket, .. } => socket.send(data).await.map(|_| ()),
            Inner::Dtls(link) => {
                if !link.send(data.to_vec()) {
                    log::debug!("dtls: queue towards {} full, datagram dropped", self.remote);
                }
                Ok(())
            }
        }
    }

    /// The server's address (as first resolved).
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }
}

fn invalid_err(e: impl std::error::Error + Send + Sync + 'static) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_ports_and_ipv6() {
        let u = CoapUri::parse("coap://example.net").expect("plain");
        assert_eq!((u.host.as_str(), u.port), ("example.net", 5683));
        let u = CoapUri::parse("COAP://[::1]:5690/rd").expect("v6");
        assert_eq!((u.host.as_str(), u.port), ("::1", 5690));
        let u = CoapUri::parse("coap://10.0.0.1:1").expect("v4");
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.1", 1));
    }

    #[test]
    fn rejects_what_cannot_work() {
        assert_eq!(CoapUri::parse("coaps://x").map(|u| u.port), Ok(5684));
        assert!(matches!(
            CoapUri::parse("http://x"),
            Err(UriError::Scheme(_))
        ));
        assert!(matches!(
            CoapUri::parse("coap://x:0"),
            Err(UriError::Port(_))
        ));
        assert!(matches!(
            CoapUri::parse("coap://x:70000"),
            Err(UriError::Port(_))
        ));
        assert!(matches!(
            CoapUri::parse("coap://"),
            Err(UriError::Malformed(_))
        ));
        assert!(matches!(
            CoapUri::parse("coap://[::1"),
            Err(UriError::Malformed(_))
        ));
        assert!(matches!(
            CoapUri::parse("coap://u@h"),
            Err(UriError::Malformed(_))
        ));
        assert!(matches!(
            CoapUri::parse("example.net"),
            Err(UriError::Malformed(_))
        ));
    }

    #[test]
    fn security_modes_map_to_credentials_or_a_clear_refusal() {
        let mode = |mode: i64, key: &[u8]| PeerSecurity {
            mode,
            identity: b"dev".to_vec(),
            secret_key: key.to_vec(),
            ..PeerSecurity::default()
        };
        assert!(matches!(
            credentials(&mode(0, b"k"), "h"),
            Ok(Credentials::Psk(_))
        ));
        let mut cert = mode(2, b"k");
        cert.server_public_key = b"anchor".to_vec();
        match credentials(&cert, "server.example") {
            Ok(Credentials::Certificate(c)) => assert_eq!(c.server_name, "server.example"),
            other => panic!("{other:?}"),
        }
        cert.sni = Some("named.example".into());
        match credentials(&cert, "10.0.0.1") {
            Ok(Credentials::Certificate(c)) => assert_eq!(c.server_name, "named.example"),
            other => panic!("{other:?}"),
        }
        for (security, why) in [
            (mode(0, b""), "without an identity or a key"),
            (mode(1, b"k"), "raw public key"),
            (mode(2, b"k"), "trust anchor"),
            (mode(4, b"k"), "EST"),
            (mode(3, b""), "NoSec"),
            (mode(9, b""), "unknown security mode 9"),
        ] {
            let err = credentials(&security, "h")
                .expect_err("refused")
                .to_string();
            assert!(err.contains(why), "{err}");
        }
    }

    #[tokio::test]
    async fn a_psk_account_is_refused_over_plain_coap() {
        let (tx, _rx) = mpsc::channel(1);
        let psk = PeerSecurity {
            mode: 0,
            identity: b"dev".to_vec(),
            secret_key: b"k".to_vec(),
            ..PeerSecurity::default()
        };
        let err = PeerSocket::open(Peer(1), "coap://127.0.0.1:5683", &psk, tx)
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("needs a coaps:// URI"), "{err}");
    }

    /// A NoSec socket to a local UDP "server", after one ping reached it: (server, socket,
    /// receiver of forwarded datagrams, the socket's address as the server saw it).
    async fn pinged_socket() -> (
        UdpSocket,
        PeerSocket,
        mpsc::Receiver<Received>,
        std::net::SocketAddr,
    ) {
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let port = server.local_addr().expect("addr").port();
        let (tx, rx) = mpsc::channel(4);
        let nosec = PeerSecurity {
            mode: 3,
            ..PeerSecurity::default()
        };
        let sock = PeerSocket::open(Peer(1), &format!("coap://127.0.0.1:{port}"), &nosec, tx)
            .await
            .expect("open");
        sock.send(b"ping").await.expect("send");
        let mut buf = [0u8; 16];
        let (n, from) = server.recv_from(&mut buf).await.expect("recv");
        assert_eq!(&buf[..n], b"ping");
        (server, sock, rx, from)
    }

    #[tokio::test]
    async fn a_dropped_socket_stops_its_reader() {
        let (server, sock, mut rx, from) = pinged_socket().await;
        drop(sock);
        // The reader ends and drops its sender: the channel closes, nothing is forwarded.
        let _ = server.send_to(b"late", from).await;
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("the reader ended");
        assert!(got.is_none(), "{got:?}");
    }

    #[tokio::test]
    async fn a_socket_reaches_a_local_server_and_hears_back() {
        let (server, _sock, mut rx, from) = pinged_socket().await;
        server.send_to(b"pong", from).await.expect("reply");
        let got = rx.recv().await.expect("forwarded");
        assert_eq!((got.peer, got.data.as_slice()), (Peer(1), &b"pong"[..]));
    }
}

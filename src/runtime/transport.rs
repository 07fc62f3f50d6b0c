//! Datagram transport for the core's peers: one connected UDP socket per LwM2M server, resolved
//! from its URI, with a reader task per socket feeding the main loop.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::core::client::Peer;

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
    #[error("scheme {0:?} is not supported (coap:// only; coaps:// arrives with DTLS)")]
    Scheme(String),
    /// A port that is not 1..=65535.
    #[error("bad port in {0:?}")]
    Port(String),
}

impl CoapUri {
    /// Parses `coap://host[:port][/path]` (IPv6 literals in brackets).
    pub fn parse(text: &str) -> Result<Self, UriError> {
        let malformed = || UriError::Malformed(text.to_string());
        let (scheme, rest) = text.split_once("://").ok_or_else(malformed)?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "coap" => 5683,
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

/// The socket towards one peer.
#[derive(Debug, Clone)]
pub struct PeerSocket {
    socket: Arc<UdpSocket>,
    remote: SocketAddr,
}

impl PeerSocket {
    /// Resolves `uri`, binds a socket of the matching family, connects it (so only datagrams from
    /// the server arrive) and starts a reader task that forwards datagrams to `tx`.
    pub async fn open(
        peer: Peer,
        uri: &str,
        tx: mpsc::Sender<Received>,
    ) -> Result<Self, std::io::Error> {
        let parsed = CoapUri::parse(uri)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let remote = tokio::net::lookup_host((parsed.host.as_str(), parsed.port))
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{} does not resolve", parsed.host),
                )
            })?;
        let local: SocketAddr = if remote.is_ipv6() {
            "[::]:0".parse()
        } else {
            "0.0.0.0:0".parse()
        }
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let socket = UdpSocket::bind(local).await?;
        socket.connect(remote).await?;
        let socket = Arc::new(socket);
        let reader = Arc::clone(&socket);
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                match reader.recv(&mut buf).await {
                    Ok(n) => {
                        let data = buf.get(..n).map(<[u8]>::to_vec).unwrap_or_default();
                        if tx.send(Received { peer, data }).await.is_err() {
                            return; // the main loop is gone
                        }
                    }
                    // ICMP port unreachable and similar arrive as errors on a connected socket;
                    // the CoAP layer's retransmission deals with the loss.
                    Err(e) => log::debug!("server {}: receive error: {e}", peer.0),
                }
            }
        });
        Ok(Self { socket, remote })
    }

    /// Sends one datagram.
    pub async fn send(&self, data: &[u8]) -> Result<(), std::io::Error> {
        self.socket.send(data).await.map(|_| ())
    }

    /// The server's address.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }
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
        assert!(matches!(
            CoapUri::parse("coaps://x"),
            Err(UriError::Scheme(_))
        ));
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

    #[tokio::test]
    async fn a_socket_reaches_a_local_server_and_hears_back() {
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let port = server.local_addr().expect("addr").port();
        let (tx, mut rx) = mpsc::channel(4);
        let sock = PeerSocket::open(Peer(1), &format!("coap://127.0.0.1:{port}"), tx)
            .await
            .expect("open");
        sock.send(b"ping").await.expect("send");
        let mut buf = [0u8; 16];
        let (n, from) = server.recv_from(&mut buf).await.expect("recv");
        assert_eq!(&buf[..n], b"ping");
        server.send_to(b"pong", from).await.expect("reply");
        let got = rx.recv().await.expect("forwarded");
        assert_eq!((got.peer, got.data.as_slice()), (Peer(1), &b"pong"[..]));
    }
}

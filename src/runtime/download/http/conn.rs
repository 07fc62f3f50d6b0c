//! One HTTP/1.1 exchange on its own connection: TCP (+ TLS) connect, send the GET, read the
//! head, then stream the body through its framing. All async on the caller's runtime.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::tls::tls_failure;
use super::url::HttpUrl;
use super::wire::{Framing, Head, MAX_HEAD};

/// Bytes asked for per read (a TLS record is at most 16 KiB; plain TCP may give more).
const READ_SIZE: usize = 64 * 1024;

/// A byte stream, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Why a connection could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ConnError {
    /// The host name does not resolve.
    Resolve(String),
    /// Network trouble: refused, reset, closed early, timed out (worth a retry).
    Io(String),
    /// TLS refused the server (certificate, name, protocol): retrying cannot help.
    Tls(String),
    /// The response is not HTTP/1.1 as we can read it.
    Wire(super::wire::WireError),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Resolve(e) | Self::Io(e) | Self::Tls(e) => f.write_str(e),
            Self::Wire(e) => write!(f, "{e}"),
        }
    }
}

/// An open connection with the bytes read beyond what was consumed.
pub(super) struct Conn {
    stream: Box<dyn Stream>,
    /// Read but not yet consumed (after the head: the first body bytes).
    pending: Vec<u8>,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Connects to `url`'s host (each resolved address in turn) and does the TLS handshake for
    /// `https` with `tls` (which must be given then).
    pub(super) async fn open(
        url: &HttpUrl,
        tls: Option<&Arc<ClientConfig>>,
    ) -> Result<Self, ConnError> {
        let addrs: Vec<_> = tokio::net::lookup_host((url.host.as_str(), url.port))
            .await
            .map_err(|e| ConnError::Resolve(format!("{}: {e}", url.host)))?
            .collect();
        if addrs.is_empty() {
            return Err(ConnError::Resolve(format!("{} has no address", url.host)));
        }
        let mut last_error = String::new();
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(e) => last_error = format!("connect to {addr}: {e}"),
            }
        }
        let tcp = tcp.ok_or(ConnError::Io(last_error))?;
        let stream: Box<dyn Stream> = if url.tls {
            let config = tls.ok_or_else(|| ConnError::Tls("no TLS configuration".into()))?;
            let name = ServerName::try_from(url.host.clone())
                .map_err(|e| ConnError::Tls(format!("server name {:?}: {e}", url.host)))?;
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
            match connector.connect(name, tcp).await {
                Ok(stream) => Box::new(stream),
                Err(e) => {
                    return Err(match tls_failure(&e) {
                        Some(tls) => ConnError::Tls(format!("{}: {tls}", url.host)),
                        None => ConnError::Io(format!("TLS handshake with {}: {e}", url.host)),
                    });
                }
            }
        } else {
            Box::new(tcp)
        };
        Ok(Self {
            stream,
            pending: Vec::new(),
            scratch: vec![0; READ_SIZE],
        })
    }

    /// Sends `request` and reads the response head (skipping 1xx interim responses).
    pub(super) async fn send(&mut self, request: &[u8]) -> Result<Head, ConnError> {
        let io = |e: std::io::Error| ConnError::Io(format!("sending the request: {e}"));
        self.stream.write_all(request).await.map_err(io)?;
        self.stream.flush().await.map_err(io)?;
        loop {
            let head = self.read_head().await?;
            if !(100..200).contains(&head.status) {
                return Ok(head);
            }
        }
    }

    async fn read_head(&mut self) -> Result<Head, ConnError> {
        loop {
            if let Some((head, len)) = Head::parse(&self.pending).map_err(ConnError::Wire)? {
                self.pending.drain(..len);
                return Ok(head);
            }
            if self.pending.len() > MAX_HEAD {
                return Err(ConnError::Wire(super::wire::WireError::Malformed(
                    "response head too large".into(),
                )));
            }
            if self.read_more().await? == 0 {
                return Err(ConnError::Io(
                    "connection closed before the response".into(),
                ));
            }
        }
    }

    /// Reads once into `pending`; 0 at the end of the stream.
    async fn read_more(&mut self) -> Result<usize, ConnError> {
        let n = self
            .stream
            .read(&mut self.scratch)
            .await
            .map_err(|e| match tls_failure(&e) {
                // A TLS error mid-stream (bad record, missing close_notify): the data cannot be
                // trusted from here on, but a new connection may well work.
                Some(tls) => ConnError::Io(format!("TLS: {tls}")),
                None => ConnError::Io(e.to_string()),
            })?;
        self.pending
            .extend_from_slice(self.scratch.get(..n).unwrap_or_default());
        Ok(n)
    }

    /// The next piece of the body (`None` at its end); waits at most `idle` for bytes.
    pub(super) async fn body_chunk(
        &mut self,
        framing: &mut Framing,
        idle: Duration,
    ) -> Result<Option<Vec<u8>>, ConnError> {
        loop {
            if framing.is_complete() {
                return Ok(None);
            }
            if !self.pending.is_empty() {
                let mut out = Vec::new();
                let used = framing
                    .decode(&self.pending, &mut out)
                    .map_err(ConnError::Wire)?;
                self.pending.drain(..used);
                if !out.is_empty() {
                    return Ok(Some(out));
                }
                if framing.is_complete() {
                    return Ok(None);
                }
            }
            let n = tokio::time::timeout(idle, self.read_more())
                .await
                .map_err(|_| ConnError::Io(format!("no data for {idle:?}")))??;
            if n == 0 {
                return if *framing == Framing::UntilClose {
                    // The only end such a body has (see `Framing::UntilClose`).
                    *framing = Framing::Empty;
                    Ok(None)
                } else {
                    Err(ConnError::Io(
                        "connection closed before the end of the body".into(),
                    ))
                };
            }
        }
    }
}

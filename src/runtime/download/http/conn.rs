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
/// Largest piece of an unframed body read straight into its own buffer (see
/// [`Conn::read_unframed`]): the delivery's hand-over size, because the channel to the
/// verifier holds a fixed number of pieces and larger ones would raise the daemon's peak memory.
const BODY_PIECE: usize = super::super::sink::PIECE;

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
    /// A read failure that came after bytes still to be delivered (see `read_unframed`).
    deferred: Option<ConnError>,
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
            deferred: None,
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
            .map_err(read_error)?;
        self.pending
            .extend_from_slice(self.scratch.get(..n).unwrap_or_default());
        Ok(n)
    }

    /// Reads the next bytes of a body with no framing bytes in it (a length-framed or
    /// until-close body, nothing pending) straight into a buffer of their own: at most `room`
    /// (what is left of the body) and [`BODY_PIECE`] bytes, and read until it holds that many
    /// (the delivery gathers that much anyway before handing it on, so it is handed on as is).
    /// Short only at the end of the stream.
    ///
    /// Why: going through `scratch`, `pending` and the framing copied every byte of a package
    /// three times on the runtime's thread, which shares two cores with the verifier.
    async fn read_unframed(&mut self, room: u64, idle: Duration) -> Result<Vec<u8>, ConnError> {
        let want = usize::try_from(room).unwrap_or(usize::MAX).min(BODY_PIECE);
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        let mut out = Vec::with_capacity(want);
        while out.len() < want {
            let limit = (want - out.len()) as u64;
            let mut body = (&mut self.stream).take(limit);
            let read = tokio::time::timeout(idle, body.read_buf(&mut out))
                .await
                .map_err(|_| ConnError::Io(format!("no data for {idle:?}")))
                .and_then(|r| r.map_err(read_error));
            match read {
                Ok(0) => break,
                Ok(_) => {}
                // The bytes before the failure are good: they are delivered, and the failure
                // with the next call (a cut connection resumes after them, not before).
                Err(e) if !out.is_empty() => {
                    self.deferred = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
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
            if self.pending.is_empty()
                && let Some(room) = framing.unframed_room()
            {
                let out = self.read_unframed(room, idle).await?;
                if !out.is_empty() {
                    framing.consumed_unframed(out.len() as u64);
                    return Ok(Some(out));
                }
                return end_of_stream(framing);
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
                return end_of_stream(framing);
            }
        }
    }
}

/// The stream ended while `framing` wanted more: the end of an until-close body, a cut
/// connection for any other.
fn end_of_stream(framing: &mut Framing) -> Result<Option<Vec<u8>>, ConnError> {
    if *framing == Framing::UntilClose {
        // The only end such a body has (see `Framing::UntilClose`).
        *framing = Framing::Empty;
        Ok(None)
    } else {
        Err(ConnError::Io(
            "connection closed before the end of the body".into(),
        ))
    }
}

fn read_error(e: std::io::Error) -> ConnError {
    match tls_failure(&e) {
        // A TLS error mid-stream (bad record, missing close_notify): the data cannot be
        // trusted from here on, but a new connection may well work.
        Some(tls) => ConnError::Io(format!("TLS: {tls}")),
        None => ConnError::Io(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use super::*;

    /// A stream that yields scripted reads (bytes, or an error) and accepts any write.
    struct Scripted(VecDeque<std::io::Result<Vec<u8>>>);

    impl AsyncRead for Scripted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            match self.0.pop_front() {
                None => Poll::Ready(Ok(())),
                Some(Err(e)) => Poll::Ready(Err(e)),
                Some(Ok(mut bytes)) => {
                    let n = bytes.len().min(buf.remaining());
                    buf.put_slice(&bytes[..n]);
                    if n < bytes.len() {
                        self.0.push_front(Ok(bytes.split_off(n)));
                    }
                    Poll::Ready(Ok(()))
                }
            }
        }
    }

    impl AsyncWrite for Scripted {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn conn(script: Vec<std::io::Result<Vec<u8>>>) -> Conn {
        Conn {
            stream: Box::new(Scripted(script.into())),
            pending: Vec::new(),
            scratch: vec![0; READ_SIZE],
            deferred: None,
        }
    }

    async fn body(conn: &mut Conn, framing: &mut Framing) -> (Vec<u8>, Option<ConnError>) {
        let mut got = Vec::new();
        loop {
            match conn.body_chunk(framing, Duration::from_secs(5)).await {
                Ok(Some(piece)) => got.extend(piece),
                Ok(None) => return (got, None),
                Err(e) => return (got, Some(e)),
            }
        }
    }

    #[tokio::test]
    async fn bytes_before_a_read_failure_are_delivered_first() {
        // Less than a piece, then the stream fails (a TLS connection cut without
        // close_notify): the bytes come out, then the failure, so a resume continues after
        // them. (They used to be dropped with the failure, and every resume lost them again.)
        let cut = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "cut");
        let mut c = conn(vec![Ok(vec![7; 1000]), Ok(vec![8; 500]), Err(cut)]);
        let mut framing = Framing::UntilClose;
        let (got, err) = body(&mut c, &mut framing).await;
        assert_eq!(got.len(), 1500);
        assert!(matches!(err, Some(ConnError::Io(_))), "{err:?}");
    }

    #[tokio::test]
    async fn length_framed_bodies_are_read_in_whole_pieces_and_never_past_their_end() {
        // Small reads are gathered into pieces of BODY_PIECE; the bytes after the body (which
        // belong to nobody) are not read.
        let mut script: Vec<_> = (0..200u32).map(|i| Ok(vec![i as u8; 1000])).collect();
        script.push(Ok(b"after the body".to_vec()));
        let mut c = conn(script);
        let mut framing = Framing::Length(150_000);
        let mut pieces = Vec::new();
        while let Some(p) = c
            .body_chunk(&mut framing, Duration::from_secs(5))
            .await
            .unwrap()
        {
            pieces.push(p);
        }
        let lens: Vec<_> = pieces.iter().map(Vec::len).collect();
        assert_eq!(lens, [BODY_PIECE, BODY_PIECE, 150_000 - 2 * BODY_PIECE]);
        let all: Vec<u8> = pieces.concat();
        let expected: Vec<u8> = (0..150u32).flat_map(|i| vec![i as u8; 1000]).collect();
        assert_eq!(all, expected);
        // A body cut short is an error, after its bytes.
        let mut c = conn(vec![Ok(vec![1; 10])]);
        let mut framing = Framing::Length(20);
        let (got, err) = body(&mut c, &mut framing).await;
        assert_eq!(got.len(), 10);
        assert!(matches!(err, Some(ConnError::Io(_))), "{err:?}");
    }
}

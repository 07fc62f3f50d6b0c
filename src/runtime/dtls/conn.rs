//! The datagram connection the DTLS crate runs over: a connected UDP socket whose incoming
//! datagrams pass the [`RecordFilter`] first.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use webrtc_util::conn::Conn;

use super::filter::RecordFilter;

/// A connected UDP socket behind a record filter.
#[derive(Debug)]
pub struct FilteredConn {
    socket: Arc<UdpSocket>,
    filter: Arc<Mutex<RecordFilter>>,
    /// Datagrams dropped by the filter (for logs and tests).
    dropped: std::sync::atomic::AtomicU64,
}

impl FilteredConn {
    /// Wraps a socket already `connect`ed to the server.
    pub fn new(socket: Arc<UdpSocket>, filter: Arc<Mutex<RecordFilter>>) -> Self {
        Self {
            socket,
            filter,
            dropped: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Datagrams dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn unsupported() -> webrtc_util::Error {
    webrtc_util::Error::Other("not supported on a connected DTLS socket".into())
}

#[async_trait::async_trait]
impl Conn for FilteredConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(unsupported())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        loop {
            let n = self.socket.recv(buf).await?;
            let verdict = match self.filter.lock() {
                Ok(mut f) => f.check(buf.get(..n).unwrap_or_default()),
                Err(_) => Ok(()),
            };
            match verdict {
                Ok(()) => return Ok(n),
                Err(why) => {
                    self.dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    log::debug!("dtls: dropped a datagram from the server: {why}");
                }
            }
        }
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let n = self.recv(buf).await?;
        Ok((n, self.socket.peer_addr()?))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        self.send(buf).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.socket.peer_addr().ok()
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

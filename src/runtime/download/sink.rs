//! The caller's channel, seen as a byte stream: delivers exactly the requested range, in order,
//! once, whatever overlap the transports produce when they resume (a whole CoAP block, an HTTP
//! server that ignored Range).

use tokio::sync::mpsc;

use super::DownloadError;

/// Where the bytes go, and how far they got.
#[derive(Debug)]
pub(super) struct Delivery {
    sink: mpsc::Sender<Vec<u8>>,
    /// Offset of the next byte the receiver expects.
    next: u64,
    /// One past the last byte wanted.
    end: Option<u64>,
}

impl Delivery {
    /// Delivers `[start, end)` into `sink`.
    pub(super) fn new(sink: mpsc::Sender<Vec<u8>>, start: u64, end: Option<u64>) -> Self {
        Self {
            sink,
            next: start,
            end,
        }
    }

    /// Offset of the next byte the receiver expects (where a resumed transfer continues).
    pub(super) fn next(&self) -> u64 {
        self.next
    }

    /// One past the last byte wanted, if bounded.
    pub(super) fn end(&self) -> Option<u64> {
        self.end
    }

    /// True once `end` was reached.
    pub(super) fn is_done(&self) -> bool {
        self.end.is_some_and(|end| self.next >= end)
    }

    /// Offers `data`, which starts at `offset` of the representation. Bytes before `next()`
    /// (already delivered) and from `end` on are dropped. Waits while the receiver is busy: its
    /// pace is the download's pace.
    ///
    /// A chunk starting beyond `next()` would leave a hole; the transports check offsets before
    /// offering, so this is a protocol error of the server that slipped through, not a bug to
    /// panic on: it fails the attempt (`ConnectionLost`). A receiver that went away: `Aborted`.
    pub(super) async fn offer(
        &mut self,
        offset: u64,
        mut data: Vec<u8>,
    ) -> Result<(), DownloadError> {
        if offset > self.next {
            return Err(DownloadError::ConnectionLost(format!(
                "server skipped bytes: expected offset {}, got {offset}",
                self.next
            )));
        }
        let skip = usize::try_from(self.next - offset).unwrap_or(usize::MAX);
        if skip >= data.len() {
            return Ok(());
        }
        if skip > 0 {
            data.drain(..skip);
        }
        if let Some(end) = self.end {
            let room = usize::try_from(end.saturating_sub(self.next)).unwrap_or(usize::MAX);
            data.truncate(room);
        }
        if data.is_empty() {
            return Ok(());
        }
        let len = data.len() as u64;
        self.sink
            .send(data)
            .await
            .map_err(|_| DownloadError::Aborted)?;
        self.next += len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_the_range_once_and_in_order() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut d = Delivery::new(tx, 5, Some(12));
        // Overlap before `start` is dropped.
        d.offer(0, (0..8).collect()).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), vec![5, 6, 7]);
        // A repeat of delivered bytes is dropped entirely.
        d.offer(4, vec![4, 5, 6, 7]).await.unwrap();
        // Overlap plus new bytes, clipped at `end`.
        d.offer(6, (6..20).collect()).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), vec![8, 9, 10, 11]);
        assert!(d.is_done());
        assert_eq!(d.next(), 12);
        // Nothing more once done.
        d.offer(12, vec![12]).await.unwrap();
        drop(d);
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_hole_or_a_gone_receiver_fails() {
        let (tx, rx) = mpsc::channel(1);
        let mut d = Delivery::new(tx, 0, None);
        assert!(matches!(
            d.offer(3, vec![1]).await,
            Err(DownloadError::ConnectionLost(_))
        ));
        drop(rx);
        assert_eq!(d.offer(0, vec![1]).await, Err(DownloadError::Aborted));
    }
}

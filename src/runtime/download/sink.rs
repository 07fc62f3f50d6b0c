//! The caller's channel, seen as a byte stream: delivers exactly the requested range, in order,
//! once, whatever overlap the transports produce when they resume (a whole CoAP block, an HTTP
//! server that ignored Range). Small pieces (CoAP blocks) are gathered into pieces of at least
//! [`PIECE`] bytes: one hand-over to the verifying thread per kilobyte cost a thread wake-up per
//! block, the largest part of a CoAP block's time on the client.

use tokio::sync::mpsc;

use super::DownloadError;

/// Bytes gathered before they are handed over (larger pieces pass through unchanged).
pub(super) const PIECE: usize = 64 << 10;

/// Where the bytes go, and how far they got.
#[derive(Debug)]
pub(super) struct Delivery {
    sink: mpsc::Sender<Vec<u8>>,
    /// Offset of the next byte the receiver expects (counting `pending`).
    next: u64,
    /// Accepted bytes not handed over yet (ending at `next`).
    pending: Vec<u8>,
    /// One past the last byte wanted.
    end: Option<u64>,
}

impl Delivery {
    /// Delivers `[start, end)` into `sink`.
    pub(super) fn new(sink: mpsc::Sender<Vec<u8>>, start: u64, end: Option<u64>) -> Self {
        Self {
            sink,
            next: start,
            pending: Vec::new(),
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
    /// (already accepted) and from `end` on are dropped. Waits while the receiver is busy: its
    /// pace is the download's pace. Accepted bytes may be held back until [`flush`](Self::flush)
    /// (at most [`PIECE`] of them, and never once `end` is reached).
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
        self.next += data.len() as u64;
        if self.pending.is_empty() && data.len() >= PIECE {
            return self.hand_over(data).await;
        }
        if self.pending.capacity() == 0 {
            self.pending.reserve_exact(PIECE + data.len());
        }
        self.pending.extend_from_slice(&data);
        if self.pending.len() >= PIECE || self.is_done() {
            self.flush().await?;
        }
        Ok(())
    }

    /// Hands every accepted byte over (the transfer ended, or paused).
    pub(super) async fn flush(&mut self) -> Result<(), DownloadError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let piece = std::mem::take(&mut self.pending);
        self.hand_over(piece).await
    }

    async fn hand_over(&self, piece: Vec<u8>) -> Result<(), DownloadError> {
        self.sink
            .send(piece)
            .await
            .map_err(|_| DownloadError::Aborted)
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
        assert_eq!(d.next(), 8);
        // A repeat of delivered bytes is dropped entirely.
        d.offer(4, vec![4, 5, 6, 7]).await.unwrap();
        // Overlap plus new bytes, clipped at `end`; reaching `end` hands everything over.
        d.offer(6, (6..20).collect()).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), vec![5, 6, 7, 8, 9, 10, 11]);
        assert!(d.is_done());
        assert_eq!(d.next(), 12);
        // Nothing more once done.
        d.offer(12, vec![12]).await.unwrap();
        drop(d);
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn small_pieces_are_gathered_and_large_ones_pass_through() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut d = Delivery::new(tx, 0, None);
        let block = vec![7u8; 1024];
        for i in 0..(PIECE / 1024) as u64 {
            d.offer(i * 1024, block.clone()).await.unwrap();
            if i + 1 < (PIECE / 1024) as u64 {
                assert!(rx.try_recv().is_err(), "handed over early at block {i}");
            }
        }
        assert_eq!(rx.recv().await.unwrap().len(), PIECE);
        let big = vec![1u8; PIECE * 2];
        d.offer(PIECE as u64, big.clone()).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), big);
        // A tail smaller than a piece waits for `flush`.
        d.offer(3 * PIECE as u64, vec![2, 3]).await.unwrap();
        assert!(rx.try_recv().is_err());
        d.flush().await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), vec![2, 3]);
        assert_eq!(d.next(), 3 * PIECE as u64 + 2);
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
        d.offer(0, vec![1]).await.unwrap();
        assert_eq!(d.flush().await, Err(DownloadError::Aborted));
    }
}

//! Message IDs towards one peer: sequential from a random start, never reused within
//! EXCHANGE_LIFETIME (RFC 7252 §4.4).
//!
//! Remembering every ID for 247 s would cost up to 65 536 timestamps. Instead the ID space is cut
//! into 256 blocks of 256 IDs, and we remember when each block was last used. Entering a block
//! (its first ID) is allowed only if that was more than a lifetime ago; all later IDs of the block
//! were then also last used before that moment. This is conservative by at most one block, costs a
//! fixed 4 KiB, and only bites a peer we send more than 65 280 messages per lifetime to.

use std::time::{Duration, Instant};

/// IDs per block.
const BLOCK: u16 = 256;

/// Hands out message IDs.
#[derive(Debug)]
pub(super) struct MidAllocator {
    next: u16,
    /// Last use of each block of 256 IDs (index = ID >> 8).
    block_used: Vec<Option<Instant>>,
    lifetime: Duration,
}

impl MidAllocator {
    /// Starts at `first` (random, so a restarted endpoint does not collide with its old IDs).
    pub(super) fn new(first: u16, lifetime: Duration) -> Self {
        Self {
            next: first,
            block_used: vec![None; usize::from(u16::MAX / BLOCK) + 1],
            lifetime,
        }
    }

    /// The next ID, or `None` while it could still be a duplicate in the peer's eyes.
    pub(super) fn alloc(&mut self, now: Instant) -> Option<u16> {
        if self.blocked_until(now).is_some() {
            return None;
        }
        let mid = self.next;
        if let Some(slot) = self.block_used.get_mut(usize::from(mid / BLOCK)) {
            *slot = Some(now);
        }
        self.next = mid.wrapping_add(1);
        Some(mid)
    }

    /// When the next ID becomes usable, if it is not usable at `now`.
    pub(super) fn blocked_until(&self, now: Instant) -> Option<Instant> {
        if !self.next.is_multiple_of(BLOCK) {
            return None;
        }
        let used = (*self.block_used.get(usize::from(self.next / BLOCK))?)?;
        (now.saturating_duration_since(used) <= self.lifetime)
            .then(|| super::after(used, self.lifetime + Duration::from_nanos(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::origin;
    use std::collections::HashSet;

    #[test]
    fn sequential_from_start_and_wrapping() {
        let t = origin();
        let mut m = MidAllocator::new(65534, Duration::from_secs(247));
        assert_eq!(m.alloc(t), Some(65534));
        assert_eq!(m.alloc(t), Some(65535));
        assert_eq!(m.alloc(t), Some(0));
        assert_eq!(m.alloc(t), Some(1));
    }

    #[test]
    fn never_reuses_within_lifetime() {
        let lifetime = Duration::from_secs(247);
        let t0 = origin();
        let mut m = MidAllocator::new(1000, lifetime);
        let mut seen = HashSet::new();
        // Sending as fast as possible: the whole space minus at most one block, then a stop.
        while let Some(mid) = m.alloc(t0) {
            assert!(seen.insert(mid), "MID {mid} reused");
        }
        assert!(seen.len() >= 65536 - 256, "{}", seen.len());
        let free_at = m.blocked_until(t0).unwrap();
        assert!(free_at > t0 + lifetime);
        assert_eq!(m.alloc(free_at - Duration::from_millis(1)), None);
        // A lifetime later the IDs come back.
        assert!(m.alloc(free_at).is_some());
    }

    #[test]
    fn slow_senders_are_never_blocked() {
        let mut m = MidAllocator::new(7, Duration::from_secs(247));
        let t0 = origin();
        // One message every 10 ms for 20 minutes: 120 000 IDs, the space wraps almost twice.
        for i in 0..120_000u64 {
            assert!(
                m.alloc(t0 + Duration::from_millis(10 * i)).is_some(),
                "blocked at {i}"
            );
        }
    }
}

//! The de-duplication cache of message IDs received from the peer (RFC 7252 §4.5).
//!
//! Entries live for EXCHANGE_LIFETIME (CON) or NON_LIFETIME (NON) and are pruned lazily, on the
//! next datagram, so an idle endpoint needs no timer. The cache is also capped: when full, the
//! oldest entry goes, so a flood of distinct message IDs cannot grow memory without bound (the
//! price is that a duplicate older than the last `capacity` messages is processed again).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// What we answered to a message ID, to answer a duplicate the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
    /// A request the application has not answered yet: duplicates are ignored (the peer
    /// retransmits until we do answer).
    Pending,
    /// A deferred request: duplicates get the empty ACK again.
    EmptyAck,
    /// The exact datagram we sent back (piggy-backed response, ACK or RST).
    Bytes(Vec<u8>),
    /// Nothing to repeat (a NON).
    Nothing,
}

#[derive(Debug)]
struct Seen {
    /// Tells this entry from an older one of the same ID still queued in `order`.
    generation: u64,
    expires: Instant,
    reply: Reply,
}

/// Message IDs seen recently, oldest first.
#[derive(Debug)]
pub(super) struct DedupCache {
    entries: HashMap<u16, Seen>,
    order: VecDeque<(u16, u64)>,
    next_generation: u64,
    capacity: usize,
}

impl DedupCache {
    /// An empty cache holding at most `capacity` (≥ 1) IDs.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_generation: 0,
            capacity: capacity.max(1),
        }
    }

    /// Number of IDs remembered.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Drops the expired entries at the old end.
    pub(super) fn prune(&mut self, now: Instant) {
        while let Some(&(mid, generation)) = self.order.front() {
            match self.entries.get(&mid) {
                Some(seen) if seen.generation == generation && seen.expires > now => break,
                _ => self.pop_oldest(),
            }
        }
    }

    /// Our reply to `mid`, if it is a duplicate.
    pub(super) fn get(&self, now: Instant, mid: u16) -> Option<&Reply> {
        self.entries
            .get(&mid)
            .filter(|seen| seen.expires > now)
            .map(|seen| &seen.reply)
    }

    /// Remembers `mid` for `lifetime`; returns the entry's generation for `set_reply`.
    pub(super) fn insert(
        &mut self,
        now: Instant,
        mid: u16,
        lifetime: Duration,
        reply: Reply,
    ) -> u64 {
        self.entries.remove(&mid);
        // The order queue also holds stale records of re-used IDs; bound it as well.
        while self.entries.len() >= self.capacity || self.order.len() >= 2 * self.capacity {
            self.pop_oldest();
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let expires = super::after(now, lifetime);
        self.entries.insert(
            mid,
            Seen {
                generation,
                expires,
                reply,
            },
        );
        self.order.push_back((mid, generation));
        generation
    }

    /// Records our reply, unless the entry was evicted (and its ID perhaps reused) meanwhile.
    pub(super) fn set_reply(&mut self, mid: u16, generation: u64, reply: Reply) {
        if let Some(seen) = self.entries.get_mut(&mid)
            && seen.generation == generation
        {
            seen.reply = reply;
        }
    }

    fn pop_oldest(&mut self) {
        let Some((mid, generation)) = self.order.pop_front() else {
            return;
        };
        if self
            .entries
            .get(&mid)
            .is_some_and(|s| s.generation == generation)
        {
            self.entries.remove(&mid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::origin;

    const LIFE: Duration = Duration::from_secs(247);

    #[test]
    fn remembers_until_expiry() {
        let t0 = origin();
        let mut c = DedupCache::new(8);
        c.insert(t0, 5, LIFE, Reply::Bytes(vec![1]));
        assert_eq!(
            c.get(t0 + LIFE - Duration::from_millis(1), 5),
            Some(&Reply::Bytes(vec![1]))
        );
        assert_eq!(c.get(t0 + LIFE, 5), None);
        c.prune(t0 + LIFE);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn capacity_evicts_oldest() {
        let t0 = origin();
        let mut c = DedupCache::new(4);
        for mid in 0..10 {
            c.insert(t0, mid, LIFE, Reply::Nothing);
        }
        assert_eq!(c.len(), 4);
        assert!(c.get(t0, 5).is_none());
        assert!(c.get(t0, 6).is_some() && c.get(t0, 9).is_some());
    }

    #[test]
    fn stale_generations_do_not_clobber() {
        let t0 = origin();
        let mut c = DedupCache::new(2);
        let g_old = c.insert(t0, 1, LIFE, Reply::Pending);
        c.insert(t0, 2, LIFE, Reply::Nothing);
        c.insert(t0, 3, LIFE, Reply::Nothing); // evicts 1
        let g_new = c.insert(t0, 1, LIFE, Reply::Pending); // 1 reused by a new request
        c.set_reply(1, g_old, Reply::Bytes(vec![0xde]));
        assert_eq!(c.get(t0, 1), Some(&Reply::Pending));
        c.set_reply(1, g_new, Reply::EmptyAck);
        assert_eq!(c.get(t0, 1), Some(&Reply::EmptyAck));
    }

    #[test]
    fn reinsertion_keeps_the_order_queue_bounded() {
        let t0 = origin();
        let mut c = DedupCache::new(4);
        for i in 0..1000u32 {
            // The same two IDs, each expired and reused over and over.
            let t = t0 + LIFE * i;
            c.insert(t, (i % 2) as u16, LIFE / 2, Reply::Nothing);
        }
        assert!(c.order.len() <= 8);
        assert!(c.len() <= 2);
    }
}

//! A deterministic network simulator for tests (in the spirit of quinn-proto's `Pair`).
//!
//! - [`SimClock`]: virtual time, an origin `Instant` plus an offset that only moves forward.
//! - [`SimNet`]: carries datagrams between numbered nodes with seeded loss, duplication, delay
//!   and jitter (jitter larger than the gap between two datagrams reorders them).
//! - [`Pair`]: two sans-IO nodes (anything implementing [`SimNode`], e.g. [`Endpoint`]) wired
//!   through a `SimNet`, stepped from one event (delivery or timer) to the next.
//!
//! Pure: no sockets, no sleeping, no OS clock or OS randomness. The same seed gives the same run.
//! The origin instant comes from the caller (test code reads it once; its value never matters).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha12Rng;
use rand_core::{RngCore, SeedableRng};

use super::coap::endpoint::{Endpoint, EndpointEvent};

/// Virtual time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimClock {
    origin: Instant,
    elapsed: Duration,
}

impl SimClock {
    /// A clock standing at `origin`.
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            elapsed: Duration::ZERO,
        }
    }

    /// The current virtual instant.
    pub fn instant(&self) -> Instant {
        self.origin + self.elapsed
    }

    /// Virtual time since the origin.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Moves time forward by `by`.
    pub fn advance(&mut self, by: Duration) {
        self.elapsed += by;
    }

    /// Moves time forward to `t`; an earlier `t` is ignored (time never goes back).
    pub fn advance_to(&mut self, t: Instant) {
        self.elapsed = self.elapsed.max(t.saturating_duration_since(self.origin));
    }
}

/// Behaviour of the link in one direction.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Probability that a datagram (or its duplicate) is lost, 0.0..=1.0.
    pub loss: f64,
    /// Probability that a datagram is delivered twice, 0.0..=1.0.
    pub duplicate: f64,
    /// Base one-way delay.
    pub delay: Duration,
    /// Extra delay, uniform in [0, jitter], drawn per copy: reorders datagrams sent closer
    /// together than the jitter.
    pub jitter: Duration,
}

impl LinkConfig {
    /// A perfect link with a fixed one-way `delay`.
    pub fn perfect(delay: Duration) -> Self {
        Self {
            loss: 0.0,
            duplicate: 0.0,
            delay,
            jitter: Duration::ZERO,
        }
    }
}

impl Default for LinkConfig {
    /// A perfect link with 10 ms one-way delay.
    fn default() -> Self {
        Self::perfect(Duration::from_millis(10))
    }
}

/// Index of a node on a [`SimNet`].
pub type NodeId = usize;

/// A datagram on its way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// The bytes.
    pub data: Vec<u8>,
}

/// What happened on the network so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams handed to `send`.
    pub sent: u64,
    /// Copies dropped by the loss probability.
    pub lost: u64,
    /// Extra copies created by the duplication probability.
    pub duplicated: u64,
    /// Copies handed out by `pop_due`.
    pub delivered: u64,
}

/// A datagram scheduled for delivery; ordered by time, then by scheduling order (stable).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    seq: u64,
    from: NodeId,
    to: NodeId,
    data: Vec<u8>,
}

/// A simulated datagram network with a virtual clock.
#[derive(Debug)]
pub struct SimNet {
    clock: SimClock,
    rng: ChaCha12Rng,
    default_link: LinkConfig,
    links: HashMap<(NodeId, NodeId), LinkConfig>,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    stats: NetStats,
}

impl SimNet {
    /// A network starting at `origin`, with `link` in every direction and a seeded RNG.
    pub fn new(origin: Instant, seed: u64, link: LinkConfig) -> Self {
        Self {
            clock: SimClock::new(origin),
            rng: ChaCha12Rng::seed_from_u64(seed),
            default_link: link,
            links: HashMap::new(),
            in_flight: BinaryHeap::new(),
            seq: 0,
            stats: NetStats::default(),
        }
    }

    /// Overrides the link from `from` to `to`.
    pub fn set_link(&mut self, from: NodeId, to: NodeId, link: LinkConfig) {
        self.links.insert((from, to), link);
    }

    /// The clock.
    pub fn clock(&self) -> &SimClock {
        &self.clock
    }

    /// The current virtual instant.
    pub fn instant(&self) -> Instant {
        self.clock.instant()
    }

    /// Moves time forward to `t` (never back).
    pub fn advance_to(&mut self, t: Instant) {
        self.clock.advance_to(t);
    }

    /// Sends a datagram now; the link decides whether, when and how often it arrives.
    pub fn send(&mut self, from: NodeId, to: NodeId, data: Vec<u8>) {
        self.stats.sent += 1;
        let link = self
            .links
            .get(&(from, to))
            .unwrap_or(&self.default_link)
            .clone();
        let copies = if self.chance(link.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            if self.chance(link.loss) {
                self.stats.lost += 1;
                continue;
            }
            let at = self.instant() + link.delay + self.jitter(link.jitter);
            self.seq += 1;
            self.in_flight.push(Reverse(InFlight {
                at,
                seq: self.seq,
                from,
                to,
                data: data.clone(),
            }));
        }
    }

    /// When the next datagram arrives.
    pub fn next_delivery(&self) -> Option<Instant> {
        self.in_flight.peek().map(|Reverse(d)| d.at)
    }

    /// The next datagram due at the current time, if any.
    pub fn pop_due(&mut self) -> Option<Datagram> {
        if self.next_delivery()? > self.instant() {
            return None;
        }
        let Reverse(d) = self.in_flight.pop()?;
        self.stats.delivered += 1;
        Some(Datagram {
            from: d.from,
            to: d.to,
            data: d.data,
        })
    }

    /// Datagrams still travelling.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Counters so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, max].
    fn jitter(&mut self, max: Duration) -> Duration {
        if max.is_zero() {
            return Duration::ZERO;
        }
        max.mul_f64(self.unit())
    }
}

/// A sans-IO node the simulator can drive.
pub trait SimNode {
    /// Feeds a received datagram.
    fn handle_datagram(&mut self, now: Instant, data: &[u8]);
    /// Fires due timers.
    fn handle_timeout(&mut self, now: Instant);
    /// The next datagram to send.
    fn poll_transmit(&mut self) -> Option<Vec<u8>>;
    /// When `handle_timeout` is due.
    fn poll_timeout(&self) -> Option<Instant>;
}

impl SimNode for Endpoint {
    fn handle_datagram(&mut self, now: Instant, data: &[u8]) {
        Self::handle_datagram(self, now, data);
    }

    fn handle_timeout(&mut self, now: Instant) {
        Self::handle_timeout(self, now);
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        Self::poll_transmit(self)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Self::poll_timeout(self)
    }
}

/// Which node of a [`Pair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Node 0.
    A,
    /// Node 1.
    B,
}

/// Two nodes talking over a [`SimNet`]: `a` is node 0, `b` is node 1.
#[derive(Debug)]
pub struct Pair<A = Endpoint, B = Endpoint> {
    /// The network (and the clock).
    pub net: SimNet,
    /// Node 0.
    pub a: A,
    /// Node 1.
    pub b: B,
}

impl<A: SimNode, B: SimNode> Pair<A, B> {
    /// Wires `a` and `b` through `net`.
    pub fn new(net: SimNet, a: A, b: B) -> Self {
        Self { net, a, b }
    }

    /// The current virtual instant.
    pub fn instant(&self) -> Instant {
        self.net.instant()
    }

    /// Hands everything both nodes want to send to the network.
    pub fn flush(&mut self) {
        while let Some(data) = self.a.poll_transmit() {
            self.net.send(0, 1, data);
        }
        while let Some(data) = self.b.poll_transmit() {
            self.net.send(1, 0, data);
        }
    }

    /// When the next thing happens: a delivery or a node's timer.
    pub fn next_wakeup(&self) -> Option<Instant> {
        [
            self.net.next_delivery(),
            self.a.poll_timeout(),
            self.b.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Flushes, jumps to the next wake-up (if it is not after `deadline`), delivers what is due
    /// and fires due timers. False when nothing is scheduled or the next wake-up is too late.
    pub fn step(&mut self, deadline: Instant) -> bool {
        self.flush();
        let Some(t) = self.next_wakeup().filter(|t| *t <= deadline) else {
            return false;
        };
        self.net.advance_to(t);
        let now = self.instant();
        while let Some(d) = self.net.pop_due() {
            match d.to {
                0 => self.a.handle_datagram(now, &d.data),
                _ => self.b.handle_datagram(now, &d.data),
            }
        }
        if self.a.poll_timeout().is_some_and(|t| t <= now) {
            self.a.handle_timeout(now);
        }
        if self.b.poll_timeout().is_some_and(|t| t <= now) {
            self.b.handle_timeout(now);
        }
        self.flush();
        true
    }
}

impl Pair<Endpoint, Endpoint> {
    /// Runs until both endpoints and the network are quiet, or `limit` of virtual time passes.
    /// Every event goes to `on_event` with the endpoint that reported it (to answer requests or
    /// send the next one) and the current time. True if the run went quiet within `limit`.
    pub fn drive(
        &mut self,
        limit: Duration,
        mut on_event: impl FnMut(Side, EndpointEvent, &mut Endpoint, Instant),
    ) -> bool {
        let deadline = self.instant() + limit;
        loop {
            let now = self.instant();
            let mut any = false;
            while let Some(ev) = self.a.poll_event() {
                any = true;
                on_event(Side::A, ev, &mut self.a, now);
            }
            while let Some(ev) = self.b.poll_event() {
                any = true;
                on_event(Side::B, ev, &mut self.b, now);
            }
            if !self.step(deadline) && !any {
                return self.next_wakeup().is_none();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::origin;

    /// A node that records what it receives and echoes each datagram back once.
    #[derive(Default)]
    struct Echo {
        got: Vec<(Duration, Vec<u8>)>,
        out: Vec<Vec<u8>>,
        echo: bool,
    }

    impl SimNode for Echo {
        fn handle_datagram(&mut self, now: Instant, data: &[u8]) {
            self.got.push((now - origin(), data.to_vec()));
            if self.echo {
                self.out.push(data.to_vec());
            }
        }
        fn handle_timeout(&mut self, _now: Instant) {}
        fn poll_transmit(&mut self) -> Option<Vec<u8>> {
            self.out.pop()
        }
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
    }

    #[test]
    fn clock_only_moves_forward() {
        let mut c = SimClock::new(origin());
        c.advance(Duration::from_secs(5));
        c.advance_to(origin() + Duration::from_secs(3));
        assert_eq!(c.elapsed(), Duration::from_secs(5));
        c.advance_to(origin() + Duration::from_secs(9));
        assert_eq!(c.instant(), origin() + Duration::from_secs(9));
    }

    #[test]
    fn perfect_link_delivers_in_order_after_delay() {
        let net = SimNet::new(origin(), 1, LinkConfig::perfect(Duration::from_millis(50)));
        let a = Echo {
            out: vec![vec![3], vec![2], vec![1]],
            ..Echo::default()
        };
        let b = Echo {
            echo: true,
            ..Echo::default()
        };
        let mut pair = Pair::new(net, a, b);
        let end = origin() + Duration::from_secs(10);
        while pair.step(end) {}
        let got: Vec<_> = pair
            .b
            .got
            .iter()
            .map(|(t, d)| (t.as_millis(), d[0]))
            .collect();
        assert_eq!(got, vec![(50, 1), (50, 2), (50, 3)]);
        assert_eq!(pair.a.got.len(), 3);
        assert!(pair.a.got.iter().all(|(t, _)| t.as_millis() == 100));
        assert_eq!(pair.net.stats().delivered, 6);
    }

    #[test]
    fn loss_duplication_and_reordering_follow_the_seed() {
        let link = LinkConfig {
            loss: 0.2,
            duplicate: 0.1,
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(100),
        };
        let run = |seed| {
            let mut net = SimNet::new(origin(), seed, link.clone());
            for i in 0..1000u32 {
                net.send(0, 1, i.to_be_bytes().to_vec());
                net.advance_to(net.instant() + Duration::from_millis(1));
            }
            net.advance_to(net.instant() + Duration::from_secs(1));
            let mut got = Vec::new();
            while let Some(d) = net.pop_due() {
                got.push(u32::from_be_bytes(d.data.try_into().unwrap()));
            }
            (got, net.stats())
        };
        let (got, stats) = run(7);
        assert_eq!(run(7).0, got, "same seed, same run");
        assert_ne!(run(8).0, got);
        assert!((150..250).contains(&stats.lost), "{stats:?}");
        assert!((60..140).contains(&stats.duplicated), "{stats:?}");
        assert_eq!(got.len() as u64, stats.sent + stats.duplicated - stats.lost);
        assert!(got.windows(2).any(|w| w[0] > w[1]), "jitter reorders");
    }

    #[test]
    fn per_direction_links() {
        let mut net = SimNet::new(origin(), 3, LinkConfig::default());
        net.set_link(
            0,
            1,
            LinkConfig {
                loss: 1.0,
                ..LinkConfig::default()
            },
        );
        net.send(0, 1, vec![1]);
        net.send(1, 0, vec![2]);
        net.advance_to(net.instant() + Duration::from_secs(1));
        assert_eq!(net.pop_due().map(|d| (d.to, d.data)), Some((0, vec![2])));
        assert_eq!(net.pop_due(), None);
    }
}

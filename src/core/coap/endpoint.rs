//! The per-peer CoAP message layer (RFC 7252 §4): confirmable retransmission with randomised
//! exponential back-off, ACK/RST matching, message-ID de-duplication with cached responses,
//! random tokens, piggy-backed and separate responses, and NSTART = 1.
//!
//! How it is organised:
//! - **Our exchanges.** Confirmable requests and confirmable notifications wait in a FIFO queue
//!   for the single NSTART slot (`active`). The slot is held from the first transmission until
//!   the ACK (notification), the response (request; after an empty ACK we keep waiting up to
//!   `separate_response_timeout`), a RST, or the final timeout. NON requests go out at once and
//!   wait for their response by token; NON notifications go out at once and are remembered
//!   briefly so a RST can be matched to them.
//! - **Their requests.** Every CON/NON carrying a request or response is recorded in a
//!   de-duplication cache by message ID together with what we answered, so a duplicate gets the
//!   identical bytes again and is never reported twice. Requests we have not answered yet live in
//!   `incoming` until `respond`. A separate (deferred) response is a CON of ours that is
//!   retransmitted like any other but does not take the NSTART slot: it answers the peer's
//!   interaction rather than starting one, and must not wait behind our own request.
//! - **Timers.** Only retransmissions, the separate-response deadline, NON-request deadlines
//!   and a queued exchange blocked on message-ID reuse produce a timeout. The caches are pruned
//!   lazily when datagrams arrive, so an idle endpoint reports no timeout at all.

mod dedup;
mod mid;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha12Rng;
use rand_core::{RngCore, SeedableRng};

use self::dedup::{DedupCache, Reply};
use self::mid::MidAllocator;
use super::codec;
use super::message::{Code, Message, MsgType, opt};

/// How many message IDs of the peer we remember at most (the de-duplication cache).
pub const DEDUP_CAPACITY: usize = 256;

/// How many received requests may wait for `respond` at once; beyond that new requests get
/// 5.03 Service Unavailable, so a peer cannot make us hold unbounded state.
pub const MAX_PENDING_REQUESTS: usize = 256;

/// How many recent NON notifications a RST can still be matched to.
const RECENT_NON_CAPACITY: usize = 64;

/// Token length we generate (RFC 7252 §5.3.1: enough randomness against spoofed responses).
const TOKEN_LEN: usize = 8;

/// Transmission parameters (RFC 7252 §4.8).
#[derive(Debug, Clone, PartialEq)]
pub struct CoapConfig {
    /// ACK_TIMEOUT (2 s).
    pub ack_timeout: Duration,
    /// ACK_RANDOM_FACTOR (1.5).
    pub ack_random_factor: f64,
    /// MAX_RETRANSMIT (4).
    pub max_retransmit: u32,
    /// EXCHANGE_LIFETIME (247 s): how long duplicates are recognised.
    pub exchange_lifetime: Duration,
    /// NON_LIFETIME (145 s).
    pub non_lifetime: Duration,
    /// How long to wait for a separate response after an empty ACK (MAX_TRANSMIT_WAIT, 93 s).
    /// Also how long a NON request waits for its response.
    pub separate_response_timeout: Duration,
}

impl Default for CoapConfig {
    fn default() -> Self {
        Self {
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            exchange_lifetime: Duration::from_secs(247),
            non_lifetime: Duration::from_secs(145),
            separate_response_timeout: Duration::from_secs(93),
        }
    }
}

/// Handle of an exchange we started (request or notification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Handle of a request we received and must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IncomingId(pub u64);

/// What the endpoint reports to the layer above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointEvent {
    /// A new request (duplicates are absorbed). Answer with `respond` or `defer`.
    Request {
        /// Handle to answer with.
        id: IncomingId,
        /// The request.
        msg: Message,
    },
    /// The response to one of our requests (piggy-backed or separate).
    Response {
        /// Which request.
        request: RequestId,
        /// The response.
        msg: Message,
    },
    /// A confirmable notification was acknowledged.
    Delivered {
        /// Which notification.
        request: RequestId,
    },
    /// No ACK after MAX_RETRANSMIT, or no separate response in time.
    TimedOut {
        /// Which exchange.
        request: RequestId,
    },
    /// The peer rejected our message with RST (request, CON or NON notification).
    Reset {
        /// Which exchange.
        request: RequestId,
    },
    /// A notification for an observation we hold (see `Endpoint::observe_token`); a CON one has
    /// been acknowledged already.
    Notification {
        /// The observation's token.
        token: Vec<u8>,
        /// The notification.
        msg: Message,
    },
}

/// What kind of exchange holds or waits for the NSTART slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A request: done when its response arrives.
    Request,
    /// A CON notification: done when it is acknowledged.
    Notification,
}

/// A confirmable exchange waiting for the NSTART slot, already encoded (message ID 0 until it
/// is sent, so IDs are handed out in transmission order).
#[derive(Debug)]
struct Queued {
    id: RequestId,
    kind: Kind,
    token: Vec<u8>,
    bytes: Vec<u8>,
}

/// The exchange holding the NSTART slot.
#[derive(Debug)]
struct Active {
    id: RequestId,
    kind: Kind,
    token: Vec<u8>,
    state: ActiveState,
}

#[derive(Debug)]
enum ActiveState {
    /// Sent, not acknowledged: retransmitting.
    AwaitAck(Retransmission),
    /// Acknowledged with an empty ACK: waiting for the separate response.
    AwaitResponse { deadline: Instant },
}

/// A CON datagram being retransmitted with binary exponential back-off.
#[derive(Debug)]
struct Retransmission {
    mid: u16,
    bytes: Vec<u8>,
    retransmits: u32,
    timeout: Duration,
    next_at: Instant,
}

impl Retransmission {
    fn new(mid: u16, bytes: Vec<u8>, now: Instant, timeout: Duration) -> Self {
        Self {
            mid,
            bytes,
            retransmits: 0,
            timeout,
            next_at: after(now, timeout),
        }
    }

    /// At the timer: the datagram to send again, or `None` when MAX_RETRANSMIT is used up.
    /// The wait doubles every time, also after the last retransmission.
    fn fire(&mut self, now: Instant, max_retransmit: u32) -> Option<Vec<u8>> {
        if self.retransmits >= max_retransmit {
            return None;
        }
        self.retransmits += 1;
        self.timeout = self.timeout.saturating_mul(2);
        self.next_at = after(now, self.timeout);
        Some(self.bytes.clone())
    }
}

/// A NON request waiting for its response.
#[derive(Debug)]
struct NonRequest {
    id: RequestId,
    mid: u16,
    token: Vec<u8>,
    deadline: Instant,
}

/// A NON notification a RST may still refer to.
#[derive(Debug)]
struct RecentNon {
    id: RequestId,
    mid: u16,
    sent: Instant,
}

/// A request of the peer that the application has not answered yet.
#[derive(Debug)]
struct Incoming {
    mid: u16,
    token: Vec<u8>,
    confirmable: bool,
    deferred: bool,
    /// The de-duplication entry to store our answer in.
    generation: u64,
}

/// The message layer towards one peer.
#[derive(Debug)]
pub struct Endpoint {
    config: CoapConfig,
    rng: ChaCha12Rng,
    mids: MidAllocator,
    next_request_id: u64,
    next_incoming_id: u64,
    /// CON exchanges waiting for the NSTART slot, in FIFO order.
    queue: VecDeque<Queued>,
    /// The one outstanding CON exchange (NSTART = 1).
    active: Option<Active>,
    non_requests: Vec<NonRequest>,
    recent_non: VecDeque<RecentNon>,
    /// Our CON separate responses awaiting their ACK.
    separate: Vec<Retransmission>,
    dedup: DedupCache,
    incoming: HashMap<IncomingId, Incoming>,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<EndpointEvent>,
    /// The latest `now` we were given.
    last_now: Option<Instant>,
    /// `cancel` freed the slot without a `now`: start the next exchange at the next timeout.
    pump_pending: bool,
    /// Tokens of observations we hold as a client: responses with them are notifications.
    observing: Vec<Vec<u8>>,
}

impl Endpoint {
    /// A fresh endpoint; `seed` drives message IDs, tokens and retransmission jitter.
    pub fn new(config: CoapConfig, seed: u64) -> Self {
        let mut rng = ChaCha12Rng::seed_from_u64(seed);
        // A random first ID, so a restarted endpoint is unlikely to repeat its predecessor's.
        let first_mid = (rng.next_u32() & 0xffff) as u16;
        Self {
            mids: MidAllocator::new(first_mid, config.exchange_lifetime),
            config,
            rng,
            next_request_id: 0,
            next_incoming_id: 0,
            queue: VecDeque::new(),
            active: None,
            non_requests: Vec::new(),
            recent_non: VecDeque::new(),
            separate: Vec::new(),
            dedup: DedupCache::new(DEDUP_CAPACITY),
            incoming: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            last_now: None,
            pump_pending: false,
            observing: Vec::new(),
        }
    }

    /// The transmission parameters.
    pub fn config(&self) -> &CoapConfig {
        &self.config
    }

    /// Queues a request. The endpoint assigns the message ID, and a random 8-byte token unless
    /// `msg.token` is already set. CON requests obey NSTART = 1; a request whose `mtype` is
    /// `Non` is sent at once and waits `separate_response_timeout` for its response. A message
    /// that cannot be encoded (caller bug, e.g. a 9-byte token) is logged and reported as
    /// `TimedOut`.
    pub fn send_request(&mut self, now: Instant, mut msg: Message) -> RequestId {
        self.touch(now);
        let id = self.new_request_id();
        if msg.token.is_empty() {
            msg.token = self.random_token();
        }
        let confirmable = msg.mtype != MsgType::Non;
        msg.mtype = if confirmable {
            MsgType::Con
        } else {
            MsgType::Non
        };
        let Some(bytes) = self.encode_ours(id, &msg) else {
            return id;
        };
        if confirmable {
            self.enqueue(now, id, Kind::Request, msg.token, bytes);
        } else {
            self.send_non_request(now, id, msg.token, bytes);
        }
        id
    }

    /// Sends a notification (a 2.xx response carrying the observation's token and Observe
    /// option) as CON (queued under NSTART) or NON (sent at once).
    pub fn send_notification(
        &mut self,
        now: Instant,
        mut msg: Message,
        confirmable: bool,
    ) -> RequestId {
        self.touch(now);
        let id = self.new_request_id();
        msg.mtype = if confirmable {
            MsgType::Con
        } else {
            MsgType::Non
        };
        let Some(bytes) = self.encode_ours(id, &msg) else {
            return id;
        };
        if confirmable {
            self.enqueue(now, id, Kind::Notification, msg.token, bytes);
        } else if let Some(mid) = self.mids.alloc(now) {
            self.transmits.push_back(with_mid(bytes, mid));
            self.remember_non(now, id, mid);
        } else {
            log::warn!("CoAP: message IDs exhausted, NON notification dropped");
        }
        id
    }

    /// Forgets a queued or in-flight exchange; no event will be reported for it.
    pub fn cancel(&mut self, request: RequestId) {
        self.queue.retain(|q| q.id != request);
        if self.active.as_ref().is_some_and(|a| a.id == request) {
            self.active = None;
            // No `now` here: the next queued exchange starts at the next `handle_timeout`,
            // which `poll_timeout` asks for at once.
            self.pump_pending = !self.queue.is_empty();
        }
        self.non_requests.retain(|n| n.id != request);
        self.recent_non.retain(|n| n.id != request);
    }

    /// Fails every queued and in-flight exchange with `TimedOut` (e.g. the peer became unreachable).
    pub fn abort_all(&mut self) {
        let active = self.active.take().map(|a| a.id);
        let queued = self.queue.drain(..).map(|q| q.id);
        let non = self.non_requests.drain(..).map(|n| n.id);
        let failed: Vec<RequestId> = active.into_iter().chain(queued).chain(non).collect();
        self.events.extend(
            failed
                .into_iter()
                .map(|request| EndpointEvent::TimedOut { request }),
        );
        self.separate.clear();
        self.recent_non.clear();
        self.pump_pending = false;
    }

    /// Answers request `id`: piggy-backed in the ACK for a CON, NON for a NON, or as a separate
    /// CON response after `defer`. The response is cached for duplicates. The endpoint sets type,
    /// message ID and token; an unknown or already answered `id` is ignored.
    pub fn respond(&mut self, now: Instant, id: IncomingId, msg: Message) {
        self.touch(now);
        let Some(req) = self.incoming.remove(&id) else {
            log::debug!("CoAP: respond to unknown or answered request {id:?}");
            return;
        };
        let mut resp = msg;
        resp.token = req.token;
        match (req.confirmable, req.deferred) {
            (true, false) => {
                resp.mtype = MsgType::Ack;
                resp.mid = req.mid;
                let bytes = encode_response(&resp);
                self.transmits.push_back(bytes.clone());
                self.dedup
                    .set_reply(req.mid, req.generation, Reply::Bytes(bytes));
            }
            (true, true) => self.send_separate(now, resp),
            (false, _) => {
                resp.mtype = MsgType::Non;
                self.send_non_response(now, resp);
            }
        }
    }

    /// Sends an empty ACK now; the answer follows later with `respond` as a separate response.
    /// For a NON request nothing is sent (the later answer is a NON anyway).
    pub fn defer(&mut self, now: Instant, id: IncomingId) {
        self.touch(now);
        let Some(req) = self.incoming.get_mut(&id) else {
            return;
        };
        if req.deferred {
            return;
        }
        req.deferred = true;
        if req.confirmable {
            let (mid, generation) = (req.mid, req.generation);
            self.transmits
                .push_back(codec::encode_empty(MsgType::Ack, mid));
            self.dedup.set_reply(mid, generation, Reply::EmptyAck);
        }
    }

    /// Processes a datagram from the peer.
    pub fn handle_datagram(&mut self, now: Instant, data: &[u8]) {
        self.touch(now);
        self.dedup.prune(now);
        let msg = match codec::decode(data) {
            Ok(msg) => msg,
            Err(e) => return self.on_malformed(data, &e),
        };
        match msg.mtype {
            MsgType::Ack => self.on_ack(now, msg),
            MsgType::Rst => self.on_rst(now, &msg),
            MsgType::Con | MsgType::Non if msg.is_empty() => self.on_empty(&msg),
            MsgType::Con | MsgType::Non => self.on_message(now, msg),
        }
    }

    /// Processes timers due at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.touch(now);
        self.fire_active(now);
        self.fire_separate(now);
        self.expire_non_requests(now);
        self.pump(now);
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// When `handle_timeout` must be called next. `None` when nothing is pending: the
    /// de-duplication cache never needs a timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let active = self.active.as_ref().map(|a| match &a.state {
            ActiveState::AwaitAck(rt) => rt.next_at,
            ActiveState::AwaitResponse { deadline } => *deadline,
        });
        let separate = self.separate.iter().map(|rt| rt.next_at);
        let non = self.non_requests.iter().map(|n| n.deadline);
        let pump = self.pump_pending.then_some(self.last_now).flatten();
        let mid_wait = match (&self.active, self.queue.is_empty(), self.last_now) {
            (None, false, Some(now)) => self.mids.blocked_until(now),
            _ => None,
        };
        active
            .into_iter()
            .chain(separate)
            .chain(non)
            .chain(pump)
            .chain(mid_wait)
            .min()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        self.events.pop_front()
    }

    /// True when no exchange of ours is queued or in flight.
    pub fn is_idle(&self) -> bool {
        self.active.is_none()
            && self.queue.is_empty()
            && self.non_requests.is_empty()
            && self.separate.is_empty()
    }

    /// Message IDs of the peer currently remembered for de-duplication (for tests and metrics;
    /// at most [`DEDUP_CAPACITY`]).
    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }

    /// Received requests not answered yet (at most [`MAX_PENDING_REQUESTS`]).
    pub fn pending_requests(&self) -> usize {
        self.incoming.len()
    }

    // ---- our exchanges ----

    fn new_request_id(&mut self) -> RequestId {
        self.next_request_id += 1;
        RequestId(self.next_request_id)
    }

    fn random_token(&mut self) -> Vec<u8> {
        let mut token = vec![0; TOKEN_LEN];
        self.rng.fill_bytes(&mut token);
        token
    }

    /// First retransmission timeout: uniform in [ACK_TIMEOUT, ACK_TIMEOUT × ACK_RANDOM_FACTOR].
    fn initial_timeout(&mut self) -> Duration {
        // 53 random bits → a uniform fraction in [0, 1).
        let fraction = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let spread = (self.config.ack_random_factor - 1.0).max(0.0);
        let extra = self.config.ack_timeout.as_secs_f64() * spread * fraction;
        let extra = Duration::try_from_secs_f64(extra).unwrap_or_default();
        self.config.ack_timeout.saturating_add(extra)
    }

    /// Encodes a message of ours, reporting a failure as `TimedOut` (see `send_request`).
    fn encode_ours(&mut self, id: RequestId, msg: &Message) -> Option<Vec<u8>> {
        match codec::encode(msg) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                log::error!("CoAP: cannot encode our {} message: {e}", msg.code);
                self.events
                    .push_back(EndpointEvent::TimedOut { request: id });
                None
            }
        }
    }

    fn enqueue(&mut self, now: Instant, id: RequestId, kind: Kind, token: Vec<u8>, bytes: Vec<u8>) {
        self.queue.push_back(Queued {
            id,
            kind,
            token,
            bytes,
        });
        self.pump(now);
    }

    /// Starts the next queued exchange if the NSTART slot is free.
    fn pump(&mut self, now: Instant) {
        self.pump_pending = false;
        if self.active.is_some() || self.queue.is_empty() {
            return;
        }
        // Without a usable message ID the exchange stays queued; `poll_timeout` says when.
        let Some(mid) = self.mids.alloc(now) else {
            return;
        };
        let Some(next) = self.queue.pop_front() else {
            return;
        };
        let bytes = with_mid(next.bytes, mid);
        self.transmits.push_back(bytes.clone());
        let timeout = self.initial_timeout();
        self.active = Some(Active {
            id: next.id,
            kind: next.kind,
            token: next.token,
            state: ActiveState::AwaitAck(Retransmission::new(mid, bytes, now, timeout)),
        });
    }

    /// Ends the active exchange with `event` and lets the next one start.
    fn finish_active(&mut self, now: Instant, event: EndpointEvent) {
        self.active = None;
        self.events.push_back(event);
        self.pump(now);
    }

    fn send_non_request(&mut self, now: Instant, id: RequestId, token: Vec<u8>, bytes: Vec<u8>) {
        // Without a message ID the request is lost like any NON could be; it times out.
        let mid = self.mids.alloc(now);
        if let Some(mid) = mid {
            self.transmits.push_back(with_mid(bytes, mid));
        } else {
            log::warn!("CoAP: message IDs exhausted, NON request dropped");
        }
        self.non_requests.push(NonRequest {
            id,
            mid: mid.unwrap_or_default(),
            token,
            deadline: after(now, self.config.separate_response_timeout),
        });
    }

    fn remember_non(&mut self, now: Instant, id: RequestId, mid: u16) {
        self.prune_recent_non(now);
        if self.recent_non.len() >= RECENT_NON_CAPACITY {
            self.recent_non.pop_front();
        }
        self.recent_non.push_back(RecentNon { id, mid, sent: now });
    }

    fn prune_recent_non(&mut self, now: Instant) {
        let lifetime = self.config.non_lifetime;
        while self
            .recent_non
            .front()
            .is_some_and(|n| now.saturating_duration_since(n.sent) > lifetime)
        {
            self.recent_non.pop_front();
        }
    }

    fn fire_active(&mut self, now: Instant) {
        let max = self.config.max_retransmit;
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let id = active.id;
        match &mut active.state {
            ActiveState::AwaitAck(rt) if rt.next_at <= now => match rt.fire(now, max) {
                Some(bytes) => self.transmits.push_back(bytes),
                None => self.finish_active(now, EndpointEvent::TimedOut { request: id }),
            },
            ActiveState::AwaitResponse { deadline } if *deadline <= now => {
                self.finish_active(now, EndpointEvent::TimedOut { request: id });
            }
            _ => {}
        }
    }

    fn fire_separate(&mut self, now: Instant) {
        let max = self.config.max_retransmit;
        let mut again = Vec::new();
        self.separate.retain_mut(|rt| {
            if rt.next_at > now {
                return true;
            }
            match rt.fire(now, max) {
                Some(bytes) => {
                    again.push(bytes);
                    true
                }
                None => {
                    log::debug!("CoAP: separate response MID {} never acknowledged", rt.mid);
                    false
                }
            }
        });
        self.transmits.extend(again);
    }

    fn expire_non_requests(&mut self, now: Instant) {
        let (expired, waiting) = std::mem::take(&mut self.non_requests)
            .into_iter()
            .partition::<Vec<_>, _>(|n| n.deadline <= now);
        self.non_requests = waiting;
        self.events.extend(
            expired
                .into_iter()
                .map(|n| EndpointEvent::TimedOut { request: n.id }),
        );
    }

    // ---- answering the peer ----

    /// A CON separate response: retransmitted until ACKed, outside the NSTART slot.
    fn send_separate(&mut self, now: Instant, mut resp: Message) {
        let Some(mid) = self.mids.alloc(now) else {
            log::warn!("CoAP: message IDs exhausted, separate response dropped");
            return;
        };
        resp.mtype = MsgType::Con;
        resp.mid = mid;
        let bytes = encode_response(&resp);
        self.transmits.push_back(bytes.clone());
        let timeout = self.initial_timeout();
        self.separate
            .push(Retransmission::new(mid, bytes, now, timeout));
    }

    fn send_non_response(&mut self, now: Instant, mut resp: Message) {
        let Some(mid) = self.mids.alloc(now) else {
            log::warn!("CoAP: message IDs exhausted, NON response dropped");
            return;
        };
        resp.mid = mid;
        self.transmits.push_back(encode_response(&resp));
    }

    /// Answers a request without involving the application (4.02, 5.03).
    fn answer_directly(&mut self, now: Instant, req: &Message, code: Code) {
        let mut resp = Message::new(MsgType::Ack, code);
        resp.token.clone_from(&req.token);
        if req.mtype == MsgType::Con {
            resp.mid = req.mid;
            let bytes = encode_response(&resp);
            self.transmits.push_back(bytes.clone());
            let lifetime = self.config.exchange_lifetime;
            self.dedup
                .insert(now, req.mid, lifetime, Reply::Bytes(bytes));
        } else {
            resp.mtype = MsgType::Non;
            self.send_non_response(now, resp);
            let lifetime = self.config.non_lifetime;
            self.dedup.insert(now, req.mid, lifetime, Reply::Nothing);
        }
    }

    /// Answers a CON with RST and remembers that for its duplicates; a NON is dropped, unless
    /// `rst_non` (RFC 7252 §4.3 allows rejecting a NON with RST too).
    fn reject(&mut self, now: Instant, msg: &Message) {
        self.reject_with(now, msg, false);
    }

    fn reject_with(&mut self, now: Instant, msg: &Message, rst_non: bool) {
        if msg.mtype == MsgType::Con || rst_non {
            let rst = codec::encode_empty(MsgType::Rst, msg.mid);
            self.transmits.push_back(rst.clone());
            let lifetime = if msg.mtype == MsgType::Con {
                self.config.exchange_lifetime
            } else {
                self.config.non_lifetime
            };
            self.dedup.insert(now, msg.mid, lifetime, Reply::Bytes(rst));
        } else {
            let lifetime = self.config.non_lifetime;
            self.dedup.insert(now, msg.mid, lifetime, Reply::Nothing);
        }
    }

    // ---- incoming datagrams ----

    fn on_malformed(&mut self, data: &[u8], error: &codec::CodecError) {
        match codec::peek_header(data) {
            // RFC 7252 §4.2: a CON with a message format error is rejected with RST.
            Some((MsgType::Con, mid)) => {
                log::debug!("CoAP: malformed CON {mid} ({error}), sending RST");
                self.transmits
                    .push_back(codec::encode_empty(MsgType::Rst, mid));
            }
            _ => log::debug!("CoAP: dropping malformed datagram ({error})"),
        }
    }

    /// An empty CON is a ping (RFC 7252 §4.3): RST. An empty NON is meaningless: dropped.
    fn on_empty(&mut self, msg: &Message) {
        if msg.mtype == MsgType::Con {
            self.transmits
                .push_back(codec::encode_empty(MsgType::Rst, msg.mid));
        }
    }

    fn on_ack(&mut self, now: Instant, msg: Message) {
        if msg.is_empty() {
            return self.on_empty_ack(now, msg.mid);
        }
        if !msg.code.is_response() {
            log::debug!("CoAP: dropping ACK with code {}", msg.code);
            return;
        }
        if let Some(number) = unknown_critical(&msg) {
            // RFC 7252 §5.4.1: the piggy-backed response is rejected, as if never received.
            log::debug!(
                "CoAP: rejecting ACK {} with unknown critical option {number}",
                msg.mid
            );
            return;
        }
        let matches = self.active.as_ref().is_some_and(|a| {
            a.kind == Kind::Request
                && a.token == msg.token
                && matches!(&a.state, ActiveState::AwaitAck(rt) if rt.mid == msg.mid)
        });
        match self.active.as_ref().map(|a| a.id) {
            Some(request) if matches => {
                self.finish_active(now, EndpointEvent::Response { request, msg });
            }
            _ => log::debug!("CoAP: dropping unmatched ACK {}", msg.mid),
        }
    }

    fn on_empty_ack(&mut self, now: Instant, mid: u16) {
        let deadline = after(now, self.config.separate_response_timeout);
        if let Some(active) = self.active.as_mut()
            && matches!(&active.state, ActiveState::AwaitAck(rt) if rt.mid == mid)
        {
            match active.kind {
                // The response follows separately, matched by token.
                Kind::Request => active.state = ActiveState::AwaitResponse { deadline },
                Kind::Notification => {
                    let request = active.id;
                    self.finish_active(now, EndpointEvent::Delivered { request });
                }
            }
            return;
        }
        // Otherwise it may acknowledge a separate response of ours; late duplicates are ignored.
        self.separate.retain(|rt| rt.mid != mid);
    }

    fn on_rst(&mut self, now: Instant, msg: &Message) {
        if !msg.is_empty() {
            return;
        }
        let mid = msg.mid;
        let active = self.active.as_ref().and_then(|a| match &a.state {
            ActiveState::AwaitAck(rt) if rt.mid == mid => Some(a.id),
            _ => None,
        });
        if let Some(request) = active {
            return self.finish_active(now, EndpointEvent::Reset { request });
        }
        self.separate.retain(|rt| rt.mid != mid);
        self.prune_recent_non(now);
        let non_request = take_first(&mut self.non_requests, |n| n.mid == mid).map(|n| n.id);
        let notification = self
            .recent_non
            .iter()
            .position(|n| n.mid == mid)
            .and_then(|i| self.recent_non.remove(i))
            .map(|n| n.id);
        if let Some(request) = non_request.or(notification) {
            self.events.push_back(EndpointEvent::Reset { request });
        }
    }

    /// A non-empty CON or NON: a request or a (separate or NON) response.
    fn on_message(&mut self, now: Instant, msg: Message) {
        if let Some(reply) = self.dedup.get(now, msg.mid) {
            // RFC 7252 §4.5: acknowledge every copy the same way, process it once.
            let again = match reply {
                _ if msg.mtype != MsgType::Con => None,
                Reply::Bytes(bytes) => Some(bytes.clone()),
                Reply::EmptyAck => Some(codec::encode_empty(MsgType::Ack, msg.mid)),
                Reply::Pending | Reply::Nothing => None,
            };
            self.transmits.extend(again);
            return;
        }
        if msg.code.is_request() {
            self.on_request(now, msg);
        } else if msg.code.is_response() {
            self.on_response(now, msg);
        } else {
            // Reserved classes 1, 6 and 7.
            log::debug!("CoAP: rejecting message with code {}", msg.code);
            self.reject(now, &msg);
        }
    }

    fn on_request(&mut self, now: Instant, msg: Message) {
        let confirmable = msg.mtype == MsgType::Con;
        if let Some(number) = unknown_critical(&msg) {
            log::debug!("CoAP: request with unknown critical option {number}");
            // RFC 7252 §5.4.1: 4.02 for a CON; a NON is rejected (silently).
            return if confirmable {
                self.answer_directly(now, &msg, Code::BAD_OPTION)
            } else {
                self.reject(now, &msg)
            };
        }
        if self.incoming.len() >= MAX_PENDING_REQUESTS {
            // Peer-triggered: debug, so a flood cannot flood the journal too.
            log::debug!("CoAP: {MAX_PENDING_REQUESTS} requests unanswered, refusing more");
            return self.answer_directly(now, &msg, Code::SERVICE_UNAVAILABLE);
        }
        let lifetime = if confirmable {
            self.config.exchange_lifetime
        } else {
            self.config.non_lifetime
        };
        let generation = self.dedup.insert(now, msg.mid, lifetime, Reply::Pending);
        self.next_incoming_id += 1;
        let id = IncomingId(self.next_incoming_id);
        let incoming = Incoming {
            mid: msg.mid,
            token: msg.token.clone(),
            confirmable,
            deferred: false,
            generation,
        };
        self.incoming.insert(id, incoming);
        self.events.push_back(EndpointEvent::Request { id, msg });
    }

    /// A separate response (CON or NON) or the response to a NON request.
    fn on_response(&mut self, now: Instant, msg: Message) {
        if let Some(number) = unknown_critical(&msg) {
            log::debug!("CoAP: rejecting response with unknown critical option {number}");
            return self.reject(now, &msg);
        }
        let Some(request) = self.take_request_by_token(&msg.token) else {
            if self.observing.contains(&msg.token) {
                return self.on_notification(now, msg);
            }
            // RFC 7252 §5.3.2: a response nobody waits for is rejected. A NON one is rejected
            // with RST as well when it is a notification (it carries Observe): that is how its
            // sender learns to stop (RFC 7641 §3.6).
            log::debug!("CoAP: unmatched response {} ({})", msg.mid, msg.code);
            let notification = msg.has_option(opt::OBSERVE);
            return self.reject_with(now, &msg, notification);
        };
        if msg.mtype == MsgType::Con {
            let ack = codec::encode_empty(MsgType::Ack, msg.mid);
            self.transmits.push_back(ack.clone());
            let lifetime = self.config.exchange_lifetime;
            self.dedup.insert(now, msg.mid, lifetime, Reply::Bytes(ack));
        } else {
            let lifetime = self.config.non_lifetime;
            self.dedup.insert(now, msg.mid, lifetime, Reply::Nothing);
        }
        self.events
            .push_back(EndpointEvent::Response { request, msg });
        self.pump(now);
    }

    /// A notification for one of our observations: acknowledged (CON), de-duplicated, reported.
    fn on_notification(&mut self, now: Instant, msg: Message) {
        let (reply, lifetime) = if msg.mtype == MsgType::Con {
            let ack = codec::encode_empty(MsgType::Ack, msg.mid);
            self.transmits.push_back(ack.clone());
            (Reply::Bytes(ack), self.config.exchange_lifetime)
        } else {
            (Reply::Nothing, self.config.non_lifetime)
        };
        self.dedup.insert(now, msg.mid, lifetime, reply);
        // A final (non-2.xx) notification or one without Observe ends the observation (RFC 7641).
        if !msg.code.is_success() || !msg.has_option(opt::OBSERVE) {
            self.observing.retain(|t| *t != msg.token);
        }
        self.events.push_back(EndpointEvent::Notification {
            token: msg.token.clone(),
            msg,
        });
    }

    /// Treats later responses carrying `token` as notifications of an observation we started
    /// (a GET with Observe = 0 sent with this token).
    pub fn observe_token(&mut self, token: Vec<u8>) {
        if !self.observing.contains(&token) {
            self.observing.push(token);
        }
    }

    /// Stops accepting notifications for `token`: the next one is rejected with RST, which
    /// cancels the observation at the peer (RFC 7641 §3.6).
    pub fn forget_token(&mut self, token: &[u8]) {
        self.observing.retain(|t| t != token);
    }

    /// The request of ours waiting for a response with `token`, removed from the waiting state.
    fn take_request_by_token(&mut self, token: &[u8]) -> Option<RequestId> {
        let active = self
            .active
            .as_ref()
            .filter(|a| a.kind == Kind::Request && a.token == token)
            .map(|a| a.id);
        if active.is_some() {
            self.active = None;
            return active;
        }
        take_first(&mut self.non_requests, |n| n.token == token).map(|n| n.id)
    }

    /// Remembers the latest `now`, for `cancel` (which has none).
    fn touch(&mut self, now: Instant) {
        self.last_now = Some(self.last_now.map_or(now, |t| t.max(now)));
    }
}

/// `t + d`, saturating instead of panicking on overflow (only absurd configurations get there):
/// falls back to a year, then to `t`.
fn after(t: Instant, d: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    t.checked_add(d)
        .or_else(|| t.checked_add(YEAR))
        .unwrap_or(t)
}

/// Writes the message ID into an encoded message (bytes 2..4 of the header).
fn with_mid(mut bytes: Vec<u8>, mid: u16) -> Vec<u8> {
    if let Some(field) = bytes.get_mut(2..4) {
        field.copy_from_slice(&mid.to_be_bytes());
    }
    bytes
}

/// Encodes a response of ours. It can only fail for application bugs (an option longer than
/// 64 KiB); the peer then gets a bare 5.00 instead of nothing.
fn encode_response(resp: &Message) -> Vec<u8> {
    codec::encode(resp).unwrap_or_else(|e| {
        log::error!("CoAP: cannot encode our {} response: {e}", resp.code);
        let mut bare = Message::new(resp.mtype, Code::INTERNAL_SERVER_ERROR);
        bare.mid = resp.mid;
        bare.token.clone_from(&resp.token);
        codec::encode(&bare).unwrap_or_else(|_| codec::encode_empty(resp.mtype, resp.mid))
    })
}

/// The first critical option we do not understand (RFC 7252 §5.4.1).
fn unknown_critical(msg: &Message) -> Option<u16> {
    msg.options
        .iter()
        .map(|(number, _)| *number)
        .find(|n| opt::is_critical(*n) && !opt::is_known(*n))
}

/// Removes and returns the first element matching `pred`.
fn take_first<T>(items: &mut Vec<T>, pred: impl Fn(&T) -> bool) -> Option<T> {
    let i = items.iter().position(pred)?;
    Some(items.remove(i))
}

//! The per-peer CoAP message layer (RFC 7252 §4): confirmable retransmission with randomised
//! exponential back-off, ACK/RST matching, message-ID de-duplication with cached responses,
//! random tokens, piggy-backed and separate responses, and NSTART = 1.

use std::time::{Duration, Instant};

use super::message::Message;

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
}

/// The message layer towards one peer.
#[derive(Debug)]
pub struct Endpoint {
    config: CoapConfig,
}

impl Endpoint {
    /// A fresh endpoint; `seed` drives message IDs, tokens and retransmission jitter.
    pub fn new(_config: CoapConfig, _seed: u64) -> Self {
        todo!("Endpoint::new")
    }

    /// The transmission parameters.
    pub fn config(&self) -> &CoapConfig {
        &self.config
    }

    /// Queues a request. The endpoint assigns the message ID, and a random 8-byte token unless
    /// `msg.token` is already set. CON requests obey NSTART = 1.
    pub fn send_request(&mut self, _now: Instant, _msg: Message) -> RequestId {
        todo!("Endpoint::send_request")
    }

    /// Sends a notification (a 2.xx response carrying the observation's token and Observe
    /// option) as CON (queued under NSTART) or NON (sent at once).
    pub fn send_notification(
        &mut self,
        _now: Instant,
        _msg: Message,
        _confirmable: bool,
    ) -> RequestId {
        todo!("Endpoint::send_notification")
    }

    /// Forgets a queued or in-flight exchange; no event will be reported for it.
    pub fn cancel(&mut self, _request: RequestId) {
        todo!("Endpoint::cancel")
    }

    /// Fails every queued and in-flight exchange with `TimedOut` (e.g. the peer became unreachable).
    pub fn abort_all(&mut self) {
        todo!("Endpoint::abort_all")
    }

    /// Answers request `id`: piggy-backed in the ACK for a CON, NON for a NON, or as a separate
    /// CON response after `defer`. The response is cached for duplicates.
    pub fn respond(&mut self, _now: Instant, _id: IncomingId, _msg: Message) {
        todo!("Endpoint::respond")
    }

    /// Sends an empty ACK now; the answer follows later with `respond` as a separate response.
    pub fn defer(&mut self, _now: Instant, _id: IncomingId) {
        todo!("Endpoint::defer")
    }

    /// Processes a datagram from the peer.
    pub fn handle_datagram(&mut self, _now: Instant, _data: &[u8]) {
        todo!("Endpoint::handle_datagram")
    }

    /// Processes timers due at or before `now`.
    pub fn handle_timeout(&mut self, _now: Instant) {
        todo!("Endpoint::handle_timeout")
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        todo!("Endpoint::poll_transmit")
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        todo!("Endpoint::poll_timeout")
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        todo!("Endpoint::poll_event")
    }

    /// True when no exchange of ours is queued or in flight.
    pub fn is_idle(&self) -> bool {
        todo!("Endpoint::is_idle")
    }
}

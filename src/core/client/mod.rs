//! `Client`: the sans-IO LwM2M client. It owns the objects and one CoAP endpoint per server, and
//! runs registration, device management and information reporting.
//!
//! Driving it (the runtime's loop, quinn-style): feed `handle_datagram`, `handle_timeout`,
//! `handle_command` and `handle_effect_done` with the current `Instant`; after each call drain
//! `poll_transmit`, then `poll_effect`, then `poll_event`, and sleep until `poll_timeout`.

mod access;
mod bootstrap;
#[cfg(test)]
mod bootstrap_tests;
mod observe;
mod registration;
mod requests;
mod staging;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha12Rng;
use rand_core::{RngCore, SeedableRng};

pub use self::bootstrap::BOOTSTRAP_PEER;
use self::bootstrap::Bootstrapper;
use self::observe::{Failure, Observation};
use self::registration::Registration;
use self::requests::{Block1Transfer, CachedBody};
use super::coap::endpoint::{CoapConfig, Endpoint, EndpointEvent, RequestId};
use super::coap::message::Message;
use super::effect::{Effect, EffectId, Outcome};
use super::lwm2m::attributes::AttributeStore;
use super::lwm2m::content::cf;
use super::lwm2m::links::Lwm2mVersion;
use super::lwm2m::path::Path;
use super::lwm2m::value::{ResourceValue, Value};
use super::object::{CoreAction, Ctx, CtxOutput, Registry};

/// Per-server preferences that are not part of the Server object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerPrefs {
    /// The enabler version to register with.
    pub version: Lwm2mVersion,
    /// The format for multi-value reads without Accept.
    pub content_format: u16,
}

impl Default for ServerPrefs {
    fn default() -> Self {
        Self {
            version: Lwm2mVersion::V1_1,
            content_format: cf::SENML_CBOR,
        }
    }
}

/// Settings of the core (validated by the caller).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Endpoint Client Name (`ep=`).
    pub endpoint: String,
    /// CoAP transmission parameters.
    pub coap: CoapConfig,
    /// Largest block size exponent we use (6 = 1024 bytes).
    pub block_szx: u8,
    /// Largest structured request body assembled from Block1 blocks.
    pub max_body_size: usize,
    /// First registration back-off delay.
    pub retry_initial: Duration,
    /// Registration back-off cap.
    pub retry_max: Duration,
    /// Re-evaluation interval of observed host values without `epmax`.
    pub sample_interval: Duration,
    /// Preferences by Short Server ID.
    pub server_prefs: BTreeMap<u16, ServerPrefs>,
    /// Bootstrap after this many failed Register attempts with every server (0: never).
    pub bootstrap_fallback_after: u32,
    /// A bootstrap fails when no Bootstrap-Finish arrives this long after the last request.
    pub bootstrap_timeout: Duration,
    /// Seed for tokens, message IDs and jitter (the runtime draws it from the OS once).
    pub seed: u64,
}

/// Wall-clock time for objects and timestamps; the core never reads a clock itself.
pub trait WallClock: Send {
    /// Unix time in seconds at monotonic instant `now`.
    fn unix_time(&self, now: Instant) -> i64;
}

/// Identifies where a datagram goes or came from: the Short Server ID of a server account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Peer(pub u16);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            BOOTSTRAP_PEER => f.write_str("Bootstrap-Server"),
            Self(ssid) => write!(f, "server {ssid}"),
        }
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub peer: Peer,
    /// The encoded CoAP message.
    pub data: Vec<u8>,
}

/// A request from the runtime (signals, later D-Bus).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// De-register from every server, then report `Event::Stopped`.
    Shutdown,
    /// Send a Registration Update to one server, or to all.
    UpdateRegistration(Option<u16>),
    /// Host data below this path changed (e.g. the modem): re-evaluate observations of it.
    ValueChanged(Path),
}

/// Something the runtime may want to know or act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Datagrams for `peer` go to `uri` (sent before the first datagram to a new peer).
    Connect {
        /// The peer.
        peer: Peer,
        /// Its LwM2M Server URI.
        uri: String,
        /// The Security instance's mode and credentials, for the transport.
        security: PeerSecurity,
    },
    /// Registered (or registered again) with a server.
    Registered {
        /// Short Server ID.
        ssid: u16,
    },
    /// A Register failed; the next attempt follows after `retry_in`.
    RegistrationFailed {
        /// Short Server ID.
        ssid: u16,
        /// Why.
        reason: String,
        /// Back-off until the next attempt.
        retry_in: Duration,
    },
    /// De-registered from a server.
    Deregistered {
        /// Short Server ID.
        ssid: u16,
    },
    /// `peer` is gone (its account was removed): close its link.
    Disconnect {
        /// The peer.
        peer: Peer,
    },
    /// Every server is de-registered after `Command::Shutdown`.
    Stopped,
}

/// What one of our outstanding requests is for.
#[derive(Debug, Clone)]
enum Exchange {
    /// Register (possibly one block of it).
    Register,
    /// Registration Update.
    Update,
    /// De-register.
    Deregister,
    /// A confirmable notification of the observation with this token.
    Notify(Vec<u8>),
}

/// Everything the client keeps per LwM2M server.
#[derive(Debug)]
struct ServerConn {
    ssid: u16,
    /// The account's URI and credentials, as handed to the runtime.
    uri: String,
    security: PeerSecurity,
    endpoint: Endpoint,
    prefs: ServerPrefs,
    registration: Registration,
    /// Failed Register attempts since the last bootstrap (drives the fallback to bootstrap).
    failures_since_bootstrap: u32,
    attributes: AttributeStore,
    observations: BTreeMap<Vec<u8>, Observation>,
    exchanges: BTreeMap<RequestId, Exchange>,
    block1: Vec<Block1Transfer>,
    block2: Vec<CachedBody>,
}

/// The sans-IO LwM2M client.
pub struct Client {
    config: ClientConfig,
    registry: Registry,
    clock: Box<dyn WallClock>,
    rng: ChaCha12Rng,
    servers: BTreeMap<u16, ServerConn>,
    /// The Bootstrap-Server side.
    bootstrap: Bootstrapper,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    effects: VecDeque<(EffectId, Effect)>,
    effect_owner: BTreeMap<EffectId, u16>,
    next_effect: u64,
    persist_dirty: bool,
    shutting_down: bool,
    /// Answers an object asked to hold (one per object), by object id.
    held: BTreeMap<u16, HeldResponse>,
}

/// A response kept back until its object releases it (see `Ctx::hold_response`).
#[derive(Debug)]
struct HeldResponse {
    ssid: u16,
    id: super::coap::endpoint::IncomingId,
    response: Message,
    since: Instant,
}

/// A held response not released within this time is answered 5.03 (the server would give up
/// on the exchange anyway).
const HOLD_LIMIT: Duration = Duration::from_secs(60);

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.config.endpoint)
            .field("objects", &self.registry)
            .field("servers", &self.servers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// How the transport must secure a peer: the Security instance's /0/x/2-5. `Debug` never
/// prints the secret key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PeerSecurity {
    /// /0/x/2 Security Mode (0 PSK, 1 RPK, 2 certificate, 3 NoSec, 4 EST).
    pub mode: i64,
    /// /0/x/3 PSK identity or client certificate.
    pub identity: Vec<u8>,
    /// /0/x/4 server public key or certificate.
    pub server_public_key: Vec<u8>,
    /// /0/x/5 PSK or private key.
    pub secret_key: Vec<u8>,
    /// /0/x/14 SNI, when set.
    pub sni: Option<String>,
}

impl std::fmt::Debug for PeerSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSecurity")
            .field("mode", &self.mode)
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .field("server_public_key", &self.server_public_key.len())
            .field(
                "secret_key",
                &format_args!("<{} bytes>", self.secret_key.len()),
            )
            .field("sni", &self.sni)
            .finish()
    }
}

/// One server's state as shown to the operator (`STATUS=`, D-Bus).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStatus {
    /// Short Server ID.
    pub ssid: u16,
    /// `registered`, `registering`, `waiting`, `disabled`, `deregistering` or `stopped`.
    pub state: &'static str,
}

impl Client {
    /// Builds a client over `registry` (which must hold objects 0 and 1 describing the servers),
    /// restoring `state` saved by an earlier run, and starts registering at `now`.
    pub fn new(
        config: ClientConfig,
        mut registry: Registry,
        clock: Box<dyn WallClock>,
        state: Option<serde_json::Value>,
        now: Instant,
    ) -> Self {
        let mut rng = ChaCha12Rng::seed_from_u64(config.seed);
        let restored_attrs = restore_state(&mut registry, state);
        let bootstrap = Bootstrapper::new(Endpoint::new(config.coap.clone(), rng.next_u64()));
        let mut client = Self {
            config,
            registry,
            clock,
            rng,
            servers: BTreeMap::new(),
            bootstrap,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            effects: VecDeque::new(),
            effect_owner: BTreeMap::new(),
            next_effect: 1,
            persist_dirty: false,
            shutting_down: false,
            held: BTreeMap::new(),
        };
        let (found, _) = client.with_ctx(now, None, server_accounts);
        for (ssid, uri, security) in found {
            let attributes = restored_attrs.get(&ssid).cloned().unwrap_or_default();
            client.add_server(now, ssid, uri, security, attributes);
        }
        if client.servers.is_empty() {
            client.start_bootstrap(now, "no LwM2M server account is configured", true);
        }
        for oid in client.registry.ids() {
            let (_, out) = client.with_ctx(now, None, |reg, ctx| {
                if let Some(object) = reg.get_mut(oid) {
                    object.start(ctx);
                }
            });
            client.absorb(now, oid, out);
        }
        client.handle_timeout(now);
        client
    }

    /// Starts serving the account `ssid`: the runtime opens its link, and registration begins.
    fn add_server(
        &mut self,
        now: Instant,
        ssid: u16,
        uri: String,
        security: PeerSecurity,
        attributes: AttributeStore,
    ) {
        let prefs = self
            .config
            .server_prefs
            .get(&ssid)
            .copied()
            .unwrap_or_default();
        let endpoint = Endpoint::new(self.config.coap.clone(), self.rng.next_u64());
        self.events.push_back(Event::Connect {
            peer: Peer(ssid),
            uri: uri.clone(),
            security: security.clone(),
        });
        self.servers.insert(
            ssid,
            ServerConn {
                ssid,
                uri,
                security,
                endpoint,
                prefs,
                registration: Registration::new(now),
                failures_since_bootstrap: 0,
                attributes,
                observations: BTreeMap::new(),
                exchanges: BTreeMap::new(),
                block1: Vec::new(),
                block2: Vec::new(),
            },
        );
    }

    /// Brings the server connections in line with the accounts in objects 0 and 1 (after a
    /// bootstrap): removed or re-pointed accounts are dropped, and every other one registers
    /// afresh, as after a start (its link and per-server attributes stay).
    fn reload_servers(&mut self, now: Instant) {
        let (found, _) = self.with_ctx(now, None, server_accounts);
        let wanted: BTreeMap<u16, (String, PeerSecurity)> = found
            .into_iter()
            .map(|(ssid, uri, sec)| (ssid, (uri, sec)))
            .collect();
        let existing: Vec<u16> = self.servers.keys().copied().collect();
        for ssid in existing {
            let keep = self.servers.get(&ssid).is_some_and(|c| {
                wanted
                    .get(&ssid)
                    .is_some_and(|(uri, sec)| *uri == c.uri && *sec == c.security)
            });
            if keep {
                self.restart_registration(now, ssid);
            } else {
                log::info!("server {ssid}: account removed or changed by the bootstrap");
                self.servers.remove(&ssid);
                self.events
                    .push_back(Event::Disconnect { peer: Peer(ssid) });
            }
        }
        for (ssid, (uri, security)) in wanted {
            if !self.servers.contains_key(&ssid) {
                log::info!("server {ssid}: new account {uri}");
                self.add_server(now, ssid, uri, security, AttributeStore::default());
            }
        }
        self.persist_dirty = true;
    }

    // ----- inputs -----

    /// A datagram arrived from `peer`.
    pub fn handle_datagram(&mut self, now: Instant, peer: Peer, data: &[u8]) {
        if peer == BOOTSTRAP_PEER {
            self.bootstrap.endpoint.handle_datagram(now, data);
            self.pump(now);
            return;
        }
        let Some(conn) = self.servers.get_mut(&peer.0) else {
            log::debug!("datagram from unknown peer {peer:?} dropped");
            return;
        };
        conn.endpoint.handle_datagram(now, data);
        self.pump(now);
    }

    /// The runtime could not deliver to `peer` (address unresolvable, network unreachable):
    /// everything outstanding towards it fails now instead of after the retransmission span.
    pub fn handle_unreachable(&mut self, now: Instant, peer: Peer) {
        if peer == BOOTSTRAP_PEER {
            self.bootstrap.endpoint.abort_all();
        } else if let Some(conn) = self.servers.get_mut(&peer.0) {
            conn.endpoint.abort_all();
        }
        self.pump(now);
    }

    /// Timers due at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ssids: Vec<u16> = self.servers.keys().copied().collect();
        for ssid in ssids {
            if let Some(conn) = self.servers.get_mut(&ssid) {
                conn.endpoint.handle_timeout(now);
            }
            self.registration_timers(now, ssid);
            self.observation_timers(now, ssid);
        }
        self.bootstrap.endpoint.handle_timeout(now);
        self.bootstrap_timers(now);
        self.object_timers(now);
        self.expire_held(now);
        self.pump(now);
    }

    fn object_timers(&mut self, now: Instant) {
        let due: Vec<u16> = self
            .registry
            .iter()
            .filter(|(_, o)| o.poll_timeout().is_some_and(|t| t <= now))
            .map(|(id, _)| id)
            .collect();
        for oid in due {
            let (_, out) = self.with_ctx(now, None, |reg, ctx| {
                if let Some(object) = reg.get_mut(oid) {
                    object.handle_timeout(ctx);
                }
            });
            self.absorb(now, oid, out);
        }
    }

    /// Tells every object about a core event.
    fn object_event(&mut self, now: Instant, event: &super::object::CoreEvent) {
        for oid in self.registry.ids() {
            let (_, out) = self.with_ctx(now, None, |reg, ctx| {
                if let Some(object) = reg.get_mut(oid) {
                    object.core_event(ctx, event);
                }
            });
            self.absorb(now, oid, out);
        }
    }

    fn expire_held(&mut self, now: Instant) {
        let expired: Vec<u16> = self
            .held
            .iter()
            .filter(|(_, h)| now.saturating_duration_since(h.since) >= HOLD_LIMIT)
            .map(|(o, _)| *o)
            .collect();
        for oid in expired {
            log::warn!("object {oid} did not release its answer in time; answering 5.03");
            self.release_held(
                now,
                oid,
                Err(super::lwm2m::error::Error::Unavailable("timed out".into())),
            );
        }
    }

    /// Sends the answer object `oid` held: as prepared, or the error.
    fn release_held(
        &mut self,
        now: Instant,
        oid: u16,
        result: Result<(), super::lwm2m::error::Error>,
    ) {
        let Some(held) = self.held.remove(&oid) else {
            return;
        };
        let response = match result {
            Ok(()) => held.response,
            Err(e) => requests::error_response(&e),
        };
        if let Some(conn) = self.servers.get_mut(&held.ssid) {
            conn.endpoint.respond(now, held.id, response);
        }
    }

    /// A command from the runtime.
    pub fn handle_command(&mut self, now: Instant, command: Command) {
        match command {
            Command::Shutdown => self.start_shutdown(now),
            Command::UpdateRegistration(target) => {
                let ssids: Vec<u16> = match target {
                    Some(s) => vec![s],
                    None => self.servers.keys().copied().collect(),
                };
                for ssid in ssids {
                    self.request_update(now, ssid);
                }
            }
            Command::ValueChanged(path) => self.value_changed(now, &path),
        }
        self.pump(now);
    }

    /// The outcome of an effect handed out by `poll_effect`.
    pub fn handle_effect_done(&mut self, now: Instant, id: EffectId, outcome: Outcome) {
        if let Outcome::Failed(reason) = &outcome {
            log::warn!("effect {id:?} failed: {reason}");
        }
        if let Some(oid) = self.effect_owner.remove(&id) {
            let mut out = CtxOutput::default();
            let unix_time = self.clock.unix_time(now);
            if let Some(object) = self.registry.get_mut(oid) {
                let mut ctx = Ctx {
                    now,
                    unix_time,
                    server: None,
                    out: &mut out,
                };
                object.effect_done(&mut ctx, id, &outcome);
            }
            self.absorb(now, oid, out);
        }
        self.pump(now);
    }

    // ----- outputs -----

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next effect to execute. Effects wait until every pending datagram has been taken, so
    /// the answer to an Execute leaves before, say, the reboot it triggers.
    pub fn poll_effect(&mut self) -> Option<(EffectId, Effect)> {
        if !self.transmits.is_empty() {
            return None;
        }
        self.effects.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must next be called (`None`: only input can make work).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut take = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for conn in self.servers.values() {
            take(conn.endpoint.poll_timeout());
            take(conn.registration.deadline());
            for obs in conn.observations.values() {
                take(obs.next_eval);
            }
        }
        for (_, object) in self.registry.iter() {
            take(object.poll_timeout());
        }
        for held in self.held.values() {
            take(Some(held.since + HOLD_LIMIT));
        }
        take(self.bootstrap.endpoint.poll_timeout());
        take(self.bootstrap.deadline());
        next
    }

    /// Each server's registration state.
    /// The Bootstrap-Server shows as ssid 0 while a bootstrap is under way.
    pub fn status(&self) -> Vec<ServerStatus> {
        let bootstrap = self.bootstrap.state_name().map(|state| ServerStatus {
            ssid: BOOTSTRAP_PEER.0,
            state,
        });
        bootstrap
            .into_iter()
            .chain(self.servers.values().map(|c| ServerStatus {
                ssid: c.ssid,
                state: c.registration.state_name(),
            }))
            .collect()
    }

    /// True once shutdown completed (every server de-registered or given up).
    pub fn is_stopped(&self) -> bool {
        self.shutting_down && self.servers.values().all(|c| c.registration.is_stopped())
    }

    // ----- internals shared by the submodules -----

    /// Drains endpoint output and events until nothing moves, then persists if needed.
    fn pump(&mut self, now: Instant) {
        loop {
            let mut moved = false;
            let ssids: Vec<u16> = self.servers.keys().copied().collect();
            for ssid in ssids {
                let Some(conn) = self.servers.get_mut(&ssid) else {
                    continue;
                };
                while let Some(data) = conn.endpoint.poll_transmit() {
                    self.transmits.push_back(Transmit {
                        peer: Peer(ssid),
                        data,
                    });
                    moved = true;
                }
                let Some(conn) = self.servers.get_mut(&ssid) else {
                    continue;
                };
                if let Some(event) = conn.endpoint.poll_event() {
                    moved = true;
                    self.endpoint_event(now, ssid, event);
                }
            }
            while let Some(data) = self.bootstrap.endpoint.poll_transmit() {
                self.transmits.push_back(Transmit {
                    peer: BOOTSTRAP_PEER,
                    data,
                });
                moved = true;
            }
            if let Some(event) = self.bootstrap.endpoint.poll_event() {
                moved = true;
                self.bootstrap_event(now, event);
            }
            if !moved {
                break;
            }
        }
        if self.persist_dirty {
            self.persist_dirty = false;
            let state = save_state(&self.registry, &self.servers);
            let id = self.effect_id();
            self.effects.push_back((id, Effect::SaveState(state)));
        }
        if self.shutting_down && self.is_stopped() && !self.events.contains(&Event::Stopped) {
            self.events.push_back(Event::Stopped);
        }
    }

    fn endpoint_event(&mut self, now: Instant, ssid: u16, event: EndpointEvent) {
        match event {
            EndpointEvent::Request { id, msg } => self.handle_request(now, ssid, id, msg),
            EndpointEvent::Response { request, msg } => {
                self.exchange_done(now, ssid, request, Ok(msg))
            }
            EndpointEvent::Delivered { request } => self.notification_delivered(now, ssid, request),
            EndpointEvent::TimedOut { request } => {
                self.exchange_done(now, ssid, request, Err(Failure::TimedOut))
            }
            EndpointEvent::Reset { request } => {
                self.exchange_done(now, ssid, request, Err(Failure::Reset))
            }
            // We never observe anything on a server: no token is registered for it.
            EndpointEvent::Notification { .. } => {}
        }
    }

    fn exchange_done(
        &mut self,
        now: Instant,
        ssid: u16,
        request: RequestId,
        result: Result<Message, Failure>,
    ) {
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return;
        };
        let reason = |f: Failure| match f {
            Failure::TimedOut => "no answer",
            Failure::Reset => "reset by the server",
        };
        match (conn.exchanges.remove(&request), result) {
            (Some(Exchange::Register), r) => {
                self.register_done(now, ssid, request, r.map_err(reason))
            }
            (Some(Exchange::Update), r) => self.update_done(now, ssid, r.map_err(reason)),
            (Some(Exchange::Deregister), _) => self.deregister_done(now, ssid),
            (Some(Exchange::Notify(token)), Err(f)) => {
                self.notification_failed(now, ssid, Some(&token), request, f)
            }
            (None, Err(f)) => self.notification_failed(now, ssid, None, request, f),
            (Some(Exchange::Notify(_)) | None, Ok(msg)) => {
                log::debug!("server {ssid}: unexpected response {} ignored", msg.code)
            }
        }
    }

    fn effect_id(&mut self) -> EffectId {
        let id = EffectId(self.next_effect);
        self.next_effect += 1;
        id
    }

    /// Takes the outputs of an object call: effects, changes, core actions, persistence.
    fn absorb(&mut self, now: Instant, oid: u16, out: CtxOutput) {
        if let Some(result) = out.release {
            self.release_held(now, oid, result);
        }
        for effect in out.effects {
            let id = self.effect_id();
            self.effect_owner.insert(id, oid);
            self.effects.push_back((id, effect));
        }
        if out.persist {
            self.persist_dirty = true;
        }
        for path in out.changed {
            self.value_changed(now, &path);
        }
        for action in out.actions {
            match action {
                CoreAction::TriggerUpdate { ssid }
                | CoreAction::RegistrationParamsChanged { ssid } => self.request_update(now, ssid),
                CoreAction::Disable { ssid } => self.disable(now, ssid),
                CoreAction::ObjectListChanged => self.object_list_changed(now),
                CoreAction::RequestBootstrap => {
                    self.start_bootstrap(now, "a server executed Bootstrap-Request Trigger", false)
                }
            }
        }
    }

    /// A Ctx for an object call at `now` on behalf of `server`.
    fn with_ctx<T>(
        &mut self,
        now: Instant,
        server: Option<u16>,
        f: impl FnOnce(&mut Registry, &mut Ctx<'_>) -> T,
    ) -> (T, CtxOutput) {
        let mut out = CtxOutput::default();
        let unix_time = self.clock.unix_time(now);
        let t = {
            let mut ctx = Ctx {
                now,
                unix_time,
                server,
                out: &mut out,
            };
            f(&mut self.registry, &mut ctx)
        };
        (t, out)
    }

    /// Reads a single integer-like resource of the Server instance for `ssid`.
    fn server_resource(&mut self, now: Instant, ssid: u16, rid: u16) -> Option<Value> {
        let (v, _) = self.with_ctx(now, None, |reg, ctx| {
            let object = reg.get_mut(1)?;
            let iid = server_instance(object, ctx, ssid)?;
            match object.read(ctx, iid, rid) {
                Ok(ResourceValue::Single(v)) => Some(v),
                _ => None,
            }
        });
        v
    }

    fn server_u32(&mut self, now: Instant, ssid: u16, rid: u16) -> Option<u32> {
        match self.server_resource(now, ssid, rid)? {
            Value::Integer(v) => u32::try_from(v).ok(),
            Value::Unsigned(v) => u32::try_from(v).ok(),
            _ => None,
        }
    }

    fn server_bool(&mut self, now: Instant, ssid: u16, rid: u16) -> Option<bool> {
        match self.server_resource(now, ssid, rid)? {
            Value::Boolean(b) => Some(b),
            Value::Integer(v) => Some(v != 0),
            _ => None,
        }
    }

    fn random_below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.rng.next_u64() % bound
        }
    }
}

/// The /1 instance whose Short Server ID is `ssid`.
fn server_instance(
    object: &mut dyn super::object::Object,
    ctx: &mut Ctx<'_>,
    ssid: u16,
) -> Option<u16> {
    object.instances().into_iter().find(|&iid| {
        matches!(object.read(ctx, iid, 0), Ok(ResourceValue::Single(Value::Integer(v))) if v == i64::from(ssid))
    })
}

/// One Security instance as the core needs it.
#[derive(Debug, Clone, PartialEq)]
struct Account {
    /// /0/x/0.
    uri: String,
    /// /0/x/1.
    bootstrap: bool,
    /// /0/x/10.
    ssid: Option<u16>,
    /// /0/x/2-5 and 14.
    security: PeerSecurity,
    /// /0/x/11 Client Hold Off Time.
    hold_off: Duration,
}

/// Every Security instance.
fn accounts(reg: &mut Registry, ctx: &mut Ctx<'_>) -> Vec<Account> {
    let Some(security) = reg.get_mut(0) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for iid in security.instances() {
        let mut read = |rid| match security.read(ctx, iid, rid) {
            Ok(ResourceValue::Single(v)) => Some(v),
            _ => None,
        };
        let Some(Value::String(uri)) = read(0) else {
            continue;
        };
        let mut opaque = |rid| match read(rid) {
            Some(Value::Opaque(b)) => b,
            _ => Vec::new(),
        };
        let (identity, server_public_key, secret_key) = (opaque(3), opaque(4), opaque(5));
        out.push(Account {
            uri,
            bootstrap: matches!(read(1), Some(Value::Boolean(true))),
            ssid: match read(10) {
                Some(Value::Integer(id)) => u16::try_from(id).ok(),
                _ => None,
            },
            security: PeerSecurity {
                mode: match read(2) {
                    Some(Value::Integer(m)) => m,
                    _ => 3,
                },
                identity,
                server_public_key,
                secret_key,
                sni: match read(14) {
                    Some(Value::String(s)) => Some(s),
                    _ => None,
                },
            },
            hold_off: match read(11) {
                Some(Value::Integer(s)) => Duration::from_secs(u64::try_from(s).unwrap_or(0)),
                _ => Duration::ZERO,
            },
        });
    }
    out
}

/// (ssid, uri, security) of every device-management account: a non-bootstrap /0 instance whose
/// Short Server ID has a /1 instance.
fn server_accounts(reg: &mut Registry, ctx: &mut Ctx<'_>) -> Vec<(u16, String, PeerSecurity)> {
    let mut accounts: Vec<(u16, String, PeerSecurity)> = accounts(reg, ctx)
        .into_iter()
        .filter(|a| !a.bootstrap)
        .filter_map(|a| Some((a.ssid?, a.uri, a.security)))
        .collect();
    let Some(server) = reg.get_mut(1) else {
        return Vec::new();
    };
    accounts.retain(|(ssid, _, _)| server_instance(server, ctx, *ssid).is_some());
    accounts
}

/// The persisted document: object states and per-server attributes.
fn save_state(reg: &Registry, servers: &BTreeMap<u16, ServerConn>) -> serde_json::Value {
    let objects: serde_json::Map<String, serde_json::Value> = reg
        .iter()
        .filter_map(|(id, o)| o.save_state().map(|s| (id.to_string(), s)))
        .collect();
    let attributes: serde_json::Map<String, serde_json::Value> = servers
        .iter()
        .filter(|(_, c)| !c.attributes.is_empty())
        .filter_map(|(ssid, c)| {
            serde_json::to_value(&c.attributes)
                .ok()
                .map(|v| (ssid.to_string(), v))
        })
        .collect();
    serde_json::json!({ "format": 1, "objects": objects, "attributes": attributes })
}

/// Restores object states; returns the attribute stores by ssid. Bad parts are logged and skipped
/// so a damaged state file never stops the agent.
fn restore_state(
    reg: &mut Registry,
    state: Option<serde_json::Value>,
) -> BTreeMap<u16, AttributeStore> {
    let mut attrs = BTreeMap::new();
    let Some(state) = state else { return attrs };
    if state.get("format").and_then(serde_json::Value::as_u64) != Some(1) {
        log::error!("saved core state has an unknown format; starting from the configuration");
        return attrs;
    }
    if let Some(objects) = state.get("objects").and_then(|o| o.as_object()) {
        for (id, s) in objects {
            let Some(object) = id.parse::<u16>().ok().and_then(|id| reg.get_mut(id)) else {
                continue;
            };
            if let Err(e) = object.restore_state(s.clone()) {
                log::error!("object {id}: saved state not restored: {e}");
            }
        }
    }
    if let Some(map) = state.get("attributes").and_then(|a| a.as_object()) {
        for (ssid, store) in map {
            match (
                ssid.parse::<u16>(),
                serde_json::from_value::<AttributeStore>(store.clone()),
            ) {
                (Ok(ssid), Ok(store)) => {
                    attrs.insert(ssid, store);
                }
                _ => log::error!("attributes of server {ssid}: saved state not restored"),
            }
        }
    }
    attrs
}

/// A path lies on the same branch as another (one is a prefix of the other).
fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

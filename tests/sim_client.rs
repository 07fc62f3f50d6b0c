//! Deterministic simulation of the whole client: the sans-IO `Client` against a LwM2M server
//! built on a plain CoAP `Endpoint`, over a simulated network with loss, duplication and
//! reordering, on a virtual clock. Hours of protocol time run in milliseconds, and every run with
//! the same seed is identical.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lwm2md::core::client::{Client, ClientConfig, Command, Event, Peer, ServerPrefs, WallClock};
use lwm2md::core::coap::block::BlockOpt;
use lwm2md::core::coap::blockwise::Block2Download;
use lwm2md::core::coap::endpoint::{CoapConfig, Endpoint, EndpointEvent, IncomingId, RequestId};
use lwm2md::core::coap::message::{Code, Message, opt};
use lwm2md::core::effect::Effect;
use lwm2md::core::lwm2m::content::{self, NewestModel, cf};
use lwm2md::core::lwm2m::error::Error;
use lwm2md::core::lwm2m::path::Path;
use lwm2md::core::lwm2m::value::{ExecArg, ResourceValue, Value};
use lwm2md::core::object::{BlockWrite, Ctx, Object, Registry};
use lwm2md::core::sim::{LinkConfig, SimNet};
use lwm2md::model::{self, ObjectMeta};
use lwm2md::objects::security::{Security, SecurityAccount};
use lwm2md::objects::server::{Server, ServerAccount};

const CLIENT: usize = 0;
const SERVER: usize = 1;

/// Wall clock tied to the virtual clock: Unix time 1.7e9 at the origin.
struct VirtualWall(Instant);

impl WallClock for VirtualWall {
    fn unix_time(&self, now: Instant) -> i64 {
        1_700_000_000 + now.saturating_duration_since(self.0).as_secs() as i64
    }
}

/// What the test objects record, shared with the test body.
#[derive(Default)]
struct Probe {
    /// A value that changes on its own (Battery Level, /3/0/9).
    battery: i64,
    /// Executes of /3/0/4 seen by the object.
    reboots: u32,
    /// Bytes streamed into /5/0/0 with their offsets.
    firmware: Vec<(u64, usize, bool)>,
}

/// A Device object (3) with a large manufacturer string, a volatile battery level and the clock.
struct TestDevice {
    probe: Arc<Mutex<Probe>>,
    manufacturer: String,
}

impl Object for TestDevice {
    fn meta(&self) -> &'static ObjectMeta {
        model::object(3).expect("device model")
    }
    fn instances(&self) -> Vec<u16> {
        vec![0]
    }
    fn resources(&self, _: u16) -> Vec<u16> {
        vec![0, 4, 9, 11, 13, 16]
    }
    fn read(&mut self, ctx: &mut Ctx<'_>, _: u16, r: u16) -> Result<ResourceValue, Error> {
        let v = match r {
            0 => Value::String(self.manufacturer.clone()),
            9 => Value::Integer(self.probe.lock().expect("probe").battery),
            11 => {
                return Ok(ResourceValue::Multiple(BTreeMap::from([(
                    0,
                    Value::Integer(0),
                )])));
            }
            13 => Value::Time(ctx.unix_time),
            16 => Value::String("U".into()),
            _ => return Err(Error::NotFound),
        };
        Ok(ResourceValue::Single(v))
    }
    fn execute(&mut self, ctx: &mut Ctx<'_>, _: u16, r: u16, _: &[ExecArg]) -> Result<(), Error> {
        if r == 4 {
            self.probe.lock().expect("probe").reboots += 1;
            ctx.effect(Effect::Reboot);
        }
        Ok(())
    }
    fn is_volatile(&self, _: u16, r: u16) -> bool {
        matches!(r, 9 | 13)
    }
}

/// A Firmware Update object (5) that streams Block1 writes of /5/0/0.
struct TestFirmware {
    probe: Arc<Mutex<Probe>>,
}

impl Object for TestFirmware {
    fn meta(&self) -> &'static ObjectMeta {
        model::object(5).expect("firmware model")
    }
    fn instances(&self) -> Vec<u16> {
        vec![0]
    }
    fn resources(&self, _: u16) -> Vec<u16> {
        vec![0, 1, 2, 3, 5]
    }
    fn read(&mut self, _: &mut Ctx<'_>, _: u16, r: u16) -> Result<ResourceValue, Error> {
        match r {
            3 | 5 => Ok(ResourceValue::Single(Value::Integer(0))),
            1 => Ok(ResourceValue::Single(Value::String(String::new()))),
            _ => Err(Error::NotFound),
        }
    }
    fn streams(&self, _: u16, r: u16) -> bool {
        r == 0
    }
    fn write_block(
        &mut self,
        _: &mut Ctx<'_>,
        _: u16,
        _: u16,
        b: &BlockWrite<'_>,
    ) -> Result<(), Error> {
        self.probe
            .lock()
            .expect("probe")
            .firmware
            .push((b.offset, b.data.len(), b.last));
        Ok(())
    }
}

/// A registration-interface event seen by the server.
#[derive(Debug, Clone, PartialEq)]
enum Rd {
    Register {
        at: Duration,
        query: Vec<String>,
        links: String,
    },
    Update {
        at: Duration,
        query: Vec<String>,
    },
    Deregister {
        at: Duration,
    },
}

/// The LwM2M server side: registration handling plus requests the test sends.
struct TestServer {
    endpoint: Endpoint,
    rd: Vec<Rd>,
    /// Answer Updates with 4.04 (the server forgot the registration).
    forget: bool,
    responses: BTreeMap<RequestId, Message>,
    timed_out: Vec<RequestId>,
    notifications: Vec<(Duration, Message)>,
    /// Tokens of observations that should be refused with RST from now on.
    reject_tokens: Vec<Vec<u8>>,
}

struct World {
    net: SimNet,
    origin: Instant,
    client: Client,
    server: TestServer,
    events: Vec<(Duration, Event)>,
    effects: Vec<Effect>,
    probe: Arc<Mutex<Probe>>,
}

fn config(seed: u64) -> ClientConfig {
    ClientConfig {
        endpoint: "urn:dev:sim".into(),
        coap: CoapConfig::default(),
        block_szx: 6,
        max_body_size: 8192,
        retry_initial: Duration::from_secs(10),
        retry_max: Duration::from_secs(600),
        sample_interval: Duration::from_secs(1),
        server_prefs: BTreeMap::from([(1, ServerPrefs::default())]),
        bootstrap_fallback_after: 0,
        bootstrap_timeout: Duration::from_secs(247),
        seed,
    }
}

fn account(lifetime: u32) -> ServerAccount {
    ServerAccount {
        ssid: 1,
        lifetime,
        default_pmin: 0,
        default_pmax: None,
        disable_timeout: 120,
        notification_storing: true,
        binding: "U".into(),
        confirmable_notifications: false,
    }
}

impl World {
    fn new(seed: u64, lifetime: u32, link: LinkConfig) -> Self {
        let origin = Instant::now();
        let probe = Arc::new(Mutex::new(Probe {
            battery: 50,
            ..Probe::default()
        }));
        let mut reg = Registry::new();
        reg.insert(Box::new(Security::new(vec![SecurityAccount::nosec(
            "coap://server",
            1,
        )])));
        reg.insert(Box::new(Server::new(vec![account(lifetime)])));
        reg.insert(Box::new(TestDevice {
            probe: Arc::clone(&probe),
            manufacturer: "Acme".into(),
        }));
        reg.insert(Box::new(TestFirmware {
            probe: Arc::clone(&probe),
        }));
        let client = Client::new(
            config(seed),
            reg,
            Box::new(VirtualWall(origin)),
            None,
            origin,
        );
        let server = TestServer {
            endpoint: Endpoint::new(CoapConfig::default(), seed ^ 0x5eed),
            rd: Vec::new(),
            forget: false,
            responses: BTreeMap::new(),
            timed_out: Vec::new(),
            notifications: Vec::new(),
            reject_tokens: Vec::new(),
        };
        Self {
            net: SimNet::new(origin, seed, link),
            origin,
            client,
            server,
            events: Vec::new(),
            effects: Vec::new(),
            probe,
        }
    }

    fn now(&self) -> Instant {
        self.net.instant()
    }

    fn elapsed(&self) -> Duration {
        self.now() - self.origin
    }

    /// Moves everything pending between the nodes, then advances to the next thing that happens
    /// (not beyond `until`). Returns false when nothing is scheduled before `until`.
    fn step(&mut self, until: Instant) -> bool {
        self.flush();
        let next = [
            self.net.next_delivery(),
            self.client.poll_timeout(),
            self.server.endpoint.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(t) = next.filter(|t| *t <= until) else {
            self.net.advance_to(until);
            return false;
        };
        self.net.advance_to(t);
        let now = self.now();
        while let Some(d) = self.net.pop_due() {
            if d.to == CLIENT {
                self.client.handle_datagram(now, Peer(1), &d.data);
            } else {
                self.server.endpoint.handle_datagram(now, &d.data);
            }
        }
        if self.client.poll_timeout().is_some_and(|t| t <= now) {
            self.client.handle_timeout(now);
        }
        if self
            .server
            .endpoint
            .poll_timeout()
            .is_some_and(|t| t <= now)
        {
            self.server.endpoint.handle_timeout(now);
        }
        self.flush();
        true
    }

    fn flush(&mut self) {
        let now = self.now();
        let elapsed = self.elapsed();
        loop {
            let mut moved = false;
            while let Some(t) = self.client.poll_transmit() {
                self.net.send(CLIENT, SERVER, t.data);
                moved = true;
            }
            while let Some((_, e)) = self.client.poll_effect() {
                self.effects.push(e);
                moved = true;
            }
            while let Some(e) = self.client.poll_event() {
                self.events.push((elapsed, e));
                moved = true;
            }
            while let Some(ev) = self.server.endpoint.poll_event() {
                self.server.on_event(now, elapsed, ev);
                moved = true;
            }
            while let Some(d) = self.server.endpoint.poll_transmit() {
                self.net.send(SERVER, CLIENT, d);
                moved = true;
            }
            if !moved {
                break;
            }
        }
    }

    /// Runs for `d` of virtual time.
    fn run_for(&mut self, d: Duration) {
        let until = self.now() + d;
        while self.step(until) {}
    }

    /// Runs until `done` holds (checked after every step) or `limit` passes.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let until = self.now() + limit;
        loop {
            if done(self) {
                return true;
            }
            if !self.step(until) && self.now() >= until {
                return done(self);
            }
        }
    }

    fn registrations(&self) -> usize {
        self.server
            .rd
            .iter()
            .filter(|r| matches!(r, Rd::Register { .. }))
            .count()
    }

    /// Sends `msg` from the server and runs until its response arrives. Like a real server, it
    /// sends the request again (a new exchange) when CoAP gives up on one.
    fn request(&mut self, msg: Message, limit: Duration) -> Option<Message> {
        let until = self.now() + limit;
        while self.now() < until {
            let id = self.server.endpoint.send_request(self.now(), msg.clone());
            let left = until.saturating_duration_since(self.now());
            self.run_until(left, |w| {
                w.server.responses.contains_key(&id) || w.server.timed_out.contains(&id)
            });
            if let Some(resp) = self.server.responses.remove(&id) {
                return Some(resp);
            }
        }
        None
    }
}

impl TestServer {
    fn on_event(&mut self, now: Instant, at: Duration, ev: EndpointEvent) {
        match ev {
            EndpointEvent::Request { id, msg } => self.registration(now, at, id, msg),
            EndpointEvent::Response { request, msg } => {
                self.responses.insert(request, msg);
            }
            EndpointEvent::TimedOut { request } => self.timed_out.push(request),
            EndpointEvent::Notification { token, msg } => {
                if self.reject_tokens.contains(&token) {
                    self.endpoint.forget_token(&token);
                } else {
                    self.notifications.push((at, msg));
                }
            }
            _ => {}
        }
    }

    fn registration(&mut self, now: Instant, at: Duration, id: IncomingId, msg: Message) {
        let path: Vec<String> = msg
            .uri_path()
            .unwrap_or_default()
            .into_iter()
            .map(str::to_string)
            .collect();
        let query: Vec<String> = msg
            .uri_query()
            .unwrap_or_default()
            .into_iter()
            .map(str::to_string)
            .collect();
        let reply = match (
            msg.code,
            path.iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice(),
        ) {
            (Code::POST, ["rd"]) => {
                self.rd.push(Rd::Register {
                    at,
                    query,
                    links: String::from_utf8_lossy(&msg.payload).into_owned(),
                });
                let mut r = Message::response(Code::CREATED);
                r.add_option(opt::LOCATION_PATH, b"rd".to_vec());
                r.add_option(opt::LOCATION_PATH, b"c1".to_vec());
                r
            }
            (Code::POST, ["rd", "c1"]) => {
                self.rd.push(Rd::Update { at, query });
                Message::response(if self.forget {
                    Code::NOT_FOUND
                } else {
                    Code::CHANGED
                })
            }
            (Code::DELETE, ["rd", "c1"]) => {
                self.rd.push(Rd::Deregister { at });
                Message::response(Code::DELETED)
            }
            _ => {
                // Not a registration request: a notification arriving as a request cannot be.
                Message::response(Code::NOT_FOUND)
            }
        };
        self.endpoint.respond(now, id, reply);
    }
}

fn lossy() -> LinkConfig {
    LinkConfig {
        loss: 0.25,
        duplicate: 0.1,
        delay: Duration::from_millis(40),
        jitter: Duration::from_millis(60),
    }
}

fn get(path: &str, accept: Option<u16>) -> Message {
    let mut m = Message::request(Code::GET);
    m.set_uri_path(path);
    if let Some(a) = accept {
        m.set_uint_option(opt::ACCEPT, u64::from(a));
    }
    m
}

#[test]
fn registers_over_a_lossy_network_with_the_right_parameters() {
    let mut w = World::new(1, 300, lossy());
    assert!(
        w.run_until(Duration::from_secs(120), |w| w.client.status()[0].state
            == "registered")
    );
    let Some(Rd::Register { query, links, .. }) = w.server.rd.first().cloned() else {
        panic!("no register")
    };
    assert_eq!(query, ["ep=urn:dev:sim", "lt=300", "lwm2m=1.1", "b=U"]);
    assert_eq!(
        links,
        r#"</>;ct="60 110 112 11542",</1>;ver=1.2,</1/0>,</3>;ver=1.2,</3/0>,</5>;ver=1.2,</5/0>"#
    );
    // Duplicated and retransmitted Registers may reach the server, but the client ends registered once.
    let registered = w
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Registered { .. }))
        .count();
    assert_eq!(registered, 1);
}

#[test]
fn updates_keep_the_registration_alive_for_hours() {
    let link = LinkConfig {
        loss: 0.1,
        ..lossy()
    };
    let mut w = World::new(2, 300, link);
    w.run_for(Duration::from_secs(4 * 3600));
    let mut last = Duration::ZERO;
    let mut updates = 0;
    for r in &w.server.rd {
        match r {
            Rd::Register { at, .. } | Rd::Update { at, .. } => {
                assert!(
                    *at - last <= Duration::from_secs(300),
                    "gap {:?} exceeds the lifetime at {at:?}",
                    *at - last
                );
                last = *at;
                if matches!(r, Rd::Update { .. }) {
                    updates += 1;
                }
            }
            Rd::Deregister { .. } => panic!("unexpected de-registration"),
        }
    }
    // One Update every 207 s (lifetime 300 minus MAX_TRANSMIT_WAIT) for 4 hours.
    assert!((66..=70).contains(&updates), "{updates} updates");
    assert!(
        w.server
            .rd
            .iter()
            .all(|r| !matches!(r, Rd::Update { query, .. } if !query.is_empty()))
    );
}

#[test]
fn an_unreachable_server_gets_exponential_backoff_with_jitter_then_registration() {
    let mut w = World::new(
        3,
        300,
        LinkConfig {
            loss: 1.0,
            ..LinkConfig::default()
        },
    );
    w.run_for(Duration::from_secs(3 * 3600));
    let retries: Vec<Duration> = w
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::RegistrationFailed { retry_in, .. } => Some(*retry_in),
            _ => None,
        })
        .collect();
    assert!(retries.len() >= 5, "{retries:?}");
    for (n, d) in retries.iter().enumerate() {
        let nominal = (10u64 << n.min(20)).min(600);
        let d = d.as_millis() as u64;
        assert!(
            d >= nominal * 500 && d <= nominal * 1000,
            "attempt {n}: {d} ms for nominal {nominal} s"
        );
    }
    assert!(
        retries
            .iter()
            .rev()
            .take(3)
            .all(|d| *d <= Duration::from_secs(600)),
        "capped at retry_max"
    );
    // Two devices with different seeds do not retry in step.
    let mut other = World::new(
        4,
        300,
        LinkConfig {
            loss: 1.0,
            ..LinkConfig::default()
        },
    );
    other.run_for(Duration::from_secs(3600));
    let first_other: Vec<Duration> = other
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::RegistrationFailed { retry_in, .. } => Some(*retry_in),
            _ => None,
        })
        .collect();
    assert_ne!(first_other.get(..3), retries.get(..3));
    // The network heals: the next attempt succeeds.
    w.net.set_link(CLIENT, SERVER, LinkConfig::default());
    w.net.set_link(SERVER, CLIENT, LinkConfig::default());
    assert!(
        w.run_until(Duration::from_secs(700), |w| w.client.status()[0].state
            == "registered")
    );
}

#[test]
fn a_forgotten_registration_is_renewed() {
    let mut w = World::new(5, 40, LinkConfig::default());
    assert!(w.run_until(Duration::from_secs(10), |w| w.registrations() == 1));
    w.server.forget = true;
    assert!(w.run_until(Duration::from_secs(60), |w| w.registrations() == 2));
    w.server.forget = false;
    w.run_for(Duration::from_secs(120));
    assert_eq!(w.client.status()[0].state, "registered");
}

#[test]
fn duplicated_requests_execute_once() {
    let mut w = World::new(
        6,
        300,
        LinkConfig {
            duplicate: 1.0,
            ..LinkConfig::default()
        },
    );
    assert!(
        w.run_until(Duration::from_secs(30), |w| w.client.status()[0].state
            == "registered")
    );
    let mut exec = Message::request(Code::POST);
    exec.set_uri_path("/3/0/4");
    let resp = w.request(exec, Duration::from_secs(30)).expect("answer");
    assert_eq!(resp.code, Code::CHANGED);
    w.run_for(Duration::from_secs(10));
    assert_eq!(
        w.probe.lock().expect("probe").reboots,
        1,
        "every datagram was duplicated"
    );
    assert_eq!(
        w.effects.iter().filter(|e| **e == Effect::Reboot).count(),
        1
    );
}

#[test]
fn a_large_read_arrives_in_blocks_over_a_lossy_network() {
    let mut w = World::new(7, 300, lossy());
    assert!(
        w.run_until(Duration::from_secs(120), |w| w.client.status()[0].state
            == "registered")
    );
    // Swap in a Device whose manufacturer string needs many blocks.
    let big: String = (0..6000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut reg_probe = Arc::clone(&w.probe);
    let _ = &mut reg_probe;
    w.client = {
        let origin = w.origin;
        let mut reg = Registry::new();
        reg.insert(Box::new(Security::new(vec![SecurityAccount::nosec(
            "coap://server",
            1,
        )])));
        reg.insert(Box::new(Server::new(vec![account(300)])));
        reg.insert(Box::new(TestDevice {
            probe: Arc::clone(&w.probe),
            manufacturer: big.clone(),
        }));
        Client::new(config(7), reg, Box::new(VirtualWall(origin)), None, w.now())
    };
    assert!(
        w.run_until(Duration::from_secs(120), |w| w.client.status()[0].state
            == "registered")
    );
    let mut dl = Block2Download::new(4); // ask for 256-byte blocks
    let template = get("/3/0/0", Some(cf::TEXT));
    let mut body = Vec::new();
    loop {
        let resp = w
            .request(dl.next_request(&template), Duration::from_secs(300))
            .expect("block");
        assert_eq!(resp.code, Code::CONTENT);
        let chunk = dl.on_response(&resp).expect("consistent block");
        assert_eq!(chunk.offset, body.len() as u64);
        body.extend_from_slice(&chunk.data);
        if chunk.last {
            break;
        }
    }
    assert_eq!(String::from_utf8(body).expect("utf-8"), big);
}

#[test]
fn a_large_write_streams_into_the_object_block_by_block() {
    let mut w = World::new(8, 300, lossy());
    assert!(
        w.run_until(Duration::from_secs(120), |w| w.client.status()[0].state
            == "registered")
    );
    let image: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let size = 512usize;
    for (num, chunk) in image.chunks(size).enumerate() {
        let more = (num + 1) * size < image.len();
        let mut m = Message::request(Code::PUT);
        m.set_uri_path("/5/0/0");
        m.set_uint_option(opt::CONTENT_FORMAT, u64::from(cf::OPAQUE));
        m.set_option(
            opt::BLOCK1,
            BlockOpt::new(num as u32, more, 5).encode().expect("block"),
        );
        if num == 0 {
            m.set_uint_option(opt::SIZE1, image.len() as u64);
        }
        m.payload = chunk.to_vec();
        // A new token for every block: a server may do that (RFC 7959 §2.3).
        let at = w.elapsed();
        let resp = w.request(m, Duration::from_secs(300)).unwrap_or_else(|| {
            panic!(
                "no answer to block {num} sent at {at:?}, now {:?}",
                w.elapsed()
            )
        });
        assert_eq!(
            resp.code,
            if more { Code::CONTINUE } else { Code::CHANGED },
            "block {num}"
        );
    }
    let firmware = w.probe.lock().expect("probe").firmware.clone();
    let offsets: Vec<u64> = firmware.iter().map(|(o, _, _)| *o).collect();
    let expected: Vec<u64> = (0..image.len().div_ceil(size))
        .map(|n| (n * size) as u64)
        .collect();
    assert_eq!(offsets, expected, "each block written once, in order");
    assert_eq!(
        firmware.iter().map(|(_, n, _)| n).sum::<usize>(),
        image.len()
    );
    assert!(firmware.last().is_some_and(|(_, _, last)| *last));
}

#[test]
fn a_block1_transfer_out_of_order_gets_4_08() {
    let mut w = World::new(9, 300, LinkConfig::default());
    assert!(
        w.run_until(Duration::from_secs(30), |w| w.client.status()[0].state
            == "registered")
    );
    let mut m = Message::request(Code::PUT);
    m.set_uri_path("/5/0/0");
    m.set_uint_option(opt::CONTENT_FORMAT, u64::from(cf::OPAQUE));
    m.set_option(
        opt::BLOCK1,
        BlockOpt::new(3, true, 5).encode().expect("block"),
    );
    m.payload = vec![0; 512];
    assert_eq!(
        w.request(m, Duration::from_secs(30)).expect("answer").code,
        Code::REQUEST_ENTITY_INCOMPLETE
    );
}

#[test]
fn observations_follow_pmin_and_pmax_and_stop_on_reset() {
    let mut w = World::new(10, 3600, LinkConfig::default());
    assert!(
        w.run_until(Duration::from_secs(30), |w| w.client.status()[0].state
            == "registered")
    );
    let mut attrs = Message::request(Code::PUT);
    attrs.set_uri_path("/3/0/9");
    attrs.add_option(opt::URI_QUERY, b"pmin=2".to_vec());
    attrs.add_option(opt::URI_QUERY, b"pmax=10".to_vec());
    assert_eq!(
        w.request(attrs, Duration::from_secs(10))
            .expect("answer")
            .code,
        Code::CHANGED
    );
    let mut obs = get("/3/0/9", None);
    obs.set_uint_option(opt::OBSERVE, 0);
    obs.token = b"obs-9".to_vec();
    w.server.endpoint.observe_token(obs.token.clone());
    let first = w.request(obs, Duration::from_secs(10)).expect("answer");
    assert_eq!(first.code, Code::CONTENT);
    assert_eq!(first.payload, b"50");
    let start = w.elapsed();
    // Nothing changes: notifications come only at pmax.
    w.run_for(Duration::from_secs(25));
    let times = notification_times(&w, start);
    assert_eq!(times.len(), 2, "{times:?}");
    assert!(times.iter().all(|t| (t.as_secs() % 10) == 0), "{times:?}");
    // The battery drains every 500 ms: notifications every pmin (2 s), not faster.
    let t0 = w.elapsed();
    for _ in 0..20 {
        w.probe.lock().expect("probe").battery -= 1;
        w.run_for(Duration::from_millis(500));
    }
    let fast = notification_times(&w, t0);
    assert!(fast.len() >= 4 && fast.len() <= 6, "{fast:?}");
    assert!(
        fast.windows(2)
            .all(|p| p[1] - p[0] >= Duration::from_secs(2)),
        "{fast:?}"
    );
}

fn notification_times(w: &World, since: Duration) -> Vec<Duration> {
    w.server
        .notifications
        .iter()
        .filter(|(at, _)| *at > since)
        .map(|(at, _)| *at - since)
        .collect()
}

#[test]
fn a_short_lifetime_is_refreshed_halfway() {
    let mut w = World::new(15, 20, LinkConfig::default());
    w.run_for(Duration::from_secs(3600));
    let times: Vec<Duration> = w
        .server
        .rd
        .iter()
        .map(|r| match r {
            Rd::Register { at, .. } | Rd::Update { at, .. } | Rd::Deregister { at } => *at,
        })
        .collect();
    assert!(
        times
            .windows(2)
            .all(|p| p[1] - p[0] <= Duration::from_secs(11)),
        "{times:?}"
    );
    assert!((355..=361).contains(&times.len()), "{}", times.len());
    assert_eq!(w.registrations(), 1);
}

#[test]
fn shutdown_deregisters_and_reports_stopped() {
    let mut w = World::new(11, 300, lossy());
    assert!(
        w.run_until(Duration::from_secs(120), |w| w.client.status()[0].state
            == "registered")
    );
    w.client.handle_command(w.now(), Command::Shutdown);
    assert!(w.run_until(Duration::from_secs(120), |w| {
        w.events.iter().any(|(_, e)| *e == Event::Stopped)
    }));
    assert!(
        w.server
            .rd
            .iter()
            .any(|r| matches!(r, Rd::Deregister { .. }))
    );
    assert!(w.client.is_stopped());
}

#[test]
fn disable_deregisters_stays_silent_then_registers_again() {
    let mut w = World::new(12, 300, LinkConfig::default());
    assert!(w.run_until(Duration::from_secs(30), |w| w.registrations() == 1));
    let mut disable = Message::request(Code::POST);
    disable.set_uri_path("/1/0/4");
    assert_eq!(
        w.request(disable, Duration::from_secs(10))
            .expect("answer")
            .code,
        Code::CHANGED
    );
    assert!(w.run_until(Duration::from_secs(30), |w| {
        w.server
            .rd
            .iter()
            .any(|r| matches!(r, Rd::Deregister { .. }))
    }));
    let deregistered_at = w.elapsed();
    assert!(w.run_until(Duration::from_secs(200), |w| w.registrations() == 2));
    let Some(Rd::Register { at, .. }) = w.server.rd.last().cloned() else {
        panic!("register")
    };
    // Disable Timeout is 120 s in this configuration.
    assert!(
        at - deregistered_at >= Duration::from_secs(119),
        "re-registered after {:?}",
        at - deregistered_at
    );
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = |seed| {
        let mut w = World::new(seed, 60, lossy());
        w.run_for(Duration::from_secs(600));
        w.server.rd.clone()
    };
    assert_eq!(run(42), run(42));
}

#[test]
fn an_idle_registered_client_sleeps_until_its_update() {
    let mut w = World::new(13, 86400, LinkConfig::default());
    assert!(
        w.run_until(Duration::from_secs(30), |w| w.client.status()[0].state
            == "registered")
    );
    w.run_for(Duration::from_secs(300)); // let CoAP exchange state age out
    let next = w.client.poll_timeout().expect("the update timer");
    assert!(
        next - w.now() > Duration::from_secs(70_000),
        "next wake-up in {:?}",
        next - w.now()
    );
}

#[test]
fn reads_decode_identically_in_every_format() {
    let mut w = World::new(14, 300, LinkConfig::default());
    assert!(
        w.run_until(Duration::from_secs(30), |w| w.client.status()[0].state
            == "registered")
    );
    let base = Path::instance(3, 0);
    let mut seen = Vec::new();
    for format in [cf::TLV, cf::SENML_JSON, cf::SENML_CBOR] {
        let resp = w
            .request(get("/3/0", Some(format)), Duration::from_secs(10))
            .expect("answer");
        assert_eq!(resp.content_format(), Ok(Some(format)));
        let mut d = content::decode(format, &base, &resp.payload, &NewestModel)
            .expect("decodes")
            .records;
        // Current Time moves with the clock; compare the rest.
        d.retain(|r| r.path != Path::resource(3, 0, 13));
        seen.push(d);
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[1], seen[2]);
    let default = w
        .request(get("/3/0", None), Duration::from_secs(10))
        .expect("answer");
    assert_eq!(default.content_format(), Ok(Some(cf::SENML_CBOR)));
    let single = w
        .request(get("/3/0/0", None), Duration::from_secs(10))
        .expect("answer");
    assert_eq!(
        (single.content_format(), single.payload.as_slice()),
        (Ok(Some(cf::TEXT)), &b"Acme"[..])
    );
}

/// Mutated and random datagrams straight into a registered client: no panic, and it keeps
/// answering. (The cargo-fuzz target `client_datagram` explores the same path further.)
#[test]
fn malformed_datagrams_never_stop_the_client() {
    use rand_chacha::ChaCha12Rng;
    use rand_core::{RngCore, SeedableRng};

    let mut w = World::new(16, 3600, LinkConfig::default());
    assert!(
        w.run_until(Duration::from_secs(30), |w| w.client.status()[0].state
            == "registered")
    );
    let mut rng = ChaCha12Rng::seed_from_u64(99);
    let templates: Vec<Vec<u8>> = {
        let mut t = Vec::new();
        for (code, path, cf, payload) in [
            (Code::GET, "/3/0", None, &b""[..]),
            (Code::PUT, "/1/0/1", Some(cf::TEXT), &b"60"[..]),
            (Code::POST, "/1/0", Some(cf::TLV), &[0xc1, 0x01, 0x3c][..]),
            (
                Code::PUT,
                "/3/0",
                Some(cf::SENML_JSON),
                &br#"[{"n":"/3/0/13","v":1}]"#[..],
            ),
            (Code::POST, "/3/0/4", None, &b"0='a'"[..]),
            (
                Code::FETCH,
                "/",
                Some(cf::SENML_CBOR),
                &[0x81, 0xa1, 0x00, 0x64, b'/', b'3', b'/', b'0'][..],
            ),
        ] {
            let mut m = Message::request(code);
            m.mid = 0x1000;
            m.token = vec![1, 2, 3];
            m.set_uri_path(path);
            if let Some(f) = cf {
                m.set_uint_option(opt::CONTENT_FORMAT, u64::from(f));
            }
            m.set_option(
                opt::BLOCK1,
                BlockOpt::new(0, false, 2).encode().expect("block"),
            );
            m.payload = payload.to_vec();
            t.push(lwm2md::core::coap::codec::encode(&m).expect("encode"));
        }
        t
    };
    for i in 0..20_000u32 {
        let mut data = templates[(rng.next_u32() as usize) % templates.len()].clone();
        match rng.next_u32() % 4 {
            0 => {
                let n = (rng.next_u32() % 64) as usize;
                data = (0..n).map(|_| rng.next_u32() as u8).collect();
            }
            1 => data.truncate((rng.next_u32() as usize) % (data.len() + 1)),
            _ => {
                for _ in 0..=(rng.next_u32() % 4) {
                    let at = (rng.next_u32() as usize) % data.len();
                    data[at] ^= 1 << (rng.next_u32() % 8);
                }
            }
        }
        // Fresh message IDs so de-duplication does not hide the inputs.
        if data.len() >= 4 {
            data[2..4].copy_from_slice(&((i % 60_000) as u16).to_be_bytes());
        }
        let now = w.now();
        w.client.handle_datagram(now, Peer(1), &data);
        while w.client.poll_transmit().is_some() {}
        while w.client.poll_effect().is_some() {}
        while w.client.poll_event().is_some() {}
    }
    w.run_for(Duration::from_secs(300));
    let resp = w
        .request(get("/3/0/0", None), Duration::from_secs(30))
        .expect("still answering");
    assert!(resp.code.is_response(), "{}", resp.code);
}

/// RFC 7959 §2.5 late negotiation: the client takes at most 256-byte blocks, so it answers the
/// first 1024-byte block with SZX 4; the server goes on in 256-byte blocks from that offset.
#[test]
fn block1_late_size_negotiation() {
    let mut w = World::new(17, 300, LinkConfig::default());
    w.client = {
        let mut reg = Registry::new();
        reg.insert(Box::new(Security::new(vec![SecurityAccount::nosec(
            "coap://server",
            1,
        )])));
        reg.insert(Box::new(Server::new(vec![account(300)])));
        reg.insert(Box::new(TestFirmware {
            probe: Arc::clone(&w.probe),
        }));
        let config = ClientConfig {
            block_szx: 4,
            ..config(17)
        };
        Client::new(config, reg, Box::new(VirtualWall(w.origin)), None, w.now())
    };
    assert!(
        w.run_until(Duration::from_secs(30), |w| w.client.status()[0].state
            == "registered")
    );
    let image: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let put = |num: u32, more: bool, szx: u8, payload: &[u8]| {
        let mut m = Message::request(Code::PUT);
        m.set_uri_path("/5/0/0");
        m.set_uint_option(opt::CONTENT_FORMAT, u64::from(cf::OPAQUE));
        m.set_option(
            opt::BLOCK1,
            BlockOpt::new(num, more, szx).encode().expect("block"),
        );
        m.payload = payload.to_vec();
        m
    };
    let first = w
        .request(put(0, true, 6, &image[..1024]), Duration::from_secs(10))
        .expect("answer");
    assert_eq!(first.code, Code::CONTINUE);
    let echo = BlockOpt::decode(first.option(opt::BLOCK1).expect("Block1 echo")).expect("valid");
    assert_eq!(
        (echo.num, echo.more, echo.szx),
        (0, true, 4),
        "the client asks for 256-byte blocks"
    );
    // Continue at offset 1024 in 256-byte blocks: block number 4.
    let mut offset = 1024;
    while offset < image.len() {
        let end = (offset + 256).min(image.len());
        let more = end < image.len();
        let resp = w
            .request(
                put((offset / 256) as u32, more, 4, &image[offset..end]),
                Duration::from_secs(10),
            )
            .expect("answer");
        assert_eq!(resp.code, if more { Code::CONTINUE } else { Code::CHANGED });
        offset = end;
    }
    let writes = w.probe.lock().expect("probe").firmware.clone();
    assert_eq!(writes.first(), Some(&(0, 1024, false)));
    assert_eq!(writes.iter().map(|(_, n, _)| n).sum::<usize>(), image.len());
    assert!(
        writes.windows(2).all(|p| p[0].0 + p[0].1 as u64 == p[1].0),
        "contiguous: {writes:?}"
    );
}

//! Object 5 through the whole sans-IO client on the simulated network: Block1 pushes whose
//! answers wait for the runtime's step outcomes (flow control), reads served during a transfer,
//! State notifications, and the error codes of the Firmware Update object.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use lwm2md::core::client::{Client, ClientConfig, Peer, ServerPrefs, WallClock};
use lwm2md::core::coap::block::BlockOpt;
use lwm2md::core::coap::endpoint::{CoapConfig, Endpoint, EndpointEvent, IncomingId, RequestId};
use lwm2md::core::coap::message::{Code, Message, opt};
use lwm2md::core::effect::{Effect, EffectId, FwOutcome, FwStep, Outcome};
use lwm2md::core::lwm2m::content::cf;
use lwm2md::core::object::Registry;
use lwm2md::core::sim::{LinkConfig, SimNet};
use lwm2md::objects::firmware::{Firmware, FirmwareConfig};
use lwm2md::objects::security::{Security, SecurityAccount};
use lwm2md::objects::server::{Server, ServerAccount};
use lwm2md::update::fota::{BootInfo, FotaConfig, PkgInfo};
use lwm2md::update::{Slot, result};

struct Wall(Instant);
impl WallClock for Wall {
    fn unix_time(&self, now: Instant) -> i64 {
        1_700_000_000 + now.saturating_duration_since(self.0).as_secs() as i64
    }
}

/// Executes firmware steps like the runtime, each taking `delay` (a slow disk).
struct Executor {
    queue: VecDeque<(Instant, EffectId, FwStep)>,
    delay: Duration,
    pushed: Vec<(u64, usize, bool)>,
    fetches: Vec<String>,
}

impl Executor {
    fn outcome(&mut self, step: &FwStep) -> Outcome {
        let o = match step {
            FwStep::PushData { offset, data, last } => {
                self.pushed.push((*offset, data.len(), *last));
                if *last {
                    FwOutcome::Downloaded { package: pkg() }
                } else {
                    FwOutcome::Done
                }
            }
            FwStep::Fetch { uri, .. } => {
                self.fetches.push(uri.clone());
                FwOutcome::Downloaded { package: pkg() }
            }
            FwStep::Abort => FwOutcome::Aborted,
            _ => FwOutcome::Done,
        };
        Outcome::Firmware(o)
    }
}

fn pkg() -> PkgInfo {
    PkgInfo {
        name: "gw-os".into(),
        version: "2.1".into(),
        security_version: 3,
        image_size: 9000,
    }
}

struct World {
    net: SimNet,
    client: Client,
    server: Endpoint,
    exec: Executor,
    responses: BTreeMap<RequestId, Message>,
    notifications: Vec<Message>,
    registered: bool,
}

impl World {
    fn new(link: LinkConfig) -> Self {
        let origin = Instant::now();
        let mut reg = Registry::new();
        reg.insert(Box::new(Security::new(vec![SecurityAccount::nosec(
            "coap://s", 1,
        )])));
        reg.insert(Box::new(Server::new(vec![ServerAccount {
            ssid: 1,
            lifetime: 3600,
            default_pmin: 0,
            default_pmax: None,
            disable_timeout: 60,
            notification_storing: true,
            binding: "U".into(),
            confirmable_notifications: true,
        }])));
        let fota = FotaConfig {
            capacity: 64 * 1024,
            health_timeout: Duration::from_secs(600),
            defer_retry: Duration::from_secs(60),
            require_registration: true,
        };
        let config = FirmwareConfig {
            fota,
            schemes: vec!["coap", "http", "https"],
        };
        let boot = BootInfo {
            booted: Slot::A,
            boot_id: "b0".into(),
        };
        reg.insert(Box::new(Firmware::new(config, None, boot)));
        let cc = ClientConfig {
            endpoint: "urn:dev:fw".into(),
            coap: CoapConfig::default(),
            block_szx: 6,
            max_body_size: 4096,
            retry_initial: Duration::from_secs(5),
            retry_max: Duration::from_secs(60),
            sample_interval: Duration::from_secs(10),
            server_prefs: BTreeMap::from([(1, ServerPrefs::default())]),
            bootstrap_fallback_after: 0,
            bootstrap_timeout: Duration::from_secs(247),
            seed: 5,
        };
        let client = Client::new(cc, reg, Box::new(Wall(origin)), None, origin);
        Self {
            net: SimNet::new(origin, 9, link),
            client,
            server: Endpoint::new(CoapConfig::default(), 77),
            exec: Executor {
                queue: VecDeque::new(),
                delay: Duration::from_millis(300),
                pushed: Vec::new(),
                fetches: Vec::new(),
            },
            responses: BTreeMap::new(),
            notifications: Vec::new(),
            registered: false,
        }
    }

    fn now(&self) -> Instant {
        self.net.instant()
    }

    fn flush(&mut self) {
        let now = self.now();
        loop {
            let mut moved = false;
            while let Some(t) = self.client.poll_transmit() {
                self.net.send(0, 1, t.data);
                moved = true;
            }
            while let Some((id, e)) = self.client.poll_effect() {
                if let Effect::Firmware(step) = e {
                    self.exec.queue.push_back((now + self.exec.delay, id, step));
                }
                moved = true;
            }
            while self.client.poll_event().is_some() {}
            while let Some(ev) = self.server.poll_event() {
                moved = true;
                match ev {
                    EndpointEvent::Request { id, msg } => self.registration(now, id, &msg),
                    EndpointEvent::Response { request, msg } => {
                        self.responses.insert(request, msg);
                    }
                    EndpointEvent::Notification { msg, .. } => self.notifications.push(msg),
                    _ => {}
                }
            }
            while let Some(d) = self.server.poll_transmit() {
                self.net.send(1, 0, d);
                moved = true;
            }
            if !moved {
                break;
            }
        }
    }

    fn registration(&mut self, now: Instant, id: IncomingId, msg: &Message) {
        let reply = if msg.code == Code::POST && msg.uri_path().unwrap_or_default() == ["rd"] {
            self.registered = true;
            let mut r = Message::response(Code::CREATED);
            r.add_option(opt::LOCATION_PATH, b"rd".to_vec());
            r.add_option(opt::LOCATION_PATH, b"x".to_vec());
            r
        } else {
            Message::response(Code::CHANGED)
        };
        self.server.respond(now, id, reply);
    }

    fn step(&mut self, until: Instant) -> bool {
        self.flush();
        let next = [
            self.net.next_delivery(),
            self.client.poll_timeout(),
            self.server.poll_timeout(),
            self.exec.queue.front().map(|(t, _, _)| *t),
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
            if d.to == 0 {
                self.client.handle_datagram(now, Peer(1), &d.data);
            } else {
                self.server.handle_datagram(now, &d.data);
            }
        }
        while self.exec.queue.front().is_some_and(|(t, _, _)| *t <= now) {
            let Some((_, id, step)) = self.exec.queue.pop_front() else {
                break;
            };
            let outcome = self.exec.outcome(&step);
            self.client.handle_effect_done(now, id, outcome);
        }
        if self.client.poll_timeout().is_some_and(|t| t <= now) {
            self.client.handle_timeout(now);
        }
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now);
        }
        self.flush();
        true
    }

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

    fn request(&mut self, msg: Message) -> Message {
        let id = self.server.send_request(self.now(), msg);
        assert!(
            self.run_until(Duration::from_secs(120), |w| w.responses.contains_key(&id)),
            "no answer"
        );
        self.responses.remove(&id).expect("answer")
    }

    fn read(&mut self, path: &str) -> String {
        let mut m = Message::request(Code::GET);
        m.set_uri_path(path);
        String::from_utf8(self.request(m).payload).expect("utf-8")
    }
}

fn put_block(num: u32, more: bool, size1: Option<u64>, payload: &[u8]) -> Message {
    let mut m = Message::request(Code::PUT);
    m.set_uri_path("/5/0/0");
    m.set_uint_option(opt::CONTENT_FORMAT, u64::from(cf::OPAQUE));
    m.set_option(
        opt::BLOCK1,
        BlockOpt::new(num, more, 6).encode().expect("block"),
    );
    if let Some(s) = size1 {
        m.set_uint_option(opt::SIZE1, s);
    }
    m.payload = payload.to_vec();
    m
}

fn registered(link: LinkConfig) -> World {
    let mut w = World::new(link);
    assert!(w.run_until(Duration::from_secs(60), |w| w.registered));
    w
}

#[test]
fn a_block1_push_is_paced_by_the_writes_and_reads_are_served_meanwhile() {
    let mut w = registered(LinkConfig {
        loss: 0.1,
        duplicate: 0.05,
        ..LinkConfig::default()
    });
    assert_eq!(w.read("/5/0/3"), "0");
    let image = vec![7u8; 9000];
    let blocks: Vec<&[u8]> = image.chunks(1024).collect();
    for (n, block) in blocks.iter().enumerate() {
        let more = n + 1 < blocks.len();
        let sent = w.now();
        let resp = w.request(put_block(n as u32, more, (n == 0).then_some(9000), block));
        assert_eq!(
            resp.code,
            if more { Code::CONTINUE } else { Code::CHANGED },
            "block {n}"
        );
        // The answer waits for the write: at least one executor delay after sending.
        assert!(
            w.now() - sent >= Duration::from_millis(300),
            "block {n} answered before it was written"
        );
        if n == 3 {
            // Other requests are served during the transfer.
            assert_eq!(w.read("/5/0/3"), "1", "Downloading");
            assert_eq!(
                w.read("/3/0/0").len(),
                0,
                "(no device object: 4.04 with empty payload)"
            );
        }
    }
    assert_eq!(
        w.exec.pushed.len(),
        blocks.len(),
        "every block written exactly once"
    );
    assert!(
        w.exec
            .pushed
            .windows(2)
            .all(|p| p[0].0 + p[0].1 as u64 == p[1].0)
    );
    assert_eq!(w.read("/5/0/3"), "2");
    assert_eq!(w.read("/5/0/5"), "0");
    assert_eq!(w.read("/5/0/6"), "gw-os");
    assert_eq!(w.read("/5/0/7"), "2.1");
}

#[test]
fn size1_beyond_the_slot_gets_4_13_and_result_2() {
    let mut w = registered(LinkConfig::default());
    let resp = w.request(put_block(0, true, Some(10 << 20), &[0; 1024]));
    assert_eq!(resp.code, Code::REQUEST_ENTITY_TOO_LARGE);
    assert_eq!(
        resp.option(opt::SIZE1)
            .map(lwm2md::core::coap::message::decode_uint),
        Some(lwm2md::update::fota::max_package_size(64 * 1024)),
        "Size1 names the largest package a 64 KiB slot could take"
    );
    assert!(w.run_until(Duration::from_secs(10), |w| w.exec.queue.is_empty()));
    assert_eq!(w.read("/5/0/5"), result::NO_SPACE.to_string());
    assert_eq!(w.read("/5/0/3"), "0");
}

#[test]
fn update_outside_downloaded_is_4_05_and_changes_nothing() {
    let mut w = registered(LinkConfig::default());
    let mut exec = Message::request(Code::POST);
    exec.set_uri_path("/5/0/2");
    assert_eq!(w.request(exec).code, Code::METHOD_NOT_ALLOWED);
    assert_eq!(
        (w.read("/5/0/3"), w.read("/5/0/5")),
        ("0".into(), "0".into())
    );
    let mut cancel = Message::request(Code::POST);
    cancel.set_uri_path("/5/0/10");
    assert_eq!(w.request(cancel).code, Code::METHOD_NOT_ALLOWED);
}

#[test]
fn a_pull_notifies_state_changes_and_bad_uris_get_their_results() {
    let mut w = registered(LinkConfig::default());
    let mut obs = Message::request(Code::GET);
    obs.set_uri_path("/5/0/3");
    obs.set_uint_option(opt::OBSERVE, 0);
    obs.token = b"st".to_vec();
    w.server.observe_token(obs.token.clone());
    assert_eq!(w.request(obs).payload, b"0");
    let write = |uri: &str| {
        let mut m = Message::request(Code::PUT);
        m.set_uri_path("/5/0/1");
        m.set_uint_option(opt::CONTENT_FORMAT, u64::from(cf::TEXT));
        m.payload = uri.as_bytes().to_vec();
        m
    };
    assert_eq!(w.request(write("ftp://x/fw")).code, Code::CHANGED);
    assert_eq!(w.read("/5/0/5"), result::UNSUPPORTED_PROTOCOL.to_string());
    assert_eq!(w.request(write("no uri")).code, Code::CHANGED);
    assert_eq!(w.read("/5/0/5"), result::INVALID_URI.to_string());
    assert_eq!(w.request(write("http://repo/fw.pkg")).code, Code::CHANGED);
    assert!(
        w.run_until(Duration::from_secs(30), |w| w.exec.queue.is_empty()
            && !w.exec.fetches.is_empty())
    );
    w.run_until(Duration::from_secs(5), |_| false);
    assert_eq!(w.exec.fetches, ["http://repo/fw.pkg"]);
    assert_eq!(w.read("/5/0/3"), "2");
    let states: Vec<Vec<u8>> = w.notifications.iter().map(|m| m.payload.clone()).collect();
    assert!(
        states.contains(&b"1".to_vec()) && states.contains(&b"2".to_vec()),
        "{states:?}"
    );
    // A new URI while Downloaded is refused; an empty one resets.
    assert_eq!(
        w.request(write("http://repo/other")).code,
        Code::METHOD_NOT_ALLOWED
    );
    assert_eq!(w.request(write("")).code, Code::CHANGED);
    assert_eq!(
        (w.read("/5/0/3"), w.read("/5/0/5")),
        ("0".into(), "0".into())
    );
}

//! Tests of the Bootstrap interface and of Access Control enforcement, driving the sans-IO client
//! with encoded datagrams on a hand-advanced clock.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::*;
use crate::core::coap::codec;
use crate::core::coap::message::{Code, MsgType, opt};
use crate::core::lwm2m::content::{self, NewestModel};
use crate::core::lwm2m::error::Error;
use crate::core::lwm2m::value::Record;
use crate::core::object::{Instances, Object};
use crate::model::ObjectMeta;
use crate::objects::access_control::AccessControl;
use crate::objects::security::{Security, SecurityAccount};
use crate::objects::server::{Server, ServerAccount};

struct Wall;

impl WallClock for Wall {
    fn unix_time(&self, _: Instant) -> i64 {
        1_700_000_000
    }
}

/// A Device object with a readable manufacturer and a writable UTC offset.
#[derive(Default)]
struct Device {
    offset: String,
}

impl Object for Device {
    fn meta(&self) -> &'static ObjectMeta {
        crate::model::object(3).expect("device model")
    }
    fn instances(&self) -> Vec<u16> {
        vec![0]
    }
    fn resources(&self, _: u16) -> Vec<u16> {
        vec![0, 14]
    }
    fn read(&mut self, _: &mut Ctx<'_>, _: u16, r: u16) -> Result<ResourceValue, Error> {
        Ok(ResourceValue::Single(Value::String(match r {
            0 => "ACME".into(),
            _ => self.offset.clone(),
        })))
    }
    fn write(&mut self, _: &mut Ctx<'_>, _: u16, _: u16, v: ResourceValue) -> Result<(), Error> {
        if let ResourceValue::Single(Value::String(s)) = v {
            self.offset = s;
        }
        Ok(())
    }
}

fn bs_account(hold_off: u32) -> SecurityAccount {
    let mut a = SecurityAccount::nosec("coap://bs.example", 0);
    a.ssid = None;
    a.bootstrap = true;
    a.hold_off = Some(hold_off);
    a
}

fn server_account(ssid: u16) -> ServerAccount {
    ServerAccount {
        ssid,
        lifetime: 300,
        default_pmin: 0,
        default_pmax: None,
        disable_timeout: 86400,
        notification_storing: true,
        binding: "U".into(),
        confirmable_notifications: false,
    }
}

struct Harness {
    client: Client,
    now: Instant,
    mid: u16,
}

impl Harness {
    fn new(
        security: Vec<SecurityAccount>,
        servers: Vec<ServerAccount>,
        fallback_after: u32,
        state: Option<serde_json::Value>,
    ) -> Self {
        let mut reg = Registry::new();
        reg.insert(Box::new(Security::new(security)));
        reg.insert(Box::new(Server::new(servers)));
        reg.insert(Box::new(AccessControl::default()));
        reg.insert(Box::new(Device::default()));
        let config = ClientConfig {
            endpoint: "urn:dev:bs-test".into(),
            coap: crate::core::coap::endpoint::CoapConfig::default(),
            block_szx: 6,
            max_body_size: 65536,
            retry_initial: Duration::from_secs(10),
            retry_max: Duration::from_secs(60),
            sample_interval: Duration::from_secs(10),
            server_prefs: BTreeMap::new(),
            bootstrap_fallback_after: fallback_after,
            bootstrap_timeout: Duration::from_secs(30),
            seed: 7,
        };
        let now = crate::host::test_instant();
        let client = Client::new(config, reg, Box::new(Wall), state, now);
        Self {
            client,
            now,
            mid: 100,
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.client.handle_timeout(self.now);
    }

    /// Datagrams sent since the last call, decoded.
    fn sent(&mut self) -> Vec<(Peer, Message)> {
        std::iter::from_fn(|| self.client.poll_transmit())
            .map(|t| {
                (
                    t.peer,
                    codec::decode(&t.data).expect("client sends valid CoAP"),
                )
            })
            .collect()
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.client.poll_event()).collect()
    }

    /// Answers the outstanding request `req` from `peer` with `code`.
    fn answer(&mut self, peer: Peer, req: &Message, code: Code, location: &[&str]) {
        let mut resp = Message::new(MsgType::Ack, code);
        resp.mid = req.mid;
        resp.token = req.token.clone();
        for seg in location {
            resp.add_option(opt::LOCATION_PATH, seg.as_bytes().to_vec());
        }
        let data = codec::encode(&resp).expect("encode");
        self.client.handle_datagram(self.now, peer, &data);
    }

    /// Sends a request from `peer` and returns the client's piggybacked answer.
    fn request(
        &mut self,
        peer: Peer,
        code: Code,
        path: &str,
        format: Option<u16>,
        accept: Option<u16>,
        payload: Vec<u8>,
    ) -> Message {
        self.mid += 1;
        let mut msg = Message::request(code);
        msg.mid = self.mid;
        msg.token = self.mid.to_be_bytes().to_vec();
        msg.set_uri_path(path);
        if let Some(f) = format {
            msg.set_uint_option(opt::CONTENT_FORMAT, u64::from(f));
        }
        if let Some(a) = accept {
            msg.set_uint_option(opt::ACCEPT, u64::from(a));
        }
        msg.payload = payload;
        let data = codec::encode(&msg).expect("encode");
        self.client.handle_datagram(self.now, peer, &data);
        let sent = self.sent();
        sent.into_iter()
            .find(|(p, m)| *p == peer && m.mid == msg.mid)
            .map(|(_, m)| m)
            .unwrap_or_else(|| panic!("no answer to {code} {path}"))
    }

    /// Bootstrap-Discover of `path`, as text.
    fn discover(&mut self, path: &str) -> String {
        let r = self.request(
            BOOTSTRAP_PEER,
            Code::GET,
            path,
            None,
            Some(cf::LINK_FORMAT),
            Vec::new(),
        );
        assert_eq!(r.code, Code::CONTENT);
        String::from_utf8(r.payload).expect("link format is text")
    }

    fn bs(&mut self, code: Code, path: &str, payload: Vec<u8>) -> Message {
        let format = (!payload.is_empty()).then_some(cf::SENML_JSON);
        self.request(BOOTSTRAP_PEER, code, path, format, None, payload)
    }

    /// Waits for the Bootstrap-Request and accepts it.
    fn accept_bootstrap_request(&mut self) -> Message {
        // Timers due now run (as the runtime does when `poll_timeout` says so).
        self.advance(Duration::ZERO);
        let (_, req) = self
            .sent()
            .into_iter()
            .find(|(p, m)| *p == BOOTSTRAP_PEER && m.code == Code::POST)
            .expect("a Bootstrap-Request");
        self.answer(BOOTSTRAP_PEER, &req, Code::CHANGED, &[]);
        req
    }
}

fn senml(base: &str, values: &[(&str, Value)]) -> Vec<u8> {
    let base = Path::parse(base).expect("path");
    let records: Vec<Record> = values
        .iter()
        .map(|(p, v)| Record::new(Path::parse(p).expect("path"), v.clone()))
        .collect();
    content::encode(cf::SENML_JSON, &base, &records, &NewestModel).expect("encode")
}

fn dm_security(iid: u16, ssid: u16, uri: &str) -> Vec<u8> {
    let p = |r: u16| format!("/0/{iid}/{r}");
    senml(
        &format!("/0/{iid}"),
        &[
            (&p(0), Value::String(uri.into())),
            (&p(1), Value::Boolean(false)),
            (&p(2), Value::Integer(3)),
            (&p(3), Value::Opaque(Vec::new())),
            (&p(4), Value::Opaque(Vec::new())),
            (&p(5), Value::Opaque(Vec::new())),
            (&p(10), Value::Integer(i64::from(ssid))),
        ],
    )
}

fn dm_server(iid: u16, ssid: u16) -> Vec<u8> {
    let p = |r: u16| format!("/1/{iid}/{r}");
    senml(
        &format!("/1/{iid}"),
        &[
            (&p(0), Value::Integer(i64::from(ssid))),
            (&p(1), Value::Integer(120)),
            (&p(6), Value::Boolean(true)),
            (&p(7), Value::String("U".into())),
        ],
    )
}

/// The client with one server account `ssid` at `uri` and a Bootstrap-Server account.
fn with_server(uri: &str, ssid: u16, fallback_after: u32) -> Harness {
    Harness::new(
        vec![SecurityAccount::nosec(uri, ssid), bs_account(0)],
        vec![server_account(ssid)],
        fallback_after,
        None,
    )
}

/// The client with only a Bootstrap-Server account, bootstrapped with server `ssid` at `uri`.
fn bootstrapped(ssid: u16) -> Harness {
    let mut h = Harness::new(vec![bs_account(0)], Vec::new(), 0, None);
    h.advance(Duration::ZERO);
    h.accept_bootstrap_request();
    assert_eq!(h.bs(Code::DELETE, "", Vec::new()).code, Code::DELETED);
    let r = h.bs(Code::PUT, "0/1", dm_security(1, ssid, "coap://dm.example"));
    assert_eq!(r.code, Code::CHANGED);
    assert_eq!(
        h.bs(Code::PUT, "1/0", dm_server(0, ssid)).code,
        Code::CHANGED
    );
    assert_eq!(h.bs(Code::POST, "bs", Vec::new()).code, Code::CHANGED);
    h
}

#[test]
fn client_initiated_bootstrap_waits_for_the_hold_off_then_installs_and_registers() {
    let mut h = Harness::new(vec![bs_account(5)], Vec::new(), 0, None);
    assert!(h.sent().is_empty(), "nothing before the hold-off");
    h.advance(Duration::from_secs(4));
    assert!(h.sent().is_empty(), "still holding off");
    h.advance(Duration::from_secs(1));
    let events = h.events();
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Connect { peer, uri, .. } if *peer == BOOTSTRAP_PEER && uri == "coap://bs.example"
    )));
    let req = h.accept_bootstrap_request();
    assert_eq!(req.uri_path().unwrap(), ["bs"]);
    assert_eq!(req.uri_query().unwrap(), ["ep=urn:dev:bs-test", "pct=112"]);
    assert_eq!(h.client.status()[0].state, "bootstrapping");

    assert_eq!(h.bs(Code::DELETE, "", Vec::new()).code, Code::DELETED);
    let r = h.bs(Code::PUT, "0/1", dm_security(1, 42, "coap://dm.example"));
    assert_eq!(r.code, Code::CHANGED);
    assert_eq!(h.bs(Code::PUT, "1/3", dm_server(3, 42)).code, Code::CHANGED);
    // Nothing is in use before Finish.
    assert!(h.client.servers.is_empty());

    let discover = h.discover("");
    let text = discover;
    assert!(text.starts_with("</>;lwm2m=\"1.1\""), "{text}");
    assert!(text.contains("</0/0>;uri=\"coap://bs.example\""), "{text}");
    assert!(
        text.contains("</0/1>;ssid=42;uri=\"coap://dm.example\""),
        "{text}"
    );
    assert!(text.contains("</1/3>;ssid=42"), "{text}");
    assert!(text.contains("</3/0>"), "{text}");

    assert_eq!(h.bs(Code::POST, "bs", Vec::new()).code, Code::CHANGED);
    let events = h.events();
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Connect { peer: Peer(42), uri, .. } if uri == "coap://dm.example"
    )));
    h.advance(Duration::ZERO);
    let (_, register) = h
        .sent()
        .into_iter()
        .find(|(p, _)| *p == Peer(42))
        .expect("Register to the new server");
    assert_eq!(register.uri_path().unwrap(), ["rd"]);
    assert!(
        register.uri_query().unwrap().contains(&"lt=120"),
        "lifetime from the bootstrap"
    );
}

#[test]
fn inconsistent_finish_gets_4_06_and_changes_nothing_until_fixed() {
    let mut h = Harness::new(vec![bs_account(0)], Vec::new(), 0, None);
    h.advance(Duration::ZERO);
    h.accept_bootstrap_request();
    // Only /1/0/5 (ETS 1.1-int-9): no Short Server ID, lifetime or binding.
    let r = h.bs(
        Code::PUT,
        "1/0/5",
        senml("/1/0/5", &[("/1/0/5", Value::Integer(60))]),
    );
    assert_eq!(r.code, Code::CHANGED);
    let finish = h.bs(Code::POST, "bs", Vec::new());
    assert_eq!(finish.code, Code::NOT_ACCEPTABLE);
    assert!(
        String::from_utf8_lossy(&finish.payload).contains("/1/0/0"),
        "the reason names the missing resource"
    );
    assert!(h.client.servers.is_empty());
    // A /1 without its /0 is inconsistent too.
    assert_eq!(h.bs(Code::PUT, "1/0", dm_server(0, 9)).code, Code::CHANGED);
    let finish = h.bs(Code::POST, "bs", Vec::new());
    assert_eq!(finish.code, Code::NOT_ACCEPTABLE);
    assert!(String::from_utf8_lossy(&finish.payload).contains("Short Server ID 9"));
    // Fixed: accepted.
    let r = h.bs(Code::PUT, "0/1", dm_security(1, 9, "coap://dm.example"));
    assert_eq!(r.code, Code::CHANGED);
    assert_eq!(h.bs(Code::POST, "bs", Vec::new()).code, Code::CHANGED);
    assert!(h.client.servers.contains_key(&9));
}

#[test]
fn unusable_accounts_are_refused_at_finish() {
    let mut h = Harness::new(vec![bs_account(0)], Vec::new(), 0, None);
    h.advance(Duration::ZERO);
    h.accept_bootstrap_request();
    // coaps:// with NoSec: never fall back to plain text.
    let r = h.bs(Code::PUT, "0/1", dm_security(1, 9, "coaps://dm.example"));
    assert_eq!(r.code, Code::CHANGED);
    assert_eq!(h.bs(Code::PUT, "1/0", dm_server(0, 9)).code, Code::CHANGED);
    let finish = h.bs(Code::POST, "bs", Vec::new());
    assert_eq!(finish.code, Code::NOT_ACCEPTABLE);
    assert!(String::from_utf8_lossy(&finish.payload).contains("coaps://"));
}

#[test]
fn delete_keeps_the_bootstrap_account_and_read_is_limited_to_1_and_2() {
    let mut h = with_server("coap://old.example", 1, 0);
    h.advance(Duration::ZERO);
    h.sent();
    // A server triggers the bootstrap.
    let r = h.request(Peer(1), Code::POST, "1/0/9", None, None, Vec::new());
    assert_eq!(r.code, Code::CHANGED);
    h.accept_bootstrap_request();
    assert_eq!(h.bs(Code::DELETE, "0", Vec::new()).code, Code::DELETED);
    assert_eq!(
        h.bs(Code::DELETE, "0/1", Vec::new()).code,
        Code::BAD_REQUEST,
        "the BS account itself cannot go"
    );
    assert_eq!(h.bs(Code::DELETE, "1", Vec::new()).code, Code::DELETED);
    let discover = h.discover("0");
    let text = discover;
    assert!(text.contains("</0/1>;uri=\"coap://bs.example\""), "{text}");
    assert!(!text.contains("old.example"), "{text}");
    assert_eq!(
        h.request(BOOTSTRAP_PEER, Code::GET, "0", None, None, Vec::new())
            .code,
        Code::UNAUTHORIZED
    );
    assert_eq!(
        h.request(BOOTSTRAP_PEER, Code::GET, "3", None, None, Vec::new())
            .code,
        Code::UNAUTHORIZED
    );
    assert_eq!(h.bs(Code::PUT, "1/0", dm_server(0, 5)).code, Code::CHANGED);
    let read = h.request(
        BOOTSTRAP_PEER,
        Code::GET,
        "1",
        None,
        Some(cf::SENML_JSON),
        Vec::new(),
    );
    assert_eq!(read.code, Code::CONTENT);
    let text = String::from_utf8(read.payload).unwrap();
    assert!(text.contains("\"v\":5"), "{text}");
    // The old server is still in use: nothing changed before Finish.
    assert!(h.client.servers.contains_key(&1));
}

#[test]
fn no_finish_in_time_fails_and_retries_with_back_off() {
    let mut h = Harness::new(vec![bs_account(0)], Vec::new(), 0, None);
    h.advance(Duration::ZERO);
    h.accept_bootstrap_request();
    assert_eq!(h.bs(Code::DELETE, "", Vec::new()).code, Code::DELETED);
    h.advance(Duration::from_secs(31));
    assert!(h.sent().is_empty());
    assert_eq!(h.client.status()[0].state, "bootstrap-waiting");
    h.advance(Duration::from_secs(10));
    let req = h.accept_bootstrap_request();
    assert_eq!(req.uri_path().unwrap(), ["bs"]);
    // The staged deletion of the first attempt was dropped.
    let read = h.discover("");
    assert!(read.contains("</0/0>"));
}

#[test]
fn requests_outside_a_bootstrap_are_refused() {
    let mut h = with_server("coap://dm.example", 1, 0);
    h.advance(Duration::ZERO);
    let r = h.bs(Code::DELETE, "", Vec::new());
    assert_eq!(r.code, Code::SERVICE_UNAVAILABLE);
    assert!(h.client.servers.contains_key(&1));
}

#[test]
fn registration_failures_with_every_server_fall_back_to_bootstrap() {
    let mut h = with_server("coap://dead.example", 1, 2);
    let mut bootstrap_requests = Vec::new();
    for _ in 0..2 {
        h.advance(Duration::from_secs(60));
        let (_, reg) = h
            .sent()
            .into_iter()
            .find(|(p, _)| *p == Peer(1))
            .expect("Register");
        h.answer(Peer(1), &reg, Code::FORBIDDEN, &[]);
        h.advance(Duration::ZERO);
        bootstrap_requests.push(
            h.sent()
                .iter()
                .filter(|(p, m)| *p == BOOTSTRAP_PEER && m.uri_path().unwrap() == ["bs"])
                .count(),
        );
    }
    assert_eq!(
        bootstrap_requests,
        [0, 1],
        "bootstrap after the second failure"
    );
}

#[test]
fn bootstrapped_accounts_survive_a_restart_and_win_over_the_factory_ones() {
    let h = bootstrapped(42);
    let state = h
        .client
        .effects
        .iter()
        .rev()
        .find_map(|(_, e)| match e {
            crate::core::effect::Effect::SaveState(s) => Some(s.clone()),
            _ => None,
        })
        .expect("the bootstrap is saved");
    // The factory configuration still names the old server.
    let mut again = Harness::new(
        vec![
            SecurityAccount::nosec("coap://factory.example", 1),
            bs_account(0),
        ],
        vec![server_account(1)],
        0,
        Some(state),
    );
    let events = again.events();
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Connect { peer: Peer(42), uri, .. } if uri == "coap://dm.example"
    )));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Connect { peer: Peer(1), .. })),
        "{events:?}"
    );
    assert!(again.sent().iter().all(|(p, _)| *p == Peer(42)));
}

/// Two registered servers, 1 and 2, and optionally an ACL instance for /3/0.
fn two_servers(acl: Option<&[(u16, i64)]>) -> Harness {
    let mut h = Harness::new(
        vec![
            SecurityAccount::nosec("coap://one.example", 1),
            SecurityAccount::nosec("coap://two.example", 2),
            bs_account(0),
        ],
        vec![server_account(1), server_account(2)],
        0,
        None,
    );
    if let Some(acl) = acl {
        let mut staged = Instances::new();
        staged.insert(
            0,
            BTreeMap::from([
                (0, ResourceValue::Single(Value::Integer(3))),
                (1, ResourceValue::Single(Value::Integer(0))),
                (
                    2,
                    ResourceValue::Multiple(
                        acl.iter().map(|(s, r)| (*s, Value::Integer(*r))).collect(),
                    ),
                ),
                (3, ResourceValue::Single(Value::Integer(1))),
            ]),
        );
        let (r, _) = h.client.with_ctx(h.now, None, |reg, ctx| {
            reg.get_mut(2)
                .expect("object 2")
                .bootstrap_install(ctx, &staged, true)
        });
        r.expect("ACL installed");
    }
    h.advance(Duration::ZERO);
    h
}

fn write_offset(h: &mut Harness, ssid: u16) -> Code {
    h.request(
        Peer(ssid),
        Code::PUT,
        "3/0/14",
        Some(cf::TEXT),
        None,
        b"+02:00".to_vec(),
    )
    .code
}

#[test]
fn acl_grants_per_server_rights() {
    let mut h = two_servers(Some(&[(1, 1 | 2 | 4), (2, 1)]));
    assert_eq!(write_offset(&mut h, 2), Code::UNAUTHORIZED);
    assert_eq!(write_offset(&mut h, 1), Code::CHANGED);
    let read = h.request(Peer(2), Code::GET, "3/0/0", None, None, Vec::new());
    assert_eq!(read.code, Code::CONTENT);
    // Object 2 is readable by everyone, writable by its owner only.
    let acl = senml("/2/0/2", &[("/2/0/2/2", Value::Integer(3))]);
    let r = h.request(
        Peer(2),
        Code::POST,
        "2/0/2",
        Some(cf::SENML_JSON),
        None,
        acl.clone(),
    );
    assert_eq!(r.code, Code::UNAUTHORIZED);
    let r = h.request(
        Peer(1),
        Code::POST,
        "2/0/2",
        Some(cf::SENML_JSON),
        None,
        acl,
    );
    assert_eq!(r.code, Code::CHANGED);
    assert_eq!(write_offset(&mut h, 2), Code::CHANGED, "server 1 granted W");
}

#[test]
fn default_owner_rules_without_an_acl_instance() {
    let mut h = two_servers(None);
    assert_eq!(write_offset(&mut h, 2), Code::UNAUTHORIZED);
    assert_eq!(write_offset(&mut h, 1), Code::CHANGED, "lowest ssid owns");
    let read = h.request(
        Peer(2),
        Code::GET,
        "3",
        None,
        Some(cf::SENML_JSON),
        Vec::new(),
    );
    assert_eq!(read.code, Code::CONTENT);
    assert_eq!(
        String::from_utf8(read.payload).unwrap(),
        "[]",
        "object-level reads leave out what the server may not read"
    );
    // Each server manages its own /1 instance, not the other one's.
    let lt = |v| senml("/1/1/1", &[("/1/1/1", Value::Integer(v))]);
    let r = h.request(
        Peer(2),
        Code::PUT,
        "1/1/1",
        Some(cf::SENML_JSON),
        None,
        lt(90),
    );
    assert_eq!(r.code, Code::CHANGED);
    let r = h.request(Peer(2), Code::GET, "1/0/1", None, None, Vec::new());
    assert_eq!(r.code, Code::UNAUTHORIZED);
}

#[test]
fn a_single_server_has_every_right() {
    let mut h = Harness::new(
        vec![SecurityAccount::nosec("coap://one.example", 7)],
        vec![server_account(7)],
        0,
        None,
    );
    h.advance(Duration::ZERO);
    assert_eq!(write_offset(&mut h, 7), Code::CHANGED);
}

//! The Bootstrap interface: arbitrary datagrams (split into up to four) from the
//! Bootstrap-Server during a bootstrap must never panic, and whatever they staged or installed,
//! the client keeps a Bootstrap-Server account and answers the next request.
#![no_main]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use lwm2md::core::client::{BOOTSTRAP_PEER, Client, ClientConfig, WallClock};
use lwm2md::core::coap::codec;
use lwm2md::core::coap::endpoint::CoapConfig;
use lwm2md::core::coap::message::{Code, Message};
use lwm2md::core::object::Registry;
use lwm2md::objects::access_control::AccessControl;
use lwm2md::objects::security::{Security, SecurityAccount};
use lwm2md::objects::server::Server;

struct Fixed;

impl WallClock for Fixed {
    fn unix_time(&self, _now: Instant) -> i64 {
        1_700_000_000
    }
}

/// A client with only a Bootstrap-Server account, its Bootstrap-Request sent.
fn bootstrapping_client(now: Instant) -> Client {
    let mut bs = SecurityAccount::nosec("coap://bs", 0);
    bs.ssid = None;
    bs.bootstrap = true;
    let mut reg = Registry::new();
    reg.insert(Box::new(Security::new(vec![bs])));
    reg.insert(Box::new(Server::new(Vec::new())));
    reg.insert(Box::new(AccessControl::default()));
    let config = ClientConfig {
        endpoint: "urn:dev:fuzz".into(),
        coap: CoapConfig::default(),
        block_szx: 2,
        max_body_size: 4096,
        retry_initial: Duration::from_secs(10),
        retry_max: Duration::from_secs(60),
        sample_interval: Duration::from_secs(1),
        server_prefs: BTreeMap::new(),
        bootstrap_fallback_after: 0,
        bootstrap_timeout: Duration::from_secs(247),
        seed: 7,
    };
    let mut client = Client::new(config, reg, Box::new(Fixed), None, now);
    client.handle_timeout(now);
    while client.poll_transmit().is_some() {}
    client
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut client = bootstrapping_client(start);
    let (cuts, rest) = data.split_first().map_or((0, data), |(c, r)| (*c, r));
    let parts = usize::from(cuts % 4) + 1;
    let len = rest.len().div_ceil(parts).max(1);
    for (i, chunk) in rest.chunks(len).enumerate() {
        let now = start + Duration::from_millis(100 * i as u64);
        client.handle_datagram(now, BOOTSTRAP_PEER, chunk);
        client.handle_timeout(now);
        while client.poll_transmit().is_some() {}
        while client.poll_effect().is_some() {}
        while client.poll_event().is_some() {}
    }
    // Still answering the Bootstrap-Server (a Discover, or 5.03 once the bootstrap ended).
    let used: Vec<u16> = rest.chunks(len).filter_map(|c| c.get(2..4)).map(|b| u16::from_be_bytes([b[0], b[1]])).collect();
    let mut probe = Message::request(Code::GET);
    probe.mid = (0u16..=u16::MAX).find(|m| !used.contains(m)).unwrap_or(0);
    probe.token = b"probe".to_vec();
    let later = start + Duration::from_secs(1);
    client.handle_datagram(later, BOOTSTRAP_PEER, &codec::encode(&probe).expect("encode"));
    let answered = std::iter::from_fn(|| client.poll_transmit())
        .filter_map(|t| codec::decode(&t.data).ok())
        .any(|m| m.token == b"probe" && m.code.is_response());
    assert!(answered, "the client stopped answering the Bootstrap-Server");
});

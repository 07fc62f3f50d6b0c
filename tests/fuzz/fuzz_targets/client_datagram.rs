//! Whole request path: arbitrary datagrams (split into up to four) from the server of a
//! registered client must never panic; the client keeps answering a normal Read afterwards.
#![no_main]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use lwm2md::core::client::{Client, ClientConfig, Peer, ServerPrefs, WallClock};
use lwm2md::core::coap::codec;
use lwm2md::core::coap::endpoint::CoapConfig;
use lwm2md::core::coap::message::{Code, Message, MsgType, opt};
use lwm2md::core::object::Registry;
use lwm2md::objects::security::{Security, SecurityAccount};
use lwm2md::objects::server::{Server, ServerAccount};

struct Fixed;

impl WallClock for Fixed {
    fn unix_time(&self, _now: Instant) -> i64 {
        1_700_000_000
    }
}

fn registered_client(now: Instant) -> Client {
    let mut reg = Registry::new();
    reg.insert(Box::new(Security::new(vec![SecurityAccount::nosec("coap://x", 1)])));
    reg.insert(Box::new(Server::new(vec![ServerAccount {
        ssid: 1,
        lifetime: 300,
        default_pmin: 0,
        default_pmax: Some(60),
        disable_timeout: 60,
        notification_storing: true,
        binding: "U".into(),
        confirmable_notifications: false,
    }])));
    let config = ClientConfig {
        endpoint: "urn:dev:fuzz".into(),
        coap: CoapConfig::default(),
        block_szx: 2,
        max_body_size: 4096,
        retry_initial: Duration::from_secs(10),
        retry_max: Duration::from_secs(60),
        sample_interval: Duration::from_secs(1),
        server_prefs: BTreeMap::from([(1, ServerPrefs::default())]),
        bootstrap_fallback_after: 0,
        bootstrap_timeout: Duration::from_secs(247),
        seed: 7,
    };
    let mut client = Client::new(config, reg, Box::new(Fixed), None, now);
    // Answer the Register with 2.01 so requests are served as from a registered server.
    let register = client.poll_transmit().and_then(|t| codec::decode(&t.data).ok()).expect("register");
    let mut created = Message::new(MsgType::Ack, Code::CREATED);
    created.mid = register.mid;
    created.token = register.token.clone();
    created.add_option(opt::LOCATION_PATH, b"rd".to_vec());
    created.add_option(opt::LOCATION_PATH, b"1".to_vec());
    client.handle_datagram(now, Peer(1), &codec::encode(&created).expect("encode"));
    while client.poll_transmit().is_some() {}
    client
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut client = registered_client(start);
    // The first byte says where to cut the rest into datagrams (several requests per input,
    // e.g. Block1 sequences).
    let (cuts, rest) = data.split_first().map_or((0, data), |(c, r)| (*c, r));
    let parts = usize::from(cuts % 4) + 1;
    let len = rest.len().div_ceil(parts).max(1);
    for (i, chunk) in rest.chunks(len).enumerate() {
        let now = start + Duration::from_millis(100 * i as u64);
        client.handle_datagram(now, Peer(1), chunk);
        client.handle_timeout(now);
        while client.poll_transmit().is_some() {}
        while client.poll_effect().is_some() {}
        while client.poll_event().is_some() {}
    }
    // Still serving: a Read with a message ID no fuzz datagram used (so it is not a duplicate)
    // gets an answer. A fuzz input may have disabled the server, so any response counts.
    let used: Vec<u16> = rest.chunks(len).filter_map(|c| c.get(2..4)).map(|b| u16::from_be_bytes([b[0], b[1]])).collect();
    let mut read = Message::request(Code::GET);
    read.mid = (0u16..=u16::MAX).find(|m| !used.contains(m)).unwrap_or(0);
    read.token = b"probe".to_vec();
    read.set_uri_path("/1/0/0");
    let later = start + Duration::from_secs(1);
    client.handle_datagram(later, Peer(1), &codec::encode(&read).expect("encode"));
    let answered = std::iter::from_fn(|| client.poll_transmit())
        .filter_map(|t| codec::decode(&t.data).ok())
        .any(|m| m.token == b"probe" && m.code.is_response());
    assert!(answered, "the client stopped answering after the fuzz input");
});

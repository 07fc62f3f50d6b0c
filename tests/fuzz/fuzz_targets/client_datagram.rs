//! Whole request path: arbitrary datagrams (split into up to four) from the server of a
//! registered client must never panic; the client keeps answering a normal Read afterwards.
#![no_main]

mod client;

use std::collections::BTreeMap;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use lwm2md::core::client::{Client, Peer, ServerPrefs};
use lwm2md::core::coap::codec;
use lwm2md::core::coap::message::{Code, Message, MsgType, opt};
use lwm2md::core::object::Registry;
use lwm2md::objects::security::{Security, SecurityAccount};
use lwm2md::objects::server::{Server, ServerAccount};

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
    let config = client::config(BTreeMap::from([(1, ServerPrefs::default())]));
    let mut client = Client::new(config, reg, Box::new(client::Fixed), None, now);
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
    let mut c = registered_client(start);
    let used = client::feed(&mut c, Peer(1), start, data);
    // Still serving: a Read gets an answer. A fuzz input may have disabled the server, so any
    // response counts.
    let mut read = Message::request(Code::GET);
    read.set_uri_path("/1/0/0");
    assert!(
        client::answers(&mut c, Peer(1), start, read, &used),
        "the client stopped answering after the fuzz input"
    );
});

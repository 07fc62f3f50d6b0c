//! The Bootstrap interface: arbitrary datagrams (split into up to four) from the
//! Bootstrap-Server during a bootstrap must never panic, and whatever they staged or installed,
//! the client keeps a Bootstrap-Server account and answers the next request.
#![no_main]

mod client;

use std::collections::BTreeMap;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use lwm2md::core::client::{BOOTSTRAP_PEER, Client};
use lwm2md::core::coap::message::{Code, Message};
use lwm2md::core::object::Registry;
use lwm2md::objects::access_control::AccessControl;
use lwm2md::objects::security::{Security, SecurityAccount};
use lwm2md::objects::server::Server;

/// A client with only a Bootstrap-Server account, its Bootstrap-Request sent.
fn bootstrapping_client(now: Instant) -> Client {
    let mut bs = SecurityAccount::nosec("coap://bs", 0);
    bs.ssid = None;
    bs.bootstrap = true;
    let mut reg = Registry::new();
    reg.insert(Box::new(Security::new(vec![bs])));
    reg.insert(Box::new(Server::new(Vec::new())));
    reg.insert(Box::new(AccessControl::default()));
    let mut client = Client::new(client::config(BTreeMap::new()), reg, Box::new(client::Fixed), None, now);
    client.handle_timeout(now);
    while client.poll_transmit().is_some() {}
    client
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut c = bootstrapping_client(start);
    let used = client::feed(&mut c, BOOTSTRAP_PEER, start, data);
    // Still answering the Bootstrap-Server (a Discover, or 5.03 once the bootstrap ended).
    let probe = Message::request(Code::GET);
    assert!(
        client::answers(&mut c, BOOTSTRAP_PEER, start, probe, &used),
        "the client stopped answering the Bootstrap-Server"
    );
});

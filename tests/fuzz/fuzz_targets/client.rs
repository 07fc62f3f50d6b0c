//! Shared by the datagram targets: a fixed wall clock, the client configuration, feeding a fuzz
//! input as datagrams, and the check that the client still answers afterwards.

#![allow(dead_code)] // each target uses a different part

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lwm2md::core::client::{Client, ClientConfig, Peer, ServerPrefs, WallClock};
use lwm2md::core::coap::codec;
use lwm2md::core::coap::endpoint::CoapConfig;
use lwm2md::core::coap::message::Message;

pub struct Fixed;

impl WallClock for Fixed {
    fn unix_time(&self, _now: Instant) -> i64 {
        1_700_000_000
    }
}

/// The client configuration of every datagram target.
pub fn config(server_prefs: BTreeMap<u16, ServerPrefs>) -> ClientConfig {
    ClientConfig {
        endpoint: "urn:dev:fuzz".into(),
        coap: CoapConfig::default(),
        block_szx: 2,
        max_body_size: 4096,
        retry_initial: Duration::from_secs(10),
        retry_max: Duration::from_secs(60),
        sample_interval: Duration::from_secs(1),
        server_prefs,
        bootstrap_fallback_after: 0,
        bootstrap_timeout: Duration::from_secs(247),
        seed: 7,
    }
}

/// Feeds `data` to `client` as datagrams from `peer`, 100 ms apart, draining whatever the client
/// produces. The first byte says into how many (1–4) the rest is cut, so one input can be
/// several requests (e.g. Block1 sequences). Returns the message IDs the datagrams carried.
pub fn feed(client: &mut Client, peer: Peer, start: Instant, data: &[u8]) -> Vec<u16> {
    let (cuts, rest) = data.split_first().map_or((0, data), |(c, r)| (*c, r));
    let parts = usize::from(cuts % 4) + 1;
    let len = rest.len().div_ceil(parts).max(1);
    for (i, chunk) in rest.chunks(len).enumerate() {
        let now = start + Duration::from_millis(100 * i as u64);
        client.handle_datagram(now, peer, chunk);
        client.handle_timeout(now);
        while client.poll_transmit().is_some() {}
        while client.poll_effect().is_some() {}
        while client.poll_event().is_some() {}
    }
    rest.chunks(len).filter_map(|c| c.get(2..4)).map(|b| u16::from_be_bytes([b[0], b[1]])).collect()
}

/// Sends `probe` from `peer` a second after `start`, with a message ID none of `used` carried
/// (so it is no duplicate): whether any response to it comes back.
pub fn answers(client: &mut Client, peer: Peer, start: Instant, mut probe: Message, used: &[u16]) -> bool {
    probe.mid = (0u16..=u16::MAX).find(|m| !used.contains(m)).unwrap_or(0);
    probe.token = b"probe".to_vec();
    let later = start + Duration::from_secs(1);
    client.handle_datagram(later, peer, &codec::encode(&probe).expect("encode"));
    std::iter::from_fn(|| client.poll_transmit())
        .filter_map(|t| codec::decode(&t.data).ok())
        .any(|m| m.token == b"probe" && m.code.is_response())
}

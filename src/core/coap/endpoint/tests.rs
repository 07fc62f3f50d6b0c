//! Endpoint tests against a hand-driven peer: we craft its datagrams with the codec and read ours
//! back, on a virtual clock.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::*;
use crate::core::coap::block::BlockOpt;
use crate::test_support::origin;

fn at(secs: f64) -> Instant {
    origin() + Duration::from_secs_f64(secs)
}

fn endpoint(seed: u64) -> Endpoint {
    Endpoint::new(CoapConfig::default(), seed)
}

fn get(path: &str) -> Message {
    let mut m = Message::request(Code::GET);
    m.set_uri_path(path);
    m
}

/// Everything the endpoint wants to send, decoded.
fn sent(ep: &mut Endpoint) -> Vec<Message> {
    std::iter::from_fn(|| ep.poll_transmit())
        .map(|b| codec::decode(&b).unwrap())
        .collect()
}

fn sent_raw(ep: &mut Endpoint) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| ep.poll_transmit()).collect()
}

fn events(ep: &mut Endpoint) -> Vec<EndpointEvent> {
    std::iter::from_fn(|| ep.poll_event()).collect()
}

fn one(mut v: Vec<Message>) -> Message {
    assert_eq!(v.len(), 1, "{v:?}");
    v.remove(0)
}

/// A message from the peer.
fn peer(mtype: MsgType, code: Code, mid: u16, token: &[u8]) -> Message {
    let mut m = Message::new(mtype, code);
    m.mid = mid;
    m.token = token.to_vec();
    m
}

fn feed(ep: &mut Endpoint, now: Instant, m: &Message) {
    ep.handle_datagram(now, &codec::encode(m).unwrap());
}

fn empty(mtype: MsgType, mid: u16) -> Message {
    peer(mtype, Code::EMPTY, mid, &[])
}

/// A CON GET from the peer.
fn peer_get(mid: u16, token: &[u8]) -> Message {
    let mut m = peer(MsgType::Con, Code::GET, mid, token);
    m.set_uri_path("/3/0");
    m
}

fn request_id(ev: &EndpointEvent) -> IncomingId {
    match ev {
        EndpointEvent::Request { id, .. } => *id,
        other => panic!("expected a request, got {other:?}"),
    }
}

// ---- retransmission ----

#[test]
fn retransmission_timing_follows_rfc_7252() {
    let mut firsts = HashSet::new();
    for seed in 0..200 {
        let mut ep = endpoint(seed);
        let id = ep.send_request(at(0.0), get("/rd"));
        let first = one(sent(&mut ep));
        let t1 = ep.poll_timeout().unwrap() - origin();
        assert!(
            t1 >= Duration::from_secs(2) && t1 <= Duration::from_secs(3),
            "{t1:?}"
        );
        firsts.insert(t1);
        // Exactly 4 retransmissions, identical to the first, with doubling intervals.
        let mut last = Duration::ZERO;
        for k in 0..4u32 {
            let due = ep.poll_timeout().unwrap();
            assert_eq!(due - origin() - last, t1 * 2u32.pow(k));
            last = due - origin();
            ep.handle_timeout(due);
            assert_eq!(one(sent(&mut ep)), first);
            assert!(events(&mut ep).is_empty());
        }
        assert!(
            last <= Duration::from_secs(45),
            "MAX_TRANSMIT_SPAN: {last:?}"
        );
        // After the last retransmission the full doubled timeout elapses, then TimedOut.
        let due = ep.poll_timeout().unwrap();
        assert_eq!(due - origin() - last, t1 * 16);
        ep.handle_timeout(due - Duration::from_millis(1));
        assert!(sent(&mut ep).is_empty() && events(&mut ep).is_empty());
        ep.handle_timeout(due);
        assert!(sent(&mut ep).is_empty());
        assert_eq!(
            events(&mut ep),
            vec![EndpointEvent::TimedOut { request: id }]
        );
        let gave_up = due - origin();
        assert!(
            gave_up >= Duration::from_secs(62) && gave_up <= Duration::from_secs(93),
            "MAX_TRANSMIT_WAIT: {gave_up:?}"
        );
        assert!(ep.is_idle());
        assert_eq!(ep.poll_timeout(), None);
    }
    assert!(
        firsts.len() > 190,
        "jitter is random: {} distinct",
        firsts.len()
    );
}

#[test]
fn piggybacked_ack_stops_retransmission() {
    let mut ep = endpoint(1);
    let id = ep.send_request(at(0.0), get("/rd"));
    let req = one(sent(&mut ep));
    assert_eq!(req.mtype, MsgType::Con);
    assert_eq!(req.token.len(), 8);
    let mut resp = peer(MsgType::Ack, Code::CREATED, req.mid, &req.token);
    resp.add_option(opt::LOCATION_PATH, b"rd".to_vec());
    feed(&mut ep, at(0.1), &resp);
    assert_eq!(
        events(&mut ep),
        vec![EndpointEvent::Response {
            request: id,
            msg: resp
        }]
    );
    assert!(ep.is_idle());
    assert_eq!(ep.poll_timeout(), None);
    ep.handle_timeout(at(10.0));
    assert!(sent(&mut ep).is_empty());
}

#[test]
fn ack_must_match_mid_and_token() {
    let mut ep = endpoint(2);
    ep.send_request(at(0.0), get("/rd"));
    let req = one(sent(&mut ep));
    // Right MID, wrong token; right token, wrong MID: neither is our response.
    feed(
        &mut ep,
        at(0.1),
        &peer(MsgType::Ack, Code::CONTENT, req.mid, b"other"),
    );
    feed(
        &mut ep,
        at(0.1),
        &peer(
            MsgType::Ack,
            Code::CONTENT,
            req.mid.wrapping_add(1),
            &req.token,
        ),
    );
    assert!(events(&mut ep).is_empty());
    assert!(!ep.is_idle());
    let due = ep.poll_timeout().unwrap();
    ep.handle_timeout(due);
    assert_eq!(one(sent(&mut ep)), req, "still retransmitting");
}

// ---- separate responses ----

#[test]
fn separate_response_to_our_request() {
    let mut ep = endpoint(3);
    let id = ep.send_request(at(0.0), get("/rd"));
    let req = one(sent(&mut ep));
    feed(&mut ep, at(0.5), &empty(MsgType::Ack, req.mid));
    assert!(events(&mut ep).is_empty());
    // No more retransmissions, but a deadline for the separate response.
    assert_eq!(ep.poll_timeout(), Some(at(0.5) + Duration::from_secs(93)));
    ep.handle_timeout(at(20.0));
    assert!(sent(&mut ep).is_empty());
    // The separate response, CON, with our token: we ACK it and report it.
    let resp = peer(MsgType::Con, Code::CONTENT, 0x7000, &req.token);
    feed(&mut ep, at(30.0), &resp);
    assert_eq!(one(sent(&mut ep)), empty(MsgType::Ack, 0x7000));
    assert_eq!(
        events(&mut ep),
        vec![EndpointEvent::Response {
            request: id,
            msg: resp.clone()
        }]
    );
    assert!(ep.is_idle());
    assert_eq!(ep.poll_timeout(), None);
    // Our ACK got lost: the duplicate is ACKed again, not reported again.
    feed(&mut ep, at(32.0), &resp);
    assert_eq!(one(sent(&mut ep)), empty(MsgType::Ack, 0x7000));
    assert!(events(&mut ep).is_empty());
}

#[test]
fn separate_response_may_overtake_the_empty_ack() {
    let mut ep = endpoint(4);
    let id = ep.send_request(at(0.0), get("/rd"));
    let req = one(sent(&mut ep));
    let resp = peer(MsgType::Non, Code::CONTENT, 0x7001, &req.token);
    feed(&mut ep, at(0.2), &resp);
    assert_eq!(
        events(&mut ep),
        vec![EndpointEvent::Response {
            request: id,
            msg: resp
        }]
    );
    assert!(sent(&mut ep).is_empty(), "a NON response needs no ACK");
    feed(&mut ep, at(0.3), &empty(MsgType::Ack, req.mid));
    assert!(events(&mut ep).is_empty() && ep.is_idle());
}

#[test]
fn separate_response_deadline() {
    let mut ep = endpoint(5);
    let id = ep.send_request(at(0.0), get("/rd"));
    let req = one(sent(&mut ep));
    feed(&mut ep, at(1.0), &empty(MsgType::Ack, req.mid));
    ep.handle_timeout(at(93.9));
    assert!(events(&mut ep).is_empty());
    ep.handle_timeout(at(94.0));
    assert_eq!(
        events(&mut ep),
        vec![EndpointEvent::TimedOut { request: id }]
    );
    // A response that comes too late is answered with RST.
    feed(
        &mut ep,
        at(95.0),
        &peer(MsgType::Con, Code::CONTENT, 9, &req.token),
    );
    assert_eq!(one(sent(&mut ep)), empty(MsgType::Rst, 9));
    assert!(events(&mut ep).is_empty());
}

#[test]
fn we_defer_and_answer_separately() {
    let mut ep = endpoint(6);
    let req = peer_get(0x100, b"tk");
    feed(&mut ep, at(0.0), &req);
    let id = request_id(&events(&mut ep)[0]);
    ep.defer(at(0.1), id);
    assert_eq!(one(sent(&mut ep)), empty(MsgType::Ack, 0x100));
    // The peer re-sends (our empty ACK was lost): the empty ACK again, no new event.
    feed(&mut ep, at(2.0), &req);
    assert_eq!(one(sent(&mut ep)), empty(MsgType::Ack, 0x100));
    assert!(events(&mut ep).is_empty());
    // The answer: a CON with the request's token and a fresh MID, retransmitted until ACKed.
    let mut body = Message::response(Code::CHANGED);
    body.payload = b"done".to_vec();
    ep.respond(at(5.0), id, body);
    let resp = one(sent(&mut ep));
    assert_eq!(
        (resp.mtype, resp.code, &resp.token[..]),
        (MsgType::Con, Code::CHANGED, &b"tk"[..])
    );
    assert!(!ep.is_idle());
    let due = ep.poll_timeout().unwrap();
    assert!(due >= at(7.0) && due <= at(8.0));
    ep.handle_timeout(due);
    assert_eq!(one(sent(&mut ep)), resp);
    feed(
        &mut ep,
        due + Duration::from_millis(10),
        &empty(MsgType::Ack, resp.mid),
    );
    assert!(ep.is_idle());
    assert_eq!(ep.poll_timeout(), None);
    assert!(
        events(&mut ep).is_empty(),
        "separate responses report nothing"
    );
    // The original request once more: still the empty ACK (the response went separately).
    feed(&mut ep, at(20.0), &req);
    assert_eq!(one(sent(&mut ep)), empty(MsgType::Ack, 0x100));
}

// ---- de-duplication of the peer's requests ----

#[test]
fn duplicate_con_gets_identical_cached_response() {
    let mut ep = endpoint(7);
    let req = peer_get(0x200, b"t1");
    feed(&mut ep, at(0.0), &req);
    let evs = events(&mut ep);
    assert_eq!(evs.len(), 1);
    let id = request_id(&evs[0]);
    // Before we answer, a duplicate is ignored (the peer will retransmit).
    feed(&mut ep, at(0.5), &req);
    assert!(sent(&mut ep).is_empty() && events(&mut ep).is_empty());
    let mut resp = Message::response(Code::CONTENT);
    resp.add_uint_option(opt::CONTENT_FORMAT, 11542);
    resp.payload = vec![1, 2, 3];
    ep.respond(at(0.6), id, resp);
    let answer = sent_raw(&mut ep);
    assert_eq!(answer.len(), 1);
    let decoded = codec::decode(&answer[0]).unwrap();
    assert_eq!(
        (decoded.mtype, decoded.mid, &decoded.token[..]),
        (MsgType::Ack, 0x200, &b"t1"[..])
    );
    for t in [3.0, 9.0, 200.0] {
        feed(&mut ep, at(t), &req);
        assert_eq!(sent_raw(&mut ep), answer, "at {t} s");
        assert!(events(&mut ep).is_empty());
    }
    // Answering twice does nothing.
    ep.respond(at(1.0), id, Message::response(Code::CONTENT));
    assert!(sent(&mut ep).is_empty());
    // After EXCHANGE_LIFETIME the MID is new again.
    feed(&mut ep, at(247.1), &req);
    assert_eq!(events(&mut ep).len(), 1);
    assert!(ep.poll_timeout().is_none(), "no timer for the cache");
}

#[test]
fn non_requests_are_deduplicated_and_answered_non() {
    let mut ep = endpoint(8);
    let mut req = peer_get(0x300, b"n");
    req.mtype = MsgType::Non;
    feed(&mut ep, at(0.0), &req);
    let id = request_id(&events(&mut ep)[0]);
    feed(&mut ep, at(1.0), &req);
    assert!(events(&mut ep).is_empty() && sent(&mut ep).is_empty());
    ep.respond(at(1.0), id, Message::response(Code::CONTENT));
    let resp = one(sent(&mut ep));
    assert_eq!((resp.mtype, &resp.token[..]), (MsgType::Non, &b"n"[..]));
    assert_ne!(resp.mid, 0x300);
    // NON_LIFETIME is 145 s.
    feed(&mut ep, at(144.0), &req);
    assert!(events(&mut ep).is_empty());
    feed(&mut ep, at(145.5), &req);
    assert_eq!(events(&mut ep).len(), 1);
}

#[test]
fn dedup_cache_is_bounded_under_a_flood() {
    let mut ep = endpoint(9);
    for i in 0..10_000u32 {
        let now = at(f64::from(i) * 0.001);
        feed(&mut ep, now, &peer_get(i as u16, &i.to_be_bytes()));
        for ev in events(&mut ep) {
            ep.respond(now, request_id(&ev), Message::response(Code::CONTENT));
        }
        sent(&mut ep);
        assert!(ep.dedup_len() <= DEDUP_CAPACITY);
    }
    assert_eq!(ep.dedup_len(), DEDUP_CAPACITY);
    assert_eq!(ep.pending_requests(), 0);
    assert_eq!(ep.poll_timeout(), None, "an idle endpoint has no timer");
    // The most recent ones are still recognised.
    feed(&mut ep, at(10.0), &peer_get(9_999, &9_999u32.to_be_bytes()));
    assert!(events(&mut ep).is_empty());
    assert_eq!(one(sent(&mut ep)).code, Code::CONTENT);
}

#[test]
fn unanswered_requests_are_bounded() {
    let mut ep = endpoint(10);
    let mut refused = 0;
    for i in 0..10_000u16 {
        feed(&mut ep, at(0.0), &peer_get(i, b"x"));
        refused += sent(&mut ep)
            .iter()
            .filter(|m| m.code == Code::SERVICE_UNAVAILABLE)
            .count();
    }
    assert_eq!(ep.pending_requests(), MAX_PENDING_REQUESTS);
    assert_eq!(events(&mut ep).len(), MAX_PENDING_REQUESTS);
    assert_eq!(refused, 10_000 - MAX_PENDING_REQUESTS);
    assert!(ep.dedup_len() <= DEDUP_CAPACITY);
}

// ---- NSTART ----

#[test]
fn nstart_queues_until_the_first_completes() {
    let mut ep = endpoint(11);
    let first = ep.send_request(at(0.0), get("/a"));
    let second = ep.send_request(at(0.0), get("/b"));
    let mut note = Message::response(Code::CONTENT);
    note.token = b"obs".to_vec();
    note.add_uint_option(opt::OBSERVE, 5);
    let third = ep.send_notification(at(0.0), note, true);
    let r1 = one(sent(&mut ep));
    assert_eq!(r1.uri_path(), Ok(vec!["a"]));
    // Retransmissions of the first do not let the second through.
    ep.handle_timeout(ep.poll_timeout().unwrap());
    assert_eq!(one(sent(&mut ep)), r1);
    // An empty ACK still holds the slot (NSTART counts the wait for the separate response).
    feed(&mut ep, at(4.0), &empty(MsgType::Ack, r1.mid));
    assert!(sent(&mut ep).is_empty());
    feed(
        &mut ep,
        at(5.0),
        &peer(MsgType::Non, Code::CONTENT, 1, &r1.token),
    );
    let r2 = one(sent(&mut ep));
    assert_eq!(r2.uri_path(), Ok(vec!["b"]));
    assert_eq!(r2.mid, r1.mid.wrapping_add(1), "sequential MIDs");
    assert_ne!(r2.token, r1.token);
    feed(
        &mut ep,
        at(5.1),
        &peer(MsgType::Ack, Code::CONTENT, r2.mid, &r2.token),
    );
    let n3 = one(sent(&mut ep));
    assert_eq!((n3.mtype, &n3.token[..]), (MsgType::Con, &b"obs"[..]));
    feed(&mut ep, at(5.2), &empty(MsgType::Ack, n3.mid));
    let evs = events(&mut ep);
    let order: Vec<_> = evs
        .iter()
        .map(|e| match e {
            EndpointEvent::Response { request, .. } | EndpointEvent::Delivered { request } => {
                *request
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(order, vec![first, second, third]);
    assert!(matches!(evs[2], EndpointEvent::Delivered { .. }));
    assert!(ep.is_idle());
}

#[test]
fn timeout_or_cancel_releases_the_slot() {
    let mut ep = endpoint(12);
    let first = ep.send_request(at(0.0), get("/a"));
    let second = ep.send_request(at(0.0), get("/b"));
    let third = ep.send_request(at(0.0), get("/c"));
    sent(&mut ep);
    loop {
        ep.handle_timeout(ep.poll_timeout().unwrap());
        let evs = events(&mut ep);
        if !evs.is_empty() {
            assert_eq!(evs, vec![EndpointEvent::TimedOut { request: first }]);
            break;
        }
        sent(&mut ep);
    }
    let r2 = one(sent(&mut ep)); // the first timed out; the second starts at once
    assert_eq!(r2.uri_path(), Ok(vec!["b"]));
    // Cancelling the active one: the third starts at the next timeout, due immediately.
    let now = ep.poll_timeout().unwrap() - Duration::from_secs(1);
    ep.cancel(second);
    assert!(sent(&mut ep).is_empty());
    let due = ep.poll_timeout().unwrap();
    assert!(due < now, "due at once");
    ep.handle_timeout(now);
    assert_eq!(one(sent(&mut ep)).uri_path(), Ok(vec!["c"]));
    // A late ACK for the cancelled one reports nothing.
    feed(
        &mut ep,
        now,
        &peer(MsgType::Ack, Code::CONTENT, r2.mid, &r2.token),
    );
    assert!(events(&mut ep).is_empty());
    ep.abort_all();
    assert_eq!(
        events(&mut ep),
        vec![EndpointEvent::TimedOut { request: third }]
    );
    assert!(ep.is_idle() && ep.poll_timeout().is_none());
}

#[test]
fn abort_all_fails_everything_in_order() {
    let mut ep = endpoint(13);
    let a = ep.send_request(at(0.0), get("/a"));
    let b = ep.send_request(at(0.0), get("/b"));
    let mut non = get("/c");
    non.mtype = MsgType::Non;
    let c = ep.send_request(at(0.0), non);
    ep.abort_all();
    let ids: Vec<_> = events(&mut ep)
        .into_iter()
        .map(|e| match e {
            EndpointEvent::TimedOut { request } => request,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, vec![a, b, c]);
    assert!(ep.is_idle());
}

// ---- NON requests and notifications ----

#[test]
fn non_request_waits_for_response_by_token() {
    let mut ep = endpoint(14);
    let mut m = get("/dp");
    m.mtype = MsgType::Non;
    let id = ep.send_request(at(0.0), m);
    let other = ep.send_request(at(0.0), get("/con"));
    let sent_now = sent(&mut ep);
    assert_eq!(sent_now.len(), 2, "NON bypasses NSTART");
    let non = &sent_now[0];
    assert_eq!(non.mtype, MsgType::Non);
    feed(
        &mut ep,
        at(1.0),
        &peer(MsgType::Non, Code::CONTENT, 77, &non.token),
    );
    assert!(
        matches!(&events(&mut ep)[..], [EndpointEvent::Response { request, .. }] if *request == id)
    );
    let _ = other;
}

#[test]
fn non_request_times_out() {
    let mut ep = endpoint(15);
    let mut m = get("/dp");
    m.mtype = MsgType::Non;
    let id = ep.send_request(at(0.0), m);
    sent(&mut ep);
    assert_eq!(ep.poll_timeout(), Some(at(93.0)));
    ep.handle_timeout(at(93.0));
    assert_eq!(
        events(&mut ep),
        vec![EndpointEvent::TimedOut { request: id }]
    );
    assert!(ep.is_idle());
}

// ---- RST ----

#[test]
fn rst_resets_requests_and_notifications() {
    let mut ep = endpoint(16);
    let req = ep.send_request(at(0.0), get("/rd"));
    let r = one(sent(&mut ep));
    feed(&mut ep, at(0.1), &empty(MsgType::Rst, r.mid));
    assert_eq!(events(&mut ep), vec![EndpointEvent::Reset { request: req }]);
    assert!(ep.is_idle() && ep.poll_timeout().is_none());

    let mut note = Message::response(Code::CONTENT);
    note.token = b"o".to_vec();
    let n1 = ep.send_notification(at(1.0), note.clone(), false);
    let n2 = ep.send_notification(at(1.0), note.clone(), false);
    let sent_notes = sent(&mut ep);
    assert!(
        ep.is_idle() && ep.poll_timeout().is_none(),
        "NON notifications need no timer"
    );
    feed(&mut ep, at(1.5), &empty(MsgType::Rst, sent_notes[1].mid));
    assert_eq!(events(&mut ep), vec![EndpointEvent::Reset { request: n2 }]);
    feed(&mut ep, at(1.6), &empty(MsgType::Rst, sent_notes[1].mid));
    assert!(events(&mut ep).is_empty(), "reported once");
    let _ = n1;

    let n3 = ep.send_notification(at(2.0), note, true);
    let c = one(sent(&mut ep));
    assert_eq!(c.mtype, MsgType::Con);
    feed(&mut ep, at(2.1), &empty(MsgType::Rst, c.mid));
    assert_eq!(events(&mut ep), vec![EndpointEvent::Reset { request: n3 }]);
    // A RST for nothing we know is ignored.
    feed(&mut ep, at(3.0), &empty(MsgType::Rst, 4242));
    assert!(events(&mut ep).is_empty() && sent(&mut ep).is_empty());
}

#[test]
fn con_notification_delivered_on_ack() {
    let mut ep = endpoint(17);
    let mut note = Message::response(Code::CONTENT);
    note.token = b"o".to_vec();
    note.add_uint_option(opt::OBSERVE, 12);
    let id = ep.send_notification(at(0.0), note, true);
    let n = one(sent(&mut ep));
    assert_eq!(n.observe(), Ok(Some(12)));
    feed(&mut ep, at(0.1), &empty(MsgType::Ack, n.mid));
    assert_eq!(
        events(&mut ep),
        vec![EndpointEvent::Delivered { request: id }]
    );
}

// ---- rejecting things ----

#[test]
fn ping_gets_rst() {
    let mut ep = endpoint(18);
    feed(&mut ep, at(0.0), &empty(MsgType::Con, 0x4444));
    assert_eq!(one(sent(&mut ep)), empty(MsgType::Rst, 0x4444));
    assert!(events(&mut ep).is_empty());
    // An empty NON is dropped.
    feed(&mut ep, at(0.0), &empty(MsgType::Non, 0x4445));
    assert!(sent(&mut ep).is_empty());
}

#[test]
fn unknown_critical_option_gets_4_02() {
    let mut ep = endpoint(19);
    let mut req = peer_get(0x500, b"c");
    req.add_option(2049, vec![1]); // odd, unknown: critical
    feed(&mut ep, at(0.0), &req);
    let resp = one(sent(&mut ep));
    assert_eq!(
        (resp.mtype, resp.code, resp.mid, &resp.token[..]),
        (MsgType::Ack, Code::BAD_OPTION, 0x500, &b"c"[..])
    );
    assert!(events(&mut ep).is_empty());
    // Its duplicate gets the same answer.
    feed(&mut ep, at(1.0), &req);
    assert_eq!(one(sent(&mut ep)), resp);
    // An unknown elective (even) option is fine.
    let mut req = peer_get(0x501, b"e");
    req.add_option(2048, vec![1]);
    feed(&mut ep, at(0.0), &req);
    assert_eq!(events(&mut ep).len(), 1);
    // A NON with an unknown critical option is rejected silently.
    let mut req = peer_get(0x502, b"n");
    req.mtype = MsgType::Non;
    req.add_option(2049, vec![]);
    feed(&mut ep, at(0.0), &req);
    assert!(events(&mut ep).is_empty() && sent(&mut ep).is_empty());
}

#[test]
fn malformed_con_gets_rst_other_garbage_is_dropped() {
    let mut ep = endpoint(20);
    // CON, MID 0x0102, an option running past the end.
    ep.handle_datagram(at(0.0), &[0x40, 0x01, 0x01, 0x02, 0x13, b'a']);
    assert_eq!(one(sent(&mut ep)), empty(MsgType::Rst, 0x0102));
    // Payload marker without payload.
    ep.handle_datagram(at(0.0), &[0x40, 0x01, 0x01, 0x03, 0xff]);
    assert_eq!(one(sent(&mut ep)), empty(MsgType::Rst, 0x0103));
    // The same defects in a NON, a wrong version, a runt: dropped.
    for junk in [
        &[0x50, 0x01, 0x01, 0x02, 0x13, b'a'][..],
        &[0x80, 0x01, 0x01, 0x02],
        &[0x40, 0x01],
        &[],
    ] {
        ep.handle_datagram(at(0.0), junk);
        assert!(sent(&mut ep).is_empty(), "{junk:02x?}");
    }
    assert!(events(&mut ep).is_empty());
}

#[test]
fn unmatched_responses() {
    let mut ep = endpoint(21);
    feed(
        &mut ep,
        at(0.0),
        &peer(MsgType::Con, Code::CONTENT, 0x600, b"nobody"),
    );
    assert_eq!(one(sent(&mut ep)), empty(MsgType::Rst, 0x600));
    feed(
        &mut ep,
        at(0.0),
        &peer(MsgType::Non, Code::CONTENT, 0x601, b"nobody"),
    );
    assert!(sent(&mut ep).is_empty());
    feed(
        &mut ep,
        at(0.0),
        &peer(MsgType::Ack, Code::CONTENT, 0x602, b"nobody"),
    );
    assert!(sent(&mut ep).is_empty() && events(&mut ep).is_empty());
    // A reserved class (7.xx over UDP) in a CON is rejected.
    feed(
        &mut ep,
        at(0.0),
        &peer(MsgType::Con, Code::new(7, 1), 0x603, b""),
    );
    assert_eq!(one(sent(&mut ep)), empty(MsgType::Rst, 0x603));
}

#[test]
fn response_with_unknown_critical_option_is_rejected() {
    let mut ep = endpoint(22);
    let id = ep.send_request(at(0.0), get("/rd"));
    let req = one(sent(&mut ep));
    let mut bad = peer(MsgType::Ack, Code::CONTENT, req.mid, &req.token);
    bad.add_option(2049, vec![]);
    feed(&mut ep, at(0.1), &bad);
    assert!(
        events(&mut ep).is_empty(),
        "a rejected ACK is as good as lost"
    );
    feed(&mut ep, at(0.2), &empty(MsgType::Ack, req.mid));
    let mut bad_sep = peer(MsgType::Con, Code::CONTENT, 0x700, &req.token);
    bad_sep.add_option(2049, vec![]);
    feed(&mut ep, at(0.3), &bad_sep);
    assert_eq!(one(sent(&mut ep)), empty(MsgType::Rst, 0x700));
    assert!(events(&mut ep).is_empty());
    let good = peer(MsgType::Con, Code::CONTENT, 0x701, &req.token);
    feed(&mut ep, at(0.4), &good);
    assert_eq!(
        events(&mut ep),
        vec![EndpointEvent::Response {
            request: id,
            msg: good
        }]
    );
}

// ---- tokens and message IDs ----

#[test]
fn tokens_are_random_and_mids_never_repeat() {
    let mut ep = endpoint(23);
    let mut tokens = HashSet::new();
    let mut mids = HashSet::new();
    let mut prev: Option<u16> = None;
    for i in 0..2000u32 {
        let now = at(f64::from(i));
        ep.send_request(now, get("/x"));
        let r = one(sent(&mut ep));
        assert_eq!(r.token.len(), 8);
        assert!(tokens.insert(r.token.clone()), "token repeated");
        assert!(mids.insert(r.mid), "MID repeated");
        if let Some(p) = prev {
            assert_eq!(r.mid, p.wrapping_add(1));
        }
        prev = Some(r.mid);
        feed(
            &mut ep,
            now,
            &peer(MsgType::Ack, Code::CONTENT, r.mid, &r.token),
        );
        events(&mut ep);
    }
    // Different seeds start at different MIDs and draw different tokens.
    let firsts: HashSet<(u16, Vec<u8>)> = (0..50)
        .map(|seed| {
            let mut ep = endpoint(1000 + seed);
            ep.send_request(at(0.0), get("/x"));
            let r = one(sent(&mut ep));
            (r.mid, r.token)
        })
        .collect();
    assert_eq!(firsts.len(), 50);
    // A caller-chosen token is kept.
    let mut m = get("/x");
    m.token = vec![1, 2];
    ep.send_request(at(5000.0), m);
    assert_eq!(one(sent(&mut ep)).token, vec![1, 2]);
}

#[test]
fn same_seed_same_behaviour() {
    let run = || {
        let mut ep = endpoint(99);
        ep.send_request(at(0.0), get("/x"));
        (sent_raw(&mut ep), ep.poll_timeout())
    };
    assert_eq!(run(), run());
}

#[test]
fn non_notification_flood_never_reuses_a_mid() {
    let mut ep = endpoint(24);
    let mut note = Message::response(Code::CONTENT);
    note.token = b"o".to_vec();
    let mut mids = HashSet::new();
    for _ in 0..70_000 {
        ep.send_notification(at(0.0), note.clone(), false);
        for b in sent_raw(&mut ep) {
            assert!(mids.insert(u16::from_be_bytes([b[2], b[3]])), "MID reused");
        }
    }
    // Everything past the space was dropped rather than sent with a reused ID.
    assert!(
        mids.len() >= 65_280 && mids.len() <= 65_536,
        "{}",
        mids.len()
    );
    // A queued CON waits for an ID instead of being dropped.
    let id = ep.send_request(at(1.0), get("/x"));
    assert!(sent(&mut ep).is_empty());
    let due = ep.poll_timeout().unwrap();
    assert!(due > at(247.0));
    ep.handle_timeout(due);
    let r = one(sent(&mut ep));
    feed(
        &mut ep,
        due,
        &peer(MsgType::Ack, Code::CONTENT, r.mid, &r.token),
    );
    assert!(
        matches!(&events(&mut ep)[..], [EndpointEvent::Response { request, .. }] if *request == id)
    );
}

#[test]
fn encode_failure_is_reported() {
    let mut ep = endpoint(25);
    let mut m = get("/x");
    m.token = vec![0; 9];
    let id = ep.send_request(at(0.0), m);
    assert!(sent(&mut ep).is_empty());
    assert_eq!(
        events(&mut ep),
        vec![EndpointEvent::TimedOut { request: id }]
    );
    assert!(ep.is_idle());
}

#[test]
fn blockwise_request_round_trip_through_endpoint() {
    // A Block2 request with NUM > 4096 survives the endpoint and codec (3-byte option).
    let mut ep = endpoint(26);
    let mut m = get("/5/0/0");
    m.set_option(opt::BLOCK2, BlockOpt::new(5000, false, 6).encode().unwrap());
    ep.send_request(at(0.0), m);
    let r = one(sent(&mut ep));
    assert_eq!(
        BlockOpt::decode(r.option(opt::BLOCK2).unwrap()),
        Ok(BlockOpt::new(5000, false, 6))
    );
}

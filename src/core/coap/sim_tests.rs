//! Two endpoints over the simulated network: block-wise transfers on lossy links, separate
//! responses and NSTART end to end. Virtual time only.

use std::collections::HashSet;
use std::time::Duration;

use super::block::BlockOpt;
use super::blockwise::{
    Block1Receiver, Block1Upload, Block2Download, BlockwiseError, UploadStep, block2_slice,
};
use super::endpoint::{CoapConfig, Endpoint, EndpointEvent, RequestId};
use super::message::{Code, Message, opt};
use crate::core::sim::{LinkConfig, Pair, Side, SimNet};
use crate::test_support::origin;

/// A client (`a`) and a server (`b`) over a link with the given properties.
fn pair(seed: u64, link: LinkConfig) -> Pair {
    let net = SimNet::new(origin(), seed, link);
    Pair::new(
        net,
        Endpoint::new(CoapConfig::default(), seed.wrapping_mul(3) + 1),
        Endpoint::new(CoapConfig::default(), seed.wrapping_mul(7) + 2),
    )
}

fn lossy() -> LinkConfig {
    LinkConfig {
        loss: 0.2,
        duplicate: 0.1,
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(60),
    }
}

fn body_of(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ salt)
        .collect()
}

/// The server side of a Block2 GET: slices `body`, tags it with `etag`, answers Size2.
fn serve_block2(req: &Message, body: &[u8], etag: &[u8], max_szx: u8) -> Message {
    let requested = req
        .option(opt::BLOCK2)
        .map(|v| BlockOpt::decode(v).expect("client sends valid Block2"));
    let mut resp = Message::response(Code::CONTENT);
    match block2_slice(body.len(), requested, max_szx) {
        Ok((range, block)) => {
            if let Some(block) = block {
                resp.set_option(opt::BLOCK2, block.encode().unwrap());
            }
            resp.payload = body[range].to_vec();
        }
        Err(_) => resp.code = Code::BAD_OPTION,
    }
    resp.set_option(opt::ETAG, etag.to_vec());
    if req.uint_option(opt::SIZE2, 4) == Ok(Some(0)) {
        resp.set_uint_option(opt::SIZE2, body.len() as u64);
    }
    resp
}

/// Client state of a streamed download in these tests: checks every chunk against `expected`
/// as it arrives (nothing is collected).
struct Downloader {
    template: Message,
    dl: Block2Download,
    pending: Option<RequestId>,
    next_offset: u64,
    max_num: u32,
    done: bool,
    restarts: u32,
    timeouts: u32,
}

impl Downloader {
    fn new(szx: u8) -> Self {
        let mut template = Message::request(Code::GET);
        template.set_uri_path("/5/0/0");
        Self {
            template,
            dl: Block2Download::new(szx),
            pending: None,
            next_offset: 0,
            max_num: 0,
            done: false,
            restarts: 0,
            timeouts: 0,
        }
    }

    fn request(&mut self, ep: &mut Endpoint, now: std::time::Instant) {
        let req = self.dl.next_request(&self.template);
        if let Some(b) = req.option(opt::BLOCK2) {
            self.max_num = self.max_num.max(BlockOpt::decode(b).unwrap().num);
        }
        self.pending = Some(ep.send_request(now, req));
    }

    /// Handles one client-side event; `versions` are the server's representations by ETag.
    fn on_event(
        &mut self,
        ev: EndpointEvent,
        ep: &mut Endpoint,
        now: std::time::Instant,
        versions: &[(&[u8], &[u8])],
    ) {
        match ev {
            EndpointEvent::Response { request, msg } => {
                assert_eq!(Some(request), self.pending);
                match self.dl.on_response(&msg) {
                    Ok(chunk) => {
                        let expected = versions
                            .iter()
                            .find(|(etag, _)| Some(*etag) == self.dl.etag())
                            .map(|(_, body)| *body)
                            .expect("known ETag");
                        // Streaming: chunks arrive in order, each checked and then dropped.
                        assert_eq!(chunk.offset, self.next_offset, "in order");
                        let start = chunk.offset as usize;
                        assert_eq!(chunk.data, expected[start..start + chunk.data.len()]);
                        self.next_offset += chunk.data.len() as u64;
                        if chunk.last {
                            self.done = true;
                            self.pending = None;
                            return;
                        }
                    }
                    Err(BlockwiseError::EtagChanged) => {
                        // The representation changed: discard and start over.
                        self.restarts += 1;
                        self.dl = Block2Download::new(self.dl.szx());
                        self.next_offset = 0;
                    }
                    Err(e) => panic!("download failed: {e}"),
                }
                self.request(ep, now);
            }
            // The network ate all five transmissions: ask for the same block again.
            EndpointEvent::TimedOut { request } => {
                assert_eq!(Some(request), self.pending);
                self.timeouts += 1;
                self.request(ep, now);
            }
            other => panic!("client got {other:?}"),
        }
    }
}

#[test]
fn block2_6000_blocks_over_a_lossy_network() {
    const SZX: u8 = 2; // 64-byte blocks: 6000 blocks in 384 KB
    let body = body_of(6000 * 64 - 17, 0x5a);
    let mut p = pair(42, lossy());
    let mut client = Downloader::new(SZX);
    let now = p.instant();
    client.request(&mut p.a, now);
    let mut served = 0u64;
    let quiet = p.drive(
        Duration::from_secs(3 * 24 * 3600),
        |side, ev, ep, now| match side {
            Side::A => client.on_event(ev, ep, now, &[(b"fw-1", &body)]),
            Side::B => match ev {
                EndpointEvent::Request { id, msg } => {
                    served += 1;
                    ep.respond(now, id, serve_block2(&msg, &body, b"fw-1", 6));
                }
                other => panic!("server got {other:?}"),
            },
        },
    );
    assert!(quiet, "ran to completion");
    assert!(client.done);
    assert_eq!(client.next_offset, body.len() as u64, "byte-exact");
    assert_eq!(client.dl.total(), Some(body.len() as u64));
    assert_eq!(client.dl.etag(), Some(&b"fw-1"[..]));
    assert_eq!(
        client.max_num, 5999,
        "block numbers beyond coap-lite's 4096 wrap"
    );
    let stats = p.net.stats();
    assert!(stats.lost > 1000 && stats.duplicated > 500, "{stats:?}");
    // The server saw each block at most a few times (duplicates absorbed by de-duplication,
    // repeats only after a TimedOut).
    assert!(
        served >= 6000 && served <= 6000 + u64::from(client.timeouts) + 50,
        "{served}"
    );
    assert!(p.b.dedup_len() <= super::endpoint::DEDUP_CAPACITY);
    assert!(p.a.is_idle() && p.b.is_idle());
    assert_eq!((p.a.poll_timeout(), p.b.poll_timeout()), (None, None));
}

#[test]
fn etag_change_mid_download_restarts_it() {
    let old = body_of(5000, 1);
    let new = body_of(4000, 2);
    let mut p = pair(7, LinkConfig::default());
    let mut client = Downloader::new(6);
    let now = p.instant();
    client.request(&mut p.a, now);
    let mut served = 0;
    let quiet = p.drive(Duration::from_secs(3600), |side, ev, ep, now| {
        match side {
            Side::A => client.on_event(ev, ep, now, &[(b"v1", &old), (b"v2", &new)]),
            Side::B => {
                let EndpointEvent::Request { id, msg } = ev else {
                    panic!("server got {ev:?}")
                };
                // The server switches representations after its third response.
                let (body, etag): (&[u8], &[u8]) = if served < 3 {
                    (&old, b"v1")
                } else {
                    (&new, b"v2")
                };
                served += 1;
                ep.respond(now, id, serve_block2(&msg, body, etag, 6));
            }
        }
    });
    assert!(quiet && client.done);
    assert_eq!(client.restarts, 1);
    assert_eq!(client.next_offset, new.len() as u64);
    assert_eq!(client.dl.etag(), Some(&b"v2"[..]));
}

/// Server side of a Block1 PUT: one receiver for the path, whatever the token; answers 2.31
/// asking for `server_szx` (late negotiation), writes into `sink` at the accepted offset.
struct Block1Server {
    receiver: Option<Block1Receiver>,
    sink: Vec<u8>,
    server_szx: u8,
    tokens: HashSet<Vec<u8>>,
    duplicates: u32,
    finals: u32,
}

impl Block1Server {
    fn handle(&mut self, msg: &Message) -> Message {
        self.tokens.insert(msg.token.clone());
        let Some(block) = msg
            .option(opt::BLOCK1)
            .map(|v| BlockOpt::decode(v).unwrap())
        else {
            return Message::response(Code::BAD_REQUEST);
        };
        if block.num == 0 {
            assert_eq!(msg.uint_option(opt::SIZE1, 4), Ok(Some(5000)));
        }
        let accepted = match self.receiver.as_mut() {
            Some(r) => r.accept(&block, msg.payload.len()),
            None => match Block1Receiver::start(&block, msg.payload.len()) {
                Ok(Some(r)) => {
                    self.receiver = Some(r);
                    Ok(super::blockwise::Block1Accept {
                        offset: 0,
                        duplicate: false,
                    })
                }
                Ok(None) => return Message::response(Code::REQUEST_ENTITY_INCOMPLETE),
                Err(_) => return Message::response(Code::BAD_REQUEST),
            },
        };
        let accepted = match accepted {
            Ok(a) => a,
            Err(BlockwiseError::OutOfOrder { .. }) => {
                return Message::response(Code::REQUEST_ENTITY_INCOMPLETE);
            }
            Err(_) => return Message::response(Code::BAD_REQUEST),
        };
        if accepted.duplicate {
            self.duplicates += 1;
        } else {
            // A file-backed sink would seek and write here; nothing accumulates in the receiver.
            assert_eq!(accepted.offset, self.sink.len() as u64);
            self.sink.extend_from_slice(&msg.payload);
        }
        let complete = self
            .receiver
            .as_ref()
            .is_some_and(Block1Receiver::is_complete);
        let mut resp = if complete && !block.more {
            self.finals += 1;
            Message::response(Code::CHANGED)
        } else {
            Message::response(Code::CONTINUE)
        };
        let echo = BlockOpt::new(block.num, block.more, block.szx.min(self.server_szx));
        resp.set_option(opt::BLOCK1, echo.encode().unwrap());
        resp
    }
}

#[test]
fn block1_upload_with_late_size_negotiation_over_a_lossy_network() {
    let body = body_of(5000, 9);
    let mut p = pair(5, lossy());
    let mut template = Message::request(Code::PUT);
    template.set_uri_path("/5/0/0");
    template.add_uint_option(opt::CONTENT_FORMAT, 42);
    let mut up = Block1Upload::new(body.clone(), 6);
    let mut pending = Some(p.a.send_request(p.instant(), up.next_request(&template)));
    let mut server = Block1Server {
        receiver: None,
        sink: Vec::new(),
        server_szx: 4,
        tokens: HashSet::new(),
        duplicates: 0,
        finals: 0,
    };
    let mut final_response = None;
    let mut requests = 1;
    let quiet = p.drive(Duration::from_secs(24 * 3600), |side, ev, ep, now| {
        match (side, ev) {
            (Side::A, EndpointEvent::Response { request, msg }) => {
                assert_eq!(Some(request), pending);
                match up.on_response(&msg).expect("upload step") {
                    UploadStep::Continue => {
                        requests += 1;
                        pending = Some(ep.send_request(now, up.next_request(&template)));
                    }
                    UploadStep::Done(resp) => {
                        final_response = Some(resp);
                        pending = None;
                    }
                }
            }
            (Side::A, EndpointEvent::TimedOut { request }) => {
                assert_eq!(Some(request), pending);
                requests += 1;
                pending = Some(ep.send_request(now, up.next_request(&template)));
            }
            (Side::B, EndpointEvent::Request { id, msg }) => {
                let resp = server.handle(&msg);
                ep.respond(now, id, resp);
            }
            (side, ev) => panic!("{side:?} got {ev:?}"),
        }
    });
    assert!(quiet);
    assert_eq!(final_response.map(|m| m.code), Some(Code::CHANGED));
    assert_eq!(server.sink, body, "byte-exact");
    assert_eq!(up.szx(), 4, "the client switched to the server's size");
    // 1024 bytes in block 0, then 256-byte blocks: 1 + ceil(3976 / 256) = 17 blocks.
    let blocks = 1 + (5000 - 1024usize).div_ceil(256);
    assert_eq!(blocks, 17);
    // Every request (including re-sends after a timeout) carried a fresh token, and the
    // receiver, keyed by path only, did not care.
    assert_eq!(server.tokens.len(), requests);
    assert!(requests >= blocks);
    // A final block re-sent after a timeout is a duplicate for the receiver, answered 2.04 again.
    assert!(server.finals >= 1);
    assert!(p.a.is_idle() && p.b.is_idle());
}

#[test]
fn separate_response_end_to_end() {
    let mut p = pair(11, LinkConfig::default());
    let mut req = Message::request(Code::POST);
    req.set_uri_path("/bs");
    let id = p.a.send_request(p.instant(), req);
    let mut deferred = None;
    let mut got = None;
    // Phase 1: the server defers; the client stops retransmitting and waits.
    p.drive(Duration::from_secs(10), |side, ev, ep, now| {
        match (side, ev) {
            (Side::B, EndpointEvent::Request { id, .. }) => {
                ep.defer(now, id);
                deferred = Some(id);
            }
            (side, ev) => panic!("{side:?} got {ev:?}"),
        }
    });
    let deferred = deferred.expect("request arrived");
    assert!(!p.a.is_idle(), "client waits for the separate response");
    assert!(p.b.is_idle());
    // Phase 2: 30 s later the server answers with a CON separate response.
    p.net.advance_to(p.instant() + Duration::from_secs(30));
    p.b.respond(p.instant(), deferred, Message::response(Code::CHANGED));
    let quiet = p.drive(Duration::from_secs(100), |side, ev, _, _| {
        match (side, ev) {
            (Side::A, EndpointEvent::Response { request, msg }) => got = Some((request, msg.code)),
            (side, ev) => panic!("{side:?} got {ev:?}"),
        }
    });
    assert!(quiet);
    assert_eq!(got, Some((id, Code::CHANGED)));
    assert!(p.a.is_idle() && p.b.is_idle());
}

#[test]
fn nstart_end_to_end_one_request_at_a_time() {
    let mut p = pair(12, LinkConfig::default());
    let ids: Vec<RequestId> = ["a", "b", "c"]
        .iter()
        .map(|path| {
            let mut m = Message::request(Code::GET);
            m.set_uri_path(path);
            p.a.send_request(p.instant(), m)
        })
        .collect();
    let mut outstanding_at_server = 0;
    let mut server_order = Vec::new();
    let mut client_order = Vec::new();
    let quiet = p.drive(Duration::from_secs(60), |side, ev, ep, now| {
        match (side, ev) {
            (Side::B, EndpointEvent::Request { id, msg }) => {
                outstanding_at_server += 1;
                assert_eq!(outstanding_at_server, 1, "never two requests at once");
                server_order.push(msg.uri_path().unwrap().concat());
                ep.respond(now, id, Message::response(Code::CONTENT));
                outstanding_at_server -= 1;
            }
            (Side::A, EndpointEvent::Response { request, .. }) => client_order.push(request),
            (side, ev) => panic!("{side:?} got {ev:?}"),
        }
    });
    assert!(quiet);
    assert_eq!(server_order, vec!["a", "b", "c"]);
    assert_eq!(client_order, ids);
}

#[test]
fn con_notifications_over_a_lossy_link() {
    let mut p = pair(13, lossy());
    let mut sent = Vec::new();
    for seq in 0..50u64 {
        let mut note = Message::response(Code::CONTENT);
        note.token = b"obs".to_vec();
        note.set_uint_option(opt::OBSERVE, seq);
        sent.push(p.b.send_notification(p.instant(), note, true));
    }
    let mut ended = Vec::new();
    let quiet = p.drive(Duration::from_secs(24 * 3600), |side, ev, _, _| {
        match (side, ev) {
            // The client endpoint has no request with this token, so it answers each CON
            // notification with RST (RFC 7641 §3.6: that cancels the observation). A lost RST
            // leaves the notification to time out.
            (Side::B, EndpointEvent::Reset { request } | EndpointEvent::TimedOut { request }) => {
                ended.push(request)
            }
            (side, ev) => panic!("{side:?} got {ev:?}"),
        }
    });
    assert!(quiet);
    // Each notification ended exactly once, in order (NSTART = 1: one at a time).
    assert_eq!(ended, sent);
    assert!(p.b.is_idle());
}

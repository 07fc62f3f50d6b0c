//! Files the demo server offers for download (`coap://…/fw/<name>`), served block by block with
//! Block2 (RFC 7959) and an ETag, the way a firmware repository would serve a package to a
//! device that pulls it. Counts how far each file has been sent, so the demo can draw the
//! device's download progress from the server's side.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lwm2md::core::coap::block::{BlockOpt, MAX_SZX};
use lwm2md::core::coap::message::{Code, Message, opt};
use lwm2md::core::lwm2m::content::cf;
use sha2::{Digest as _, Sha256};

/// The first Uri-Path segment of every served file.
pub(crate) const PREFIX: &str = "fw";

/// One served file.
struct Served {
    bytes: Arc<Vec<u8>>,
    /// Identifies this content: a client resuming or reassembling blocks can tell when the file
    /// changed under it and start over instead of mixing two versions.
    etag: Vec<u8>,
    /// The end of the furthest block sent so far.
    sent: Arc<AtomicU64>,
}

/// The files on offer, by name.
#[derive(Default)]
pub(crate) struct Files {
    served: HashMap<String, Served>,
}

impl Files {
    /// Offers `bytes` as `/fw/<name>`; returns the counter of bytes sent so far.
    pub(crate) fn add(&mut self, name: &str, bytes: Vec<u8>) -> Arc<AtomicU64> {
        let etag = Sha256::digest(&bytes)[..8].to_vec();
        let sent = Arc::new(AtomicU64::new(0));
        self.served.insert(
            name.to_owned(),
            Served {
                bytes: Arc::new(bytes),
                etag,
                sent: Arc::clone(&sent),
            },
        );
        sent
    }

    /// The answer to a request whose path starts with [`PREFIX`] (without type, message ID and
    /// token: the caller sets them).
    pub(crate) fn answer(&self, req: &Message, path: &[&str]) -> Message {
        if req.code != Code::GET {
            return Message::response(Code::METHOD_NOT_ALLOWED);
        }
        let Some(file) = path.get(1..).map(|rest| rest.join("/")) else {
            return Message::response(Code::NOT_FOUND);
        };
        match self.served.get(&file) {
            Some(served) => block(served, req),
            None => Message::response(Code::NOT_FOUND),
        }
    }
}

/// The requested block of `served` (block 0 of 1 KiB when the request names none).
fn block(served: &Served, req: &Message) -> Message {
    let wanted = match req.option(opt::BLOCK2).map(BlockOpt::decode) {
        None => BlockOpt::new(0, false, MAX_SZX),
        Some(Ok(b)) => BlockOpt::new(b.num, false, b.szx.min(MAX_SZX)),
        Some(Err(_)) => return Message::response(Code::BAD_OPTION),
    };
    let total = served.bytes.len() as u64;
    let start = wanted.offset();
    if start >= total && !(total == 0 && start == 0) {
        // RFC 7959 §2.4: a block beyond the end is a Bad Option.
        return Message::response(Code::BAD_OPTION);
    }
    let end = (start + wanted.size() as u64).min(total);
    let range = usize::try_from(start).unwrap_or(usize::MAX)..usize::try_from(end).unwrap_or(0);
    let Some(data) = served.bytes.get(range) else {
        return Message::response(Code::BAD_OPTION);
    };
    let Ok(option) = BlockOpt::new(wanted.num, end < total, wanted.szx).encode() else {
        return Message::response(Code::BAD_OPTION);
    };
    let mut resp = Message::response(Code::CONTENT);
    resp.set_uint_option(opt::CONTENT_FORMAT, u64::from(cf::OPAQUE));
    resp.set_option(opt::ETAG, served.etag.clone());
    resp.set_option(opt::BLOCK2, option);
    if req.has_option(opt::SIZE2) || wanted.num == 0 {
        // The size up front lets the client refuse a file too large for its slot at once.
        resp.set_uint_option(opt::SIZE2, total);
    }
    resp.payload = data.to_vec();
    served.sent.fetch_max(end, Ordering::Relaxed);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(num: Option<u32>) -> Message {
        let mut msg = Message::request(Code::GET);
        msg.set_uri_path("/fw/x.pkg");
        if let Some(n) = num {
            msg.set_option(
                opt::BLOCK2,
                BlockOpt::new(n, false, 6).encode().expect("block"),
            );
        }
        msg
    }

    #[test]
    fn serves_blocks_with_etag_size_and_progress() {
        let mut files = Files::default();
        let sent = files.add("x.pkg", vec![7u8; 2500]);
        let path = ["fw", "x.pkg"];
        let first = files.answer(&get(None), &path);
        assert_eq!(first.code, Code::CONTENT);
        assert_eq!(first.payload.len(), 1024);
        assert_eq!(first.uint_option(opt::SIZE2, 4), Ok(Some(2500)));
        let last = files.answer(&get(Some(2)), &path);
        assert_eq!(last.payload.len(), 2500 - 2048);
        let block = last.option(opt::BLOCK2).map(BlockOpt::decode);
        assert_eq!(block, Some(Ok(BlockOpt::new(2, false, 6))));
        assert_eq!(first.option(opt::ETAG), last.option(opt::ETAG));
        assert_eq!(sent.load(Ordering::Relaxed), 2500);
        assert_eq!(files.answer(&get(Some(3)), &path).code, Code::BAD_OPTION);
        assert_eq!(files.answer(&get(None), &["fw", "y"]).code, Code::NOT_FOUND);
    }
}

//! The demo server's side of a Block1 write (RFC 7959 §2.5): a body too large for one datagram
//! goes to the client one block per request, each answered with 2.31 Continue until the last.
//! The caller drives it block by block, so it can draw progress and send other requests (a
//! read of the Update State) between blocks, as a real server may.

use lwm2md::core::coap::block::{BlockOpt, MAX_SZX};
use lwm2md::core::coap::message::{Code, Message, opt};

use crate::server::DemoServer;

/// A Block1 PUT in progress.
pub(crate) struct Block1Upload {
    path: String,
    format: u16,
    body: Vec<u8>,
    /// Bytes the client has acknowledged.
    offset: usize,
    szx: u8,
    /// Requests answered so far.
    blocks: usize,
}

impl Block1Upload {
    /// A PUT of `body` (content format `format`) to `path`, in 1 KiB blocks unless the client
    /// asks for smaller ones.
    pub(crate) fn new(path: &str, format: u16, body: Vec<u8>) -> Self {
        Self {
            path: path.to_owned(),
            format,
            body,
            offset: 0,
            szx: MAX_SZX,
            blocks: 0,
        }
    }

    /// Bytes acknowledged by the client.
    pub(crate) fn sent(&self) -> usize {
        self.offset
    }

    /// The body's size.
    pub(crate) fn total(&self) -> usize {
        self.body.len()
    }

    /// Blocks acknowledged by the client.
    pub(crate) fn blocks(&self) -> usize {
        self.blocks
    }

    /// How many blocks the whole body takes at the current block size.
    pub(crate) fn total_blocks(&self) -> usize {
        let size = block_size(self.szx);
        self.blocks + (self.total() - self.offset).div_ceil(size)
    }

    /// Sends the next block. Returns the final answer once the transfer ended: the answer to
    /// the last block, or the first answer that is not 2.31 Continue (the client refused the
    /// body; the rest is not sent).
    pub(crate) async fn send_next(
        &mut self,
        server: &mut DemoServer,
    ) -> anyhow::Result<Option<Message>> {
        let size = block_size(self.szx);
        let end = (self.offset + size).min(self.total());
        let more = end < self.total();
        let num = u32::try_from(self.offset / size)?;
        let mut msg = Message::request(Code::PUT);
        msg.set_uri_path(&self.path);
        msg.set_uint_option(opt::CONTENT_FORMAT, u64::from(self.format));
        msg.set_option(opt::BLOCK1, BlockOpt::new(num, more, self.szx).encode()?);
        if self.offset == 0 {
            // Size1 tells the client the whole size up front: it can refuse a package larger
            // than its slot before a single byte is written.
            msg.set_uint_option(opt::SIZE1, self.total() as u64);
        }
        msg.payload = self.body.get(self.offset..end).unwrap_or_default().to_vec();
        let resp = server.exchange(msg).await.map_err(anyhow::Error::msg)?;
        if resp.code != Code::CONTINUE || !more {
            if resp.code.is_success() {
                self.offset = end;
                self.blocks += 1;
            }
            return Ok(Some(resp));
        }
        self.offset = end;
        self.blocks += 1;
        // The client may ask for smaller blocks in its 2.31 (never larger).
        if let Some(Ok(echoed)) = resp.option(opt::BLOCK1).map(BlockOpt::decode) {
            self.szx = self.szx.min(echoed.szx);
        }
        Ok(None)
    }
}

fn block_size(szx: u8) -> usize {
    BlockOpt::new(0, false, szx).size()
}

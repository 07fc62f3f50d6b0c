//! Block-wise transfers (RFC 7959) in both roles: slicing our Block2 responses, receiving Block1
//! bodies block by block without buffering them, sending large request bodies with Block1, and
//! streaming large responses with Block2 (ETag-checked, restartable).

use std::ops::Range;

use super::block::{BlockOpt, MAX_NUM, MAX_SZX, size_of_szx};
use super::message::{Code, Message, opt};

/// Why a block-wise step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockwiseError {
    /// A Block2 request beyond the end of the representation (→ 4.02 Bad Option).
    #[error("block {0} is beyond the end of the representation")]
    OutOfRange(u32),
    /// A Block1 block that is not the next expected one (→ 4.08).
    #[error("block at offset {got} does not continue the body at offset {expected}")]
    OutOfOrder {
        /// Offset the block claims.
        got: u64,
        /// Offset we expected.
        expected: u64,
    },
    /// A non-final block whose payload is not exactly the block size, or a final block larger
    /// than it (→ 4.00).
    #[error("non-final block carries {got} bytes, block size is {size}")]
    BadBlockLength {
        /// Payload length.
        got: usize,
        /// Block size.
        size: usize,
    },
    /// Download: the ETag changed between blocks, the representation changed (restart).
    #[error("ETag changed during the transfer")]
    EtagChanged,
    /// Download or upload: the peer answered with an error code.
    #[error("peer answered {0}")]
    Peer(Code),
    /// Download or upload: a response that does not fit the transfer (missing/unexpected block).
    #[error("unexpected response: {0}")]
    Unexpected(String),
}

/// Server role, Block2: which bytes of `body` to send for a request carrying `requested`
/// (None = first block), using at most `max_szx`. Returns the byte range and the Block2 option
/// for the response (None when the body fits one block and no Block2 was requested).
///
/// The block size is min(requested SZX, `max_szx`). When we answer with a smaller block than
/// the client asked for, the request's byte offset is what counts and NUM is renumbered in the
/// smaller size (RFC 7959 §2.3). An empty body is block 0 with M=0.
pub fn block2_slice(
    body_len: usize,
    requested: Option<BlockOpt>,
    max_szx: u8,
) -> Result<(Range<usize>, Option<BlockOpt>), BlockwiseError> {
    let max_szx = max_szx.min(MAX_SZX);
    let Some(req) = requested else {
        if body_len <= size_of_szx(max_szx) {
            return Ok((0..body_len, None));
        }
        return Ok(slice(body_len, 0, 0, max_szx));
    };
    let szx = req.szx.min(max_szx);
    let offset = req.offset();
    let out_of_range = BlockwiseError::OutOfRange(req.num);
    // Block 0 always exists (an empty body is one empty block); any other must start inside.
    if req.num > 0 && offset >= body_len as u64 {
        return Err(out_of_range);
    }
    // Sizes are powers of two and szx <= req.szx, so the division is exact.
    let num = u32::try_from(offset / size_of_szx(szx) as u64)
        .ok()
        .filter(|n| *n <= MAX_NUM)
        .ok_or(out_of_range.clone())?;
    let start = usize::try_from(offset).map_err(|_| out_of_range)?;
    Ok(slice(body_len, start, num, szx))
}

/// The range and Block2 option of block `num` starting at `start` (already range-checked).
fn slice(body_len: usize, start: usize, num: u32, szx: u8) -> (Range<usize>, Option<BlockOpt>) {
    let end = start.saturating_add(size_of_szx(szx)).min(body_len);
    let more = end < body_len;
    (start..end, Some(BlockOpt::new(num, more, szx)))
}

/// What a Block1 block means for the body being received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block1Accept {
    /// Offset of this block's payload in the body.
    pub offset: u64,
    /// The block repeats the previous one (already written): acknowledge it again, write nothing.
    pub duplicate: bool,
}

/// Server role, Block1: tracks one body arriving block by block. Keyed by the caller (peer,
/// method, path, Content-Format, Request-Tag) — never by token, which a server may change.
///
/// It only tracks offsets; the caller writes each accepted payload to its sink at
/// [`Block1Accept::offset`], so nothing is buffered here.
///
/// Block 0 for a body already in progress: `accept` recognises a repeat of block 0 while it is
/// the only block received (`duplicate: true`); any other block 0 is `OutOfOrder`, and the caller
/// that wants to allow a restart calls [`Block1Receiver::start`] again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block1Receiver {
    next_offset: u64,
    last_len: usize,
    complete: bool,
}

impl Block1Receiver {
    /// Starts a body with block 0 (`None` if `block.num != 0`).
    pub fn start(block: &BlockOpt, payload_len: usize) -> Result<Option<Self>, BlockwiseError> {
        if block.num != 0 {
            return Ok(None);
        }
        check_block_len(block, payload_len)?;
        Ok(Some(Self {
            next_offset: payload_len as u64,
            last_len: payload_len,
            complete: !block.more,
        }))
    }

    /// Accepts the next block (any SZX, so late size negotiation works).
    pub fn accept(
        &mut self,
        block: &BlockOpt,
        payload_len: usize,
    ) -> Result<Block1Accept, BlockwiseError> {
        let offset = block.offset();
        if self.is_repeat(offset, payload_len) {
            return Ok(Block1Accept {
                offset,
                duplicate: true,
            });
        }
        if self.complete || offset != self.next_offset {
            return Err(BlockwiseError::OutOfOrder {
                got: offset,
                expected: self.next_offset,
            });
        }
        check_block_len(block, payload_len)?;
        self.next_offset += payload_len as u64;
        self.last_len = payload_len;
        self.complete = !block.more;
        Ok(Block1Accept {
            offset,
            duplicate: false,
        })
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.next_offset
    }

    /// True once the final block (M=0) was accepted.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The previous block again: the client did not get our answer and re-sent it (possibly
    /// still in the larger size it used before we asked for a smaller one).
    fn is_repeat(&self, offset: u64, payload_len: usize) -> bool {
        payload_len == self.last_len && offset + payload_len as u64 == self.next_offset
    }
}

/// RFC 7959 §2.2: only the last block may be shorter than the block size.
fn check_block_len(block: &BlockOpt, payload_len: usize) -> Result<(), BlockwiseError> {
    let size = block.size();
    let ok = if block.more {
        payload_len == size
    } else {
        payload_len <= size
    };
    if ok {
        Ok(())
    } else {
        Err(BlockwiseError::BadBlockLength {
            got: payload_len,
            size,
        })
    }
}

/// What to do after a response to one Block1 upload request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadStep {
    /// Send `next_request` again for the next block.
    Continue,
    /// The last block was answered: this is the final response.
    Done(Message),
}

/// Client role, Block1: sends a large request body block by block, honouring a smaller SZX the
/// server asks for (renumbering by offset).
#[derive(Debug, Clone)]
pub struct Block1Upload {
    body: Vec<u8>,
    offset: usize,
    szx: u8,
}

impl Block1Upload {
    /// Prepares to send `body` in blocks of 2^(szx+4) bytes (SZX above 6 is clamped to 6).
    pub fn new(body: Vec<u8>, szx: u8) -> Self {
        Self {
            body,
            offset: 0,
            szx: szx.min(MAX_SZX),
        }
    }

    /// The request for the current block: `template` (method, options) plus Block1, Size1 on the
    /// first block, and the block's payload.
    ///
    /// The template's token is copied as is; leave it empty so the endpoint draws a fresh token
    /// for every block.
    pub fn next_request(&self, template: &Message) -> Message {
        let (range, block) = self.current();
        let mut msg = template.clone();
        msg.payload = self.body.get(range).unwrap_or_default().to_vec();
        // `on_response` never advances to a NUM beyond 20 bits and `new` clamps SZX, so the
        // masked encoding is exact.
        msg.set_option(opt::BLOCK1, block.encode_masked());
        if self.offset == 0 {
            msg.set_uint_option(opt::SIZE1, self.body.len() as u64);
        } else {
            msg.remove_option(opt::SIZE1);
        }
        msg
    }

    /// Processes the response to the current block.
    pub fn on_response(&mut self, response: &Message) -> Result<UploadStep, BlockwiseError> {
        let code = response.code;
        let (range, block) = self.current();
        if matches!(code.class(), 4 | 5) {
            return Err(BlockwiseError::Peer(code));
        }
        if code == Code::CONTINUE {
            if !block.more {
                return Err(unexpected("2.31 Continue for the last block"));
            }
            let echo = echoed_block1(response)?
                .ok_or_else(|| unexpected("2.31 Continue without Block1"))?;
            self.check_echo(&echo, &block)?;
            return self
                .advance(range.end, echo.szx)
                .map(|()| UploadStep::Continue);
        }
        if code.is_success() {
            if block.more {
                return Err(unexpected(format!("{code} before the last block")));
            }
            if let Some(echo) = echoed_block1(response)? {
                self.check_echo(&echo, &block)?;
            }
            return Ok(UploadStep::Done(response.clone()));
        }
        Err(unexpected(format!("response code {code}")))
    }

    /// Bytes the server has confirmed so far.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The block size exponent in use (smaller after late size negotiation).
    pub fn szx(&self) -> u8 {
        self.szx
    }

    /// The byte range and Block1 option of the current block.
    fn current(&self) -> (Range<usize>, BlockOpt) {
        let size = size_of_szx(self.szx);
        let end = self.offset.saturating_add(size).min(self.body.len());
        let num = (self.offset / size) as u32;
        (
            self.offset..end,
            BlockOpt::new(num, end < self.body.len(), self.szx),
        )
    }

    /// The echo must name the block we sent, by number (RFC 7959 figure 6: "2.31, Block1 0/1/128"
    /// for a 1024-byte block 0) or by offset in the new size, and may only shrink the size.
    fn check_echo(&self, echo: &BlockOpt, sent: &BlockOpt) -> Result<(), BlockwiseError> {
        if echo.szx > sent.szx {
            return Err(unexpected(format!(
                "server raised the block size from SZX {} to {}",
                sent.szx, echo.szx
            )));
        }
        if echo.num != sent.num && echo.offset() != sent.offset() {
            return Err(unexpected(format!(
                "server echoed block {} for block {}",
                echo.num, sent.num
            )));
        }
        Ok(())
    }

    /// Moves past the acknowledged block, continuing at the same byte offset in the (possibly
    /// smaller) size the server asked for.
    fn advance(&mut self, offset: usize, szx: u8) -> Result<(), BlockwiseError> {
        // A smaller block can push NUM past 20 bits; refuse before sending an unencodable block.
        if offset / size_of_szx(szx) > MAX_NUM as usize {
            return Err(unexpected(
                "body too large for the block size the server asked for",
            ));
        }
        self.offset = offset;
        self.szx = szx;
        Ok(())
    }
}

/// The Block1 option of a response, if any.
fn echoed_block1(response: &Message) -> Result<Option<BlockOpt>, BlockwiseError> {
    response
        .option(opt::BLOCK1)
        .map(BlockOpt::decode)
        .transpose()
        .map_err(|e| unexpected(format!("Block1: {e}")))
}

fn unexpected(why: impl Into<String>) -> BlockwiseError {
    BlockwiseError::Unexpected(why.into())
}

/// One chunk of a streamed Block2 download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of `data` in the representation.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
    /// True when this is the last chunk.
    pub last: bool,
}

/// Client role, Block2: fetches a large representation block by block, delivering each chunk as
/// it arrives (nothing is buffered). Checks that the ETag stays the same, and can resume from a
/// given offset with a remembered ETag.
///
/// A response without an ETag does not count as a change (some servers tag only some blocks);
/// two different ETags do.
#[derive(Debug, Clone)]
pub struct Block2Download {
    next_num: u32,
    szx: u8,
    etag: Option<Vec<u8>>,
    total: Option<u64>,
    /// A response was accepted (Size2=0 is only asked for until then).
    started: bool,
    /// The last block was delivered.
    done: bool,
}

impl Block2Download {
    /// Starts from offset 0 asking for blocks of 2^(szx+4) bytes (SZX above 6 is clamped to 6).
    pub fn new(szx: u8) -> Self {
        Self::resume(0, szx, None)
    }

    /// Resumes at `offset` (a multiple of the block size) expecting `etag`. An offset that is
    /// not a multiple is rounded down, so the first chunk may repeat some bytes: compare
    /// `Chunk::offset` with what you have.
    pub fn resume(offset: u64, szx: u8, etag: Option<Vec<u8>>) -> Self {
        let szx = szx.min(MAX_SZX);
        let num = (offset / size_of_szx(szx) as u64).min(u64::from(MAX_NUM));
        Self {
            next_num: num as u32,
            szx,
            etag,
            total: None,
            started: false,
            done: false,
        }
    }

    /// The request for the next block: `template` plus Block2 (and Size2=0 on the first).
    pub fn next_request(&self, template: &Message) -> Message {
        let mut msg = template.clone();
        // NUM is at most MAX_NUM and SZX at most 6 by construction.
        let block = BlockOpt::new(self.next_num, false, self.szx);
        msg.set_option(opt::BLOCK2, block.encode_masked());
        if self.started {
            msg.remove_option(opt::SIZE2);
        } else {
            msg.set_uint_option(opt::SIZE2, 0);
        }
        msg
    }

    /// Processes a response; returns the chunk it carries.
    pub fn on_response(&mut self, response: &Message) -> Result<Chunk, BlockwiseError> {
        let code = response.code;
        if matches!(code.class(), 4 | 5) {
            return Err(BlockwiseError::Peer(code));
        }
        if !code.is_success() || code == Code::CONTINUE {
            return Err(unexpected(format!("response code {code}")));
        }
        if self.done {
            return Err(unexpected("the download is already complete"));
        }
        let etag = response.option(opt::ETAG);
        if let (Some(known), Some(got)) = (&self.etag, etag)
            && known.as_slice() != got
        {
            return Err(BlockwiseError::EtagChanged);
        }
        let block = self.response_block(response)?;
        // Everything checked: commit.
        if self.etag.is_none() {
            self.etag = etag.map(<[u8]>::to_vec);
        }
        if let Ok(Some(total)) = response.uint_option(opt::SIZE2, 4) {
            self.total = Some(total);
        }
        self.started = true;
        self.done = !block.more;
        self.szx = block.szx;
        self.next_num = block.num.saturating_add(1);
        Ok(Chunk {
            offset: block.offset(),
            data: response.payload.clone(),
            last: !block.more,
        })
    }

    /// The ETag of the representation, once known.
    pub fn etag(&self) -> Option<&[u8]> {
        self.etag.as_deref()
    }

    /// The total size (Size2), once known.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// The offset of the next block to fetch (what to store for a later `resume`).
    pub fn next_offset(&self) -> u64 {
        u64::from(self.next_num) * size_of_szx(self.szx) as u64
    }

    /// The block size exponent in use (the server may have reduced it).
    pub fn szx(&self) -> u8 {
        self.szx
    }

    /// True once the last chunk was delivered.
    pub fn is_complete(&self) -> bool {
        self.done
    }

    /// The response's Block2, checked against the block we asked for.
    fn response_block(&self, response: &Message) -> Result<BlockOpt, BlockwiseError> {
        let Some(value) = response.option(opt::BLOCK2) else {
            // A server that sends the whole representation at once answers block 0 without Block2.
            return if self.next_num == 0 {
                Ok(BlockOpt::new(0, false, self.szx))
            } else {
                Err(unexpected(format!(
                    "no Block2 in the answer to block {}",
                    self.next_num
                )))
            };
        };
        let block = BlockOpt::decode(value).map_err(|e| unexpected(format!("Block2: {e}")))?;
        let asked = self.next_offset();
        // The server may answer with a smaller size than we asked for; the offset must match.
        if block.szx > self.szx || block.offset() != asked {
            return Err(unexpected(format!(
                "asked for offset {asked} (SZX {}), got block {} SZX {}",
                self.szx, block.num, block.szx
            )));
        }
        if block.more && block.num >= MAX_NUM {
            return Err(unexpected("representation larger than 2^20 blocks"));
        }
        check_block_len(&block, response.payload.len()).map_err(|e| unexpected(e.to_string()))?;
        Ok(block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(num: u32, more: bool, szx: u8) -> BlockOpt {
        BlockOpt::new(num, more, szx)
    }

    fn block_of(msg: &Message, number: u16) -> BlockOpt {
        BlockOpt::decode(msg.option(number).unwrap()).unwrap()
    }

    fn response(code: Code) -> Message {
        Message::response(code)
    }

    fn with_block(mut msg: Message, number: u16, block: BlockOpt) -> Message {
        msg.set_option(number, block.encode().unwrap());
        msg
    }

    // ---- block2_slice ----

    #[test]
    fn small_body_needs_no_block2() {
        assert_eq!(block2_slice(100, None, 6), Ok((0..100, None)));
        assert_eq!(block2_slice(1024, None, 6), Ok((0..1024, None)));
        assert_eq!(block2_slice(0, None, 6), Ok((0..0, None)));
    }

    #[test]
    fn large_body_starts_with_block_0() {
        assert_eq!(
            block2_slice(1025, None, 6),
            Ok((0..1024, Some(b(0, true, 6))))
        );
        assert_eq!(block2_slice(100, None, 2), Ok((0..64, Some(b(0, true, 2)))));
    }

    #[test]
    fn requested_size_is_capped_by_ours() {
        // Client asks for 1024, we allow 256: block 0 in 256.
        assert_eq!(
            block2_slice(1000, Some(b(0, false, 6)), 4),
            Ok((0..256, Some(b(0, true, 4))))
        );
        // Client asks block 2 of 1024 (offset 2048); we answer in 256: block 8.
        assert_eq!(
            block2_slice(5000, Some(b(2, false, 6)), 4),
            Ok((2048..2304, Some(b(8, true, 4))))
        );
        // Client asks for a smaller size than ours: honoured.
        assert_eq!(
            block2_slice(100, Some(b(1, false, 1)), 6),
            Ok((32..64, Some(b(1, true, 1))))
        );
    }

    #[test]
    fn last_and_out_of_range_blocks() {
        assert_eq!(
            block2_slice(2500, Some(b(2, false, 6)), 6),
            Ok((2048..2500, Some(b(2, false, 6))))
        );
        assert_eq!(
            block2_slice(2048, Some(b(2, false, 6)), 6),
            Err(BlockwiseError::OutOfRange(2))
        );
        assert_eq!(
            block2_slice(2048, Some(b(1, false, 6)), 6),
            Ok((1024..2048, Some(b(1, false, 6))))
        );
        // A requested block 0 of an empty body is an empty last block.
        assert_eq!(
            block2_slice(0, Some(b(0, false, 6)), 6),
            Ok((0..0, Some(b(0, false, 6))))
        );
        assert_eq!(
            block2_slice(0, Some(b(1, false, 6)), 6),
            Err(BlockwiseError::OutOfRange(1))
        );
    }

    #[test]
    fn block2_numbers_beyond_4096() {
        let len = 6000 * 16 + 5;
        assert_eq!(
            block2_slice(len, Some(b(5000, false, 0)), 6),
            Ok((80_000..80_016, Some(b(5000, true, 0))))
        );
        assert_eq!(
            block2_slice(len, Some(b(6000, false, 0)), 6),
            Ok((96_000..96_005, Some(b(6000, false, 0))))
        );
    }

    // ---- Block1Receiver ----

    #[test]
    fn receiver_follows_blocks_in_order() {
        let mut r = Block1Receiver::start(&b(0, true, 4), 256).unwrap().unwrap();
        assert_eq!(r.received(), 256);
        assert_eq!(
            r.accept(&b(1, true, 4), 256),
            Ok(Block1Accept {
                offset: 256,
                duplicate: false
            })
        );
        assert_eq!(
            r.accept(&b(2, false, 4), 10),
            Ok(Block1Accept {
                offset: 512,
                duplicate: false
            })
        );
        assert!(r.is_complete());
        assert_eq!(r.received(), 522);
    }

    #[test]
    fn receiver_start_needs_block_0() {
        assert_eq!(Block1Receiver::start(&b(1, true, 4), 256), Ok(None));
        assert_eq!(
            Block1Receiver::start(&b(0, true, 4), 255),
            Err(BlockwiseError::BadBlockLength {
                got: 255,
                size: 256
            })
        );
        // A single final block may be shorter than the block size, and even empty.
        let r = Block1Receiver::start(&b(0, false, 6), 0).unwrap().unwrap();
        assert!(r.is_complete());
    }

    #[test]
    fn receiver_accepts_late_size_negotiation() {
        // The client sent 1024 bytes; we answered 2.31 with SZX 4 (256): it continues at 4/256.
        let mut r = Block1Receiver::start(&b(0, true, 6), 1024)
            .unwrap()
            .unwrap();
        assert_eq!(
            r.accept(&b(4, true, 4), 256),
            Ok(Block1Accept {
                offset: 1024,
                duplicate: false
            })
        );
        // The first block re-sent in the old size is a duplicate.
        assert_eq!(
            r.accept(&b(4, true, 4), 256),
            Ok(Block1Accept {
                offset: 1024,
                duplicate: true
            })
        );
        assert_eq!(
            r.accept(&b(5, false, 4), 3),
            Ok(Block1Accept {
                offset: 1280,
                duplicate: false
            })
        );
        assert_eq!(r.received(), 1283);
    }

    #[test]
    fn receiver_flags_duplicates_gaps_and_bad_lengths() {
        let mut r = Block1Receiver::start(&b(0, true, 4), 256).unwrap().unwrap();
        // Repeat of block 0 while it is the only one received.
        assert_eq!(
            r.accept(&b(0, true, 4), 256),
            Ok(Block1Accept {
                offset: 0,
                duplicate: true
            })
        );
        // A gap.
        assert_eq!(
            r.accept(&b(2, true, 4), 256),
            Err(BlockwiseError::OutOfOrder {
                got: 512,
                expected: 256
            })
        );
        // Short non-final block.
        assert_eq!(
            r.accept(&b(1, true, 4), 100),
            Err(BlockwiseError::BadBlockLength {
                got: 100,
                size: 256
            })
        );
        // Oversized final block.
        assert_eq!(
            r.accept(&b(1, false, 4), 257),
            Err(BlockwiseError::BadBlockLength {
                got: 257,
                size: 256
            })
        );
        r.accept(&b(1, true, 4), 256).unwrap();
        // Block 0 after more progress is no duplicate any more.
        assert_eq!(
            r.accept(&b(0, true, 4), 256),
            Err(BlockwiseError::OutOfOrder {
                got: 0,
                expected: 512
            })
        );
        r.accept(&b(2, false, 4), 1).unwrap();
        // The final block again: duplicate; anything else after completion: out of order.
        assert_eq!(
            r.accept(&b(2, false, 4), 1),
            Ok(Block1Accept {
                offset: 512,
                duplicate: true
            })
        );
        assert_eq!(
            r.accept(&b(3, false, 4), 1),
            Err(BlockwiseError::OutOfOrder {
                got: 768,
                expected: 513
            })
        );
    }

    #[test]
    fn receiver_restarts_with_start() {
        let mut r = Block1Receiver::start(&b(0, true, 4), 256).unwrap().unwrap();
        r.accept(&b(1, true, 4), 256).unwrap();
        r.accept(&b(2, true, 4), 256).unwrap();
        // The client starts over (e.g. after a reboot): accept() refuses, start() begins anew.
        assert!(r.accept(&b(0, true, 5), 512).is_err());
        r = Block1Receiver::start(&b(0, true, 5), 512).unwrap().unwrap();
        assert_eq!(r.received(), 512);
        assert_eq!(
            r.accept(&b(1, false, 5), 7),
            Ok(Block1Accept {
                offset: 512,
                duplicate: false
            })
        );
    }

    // ---- Block1Upload ----

    fn template() -> Message {
        let mut t = Message::request(Code::PUT);
        t.set_uri_path("/5/0/0");
        t.add_uint_option(opt::CONTENT_FORMAT, 42);
        t
    }

    #[test]
    fn upload_sends_blocks_with_size1_first() {
        let body: Vec<u8> = (0..=255u8).cycle().take(2500).collect();
        let mut up = Block1Upload::new(body.clone(), 6);
        let r0 = up.next_request(&template());
        assert_eq!(r0.code, Code::PUT);
        assert_eq!(r0.uri_path(), Ok(vec!["5", "0", "0"]));
        assert_eq!(r0.content_format(), Ok(Some(42)));
        assert_eq!(block_of(&r0, opt::BLOCK1), b(0, true, 6));
        assert_eq!(r0.uint_option(opt::SIZE1, 4), Ok(Some(2500)));
        assert_eq!(r0.payload, body[..1024]);
        let cont = with_block(response(Code::CONTINUE), opt::BLOCK1, b(0, true, 6));
        assert_eq!(up.on_response(&cont), Ok(UploadStep::Continue));
        let r1 = up.next_request(&template());
        assert_eq!(block_of(&r1, opt::BLOCK1), b(1, true, 6));
        assert!(!r1.has_option(opt::SIZE1));
        assert_eq!(r1.payload, body[1024..2048]);
        let cont = with_block(response(Code::CONTINUE), opt::BLOCK1, b(1, true, 6));
        assert_eq!(up.on_response(&cont), Ok(UploadStep::Continue));
        let r2 = up.next_request(&template());
        assert_eq!(block_of(&r2, opt::BLOCK1), b(2, false, 6));
        assert_eq!(r2.payload, body[2048..]);
        let done = with_block(response(Code::CHANGED), opt::BLOCK1, b(2, false, 6));
        assert_eq!(up.on_response(&done), Ok(UploadStep::Done(done.clone())));
    }

    #[test]
    fn upload_renumbers_after_late_size_negotiation() {
        let body = vec![7u8; 3000];
        let mut up = Block1Upload::new(body, 6);
        // Server: "2.31, Block1 0/1/128" (RFC 7959 figure 6).
        let cont = with_block(response(Code::CONTINUE), opt::BLOCK1, b(0, true, 3));
        assert_eq!(up.on_response(&cont), Ok(UploadStep::Continue));
        assert_eq!(up.offset(), 1024);
        assert_eq!(up.szx(), 3);
        let r = up.next_request(&template());
        assert_eq!(block_of(&r, opt::BLOCK1), b(8, true, 3));
        assert_eq!(r.payload.len(), 128);
        // The server keeps echoing the new size.
        let cont = with_block(response(Code::CONTINUE), opt::BLOCK1, b(8, true, 3));
        assert_eq!(up.on_response(&cont), Ok(UploadStep::Continue));
        assert_eq!(
            block_of(&up.next_request(&template()), opt::BLOCK1),
            b(9, true, 3)
        );
    }

    #[test]
    fn upload_errors() {
        let mut up = Block1Upload::new(vec![0; 3000], 6);
        // Peer error codes.
        assert_eq!(
            up.on_response(&response(Code::REQUEST_ENTITY_TOO_LARGE)),
            Err(BlockwiseError::Peer(Code::REQUEST_ENTITY_TOO_LARGE))
        );
        assert_eq!(
            up.on_response(&response(Code::INTERNAL_SERVER_ERROR)),
            Err(BlockwiseError::Peer(Code::INTERNAL_SERVER_ERROR))
        );
        // Inconsistent echoes.
        for echo in [b(1, true, 6), b(5, true, 2)] {
            let cont = with_block(response(Code::CONTINUE), opt::BLOCK1, echo);
            assert!(
                matches!(up.on_response(&cont), Err(BlockwiseError::Unexpected(_))),
                "{echo:?}"
            );
        }
        // 2.31 without Block1, and a final code before the last block.
        assert!(matches!(
            up.on_response(&response(Code::CONTINUE)),
            Err(BlockwiseError::Unexpected(_))
        ));
        assert!(matches!(
            up.on_response(&response(Code::CHANGED)),
            Err(BlockwiseError::Unexpected(_))
        ));
        // Nothing advanced.
        assert_eq!(up.offset(), 0);
        // The server may shrink the block size, never grow it.
        let mut up = Block1Upload::new(vec![0; 3000], 4);
        let cont = with_block(response(Code::CONTINUE), opt::BLOCK1, b(0, true, 5));
        assert!(matches!(
            up.on_response(&cont),
            Err(BlockwiseError::Unexpected(_))
        ));
    }

    #[test]
    fn upload_single_block_and_empty_body() {
        let mut up = Block1Upload::new(Vec::new(), 6);
        let r = up.next_request(&template());
        assert_eq!(block_of(&r, opt::BLOCK1), b(0, false, 6));
        assert_eq!(r.uint_option(opt::SIZE1, 4), Ok(Some(0)));
        assert!(r.payload.is_empty());
        // 2.31 for the last block is wrong; a 2.04 without Block1 echo is fine.
        let cont = with_block(response(Code::CONTINUE), opt::BLOCK1, b(0, false, 6));
        assert!(up.on_response(&cont).is_err());
        let done = response(Code::CHANGED);
        assert_eq!(up.on_response(&done), Ok(UploadStep::Done(done.clone())));
    }

    // ---- Block2Download ----

    /// A server's answer for `req` over `body`, with an ETag.
    fn serve(body: &[u8], req: &Message, max_szx: u8, etag: &[u8]) -> Message {
        let requested = req
            .option(opt::BLOCK2)
            .map(|v| BlockOpt::decode(v).unwrap());
        let (range, block) = block2_slice(body.len(), requested, max_szx).unwrap();
        let mut resp = response(Code::CONTENT);
        if let Some(block) = block {
            resp.set_option(opt::BLOCK2, block.encode().unwrap());
        }
        if req.uint_option(opt::SIZE2, 4) == Ok(Some(0)) {
            resp.set_uint_option(opt::SIZE2, body.len() as u64);
        }
        resp.set_option(opt::ETAG, etag.to_vec());
        resp.payload = body[range].to_vec();
        resp
    }

    #[test]
    fn download_streams_beyond_block_4096_in_order() {
        let body: Vec<u8> = (0..6000 * 16 + 3).map(|i| (i * 7 % 251) as u8).collect();
        let get = Message::request(Code::GET);
        let mut dl = Block2Download::new(0);
        let mut next = 0u64;
        let mut requests = 0;
        loop {
            let req = dl.next_request(&get);
            assert_eq!(req.has_option(opt::SIZE2), requests == 0);
            requests += 1;
            let chunk = dl.on_response(&serve(&body, &req, 6, b"v1")).unwrap();
            assert_eq!(chunk.offset, next);
            assert_eq!(
                chunk.data,
                body[next as usize..next as usize + chunk.data.len()]
            );
            next += chunk.data.len() as u64;
            if chunk.last {
                break;
            }
        }
        assert_eq!(next, body.len() as u64);
        assert_eq!(requests, 6001);
        assert_eq!(dl.total(), Some(body.len() as u64));
        assert_eq!(dl.etag(), Some(&b"v1"[..]));
        assert!(dl.is_complete());
        // Anything after the last chunk is refused.
        assert!(dl.on_response(&serve(&body, &get, 6, b"v1")).is_err());
    }

    #[test]
    fn download_adapts_to_smaller_server_size() {
        let body = vec![1u8; 1000];
        let get = Message::request(Code::GET);
        let mut dl = Block2Download::new(6);
        let c0 = dl
            .on_response(&serve(&body, &dl.next_request(&get), 4, b"e"))
            .unwrap();
        assert_eq!((c0.offset, c0.data.len(), c0.last), (0, 256, false));
        assert_eq!(dl.szx(), 4);
        let req = dl.next_request(&get);
        assert_eq!(block_of(&req, opt::BLOCK2), b(1, false, 4));
        let c1 = dl.on_response(&serve(&body, &req, 4, b"e")).unwrap();
        assert_eq!(c1.offset, 256);
    }

    #[test]
    fn download_detects_etag_change() {
        let body = vec![2u8; 5000];
        let get = Message::request(Code::GET);
        let mut dl = Block2Download::new(6);
        dl.on_response(&serve(&body, &dl.next_request(&get), 6, b"old"))
            .unwrap();
        let req = dl.next_request(&get);
        assert_eq!(
            dl.on_response(&serve(&body, &req, 6, b"new")),
            Err(BlockwiseError::EtagChanged)
        );
        // Nothing advanced: the same block is asked for again.
        assert_eq!(dl.next_request(&get), req);
        // A response without ETag is accepted.
        let mut untagged = serve(&body, &req, 6, b"old");
        untagged.remove_option(opt::ETAG);
        assert!(dl.on_response(&untagged).is_ok());
    }

    #[test]
    fn download_resumes_with_stored_etag() {
        let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let get = Message::request(Code::GET);
        let mut dl = Block2Download::resume(4096, 6, Some(b"e1".to_vec()));
        let req = dl.next_request(&get);
        assert_eq!(block_of(&req, opt::BLOCK2), b(4, false, 6));
        let chunk = dl.on_response(&serve(&body, &req, 6, b"e1")).unwrap();
        assert_eq!(chunk.offset, 4096);
        assert_eq!(chunk.data, body[4096..5120]);
        assert_eq!(dl.next_offset(), 5120);
        // Resuming against a changed representation fails at once.
        let mut stale = Block2Download::resume(4096, 6, Some(b"e0".to_vec()));
        let req = stale.next_request(&get);
        assert_eq!(
            stale.on_response(&serve(&body, &req, 6, b"e1")),
            Err(BlockwiseError::EtagChanged)
        );
        // Resuming with a smaller server size: offset 4096 is block 16 of 256.
        let mut dl = Block2Download::resume(4096, 6, None);
        let req = dl.next_request(&get);
        let chunk = dl.on_response(&serve(&body, &req, 4, b"e1")).unwrap();
        assert_eq!((chunk.offset, chunk.data.len()), (4096, 256));
    }

    #[test]
    fn download_rejects_wrong_blocks() {
        let mut dl = Block2Download::new(6);
        let content = |block: BlockOpt, len: usize| {
            let mut r = with_block(response(Code::CONTENT), opt::BLOCK2, block);
            r.payload = vec![0; len];
            r
        };
        let unexpected = |r: Result<Chunk, BlockwiseError>| {
            assert!(matches!(r, Err(BlockwiseError::Unexpected(_))), "{r:?}")
        };
        unexpected(dl.on_response(&content(b(1, true, 6), 1024))); // not the block asked for
        unexpected(dl.on_response(&content(b(0, true, 6), 1000))); // short non-final block
        unexpected(dl.on_response(&content(b(0, false, 6), 1025))); // oversized final block
        unexpected(dl.on_response(&response(Code::CONTINUE)));
        assert_eq!(
            dl.on_response(&response(Code::NOT_FOUND)),
            Err(BlockwiseError::Peer(Code::NOT_FOUND))
        );
        // Still at block 0; a whole representation without Block2 is fine for block 0 only.
        let mut whole = response(Code::CONTENT);
        whole.payload = vec![5; 3000];
        let chunk = dl.on_response(&whole).unwrap();
        assert_eq!(
            (chunk.offset, chunk.data.len(), chunk.last),
            (0, 3000, true)
        );
        let mut dl = Block2Download::resume(1024, 6, None);
        unexpected(dl.on_response(&whole));
    }
}

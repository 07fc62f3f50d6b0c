//! Block-wise transfers (RFC 7959) in both roles: slicing our Block2 responses, receiving Block1
//! bodies block by block without buffering them, sending large request bodies with Block1, and
//! streaming large responses with Block2 (ETag-checked, restartable).

use std::ops::Range;

use super::block::BlockOpt;
use super::message::{Code, Message};

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
    /// A non-final block whose payload is not exactly the block size (→ 4.00).
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
pub fn block2_slice(
    _body_len: usize,
    _requested: Option<BlockOpt>,
    _max_szx: u8,
) -> Result<(Range<usize>, Option<BlockOpt>), BlockwiseError> {
    todo!("block2_slice")
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block1Receiver {
    next_offset: u64,
    last_len: usize,
    complete: bool,
}

impl Block1Receiver {
    /// Starts a body with block 0 (`None` if `block.num != 0`).
    pub fn start(_block: &BlockOpt, _payload_len: usize) -> Result<Option<Self>, BlockwiseError> {
        todo!("Block1Receiver::start")
    }

    /// Accepts the next block (any SZX, so late size negotiation works).
    pub fn accept(
        &mut self,
        _block: &BlockOpt,
        _payload_len: usize,
    ) -> Result<Block1Accept, BlockwiseError> {
        todo!("Block1Receiver::accept")
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.next_offset
    }

    /// True once the final block (M=0) was accepted.
    pub fn is_complete(&self) -> bool {
        self.complete
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
    /// Prepares to send `body` in blocks of 2^(szx+4) bytes.
    pub fn new(_body: Vec<u8>, _szx: u8) -> Self {
        todo!("Block1Upload::new")
    }

    /// The request for the current block: `template` (method, options) plus Block1, Size1 on the
    /// first block, and the block's payload.
    pub fn next_request(&self, _template: &Message) -> Message {
        todo!("Block1Upload::next_request")
    }

    /// Processes the response to the current block.
    pub fn on_response(&mut self, _response: &Message) -> Result<UploadStep, BlockwiseError> {
        todo!("Block1Upload::on_response")
    }
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
#[derive(Debug, Clone)]
pub struct Block2Download {
    next_num: u32,
    szx: u8,
    etag: Option<Vec<u8>>,
    total: Option<u64>,
}

impl Block2Download {
    /// Starts from offset 0 asking for blocks of 2^(szx+4) bytes.
    pub fn new(_szx: u8) -> Self {
        todo!("Block2Download::new")
    }

    /// Resumes at `offset` (a multiple of the block size) expecting `etag`.
    pub fn resume(_offset: u64, _szx: u8, _etag: Option<Vec<u8>>) -> Self {
        todo!("Block2Download::resume")
    }

    /// The request for the next block: `template` plus Block2 (and Size2=0 on the first).
    pub fn next_request(&self, _template: &Message) -> Message {
        todo!("Block2Download::next_request")
    }

    /// Processes a response; returns the chunk it carries.
    pub fn on_response(&mut self, _response: &Message) -> Result<Chunk, BlockwiseError> {
        todo!("Block2Download::on_response")
    }

    /// The ETag of the representation, once known.
    pub fn etag(&self) -> Option<&[u8]> {
        self.etag.as_deref()
    }

    /// The total size (Size2), once known.
    pub fn total(&self) -> Option<u64> {
        self.total
    }
}

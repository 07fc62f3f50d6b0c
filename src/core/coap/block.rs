//! The Block1/Block2 option value (RFC 7959 §2.2) with the full 20-bit NUM: coap-lite's own
//! block type wraps at 4096 and rejects 3-byte values, so it is never used.

/// Block option: NUM (20 bits), M (more), SZX (block size = 2^(SZX+4), 0..=6 over UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockOpt {
    /// Block number.
    pub num: u32,
    /// More blocks follow.
    pub more: bool,
    /// Size exponent.
    pub szx: u8,
}

/// A malformed Block option value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// Longer than 3 bytes.
    #[error("block option longer than 3 bytes")]
    TooLong,
    /// SZX 7 (reserved / BERT, not valid over UDP).
    #[error("reserved block size exponent 7")]
    ReservedSzx,
    /// NUM does not fit 20 bits (encode side).
    #[error("block number {0} does not fit 20 bits")]
    NumTooLarge(u32),
}

impl BlockOpt {
    /// A block descriptor.
    pub fn new(num: u32, more: bool, szx: u8) -> Self {
        Self { num, more, szx }
    }

    /// Block size in bytes.
    pub fn size(&self) -> usize {
        todo!("BlockOpt::size")
    }

    /// Byte offset of this block (`num * size`).
    pub fn offset(&self) -> u64 {
        todo!("BlockOpt::offset")
    }

    /// Decodes an option value (0 to 3 bytes).
    pub fn decode(_value: &[u8]) -> Result<Self, BlockError> {
        todo!("BlockOpt::decode")
    }

    /// Encodes in the shortest form.
    pub fn encode(&self) -> Result<Vec<u8>, BlockError> {
        todo!("BlockOpt::encode")
    }
}

/// The largest SZX whose block size is at most `bytes` (16 → 0 ... 1024 → 6).
pub fn szx_for(_bytes: usize) -> u8 {
    todo!("szx_for")
}

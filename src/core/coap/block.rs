//! The Block1/Block2 option value (RFC 7959 §2.2) with the full 20-bit NUM: coap-lite's own
//! block type wraps at 4096 and rejects 3-byte values, so it is never used.

use super::message::{decode_uint, encode_uint};

/// The largest block number a 3-byte option value can carry (2^20 − 1).
pub const MAX_NUM: u32 = (1 << 20) - 1;

/// The largest SZX valid over UDP (1024-byte blocks); 7 is reserved (BERT, RFC 8323).
pub const MAX_SZX: u8 = 6;

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

    /// Block size in bytes. SZX is a 3-bit field, so values above 7 are read modulo 8 (never
    /// panics); 7 gives 2048, which `decode` and `encode` reject anyway.
    pub fn size(&self) -> usize {
        size_of_szx(self.szx)
    }

    /// Byte offset of this block (`num * size`).
    pub fn offset(&self) -> u64 {
        u64::from(self.num) * self.size() as u64
    }

    /// Decodes an option value (0 to 3 bytes).
    pub fn decode(value: &[u8]) -> Result<Self, BlockError> {
        if value.len() > 3 {
            return Err(BlockError::TooLong);
        }
        // At most 24 bits, so the narrowing below is lossless.
        let raw = decode_uint(value) as u32;
        let szx = (raw & 0x7) as u8;
        if szx == 7 {
            return Err(BlockError::ReservedSzx);
        }
        Ok(Self {
            num: raw >> 4,
            more: raw & 0x8 != 0,
            szx,
        })
    }

    /// Encodes in the shortest form.
    pub fn encode(&self) -> Result<Vec<u8>, BlockError> {
        if self.num > MAX_NUM {
            return Err(BlockError::NumTooLarge(self.num));
        }
        if self.szx > MAX_SZX {
            return Err(BlockError::ReservedSzx);
        }
        Ok(self.encode_masked())
    }

    /// Encodes without validation, masking NUM to 20 and SZX to 3 bits. Only for callers that
    /// uphold `num <= MAX_NUM` and `szx <= MAX_SZX` by construction.
    pub(crate) fn encode_masked(&self) -> Vec<u8> {
        let raw = (u64::from(self.num & MAX_NUM) << 4)
            | (u64::from(self.more) << 3)
            | u64::from(self.szx & 0x7);
        encode_uint(raw)
    }
}

/// Block size for an SZX (3-bit field; see [`BlockOpt::size`]).
pub(crate) fn size_of_szx(szx: u8) -> usize {
    1usize << ((szx & 0x7) + 4)
}

/// The largest SZX whose block size is at most `bytes` (16 → 0 ... 1024 → 6).
/// Anything below 16 bytes gives 0, anything above 1024 gives 6.
pub fn szx_for(bytes: usize) -> u8 {
    let mut szx = 0;
    while szx < MAX_SZX && size_of_szx(szx + 1) <= bytes {
        szx += 1;
    }
    szx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(b: BlockOpt) {
        let bytes = b.encode().unwrap();
        assert_eq!(BlockOpt::decode(&bytes), Ok(b), "{b:?} -> {bytes:02x?}");
    }

    #[test]
    fn sizes_and_offsets() {
        assert_eq!(BlockOpt::new(0, false, 0).size(), 16);
        assert_eq!(BlockOpt::new(0, false, 6).size(), 1024);
        assert_eq!(BlockOpt::new(3, true, 6).offset(), 3072);
        assert_eq!(BlockOpt::new(MAX_NUM, false, 6).offset(), 1_073_740_800);
    }

    #[test]
    fn zero_encodes_as_empty() {
        assert_eq!(BlockOpt::new(0, false, 0).encode(), Ok(vec![]));
        assert_eq!(BlockOpt::decode(&[]), Ok(BlockOpt::new(0, false, 0)));
    }

    #[test]
    fn shortest_encoding_for_each_width() {
        // NUM 0..=15 fits one byte, up to 4095 two bytes, beyond that three.
        assert_eq!(BlockOpt::new(1, true, 6).encode(), Ok(vec![0x1e]));
        assert_eq!(BlockOpt::new(15, false, 2).encode(), Ok(vec![0xf2]));
        assert_eq!(BlockOpt::new(16, false, 2).encode(), Ok(vec![0x01, 0x02]));
        assert_eq!(BlockOpt::new(4095, true, 6).encode(), Ok(vec![0xff, 0xfe]));
        assert_eq!(
            BlockOpt::new(4096, false, 6).encode(),
            Ok(vec![0x01, 0x00, 0x06])
        );
        assert_eq!(
            BlockOpt::new(65535, true, 5).encode(),
            Ok(vec![0x0f, 0xff, 0xfd])
        );
        assert_eq!(
            BlockOpt::new(MAX_NUM, true, 6).encode(),
            Ok(vec![0xff, 0xff, 0xfe])
        );
    }

    #[test]
    fn large_numbers_round_trip() {
        // 4096 is where coap-lite's 16-bit NUM wraps (docs/dependencies.md, defect 1).
        for num in [0, 1, 15, 16, 4095, 4096, 4097, 65535, 65536, MAX_NUM] {
            for szx in 0..=6 {
                round_trip(BlockOpt::new(num, true, szx));
                round_trip(BlockOpt::new(num, false, szx));
            }
        }
    }

    #[test]
    fn rejects_bad_values() {
        assert_eq!(BlockOpt::decode(&[0, 0, 0, 0]), Err(BlockError::TooLong));
        assert_eq!(BlockOpt::decode(&[0x07]), Err(BlockError::ReservedSzx));
        assert_eq!(
            BlockOpt::decode(&[0x01, 0x0f]),
            Err(BlockError::ReservedSzx)
        );
        assert_eq!(
            BlockOpt::new(MAX_NUM + 1, false, 0).encode(),
            Err(BlockError::NumTooLarge(MAX_NUM + 1))
        );
        assert_eq!(
            BlockOpt::new(0, false, 7).encode(),
            Err(BlockError::ReservedSzx)
        );
    }

    #[test]
    fn decode_accepts_leading_zeros() {
        // Not the shortest form, but a valid uint (RFC 7252 §3.2 says receivers must accept it).
        assert_eq!(
            BlockOpt::decode(&[0, 0, 0x1e]),
            Ok(BlockOpt::new(1, true, 6))
        );
    }

    #[test]
    fn szx_for_picks_largest_fitting() {
        assert_eq!(szx_for(0), 0);
        assert_eq!(szx_for(16), 0);
        assert_eq!(szx_for(31), 0);
        assert_eq!(szx_for(32), 1);
        assert_eq!(szx_for(1023), 5);
        assert_eq!(szx_for(1024), 6);
        assert_eq!(szx_for(1 << 20), 6);
        for szx in 0..=6 {
            assert_eq!(szx_for(size_of_szx(szx)), szx);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_valid_block_round_trips(num in 0..=MAX_NUM, more: bool, szx in 0u8..=6) {
            let b = BlockOpt::new(num, more, szx);
            let bytes = b.encode().unwrap();
            proptest::prop_assert!(bytes.len() <= 3);
            proptest::prop_assert_eq!(BlockOpt::decode(&bytes), Ok(b));
            // Shortest form: no leading zero byte.
            proptest::prop_assert!(bytes.first() != Some(&0));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..6)) {
            let _ = BlockOpt::decode(&bytes);
        }
    }
}

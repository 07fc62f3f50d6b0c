//! Observe sequence numbers (RFC 7641 §3.4, §4.4): 24-bit values and the freshness rule.

use std::time::Duration;

/// A 24-bit Observe sequence counter for one observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ObserveSeq(u32);

impl ObserveSeq {
    /// Starts at `initial` (masked to 24 bits).
    pub fn new(_initial: u32) -> Self {
        todo!("ObserveSeq::new")
    }

    /// The current value (always < 2^24).
    pub fn value(&self) -> u32 {
        todo!("ObserveSeq::value")
    }

    /// Advances and returns the next value, wrapping at 2^24.
    pub fn next(&mut self) -> u32 {
        todo!("ObserveSeq::next")
    }
}

/// RFC 7641 §3.4: is notification `v2`, received `elapsed` after `v1`, newer than `v1`?
pub fn is_newer(_v1: u32, _v2: u32, _elapsed: Duration) -> bool {
    todo!("is_newer")
}

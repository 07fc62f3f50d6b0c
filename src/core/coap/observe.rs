//! Observe sequence numbers (RFC 7641 §3.4, §4.4): 24-bit values and the freshness rule.

use std::time::Duration;

/// Observe values are 24-bit (RFC 7641 §2: the option is 0 to 3 bytes).
pub const SEQ_MASK: u32 = 0x00FF_FFFF;

/// Half the sequence space: the reordering window of RFC 7641 §3.4.
const HALF: u32 = 1 << 23;

/// After this long, a notification is newer whatever its number (RFC 7641 §3.4).
pub const FRESHNESS_WINDOW: Duration = Duration::from_secs(128);

/// A 24-bit Observe sequence counter for one observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ObserveSeq(u32);

impl ObserveSeq {
    /// Starts at `initial` (masked to 24 bits).
    pub fn new(initial: u32) -> Self {
        Self(initial & SEQ_MASK)
    }

    /// The current value (always < 2^24).
    pub fn value(&self) -> u32 {
        self.0
    }

    /// Advances and returns the next value, wrapping at 2^24.
    // The name is part of the shared API; the sequence never ends, so `Iterator` would only add
    // an always-`Some` wrapper.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_add(1) & SEQ_MASK;
        self.0
    }
}

/// RFC 7641 §3.4: is notification `v2`, received `elapsed` after `v1`, newer than `v1`?
/// Both values are masked to 24 bits first, so a 4-byte value from a sloppy peer cannot
/// defeat the window arithmetic.
pub fn is_newer(v1: u32, v2: u32, elapsed: Duration) -> bool {
    let (v1, v2) = (v1 & SEQ_MASK, v2 & SEQ_MASK);
    (v1 < v2 && v2 - v1 < HALF) || (v1 > v2 && v1 - v2 > HALF) || elapsed > FRESHNESS_WINDOW
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Duration = Duration::ZERO;

    #[test]
    fn counter_masks_and_wraps() {
        assert_eq!(ObserveSeq::new(0x0123_4567).value(), 0x23_4567);
        let mut s = ObserveSeq::new(0xFF_FFFE);
        assert_eq!(s.next(), 0xFF_FFFF);
        assert_eq!(s.next(), 0);
        assert_eq!(s.next(), 1);
        assert_eq!(ObserveSeq::default().value(), 0);
    }

    #[test]
    fn newer_within_window() {
        assert!(is_newer(1, 2, NOW));
        assert!(!is_newer(2, 1, NOW));
        assert!(!is_newer(5, 5, NOW));
        assert!(is_newer(0, HALF - 1, NOW));
        assert!(!is_newer(0, HALF, NOW));
    }

    #[test]
    fn newer_across_wrap() {
        assert!(is_newer(0xFF_FFFF, 0, NOW));
        assert!(is_newer(0xFF_FFF0, 5, NOW));
        assert!(!is_newer(5, 0xFF_FFF0, NOW));
        // Exactly half apart in the wrapping direction is not newer (strict inequality).
        assert!(!is_newer(HALF, 0, NOW));
        assert!(is_newer(HALF + 1, 0, NOW));
    }

    #[test]
    fn old_number_is_fresh_after_128_s() {
        assert!(!is_newer(10, 9, Duration::from_secs(128)));
        assert!(is_newer(
            10,
            9,
            Duration::from_secs(128) + Duration::from_millis(1)
        ));
        assert!(is_newer(10, 10, Duration::from_secs(200)));
    }

    #[test]
    fn values_above_24_bits_are_masked() {
        // 0x0100_0001 is 1 on the wire; coap-lite would write it as 4 bytes (dependencies.md, 3).
        assert!(is_newer(0, 0x0100_0001, NOW));
        assert!(!is_newer(0x0100_0002, 1, NOW));
    }
}

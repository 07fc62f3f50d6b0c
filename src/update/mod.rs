//! Firmware update logic that needs no I/O: the signed package format and its streaming
//! verifier, and the firmware-update procedure (journal, A/B steps, recovery) behind object 5.

pub mod fota;
pub mod package;

use serde::{Deserialize, Serialize};

/// One of the two root-filesystem slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    /// `"A"` or `"B"` (as written in boot-loader variables and on the kernel command line).
    pub fn name(self) -> &'static str {
        match self {
            Self::A => "A",
            Self::B => "B",
        }
    }

    /// Parses `A`/`B` (either case).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "A" | "a" => Some(Self::A),
            "B" | "b" => Some(Self::B),
            _ => None,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Firmware Update Result values (/5/0/5, object 5 v1.1+).
pub mod result {
    /// Initial value; reset whenever a download or an update starts.
    pub const INITIAL: u8 = 0;
    /// Firmware updated successfully.
    pub const SUCCESS: u8 = 1;
    /// Not enough storage for the package.
    pub const NO_SPACE: u8 = 2;
    /// Out of memory during download.
    pub const OUT_OF_MEMORY: u8 = 3;
    /// Connection lost during download.
    pub const CONNECTION_LOST: u8 = 4;
    /// Integrity check failure (signature, hashes).
    pub const INTEGRITY: u8 = 5;
    /// Unsupported package type (format, compatible string, downgrade).
    pub const UNSUPPORTED_TYPE: u8 = 6;
    /// Invalid URI.
    pub const INVALID_URI: u8 = 7;
    /// Firmware update failed (apply failed, or the boot loader fell back).
    pub const UPDATE_FAILED: u8 = 8;
    /// Unsupported protocol (URI scheme).
    pub const UNSUPPORTED_PROTOCOL: u8 = 9;
    /// Update cancelled.
    pub const CANCELLED: u8 = 10;
    /// Update deferred.
    pub const DEFERRED: u8 = 11;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots() {
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::parse("b"), Some(Slot::B));
        assert_eq!(Slot::parse("C"), None);
        assert_eq!(Slot::B.to_string(), "B");
    }
}

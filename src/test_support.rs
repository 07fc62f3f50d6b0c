//! Helpers shared by unit tests across modules. Lives outside `core` on purpose: reading the OS
//! clock is the runtime's job, and the sans-IO core must not mention it (a test greps for that).

use std::sync::OnceLock;
use std::time::Instant;

/// An arbitrary but fixed origin for virtual clocks: the core only ever looks at differences
/// between instants, so which one it is does not matter; it is read once per test process.
pub(crate) fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

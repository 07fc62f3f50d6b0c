//! Side effects as data: what the core asks the runtime to do, and how the runtime reports back.
//! The core never performs an effect itself; the runtime executes it and calls
//! `Client::handle_effect_done` with the outcome.

pub use crate::update::fota::{FwOutcome, FwStep};

/// Identifies one requested effect so its outcome can be routed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EffectId(pub u64);

/// Something the runtime must do outside the core.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Reboot the host in an orderly way (systemd-logind, or the configured command). Emitted
    /// only after the response to the Execute has been handed out for sending.
    Reboot,
    /// Run the configured factory-reset command.
    FactoryReset,
    /// Write the core's persistent state (a versioned JSON document) atomically.
    SaveState(serde_json::Value),
    /// One step of a firmware update (object 5), executed in order: the next step is only
    /// requested once this one's outcome is known.
    Firmware(FwStep),
}

/// How an effect ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It worked.
    Done,
    /// It failed; the text names the cause for logs.
    Failed(String),
    /// The result of a firmware step.
    Firmware(FwOutcome),
}

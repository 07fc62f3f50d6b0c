//! A/B root-filesystem slots behind one trait: which slot booted, and the boot-loader
//! transactions of an update (mark the target unbootable, try it once, commit it, revert). Each
//! state change is one atomic boot-loader write. Backends: GRUB (two env copies with lock files),
//! U-Boot (`fw_setenv -s` on a redundant environment) and a file-backed fake for tests and the demo.
//!
//! The variable scheme and the boot rule shared by every backend are in [`vars`]; the boot
//! scripts that apply the rule ship in `packaging/grub/lwm2md.cfg` and
//! `packaging/uboot/boot.cmd`.

pub mod detect;
pub mod exec;
pub mod fake;
pub mod grub;
pub mod uboot;
pub mod vars;

#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

use std::path::Path;

pub use crate::update::Slot;
use vars::BootVars;

/// A boot-loader operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AbError {
    /// A tool (`grub-editenv`, `fw_setenv`…) failed.
    #[error("{command} failed ({status}): {stderr}")]
    Tool {
        /// The command line.
        command: String,
        /// Exit status.
        status: String,
        /// What it printed.
        stderr: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The boot-loader state cannot be understood; it is never "repaired" by guessing.
    #[error("boot-loader state is unusable: {0}")]
    Corrupt(String),
    /// The U-Boot environment has one copy, which a power cut can destroy.
    #[error("the U-Boot environment is not redundant; set allow_single_env to accept the risk")]
    NotRedundant,
    /// The booted slot cannot be determined, or the sources disagree.
    #[error("cannot tell which slot is running: {0}")]
    UnknownBootedSlot(String),
    /// The operation would touch the running slot.
    #[error("refusing to {0} the running slot")]
    RunningSlot(&'static str),
    /// The operation would leave no slot known to boot, or act on a slot that is not running
    /// when it must be (for example committing a slot other than the running one).
    #[error("refusing an unsafe boot-loader change: {0}")]
    Unsafe(String),
}

/// The boot loader's view of the slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootState {
    /// The slot booted when no trial is pending.
    pub primary: Slot,
    /// A slot set to be tried once (pending, or being tried now and not yet committed).
    pub trial: Option<Slot>,
    /// Whether each slot (A, B) may be booted.
    pub bootable: [bool; 2],
}

/// The boot-loader operations of an A/B update.
pub trait BootSlots: Send {
    /// The slot the running system booted from.
    fn booted(&self) -> Result<Slot, AbError>;
    /// The boot loader's current state.
    fn state(&self) -> Result<BootState, AbError>;
    /// Makes `slot` unbootable before it is written. Refuses the booted slot.
    fn mark_unbootable(&mut self, slot: Slot) -> Result<(), AbError>;
    /// Boots `slot` once at the next boot; without a commit the boot after falls back.
    fn set_trial(&mut self, slot: Slot) -> Result<(), AbError>;
    /// The trial slot booted and is healthy: make it the primary.
    fn commit(&mut self, slot: Slot) -> Result<(), AbError>;
    /// Make `to` the primary again and the other slot unbootable.
    fn revert(&mut self, to: Slot) -> Result<(), AbError>;
    /// The block device or file of `slot`.
    fn device(&self, slot: Slot) -> &Path;
}

/// A backend that stores the shared boot variables ([`vars`]): the update's transitions are the
/// same plans for all of them, applied through each backend's own one-transaction `change_vars`.
pub(crate) trait VarsBackend: Send {
    /// The slot the running system booted from.
    fn running_slot(&self) -> Result<Slot, AbError>;
    /// The boot variables as stored now.
    fn vars(&self) -> Result<BootVars, AbError>;
    /// Reads the variables, applies `plan` (given the booted slot) and writes the result in one
    /// atomic boot-loader write.
    fn change_vars(
        &mut self,
        plan: impl FnOnce(BootVars, Slot) -> Result<BootVars, AbError>,
    ) -> Result<(), AbError>;
    /// The block device or file of `slot`.
    fn slot_device(&self, slot: Slot) -> &Path;
}

impl<T: VarsBackend> BootSlots for T {
    fn booted(&self) -> Result<Slot, AbError> {
        self.running_slot()
    }

    fn state(&self) -> Result<BootState, AbError> {
        Ok(self.vars()?.state())
    }

    fn mark_unbootable(&mut self, slot: Slot) -> Result<(), AbError> {
        self.change_vars(|v, booted| v.mark_unbootable(booted, slot))
    }

    fn set_trial(&mut self, slot: Slot) -> Result<(), AbError> {
        self.change_vars(|v, booted| v.set_trial(booted, slot))
    }

    fn commit(&mut self, slot: Slot) -> Result<(), AbError> {
        self.change_vars(|v, booted| v.commit(booted, slot))
    }

    fn revert(&mut self, to: Slot) -> Result<(), AbError> {
        self.change_vars(|v, booted| v.revert(booted, to))
    }

    fn device(&self, slot: Slot) -> &Path {
        self.slot_device(slot)
    }
}

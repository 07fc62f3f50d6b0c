//! lwm2md: a LwM2M 1.1 client daemon for Linux edge gateways.
//!
//! See the README's "Architecture" section for the code map and invariants.
#![forbid(unsafe_code)]

/// A/B slots and boot-loader transactions (GRUB, U-Boot, file-backed fake).
pub mod ab;
/// Configuration files and flags → validated `Settings`.
pub mod config;
/// The sans-IO protocol core (CoAP, LwM2M, object dispatch).
pub mod core;
/// Real host data providers used by the objects.
pub mod host;
/// Logging to the journal when stderr is connected to it, else to stderr.
pub mod logging;
/// The LwM2M object model generated from the OMA XML.
pub mod model;
/// The standard objects (Security, Server, Device, Connectivity Monitoring).
pub mod objects;
/// The state directory: locked, versioned, atomically written JSON documents.
pub mod persist;
/// The tokio runtime around the core: main loop, sd_notify, power actions.
pub mod runtime;
/// Helpers shared by unit tests (a fixed origin for virtual clocks).
#[cfg(test)]
mod test_support;
/// Firmware-update logic without I/O: signed packages, the update procedure.
pub mod update;

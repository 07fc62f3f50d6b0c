//! lwm2md: a LwM2M 1.1 client daemon for Linux edge gateways.
//!
//! See the README's "Architecture" section for the code map and invariants.
#![forbid(unsafe_code)]

/// The sans-IO protocol core (CoAP, LwM2M, object dispatch).
pub mod core;
/// Real host data providers used by the objects.
pub mod host;
/// The LwM2M object model generated from the OMA XML.
pub mod model;
/// The standard objects (Security, Server, Device, Connectivity Monitoring).
pub mod objects;
/// The tokio runtime that drives the core.
pub mod runtime;
/// Helpers shared by unit tests (a fixed origin for virtual clocks).
#[cfg(test)]
mod test_support;

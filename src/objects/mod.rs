//! The standard objects lwm2md serves, each a `core::object::Object` holding pure state. Host
//! data arrives through probe traits implemented in `host/`, so objects stay testable.

/// Object 4 Connectivity Monitoring: bearers, addresses, routers and modem radio data.
pub mod connectivity;
/// Object 3 Device: identity, reboot, power, memory, error codes and time.
pub mod device;
/// Object 5 Firmware Update: the LwM2M face of the A/B update procedure.
pub mod firmware;
/// Object 0, LwM2M Security.
pub mod security;
/// Object 1, LwM2M Server.
pub mod server;

//! The standard objects lwm2md serves, each a `core::object::Object` holding pure state. Host
//! data arrives through probe traits implemented in `host/`, so objects stay testable.

/// Object 2, LwM2M Access Control: per-server rights on object instances.
pub mod access_control;
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

/// Parses a state an object saved earlier, refusing a `format` other than `expected` (a newer
/// daemon's state, or a damaged file) with a message naming `what`.
pub(crate) fn saved_state<T: serde::de::DeserializeOwned>(
    state: serde_json::Value,
    what: &str,
    expected: u64,
) -> Result<T, String> {
    match state.get("format").and_then(serde_json::Value::as_u64) {
        Some(f) if f == expected => {}
        other => {
            return Err(format!(
                "{what} state format {} is not supported",
                other.map_or_else(|| "(none)".to_string(), |f| f.to_string())
            ));
        }
    }
    serde_json::from_value(state).map_err(|e| format!("{what} state: {e}"))
}

//! The shape of one configuration file: every key optional, unknown keys rejected.
//!
//! Integers are read as `i64` and enumerations as strings on purpose: range and spelling checks
//! happen in `validate`, which words every error the same way ("must be between 1 and 65534,
//! found 0") and knows which file set the key; serde's own messages for those cases are less
//! helpful ("invalid value: integer `-1`, expected u16").

use std::path::PathBuf;

use serde::Deserialize;

/// One configuration file, or the merge of several.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Fragment {
    pub(super) agent: Option<AgentFragment>,
    pub(super) coap: Option<CoapFragment>,
    pub(super) registration: Option<RegistrationFragment>,
    pub(super) observe: Option<ObserveFragment>,
    pub(super) server: Option<Vec<ServerFragment>>,
    pub(super) bootstrap: Option<BootstrapFragment>,
    pub(super) device: Option<DeviceFragment>,
    pub(super) connectivity: Option<ConnectivityFragment>,
    pub(super) update: Option<UpdateFragment>,
}

/// `[agent]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AgentFragment {
    pub(super) endpoint: Option<String>,
    pub(super) state_dir: Option<std::path::PathBuf>,
    pub(super) log_level: Option<String>,
}

/// `[coap]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CoapFragment {
    pub(super) ack_timeout: Option<f64>,
    pub(super) ack_random_factor: Option<f64>,
    pub(super) max_retransmit: Option<i64>,
    pub(super) block_size: Option<i64>,
    pub(super) max_body_size: Option<i64>,
}

/// `[registration]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegistrationFragment {
    pub(super) retry_initial: Option<i64>,
    pub(super) retry_max: Option<i64>,
}

/// `[observe]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ObserveFragment {
    pub(super) sample_interval: Option<i64>,
}

/// One `[[server]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServerFragment {
    pub(super) uri: Option<String>,
    pub(super) short_id: Option<i64>,
    pub(super) lifetime: Option<i64>,
    pub(super) default_pmin: Option<i64>,
    pub(super) default_pmax: Option<i64>,
    pub(super) disable_timeout: Option<i64>,
    pub(super) notification_storing: Option<bool>,
    pub(super) binding: Option<String>,
    pub(super) notification_mode: Option<String>,
    pub(super) lwm2m_version: Option<String>,
    pub(super) content_format: Option<String>,
    pub(super) security: Option<String>,
    pub(super) psk_identity: Option<String>,
    pub(super) psk_key_file: Option<PathBuf>,
    pub(super) certificate_file: Option<PathBuf>,
    pub(super) private_key_file: Option<PathBuf>,
    pub(super) server_certificate_file: Option<PathBuf>,
    pub(super) server_name: Option<String>,
}

/// `[bootstrap]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BootstrapFragment {
    pub(super) uri: Option<String>,
    pub(super) hold_off: Option<i64>,
    pub(super) fallback_after: Option<i64>,
    pub(super) timeout: Option<i64>,
    pub(super) security: Option<String>,
    pub(super) psk_identity: Option<String>,
    pub(super) psk_key_file: Option<PathBuf>,
    pub(super) certificate_file: Option<PathBuf>,
    pub(super) private_key_file: Option<PathBuf>,
    pub(super) server_certificate_file: Option<PathBuf>,
    pub(super) server_name: Option<String>,
}

/// `[device]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeviceFragment {
    pub(super) manufacturer: Option<String>,
    pub(super) model: Option<String>,
    pub(super) serial: Option<String>,
    pub(super) firmware_version: Option<String>,
    pub(super) hardware_version: Option<String>,
    pub(super) device_type: Option<String>,
    pub(super) reboot_command: Option<Vec<String>>,
    pub(super) factory_reset_command: Option<Vec<String>>,
}

/// `[connectivity]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConnectivityFragment {
    pub(super) modem_manager: Option<bool>,
    pub(super) ignore_interfaces: Option<Vec<String>>,
}

/// One `[[update.coaps]]` table: DTLS credentials for `coaps://` package URIs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CoapsFragment {
    pub(super) prefix: Option<String>,
    pub(super) security: Option<String>,
    pub(super) psk_identity: Option<String>,
    pub(super) psk_key_file: Option<PathBuf>,
    pub(super) certificate_file: Option<PathBuf>,
    pub(super) private_key_file: Option<PathBuf>,
    pub(super) server_certificate_file: Option<PathBuf>,
    pub(super) server_name: Option<String>,
}

/// `[update]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateFragment {
    pub(super) backend: Option<String>,
    pub(super) compatible: Option<String>,
    pub(super) keys_dir: Option<std::path::PathBuf>,
    pub(super) revoked_keys: Option<Vec<String>>,
    pub(super) slot_a: Option<std::path::PathBuf>,
    pub(super) slot_b: Option<std::path::PathBuf>,
    pub(super) grub_env_dir: Option<std::path::PathBuf>,
    pub(super) uboot_config: Option<std::path::PathBuf>,
    pub(super) uboot_allow_single_env: Option<bool>,
    pub(super) fake_dir: Option<std::path::PathBuf>,
    pub(super) fake_slot_size: Option<i64>,
    pub(super) health_target: Option<String>,
    pub(super) health_timeout: Option<i64>,
    pub(super) require_registration: Option<bool>,
    pub(super) inhibit_files: Option<Vec<std::path::PathBuf>>,
    pub(super) defer_retry: Option<i64>,
    pub(super) checkpoint_bytes: Option<i64>,
    pub(super) ca_file: Option<std::path::PathBuf>,
    pub(super) coaps: Option<Vec<CoapsFragment>>,
    pub(super) download_connect_timeout: Option<i64>,
    pub(super) download_idle_timeout: Option<i64>,
    pub(super) download_timeout: Option<i64>,
    pub(super) download_retries: Option<i64>,
    pub(super) download_retry_initial: Option<i64>,
    pub(super) download_retry_max: Option<i64>,
}

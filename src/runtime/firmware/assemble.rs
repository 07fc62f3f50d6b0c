//! Builds firmware updates from `[update]`: the boot-loader backend, the boot the daemon runs
//! in, the trusted keys, the journal, and the settings of object 5 and of the worker.

use std::fs;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Notify;

use super::pipeline::PipelineSettings;
use super::{JOURNAL, Reboot, WorkerSettings};
use crate::ab::exec::SystemRunner;
use crate::ab::fake::{self, FakeSlots};
use crate::ab::grub::{GrubConfig, GrubSlots};
use crate::ab::uboot::{UbootConfig, UbootSlots};
use crate::ab::{AbError, BootSlots};
use crate::config::{CoapSettings, DeviceSettings, UpdateBackend, UpdateSettings};
use crate::core::coap::endpoint::CoapConfig;
use crate::objects::firmware::FirmwareConfig;
use crate::persist::Store;
use crate::runtime::download::{DownloadConfig, SUPPORTED_SCHEMES};
use crate::update::Slot;
use crate::update::fota::{BootInfo, FotaConfig, Journal};
use crate::update::package::TrustedKeys;
use crate::update::package::keys;

/// The kernel's id of the running boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// Why firmware updates cannot be offered.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// The boot-loader backend could not be opened, or the running slot not be found.
    #[error("boot loader: {0}")]
    Backend(#[from] AbError),
    /// The trusted keys directory could not be read, or holds a bad key file.
    #[error("trusted keys: {0}")]
    Keys(String),
    /// A slot device could not be opened to learn its size.
    #[error("slot {slot} ({path}): {reason}")]
    SlotDevice {
        /// The slot.
        slot: Slot,
        /// Its device.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The kernel's boot id could not be read.
    #[error("{BOOT_ID}: {0}")]
    BootId(String),
}

/// Everything firmware updates need, ready to start.
pub struct Assembled {
    /// The boot-loader backend (moves into the worker).
    pub slots: Box<dyn BootSlots>,
    /// The running boot.
    pub boot: BootInfo,
    /// The journal as last written (`None`: never updated).
    pub journal: Option<Journal>,
    /// Object 5's configuration.
    pub object: FirmwareConfig,
    /// The worker's settings.
    pub worker: WorkerSettings,
}

impl std::fmt::Debug for Assembled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembled")
            .field("boot", &self.boot)
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

impl Assembled {
    /// The version the running slot holds, as recorded when it was written (/3/0/3).
    pub fn running_version(&self) -> Option<String> {
        self.journal
            .as_ref()
            .and_then(|j| j.slots.get(&self.boot.booted))
            .map(|p| p.version.clone())
    }
}

/// Opens the boot-loader backend `[update]` names (the daemon and `lwm2md-slots`). A missing
/// fake machine is created when `create_fake`; GRUB and U-Boot state is never created here
/// (`lwm2md-slots provision` does that, once, at image build time).
pub fn open_backend(
    backend: &UpdateBackend,
    create_fake: bool,
) -> Result<Box<dyn BootSlots>, AbError> {
    Ok(match backend {
        UpdateBackend::Fake { dir, slot_size } => {
            if dir.join(fake::STATE_FILE).exists() || !create_fake {
                Box::new(FakeSlots::open(dir)?)
            } else {
                log::info!(
                    "firmware: creating a fake machine in {} (slots of {slot_size} bytes)",
                    dir.display()
                );
                Box::new(FakeSlots::create(dir, *slot_size, Slot::A)?)
            }
        }
        UpdateBackend::Grub {
            env_dir,
            slot_a,
            slot_b,
        } => Box::new(grub_backend(env_dir, [slot_a.clone(), slot_b.clone()])),
        UpdateBackend::Uboot {
            config,
            allow_single_env,
            slot_a,
            slot_b,
        } => Box::new(uboot_backend(
            config,
            *allow_single_env,
            [slot_a.clone(), slot_b.clone()],
        )?),
    })
}

/// The GRUB backend on the env directory of `[update]`, with the real tools.
pub fn grub_backend(env_dir: &Path, devices: [PathBuf; 2]) -> GrubSlots {
    GrubSlots::new(
        GrubConfig::new(env_dir.to_path_buf(), devices),
        Box::new(SystemRunner),
    )
}

/// The U-Boot backend on the `fw_env.config` of `[update]`, with the real tools.
pub fn uboot_backend(
    fw_env_config: &Path,
    allow_single_env: bool,
    devices: [PathBuf; 2],
) -> Result<UbootSlots, AbError> {
    let mut cfg = UbootConfig::new(devices);
    cfg.fw_env_config = fw_env_config.to_path_buf();
    cfg.allow_single_env = allow_single_env;
    UbootSlots::new(cfg, Box::new(SystemRunner))
}

/// Opens the backend and gathers the rest. `restart` is raised by a fake backend's reboot.
pub fn assemble(
    update: &UpdateSettings,
    device: &DeviceSettings,
    coap: &CoapSettings,
    store: &Store,
    restart: Arc<Notify>,
) -> Result<Assembled, AssembleError> {
    let slots = open_backend(&update.backend, true)?;
    let (boot_id, reboot) = match &update.backend {
        UpdateBackend::Fake { dir, .. } => {
            let boot_id = fake::boot_id_of(dir);
            let reboot = Reboot::Fake {
                dir: dir.clone(),
                restart,
            };
            (boot_id, reboot)
        }
        UpdateBackend::Grub { .. } | UpdateBackend::Uboot { .. } => {
            (kernel_boot_id()?, Reboot::System(Box::new(device.clone())))
        }
    };
    // Fail now, not in the middle of an update: the running slot and the boot state must be
    // readable.
    let booted = slots.booted()?;
    let state = slots.state()?;
    log::info!(
        "firmware: running slot {booted}; boot loader: primary {}, trial {:?}, bootable A {} B {}",
        state.primary,
        state.trial,
        state.bootable[0],
        state.bootable[1]
    );
    let capacity = slot_capacity(&*slots, Slot::A)?.min(slot_capacity(&*slots, Slot::B)?);
    let trusted = load_keys(&update.keys_dir, &update.revoked_keys).map_err(AssembleError::Keys)?;
    if trusted.is_empty() {
        log::warn!(
            "firmware: no trusted key in {}: every package will be refused",
            update.keys_dir.display()
        );
    } else {
        let ids: Vec<&str> = trusted.ids().map(|k| k.0.as_str()).collect();
        log::info!("firmware: trusted keys {}", ids.join(", "));
    }
    let journal = match store.load(JOURNAL) {
        Ok(Some(v)) if !v.is_null() => match serde_json::from_value::<Journal>(v) {
            Ok(j) => Some(j),
            Err(e) => {
                // Not fatal: the procedure recovers from the boot loader's state and the running
                // slot; only the last result and package names are lost.
                log::error!("firmware: the journal is unreadable ({e}); starting afresh");
                None
            }
        },
        Ok(_) => None,
        Err(e) => {
            log::error!("firmware: cannot read the journal ({e}); starting afresh");
            None
        }
    };
    let download = DownloadConfig {
        ca_file: update.ca_file.clone(),
        connect_timeout: update.download_connect_timeout,
        idle_timeout: update.download_idle_timeout,
        overall_timeout: update.download_timeout,
        retries: update.download_retries,
        retry_initial: update.download_retry_initial,
        retry_max: update.download_retry_max,
        coap: CoapConfig {
            ack_timeout: coap.ack_timeout,
            ack_random_factor: coap.ack_random_factor,
            max_retransmit: u32::from(coap.max_retransmit),
            ..CoapConfig::default()
        },
        block_szx: coap.block_size.szx(),
        coaps: update.coaps.clone(),
    };
    Ok(Assembled {
        slots,
        boot: BootInfo { booted, boot_id },
        journal,
        object: FirmwareConfig {
            fota: FotaConfig {
                capacity,
                health_timeout: update.health_timeout,
                defer_retry: update.defer_retry,
                require_registration: update.require_registration,
            },
            // coaps:// only where credentials exist for some download server.
            schemes: SUPPORTED_SCHEMES
                .iter()
                .copied()
                .chain((!update.coaps.is_empty()).then_some("coaps"))
                .collect(),
        },
        worker: WorkerSettings {
            pipeline: PipelineSettings {
                keys: Arc::new(trusted),
                compatible: update.compatible.clone(),
                download,
                checkpoint_bytes: update.checkpoint_bytes,
            },
            health_target: update.health_target.clone(),
            inhibit_files: update.inhibit_files.clone(),
            reboot,
        },
    })
}

fn kernel_boot_id() -> Result<String, AssembleError> {
    fs::read_to_string(BOOT_ID)
        .map(|s| s.trim().to_owned())
        .map_err(|e| AssembleError::BootId(e.to_string()))
}

/// The size of a slot's device (a block device's size is where a seek to its end lands).
fn slot_capacity(slots: &dyn BootSlots, slot: Slot) -> Result<u64, AssembleError> {
    let path = slots.device(slot);
    let error = |reason: String| AssembleError::SlotDevice {
        slot,
        path: path.display().to_string(),
        reason,
    };
    let mut file = fs::File::open(path).map_err(|e| error(e.to_string()))?;
    file.seek(SeekFrom::End(0))
        .map_err(|e| error(e.to_string()))
}

/// Loads every `*.pub` in `dir` as trusted and every `*.pub.revoked`, plus `revoked` ids, as
/// revoked. Files with other names are ignored; a bad key file is an error naming it.
pub fn load_keys(dir: &Path, revoked: &[String]) -> Result<TrustedKeys, String> {
    let mut trusted = TrustedKeys::new();
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .and_then(|rd| rd.map(|e| e.map(|e| e.path())).collect())
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let (is_pub, is_revoked) = (name.ends_with(".pub"), name.ends_with(".pub.revoked"));
        if !is_pub && !is_revoked {
            continue;
        }
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let key = keys::parse_public_key(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if is_pub {
            trusted.add_key(key);
        } else {
            trusted.revoke(keys::key_id(&key));
        }
    }
    for id in revoked {
        trusted.revoke(keys::KeyId(id.clone()));
    }
    Ok(trusted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).expect("write");
    }

    const PUB: &str = include_str!("../../../tests/fixtures/packages/test-vector.pub");

    #[test]
    fn keys_dir_trusts_pub_and_revokes_pub_revoked() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "a.pub", PUB);
        write(dir.path(), "README", "not a key");
        let keys = load_keys(dir.path(), &[]).expect("load");
        assert_eq!(keys.len(), 1);
        let id = keys.ids().next().expect("one id").clone();
        assert_eq!(id.0, "83a9acbbc4150c82");

        let keys = load_keys(dir.path(), std::slice::from_ref(&id.0)).expect("load");
        assert!(keys.is_empty(), "revoked by id");

        fs::rename(dir.path().join("a.pub"), dir.path().join("a.pub.revoked")).expect("mv");
        let keys = load_keys(dir.path(), &[]).expect("load");
        assert!(keys.is_empty() && keys.is_revoked(&id));
    }

    #[test]
    fn a_bad_key_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "bad.pub", "lwm2md-ed25519 !!!\n");
        let err = load_keys(dir.path(), &[]).expect_err("bad key");
        assert!(err.contains("bad.pub"), "{err}");
        let err = load_keys(&dir.path().join("missing"), &[]).expect_err("no dir");
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn fake_backend_is_created_once_and_reports_its_boot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = tempfile::tempdir().expect("tempdir");
        let keys = tempfile::tempdir().expect("tempdir");
        write(keys.path(), "k.pub", PUB);
        let store = Store::open(state.path()).expect("store");
        let update = crate::config::Settings::from_toml(
            &format!(
                "[[server]]\nuri = \"coap://127.0.0.1\"\nshort_id = 1\n[update]\nbackend = \"fake\"\n\
                 compatible = \"x\"\nfake_dir = \"{}\"\nfake_slot_size = 65536\n\
                 keys_dir = \"{}\"\nhealth_target = \"\"\n",
                dir.path().join("m").display(),
                keys.path().display()
            ),
            &crate::config::Environment::rooted_at(state.path(), Some("h")),
        )
        .expect("settings");
        let u = update.update.clone().expect("[update]");
        let a = assemble(
            &u,
            &update.device,
            &update.coap,
            &store,
            Arc::new(Notify::new()),
        )
        .expect("assemble");
        assert_eq!(a.boot.booted, Slot::A);
        assert_eq!(a.boot.boot_id, "fake-boot-1");
        assert_eq!(a.object.fota.capacity, 65536);
        assert!(a.journal.is_none() && a.running_version().is_none());
        drop(a);
        fake::simulate_boot(&dir.path().join("m")).expect("boot");
        let a = assemble(
            &u,
            &update.device,
            &update.coap,
            &store,
            Arc::new(Notify::new()),
        )
        .expect("assemble again");
        assert_eq!(
            a.boot.boot_id, "fake-boot-2",
            "a reboot changes the boot id"
        );
    }
}

//! The firmware worker: executes the update procedure's steps (see `update::fota`) strictly one
//! after the other — journal writes, boot-loader transactions, the push and pull pipelines that
//! verify and write a package into the inactive slot, the health gate, the reboot — and reports
//! each outcome back to the core. `Abort` alone bypasses the queue: it interrupts a running
//! transfer at once.

pub mod assemble;
pub mod background;
pub mod hasher;
pub mod health;
pub mod pipeline;
pub mod slot;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

pub use self::assemble::{AssembleError, Assembled, assemble};

use self::pipeline::{Pipeline, PipelineSettings};
use crate::ab::BootSlots;
use crate::config::DeviceSettings;
use crate::core::effect::{EffectId, FwOutcome, FwStep, Outcome};
use crate::persist::Store;
use crate::runtime::power;
use crate::update::result;

/// The journal's document name in the state directory.
pub const JOURNAL: &str = "firmware";

/// What the worker needs besides the boot-loader backend.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The pipelines' settings (keys, policy, downloads, checkpoints).
    pub pipeline: PipelineSettings,
    /// The systemd unit that means "healthy" (`boot-complete.target`); `None`: no such check.
    pub health_target: Option<String>,
    /// Files whose presence defers an update (maintenance windows, user activity...).
    pub inhibit_files: Vec<PathBuf>,
    /// How the worker reboots into a trial (or back).
    pub reboot: Reboot,
}

/// How a firmware reboot happens.
#[derive(Debug, Clone)]
pub enum Reboot {
    /// The host reboots (`[device] reboot_command`, else systemd-logind).
    System(Box<DeviceSettings>),
    /// The fake machine in `dir` boots again: the boot rule is applied to its boot state now
    /// (`ab::fake::simulate_boot`), then `restart` stops the daemon as a real reboot would; the
    /// next start runs in the new boot.
    Fake {
        /// The fake machine.
        dir: PathBuf,
        /// Raised to stop the daemon.
        restart: Arc<Notify>,
    },
}

/// Tells a running transfer to stop.
#[derive(Debug, Default)]
pub struct AbortSignal {
    flag: AtomicBool,
    notify: Notify,
}

impl AbortSignal {
    /// Raises the signal.
    pub fn raise(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// True once raised (until `clear`).
    pub fn is_raised(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Lowers it (a new transfer starts).
    pub fn clear(&self) {
        self.flag.store(false, Ordering::SeqCst);
    }

    /// Resolves when raised.
    pub async fn raised(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_raised() {
                return;
            }
            notified.await;
        }
    }
}

/// The driver's side of the worker.
#[derive(Debug)]
pub struct FirmwareHandle {
    steps: mpsc::UnboundedSender<(EffectId, FwStep)>,
    abort: Arc<AbortSignal>,
}

impl FirmwareHandle {
    /// Hands a step to the worker. `Abort` is executed here and now; its outcome is returned.
    pub fn submit(&self, id: EffectId, step: FwStep) -> Option<(EffectId, Outcome)> {
        if step == FwStep::Abort {
            self.abort.raise();
            return Some((id, Outcome::Firmware(FwOutcome::Aborted)));
        }
        if self.steps.send((id, step)).is_err() {
            log::error!("firmware worker stopped; step {id:?} dropped");
        }
        None
    }
}

/// The running worker task, to stop it when the daemon stops.
#[derive(Debug)]
pub struct WorkerTask {
    abort: Arc<AbortSignal>,
    join: tokio::task::JoinHandle<()>,
}

impl WorkerTask {
    /// Interrupts a transfer (its checkpoint stays, so the next start resumes it) and waits up
    /// to `grace` for the step in progress to end: the worker holds the state directory, which a
    /// new daemon in this process (the demo's restart) must be able to lock again.
    pub async fn stop(self, grace: std::time::Duration) {
        self.abort.raise();
        if tokio::time::timeout(grace, self.join).await.is_err() {
            log::warn!("firmware worker still busy after {grace:?}; leaving it");
        }
    }
}

/// Starts the worker task; outcomes go to `outcomes`. The task ends once the returned handle
/// is dropped and the step in progress has ended.
pub fn spawn(
    settings: WorkerSettings,
    slots: Box<dyn BootSlots>,
    store: Arc<Store>,
    outcomes: mpsc::Sender<(EffectId, Outcome)>,
) -> (FirmwareHandle, WorkerTask) {
    // Unbounded on purpose: the procedure issues one step at a time, so at most a handful wait.
    let (tx, mut rx) = mpsc::unbounded_channel::<(EffectId, FwStep)>();
    let abort = Arc::new(AbortSignal::default());
    let handle = FirmwareHandle {
        steps: tx,
        abort: Arc::clone(&abort),
    };
    let task_abort = Arc::clone(&abort);
    let mut worker = Worker {
        settings,
        slots: Arc::new(Mutex::new(slots)),
        store,
        abort,
        pipeline: None,
    };
    let join = tokio::spawn(async move {
        while let Some((id, step)) = rx.recv().await {
            let outcome = worker.execute(step).await;
            if outcomes
                .send((id, Outcome::Firmware(outcome)))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    (
        handle,
        WorkerTask {
            abort: task_abort,
            join,
        },
    )
}

struct Worker {
    settings: WorkerSettings,
    slots: Arc<Mutex<Box<dyn BootSlots>>>,
    store: Arc<Store>,
    abort: Arc<AbortSignal>,
    /// The transfer in progress (between Prepare and its completion).
    pipeline: Option<Pipeline>,
}

fn failed(result: u8, reason: impl Into<String>) -> FwOutcome {
    FwOutcome::Failed {
        result,
        reason: reason.into(),
    }
}

impl Worker {
    async fn execute(&mut self, step: FwStep) -> FwOutcome {
        match step {
            FwStep::Journal(journal) => {
                let store = Arc::clone(&self.store);
                blocking(move || match serde_json::to_value(&journal) {
                    Ok(v) => store.save(JOURNAL, &v).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                })
                .await
                .map_or_else(|e| failed(result::UPDATE_FAILED, e), |()| FwOutcome::Done)
            }
            FwStep::Prepare { target, resume } => {
                self.abort.clear();
                self.pipeline = None;
                let slots = Arc::clone(&self.slots);
                let marked = blocking(move || {
                    let mut slots = slots
                        .lock()
                        .map_err(|_| "boot-loader backend poisoned".to_string())?;
                    slots.mark_unbootable(target).map_err(|e| e.to_string())?;
                    Ok(slots.device(target).to_path_buf())
                })
                .await;
                let device = match marked {
                    Ok(d) => d,
                    Err(e) => {
                        return failed(
                            result::UPDATE_FAILED,
                            format!("cannot prepare slot {target}: {e}"),
                        );
                    }
                };
                match Pipeline::open(
                    self.settings.pipeline.clone(),
                    Arc::clone(&self.store),
                    &device,
                    resume,
                ) {
                    Ok(p) => {
                        log::info!(
                            "firmware: slot {target} ({}) unbootable and open for writing",
                            device.display()
                        );
                        self.pipeline = Some(p);
                        FwOutcome::Done
                    }
                    Err(e) => failed(e.update_result(), e.to_string()),
                }
            }
            FwStep::PushData { offset, data, last } => match self.pipeline.take() {
                None => failed(result::UPDATE_FAILED, "no prepared slot for pushed data"),
                Some(p) if self.abort.is_raised() => {
                    drop(p);
                    failed(result::CANCELLED, "aborted")
                }
                Some(mut p) => {
                    let outcome = tokio::task::spawn_blocking(move || {
                        let o = p.push(offset, &data, last);
                        (p, o)
                    })
                    .await;
                    match outcome {
                        Ok((p, o)) => {
                            if matches!(o, FwOutcome::Done) {
                                self.pipeline = Some(p);
                            }
                            o
                        }
                        Err(e) => {
                            failed(result::UPDATE_FAILED, format!("push pipeline crashed: {e}"))
                        }
                    }
                }
            },
            FwStep::Fetch { uri, resume } => match self.pipeline.take() {
                None => failed(result::UPDATE_FAILED, "no prepared slot to fetch into"),
                Some(p) => p.fetch(&uri, resume, Arc::clone(&self.abort)).await,
            },
            FwStep::Abort => FwOutcome::Aborted,
            FwStep::CheckInhibit => self.check_inhibit(),
            FwStep::Activate { target } => {
                self.boot_loader(move |s| s.set_trial(target), "activate")
                    .await
            }
            FwStep::MarkBad { slot } => {
                self.boot_loader(move |s| s.mark_unbootable(slot), "mark unbootable")
                    .await
            }
            FwStep::Commit { slot } => self.boot_loader(move |s| s.commit(slot), "commit").await,
            FwStep::Revert { to } => self.boot_loader(move |s| s.revert(to), "revert").await,
            FwStep::Reboot => match &self.settings.reboot {
                Reboot::System(device) => match power::reboot(device).await {
                    Ok(()) => FwOutcome::Done,
                    Err(e) => failed(result::UPDATE_FAILED, format!("reboot: {e}")),
                },
                Reboot::Fake { dir, restart } => {
                    let dir = dir.clone();
                    match blocking(move || {
                        crate::ab::fake::simulate_boot(&dir).map_err(|e| e.to_string())
                    })
                    .await
                    {
                        Ok(slot) => {
                            log::warn!(
                                "firmware: fake reboot: the fake machine now runs slot {slot}; \
                                 stopping (start lwm2md again to continue in the new boot)"
                            );
                            restart.notify_one();
                            FwOutcome::Done
                        }
                        Err(e) => failed(result::UPDATE_FAILED, format!("fake reboot: {e}")),
                    }
                }
            },
            FwStep::AwaitHealthy { timeout } => {
                health::await_healthy(self.settings.health_target.as_deref(), timeout).await
            }
        }
    }

    fn check_inhibit(&self) -> FwOutcome {
        match self.settings.inhibit_files.iter().find(|p| p.exists()) {
            Some(p) => FwOutcome::Inhibited(format!("{} exists", p.display())),
            None => FwOutcome::Done,
        }
    }

    async fn boot_loader(
        &self,
        op: impl FnOnce(&mut Box<dyn BootSlots>) -> Result<(), crate::ab::AbError> + Send + 'static,
        what: &'static str,
    ) -> FwOutcome {
        let slots = Arc::clone(&self.slots);
        let r = blocking(move || {
            let mut slots = slots
                .lock()
                .map_err(|_| "boot-loader backend poisoned".to_string())?;
            op(&mut slots).map_err(|e| e.to_string())
        })
        .await;
        match r {
            Ok(()) => FwOutcome::Done,
            Err(e) => failed(result::UPDATE_FAILED, format!("boot loader {what}: {e}")),
        }
    }
}

/// Runs blocking work (fsync, boot-loader tools) off the protocol's thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(format!("worker thread failed: {e}")))
}

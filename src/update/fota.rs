//! The firmware-update procedure behind object 5, as a sans-IO state machine: LwM2M requests,
//! step outcomes, registrations and timer expiries go in; one step at a time comes out for the
//! runtime to execute (journal write, slot preparation, transfer, activation, reboot, commit...).
//!
//! Crash safety rests on two rules. **Write-ahead**: every phase change is made durable by a
//! `Journal` step *before* the steps it announces run (the next step is only issued once the
//! journal write succeeded). **Recovery from facts**: after any restart, `start` compares the
//! journal with the booted slot and the boot id and continues, commits, or reports the failure —
//! so a kill -9 or a power cut at any point ends in a consistent state that boots the old or the
//! new image.
//!
//! What the server sees (/5/0/3 State, /5/0/5 Result) is the *durable* journal, so a state is
//! never reported that a restart could take back.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Slot, result};

/// Journal format written by this version.
pub const JOURNAL_FORMAT: u32 = 1;
/// After this many restarts in the same phase, give up instead of looping (Mender uses 28 saves).
const MAX_REENTRIES: u32 = 5;

/// What a verified package is (from its manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PkgInfo {
    /// Package name (/5/0/6).
    pub name: String,
    /// Package version (/5/0/7).
    pub version: String,
    /// Anti-rollback version.
    pub security_version: u64,
    /// Image bytes.
    pub image_size: u64,
}

/// Where the update procedure stands (persisted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase")]
pub enum Phase {
    /// Nothing in progress.
    Idle,
    /// A package is being written into `target` (unbootable meanwhile).
    Downloading {
        /// The inactive slot being written.
        target: Slot,
        /// Pulled from the URI (resumable), or pushed with Block1 (not resumable).
        pull: bool,
    },
    /// A verified image sits in `target`.
    Downloaded {
        /// Its slot.
        target: Slot,
    },
    /// `target` is set to boot once and the reboot is under way.
    Updating {
        /// The new slot.
        target: Slot,
        /// The slot we ran from.
        previous: Slot,
        /// The boot id when the update started: a different one means the reboot happened.
        boot_id: String,
    },
    /// Running the trial of `target`, waiting for the health gate before committing.
    Verifying {
        /// The new slot (running).
        target: Slot,
        /// The slot to go back to.
        previous: Slot,
    },
    /// The health gate failed: going back to `to` (reboot under way).
    Reverting {
        /// The slot to boot again.
        to: Slot,
        /// The slot that failed.
        failed: Slot,
        /// The boot id when the revert started.
        boot_id: String,
    },
}

/// The durable record of the procedure, written before every change it announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// `JOURNAL_FORMAT`.
    pub format: u32,
    /// Where the procedure stands.
    pub phase: Phase,
    /// The Update Result to report (/5/0/5).
    pub result: u8,
    /// The package being or last handled (/5/0/6, /5/0/7).
    pub package: Option<PkgInfo>,
    /// The Package URI (/5/0/1).
    pub uri: String,
    /// Unix time of the last State change (/5/0/12).
    pub changed_at: i64,
    /// The lowest security version still accepted (raised on every commit).
    pub security_floor: u64,
    /// What each slot holds, once written and verified.
    pub slots: BTreeMap<Slot, PkgInfo>,
    /// Restarts in the current phase (crash-loop guard).
    pub reentries: u32,
    /// (Downloaded) the server executed Update: a restart must carry on with it.
    #[serde(default)]
    pub update_requested: bool,
}

impl Journal {
    /// The state of a device that never updated.
    pub fn fresh() -> Self {
        Self {
            format: JOURNAL_FORMAT,
            phase: Phase::Idle,
            result: result::INITIAL,
            package: None,
            uri: String::new(),
            changed_at: 0,
            security_floor: 0,
            slots: BTreeMap::new(),
            reentries: 0,
            update_requested: false,
        }
    }

    /// The LwM2M State (/5/0/3): 0 Idle, 1 Downloading, 2 Downloaded, 3 Updating.
    pub fn state(&self) -> u8 {
        match self.phase {
            Phase::Idle => 0,
            Phase::Downloading { .. } => 1,
            Phase::Downloaded { .. } => 2,
            Phase::Updating { .. } | Phase::Verifying { .. } | Phase::Reverting { .. } => 3,
        }
    }
}

/// One step for the runtime. Steps run strictly one after the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FwStep {
    /// Write the journal durably (temp file, fsync, rename, fsync dir).
    Journal(Journal),
    /// Mark `target` unbootable and open it for writing; `resume` keeps what an interrupted
    /// pull already wrote (its checkpoint).
    Prepare {
        /// The slot to write.
        target: Slot,
        /// Keep the earlier progress.
        resume: bool,
    },
    /// Push delivery: the next package bytes, in order, at `offset`.
    PushData {
        /// Offset in the package.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
        /// The final block.
        last: bool,
    },
    /// Pull delivery: fetch, verify and write the package from `uri` (resuming from the
    /// checkpoint when `resume`).
    Fetch {
        /// Package URI.
        uri: String,
        /// Continue an interrupted transfer.
        resume: bool,
    },
    /// Stop a transfer and forget its checkpoint; the target stays unbootable. Handed out ahead
    /// of everything else and executed at once.
    Abort,
    /// Make `slot` unbootable (disarm a trial that must not run).
    MarkBad {
        /// The slot.
        slot: Slot,
    },
    /// May the update run now (no inhibitor)?
    CheckInhibit,
    /// Boot `target` once at the next boot.
    Activate {
        /// The new slot.
        target: Slot,
    },
    /// Reboot the host.
    Reboot,
    /// Wait until the system reports healthy (e.g. `boot-complete.target`), at most `timeout`.
    AwaitHealthy {
        /// How long to wait.
        timeout: Duration,
    },
    /// Make the running trial slot the primary.
    Commit {
        /// The slot.
        slot: Slot,
    },
    /// Boot `to` again from now on, the other slot unbootable (the reboot follows).
    Revert {
        /// The slot to return to.
        to: Slot,
    },
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FwOutcome {
    /// Done.
    Done,
    /// Failed; `result` is the Update Result it implies.
    Failed {
        /// Update Result code.
        result: u8,
        /// For the log.
        reason: String,
    },
    /// The package was completely received and verified (PushData with `last`, or Fetch).
    Downloaded {
        /// What it is.
        package: PkgInfo,
    },
    /// An inhibitor is active (CheckInhibit).
    Inhibited(String),
    /// The system reached its healthy state (AwaitHealthy).
    Healthy,
    /// It did not within the timeout (AwaitHealthy).
    Unhealthy(String),
    /// The answer to `Abort` (never routed to the procedure: it completes no step).
    Aborted,
}

/// Fixed settings of the procedure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FotaConfig {
    /// Capacity of a slot in bytes (a larger push is refused at once).
    pub capacity: u64,
    /// How long the trial boot may take to pass the health gate.
    pub health_timeout: Duration,
    /// How often a deferred update re-checks its inhibitors.
    pub defer_retry: Duration,
    /// Require a successful LwM2M registration before committing.
    pub require_registration: bool,
}

/// The largest package that can still hold an image of `capacity` bytes: the header, signature
/// and manifest (at most 4 MiB) on top, and compressed chunks may be slightly larger than their
/// image bytes (at most 1/8 + 1 KiB each, see the package format). Anything larger is refused
/// by its Size1 before a byte is written; the exact check is on the signed manifest's image
/// size, so an image the size of the whole slot is still accepted.
pub fn max_package_size(capacity: u64) -> u64 {
    let chunks = capacity.div_ceil(crate::update::package::MIN_CHUNK_SIZE as u64);
    capacity
        .saturating_add(capacity / 8)
        .saturating_add(chunks.saturating_mul(1024))
        .saturating_add(crate::update::package::MAX_MANIFEST as u64 + 80)
}

/// The boot the daemon runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInfo {
    /// The slot that booted.
    pub booted: Slot,
    /// The kernel's boot id (changes with every boot).
    pub boot_id: String,
}

/// Server-writable settings of object 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// /5/0/11: 0 critical, 1 mandatory, 2 optional.
    pub severity: u8,
    /// /5/0/13 Maximum Defer Period in seconds (0 = no deferral).
    pub max_defer: u32,
    /// /5/0/14 Automatic Upgrade at Download.
    pub auto_update: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            severity: 1,
            max_defer: 0,
            auto_update: false,
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// Not allowed in the current state (→ 4.05).
    #[error("{0}")]
    NotAllowed(&'static str),
    /// The package cannot fit (→ 4.13 with Size1).
    #[error("package of {size} bytes exceeds the slot capacity {capacity}")]
    TooLarge {
        /// Announced size.
        size: u64,
        /// Capacity.
        capacity: u64,
    },
    /// Malformed request (→ 4.00).
    #[error("{0}")]
    Bad(String),
    /// The transfer failed (the Update Result says why) (→ 4.00 or 5.00 to stop the pusher).
    #[error("transfer failed: {0}")]
    Failed(String),
}

/// The answer to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Answer now.
    Now,
    /// Hold the answer until `poll_release` yields it.
    Hold,
}

/// Something to do after the current step, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Step(FwStep),
    /// Answer the held request.
    Release(Result<(), Reject>),
}

/// The procedure.
#[derive(Debug)]
pub struct Fota {
    config: FotaConfig,
    boot: BootInfo,
    /// What is on disk.
    durable: Journal,
    /// Server-writable settings.
    settings: Settings,
    /// The step being executed.
    in_flight: Option<FwStep>,
    /// What follows it.
    plan: VecDeque<Item>,
    /// A request waits for its answer.
    held: bool,
    release: Option<Result<(), Reject>>,
    /// Bytes of the push expected next.
    push_next: u64,
    /// A reset/cancel hit a running transfer: its outcome is to be ignored.
    superseded: bool,
    /// Stop the running transfer now (handed out before any queued step).
    abort_now: bool,
    /// Registered with a server since this process started (health gate).
    registered: bool,
    /// The system reported healthy (health gate).
    healthy: bool,
    /// When the trial boot must have passed the health gate.
    health_deadline: Option<Instant>,
    /// When a deferred update checks its inhibitors again, and when deferral must end.
    defer_check: Option<Instant>,
    defer_until: Option<Instant>,
    changed: bool,
}

impl Fota {
    /// The procedure, continuing from `journal` (or fresh) in the boot described by `boot`.
    pub fn new(
        config: FotaConfig,
        journal: Option<Journal>,
        boot: BootInfo,
        settings: Settings,
    ) -> Self {
        Self {
            config,
            boot,
            durable: journal.unwrap_or_else(Journal::fresh),
            settings,
            in_flight: None,
            plan: VecDeque::new(),
            held: false,
            release: None,
            push_next: 0,
            superseded: false,
            abort_now: false,
            registered: false,
            healthy: false,
            health_deadline: None,
            defer_check: None,
            defer_until: None,
            changed: false,
        }
    }

    // ----- read side -----

    /// The durable journal (what the server is shown).
    pub fn journal(&self) -> &Journal {
        &self.durable
    }

    /// The server-writable settings.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Changes the server-writable settings.
    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// The boot this process runs in.
    pub fn boot(&self) -> &BootInfo {
        &self.boot
    }

    /// True once since the last call when State, Result or the package changed.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    // ----- outputs -----

    /// The next step to execute (at most one is outstanding), except `Abort`, which is handed
    /// out at once even while a transfer runs: it interrupts that transfer, whose outcome is then
    /// ignored. The runtime answers `Abort` with an outcome that is not routed back here.
    pub fn poll_step(&mut self) -> Option<FwStep> {
        if std::mem::take(&mut self.abort_now) {
            return Some(FwStep::Abort);
        }
        if self.in_flight.is_some() {
            return None;
        }
        while let Some(item) = self.plan.pop_front() {
            match item {
                Item::Step(step) => {
                    self.in_flight = Some(step.clone());
                    return Some(step);
                }
                Item::Release(r) => self.release_held(r),
            }
        }
        None
    }

    /// The answer for the held request, once decided.
    pub fn poll_release(&mut self) -> Option<Result<(), Reject>> {
        self.release.take()
    }

    /// When `handle_timeout` is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.health_deadline, self.defer_check]
            .into_iter()
            .flatten()
            .min()
    }

    fn release_held(&mut self, r: Result<(), Reject>) {
        if self.held {
            self.held = false;
            self.release = Some(r);
        }
    }

    // ----- inputs -----

    /// Continues whatever a restart interrupted (call once, first).
    pub fn start(&mut self, now: Instant, unix: i64) {
        let j = self.planned_journal();
        match &j.phase {
            Phase::Idle => {}
            Phase::Downloaded { .. } if j.update_requested => {
                log::info!(
                    "firmware: continuing the update the server requested before the restart"
                );
                self.push_plan(Item::Step(FwStep::CheckInhibit));
            }
            Phase::Downloaded { .. } => {}
            Phase::Downloading { target, pull: true } => {
                if self.too_many_reentries(unix, "download") {
                    return;
                }
                log::info!("firmware: resuming the interrupted download into slot {target}");
                let (target, uri) = (*target, j.uri.clone());
                self.push_plan(Item::Step(FwStep::Prepare {
                    target,
                    resume: true,
                }));
                self.push_plan(Item::Step(FwStep::Fetch { uri, resume: true }));
            }
            Phase::Downloading { pull: false, .. } => {
                // A Block1 push cannot continue once the exchange is gone.
                log::warn!("firmware: a pushed download was interrupted by a restart");
                self.write(
                    Journal {
                        phase: Phase::Idle,
                        result: result::CONNECTION_LOST,
                        ..j
                    },
                    unix,
                );
            }
            Phase::Updating {
                target,
                previous,
                boot_id,
            } => {
                let (target, previous) = (*target, *previous);
                if *boot_id == self.boot.boot_id {
                    // Restarted before the reboot happened: the Execute was accepted, go on.
                    if self.too_many_reentries(unix, "update") {
                        return;
                    }
                    log::info!(
                        "firmware: continuing the update to slot {target} (no reboot happened yet)"
                    );
                    self.push_plan(Item::Step(FwStep::Activate { target }));
                    self.push_plan(Item::Step(FwStep::Reboot));
                } else if self.boot.booted == target {
                    log::info!(
                        "firmware: trial boot of slot {target}; waiting for the health gate"
                    );
                    self.write(
                        Journal {
                            phase: Phase::Verifying { target, previous },
                            reentries: 0,
                            ..j
                        },
                        unix,
                    );
                    self.verify(now);
                } else {
                    self.fell_back(unix, target);
                }
            }
            Phase::Verifying { target, .. } => {
                if self.boot.booted != *target {
                    self.fell_back(unix, *target);
                    return;
                }
                // Restarted during the trial. The health deadline lives in memory and starts
                // again with every process, so a trial whose lwm2md keeps crashing (systemd
                // restarting it) would never reach it and never be reverted: count the
                // restarts, and give the trial up like a failed health gate after too many.
                let mut j = j.clone();
                j.reentries += 1;
                if j.reentries > MAX_REENTRIES {
                    self.write(j, unix);
                    self.revert(
                        unix,
                        &format!("lwm2md restarted {MAX_REENTRIES} times during the trial boot"),
                    );
                    return;
                }
                log::info!(
                    "firmware: restarted during the trial boot of slot {target} ({} of at most \
                     {MAX_REENTRIES}); waiting for the health gate",
                    j.reentries
                );
                self.write(j, unix);
                self.verify(now);
            }
            Phase::Reverting {
                to,
                failed,
                boot_id,
            } => {
                let (to, failed) = (*to, *failed);
                if *boot_id == self.boot.boot_id {
                    if self.too_many_reentries(unix, "revert") {
                        return;
                    }
                    self.push_plan(Item::Step(FwStep::Revert { to }));
                    self.push_plan(Item::Step(FwStep::Reboot));
                } else {
                    log::warn!(
                        "firmware: reverted from slot {failed} to {to} after a failed health gate"
                    );
                    let package = j.package.clone();
                    self.write(
                        Journal {
                            phase: Phase::Downloaded { target: failed },
                            result: result::UPDATE_FAILED,
                            package,
                            reentries: 0,
                            ..j
                        },
                        unix,
                    );
                }
            }
        }
    }

    /// Counts a restart in the current phase; after too many, gives up (crash-loop guard).
    fn too_many_reentries(&mut self, unix: i64, what: &str) -> bool {
        let mut j = self.planned_journal();
        j.reentries += 1;
        if j.reentries > MAX_REENTRIES {
            log::error!(
                "firmware: the {what} was interrupted {} times; giving up",
                j.reentries - 1
            );
            let phase = match j.phase {
                Phase::Updating { target, .. } | Phase::Reverting { failed: target, .. } => {
                    Phase::Downloaded { target }
                }
                _ => Phase::Idle,
            };
            let failed = if matches!(phase, Phase::Idle) {
                result::CONNECTION_LOST
            } else {
                result::UPDATE_FAILED
            };
            self.write(
                Journal {
                    phase,
                    result: failed,
                    reentries: 0,
                    ..j
                },
                unix,
            );
            return true;
        }
        self.write(j, unix);
        false
    }

    /// The boot loader booted the previous slot although `target` was on trial.
    fn fell_back(&mut self, unix: i64, target: Slot) {
        log::error!(
            "firmware: the trial boot of slot {target} failed; the boot loader fell back to {}",
            self.boot.booted
        );
        let j = self.planned_journal();
        self.write(
            Journal {
                phase: Phase::Downloaded { target },
                result: result::UPDATE_FAILED,
                reentries: 0,
                update_requested: false,
                ..j
            },
            unix,
        );
        // The boot loader only cleared the trial: the slot whose image failed would otherwise
        // stay bootable, where a failed health gate (`revert`) leaves it unbootable. Same end
        // state on both paths; Execute Update arms it again (`set_trial` clears the mark).
        self.push_plan(Item::Step(FwStep::MarkBad { slot: target }));
    }

    /// Waits for the health gate of the trial boot.
    fn verify(&mut self, now: Instant) {
        self.health_deadline = Some(now + self.config.health_timeout);
        self.push_plan(Item::Step(FwStep::AwaitHealthy {
            timeout: self.config.health_timeout,
        }));
    }

    /// A registration succeeded (part of the health gate).
    pub fn registered(&mut self, unix: i64) {
        self.registered = true;
        self.maybe_commit(unix);
    }

    fn maybe_commit(&mut self, unix: i64) {
        let Phase::Verifying { target, .. } = self.durable.phase else {
            return;
        };
        if !self.healthy || (self.config.require_registration && !self.registered) {
            return;
        }
        if self.in_flight.is_some() || !self.plan.is_empty() {
            return;
        }
        self.health_deadline = None;
        let mut j = self.planned_journal();
        if let Some(pkg) = &j.package {
            j.security_floor = j.security_floor.max(pkg.security_version);
        }
        j.phase = Phase::Idle;
        j.result = result::SUCCESS;
        j.reentries = 0;
        log::info!("firmware: slot {target} passed the health gate; committing");
        self.push_plan(Item::Step(FwStep::Commit { slot: target }));
        self.write(j, unix);
    }

    /// A timer is due.
    pub fn handle_timeout(&mut self, now: Instant, unix: i64) {
        if self.health_deadline.is_some_and(|t| t <= now) {
            self.health_deadline = None;
            self.revert(unix, "the health gate was not passed in time");
        }
        if self.defer_check.is_some_and(|t| t <= now) {
            self.defer_check = None;
            if matches!(self.durable.phase, Phase::Downloaded { .. }) && self.in_flight.is_none() {
                self.push_plan(Item::Step(FwStep::CheckInhibit));
            }
        }
    }

    fn revert(&mut self, unix: i64, why: &str) {
        // Both the health deadline and AwaitHealthy's own timeout can fire: revert once.
        let Phase::Verifying { target, previous } = self.planned_journal().phase else {
            return;
        };
        self.health_deadline = None;
        log::error!("firmware: {why}; returning to slot {previous}");
        let j = self.planned_journal();
        self.write(
            Journal {
                phase: Phase::Reverting {
                    to: previous,
                    failed: target,
                    boot_id: self.boot.boot_id.clone(),
                },
                // The revert counts its own restarts.
                reentries: 0,
                ..j
            },
            unix,
        );
        self.push_plan(Item::Step(FwStep::Revert { to: previous }));
        self.push_plan(Item::Step(FwStep::Reboot));
    }

    /// The outcome of the step `poll_step` handed out.
    pub fn outcome(&mut self, now: Instant, unix: i64, outcome: FwOutcome) {
        let Some(step) = self.in_flight.take() else {
            log::warn!("firmware: an outcome arrived with no step in flight: {outcome:?}");
            return;
        };
        if std::mem::take(&mut self.superseded) && is_transfer(&step) {
            log::debug!("firmware: outcome of the interrupted transfer ignored: {outcome:?}");
            return;
        }
        match (step, outcome) {
            (FwStep::Journal(j), FwOutcome::Done) => {
                self.durable = j;
                self.changed = true;
            }
            (FwStep::Journal(_), other) => {
                // Without a durable intent nothing may proceed.
                log::error!("firmware: the journal could not be written ({other:?}); stopping");
                self.plan.clear();
                self.release_held(Err(Reject::Failed("cannot record the update state".into())));
            }
            (FwStep::Prepare { .. }, FwOutcome::Done) => {}
            (FwStep::PushData { last: false, .. }, FwOutcome::Done) => self.release_held(Ok(())),
            (FwStep::PushData { .. } | FwStep::Fetch { .. }, FwOutcome::Downloaded { package }) => {
                self.downloaded(now, unix, package)
            }
            (FwStep::Prepare { .. } | FwStep::PushData { .. } | FwStep::Fetch { .. }, outcome) => {
                let (code, reason) = failure(&outcome);
                log::warn!("firmware: download failed (result {code}): {reason}");
                self.plan.clear();
                let j = self.planned_journal();
                self.write(
                    Journal {
                        phase: Phase::Idle,
                        result: code,
                        reentries: 0,
                        ..j
                    },
                    unix,
                );
                self.push_plan(Item::Release(Err(Reject::Failed(reason))));
            }
            (FwStep::Reboot | FwStep::Revert { .. } | FwStep::MarkBad { .. }, FwOutcome::Done) => {}
            (FwStep::Abort, _) => {}
            (FwStep::MarkBad { slot }, other) => {
                log::error!("firmware: marking slot {slot} unbootable failed: {other:?}")
            }
            (FwStep::CheckInhibit, FwOutcome::Inhibited(why)) => self.deferred(now, unix, &why),
            (FwStep::CheckInhibit, _) => {
                self.defer_until = None;
                self.begin_update(unix);
            }
            (FwStep::Activate { target }, FwOutcome::Done) => {
                log::info!("firmware: slot {target} set for one trial boot")
            }
            (FwStep::Activate { .. } | FwStep::Reboot, other) => {
                self.apply_failed(unix, &format!("{other:?}"))
            }
            (FwStep::AwaitHealthy { .. }, FwOutcome::Healthy) => {
                self.healthy = true;
                self.maybe_commit(unix);
            }
            (FwStep::AwaitHealthy { .. }, other) => self.revert(
                unix,
                &format!("the system did not become healthy: {other:?}"),
            ),
            (FwStep::Commit { slot }, FwOutcome::Done) => {
                log::info!("firmware: slot {slot} committed")
            }
            (FwStep::Commit { slot }, other) => {
                // The journal already says Idle/success only once written after this step; put
                // the trial back to Verifying so a restart re-evaluates.
                log::error!("firmware: committing slot {slot} failed: {other:?}");
                self.plan.clear();
                self.revert_after_failed_commit(unix, slot);
            }
            (FwStep::Revert { to }, other) => {
                log::error!("firmware: revert to {to} failed: {other:?}")
            }
        }
    }

    fn revert_after_failed_commit(&mut self, unix: i64, slot: Slot) {
        let previous = slot.other();
        let j = self.planned_journal();
        self.write(
            Journal {
                phase: Phase::Reverting {
                    to: previous,
                    failed: slot,
                    boot_id: self.boot.boot_id.clone(),
                },
                ..j
            },
            unix,
        );
        self.push_plan(Item::Step(FwStep::Revert { to: previous }));
        self.push_plan(Item::Step(FwStep::Reboot));
    }

    /// Activating or rebooting failed: disarm the trial (an unplanned reboot must not try an
    /// image the server was told failed) and stay Downloaded with result 8.
    fn apply_failed(&mut self, unix: i64, reason: &str) {
        log::error!("firmware: applying the update failed: {reason}");
        self.plan.clear();
        let Phase::Updating { target, .. } = self.durable.phase else {
            return;
        };
        self.push_plan(Item::Step(FwStep::MarkBad { slot: target }));
        let j = self.planned_journal();
        self.write(
            Journal {
                phase: Phase::Downloaded { target },
                result: result::UPDATE_FAILED,
                reentries: 0,
                ..j
            },
            unix,
        );
    }

    fn downloaded(&mut self, now: Instant, unix: i64, package: PkgInfo) {
        let Phase::Downloading { target, .. } = self.durable.phase else {
            log::warn!("firmware: a download completed outside Downloading; ignored");
            return;
        };
        log::info!(
            "firmware: {} {} downloaded and verified into slot {target}",
            package.name,
            package.version
        );
        let mut j = self.planned_journal();
        j.slots.insert(target, package.clone());
        j.package = Some(package);
        j.phase = Phase::Downloaded { target };
        j.result = result::INITIAL;
        j.reentries = 0;
        self.write(j, unix);
        self.push_plan(Item::Release(Ok(())));
        if self.settings.auto_update {
            self.update_after_download(now);
        }
    }

    fn update_after_download(&mut self, _now: Instant) {
        // The update starts once the Downloaded journal is durable (see `after_journal`).
        self.push_plan(Item::Step(FwStep::CheckInhibit));
    }

    fn deferred(&mut self, now: Instant, unix: i64, why: &str) {
        let may_defer = self.settings.severity != 0 && self.settings.max_defer > 0;
        let until = *self
            .defer_until
            .get_or_insert(now + Duration::from_secs(u64::from(self.settings.max_defer)));
        if !may_defer || now >= until {
            log::info!("firmware: inhibited ({why}) but deferral is over or not allowed; updating");
            self.defer_until = None;
            self.begin_update(unix);
            return;
        }
        log::info!("firmware: update deferred: {why}");
        if self.durable.result != result::DEFERRED {
            let j = self.planned_journal();
            self.write(
                Journal {
                    result: result::DEFERRED,
                    ..j
                },
                unix,
            );
        }
        self.defer_check = Some((now + self.config.defer_retry).min(until));
    }

    fn begin_update(&mut self, unix: i64) {
        let Phase::Downloaded { target } = self.durable.phase else {
            return;
        };
        let previous = self.boot.booted;
        log::info!("firmware: updating: slot {target} boots once next (from {previous})");
        let j = self.planned_journal();
        self.write(
            Journal {
                phase: Phase::Updating {
                    target,
                    previous,
                    boot_id: self.boot.boot_id.clone(),
                },
                result: result::INITIAL,
                reentries: 0,
                update_requested: false,
                ..j
            },
            unix,
        );
        self.push_plan(Item::Step(FwStep::Activate { target }));
        self.push_plan(Item::Step(FwStep::Reboot));
    }

    // ----- requests from the server -----

    /// Write of /5/0/1 (Package URI). `protocol_ok` says whether the scheme is supported.
    pub fn write_uri(&mut self, unix: i64, uri: &str, check: UriCheck) -> Result<Reply, Reject> {
        if uri.is_empty() {
            return self.reset(unix, result::INITIAL, "");
        }
        if !matches!(self.planned_journal().phase, Phase::Idle) {
            return Err(Reject::NotAllowed(
                "a new Package URI needs state Idle (write an empty URI to reset)",
            ));
        }
        let j = self.planned_journal();
        match check {
            UriCheck::Invalid => {
                self.write(
                    Journal {
                        result: result::INVALID_URI,
                        uri: uri.to_string(),
                        ..j
                    },
                    unix,
                );
            }
            UriCheck::UnsupportedProtocol => {
                self.write(
                    Journal {
                        result: result::UNSUPPORTED_PROTOCOL,
                        uri: uri.to_string(),
                        ..j
                    },
                    unix,
                );
            }
            UriCheck::Ok => {
                let target = self.boot.booted.other();
                log::info!("firmware: pulling {uri} into slot {target}");
                self.write(
                    Journal {
                        phase: Phase::Downloading { target, pull: true },
                        result: result::INITIAL,
                        uri: uri.to_string(),
                        package: None,
                        reentries: 0,
                        ..j
                    },
                    unix,
                );
                self.hold_until_durable();
                self.push_plan(Item::Step(FwStep::Prepare {
                    target,
                    resume: false,
                }));
                self.push_plan(Item::Step(FwStep::Fetch {
                    uri: uri.to_string(),
                    resume: false,
                }));
                return Ok(Reply::Hold);
            }
        }
        self.hold_until_durable();
        Ok(Reply::Hold)
    }

    /// The answer to the current request goes out once the journal write queued last is done:
    /// a 2.04 then means the intent survives a crash.
    fn hold_until_durable(&mut self) {
        self.held = true;
        self.push_plan(Item::Release(Ok(())));
    }

    /// A block of a Block1 push to /5/0/0 (or a whole package in one message).
    pub fn push(
        &mut self,
        unix: i64,
        offset: u64,
        data: &[u8],
        last: bool,
        total: Option<u64>,
    ) -> Result<Reply, Reject> {
        if offset == 0 {
            if last && (data.is_empty() || data == [0]) {
                return self.reset(unix, result::INITIAL, "");
            }
            if !matches!(self.planned_journal().phase, Phase::Idle) {
                return Err(Reject::NotAllowed(
                    "a new package needs state Idle (write \\0 to reset)",
                ));
            }
            if let Some(size) = total.filter(|&t| t > max_package_size(self.config.capacity)) {
                let j = self.planned_journal();
                self.write(
                    Journal {
                        result: result::NO_SPACE,
                        ..j
                    },
                    unix,
                );
                return Err(Reject::TooLarge {
                    size,
                    capacity: self.config.capacity,
                });
            }
            let target = self.boot.booted.other();
            log::info!("firmware: receiving a pushed package into slot {target}");
            let j = self.planned_journal();
            self.write(
                Journal {
                    phase: Phase::Downloading {
                        target,
                        pull: false,
                    },
                    result: result::INITIAL,
                    package: None,
                    uri: String::new(),
                    reentries: 0,
                    ..j
                },
                unix,
            );
            self.push_plan(Item::Step(FwStep::Prepare {
                target,
                resume: false,
            }));
        } else {
            if !matches!(
                self.planned_journal().phase,
                Phase::Downloading { pull: false, .. }
            ) {
                return Err(Reject::NotAllowed("no push in progress"));
            }
            if offset != self.push_next {
                return Err(Reject::Bad(format!(
                    "block at {offset}, expected {}",
                    self.push_next
                )));
            }
        }
        self.push_next = offset + data.len() as u64;
        self.push_plan(Item::Step(FwStep::PushData {
            offset,
            data: data.to_vec(),
            last,
        }));
        self.held = true;
        Ok(Reply::Hold)
    }

    /// Execute /5/0/2 (Update).
    pub fn update(&mut self, unix: i64) -> Result<Reply, Reject> {
        let pending = self
            .plan
            .iter()
            .any(|i| matches!(i, Item::Step(FwStep::CheckInhibit)))
            || matches!(self.in_flight, Some(FwStep::CheckInhibit));
        if !matches!(self.planned_journal().phase, Phase::Downloaded { .. }) || pending {
            return Err(Reject::NotAllowed("Update needs state Downloaded"));
        }
        let j = self.planned_journal();
        self.write(
            Journal {
                update_requested: true,
                ..j
            },
            unix,
        );
        self.hold_until_durable();
        self.push_plan(Item::Step(FwStep::CheckInhibit));
        Ok(Reply::Hold)
    }

    /// Execute /5/0/10 (Cancel).
    pub fn cancel(&mut self, unix: i64) -> Result<Reply, Reject> {
        match self.planned_journal().phase {
            Phase::Downloading { .. } | Phase::Downloaded { .. } => {
                self.reset(unix, result::CANCELLED, "cancelled")
            }
            _ => Err(Reject::NotAllowed(
                "nothing to cancel (or the update already started)",
            )),
        }
    }

    /// Reset to Idle (empty URI, `\0` package) with `code`.
    fn reset(&mut self, unix: i64, code: u8, why: &str) -> Result<Reply, Reject> {
        match self.planned_journal().phase {
            Phase::Updating { .. } | Phase::Verifying { .. } | Phase::Reverting { .. } => {
                Err(Reject::NotAllowed("the update is being applied"))
            }
            Phase::Downloading { .. } | Phase::Downloaded { .. } => {
                if !why.is_empty() {
                    log::info!("firmware: {why}");
                }
                // A running transfer is interrupted at once and its outcome ignored; queued
                // steps are dropped (but a queued journal write is kept as the base below).
                let base = self.planned_journal();
                self.plan
                    .retain(|i| matches!(i, Item::Step(FwStep::Journal(_))));
                if self.in_flight.as_ref().is_some_and(is_transfer) {
                    self.superseded = true;
                }
                self.abort_now = true;
                self.release_held(Err(Reject::Failed("the download was reset".into())));
                self.defer_check = None;
                self.defer_until = None;
                let j = base;
                self.write(
                    Journal {
                        phase: Phase::Idle,
                        result: code,
                        uri: String::new(),
                        reentries: 0,
                        update_requested: false,
                        ..j
                    },
                    unix,
                );
                self.hold_until_durable();
                Ok(Reply::Hold)
            }
            Phase::Idle => {
                let j = self.planned_journal();
                if j.result == code && j.uri.is_empty() {
                    return Ok(Reply::Now);
                }
                self.write(
                    Journal {
                        result: code,
                        uri: String::new(),
                        ..j
                    },
                    unix,
                );
                self.hold_until_durable();
                Ok(Reply::Hold)
            }
        }
    }

    // ----- helpers -----

    /// Queues a journal write of `next` (stamped with the state-change time when the State
    /// changes).
    fn write(&mut self, mut next: Journal, unix: i64) {
        let base = self.planned_journal();
        if next.state() != base.state() {
            next.changed_at = unix;
        }
        self.push_plan(Item::Step(FwStep::Journal(next)));
    }

    /// The journal as it will be once every queued journal write is done.
    fn planned_journal(&self) -> Journal {
        let queued = self.plan.iter().rev().find_map(|i| match i {
            Item::Step(FwStep::Journal(j)) => Some(j.clone()),
            _ => None,
        });
        let flying = match &self.in_flight {
            Some(FwStep::Journal(j)) => Some(j.clone()),
            _ => None,
        };
        queued.or(flying).unwrap_or_else(|| self.durable.clone())
    }

    fn push_plan(&mut self, item: Item) {
        self.plan.push_back(item);
    }
}

/// What the object concluded about a Package URI before handing it to the procedure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriCheck {
    /// Usable.
    Ok,
    /// Not a URI (→ Result 7).
    Invalid,
    /// A scheme we cannot fetch (→ Result 9).
    UnsupportedProtocol,
}

/// Checks a Package URI: `scheme://host[:port][/path]` with a non-empty host; `supported` lists
/// the schemes this build can fetch.
pub fn check_uri(uri: &str, supported: &[&str]) -> UriCheck {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return UriCheck::Invalid;
    };
    let valid_scheme = !scheme.is_empty()
        && scheme
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host_ok = !host.is_empty()
        && !host.starts_with(':')
        && !uri.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid_scheme || !host_ok {
        return UriCheck::Invalid;
    }
    if supported.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        UriCheck::Ok
    } else {
        UriCheck::UnsupportedProtocol
    }
}

fn failure(outcome: &FwOutcome) -> (u8, String) {
    match outcome {
        FwOutcome::Failed { result, reason } => (*result, reason.clone()),
        other => (
            result::UPDATE_FAILED,
            format!("unexpected outcome {other:?}"),
        ),
    }
}

/// Steps that move package bytes (interrupted by a reset).
fn is_transfer(step: &FwStep) -> bool {
    matches!(
        step,
        FwStep::Prepare { .. } | FwStep::PushData { .. } | FwStep::Fetch { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The boot-loader rules every backend implements (see `ab`): a trial boots once; an
    /// uncommitted trial falls back; a bad slot never boots; never neither.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct BootModel {
        primary: Slot,
        trial: Option<Slot>,
        tried: bool,
        bad: [bool; 2],
    }

    fn idx(s: Slot) -> usize {
        match s {
            Slot::A => 0,
            Slot::B => 1,
        }
    }

    impl BootModel {
        fn boot(&mut self) -> Slot {
            if let Some(t) = self.trial {
                if !self.tried && !self.bad[idx(t)] {
                    self.tried = true;
                    return t;
                }
                self.trial = None;
                self.tried = false;
            }
            if self.bad[idx(self.primary)] {
                self.primary.other()
            } else {
                self.primary
            }
        }

        fn bootable_slot_exists(&self) -> bool {
            !self.bad[0] || !self.bad[1]
        }
    }

    /// Executes steps like the runtime would, on a model; can kill the process or cut power.
    struct Harness {
        fota: Fota,
        disk: Option<Journal>,
        model: BootModel,
        booted: Slot,
        boot_no: u32,
        now: Instant,
        steps: Vec<FwStep>,
        fetch_fails: Option<u8>,
        inhibited: u32,
        healthy: bool,
        registered: bool,
        reboot_requested: bool,
    }

    fn config() -> FotaConfig {
        FotaConfig {
            capacity: 1 << 20,
            health_timeout: Duration::from_secs(600),
            defer_retry: Duration::from_secs(60),
            require_registration: true,
        }
    }

    fn pkg() -> PkgInfo {
        PkgInfo {
            name: "gw-os".into(),
            version: "2.0".into(),
            security_version: 7,
            image_size: 1000,
        }
    }

    impl Harness {
        fn new() -> Self {
            let now = crate::test_support::origin();
            let boot = BootInfo {
                booted: Slot::A,
                boot_id: "boot-0".into(),
            };
            let mut h = Self {
                fota: Fota::new(config(), None, boot, Settings::default()),
                disk: None,
                model: BootModel {
                    primary: Slot::A,
                    trial: None,
                    tried: false,
                    bad: [false, false],
                },
                booted: Slot::A,
                boot_no: 0,
                now,
                steps: Vec::new(),
                fetch_fails: None,
                inhibited: 0,
                healthy: true,
                registered: true,
                reboot_requested: false,
            };
            h.fota.start(now, 0);
            h
        }

        /// Kills the daemon (state in memory is lost) and starts it again; `power_cut` also
        /// reboots the machine through the boot loader.
        fn restart(&mut self, power_cut: bool) {
            if power_cut {
                self.booted = self.model.boot();
                self.boot_no += 1;
            }
            self.reboot_requested = false;
            let boot = BootInfo {
                booted: self.booted,
                boot_id: format!("boot-{}", self.boot_no),
            };
            self.now += Duration::from_secs(1);
            self.fota = Fota::new(config(), self.disk.clone(), boot, Settings::default());
            self.fota.start(self.now, 0);
            if self.registered {
                self.fota.registered(0);
            }
        }

        /// Runs one step; false when there is none.
        fn step(&mut self) -> bool {
            assert!(
                self.model.bootable_slot_exists(),
                "no bootable slot: {:?}",
                self.model
            );
            if self.reboot_requested {
                self.restart(true);
                return true;
            }
            let Some(step) = self.fota.poll_step() else {
                if let Some(t) = self.fota.poll_timeout() {
                    self.now = self.now.max(t);
                    self.fota.handle_timeout(self.now, 0);
                    return self.fota.poll_step().map(|s| self.execute(s)).is_some();
                }
                return false;
            };
            self.execute(step);
            true
        }

        fn execute(&mut self, step: FwStep) {
            self.steps.push(step.clone());
            let outcome = match &step {
                FwStep::Journal(j) => {
                    self.disk = Some(j.clone());
                    FwOutcome::Done
                }
                FwStep::Prepare { target, .. } => {
                    assert_ne!(*target, self.booted, "never prepare the running slot");
                    self.model.bad[idx(*target)] = true;
                    if self.model.trial == Some(*target) {
                        self.model.trial = None;
                    }
                    FwOutcome::Done
                }
                FwStep::PushData { last: false, .. } => FwOutcome::Done,
                FwStep::PushData { last: true, .. } => FwOutcome::Downloaded { package: pkg() },
                FwStep::Fetch { .. } => match self.fetch_fails {
                    Some(code) => FwOutcome::Failed {
                        result: code,
                        reason: "test".into(),
                    },
                    None => FwOutcome::Downloaded { package: pkg() },
                },
                FwStep::Abort => return,
                FwStep::CheckInhibit => {
                    if self.inhibited > 0 {
                        self.inhibited -= 1;
                        FwOutcome::Inhibited("maintenance".into())
                    } else {
                        FwOutcome::Done
                    }
                }
                FwStep::Activate { target } => {
                    assert!(
                        matches!(
                            self.disk.as_ref().map(|j| &j.phase),
                            Some(Phase::Updating { .. })
                        ),
                        "journal first"
                    );
                    self.model.trial = Some(*target);
                    self.model.tried = false;
                    self.model.bad[idx(*target)] = false;
                    FwOutcome::Done
                }
                FwStep::Reboot => {
                    self.reboot_requested = true;
                    FwOutcome::Done
                }
                FwStep::AwaitHealthy { .. } => {
                    if self.healthy {
                        FwOutcome::Healthy
                    } else {
                        FwOutcome::Unhealthy("no".into())
                    }
                }
                FwStep::Commit { slot } => {
                    assert_eq!(*slot, self.booted, "commit only the running slot");
                    self.model.primary = *slot;
                    self.model.trial = None;
                    self.model.tried = false;
                    FwOutcome::Done
                }
                FwStep::Revert { to } => {
                    self.model.primary = *to;
                    self.model.bad[idx(to.other())] = true;
                    self.model.trial = None;
                    FwOutcome::Done
                }
                FwStep::MarkBad { slot } => {
                    self.model.bad[idx(*slot)] = true;
                    if self.model.trial == Some(*slot) {
                        self.model.trial = None;
                    }
                    FwOutcome::Done
                }
            };
            self.fota.outcome(self.now, 0, outcome);
        }

        fn run(&mut self) {
            for _ in 0..200 {
                if !self.step() {
                    return;
                }
            }
            panic!("the procedure did not settle: {:?}", self.steps);
        }

        fn state(&self) -> (u8, u8) {
            (self.fota.journal().state(), self.fota.journal().result)
        }
    }

    /// Pulls, executes the update and runs until the reboot is requested (not yet done).
    fn pull_until_reboot(h: &mut Harness) {
        assert_eq!(
            h.fota.write_uri(0, "coap://x/fw", UriCheck::Ok),
            Ok(Reply::Hold)
        );
        h.run();
        assert_eq!(h.fota.update(0), Ok(Reply::Hold));
        while !h.reboot_requested {
            assert!(h.step());
        }
    }

    fn pull_and_update(h: &mut Harness) {
        assert_eq!(
            h.fota.write_uri(0, "http://x/fw.pkg", UriCheck::Ok),
            Ok(Reply::Hold)
        );
        h.run();
        assert_eq!(h.state(), (2, 0), "downloaded");
        assert_eq!(h.fota.update(0), Ok(Reply::Hold));
        h.run();
    }

    #[test]
    fn a_pull_update_commits_after_the_trial_boot() {
        let mut h = Harness::new();
        pull_and_update(&mut h);
        assert_eq!(h.booted, Slot::B);
        assert_eq!(h.state(), (0, result::SUCCESS));
        assert_eq!(h.model.primary, Slot::B);
        assert_eq!(h.fota.journal().security_floor, 7);
        assert_eq!(
            h.fota
                .journal()
                .package
                .as_ref()
                .map(|p| p.version.as_str()),
            Some("2.0")
        );
        // Write-ahead: every slot or boot-loader step is preceded by the journal announcing it.
        let kinds: Vec<&str> = h.steps.iter().map(step_name).collect();
        assert_eq!(
            kinds,
            [
                "journal", "prepare", "fetch", "journal", "journal", "check", "journal",
                "activate", "reboot", "journal", "healthy", "commit", "journal"
            ]
        );
    }

    fn step_name(s: &FwStep) -> &'static str {
        match s {
            FwStep::Journal(_) => "journal",
            FwStep::Prepare { .. } => "prepare",
            FwStep::PushData { .. } => "push",
            FwStep::Fetch { .. } => "fetch",
            FwStep::Abort => "abort",
            FwStep::MarkBad { .. } => "markbad",
            FwStep::CheckInhibit => "check",
            FwStep::Activate { .. } => "activate",
            FwStep::Reboot => "reboot",
            FwStep::AwaitHealthy { .. } => "healthy",
            FwStep::Commit { .. } => "commit",
            FwStep::Revert { .. } => "revert",
        }
    }

    #[test]
    fn a_failed_trial_boot_reports_result_8_and_runs_the_old_slot() {
        let mut h = Harness::new();
        pull_until_reboot(&mut h);
        // The new image "hangs": the boot loader runs the trial once, the machine resets
        // without a commit, and the next boot falls back.
        h.reboot_requested = false;
        h.booted = h.model.boot();
        assert_eq!(h.booted, Slot::B, "the trial boot");
        h.booted = h.model.boot();
        assert_eq!(h.booted, Slot::A, "the fallback");
        h.boot_no += 2;
        h.restart(false);
        h.run();
        assert_eq!(
            h.state(),
            (2, result::UPDATE_FAILED),
            "ETS int-779: Downloaded, result 8"
        );
        assert_eq!(h.model.primary, Slot::A);
        assert!(
            h.model.bad[idx(Slot::B)],
            "the failed slot is unbootable, as after a failed health gate"
        );
        // The server may try again: Execute Update arms the same image.
        assert_eq!(h.fota.update(0), Ok(Reply::Hold));
        while !h.reboot_requested {
            assert!(h.step());
        }
        assert!(!h.model.bad[idx(Slot::B)], "armed again");
        assert_eq!(h.model.trial, Some(Slot::B));
    }

    #[test]
    fn a_health_gate_timeout_reverts_and_reports_result_8() {
        let mut h = Harness::new();
        h.healthy = false;
        pull_and_update(&mut h);
        assert_eq!(h.booted, Slot::A, "back on the old slot");
        assert_eq!(h.state(), (2, result::UPDATE_FAILED));
        assert!(h.model.bad[idx(Slot::B)]);
        assert!(
            h.steps
                .iter()
                .any(|s| matches!(s, FwStep::Revert { to: Slot::A }))
        );
    }

    /// A trial whose lwm2md crashes again and again (restarted by systemd in the same boot)
    /// never reaches the in-memory health deadline: after `MAX_REENTRIES` restarts it is
    /// reverted like a failed health gate, without waiting for any timer.
    #[test]
    fn a_crash_looping_trial_is_reverted() {
        let mut h = Harness::new();
        h.registered = false; // the trial never passes the gate before it crashes
        pull_until_reboot(&mut h);
        h.restart(true);
        assert_eq!(h.booted, Slot::B, "the trial boot");
        let drain = |h: &mut Harness| {
            while let Some(s) = h.fota.poll_step() {
                h.execute(s);
            }
        };
        drain(&mut h);
        assert!(matches!(
            h.disk.as_ref().map(|j| &j.phase),
            Some(Phase::Verifying { .. })
        ));
        for _ in 0..MAX_REENTRIES {
            h.restart(false);
            drain(&mut h);
            assert!(!h.reboot_requested, "reverted too early");
        }
        h.restart(false);
        drain(&mut h);
        assert!(h.reboot_requested, "the crash loop must end in a revert");
        assert!(
            h.steps
                .iter()
                .any(|s| matches!(s, FwStep::Revert { to: Slot::A }))
        );
        h.run();
        assert_eq!(h.booted, Slot::A);
        assert_eq!(h.state(), (2, result::UPDATE_FAILED));
        assert_eq!(h.model.primary, Slot::A);
    }

    #[test]
    fn without_a_registration_the_trial_is_not_committed() {
        let mut h = Harness::new();
        h.registered = false;
        pull_and_update(&mut h);
        // The health deadline passes without a registration: revert.
        assert_eq!(h.booted, Slot::A);
        assert_eq!(h.state(), (2, result::UPDATE_FAILED));
    }

    /// Kill the daemon after every step of a whole update, and separately cut power after every
    /// step: the device always ends on a bootable slot, and the procedure either completes (new
    /// image committed, result 1) or reports the failure — never a lost or wrong result.
    #[test]
    fn killed_or_power_cut_after_any_step_ends_consistently() {
        let mut reference = Harness::new();
        pull_and_update(&mut reference);
        let total = reference.steps.len();
        for power_cut in [false, true] {
            for k in 0..=total {
                let mut h = Harness::new();
                assert_eq!(
                    h.fota.write_uri(0, "http://x/fw.pkg", UriCheck::Ok),
                    Ok(Reply::Hold)
                );
                let mut executed = 0;
                let mut updated = false;
                let mut update_acked = false;
                while executed < k {
                    if !h.step() {
                        if !updated && h.state().0 == 2 {
                            updated = true;
                            assert_eq!(h.fota.update(0), Ok(Reply::Hold));
                            continue;
                        }
                        break;
                    }
                    if updated && h.fota.poll_release() == Some(Ok(())) {
                        update_acked = true;
                    }
                    executed += 1;
                }
                h.restart(power_cut);
                h.run();
                if !updated && h.state() == (2, 0) {
                    assert_eq!(h.fota.update(0), Ok(Reply::Hold));
                    h.run();
                }
                let (state, res) = h.state();
                let ok = (state, res) == (0, result::SUCCESS)
                    && h.booted == Slot::B
                    && h.model.primary == Slot::B;
                let failed_cleanly = matches!(
                    (state, res),
                    (2, result::UPDATE_FAILED) | (0, result::CONNECTION_LOST)
                ) && h.booted == Slot::A;
                // Killed before the first journal write: the request never became durable, as if
                // it had not arrived (the server sees Idle and may write the URI again).
                let never_started = k == 0 && (state, res) == (0, 0) && h.booted == Slot::A;
                // Killed after Execute Update but before its journal write: the Execute was never
                // answered, so the server sees Downloaded and must execute again.
                let update_unanswered =
                    updated && !update_acked && (state, res) == (2, 0) && h.booted == Slot::A;
                let never_started = never_started || update_unanswered;
                assert!(
                    ok || failed_cleanly || never_started,
                    "k={k} power_cut={power_cut}: state {state} result {res}, booted {} model {:?}\n{:?}",
                    h.booted,
                    h.model,
                    h.steps.iter().map(step_name).collect::<Vec<_>>()
                );
                assert!(h.model.bootable_slot_exists());
            }
        }
    }

    #[test]
    fn push_holds_each_block_until_it_is_written() {
        let mut h = Harness::new();
        assert_eq!(
            h.fota.push(0, 0, &[1; 512], false, Some(1500)),
            Ok(Reply::Hold)
        );
        // Journal, Prepare, PushData: the answer comes after the data step.
        h.step();
        h.step();
        assert_eq!(h.fota.poll_release(), None);
        h.step();
        assert_eq!(h.fota.poll_release(), Some(Ok(())));
        assert_eq!(h.state(), (1, 0));
        assert_eq!(h.fota.push(0, 512, &[2; 512], false, None), Ok(Reply::Hold));
        h.step();
        assert_eq!(h.fota.poll_release(), Some(Ok(())));
        assert!(
            matches!(
                h.fota.push(0, 2000, &[3; 10], true, None),
                Err(Reject::Bad(_))
            ),
            "gap"
        );
        assert_eq!(h.fota.push(0, 1024, &[3; 476], true, None), Ok(Reply::Hold));
        h.run();
        assert_eq!(h.fota.poll_release(), Some(Ok(())));
        assert_eq!(h.state(), (2, 0));
    }

    #[test]
    fn a_package_of_a_whole_slot_image_is_not_refused_by_its_size1() {
        let mut h = Harness::new();
        // An uncompressed image exactly as large as the slot: the package is a little larger.
        let r = h.fota.push(0, 0, &[0; 512], false, Some((1 << 20) + 4096));
        assert_eq!(r, Ok(Reply::Hold));
    }

    #[test]
    fn an_oversized_push_is_refused_with_result_2() {
        let mut h = Harness::new();
        let r = h
            .fota
            .push(0, 0, &[0; 512], false, Some(max_package_size(1 << 20) + 1));
        assert!(matches!(r, Err(Reject::TooLarge { .. })));
        h.run();
        assert_eq!(h.state(), (0, result::NO_SPACE));
    }

    #[test]
    fn a_uri_write_is_answered_only_once_durable() {
        let mut h = Harness::new();
        assert_eq!(
            h.fota.write_uri(0, "http://x/y", UriCheck::Ok),
            Ok(Reply::Hold)
        );
        assert_eq!(h.fota.poll_release(), None);
        assert!(h.step(), "the journal write");
        assert!(h.disk.as_ref().is_some_and(|j| j.state() == 1));
        // The release is handed out before the next step starts.
        let next = h.fota.poll_step();
        assert_eq!(h.fota.poll_release(), Some(Ok(())));
        assert!(matches!(next, Some(FwStep::Prepare { .. })));
    }

    #[test]
    fn uri_results_and_resets() {
        let mut h = Harness::new();
        assert_eq!(
            h.fota.write_uri(0, "not a uri", UriCheck::Invalid),
            Ok(Reply::Hold)
        );
        h.run();
        assert_eq!(h.state(), (0, result::INVALID_URI));
        assert_eq!(
            h.fota
                .write_uri(0, "ftp://x/y", UriCheck::UnsupportedProtocol),
            Ok(Reply::Hold)
        );
        h.run();
        assert_eq!(h.state(), (0, result::UNSUPPORTED_PROTOCOL));
        assert_eq!(h.fota.write_uri(0, "", UriCheck::Ok), Ok(Reply::Hold));
        h.run();
        assert_eq!(h.state(), (0, 0));
        h.fetch_fails = Some(result::CONNECTION_LOST);
        assert_eq!(
            h.fota.write_uri(0, "http://x/y", UriCheck::Ok),
            Ok(Reply::Hold)
        );
        h.run();
        assert_eq!(h.state(), (0, result::CONNECTION_LOST));
        // Update outside Downloaded: refused, nothing changes (ETS int-772).
        assert!(matches!(h.fota.update(0), Err(Reject::NotAllowed(_))));
        assert_eq!(h.state(), (0, result::CONNECTION_LOST));
    }

    #[test]
    fn cancel_during_a_download_interrupts_it_and_reports_10() {
        let mut h = Harness::new();
        assert_eq!(
            h.fota.write_uri(0, "http://x/y", UriCheck::Ok),
            Ok(Reply::Hold)
        );
        h.step(); // journal
        h.step(); // prepare
        let fetch = h.fota.poll_step();
        assert!(matches!(fetch, Some(FwStep::Fetch { .. })));
        assert_eq!(h.fota.cancel(0), Ok(Reply::Hold));
        assert_eq!(
            h.fota.poll_step(),
            Some(FwStep::Abort),
            "abort goes out while the fetch runs"
        );
        // The interrupted fetch reports a failure, which must not overwrite result 10.
        h.fota.outcome(
            h.now,
            0,
            FwOutcome::Failed {
                result: result::CONNECTION_LOST,
                reason: "aborted".into(),
            },
        );
        h.run();
        assert_eq!(h.state(), (0, result::CANCELLED));
        assert!(matches!(h.fota.cancel(0), Err(Reject::NotAllowed(_))));
    }

    #[test]
    fn an_inhibited_update_is_deferred_then_forced_after_the_maximum_period() {
        let mut h = Harness::new();
        h.fota.set_settings(Settings {
            severity: 2,
            max_defer: 300,
            auto_update: false,
        });
        assert_eq!(
            h.fota.write_uri(0, "http://x/y", UriCheck::Ok),
            Ok(Reply::Hold)
        );
        h.run();
        h.inhibited = 100;
        assert_eq!(h.fota.update(0), Ok(Reply::Hold));
        for _ in 0..3 {
            h.step();
        }
        assert_eq!(h.state(), (2, result::DEFERRED));
        // Keep stepping: re-checks every minute; after 300 s the update goes ahead anyway.
        let settings = h.fota.settings();
        h.fota.set_settings(settings);
        for _ in 0..50 {
            if h.reboot_requested {
                break;
            }
            h.step();
        }
        assert!(h.reboot_requested, "forced after the maximum defer period");
    }

    #[test]
    fn check_uri_classifies() {
        let ok = ["coap", "http", "https"];
        assert_eq!(check_uri("http://h/fw", &ok), UriCheck::Ok);
        assert_eq!(check_uri("COAP://[::1]:5683/fw", &ok), UriCheck::Ok);
        assert_eq!(
            check_uri("coaps://h/fw", &ok),
            UriCheck::UnsupportedProtocol
        );
        assert_eq!(check_uri("ftp://h/fw", &ok), UriCheck::UnsupportedProtocol);
        for bad in [
            "",
            "h/fw",
            "://h",
            "http://",
            "http:// h/x",
            "1http://h",
            "http://:80/x",
        ] {
            assert_eq!(check_uri(bad, &ok), UriCheck::Invalid, "{bad:?}");
        }
    }

    #[test]
    fn the_journal_round_trips_through_json() {
        let mut j = Journal::fresh();
        j.phase = Phase::Updating {
            target: Slot::B,
            previous: Slot::A,
            boot_id: "x".into(),
        };
        j.slots.insert(Slot::B, pkg());
        let text = serde_json::to_string(&j).expect("serialise");
        assert!(text.contains(r#""phase":"Updating""#), "{text}");
        assert_eq!(serde_json::from_str::<Journal>(&text).expect("parse"), j);
    }
}

//! The A/B contract suite, run against every backend (the fake, GRUB with the Rust
//! transcription of the snippet, GRUB itself in grub-emu, U-Boot with the real libubootenv
//! tools on plain files), and the power-cut tests: every write of every transition cut at
//! every byte boundary.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::detect::BootedSlot;
use super::exec::{CommandRunner, RecordingRunner, SystemRunner};
use super::fake::{self, FakeSlots};
use super::grub::{self, GrubConfig, GrubSlots, Snapshot};
use super::testkit::{
    self, CapturingRunner, FileWrite, Tear, grub_emu_boot, grub_emu_missing, missing_any, printenv,
    run_ok, torn_versions, uboot_env,
};
use super::uboot::{self, UbootConfig, UbootSlots};
use super::vars::BootVars;
use super::{AbError, BootSlots, BootState, Slot};

// ---------------------------------------------------------------------------------------------
// Machines: a backend plus its boot loader.
// ---------------------------------------------------------------------------------------------

/// A simulated device: the daemon's backend and the boot loader.
trait Machine {
    /// The daemon's view after a (re)boot: a fresh backend that knows the running slot.
    fn slots(&self, booted: Slot) -> Box<dyn BootSlots>;
    /// The boot loader runs once; returns the slot it booted.
    fn boot(&mut self) -> Slot;
    /// The raw boot-loader storage (to prove steady-state boots write nothing).
    fn storage(&self) -> Vec<u8>;
}

fn devices(dir: &Path) -> [PathBuf; 2] {
    [dir.join("slot-a"), dir.join("slot-b")]
}

struct FakeMachine {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl FakeMachine {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("fake");
        FakeSlots::create(&dir, 1 << 16, Slot::A).expect("create");
        Self { _tmp: tmp, dir }
    }
}

impl Machine for FakeMachine {
    fn slots(&self, booted: Slot) -> Box<dyn BootSlots> {
        let slots = FakeSlots::open(&self.dir).expect("open");
        assert_eq!(slots.booted().expect("booted"), booted);
        Box::new(slots)
    }
    fn boot(&mut self) -> Slot {
        fake::simulate_boot(&self.dir).expect("boot")
    }
    fn storage(&self) -> Vec<u8> {
        std::fs::read(self.dir.join(fake::STATE_FILE)).expect("state")
    }
}

struct GrubMachine {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    /// Boot with GRUB itself (grub-emu) instead of the transcription.
    real: bool,
}

impl GrubMachine {
    fn new(real: bool) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("lwm2md");
        let machine = Self {
            dir,
            real,
            _tmp: tmp,
        };
        GrubSlots::new(machine.config(Slot::A), Box::new(SystemRunner))
            .provision(Slot::A)
            .expect("provision");
        machine
    }

    fn config(&self, booted: Slot) -> GrubConfig {
        let mut config = GrubConfig::new(self.dir.clone(), devices(&self.dir));
        config.booted = BootedSlot::Fixed(booted);
        config
    }
}

impl Machine for GrubMachine {
    fn slots(&self, booted: Slot) -> Box<dyn BootSlots> {
        Box::new(GrubSlots::new(self.config(booted), Box::new(SystemRunner)))
    }
    fn boot(&mut self) -> Slot {
        if self.real {
            grub_emu_boot(&self.dir).slot
        } else {
            grub::simulate_boot(&self.config(Slot::A), &SystemRunner).expect("boot")
        }
    }
    fn storage(&self) -> Vec<u8> {
        let s = Snapshot::read(&self.dir).expect("read");
        [s.env, s.lock]
            .concat()
            .into_iter()
            .flatten()
            .flatten()
            .collect()
    }
}

struct UbootMachine {
    _tmp: tempfile::TempDir,
    config: PathBuf,
    env: PathBuf,
}

impl UbootMachine {
    /// A board whose default environment knows nothing about lwm2md: the first boot sets the
    /// canary, as `boot.cmd` does.
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (config, env) = uboot_env(tmp.path(), &[("bootcmd", "run lwm2md_boot")]);
        Self {
            _tmp: tmp,
            config,
            env,
        }
    }

    fn uconfig(&self, booted: Slot) -> UbootConfig {
        let mut config = UbootConfig::new(devices(self._tmp.path()));
        config.fw_env_config = self.config.clone();
        config.booted = BootedSlot::Fixed(booted);
        config
    }
}

impl Machine for UbootMachine {
    fn slots(&self, booted: Slot) -> Box<dyn BootSlots> {
        Box::new(UbootSlots::new(self.uconfig(booted), Box::new(SystemRunner)).expect("new"))
    }
    fn boot(&mut self) -> Slot {
        uboot::simulate_boot(&self.uconfig(Slot::A), &SystemRunner).expect("boot")
    }
    fn storage(&self) -> Vec<u8> {
        std::fs::read(&self.env).expect("env")
    }
}

// ---------------------------------------------------------------------------------------------
// The contract.
// ---------------------------------------------------------------------------------------------

fn state(primary: Slot, trial: Option<Slot>, bootable: [bool; 2]) -> BootState {
    BootState {
        primary,
        trial,
        bootable,
    }
}

const BOTH: [bool; 2] = [true, true];

/// A steady-state boot: boots `expect` and writes nothing.
fn steady_boot(m: &mut dyn Machine, expect: Slot) {
    let before = m.storage();
    assert_eq!(m.boot(), expect);
    assert!(
        m.storage() == before,
        "a steady-state boot wrote to the boot-loader storage"
    );
}

/// mark_unbootable → (image written) → set_trial → boot → commit, both ways.
fn update_sequence(m: &mut dyn Machine) {
    assert_eq!(m.boot(), Slot::A, "first boot");
    let mut s = m.slots(Slot::A);
    assert_eq!(s.booted().expect("booted"), Slot::A);
    assert_eq!(s.state().expect("state"), state(Slot::A, None, BOTH));
    s.mark_unbootable(Slot::B).expect("mark B");
    assert_eq!(
        s.state().expect("state"),
        state(Slot::A, None, [true, false])
    );
    // A power cut while slot B is being written: the old slot boots, nothing changes.
    steady_boot(m, Slot::A);
    let mut s = m.slots(Slot::A);
    assert_eq!(
        s.state().expect("state"),
        state(Slot::A, None, [true, false])
    );
    s.set_trial(Slot::B).expect("trial B");
    assert_eq!(
        s.state().expect("state"),
        state(Slot::A, Some(Slot::B), BOTH)
    );
    assert_eq!(m.boot(), Slot::B, "the trial boots");
    let mut s = m.slots(Slot::B);
    // Uncommitted: the trial is still shown, the primary is still A.
    assert_eq!(
        s.state().expect("state"),
        state(Slot::A, Some(Slot::B), BOTH)
    );
    s.commit(Slot::B).expect("commit B");
    assert_eq!(s.state().expect("state"), state(Slot::B, None, BOTH));
    steady_boot(m, Slot::B);
    steady_boot(m, Slot::B);
    // And back to A from B.
    let mut s = m.slots(Slot::B);
    s.mark_unbootable(Slot::A).expect("mark A");
    assert_eq!(
        s.state().expect("state"),
        state(Slot::B, None, [false, true])
    );
    s.set_trial(Slot::A).expect("trial A");
    assert_eq!(m.boot(), Slot::A);
    let mut s = m.slots(Slot::A);
    s.commit(Slot::A).expect("commit A");
    assert_eq!(s.state().expect("state"), state(Slot::A, None, BOTH));
    steady_boot(m, Slot::A);
}

/// set_trial → boot → no commit → boot again → the primary.
fn fallback_sequence(m: &mut dyn Machine) {
    assert_eq!(m.boot(), Slot::A);
    let mut s = m.slots(Slot::A);
    s.mark_unbootable(Slot::B).expect("mark");
    s.set_trial(Slot::B).expect("trial");
    assert_eq!(m.boot(), Slot::B, "the trial boots once");
    // The trial hangs / loses power / fails its health gate: nobody commits.
    assert_eq!(m.boot(), Slot::A, "the boot loader falls back on its own");
    let mut s = m.slots(Slot::A);
    assert_eq!(s.state().expect("state"), state(Slot::A, None, BOTH));
    steady_boot(m, Slot::A);
    // The daemon, back on A, reports the failure and reverts, marking B bad.
    s.revert(Slot::A).expect("revert");
    assert_eq!(
        s.state().expect("state"),
        state(Slot::A, None, [true, false])
    );
    steady_boot(m, Slot::A);
}

/// A failed health gate on the trial: revert from the running trial.
fn revert_sequence(m: &mut dyn Machine) {
    assert_eq!(m.boot(), Slot::A);
    let mut s = m.slots(Slot::A);
    s.mark_unbootable(Slot::B).expect("mark");
    s.set_trial(Slot::B).expect("trial");
    assert_eq!(m.boot(), Slot::B);
    let mut s = m.slots(Slot::B);
    s.revert(Slot::A).expect("revert to A");
    assert_eq!(
        s.state().expect("state"),
        state(Slot::A, None, [true, false])
    );
    assert_eq!(m.boot(), Slot::A);
    steady_boot(m, Slot::A);
    // A new attempt works from there.
    let mut s = m.slots(Slot::A);
    assert!(matches!(
        s.mark_unbootable(Slot::A),
        Err(AbError::RunningSlot(_))
    ));
    s.mark_unbootable(Slot::B).expect("mark again");
    s.set_trial(Slot::B).expect("trial again");
    assert_eq!(m.boot(), Slot::B);
    m.slots(Slot::B).commit(Slot::B).expect("commit");
    steady_boot(m, Slot::B);
}

/// What is refused, and that a refusal writes nothing.
fn refusals(m: &mut dyn Machine) {
    assert_eq!(m.boot(), Slot::A);
    let before = m.storage();
    let mut s = m.slots(Slot::A);
    assert!(matches!(
        s.mark_unbootable(Slot::A),
        Err(AbError::RunningSlot(_))
    ));
    assert!(matches!(s.set_trial(Slot::A), Err(AbError::RunningSlot(_))));
    assert!(matches!(s.commit(Slot::B), Err(AbError::Unsafe(_))));
    assert!(m.storage() == before, "a refused operation wrote");
    s.mark_unbootable(Slot::B).expect("mark");
    s.set_trial(Slot::B).expect("trial");
    assert_eq!(m.boot(), Slot::B);
    let before = m.storage();
    let mut s = m.slots(Slot::B);
    // The old slot is the fallback of the uncommitted trial.
    assert!(matches!(
        s.mark_unbootable(Slot::A),
        Err(AbError::Unsafe(_))
    ));
    assert!(matches!(s.set_trial(Slot::A), Err(AbError::Unsafe(_))));
    assert!(matches!(s.commit(Slot::A), Err(AbError::Unsafe(_))));
    assert!(matches!(s.set_trial(Slot::B), Err(AbError::RunningSlot(_))));
    assert!(m.storage() == before, "a refused operation wrote");
    // Reverted to A while B runs: A may not be marked, B (running) may not be trialled.
    s.revert(Slot::A).expect("revert");
    assert!(matches!(
        s.mark_unbootable(Slot::A),
        Err(AbError::Unsafe(_))
    ));
    assert!(matches!(s.set_trial(Slot::A), Err(AbError::Unsafe(_))));
}

fn contract(new: &dyn Fn() -> Box<dyn Machine>) {
    update_sequence(new().as_mut());
    fallback_sequence(new().as_mut());
    revert_sequence(new().as_mut());
    refusals(new().as_mut());
}

#[test]
fn contract_fake() {
    contract(&|| Box::new(FakeMachine::new()));
}

#[test]
fn contract_grub_transcription() {
    if missing_any(&["grub-editenv"]) {
        return;
    }
    contract(&|| Box::new(GrubMachine::new(false)));
}

/// The contract with GRUB itself making every boot decision, from the shipped snippet.
#[test]
fn contract_grub_emu() {
    if missing_any(&["grub-editenv"]) || grub_emu_missing() {
        return;
    }
    contract(&|| Box::new(GrubMachine::new(true)));
}

#[test]
fn contract_uboot() {
    if missing_any(&["fw_printenv", "fw_setenv", "mkenvimage"]) {
        return;
    }
    contract(&|| Box::new(UbootMachine::new()));
}

/// The kernel command line GRUB builds for the chosen entry.
#[test]
fn grub_emu_passes_slot_and_root_to_the_kernel() {
    if missing_any(&["grub-editenv"]) || grub_emu_missing() {
        return;
    }
    let m = GrubMachine::new(true);
    let boot = grub_emu_boot(&m.dir);
    assert_eq!(
        boot.linux,
        [
            "(hd0,gpt2)/boot/vmlinuz",
            "root=PARTUUID=0fc63daf-02",
            "ro",
            "lwm2md.slot=A",
            "console=ttyS0",
            "quiet"
        ]
    );
    assert_eq!(boot.initrd, "(hd0,gpt2)/boot/initrd.img");
    let mut s = m.slots(Slot::A);
    s.mark_unbootable(Slot::B).expect("mark");
    s.set_trial(Slot::B).expect("trial");
    let boot = grub_emu_boot(&m.dir);
    assert_eq!(boot.slot, Slot::B);
    assert!(boot.linux.contains(&"root=PARTUUID=0fc63daf-03".to_owned()));
    assert!(
        boot.console.contains("lwm2md: booting slot B"),
        "{}",
        boot.console
    );
}

// ---------------------------------------------------------------------------------------------
// Power cuts: every write of every transition, cut at every byte.
// ---------------------------------------------------------------------------------------------

/// A step of the update life cycle.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// A userspace operation with the given running slot.
    Op(Slot, Op),
    /// The boot loader runs.
    Boot,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Mark(Slot),
    Trial(Slot),
    Commit(Slot),
    Revert(Slot),
}

fn apply(slots: &mut dyn BootSlots, op: Op) -> Result<(), AbError> {
    match op {
        Op::Mark(s) => slots.mark_unbootable(s),
        Op::Trial(s) => slots.set_trial(s),
        Op::Commit(s) => slots.commit(s),
        Op::Revert(s) => slots.revert(s),
    }
}

/// Update to B (commit), update to A (trial falls back), revert: every kind of write, both
/// boot-loader writes (consume a trial, fall back), both directions.
const LIFE: &[Step] = &[
    Step::Op(Slot::A, Op::Mark(Slot::B)),
    Step::Op(Slot::A, Op::Trial(Slot::B)),
    Step::Boot,
    Step::Op(Slot::B, Op::Commit(Slot::B)),
    Step::Op(Slot::B, Op::Mark(Slot::A)),
    Step::Op(Slot::B, Op::Trial(Slot::A)),
    Step::Boot,
    Step::Boot,
    Step::Op(Slot::B, Op::Revert(Slot::B)),
];

/// The slot a transition must never boot unless the new state is already in force: the
/// target of mark_unbootable (about to be written) and of set_trial (not yet activated).
fn guarded(step: Step) -> Option<Slot> {
    match step {
        Step::Op(_, Op::Mark(t) | Op::Trial(t)) => Some(t),
        _ => None,
    }
}

/// Checks a state the boot loader may find after a cut: it reads as `old` or `new`, and the
/// boot rule boots a slot that is not marked bad and is not the guarded slot before the new
/// state holds.
fn check_boot_decision(seen: &BootVars, old: &BootVars, new: &BootVars, step: Step, what: &str) {
    assert!(
        seen == old || seen == new,
        "{what}: boot loader reads {seen:?}, neither old {old:?} nor new {new:?}"
    );
    let plan = seen.plan_boot();
    for boot in [plan.boot, seen.fallback_slot()] {
        assert!(
            !seen.is_bad(boot),
            "{what}: boots bad slot {boot} from {seen:?}"
        );
        if let Some(t) = guarded(step)
            && seen != new
        {
            assert_ne!(boot, t, "{what}: boots slot {t} before the change landed");
        }
    }
}

/// Runs the life cycle on the GRUB layout, capturing every file write, and cuts each one at
/// every byte (truncated and in-place models). For every cut state: our reader returns the
/// old or the new state; the boot rule is safe; and, once per distinct situation (which copy
/// rules, what state, which files are missing / invalid / short / non-canonical), the
/// transcription of the snippet and GRUB itself (grub-emu) boot it, agreeing with each other
/// and with the rule.
#[test]
fn grub_power_cut_at_every_byte() {
    grub_power_cuts(false);
}

/// As [`grub_power_cut_at_every_byte`], with the transcription and GRUB itself booting every
/// distinct file content (about 560 situations, two minutes):
/// `cargo test --lib ab:: -- --ignored`.
#[test]
#[ignore = "slow: runs grub-emu about 560 times"]
fn grub_power_cut_at_every_byte_all_by_grub_emu() {
    grub_power_cuts(true);
}

/// `exhaustive`: a situation is the parsed content of every file (duplicates and order
/// included); otherwise only which copy rules, the state, the locks and per file whether it
/// is a valid block, full-sized and canonical.
fn grub_power_cuts(exhaustive: bool) {
    if missing_any(&["grub-editenv"]) {
        return;
    }
    let with_grub = !grub_emu_missing();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("lwm2md");
    let config = |booted| {
        let mut c = GrubConfig::new(dir.clone(), devices(tmp.path()));
        c.booted = BootedSlot::Fixed(booted);
        c
    };
    GrubSlots::new(config(Slot::A), Box::new(SystemRunner))
        .provision(Slot::A)
        .expect("provision");
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("mkdir");
    let mut states = 0usize;
    type Situation = (usize, BootVars, [bool; 2], Vec<Shape>, Vec<[bool; 3]>);
    let mut classes: HashSet<Situation> = HashSet::new();
    let mut grub_runs = 0usize;
    for (n, step) in LIFE.iter().enumerate() {
        let before = Snapshot::read(&dir).expect("read");
        let old = before.vars().expect("old state");
        let (runner, writes) = CapturingRunner::new(None);
        match *step {
            Step::Op(booted, op) => {
                let mut slots = GrubSlots::new(config(booted), Box::new(runner));
                apply(&mut slots, op).unwrap_or_else(|e| panic!("step {n} {step:?}: {e}"));
            }
            Step::Boot => {
                grub::simulate_boot(&config(Slot::A), &runner).expect("boot");
            }
        }
        let new = Snapshot::read(&dir)
            .expect("read")
            .vars()
            .expect("new state");
        let writes: Vec<FileWrite> = writes.lock().expect("writes").clone();
        assert!(
            writes.len() >= 6 || matches!(step, Step::Boot),
            "step {n}: {} writes",
            writes.len()
        );
        let mut base = before.clone();
        for (i, write) in writes.iter().enumerate() {
            for (how, content) in torn_versions(write, &[Tear::Truncate, Tear::Overlay]) {
                let mut cut = base.clone();
                set_file(&mut cut, &write.path, content);
                states += 1;
                let what = format!(
                    "step {n} {step:?}, write {i} ({}), {how}",
                    write.path.display()
                );
                let seen = cut
                    .vars()
                    .unwrap_or_else(|e| panic!("{what}: our reader fails: {e}"));
                assert!(seen == old || seen == new, "{what}: reads {seen:?}");
                let as_grub = cut
                    .vars_as_boot_loader(cut.current_copy())
                    .unwrap_or_else(|| panic!("{what}: GRUB finds no valid state"));
                check_boot_decision(&as_grub, &old, &new, *step, &what);
                // Once per distinct situation: boot it with the transcription and GRUB.
                let fine = shape(&cut);
                let coarse = if exhaustive {
                    Vec::new()
                } else {
                    fine.iter()
                        .map(|(exists, parsed, full, canonical)| {
                            [*exists && parsed.is_some(), *full, *canonical]
                        })
                        .collect()
                };
                let key = (
                    cut.current_copy(),
                    as_grub,
                    [cut.lock_clear(1), cut.lock_clear(2)],
                    if exhaustive { fine } else { Vec::new() },
                    coarse,
                );
                if !classes.insert(key) {
                    continue;
                }
                cut.write_to(&scratch).expect("write scratch");
                let mut c = GrubConfig::new(scratch.clone(), devices(tmp.path()));
                c.booted = BootedSlot::Fixed(Slot::A);
                let slot = grub::simulate_boot(&c, &SystemRunner).expect("transcription");
                let after = Snapshot::read(&scratch).expect("read").vars();
                let after = after.unwrap_or_else(|e| panic!("{what}: after boot: {e}"));
                let plan = as_grub.plan_boot();
                if Some(after) == plan.save {
                    assert_eq!(slot, plan.boot, "{what}");
                } else {
                    assert_eq!(after, as_grub, "{what}: the boot wrote something else");
                    assert_eq!(slot, as_grub.fallback_slot(), "{what}");
                }
                if with_grub {
                    grub_runs += 1;
                    cut.write_to(&scratch).expect("write scratch");
                    let real = grub_emu_boot(&scratch);
                    let real_after = Snapshot::read(&scratch).expect("read").vars();
                    assert_eq!(
                        real.slot, slot,
                        "{what}: GRUB vs transcription\n{}",
                        real.console
                    );
                    assert_eq!(
                        real_after.expect("GRUB leaves a readable state"),
                        after,
                        "{what}: GRUB vs transcription\n{}",
                        real.console
                    );
                }
            }
            set_file(&mut base, &write.path, write.after.clone());
        }
        assert_eq!(
            base,
            Snapshot::read(&dir).expect("read"),
            "step {n}: replay"
        );
    }
    eprintln!(
        "grub power cuts: {states} cut states checked, {} distinct situations booted{}",
        classes.len(),
        if with_grub {
            format!(", {grub_runs} of them by GRUB itself (grub-emu)")
        } else {
            " (grub-emu not installed: transcription only)".to_owned()
        }
    );
}

/// What can matter about a file to GRUB or to our writer: whether it exists, what it parses
/// to (duplicates and order included), whether it is a full block, and whether it is
/// canonical.
type Shape = (bool, Option<Vec<(String, String)>>, bool, bool);

fn shape(s: &Snapshot) -> Vec<Shape> {
    let names = |i: usize| -> Vec<&str> {
        if i < 2 {
            super::vars::VARS.to_vec()
        } else {
            vec![grub::LOCK_VAR]
        }
    };
    [&s.env[0], &s.env[1], &s.lock[0], &s.lock[1]]
        .iter()
        .enumerate()
        .map(|(i, b)| match b {
            None => (false, None, false, false),
            Some(b) => (
                true,
                grub::parse_envblk(b),
                b.len() == grub::ENVBLK_SIZE,
                grub::is_canonical(b, &names(i)),
            ),
        })
        .collect()
}

fn set_file(s: &mut Snapshot, path: &Path, content: Option<Vec<u8>>) {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let slot = match name {
        "env1" => &mut s.env[0],
        "env2" => &mut s.env[1],
        "lock1" => &mut s.lock[0],
        "lock2" => &mut s.lock[1],
        other => panic!("unexpected write to {other}"),
    };
    *slot = content;
}

/// The U-Boot environment: every `fw_setenv` of the life cycle (userspace and boot script),
/// with the first k bytes of the new file laid over the old one for every k. `fw_printenv`
/// and our `state()` must show exactly the old or the new environment, and the boot rule must
/// be safe on what it sees.
#[test]
fn uboot_power_cut_at_every_byte() {
    if missing_any(&["fw_printenv", "fw_setenv", "mkenvimage"]) {
        return;
    }
    let m = UbootMachine::new();
    uboot::simulate_boot(&m.uconfig(Slot::A), &SystemRunner).expect("first boot");
    let scratch_dir = tempfile::tempdir().expect("tempdir");
    let scratch_env = scratch_dir.path().join("env.bin");
    let scratch_cfg = scratch_dir.path().join("fw_env.config");
    std::fs::write(
        &scratch_cfg,
        format!(
            "{0} 0x0000 0x4000\n{0} 0x4000 0x4000\n",
            scratch_env.display()
        ),
    )
    .expect("cfg");
    let mut scratch_config = m.uconfig(Slot::A);
    scratch_config.fw_env_config = scratch_cfg.clone();
    let scratch = UbootSlots::new(scratch_config, Box::new(SystemRunner)).expect("scratch");
    let mut distinct = 0usize;
    for (n, step) in LIFE.iter().enumerate() {
        let old_env = printenv(&m.config);
        let old = BootVars::from_map(&old_env).expect("old");
        let (runner, writes) = CapturingRunner::new(Some(m.env.clone()));
        match *step {
            Step::Op(booted, op) => {
                let mut slots = UbootSlots::new(m.uconfig(booted), Box::new(runner)).expect("new");
                apply(&mut slots, op).unwrap_or_else(|e| panic!("step {n} {step:?}: {e}"));
            }
            Step::Boot => {
                uboot::simulate_boot(&m.uconfig(Slot::A), &runner).expect("boot");
            }
        }
        let new_env = printenv(&m.config);
        let new = BootVars::from_map(&new_env).expect("new");
        let writes = writes.lock().expect("writes").clone();
        let expected_writes = match step {
            Step::Op(..) => 1,
            Step::Boot => usize::from(old.plan_boot().save.is_some()),
        };
        assert_eq!(writes.len(), expected_writes, "step {n}: one transaction");
        for write in &writes {
            // Only the in-place model: libubootenv writes at an offset, never truncates.
            for (how, content) in torn_versions(write, &[Tear::Overlay]) {
                let Some(content) = content else { continue };
                distinct += 1;
                std::fs::write(&scratch_env, &content).expect("write scratch");
                let what = format!("step {n} {step:?}, {how}");
                let env = printenv(&scratch_cfg);
                assert!(
                    env == old_env || env == new_env,
                    "{what}: fw_printenv shows {env:?}"
                );
                let seen = scratch.state().unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(
                    seen == old.state() || seen == new.state(),
                    "{what}: {seen:?}"
                );
                let as_script = BootVars::parse_as_boot_loader(|k| env.get(k).map(String::as_str))
                    .unwrap_or_else(|| panic!("{what}: the script finds no lwm2md_slot"));
                check_boot_decision(&as_script, &old, &new, *step, &what);
            }
        }
    }
    eprintln!("u-boot power cuts: {distinct} distinct cut images checked with fw_printenv");
}

// ---------------------------------------------------------------------------------------------
// U-Boot specifics.
// ---------------------------------------------------------------------------------------------

/// Every change is one `fw_setenv -c CFG -s -` with `name=value` lines, arming / disarming
/// U-Boot's boot counter in the same transaction.
#[test]
fn uboot_writes_one_name_value_transaction() {
    if missing_any(&["fw_printenv", "fw_setenv", "mkenvimage"]) {
        return;
    }
    let m = UbootMachine::new();
    uboot::simulate_boot(&m.uconfig(Slot::A), &SystemRunner).expect("first boot");
    let env = printenv(&m.config);
    assert_eq!(
        env.get("lwm2md_slot").map(String::as_str),
        Some("A"),
        "canary set"
    );
    assert_eq!(env.get("bootlimit").map(String::as_str), Some("1"));
    assert_eq!(
        env.get("altbootcmd").map(String::as_str),
        Some(uboot::ALTBOOTCMD)
    );
    let runner = RecordingRunner::forwarding(SystemRunner);
    let log = runner.log();
    let mut slots = UbootSlots::new(m.uconfig(Slot::A), Box::new(runner)).expect("new");
    slots.mark_unbootable(Slot::B).expect("mark");
    slots.set_trial(Slot::B).expect("trial");
    let sets = log.calls_of("fw_setenv");
    assert_eq!(sets.len(), 2, "one transaction per change");
    for call in &sets {
        assert_eq!(call.args[2..], ["-s", "-"]);
        assert!(call.stdin_text().lines().all(|l| l.contains('=')));
    }
    let env = printenv(&m.config);
    assert_eq!(env.get("upgrade_available").map(String::as_str), Some("1"));
    assert_eq!(env.get("bootcount").map(String::as_str), Some("0"));
    // An empty value deletes: the trial is gone, not "".
    assert_eq!(env.get("lwm2md_trial").map(String::as_str), Some("B"));
    assert_eq!(
        uboot::simulate_boot(&m.uconfig(Slot::A), &SystemRunner).expect("boot"),
        Slot::B
    );
    let mut slots = UbootSlots::new(m.uconfig(Slot::B), Box::new(SystemRunner)).expect("new");
    slots.commit(Slot::B).expect("commit");
    let env = printenv(&m.config);
    assert_eq!(env.get("lwm2md_trial"), None, "deleted by `lwm2md_trial=`");
    assert_eq!(env.get("upgrade_available").map(String::as_str), Some("0"));
    // The board's own variables survive our transactions.
    assert_eq!(
        env.get("bootcmd").map(String::as_str),
        Some("run lwm2md_boot")
    );
}

#[test]
fn uboot_refuses_single_copy_and_unreadable_env() {
    if missing_any(&["fw_printenv", "fw_setenv", "mkenvimage"]) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    // A single copy.
    let single_env = tmp.path().join("single.bin");
    let init = tmp.path().join("single.txt");
    std::fs::write(&init, "lwm2md_slot=A\n").expect("init");
    run_ok(
        "mkenvimage",
        &[
            "-s",
            "0x4000",
            "-o",
            &single_env.display().to_string(),
            &init.display().to_string(),
        ],
    );
    let single_cfg = tmp.path().join("single.config");
    std::fs::write(
        &single_cfg,
        format!("{} 0x0000 0x4000\n", single_env.display()),
    )
    .expect("cfg");
    let mut config = UbootConfig::new(devices(tmp.path()));
    config.fw_env_config = single_cfg;
    config.booted = BootedSlot::Fixed(Slot::A);
    assert!(matches!(
        UbootSlots::new(config.clone(), Box::new(SystemRunner)),
        Err(AbError::NotRedundant)
    ));
    config.allow_single_env = true;
    let mut slots = UbootSlots::new(config, Box::new(SystemRunner)).expect("allowed");
    slots.mark_unbootable(Slot::B).expect("works when allowed");
    assert_eq!(slots.state().expect("state").bootable, [true, false]);

    // Both copies destroyed: every operation refuses and the file is never rewritten.
    let m = UbootMachine::new();
    uboot::simulate_boot(&m.uconfig(Slot::A), &SystemRunner).expect("first boot");
    std::fs::write(&m.env, vec![0u8; 0x8000]).expect("zero");
    let zeroed = m.storage();
    let mut s = UbootSlots::new(m.uconfig(Slot::A), Box::new(SystemRunner)).expect("new");
    for result in [
        s.state().map(|_| ()),
        s.mark_unbootable(Slot::B),
        s.set_trial(Slot::B),
        s.commit(Slot::A),
        s.revert(Slot::A),
    ] {
        let e = result.expect_err("refused");
        assert!(matches!(e, AbError::Corrupt(_)), "{e}");
    }
    assert!(m.storage() == zeroed, "an unreadable env was rewritten");

    // Readable but without the canary (the boot script never ran on it): refused, untouched.
    let m = UbootMachine::new();
    let blank = m.storage();
    let mut s = UbootSlots::new(m.uconfig(Slot::A), Box::new(SystemRunner)).expect("new");
    let e = s.mark_unbootable(Slot::B).expect_err("canary");
    assert!(e.to_string().contains("lwm2md_slot"), "{e}");
    assert!(m.storage() == blank);
}

/// The shipped U-Boot files: the script packages with mkimage, carries the same altbootcmd
/// as the transcription, and the example config is redundant.
#[test]
fn uboot_packaging_files() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("packaging/uboot");
    let script = std::fs::read_to_string(root.join("boot.cmd")).expect("boot.cmd");
    assert!(
        script.contains(uboot::ALTBOOTCMD),
        "boot.cmd and ALTBOOTCMD differ"
    );
    for needle in [
        "lwm2md.slot=${lwm2md_boot}",
        "saveenv",
        "bootlimit",
        "lwm2md_tried",
    ] {
        assert!(script.contains(needle), "boot.cmd lacks {needle}");
    }
    let example = std::fs::read_to_string(root.join("fw_env.config.example")).expect("example");
    assert_eq!(uboot::env_copies(&example), 2);
    if testkit::missing_tool("mkimage") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let scr = tmp.path().join("boot.scr");
    run_ok(
        "mkimage",
        &[
            "-A",
            "arm64",
            "-T",
            "script",
            "-C",
            "none",
            "-n",
            "lwm2md",
            "-d",
            &root.join("boot.cmd").display().to_string(),
            &scr.display().to_string(),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// GRUB specifics.
// ---------------------------------------------------------------------------------------------

#[test]
fn grub_refuses_unprovisioned_and_reprovisioning() {
    if missing_any(&["grub-editenv"]) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("lwm2md");
    let mut config = GrubConfig::new(dir.clone(), devices(tmp.path()));
    config.booted = BootedSlot::Fixed(Slot::A);
    let mut slots = GrubSlots::new(config, Box::new(SystemRunner));
    assert!(matches!(
        slots.mark_unbootable(Slot::B),
        Err(AbError::Corrupt(_))
    ));
    assert!(!dir.exists(), "refusing must not create anything");
    slots.provision(Slot::B).expect("provision");
    assert!(matches!(slots.provision(Slot::A), Err(AbError::Unsafe(_))));
    assert_eq!(slots.state().expect("state"), state(Slot::B, None, BOTH));
    // Each copy is written under its own lock, copy 2 first: 6 grub-editenv calls.
    let runner = RecordingRunner::forwarding(SystemRunner);
    let log = runner.log();
    let mut config = GrubConfig::new(dir.clone(), devices(tmp.path()));
    config.booted = BootedSlot::Fixed(Slot::B);
    let mut slots = GrubSlots::new(config, Box::new(runner));
    slots.mark_unbootable(Slot::A).expect("mark");
    let order: Vec<String> = log
        .calls()
        .iter()
        .map(|c| {
            let file = Path::new(&c.args[0])
                .file_name()
                .map(|f| f.to_string_lossy().into_owned());
            format!("{} {}", file.unwrap_or_default(), c.args[2..].join(" "))
        })
        .collect();
    assert_eq!(
        order,
        [
            "lock2 editing=1",
            "env2 lwm2md_slot=B lwm2md_trial= lwm2md_tried=0 lwm2md_bad_A=1 lwm2md_bad_B=0",
            "lock2 editing=0",
            "lock1 editing=1",
            "env1 lwm2md_slot=B lwm2md_trial= lwm2md_tried=0 lwm2md_bad_A=1 lwm2md_bad_B=0",
            "lock1 editing=0",
        ]
    );
}

/// After a cut while env1 was written (lock1 set, env1 truncated), the reader uses env2 and
/// the next write starts with env1: the copy not in use is always written first.
#[test]
fn grub_write_after_a_cut_starts_with_the_copy_not_in_use() {
    if missing_any(&["grub-editenv"]) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("lwm2md");
    let mut config = GrubConfig::new(dir.clone(), devices(tmp.path()));
    config.booted = BootedSlot::Fixed(Slot::A);
    GrubSlots::new(config.clone(), Box::new(SystemRunner))
        .provision(Slot::A)
        .expect("provision");
    run_ok(
        "grub-editenv",
        &[&dir.join("lock1").display().to_string(), "set", "editing=1"],
    );
    std::fs::write(
        dir.join("env1"),
        b"# GRUB Environment Block\nlwm2md_slot=A\n",
    )
    .expect("cut");
    let snap = Snapshot::read(&dir).expect("read");
    assert_eq!(snap.current_copy(), 2);
    let runner = RecordingRunner::forwarding(SystemRunner);
    let log = runner.log();
    let mut slots = GrubSlots::new(config, Box::new(runner));
    slots.mark_unbootable(Slot::B).expect("mark");
    let files: Vec<String> = log
        .calls()
        .iter()
        .map(|c| {
            let f = Path::new(&c.args[0])
                .file_name()
                .map(|f| f.to_string_lossy().into_owned());
            format!("{} {}", f.unwrap_or_default(), c.args[1])
        })
        .collect();
    assert_eq!(
        files,
        [
            "lock1 set",
            "env1 create",
            "env1 set",
            "lock1 set",
            "lock2 set",
            "env2 set",
            "lock2 set"
        ]
    );
    assert_eq!(slots.state().expect("state").bootable, [true, false]);
}

/// GRUB's boot-time repair, with GRUB itself: a mixed env2 under lock2 is rewritten from env1
/// and lock2 cleared; a copy that does not read back as written (a stale duplicate line that
/// load_env prefers) or that GRUB cannot write (truncated) keeps its lock and stays ignored,
/// until lwm2md's next write recreates it.
#[test]
fn grub_emu_repairs_a_torn_copy() {
    if missing_any(&["grub-editenv"]) || grub_emu_missing() {
        return;
    }
    let m = GrubMachine::new(true);
    let lock2 = m.dir.join("lock2").display().to_string();
    let env_names = super::vars::VARS.to_vec();
    let canonical = std::fs::read(m.dir.join("env2")).expect("env2");
    // The next lwm2md write (whichever it is) recreates the copy from scratch.
    let check_userspace_repairs = |m: &GrubMachine| {
        let mut slots = m.slots(Slot::A);
        if slots.state().expect("state").bootable[1] {
            slots.mark_unbootable(Slot::B).expect("mark");
        } else {
            slots.set_trial(Slot::B).expect("trial");
        }
        let snap = Snapshot::read(&m.dir).expect("read");
        assert!(snap.lock_clear(1) && snap.lock_clear(2));
        assert!(grub::is_canonical(
            snap.env[1].as_deref().unwrap_or_default(),
            &env_names
        ));
        slots.mark_unbootable(Slot::B).expect("no trial left");
    };

    // 1. A mixed block: the start of another block over env2, in place.
    run_ok("grub-editenv", &[&lock2, "set", "editing=1"]);
    let mut mixed = canonical.clone();
    mixed[25..40].copy_from_slice(b"lwm2md_slot=B\n#");
    std::fs::write(m.dir.join("env2"), &mixed).expect("mix");
    assert_eq!(grub_emu_boot(&m.dir).slot, Slot::A);
    let snap = Snapshot::read(&m.dir).expect("read");
    assert!(snap.lock_clear(1) && snap.lock_clear(2), "repaired by GRUB");
    // In place: GRUB changed the first lwm2md_slot line (now A, like the real one after it).
    assert_eq!(snap.vars_as_boot_loader(2), snap.vars_as_boot_loader(1));
    assert!(!grub::is_canonical(
        snap.env[1].as_deref().unwrap_or_default(),
        &env_names
    ));
    check_userspace_repairs(&m);

    // 2. A stale duplicate AFTER the real line: save_env edits the first, load_env reads the
    // last, so the read-back fails and the lock stays set.
    run_ok("grub-editenv", &[&lock2, "set", "editing=1"]);
    let mut stale = std::fs::read(m.dir.join("env2")).expect("env2");
    // Right after the last variable line, over the '#' padding.
    let end = stale.iter().rposition(|&c| c == b'\n').map_or(0, |p| p + 1);
    stale[end..end + 14].copy_from_slice(b"lwm2md_slot=B\n");
    std::fs::write(m.dir.join("env2"), &stale).expect("stale");
    assert_eq!(grub_emu_boot(&m.dir).slot, Slot::A);
    let snap = Snapshot::read(&m.dir).expect("read");
    assert!(
        !snap.lock_clear(2),
        "a copy that does not read back keeps its lock"
    );
    assert_eq!(snap.vars().expect("env1 rules").primary, Slot::A);
    check_userspace_repairs(&m);

    // 3. Truncated to nothing: GRUB cannot write it, the lock stays, env1 keeps ruling.
    run_ok("grub-editenv", &[&lock2, "set", "editing=1"]);
    std::fs::write(m.dir.join("env2"), b"").expect("truncate");
    assert_eq!(grub_emu_boot(&m.dir).slot, Slot::A);
    let snap = Snapshot::read(&m.dir).expect("read");
    assert!(!snap.lock_clear(2));
    assert_eq!(snap.vars().expect("env1").primary, Slot::A);
    check_userspace_repairs(&m);
}

// ---------------------------------------------------------------------------------------------
// Loop devices as slot devices.
// ---------------------------------------------------------------------------------------------

/// Detaches a loop device and unmounts on drop.
struct LoopGuard {
    devices: Vec<String>,
    mounts: Vec<PathBuf>,
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        for m in &self.mounts {
            let _ = SystemRunner.run("umount", &[&m.display().to_string()], None);
        }
        for d in &self.devices {
            let _ = SystemRunner.run("losetup", &["-d", d], None);
        }
    }
}

/// The fake backend with loop devices over its image files as slot devices: an image written
/// through the device lands in the slot file, the update sequence works on it, and detection
/// reads the real device numbers (slot A mounted as "/").
#[test]
fn fake_slots_on_loop_devices() {
    if missing_any(&["losetup", "mke2fs", "mount", "umount"]) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fake");
    let fake = FakeSlots::create(&dir, 4 << 20, Slot::A).expect("create");
    let mut guard = LoopGuard {
        devices: Vec::new(),
        mounts: Vec::new(),
    };
    for name in fake::IMAGE_FILES {
        let out = SystemRunner
            .run(
                "losetup",
                &["--find", "--show", &dir.join(name).display().to_string()],
                None,
            )
            .expect("losetup runs");
        if !out.success() {
            eprintln!(
                "SKIP: losetup cannot attach here: {}",
                out.stderr_text().trim()
            );
            return;
        }
        guard.devices.push(out.stdout_text().trim().to_owned());
    }
    let loops = [
        PathBuf::from(&guard.devices[0]),
        PathBuf::from(&guard.devices[1]),
    ];
    let mut slots = fake.with_devices(loops.clone());
    slots.mark_unbootable(Slot::B).expect("mark");
    // Write "the image" through slot B's device.
    let image: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    {
        use std::io::Write as _;
        let mut dev = std::fs::OpenOptions::new()
            .write(true)
            .open(slots.device(Slot::B))
            .expect("open loop device");
        dev.write_all(&image).expect("write");
        dev.sync_all().expect("sync");
    }
    let file = std::fs::read(dir.join(fake::IMAGE_FILES[1])).expect("slot-b.img");
    assert_eq!(
        &file[..image.len()],
        &image[..],
        "the write reached slot-b.img"
    );
    slots.set_trial(Slot::B).expect("trial");
    assert_eq!(fake::simulate_boot(&dir).expect("boot"), Slot::B);
    slots.commit(Slot::B).expect("commit");
    assert_eq!(slots.state().expect("state").primary, Slot::B);

    // Detection on real block devices: mount slot A and call it "/".
    run_ok("mke2fs", &["-q", "-F", "-t", "ext2", &guard.devices[0]]);
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let out = SystemRunner
        .run(
            "mount",
            &[&guard.devices[0], &mnt.display().to_string()],
            None,
        )
        .expect("mount runs");
    if !out.success() {
        eprintln!(
            "SKIP (detection part): cannot mount here: {}",
            out.stderr_text().trim()
        );
        return;
    }
    guard.mounts.push(mnt.clone());
    let cmdline = tmp.path().join("cmdline");
    let inputs = super::detect::DetectInputs {
        cmdline: cmdline.clone(),
        root: mnt,
        dev_dir: tmp.path().join("dev"),
        sys_dev_block: PathBuf::from("/sys/dev/block"),
        require_root_match: true,
    };
    let devs = [loops[0].as_path(), loops[1].as_path()];
    std::fs::write(&cmdline, "lwm2md.slot=A\n").expect("cmdline");
    assert_eq!(
        super::detect::detect_booted(&inputs, devs).expect("A"),
        Slot::A
    );
    std::fs::write(&cmdline, format!("root={}\n", guard.devices[0])).expect("cmdline");
    assert_eq!(
        super::detect::detect_booted(&inputs, devs).expect("A"),
        Slot::A
    );
    std::fs::write(&cmdline, "lwm2md.slot=B\n").expect("cmdline");
    let e = super::detect::detect_booted(&inputs, devs).expect_err("mismatch");
    assert!(matches!(e, AbError::UnknownBootedSlot(_)), "{e}");
}

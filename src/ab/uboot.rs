//! U-Boot backend: one `fw_setenv -s` transaction per state change on a redundant environment,
//! and the matching boot script (`packaging/uboot/boot.cmd`) with the try-once rule and
//! U-Boot's `bootcount` / `altbootcmd` fallback as a second line of defence.
//!
//! Power safety rests on three things:
//!
//! * **A redundant environment.** libubootenv always writes the copy that is not current, with
//!   a higher flag byte and a CRC, and fsyncs; a reader takes the valid copy with the newer
//!   flag. A cut at any byte of the write leaves the old copy in force (the tests check every
//!   byte boundary with the real tools). With a single copy a torn write makes U-Boot fall back
//!   to its built-in default environment, which is how devices get bricked, so a single-copy
//!   `fw_env.config` is refused unless [`UbootConfig::allow_single_env`] is set.
//! * **One transaction per state change.** All variables of a change go to `fw_setenv -c CFG -s
//!   -` as `name=value` lines on stdin (libubootenv 0.3.2 silently ignores the older `name
//!   value` form, so every write is read back and compared); `name=` deletes a variable.
//! * **Never writing over an environment we cannot read.** Every operation first reads the env
//!   and requires `lwm2md_slot`, which the boot script sets on its first boot (Mender's
//!   canary): without it the env is unreadable, or not the one U-Boot uses, and writing would
//!   replace U-Boot's variables with ours (sbabic/swupdate#5).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::detect::{BootedSlot, DetectInputs};
use super::exec::CommandRunner;
use super::vars::{BootVars, VAR_SLOT, VARS, slot_index};
use super::{AbError, Slot, VarsBackend};

/// Where libubootenv's tools look by default.
pub const DEFAULT_FW_ENV_CONFIG: &str = "/etc/fw_env.config";

/// The `altbootcmd` the boot script installs on first boot (when the board's default env has
/// none): U-Boot runs it instead of `bootcmd` once `bootcount` exceeds `bootlimit`, which
/// happens only if a trial boot hung before even reaching our script's own fallback. It does
/// the same fallback: clear the trial, stop counting, save, boot normally.
pub const ALTBOOTCMD: &str = "setenv lwm2md_trial; setenv lwm2md_tried; setenv upgrade_available 0; setenv bootcount 0; saveenv; run bootcmd";

/// Configuration of the U-Boot backend.
#[derive(Debug, Clone)]
pub struct UbootConfig {
    /// libubootenv configuration naming the env copies (`-c`; default `/etc/fw_env.config`).
    pub fw_env_config: PathBuf,
    /// The `fw_printenv` program.
    pub fw_printenv: String,
    /// The `fw_setenv` program.
    pub fw_setenv: String,
    /// Accept an environment with a single copy (a power cut during a write can then reset
    /// U-Boot to its default environment).
    pub allow_single_env: bool,
    /// The slot devices (A, B).
    pub devices: [PathBuf; 2],
    /// How to find the running slot.
    pub booted: BootedSlot,
}

impl UbootConfig {
    /// The production defaults for the given slot devices: `/etc/fw_env.config`, the tools
    /// from `$PATH`, redundancy required, the running slot detected.
    pub fn new(devices: [PathBuf; 2]) -> Self {
        Self {
            fw_env_config: PathBuf::from(DEFAULT_FW_ENV_CONFIG),
            fw_printenv: "fw_printenv".to_owned(),
            fw_setenv: "fw_setenv".to_owned(),
            allow_single_env: false,
            devices,
            booted: BootedSlot::Detect(DetectInputs::default()),
        }
    }

    fn config_arg(&self) -> String {
        self.fw_env_config.display().to_string()
    }
}

/// The number of environment copies a `fw_env.config` lists (one per non-comment line).
pub fn env_copies(config_text: &str) -> usize {
    config_text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .count()
}

/// Parses `fw_printenv` output (`name=value` lines). A line without `=` continues a multi-line
/// value and is ignored; one of our variables appearing twice means such a continuation looks
/// like our variable, and is refused rather than guessed.
fn parse_printenv(text: &str) -> Result<BTreeMap<String, String>, AbError> {
    let mut vars = BTreeMap::new();
    for line in text.lines() {
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        if vars.insert(name.to_owned(), value.to_owned()).is_some() && VARS.contains(&name) {
            return Err(AbError::Corrupt(format!(
                "fw_printenv shows {name} twice; refusing to guess which is real"
            )));
        }
    }
    Ok(vars)
}

/// Reads the whole environment with `fw_printenv -c CONFIG`. An unreadable environment (both
/// copies with bad CRCs, a missing device) is an error, never an empty map.
pub fn read_env(
    config: &UbootConfig,
    runner: &dyn CommandRunner,
) -> Result<BTreeMap<String, String>, AbError> {
    let cfg = config.config_arg();
    let args = ["-c", cfg.as_str()];
    let out = runner.run(&config.fw_printenv, &args, None)?;
    let stderr = out.stderr_text();
    if stderr.contains("Cannot read environment") {
        return Err(AbError::Corrupt(format!(
            "the U-Boot environment cannot be read ({}); refusing to touch it",
            stderr.trim()
        )));
    }
    let out = out.checked(&config.fw_printenv, &args)?;
    parse_printenv(&out.stdout_text())
}

/// Writes `lines` (`name=value`, empty value = delete) as one `fw_setenv -s -` transaction.
fn setenv(
    config: &UbootConfig,
    runner: &dyn CommandRunner,
    lines: &[(&str, String)],
) -> Result<(), AbError> {
    let script: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    let cfg = config.config_arg();
    let args = ["-c", cfg.as_str(), "-s", "-"];
    runner
        .run(&config.fw_setenv, &args, Some(script.as_bytes()))?
        .checked(&config.fw_setenv, &args)?;
    Ok(())
}

/// The U-Boot-only variables a userspace change writes along with ours, in the same
/// transaction: `upgrade_available=1` and `bootcount=0` arm U-Boot's boot counter for a fresh
/// trial; both go to 0 when no trial is left. U-Boot increments and saves `bootcount` only
/// while `upgrade_available=1`, so steady-state boots stay write-free. (Boards without
/// `CONFIG_BOOTCOUNT_ENV` ignore them.)
fn uboot_extras(new: &BootVars) -> Vec<(&'static str, String)> {
    match (new.trial, new.tried) {
        (None, _) => vec![("upgrade_available", "0".into()), ("bootcount", "0".into())],
        (Some(_), false) => vec![("upgrade_available", "1".into()), ("bootcount", "0".into())],
        // A trial already running: leave U-Boot's counter as it is.
        (Some(_), true) => Vec::new(),
    }
}

/// The U-Boot backend.
pub struct UbootSlots {
    config: UbootConfig,
    runner: Box<dyn CommandRunner>,
}

impl std::fmt::Debug for UbootSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UbootSlots")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl UbootSlots {
    /// Checks the `fw_env.config` (two copies, unless single is allowed) and builds the
    /// backend. Reads nothing else: the environment is read (and the canary checked) by every
    /// operation.
    pub fn new(config: UbootConfig, runner: Box<dyn CommandRunner>) -> Result<Self, AbError> {
        let text =
            std::fs::read_to_string(&config.fw_env_config).map_err(|source| AbError::Io {
                path: config.fw_env_config.display().to_string(),
                source,
            })?;
        match env_copies(&text) {
            2 => {}
            1 if config.allow_single_env => {}
            1 => return Err(AbError::NotRedundant),
            n => {
                return Err(AbError::Corrupt(format!(
                    "{} lists {n} environment copies (expected 2)",
                    config.fw_env_config.display()
                )));
            }
        }
        Ok(Self { config, runner })
    }

    /// The configuration.
    pub fn config(&self) -> &UbootConfig {
        &self.config
    }

    /// Writes the boot state with `primary` as the primary slot, plus the boot counter and
    /// `altbootcmd` the script would add on its first boot, in one transaction (image builds).
    /// Refuses an environment that already holds a valid boot state: provisioning is not a
    /// repair.
    pub fn provision(&self, primary: Slot) -> Result<(), AbError> {
        let env = read_env(&self.config, self.runner.as_ref())?;
        if BootVars::from_map(&env).is_ok() {
            return Err(AbError::Unsafe(format!(
                "{} already holds an lwm2md boot state",
                self.config.fw_env_config.display()
            )));
        }
        let new = BootVars::new(primary);
        let mut lines: Vec<(&str, String)> = new.to_pairs().into();
        lines.extend(uboot_extras(&new));
        if !env.contains_key("bootlimit") {
            lines.push(("bootlimit", "1".into()));
        }
        if !env.contains_key("altbootcmd") {
            lines.push(("altbootcmd", ALTBOOTCMD.into()));
        }
        setenv(&self.config, self.runner.as_ref(), &lines)?;
        match self.load() {
            Ok(now) if now == new => Ok(()),
            other => Err(AbError::Corrupt(format!(
                "fw_setenv succeeded but the environment reads back as {other:?}"
            ))),
        }
    }

    fn load(&self) -> Result<BootVars, AbError> {
        BootVars::from_map(&read_env(&self.config, self.runner.as_ref())?)
    }

    fn change(
        &mut self,
        plan: impl FnOnce(BootVars, Slot) -> Result<BootVars, AbError>,
    ) -> Result<(), AbError> {
        let booted = self.running_slot()?;
        let old = self.load()?;
        let new = plan(old, booted)?;
        if new == old {
            return Ok(());
        }
        let mut lines: Vec<(&str, String)> = new.to_pairs().into();
        lines.extend(uboot_extras(&new));
        setenv(&self.config, self.runner.as_ref(), &lines)?;
        // Read back: a tool that exits 0 without applying the script (as libubootenv does with
        // `name value` lines) must not pass for a committed change.
        let now = self.load()?;
        if now != new {
            return Err(AbError::Corrupt(format!(
                "fw_setenv succeeded but the environment reads back as {now:?}, not {new:?}"
            )));
        }
        Ok(())
    }
}

impl VarsBackend for UbootSlots {
    fn running_slot(&self) -> Result<Slot, AbError> {
        self.config.booted.resolve(&self.config.devices)
    }

    fn vars(&self) -> Result<BootVars, AbError> {
        self.load()
    }

    fn change_vars(
        &mut self,
        plan: impl FnOnce(BootVars, Slot) -> Result<BootVars, AbError>,
    ) -> Result<(), AbError> {
        self.change(plan)
    }

    fn slot_device(&self, slot: Slot) -> &Path {
        &self.config.devices[slot_index(slot)]
    }
}

/// Boots once, as `packaging/uboot/boot.cmd` does, on the environment `config` names (tests and
/// tools; a line-by-line transcription of the script, with `saveenv` as one `fw_setenv -s`):
///
/// 1. no valid `lwm2md_slot` → first boot: `lwm2md_slot=A`, plus `bootlimit=1` and
///    [`ALTBOOTCMD`] when the env has none, saved;
/// 2. the boot rule of [`BootVars::plan_boot`]: a fallback clears the trial (and
///    `upgrade_available` / `bootcount`) and saves; consuming a trial saves `lwm2md_tried=1`
///    and boots the trial only if the save succeeded.
///
/// The environment must be readable (U-Boot would boot its built-in default environment,
/// which is not modelled).
pub fn simulate_boot(config: &UbootConfig, runner: &dyn CommandRunner) -> Result<Slot, AbError> {
    let mut env = read_env(config, runner)?;
    let as_script = |env: &BTreeMap<String, String>| {
        BootVars::parse_as_boot_loader(|n| env.get(n).map(String::as_str))
    };
    if as_script(&env).is_none() {
        let mut first: Vec<(&str, String)> = vec![(VAR_SLOT, "A".into())];
        if !env.contains_key("bootlimit") {
            first.push(("bootlimit", "1".into()));
        }
        if !env.contains_key("altbootcmd") {
            first.push(("altbootcmd", ALTBOOTCMD.into()));
        }
        // A failed saveenv leaves U-Boot's in-memory env set for this boot; the next boot
        // tries again. Either way this boot proceeds on slot A.
        let _ = setenv(config, runner, &first);
        env = read_env(config, runner).unwrap_or_default();
        env.insert(VAR_SLOT.to_owned(), "A".to_owned());
    }
    let Some(vars) = as_script(&env) else {
        return Ok(Slot::A);
    };
    let plan = vars.plan_boot();
    let Some(next) = plan.save else {
        return Ok(plan.boot);
    };
    let mut lines: Vec<(&str, String)> = next.to_pairs().into();
    if next.trial.is_none() {
        lines.push(("upgrade_available", "0".into()));
        lines.push(("bootcount", "0".into()));
    }
    // `if saveenv; then boot the trial; fi`: only the exit status of saveenv is known to the
    // script. Re-reading stands in for it here.
    let saved = setenv(config, runner, &lines).is_ok();
    let reread = if saved {
        read_env(config, runner).ok().and_then(|e| as_script(&e))
    } else {
        Some(vars)
    };
    Ok(vars.boot_after_save(&plan, reread.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ab::BootSlots as _;
    use crate::ab::exec::{Output, RecordingRunner};

    #[test]
    fn config_copies() {
        assert_eq!(
            env_copies("# c\n\n/dev/mtd1 0x0 0x4000 # x\n/dev/mtd2 0 0x4000\n"),
            2
        );
        assert_eq!(env_copies("uboot.env 0x0000 0x4000\n"), 1);
    }

    #[test]
    fn printenv_parsing() {
        let v = parse_printenv("a=1\nbootcmd=x=y\ncontinued line\nlwm2md_slot=A\n").expect("ok");
        assert_eq!(v.get("bootcmd").map(String::as_str), Some("x=y"));
        assert_eq!(v.get("lwm2md_slot").map(String::as_str), Some("A"));
        assert!(parse_printenv("lwm2md_slot=A\nlwm2md_slot=B\n").is_err());
    }

    /// With scripted replies: one read, one `fw_setenv -s -` with `name=value` lines only,
    /// one read-back per change; a tool that "succeeds" without applying is caught.
    #[test]
    fn one_transaction_per_change_with_scripted_tools() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cfg = tmp.path().join("fw_env.config");
        std::fs::write(&cfg, "env 0 0x4000\nenv 0x4000 0x4000\n").expect("cfg");
        let runner = RecordingRunner::replying(|call| {
            if call.program == "fw_setenv" {
                // Exits 0 and applies nothing, like libubootenv given `name value` lines.
                return Ok(Output::ok(""));
            }
            Ok(Output::ok("bootcmd=run x\nlwm2md_slot=A\n"))
        });
        let log = runner.log();
        let mut config = UbootConfig::new(["/dev/a".into(), "/dev/b".into()]);
        config.fw_env_config = cfg;
        config.booted = BootedSlot::Fixed(Slot::A);
        let mut slots = UbootSlots::new(config, Box::new(runner)).expect("new");
        let err = slots.mark_unbootable(Slot::B).expect_err("not applied");
        assert!(err.to_string().contains("reads back"), "{err}");
        let sets = log.calls_of("fw_setenv");
        assert_eq!(sets.len(), 1);
        assert_eq!(
            sets[0].args,
            ["-c", slots.config().config_arg().as_str(), "-s", "-"]
        );
        let script = sets[0].stdin_text();
        assert!(script.lines().all(|l| l.contains('=')), "{script}");
        assert!(script.contains("lwm2md_bad_B=1\n"), "{script}");
        assert_eq!(log.calls_of("fw_printenv").len(), 2);
    }
}

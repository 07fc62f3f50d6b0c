//! GRUB backend: two grubenv copies with lock files, written with `grub-editenv` in an order
//! that survives a power cut at any byte, and the matching `packaging/grub/lwm2md.cfg`.
//!
//! A single grubenv is not power-safe: `grub-editenv` truncates the file and then writes 1024
//! bytes, and GRUB's `save_env` overwrites it in place, so a cut leaves a short or mixed file.
//! Worse, a *short* file whose first line survived is still a valid block to both GRUB and
//! `grub-editenv` (they accept any complete `name=value` lines), just with variables missing:
//! a torn copy can read as an invented state. Hence the layout (Mender's grub-mender-grubenv
//! scheme) in one directory on the boot partition:
//!
//! * `env1`, `env2`: grubenv blocks holding the boot variables (see [`super::vars`]);
//! * `lock1`, `lock2`: grubenv blocks holding `editing=0|1`.
//!
//! **Reader rule** (here and in the GRUB snippet): if `lock2` is not `editing=0`, use `env1`;
//! else if `lock1` is not `editing=0`, use `env2`; else `env1`. A lock that is missing,
//! unreadable, torn or lacks `editing` counts as "being edited": only a lock that positively
//! says 0 vouches for its copy. The copy the rule selects must be valid and carry
//! `lwm2md_slot`, else the state is [`AbError::Corrupt`]: the other copy is never consulted as
//! a guess.
//!
//! **Writer rule**: write the copy the reader does *not* use first, then the one it uses; each
//! copy as `lock=1` → env → `lock=0`, each step one `grub-editenv` call (which fsyncs before
//! it returns, so the steps reach the disk in order). Normally (`lock1`=`lock2`=0, reader on
//! `env1`) that is lock2=1 → env2 → lock2=0 → lock1=1 → env1 → lock1=0. Why any cut is safe:
//!
//! | cut during / after | lock2 | lock1 | reader uses | holds |
//! |---|---|---|---|---|
//! | lock2=1, env2 | ≠0 | 0 | env1 | old (untouched) |
//! | lock2=0 (torn or done) | ≠0 or 0 | 0 | env1 | old (untouched) |
//! | lock1=1, env1 | 0 | ≠0 | env2 | new (complete: lock2=0 was written after it) |
//! | lock1=0 (torn or done) | 0 | ≠0 or 0 | env2 or env1 | new (both complete) |
//!
//! After a cut while `env1` was being written (`lock1`≠0) the reader uses `env2`, so the next
//! writer starts with `env1` (the mirrored order): again the copy not in use. No writer ever has
//! both locks set, so the rule never has to choose between two suspect copies. A copy whose lock
//! stays set is rewritten in full (`grub-editenv create`, then `set`) by the next write, and
//! GRUB repairs it at boot when it can (see the snippet).

use std::path::{Path, PathBuf};

use super::detect::{BootedSlot, DetectInputs};
use super::exec::CommandRunner;
use super::fake::sync_dir;
use super::vars::{BootVars, slot_index};
use super::{AbError, Slot, VarsBackend};

/// The first line of every grubenv block.
pub const SIGNATURE: &[u8] = b"# GRUB Environment Block\n";
/// The size `grub-editenv` gives a new block.
pub const ENVBLK_SIZE: usize = 1024;
/// The env copies' file names (copy 1, copy 2).
pub const ENV_FILES: [&str; 2] = ["env1", "env2"];
/// The lock files' file names (copy 1, copy 2).
pub const LOCK_FILES: [&str; 2] = ["lock1", "lock2"];
/// The variable a lock file holds.
pub const LOCK_VAR: &str = "editing";

/// Parses a grubenv block as GRUB's `load_env` and `grub-editenv list` do: the signature
/// line, then `name=value` lines (backslash escapes a character), `#` lines ignored; parsing
/// stops at the first incomplete line. `None` if it is not a block at all (GRUB: "invalid
/// environment block"): shorter than the signature plus one byte, or another first line.
pub fn parse_envblk(buf: &[u8]) -> Option<Vec<(String, String)>> {
    if buf.len() <= SIGNATURE.len() || !buf.starts_with(SIGNATURE) {
        return None;
    }
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let mut vars = Vec::new();
    let mut p = SIGNATURE.len();
    while p < buf.len() {
        if buf[p] != b'#' {
            // The name runs to the next '=' (even across a newline, as in GRUB).
            let Some(eq) = buf[p..].iter().position(|&c| c == b'=') else {
                break;
            };
            let name = &buf[p..p + eq];
            let mut q = p + eq + 1;
            let mut value = Vec::new();
            let mut complete = false;
            while q < buf.len() {
                match buf[q] {
                    b'\n' => {
                        complete = true;
                        break;
                    }
                    b'\\' => {
                        if let Some(&c) = buf.get(q + 1) {
                            value.push(c);
                        }
                        q += 2;
                    }
                    c => {
                        value.push(c);
                        q += 1;
                    }
                }
            }
            if !complete {
                break;
            }
            vars.push((text(name), text(&value)));
            p = q + 1;
            continue;
        }
        // A comment or padding: skip to the next line (escapes honoured).
        while p < buf.len() {
            match buf[p] {
                b'\\' => p += 2,
                b'\n' => break,
                _ => p += 1,
            }
        }
        p += 1;
    }
    Some(vars)
}

/// The value `load_env` would leave in `name` after loading `buf` (the last occurrence wins).
fn envblk_get(buf: &[u8], name: &str) -> Option<String> {
    parse_envblk(buf)?
        .into_iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

/// The comment line `grub-editenv create` puts under the signature.
const WARNING: &[u8] = b"# WARNING: Do not edit this file by tools other than grub-editenv!!!\n";

/// The block `grub-editenv create` followed by `set` of `vars` (in that order) produces:
/// signature, warning, one line per variable (`\\` and newline escaped), `#` padding to
/// 1024 bytes. `None` if the variables do not fit.
pub fn canonical_block(vars: &[(String, String)]) -> Option<Vec<u8>> {
    let mut b = [SIGNATURE, WARNING].concat();
    for (name, value) in vars {
        b.extend_from_slice(name.as_bytes());
        b.push(b'=');
        for &c in value.as_bytes() {
            if c == b'\\' || c == b'\n' {
                b.push(b'\\');
            }
            b.push(c);
        }
        b.push(b'\n');
    }
    if b.len() > ENVBLK_SIZE {
        return None;
    }
    b.resize(ENVBLK_SIZE, b'#');
    Some(b)
}

/// Whether `buf` is exactly the [`canonical_block`] of its own variables, and those are
/// `names`, each once (in any order). Only such a file is edited in place by lwm2md.
pub fn is_canonical(buf: &[u8], names: &[&str]) -> bool {
    let Some(vars) = parse_envblk(buf) else {
        return false;
    };
    vars.len() == names.len()
        && names
            .iter()
            .all(|n| vars.iter().filter(|(k, _)| k == n).count() == 1)
        && canonical_block(&vars).as_deref() == Some(buf)
}

/// The four files of the env directory as read at one moment (`None`: missing).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Snapshot {
    /// `env1`, `env2`.
    pub env: [Option<Vec<u8>>; 2],
    /// `lock1`, `lock2`.
    pub lock: [Option<Vec<u8>>; 2],
}

/// Copy number `n` (1 or 2) as an index.
fn ix(n: usize) -> usize {
    n - 1
}

impl Snapshot {
    /// Reads the four files of `dir`.
    pub fn read(dir: &Path) -> Result<Self, AbError> {
        let read = |name: &str| {
            let path = dir.join(name);
            match std::fs::read(&path) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(AbError::Io {
                    path: path.display().to_string(),
                    source,
                }),
            }
        };
        Ok(Self {
            env: [read(ENV_FILES[0])?, read(ENV_FILES[1])?],
            lock: [read(LOCK_FILES[0])?, read(LOCK_FILES[1])?],
        })
    }

    /// Whether lock `n` (1 or 2) positively says `editing=0`.
    pub fn lock_clear(&self, n: usize) -> bool {
        self.lock[ix(n)]
            .as_deref()
            .and_then(|b| envblk_get(b, LOCK_VAR))
            .is_some_and(|v| v == "0")
    }

    /// The copy (1 or 2) the reader rule selects.
    pub fn current_copy(&self) -> usize {
        if !self.lock_clear(2) {
            1
        } else if !self.lock_clear(1) {
            2
        } else {
            1
        }
    }

    fn get(&self, n: usize, name: &str) -> Option<String> {
        self.env[ix(n)].as_deref().and_then(|b| envblk_get(b, name))
    }

    /// The boot state, strictly (userspace): the selected copy must be a valid block with a
    /// valid `lwm2md_slot` and valid values, else [`AbError::Corrupt`].
    pub fn vars(&self) -> Result<BootVars, AbError> {
        let n = self.current_copy();
        let Some(env) = self.env[ix(n)].as_deref() else {
            return Err(AbError::Corrupt(format!(
                "{} (selected by the lock files) does not exist: the env directory is not \
                 provisioned",
                ENV_FILES[ix(n)]
            )));
        };
        let Some(vars) = parse_envblk(env) else {
            return Err(AbError::Corrupt(format!(
                "{} (selected by the lock files) is not a grubenv block",
                ENV_FILES[ix(n)]
            )));
        };
        // GRUB's in-place save_env can leave a variable twice in a block mixed by an earlier
        // torn write (it edits the first line, load_env reads the last). Equal values are
        // unambiguous; different ones are refused rather than guessed.
        if let Some(name) = super::vars::VARS.iter().find(|name| {
            let mut values = vars.iter().filter(|(k, _)| k == *name).map(|(_, v)| v);
            values
                .next()
                .is_some_and(|first| values.any(|v| v != first))
        }) {
            return Err(AbError::Corrupt(format!(
                "{} holds {name} twice with different values; refusing to guess",
                ENV_FILES[ix(n)]
            )));
        }
        BootVars::parse(|name| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        })
        .map_err(|e| AbError::Corrupt(format!("{}: {e}", ENV_FILES[ix(n)])))
    }

    /// The boot state as the GRUB snippet reads copy `n` (`None`: `lwm2md_ok=0`).
    pub fn vars_as_boot_loader(&self, n: usize) -> Option<BootVars> {
        let values: Vec<(&str, Option<String>)> = super::vars::VARS
            .iter()
            .map(|name| (*name, self.get(n, name)))
            .collect();
        BootVars::parse_as_boot_loader(|name| {
            values
                .iter()
                .find(|(k, _)| *k == name)
                .and_then(|(_, v)| v.as_deref())
        })
    }

    /// Writes the files into `dir` (missing ones are removed). For tests that build states.
    pub fn write_to(&self, dir: &Path) -> Result<(), AbError> {
        let pairs = [
            (ENV_FILES[0], &self.env[0]),
            (ENV_FILES[1], &self.env[1]),
            (LOCK_FILES[0], &self.lock[0]),
            (LOCK_FILES[1], &self.lock[1]),
        ];
        for (name, content) in pairs {
            let path = dir.join(name);
            let result = match content {
                Some(bytes) => std::fs::write(&path, bytes),
                None => match std::fs::remove_file(&path) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    other => other,
                },
            };
            result.map_err(|source| AbError::Io {
                path: path.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Configuration of the GRUB backend.
#[derive(Debug, Clone)]
pub struct GrubConfig {
    /// The directory holding `env1`, `env2`, `lock1`, `lock2` (on the boot partition, where
    /// GRUB's `save_env` can write in place: ext2/3/4 or FAT, no LVM/RAID/btrfs/ZFS).
    pub env_dir: PathBuf,
    /// The `grub-editenv` program.
    pub grub_editenv: String,
    /// The slot devices (A, B).
    pub devices: [PathBuf; 2],
    /// How to find the running slot.
    pub booted: BootedSlot,
}

impl GrubConfig {
    /// The production defaults: `grub-editenv` from `$PATH`, the running slot detected.
    pub fn new(env_dir: PathBuf, devices: [PathBuf; 2]) -> Self {
        Self {
            env_dir,
            grub_editenv: "grub-editenv".to_owned(),
            devices,
            booted: BootedSlot::Detect(DetectInputs::default()),
        }
    }
}

/// How a file is (re)written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// lwm2md: recreate the file first when it is missing, torn or not a full block.
    Userspace,
    /// GRUB's `save_env`: in place; a missing or invalid file cannot be written.
    BootLoader,
}

struct Writer<'a> {
    config: &'a GrubConfig,
    runner: &'a dyn CommandRunner,
    mode: Mode,
}

impl Writer<'_> {
    fn editenv(&self, path: &Path, command: &[&str]) -> Result<(), AbError> {
        let path = path.display().to_string();
        let args: Vec<&str> = std::iter::once(path.as_str())
            .chain(command.iter().copied())
            .collect();
        self.runner
            .run(&self.config.grub_editenv, &args, None)?
            .checked(&self.config.grub_editenv, &args)?;
        Ok(())
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, AbError> {
        let path = self.config.env_dir.join(name);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AbError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Sets `pairs` in file `name` with one `grub-editenv set` (one truncating write, then
    /// fsync).
    ///
    /// Userspace: unless the file is already exactly the block `grub-editenv` would make for
    /// these variables (see [`is_canonical`]), it is first replaced by a blank one
    /// (`grub-editenv create`: a new file renamed over it; then the directory is fsynced).
    /// `set` alone would keep whatever else a torn or mixed file holds, including a stale
    /// duplicate line that wins on reading. Replacing is safe because the file's lock already
    /// says "being edited" (env files), or because a blank lock reads as "being edited" just
    /// like the torn one it replaces. The result is read back and must be canonical with the
    /// new values.
    ///
    /// Boot loader (GRUB's `save_env`): in place; a missing or invalid file cannot be written.
    fn set(&self, name: &str, pairs: &[(&str, String)]) -> Result<(), AbError> {
        let dir = &self.config.env_dir;
        let path = dir.join(name);
        let names: Vec<&str> = pairs.iter().map(|(k, _)| *k).collect();
        let current = self.read(name)?;
        match self.mode {
            Mode::Userspace => {
                if !current.as_deref().is_some_and(|b| is_canonical(b, &names)) {
                    self.editenv(&path, &["create"])?;
                    sync_dir(dir)?;
                }
            }
            Mode::BootLoader => {
                if current.as_deref().and_then(parse_envblk).is_none() {
                    return Err(AbError::Corrupt(format!(
                        "save_env: {} is not a grubenv block GRUB can write in place",
                        path.display()
                    )));
                }
            }
        }
        let assignments: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut command = vec!["set"];
        command.extend(assignments.iter().map(String::as_str));
        self.editenv(&path, &command)?;
        if self.mode == Mode::Userspace {
            let written = self.read(name)?.unwrap_or_default();
            let expected: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect();
            if parse_envblk(&written).as_ref() != Some(&expected) || !is_canonical(&written, &names)
            {
                return Err(AbError::Corrupt(format!(
                    "{} does not read back as written",
                    path.display()
                )));
            }
        }
        Ok(())
    }

    /// Copy `n`: lock=1, env, read back, lock=0. The lock is cleared only when the copy
    /// reads back (as `load_env` reads it) with exactly the intended values; otherwise it
    /// stays set and readers keep ignoring the copy.
    fn write_copy(&self, n: usize, vars: &BootVars) -> Result<(), AbError> {
        let pairs: Vec<(&str, String)> = vars.to_pairs().into();
        self.set(LOCK_FILES[ix(n)], &[(LOCK_VAR, "1".to_owned())])?;
        self.set(ENV_FILES[ix(n)], &pairs)?;
        let written = self.read(ENV_FILES[ix(n)])?.unwrap_or_default();
        if pairs
            .iter()
            .any(|(k, v)| envblk_get(&written, k).unwrap_or_default() != *v)
        {
            return Err(AbError::Corrupt(format!(
                "{} does not read back as written; its lock stays set",
                ENV_FILES[ix(n)]
            )));
        }
        self.set(LOCK_FILES[ix(n)], &[(LOCK_VAR, "0".to_owned())])
    }

    /// One transaction: the copy not in use first (see the module documentation).
    fn write_state(&self, current_copy: usize, vars: &BootVars) -> Result<(), AbError> {
        let order = if current_copy == 2 { [1, 2] } else { [2, 1] };
        for n in order {
            self.write_copy(n, vars)?;
        }
        Ok(())
    }
}

/// The GRUB backend.
pub struct GrubSlots {
    config: GrubConfig,
    runner: Box<dyn CommandRunner>,
}

impl std::fmt::Debug for GrubSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrubSlots")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl GrubSlots {
    /// The backend over `config.env_dir` (nothing is read until an operation).
    pub fn new(config: GrubConfig, runner: Box<dyn CommandRunner>) -> Self {
        Self { config, runner }
    }

    /// The configuration.
    pub fn config(&self) -> &GrubConfig {
        &self.config
    }

    /// Creates the four files with `primary` as the primary slot (image builds and tests).
    /// Refuses a directory that already holds any of them: provisioning is not a repair.
    pub fn provision(&self, primary: Slot) -> Result<(), AbError> {
        let dir = &self.config.env_dir;
        std::fs::create_dir_all(dir).map_err(|source| AbError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        if let Some(name) = ENV_FILES
            .iter()
            .chain(LOCK_FILES.iter())
            .find(|name| dir.join(name).exists())
        {
            return Err(AbError::Unsafe(format!(
                "{} exists: the env directory is already provisioned",
                dir.join(name).display()
            )));
        }
        // The ordinary transaction from "nothing": until lock2=0 lands the reader selects the
        // missing env1 and reports "not provisioned"; after it, a complete env2.
        let vars = BootVars::new(primary);
        self.writer(Mode::Userspace).write_state(1, &vars)?;
        sync_dir(dir)?;
        let now = Snapshot::read(dir)?;
        if now.vars()? != vars || !now.lock_clear(1) || !now.lock_clear(2) {
            return Err(AbError::Corrupt(format!(
                "{} does not read back as provisioned",
                dir.display()
            )));
        }
        Ok(())
    }

    fn writer(&self, mode: Mode) -> Writer<'_> {
        Writer {
            config: &self.config,
            runner: self.runner.as_ref(),
            mode,
        }
    }

    fn change(
        &mut self,
        plan: impl FnOnce(BootVars, Slot) -> Result<BootVars, AbError>,
    ) -> Result<(), AbError> {
        let booted = self.running_slot()?;
        let snapshot = Snapshot::read(&self.config.env_dir)?;
        let old = snapshot.vars()?;
        let new = plan(old, booted)?;
        if new == old {
            return Ok(());
        }
        self.writer(Mode::Userspace)
            .write_state(snapshot.current_copy(), &new)?;
        let now = Snapshot::read(&self.config.env_dir)?;
        if now.vars()? != new || !now.lock_clear(1) || !now.lock_clear(2) {
            return Err(AbError::Corrupt(format!(
                "grub-editenv succeeded but {} does not read back as {new:?}",
                self.config.env_dir.display()
            )));
        }
        Ok(())
    }
}

impl VarsBackend for GrubSlots {
    fn running_slot(&self) -> Result<Slot, AbError> {
        self.config.booted.resolve(&self.config.devices)
    }

    fn vars(&self) -> Result<BootVars, AbError> {
        Snapshot::read(&self.config.env_dir)?.vars()
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

/// What GRUB's view is after [`lwm2md_load_current`](simulate_boot): the selected copy and its
/// variables (`None`: `lwm2md_ok=0`).
fn load_current(dir: &Path) -> (Snapshot, usize, Option<BootVars>) {
    let snapshot = Snapshot::read(dir).unwrap_or_default();
    let n = snapshot.current_copy();
    let vars = snapshot.vars_as_boot_loader(n);
    (snapshot, n, vars)
}

/// Boots once as `packaging/grub/lwm2md.cfg` does, step by step (a transcription for tests and
/// the demo; the tests run the real snippet in grub-emu and compare). GRUB's `save_env` is
/// modelled by `grub-editenv set` on a file that is already a valid block (the same envblk
/// code, so the same bytes); like GRUB it never creates or recreates a file.
///
/// 1. find the current copy (reader rule);
/// 2. repair: if `lock2`≠0, rewrite copy 2 from the current state (lock, env, read back,
///    clear the lock); else if `lock1`≠0, the same for copy 1;
/// 3. the boot rule: no valid state → slot A, nothing written; a tried trial → clear it
///    (transaction), boot the primary; a pending trial → set tried (transaction), boot it only
///    if re-reading shows it recorded; then never a bad slot while the other is good.
pub fn simulate_boot(config: &GrubConfig, runner: &dyn CommandRunner) -> Result<Slot, AbError> {
    let dir = &config.env_dir;
    let writer = Writer {
        config,
        runner,
        mode: Mode::BootLoader,
    };
    // 1.
    let (snapshot, _, current) = load_current(dir);
    // 2. A failed repair leaves the lock set; the reader rule still holds.
    if let Some(vars) = current {
        if !snapshot.lock_clear(2) {
            let _ = writer.write_copy(2, &vars);
        } else if !snapshot.lock_clear(1) {
            let _ = writer.write_copy(1, &vars);
        }
    }
    let (_, use_copy, current) = load_current(dir);
    // 3.
    let Some(vars) = current else {
        return Ok(Slot::A);
    };
    let boot = match vars.trial {
        Some(_) if vars.tried => {
            let mut next = vars;
            next.trial = None;
            next.tried = false;
            let _ = writer.write_state(use_copy, &next);
            match load_current(dir).2 {
                Some(now) => now.fallback_slot(),
                None => Slot::A,
            }
        }
        Some(trial) if !vars.is_bad(trial) => {
            let mut next = vars;
            next.tried = true;
            let _ = writer.write_state(use_copy, &next);
            match load_current(dir).2 {
                Some(now) if now.trial == Some(trial) && now.tried => {
                    if now.is_bad(trial) && !now.is_bad(trial.other()) {
                        trial.other()
                    } else {
                        trial
                    }
                }
                Some(now) => now.fallback_slot(),
                None => Slot::A,
            }
        }
        _ => vars.fallback_slot(),
    };
    Ok(boot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ab::exec::SystemRunner;

    fn block(lines: &str) -> Vec<u8> {
        let mut b = SIGNATURE.to_vec();
        b.extend_from_slice(lines.as_bytes());
        b.resize(ENVBLK_SIZE, b'#');
        b
    }

    #[test]
    fn envblk_parsing_matches_grub_rules() {
        assert_eq!(parse_envblk(b""), None);
        assert_eq!(
            parse_envblk(SIGNATURE),
            None,
            "the signature alone is too short"
        );
        assert_eq!(parse_envblk(b"# GRUB Environment Block\nx"), Some(vec![]));
        let b = block("a=1\nb=x\\\\y\\\nz\n#c=3\nd=4");
        let v = parse_envblk(&b).expect("valid");
        assert_eq!(
            v,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x\\y\nz".into()),
                // "d=4" runs into the '#' padding without a newline: incomplete, dropped.
            ]
        );
        // A truncated line is dropped, not read as a partial value.
        let b = block("editing=1\n");
        let cut = &b[..SIGNATURE.len() + "editing=".len()];
        assert_eq!(parse_envblk(cut), Some(vec![]));
        assert_eq!(envblk_get(&block("x=1\nx=2\n"), "x").as_deref(), Some("2"));
    }

    #[test]
    fn reader_rule() {
        let env = |s: &str| Some(block(&format!("lwm2md_slot={s}\n")));
        let lock = |v: &str| Some(block(&format!("editing={v}\n")));
        let mut snap = Snapshot {
            env: [env("A"), env("B")],
            lock: [lock("0"), lock("0")],
        };
        assert_eq!(snap.current_copy(), 1);
        snap.lock[1] = lock("1");
        assert_eq!(snap.current_copy(), 1);
        snap.lock[1] = lock("0");
        snap.lock[0] = Some(block(""));
        assert_eq!(
            snap.current_copy(),
            2,
            "a lock without editing= is being edited"
        );
        assert_eq!(snap.vars().expect("env2").primary, Slot::B);
        snap.lock[0] = None;
        assert_eq!(snap.current_copy(), 2);
        snap.env[1] = Some(b"# GRUB Env".to_vec());
        assert!(
            matches!(snap.vars(), Err(AbError::Corrupt(_))),
            "never falls back to env1"
        );
        snap.lock[0] = lock("0");
        snap.env[0] = Some(block("lwm2md_trial=B\n"));
        let e = snap.vars().expect_err("canary").to_string();
        assert!(e.contains("lwm2md_slot"), "{e}");
    }

    /// Our parser agrees with `grub-editenv list` on every prefix of a real block.
    #[test]
    fn parser_agrees_with_grub_editenv_on_every_prefix() {
        if crate::ab::testkit::missing_tool("grub-editenv") {
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("env");
        let p = path.display().to_string();
        let run = |args: &[&str]| SystemRunner.run("grub-editenv", args, None).expect("runs");
        assert!(run(&[&p, "set", "lwm2md_slot=A", "lwm2md_trial=", "x=a\\b"]).success());
        let full = std::fs::read(&path).expect("read");
        assert_eq!(full.len(), ENVBLK_SIZE);
        let cut = tmp.path().join("cut");
        let c = cut.display().to_string();
        let mut last = None;
        for k in 0..=full.len() {
            let prefix = &full[..k];
            let ours = parse_envblk(prefix);
            // The tool is asked wherever our answer changes, at the start, and at a stride.
            if last.as_ref() == Some(&ours) && k > 32 && k % 97 != 0 {
                continue;
            }
            std::fs::write(&cut, prefix).expect("write");
            let out = run(&[&c, "list"]);
            let theirs = out.success().then(|| {
                out.stdout_text()
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .collect::<Vec<_>>()
            });
            assert_eq!(ours, theirs, "prefix of {k} bytes");
            last = Some(ours);
        }
    }
}

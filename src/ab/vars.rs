//! The boot variables every backend stores, the four userspace operations as pure plans, and
//! the boot rule the boot loaders apply.
//!
//! Every backend stores the same five variables (U-Boot env, two grubenv copies, or the fake's
//! JSON file):
//!
//! | Variable | Values | Meaning |
//! |---|---|---|
//! | `lwm2md_slot` | `A` / `B` | the primary slot; its presence is the canary that the env is ours |
//! | `lwm2md_trial` | `A` / `B` / empty | a slot to boot once |
//! | `lwm2md_tried` | `1` / `0` (or absent) | the boot loader has started the trial boot |
//! | `lwm2md_bad_A`, `lwm2md_bad_B` | `1` / `0` (or absent) | the slot must not boot |
//!
//! Userspace operations are computed here in memory ([`BootVars::mark_unbootable`] …) and
//! written by the backend in **one** atomic write (architecture rule 4: load → plan → one
//! write). The boot rule ([`BootVars::plan_boot`]) is the single Rust statement of what
//! `packaging/grub/lwm2md.cfg` and `packaging/uboot/boot.cmd` do; the fake applies it directly,
//! the GRUB snippet is checked against it by running GRUB itself (grub-emu) in the tests.

use std::collections::BTreeMap;

use super::{AbError, BootState, Slot};

/// The primary slot (`A`/`B`).
pub const VAR_SLOT: &str = "lwm2md_slot";
/// The slot to try once, or empty.
pub const VAR_TRIAL: &str = "lwm2md_trial";
/// `1` once the boot loader started the trial boot.
pub const VAR_TRIED: &str = "lwm2md_tried";
/// `1` when slot A must not boot.
pub const VAR_BAD_A: &str = "lwm2md_bad_A";
/// `1` when slot B must not boot.
pub const VAR_BAD_B: &str = "lwm2md_bad_B";
/// All five variables, in the order they are written.
pub const VARS: [&str; 5] = [VAR_SLOT, VAR_TRIAL, VAR_TRIED, VAR_BAD_A, VAR_BAD_B];

/// The boot state as stored by a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BootVars {
    /// `lwm2md_slot`: booted when no trial is pending.
    pub primary: Slot,
    /// `lwm2md_trial`: the slot to boot once.
    pub trial: Option<Slot>,
    /// `lwm2md_tried`: the boot loader consumed the trial (the trial boot started).
    pub tried: bool,
    /// `lwm2md_bad_A`, `lwm2md_bad_B`: the slot must not boot.
    pub bad: [bool; 2],
}

/// What the boot loader does at one boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootPlan {
    /// The state to save before booting (`None`: a steady-state boot, nothing is written).
    pub save: Option<BootVars>,
    /// The slot to boot once `save` (if any) has landed.
    pub boot: Slot,
}

/// 0 for slot A, 1 for slot B (the index into per-slot arrays).
pub(crate) fn slot_index(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

/// Exactly `A` or `B`: the boot scripts compare exact strings, so userspace must not be more
/// lenient than they are.
fn exact_slot(text: &str) -> Option<Slot> {
    match text {
        "A" => Some(Slot::A),
        "B" => Some(Slot::B),
        _ => None,
    }
}

fn flag(name: &str, value: Option<&str>) -> Result<bool, AbError> {
    match value {
        None | Some("" | "0") => Ok(false),
        Some("1") => Ok(true),
        Some(other) => Err(AbError::Corrupt(format!(
            "{name}={other:?} (expected 0 or 1)"
        ))),
    }
}

impl BootVars {
    /// A fresh state: `primary` boots, no trial, both slots bootable (what an image build
    /// provisions and what the U-Boot script sets on its first boot).
    pub fn new(primary: Slot) -> Self {
        Self {
            primary,
            trial: None,
            tried: false,
            bad: [false; 2],
        }
    }

    /// Whether `slot` is marked bad.
    pub fn is_bad(&self, slot: Slot) -> bool {
        self.bad[slot_index(slot)]
    }

    fn set_bad(&mut self, slot: Slot, bad: bool) {
        self.bad[slot_index(slot)] = bad;
    }

    /// Parses the variables strictly, as userspace must: `lwm2md_slot` must be present and be
    /// `A` or `B` (its absence means the boot loader never ran our script, or the env is not
    /// the one the boot loader uses; refusing is the canary), and every other value must be
    /// one lwm2md writes. Nothing is guessed.
    pub fn parse<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Self, AbError> {
        let primary = match get(VAR_SLOT) {
            None => {
                return Err(AbError::Corrupt(format!(
                    "{VAR_SLOT} is not set: the boot loader has not run the lwm2md boot script \
                     on this environment (or it is not the environment the boot loader reads)"
                )));
            }
            Some(text) => exact_slot(text).ok_or_else(|| {
                AbError::Corrupt(format!("{VAR_SLOT}={text:?} (expected A or B)"))
            })?,
        };
        let trial = match get(VAR_TRIAL) {
            None | Some("") => None,
            Some(text) => Some(exact_slot(text).ok_or_else(|| {
                AbError::Corrupt(format!("{VAR_TRIAL}={text:?} (expected A, B or empty)"))
            })?),
        };
        Ok(Self {
            primary,
            trial,
            tried: flag(VAR_TRIED, get(VAR_TRIED))?,
            bad: [
                flag(VAR_BAD_A, get(VAR_BAD_A))?,
                flag(VAR_BAD_B, get(VAR_BAD_B))?,
            ],
        })
    }

    /// [`parse`](Self::parse) over a map of variables.
    pub fn from_map(vars: &BTreeMap<String, String>) -> Result<Self, AbError> {
        Self::parse(|name| vars.get(name).map(String::as_str))
    }

    /// Reads the variables the way the boot scripts do: only `lwm2md_slot` must be valid
    /// (`None` otherwise: the scripts then boot slot A and write nothing); a trial other than
    /// `A`/`B` is no trial, and a flag is set only when it is exactly `1`.
    pub fn parse_as_boot_loader<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<Self> {
        let primary = exact_slot(get(VAR_SLOT)?)?;
        let is_one = |name| get(name) == Some("1");
        Some(Self {
            primary,
            trial: get(VAR_TRIAL).and_then(exact_slot),
            tried: is_one(VAR_TRIED),
            bad: [is_one(VAR_BAD_A), is_one(VAR_BAD_B)],
        })
    }

    /// The variables with explicit values (`lwm2md_trial` empty when there is none, flags
    /// `0`/`1`), in [`VARS`] order. An empty value deletes the variable in `fw_setenv -s`,
    /// which reads back the same.
    pub fn to_pairs(&self) -> [(&'static str, String); 5] {
        let flag = |b: bool| if b { "1" } else { "0" }.to_owned();
        [
            (VAR_SLOT, self.primary.name().to_owned()),
            (
                VAR_TRIAL,
                self.trial.map(|s| s.name().to_owned()).unwrap_or_default(),
            ),
            (VAR_TRIED, flag(self.tried)),
            (VAR_BAD_A, flag(self.bad[0])),
            (VAR_BAD_B, flag(self.bad[1])),
        ]
    }

    /// The public view.
    pub fn state(&self) -> BootState {
        BootState {
            primary: self.primary,
            trial: self.trial,
            bootable: [!self.bad[0], !self.bad[1]],
        }
    }

    /// Plan: make `target` unbootable before it is written.
    ///
    /// Refuses the running slot, and refuses while the running system is an uncommitted trial
    /// or is itself marked bad: either would leave no slot known to boot. The result has
    /// `target` bad, the running slot primary, and no trial of `target`.
    pub fn mark_unbootable(self, booted: Slot, target: Slot) -> Result<Self, AbError> {
        if target == booted {
            return Err(AbError::RunningSlot("mark unbootable"));
        }
        if self.trial == Some(booted) {
            return Err(AbError::Unsafe(format!(
                "slot {target} is the fallback of the uncommitted trial of slot {booted}; \
                 commit or revert the trial first"
            )));
        }
        if self.is_bad(booted) {
            return Err(AbError::Unsafe(format!(
                "the running slot {booted} is marked bad; marking slot {target} too would \
                 leave no bootable slot"
            )));
        }
        let mut next = self;
        next.set_bad(target, true);
        // The running slot is the only one left that is known to boot.
        next.primary = booted;
        if next.trial == Some(target) {
            next.trial = None;
            next.tried = false;
        }
        Ok(next)
    }

    /// Plan: boot `target` once at the next boot (and make it bootable: its image has been
    /// written and verified). The fallback is the running slot, so this is only allowed while
    /// the running slot is the committed, bootable primary.
    pub fn set_trial(self, booted: Slot, target: Slot) -> Result<Self, AbError> {
        if target == booted {
            return Err(AbError::RunningSlot("set a trial boot of"));
        }
        if self.primary != booted || self.is_bad(booted) || self.trial == Some(booted) {
            return Err(AbError::Unsafe(format!(
                "slot {booted} is running but is not the committed primary (primary \
                 {}, trial {:?}, bad {:?}); commit or revert first",
                self.primary, self.trial, self.bad
            )));
        }
        let mut next = self;
        next.trial = Some(target);
        next.tried = false;
        next.set_bad(target, false);
        Ok(next)
    }

    /// Plan: the running slot `slot` is healthy; make it the primary and end any trial. The
    /// other slot keeps its flag (it stays a fallback unless it was marked bad).
    pub fn commit(self, booted: Slot, slot: Slot) -> Result<Self, AbError> {
        if slot != booted {
            return Err(AbError::Unsafe(format!(
                "only the running slot can be committed (slot {booted} is running, not {slot})"
            )));
        }
        let mut next = self;
        next.primary = slot;
        next.trial = None;
        next.tried = false;
        next.set_bad(slot, false);
        Ok(next)
    }

    /// Plan: make `to` the primary again and the other slot unbootable (a failed trial, or a
    /// rollback ordered by the server). Refuses a `to` marked bad unless it is running: a
    /// bad slot that is not running may be half-written.
    pub fn revert(self, booted: Slot, to: Slot) -> Result<Self, AbError> {
        if self.is_bad(to) && to != booted {
            return Err(AbError::Unsafe(format!(
                "slot {to} is marked bad (it may be half-written); cannot revert to it"
            )));
        }
        let mut next = self;
        next.primary = to;
        next.trial = None;
        next.tried = false;
        next.set_bad(to, false);
        next.set_bad(to.other(), true);
        Ok(next)
    }

    /// The slot the boot loader boots when it does not (or cannot) take the trial: the
    /// primary, unless it is marked bad and the other slot is not ("never neither": with both
    /// marked bad, a state lwm2md refuses to create, the primary still boots).
    pub fn fallback_slot(&self) -> Slot {
        let primary = self.primary;
        if self.is_bad(primary) && !self.is_bad(primary.other()) {
            primary.other()
        } else {
            primary
        }
    }

    /// The boot rule, exactly as the boot scripts apply it:
    ///
    /// 1. trial set and not tried, trial slot not bad → save `tried=1`, then boot the trial
    ///    (if the save does not land, the scripts boot [`fallback_slot`](Self::fallback_slot)
    ///    instead: booting an untried slot without the record could repeat forever);
    /// 2. trial set and already tried (the trial boot never committed: hang, crash, power
    ///    cut, failed health gate) → save the trial cleared, boot the fallback slot;
    /// 3. otherwise (no trial, or a trial slot marked bad) → boot the fallback slot, write
    ///    nothing.
    pub fn plan_boot(&self) -> BootPlan {
        match self.trial {
            Some(_) if self.tried => {
                let mut next = *self;
                next.trial = None;
                next.tried = false;
                BootPlan {
                    save: Some(next),
                    boot: next.fallback_slot(),
                }
            }
            Some(trial) if !self.is_bad(trial) => {
                let mut next = *self;
                next.tried = true;
                BootPlan {
                    save: Some(next),
                    boot: trial,
                }
            }
            _ => BootPlan {
                save: None,
                boot: self.fallback_slot(),
            },
        }
    }

    /// The slot the scripts boot after attempting `plan.save`, given the state read back
    /// afterwards (`None` when it cannot be read). The trial is booted only if the read-back
    /// state shows it recorded as tried; otherwise whatever the read-back (or, failing that,
    /// the original) state falls back to.
    pub fn boot_after_save(&self, plan: &BootPlan, reread: Option<&Self>) -> Slot {
        let Some(saved) = plan.save else {
            return plan.boot;
        };
        match reread {
            Some(now) if *now == saved => plan.boot,
            Some(now) => now.fallback_slot(),
            None => self.fallback_slot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parse_is_strict_and_round_trips() {
        let v = BootVars::from_map(&vars(&[("lwm2md_slot", "B")])).expect("minimal");
        assert_eq!(v, BootVars::new(Slot::B));
        for bad in [
            vec![],
            vec![("lwm2md_slot", "a")],
            vec![("lwm2md_slot", "A"), ("lwm2md_trial", "C")],
            vec![("lwm2md_slot", "A"), ("lwm2md_tried", "yes")],
            vec![("lwm2md_slot", "A"), ("lwm2md_bad_B", "2")],
        ] {
            assert!(
                matches!(BootVars::from_map(&vars(&bad)), Err(AbError::Corrupt(_))),
                "{bad:?}"
            );
        }
        let full = BootVars {
            primary: Slot::A,
            trial: Some(Slot::B),
            tried: true,
            bad: [false, true],
        };
        let map: BTreeMap<String, String> = full
            .to_pairs()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(BootVars::from_map(&map).expect("round trip"), full);
    }

    #[test]
    fn boot_loader_parse_is_lenient_like_the_scripts() {
        let get = |m: &BTreeMap<String, String>| {
            BootVars::parse_as_boot_loader(|n| m.get(n).map(String::as_str))
        };
        assert_eq!(get(&vars(&[])), None);
        assert_eq!(get(&vars(&[("lwm2md_slot", "b")])), None);
        let v = get(&vars(&[
            ("lwm2md_slot", "A"),
            ("lwm2md_trial", "x"),
            ("lwm2md_tried", "2"),
            ("lwm2md_bad_B", "yes"),
        ]));
        assert_eq!(v, Some(BootVars::new(Slot::A)));
    }

    #[test]
    fn operations_follow_the_update_procedure() {
        let s = BootVars::new(Slot::A);
        assert!(matches!(
            s.mark_unbootable(Slot::A, Slot::A),
            Err(AbError::RunningSlot(_))
        ));
        let s = s.mark_unbootable(Slot::A, Slot::B).expect("mark");
        assert_eq!(s.bad, [false, true]);
        let s = s.set_trial(Slot::A, Slot::B).expect("trial");
        assert_eq!(
            (s.trial, s.tried, s.bad),
            (Some(Slot::B), false, [false, false])
        );
        let plan = s.plan_boot();
        assert_eq!(plan.boot, Slot::B);
        let s = plan.save.expect("the trial is recorded before it boots");
        assert!(s.tried);
        // Running the uncommitted trial: the old slot is the fallback and cannot be marked.
        assert!(matches!(
            s.mark_unbootable(Slot::B, Slot::A),
            Err(AbError::Unsafe(_))
        ));
        assert!(matches!(
            s.commit(Slot::B, Slot::A),
            Err(AbError::Unsafe(_))
        ));
        let c = s.commit(Slot::B, Slot::B).expect("commit");
        assert_eq!(c, BootVars::new(Slot::B));
        assert_eq!(
            c.plan_boot(),
            BootPlan {
                save: None,
                boot: Slot::B
            }
        );
        // Or: the trial is not committed and the next boot falls back.
        let plan = s.plan_boot();
        assert_eq!(plan.boot, Slot::A);
        assert_eq!(plan.save, Some(BootVars::new(Slot::A)));
        // Revert from the running trial marks it bad.
        let r = s.revert(Slot::B, Slot::A).expect("revert");
        assert_eq!((r.primary, r.trial, r.bad), (Slot::A, None, [false, true]));
        // A slot marked bad may be reverted to only while it runs (it is whole then).
        assert!(r.revert(Slot::B, Slot::B).is_ok());
        assert!(matches!(
            r.revert(Slot::A, Slot::B),
            Err(AbError::Unsafe(_))
        ));
        assert!(matches!(
            r.mark_unbootable(Slot::B, Slot::A),
            Err(AbError::Unsafe(_))
        ));
    }

    #[test]
    fn boot_rule_never_boots_a_bad_slot_when_the_other_is_good() {
        for primary in [Slot::A, Slot::B] {
            for trial in [None, Some(Slot::A), Some(Slot::B)] {
                for tried in [false, true] {
                    for bad in [[false, false], [true, false], [false, true], [true, true]] {
                        let v = BootVars {
                            primary,
                            trial,
                            tried,
                            bad,
                        };
                        let plan = v.plan_boot();
                        let after = plan.save.unwrap_or(v);
                        if bad != [true, true] {
                            assert!(!after.is_bad(plan.boot), "{v:?} -> {plan:?}");
                        }
                        // A save never changes the primary or the flags.
                        assert_eq!((after.primary, after.bad), (primary, bad));
                        // Failed saves fall back, never to a bad slot either.
                        let failed = v.boot_after_save(&plan, Some(&v));
                        if bad != [true, true] {
                            assert!(!v.is_bad(failed));
                        }
                        // Applying the plan twice ends in a steady state.
                        let second = after.plan_boot();
                        let third = second.save.unwrap_or(after).plan_boot();
                        assert_eq!(third.save, None, "{v:?}");
                    }
                }
            }
        }
    }
}

//! Object 1, LwM2M Server: per-server registration parameters (lifetime, binding, default
//! periods, disable timeout, notification storing and mode) and the Disable / Registration Update
//! Trigger executables. The core reads these values to drive registration and notifications.
//!
//! Server writes survive restarts. Each persisted value remembers the configured value it replaced:
//! if the operator later changes the configuration, the new configured value wins.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::lwm2m::error::Error;
use crate::core::lwm2m::value::{ExecArg, ResourceValue, Value};
use crate::core::object::{CoreAction, Ctx, Instances, Object};
use crate::model::ObjectMeta;

/// One Server instance's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerAccount {
    /// /1/x/0 Short Server ID.
    pub ssid: u16,
    /// /1/x/1 registration lifetime, seconds.
    pub lifetime: u32,
    /// /1/x/2 default minimum period, seconds.
    pub default_pmin: u32,
    /// /1/x/3 default maximum period, seconds (absent when unset).
    pub default_pmax: Option<u32>,
    /// /1/x/5 disable timeout, seconds.
    pub disable_timeout: u32,
    /// /1/x/6 store notifications while offline or disabled.
    pub notification_storing: bool,
    /// /1/x/7 binding letters.
    pub binding: String,
    /// /1/x/26 default notification mode: false NON, true CON.
    pub confirmable_notifications: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    /// The configured settings this instance started from.
    configured: ServerAccount,
    /// The settings in force (configured, then changed by the server).
    current: ServerAccount,
}

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    format: u32,
    instances: BTreeMap<u16, Entry>,
    /// The instances came from a Bootstrap-Server: restore them all, whatever is configured.
    #[serde(default)]
    bootstrapped: bool,
}

/// The Server object.
#[derive(Debug, Default)]
pub struct Server {
    entries: BTreeMap<u16, Entry>,
    bootstrapped: bool,
}

impl Server {
    /// One instance per configured account, numbered from 0 in order.
    pub fn new(accounts: Vec<ServerAccount>) -> Self {
        let entries = accounts
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                (
                    i as u16,
                    Entry {
                        configured: a.clone(),
                        current: a,
                    },
                )
            })
            .collect();
        Self {
            entries,
            bootstrapped: false,
        }
    }

    /// The settings in force, by instance id.
    pub fn accounts(&self) -> impl Iterator<Item = (u16, &ServerAccount)> {
        self.entries.iter().map(|(i, e)| (*i, &e.current))
    }
}

/// Valid binding letters in LwM2M 1.1 (U UDP, T TCP, S SMS, N non-IP, Q queue mode).
fn check_binding(b: &str) -> Result<(), Error> {
    if b.is_empty() || !b.chars().all(|c| matches!(c, 'U' | 'T' | 'S' | 'N' | 'Q')) {
        return Err(Error::bad(format!(
            "binding {b:?} has letters outside U, T, S, N, Q"
        )));
    }
    // Only UDP is implemented: accepting a binding without U would cut the server off.
    if !b.contains('U') {
        return Err(Error::bad(format!(
            "binding {b:?} does not include U, the only transport supported"
        )));
    }
    Ok(())
}

fn non_negative(v: i64, what: &str) -> Result<u32, Error> {
    u32::try_from(v).map_err(|_| Error::bad(format!("{what} must be between 0 and {}", u32::MAX)))
}

/// Builds an account from what a Bootstrap-Server wrote to `/1/{iid}`; optional resources it
/// left out take their defaults (Core E.2), resources this client does not implement are ignored.
fn account_of(iid: u16, res: &BTreeMap<u16, ResourceValue>) -> Result<ServerAccount, String> {
    let get = |rid: u16| match res.get(&rid) {
        Some(ResourceValue::Single(v)) => Some(v.clone()),
        _ => None,
    };
    let int = |rid: u16, what: &str| -> Result<Option<u32>, String> {
        match get(rid) {
            None => Ok(None),
            Some(Value::Integer(v)) => non_negative(v, what)
                .map(Some)
                .map_err(|e| format!("/1/{iid}/{rid}: {e}")),
            Some(other) => Err(format!(
                "/1/{iid}/{rid}: {what} has the wrong type ({other})"
            )),
        }
    };
    let missing = |rid: u16, what: &str| format!("/1/{iid}/{rid} ({what}) is missing");
    let ssid = int(0, "short server id")?
        .and_then(|v| u16::try_from(v).ok())
        .filter(|v| (1..=65534).contains(v))
        .ok_or_else(|| missing(0, "a Short Server ID from 1 to 65534"))?;
    let lifetime = int(1, "lifetime")?
        .filter(|&lt| lt > 0)
        .ok_or_else(|| missing(1, "a lifetime of at least 1 s"))?;
    let binding = match get(7) {
        Some(Value::String(b)) => {
            check_binding(&b).map_err(|e| format!("/1/{iid}/7: {e}"))?;
            b
        }
        _ => return Err(missing(7, "Binding")),
    };
    Ok(ServerAccount {
        ssid,
        lifetime,
        default_pmin: int(2, "default pmin")?.unwrap_or(0),
        default_pmax: int(3, "default pmax")?,
        disable_timeout: int(5, "disable timeout")?.unwrap_or(86400),
        notification_storing: !matches!(get(6), Some(Value::Boolean(false))),
        binding,
        confirmable_notifications: matches!(get(26), Some(Value::Integer(1))),
    })
}

impl Object for Server {
    fn meta(&self) -> &'static ObjectMeta {
        crate::model::object(1).expect("object 1 is in the shipped model")
    }

    fn instances(&self) -> Vec<u16> {
        self.entries.keys().copied().collect()
    }

    fn resources(&self, instance: u16) -> Vec<u16> {
        match self.entries.get(&instance) {
            Some(e) if e.current.default_pmax.is_some() => vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 26],
            Some(_) => vec![0, 1, 2, 4, 5, 6, 7, 8, 9, 26],
            None => Vec::new(),
        }
    }

    fn read(
        &mut self,
        _ctx: &mut Ctx<'_>,
        instance: u16,
        resource: u16,
    ) -> Result<ResourceValue, Error> {
        let a = &self.entries.get(&instance).ok_or(Error::NotFound)?.current;
        let v = match resource {
            0 => Value::Integer(i64::from(a.ssid)),
            1 => Value::Integer(i64::from(a.lifetime)),
            2 => Value::Integer(i64::from(a.default_pmin)),
            3 => Value::Integer(i64::from(a.default_pmax.ok_or(Error::NotFound)?)),
            5 => Value::Integer(i64::from(a.disable_timeout)),
            6 => Value::Boolean(a.notification_storing),
            7 => Value::String(a.binding.clone()),
            26 => Value::Integer(i64::from(a.confirmable_notifications)),
            _ => return Err(Error::NotFound),
        };
        Ok(ResourceValue::Single(v))
    }

    fn write(
        &mut self,
        ctx: &mut Ctx<'_>,
        instance: u16,
        resource: u16,
        value: ResourceValue,
    ) -> Result<(), Error> {
        let entry = self.entries.get_mut(&instance).ok_or(Error::NotFound)?;
        let a = &mut entry.current;
        let ResourceValue::Single(v) = value else {
            return Err(Error::bad("single-instance resource"));
        };
        let mut registration_changed = false;
        match (resource, v) {
            (1, Value::Integer(v)) => {
                let lt = non_negative(v, "lifetime")?;
                if lt == 0 {
                    return Err(Error::bad("lifetime must be at least 1 s"));
                }
                registration_changed = lt != a.lifetime;
                a.lifetime = lt;
            }
            (2, Value::Integer(v)) => a.default_pmin = non_negative(v, "default pmin")?,
            (3, Value::Integer(v)) => a.default_pmax = Some(non_negative(v, "default pmax")?),
            (5, Value::Integer(v)) => a.disable_timeout = non_negative(v, "disable timeout")?,
            (6, Value::Boolean(b)) => a.notification_storing = b,
            (7, Value::String(b)) => {
                check_binding(&b)?;
                registration_changed = b != a.binding;
                a.binding = b;
            }
            (26, Value::Integer(m)) => {
                a.confirmable_notifications = match m {
                    0 => false,
                    1 => true,
                    _ => return Err(Error::bad("notification mode must be 0 (NON) or 1 (CON)")),
                }
            }
            _ => return Err(Error::not_allowed("resource is not writable")),
        }
        if registration_changed {
            ctx.action(CoreAction::RegistrationParamsChanged { ssid: a.ssid });
        }
        ctx.persist();
        Ok(())
    }

    /// A replace-Write that leaves an optional resource out returns it to its configured value.
    fn reset(&mut self, ctx: &mut Ctx<'_>, instance: u16, resource: u16) -> Result<(), Error> {
        let entry = self.entries.get_mut(&instance).ok_or(Error::NotFound)?;
        let (cfg, cur) = (&entry.configured, &mut entry.current);
        match resource {
            2 => cur.default_pmin = cfg.default_pmin,
            3 => cur.default_pmax = cfg.default_pmax,
            5 => cur.disable_timeout = cfg.disable_timeout,
            26 => cur.confirmable_notifications = cfg.confirmable_notifications,
            _ => return Ok(()),
        }
        ctx.persist();
        Ok(())
    }

    fn execute(
        &mut self,
        ctx: &mut Ctx<'_>,
        instance: u16,
        resource: u16,
        args: &[ExecArg],
    ) -> Result<(), Error> {
        let ssid = self
            .entries
            .get(&instance)
            .ok_or(Error::NotFound)?
            .current
            .ssid;
        match resource {
            4 => {
                if !args.is_empty() {
                    return Err(Error::bad("Disable takes no arguments"));
                }
                ctx.action(CoreAction::Disable { ssid });
            }
            8 => {
                // 1.1 allows `0='U'` naming the transport for the Update; U is all we have.
                if let Some(bad) = args
                    .iter()
                    .find(|a| a.id != 0 || a.value.as_deref().is_some_and(|v| v != "U"))
                {
                    return Err(Error::bad(format!(
                        "unsupported Registration Update Trigger argument {}",
                        bad.id
                    )));
                }
                ctx.action(CoreAction::TriggerUpdate { ssid });
            }
            9 => {
                if !args.is_empty() {
                    return Err(Error::bad("Bootstrap-Request Trigger takes no arguments"));
                }
                ctx.action(CoreAction::RequestBootstrap);
            }
            _ => return Err(Error::not_allowed("resource is not executable")),
        }
        Ok(())
    }

    fn bootstrap_install(
        &mut self,
        ctx: &mut Ctx<'_>,
        instances: &Instances,
        commit: bool,
    ) -> Result<(), String> {
        let mut entries = BTreeMap::new();
        for (iid, res) in instances {
            let a = account_of(*iid, res)?;
            if entries.values().any(|e: &Entry| e.current.ssid == a.ssid) {
                return Err(format!("two /1 instances for Short Server ID {}", a.ssid));
            }
            entries.insert(
                *iid,
                Entry {
                    configured: a.clone(),
                    current: a,
                },
            );
        }
        if commit {
            self.entries = entries;
            self.bootstrapped = true;
            ctx.persist();
        }
        Ok(())
    }

    fn save_state(&self) -> Option<serde_json::Value> {
        let saved = Saved {
            format: 1,
            instances: self.entries.clone(),
            bootstrapped: self.bootstrapped,
        };
        serde_json::to_value(saved).ok()
    }

    fn restore_state(&mut self, state: serde_json::Value) -> Result<(), String> {
        let saved: Saved = super::saved_state(state, "server", 1)?;
        if saved.bootstrapped {
            self.entries = saved.instances;
            self.bootstrapped = true;
            return Ok(());
        }
        for (iid, old) in saved.instances {
            let Some(entry) = self.entries.get_mut(&iid) else {
                continue;
            };
            // Server changes apply only while the configuration they were made over is unchanged.
            if old.configured == entry.configured && old.current.ssid == entry.configured.ssid {
                entry.current = old.current;
            } else {
                log::info!(
                    "server {}: configuration changed since the last run; configured values win",
                    entry.configured.ssid
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::core::object::CtxOutput;

    fn account() -> ServerAccount {
        ServerAccount {
            ssid: 7,
            lifetime: 300,
            default_pmin: 0,
            default_pmax: None,
            disable_timeout: 86400,
            notification_storing: true,
            binding: "U".into(),
            confirmable_notifications: false,
        }
    }

    fn call<T>(f: impl FnOnce(&mut Ctx<'_>) -> T) -> (T, CtxOutput) {
        let mut out = CtxOutput::default();
        let t = {
            let mut ctx = Ctx {
                now: crate::host::test_instant(),
                unix_time: 0,
                server: Some(7),
                out: &mut out,
            };
            f(&mut ctx)
        };
        (t, out)
    }

    #[test]
    fn lifetime_write_asks_for_an_update_and_persists() {
        let mut s = Server::new(vec![account()]);
        let (r, out) = call(|c| s.write(c, 0, 1, ResourceValue::Single(Value::Integer(20))));
        assert_eq!(r, Ok(()));
        assert_eq!(
            out.actions,
            vec![CoreAction::RegistrationParamsChanged { ssid: 7 }]
        );
        assert!(out.persist);
        let (r, out) = call(|c| s.write(c, 0, 1, ResourceValue::Single(Value::Integer(20))));
        assert_eq!(r, Ok(()));
        assert!(out.actions.is_empty(), "same lifetime: no update");
        let (r, _) = call(|c| s.write(c, 0, 1, ResourceValue::Single(Value::Integer(0))));
        assert!(r.is_err());
    }

    #[test]
    fn binding_must_keep_udp() {
        let mut s = Server::new(vec![account()]);
        for bad in ["T", "", "UX", "u"] {
            let (r, _) =
                call(|c| s.write(c, 0, 7, ResourceValue::Single(Value::String(bad.into()))));
            assert!(r.is_err(), "{bad}");
        }
        let (r, out) =
            call(|c| s.write(c, 0, 7, ResourceValue::Single(Value::String("UQ".into()))));
        assert_eq!(r, Ok(()));
        assert_eq!(out.actions.len(), 1);
    }

    #[test]
    fn executes_map_to_core_actions() {
        let mut s = Server::new(vec![account()]);
        let (r, out) = call(|c| s.execute(c, 0, 4, &[]));
        assert_eq!(r, Ok(()));
        assert_eq!(out.actions, vec![CoreAction::Disable { ssid: 7 }]);
        let (r, out) = call(|c| {
            s.execute(
                c,
                0,
                8,
                &[ExecArg {
                    id: 0,
                    value: Some("U".into()),
                }],
            )
        });
        assert_eq!(r, Ok(()));
        assert_eq!(out.actions, vec![CoreAction::TriggerUpdate { ssid: 7 }]);
        let (r, _) = call(|c| {
            s.execute(
                c,
                0,
                8,
                &[ExecArg {
                    id: 0,
                    value: Some("T".into()),
                }],
            )
        });
        assert!(r.is_err());
    }

    #[test]
    fn restore_keeps_server_writes_unless_configuration_changed() {
        let mut s = Server::new(vec![account()]);
        let _ = call(|c| s.write(c, 0, 1, ResourceValue::Single(Value::Integer(20))));
        let state = s.save_state().expect("state");
        let mut again = Server::new(vec![account()]);
        again.restore_state(state.clone()).expect("restore");
        assert_eq!(again.accounts().next().map(|(_, a)| a.lifetime), Some(20));
        let mut changed = account();
        changed.lifetime = 600;
        let mut reconfigured = Server::new(vec![changed]);
        reconfigured.restore_state(state).expect("restore");
        assert_eq!(
            reconfigured.accounts().next().map(|(_, a)| a.lifetime),
            Some(600)
        );
        assert!(
            reconfigured
                .restore_state(serde_json::json!({"format": 9, "instances": {}}))
                .is_err()
        );
    }

    #[test]
    fn reset_returns_to_configured_values() {
        let mut s = Server::new(vec![account()]);
        let _ = call(|c| s.write(c, 0, 3, ResourceValue::Single(Value::Integer(50))));
        assert!(s.resources(0).contains(&3));
        let _ = call(|c| s.reset(c, 0, 3));
        assert!(!s.resources(0).contains(&3));
    }
}

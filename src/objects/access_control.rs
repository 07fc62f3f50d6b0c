//! Object 2, LwM2M Access Control: which server may do what on which object instance. The
//! instances are plain data; the core evaluates them before serving a request (see
//! `core::client::access`), because only the core knows which server is asking.
//!
//! Instances come from the Bootstrap-Server (or are created by the core when a server creates an
//! object instance); a server may change the ACL and owner of instances it owns. All of it
//! survives restarts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::lwm2m::error::Error;
use crate::core::lwm2m::value::{Record, ResourceValue, Value};
use crate::core::object::{Ctx, Instances, Object};
use crate::model::ObjectMeta;

/// Every access right: Read, Write, Execute, Delete, Create (Core §E.3: bits 0 to 4).
pub const ALL_RIGHTS: i64 = 0b1_1111;

/// One Access Control instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclEntry {
    /// /2/x/0 the object the rights apply to.
    pub object_id: u16,
    /// /2/x/1 its instance; 65535 = the object itself (only the Create right is meaningful).
    pub instance_id: u16,
    /// /2/x/2 rights by Short Server ID; id 0 holds the default for servers not listed.
    pub acl: BTreeMap<u16, i64>,
    /// /2/x/3 the server that may change this instance; 65535 = only the Bootstrap-Server.
    pub owner: u16,
}

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    format: u32,
    instances: BTreeMap<u16, AclEntry>,
}

/// The Access Control object.
#[derive(Debug, Default)]
pub struct AccessControl {
    instances: BTreeMap<u16, AclEntry>,
}

impl AccessControl {
    /// An Access Control object with these instances.
    pub fn new(instances: BTreeMap<u16, AclEntry>) -> Self {
        Self { instances }
    }
}

fn u16_value(v: &Value, what: &str) -> Result<u16, String> {
    match v {
        Value::Integer(i) => u16::try_from(*i).map_err(|_| format!("{what} {i} is out of range")),
        Value::Unsigned(u) => u16::try_from(*u).map_err(|_| format!("{what} {u} is out of range")),
        other => Err(format!("{what} has the wrong type ({other})")),
    }
}

fn rights(ssid: u16, v: &Value) -> Result<i64, String> {
    match v {
        Value::Integer(r) if (0..=ALL_RIGHTS).contains(r) => Ok(*r),
        other => Err(format!(
            "ACL entry for server {ssid} must be a bit mask from 0 to {ALL_RIGHTS}, found {other}"
        )),
    }
}

fn acl_of(map: &BTreeMap<u16, Value>) -> Result<BTreeMap<u16, i64>, String> {
    map.iter()
        .map(|(ssid, v)| Ok((*ssid, rights(*ssid, v)?)))
        .collect()
}

/// Builds an entry from resource values (Bootstrap-Write or Create).
fn entry_of(iid: u16, resources: &BTreeMap<u16, ResourceValue>) -> Result<AclEntry, String> {
    let single = |rid: u16, what: &str| match resources.get(&rid) {
        Some(ResourceValue::Single(v)) => u16_value(v, what),
        _ => Err(format!("/2/{iid}: {what} (/2/{iid}/{rid}) is missing")),
    };
    let acl = match resources.get(&2) {
        Some(ResourceValue::Multiple(map)) => acl_of(map)?,
        Some(ResourceValue::Single(_)) => return Err(format!("/2/{iid}/2 must be multi-instance")),
        None => BTreeMap::new(),
    };
    Ok(AclEntry {
        object_id: single(0, "Object ID")?,
        instance_id: single(1, "Object Instance ID")?,
        acl,
        owner: single(3, "Access Control Owner")?,
    })
}

impl Object for AccessControl {
    fn meta(&self) -> &'static ObjectMeta {
        crate::model::object(2).expect("object 2 is in the shipped model")
    }

    fn instances(&self) -> Vec<u16> {
        self.instances.keys().copied().collect()
    }

    fn resources(&self, instance: u16) -> Vec<u16> {
        if self.instances.contains_key(&instance) {
            vec![0, 1, 2, 3]
        } else {
            Vec::new()
        }
    }

    fn read(
        &mut self,
        _ctx: &mut Ctx<'_>,
        instance: u16,
        resource: u16,
    ) -> Result<ResourceValue, Error> {
        let e = self.instances.get(&instance).ok_or(Error::NotFound)?;
        Ok(match resource {
            0 => ResourceValue::Single(Value::Integer(i64::from(e.object_id))),
            1 => ResourceValue::Single(Value::Integer(i64::from(e.instance_id))),
            2 => ResourceValue::Multiple(
                e.acl
                    .iter()
                    .map(|(s, r)| (*s, Value::Integer(*r)))
                    .collect(),
            ),
            3 => ResourceValue::Single(Value::Integer(i64::from(e.owner))),
            _ => return Err(Error::NotFound),
        })
    }

    /// Only the owner gets here (the core checks); ACL and owner are the writable resources.
    fn write(
        &mut self,
        ctx: &mut Ctx<'_>,
        instance: u16,
        resource: u16,
        value: ResourceValue,
    ) -> Result<(), Error> {
        let e = self.instances.get_mut(&instance).ok_or(Error::NotFound)?;
        match (resource, value) {
            (2, ResourceValue::Multiple(map)) => e.acl = acl_of(&map).map_err(Error::BadRequest)?,
            (3, ResourceValue::Single(v)) => {
                e.owner = u16_value(&v, "Access Control Owner").map_err(Error::BadRequest)?
            }
            _ => return Err(Error::not_allowed("resource is not writable")),
        }
        ctx.persist();
        Ok(())
    }

    /// Only the core creates instances (for an instance a server created); servers cannot.
    fn create(
        &mut self,
        ctx: &mut Ctx<'_>,
        instance: u16,
        records: &[Record],
    ) -> Result<(), Error> {
        if ctx.server.is_some() {
            return Err(Error::Unauthorized);
        }
        let mut resources: BTreeMap<u16, ResourceValue> = BTreeMap::new();
        for r in records {
            if let Some(rid) = r.path.resource_id() {
                resources.insert(rid, ResourceValue::Single(r.value.clone()));
            }
        }
        let entry = entry_of(instance, &resources).map_err(Error::BadRequest)?;
        self.instances.insert(instance, entry);
        ctx.persist();
        Ok(())
    }

    fn delete(&mut self, ctx: &mut Ctx<'_>, instance: u16) -> Result<(), Error> {
        if ctx.server.is_some() {
            return Err(Error::Unauthorized);
        }
        self.instances.remove(&instance).ok_or(Error::NotFound)?;
        ctx.persist();
        Ok(())
    }

    fn bootstrap_install(
        &mut self,
        ctx: &mut Ctx<'_>,
        instances: &Instances,
        commit: bool,
    ) -> Result<(), String> {
        let entries = instances
            .iter()
            .map(|(iid, res)| Ok((*iid, entry_of(*iid, res)?)))
            .collect::<Result<BTreeMap<_, _>, String>>()?;
        if commit {
            self.instances = entries;
            ctx.persist();
        }
        Ok(())
    }

    fn save_state(&self) -> Option<serde_json::Value> {
        serde_json::to_value(Saved {
            format: 1,
            instances: self.instances.clone(),
        })
        .ok()
    }

    fn restore_state(&mut self, state: serde_json::Value) -> Result<(), String> {
        let saved: Saved = super::saved_state(state, "access control", 1)?;
        self.instances = saved.instances;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::object::CtxOutput;

    fn call<T>(server: Option<u16>, f: impl FnOnce(&mut Ctx<'_>) -> T) -> (T, CtxOutput) {
        let mut out = CtxOutput::default();
        let t = {
            let mut ctx = Ctx {
                now: crate::host::test_instant(),
                unix_time: 0,
                server,
                out: &mut out,
            };
            f(&mut ctx)
        };
        (t, out)
    }

    fn instance(acl: &[(u16, i64)]) -> BTreeMap<u16, ResourceValue> {
        BTreeMap::from([
            (0, ResourceValue::Single(Value::Integer(3))),
            (1, ResourceValue::Single(Value::Integer(0))),
            (
                2,
                ResourceValue::Multiple(
                    acl.iter().map(|(s, r)| (*s, Value::Integer(*r))).collect(),
                ),
            ),
            (3, ResourceValue::Single(Value::Integer(1))),
        ])
    }

    #[test]
    fn bootstrap_check_changes_nothing_and_commit_installs() {
        let mut ac = AccessControl::default();
        let set = Instances::from([(0, instance(&[(1, 7), (2, 1)]))]);
        let (r, _) = call(None, |c| ac.bootstrap_install(c, &set, false));
        assert_eq!(r, Ok(()));
        assert!(ac.instances().is_empty());
        let (r, out) = call(None, |c| ac.bootstrap_install(c, &set, true));
        assert_eq!(r, Ok(()));
        assert!(out.persist);
        let (v, _) = call(None, |c| ac.read(c, 0, 2));
        assert_eq!(
            v,
            Ok(ResourceValue::Multiple(BTreeMap::from([
                (1, Value::Integer(7)),
                (2, Value::Integer(1))
            ])))
        );
    }

    #[test]
    fn bad_instances_are_refused_with_the_reason() {
        let mut ac = AccessControl::default();
        let mut missing_owner = instance(&[]);
        missing_owner.remove(&3);
        let (r, _) = call(None, |c| {
            ac.bootstrap_install(c, &Instances::from([(4, missing_owner)]), true)
        });
        assert!(r.unwrap_err().contains("/2/4/3"));
        let (r, _) = call(None, |c| {
            ac.bootstrap_install(c, &Instances::from([(0, instance(&[(1, 64)]))]), true)
        });
        assert!(r.unwrap_err().contains("bit mask"));
        assert!(ac.instances().is_empty());
    }

    #[test]
    fn servers_cannot_create_or_delete_but_state_round_trips() {
        let mut ac = AccessControl::default();
        let (r, _) = call(Some(1), |c| ac.create(c, 0, &[]));
        assert_eq!(r, Err(Error::Unauthorized));
        let (_, _) = call(None, |c| {
            ac.bootstrap_install(c, &Instances::from([(0, instance(&[(2, 1)]))]), true)
        });
        let (r, _) = call(Some(1), |c| ac.delete(c, 0));
        assert_eq!(r, Err(Error::Unauthorized));
        let (r, _) = call(Some(1), |c| {
            ac.write(c, 0, 3, ResourceValue::Single(Value::Integer(2)))
        });
        assert_eq!(r, Ok(()));
        let mut again = AccessControl::default();
        again
            .restore_state(ac.save_state().expect("state"))
            .expect("restore");
        assert_eq!(again.instances, ac.instances);
    }
}

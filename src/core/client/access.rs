//! Access Control enforcement (Core §7.3.3, object 2): with more than one server account, every
//! operation of a server on an object instance needs the matching right in that instance's
//! Access Control instance. With a single server there are no checks.
//!
//! Rules, for server `s` and object instance `/O/I`:
//! * the Access Control instance for (O, I): its ACL entry for `s`; else, when the ACL is empty
//!   and `s` owns the instance, every right but Create; else the default entry (ACL id 0);
//! * no Access Control instance ("default owner rules"): a server may read, write and execute its
//!   own /1 instance; every other instance belongs to the default owner, the server with the
//!   lowest Short Server ID, which has every right but Create; other servers have none;
//! * Create on object O: the Create right in the instance for (O, 65535), else the default owner;
//! * object 2 itself: everyone reads, only an instance's owner writes it, nobody creates or
//!   deletes (the client manages those instances).
//!
//! Discover and Write-Attributes are not governed by ACLs (Core: they carry no data).

use std::collections::BTreeMap;
use std::time::Instant;

use super::Client;
use crate::core::lwm2m::error::Error;
use crate::core::lwm2m::path::Path;
use crate::core::lwm2m::value::{Record, ResourceValue, Value};

/// An access right (ACL bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Right {
    /// Read, Observe.
    Read = 1,
    /// Write.
    Write = 2,
    /// Execute.
    Execute = 4,
    /// Delete.
    Delete = 8,
    /// Create.
    Create = 16,
}

const ALL_BUT_CREATE: i64 = 1 | 2 | 4 | 8;
/// Object Instance ID 65535: an Access Control instance about the object (Create).
const OBJECT_ITSELF: u16 = u16::MAX;

/// One Access Control instance, as read from object 2.
#[derive(Debug, Clone)]
struct AclInstance {
    iid: u16,
    object_id: u16,
    instance_id: u16,
    acl: BTreeMap<u16, i64>,
    owner: u16,
}

impl Client {
    /// ACLs apply only with object 2 and more than one server account.
    fn acl_applies(&self) -> bool {
        self.registry.get(2).is_some() && self.servers.len() > 1
    }

    fn acl_instances(&mut self, now: Instant) -> Vec<AclInstance> {
        let (list, _) = self.with_ctx(now, None, |reg, ctx| {
            let Some(object) = reg.get_mut(2) else {
                return Vec::new();
            };
            let mut out = Vec::new();
            for iid in object.instances() {
                let mut int = |rid| match object.read(ctx, iid, rid) {
                    Ok(ResourceValue::Single(Value::Integer(v))) => u16::try_from(v).ok(),
                    _ => None,
                };
                let (Some(object_id), Some(instance_id), Some(owner)) = (int(0), int(1), int(3))
                else {
                    continue;
                };
                let acl = match object.read(ctx, iid, 2) {
                    Ok(ResourceValue::Multiple(map)) => map
                        .into_iter()
                        .filter_map(|(s, v)| match v {
                            Value::Integer(r) => Some((s, r)),
                            _ => None,
                        })
                        .collect(),
                    _ => BTreeMap::new(),
                };
                out.push(AclInstance {
                    iid,
                    object_id,
                    instance_id,
                    acl,
                    owner,
                });
            }
            out
        });
        list
    }

    /// The server that owns instances without an Access Control instance.
    fn default_owner(&self) -> Option<u16> {
        self.servers.keys().next().copied()
    }

    /// The rights of `ssid` on `/oid/iid` (`iid` 65535: the object itself).
    fn rights(&mut self, now: Instant, ssid: u16, oid: u16, iid: u16) -> i64 {
        let acls = self.acl_instances(now);
        if let Some(inst) = acls
            .iter()
            .find(|a| a.object_id == oid && a.instance_id == iid)
        {
            if let Some(r) = inst.acl.get(&ssid) {
                return *r;
            }
            if inst.acl.is_empty() && inst.owner == ssid {
                return ALL_BUT_CREATE;
            }
            return inst.acl.get(&0).copied().unwrap_or(0);
        }
        if oid == 1 && iid != OBJECT_ITSELF && self.server_instance_ssid(now, iid) == Some(ssid) {
            return Right::Read as i64 | Right::Write as i64 | Right::Execute as i64;
        }
        if oid == 1 && iid != OBJECT_ITSELF {
            return 0;
        }
        if self.default_owner() == Some(ssid) {
            if iid == OBJECT_ITSELF {
                Right::Create as i64
            } else {
                ALL_BUT_CREATE
            }
        } else {
            0
        }
    }

    fn server_instance_ssid(&mut self, now: Instant, iid: u16) -> Option<u16> {
        let (v, _) = self.with_ctx(now, None, |reg, ctx| {
            match reg.get_mut(1)?.read(ctx, iid, 0) {
                Ok(ResourceValue::Single(Value::Integer(s))) => u16::try_from(s).ok(),
                _ => None,
            }
        });
        v
    }

    /// Whether `ssid` may do `right` on `/oid/iid` (`iid` `None`: the object, for Create).
    pub(super) fn may(
        &mut self,
        now: Instant,
        ssid: u16,
        right: Right,
        oid: u16,
        iid: Option<u16>,
    ) -> bool {
        if !self.acl_applies() {
            return true;
        }
        if oid == 2 {
            return match (right, iid) {
                (Right::Read, _) => true,
                (Right::Write, Some(iid)) => self
                    .acl_instances(now)
                    .iter()
                    .any(|a| a.iid == iid && a.owner == ssid),
                _ => false,
            };
        }
        let target = if right == Right::Create {
            OBJECT_ITSELF
        } else {
            match iid {
                Some(i) => i,
                None => return true,
            }
        };
        self.rights(now, ssid, oid, target) & right as i64 != 0
    }

    /// 4.01 unless `ssid` may do `right` on the instance `path` names (object-level reads are
    /// filtered instead, see `readable_records`).
    pub(super) fn check_access(
        &mut self,
        now: Instant,
        ssid: u16,
        right: Right,
        path: &Path,
    ) -> Result<(), Error> {
        let Some(oid) = path.object_id() else {
            return Ok(());
        };
        if self.may(now, ssid, right, oid, path.instance_id()) {
            Ok(())
        } else {
            log::info!("server {ssid}: {right:?} on {path} denied by access control");
            Err(Error::Unauthorized)
        }
    }

    /// Keeps the records `ssid` may read.
    pub(super) fn readable_records(
        &mut self,
        now: Instant,
        ssid: u16,
        records: Vec<Record>,
    ) -> Vec<Record> {
        if !self.acl_applies() {
            return records;
        }
        let mut verdicts: BTreeMap<(u16, u16), bool> = BTreeMap::new();
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let (Some(oid), Some(iid)) = (r.path.object_id(), r.path.instance_id()) else {
                continue;
            };
            let ok = match verdicts.get(&(oid, iid)) {
                Some(v) => *v,
                None => {
                    let v = self.may(now, ssid, Right::Read, oid, Some(iid));
                    verdicts.insert((oid, iid), v);
                    v
                }
            };
            if ok {
                out.push(r);
            }
        }
        out
    }

    /// A server created `/oid/iid`: with several servers it gets an Access Control instance
    /// owned by its creator (whose empty ACL gives it every right but Create).
    pub(super) fn acl_for_new_instance(&mut self, now: Instant, ssid: u16, oid: u16, iid: u16) {
        if !self.acl_applies() || oid == 2 {
            return;
        }
        let (result, out) = self.with_ctx(now, None, |reg, ctx| {
            let Some(object) = reg.get_mut(2) else {
                return Ok(());
            };
            let existing = object.instances();
            let Some(free) = (0..u16::MAX).find(|i| !existing.contains(i)) else {
                return Err(Error::Internal("no free Access Control instance id".into()));
            };
            let records = [
                Record::new(Path::resource(2, free, 0), Value::Integer(i64::from(oid))),
                Record::new(Path::resource(2, free, 1), Value::Integer(i64::from(iid))),
                Record::new(Path::resource(2, free, 3), Value::Integer(i64::from(ssid))),
            ];
            object.create(ctx, free, &records)
        });
        self.absorb(now, 2, out);
        if let Err(e) = result {
            log::warn!("no Access Control instance for /{oid}/{iid}: {e}");
        }
    }

    /// `/oid/iid` was deleted: its Access Control instances go too.
    pub(super) fn acl_for_deleted_instance(&mut self, now: Instant, oid: u16, iid: u16) {
        if oid == 2 {
            return;
        }
        let doomed: Vec<u16> = self
            .acl_instances(now)
            .into_iter()
            .filter(|a| a.object_id == oid && a.instance_id == iid)
            .map(|a| a.iid)
            .collect();
        for ac in doomed {
            let (_, out) = self.with_ctx(now, None, |reg, ctx| {
                reg.get_mut(2).map(|o| o.delete(ctx, ac))
            });
            self.absorb(now, 2, out);
        }
    }
}

//! The account objects (0 Security, 1 Server, 2 Access Control) as the Bootstrap-Server sees them
//! during a bootstrap: a copy that Bootstrap-Write and Bootstrap-Delete change freely, installed
//! into the live objects only by a Bootstrap-Finish whose configuration is consistent. Until then
//! the accounts in use stay untouched, so a bootstrap that breaks off changes nothing.

use std::collections::BTreeMap;

use crate::core::lwm2m::error::Error;
use crate::core::lwm2m::value::{Record, ResourceValue};
use crate::core::object::{Ctx, Instances, Object, Registry};
use crate::model::ObjectMeta;

/// The objects a bootstrap stages.
pub(super) const STAGED_OBJECTS: [u16; 3] = [0, 1, 2];

/// One staged object: plain resource values, no behaviour.
#[derive(Debug)]
pub(super) struct Staged {
    meta: &'static ObjectMeta,
    instances: Instances,
}

/// A staging registry holding a copy of the live account objects' instances.
pub(super) fn snapshot(live: &mut Registry, ctx: &mut Ctx<'_>) -> Registry {
    let mut staging = Registry::new();
    for oid in STAGED_OBJECTS {
        let Some(object) = live.get_mut(oid) else {
            continue;
        };
        let instances = instances_of(object, ctx);
        staging.insert(Box::new(Staged {
            meta: object.meta(),
            instances,
        }));
    }
    staging
}

impl Object for Staged {
    fn meta(&self) -> &'static ObjectMeta {
        self.meta
    }

    fn instances(&self) -> Vec<u16> {
        self.instances.keys().copied().collect()
    }

    /// The resources written so far.
    fn resources(&self, instance: u16) -> Vec<u16> {
        self.instances
            .get(&instance)
            .map(|r| r.keys().copied().collect())
            .unwrap_or_default()
    }

    fn read(
        &mut self,
        _ctx: &mut Ctx<'_>,
        instance: u16,
        resource: u16,
    ) -> Result<ResourceValue, Error> {
        self.instances
            .get(&instance)
            .and_then(|r| r.get(&resource))
            .cloned()
            .ok_or(Error::NotFound)
    }

    fn write(
        &mut self,
        _ctx: &mut Ctx<'_>,
        instance: u16,
        resource: u16,
        value: ResourceValue,
    ) -> Result<(), Error> {
        self.instances
            .get_mut(&instance)
            .ok_or(Error::NotFound)?
            .insert(resource, value);
        Ok(())
    }

    fn reset(&mut self, _ctx: &mut Ctx<'_>, instance: u16, resource: u16) -> Result<(), Error> {
        if let Some(r) = self.instances.get_mut(&instance) {
            r.remove(&resource);
        }
        Ok(())
    }

    /// Creates an empty instance (values follow as writes).
    fn create(
        &mut self,
        _ctx: &mut Ctx<'_>,
        instance: u16,
        _records: &[Record],
    ) -> Result<(), Error> {
        self.instances.entry(instance).or_default();
        Ok(())
    }

    fn delete(&mut self, _ctx: &mut Ctx<'_>, instance: u16) -> Result<(), Error> {
        self.instances.remove(&instance);
        Ok(())
    }
}

/// Every instance of `object` with its readable and writable values (executables carry none).
pub(super) fn instances_of(object: &mut dyn Object, ctx: &mut Ctx<'_>) -> Instances {
    let mut out = Instances::new();
    for iid in object.instances() {
        let mut resources = BTreeMap::new();
        for rid in object.resources(iid) {
            if object
                .meta()
                .resource(rid)
                .is_some_and(|m| m.operations.execute)
            {
                continue;
            }
            if let Ok(v) = object.read(ctx, iid, rid) {
                resources.insert(rid, v);
            }
        }
        out.insert(iid, resources);
    }
    out
}

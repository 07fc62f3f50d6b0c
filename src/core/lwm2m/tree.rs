//! Reading and writing the object tree through the registry, with the model checks (existence,
//! allowed operation, type, range) done once here so objects only implement behaviour.

use std::collections::BTreeMap;

use super::content::Decoded;
use super::error::Error;
use super::path::Path;
use super::value::{Record, ResourceValue, Value, records_of};
use crate::core::object::{Ctx, Object, Registry};
use crate::model::ResourceMeta;

/// Reads every readable value at or below `path` (`/O`, `/O/I`, `/O/I/R` or `/O/I/R/RI`).
///
/// A resource that vanishes between listing and reading (host data) is skipped in object and
/// instance reads; a targeted resource read reports the error.
pub fn read(reg: &mut Registry, ctx: &mut Ctx<'_>, path: &Path) -> Result<Vec<Record>, Error> {
    let oid = path
        .object_id()
        .ok_or_else(|| Error::not_allowed("Read needs at least an object id"))?;
    let object = reg.get_mut(oid).ok_or(Error::NotFound)?;
    let mut out = Vec::new();
    match (path.instance_id(), path.resource_id()) {
        (None, _) => {
            for iid in object.instances() {
                read_instance(object, ctx, oid, iid, &mut out);
            }
        }
        (Some(iid), None) => {
            if !object.instances().contains(&iid) {
                return Err(Error::NotFound);
            }
            read_instance(object, ctx, oid, iid, &mut out);
        }
        (Some(iid), Some(rid)) => {
            let meta = present_resource(object, iid, rid)?;
            if !meta.operations.read {
                return Err(Error::not_allowed(format!("{path} is not readable")));
            }
            let value = object.read(ctx, iid, rid)?;
            match (path.resource_instance_id(), value) {
                (None, v) => records_of(Path::resource(oid, iid, rid), v, &mut out),
                (Some(ri), ResourceValue::Multiple(mut map)) => {
                    let v = map.remove(&ri).ok_or(Error::NotFound)?;
                    out.push(Record::new(*path, v));
                }
                (Some(_), ResourceValue::Single(_)) => return Err(Error::NotFound),
            }
        }
    }
    Ok(out)
}

fn read_instance(
    object: &mut dyn Object,
    ctx: &mut Ctx<'_>,
    oid: u16,
    iid: u16,
    out: &mut Vec<Record>,
) {
    let meta = object.meta();
    for rid in object.resources(iid) {
        if !meta.resource(rid).is_some_and(|m| m.operations.read) {
            continue;
        }
        match object.read(ctx, iid, rid) {
            Ok(v) => records_of(Path::resource(oid, iid, rid), v, out),
            Err(e) => log::debug!("skipping /{oid}/{iid}/{rid} in a wider read: {e}"),
        }
    }
}

/// The metadata of resource `rid` if it is present in instance `iid` (else 4.04).
pub fn present_resource(
    object: &dyn Object,
    iid: u16,
    rid: u16,
) -> Result<&'static ResourceMeta, Error> {
    if !object.instances().contains(&iid) {
        return Err(Error::NotFound);
    }
    let meta = object.meta().resource(rid).ok_or(Error::NotFound)?;
    if !object.resources(iid).contains(&rid) {
        return Err(Error::NotFound);
    }
    Ok(meta)
}

/// How a Write treats what the payload leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// PUT: the target is replaced (absent optional resources are reset; a multi-instance
    /// resource loses the instances the payload does not carry).
    Replace,
    /// POST: only what the payload carries changes; multi-instance resources are merged.
    Update,
}

/// One resource write the plan will perform.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceWrite {
    /// Instance id.
    pub instance: u16,
    /// Resource id.
    pub resource: u16,
    /// The complete new value.
    pub value: ResourceValue,
}

/// A validated Write: every check passed, so applying it only runs object behaviour.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WritePlan {
    /// Writes in path order.
    pub writes: Vec<ResourceWrite>,
    /// Optional writable resources to reset (replace of a whole instance).
    pub resets: Vec<(u16, u16)>,
}

/// Validates a decoded Write payload aimed at `base` (`/O/I`, `/O/I/R` or `/O/I/R/RI`) and turns it
/// into complete resource values. `bootstrap` lifts the writable-resource check (Bootstrap-Write).
pub fn plan_write(
    reg: &mut Registry,
    ctx: &mut Ctx<'_>,
    base: &Path,
    decoded: Decoded,
    mode: WriteMode,
    bootstrap: bool,
) -> Result<WritePlan, Error> {
    let oid = base
        .object_id()
        .ok_or_else(|| Error::not_allowed("Write needs an object instance"))?;
    let iid = base
        .instance_id()
        .ok_or_else(|| Error::not_allowed("Write on an object is not allowed"))?;
    let object = reg.get_mut(oid).ok_or(Error::NotFound)?;
    if !object.instances().contains(&iid) {
        return Err(Error::NotFound);
    }
    // Group the records per resource, checking each one against the model.
    let mut grouped: BTreeMap<u16, Group> = BTreeMap::new();
    for record in decoded.records {
        let rid = record
            .path
            .resource_id()
            .ok_or_else(|| Error::bad("value without a resource id"))?;
        if record.path.instance_id() != Some(iid) {
            return Err(Error::bad(format!("{} is outside {base}", record.path)));
        }
        let meta = object.meta().resource(rid).ok_or(Error::NotFound)?;
        if !bootstrap && !meta.operations.write {
            return Err(Error::not_allowed(format!(
                "{} is not writable",
                record.path
            )));
        }
        let value = check_value(meta, &record.path, record.value)?;
        let group = grouped
            .entry(rid)
            .or_insert_with(|| Group::new(meta.multiple));
        match (record.path.resource_instance_id(), meta.multiple) {
            (None, false) => {
                if group.single.replace(value).is_some() {
                    return Err(Error::bad(format!("{} given twice", record.path)));
                }
            }
            (Some(ri), true) => {
                if group.instances.insert(ri, value).is_some() {
                    return Err(Error::bad(format!("{} given twice", record.path)));
                }
            }
            (None, true) => {
                return Err(Error::bad(format!(
                    "{} is multi-instance: give instances",
                    record.path
                )));
            }
            (Some(_), false) => return Err(Error::NotFound),
        }
    }
    // Multi-instance resources named without any instance (an empty TLV Multiple Resource).
    for c in decoded
        .containers
        .iter()
        .filter(|c| c.len() == 3 && c.instance_id() == Some(iid))
    {
        if let Some(rid) = c.resource_id()
            && let Some(meta) = object.meta().resource(rid).filter(|m| m.multiple)
        {
            if !bootstrap && !meta.operations.write {
                return Err(Error::not_allowed(format!("{c} is not writable")));
            }
            grouped.entry(rid).or_insert_with(|| Group::new(true));
        }
    }
    if let Some(rid) = base.resource_id() {
        if grouped.keys().any(|&r| r != rid) {
            return Err(Error::bad(format!(
                "payload names resources outside {base}"
            )));
        }
        if !grouped.contains_key(&rid) {
            return Err(Error::bad(format!("payload carries no value for {base}")));
        }
    }
    let present = object.resources(iid);
    let mut plan = WritePlan::default();
    for (rid, group) in grouped {
        let merge_existing = group.multiple
            && (mode == WriteMode::Update || base.resource_instance_id().is_some())
            && present.contains(&rid);
        let value = if group.multiple {
            let mut map = if merge_existing {
                match object.read(ctx, iid, rid) {
                    Ok(ResourceValue::Multiple(map)) => map,
                    _ => BTreeMap::new(),
                }
            } else {
                BTreeMap::new()
            };
            map.extend(group.instances);
            ResourceValue::Multiple(map)
        } else {
            ResourceValue::Single(group.single.ok_or_else(|| Error::bad("missing value"))?)
        };
        plan.writes.push(ResourceWrite {
            instance: iid,
            resource: rid,
            value,
        });
    }
    if mode == WriteMode::Replace && base.len() == 2 {
        let written: Vec<u16> = plan.writes.iter().map(|w| w.resource).collect();
        for rm in object.meta().resources {
            if rm.operations.write && !written.contains(&rm.id) {
                if rm.mandatory && !bootstrap {
                    return Err(Error::bad(format!(
                        "replace of {base} must carry mandatory resource {}",
                        rm.id
                    )));
                }
                if !rm.mandatory {
                    plan.resets.push((iid, rm.id));
                }
            }
        }
    }
    Ok(plan)
}

struct Group {
    multiple: bool,
    single: Option<Value>,
    instances: BTreeMap<u16, Value>,
}

impl Group {
    fn new(multiple: bool) -> Self {
        Self {
            multiple,
            single: None,
            instances: BTreeMap::new(),
        }
    }
}

/// Types and range-checks one decoded value against the model.
pub fn check_value(meta: &ResourceMeta, path: &Path, value: Value) -> Result<Value, Error> {
    let value = value
        .coerce(meta.kind)
        .ok_or_else(|| Error::bad(format!("{path}: value does not fit type {:?}", meta.kind)))?;
    value
        .check_range(meta)
        .map_err(|reason| Error::bad(format!("{path}: {reason}")))?;
    Ok(value)
}

/// Applies a validated plan to object `oid`. Returns the paths written.
pub fn apply_write(
    reg: &mut Registry,
    ctx: &mut Ctx<'_>,
    oid: u16,
    plan: WritePlan,
) -> Result<Vec<Path>, Error> {
    let object = reg.get_mut(oid).ok_or(Error::NotFound)?;
    let mut changed = Vec::new();
    for (iid, rid) in plan.resets {
        object.reset(ctx, iid, rid)?;
        changed.push(Path::resource(oid, iid, rid));
    }
    for w in plan.writes {
        object.write(ctx, w.instance, w.resource, w.value)?;
        changed.push(Path::resource(oid, w.instance, w.resource));
    }
    Ok(changed)
}

#[cfg(test)]
pub(crate) mod tests {

    use super::*;
    use crate::core::object::CtxOutput;
    use crate::model::{self, ObjectMeta};

    /// A generic in-memory object over any model definition, for core tests.
    pub(crate) struct MemObject {
        pub(crate) meta: &'static ObjectMeta,
        pub(crate) data: BTreeMap<u16, BTreeMap<u16, ResourceValue>>,
        pub(crate) executed: Vec<(u16, u16)>,
    }

    impl MemObject {
        pub(crate) fn new(id: u16) -> Self {
            Self {
                meta: model::object(id).expect("model"),
                data: BTreeMap::new(),
                executed: Vec::new(),
            }
        }

        pub(crate) fn with(mut self, iid: u16, rid: u16, v: ResourceValue) -> Self {
            self.data.entry(iid).or_default().insert(rid, v);
            self
        }
    }

    impl Object for MemObject {
        fn meta(&self) -> &'static ObjectMeta {
            self.meta
        }
        fn instances(&self) -> Vec<u16> {
            self.data.keys().copied().collect()
        }
        fn resources(&self, instance: u16) -> Vec<u16> {
            self.data
                .get(&instance)
                .map(|m| m.keys().copied().collect())
                .unwrap_or_default()
        }
        fn read(&mut self, _: &mut Ctx<'_>, i: u16, r: u16) -> Result<ResourceValue, Error> {
            self.data
                .get(&i)
                .and_then(|m| m.get(&r))
                .cloned()
                .ok_or(Error::NotFound)
        }
        fn write(
            &mut self,
            _: &mut Ctx<'_>,
            i: u16,
            r: u16,
            v: ResourceValue,
        ) -> Result<(), Error> {
            self.data.entry(i).or_default().insert(r, v);
            Ok(())
        }
        fn reset(&mut self, _: &mut Ctx<'_>, i: u16, r: u16) -> Result<(), Error> {
            if let Some(m) = self.data.get_mut(&i) {
                m.remove(&r);
            }
            Ok(())
        }
        fn execute(
            &mut self,
            _: &mut Ctx<'_>,
            i: u16,
            r: u16,
            _: &[crate::core::lwm2m::value::ExecArg],
        ) -> Result<(), Error> {
            self.executed.push((i, r));
            Ok(())
        }
    }

    fn single(v: Value) -> ResourceValue {
        ResourceValue::Single(v)
    }

    fn registry() -> Registry {
        let mut reg = Registry::new();
        let mut errors = BTreeMap::new();
        errors.insert(0, Value::Integer(0));
        errors.insert(3, Value::Integer(7));
        reg.insert(Box::new(
            MemObject::new(3)
                .with(0, 0, single(Value::String("Acme".into())))
                .with(0, 4, single(Value::Integer(0)))
                .with(0, 11, ResourceValue::Multiple(errors))
                .with(0, 13, single(Value::Time(100)))
                .with(0, 14, single(Value::String("UTC+1".into()))),
        ));
        reg
    }

    fn with_ctx<T>(f: impl FnOnce(&mut Ctx<'_>) -> T) -> T {
        let mut out = CtxOutput::default();
        let mut ctx = Ctx {
            now: crate::host::test_instant(),
            unix_time: 0,
            server: Some(1),
            out: &mut out,
        };
        f(&mut ctx)
    }

    #[test]
    fn reads_every_level() {
        let mut reg = registry();
        with_ctx(|ctx| {
            let all = read(&mut reg, ctx, &Path::object(3)).expect("object");
            // Executable /3/0/4 is not readable and is left out of wider reads.
            let paths: Vec<String> = all.iter().map(|r| r.path.to_string()).collect();
            assert_eq!(
                paths,
                ["/3/0/0", "/3/0/11/0", "/3/0/11/3", "/3/0/13", "/3/0/14"]
            );
            assert_eq!(
                read(&mut reg, ctx, &Path::instance(3, 0)).expect("instance"),
                all
            );
            let ri = read(&mut reg, ctx, &Path::resource_instance(3, 0, 11, 3)).expect("ri");
            assert_eq!(
                ri,
                vec![Record::new(
                    Path::resource_instance(3, 0, 11, 3),
                    Value::Integer(7)
                )]
            );
            assert_eq!(
                read(&mut reg, ctx, &Path::resource_instance(3, 0, 11, 9)),
                Err(Error::NotFound)
            );
            assert_eq!(
                read(&mut reg, ctx, &Path::resource_instance(3, 0, 0, 0)),
                Err(Error::NotFound)
            );
            assert_eq!(
                read(&mut reg, ctx, &Path::instance(3, 1)),
                Err(Error::NotFound)
            );
            assert_eq!(read(&mut reg, ctx, &Path::object(9)), Err(Error::NotFound));
            assert_eq!(
                read(&mut reg, ctx, &Path::resource(3, 0, 1)),
                Err(Error::NotFound)
            );
            assert!(matches!(
                read(&mut reg, ctx, &Path::resource(3, 0, 4)),
                Err(Error::MethodNotAllowed(_))
            ));
        });
    }

    fn decoded(records: Vec<Record>) -> Decoded {
        Decoded {
            records,
            containers: Vec::new(),
        }
    }

    #[test]
    fn write_checks_writability_type_and_range() {
        let mut reg = registry();
        with_ctx(|ctx| {
            let base = Path::resource(3, 0, 0);
            let ro = decoded(vec![Record::new(base, Value::String("x".into()))]);
            assert!(matches!(
                plan_write(&mut reg, ctx, &base, ro, WriteMode::Replace, false),
                Err(Error::MethodNotAllowed(_))
            ));
            let base = Path::resource(3, 0, 13);
            let wrong = decoded(vec![Record::new(base, Value::String("soon".into()))]);
            assert!(matches!(
                plan_write(&mut reg, ctx, &base, wrong, WriteMode::Replace, false),
                Err(Error::BadRequest(_))
            ));
            let ok = decoded(vec![Record::new(base, Value::Float(5.0))]);
            let plan =
                plan_write(&mut reg, ctx, &base, ok, WriteMode::Replace, false).expect("plan");
            assert_eq!(plan.writes[0].value, single(Value::Time(5)));
            let unknown = decoded(vec![Record::new(
                Path::resource(3, 0, 99),
                Value::Integer(1),
            )]);
            assert_eq!(
                plan_write(
                    &mut reg,
                    ctx,
                    &Path::instance(3, 0),
                    unknown,
                    WriteMode::Update,
                    false
                ),
                Err(Error::NotFound)
            );
        });
    }

    #[test]
    fn replace_of_an_instance_resets_absent_optional_resources() {
        let mut reg = registry();
        with_ctx(|ctx| {
            let base = Path::instance(3, 0);
            let d = decoded(vec![Record::new(Path::resource(3, 0, 13), Value::Time(9))]);
            let plan =
                plan_write(&mut reg, ctx, &base, d, WriteMode::Replace, false).expect("plan");
            assert_eq!(plan.resets, vec![(0, 14), (0, 15)]);
            apply_write(&mut reg, ctx, 3, plan).expect("apply");
            let after = read(&mut reg, ctx, &base).expect("read");
            assert!(after.iter().all(|r| r.path != Path::resource(3, 0, 14)));
        });
    }

    #[test]
    fn multi_instance_resources_merge_or_replace() {
        let mut reg = Registry::new();
        let mut map = BTreeMap::new();
        map.insert(0, Value::String("a".into()));
        reg.insert(Box::new(MemObject::new(4).with(
            0,
            7,
            ResourceValue::Multiple(map),
        )));
        with_ctx(|ctx| {
            // /4/0/7 (APN) is read-only in the model: only a bootstrap write may touch it here.
            let base = Path::resource(4, 0, 7);
            let d = decoded(vec![Record::new(
                Path::resource_instance(4, 0, 7, 1),
                Value::String("b".into()),
            )]);
            assert!(plan_write(&mut reg, ctx, &base, d.clone(), WriteMode::Update, false).is_err());
            let plan = plan_write(&mut reg, ctx, &base, d.clone(), WriteMode::Update, true)
                .expect("merge");
            let ResourceValue::Multiple(m) = &plan.writes[0].value else {
                panic!("multiple")
            };
            assert_eq!(m.len(), 2);
            let plan =
                plan_write(&mut reg, ctx, &base, d, WriteMode::Replace, true).expect("replace");
            let ResourceValue::Multiple(m) = &plan.writes[0].value else {
                panic!("multiple")
            };
            assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![1]);
        });
    }
}

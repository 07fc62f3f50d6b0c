//! The `Object` trait every LwM2M object implements, the per-call context objects use to request
//! effects and report changes, and the registry that holds the objects a client serves.
//!
//! The core checks paths, operations, types and ranges against the OMA model *before* calling an
//! object, so objects only implement behaviour, never protocol validation.

use std::collections::BTreeMap;
use std::time::Instant;

use super::effect::{Effect, EffectId, Outcome};
use super::lwm2m::content::Schema;
use super::lwm2m::error::Error;
use super::lwm2m::path::Path;
use super::lwm2m::value::{ExecArg, Record, ResourceValue};
use crate::model::{ObjectMeta, ResourceMeta};

/// Something an object asks the core to do (the core owns registrations and observations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreAction {
    /// Send a Registration Update to this server now (Execute /1/x/8).
    TriggerUpdate {
        /// Short server id.
        ssid: u16,
    },
    /// A registration parameter (lifetime, binding) of this server changed: send an Update
    /// carrying it.
    RegistrationParamsChanged {
        /// Short server id.
        ssid: u16,
    },
    /// De-register from this server and stay silent for its Disable Timeout (Execute /1/x/4).
    Disable {
        /// Short server id.
        ssid: u16,
    },
    /// The object set or an object's instances changed: the registration's object list is stale.
    ObjectListChanged,
    /// Start a client-initiated bootstrap with the Bootstrap-Server account (Execute /1/x/9).
    RequestBootstrap,
}

/// Something that happened in the core which objects may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreEvent {
    /// Registered (or registered again) with a server: the network path to it works.
    Registered {
        /// Short server id.
        ssid: u16,
    },
}

/// Collected outputs of one object call; drained by the core afterwards.
#[derive(Debug, Default)]
pub struct CtxOutput {
    /// Effects for the runtime to execute, in order.
    pub effects: Vec<Effect>,
    /// Paths whose values changed (observations on them are evaluated).
    pub changed: Vec<Path>,
    /// Requests to the core.
    pub actions: Vec<CoreAction>,
    /// The object's persistent state changed and must be saved.
    pub persist: bool,
    /// (During a request) do not answer yet: the object releases the answer later, e.g. when
    /// the effect that consumes a Block1 block is done (flow control for firmware pushes).
    pub hold: bool,
    /// (In a later call) answer the held request: success as prepared, or this error.
    pub release: Option<Result<(), Error>>,
}

/// What an object sees of the world during one call. Time is an input, never read from the OS.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// Monotonic time of the event being handled.
    pub now: Instant,
    /// Wall-clock time in Unix seconds at `now`.
    pub unix_time: i64,
    /// Short server id of the server that sent the request; `None` for internal calls.
    pub server: Option<u16>,
    /// Outputs collected for the core.
    pub out: &'a mut CtxOutput,
}

impl Ctx<'_> {
    /// Asks the runtime to execute `effect` once the current response has been sent.
    pub fn effect(&mut self, effect: Effect) {
        self.out.effects.push(effect);
    }

    /// Reports that the value at `path` changed.
    pub fn changed(&mut self, path: Path) {
        self.out.changed.push(path);
    }

    /// Asks the core to act (registration update, disable...).
    pub fn action(&mut self, action: CoreAction) {
        self.out.actions.push(action);
    }

    /// Marks the object's persistent state dirty.
    pub fn persist(&mut self) {
        self.out.persist = true;
    }

    /// Keeps the answer to the request being handled until `release` (in a later call).
    pub fn hold_response(&mut self) {
        self.out.hold = true;
    }

    /// Answers the request held earlier: with the prepared success response, or with `error`.
    pub fn release_response(&mut self, result: Result<(), Error>) {
        self.out.release = Some(result);
    }
}

/// One block of a Block1 write streamed into an Opaque resource (the body is never buffered).
#[derive(Debug, Clone, Copy)]
pub struct BlockWrite<'a> {
    /// Byte offset of `data` in the whole body.
    pub offset: u64,
    /// The block's bytes.
    pub data: &'a [u8],
    /// True for the final block.
    pub last: bool,
    /// The whole body size when the server announced it (Size1).
    pub total: Option<u64>,
}

/// A complete set of instances as the Bootstrap-Server left it: instance id → resource id → value.
pub type Instances = BTreeMap<u16, BTreeMap<u16, ResourceValue>>;

/// A LwM2M object. Called only with paths, operations and typed values that the core already
/// checked against `meta()`.
pub trait Object: Send {
    /// The OMA definition this object implements (id, version, resource metadata).
    fn meta(&self) -> &'static ObjectMeta;

    /// Existing instance ids, ascending.
    fn instances(&self) -> Vec<u16>;

    /// Resource ids present in `instance` (readable, writable or executable), ascending. Optional
    /// resources without real data are left out rather than invented.
    fn resources(&self, instance: u16) -> Vec<u16>;

    /// Reads a present, readable resource.
    fn read(
        &mut self,
        ctx: &mut Ctx<'_>,
        instance: u16,
        resource: u16,
    ) -> Result<ResourceValue, Error>;

    /// Writes a present, writable resource. A multi-instance resource receives its complete new
    /// set of instances (the core merges partial updates before calling).
    fn write(
        &mut self,
        _ctx: &mut Ctx<'_>,
        _instance: u16,
        _resource: u16,
        _value: ResourceValue,
    ) -> Result<(), Error> {
        Err(Error::not_allowed("resource is not writable"))
    }

    /// A replace-Write of the whole instance left this optional writable resource out: return it
    /// to its default. The default does nothing, for objects without such state.
    fn reset(&mut self, _ctx: &mut Ctx<'_>, _instance: u16, _resource: u16) -> Result<(), Error> {
        Ok(())
    }

    /// Executes a present, executable resource.
    fn execute(
        &mut self,
        _ctx: &mut Ctx<'_>,
        _instance: u16,
        _resource: u16,
        _args: &[ExecArg],
    ) -> Result<(), Error> {
        Err(Error::not_allowed("resource is not executable"))
    }

    /// Creates instance `instance` from `records` (all below `/O/instance`).
    fn create(
        &mut self,
        _ctx: &mut Ctx<'_>,
        _instance: u16,
        _records: &[Record],
    ) -> Result<(), Error> {
        Err(Error::not_allowed("object does not support Create"))
    }

    /// Deletes instance `instance`.
    fn delete(&mut self, _ctx: &mut Ctx<'_>, _instance: u16) -> Result<(), Error> {
        Err(Error::not_allowed("object does not support Delete"))
    }

    /// True when Block1 writes to this Opaque resource are streamed block by block through
    /// `write_block` instead of being assembled in memory (firmware images).
    fn streams(&self, _instance: u16, _resource: u16) -> bool {
        false
    }

    /// Streams one Block1 block into an Opaque resource for which `streams` is true.
    fn write_block(
        &mut self,
        _ctx: &mut Ctx<'_>,
        _instance: u16,
        _resource: u16,
        _block: &BlockWrite<'_>,
    ) -> Result<(), Error> {
        Err(Error::TooLarge { max: None })
    }

    /// True when the resource changes without any LwM2M operation (host data): the core samples
    /// it while it is observed.
    fn is_volatile(&self, _instance: u16, _resource: u16) -> bool {
        false
    }

    /// The outcome of an effect this object requested.
    fn effect_done(&mut self, _ctx: &mut Ctx<'_>, _id: EffectId, _outcome: &Outcome) {}

    /// Called once when the client starts, after `restore_state` (recovery of interrupted work).
    fn start(&mut self, _ctx: &mut Ctx<'_>) {}

    /// Something happened in the core (e.g. a registration succeeded).
    fn core_event(&mut self, _ctx: &mut Ctx<'_>, _event: &CoreEvent) {}

    /// When `handle_timeout` must be called for this object (`None`: no timer).
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// A timer of this object is due.
    fn handle_timeout(&mut self, _ctx: &mut Ctx<'_>) {}

    /// Bootstrap-Finish for the account objects (0, 1, 2): check that `instances` (typed by the
    /// model, but not yet checked for meaning) make a usable configuration and, when `commit`,
    /// replace every instance with them. A check that fails changes nothing; its text says why.
    fn bootstrap_install(
        &mut self,
        _ctx: &mut Ctx<'_>,
        _instances: &Instances,
        _commit: bool,
    ) -> Result<(), String> {
        Err("this object cannot be configured by a Bootstrap-Server".into())
    }

    /// State to persist across restarts (versioned by the object itself).
    fn save_state(&self) -> Option<serde_json::Value> {
        None
    }

    /// Restores what `save_state` returned in an earlier run.
    fn restore_state(&mut self, _state: serde_json::Value) -> Result<(), String> {
        Ok(())
    }
}

/// The objects a client serves, by id.
#[derive(Default)]
pub struct Registry {
    objects: BTreeMap<u16, Box<dyn Object>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.objects.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the object with `object.meta().id`.
    pub fn insert(&mut self, object: Box<dyn Object>) {
        self.objects.insert(object.meta().id, object);
    }

    /// The object `id`.
    pub fn get(&self, id: u16) -> Option<&dyn Object> {
        self.objects.get(&id).map(|o| o.as_ref())
    }

    /// The object `id`, mutably.
    pub fn get_mut(&mut self, id: u16) -> Option<&mut (dyn Object + 'static)> {
        self.objects.get_mut(&id).map(|o| o.as_mut())
    }

    /// Object ids, ascending.
    pub fn ids(&self) -> Vec<u16> {
        self.objects.keys().copied().collect()
    }

    /// Every object, ascending by id.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &dyn Object)> {
        self.objects.iter().map(|(id, o)| (*id, o.as_ref()))
    }

    /// Every object mutably, ascending by id.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u16, &mut Box<dyn Object>)> {
        self.objects.iter_mut().map(|(id, o)| (*id, o))
    }

    /// The metadata of a resource as this registry serves it.
    pub fn resource_meta(&self, object: u16, resource: u16) -> Option<&'static ResourceMeta> {
        self.objects
            .get(&object)
            .and_then(|o| o.meta().resource(resource))
    }
}

impl Schema for Registry {
    fn resource(&self, object: u16, resource: u16) -> Option<&'static ResourceMeta> {
        self.resource_meta(object, resource)
            .or_else(|| crate::model::object(object).and_then(|o| o.resource(resource)))
    }
}

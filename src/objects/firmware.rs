//! Object 5, Firmware Update (v1.2): the LwM2M face of the update procedure in
//! `update::fota`. Writes and executes become procedure requests, the procedure's steps leave as
//! effects, and what is read (State, Update Result, package name and version, last state change)
//! is the procedure's durable journal.

use crate::core::effect::{Effect, EffectId, FwOutcome, Outcome};
use crate::core::lwm2m::error::Error;
use crate::core::lwm2m::path::Path;
use crate::core::lwm2m::value::{ExecArg, ResourceValue, Value};
use crate::core::object::{BlockWrite, CoreEvent, Ctx, Object};
use crate::model::ObjectMeta;
use crate::update::fota::{
    BootInfo, Fota, FotaConfig, Journal, Reject, Reply, Settings, check_uri, max_package_size,
};
use crate::update::result;

/// Firmware Update Protocol Support values (/5/0/8) by URI scheme.
const PROTOCOLS: [(&str, i64); 4] = [("coap", 0), ("coaps", 1), ("http", 2), ("https", 3)];

/// What object 5 needs besides the journal.
#[derive(Debug, Clone)]
pub struct FirmwareConfig {
    /// Procedure settings (slot capacity, health gate).
    pub fota: FotaConfig,
    /// URI schemes this build can pull from (`coap`, `http`, `https`...).
    pub schemes: Vec<&'static str>,
}

/// The Firmware Update object (single instance 0).
#[derive(Debug)]
pub struct Firmware {
    fota: Fota,
    schemes: Vec<&'static str>,
}

impl Firmware {
    /// Object 5 continuing from `journal` in the boot `boot`.
    pub fn new(config: FirmwareConfig, journal: Option<Journal>, boot: BootInfo) -> Self {
        Self {
            fota: Fota::new(config.fota, journal, boot, Settings::default()),
            schemes: config.schemes,
        }
    }

    /// The procedure (for tests and status reporting).
    pub fn procedure(&self) -> &Fota {
        &self.fota
    }

    /// Hands the procedure's next steps, a released answer and change notices to the core.
    fn pump(&mut self, ctx: &mut Ctx<'_>) {
        while let Some(step) = self.fota.poll_step() {
            ctx.effect(Effect::Firmware(step));
        }
        if let Some(r) = self.fota.poll_release() {
            ctx.release_response(r.map_err(to_error));
        }
        if self.fota.take_changed() {
            ctx.changed(Path::instance(5, 0));
        }
    }

    fn answer(&mut self, ctx: &mut Ctx<'_>, reply: Result<Reply, Reject>) -> Result<(), Error> {
        let outcome = match reply {
            Ok(Reply::Hold) => {
                ctx.hold_response();
                Ok(())
            }
            Ok(Reply::Now) => Ok(()),
            Err(e) => Err(to_error(e)),
        };
        self.pump(ctx);
        outcome
    }

    fn settings_changed(&mut self, ctx: &mut Ctx<'_>, f: impl FnOnce(&mut Settings)) {
        let mut s = self.fota.settings();
        f(&mut s);
        self.fota.set_settings(s);
        ctx.persist();
    }
}

/// A refused request as the CoAP answer.
fn to_error(r: Reject) -> Error {
    match r {
        Reject::NotAllowed(why) => Error::not_allowed(why),
        // Size1 in the 4.13 names the largest package this slot could take.
        Reject::TooLarge { capacity, .. } => Error::TooLarge {
            max: Some(max_package_size(capacity)),
        },
        Reject::Bad(why) => Error::BadRequest(why),
        // Stops the pushing server; the Update Result carries the reason.
        Reject::Failed(why) => Error::BadRequest(why),
    }
}

fn int(v: &ResourceValue) -> Result<i64, Error> {
    match v {
        ResourceValue::Single(Value::Integer(i)) => Ok(*i),
        ResourceValue::Single(Value::Unsigned(u)) => {
            i64::try_from(*u).map_err(|_| Error::bad("value out of range"))
        }
        _ => Err(Error::bad("expected an integer")),
    }
}

impl Object for Firmware {
    fn meta(&self) -> &'static ObjectMeta {
        crate::model::object(5).expect("object 5 is in the shipped model")
    }

    fn instances(&self) -> Vec<u16> {
        vec![0]
    }

    fn resources(&self, instance: u16) -> Vec<u16> {
        if instance == 0 {
            vec![0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
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
        if instance != 0 {
            return Err(Error::NotFound);
        }
        let j = self.fota.journal();
        let s = self.fota.settings();
        let package = j.package.as_ref();
        let v = match resource {
            1 => Value::String(j.uri.clone()),
            3 => Value::Integer(i64::from(j.state())),
            5 => Value::Integer(i64::from(j.result)),
            6 => Value::String(package.map(|p| p.name.clone()).unwrap_or_default()),
            7 => Value::String(package.map(|p| p.version.clone()).unwrap_or_default()),
            8 => {
                let values = PROTOCOLS
                    .iter()
                    .filter(|(scheme, _)| self.schemes.contains(scheme))
                    .enumerate()
                    .map(|(i, (_, code))| (i as u16, Value::Integer(*code)))
                    .collect();
                return Ok(ResourceValue::Multiple(values));
            }
            // Both push and pull.
            9 => Value::Integer(2),
            11 => Value::Integer(i64::from(s.severity)),
            12 => Value::Time(j.changed_at),
            13 => Value::Unsigned(u64::from(s.max_defer)),
            14 => Value::Boolean(s.auto_update),
            _ => return Err(Error::NotFound),
        };
        Ok(ResourceValue::Single(v))
    }

    fn write(
        &mut self,
        ctx: &mut Ctx<'_>,
        _instance: u16,
        resource: u16,
        value: ResourceValue,
    ) -> Result<(), Error> {
        match (resource, value) {
            (0, ResourceValue::Single(Value::Opaque(bytes))) => {
                // A whole package in one message (no Block1): a single-block push.
                let reply =
                    self.fota
                        .push(ctx.unix_time, 0, &bytes, true, Some(bytes.len() as u64));
                self.answer(ctx, reply)
            }
            (1, ResourceValue::Single(Value::String(uri))) => {
                let check = check_uri(&uri, &self.schemes);
                let reply = self.fota.write_uri(ctx.unix_time, &uri, check);
                self.answer(ctx, reply)
            }
            (11, v) => {
                let severity = u8::try_from(int(&v)?)
                    .ok()
                    .filter(|s| *s <= 2)
                    .ok_or_else(|| Error::bad("severity is 0, 1 or 2"))?;
                self.settings_changed(ctx, |s| s.severity = severity);
                Ok(())
            }
            (13, v) => {
                let period =
                    u32::try_from(int(&v)?).map_err(|_| Error::bad("defer period out of range"))?;
                self.settings_changed(ctx, |s| s.max_defer = period);
                Ok(())
            }
            (14, ResourceValue::Single(Value::Boolean(b))) => {
                self.settings_changed(ctx, |s| s.auto_update = b);
                Ok(())
            }
            _ => Err(Error::not_allowed("resource is not writable")),
        }
    }

    fn streams(&self, _instance: u16, resource: u16) -> bool {
        resource == 0
    }

    fn write_block(
        &mut self,
        ctx: &mut Ctx<'_>,
        _instance: u16,
        resource: u16,
        block: &BlockWrite<'_>,
    ) -> Result<(), Error> {
        if resource != 0 {
            return Err(Error::not_allowed("only /5/0/0 takes a package"));
        }
        let reply = self.fota.push(
            ctx.unix_time,
            block.offset,
            block.data,
            block.last,
            block.total,
        );
        self.answer(ctx, reply)
    }

    fn execute(
        &mut self,
        ctx: &mut Ctx<'_>,
        _instance: u16,
        resource: u16,
        args: &[ExecArg],
    ) -> Result<(), Error> {
        if !args.is_empty() {
            return Err(Error::bad("this resource takes no arguments"));
        }
        let reply = match resource {
            2 => self.fota.update(ctx.unix_time),
            10 => self.fota.cancel(ctx.unix_time),
            _ => return Err(Error::not_allowed("resource is not executable")),
        };
        self.answer(ctx, reply)
    }

    fn effect_done(&mut self, ctx: &mut Ctx<'_>, _id: EffectId, outcome: &Outcome) {
        let outcome = match outcome {
            // Abort is answered out of band; it never completes the step in flight.
            Outcome::Firmware(FwOutcome::Aborted) => return,
            Outcome::Firmware(o) => o.clone(),
            Outcome::Done => FwOutcome::Done,
            Outcome::Failed(reason) => FwOutcome::Failed {
                result: result::UPDATE_FAILED,
                reason: reason.clone(),
            },
        };
        self.fota.outcome(ctx.now, ctx.unix_time, outcome);
        self.pump(ctx);
    }

    fn start(&mut self, ctx: &mut Ctx<'_>) {
        self.fota.start(ctx.now, ctx.unix_time);
        self.pump(ctx);
    }

    fn core_event(&mut self, ctx: &mut Ctx<'_>, event: &CoreEvent) {
        let CoreEvent::Registered { .. } = event;
        self.fota.registered(ctx.unix_time);
        self.pump(ctx);
    }

    fn poll_timeout(&self) -> Option<std::time::Instant> {
        self.fota.poll_timeout()
    }

    fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        self.fota.handle_timeout(ctx.now, ctx.unix_time);
        self.pump(ctx);
    }

    fn is_volatile(&self, _instance: u16, _resource: u16) -> bool {
        // State and result changes are reported as they happen (`pump`), never sampled.
        false
    }

    fn save_state(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self.fota.settings()).ok()
    }

    fn restore_state(&mut self, state: serde_json::Value) -> Result<(), String> {
        let settings: Settings =
            serde_json::from_value(state).map_err(|e| format!("firmware settings: {e}"))?;
        self.fota.set_settings(settings);
        Ok(())
    }
}

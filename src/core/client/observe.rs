//! Information reporting (Core §6.4, RFC 7641): observations per server and token, evaluated
//! when a value changes, when an observed host value is sampled, and when `pmax` forces a report;
//! notifications honour `pmin`, `pmax`, `gt`, `lt`, `st`, `epmin` and `epmax`.
//!
//! Timing model: each observation has one `next_eval` instant — the earliest of "pmin elapsed with
//! a change pending", "pmax elapsed", "sample the volatile values again" and "a change was reported
//! but epmin has not elapsed". An observation with nothing to wait for has no timer, so an idle
//! client sleeps.

use std::time::{Duration, Instant};

use super::{Client, Exchange, overlaps};
use crate::core::coap::block::BlockOpt;
use crate::core::coap::endpoint::RequestId;
use crate::core::coap::message::{Code, Message, opt};
use crate::core::coap::observe::ObserveSeq;
use crate::core::lwm2m::attributes::Attributes;
use crate::core::lwm2m::error::Error;
use crate::core::lwm2m::path::Path;
use crate::core::lwm2m::tree;
use crate::core::lwm2m::value::Record;

/// RFC 7641 §4.5: a notification is sent confirmable at least this often.
const CON_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// How an exchange of ours ended without a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// No acknowledgement after every retransmission.
    TimedOut,
    /// The server answered with RST.
    Reset,
}

/// What an observation watches: one path (Observe) or a path list (Observe-Composite).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// GET with Observe.
    Path(Path),
    /// FETCH with Observe and a SenML path list.
    Composite(Vec<Path>),
}

impl Target {
    /// The paths watched.
    pub(super) fn paths(&self) -> &[Path] {
        match self {
            Self::Path(p) => std::slice::from_ref(p),
            Self::Composite(ps) => ps,
        }
    }

    /// The path attributes are taken from: the observed path, or the root for a composite
    /// observation (whose timing comes from the server defaults, Core §6.4.3.2).
    fn attribute_path(&self) -> Path {
        match self {
            Self::Path(p) => *p,
            Self::Composite(_) => Path::ROOT,
        }
    }

    fn overlaps(&self, path: &Path) -> bool {
        self.paths().iter().any(|p| overlaps(p, path))
    }
}

/// One observation by one server.
#[derive(Debug)]
pub(super) struct Observation {
    target: Target,
    format: u16,
    seq: ObserveSeq,
    last_sent: Instant,
    last_records: Vec<Record>,
    last_eval: Instant,
    last_con: Option<Instant>,
    /// A reportable change waits for pmin (or for the in-flight notification).
    dirty: bool,
    /// A change was reported to the core and not evaluated yet (epmin).
    eval_requested: bool,
    /// The outstanding confirmable notification.
    in_flight: Option<RequestId>,
    /// The last non-confirmable notification (an RST to it cancels the observation).
    last_non: Option<RequestId>,
    /// The observed values include host data that changes on its own.
    volatile: bool,
    /// When this observation needs attention next.
    pub(super) next_eval: Option<Instant>,
}

impl Client {
    /// Registers an observation (replacing one with the same token); returns the Observe value of
    /// the first response.
    pub(super) fn start_observation(
        &mut self,
        now: Instant,
        ssid: u16,
        token: Vec<u8>,
        target: Target,
        format: u16,
        records: Vec<Record>,
    ) -> u32 {
        let volatile = target.paths().iter().any(|p| self.is_volatile(p));
        let initial = self.random_below(1 << 16) as u32;
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return 0;
        };
        if let Some(old) = conn.observations.remove(&token)
            && let Some(id) = old.in_flight
        {
            conn.endpoint.cancel(id);
            conn.exchanges.remove(&id);
        }
        let seq = ObserveSeq::new(initial);
        log::debug!("server {ssid}: observing {target:?}");
        conn.observations.insert(
            token.clone(),
            Observation {
                target,
                format,
                seq,
                last_sent: now,
                last_records: records,
                last_eval: now,
                // The 24 h CON refresh counts from the start: the first reports use the configured mode.
                last_con: Some(now),
                dirty: false,
                eval_requested: false,
                in_flight: None,
                last_non: None,
                volatile,
                next_eval: None,
            },
        );
        self.reschedule(now, ssid, &token);
        seq.value()
    }

    /// Cancels the observation with `token` (GET with Observe = 1).
    pub(super) fn cancel_observation(&mut self, ssid: u16, token: &[u8]) {
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return;
        };
        if let Some(obs) = conn.observations.remove(token) {
            log::debug!("server {ssid}: observation of {:?} cancelled", obs.target);
            if let Some(id) = obs.in_flight {
                conn.endpoint.cancel(id);
                conn.exchanges.remove(&id);
            }
        }
    }

    /// Forgets every observation of a server (new registration, de-registration).
    pub(super) fn drop_observations(&mut self, ssid: u16) {
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return;
        };
        for obs in std::mem::take(&mut conn.observations).into_values() {
            if let Some(id) = obs.in_flight {
                conn.endpoint.cancel(id);
                conn.exchanges.remove(&id);
            }
        }
    }

    /// The value at `path` changed: evaluate every observation on the same branch (now, or once
    /// epmin allows).
    pub(super) fn value_changed(&mut self, now: Instant, path: &Path) {
        let ssids: Vec<u16> = self.servers.keys().copied().collect();
        for ssid in ssids {
            let tokens: Vec<Vec<u8>> = match self.servers.get_mut(&ssid) {
                Some(conn) => conn
                    .observations
                    .iter_mut()
                    .filter(|(_, o)| o.target.overlaps(path))
                    .map(|(t, o)| {
                        o.eval_requested = true;
                        t.clone()
                    })
                    .collect(),
                None => continue,
            };
            for token in tokens {
                self.reschedule(now, ssid, &token);
            }
            self.observation_timers(now, ssid);
        }
    }

    /// Attributes on `path` changed: timing of observations on that branch changes too.
    pub(super) fn attributes_changed(&mut self, now: Instant, ssid: u16, path: &Path) {
        let tokens: Vec<Vec<u8>> = self
            .servers
            .get(&ssid)
            .map(|c| {
                c.observations
                    .iter()
                    .filter(|(_, o)| o.target.overlaps(path))
                    .map(|(t, _)| t.clone())
                    .collect()
            })
            .unwrap_or_default();
        for token in tokens {
            self.reschedule(now, ssid, &token);
        }
        self.observation_timers(now, ssid);
    }

    /// Evaluates every observation of `ssid` whose time has come.
    pub(super) fn observation_timers(&mut self, now: Instant, ssid: u16) {
        let due: Vec<Vec<u8>> = self
            .servers
            .get(&ssid)
            .map(|c| {
                c.observations
                    .iter()
                    .filter(|(_, o)| o.next_eval.is_some_and(|t| t <= now))
                    .map(|(t, _)| t.clone())
                    .collect()
            })
            .unwrap_or_default();
        for token in due {
            self.evaluate(now, ssid, &token);
        }
    }

    fn effective_attributes(&mut self, now: Instant, ssid: u16, path: &Path) -> Attributes {
        let defaults = (self.server_u32(now, ssid, 2), self.server_u32(now, ssid, 3));
        self.servers
            .get(&ssid)
            .map(|c| c.attributes.effective(path, defaults.0, defaults.1))
            .unwrap_or_default()
    }

    /// Recomputes `next_eval` of one observation.
    fn reschedule(&mut self, now: Instant, ssid: u16, token: &[u8]) {
        let Some(path) = self
            .servers
            .get(&ssid)
            .and_then(|c| c.observations.get(token))
            .map(|o| o.target.attribute_path())
        else {
            return;
        };
        let attrs = self.effective_attributes(now, ssid, &path);
        let sample = self.config.sample_interval;
        let Some(obs) = self
            .servers
            .get_mut(&ssid)
            .and_then(|c| c.observations.get_mut(token))
        else {
            return;
        };
        let pmin = secs(attrs.pmin.unwrap_or(0));
        let epmin = secs(attrs.epmin.unwrap_or(0));
        let mut next: Option<Instant> = None;
        let mut take = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        if obs.dirty && obs.in_flight.is_none() {
            take(obs.last_sent + pmin);
        }
        if let Some(pmax) = valid_pmax(&attrs) {
            take(obs.last_sent + pmax);
        }
        if obs.eval_requested {
            take((obs.last_eval + epmin).max(now));
        }
        if obs.volatile {
            // epmax bounds the sampling interval; without it the configured interval applies.
            let every = attrs
                .epmax
                .map(secs)
                .unwrap_or(sample)
                .max(epmin)
                .max(Duration::from_secs(1));
            take(obs.last_eval + every);
        }
        obs.next_eval = next;
    }

    /// Reads the observed value and notifies when the attributes say so.
    fn evaluate(&mut self, now: Instant, ssid: u16, token: &[u8]) {
        let Some((target, prev)) = self
            .servers
            .get(&ssid)
            .and_then(|c| c.observations.get(token))
            .map(|o| (o.target.clone(), o.last_records.clone()))
        else {
            return;
        };
        let attrs = self.effective_attributes(now, ssid, &target.attribute_path());
        let records = match &target {
            Target::Path(path) => {
                self.with_ctx(now, Some(ssid), |reg, ctx| tree::read(reg, ctx, path))
                    .0
            }
            Target::Composite(paths) => Ok(self.read_composite(now, ssid, paths)),
        };
        let records = match records {
            Ok(r) => r,
            Err(e) => {
                // The observed target is gone (instance deleted...): an error notification ends it.
                self.notify_error(now, ssid, token, &e);
                return;
            }
        };
        let Some(obs) = self
            .servers
            .get_mut(&ssid)
            .and_then(|c| c.observations.get_mut(token))
        else {
            return;
        };
        obs.last_eval = now;
        obs.eval_requested = false;
        if reportable(&attrs, &prev, &records) {
            obs.dirty = true;
        }
        let pmin_passed = now >= obs.last_sent + secs(attrs.pmin.unwrap_or(0));
        let pmax_due = valid_pmax(&attrs).is_some_and(|p| now >= obs.last_sent + p);
        if obs.in_flight.is_none() && ((obs.dirty && pmin_passed) || pmax_due) {
            self.send_notification(now, ssid, token, records);
        }
        self.reschedule(now, ssid, token);
    }

    fn send_notification(&mut self, now: Instant, ssid: u16, token: &[u8], records: Vec<Record>) {
        let confirmable_mode = self.server_bool(now, ssid, 26).unwrap_or(false);
        let Some((path, format)) = self
            .servers
            .get(&ssid)
            .and_then(|c| c.observations.get(token))
            .map(|o| (o.target.attribute_path(), o.format))
        else {
            return;
        };
        let body = match self.encode(format, &path, &records) {
            Ok(b) => b,
            Err(e) => {
                log::warn!("server {ssid}: cannot encode notification of {path}: {e}");
                return;
            }
        };
        let block = 16usize << self.config.block_szx;
        let szx = self.config.block_szx;
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return;
        };
        let Some(obs) = conn.observations.get_mut(token) else {
            return;
        };
        let mut msg = Message::response(Code::CONTENT);
        msg.token = token.to_vec();
        msg.set_uint_option(opt::OBSERVE, u64::from(obs.seq.next()));
        msg.set_uint_option(opt::CONTENT_FORMAT, u64::from(format));
        if body.len() > block {
            // RFC 7959 §2.6: a large notification carries its first block; the server fetches
            // the rest with GETs (served from the Block2 cache by the read path).
            if let Ok(v) = BlockOpt::new(0, true, szx).encode() {
                msg.set_option(opt::BLOCK2, v);
            }
            msg.set_uint_option(opt::SIZE2, body.len() as u64);
            msg.payload = body.get(..block).map(<[u8]>::to_vec).unwrap_or_default();
        } else {
            msg.payload = body;
        }
        let confirmable = confirmable_mode
            || obs
                .last_con
                .is_none_or(|t| now.saturating_duration_since(t) >= CON_REFRESH);
        let id = conn.endpoint.send_notification(now, msg, confirmable);
        if confirmable {
            obs.in_flight = Some(id);
            obs.last_con = Some(now);
            conn.exchanges.insert(id, Exchange::Notify(token.to_vec()));
        } else {
            obs.last_non = Some(id);
        }
        obs.last_sent = now;
        obs.last_records = records;
        obs.dirty = false;
    }

    /// Sends an error notification (a non-2.xx response ends the observation, RFC 7641 §3.2).
    fn notify_error(&mut self, now: Instant, ssid: u16, token: &[u8], error: &Error) {
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return;
        };
        let Some(obs) = conn.observations.remove(token) else {
            return;
        };
        log::debug!(
            "server {ssid}: observation of {:?} ends: {error}",
            obs.target
        );
        let mut msg = Message::response(error.code());
        msg.token = token.to_vec();
        let _ = conn.endpoint.send_notification(now, msg, false);
    }

    /// A confirmable notification was acknowledged.
    pub(super) fn notification_delivered(&mut self, now: Instant, ssid: u16, request: RequestId) {
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return;
        };
        let Some(Exchange::Notify(token)) = conn.exchanges.remove(&request) else {
            return;
        };
        let Some(obs) = conn.observations.get_mut(&token) else {
            return;
        };
        obs.in_flight = None;
        if obs.dirty {
            // A change arrived while the previous notification was in flight: report it now.
            obs.eval_requested = true;
        }
        self.reschedule(now, ssid, &token);
        self.observation_timers(now, ssid);
    }

    /// A notification was rejected (RST) or never acknowledged.
    pub(super) fn notification_failed(
        &mut self,
        now: Instant,
        ssid: u16,
        token: Option<&[u8]>,
        request: RequestId,
        failure: Failure,
    ) {
        let storing = self.server_bool(now, ssid, 6).unwrap_or(true);
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return;
        };
        let token = match token {
            Some(t) => t.to_vec(),
            // Not a confirmable exchange: an RST to a non-confirmable notification.
            None => match conn
                .observations
                .iter()
                .find(|(_, o)| o.last_non == Some(request))
            {
                Some((t, _)) => t.clone(),
                None => return,
            },
        };
        match failure {
            Failure::Reset => {
                log::debug!("server {ssid}: notification reset; observation cancelled");
                conn.observations.remove(&token);
            }
            Failure::TimedOut if !storing => {
                // RFC 7641 §4.5: an unacknowledged notification ends the observation.
                conn.observations.remove(&token);
            }
            Failure::TimedOut => {
                // Notification Storing (/1/x/6): keep the change and report it once the server
                // is reachable; check reachability with a registration update.
                if let Some(obs) = conn.observations.get_mut(&token) {
                    obs.in_flight = None;
                    obs.dirty = true;
                }
                self.request_update(now, ssid);
            }
        }
    }

    /// True when any resource below `path` changes on its own (host data).
    fn is_volatile(&self, path: &Path) -> bool {
        let Some(object) = path.object_id().and_then(|o| self.registry.get(o)) else {
            return false;
        };
        let instances = match path.instance_id() {
            Some(i) => vec![i],
            None => object.instances(),
        };
        instances.into_iter().any(|iid| {
            let resources = match path.resource_id() {
                Some(r) => vec![r],
                None => object.resources(iid),
            };
            resources
                .into_iter()
                .any(|rid| object.is_volatile(iid, rid))
        })
    }
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

/// pmax applies when set, positive and not below pmin (Core §5.1.2).
fn valid_pmax(attrs: &Attributes) -> Option<Duration> {
    let pmax = attrs.pmax.filter(|&p| p > 0)?;
    (pmax >= attrs.pmin.unwrap_or(0)).then(|| secs(pmax))
}

/// Decides whether the change from `prev` to `now` is worth a notification: any change, or, when
/// gt / lt / st are set on a single numeric value, only a threshold crossing or a large enough step.
fn reportable(attrs: &Attributes, prev: &[Record], now: &[Record]) -> bool {
    if !attrs.has_thresholds() {
        return prev != now;
    }
    let (Some(old), Some(new)) = (single_number(prev), single_number(now)) else {
        return prev != now;
    };
    let crossed = |limit: Option<f64>| {
        limit.is_some_and(|l| (old > l) != (new > l) || (old < l) != (new < l))
    };
    crossed(attrs.gt) || crossed(attrs.lt) || attrs.st.is_some_and(|st| (new - old).abs() >= st)
}

fn single_number(records: &[Record]) -> Option<f64> {
    match records {
        [r] => r.value.as_f64(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::lwm2m::value::Value;

    fn one(v: i64) -> Vec<Record> {
        vec![Record::new(Path::resource(1, 0, 1), Value::Integer(v))]
    }

    #[test]
    fn any_change_reports_without_thresholds() {
        let a = Attributes::default();
        assert!(reportable(&a, &one(1), &one(2)));
        assert!(!reportable(&a, &one(1), &one(1)));
    }

    #[test]
    fn thresholds_report_crossings_and_steps_only() {
        let gt = Attributes {
            gt: Some(10.0),
            ..Default::default()
        };
        assert!(!reportable(&gt, &one(1), &one(5)));
        assert!(reportable(&gt, &one(5), &one(11)));
        assert!(reportable(&gt, &one(11), &one(9)));
        assert!(!reportable(&gt, &one(11), &one(15)));
        let lt = Attributes {
            lt: Some(0.0),
            ..Default::default()
        };
        assert!(reportable(&lt, &one(1), &one(-1)));
        assert!(!reportable(&lt, &one(-1), &one(-5)));
        let st = Attributes {
            st: Some(10.0),
            ..Default::default()
        };
        assert!(!reportable(&st, &one(100), &one(109)));
        assert!(reportable(&st, &one(100), &one(90)));
    }

    #[test]
    fn pmax_below_pmin_is_ignored() {
        assert_eq!(
            valid_pmax(&Attributes {
                pmin: Some(10),
                pmax: Some(5),
                ..Default::default()
            }),
            None
        );
        assert_eq!(
            valid_pmax(&Attributes {
                pmax: Some(0),
                ..Default::default()
            }),
            None
        );
        assert_eq!(
            valid_pmax(&Attributes {
                pmin: Some(5),
                pmax: Some(5),
                ..Default::default()
            }),
            Some(secs(5))
        );
    }
}

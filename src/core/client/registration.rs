//! The registration interface (Core §6.2, Transport §6.4): Register, Update before the lifetime
//! runs out or when parameters change, De-register on shutdown and Disable, re-register on 4.04,
//! and randomised exponential back-off while a server is unreachable.

use std::time::{Duration, Instant};

use super::{Client, Event, Exchange};
use crate::core::coap::blockwise::{Block1Upload, UploadStep};
use crate::core::coap::endpoint::RequestId;
use crate::core::coap::message::{Code, Message, opt};
use crate::core::lwm2m::content::{cf, link};
use crate::core::lwm2m::links;

/// MAX_TRANSMIT_WAIT (RFC 7252): an Update must leave this much before the lifetime ends so that
/// retransmissions still arrive in time.
const MAX_TRANSMIT_WAIT: Duration = Duration::from_secs(93);

/// What to do once a De-register completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum After {
    /// Shutdown: stay stopped.
    Stop,
    /// Disable: stay silent this long, then register again.
    Disable(Duration),
}

#[derive(Debug)]
enum State {
    /// Not registered; the next Register goes out at `at`.
    Waiting { at: Instant },
    /// A Register is in flight.
    Registering,
    /// Registered at `location`; the next Update is due at `update_at`.
    Registered {
        location: Vec<String>,
        update_at: Instant,
        updating: bool,
    },
    /// A De-register is in flight.
    Deregistering { then: After },
    /// Disabled by the server until `until`.
    Disabled { until: Instant },
    /// Shut down.
    Stopped,
}

/// The parameters the server last acknowledged, so an Update carries only what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sent {
    lifetime: u32,
    binding: String,
    objects: String,
}

/// One server's registration state machine.
#[derive(Debug)]
pub(super) struct Registration {
    state: State,
    /// Consecutive failed attempts (drives the back-off).
    attempts: u32,
    sent: Option<Sent>,
    /// What the in-flight Register/Update will set once acknowledged.
    pending: Option<Sent>,
    /// Another Update was asked for while one was in flight.
    update_wanted: bool,
    /// A request body that goes out in Block1 blocks, with its request template.
    upload: Option<(Block1Upload, Message)>,
}

impl Registration {
    /// Starts out wanting to register at `now`.
    pub(super) fn new(now: Instant) -> Self {
        Self {
            state: State::Waiting { at: now },
            attempts: 0,
            sent: None,
            pending: None,
            update_wanted: false,
            upload: None,
        }
    }

    /// The next instant this state machine needs attention.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Waiting { at } => Some(*at),
            State::Registered {
                update_at,
                updating: false,
                ..
            } => Some(*update_at),
            State::Disabled { until } => Some(*until),
            _ => None,
        }
    }

    /// A short name for status reporting.
    pub(super) fn state_name(&self) -> &'static str {
        match self.state {
            State::Waiting { .. } => "waiting",
            State::Registering => "registering",
            State::Registered { .. } => "registered",
            State::Deregistering { .. } => "deregistering",
            State::Disabled { .. } => "disabled",
            State::Stopped => "stopped",
        }
    }

    /// True when registered.
    pub(super) fn is_registered(&self) -> bool {
        matches!(self.state, State::Registered { .. })
    }

    /// True after shutdown.
    pub(super) fn is_stopped(&self) -> bool {
        matches!(self.state, State::Stopped)
    }

    /// True while disabled (requests from the server are not served).
    pub(super) fn is_disabled(&self) -> bool {
        matches!(
            self.state,
            State::Disabled { .. }
                | State::Deregistering {
                    then: After::Disable(_)
                }
        )
    }
}

/// When to send the next Update after one was acknowledged at `now`: early enough that a full
/// retransmission span still fits in the lifetime, but at most halfway through it.
pub(super) fn update_interval(lifetime: u32) -> Duration {
    let lt = Duration::from_secs(u64::from(lifetime));
    let margin = (lt / 10).max(MAX_TRANSMIT_WAIT).min(lt / 2);
    lt - margin
}

impl Client {
    pub(super) fn registration_timers(&mut self, now: Instant, ssid: u16) {
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return;
        };
        match conn.registration.state {
            State::Waiting { at } if at <= now && !self.shutting_down => {
                self.send_register(now, ssid)
            }
            State::Registered {
                update_at,
                updating: false,
                ..
            } if update_at <= now => self.send_update(now, ssid),
            State::Disabled { until } if until <= now && !self.shutting_down => {
                log::info!("server {ssid}: disable timeout over, registering again");
                self.send_register(now, ssid);
            }
            _ => {}
        }
    }

    fn current_params(&mut self, now: Instant, ssid: u16) -> Sent {
        let lifetime = self.server_u32(now, ssid, 1).unwrap_or(86400);
        let binding = match self.server_resource(now, ssid, 7) {
            Some(crate::core::lwm2m::value::Value::String(b)) => b,
            _ => "U".to_string(),
        };
        let version = self
            .servers
            .get(&ssid)
            .map(|c| c.prefs.version)
            .unwrap_or(links::Lwm2mVersion::V1_1);
        let objects = link::write(&links::object_list(&self.registry, version));
        Sent {
            lifetime,
            binding,
            objects,
        }
    }

    /// The `b=` value: LwM2M 1.1 carries queue mode as a separate flag, and we never sleep, so
    /// `Q` is dropped from the binding.
    fn binding_param(binding: &str) -> String {
        binding.chars().filter(|&c| c != 'Q').collect()
    }

    fn send_register(&mut self, now: Instant, ssid: u16) {
        let params = self.current_params(now, ssid);
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return;
        };
        let mut msg = Message::request(Code::POST);
        msg.set_uri_path("rd");
        let query = [
            format!("ep={}", self.config.endpoint),
            format!("lt={}", params.lifetime),
            format!("lwm2m={}", conn.prefs.version.as_str()),
            format!("b={}", Self::binding_param(&params.binding)),
        ];
        for q in query {
            msg.add_option(opt::URI_QUERY, q.into_bytes());
        }
        msg.set_uint_option(opt::CONTENT_FORMAT, u64::from(cf::LINK_FORMAT));
        let body = params.objects.clone().into_bytes();
        conn.registration.state = State::Registering;
        conn.registration.pending = Some(params);
        conn.registration.update_wanted = false;
        log::info!("server {ssid}: registering as {:?}", self.config.endpoint);
        self.send_with_body(now, ssid, msg, body, Exchange::Register);
    }

    fn send_update(&mut self, now: Instant, ssid: u16) {
        let params = self.current_params(now, ssid);
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return;
        };
        let State::Registered {
            location, updating, ..
        } = &mut conn.registration.state
        else {
            return;
        };
        let mut msg = Message::request(Code::POST);
        for seg in location.iter() {
            msg.add_option(opt::URI_PATH, seg.clone().into_bytes());
        }
        *updating = true;
        let sent = conn.registration.sent.clone();
        if sent.as_ref().map(|s| s.lifetime) != Some(params.lifetime) {
            msg.add_option(
                opt::URI_QUERY,
                format!("lt={}", params.lifetime).into_bytes(),
            );
        }
        if sent.as_ref().map(|s| s.binding.as_str()) != Some(params.binding.as_str()) {
            msg.add_option(
                opt::URI_QUERY,
                format!("b={}", Self::binding_param(&params.binding)).into_bytes(),
            );
        }
        let mut body = Vec::new();
        if sent.as_ref().map(|s| s.objects.as_str()) != Some(params.objects.as_str()) {
            msg.set_uint_option(opt::CONTENT_FORMAT, u64::from(cf::LINK_FORMAT));
            body = params.objects.clone().into_bytes();
        }
        conn.registration.pending = Some(params);
        conn.registration.update_wanted = false;
        log::debug!("server {ssid}: sending registration update");
        self.send_with_body(now, ssid, msg, body, Exchange::Update);
    }

    /// Sends `template` with `body`, in Block1 blocks when the body does not fit one block.
    fn send_with_body(
        &mut self,
        now: Instant,
        ssid: u16,
        mut template: Message,
        body: Vec<u8>,
        exchange: Exchange,
    ) {
        let block = 16usize << self.config.block_szx;
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return;
        };
        let msg = if body.len() > block {
            let upload = Block1Upload::new(body, self.config.block_szx);
            let first = upload.next_request(&template);
            conn.registration.upload = Some((upload, template));
            first
        } else {
            conn.registration.upload = None;
            template.payload = body;
            template
        };
        let id = conn.endpoint.send_request(now, msg);
        conn.exchanges.insert(id, exchange);
    }

    /// Continues a Block1 upload after a 2.31; returns the final response when done, or the
    /// failure reason.
    fn continue_upload(
        &mut self,
        now: Instant,
        ssid: u16,
        msg: Message,
        exchange: Exchange,
    ) -> Option<Result<Message, String>> {
        let conn = self.servers.get_mut(&ssid)?;
        let Some((upload, template)) = conn.registration.upload.as_mut() else {
            return Some(Ok(msg));
        };
        match upload.on_response(&msg) {
            Ok(UploadStep::Continue) => {
                let next = upload.next_request(template);
                let id = conn.endpoint.send_request(now, next);
                conn.exchanges.insert(id, exchange);
                None
            }
            Ok(UploadStep::Done(last)) => {
                conn.registration.upload = None;
                Some(Ok(last))
            }
            Err(e) => {
                conn.registration.upload = None;
                Some(Err(e.to_string()))
            }
        }
    }

    pub(super) fn register_done(
        &mut self,
        now: Instant,
        ssid: u16,
        _request: RequestId,
        result: Result<Message, &'static str>,
    ) {
        let result = match result {
            Ok(msg) => match self.continue_upload(now, ssid, msg, Exchange::Register) {
                None => return,
                Some(r) => r,
            },
            Err(e) => Err(e.to_string()),
        };
        let outcome = match result {
            Ok(msg) if msg.code == Code::CREATED => {
                let location: Vec<String> = msg
                    .option_values(opt::LOCATION_PATH)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect();
                if location.is_empty() {
                    Err("2.01 without Location-Path".to_string())
                } else {
                    Ok(location)
                }
            }
            Ok(msg) => Err(format!("server answered {}", msg.code)),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(location) => self.registered(now, ssid, location),
            Err(reason) => self.registration_failed(now, ssid, reason),
        }
    }

    fn registered(&mut self, now: Instant, ssid: u16, location: Vec<String>) {
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return;
        };
        if self.shutting_down {
            // The Register crossed our shutdown: take it back at once.
            conn.registration.state = State::Registered {
                location,
                update_at: now,
                updating: false,
            };
            self.send_deregister(now, ssid, After::Stop);
            return;
        }
        let sent = conn.registration.pending.take();
        let lifetime = sent.as_ref().map_or(86400, |s| s.lifetime);
        log::info!(
            "server {ssid}: registered at /{} (lifetime {lifetime} s)",
            location.join("/")
        );
        conn.registration.sent = sent;
        conn.registration.attempts = 0;
        conn.failures_since_bootstrap = 0;
        conn.registration.state = State::Registered {
            location,
            update_at: now + update_interval(lifetime),
            updating: false,
        };
        // Observations do not survive a new registration (Core §6.2.1); the server re-creates them.
        self.drop_observations(ssid);
        self.events.push_back(Event::Registered { ssid });
        self.object_event(now, &crate::core::object::CoreEvent::Registered { ssid });
        let wanted = self
            .servers
            .get(&ssid)
            .is_some_and(|c| c.registration.update_wanted);
        if wanted {
            self.send_update(now, ssid);
        }
    }

    /// Starts over with a fresh Register (after a bootstrap rewrote the account): whatever
    /// registration exchange is in flight is forgotten, and so are the observations.
    pub(super) fn restart_registration(&mut self, now: Instant, ssid: u16) {
        self.drop_observations(ssid);
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return;
        };
        let stale: Vec<RequestId> = conn
            .exchanges
            .iter()
            .filter(|(_, e)| !matches!(e, Exchange::Notify(_)))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            conn.exchanges.remove(&id);
            conn.endpoint.cancel(id);
        }
        conn.registration = Registration::new(now);
        conn.failures_since_bootstrap = 0;
    }

    fn registration_failed(&mut self, now: Instant, ssid: u16, reason: String) {
        let delay = self.backoff(ssid);
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return;
        };
        conn.registration.pending = None;
        conn.registration.attempts = conn.registration.attempts.saturating_add(1);
        conn.failures_since_bootstrap = conn.failures_since_bootstrap.saturating_add(1);
        if self.shutting_down {
            conn.registration.state = State::Stopped;
            return;
        }
        conn.registration.state = State::Waiting { at: now + delay };
        log::warn!(
            "server {ssid}: registration failed ({reason}); retrying in {} s",
            delay.as_secs()
        );
        self.events.push_back(Event::RegistrationFailed {
            ssid,
            reason,
            retry_in: delay,
        });
        self.maybe_fall_back_to_bootstrap(now);
    }

    fn backoff(&mut self, ssid: u16) -> Duration {
        let attempts = self
            .servers
            .get(&ssid)
            .map_or(0, |c| c.registration.attempts);
        self.backoff_delay(attempts)
    }

    /// Exponential back-off with "equal jitter": half the delay is fixed, half random, so a fleet
    /// that lost the same server spreads its retries instead of hammering it in step.
    pub(super) fn backoff_delay(&mut self, attempts: u32) -> Duration {
        let base = self.config.retry_initial.as_millis() as u64;
        let cap = self.config.retry_max.as_millis() as u64;
        let delay = base
            .saturating_mul(1u64 << attempts.min(30))
            .min(cap)
            .max(1);
        let half = delay / 2;
        Duration::from_millis(delay - half + self.random_below(half + 1))
    }

    pub(super) fn update_done(
        &mut self,
        now: Instant,
        ssid: u16,
        result: Result<Message, &'static str>,
    ) {
        let result = match result {
            Ok(msg) => match self.continue_upload(now, ssid, msg, Exchange::Update) {
                None => return,
                Some(r) => r,
            },
            Err(e) => Err(e.to_string()),
        };
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return;
        };
        let State::Registered {
            update_at,
            updating,
            ..
        } = &mut conn.registration.state
        else {
            return;
        };
        *updating = false;
        match result {
            Ok(msg) if msg.code == Code::CHANGED => {
                let sent = conn.registration.pending.take();
                let lifetime = sent.as_ref().map_or(86400, |s| s.lifetime);
                *update_at = now + update_interval(lifetime);
                conn.registration.sent = sent;
                if conn.registration.update_wanted {
                    self.send_update(now, ssid);
                }
            }
            Ok(msg) => {
                // 4.04: the server forgot us; any other refusal also means the registration is gone.
                log::warn!(
                    "server {ssid}: update answered {}; registering again",
                    msg.code
                );
                conn.registration.pending = None;
                conn.registration.state = State::Waiting { at: now };
                self.send_register(now, ssid);
            }
            Err(reason) => {
                conn.registration.state = State::Registering;
                self.registration_failed(now, ssid, format!("update: {reason}"));
            }
        }
    }

    /// Asks for an Update (Execute /1/x/8, a changed lifetime or binding, a changed object list).
    pub(super) fn request_update(&mut self, now: Instant, ssid: u16) {
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return;
        };
        match &conn.registration.state {
            State::Registered {
                updating: false, ..
            } => self.send_update(now, ssid),
            State::Registered { updating: true, .. } | State::Registering => {
                conn.registration.update_wanted = true
            }
            // Not registered: the next Register carries the current parameters anyway.
            _ => {}
        }
    }

    pub(super) fn object_list_changed(&mut self, now: Instant) {
        let ssids: Vec<u16> = self.servers.keys().copied().collect();
        for ssid in ssids {
            self.request_update(now, ssid);
        }
    }

    fn send_deregister(&mut self, now: Instant, ssid: u16, then: After) {
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return;
        };
        let State::Registered { location, .. } = &conn.registration.state else {
            return;
        };
        let mut msg = Message::request(Code::DELETE);
        for seg in location {
            msg.add_option(opt::URI_PATH, seg.clone().into_bytes());
        }
        conn.registration.state = State::Deregistering { then };
        conn.registration.upload = None;
        let id = conn.endpoint.send_request(now, msg);
        conn.exchanges.insert(id, Exchange::Deregister);
    }

    /// Execute /1/x/4: de-register, then stay silent for the Disable Timeout.
    pub(super) fn disable(&mut self, now: Instant, ssid: u16) {
        let timeout =
            Duration::from_secs(u64::from(self.server_u32(now, ssid, 5).unwrap_or(86400)));
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return;
        };
        log::info!("server {ssid}: disabled for {} s", timeout.as_secs());
        if conn.registration.is_registered() {
            self.send_deregister(now, ssid, After::Disable(timeout));
        } else {
            conn.registration.state = State::Disabled {
                until: now + timeout,
            };
        }
    }

    pub(super) fn deregister_done(&mut self, now: Instant, ssid: u16) {
        self.drop_observations(ssid);
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return;
        };
        let State::Deregistering { then } = conn.registration.state else {
            return;
        };
        conn.registration.sent = None;
        conn.registration.state = match then {
            After::Stop => State::Stopped,
            After::Disable(timeout) => State::Disabled {
                until: now + timeout,
            },
        };
        log::info!("server {ssid}: de-registered");
        self.events.push_back(Event::Deregistered { ssid });
    }

    pub(super) fn start_shutdown(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        let ssids: Vec<u16> = self.servers.keys().copied().collect();
        for ssid in ssids {
            let Some(conn) = self.servers.get_mut(&ssid) else {
                continue;
            };
            match conn.registration.state {
                State::Registered { .. } => self.send_deregister(now, ssid, After::Stop),
                // A Register in flight is taken back when its answer arrives (see `registered`).
                State::Registering => {}
                State::Deregistering { .. } => {
                    conn.registration.state = State::Deregistering { then: After::Stop }
                }
                _ => conn.registration.state = State::Stopped,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_leave_room_for_retransmissions() {
        assert_eq!(update_interval(20), Duration::from_secs(10));
        assert_eq!(update_interval(60), Duration::from_secs(30));
        assert_eq!(update_interval(300), Duration::from_secs(207));
        assert_eq!(update_interval(86400), Duration::from_secs(86400 - 8640));
        assert_eq!(update_interval(1), Duration::from_millis(500));
    }
}

//! The Bootstrap interface, client side (Core §6.1, Transport §6.4.1): client-initiated
//! bootstrap (`POST /bs?ep=…`, after the Client Hold Off Time), the Bootstrap-Server's Write,
//! Read, Delete and Discover, and Bootstrap-Finish.
//!
//! Safety first: the Bootstrap-Server works on a staged copy of objects 0, 1 and 2 (see
//! `staging`), and only a Finish whose configuration is complete and consistent installs it (else
//! 4.06, and the BS may fix it). A bootstrap that breaks off, times out or is refused leaves the
//! accounts in use untouched; the client retries with back-off.
//!
//! Bootstrap starts when there is no server account, when a server executes /1/x/9, and when
//! registration with every server has failed `bootstrap_fallback_after` times in a row.

use std::time::Instant;

use super::staging::{self, STAGED_OBJECTS};
use super::{Account, Client, Event, Peer, PeerSecurity};
use crate::core::coap::block::BlockOpt;
use crate::core::coap::blockwise::Block1Receiver;
use crate::core::coap::endpoint::{Endpoint, EndpointEvent, IncomingId, RequestId};
use crate::core::coap::message::{Code, Message, opt};
use crate::core::lwm2m::content::link::{AttrValue, Link};
use crate::core::lwm2m::content::{self, cf, link};
use crate::core::lwm2m::error::Error;
use crate::core::lwm2m::path::Path;
use crate::core::lwm2m::tree::{self, WriteMode};
use crate::core::lwm2m::value::{ResourceValue, Value};
use crate::core::object::{Ctx, Instances, Registry};
use crate::model::Version;

/// The Bootstrap-Server's peer id (Short Server IDs start at 1, so 0 is free).
pub const BOOTSTRAP_PEER: Peer = Peer(0);

/// The format we ask the Bootstrap-Server to write in (`pct=`, LwM2M 1.1).
const PREFERRED_FORMAT: u16 = cf::SENML_CBOR;

#[derive(Debug)]
enum State {
    /// Not bootstrapping.
    Idle,
    /// A Bootstrap-Request goes out at `at` (hold-off or back-off).
    Waiting { at: Instant },
    /// Our Bootstrap-Request is in flight.
    Requesting { request: RequestId },
    /// The Bootstrap-Server is configuring us; the bootstrap fails at `deadline` without Finish.
    Configuring { deadline: Instant },
}

/// A Block1 body from the Bootstrap-Server (certificates do not fit one block).
#[derive(Debug)]
struct Upload {
    code: Code,
    path: Path,
    receiver: Block1Receiver,
    body: Vec<u8>,
}

/// The client's side of the Bootstrap interface.
#[derive(Debug)]
pub(super) struct Bootstrapper {
    /// The CoAP endpoint towards the Bootstrap-Server.
    pub(super) endpoint: Endpoint,
    state: State,
    /// Consecutive failed bootstraps (drives the back-off).
    attempts: u32,
    /// The account the runtime's link was opened for.
    connected: Option<(String, PeerSecurity)>,
    /// Objects 0, 1 and 2 as the Bootstrap-Server is changing them.
    staging: Option<Registry>,
    upload: Option<Upload>,
    /// A Finish was accepted: switch to the new accounts once its answer is out.
    finished: bool,
}

impl Bootstrapper {
    pub(super) fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            state: State::Idle,
            attempts: 0,
            connected: None,
            staging: None,
            upload: None,
            finished: false,
        }
    }

    /// The next instant the bootstrap needs attention.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Waiting { at } => Some(at),
            State::Configuring { deadline } => Some(deadline),
            _ => None,
        }
    }

    /// A short name for status reporting.
    pub(super) fn state_name(&self) -> Option<&'static str> {
        match self.state {
            State::Idle => None,
            State::Waiting { .. } => Some("bootstrap-waiting"),
            State::Requesting { .. } | State::Configuring { .. } => Some("bootstrapping"),
        }
    }
}

impl Client {
    /// The Bootstrap-Server account (/0 instance with /0/x/1 true), if there is one.
    fn bootstrap_account(&mut self, now: Instant) -> Option<Account> {
        let (accounts, _) = self.with_ctx(now, None, super::accounts);
        accounts.into_iter().find(|a| a.bootstrap)
    }

    /// Whether a Bootstrap-Server account exists (so /1/x/9 can be honoured).
    pub(super) fn can_bootstrap(&mut self, now: Instant) -> bool {
        self.bootstrap_account(now).is_some()
    }

    /// Starts a client-initiated bootstrap unless one is under way; `hold_off` waits the Client
    /// Hold Off Time first (start-up and fallback; a server's trigger goes at once).
    pub(super) fn start_bootstrap(&mut self, now: Instant, reason: &str, hold_off: bool) {
        if !matches!(self.bootstrap.state, State::Idle) || self.shutting_down {
            return;
        }
        let Some(account) = self.bootstrap_account(now) else {
            log::warn!("{reason}, and there is no Bootstrap-Server account: cannot bootstrap");
            return;
        };
        let wait = if hold_off {
            account.hold_off
        } else {
            std::time::Duration::ZERO
        };
        log::info!(
            "{reason}: bootstrapping from {} in {} s",
            account.uri,
            wait.as_secs()
        );
        self.bootstrap.attempts = 0;
        self.bootstrap.state = State::Waiting { at: now + wait };
    }

    /// Falls back to bootstrap once every server has failed to register often enough.
    pub(super) fn maybe_fall_back_to_bootstrap(&mut self, now: Instant) {
        let after = self.config.bootstrap_fallback_after;
        if after == 0
            || self.servers.is_empty()
            || self
                .servers
                .values()
                .any(|c| c.failures_since_bootstrap < after)
        {
            return;
        }
        self.start_bootstrap(
            now,
            &format!("registration failed {after} times with every server"),
            true,
        );
    }

    pub(super) fn bootstrap_timers(&mut self, now: Instant) {
        match self.bootstrap.state {
            State::Waiting { at } if at <= now => self.send_bootstrap_request(now),
            State::Configuring { deadline } if deadline <= now => {
                self.bootstrap_failed(now, "no Bootstrap-Finish arrived in time".into())
            }
            _ => {}
        }
    }

    fn send_bootstrap_request(&mut self, now: Instant) {
        let Some(account) = self.bootstrap_account(now) else {
            log::warn!("the Bootstrap-Server account is gone; bootstrap abandoned");
            self.bootstrap.state = State::Idle;
            return;
        };
        let link = (account.uri.clone(), account.security.clone());
        if self.bootstrap.connected.as_ref() != Some(&link) || self.bootstrap.attempts > 0 {
            // A fresh link after a failure resolves the name again and handshakes again.
            self.events.push_back(Event::Connect {
                peer: BOOTSTRAP_PEER,
                uri: link.0.clone(),
                security: link.1.clone(),
            });
            self.bootstrap.connected = Some(link);
        }
        let mut msg = Message::request(Code::POST);
        msg.set_uri_path("bs");
        msg.add_option(
            opt::URI_QUERY,
            format!("ep={}", self.config.endpoint).into_bytes(),
        );
        msg.add_option(
            opt::URI_QUERY,
            format!("pct={PREFERRED_FORMAT}").into_bytes(),
        );
        log::info!("sending Bootstrap-Request to {}", account.uri);
        let request = self.bootstrap.endpoint.send_request(now, msg);
        self.bootstrap.state = State::Requesting { request };
    }

    /// Something happened on the Bootstrap-Server's endpoint.
    pub(super) fn bootstrap_event(&mut self, now: Instant, event: EndpointEvent) {
        match event {
            EndpointEvent::Request { id, msg } => self.bootstrap_request(now, id, msg),
            EndpointEvent::Response { request, msg } => {
                if !matches!(self.bootstrap.state, State::Requesting { request: r } if r == request)
                {
                    return;
                }
                if msg.code == Code::CHANGED {
                    log::info!("Bootstrap-Request accepted; waiting for the configuration");
                    self.bootstrap.state = State::Configuring {
                        deadline: now + self.config.bootstrap_timeout,
                    };
                } else {
                    let reason = format!(
                        "the Bootstrap-Server refused the Bootstrap-Request with {}{}",
                        msg.code,
                        diagnostic(&msg.payload)
                    );
                    self.bootstrap_failed(now, reason);
                }
            }
            EndpointEvent::TimedOut { request } | EndpointEvent::Reset { request } => {
                if matches!(self.bootstrap.state, State::Requesting { request: r } if r == request)
                {
                    self.bootstrap_failed(now, "no answer to the Bootstrap-Request".into());
                }
            }
            EndpointEvent::Delivered { .. } | EndpointEvent::Notification { .. } => {}
        }
    }

    fn bootstrap_failed(&mut self, now: Instant, reason: String) {
        self.bootstrap.staging = None;
        self.bootstrap.upload = None;
        self.bootstrap.attempts = self.bootstrap.attempts.saturating_add(1);
        let delay = self.backoff_delay(self.bootstrap.attempts - 1);
        log::warn!(
            "bootstrap failed ({reason}); the accounts in use are unchanged; retrying in {} s",
            delay.as_secs()
        );
        self.bootstrap.state = State::Waiting { at: now + delay };
    }

    /// A request from the Bootstrap-Server: served only while a bootstrap is under way.
    fn bootstrap_request(&mut self, now: Instant, id: IncomingId, msg: Message) {
        let response = match self.bootstrap.state {
            State::Requesting { .. } | State::Configuring { .. } => {
                // The first request may overtake the answer to our Bootstrap-Request.
                self.bootstrap.state = State::Configuring {
                    deadline: now + self.config.bootstrap_timeout,
                };
                match self.bs_serve(now, &msg) {
                    Ok(r) => r,
                    Err(e) => {
                        log::warn!(
                            "Bootstrap-Server: {} /{} refused: {e}",
                            msg.code,
                            msg.uri_path().unwrap_or_default().join("/")
                        );
                        super::requests::error_response(&e)
                    }
                }
            }
            _ => {
                log::warn!(
                    "request from the Bootstrap-Server while no bootstrap is under way: refused"
                );
                Message::response(Code::SERVICE_UNAVAILABLE)
            }
        };
        self.bootstrap.endpoint.respond(now, id, response);
        if std::mem::take(&mut self.bootstrap.finished) {
            self.bootstrap_installed(now);
        }
    }

    fn bs_serve(&mut self, now: Instant, msg: &Message) -> Result<Message, Error> {
        let segments = msg.uri_path()?;
        if msg.code == Code::POST && segments == ["bs"] {
            return self.bs_finish(now);
        }
        let path = Path::from_segments(&segments)?;
        let Some(body) = self.bs_body(msg, &path)? else {
            let mut resp = Message::response(Code::CONTINUE);
            if let Some(raw) = msg.option(opt::BLOCK1) {
                resp.set_option(opt::BLOCK1, raw.to_vec());
            }
            return Ok(resp);
        };
        let mut response = match msg.code {
            Code::PUT => self.bs_write(now, msg, &path, &body),
            Code::DELETE => self.bs_delete(now, &path),
            Code::GET if msg.accept()? == Some(cf::LINK_FORMAT) => self.bs_discover(now, &path),
            Code::GET => self.bs_read(now, msg, &path),
            other => Err(Error::not_allowed(format!(
                "{other} is not a Bootstrap operation"
            ))),
        }?;
        if let Some(raw) = msg.option(opt::BLOCK1)
            && let Ok(b) = BlockOpt::decode(raw)
            && let Ok(v) = BlockOpt::new(b.num, false, b.szx).encode()
        {
            response.set_option(opt::BLOCK1, v);
        }
        Ok(response)
    }

    /// The request's body, assembled from Block1 blocks; `None` while more blocks are due.
    fn bs_body(&mut self, msg: &Message, path: &Path) -> Result<Option<Vec<u8>>, Error> {
        let Some(raw) = msg.option(opt::BLOCK1) else {
            return Ok(Some(msg.payload.clone()));
        };
        let block = BlockOpt::decode(raw).map_err(|e| Error::bad(e.to_string()))?;
        let max = self.config.max_body_size;
        if block.num == 0 {
            let receiver = Block1Receiver::start(&block, msg.payload.len())
                .map_err(|e| Error::bad(e.to_string()))?
                .ok_or(Error::Incomplete)?;
            self.bootstrap.upload = Some(Upload {
                code: msg.code,
                path: *path,
                receiver,
                body: Vec::new(),
            });
        }
        let upload = self
            .bootstrap
            .upload
            .as_mut()
            .filter(|u| u.code == msg.code && u.path == *path)
            .ok_or(Error::Incomplete)?;
        if block.num > 0 {
            let accepted = upload
                .receiver
                .accept(&block, msg.payload.len())
                .map_err(|_| Error::Incomplete)?;
            if accepted.duplicate {
                return Ok(None);
            }
        }
        if upload.body.len() + msg.payload.len() > max {
            self.bootstrap.upload = None;
            return Err(Error::TooLarge {
                max: Some(max as u64),
            });
        }
        upload.body.extend_from_slice(&msg.payload);
        if block.more {
            return Ok(None);
        }
        Ok(self.bootstrap.upload.take().map(|u| u.body))
    }

    /// Runs `f` on the live registry and the staged copy (taken from the live objects on first
    /// use) with an internal context.
    fn on_staging<T>(
        &mut self,
        now: Instant,
        f: impl FnOnce(&mut Registry, &mut Registry, &mut Ctx<'_>) -> T,
    ) -> T {
        let staging = self.bootstrap.staging.take();
        let (result, staging) = self
            .with_ctx(now, None, |live, ctx| {
                let mut staging = staging.unwrap_or_else(|| staging::snapshot(live, ctx));
                (f(live, &mut staging, ctx), staging)
            })
            .0;
        self.bootstrap.staging = Some(staging);
        result
    }

    /// Bootstrap-Write: `/O`, `/O/I`, `/O/I/R`. Instances that do not exist are created, and
    /// resources no server may write (e.g. /1/x/0) are writable here.
    fn bs_write(
        &mut self,
        now: Instant,
        msg: &Message,
        path: &Path,
        body: &[u8],
    ) -> Result<Message, Error> {
        let oid = path
            .object_id()
            .ok_or_else(|| Error::not_allowed("Bootstrap-Write needs an object"))?;
        if path.len() > 3 {
            return Err(Error::not_allowed("Bootstrap-Write on a resource instance"));
        }
        let format = msg
            .content_format()?
            .ok_or_else(|| Error::bad("Bootstrap-Write without Content-Format"))?;
        let decoded = content::decode(format, path, body, &self.registry)
            .map_err(super::requests::decode_error)?;
        let mut instances: Vec<u16> = decoded
            .records
            .iter()
            .filter_map(|r| r.path.instance_id())
            .chain(decoded.containers.iter().filter_map(Path::instance_id))
            .chain(path.instance_id())
            .collect();
        instances.sort_unstable();
        instances.dedup();
        if instances.is_empty() {
            return Err(Error::bad("Bootstrap-Write carries no instance"));
        }
        let staged = STAGED_OBJECTS.contains(&oid);
        for iid in instances {
            let base = if path.len() >= 2 {
                *path
            } else {
                Path::instance(oid, iid)
            };
            let part = content::Decoded {
                records: decoded
                    .records
                    .iter()
                    .filter(|r| r.path.instance_id() == Some(iid))
                    .cloned()
                    .collect(),
                containers: decoded
                    .containers
                    .iter()
                    .filter(|c| c.instance_id() == Some(iid))
                    .copied()
                    .collect(),
            };
            if staged {
                self.on_staging(now, |_, reg, ctx| {
                    let object = reg.get_mut(oid).ok_or(Error::NotFound)?;
                    if !object.instances().contains(&iid) {
                        object.create(ctx, iid, &[])?;
                    }
                    let plan = tree::plan_write(reg, ctx, &base, part, WriteMode::Replace, true)?;
                    tree::apply_write(reg, ctx, oid, plan).map(|_| ())
                })?;
            } else {
                // Other objects take the value at once, with the usual checks.
                let (result, out) = self.with_ctx(now, None, |reg, ctx| {
                    let plan = tree::plan_write(reg, ctx, &base, part, WriteMode::Replace, false)?;
                    tree::apply_write(reg, ctx, oid, plan)
                });
                self.absorb(now, oid, out);
                for p in result? {
                    self.value_changed(now, &p);
                }
            }
        }
        log::info!("Bootstrap-Server wrote {path}");
        Ok(Message::response(Code::CHANGED))
    }

    /// Bootstrap-Delete: `/`, `/O` or `/O/I`. The Bootstrap-Server account always survives,
    /// and so do instances their object cannot delete (e.g. /3/0).
    fn bs_delete(&mut self, now: Instant, path: &Path) -> Result<Message, Error> {
        if path.len() > 2 {
            return Err(Error::bad("Bootstrap-Delete takes /, /O or /O/I"));
        }
        let objects: Vec<u16> = match path.object_id() {
            Some(oid) => vec![oid],
            None => self.registry.ids(),
        };
        for oid in objects {
            if STAGED_OBJECTS.contains(&oid) {
                self.on_staging(now, |_, reg, ctx| {
                    let Some(object) = reg.get_mut(oid) else {
                        return Ok(());
                    };
                    let targets: Vec<u16> = match path.instance_id() {
                        Some(iid) => vec![iid],
                        None => object.instances(),
                    };
                    for iid in targets {
                        let is_bs_account = oid == 0
                            && matches!(
                                object.read(ctx, iid, 1),
                                Ok(ResourceValue::Single(Value::Boolean(true)))
                            );
                        if is_bs_account {
                            if path.len() == 2 {
                                return Err(Error::bad(
                                    "the Bootstrap-Server account cannot be deleted",
                                ));
                            }
                            continue;
                        }
                        object.delete(ctx, iid)?;
                    }
                    Ok(())
                })?;
            } else {
                let targets: Vec<u16> = match (path.instance_id(), self.registry.get(oid)) {
                    (Some(iid), Some(_)) => vec![iid],
                    (None, Some(o)) => o.instances(),
                    (_, None) => Vec::new(),
                };
                for iid in targets {
                    let (result, out) =
                        self.with_ctx(now, None, |reg, ctx| match reg.get_mut(oid) {
                            Some(o) => o.delete(ctx, iid),
                            None => Err(Error::NotFound),
                        });
                    self.absorb(now, oid, out);
                    if let Err(e) = result {
                        log::debug!("Bootstrap-Delete: /{oid}/{iid} stays ({e})");
                    }
                }
            }
        }
        log::info!("Bootstrap-Server deleted {path}");
        Ok(Message::response(Code::DELETED))
    }

    /// Bootstrap-Read: only the Server and Access Control objects (never credentials).
    fn bs_read(&mut self, now: Instant, msg: &Message, path: &Path) -> Result<Message, Error> {
        if !matches!(path.object_id(), Some(1 | 2)) {
            return Err(Error::Unauthorized);
        }
        let accept = msg.accept()?;
        let format = match accept {
            Some(f) if content::is_data_format(f) && !content::is_single_value(f) => f,
            Some(f) if path.len() >= 3 && content::is_data_format(f) => f,
            Some(f) => return Err(Error::NotAcceptable(f)),
            None => PREFERRED_FORMAT,
        };
        let encoded = self.on_staging(now, |_, staging, ctx| {
            let records = tree::read(staging, ctx, path)?;
            content::encode(format, path, &records, &*staging)
                .map_err(|_| Error::NotAcceptable(format))
        });
        let mut resp = Message::response(Code::CONTENT);
        resp.set_uint_option(opt::CONTENT_FORMAT, u64::from(format));
        resp.payload = encoded?;
        Ok(resp)
    }

    /// Bootstrap-Discover on `/` or `/O`: the enabler version, every object (with `ver=` when
    /// not 1.0) and instance, and `ssid=` / `uri=` on the account instances.
    fn bs_discover(&mut self, now: Instant, path: &Path) -> Result<Message, Error> {
        if path.len() > 1 {
            return Err(Error::bad("Bootstrap-Discover takes / or /O"));
        }
        let links = self.on_staging(now, |live, staging, ctx| {
            bootstrap_links(live, staging, ctx, path.object_id())
        })?;
        let mut resp = Message::response(Code::CONTENT);
        resp.set_uint_option(opt::CONTENT_FORMAT, u64::from(cf::LINK_FORMAT));
        resp.payload = link::write(&links).into_bytes();
        Ok(resp)
    }

    /// Bootstrap-Finish: install the staged accounts if they make a usable, consistent
    /// configuration; 4.06 with the reason otherwise (the Bootstrap-Server may fix it).
    fn bs_finish(&mut self, now: Instant) -> Result<Message, Error> {
        // A Finish without any change installs the current accounts as they are.
        let sets: Vec<(u16, Instances)> = self.on_staging(now, |_, staging, ctx| {
            STAGED_OBJECTS
                .iter()
                .filter_map(|&oid| Some((oid, staging::instances_of(staging.get_mut(oid)?, ctx))))
                .collect()
        });
        if let Err(reason) = self.check_bootstrap(now, &sets) {
            log::warn!("Bootstrap-Finish refused (4.06): {reason}");
            let mut resp = Message::response(Code::NOT_ACCEPTABLE);
            resp.payload = reason.into_bytes();
            return Ok(resp);
        }
        for (oid, set) in &sets {
            let (result, out) = self.with_ctx(now, None, |reg, ctx| match reg.get_mut(*oid) {
                Some(o) => o.bootstrap_install(ctx, set, true),
                None => Ok(()),
            });
            self.absorb(now, *oid, out);
            if let Err(e) = result {
                // Checked just before, so this is a bug; say so rather than half-install.
                return Err(Error::Internal(format!("installing /{oid}: {e}")));
            }
        }
        self.persist_dirty = true;
        self.bootstrap.finished = true;
        log::info!("Bootstrap-Finish: new configuration installed");
        Ok(Message::response(Code::CHANGED))
    }

    /// Every staged object must convert, and objects 0 and 1 must describe the same servers.
    fn check_bootstrap(&mut self, now: Instant, sets: &[(u16, Instances)]) -> Result<(), String> {
        for (oid, set) in sets {
            let (result, _) = self.with_ctx(now, None, |reg, ctx| match reg.get_mut(*oid) {
                Some(o) => o.bootstrap_install(ctx, set, false),
                None => Ok(()),
            });
            result?;
        }
        // Short Server IDs named by the instances of `oid` in resource `rid`; the
        // Bootstrap-Server account (/0/x/1 true) names none.
        let ssids = |oid: u16, rid: u16| -> Vec<i64> {
            sets.iter()
                .filter(|(o, _)| *o == oid)
                .flat_map(|(_, set)| set.values())
                .filter(|res| {
                    oid != 0
                        || !matches!(
                            res.get(&1),
                            Some(ResourceValue::Single(Value::Boolean(true)))
                        )
                })
                .filter_map(|res| match res.get(&rid) {
                    Some(ResourceValue::Single(Value::Integer(v))) => Some(*v),
                    _ => None,
                })
                .collect()
        };
        let security = ssids(0, 10);
        let server = ssids(1, 0);
        if let Some(s) = server.iter().find(|s| !security.contains(s)) {
            return Err(format!(
                "the /1 instance for Short Server ID {s} has no /0 instance with that ID"
            ));
        }
        if let Some(s) = security.iter().find(|s| !server.contains(s)) {
            return Err(format!(
                "the /0 instance for Short Server ID {s} has no /1 instance"
            ));
        }
        if server.is_empty() {
            return Err("no LwM2M server account (a /0 and /1 instance pair) is configured".into());
        }
        Ok(())
    }

    /// After the answer to a successful Finish: use the new accounts.
    fn bootstrap_installed(&mut self, now: Instant) {
        self.bootstrap.staging = None;
        self.bootstrap.upload = None;
        self.bootstrap.attempts = 0;
        self.bootstrap.state = State::Idle;
        self.reload_servers(now);
    }
}

/// The link list of a Bootstrap-Discover (Transport §6.1.7.3): `</>;lwm2m="1.1"`, then objects
/// and instances, with the account objects taken from the staged copy.
fn bootstrap_links(
    live: &mut Registry,
    staging: &mut Registry,
    ctx: &mut Ctx<'_>,
    only: Option<u16>,
) -> Result<Vec<Link>, Error> {
    let mut links = vec![Link {
        target: "/".into(),
        attrs: vec![("lwm2m".into(), Some(AttrValue::Quoted("1.1".into())))],
    }];
    let ids: Vec<u16> = match only {
        Some(oid) if live.get(oid).is_some() => vec![oid],
        Some(_) => return Err(Error::NotFound),
        None => live.ids(),
    };
    for oid in ids {
        let object = if STAGED_OBJECTS.contains(&oid) {
            staging.get_mut(oid)
        } else {
            live.get_mut(oid)
        };
        let Some(object) = object else { continue };
        let meta = object.meta();
        let instances = object.instances();
        let mut attrs = Vec::new();
        if meta.version != Version(1, 0) {
            attrs.push((
                "ver".into(),
                Some(AttrValue::Token(meta.version.to_string())),
            ));
        }
        if !attrs.is_empty() || instances.is_empty() {
            links.push(Link {
                target: format!("/{oid}"),
                attrs,
            });
        }
        for iid in instances {
            let mut attrs = Vec::new();
            let mut read = |rid| match object.read(ctx, iid, rid) {
                Ok(ResourceValue::Single(v)) => Some(v),
                _ => None,
            };
            if oid == 0 || oid == 1 {
                let ssid_rid = if oid == 0 { 10 } else { 0 };
                if let Some(Value::Integer(s)) = read(ssid_rid) {
                    attrs.push(("ssid".into(), Some(AttrValue::Token(s.to_string()))));
                }
            }
            if oid == 0
                && let Some(Value::String(uri)) = read(0)
            {
                attrs.push(("uri".into(), Some(AttrValue::Quoted(uri))));
            }
            links.push(Link {
                target: format!("/{oid}/{iid}"),
                attrs,
            });
        }
    }
    Ok(links)
}

/// The diagnostic payload of an error response, for the log.
fn diagnostic(payload: &[u8]) -> String {
    if payload.is_empty() {
        String::new()
    } else {
        format!(" ({})", String::from_utf8_lossy(payload))
    }
}

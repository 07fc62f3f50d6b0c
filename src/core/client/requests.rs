//! Requests from a LwM2M server (Device Management and Information Reporting, Transport §6.4):
//! Read, Discover, Write, Write-Attributes, Execute, Create, Delete, Observe and Cancel, with
//! block-wise transfer in the server role (Block2 answers, Block1 bodies streamed or assembled).

use std::time::{Duration, Instant};

use super::Client;
use super::access::Right;
use super::observe::Target;
use crate::core::coap::block::BlockOpt;
use crate::core::coap::blockwise::{Block1Receiver, BlockwiseError, block2_slice};
use crate::core::coap::endpoint::IncomingId;
use crate::core::coap::message::{Code, Message, opt};
use crate::core::lwm2m::attributes::AttributeUpdate;
use crate::core::lwm2m::content::{self, ContentError, cf, link};
use crate::core::lwm2m::error::Error;
use crate::core::lwm2m::links;
use crate::core::lwm2m::path::Path;
use crate::core::lwm2m::tree::{self, WriteMode};
use crate::core::lwm2m::value::{Record, Value, parse_exec_args};
use crate::core::object::{BlockWrite, CoreAction, Ctx, CtxOutput, Object};
use crate::model::ResourceType;

/// How long an unfinished Block1 body or a cached Block2 representation is kept (EXCHANGE_LIFETIME).
const TRANSFER_LIFETIME: Duration = Duration::from_secs(247);
/// At most this many Block1 bodies and Block2 representations are kept per server.
const MAX_TRANSFERS: usize = 4;

/// Identifies one Block1 body: never the token, which a server may change between blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Block1Key {
    code: Code,
    path: Path,
    format: Option<u16>,
    request_tag: Option<Vec<u8>>,
}

/// A request body arriving in Block1 blocks.
#[derive(Debug)]
pub(super) struct Block1Transfer {
    key: Block1Key,
    receiver: Block1Receiver,
    /// The assembled body, or `None` when blocks stream into the object.
    buffer: Option<Vec<u8>>,
    touched: Instant,
}

/// A representation being served in Block2 blocks, kept so every block comes from one snapshot.
#[derive(Debug)]
pub(super) struct CachedBody {
    path: Path,
    accept: Option<u16>,
    format: u16,
    body: Vec<u8>,
    made: Instant,
}

/// What the Block1 layer decided for one block.
enum Block1Step {
    /// More blocks follow: answer this response.
    Continue(Message),
    /// The whole body arrived: handle the request with it.
    Complete(Vec<u8>),
    /// The block was streamed into the object and the body is complete: this is the answer.
    Streamed(Message),
}

impl Client {
    /// Serves one request from server `ssid` and answers it.
    pub(super) fn handle_request(&mut self, now: Instant, ssid: u16, id: IncomingId, msg: Message) {
        let mut outputs = Vec::new();
        let response = match self.serve(now, ssid, &msg, &mut outputs) {
            Ok(m) => m,
            Err(e) => {
                log::debug!(
                    "server {ssid}: {} {:?} refused: {e}",
                    msg.code,
                    msg.uri_path().unwrap_or_default()
                );
                error_response(&e)
            }
        };
        // An object may keep the answer back until an effect is done (flow control of pushes).
        let holder = outputs
            .iter()
            .find(|(_, out)| out.hold)
            .map(|(oid, _)| *oid);
        match holder {
            Some(oid) if response.code.is_success() => {
                self.held.insert(
                    oid,
                    super::HeldResponse {
                        ssid,
                        id,
                        response,
                        since: now,
                    },
                );
            }
            _ => {
                if let Some(conn) = self.servers.get_mut(&ssid) {
                    conn.endpoint.respond(now, id, response);
                }
            }
        }
        // Object outputs (effects, core actions such as Disable) take effect after the answer.
        for (oid, out) in outputs {
            self.absorb(now, oid, out);
        }
    }

    fn serve(
        &mut self,
        now: Instant,
        ssid: u16,
        msg: &Message,
        outputs: &mut Vec<(u16, CtxOutput)>,
    ) -> Result<Message, Error> {
        if self
            .servers
            .get(&ssid)
            .is_none_or(|c| c.registration.is_disabled())
        {
            return Err(Error::Unavailable("this server is disabled".into()));
        }
        if msg.has_option(opt::PROXY_URI) || msg.has_option(opt::PROXY_SCHEME) {
            return Ok(Message::response(Code::PROXYING_NOT_SUPPORTED));
        }
        let segments = msg.uri_path()?;
        let path = Path::from_segments(&segments)?;
        // Security (0) and OSCORE (21) hold credentials: never served to a management server.
        if matches!(path.object_id(), Some(0 | 21)) {
            return Err(Error::Unauthorized);
        }
        if let Some(right) = self.required_right(msg, &path)? {
            self.check_access(now, ssid, right, &path)?;
        }
        let mut payload: Option<Vec<u8>> = None;
        let mut block1 = None;
        if let Some(raw) = msg.option(opt::BLOCK1) {
            let block = BlockOpt::decode(raw).map_err(|e| Error::bad(e.to_string()))?;
            block1 = Some(block);
            match self.block1(now, ssid, msg, &path, block, outputs)? {
                Block1Step::Continue(resp) | Block1Step::Streamed(resp) => return Ok(resp),
                Block1Step::Complete(body) => payload = Some(body),
            }
        }
        let body = payload.as_deref().unwrap_or(&msg.payload);
        let mut response = self.dispatch(now, ssid, msg, &path, body, outputs)?;
        if let Some(block) = block1 {
            // The final response echoes the last Block1 (RFC 7959 §2.3).
            if let Ok(v) = BlockOpt::new(block.num, false, block.szx).encode() {
                response.set_option(opt::BLOCK1, v);
            }
        }
        Ok(response)
    }

    /// The access right a request needs on its target (None: not governed by ACLs, or checked
    /// per record as for the composite operations).
    fn required_right(&self, msg: &Message, path: &Path) -> Result<Option<Right>, Error> {
        Ok(match msg.code {
            Code::GET if msg.accept()? == Some(cf::LINK_FORMAT) => None,
            // Object-level reads are filtered per instance instead.
            Code::GET if path.len() >= 2 => Some(Right::Read),
            Code::PUT
                if msg.payload.is_empty()
                    && msg.content_format()?.is_none()
                    && msg.has_option(opt::URI_QUERY) =>
            {
                None
            }
            Code::PUT if path.len() >= 2 => Some(Right::Write),
            Code::POST if path.len() == 1 => Some(Right::Create),
            Code::POST if path.len() == 3 => {
                let (oid, _, rid) = ids(path);
                match self.registry.resource_meta(oid, rid) {
                    Some(m) if m.operations.execute => Some(Right::Execute),
                    _ => Some(Right::Write),
                }
            }
            Code::POST if path.len() >= 2 => Some(Right::Write),
            Code::DELETE if path.len() >= 2 => Some(Right::Delete),
            _ => None,
        })
    }

    fn dispatch(
        &mut self,
        now: Instant,
        ssid: u16,
        msg: &Message,
        path: &Path,
        body: &[u8],
        outputs: &mut Vec<(u16, CtxOutput)>,
    ) -> Result<Message, Error> {
        match msg.code {
            Code::GET => {
                let accept = msg.accept()?;
                if accept == Some(cf::LINK_FORMAT) {
                    return self.discover(now, ssid, msg, path);
                }
                match msg.observe()? {
                    Some(0) => self.observe(now, ssid, msg, path),
                    Some(1) => {
                        self.cancel_observation(ssid, &msg.token);
                        self.read(now, ssid, msg, path)
                    }
                    _ => self.read(now, ssid, msg, path),
                }
            }
            Code::PUT => {
                if body.is_empty()
                    && msg.content_format()?.is_none()
                    && msg.has_option(opt::URI_QUERY)
                {
                    self.write_attributes(now, ssid, msg, path)
                } else {
                    self.write(now, ssid, msg, path, body, WriteMode::Replace, outputs)
                }
            }
            Code::POST => match path.len() {
                1 => self.create(now, ssid, msg, path, body, outputs),
                2 => self.write(now, ssid, msg, path, body, WriteMode::Update, outputs),
                3 => {
                    let (oid, _, rid) = ids(path);
                    let meta = self.registry.resource_meta(oid, rid);
                    match meta {
                        Some(m) if m.operations.execute => {
                            self.execute(now, ssid, path, body, outputs)
                        }
                        Some(m) if m.multiple => {
                            self.write(now, ssid, msg, path, body, WriteMode::Update, outputs)
                        }
                        Some(_) => {
                            self.check_present(now, path)?;
                            Err(Error::not_allowed(format!("{path} is not executable")))
                        }
                        None => Err(Error::NotFound),
                    }
                }
                _ => Err(Error::not_allowed(
                    "POST needs an object, instance or resource",
                )),
            },
            Code::DELETE => self.delete(now, ssid, path, outputs),
            Code::FETCH if path.is_root() => self.read_composite_request(now, ssid, msg, body),
            Code::IPATCH if path.is_root() => self.write_composite(now, ssid, msg, body, outputs),
            _ => Err(Error::not_allowed(format!(
                "method {} is not supported here",
                msg.code
            ))),
        }
    }

    // ----- Read, Observe, Discover -----

    fn read(
        &mut self,
        now: Instant,
        ssid: u16,
        msg: &Message,
        path: &Path,
    ) -> Result<Message, Error> {
        let accept = msg.accept()?;
        let requested = block2_of(msg)?;
        // Later blocks come from the snapshot the first block was cut from.
        if let Some(b) = requested.filter(|b| b.num > 0)
            && let Some(cached) = self.cached_body(ssid, path, accept, now)
        {
            return self.content_response(now, ssid, path, accept, cached.0, cached.1, Some(b));
        }
        let (records, format) = self.render_records(now, ssid, path, accept)?;
        let body = self.encode(format, path, &records)?;
        self.content_response(now, ssid, path, accept, format, body, requested)
    }

    /// Reads the values below `path` and picks the format: the Accept if given, else text/plain
    /// (opaque for Opaque) for a single value, else the server's preferred multi-value format.
    pub(super) fn render_records(
        &mut self,
        now: Instant,
        ssid: u16,
        path: &Path,
        accept: Option<u16>,
    ) -> Result<(Vec<Record>, u16), Error> {
        if path.is_root() {
            return Err(Error::not_allowed("Read of the root is not allowed"));
        }
        if let Some(a) = accept
            && !content::is_data_format(a)
        {
            return Err(Error::NotAcceptable(a));
        }
        let (records, out) = self.with_ctx(now, Some(ssid), |reg, ctx| tree::read(reg, ctx, path));
        let records = self.readable_records(now, ssid, records?);
        debug_assert!(out.effects.is_empty(), "reads have no effects");
        let preferred = self
            .servers
            .get(&ssid)
            .map_or(cf::SENML_CBOR, |c| c.prefs.content_format);
        let format = accept.unwrap_or_else(|| match records.as_slice() {
            [single] if single.path == *path => match single.value {
                Value::Opaque(_) => cf::OPAQUE,
                _ => cf::TEXT,
            },
            _ => preferred,
        });
        Ok((records, format))
    }

    pub(super) fn encode(
        &self,
        format: u16,
        path: &Path,
        records: &[Record],
    ) -> Result<Vec<u8>, Error> {
        content::encode(format, path, records, &self.registry).map_err(|e| {
            log::debug!("cannot encode {path} as {format}: {e}");
            match e {
                ContentError::NotSingle(f) | ContentError::Unsupported(f) => {
                    Error::NotAcceptable(f)
                }
                _ => Error::NotAcceptable(format),
            }
        })
    }

    /// A 2.05 carrying `body`, cut into Block2 blocks when it does not fit one (or when asked).
    #[allow(clippy::too_many_arguments)]
    fn content_response(
        &mut self,
        now: Instant,
        ssid: u16,
        path: &Path,
        accept: Option<u16>,
        format: u16,
        body: Vec<u8>,
        requested: Option<BlockOpt>,
    ) -> Result<Message, Error> {
        let (range, block) =
            block2_slice(body.len(), requested, self.config.block_szx).map_err(|e| match e {
                BlockwiseError::OutOfRange(_) => Error::BadOption(opt::BLOCK2),
                other => Error::bad(other.to_string()),
            })?;
        let mut resp = Message::response(Code::CONTENT);
        resp.set_uint_option(opt::CONTENT_FORMAT, u64::from(format));
        resp.payload = body.get(range).map(<[u8]>::to_vec).unwrap_or_default();
        if let Some(block) = block {
            resp.set_option(opt::ETAG, etag_of(&body));
            resp.set_option(
                opt::BLOCK2,
                block.encode().map_err(|e| Error::Internal(e.to_string()))?,
            );
            if block.num == 0 {
                resp.set_uint_option(opt::SIZE2, body.len() as u64);
            }
            if block.more {
                self.cache_body(
                    ssid,
                    CachedBody {
                        path: *path,
                        accept,
                        format,
                        body,
                        made: now,
                    },
                );
            }
        }
        Ok(resp)
    }

    fn cached_body(
        &mut self,
        ssid: u16,
        path: &Path,
        accept: Option<u16>,
        now: Instant,
    ) -> Option<(u16, Vec<u8>)> {
        let conn = self.servers.get_mut(&ssid)?;
        conn.block2
            .retain(|c| now.saturating_duration_since(c.made) < TRANSFER_LIFETIME);
        conn.block2
            .iter()
            .find(|c| c.path == *path && c.accept == accept)
            .map(|c| (c.format, c.body.clone()))
    }

    fn cache_body(&mut self, ssid: u16, body: CachedBody) {
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return;
        };
        conn.block2
            .retain(|c| !(c.path == body.path && c.accept == body.accept));
        if conn.block2.len() >= MAX_TRANSFERS {
            conn.block2.remove(0);
        }
        conn.block2.push(body);
    }

    fn observe(
        &mut self,
        now: Instant,
        ssid: u16,
        msg: &Message,
        path: &Path,
    ) -> Result<Message, Error> {
        let accept = msg.accept()?;
        let (records, format) = self.render_records(now, ssid, path, accept)?;
        let body = self.encode(format, path, &records)?;
        let seq = self.start_observation(
            now,
            ssid,
            msg.token.clone(),
            Target::Path(*path),
            format,
            records,
        );
        let mut resp = self.content_response(now, ssid, path, accept, format, body, None)?;
        resp.set_uint_option(opt::OBSERVE, u64::from(seq));
        Ok(resp)
    }

    fn discover(
        &mut self,
        now: Instant,
        ssid: u16,
        msg: &Message,
        path: &Path,
    ) -> Result<Message, Error> {
        let mut depth = None;
        for q in msg.uri_query()? {
            match q.split_once('=') {
                Some(("depth", d)) => {
                    let d: u8 = d
                        .parse()
                        .ok()
                        .filter(|d| *d <= 3)
                        .ok_or_else(|| Error::bad("depth must be 0..3"))?;
                    depth = Some(d);
                }
                _ => return Err(Error::bad(format!("unknown Discover parameter {q:?}"))),
            }
        }
        let defaults = (self.server_u32(now, ssid, 2), self.server_u32(now, ssid, 3));
        let attrs = self
            .servers
            .get(&ssid)
            .map(|c| c.attributes.clone())
            .unwrap_or_default();
        let (links, _) = self.with_ctx(now, Some(ssid), |reg, ctx| {
            links::discover(reg, ctx, &attrs, path, depth, defaults)
        });
        let body = link::write(&links?).into_bytes();
        let requested = block2_of(msg)?;
        self.content_response(
            now,
            ssid,
            path,
            Some(cf::LINK_FORMAT),
            cf::LINK_FORMAT,
            body,
            requested,
        )
    }

    // ----- Composite operations (LwM2M 1.1, FETCH / iPATCH with SenML) -----

    /// Read-Composite and Observe-Composite: the body lists paths; the answer carries whatever of
    /// them exists and is readable (best effort, Core §6.3.8), never /0 or executables.
    fn read_composite_request(
        &mut self,
        now: Instant,
        ssid: u16,
        msg: &Message,
        body: &[u8],
    ) -> Result<Message, Error> {
        let request_format = msg
            .content_format()?
            .ok_or_else(|| Error::bad("FETCH without Content-Format"))?;
        if !matches!(request_format, cf::SENML_JSON | cf::SENML_CBOR) {
            return Err(Error::UnsupportedContentFormat(request_format));
        }
        let format = msg.accept()?.unwrap_or(request_format);
        if !matches!(format, cf::SENML_JSON | cf::SENML_CBOR) {
            return Err(Error::NotAcceptable(format));
        }
        let paths = content::decode_paths(request_format, body).map_err(decode_error)?;
        if paths.is_empty() {
            return Err(Error::bad("empty path list"));
        }
        let records = self.read_composite(now, ssid, &paths);
        let payload = self.encode(format, &Path::ROOT, &records)?;
        match msg.observe()? {
            Some(0) => {
                let seq = self.start_observation(
                    now,
                    ssid,
                    msg.token.clone(),
                    Target::Composite(paths),
                    format,
                    records,
                );
                let mut resp = self.content_response(
                    now,
                    ssid,
                    &Path::ROOT,
                    Some(format),
                    format,
                    payload,
                    None,
                )?;
                resp.set_uint_option(opt::OBSERVE, u64::from(seq));
                Ok(resp)
            }
            Some(1) => {
                self.cancel_observation(ssid, &msg.token);
                self.content_response(
                    now,
                    ssid,
                    &Path::ROOT,
                    Some(format),
                    format,
                    payload,
                    block2_of(msg)?,
                )
            }
            _ => self.content_response(
                now,
                ssid,
                &Path::ROOT,
                Some(format),
                format,
                payload,
                block2_of(msg)?,
            ),
        }
    }

    /// The readable values below each of `paths`, merged in path order; the root means every
    /// object a management server may read.
    pub(super) fn read_composite(
        &mut self,
        now: Instant,
        ssid: u16,
        paths: &[Path],
    ) -> Vec<Record> {
        let mut targets = Vec::new();
        for p in paths {
            if p.is_root() {
                targets.extend(
                    self.registry
                        .ids()
                        .into_iter()
                        .filter(|o| !matches!(o, 0 | 21 | 23))
                        .map(Path::object),
                );
            } else if !matches!(p.object_id(), Some(0 | 21 | 23)) {
                targets.push(*p);
            }
        }
        let (mut records, _) = self.with_ctx(now, Some(ssid), |reg, ctx| {
            let mut all = Vec::new();
            for t in &targets {
                match tree::read(reg, ctx, t) {
                    Ok(r) => all.extend(r),
                    Err(e) => log::debug!("read-composite skips {t}: {e}"),
                }
            }
            all
        });
        records.sort_by_key(|a| a.path);
        records.dedup_by(|a, b| a.path == b.path);
        self.readable_records(now, ssid, records)
    }

    /// Write-Composite: every value is checked before any is written, so the write is all or
    /// nothing as far as the model can tell (Core §6.3.9).
    fn write_composite(
        &mut self,
        now: Instant,
        ssid: u16,
        msg: &Message,
        body: &[u8],
        outputs: &mut Vec<(u16, CtxOutput)>,
    ) -> Result<Message, Error> {
        let format = msg
            .content_format()?
            .ok_or_else(|| Error::bad("iPATCH without Content-Format"))?;
        if !matches!(format, cf::SENML_JSON | cf::SENML_CBOR) {
            return Err(Error::UnsupportedContentFormat(format));
        }
        let decoded =
            content::decode(format, &Path::ROOT, body, &self.registry).map_err(decode_error)?;
        let mut groups: std::collections::BTreeMap<Path, Vec<Record>> =
            std::collections::BTreeMap::new();
        for r in decoded.records {
            if matches!(r.path.object_id(), Some(0 | 21)) {
                return Err(Error::Unauthorized);
            }
            groups.entry(r.path.truncate(2)).or_default().push(r);
        }
        for instance in groups.keys() {
            self.check_access(now, ssid, Right::Write, instance)?;
        }
        if groups.is_empty() {
            return Err(Error::bad("Write-Composite carries no value"));
        }
        let (result, out) =
            self.with_ctx(now, Some(ssid), |reg, ctx| -> Result<Vec<Path>, Error> {
                let mut plans = Vec::new();
                for (instance, records) in groups {
                    let d = content::Decoded {
                        records,
                        containers: Vec::new(),
                    };
                    plans.push((
                        instance,
                        tree::plan_write(reg, ctx, &instance, d, WriteMode::Update, false)?,
                    ));
                }
                let mut changed = Vec::new();
                for (instance, plan) in plans {
                    changed.extend(tree::apply_write(
                        reg,
                        ctx,
                        instance.object_id().unwrap_or(0),
                        plan,
                    )?);
                }
                Ok(changed)
            });
        // Outputs of every object touched are attributed to the first; actions are global anyway.
        outputs.push((0, out));
        for p in result? {
            self.value_changed(now, &p);
        }
        Ok(Message::response(Code::CHANGED))
    }

    // ----- Write, Write-Attributes, Execute, Create, Delete -----

    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        now: Instant,
        ssid: u16,
        msg: &Message,
        path: &Path,
        body: &[u8],
        mode: WriteMode,
        outputs: &mut Vec<(u16, CtxOutput)>,
    ) -> Result<Message, Error> {
        if path.len() < 2 {
            return Err(Error::not_allowed("Write needs an object instance"));
        }
        let format = msg
            .content_format()?
            .ok_or_else(|| Error::bad("Write without Content-Format"))?;
        if !content::is_data_format(format) {
            return Err(Error::UnsupportedContentFormat(format));
        }
        if mode == WriteMode::Update && content::is_single_value(format) && path.len() == 2 {
            return Err(Error::UnsupportedContentFormat(format));
        }
        // Presence is not required: a Write may set an optional resource that is currently unset;
        // `plan_write` checks the instance and the resource definition.
        let decoded = content::decode(format, path, body, &self.registry).map_err(decode_error)?;
        let oid = path.object_id().unwrap_or(0);
        let (changed, out) = self.with_ctx(now, Some(ssid), |reg, ctx| {
            let plan = tree::plan_write(reg, ctx, path, decoded, mode, false)?;
            tree::apply_write(reg, ctx, oid, plan)
        });
        outputs.push((oid, out));
        for p in changed? {
            self.value_changed(now, &p);
        }
        Ok(Message::response(Code::CHANGED))
    }

    fn write_attributes(
        &mut self,
        now: Instant,
        ssid: u16,
        msg: &Message,
        path: &Path,
    ) -> Result<Message, Error> {
        if path.is_root() {
            return Err(Error::not_allowed("Write-Attributes on the root"));
        }
        let query = msg.uri_query()?;
        let update = AttributeUpdate::parse(&query)?;
        if update.is_empty() {
            return Err(Error::bad("Write-Attributes without attributes"));
        }
        self.check_present(now, path)?;
        if update.touches_thresholds() {
            let kind = path
                .resource_id()
                .and_then(|r| {
                    self.registry
                        .resource_meta(path.object_id().unwrap_or(0), r)
                })
                .map(|m| m.kind);
            if !matches!(
                kind,
                Some(
                    ResourceType::Integer
                        | ResourceType::Unsigned
                        | ResourceType::Float
                        | ResourceType::Time
                )
            ) {
                return Err(Error::bad("gt, lt and st apply only to numeric resources"));
            }
        }
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return Err(Error::NotFound);
        };
        let mut attrs = conn.attributes.attached(path);
        attrs.apply(&update);
        attrs.validate()?;
        conn.attributes.set(*path, attrs);
        self.persist_dirty = true;
        self.attributes_changed(now, ssid, path);
        Ok(Message::response(Code::CHANGED))
    }

    fn execute(
        &mut self,
        now: Instant,
        ssid: u16,
        path: &Path,
        body: &[u8],
        outputs: &mut Vec<(u16, CtxOutput)>,
    ) -> Result<Message, Error> {
        self.check_present(now, path)?;
        let args = parse_exec_args(body).map_err(Error::BadRequest)?;
        let (oid, iid, rid) = ids(path);
        if (oid, rid) == (1, 9) && !self.can_bootstrap(now) {
            return Err(Error::not_allowed("there is no Bootstrap-Server account"));
        }
        self.call_object(now, ssid, oid, outputs, |o, ctx| {
            o.execute(ctx, iid, rid, &args)
        })?;
        log::info!("server {ssid}: executed {path}");
        Ok(Message::response(Code::CHANGED))
    }

    fn create(
        &mut self,
        now: Instant,
        ssid: u16,
        msg: &Message,
        path: &Path,
        body: &[u8],
        outputs: &mut Vec<(u16, CtxOutput)>,
    ) -> Result<Message, Error> {
        let oid = path.object_id().unwrap_or(0);
        let object = self.registry.get(oid).ok_or(Error::NotFound)?;
        let existing = object.instances();
        let format = msg
            .content_format()?
            .ok_or_else(|| Error::bad("Create without Content-Format"))?;
        if !matches!(format, cf::TLV | cf::SENML_JSON | cf::SENML_CBOR) {
            return Err(Error::UnsupportedContentFormat(format));
        }
        let free = (0..u16::MAX)
            .find(|i| !existing.contains(i))
            .ok_or_else(|| Error::Internal("no free instance id".into()))?;
        // A Create may name its instance (TLV Object Instance, SenML names) or leave it to us (flat
        // resource TLVs).
        let decoded = match content::decode(format, path, body, &self.registry) {
            Ok(d) => d,
            Err(_) if format == cf::TLV => {
                content::decode(format, &Path::instance(oid, free), body, &self.registry)
                    .map_err(decode_error)?
            }
            Err(e) => return Err(decode_error(e)),
        };
        let mut ids: Vec<u16> = decoded
            .records
            .iter()
            .filter_map(|r| r.path.instance_id())
            .collect();
        ids.extend(decoded.containers.iter().filter_map(Path::instance_id));
        ids.sort_unstable();
        ids.dedup();
        let iid = match ids.as_slice() {
            [] => free,
            [one] => *one,
            _ => return Err(Error::bad("Create carries more than one instance")),
        };
        if existing.contains(&iid) {
            return Err(Error::bad(format!("/{oid}/{iid} already exists")));
        }
        let mut records = Vec::with_capacity(decoded.records.len());
        for r in decoded.records {
            let rid = r
                .path
                .resource_id()
                .ok_or_else(|| Error::bad("value without resource id"))?;
            let meta = self
                .registry
                .resource_meta(oid, rid)
                .ok_or_else(|| Error::bad(format!("{} is not defined", r.path)))?;
            records.push(Record::new(
                r.path,
                tree::check_value(meta, &r.path, r.value)?,
            ));
        }
        self.call_object(now, ssid, oid, outputs, |o, ctx| {
            o.create(ctx, iid, &records)?;
            ctx.action(CoreAction::ObjectListChanged);
            Ok(())
        })?;
        self.acl_for_new_instance(now, ssid, oid, iid);
        log::info!("server {ssid}: created /{oid}/{iid}");
        let mut resp = Message::response(Code::CREATED);
        resp.add_option(opt::LOCATION_PATH, oid.to_string().into_bytes());
        resp.add_option(opt::LOCATION_PATH, iid.to_string().into_bytes());
        Ok(resp)
    }

    fn delete(
        &mut self,
        now: Instant,
        ssid: u16,
        path: &Path,
        outputs: &mut Vec<(u16, CtxOutput)>,
    ) -> Result<Message, Error> {
        if path.len() != 2 {
            return Err(Error::not_allowed("Delete needs an object instance"));
        }
        self.check_present(now, path)?;
        let (oid, iid, _) = ids(path);
        self.call_object(now, ssid, oid, outputs, |o, ctx| {
            o.delete(ctx, iid)?;
            ctx.changed(*path);
            ctx.action(CoreAction::ObjectListChanged);
            Ok(())
        })?;
        for conn in self.servers.values_mut() {
            conn.attributes.remove_below(path);
        }
        self.acl_for_deleted_instance(now, oid, iid);
        self.persist_dirty = true;
        log::info!("server {ssid}: deleted {path}");
        Ok(Message::response(Code::DELETED))
    }

    /// Calls `f` on object `oid` on behalf of server `ssid`; the object's outputs (effects,
    /// actions) are kept for after the answer, whether or not the call succeeded.
    fn call_object<T>(
        &mut self,
        now: Instant,
        ssid: u16,
        oid: u16,
        outputs: &mut Vec<(u16, CtxOutput)>,
        f: impl FnOnce(&mut dyn Object, &mut Ctx<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let (result, out) = self.with_ctx(now, Some(ssid), |reg, ctx| match reg.get_mut(oid) {
            Some(object) => f(object, ctx),
            None => Err(Error::NotFound),
        });
        outputs.push((oid, out));
        result
    }

    /// 4.04 unless the object, instance, resource and resource instance named by `path` exist.
    fn check_present(&mut self, now: Instant, path: &Path) -> Result<(), Error> {
        let (present, _) = self.with_ctx(now, None, |reg, ctx| -> Result<(), Error> {
            let Some(oid) = path.object_id() else {
                return Ok(());
            };
            let object = reg.get_mut(oid).ok_or(Error::NotFound)?;
            let Some(iid) = path.instance_id() else {
                return Ok(());
            };
            let Some(rid) = path.resource_id() else {
                return if object.instances().contains(&iid) {
                    Ok(())
                } else {
                    Err(Error::NotFound)
                };
            };
            let meta = tree::present_resource(object, iid, rid)?;
            if let Some(ri) = path.resource_instance_id() {
                if !meta.multiple {
                    return Err(Error::NotFound);
                }
                match object.read(ctx, iid, rid) {
                    Ok(crate::core::lwm2m::value::ResourceValue::Multiple(m))
                        if m.contains_key(&ri) => {}
                    _ => return Err(Error::NotFound),
                }
            }
            Ok(())
        });
        present
    }

    // ----- Block1 (server role) -----

    fn block1(
        &mut self,
        now: Instant,
        ssid: u16,
        msg: &Message,
        path: &Path,
        block: BlockOpt,
        outputs: &mut Vec<(u16, CtxOutput)>,
    ) -> Result<Block1Step, Error> {
        let key = Block1Key {
            code: msg.code,
            path: *path,
            format: msg.content_format()?,
            request_tag: msg.option(opt::REQUEST_TAG).map(<[u8]>::to_vec),
        };
        let size1 = msg.uint_option(opt::SIZE1, 4)?;
        let streamed = self.streams_into(path, msg)?;
        let max = self.config.max_body_size;
        let szx = block.szx.min(self.config.block_szx);
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return Err(Error::NotFound);
        };
        conn.block1
            .retain(|t| now.saturating_duration_since(t.touched) < TRANSFER_LIFETIME);
        let accept = if block.num == 0 {
            conn.block1.retain(|t| t.key != key);
            if !streamed && size1.is_some_and(|s| s > max as u64) {
                return Err(Error::TooLarge {
                    max: Some(max as u64),
                });
            }
            let receiver = Block1Receiver::start(&block, msg.payload.len())
                .map_err(|e| Error::bad(e.to_string()))?
                .ok_or(Error::Incomplete)?;
            if conn.block1.len() >= MAX_TRANSFERS {
                conn.block1.remove(0);
            }
            let buffer = if streamed { None } else { Some(Vec::new()) };
            conn.block1.push(Block1Transfer {
                key: key.clone(),
                receiver,
                buffer,
                touched: now,
            });
            crate::core::coap::blockwise::Block1Accept {
                offset: 0,
                duplicate: false,
            }
        } else {
            let pos = conn
                .block1
                .iter()
                .position(|t| t.key == key)
                .ok_or(Error::Incomplete)?;
            let t = &mut conn.block1[pos];
            t.touched = now;
            match t.receiver.accept(&block, msg.payload.len()) {
                Ok(a) => a,
                Err(BlockwiseError::BadBlockLength { .. }) => {
                    conn.block1.remove(pos);
                    return Err(Error::bad("block payload length does not match its size"));
                }
                Err(_) => {
                    conn.block1.remove(pos);
                    return Err(Error::Incomplete);
                }
            }
        };
        let pos = conn
            .block1
            .iter()
            .position(|t| t.key == key)
            .ok_or(Error::Incomplete)?;
        if !accept.duplicate {
            if let Some(buffer) = conn.block1[pos].buffer.as_mut() {
                if buffer.len() + msg.payload.len() > max {
                    conn.block1.remove(pos);
                    return Err(Error::TooLarge {
                        max: Some(max as u64),
                    });
                }
                buffer.extend_from_slice(&msg.payload);
            } else {
                let write = BlockWrite {
                    offset: accept.offset,
                    data: &msg.payload,
                    last: !block.more,
                    total: size1,
                };
                let (oid, iid, rid) = ids(path);
                let result = self.call_object(now, ssid, oid, outputs, |o, ctx| {
                    o.write_block(ctx, iid, rid, &write)
                });
                if let Err(e) = result {
                    if let Some(conn) = self.servers.get_mut(&ssid) {
                        conn.block1.retain(|t| t.key != key);
                    }
                    return Err(e);
                }
            }
        }
        let Some(conn) = self.servers.get_mut(&ssid) else {
            return Err(Error::NotFound);
        };
        if block.more {
            let mut resp = Message::response(Code::CONTINUE);
            let echo = BlockOpt::new(block.num, true, szx)
                .encode()
                .map_err(|e| Error::Internal(e.to_string()))?;
            resp.set_option(opt::BLOCK1, echo);
            return Ok(Block1Step::Continue(resp));
        }
        let pos = conn
            .block1
            .iter()
            .position(|t| t.key == key)
            .ok_or(Error::Incomplete)?;
        let transfer = conn.block1.remove(pos);
        match transfer.buffer {
            Some(body) => Ok(Block1Step::Complete(body)),
            None => {
                self.value_changed(now, path);
                let mut resp = Message::response(Code::CHANGED);
                let echo = BlockOpt::new(block.num, false, block.szx)
                    .encode()
                    .map_err(|e| Error::Internal(e.to_string()))?;
                resp.set_option(opt::BLOCK1, echo);
                Ok(Block1Step::Streamed(resp))
            }
        }
    }

    /// True when a Block1 PUT of `path` streams into its object (a writable Opaque resource sent
    /// as application/octet-stream whose object asks for streaming).
    fn streams_into(&self, path: &Path, msg: &Message) -> Result<bool, Error> {
        if msg.code != Code::PUT || path.len() != 3 || msg.content_format()? != Some(cf::OPAQUE) {
            return Ok(false);
        }
        let (oid, iid, rid) = ids(path);
        let Some(object) = self.registry.get(oid) else {
            return Ok(false);
        };
        let meta = object.meta().resource(rid);
        Ok(
            meta.is_some_and(|m| m.kind == ResourceType::Opaque && m.operations.write)
                && object.streams(iid, rid),
        )
    }
}

/// The (object, instance, resource) ids of `path`, 0 where absent (callers check depth first).
fn ids(path: &Path) -> (u16, u16, u16) {
    (
        path.object_id().unwrap_or(0),
        path.instance_id().unwrap_or(0),
        path.resource_id().unwrap_or(0),
    )
}

/// The Block2 option of a request, if any.
fn block2_of(msg: &Message) -> Result<Option<BlockOpt>, Error> {
    msg.option(opt::BLOCK2)
        .map(|raw| BlockOpt::decode(raw).map_err(|_| Error::BadOption(opt::BLOCK2)))
        .transpose()
}

/// Maps a decoding failure of a request payload to its response code.
pub(super) fn decode_error(e: ContentError) -> Error {
    match e {
        ContentError::Unsupported(f) => Error::UnsupportedContentFormat(f),
        ContentError::NotSingle(f) => Error::UnsupportedContentFormat(f),
        other => Error::BadRequest(other.to_string()),
    }
}

/// The response for an error: its code, Size1 for 4.13, and a short diagnostic payload.
pub(super) fn error_response(e: &Error) -> Message {
    let mut resp = Message::response(e.code());
    if let Error::TooLarge { max: Some(max) } = e {
        resp.set_uint_option(opt::SIZE1, *max);
    }
    // RFC 7252 §5.5.2: a diagnostic payload helps the operator; keep it short and secret-free.
    if matches!(e, Error::BadRequest(_) | Error::MethodNotAllowed(_)) {
        let mut text = e.to_string();
        text.truncate(120);
        resp.payload = text.into_bytes();
    }
    resp
}

/// A short, stable entity tag for a representation (FNV-1a over the bytes).
fn etag_of(body: &[u8]) -> Vec<u8> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in body {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.to_be_bytes().to_vec()
}

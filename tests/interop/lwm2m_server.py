"""A LwM2M 1.1 test server on aiocoap, for driving the real ``lwm2md`` binary.

One aiocoap server context bound to 127.0.0.1 on an ephemeral port serves the Registration
interface (``/rd``) and sends every Device Management request *from the same socket* to the
address a client registered from, as a real LwM2M server does.

Layout:

* ``Lwm2mServer``: registration interface, event log with waiters, silence / forget switches,
  a wire tap that sees every incoming datagram, raw datagram injection.
* ``EndpointClient``: DM / Information Reporting operations against one registered endpoint.
* ``Observation``: one Observe relationship with its notifications.

aiocoap behaviour this module works around (see the README of the suite for details):

* ``ClientObservation.cancel()`` sends nothing; aiocoap only drops its interest, then RSTs the
  next *CON* notification and silently ignores NON ones. So RST-on-demand is done here: the wire
  tap intercepts the next notification of the observation and answers it with an RST itself.
* aiocoap chooses tokens itself, so a cancelling GET (Observe=1, same token) is handed straight to
  the message layer, bypassing the token layer; its response still reaches the tap.
* aiocoap's observation iterator is lossy; notifications are taken from the synchronous callback.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import warnings
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

from aiocoap import Context, Message
from aiocoap import error as coap_error
from aiocoap import resource
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import ACK, CON, NON, RST
from aiocoap.optiontypes import BlockOption

from lwm2m_codecs import (
    CF_LINK_FORMAT,
    Link,
    LinkFormatError,
    decode,
    encode_values,
    parse_link_format,
)
from lwm2m_model import Model, load_model, parse_path

log = logging.getLogger("lwm2m_server")

DEFAULT_REQUEST_TIMEOUT = 10.0

_METHODS = {"GET": Code.GET, "POST": Code.POST, "PUT": Code.PUT, "DELETE": Code.DELETE, "FETCH": Code.FETCH}


def code_str(code: Code | int) -> str:
    """aiocoap code → ``"2.05"``."""
    code = int(code)
    return f"{code >> 5}.{code & 0x1F:02d}"


def _type_name(mtype) -> str:
    return {CON: "CON", NON: "NON", ACK: "ACK", RST: "RST"}.get(mtype, str(mtype))


def _int_or_none(value) -> int | None:
    return None if value is None else int(value)


def _segments(path: str) -> tuple[str, ...]:
    parse_path(path)  # validates
    return tuple(s for s in path.split("/") if s)


class EventTimeout(AssertionError):
    """An expected event (registration, update, notification, ...) did not happen in time."""


class NotRegistered(AssertionError):
    """A DM operation was attempted against an endpoint that is not registered."""


def parse_query(items: tuple[str, ...] | list[str]) -> dict[str, str | None]:
    """``("ep=x", "Q")`` → ``{"ep": "x", "Q": None}``; a repeated key raises ValueError."""
    params: dict[str, str | None] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key:
            raise ValueError(f"empty query parameter name in {item!r}")
        if key in params:
            raise ValueError(f"query parameter {key!r} given twice")
        params[key] = value if sep else None
    return params


# --- registrations and events ----------------------------------------------------------------


@dataclass
class ObjectLinks:
    """What a Register/Update payload says about one object."""

    id: int
    version: str | None = None  # the ``ver`` attribute of ``</O>``
    instances: list[int] = field(default_factory=list)
    attrs: dict[str, str | None] = field(default_factory=dict)


def objects_from_links(links: list[Link]) -> dict[int, ObjectLinks]:
    """Group ``</O>`` / ``</O/I>`` links of a registration payload by object id."""
    objects: dict[int, ObjectLinks] = {}
    for link in links:
        try:
            ids = parse_path(link.href)
        except ValueError:
            continue  # the root link or an alternate path
        if not ids or len(ids) > 2:
            continue
        obj = objects.setdefault(ids[0], ObjectLinks(ids[0]))
        if len(ids) == 1:
            obj.attrs = link.attrs
            obj.version = link.get("ver")
        else:
            obj.instances.append(ids[1])
    return objects


@dataclass
class Registration:
    """One client registration as the server currently knows it."""

    id: str
    ep: str
    params: dict[str, str | None]
    links: list[Link]
    remote: Any
    registered_at: float
    updated_at: float

    @property
    def location(self) -> str:
        return f"/rd/{self.id}"

    @property
    def lifetime(self) -> int:
        """Current lifetime in seconds (86400 if ``lt`` was never sent)."""
        return int(self.params.get("lt") or 86400)

    @property
    def expires_at(self) -> float:
        """Loop time at which the registration expires without an Update."""
        return self.updated_at + self.lifetime

    @property
    def objects(self) -> dict[int, ObjectLinks]:
        return objects_from_links(self.links)

    @property
    def address(self) -> tuple[str, int]:
        """(IPv4 or IPv6 host, port) of the client, usable with a plain socket."""
        host, port = self.remote.sockaddr[0], self.remote.sockaddr[1]
        if host.startswith("::ffff:"):
            host = host[len("::ffff:") :]
        return host, port


@dataclass
class Event:
    """One entry in the server's event log."""

    kind: str  # register, update, deregister, register-rejected, update-unknown,
    # deregister-unknown, dropped, forget
    time: float  # event loop time (monotonic)
    wall: float  # time.time()
    ep: str | None = None
    reg_id: str | None = None
    method: str = ""
    path: str = ""
    params: dict[str, str | None] = field(default_factory=dict)
    payload: bytes = b""
    content_format: int | None = None
    links: list[Link] | None = None
    remote: Any = None
    mtype: str = ""
    mid: int | None = None
    response: str | None = None  # the code the server answered with
    error: str | None = None

    def __str__(self) -> str:
        extra = f" error={self.error}" if self.error else ""
        return (
            f"[{self.time:.3f}] {self.kind} ep={self.ep} id={self.reg_id} {self.method} {self.path}"
            f" params={self.params} -> {self.response}{extra}"
        )


@dataclass
class WireRecord:
    """One datagram that arrived on the server socket (as aiocoap decoded it)."""

    time: float
    message: Message

    @property
    def mtype(self) -> str:
        return _type_name(self.message.mtype)

    @property
    def code(self) -> str:
        return code_str(self.message.code)


# --- the registration interface --------------------------------------------------------------


class _RdSite(resource.Resource, resource.PathCapable):
    """The server's only site: /rd (and a 4.04 for everything else)."""

    def __init__(self, server: Lwm2mServer):
        super().__init__()
        self.server = server

    async def render(self, request: Message) -> Message:
        return self.server._handle_rd(request)


class Lwm2mServer:
    """The LwM2M server. ``await start()`` binds 127.0.0.1:<ephemeral>."""

    def __init__(self, *, host: str = "127.0.0.1", model: Model | None = None):
        self.host = host
        self.model = model or load_model()
        self.context: Context | None = None
        self.port: int | None = None
        self.registrations: dict[str, Registration] = {}
        #: The address each endpoint last registered or updated from.
        self.last_remote: dict[str, Any] = {}
        self.events: list[Event] = []
        self.wire: list[WireRecord] = []
        self.silent = False
        self._cursors: dict[str, int] = {}
        self._changed: asyncio.Event | None = None
        self._observations: dict[bytes, Observation] = {}
        self._raw_waiters: list[tuple[Callable[[Message], bool], asyncio.Future]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # lifecycle

    async def start(self) -> Lwm2mServer:
        """Bind the socket and install the wire tap."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self.context = await Context.create_server_context(
            _RdSite(self), bind=(self.host, 0), transports=["udp6"]
        )
        (token_manager,) = self.context.request_interfaces
        self._mm = token_manager.token_interface
        self._orig_dispatch = self._mm.dispatch_message
        self._mm.dispatch_message = self._dispatch
        sock = self._mm.message_interface.transport.get_extra_info("socket")
        self.port = sock.getsockname()[1]
        return self

    async def stop(self) -> None:
        """Shut the context down."""
        for obs in list(self._observations.values()):
            obs._detach()
        if self.context is not None:
            await self.context.shutdown()
            self.context = None

    @property
    def uri(self) -> str:
        """``coap://127.0.0.1:<port>`` for the client's configuration."""
        return f"coap://{self.host}:{self.port}"

    def now(self) -> float:
        return self._loop.time()

    # switches

    def go_silent(self) -> None:
        """Drop every incoming request (and ping) without answering; DM responses still arrive."""
        self.silent = True

    def resume(self) -> None:
        """Answer requests again."""
        self.silent = False

    def forget(self, ep: str | None = None) -> Registration:
        """Drop a registration as if the server lost its state; the next Update gets 4.04."""
        reg = self.registration(ep)
        del self.registrations[reg.id]
        self._append(Event("forget", self.now(), time.time(), ep=reg.ep, reg_id=reg.id))
        return reg

    # registrations

    def registration(self, ep: str | None = None) -> Registration:
        """The current registration of ``ep`` (or the only/latest one when ep is None)."""
        regs = [r for r in self.registrations.values() if ep is None or r.ep == ep]
        if not regs:
            raise NotRegistered(f"no registration for endpoint {ep!r}; events: {self.describe_events()}")
        return max(regs, key=lambda r: r.registered_at)

    def client(self, ep: str | None = None, *, timeout: float = DEFAULT_REQUEST_TIMEOUT) -> EndpointClient:
        """A DM client for endpoint ``ep``; it follows re-registrations of that endpoint."""
        if ep is None:
            ep = self.registration().ep
        return EndpointClient(self, ep, timeout=timeout)

    def _handle_rd(self, request: Message) -> Message:
        path = request.opt.uri_path
        if path == ("rd",) and request.code == Code.POST:
            return self._register(request)
        if len(path) == 2 and path[0] == "rd":
            if request.code == Code.POST:
                return self._update(request, path[1])
            if request.code == Code.DELETE:
                return self._deregister(request, path[1])
            return Message(code=Code.METHOD_NOT_ALLOWED)
        return Message(code=Code.NOT_FOUND)

    def _event_from(self, kind: str, request: Message, **kw) -> Event:
        return Event(
            kind,
            self.now(),
            time.time(),
            method=str(request.code),
            path="/" + "/".join(request.opt.uri_path),
            payload=bytes(request.payload),
            content_format=_int_or_none(request.opt.content_format),
            remote=request.remote,
            mtype=_type_name(request.mtype),
            mid=request.mid,
            **kw,
        )

    def _parse_links(self, request: Message) -> list[Link]:
        if not request.payload:
            return []
        cf = _int_or_none(request.opt.content_format)
        if cf != CF_LINK_FORMAT:
            raise ValueError(f"object list with Content-Format {cf}, expected 40")
        return parse_link_format(request.payload)

    def _register(self, request: Message) -> Message:
        try:
            params = parse_query(request.opt.uri_query)
            if not params.get("ep"):
                raise ValueError("Register without ep")
            links = self._parse_links(request)
        except (ValueError, LinkFormatError) as e:
            self._append(self._event_from("register-rejected", request, response="4.00", error=str(e)))
            return Message(code=Code.BAD_REQUEST, payload=str(e).encode())
        ep = params["ep"]
        for old in [r for r in self.registrations.values() if r.ep == ep]:
            del self.registrations[old.id]
        reg_id = secrets.token_hex(3)
        now = self.now()
        reg = Registration(reg_id, ep, params, links, request.remote, now, now)
        self.registrations[reg_id] = reg
        self.last_remote[ep] = request.remote
        self._append(
            self._event_from(
                "register", request, ep=ep, reg_id=reg_id, params=params, links=links, response="2.01"
            )
        )
        return Message(code=Code.CREATED, location_path=("rd", reg_id))

    def _update(self, request: Message, reg_id: str) -> Message:
        reg = self.registrations.get(reg_id)
        if reg is None:
            self._append(self._event_from("update-unknown", request, reg_id=reg_id, response="4.04"))
            return Message(code=Code.NOT_FOUND)
        try:
            params = parse_query(request.opt.uri_query)
            links = self._parse_links(request)
        except (ValueError, LinkFormatError) as e:
            self._append(
                self._event_from("update", request, ep=reg.ep, reg_id=reg_id, response="4.00", error=str(e))
            )
            return Message(code=Code.BAD_REQUEST, payload=str(e).encode())
        reg.params.update(params)
        if request.payload:
            reg.links = links
        reg.remote = request.remote
        self.last_remote[reg.ep] = request.remote
        reg.updated_at = self.now()
        self._append(
            self._event_from(
                "update",
                request,
                ep=reg.ep,
                reg_id=reg_id,
                params=params,
                links=links if request.payload else None,
                response="2.04",
            )
        )
        return Message(code=Code.CHANGED)

    def _deregister(self, request: Message, reg_id: str) -> Message:
        reg = self.registrations.pop(reg_id, None)
        if reg is None:
            self._append(self._event_from("deregister-unknown", request, reg_id=reg_id, response="4.04"))
            return Message(code=Code.NOT_FOUND)
        self._append(self._event_from("deregister", request, ep=reg.ep, reg_id=reg_id, response="2.02"))
        return Message(code=Code.DELETED)

    # event log and waiters

    def _append(self, event: Event) -> None:
        log.info("event %s", event)
        self.events.append(event)
        self._changed.set()
        self._changed = asyncio.Event()

    def mark(self) -> int:
        """A cursor for ``since=``: only events logged after this call count."""
        return len(self.events)

    def describe_events(self, since: int = 0) -> str:
        """The event log as text (for failure messages)."""
        return "\n".join(str(e) for e in self.events[since:]) or "(no events)"

    def events_of(self, kind: str, since: int = 0) -> list[Event]:
        """All logged events of ``kind`` from index ``since``."""
        return [e for e in self.events[since:] if e.kind == kind]

    async def wait_event(
        self,
        kind: str | tuple[str, ...],
        timeout: float,
        *,
        since: int | None = None,
        ep: str | None = None,
        predicate: Callable[[Event], bool] | None = None,
        what: str | None = None,
    ) -> Event:
        """The first ``kind`` event not yet returned by an earlier wait for that kind.

        ``kind`` may be a tuple of kinds (they share one cursor). With ``since`` the search starts
        at that log index instead. Raises EventTimeout.
        """
        kinds = (kind,) if isinstance(kind, str) else kind
        start = self._cursors.get(kind, 0) if since is None else since
        deadline = self.now() + timeout
        while True:
            for i in range(start, len(self.events)):
                e = self.events[i]
                if e.kind in kinds and (ep is None or e.ep == ep) and (predicate is None or predicate(e)):
                    self._cursors[kind] = i + 1
                    return e
            start = max(start, len(self.events))
            remaining = deadline - self.now()
            if remaining <= 0:
                raise EventTimeout(
                    f"{what or kinds} not seen within {timeout} s\nserver events:\n{self.describe_events()}"
                )
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_registration(self, timeout: float = 10.0, **kw) -> Event:
        """Next Register (see wait_event)."""
        return await self.wait_event("register", timeout, what="registration", **kw)

    async def wait_update(self, timeout: float = 10.0, **kw) -> Event:
        """Next registration Update to a known registration."""
        return await self.wait_event("update", timeout, what="registration update", **kw)

    async def wait_deregistration(self, timeout: float = 10.0, **kw) -> Event:
        """Next De-register of a known registration."""
        return await self.wait_event("deregister", timeout, what="de-registration", **kw)

    async def assert_no_event(self, kind: str, duration: float, *, since: int | None = None) -> None:
        """Wait ``duration`` seconds and fail if an event of ``kind`` was logged meanwhile."""
        start = self.mark() if since is None else since
        await asyncio.sleep(duration)
        found = self.events_of(kind, start)
        assert not found, f"unexpected {kind}: {found[0]}\nserver events:\n{self.describe_events()}"

    # the wire tap

    def _dispatch(self, message: Message) -> None:
        """Sees every incoming datagram before aiocoap does."""
        now = self.now()
        # A copy: aiocoap's block-wise reassembly later mutates the first response in place
        # (payload and Block2 option), which would rewrite history here.
        self.wire.append(WireRecord(now, message.copy()))
        try:
            if self._intercept(message, now):
                return
        except Exception:  # never let a harness bug kill aiocoap's receive path
            log.exception("wire tap failed on %r", message)
        if self.silent and (
            message.code.is_request() or (message.code == Code.EMPTY and message.mtype == CON)
        ):
            self._append(
                Event(
                    "dropped",
                    now,
                    time.time(),
                    method=str(message.code),
                    path="/" + "/".join(message.opt.uri_path),
                    params=_safe_query(message.opt.uri_query),
                    payload=bytes(message.payload),
                    remote=message.remote,
                    mtype=_type_name(message.mtype),
                    mid=message.mid,
                )
            )
            return
        self._orig_dispatch(message)

    def _intercept(self, message: Message, now: float) -> bool:
        """Returns True if the message was consumed here."""
        for matcher, future in list(self._raw_waiters):
            if not future.done() and matcher(message):
                future.set_result(message)
                return True
        if message.code.is_response() or message.code == Code.EMPTY:
            obs = self._observations.get(bytes(message.token)) if message.token else None
            if obs is not None:
                return obs._on_wire(message, now)
        return False

    def _send_rst(self, message: Message) -> None:
        rst = Message(_mtype=RST, _mid=message.mid, code=Code.EMPTY, payload=b"")
        rst.remote = message.remote.as_response_address()
        self._mm.message_interface.send(rst)

    # raw datagrams

    def next_mid(self) -> int:
        """A message ID from aiocoap's own counter, so raw and library messages never collide."""
        return self._mm._next_message_id()

    def raw_send(self, data: bytes, remote: Any = None) -> None:
        """Send bytes from the server socket to ``remote`` (default: the registered client)."""
        remote = remote or self.registration().remote
        self._mm.message_interface.transport.sendmsg(data, [], 0, remote.sockaddr)

    async def raw_exchange(self, data: bytes, *, remote: Any = None, timeout: float = 2.0) -> Message | None:
        """Send raw bytes and return the reply (ACK/RST with the same MID, or a response with the
        same token), or None if nothing matching arrives within ``timeout``."""
        remote = remote or self.registration().remote
        mid = int.from_bytes(data[2:4], "big") if len(data) >= 4 else None
        tkl = data[0] & 0x0F if data else 0
        token = bytes(data[4 : 4 + tkl]) if tkl <= 8 and len(data) >= 4 + tkl else b""

        def matcher(m: Message) -> bool:
            if m.remote != remote:
                return False
            if m.mtype in (ACK, RST) and m.mid == mid:
                return True
            return bool(token) and m.code.is_response() and bytes(m.token) == token

        future = self._loop.create_future()
        entry = (matcher, future)
        self._raw_waiters.append(entry)
        try:
            self.raw_send(data, remote)
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            self._raw_waiters.remove(entry)

    def count_wire(self, predicate: Callable[[WireRecord], bool], since: float = 0.0) -> int:
        """How many incoming datagrams since loop time ``since`` satisfy ``predicate``."""
        return sum(1 for r in self.wire if r.time >= since and predicate(r))


def _safe_query(items) -> dict[str, str | None]:
    try:
        return parse_query(items)
    except ValueError:
        return {"<unparsable>": ",".join(items)}


# --- DM client -------------------------------------------------------------------------------


@dataclass
class Response:
    """A response to a DM request."""

    code: str  # "2.05"
    content_format: int | None
    payload: bytes
    message: Message
    path: str
    model: Model

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")

    @property
    def observe(self) -> int | None:
        return self.message.opt.observe

    @property
    def location_path(self) -> tuple[str, ...]:
        return tuple(self.message.opt.location_path)

    def decode(self) -> dict[str, Any]:
        """Decode the payload by its Content-Format (see lwm2m_codecs.decode)."""
        return decode(self.payload, self.content_format, self.path, self.model)

    @property
    def links(self) -> list[Link]:
        """The payload parsed as link format (checks the Content-Format is 40)."""
        assert self.content_format == CF_LINK_FORMAT, f"Content-Format {self.content_format}, expected 40"
        return parse_link_format(self.payload)

    def __str__(self) -> str:
        return f"{self.code} cf={self.content_format} payload={self.payload[:200]!r}"


@dataclass
class Notification:
    """One notification (the initial Observe response is notification 0)."""

    time: float
    observe: int | None
    code: str
    content_format: int | None
    payload: bytes
    mtype: str
    path: str
    model: Model

    def decode(self) -> dict[str, Any]:
        """The payload decoded by its Content-Format (raises CodecError if malformed)."""
        return decode(self.payload, self.content_format, self.path, self.model)

    @property
    def values(self) -> dict[str, Any]:
        """Same as ``decode()``."""
        return self.decode()


class Observation:
    """An Observe relationship; ``notifications`` starts with the initial response."""

    def __init__(
        self,
        client: EndpointClient,
        path: str,
        accept: int | None,
        request,
        first: Message,
        first_time: float,
    ):
        self.client = client
        self.server = client.server
        self.path = path
        self.accept = accept
        self.request = request
        self.token = bytes(first.token)
        self.initial = client._response(first, path)
        self.established = first.code.is_successful() and first.opt.observe is not None
        self.notifications: list[Notification] = []
        #: (time, Observe value, message type) of every notification seen on the wire.
        self.wire: list[tuple[float, int, str]] = []
        #: Notifications that arrived after a cancellation completed.
        self.after_cancel: list[tuple[float, Message]] = []
        self.rejected: list[tuple[float, Message]] = []  # notifications answered with RST
        self.final: Message | None = None  # a response without Observe that ended it
        self.cancelled = False
        self._rst_armed = False
        self._rst_future: asyncio.Future | None = None
        self._cancel_match: Callable[[Message], bool] | None = None
        self._cancel_future: asyncio.Future | None = None
        self._changed = asyncio.Event()
        self._read_pos = 0
        if self.established:
            self._record(first, first_time)
            self.wire.append((first_time, first.opt.observe, _type_name(first.mtype)))
            self.server._observations[self.token] = self
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                request.observation.register_callback(self._on_callback)
                request.observation.register_errback(self._on_errback)

    def __repr__(self) -> str:
        return (
            f"<Observation {self.path} initial={self.initial.code} established={self.established} "
            f"notifications={len(self.notifications)} cancelled={self.cancelled} "
            f"after_cancel={len(self.after_cancel)}>"
        )

    def _record(self, message: Message, when: float) -> None:
        self.notifications.append(
            Notification(
                when,
                message.opt.observe,
                code_str(message.code),
                _int_or_none(message.opt.content_format),
                bytes(message.payload),
                _type_name(message.mtype),
                self.path,
                self.server.model,
            )
        )
        self._changed.set()
        self._changed = asyncio.Event()

    def _on_callback(self, message: Message) -> None:
        if message.opt.observe is None:
            self.final = message
            return
        when = next((t for t, v, _ in reversed(self.wire) if v == message.opt.observe), self.server.now())
        self._record(message, when)

    def _on_errback(self, exc: Exception) -> None:
        log.info("observation of %s ended: %r", self.path, exc)

    def _on_wire(self, message: Message, now: float) -> bool:
        """Called by the server's tap for every message with our token; True = consumed."""
        if self._cancel_match is not None and self._cancel_match(message):
            self.cancelled = True  # from here on, any notification is "after cancel"
            if not self._cancel_future.done():
                self._cancel_future.set_result(message)
            return False  # aiocoap still needs it to stop retransmitting / end the request
        if message.opt.observe is None or message.mtype not in (CON, NON):
            return False
        if self.cancelled:
            self.after_cancel.append((now, message))
            if self._rst_armed:
                self.server._send_rst(message)
                return True
            return False
        self.wire.append((now, message.opt.observe, _type_name(message.mtype)))
        if self._rst_armed:
            self.server._send_rst(message)
            self.rejected.append((now, message))
            self.cancelled = True
            if not self._rst_future.done():
                self._rst_future.set_result(now)
            return True
        return False

    def _detach(self) -> None:
        self.server._observations.pop(self.token, None)

    def wire_observe_values(self) -> list[int]:
        """Observe option values in arrival order (before aiocoap's reordering filter)."""
        return [v for _, v, _ in self.wire]

    async def next(self, timeout: float) -> Notification:
        """The next notification not yet returned (the first call returns the initial response)."""
        deadline = self.server.now() + timeout
        while self._read_pos >= len(self.notifications):
            remaining = deadline - self.server.now()
            if remaining <= 0:
                raise EventTimeout(
                    f"no notification for {self.path} within {timeout} s "
                    f"({len(self.notifications)} so far, cancelled={self.cancelled})"
                )
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass
        self._read_pos += 1
        return self.notifications[self._read_pos - 1]

    async def take(self, count: int, timeout_each: float) -> list[Notification]:
        """The next ``count`` notifications."""
        return [await self.next(timeout_each) for _ in range(count)]

    async def assert_silent(self, duration: float) -> None:
        """Fail if any notification for this token arrives during ``duration`` seconds."""
        before_n, before_after = len(self.notifications), len(self.after_cancel)
        await asyncio.sleep(duration)
        new = len(self.notifications) - before_n + len(self.after_cancel) - before_after
        assert new == 0, f"{new} notification(s) for {self.path} after cancellation"


class EndpointClient:
    """DM and Information Reporting operations against one registered endpoint."""

    def __init__(self, server: Lwm2mServer, ep: str, *, timeout: float = DEFAULT_REQUEST_TIMEOUT):
        self.server = server
        self.ep = ep
        self.timeout = timeout

    @property
    def registration(self) -> Registration:
        return self.server.registration(self.ep)

    @property
    def remote(self):
        """The endpoint's address: from its registration, or the last one it registered from
        while the server has none (after ``forget``, between De-register and Register)."""
        try:
            return self.registration.remote
        except NotRegistered:
            if self.ep in self.server.last_remote:
                return self.server.last_remote[self.ep]
            raise

    def _response(self, message: Message, path: str) -> Response:
        return Response(
            code_str(message.code),
            _int_or_none(message.opt.content_format),
            bytes(message.payload),
            message,
            path,
            self.server.model,
        )

    def _message(
        self,
        method: str,
        path: str,
        *,
        payload: bytes = b"",
        content_format: int | None = None,
        accept: int | None = None,
        query: tuple[str, ...] = (),
        observe: int | None = None,
        block2_szx: int | None = None,
        block1: tuple[int, bool, int] | None = None,
        size1: int | None = None,
    ) -> Message:
        msg = Message(code=_METHODS[method], uri_path=_segments(path), payload=bytes(payload))
        if content_format is not None:
            msg.opt.content_format = content_format
        if accept is not None:
            msg.opt.accept = accept
        if query:
            msg.opt.uri_query = tuple(query)
        if observe is not None:
            msg.opt.observe = observe
        if block2_szx is not None:
            msg.opt.block2 = BlockOption.BlockwiseTuple(0, False, block2_szx)
        if block1 is not None:
            msg.opt.block1 = BlockOption.BlockwiseTuple(*block1)
        if size1 is not None:
            msg.opt.size1 = size1
        msg.remote = self.remote
        return msg

    async def request(
        self, method: str, path: str, *, timeout: float | None = None, blockwise: bool = True, **kw
    ) -> Response:
        """Send one request and return the final response.

        With ``blockwise`` (default) aiocoap splits large payloads (Block1) and reassembles
        Block2 responses; without it the message goes out exactly as built.
        """
        msg = self._message(method, path, **kw)
        timeout = timeout or self.timeout
        req = self.server.context.request(msg, handle_blockwise=blockwise)
        try:
            message = await asyncio.wait_for(req.response, timeout)
        except TimeoutError:
            raise EventTimeout(f"no response to {method} {path} from {self.ep} within {timeout} s") from None
        except coap_error.Error as e:
            raise AssertionError(f"{method} {path} to {self.ep} failed at the CoAP layer: {e!r}") from e
        return self._response(message, path)

    # Device Management

    async def read(self, path: str, accept: int | None = None, *, block2_szx: int | None = None) -> Response:
        """Read (GET, optional Accept)."""
        return await self.request("GET", path, accept=accept, block2_szx=block2_szx)

    async def write(self, path: str, payload: bytes, cf: int | None, method: str = "PUT") -> Response:
        """Write: PUT = replace, POST = partial update."""
        assert method in ("PUT", "POST")
        return await self.request(method, path, payload=payload, content_format=cf)

    async def write_values(
        self, path: str, values: dict[str, Any], fmt: str | int, method: str = "PUT"
    ) -> Response:
        """Encode ``{path: value}`` in ``fmt`` ("tlv", "senml-json", "senml-cbor", "text", or a CF)."""
        payload, cf = encode_values(values, fmt, path, self.server.model)
        return await self.write(path, payload, cf, method)

    async def write_blockwise(
        self, path: str, payload: bytes, cf: int, *, szx: int = 6, method: str = "PUT"
    ) -> list[Response]:
        """Block1 transfer under our control: one request per block (Size1 on the first), stopping
        at the first response that is not 2.31 Continue; honours a smaller SZX in a 2.31.

        aiocoap's own Block1 loop keeps sending after an error that echoes Block1 with M=1, so
        tests that check *when* a client refuses a body use this instead.
        """
        responses: list[Response] = []
        offset = 0
        while True:
            size = 16 << szx
            more = offset + size < len(payload)
            resp = await self.request(
                method,
                path,
                payload=payload[offset : offset + size],
                content_format=cf,
                block1=(offset // size, more, szx),
                size1=len(payload) if offset == 0 else None,
                blockwise=False,
            )
            responses.append(resp)
            if resp.code != "2.31" or not more:
                return responses
            offset += size
            echoed = resp.message.opt.block1
            if echoed is not None and echoed.size_exponent < szx:
                szx = echoed.size_exponent

    async def execute(self, path: str, args: str | bytes | None = None, *, cf: int | None = None) -> Response:
        """Execute (POST, arguments as text such as ``0='x',1``)."""
        payload = args.encode() if isinstance(args, str) else (args or b"")
        return await self.request("POST", path, payload=payload, content_format=cf)

    async def create(self, path: str, payload: bytes, cf: int) -> Response:
        """Create (POST on an object)."""
        return await self.request("POST", path, payload=payload, content_format=cf)

    async def delete(self, path: str) -> Response:
        """Delete (DELETE)."""
        return await self.request("DELETE", path)

    async def discover(self, path: str) -> Response:
        """Discover (GET with Accept: link format)."""
        return await self.request("GET", path, accept=CF_LINK_FORMAT)

    async def write_attributes(self, path: str, **attrs: Any) -> Response:
        """Write-Attributes: PUT with only a query; ``pmin=None`` sends ``?pmin`` (unset)."""
        query = tuple(name if value is None else f"{name}={value}" for name, value in attrs.items())
        return await self.request("PUT", path, query=query)

    # Information Reporting

    async def observe(
        self, path: str, accept: int | None = None, *, timeout: float | None = None
    ) -> Observation:
        """GET Observe=0. Check ``obs.established`` / ``obs.initial.code`` for the outcome."""
        msg = self._message("GET", path, accept=accept, observe=0)
        timeout = timeout or self.timeout
        req = self.server.context.request(msg)
        try:
            first = await asyncio.wait_for(asyncio.shield(req.response), timeout)
        except TimeoutError:
            req.response.cancel()
            raise EventTimeout(f"no response to Observe {path} from {self.ep} within {timeout} s") from None
        arrived = next(
            (r.time for r in reversed(self.server.wire) if bytes(r.message.token) == bytes(first.token)),
            self.server.now(),
        )
        return Observation(self, path, accept, req, first, arrived)

    async def cancel_observe(
        self, obs: Observation, mode: str = "get", *, timeout: float | None = None
    ) -> Response | float:
        """Cancel an observation.

        ``mode="get"``: GET Observe=1 with the same token and options; returns the response.
        ``mode="rst"``: answer the next notification with RST; returns the loop time the RST went.
        """
        timeout = timeout or self.timeout
        if mode == "rst":
            obs._rst_future = self.server._loop.create_future()
            obs._rst_armed = True
            try:
                return await asyncio.wait_for(obs._rst_future, timeout)
            except TimeoutError:
                raise EventTimeout(f"no notification to reject with RST within {timeout} s") from None
        if mode != "get":
            raise ValueError(f"unknown cancel mode {mode!r}")
        msg = self._message("GET", obs.path, accept=obs.accept, observe=1)
        msg.token = obs.token
        msg.mtype = CON
        future = self.server._loop.create_future()

        def failed() -> None:
            if not future.done():
                future.set_exception(
                    AssertionError(f"cancel GET for {obs.path} was rejected (RST) or timed out")
                )

        obs._cancel_future = future
        self.server._mm.send_message(msg, failed)
        mid = msg.mid
        obs._cancel_match = lambda m: (
            (m.mtype == ACK and m.mid == mid and m.code != Code.EMPTY)
            or (m.mtype != ACK and m.code.is_response() and m.opt.observe is None)
        )
        try:
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise EventTimeout(
                f"no response to the cancelling GET of {obs.path} within {timeout} s"
            ) from None
        obs.cancelled = True
        return self._response(reply, obs.path)

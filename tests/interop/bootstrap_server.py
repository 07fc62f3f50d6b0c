"""A LwM2M 1.1 Bootstrap-Server on aiocoap, for driving the real ``lwm2md`` binary.

``BootstrapServer`` is an ``Lwm2mServer`` (same aiocoap server context on 127.0.0.1:<ephemeral>,
event log with waiters, wire tap, silence switch, raw datagrams) whose only resource is ``/bs``:

* **Bootstrap-Request** (client → BS): ``POST /bs?ep=<name>[&pct=<cf>]`` is logged as a
  ``bootstrap-request`` event (ep, params incl. ``pct``, source address, loop time, MID, type)
  and answered with ``request_code`` (2.04 unless a test changes it, e.g. to 4.00). A request
  without ``ep`` or with a repeated parameter gets 4.00 and a ``bootstrap-request-rejected``
  event. ``wait_request(timeout)`` returns the next one (act, then wait: nothing is missed).
  Anything else sent to the BS (a Register, say) is answered 4.04 and logged as ``unexpected``.
* **BS → client operations**, sent *from the same socket* to the address of the latest
  Bootstrap-Request (or ``remote=``): ``delete``, ``write`` (PUT; TLV, SenML CBOR or SenML
  JSON, values keyed by full paths or by ids relative to the target), ``read``, ``discover``
  (the reply parsed as link format) and ``finish`` (``POST /bs``, empty). Each returns a
  ``BsResponse`` (code, Content-Format, payload, ``values`` decoded, ``links`` parsed) and
  logs a ``bs-op`` event with the method, path and answer, so a failure report shows the whole
  bootstrap conversation.
* ``provision()`` runs a typical sequence: Delete ``/``, Discover to learn the instance ids in
  use (the Bootstrap-Server account keeps its own), Write one Security and one Server instance
  per ``ServerAccount`` and one Access Control instance per ``AccessControl``, then Finish.

aiocoap specifics (as in ``lwm2m_server``): requests to the client are built with
``msg.remote`` set to the aiocoap remote of the client's Bootstrap-Request and go through the
server context, so they leave from the BS port. The answer to the Bootstrap-Request is added to
aiocoap's response pipe synchronously when ``render`` returns, i.e. it is on the wire before a
test that waited for the request gets to run and sends its first Delete.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aiocoap import Message
from aiocoap import error as coap_error
from aiocoap.numbers.codes import Code

from lwm2m_codecs import (
    CF_LINK_FORMAT,
    CF_TLV,
    Link,
    encode_values,
    parse_link_format,
)
from lwm2m_model import Model, format_path, parse_path
from lwm2m_server import (
    _METHODS,
    DEFAULT_REQUEST_TIMEOUT,
    Event,
    EventTimeout,
    Lwm2mServer,
    Response,
    _safe_query,
    _segments,
    _type_name,
    code_str,
    parse_query,
)

#: Security Mode (/0/x/2) values.
SECURITY_PSK, SECURITY_RPK, SECURITY_CERTIFICATE, SECURITY_NOSEC, SECURITY_EST = 0, 1, 2, 3, 4
#: Access Control (/2/x/2) bits.
ACL_READ, ACL_WRITE, ACL_EXECUTE, ACL_DELETE, ACL_CREATE = 1, 2, 4, 8, 16
#: Access Control Owner value meaning "managed by the Bootstrap-Server only".
ACL_OWNER_BOOTSTRAP = 65535


class BootstrapError(AssertionError):
    """A bootstrap step the test relied on did not get the expected answer."""


# --- values ----------------------------------------------------------------------------------


def expand_values(path: str, values: dict[Any, Any] | Any) -> dict[str, Any]:
    """Values for a write on ``path`` → ``{full path: value}``.

    Keys may be full paths (``"/1/0/1"``, as for ``EndpointClient.write_values``) or ids
    relative to ``path``: on ``/O`` instance id → ``{resource id: value}``; on ``/O/I``
    resource id → value; on ``/O/I/R`` resource instance id → value. A multi-instance resource
    value is a dict ``{resource instance id: value}`` (or a list, numbered from 0). On a
    resource path a bare value (not a dict) is the resource's value.
    """
    base = parse_path(path)
    if not isinstance(values, dict):
        if len(base) not in (3, 4):
            raise ValueError(f"a single value needs a resource path, got {path}")
        return {path: values}
    out: dict[str, Any] = {}

    def put(ids: tuple[int, ...], value: Any) -> None:
        if len(ids) == 3 and isinstance(value, (dict, list)):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for riid, v in items:
                out[format_path((*ids, int(riid)))] = v
        else:
            out[format_path(ids)] = value

    for key, value in values.items():
        if isinstance(key, str):
            ids = parse_path(key)
            if ids[: len(base)] != base:
                raise ValueError(f"{key} is not below {path}")
            put(ids, value)
        elif len(base) == 1:
            if not isinstance(value, dict):
                raise ValueError(f"on {path}, instance {key} needs a dict of resources")
            for rid, v in value.items():
                put((*base, int(key), int(rid)), v)
        elif len(base) in (2, 3):
            put((*base, int(key)), value)
        else:
            raise ValueError(f"cannot key values by id on {path}")
    return out


def _opaque(value: bytes | str | None) -> bytes:
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else bytes(value)


@dataclass
class ServerAccount:
    """One LwM2M Server account: a Security (/0) and a Server (/1) instance with one ssid.

    ``psk_key`` switches the default security mode to PSK (0); otherwise NoSec (3). Instance
    ids are chosen by ``provision`` (free ones) unless given.
    """

    ssid: int
    uri: str
    lifetime: int = 60
    binding: str = "U"
    notification_storing: bool = True
    security_mode: int | None = None
    psk_identity: bytes | str | None = None
    psk_key: bytes | str | None = None
    server_public_key: bytes | None = None
    security_iid: int | None = None
    server_iid: int | None = None
    #: Extra Security / Server resources (resource id → value), written with the rest.
    security_extra: dict[int, Any] = field(default_factory=dict)
    server_extra: dict[int, Any] = field(default_factory=dict)

    @property
    def mode(self) -> int:
        if self.security_mode is not None:
            return self.security_mode
        return SECURITY_PSK if self.psk_key is not None else SECURITY_NOSEC

    def security_values(self) -> dict[int, Any]:
        """/0/x: URI, not a BS account, mode, identity, server key, secret key, ssid."""
        return {
            0: self.uri,
            1: False,
            2: self.mode,
            3: _opaque(self.psk_identity),
            4: _opaque(self.server_public_key),
            5: _opaque(self.psk_key),
            10: self.ssid,
            **self.security_extra,
        }

    def server_values(self) -> dict[int, Any]:
        """/1/x: the mandatory writable resources (ssid, lifetime, storing, binding)."""
        return {
            0: self.ssid,
            1: self.lifetime,
            6: self.notification_storing,
            7: self.binding,
            **self.server_extra,
        }


@dataclass
class AccessControl:
    """One Access Control (/2) instance: ACLs (ssid → bits; 0 = default) for /object/instance."""

    object_id: int
    instance_id: int
    acl: dict[int, int]
    owner: int
    iid: int | None = None

    def values(self) -> dict[int, Any]:
        return {0: self.object_id, 1: self.instance_id, 2: dict(self.acl), 3: self.owner}


@dataclass
class Provisioned:
    """What ``provision`` wrote: ssid → (Security iid, Server iid), ACL iids, Finish's answer."""

    accounts: dict[int, tuple[int, int]]
    acl_iids: list[int]
    finish: BsResponse | None
    bootstrap_iids: list[int]  # /0 instances without ssid seen before writing (the BS account)


# --- responses -------------------------------------------------------------------------------


@dataclass
class BsResponse(Response):
    """A client's answer to a BS operation (``Response`` plus decoded views)."""

    @property
    def values(self) -> dict[str, Any]:
        """The payload decoded by its Content-Format (``{}`` without payload)."""
        return self.decode() if self.payload else {}

    @property
    def links(self) -> list[Link]:
        """The payload as link format (asserts Content-Format 40)."""
        assert self.content_format == CF_LINK_FORMAT, f"Content-Format {self.content_format}, expected 40"
        return parse_link_format(self.payload)

    def link(self, href: str) -> Link | None:
        """The link with target ``href`` (e.g. ``"/0/1"``), or None."""
        return next((link for link in self.links if link.href == href), None)

    def instances(self, oid: int) -> dict[int, dict[str, str | None]]:
        """Instance links of object ``oid``: instance id → attributes."""
        out = {}
        for link in self.links:
            try:
                ids = parse_path(link.href)
            except ValueError:
                continue
            if len(ids) == 2 and ids[0] == oid:
                out[ids[1]] = link.attrs
        return out

    @property
    def root(self) -> dict[str, str | None] | None:
        """Attributes of the ``</>`` link (``lwm2m=``), or None when there is none."""
        link = self.link("/")
        return link.attrs if link is not None else None


# --- the server --------------------------------------------------------------------------------


class BootstrapServer(Lwm2mServer):
    """The Bootstrap-Server. ``await start()`` binds 127.0.0.1:<ephemeral>; ``uri`` is its URI."""

    def __init__(self, *, host: str = "127.0.0.1", model: Model | None = None):
        super().__init__(host=host, model=model)
        #: The answer to every Bootstrap-Request ("2.04"; e.g. "4.00" to refuse).
        self.request_code = "2.04"
        #: Timeout of one BS operation (CoAP retransmissions included).
        self.timeout = DEFAULT_REQUEST_TIMEOUT
        #: aiocoap remote and endpoint name of the latest Bootstrap-Request: where operations go
        #: by default.
        self.peer: Any = None
        self.peer_ep: str | None = None

    # the /bs resource (the inherited site calls _handle_rd for every request)

    def _handle_rd(self, request: Message) -> Message:
        if request.opt.uri_path == ("bs",) and request.code == Code.POST:
            return self._bootstrap_request(request)
        self._append(
            self._event_from(
                "unexpected", request, params=_safe_query(request.opt.uri_query), response="4.04"
            )
        )
        return Message(code=Code.NOT_FOUND)

    def _bootstrap_request(self, request: Message) -> Message:
        try:
            params = parse_query(request.opt.uri_query)
            if not params.get("ep"):
                raise ValueError("Bootstrap-Request without ep")
        except ValueError as e:
            self._append(
                self._event_from(
                    "bootstrap-request-rejected",
                    request,
                    params=_safe_query(request.opt.uri_query),
                    response="4.00",
                    error=str(e),
                )
            )
            return Message(code=Code.BAD_REQUEST, payload=str(e).encode())
        self.peer, self.peer_ep = request.remote, params["ep"]
        self.last_remote[params["ep"]] = request.remote
        self._append(
            self._event_from(
                "bootstrap-request", request, ep=params["ep"], params=params, response=self.request_code
            )
        )
        major, minor = (int(x) for x in self.request_code.split("."))
        return Message(code=Code((major << 5) | minor))

    async def wait_request(self, timeout: float = 10.0, **kw) -> Event:
        """The next Bootstrap-Request (see ``wait_event``: ``since=``, ``ep=``, ``predicate=``)."""
        return await self.wait_event("bootstrap-request", timeout, what="Bootstrap-Request", **kw)

    def requests(self, since: int = 0) -> list[Event]:
        """Every Bootstrap-Request logged from index ``since``."""
        return self.events_of("bootstrap-request", since)

    # operations towards the client

    async def request(
        self,
        method: str,
        path: str,
        *,
        remote: Any = None,
        payload: bytes = b"",
        content_format: int | None = None,
        accept: int | None = None,
        timeout: float | None = None,
    ) -> BsResponse:
        """Send one request to the client (default: the latest Bootstrap-Request's address)."""
        remote = remote or self.peer
        if remote is None:
            raise BootstrapError("no Bootstrap-Request yet: no client address to send to")
        segments = ("bs",) if path == "/bs" else _segments(path)
        msg = Message(code=_METHODS[method], uri_path=segments, payload=bytes(payload))
        if content_format is not None:
            msg.opt.content_format = content_format
        if accept is not None:
            msg.opt.accept = accept
        msg.remote = remote
        timeout = timeout or self.timeout
        sent = self.now()
        req = self.context.request(msg)
        try:
            message = await asyncio.wait_for(req.response, timeout)
        except TimeoutError:
            self._log_op(method, path, remote, sent, None, "timeout")
            raise EventTimeout(f"no answer to Bootstrap {method} {path} within {timeout} s") from None
        except coap_error.Error as e:
            self._log_op(method, path, remote, sent, None, repr(e))
            raise AssertionError(f"Bootstrap {method} {path} failed at the CoAP layer: {e!r}") from e
        resp = BsResponse(
            code_str(message.code),
            None if message.opt.content_format is None else int(message.opt.content_format),
            bytes(message.payload),
            message,
            path,
            self.model,
        )
        self._log_op(method, path, remote, sent, resp, None, mtype=_type_name(message.mtype), mid=message.mid)
        return resp

    def _log_op(
        self,
        method: str,
        path: str,
        remote: Any,
        sent: float,
        resp: BsResponse | None,
        error: str | None,
        **kw,
    ) -> None:
        self._append(
            Event(
                "bs-op",
                self.now(),
                time.time(),
                method=method,
                path=path,
                payload=resp.payload if resp else b"",
                content_format=resp.content_format if resp else None,
                remote=remote,
                ep=self.peer_ep if remote is self.peer else None,
                response=resp.code if resp else None,
                error=error,
                params={"sent": f"{sent:.3f}"},
                **kw,
            )
        )

    async def delete(self, path: str, **kw) -> BsResponse:
        """Bootstrap-Delete (DELETE ``/``, ``/O`` or ``/O/I``); success is 2.02."""
        return await self.request("DELETE", path, **kw)

    async def write(
        self, path: str, values: dict[Any, Any] | Any, fmt: str | int = "tlv", **kw
    ) -> BsResponse:
        """Bootstrap-Write (PUT) of ``values`` (see ``expand_values``) encoded as ``fmt``
        ("tlv", "senml-cbor", "senml-json", "text" or a Content-Format number)."""
        full = expand_values(path, values)
        payload, cf = encode_values(full, fmt, path, self.model)
        return await self.request("PUT", path, payload=payload, content_format=cf, **kw)

    async def write_raw(self, path: str, payload: bytes, cf: int | None, **kw) -> BsResponse:
        """Bootstrap-Write (PUT) with a payload built by the caller."""
        return await self.request("PUT", path, payload=payload, content_format=cf, **kw)

    async def read(self, path: str, accept: int | None = CF_TLV, **kw) -> BsResponse:
        """Bootstrap-Read (GET with Accept; TLV by default)."""
        return await self.request("GET", path, accept=accept, **kw)

    async def discover(self, path: str = "/", **kw) -> BsResponse:
        """Bootstrap-Discover (GET, Accept 40); ``.links`` / ``.instances(oid)`` / ``.root``."""
        return await self.request("GET", path, accept=CF_LINK_FORMAT, **kw)

    async def finish(self, **kw) -> BsResponse:
        """Bootstrap-Finish (POST /bs, empty): 2.04, or 4.06 for an inconsistent configuration."""
        return await self.request("POST", "/bs", **kw)

    def operations(self, since: int = 0) -> list[Event]:
        """Every BS operation logged from index ``since`` (``bs-op`` events)."""
        return self.events_of("bs-op", since)

    # a typical provisioning

    async def provision(
        self,
        servers: list[ServerAccount] | tuple[ServerAccount, ...] = (),
        acl: list[AccessControl] | tuple[AccessControl, ...] = (),
        *,
        remote: Any = None,
        delete: bool = True,
        fmt: str | int = "tlv",
        finish: bool = True,
        expect_finish: str | None = "2.04",
    ) -> Provisioned:
        """Delete ``/`` (optional), Discover, Write /0 and /1 per account and /2 per ACL, Finish.

        Instance ids not given are the lowest ones the Discover did not show (so the
        Bootstrap-Server account, which survives the Delete, is never overwritten). Every
        Delete must answer 2.02 and every Write 2.04, else ``BootstrapError``; Finish must answer
        ``expect_finish`` (None: anything).
        """
        remote = remote or self.peer
        if delete:
            await self._expect(self.delete("/", remote=remote), "2.02", "Bootstrap-Delete /")
        disc = await self._expect(self.discover("/", remote=remote), "2.05", "Bootstrap-Discover /")
        used = {oid: set(disc.instances(oid)) for oid in (0, 1, 2)}
        bootstrap_iids = [iid for iid, attrs in disc.instances(0).items() if "ssid" not in attrs]

        def take(oid: int, wanted: int | None) -> int:
            iid = wanted if wanted is not None else next(i for i in range(65535) if i not in used[oid])
            used[oid].add(iid)
            return iid

        accounts: dict[int, tuple[int, int]] = {}
        for account in servers:
            sec_iid = take(0, account.security_iid)
            srv_iid = take(1, account.server_iid)
            await self._expect(
                self.write(f"/0/{sec_iid}", account.security_values(), fmt, remote=remote),
                "2.04",
                f"Bootstrap-Write /0/{sec_iid} (ssid {account.ssid})",
            )
            await self._expect(
                self.write(f"/1/{srv_iid}", account.server_values(), fmt, remote=remote),
                "2.04",
                f"Bootstrap-Write /1/{srv_iid} (ssid {account.ssid})",
            )
            accounts[account.ssid] = (sec_iid, srv_iid)
        acl_iids = []
        for entry in acl:
            iid = take(2, entry.iid)
            await self._expect(
                self.write(f"/2/{iid}", entry.values(), fmt, remote=remote),
                "2.04",
                f"Bootstrap-Write /2/{iid}",
            )
            acl_iids.append(iid)
        done = None
        if finish:
            done = self.finish(remote=remote)
            done = await (self._expect(done, expect_finish, "Bootstrap-Finish") if expect_finish else done)
        return Provisioned(accounts, acl_iids, done, bootstrap_iids)

    async def _expect(self, operation, code: str, what: str) -> BsResponse:
        resp = await operation
        if resp.code != code:
            raise BootstrapError(
                f"{what}: expected {code}, got {resp}\nbootstrap server events:\n{self.describe_events()}"
            )
        return resp

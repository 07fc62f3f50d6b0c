"""A minimal in-process LwM2M client on aiocoap, used only by the server self-tests.

It registers with the test server, serves a small value store (/1/0, /3/0) in text, TLV,
SenML JSON/CBOR and link format, and an observable /3/0/13 that changes every ``period``
seconds. It is deliberately simple: it exists to exercise the server, not to model lwm2md.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from collections.abc import Callable

from aiocoap import Context, Message, Reliable, Unreliable, resource
from aiocoap.numbers.codes import Code

from lwm2m_codecs import (
    CF_CBOR,
    CF_LINK_FORMAT,
    CF_SENML_CBOR,
    CF_SENML_JSON,
    CF_TEXT,
    CF_TLV,
    CodecError,
    decode,
    encode_cbor,
    encode_senml_cbor,
    encode_senml_json,
    encode_text,
    encode_tlv,
    format_link,
)
from lwm2m_model import Model, format_path, load_model, parse_path

_WRITE_FORMATS = (CF_TEXT, CF_TLV, CF_SENML_JSON, CF_SENML_CBOR, CF_CBOR)


def _under(path: tuple[int, ...], prefix: tuple[int, ...]) -> bool:
    return path[: len(prefix)] == prefix


class FakeLwm2mClient:
    """Registers with ``server_uri`` from its own aiocoap server context."""

    def __init__(
        self,
        server_uri: str,
        ep: str = "urn:dev:os:fake-client",
        *,
        lifetime: int = 60,
        con_notifications: bool = True,
        period: float = 0.2,
        model: Model | None = None,
    ):
        self.server_uri = server_uri
        self.ep = ep
        self.lifetime = lifetime
        self.model = model or load_model()
        self.period = period
        self.con_notifications = con_notifications
        self.location: tuple[str, ...] | None = None
        self.values: dict[str, Any] = {
            "/1/0/0": 1,
            "/1/0/1": lifetime,
            "/1/0/6": True,
            "/1/0/7": "U",
            "/3/0/0": "Acme",
            "/3/0/1": "Fake-1",
            "/3/0/2": "SN-1",
            "/3/0/3": "1.0.0",
            "/3/0/11/0": 0,
            "/3/0/16": "U",
        }
        self.executed: list[tuple[str, bytes]] = []
        #: Write-Attributes received: path → the raw query items.
        self.attributes: dict[str, tuple[str, ...]] = {}
        self.context: Context | None = None
        self._time = _TimeResource(self)
        self._ticker: asyncio.Task | None = None

    async def start(self) -> FakeLwm2mClient:
        site = resource.Site()
        site.add_resource(["3", "0", "13"], self._time)
        for oid in (1, 3):
            site.add_resource([str(oid)], _StoreSite(self, oid))
        self.context = await Context.create_server_context(site, bind=("127.0.0.1", 0), transports=["udp6"])
        self._ticker = asyncio.create_task(self._tick())
        return self

    async def stop(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        if self.context:
            await self.context.shutdown()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            self._time.updated_state()

    def value(self, path: str) -> Any:
        return int(time.time()) if path == "/3/0/13" else self.values[path]

    def object_links(self) -> bytes:
        return b'</>;ct="60 110 112 11542",</1>;ver=1.2,</1/0>,</3>;ver=1.2,</3/0>'

    async def _send(self, code: Code, uri: str, payload: bytes = b"", cf: int | None = None) -> Message:
        msg = Message(code=code, uri=uri, payload=payload)
        if cf is not None:
            msg.opt.content_format = cf
        return await asyncio.wait_for(self.context.request(msg).response, 10)

    async def register(self, payload: bytes | None = None, extra_query: str = "") -> Message:
        """Register; remembers the Location-Path for Update / De-register."""
        query = f"ep={self.ep}&lt={self.lifetime}&lwm2m=1.1&b=U{extra_query}"
        resp = await self._send(
            Code.POST,
            f"{self.server_uri}/rd?{query}",
            self.object_links() if payload is None else payload,
            CF_LINK_FORMAT,
        )
        if resp.code == Code.CREATED:
            self.location = tuple(resp.opt.location_path)
        return resp

    async def update(self, query: str = "", payload: bytes = b"") -> Message:
        uri = f"{self.server_uri}/{'/'.join(self.location)}" + (f"?{query}" if query else "")
        return await self._send(Code.POST, uri, payload, CF_LINK_FORMAT if payload else None)

    async def deregister(self) -> Message:
        return await self._send(Code.DELETE, f"{self.server_uri}/{'/'.join(self.location)}")


class _TimeResource(resource.ObservableResource):
    """/3/0/13, the current time, notified every ``period`` seconds."""

    def __init__(self, client: FakeLwm2mClient):
        super().__init__()
        self.client = client

    async def render_get(self, request: Message) -> Message:
        tuning = Reliable if self.client.con_notifications else Unreliable
        return Message(payload=encode_text(int(time.time())), content_format=CF_TEXT, transport_tuning=tuning)


class _StoreSite(resource.Resource, resource.PathCapable):
    """Object ``oid`` of the fake client's value store."""

    def __init__(self, client: FakeLwm2mClient, oid: int):
        super().__init__()
        self.client = client
        self.oid = oid

    def _select(self, prefix: tuple[int, ...]) -> dict[str, Any]:
        keys = [p for p in self.client.values if _under(parse_path(p), prefix)]
        if _under((3, 0, 13), prefix) and self.oid == 3:
            keys.append("/3/0/13")
        return {p: self.client.value(p) for p in sorted(keys, key=parse_path)}

    async def render(self, request: Message) -> Message:
        try:
            ids = (self.oid, *(int(s) for s in request.opt.uri_path))
        except ValueError:
            return Message(code=Code.NOT_FOUND)
        path = format_path(ids)
        if request.code == Code.GET:
            return self._read(request, ids, path)
        if request.code == Code.PUT and not request.payload and request.opt.uri_query:
            self.client.attributes[path] = tuple(request.opt.uri_query)
            return Message(code=Code.CHANGED)
        if request.code in (Code.PUT, Code.POST):
            return self._write_or_execute(request, ids, path)
        return Message(code=Code.METHOD_NOT_ALLOWED)

    def _read(self, request: Message, ids: tuple[int, ...], path: str) -> Message:
        values = self._select(ids)
        if not values:
            return Message(code=Code.NOT_FOUND)
        accept = None if request.opt.accept is None else int(request.opt.accept)
        single = len(values) == 1 and path in values
        if accept == CF_LINK_FORMAT:
            links = [format_link(format_path(ids))] + [format_link(p) for p in values]
            return Message(code=Code.CONTENT, payload=",".join(links).encode(), content_format=CF_LINK_FORMAT)
        if accept is None:
            accept = CF_TEXT if single else CF_SENML_CBOR
        encoders: dict[int, Callable[[], bytes]] = {
            CF_TLV: lambda: encode_tlv(values, path, self.client.model),
            CF_SENML_JSON: lambda: encode_senml_json(values, self.client.model),
            CF_SENML_CBOR: lambda: encode_senml_cbor(values, self.client.model),
        }
        if single:
            rtype = self.client.model.resource_type(ids)
            encoders[CF_TEXT] = lambda: encode_text(values[path], rtype)
            encoders[CF_CBOR] = lambda: encode_cbor(values[path])
        if accept not in encoders:
            return Message(code=Code.NOT_ACCEPTABLE)
        return Message(code=Code.CONTENT, payload=encoders[accept](), content_format=accept)

    def _write_or_execute(self, request: Message, ids: tuple[int, ...], path: str) -> Message:
        res = self.client.model.resource(ids)
        if request.code == Code.POST and res is not None and res.executable:
            self.client.executed.append((path, bytes(request.payload)))
            if path == "/1/0/8":
                asyncio.get_running_loop().create_task(self.client.update())
            return Message(code=Code.CHANGED)
        cf = None if request.opt.content_format is None else int(request.opt.content_format)
        if cf not in _WRITE_FORMATS:
            return Message(code=Code.UNSUPPORTED_CONTENT_FORMAT)
        try:
            values = decode(request.payload, cf, path, self.client.model)
        except CodecError:
            return Message(code=Code.BAD_REQUEST)
        for p in values:
            r = self.client.model.resource(p)
            if not _under(parse_path(p), ids) or r is None or not r.writable:
                return Message(code=Code.METHOD_NOT_ALLOWED)
        self.client.values.update(values)
        return Message(code=Code.CHANGED)

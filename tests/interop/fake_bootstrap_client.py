"""A small in-process LwM2M 1.1 client with the Bootstrap interface, for self-tests only.

It exists to exercise ``BootstrapServer`` (test_bootstrap_selftest.py) and, wrapped by
``fake_bootstrap_daemon.py``, to dry-run test_bootstrap.py's *test logic* without lwm2md. It
follows the behaviour test_bootstrap.py expects (README "Bootstrap-Server"), in the simplest way
that works; it is not a model of lwm2md and proves nothing about it.

* Objects 0, 1, 2 (stored as ``{(oid, iid): {rid: value or {riid: value}}}``) and a fixed /3/0.
* Bootstrap: ``POST /bs?ep=&pct=112`` after the Client Hold Off Time; Delete / Write / Read /
  Discover / Finish from the Bootstrap-Server's address while bootstrapping; Finish checks
  consistency (4.06) and saves the state; a bootstrap without Finish fails ``bs_timeout`` after
  the last BS request and is retried with back-off; a refused Bootstrap-Request too.
* Registration with every account (Register, Update at 80 % of the lifetime, De-register on
  ``shutdown``), back-off ``retry_initial`` doubling up to ``retry_max``, fallback to bootstrap
  after ``fallback_after`` failures with every server, Execute /1/x/9 → bootstrap.
* Access Control when there are two or more servers (ACL instance, else the default rules).
* ``coaps://`` accounts are not reachable (no DTLS here): the client only sends a record that
  looks like a ClientHello, so a test can see the account is in use.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiocoap import Context, Message, resource
from aiocoap.numbers.codes import Code
from aiocoap.numbers.constants import TransportTuning

from lwm2m_codecs import (
    CF_LINK_FORMAT,
    CF_SENML_CBOR,
    CF_SENML_JSON,
    CF_TEXT,
    CF_TLV,
    CodecError,
    decode,
    encode_senml_cbor,
    encode_senml_json,
    encode_text,
    encode_tlv,
    format_link,
)
from lwm2m_model import Model, format_path, load_model, parse_path

R, W, E, D, C = 1, 2, 4, 8, 16
ALL = R | W | E | D
DEVICE = {0: "Fake Bootstrap Corp", 1: "FAKE-BS-1", 2: "FBS-0001", 3: "0.1", 16: "U"}


def _plain(addr: tuple) -> tuple[str, int]:
    host = addr[0][7:] if addr[0].startswith("::ffff:") else addr[0]
    return host, addr[1]


def _uri_addr(uri: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(uri)
        return parts.hostname, parts.port or (5684 if parts.scheme == "coaps" else 5683)
    except ValueError:
        return None


class _Site(resource.Resource, resource.PathCapable):
    def __init__(self, client: FakeBootstrapClient):
        super().__init__()
        self.client = client

    async def render(self, request: Message) -> Message:
        return self.client._render(request)


class FakeBootstrapClient:
    """See the module docstring. ``await start()``, ``await shutdown()``."""

    def __init__(
        self,
        ep: str,
        *,
        bootstrap_uri: str | None = None,
        servers: list[dict[str, Any]] = (),
        hold_off: float = 0,
        fallback_after: int = 3,
        bs_timeout: float = 247,
        retry_initial: float = 1,
        retry_max: float = 4,
        ack_timeout: float = 2.0,
        ack_random_factor: float = 1.5,
        max_retransmit: int = 4,
        state_file: Path | None = None,
        model: Model | None = None,
        log=None,
    ):
        self.ep = ep
        self.model = model or load_model()
        self.fallback_after = fallback_after
        self.bs_timeout = bs_timeout
        self.retry_initial, self.retry_max = retry_initial, retry_max
        self.state_file = state_file
        self._log = log or (lambda text: print(text, file=sys.stderr, flush=True))

        class Tuning(TransportTuning):
            ACK_TIMEOUT = ack_timeout
            ACK_RANDOM_FACTOR = ack_random_factor
            MAX_RETRANSMIT = max_retransmit

        self.tuning = Tuning()
        self.instances: dict[tuple[int, int], dict[int, Any]] = {(3, 0): dict(DEVICE)}
        loaded = self._load()
        if bootstrap_uri is not None and not any(self._is_bs(k) for k in self.instances):
            self.instances[(0, self._free(0))] = {
                0: bootstrap_uri,
                1: True,
                2: 3,
                3: b"",
                4: b"",
                5: b"",
                11: hold_off,
            }
        if not loaded:
            for server in servers:
                self.instances[(0, self._free(0))] = {
                    0: server["uri"],
                    1: False,
                    2: 3,
                    3: b"",
                    4: b"",
                    5: b"",
                    10: server["short_id"],
                }
                self.instances[(1, self._free(1))] = {
                    0: server["short_id"],
                    1: server.get("lifetime", 86400),
                    6: True,
                    7: server.get("binding", "U"),
                }
        self.context: Context | None = None
        self.bootstrapping = False
        self._bs_task: asyncio.Task | None = None
        self._bs_deadline = 0.0
        self._finished: asyncio.Event | None = None
        self._reg_tasks: dict[int, asyncio.Task] = {}
        self.registrations: dict[int, tuple[str, ...]] = {}  # ssid → location path
        self.failures: dict[int, int] = {}
        self.executed: list[str] = []
        self._in_flight: set[asyncio.Future] = set()

    # store helpers

    def _is_bs(self, key: tuple[int, int]) -> bool:
        return key[0] == 0 and self.instances[key].get(1) is True

    def _free(self, oid: int) -> int:
        return next(i for i in range(65535) if (oid, i) not in self.instances)

    def _of(self, oid: int) -> dict[int, dict[int, Any]]:
        return {iid: inst for (o, iid), inst in sorted(self.instances.items()) if o == oid}

    def _bs_account(self) -> dict[int, Any] | None:
        return next((inst for iid, inst in self._of(0).items() if inst.get(1) is True), None)

    def _accounts(self) -> dict[int, tuple[dict[int, Any], dict[int, Any]]]:
        """ssid → (security, server) for every complete account."""
        out = {}
        for srv in self._of(1).values():
            ssid = srv.get(0)
            sec = next((s for s in self._of(0).values() if s.get(1) is False and s.get(10) == ssid), None)
            if sec is not None and 0 in sec and 1 in srv:
                out[ssid] = (sec, srv)
        return out

    def _flat(self, ids: tuple[int, ...], only_readable: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (oid, iid), inst in sorted(self.instances.items()):
            for rid, value in sorted(inst.items()):
                res = self.model.resource((oid, iid, rid))
                if only_readable and (res is None or not res.readable):
                    continue
                if isinstance(value, dict):
                    for riid, v in sorted(value.items()):
                        out[format_path((oid, iid, rid, riid))] = v
                else:
                    out[format_path((oid, iid, rid))] = value
        return {p: v for p, v in out.items() if parse_path(p)[: len(ids)] == ids}

    def _apply(self, values: dict[str, Any], *, replace_resources: bool) -> None:
        grouped: dict[tuple[int, int, int], Any] = {}
        for path, value in values.items():
            ids = parse_path(path)
            key = ids[:3]
            if len(ids) == 4:
                grouped.setdefault(key, {})[ids[3]] = value
            else:
                grouped[key] = value
        for (oid, iid, rid), value in grouped.items():
            inst = self.instances.setdefault((oid, iid), {})
            if isinstance(value, dict) and not replace_resources and isinstance(inst.get(rid), dict):
                inst[rid].update(value)
            else:
                inst[rid] = value

    # persistence (JSON, mode 0600; bytes as {"hex": …})

    def _load(self) -> bool:
        if self.state_file is None or not self.state_file.exists():
            return False
        data = json.loads(self.state_file.read_text())

        def back(v):
            if isinstance(v, dict) and set(v) == {"hex"}:
                return bytes.fromhex(v["hex"])
            if isinstance(v, dict):
                return {int(k): back(x) for k, x in v.items()}
            return v

        for oid, iid, inst in data["instances"]:
            self.instances[(oid, iid)] = {int(k): back(v) for k, v in inst.items()}
        return True

    def _save(self) -> None:
        if self.state_file is None:
            return

        def out(v):
            if isinstance(v, bytes):
                return {"hex": v.hex()}
            if isinstance(v, dict):
                return {str(k): out(x) for k, x in v.items()}
            return v

        data = {
            "instances": [
                [oid, iid, {str(k): out(v) for k, v in inst.items()}]
                for (oid, iid), inst in sorted(self.instances.items())
                if oid in (0, 1, 2)
            ]
        }
        self.state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        tmp.replace(self.state_file)

    # lifecycle

    async def start(self) -> FakeBootstrapClient:
        self.context = await Context.create_server_context(
            _Site(self), bind=("127.0.0.1", 0), transports=["udp6"]
        )
        if self._accounts():
            self._start_registrations()
        elif self._bs_account() is not None:
            self.trigger_bootstrap("no server account")
        return self

    async def shutdown(self) -> None:
        """De-register from every server, then close the socket (again: no-op)."""
        if self.context is None:
            return
        tasks = [*self._reg_tasks.values(), *([self._bs_task] if self._bs_task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._in_flight:  # a Register the server may already have accepted: learn its location
            await asyncio.wait(self._in_flight, timeout=3)
        for ssid, location in list(self.registrations.items()):
            uri = self._server_uri(ssid)
            if uri is not None:
                try:
                    await self._send(Code.DELETE, uri + "/" + "/".join(location), timeout=2)
                except Exception as e:  # noqa: BLE001 (best effort)
                    self._log(f"de-register from {ssid} failed: {e!r}")
        self.registrations.clear()
        if self.context is not None:
            context, self.context = self.context, None
            await context.shutdown()

    def _server_uri(self, ssid: int) -> str | None:
        account = self._accounts().get(ssid)
        return account[0][0] if account else None

    def _backoff(self, n: int) -> float:
        nominal = min(self.retry_initial * 2 ** (n - 1), self.retry_max)
        return nominal * random.uniform(0.5, 1.5)

    async def _send(
        self, code: Code, uri: str, payload: bytes = b"", cf: int | None = None, timeout: float = 60
    ):
        msg = Message(code=code, uri=uri, payload=payload, transport_tuning=self.tuning)
        if cf is not None:
            msg.opt.content_format = cf
        return await asyncio.wait_for(self.context.request(msg).response, timeout)

    # bootstrap

    def trigger_bootstrap(self, why: str) -> None:
        if self._bs_task is not None and not self._bs_task.done():
            return
        self._log(f"bootstrap: {why}")
        self._bs_task = asyncio.get_running_loop().create_task(self._bootstrap_loop())

    async def _bootstrap_loop(self) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        while True:
            account = self._bs_account()
            if account is None:
                return
            await asyncio.sleep(account.get(11) or 0)
            # Ready before asking: the first Delete may overtake the 2.04 (or its ACK be lost).
            self.bootstrapping = True
            self._finished = asyncio.Event()
            self._bs_deadline = loop.time() + self.bs_timeout
            try:
                resp = await self._send(Code.POST, f"{account[0]}/bs?ep={self.ep}&pct={CF_SENML_CBOR}")
                accepted = resp.code == Code.CHANGED
            except Exception as e:  # noqa: BLE001
                self._log(f"Bootstrap-Request failed: {e!r}")
                accepted = False
            self.bootstrapping = accepted or self._finished.is_set()
            if accepted:
                while not self._finished.is_set() and loop.time() < self._bs_deadline:
                    try:
                        await asyncio.wait_for(self._finished.wait(), self._bs_deadline - loop.time())
                    except TimeoutError:
                        pass
                self.bootstrapping = False
                if self._finished.is_set():
                    return
                self._log("bootstrap failed: no Bootstrap-Finish in time")
            attempt += 1
            await asyncio.sleep(self._backoff(attempt))

    def _finish(self) -> Message:
        problems = []
        servers = self._of(1)
        if not servers:
            problems.append("no server account")
        for iid, srv in servers.items():
            missing = [r for r in (0, 1, 7) if r not in srv]
            if missing:
                problems.append(f"/1/{iid} lacks {missing}")
            elif srv[0] not in self._accounts():
                problems.append(f"/1/{iid}: no Security instance for ssid {srv[0]}")
        if problems:
            self._log(f"Bootstrap-Finish refused: {problems}")
            return Message(code=Code.NOT_ACCEPTABLE, payload="; ".join(problems).encode())
        self._save()
        self._finished.set()
        self.registrations.clear()
        self._start_registrations()
        return Message(code=Code.CHANGED)

    # registration

    def _start_registrations(self) -> None:
        for task in self._reg_tasks.values():
            task.cancel()
        self._reg_tasks = {}
        self.failures = {}
        for ssid in self._accounts():
            self._reg_tasks[ssid] = asyncio.get_running_loop().create_task(self._register_loop(ssid))

    def _links(self) -> bytes:
        links = ['</>;ct="60 110 112 11542"']
        links += [f"</{oid}/{iid}>" for (oid, iid) in sorted(self.instances) if oid != 0]
        return ",".join(links).encode()

    async def _register_loop(self, ssid: int) -> None:
        failures = 0
        while True:
            if ssid not in self._accounts():
                return  # deleted by a bootstrap
            sec, srv = self._accounts()[ssid]
            uri = sec[0]
            if uri.startswith("coaps://"):
                self._pretend_dtls(uri)
                ok = False
            else:
                query = f"ep={self.ep}&lt={srv[1]}&lwm2m=1.1&b={srv.get(7, 'U')}"
                register = asyncio.ensure_future(
                    self._send(Code.POST, f"{uri}/rd?{query}", self._links(), CF_LINK_FORMAT)
                )
                self._in_flight.add(register)

                def done(fut, ssid=ssid):
                    self._in_flight.discard(fut)
                    if not fut.cancelled() and fut.exception() is None and fut.result().code == Code.CREATED:
                        self.registrations[ssid] = tuple(fut.result().opt.location_path)

                register.add_done_callback(done)
                try:
                    resp = await asyncio.shield(register)
                    ok = resp.code == Code.CREATED
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001
                    self._log(f"Register with {ssid} failed: {e!r}")
                    ok = False
            if ok:
                self.failures[ssid] = failures = 0
                self._log(f"registered with server {ssid}")
                while ssid in self._accounts():
                    await asyncio.sleep(max(1.0, 0.8 * self._accounts().get(ssid, ({}, {1: 1}))[1][1]))
                    if not await self.update(ssid):
                        break
                continue
            failures += 1
            self.failures[ssid] = failures
            if self._should_fall_back():
                self.trigger_bootstrap("registration failed with every server")
                return
            await asyncio.sleep(self._backoff(failures))

    def _should_fall_back(self) -> bool:
        if not self.fallback_after or self._bs_account() is None or self.registrations:
            return False
        return all(self.failures.get(ssid, 0) >= self.fallback_after for ssid in self._accounts())

    def _pretend_dtls(self, uri: str) -> None:
        host, port = _uri_addr(uri)
        (token_manager,) = self.context.request_interfaces
        transport = token_manager.token_interface.message_interface.transport
        transport.sendmsg(b"\x16\xfe\xfd" + bytes(10) + b"\x00\x00", [], 0, (f"::ffff:{host}", port, 0, 0))

    async def update(self, ssid: int, query: str = "") -> bool:
        location, uri = self.registrations.get(ssid), self._server_uri(ssid)
        if location is None or uri is None:
            return False
        try:
            resp = await self._send(Code.POST, f"{uri}/{'/'.join(location)}" + (f"?{query}" if query else ""))
        except Exception:  # noqa: BLE001
            return False
        return resp.code == Code.CHANGED

    # requests

    def _render(self, request: Message) -> Message:
        peer = _plain(request.remote.sockaddr)
        bs = self._bs_account()
        if bs is not None and _uri_addr(bs[0]) == peer:
            if not self.bootstrapping:
                return Message(code=Code.UNAUTHORIZED)
            self._bs_deadline = asyncio.get_running_loop().time() + self.bs_timeout
            return self._bootstrap_op(request)
        ssid = next((s for s, (sec, _) in self._accounts().items() if _uri_addr(sec[0]) == peer), None)
        if ssid is None:
            return Message(code=Code.UNAUTHORIZED)
        return self._dm_op(request, ssid)

    def _bootstrap_op(self, request: Message) -> Message:
        segments = request.opt.uri_path
        if segments == ("bs",) and request.code == Code.POST:
            return self._finish()
        try:
            ids = parse_path("/" + "/".join(segments))
        except ValueError:
            return Message(code=Code.BAD_REQUEST)
        path = format_path(ids)
        if request.code == Code.DELETE:
            if len(ids) > 2:
                return Message(code=Code.BAD_REQUEST)
            if len(ids) == 2 and (ids in self.instances and (self._is_bs(ids) or ids == (3, 0))):
                return Message(code=Code.BAD_REQUEST)
            for key in list(self.instances):
                if key[: len(ids)] == ids and not self._is_bs(key) and key != (3, 0):
                    del self.instances[key]
            return Message(code=Code.DELETED)
        if request.code == Code.PUT:
            try:
                values = decode(request.payload, _cf(request), path, self.model)
            except (CodecError, KeyError) as e:
                return Message(code=Code.BAD_REQUEST, payload=str(e).encode())
            if not ids or any(parse_path(p)[: len(ids)] != ids for p in values):
                return Message(code=Code.BAD_REQUEST)
            self._apply(values, replace_resources=True)
            return Message(code=Code.CHANGED)
        if request.code == Code.GET and request.opt.accept == CF_LINK_FORMAT:
            return self._bootstrap_discover(ids)
        if request.code == Code.GET:
            if not ids or ids[0] not in (1, 2):
                return Message(code=Code.UNAUTHORIZED)
            return self._encode(self._flat(ids, only_readable=False), path, request.opt.accept, CF_TLV)
        return Message(code=Code.METHOD_NOT_ALLOWED)

    def _bootstrap_discover(self, ids: tuple[int, ...]) -> Message:
        if len(ids) > 1:
            return Message(code=Code.BAD_REQUEST)
        links = [format_link("/", [("lwm2m", "1.1")])]
        for oid in ids or (0, 1, 2, 3):
            instances = self._of(oid)
            if not instances:
                links.append(format_link(f"/{oid}"))
            for iid, inst in instances.items():
                attrs = []
                if oid == 0 and inst.get(1) is False and 10 in inst:
                    attrs.append(("ssid", str(inst[10])))
                if oid == 1 and 0 in inst:
                    attrs.append(("ssid", str(inst[0])))
                if oid == 0 and 0 in inst:
                    attrs.append(("uri", inst[0]))
                links.append(format_link(f"/{oid}/{iid}", attrs))
        return Message(code=Code.CONTENT, payload=",".join(links).encode(), content_format=CF_LINK_FORMAT)

    def _rights(self, ssid: int, oid: int, iid: int) -> int:
        ssids = sorted(inst.get(0) for inst in self._of(1).values())
        if len(ssids) <= 1:
            return ALL | C
        if oid == 2:
            return R | (W | D if self.instances.get((2, iid), {}).get(3) == ssid else 0)
        acl = next((a for a in self._of(2).values() if (a.get(0), a.get(1)) == (oid, iid)), None)
        if acl is not None:
            entries = acl.get(2, {})
            if ssid in entries:
                return entries[ssid]
            if 0 in entries:
                return entries[0]
            return ALL if acl.get(3) == ssid else 0
        if oid == 1:
            return R | W | E if self.instances.get((1, iid), {}).get(0) == ssid else 0
        return ALL if ssid == ssids[0] else 0

    def _dm_op(self, request: Message, ssid: int) -> Message:
        try:
            ids = parse_path("/" + "/".join(request.opt.uri_path))
        except ValueError:
            return Message(code=Code.NOT_FOUND)
        if not ids or ids[0] == 0:
            return Message(code=Code.UNAUTHORIZED)
        path = format_path(ids)
        if len(ids) >= 2 and (ids[0], ids[1]) not in self.instances:
            return Message(code=Code.NOT_FOUND)
        res = self.model.resource(ids) if len(ids) >= 3 else None
        if request.code == Code.GET:
            if len(ids) >= 2 and not self._rights(ssid, ids[0], ids[1]) & R:
                return Message(code=Code.UNAUTHORIZED)
            values = self._flat(ids, only_readable=True)
            if not values:
                return Message(code=Code.NOT_FOUND)
            single = len(ids) == 3 and res is not None and not res.multiple
            return self._encode(values, path, request.opt.accept, CF_TEXT if single else CF_SENML_CBOR)
        if len(ids) < 2:
            return Message(code=Code.METHOD_NOT_ALLOWED)
        if request.code == Code.POST and res is not None and res.executable:
            if not self._rights(ssid, ids[0], ids[1]) & E:
                return Message(code=Code.UNAUTHORIZED)
            self.executed.append(path)
            if ids[0] == 1 and ids[2] == 9:
                if self._bs_account() is None:
                    return Message(code=Code.METHOD_NOT_ALLOWED)
                asyncio.get_running_loop().call_soon(self.trigger_bootstrap, "Bootstrap-Request Trigger")
            if ids[0] == 1 and ids[2] == 8:
                asyncio.get_running_loop().create_task(self.update(ssid))
            return Message(code=Code.CHANGED)
        if request.code in (Code.PUT, Code.POST):
            if not self._rights(ssid, ids[0], ids[1]) & W:
                return Message(code=Code.UNAUTHORIZED)
            try:
                values = decode(request.payload, _cf(request), path, self.model)
            except (CodecError, KeyError) as e:
                return Message(code=Code.BAD_REQUEST, payload=str(e).encode())
            for p in values:
                r = self.model.resource(p)
                if r is None or not r.writable:
                    return Message(code=Code.METHOD_NOT_ALLOWED)
            self._apply(values, replace_resources=request.code == Code.PUT)
            self._save()
            if ids[0] == 1 and f"/1/{ids[1]}/1" in values:
                owner = self.instances[(1, ids[1])].get(0)
                lt = values[f"/1/{ids[1]}/1"]
                asyncio.get_running_loop().create_task(self.update(owner, f"lt={lt}"))
            return Message(code=Code.CHANGED)
        return Message(code=Code.METHOD_NOT_ALLOWED)

    def _encode(self, values: dict[str, Any], path: str, accept: int | None, default: int) -> Message:
        if not values:
            return Message(code=Code.NOT_FOUND)
        cf = default if accept is None else int(accept)
        try:
            if cf == CF_TLV:
                payload = encode_tlv(values, path, self.model)
            elif cf == CF_SENML_CBOR:
                payload = encode_senml_cbor(values, self.model)
            elif cf == CF_SENML_JSON:
                payload = encode_senml_json(values, self.model)
            elif cf == CF_TEXT and len(values) == 1:
                ((p, v),) = values.items()
                payload = encode_text(v, self.model.resource_type(p))
            else:
                return Message(code=Code.NOT_ACCEPTABLE)
        except ValueError:
            return Message(code=Code.NOT_ACCEPTABLE)
        return Message(code=Code.CONTENT, payload=payload, content_format=cf)


def _cf(request: Message) -> int | None:
    cf = request.opt.content_format
    return None if cf is None else int(cf)

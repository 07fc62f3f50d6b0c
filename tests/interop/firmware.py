"""Firmware-update fixtures: signing keys, packages built by ``lwm2md-package``, a daemon
configured with the fake A/B machine, and the fake machine's reboot.

The fake backend reboots by applying the boot rule to its state and stopping the daemon (exit
status 0); :func:`reboot_and_restart` waits for that, then starts the daemon again, as systemd
would after a real reboot. A power cut is ``kill -9`` followed by :func:`power_cycle`
(``lwm2md-demo fake-boot``: the boot loader runs once) and a start.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from daemon import Lwm2md
from lwm2m_model import REPO_ROOT

#: The compatible string of the test device.
COMPATIBLE = "lwm2md-interop-gw"
#: Object 5 resources.
PACKAGE, URI, UPDATE, STATE, RESULT, NAME, VERSION = (
    "/5/0/0", "/5/0/1", "/5/0/2", "/5/0/3", "/5/0/5", "/5/0/6", "/5/0/7",
)
#: States (/5/0/3) and results (/5/0/5).
IDLE, DOWNLOADING, DOWNLOADED, UPDATING = 0, 1, 2, 3
R_INITIAL, R_SUCCESS, R_NO_SPACE, R_CONNECTION_LOST, R_INTEGRITY = 0, 1, 2, 4, 5
R_UNSUPPORTED, R_INVALID_URI, R_FAILED, R_UNSUPPORTED_PROTOCOL = 6, 7, 8, 9
R_CANCELLED, R_DEFERRED = 10, 11
#: /3/0/3 of a device whose running slot was never written by an update (daemon.DEVICE).
FACTORY_VERSION = "9.8.7-interop"
CF_OCTET_STREAM = 42
SLOT_SIZE = 4 << 20


def tool(name: str) -> Path:
    """A binary of this repository, next to ``$LWM2MD_BIN``."""
    main = Path(os.environ.get("LWM2MD_BIN", "target/debug/lwm2md"))
    main = main if main.is_absolute() else REPO_ROOT / main
    path = main.parent / name
    assert path.is_file(), f"{path} missing: run `cargo build --bins`"
    return path


def run_tool(name: str, *args: str | Path) -> str:
    out = subprocess.run(
        [str(tool(name)), *map(str, args)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, f"{name} {args}: {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


@dataclass
class Signer:
    """A signing key pair: ``key`` for ``lwm2md-package create``, ``pub`` for the device."""

    key: Path
    pub: Path
    key_id: str


def make_signer(directory: Path, name: str) -> Signer:
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / name
    key_id = run_tool("lwm2md-package", "keygen", "--out", stem).splitlines()[0].strip()
    return Signer(Path(f"{stem}.key"), Path(f"{stem}.pub"), key_id)


def make_image(path: Path, size: int, seed: int) -> bytes:
    """A deterministic image: compressible text runs mixed with noise."""
    import random

    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += f"lwm2md test image {seed} block {len(out)}\n".encode() * rng.randint(1, 20)
        out += rng.randbytes(rng.randint(16, 2048))
    data = bytes(out[:size])
    path.write_bytes(data)
    return data


def make_package(
    signer: Signer,
    image: Path,
    out: Path,
    *,
    version: str,
    name: str = "interop-os",
    compatible: str = COMPATIBLE,
    security_version: int = 1,
    compression: str = "zstd",
    chunk_size: str = "64K",
) -> bytes:
    run_tool(
        "lwm2md-package", "create", "--key", signer.key, "--image", image, "--out", out,
        "--compatible", compatible, "--name", name, "--version", version,
        "--security-version", str(security_version), "--compression", compression,
        "--chunk-size", chunk_size,
    )
    return out.read_bytes()


def firmware_config(workdir: Path, keys_dir: Path, **extra) -> dict:
    """``[update]`` with the fake machine under ``workdir/machine``."""
    return {
        "update": {
            "backend": "fake",
            "compatible": COMPATIBLE,
            "fake_dir": str(workdir / "machine"),
            "fake_slot_size": SLOT_SIZE,
            "keys_dir": str(keys_dir),
            "health_target": "",
            "health_timeout": 30,
            "download_retry_initial": 1,
            "download_retry_max": 2,
            **extra,
        }
    }


def machine(daemon: Lwm2md) -> Path:
    return Path(daemon.config["update"]["fake_dir"])


def boot_state(daemon: Lwm2md) -> dict:
    """The fake boot loader's variables and the running slot."""
    m = machine(daemon)
    state = json.loads((m / "bootstate.json").read_text())
    state["booted"] = (m / "booted").read_text().strip()
    return state


def slot_bytes(daemon: Lwm2md, slot: str, length: int) -> bytes:
    with open(machine(daemon) / f"slot-{slot.lower()}.img", "rb") as f:
        return f.read(length)


def power_cycle(daemon: Lwm2md) -> str:
    """The fake machine boots once (after a power cut); returns the slot it runs."""
    return run_tool("lwm2md-demo", "fake-boot", machine(daemon)).strip()


async def wait_exit(daemon: Lwm2md, timeout: float, what: str) -> int:
    try:
        return await asyncio.wait_for(daemon.proc.wait(), timeout)
    except TimeoutError:
        raise AssertionError(
            f"{what}: lwm2md still running after {timeout} s\n{daemon.log_text()[-4000:]}"
        ) from None


async def reboot_and_restart(daemon: Lwm2md, timeout: float = 20.0) -> None:
    """Wait for the fake reboot (the daemon exits 0), then start it again and wait for it to
    register."""
    status = await wait_exit(daemon, timeout, "fake reboot")
    assert status == 0, f"exit status {status} at the fake reboot\n{daemon.log_text()[-4000:]}"
    await daemon.start()
    await daemon.wait_registered(15.0)


async def read_int(client, path: str) -> int:
    return int(await read_str(client, path))


async def read_str(client, path: str) -> str:
    resp = await client.read(path, accept=0)  # text/plain
    assert resp.code == "2.05", f"read {path}: {resp.code}"
    return resp.text


async def wait_resource(
    client, path: str, want, timeout: float = 20.0, daemon=None, interval: float = 0.2
) -> int:
    """Poll ``path`` every ``interval`` s until it reads ``want`` (an int or a set of ints)."""
    wanted = want if isinstance(want, set) else {want}
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            last = await read_int(client, path)
        except Exception as e:  # noqa: BLE001 - the daemon may be between requests
            last = f"error {e}"
        if last in wanted:
            return last
        await asyncio.sleep(interval)
    log = daemon.log_text()[-4000:] if daemon is not None else ""
    raise AssertionError(f"{path} is {last}, not {want}, after {timeout} s\n{log}")


# ----- packages -----


def inspect_package(path: Path) -> dict:
    """``lwm2md-package inspect``: header and manifest as JSON."""
    return json.loads(run_tool("lwm2md-package", "inspect", path))


def payload_start(pkg: bytes) -> int:
    """Offset of the first payload byte: 16-byte header, manifest, 64-byte signature."""
    assert pkg[:8] == b"LWM2MPKG", pkg[:16]
    return 16 + int.from_bytes(pkg[12:16], "big") + 64


def flip(data: bytes, offset: int) -> bytes:
    """``data`` with every bit of the byte at ``offset`` inverted."""
    return data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----- the fake machine -----


@dataclass
class Snapshot:
    """What must not change when a package is refused: the boot variables (but the bad flag of
    the inactive slot, which Prepare sets before writing), the running slot and its bytes."""

    booted: str
    primary: str
    trial: str
    running_sha: str
    boots: str
    extra: dict = field(default_factory=dict)


def slot_sha(daemon: Lwm2md, slot: str) -> str:
    return sha256((machine(daemon) / f"slot-{slot.lower()}.img").read_bytes())


def snapshot(daemon: Lwm2md) -> Snapshot:
    state = boot_state(daemon)
    booted = state["booted"]
    return Snapshot(
        booted=booted,
        primary=state["lwm2md_slot"],
        trial=state["lwm2md_trial"],
        running_sha=slot_sha(daemon, booted),
        boots=(machine(daemon) / "boots").read_text().strip(),
    )


def assert_runs(daemon: Lwm2md, slot: str) -> dict:
    """The machine runs ``slot``, it is the primary, no trial is pending, it is bootable."""
    state = boot_state(daemon)
    assert state["booted"] == slot, state
    assert state["lwm2md_slot"] == slot, state
    assert state["lwm2md_trial"] == "", state
    assert state[f"lwm2md_bad_{slot}"] == "0", state
    return state


def journal(daemon: Lwm2md) -> dict:
    """The daemon's firmware journal (``state/firmware.json``)."""
    doc = json.loads((daemon.state_dir / "firmware.json").read_text())
    return doc["data"]


# ----- the daemon -----


async def kill9(daemon: Lwm2md) -> None:
    """SIGKILL: the daemon crashes (or the power goes, with :func:`power_cycle` afterwards)."""
    assert daemon.running, f"lwm2md is not running\n{daemon.log_text()[-3000:]}"
    await daemon.kill()


async def start_registered(daemon: Lwm2md, timeout: float = 15.0) -> None:
    await daemon.start()
    await daemon.wait_registered(timeout)


async def wait_log(daemon: Lwm2md, needle: str, timeout: float = 20.0, start: int = 0) -> None:
    """Wait until the daemon's log (from byte ``start``) contains ``needle``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if needle in daemon.log_text()[start:]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{needle!r} not logged within {timeout} s\n{daemon.log_text()[-4000:]}")


def log_size(daemon: Lwm2md) -> int:
    return len(daemon.log_text()) if daemon.log_path.exists() else 0


# ----- package servers -----


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RangeServer:
    """``tests/download/range_server.py`` (HTTP/1.1 with Range, ETag, pacing) serving ``root``;
    ``requests`` is its JSON request log."""

    SCRIPT = REPO_ROOT / "tests" / "download" / "range_server.py"

    def __init__(self, root: Path, tls: tuple[Path, Path] | None = None):
        """``tls``: (certificate chain, key) PEM files: serve https:// for host ``localhost``."""
        self.root = root
        self.tls = tls
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.requests: list[dict] = []
        self._reader: asyncio.Task | None = None

    async def start(self) -> "RangeServer":
        self.root.mkdir(parents=True, exist_ok=True)
        tls = ["--cert", str(self.tls[0]), "--key", str(self.tls[1])] if self.tls else []
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(self.SCRIPT), "--root", str(self.root), *tls,
            stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
        )
        line = await asyncio.wait_for(self.proc.stdout.readline(), 10)
        assert line.startswith(b"READY "), line
        self.port = int(line.split()[1])
        self._reader = asyncio.ensure_future(self._read_log())
        return self

    async def _read_log(self) -> None:
        while line := await self.proc.stdout.readline():
            self.requests.append(json.loads(line))

    def uri(self, name: str, query: str = "") -> str:
        base = f"https://localhost:{self.port}" if self.tls else f"http://127.0.0.1:{self.port}"
        return f"{base}/files/{name}" + (f"?{query}" if query else "")

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader:
            self._reader.cancel()


class LibcoapServer:
    """libcoap's ``coap-server`` (Debian libcoap3-bin) with dynamic resources (``-d``): a
    package is PUT to ``/name`` with ``coap-client`` (Block1), then served with Block2."""

    NAMES = ("coap-server-notls", "coap-server-openssl", "coap-server-gnutls", "coap-server")

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    @staticmethod
    def binary(names) -> str | None:
        import shutil

        return next((shutil.which(n) for n in names if shutil.which(n)), None)

    async def start(self) -> "LibcoapServer":
        server = self.binary(self.NAMES)
        if server is None:
            import pytest

            pytest.skip("libcoap's coap-server is not installed (Debian libcoap3-bin)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(socket.SOCK_DGRAM)
        self.proc = await asyncio.create_subprocess_exec(
            server, "-A", "127.0.0.1", "-p", str(self.port), "-d", "8", "-v", "0",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return self

    async def put(self, name: str, data: bytes) -> None:
        client = self.binary(tuple(n.replace("server", "client") for n in self.NAMES))
        assert client, "coap-client missing next to coap-server"
        path = self.workdir / name
        path.write_bytes(data)
        # The server may still be binding its socket: retry the first PUT briefly.
        for _ in range(20):
            proc = await asyncio.create_subprocess_exec(
                client, "-m", "put", "-b", "1024", "-B", "5", "-f", str(path), self.uri(name),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await proc.communicate()
            if proc.returncode == 0 and b"4." not in out and b"5." not in out:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"coap-client PUT {name} failed: {out!r}")

    def uri(self, name: str) -> str:
        return f"coap://127.0.0.1:{self.port}/{name}"

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


class SlowCoapRelay:
    """A UDP relay in front of a CoAP server that holds every request for ``delay`` seconds (so
    a loopback pull takes long enough to be interrupted) and records the Block2 number each
    request asks for, decoded with aiocoap (``requests``: (client address, block number)). Each
    client address gets its own upstream socket, so a restarted daemon is a new client to the
    server, as over a real network."""

    def __init__(self, target_port: int, delay: float):
        self.target_port, self.delay = target_port, delay
        self.port = 0
        self.requests: list[tuple[tuple, int]] = []
        self._front = None
        self._upstreams: dict = {}

    async def start(self) -> "SlowCoapRelay":
        relay, loop = self, asyncio.get_running_loop()

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                relay._record(data, addr)
                loop.call_later(
                    relay.delay, lambda: asyncio.ensure_future(relay._forward(data, addr))
                )

        self._front, _ = await loop.create_datagram_endpoint(Front, local_addr=("127.0.0.1", 0))
        self.port = self._front.get_extra_info("sockname")[1]
        return self

    def _record(self, data: bytes, addr) -> None:
        from aiocoap import Message
        from aiocoap.numbers.codes import Code

        try:
            msg = Message.decode(data)
        except Exception:  # noqa: BLE001 - not CoAP: nothing to record
            return
        if msg.code == Code.GET:
            block = msg.opt.block2
            self.requests.append((addr, block.block_number if block else 0))

    async def _forward(self, data: bytes, addr) -> None:
        up = self._upstreams.get(addr)
        if up is None:
            relay = self

            class Back(asyncio.DatagramProtocol):
                def datagram_received(self, d, _):
                    relay._front.sendto(d, addr)

            up, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                Back, remote_addr=("127.0.0.1", self.target_port)
            )
            self._upstreams[addr] = up
        up.sendto(data)

    def uri(self, name: str) -> str:
        return f"coap://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        for t in [self._front, *self._upstreams.values()]:
            if t is not None:
                t.close()


# ----- common procedures -----


async def push(client, pkg: bytes) -> list:
    """Block1 push of ``pkg`` to /5/0/0 (1 KiB blocks); returns every response."""
    return await client.write_blockwise(PACKAGE, pkg, CF_OCTET_STREAM)


async def push_ok(client, daemon: Lwm2md, pkg: bytes) -> None:
    """Push ``pkg`` and wait for Downloaded."""
    responses = await push(client, pkg)
    assert responses[-1].code == "2.04", (
        [r.code for r in responses][-3:], daemon.log_text()[-3000:]
    )
    await wait_resource(client, STATE, DOWNLOADED, daemon=daemon)


async def update_and_commit(server, daemon: Lwm2md, version: str, target: str):
    """From Downloaded: Execute Update, the fake reboot, the trial, the commit. Returns the
    client of the new boot."""
    client = server.client(daemon.endpoint)
    resp = await client.execute(UPDATE)
    assert resp.code == "2.04", resp.code
    await reboot_and_restart(daemon)
    client = server.client(daemon.endpoint)
    await wait_resource(client, RESULT, R_SUCCESS, daemon=daemon)
    assert await read_int(client, STATE) == IDLE
    assert await read_str(client, VERSION) == version
    assert await read_str(client, "/3/0/3") == version
    assert_runs(daemon, target)
    assert journal(daemon)["phase"]["phase"] == "Idle"
    return client


async def full_update(server, daemon: Lwm2md, pkg: bytes, image: bytes, version: str, target: str):
    """Push, Downloaded (slot bytes checked), Update, reboot, commit."""
    client = server.client(daemon.endpoint)
    await push_ok(client, daemon, pkg)
    assert slot_bytes(daemon, target, len(image)) == image
    return await update_and_commit(server, daemon, version, target)


async def start_fresh(daemon: Lwm2md, timeout: float = 15.0) -> None:
    """Start the daemon and wait for a Register sent by *this* process (not an older one)."""
    mark = daemon.server.mark()
    await daemon.start()
    daemon.registration = await daemon.watch(
        daemon.server.wait_registration(timeout, ep=daemon.endpoint, since=mark), "registration"
    )


async def settle(daemon: Lwm2md, timeout: float = 40.0) -> dict:
    """Keep the daemon running (start it again after each fake reboot, as systemd would) until
    its journal shows a procedure at rest (not Updating / Verifying / Reverting) and it has
    registered; returns the journal."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    if not daemon.running:
        await daemon.start()  # after the kill -9 (and power cycle)
    while loop.time() < deadline:
        if not daemon.running:
            status = daemon.proc.returncode
            assert status == 0, f"lwm2md exited with {status}\n{daemon.log_text()[-4000:]}"
            await daemon.start()
            continue
        try:
            j = journal(daemon)
        except (FileNotFoundError, ValueError, KeyError):
            j = None
        if j is not None and j["phase"]["phase"] in ("Idle", "Downloading", "Downloaded"):
            # At rest; it stays so unless Execute / a queued update is pending.
            await asyncio.sleep(0.5)
            if daemon.running and journal(daemon) == j and not j.get("update_requested"):
                return j
        await asyncio.sleep(0.1)
    raise AssertionError(f"the update did not settle within {timeout} s\n{daemon.log_text()[-4000:]}")


async def wait_journal(daemon: Lwm2md, check, timeout: float = 10.0) -> dict:
    """Wait until ``check(journal)`` holds (log lines precede the journal write they announce)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    j = None
    while loop.time() < deadline:
        try:
            j = journal(daemon)
            if check(j):
                return j
        except (FileNotFoundError, ValueError, KeyError):
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"journal condition not met within {timeout} s: {j}")

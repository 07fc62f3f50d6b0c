"""systemd integration of the real binary: sd_notify READY / STATUS / WATCHDOG / STOPPING on a
notification socket, as systemd would see them for a Type=notify unit with WatchdogSec."""

from __future__ import annotations

import asyncio
import socket
import time


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET; records (time, field) pairs."""

    def __init__(self, path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.received: list[tuple[float, str]] = []

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            now = time.monotonic()
            for line in data.decode().splitlines():
                self.received.append((now, line))

    def fields(self, prefix: str) -> list[tuple[float, str]]:
        self.drain()
        return [(t, f) for t, f in self.received if f.startswith(prefix)]

    async def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.fields(prefix)
            if found:
                return found[-1][1]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {prefix!r} within {timeout} s; got {self.received}")


async def test_notify_ready_status_watchdog_and_stopping(lwm2md_unstarted, tmp_path):
    notify = NotifySocket(tmp_path / "notify.sock")
    # A 2 s watchdog: the main loop must ping at half the period.
    lwm2md_unstarted.extra_env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000"}
    await lwm2md_unstarted.start()
    await lwm2md_unstarted.wait_registered()
    assert await notify.wait_for("READY=1", 5) == "READY=1"
    status = await notify.wait_for("STATUS=registered with 1/1", 5)
    assert status == "STATUS=registered with 1/1 servers (1: registered)"
    start = time.monotonic()
    await asyncio.sleep(3.2)
    pings = [t for t, _ in notify.fields("WATCHDOG=1") if t >= start]
    assert 2 <= len(pings) <= 5, f"{len(pings)} watchdog pings in 3.2 s"
    # READY comes first: systemd considers the unit started only then.
    assert notify.received[0][1] == "READY=1"
    assert await lwm2md_unstarted.terminate() == 0
    assert await notify.wait_for("STOPPING=1", 1) == "STOPPING=1"


async def test_without_notify_socket_nothing_is_required(lwm2md):
    """Outside systemd (no NOTIFY_SOCKET) the daemon runs normally: registered already."""
    assert lwm2md.running

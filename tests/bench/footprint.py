#!/usr/bin/env python3
"""Footprint benchmark for lwm2md (issue 2 targets).

Runs the real daemon against a minimal LwM2M registration server built on aiocoap and measures:
  * start to registered: from spawning the process to the server receiving POST /rd (median of N);
  * idle RSS: VmRSS after registration and a settling period, with a lifetime of one day;
  * idle wake-ups: voluntary context switches summed over all threads during 60 s of idleness.
The binary size is measured by footprint.sh. Usage: footprint.py BINARY [--runs N] [--idle S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiocoap
import aiocoap.resource as resource


class Rd(resource.Resource):
    """POST /rd: remember when the registration arrived; answer 2.01 with a location."""

    def __init__(self) -> None:
        super().__init__()
        self.registered = asyncio.Event()
        self.at = 0.0

    async def render_post(self, request):
        self.at = time.monotonic()
        self.registered.set()
        return aiocoap.Message(code=aiocoap.CREATED, location_path=("rd", "bench"))


class RdEntry(resource.Resource):
    """POST/DELETE /rd/bench: updates and the de-registration."""

    async def render_post(self, request):
        return aiocoap.Message(code=aiocoap.CHANGED)

    async def render_delete(self, request):
        return aiocoap.Message(code=aiocoap.DELETED)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_field(pid: int, field: str, task: str | None = None) -> int:
    path = f"/proc/{pid}/task/{task}/status" if task else f"/proc/{pid}/status"
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def voluntary_switches(pid: int) -> int:
    """Sum over every thread: a wake-up of any thread counts."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            total += status_field(pid, "voluntary_ctxt_switches", task)
        except (FileNotFoundError, KeyError):
            pass  # a thread that just exited
    return total


async def one_run(binary: str, idle: float, measure_idle: bool) -> dict:
    rd = Rd()
    site = resource.Site()
    site.add_resource(["rd"], rd)
    site.add_resource(["rd", "bench"], RdEntry())
    port = free_udp_port()
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.toml"
        cfg.write_text(
            f'[agent]\nendpoint = "urn:dev:os:bench"\nstate_dir = "{tmp}/state"\nlog_level = "warn"\n\n'
            f'[[server]]\nuri = "coap://127.0.0.1:{port}"\nshort_id = 1\nlifetime = 86400\n\n'
            '[connectivity]\nmodem_manager = false\n'
        )
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        start = time.monotonic()
        proc = await asyncio.create_subprocess_exec(binary, "--config", str(cfg), env=env)
        try:
            await asyncio.wait_for(rd.registered.wait(), 10)
            result = {"start_to_registered_ms": (rd.at - start) * 1000}
            if measure_idle:
                await asyncio.sleep(15)  # let short-lived helper threads (state writer) retire
                before = voluntary_switches(proc.pid)
                await asyncio.sleep(idle)
                after = voluntary_switches(proc.pid)
                result["idle_seconds"] = idle
                result["idle_wakeups"] = after - before
                result["idle_rss_kib"] = status_field(proc.pid, "VmRSS")
                result["threads"] = len(os.listdir(f"/proc/{proc.pid}/task"))
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 10)
            await ctx.shutdown()
    return result


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--idle", type=float, default=60.0)
    args = ap.parse_args()
    starts = []
    idle = None
    for i in range(args.runs):
        r = await one_run(args.binary, args.idle, measure_idle=(i == 0))
        starts.append(r["start_to_registered_ms"])
        if i == 0:
            idle = r
    print(json.dumps({
        "start_to_registered_ms_median": round(statistics.median(starts), 1),
        "start_to_registered_ms_max": round(max(starts), 1),
        "runs": args.runs,
        "idle_seconds": idle["idle_seconds"],
        "idle_wakeups": idle["idle_wakeups"],
        "idle_rss_kib": idle["idle_rss_kib"],
        "threads": idle["threads"],
    }, indent=2))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""Assertions shared by the daemon tests."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from daemon import DEVICE, LIFETIME, SHORT_SERVER_ID
from lwm2m_codecs import CF_TEXT
from lwm2m_model import format_path, parse_path
from lwm2m_server import EndpointClient

#: Values that legitimately change between two reads: path → allowed difference (None = any).
VOLATILE: dict[str, float | None] = {
    "/3/0/10": None,  # Memory Free
    "/3/0/13": 3,  # Current Time (s)
}

#: /3/0 values fixed by the test configuration.
EXPECTED_DEVICE = {
    "/3/0/0": DEVICE["manufacturer"],
    "/3/0/1": DEVICE["model"],
    "/3/0/2": DEVICE["serial"],
    "/3/0/3": DEVICE["firmware_version"],
    "/3/0/16": "U",
    "/3/0/17": DEVICE["device_type"],
    "/3/0/18": DEVICE["hardware_version"],
}

#: /1/0 values fixed by the test configuration (README defaults where the config is silent).
EXPECTED_SERVER = {
    "/1/0/0": SHORT_SERVER_ID,
    "/1/0/1": LIFETIME,
    "/1/0/6": True,
    "/1/0/7": "U",
}


async def read_ok(client: EndpointClient, path: str, accept: int | None = None) -> dict[str, Any]:
    """Read ``path``, assert 2.05 (and the Content-Format when ``accept`` is given), decode."""
    resp = await client.read(path, accept)
    assert resp.code == "2.05", f"Read {path} (Accept {accept}) → {resp}"
    if accept is not None:
        assert resp.content_format == accept, f"Read {path}: asked for {accept}, got {resp.content_format}"
    return resp.decode()


async def read_text(client: EndpointClient, path: str) -> str:
    """Read one resource as text/plain and return the text."""
    resp = await client.read(path, CF_TEXT)
    assert resp.code == "2.05" and resp.content_format == CF_TEXT, f"Read {path} as text → {resp}"
    return resp.text


async def assert_still_serving(client: EndpointClient) -> None:
    """After bad input the client must still answer a normal Read."""
    resp = await client.read("/3/0/0", CF_TEXT)
    assert (resp.code, resp.text) == ("2.05", DEVICE["manufacturer"]), f"Read /3/0/0 after bad input → {resp}"


def assert_same_values(a: dict[str, Any], b: dict[str, Any], what: str) -> None:
    """Same paths and values in two decoded reads, allowing for VOLATILE resources."""
    assert sorted(a) == sorted(b), (
        f"{what}: paths differ: only in first {sorted(set(a) - set(b))}, "
        f"only in second {sorted(set(b) - set(a))}"
    )
    for path, value in a.items():
        tolerance = VOLATILE.get(path, 0)
        if tolerance is None:
            assert type(value) is type(b[path]), f"{what}: {path}: {value!r} vs {b[path]!r}"
        elif tolerance:
            assert abs(value - b[path]) <= tolerance, f"{what}: {path}: {value!r} vs {b[path]!r}"
        else:
            assert value == b[path] and type(value) is type(b[path]), (
                f"{what}: {path}: {value!r} vs {b[path]!r}"
            )


def resource_paths(values: dict[str, Any]) -> set[str]:
    """``/3/0/11/0`` → ``/3/0/11``: the resource paths present in a decoded read."""
    return {format_path(parse_path(p)[:3]) for p in values}


def instance_counts(values: dict[str, Any]) -> dict[str, int]:
    """Number of resource instances per multi-instance resource in a decoded read."""
    counts: dict[str, int] = {}
    for p in values:
        ids = parse_path(p)
        if len(ids) == 4:
            key = format_path(ids[:3])
            counts[key] = counts.get(key, 0) + 1
    return counts


def assert_time_near_now(value: int, tolerance: float = 5) -> None:
    """A Current Time value close to this machine's clock."""
    assert isinstance(value, int) and abs(value - time.time()) <= tolerance, (
        f"time {value} vs now {time.time():.0f}"
    )


def observe_is_newer(v1: int, v2: int) -> bool:
    """RFC 7641 §3.4 ordering of two Observe values (ignoring the 128 s rule)."""
    return (v1 < v2 and v2 - v1 < 2**23) or (v1 > v2 and v1 - v2 > 2**23)


async def wait_for_file(path: Path, timeout: float, what: str) -> None:
    """Poll for a marker file written by a configured command (no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{what} did not create {path} within {timeout} s"
        await asyncio.sleep(0.05)

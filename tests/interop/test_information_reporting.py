"""Information Reporting: Observe, notifications, attributes, cancellation (ETS 1.1-int-301 … 303, 660)."""

from __future__ import annotations

import asyncio

import pytest

from daemon import LIFETIME
from helpers import assert_still_serving, assert_time_near_now, observe_is_newer, read_ok
from lwm2m_codecs import CF_SENML_CBOR, CF_TEXT

NOTIFICATION_MODES = [
    pytest.param("NON", marks=pytest.mark.lwm2md_config({"server": {"notification_mode": "non"}}), id="non"),
    pytest.param("CON", marks=pytest.mark.lwm2md_config({"server": {"notification_mode": "con"}}), id="con"),
]


def assert_observe_sequence(values: list[int]) -> None:
    """24-bit Observe values, each newer than the previous one (RFC 7641 §3.4)."""
    assert all(0 <= v < 2**24 for v in values), values
    assert all(observe_is_newer(a, b) for a, b in zip(values, values[1:])), (
        f"Observe values not increasing: {values}"
    )


async def test_int_301_observe_pmin_pmax_timing(client):
    """pmin=2 / pmax=4 on Current Time (changes every second): spacing within [pmin, pmax]."""
    pmin, pmax = 2, 4
    assert (await client.write_attributes("/3/0/13", pmin=pmin, pmax=pmax)).code == "2.04"
    obs = await client.observe("/3/0/13", CF_TEXT)
    assert obs.established, f"Observe /3/0/13 → {obs.initial}"
    assert obs.initial.content_format == CF_TEXT
    notes = await obs.take(5, pmax + 2)  # the initial response and four notifications
    gaps = [b.time - a.time for a, b in zip(notes, notes[1:])]
    for gap in gaps:
        assert pmin - 0.3 <= gap <= pmax + 1.0, f"notification spacing {[round(g, 2) for g in gaps]} s"
    values = [n.decode()["/3/0/13"] for n in notes]
    # Each value is the device time when it was sent: it advances with the arrival times, and the
    # latest one is close to the host clock now.
    for n, v in zip(notes, values):
        assert abs((v - values[0]) - (n.time - notes[0].time)) <= 1.5, f"time values {values}"
    assert_time_near_now(values[-1])
    assert values == sorted(values) and len(set(values)) == len(values), f"time values {values}"
    assert all(n.content_format == CF_TEXT and n.code == "2.05" for n in notes)
    assert_observe_sequence(obs.wire_observe_values())
    await client.cancel_observe(obs, "get")


@pytest.mark.parametrize("mode", NOTIFICATION_MODES)
async def test_int_302_cancel_observation_with_rst(client, mode):
    """Answering a notification with RST ends the observation; the configured NON/CON is used."""
    assert (await client.write_attributes("/3/0/13", pmax=1)).code == "2.04"
    obs = await client.observe("/3/0/13", CF_TEXT)
    assert obs.established, f"Observe /3/0/13 → {obs.initial}"
    notes = await obs.take(3, 3)
    assert [n.mtype for n in notes[1:]] == [mode, mode]
    await client.cancel_observe(obs, "rst", timeout=3)
    await obs.assert_silent(3.0)
    await assert_still_serving(client)


@pytest.mark.parametrize("mode", NOTIFICATION_MODES)
async def test_int_303_cancel_observation_with_get(client, mode):
    """GET with Observe=1 and the same token: a plain 2.05 without Observe, then silence."""
    assert (await client.write_attributes("/3/0/13", pmax=1)).code == "2.04"
    obs = await client.observe("/3/0/13", CF_TEXT)
    assert obs.established, f"Observe /3/0/13 → {obs.initial}"
    await obs.take(2, 3)
    resp = await client.cancel_observe(obs, "get", timeout=5)
    assert resp.code == "2.05" and resp.observe is None, f"cancel GET → {resp} (Observe {resp.observe})"
    assert resp.content_format == CF_TEXT
    assert_time_near_now(resp.decode()["/3/0/13"])
    await obs.assert_silent(3.0)


async def test_int_660_observe_object_instance(client):
    """Observe /3/0: every notification carries the whole instance (SenML CBOR by default)."""
    assert (await client.write_attributes("/3/0", pmin=1, pmax=2)).code == "2.04"
    read = await read_ok(client, "/3/0", CF_SENML_CBOR)
    obs = await client.observe("/3/0")
    assert obs.established, f"Observe /3/0 → {obs.initial}"
    assert obs.initial.content_format == CF_SENML_CBOR
    for note in await obs.take(2, 4):
        assert sorted(note.decode()) == sorted(read)
    assert_observe_sequence(obs.wire_observe_values())
    await client.cancel_observe(obs, "get")


async def test_observe_notifies_on_write(client):
    """Without attributes a changed value is notified (Lifetime written by the server)."""
    obs = await client.observe("/1/0/1", CF_TEXT)
    assert obs.established and obs.initial.decode() == {"/1/0/1": LIFETIME}
    await obs.next(1)
    assert (await client.write("/1/0/1", b"123", CF_TEXT)).code == "2.04"
    assert (await obs.next(3)).decode() == {"/1/0/1": 123}
    await client.cancel_observe(obs, "get")


async def test_observe_pmax_on_unchanging_value(client):
    """pmax=2 forces notifications although the value does not change."""
    assert (await client.write_attributes("/1/0/1", pmax=2)).code == "2.04"
    obs = await client.observe("/1/0/1", CF_TEXT)
    assert obs.established
    notes = await obs.take(3, 3.5)
    gaps = [b.time - a.time for a, b in zip(notes, notes[1:])]
    assert all(1.7 <= g <= 3.0 for g in gaps), f"pmax=2 but spacing {[round(g, 2) for g in gaps]}"
    assert all(n.decode() == {"/1/0/1": LIFETIME} for n in notes)
    await client.cancel_observe(obs, "get")


async def _expect_after_write(client, obs, value: int, notify: bool) -> None:
    assert (await client.write("/1/0/1", str(value).encode(), CF_TEXT)).code == "2.04"
    if notify:
        assert (await obs.next(3)).decode() == {"/1/0/1": value}, f"expected a notification for {value}"
    else:
        await obs.assert_silent(1.5)


async def test_observe_step_attribute(client):
    """st=10 on /1/0/1: only changes of at least 10 since the last notified value are reported."""
    assert (await client.write_attributes("/1/0/1", st=10)).code == "2.04"
    obs = await client.observe("/1/0/1", CF_TEXT)
    assert obs.established and (await obs.next(1)).decode() == {"/1/0/1": LIFETIME}
    for value, notify in (
        (LIFETIME + 5, False),
        (LIFETIME + 12, True),
        (LIFETIME + 15, False),
        (LIFETIME, True),
    ):
        await _expect_after_write(client, obs, value, notify)
    await client.cancel_observe(obs, "get")


async def test_observe_greater_and_less_than(client):
    """gt=100 / lt=50 on /1/0/1: notify only when a threshold is crossed."""
    assert (await client.write_attributes("/1/0/1", gt=100, lt=50)).code == "2.04"
    obs = await client.observe("/1/0/1", CF_TEXT)
    assert obs.established and (await obs.next(1)).decode() == {"/1/0/1": LIFETIME}
    for value, notify in ((200, False), (80, True), (60, False), (40, True), (45, False), (150, True)):
        await _expect_after_write(client, obs, value, notify)
    await client.cancel_observe(obs, "get")


async def test_observations_end_with_a_new_registration(server, lwm2md, client):
    """A fresh Register ends every observation of the previous registration."""
    assert (await client.write_attributes("/3/0/13", pmax=1)).code == "2.04"
    obs = await client.observe("/3/0/13", CF_TEXT)
    assert obs.established
    await obs.take(2, 3)
    server.forget(lwm2md.endpoint)
    mark = server.mark()
    assert (await client.execute("/1/0/8")).code == "2.04"
    await server.wait_registration(5, since=mark, ep=lwm2md.endpoint)
    await asyncio.sleep(0.5)  # a notification already in flight may still arrive
    await obs.assert_silent(3.0)


async def test_observe_unknown_resource_is_404(client):
    obs = await client.observe("/3/0/99")
    assert obs.initial.code == "4.04" and not obs.established

"""Client Registration interface (ETS 1.1-int-101 … 107 and related behaviour)."""

from __future__ import annotations

import pytest

from daemon import LIFETIME
from helpers import read_ok, read_text
from lwm2m_codecs import CF_LINK_FORMAT, CF_LWM2M_JSON, CF_SENML_CBOR, CF_TEXT
from lwm2m_model import parse_path
from lwm2m_server import objects_from_links

KNOWN_REGISTER_PARAMS = {"ep", "lt", "lwm2m", "b", "sms", "Q", "pid"}


async def test_int_101_register_parameters(lwm2md, server, model):
    """Register: ep / lt / lwm2m=1.1 / b=U, a CF 40 object list with </> ct=, ver= where needed, no /0."""
    reg = lwm2md.registration
    assert (reg.method, reg.path, reg.mtype) == ("POST", "/rd", "CON")
    assert reg.params["ep"] == lwm2md.endpoint
    assert reg.params["lt"] == str(LIFETIME)
    assert reg.params["lwm2m"] == "1.1"
    assert reg.params["b"] == "U"
    assert set(reg.params) <= KNOWN_REGISTER_PARAMS, f"unknown Register parameters {reg.params}"
    assert "Q" not in reg.params, "queue mode was not configured"
    assert reg.content_format == CF_LINK_FORMAT

    hrefs = [link.href for link in reg.links]
    assert len(hrefs) == len(set(hrefs)), f"duplicate links: {hrefs}"
    roots = [link for link in reg.links if link.href == "/"]
    assert len(roots) == 1, f"expected one </> link, got {hrefs}"
    ct = roots[0].get("ct")
    assert ct, "</> must advertise the content formats with ct="
    formats = [int(x) for x in ct.split(" ")]
    assert CF_SENML_CBOR in formats, f"ct={ct} lacks the default multi-value format 112"
    assert CF_LWM2M_JSON not in formats, "a 1.1 client must not offer LwM2M JSON (11543)"

    for href in hrefs:
        if href != "/":
            assert 1 <= len(parse_path(href)) <= 2, f"unexpected link <{href}> in the object list"
    objects = objects_from_links(reg.links)
    assert 0 not in objects, "the Security object /0 must never be listed"
    assert 21 not in objects, "OSCORE /21 must never be listed"
    assert objects[1].instances == [0]
    assert objects[3].instances == [0]
    for oid in (1, 3):
        versions = sorted(model.versions[oid])
        assert objects[oid].version in versions, (
            f"</{oid}> must carry ver= (registry versions {versions}), got {objects[oid].version}"
        )
    for oid, obj in objects.items():
        if oid in model.versions:
            if obj.version is None:
                assert "1.0" in model.versions[oid], f"</{oid}> needs ver= (object version is not 1.0)"
            else:
                assert obj.version in model.versions[oid], (
                    f"</{oid}>;ver={obj.version} is not a registry version"
                )


async def test_advertised_content_formats_are_served(lwm2md, client):
    """Every multi-value format in the root link's ct= is actually served for /3/0."""
    ct = next(link for link in lwm2md.registration.links if link.href == "/").get("ct")
    for cf in (int(x) for x in ct.split(" ")):
        if cf in (0, 40, 42):
            continue
        path = "/3/0/0" if cf == 60 else "/3/0"
        resp = await client.read(path, cf)
        assert (resp.code, resp.content_format) == ("2.05", cf), f"ct lists {cf} but Read {path} → {resp}"
        if cf != 11544:  # no LwM2M CBOR decoder in the suite
            assert resp.decode()


async def test_int_102_lifetime_write_sends_update(lwm2md, server, client):
    """Write /1/0/1 = 20 → 2.04, then an Update carrying only lt=20."""
    mark = server.mark()
    resp = await client.write("/1/0/1", b"20", CF_TEXT)
    assert resp.code == "2.04"
    update = await server.wait_update(3, since=mark)
    assert update.reg_id == lwm2md.registration.reg_id
    assert update.params == {"lt": "20"}
    assert update.payload == b""
    assert await read_text(client, "/1/0/1") == "20"


@pytest.mark.lwm2md_config({"server": {"lifetime": 60}})
async def test_int_107_lifetime_increase_updates_immediately(lwm2md, server, client):
    """Lifetime 60 → 120: the Update with lt=120 follows the write at once."""
    assert lwm2md.registration.params["lt"] == "60"
    mark = server.mark()
    written = server.now()
    assert (await client.write("/1/0/1", b"120", CF_TEXT)).code == "2.04"
    update = await server.wait_update(3, since=mark)
    assert update.params == {"lt": "120"}
    assert update.time - written < 3
    assert server.registration(lwm2md.endpoint).lifetime == 120


@pytest.mark.lwm2md_config({"server": {"lifetime": 20}})
async def test_update_before_lifetime_expiry(lwm2md, server):
    """With lt=20 the client sends parameterless Updates, each before the registration expires."""
    previous = lwm2md.registration
    for _ in range(2):
        update = await server.wait_update(20)
        assert update.params == {} and update.payload == b"", f"nothing changed, yet {update}"
        assert update.time - previous.time < 20 - 1, (
            f"Update {update.time - previous.time:.1f} s after the previous exchange; lifetime is 20 s"
        )
        previous = update


async def test_int_103_disable_deregisters_then_reregisters(lwm2md, server, client):
    """Execute Disable /1/0/4 → De-register; silence for the Disable Timeout; then Register again."""
    disable_timeout = 3
    assert (await client.write("/1/0/5", str(disable_timeout).encode(), CF_TEXT)).code == "2.04"
    mark = server.mark()
    executed = server.now()
    assert (await client.execute("/1/0/4")).code == "2.04"
    dereg = await server.wait_deregistration(3, since=mark)
    assert dereg.reg_id == lwm2md.registration.reg_id and dereg.method == "DELETE"
    reg = await server.wait_registration(disable_timeout + 10, since=mark, ep=lwm2md.endpoint)
    elapsed = reg.time - executed
    assert elapsed >= disable_timeout - 0.5, (
        f"re-registered {elapsed:.2f} s after Disable (timeout {disable_timeout} s)"
    )
    between = [e for e in server.events[mark:] if dereg.time < e.time < reg.time and e.kind != "forget"]
    assert between == [], f"the client was not silent while disabled: {between}"
    assert reg.params["lt"] == str(LIFETIME)
    assert (await client.read("/3/0/0", CF_TEXT)).code == "2.05"


async def test_int_104_registration_update_trigger(lwm2md, server, client):
    """Execute /1/0/8 → 2.04 and a parameterless Update without payload."""
    mark = server.mark()
    assert (await client.execute("/1/0/8")).code == "2.04"
    update = await server.wait_update(3, since=mark)
    assert update.params == {} and update.payload == b""
    assert update.reg_id == lwm2md.registration.reg_id
    assert server.registration(lwm2md.endpoint).id == lwm2md.registration.reg_id


async def test_int_105_update_answered_404_registers_again(lwm2md, server, client):
    """The server forgot the registration: the Update gets 4.04 and the client Registers anew."""
    old = server.forget(lwm2md.endpoint)
    mark = server.mark()
    assert (await client.execute("/1/0/8")).code == "2.04"
    rejected = await server.wait_event("update-unknown", 3, since=mark)
    assert rejected.reg_id == old.id
    reg = await server.wait_registration(5, since=mark, ep=lwm2md.endpoint)
    assert reg.reg_id != old.id
    assert reg.params["lwm2m"] == "1.1" and reg.params["lt"] == str(LIFETIME)
    assert objects_from_links(reg.links)[3].instances == [0], "a new Register carries the full object list"
    assert (await read_ok(client, "/1/0/0", CF_TEXT)) == {"/1/0/0": 1}


@pytest.mark.lwm2md_config(
    {
        "coap": {"ack_timeout": 1.0, "ack_random_factor": 1.0, "max_retransmit": 0},
        "registration": {"retry_initial": 1, "retry_max": 4},
    }
)
async def test_registration_backoff_with_jitter_when_server_silent(lwm2md_unstarted, server):
    """A silent server: Register attempts are spaced by a growing, capped, randomised back-off.

    With max_retransmit = 0 and ack_random_factor = 1.0 an attempt fails exactly ack_timeout
    (1 s) after it is sent, so the gap between two attempts minus 1 s is the back-off itself.
    Nominal back-offs: 1, 2, 4, 4 s (doubling, capped at retry_max = 4).
    """
    ack_timeout, attempts_wanted = 1.0, 5
    server.go_silent()
    await lwm2md_unstarted.start()

    def register_attempts():
        return [e for e in server.events if e.kind == "dropped" and e.method == "POST" and e.path == "/rd"]

    deadline = server.now() + 30
    while len({e.mid for e in register_attempts()}) < attempts_wanted:
        assert server.now() < deadline, f"only {len(register_attempts())} Register attempts in 30 s"
        await lwm2md_unstarted.watch(
            server.wait_event("dropped", deadline - server.now()), "Register attempt"
        )
    attempts = register_attempts()
    mids = [e.mid for e in attempts]
    assert len(mids) == len(set(mids)), f"max_retransmit = 0, yet a Register was retransmitted: {mids}"

    starts = [e.time for e in attempts[:attempts_wanted]]
    backoffs = [b - a - ack_timeout for a, b in zip(starts, starts[1:])]
    nominal = [min(1 * 2**i, 4) for i in range(len(backoffs))]
    report = ", ".join(f"{b:.2f}/{n}" for b, n in zip(backoffs, nominal))
    for b, n in zip(backoffs, nominal):
        assert 0.5 * n - 0.2 <= b <= 1.5 * n + 0.3, (
            f"back-off outside [n/2, 3n/2] (actual/nominal s: {report})"
        )
    assert backoffs[2] > backoffs[0] and backoffs[3] > backoffs[0], f"back-off does not grow: {report}"
    assert any(abs(b - n) > 0.05 for b, n in zip(backoffs, nominal)), f"no jitter: {report}"

    server.resume()
    reg = await server.wait_registration(4 * 1.5 + ack_timeout + 3, ep=lwm2md_unstarted.endpoint)
    lwm2md_unstarted.registration = reg


async def test_sigterm_deregisters_and_exits(lwm2md, server):
    """SIGTERM → De-register (DELETE on the registration) → exit status 0 within 5 s."""
    mark = server.mark()
    started = server.now()
    status = await lwm2md.terminate(5.0)
    assert status == 0
    deregs = server.events_of("deregister", mark)
    assert len(deregs) == 1, f"expected one de-registration, got:\n{server.describe_events(mark)}"
    assert deregs[0].reg_id == lwm2md.registration.reg_id and deregs[0].time - started < 5


async def test_server_writes_persist_across_restart(lwm2md, server, client):
    """A lifetime written by the server survives a restart (state_dir) and is used in Register."""
    mark = server.mark()
    assert (await client.write("/1/0/1", b"77", CF_TEXT)).code == "2.04"
    await server.wait_update(3, since=mark)
    assert await lwm2md.terminate() == 0
    await server.wait_deregistration(2, since=mark)
    await lwm2md.start()
    reg = await lwm2md.wait_registered()
    assert reg.params["lt"] == "77"
    assert await read_text(client, "/1/0/1") == "77"

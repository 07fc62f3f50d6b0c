"""Self-tests of the Bootstrap-Server (``bootstrap_server.py``) and the bootstrap configuration
helpers; they need no daemon. The BS is driven by ``FakeBootstrapClient`` (in-process) and, where
the exact datagrams matter, by a raw UDP peer."""

from __future__ import annotations

import asyncio
import tomllib

import pytest

import coap_raw
from bootstrap_server import (
    ACL_READ,
    ACL_WRITE,
    SECURITY_NOSEC,
    SECURITY_PSK,
    AccessControl,
    BootstrapError,
    BootstrapServer,
    ServerAccount,
    expand_values,
)
from daemon import base_config, bootstrap_config, deep_merge, server_table, to_toml
from fake_bootstrap_client import FakeBootstrapClient
from lwm2m_codecs import CF_SENML_CBOR, CF_SENML_JSON, CF_TLV, decode_tlv, encode_tlv
from lwm2m_server import EventTimeout, Lwm2mServer

# --- values and accounts ----------------------------------------------------------------------


def test_expand_values_by_ids_and_paths():
    assert expand_values("/1/0", {1: 60, 7: "U"}) == {"/1/0/1": 60, "/1/0/7": "U"}
    assert expand_values("/1/0", {"/1/0/1": 60}) == {"/1/0/1": 60}
    assert expand_values("/1/0/5", 86400) == {"/1/0/5": 86400}
    assert expand_values("/2/0", {2: {1: 7, 2: 1}}) == {"/2/0/2/1": 7, "/2/0/2/2": 1}
    assert expand_values("/2/0/2", {1: 7, 3: 1}) == {"/2/0/2/1": 7, "/2/0/2/3": 1}
    assert expand_values("/3/0", {11: [0, 5]}) == {"/3/0/11/0": 0, "/3/0/11/1": 5}
    assert expand_values("/0", {1: {0: "coap://a", 10: 1}, 2: {0: "coap://b"}}) == {
        "/0/1/0": "coap://a",
        "/0/1/10": 1,
        "/0/2/0": "coap://b",
    }
    with pytest.raises(ValueError):
        expand_values("/1/0", {"/3/0/1": "x"})
    with pytest.raises(ValueError):
        expand_values("/1", {0: 5})
    with pytest.raises(ValueError):
        expand_values("/1/0", 5)


def test_account_and_acl_values(model):
    nosec = ServerAccount(ssid=3, uri="coap://127.0.0.1:5683", lifetime=45)
    assert nosec.security_values() == {
        0: "coap://127.0.0.1:5683",
        1: False,
        2: SECURITY_NOSEC,
        3: b"",
        4: b"",
        5: b"",
        10: 3,
    }
    assert nosec.server_values() == {0: 3, 1: 45, 6: True, 7: "U"}
    psk = ServerAccount(ssid=4, uri="coaps://h", psk_identity="id", psk_key=b"\x01\x02")
    sec = psk.security_values()
    assert (sec[2], sec[3], sec[5]) == (SECURITY_PSK, b"id", b"\x01\x02")
    acl = AccessControl(3, 0, {0: ACL_READ, 2: ACL_READ | ACL_WRITE}, owner=1)
    assert acl.values() == {0: 3, 1: 0, 2: {0: 1, 2: 3}, 3: 1}
    # An object-level TLV body with two Security instances decodes back to the same values.
    values = expand_values("/0", {1: nosec.security_values(), 2: psk.security_values()})
    assert decode_tlv(encode_tlv(values, "/0", model), "/0", model) == values


def test_bootstrap_config_writes_no_server_table(tmp_path):
    config = deep_merge(
        base_config("coap://127.0.0.1:1", tmp_path / "s", tmp_path / "m", "urn:dev:os:x"),
        bootstrap_config("coap://127.0.0.1:2", hold_off=2),
    )
    text = to_toml(config)
    assert "[[server]]" not in text
    parsed = tomllib.loads(text)
    assert parsed["server"] == []
    assert parsed["bootstrap"] == {
        "uri": "coap://127.0.0.1:2",
        "hold_off": 2,
        "fallback_after": 3,
        "timeout": 247,
    }
    with pytest.raises(ValueError, match="no table to merge into"):
        deep_merge(config, {"server": {"lifetime": 20}})
    config["server"] = [server_table("coap://127.0.0.1:3", short_id=2)]
    assert tomllib.loads(to_toml(config))["server"] == [
        {"uri": "coap://127.0.0.1:3", "short_id": 2, "lifetime": 300, "binding": "U"}
    ]


# --- the Bootstrap-Request, byte by byte ------------------------------------------------------


@pytest.fixture
async def bs():
    srv = await BootstrapServer().start()
    yield srv
    await srv.stop()


def _bs_request(mid: int, query: list[bytes]) -> bytes:
    options = [(coap_raw.OPT_URI_PATH, b"bs")] + [(coap_raw.OPT_URI_QUERY, q) for q in query]
    return coap_raw.encode(coap_raw.CON, coap_raw.POST, mid, b"\x42", options)


async def test_bootstrap_request_is_answered_before_the_first_operation(bs):
    """A CON POST /bs?ep=&pct= → piggy-backed 2.04 first, then the BS's Delete from the same port."""
    peer = await coap_raw.RawUdpPeer().start()
    try:
        peer.send(_bs_request(0x1234, [b"ep=raw-ep", b"pct=112"]), ("127.0.0.1", bs.port))
        ev = await bs.wait_request(2)
        assert (ev.ep, ev.params, ev.mtype, ev.mid, ev.response) == (
            "raw-ep",
            {"ep": "raw-ep", "pct": "112"},
            "CON",
            0x1234,
            "2.04",
        )
        assert ev.remote is bs.peer
        delete = asyncio.ensure_future(bs.delete("/", timeout=2))
        first = coap_raw.decode(await peer.recv(2))
        assert (first.mtype, first.code_str, first.mid) == (coap_raw.ACK, "2.04", 0x1234), "first: ACK 2.04"
        second = coap_raw.decode(await peer.recv(2))
        assert (second.mtype, second.code, second.options) == (coap_raw.CON, coap_raw.DELETE, []), (
            "then DELETE / (no Uri-Path)"
        )
        peer.send(
            coap_raw.encode(coap_raw.ACK, coap_raw.code(2, 2), second.mid, second.token),
            ("127.0.0.1", bs.port),
        )
        resp = await delete
        assert resp.code == "2.02"
        (op,) = bs.operations()
        assert (op.method, op.path, op.response, op.ep) == ("DELETE", "/", "2.02", "raw-ep")
    finally:
        peer.close()


async def test_bootstrap_request_refusals_and_unexpected_requests(bs):
    peer = await coap_raw.RawUdpPeer().start()
    try:
        peer.send(_bs_request(1, [b"pct=112"]), ("127.0.0.1", bs.port))
        reply = coap_raw.decode(await peer.recv(2))
        assert reply.code_str == "4.00", "no ep → 4.00"
        assert bs.events_of("bootstrap-request-rejected")[0].params == {"pct": "112"}
        bs.request_code = "4.00"
        peer.send(_bs_request(2, [b"ep=x"]), ("127.0.0.1", bs.port))
        assert coap_raw.decode(await peer.recv(2)).code_str == "4.00"
        assert (await bs.wait_request(1)).response == "4.00"
        rd = coap_raw.encode(coap_raw.CON, coap_raw.POST, 3, b"\x01", [(11, b"rd"), (15, b"ep=x")])
        peer.send(rd, ("127.0.0.1", bs.port))
        assert coap_raw.decode(await peer.recv(2)).code_str == "4.04", "a Register at the BS → 4.04"
        (unexpected,) = bs.events_of("unexpected")
        assert (unexpected.path, unexpected.params) == ("/rd", {"ep": "x"})
        bs.go_silent()
        peer.send(_bs_request(4, [b"ep=x"]), ("127.0.0.1", bs.port))
        assert await peer.recv(0.5) is None
        assert bs.events_of("dropped")[0].path == "/bs"
        with pytest.raises(EventTimeout, match="Bootstrap-Request not seen within 0.2 s"):
            await bs.wait_request(0.2)
    finally:
        peer.close()


async def test_operation_without_a_client_or_answer(bs):
    with pytest.raises(BootstrapError, match="no Bootstrap-Request yet"):
        await bs.discover("/")
    peer = await coap_raw.RawUdpPeer().start()
    try:
        peer.send(_bs_request(7, [b"ep=mute"]), ("127.0.0.1", bs.port))
        await bs.wait_request(2)
        with pytest.raises(EventTimeout, match="no answer to Bootstrap GET /"):
            await bs.discover("/", timeout=0.5)
        assert bs.operations()[0].error == "timeout"
    finally:
        peer.close()


# --- against the fake client ------------------------------------------------------------------


@pytest.fixture
async def fake(bs, tmp_path, model):
    client = FakeBootstrapClient(
        "urn:dev:os:fake-bs",
        bootstrap_uri=bs.uri,
        state_file=tmp_path / "state.json",
        model=model,
        log=lambda _: None,
    )
    await client.start()
    yield client
    await client.shutdown()


async def test_provision_discover_read_finish_register(bs, fake, server):
    ev = await bs.wait_request(5)
    assert ev.params == {"ep": "urn:dev:os:fake-bs", "pct": str(CF_SENML_CBOR)}
    prov = await bs.provision(
        [ServerAccount(ssid=5, uri=server.uri, lifetime=50)],
        [AccessControl(1, 0, {5: ACL_READ | ACL_WRITE}, owner=5)],
        finish=False,
    )
    (bs_iid,) = prov.bootstrap_iids
    sec_iid, srv_iid = prov.accounts[5]
    assert sec_iid != bs_iid and srv_iid == 0 and prov.acl_iids == [0]
    disc = await bs.discover("/")
    assert disc.root == {"lwm2m": "1.1"} and disc.link("/3/0") is not None
    assert disc.instances(0)[sec_iid] == {"ssid": "5", "uri": server.uri}
    assert disc.instances(0)[bs_iid] == {"uri": bs.uri}
    assert disc.instances(1) == {0: {"ssid": "5"}}
    for accept in (CF_TLV, CF_SENML_CBOR, CF_SENML_JSON):
        assert (await bs.read("/1", accept)).values["/1/0/1"] == 50
        assert (await bs.read("/2/0", accept)).values == {
            "/2/0/0": 1,
            "/2/0/1": 0,
            "/2/0/2/5": 3,
            "/2/0/3": 5,
        }
    assert (await bs.read("/0")).code == "4.01"
    assert fake.instances[(0, sec_iid)][0] == server.uri
    done = await bs.finish()
    assert (done.code, done.payload) == ("2.04", b"")
    reg = await server.wait_registration(5, ep="urn:dev:os:fake-bs")
    assert reg.params["lt"] == "50"
    assert [e.method + " " + e.path for e in bs.operations()] == [
        "DELETE /",
        "GET /",
        "PUT /0/1",
        "PUT /1/0",
        "PUT /2/0",
        "GET /",
        "GET /1",
        "GET /2/0",
        "GET /1",
        "GET /2/0",
        "GET /1",
        "GET /2/0",
        "GET /0",
        "POST /bs",
    ]


async def test_writes_in_every_format_and_finish_refusal(bs, fake, server):
    await bs.wait_request(5)
    for fmt in ("tlv", "senml-cbor", "senml-json"):
        resp = await bs.write("/1/3", {0: 9, 1: 33, 6: False, 7: "U"}, fmt)
        assert resp.code == "2.04", fmt
        assert fake.instances[(1, 3)] == {0: 9, 1: 33, 6: False, 7: "U"}
        del fake.instances[(1, 3)]
    await bs.write("/1/3/5", 86400)
    with pytest.raises(BootstrapError, match="Bootstrap-Finish: expected 2.04, got 4.06"):
        await bs.provision([], delete=False)
    prov = await bs.provision([ServerAccount(ssid=1, uri=server.uri)], expect_finish=None)
    assert prov.finish.code == "2.04"
    await server.wait_registration(5)


async def test_execute_bootstrap_trigger_then_state_survives_restart(bs, fake, server, tmp_path, model):
    await bs.wait_request(5)
    await bs.provision([ServerAccount(ssid=1, uri=server.uri, lifetime=40)])
    await server.wait_registration(5)
    assert (await server.client().execute("/1/0/9")).code == "2.04"
    await bs.wait_request(5)
    await bs.provision([ServerAccount(ssid=1, uri=server.uri, lifetime=41)])
    reg = await server.wait_registration(5)
    assert reg.params["lt"] == "41"
    await fake.shutdown()
    restarted = FakeBootstrapClient(
        "urn:dev:os:fake-bs",
        bootstrap_uri=bs.uri,
        state_file=tmp_path / "state.json",
        model=model,
        log=lambda _: None,
    )
    await restarted.start()
    try:
        assert (await server.wait_registration(5)).params["lt"] == "41"
        assert len(bs.requests()) == 2
    finally:
        await restarted.shutdown()


async def test_two_bootstrap_servers_do_not_interfere():
    a, b = await BootstrapServer().start(), await BootstrapServer().start()
    try:
        assert a.port != b.port and a.uri.startswith("coap://127.0.0.1:")
        assert isinstance(a, Lwm2mServer)
    finally:
        await a.stop()
        await b.stop()

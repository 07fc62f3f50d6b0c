"""Self-tests of the test server, its codecs and helpers; they need no daemon.

Codec tests use byte vectors written by hand from lwm2m-notes §f and RFC 8428, not output of the
encoders under test. Server tests drive ``Lwm2mServer`` with ``FakeLwm2mClient``, an aiocoap
client posing as a LwM2M client.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import tomllib
from pathlib import Path

import cbor2
import pytest

import coap_raw
from daemon import DaemonError, Lwm2md, base_config, deep_merge, to_toml
from fake_client import FakeLwm2mClient
from lwm2m_codecs import (
    CF_LINK_FORMAT,
    CF_SENML_CBOR,
    CF_SENML_JSON,
    CF_TEXT,
    CF_TLV,
    TLV_RESOURCE,
    LinkFormatError,
    SenmlError,
    TextError,
    TlvError,
    decode_link_format,
    decode_senml_cbor,
    decode_senml_json,
    decode_text,
    decode_tlv,
    encode_senml_cbor,
    encode_senml_json,
    encode_text,
    encode_tlv,
    parse_link_format,
    tlv_element,
    tlv_encode_value,
    tlv_parse,
)
from lwm2m_model import REPO_REGISTRY, SHARED_REGISTRY, parse_path
from lwm2m_server import EventTimeout, Lwm2mServer, parse_query

# --- model ----------------------------------------------------------------------------------


def test_model_has_core_objects_from_xml(model):
    for oid in (0, 1, 3, 4):
        assert oid in model.objects, f"object {oid} missing from {model.source}"
    assert model.object(3).version == "1.2"
    manufacturer = model.resource("/3/0/0")
    assert (manufacturer.type, manufacturer.operations, manufacturer.multiple) == ("string", "R", False)
    error_code = model.resource("/3/0/11/0")
    assert (error_code.type, error_code.multiple, error_code.mandatory) == ("integer", True, True)
    assert model.resource("/3/0/4").executable and not model.resource("/3/0/4").readable
    assert model.resource("/1/0/1").writable and model.resource("/1/0/1").type == "integer"
    assert model.resource("/1/0/6").type == "boolean"
    assert model.resource("/3/0/13").type == "time"
    assert model.versions[5] == {"1.0", "1.1", "1.2"}


def test_registry_copies_agree():
    """The shared registry and the repository copy must not drift apart."""
    if not (SHARED_REGISTRY.is_dir() and REPO_REGISTRY.is_dir()):
        pytest.skip("only one registry copy present")
    shared = {p.name: p.read_bytes() for p in SHARED_REGISTRY.glob("*.xml")}
    repo = {p.name: p.read_bytes() for p in REPO_REGISTRY.glob("*.xml")}
    assert shared == repo


def test_parse_path():
    assert parse_path("/3/0/11/0") == (3, 0, 11, 0)
    assert parse_path("/") == ()
    for bad in ("3/0", "/3//0", "/a", "/65536", "/03"):
        with pytest.raises(ValueError):
            parse_path(bad)


# --- TLV (vectors from lwm2m-notes §f) ------------------------------------------------------

WORKED_EXAMPLE = bytes.fromhex(
    "C4004F70656E"  # res 0 "Open"
    "C8010A47572D454447452D3031"  # res 1, 8-bit length, "GW-EDGE-01"
    "C10957"  # res 9 = 87
    "8606 410001 410105"  # multiple resource 6 = {0: 1, 1: 5}
)
WORKED_VALUES = {"/3/0/0": "Open", "/3/0/1": "GW-EDGE-01", "/3/0/9": 87, "/3/0/6/0": 1, "/3/0/6/1": 5}


def test_tlv_worked_example_decodes(model):
    assert len(WORKED_EXAMPLE) == 30
    assert decode_tlv(WORKED_EXAMPLE, "/3/0", model) == WORKED_VALUES


def test_tlv_worked_example_object_level_wrap(model):
    wrapped = bytes.fromhex("08001E") + WORKED_EXAMPLE
    assert len(wrapped) == 33
    assert decode_tlv(wrapped, "/3", model) == WORKED_VALUES
    assert encode_tlv(WORKED_VALUES, "/3", model) == wrapped


def test_tlv_worked_example_encodes(model):
    values = {"/3/0/0": "Open", "/3/0/1": "GW-EDGE-01", "/3/0/9": 87, "/3/0/6/0": 1, "/3/0/6/1": 5}
    assert encode_tlv(values, "/3/0", model) == WORKED_EXAMPLE


@pytest.mark.parametrize(
    "kind,ident,value,rtype,expected",
    [
        (TLV_RESOURCE, 300, 1, "integer", "E1012C01"),  # 16-bit identifier
        (TLV_RESOURCE, 1, 300, "integer", "C201012C"),
        (TLV_RESOURCE, 17, "9:1", "objlnk", "C41100090001"),
        (TLV_RESOURCE, 11, -2, "integer", "C10BFE"),
    ],
)
def test_tlv_more_vectors(kind, ident, value, rtype, expected):
    encoded = tlv_element(kind, ident, tlv_encode_value(value, rtype))
    assert encoded.hex().upper() == expected
    (el,) = tlv_parse(encoded)
    assert (el.kind, el.id) == (kind, ident)


def test_tlv_long_length_fields():
    """16-bit (0b10) and 24-bit (0b11) length fields."""
    assert tlv_element(TLV_RESOURCE, 5, b"x" * 300)[:4].hex().upper() == "D005012C"
    assert tlv_element(TLV_RESOURCE, 5, b"x" * 70000)[:5].hex().upper() == "D805011170"
    for size in (7, 8, 255, 256, 300, 70000):
        (el,) = tlv_parse(tlv_element(TLV_RESOURCE, 5, b"x" * size))
        assert (el.id, len(el.value)) == (5, size)


def test_tlv_typed_values(model):
    payload = (
        tlv_element(TLV_RESOURCE, 1, tlv_encode_value(86400, "integer"))
        + tlv_element(TLV_RESOURCE, 6, b"\x01")
        + tlv_element(TLV_RESOURCE, 7, b"UQ")
    )
    assert decode_tlv(payload, "/1/0", model) == {"/1/0/1": 86400, "/1/0/6": True, "/1/0/7": "UQ"}
    assert tlv_encode_value(86400, "integer") == bytes.fromhex("00015180")
    assert decode_tlv(bytes.fromhex("C40D") + (1700000000).to_bytes(4, "big"), "/3/0/13", model) == {
        "/3/0/13": 1700000000
    }
    assert decode_tlv(bytes.fromhex("410300"), "/3/0/11/3", model) == {"/3/0/11/3": 0}


@pytest.mark.parametrize(
    "payload,path,why",
    [
        ("C4004F70", "/3/0", "claims 4 bytes, has 2"),
        ("C8", "/3/0", "truncated header"),
        ("C4004F70656E", "/3", "object level without instance wrapper"),
        ("410001", "/3/0", "resource instance outside a multiple resource"),
        ("C30100012C", "/1/0", "3-byte integer"),
        ("C1060201", "/1/0", "boolean 2 then trailing junk"),
        ("C1060041", "/1/0", "trailing garbage"),
        ("C10101C10102", "/1/0", "duplicate resource"),
        ("C10257", "/1/0/1", "wrong resource id for the path"),
        ("830BC10000", "/3/0", "resource TLV inside a multiple resource"),
        ("C10B00", "/3/0", "multi-instance resource sent as single"),
        ("8301410101", "/1/0", "single resource sent as multiple"),
        ("C400FFFEFDFC", "/3/0", "string not UTF-8"),
    ],
)
def test_tlv_malformed_is_rejected(model, payload, path, why):
    with pytest.raises(TlvError):
        decode_tlv(bytes.fromhex(payload), path, model)


# --- SenML ----------------------------------------------------------------------------------


def test_senml_json_vector(model):
    payload = (
        b'[{"bn":"/3/0/","n":"0","vs":"Open"},{"n":"9","v":87},{"n":"6/0","v":1},'
        b'{"n":"6/1","v":5},{"bn":"/1/0/","n":"6","vb":true}]'
    )
    expected = {k: v for k, v in WORKED_VALUES.items() if k != "/3/0/1"}
    assert decode_senml_json(payload, "/", model) == {**expected, "/1/0/6": True}


def test_senml_cbor_hand_encoded_vector(model):
    # [{-2: "/3/0/", 0: "0", 3: "Open"}, {0: "9", 2: 87}] written byte by byte (RFC 8949 / 8428 §6)
    payload = bytes.fromhex("82 A3 21 652F332F302F 00 6130 03 644F70656E A2 00 6139 02 1857")
    assert decode_senml_cbor(payload, "/", model) == {"/3/0/0": "Open", "/3/0/9": 87}


def test_senml_objlnk_opaque_time(model):
    records = [
        {"bn": "/5/0/", "n": "0", "vd": "AAEC_w"},  # base64url, no padding: 00 01 02 FF
        {"bn": "", "n": "/1/0/10", "vlo": "11:0"},  # a new bn replaces the old one
        {"bt": 1700000000, "n": "/3/0/13", "v": 1700000005, "t": 5},
    ]
    import json

    values = decode_senml_json(json.dumps(records).encode(), "/", model)
    assert values == {"/5/0/0": b"\x00\x01\x02\xff", "/1/0/10": "11:0", "/3/0/13": 1700000005}
    cbor = cbor2.dumps([{-2: "/5/0/", 0: "0", 8: b"\x00\x01\x02\xff"}, {-2: "", 0: "/1/0/10", "vlo": "11:0"}])
    assert decode_senml_cbor(cbor, "/", model) == {"/5/0/0": b"\x00\x01\x02\xff", "/1/0/10": "11:0"}


def test_senml_integer_coercion_and_type_checks(model):
    assert decode_senml_json(b'[{"n":"/1/0/1","v":60.0}]', "/", model) == {"/1/0/1": 60}
    for bad in (
        b'[{"n":"/1/0/1","vs":"60"}]',  # string for an integer
        b'[{"n":"/1/0/1","v":60.5}]',  # fraction for an integer
        b'[{"n":"/1/0/6","v":1}]',  # number for a boolean
        b'[{"n":"/1/0/1"}]',  # no value
        b'[{"n":"/1/0/1","v":1,"vs":"x"}]',  # two values
        b'[{"n":"/1/0/1","v":1},{"n":"/1/0/1","v":2}]',  # duplicate
        b'{"n":"/1/0/1","v":1}',  # not an array
        b'[{"n":"/1/0","v":1}]',  # not a resource path
        b'[{"n":"/1/0/1","v":1,"foo_":1}]',  # must-understand field
        b"not json",
    ):
        with pytest.raises(SenmlError):
            decode_senml_json(bad, "/", model)
    with pytest.raises(SenmlError):
        decode_senml_cbor(b"\xff\x00", "/", model)
    with pytest.raises(SenmlError):
        decode_senml_cbor(cbor2.dumps([{0: "/5/0/0", 8: "not bytes"}]), "/", model)


def test_senml_encoders_round_trip(model):
    values = {"/1/0/1": 120, "/1/0/6": False, "/1/0/7": "U", "/1/0/10": "11:0", "/5/0/0": b"\x00\xff"}
    for base in (None, "/"):
        assert decode_senml_json(encode_senml_json(values, model, base), "/", model) == values
        assert decode_senml_cbor(encode_senml_cbor(values, model, base), "/", model) == values
    raw = cbor2.loads(encode_senml_cbor({"/1/0/1": 120}, model, "/1/0/"))
    assert raw == [{-2: "/1/0/", 0: "1", 2: 120}]


# --- text, link format ------------------------------------------------------------------------


def test_text_values(model):
    assert decode_text(b"86400", "/1/0/1", model) == {"/1/0/1": 86400}
    assert decode_text(b"1", "/1/0/6", model) == {"/1/0/6": True}
    assert decode_text(b"Acme", "/3/0/0", model) == {"/3/0/0": "Acme"}
    assert decode_text(b"-2", "/3/0/11/0", model) == {"/3/0/11/0": -2}
    assert encode_text(False) == b"0" and encode_text(42) == b"42" and encode_text(b"\x00\xff") == b"AP8="
    for payload, path in ((b"abc", "/1/0/1"), (b"2", "/1/0/6"), (b"1.5", "/1/0/1"), (b"", "/1/0/1")):
        with pytest.raises(TextError):
            decode_text(payload, path, model)


def test_link_format_registration_payload():
    payload = b'</>;rt="oma.lwm2m";ct="60 110 112 11542",</1>;ver=1.2,</1/0>,</3>;ver=1.2,</3/0>'
    links = parse_link_format(payload)
    assert [link.href for link in links] == ["/", "/1", "/1/0", "/3", "/3/0"]
    assert links[0].attrs == {"rt": "oma.lwm2m", "ct": "60 110 112 11542"}
    assert links[1].get("ver") == "1.2" and links[2].attrs == {}


def test_link_format_quoted_commas_flags_and_escapes():
    text = '</5>;title="a, b; \\"c\\"";obs,</3/0/11>;dim=2;pmin=10'
    assert decode_link_format(text) == {
        "/5": {"title": 'a, b; "c"', "obs": None},
        "/3/0/11": {"dim": "2", "pmin": "10"},
    }
    assert decode_link_format(b"") == {}


@pytest.mark.parametrize(
    "bad",
    ["/1", "</1>,", "</1>;", '</1>;a="x', "</1>, </3>", "</1>;=3", "</1>;a=", "</1>x", "</1>,</1>", "<"],
)
def test_link_format_malformed(bad):
    with pytest.raises(LinkFormatError):
        decode_link_format(bad)


# --- raw CoAP, TOML, query parsing -------------------------------------------------------------


def test_coap_raw_round_trip():
    data = coap_raw.encode(
        coap_raw.CON,
        coap_raw.GET,
        0x1234,
        b"\xaa\xbb",
        coap_raw.path_options("/3/0/0") + [(65005, b"x"), (coap_raw.OPT_ACCEPT, b"\x70")],
        b"hi",
    )
    assert data[:4] == bytes([0x42, 0x01, 0x12, 0x34])
    msg = coap_raw.decode(data)
    assert (msg.mtype, msg.code_str, msg.mid, msg.token, msg.payload) == (
        0,
        "0.01",
        0x1234,
        b"\xaa\xbb",
        b"hi",
    )
    assert [n for n, _ in msg.options] == [11, 11, 11, 17, 65005]
    assert msg.option(65005) == b"x"
    for bad in (
        b"\x49\x01\x00\x00" + b"t" * 9,
        b"\x40\x01\x00\x00\xf0",
        b"\x40\x01\x00\x00\x13a",
        b"\x40\x01\x00\x00\xff",
    ):
        with pytest.raises(coap_raw.MalformedMessage):
            coap_raw.decode(bad)


def test_toml_writer_round_trips(tmp_path):
    config = base_config("coap://127.0.0.1:5683", tmp_path / "s", tmp_path / "m", "urn:dev:os:x")
    config = deep_merge(config, {"server": {"lifetime": 20}, "coap": {"max_retransmit": 0}})
    parsed = tomllib.loads(to_toml(config))
    assert parsed == config
    assert parsed["server"][0]["lifetime"] == 20 and parsed["server"][0]["short_id"] == 1
    assert parsed["device"]["reboot_command"][0] == "/bin/sh"


def test_parse_query():
    assert parse_query(("ep=a", "lt=60", "Q")) == {"ep": "a", "lt": "60", "Q": None}
    with pytest.raises(ValueError):
        parse_query(("lt=1", "lt=2"))


# --- the server against the fake client -----------------------------------------------------


@pytest.fixture
async def fake(server):
    client = await FakeLwm2mClient(server.uri).start()
    yield client
    await client.stop()


@pytest.fixture
async def registered(server, fake):
    resp = await fake.register()
    assert str(resp.code) == "2.01 Created"
    await server.wait_registration(2)
    return fake


async def test_register_update_deregister(server, fake):
    resp = await fake.register()
    assert int(resp.code) == 0x41 and resp.opt.location_path[0] == "rd"
    event = await server.wait_registration(2)
    assert event.params == {"ep": fake.ep, "lt": "60", "lwm2m": "1.1", "b": "U"}
    assert event.content_format == CF_LINK_FORMAT and event.mtype == "CON"
    reg = server.registration(fake.ep)
    assert reg.id == resp.opt.location_path[1] and reg.lifetime == 60
    objects = reg.objects
    assert objects[1].version == "1.2" and objects[1].instances == [0] and objects[3].instances == [0]

    resp = await fake.update("lt=30")
    assert int(resp.code) == 0x44
    update = await server.wait_update(2)
    assert update.params == {"lt": "30"} and update.links is None and reg.lifetime == 30

    resp = await fake.update(payload=b"</1/0>,</3/0>,</4/0>")
    assert int(resp.code) == 0x44
    update = await server.wait_update(2)
    assert [link.href for link in update.links] == ["/1/0", "/3/0", "/4/0"] and 4 in reg.objects

    resp = await fake.deregister()
    assert int(resp.code) == 0x42
    await server.wait_deregistration(2)
    assert not server.registrations
    resp = await fake.update()
    assert int(resp.code) == 0x84
    assert server.events[-1].kind == "update-unknown"


async def test_register_without_ep_or_with_bad_links_is_rejected(server, fake):
    from aiocoap import Message
    from aiocoap.numbers.codes import Code

    for uri, payload in (
        (f"{server.uri}/rd?lt=60", b"</1/0>"),
        (f"{server.uri}/rd?ep=x", b"</1/0"),
        (f"{server.uri}/rd?ep=x&ep=y", b"</1/0>"),
    ):
        msg = Message(code=Code.POST, uri=uri, payload=payload, content_format=CF_LINK_FORMAT)
        resp = await fake.context.request(msg).response
        assert int(resp.code) == 0x80, uri
        assert server.events[-1].kind == "register-rejected" and server.events[-1].response == "4.00"
    assert not server.registrations


async def test_forget_gives_404_then_reregister(server, registered):
    old = server.registration()
    server.forget()
    # DM requests still reach the client at its last known address (ETS int-105 needs this).
    assert (await server.client(registered.ep).read("/3/0/0")).text == "Acme"
    resp = await registered.update()
    assert int(resp.code) == 0x84
    await registered.register()
    new = await server.wait_registration(2)
    assert new.ep == registered.ep and new.reg_id != old.id


async def test_silent_server_drops_requests(server, fake):
    server.go_silent()
    task = asyncio.ensure_future(fake.register())
    dropped = await server.wait_event("dropped", 2)
    assert dropped.method == "POST" and dropped.path == "/rd" and dropped.params["ep"] == fake.ep
    assert not server.registrations
    server.resume()
    # aiocoap retransmits the same CON (2-3 s later); now it is answered.
    resp = await asyncio.wait_for(task, 10)
    assert int(resp.code) == 0x41
    retransmissions = [e for e in server.events if e.kind in ("dropped", "register")]
    assert len({e.mid for e in retransmissions}) == 1


async def test_waiter_timeout_message(server):
    with pytest.raises(EventTimeout, match="registration not seen within 0.2 s"):
        await server.wait_registration(0.2)


async def test_waiters_do_not_miss_earlier_events(server, registered):
    await registered.update("lt=5")
    await registered.update("lt=6")
    first = await server.wait_update(2)
    second = await server.wait_update(2)
    assert (first.params, second.params) == ({"lt": "5"}, {"lt": "6"})
    mark = server.mark()
    with pytest.raises(EventTimeout):
        await server.wait_update(0.2, since=mark)


async def test_dm_reads_in_every_format_agree(server, registered):
    client = server.client()
    results = {}
    for accept in (CF_TLV, CF_SENML_JSON, CF_SENML_CBOR):
        resp = await client.read("/3/0", accept)
        assert resp.code == "2.05" and resp.content_format == accept
        results[accept] = {k: v for k, v in resp.decode().items() if k != "/3/0/13"}
    assert results[CF_TLV] == results[CF_SENML_JSON] == results[CF_SENML_CBOR]
    assert results[CF_TLV]["/3/0/0"] == "Acme" and results[CF_TLV]["/3/0/11/0"] == 0
    resp = await client.read("/3/0/0")
    assert (resp.code, resp.content_format, resp.decode()) == ("2.05", CF_TEXT, {"/3/0/0": "Acme"})
    assert (await client.read("/3/0", CF_TEXT)).code == "4.06"
    assert (await client.read("/3/7")).code == "4.04"
    discover = await client.discover("/3/0")
    assert discover.code == "2.05" and "/3/0/0" in decode_link_format(discover.payload)


async def test_dm_write_execute_write_attributes(server, registered):
    client = server.client()
    for fmt, value in (("text", 11), ("tlv", 12), ("senml-json", 13), ("senml-cbor", 14)):
        resp = await client.write_values("/1/0/1", {"/1/0/1": value}, fmt)
        assert resp.code == "2.04", fmt
        assert (await client.read("/1/0/1")).decode() == {"/1/0/1": value}
    resp = await client.write_values("/1/0", {"/1/0/1": 15, "/1/0/6": False}, "tlv", method="POST")
    assert resp.code == "2.04" and registered.values["/1/0/6"] is False
    assert (await client.write("/1/0/1", b"x", 11543)).code == "4.15"
    assert (await client.write("/1/0/1", b"abc", CF_TEXT)).code == "4.00"

    mark = server.mark()
    assert (await client.execute("/1/0/8")).code == "2.04"
    await server.wait_update(2, since=mark)
    await client.execute("/3/0/4", "0='x',1")
    assert registered.executed[-1] == ("/3/0/4", b"0='x',1")

    resp = await client.write_attributes("/1/0/1", pmin=10, pmax=None, gt=1.5)
    assert resp.code == "2.04"
    assert registered.attributes["/1/0/1"] == ("pmin=10", "pmax", "gt=1.5")


async def test_blockwise_read_with_16_byte_blocks(server, registered):
    client = server.client()
    whole = await client.read("/1/0", CF_SENML_JSON)
    start = server.now()
    blocked = await client.read("/1/0", CF_SENML_JSON, block2_szx=0)
    assert blocked.payload == whole.payload and len(whole.payload) > 16
    blocks = server.count_wire(lambda r: r.message.opt.block2 is not None, since=start)
    assert blocks == (len(whole.payload) + 15) // 16
    sizes = {r.message.opt.block2.size for r in server.wire if r.time >= start and r.message.opt.block2}
    assert sizes == {16}


async def test_observe_notifications_and_sequence(server, registered):
    client = server.client()
    obs = await client.observe("/3/0/13")
    assert obs.established and obs.initial.code == "2.05" and obs.initial.observe is not None
    notes = await obs.take(4, 2)
    assert notes[0].mtype == "ACK" and all(n.mtype == "CON" for n in notes[1:])
    values = obs.wire_observe_values()
    assert values == sorted(values) and len(set(values)) == len(values)
    assert all(abs(n.decode()["/3/0/13"] - notes[0].decode()["/3/0/13"]) <= 2 for n in notes)
    await client.cancel_observe(obs, "get")


async def test_observe_cancel_by_get(server, registered):
    client = server.client()
    obs = await client.observe("/3/0/13", accept=CF_TEXT)
    await obs.take(2, 2)
    resp = await client.cancel_observe(obs, "get")
    assert resp.code == "2.05" and resp.observe is None and resp.content_format == CF_TEXT
    await obs.assert_silent(0.8)
    assert obs.after_cancel == []


async def test_observe_cancel_by_rst_con(server, registered):
    client = server.client()
    obs = await client.observe("/3/0/13")
    await obs.take(2, 2)
    await client.cancel_observe(obs, "rst")
    assert len(obs.rejected) == 1 and obs.cancelled
    # aiocoap (the fake client) ends a CON observation on RST, so nothing follows.
    await obs.assert_silent(0.8)


async def test_observe_rst_detects_non_notifications_after_cancel(server, registered):
    """aiocoap servers ignore an RST to a NON notification; the harness must notice and RST each."""
    registered.con_notifications = False
    client = server.client()
    obs = await client.observe("/3/0/13")
    await obs.take(2, 2)
    await client.cancel_observe(obs, "rst")
    deadline = server.now() + 3
    while len(obs.after_cancel) < 2 and server.now() < deadline:
        await asyncio.sleep(0.05)
    assert len(obs.after_cancel) >= 2
    assert all(m.mtype == 1 for _, m in obs.after_cancel)  # NON
    with pytest.raises(AssertionError, match="after cancellation"):
        await obs.assert_silent(0.5)


async def test_raw_exchange_through_server_socket(server, registered):
    ping = coap_raw.encode(coap_raw.CON, coap_raw.EMPTY, server.next_mid())
    reply = await server.raw_exchange(ping)
    assert reply is not None and reply.mtype == coap_raw.RST
    mid = server.next_mid()
    get = coap_raw.encode(coap_raw.CON, coap_raw.GET, mid, b"\x01\x02", coap_raw.path_options("/3/0/0"))
    reply = await server.raw_exchange(get)
    assert (reply.mtype, reply.mid, bytes(reply.token), reply.payload) == (
        coap_raw.ACK,
        mid,
        b"\x01\x02",
        b"Acme",
    )
    bad_version = coap_raw.encode(coap_raw.CON, coap_raw.GET, server.next_mid(), version=2)
    assert await server.raw_exchange(bad_version, timeout=0.5) is None


async def test_raw_udp_peer(server, registered):
    peer = await coap_raw.RawUdpPeer().start()
    try:
        data = coap_raw.encode(coap_raw.CON, coap_raw.GET, 7, b"\x09", coap_raw.path_options("/3/0/1"))
        peer.send(data, server.registration().address)
        reply = coap_raw.decode(await peer.recv(2))
        assert (reply.mtype, reply.code_str, reply.mid, reply.payload) == (coap_raw.ACK, "2.05", 7, b"Fake-1")
    finally:
        peer.close()


async def test_two_servers_do_not_interfere():
    a, b = await Lwm2mServer().start(), await Lwm2mServer().start()
    try:
        assert a.port != b.port
    finally:
        await a.stop()
        await b.stop()


async def test_write_blockwise_under_control(server, registered):
    """write_blockwise sends one block per request and stops at the final answer."""
    client = server.client()
    payload = encode_senml_json({"/1/0/7": "U" * 100})
    responses = await client.write_blockwise("/1/0/7", payload, CF_SENML_JSON, szx=0)
    blocks = (len(payload) + 15) // 16
    assert [r.code for r in responses] == ["2.31"] * (blocks - 1) + ["2.04"]
    assert registered.values["/1/0/7"] == "U" * 100
    # A path without an earlier Block1 assembly: aiocoap's server answers 5.00 (an uncaught
    # ValueError in Block1Spool) when a stale assembly for the same request exists.
    out_of_order = await client.request(
        "PUT", "/1/0/5", payload=b"x" * 16, content_format=CF_SENML_JSON, block1=(1, True, 0), blockwise=False
    )
    assert out_of_order.code == "4.08"


# --- the launcher, against stand-in binaries ---------------------------------------------------


def _wrapper(tmp_path, name: str, body: str):
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


async def test_launcher_with_fake_daemon(server, tmp_path):
    """Start → config honoured → registered → DM works → SIGTERM → de-registered, status 0."""
    fake = Path(__file__).resolve().parent / "fake_daemon.py"
    binary = _wrapper(tmp_path, "lwm2md", f'exec "{sys.executable}" "{fake}" "$@"')
    daemon = Lwm2md(server, tmp_path / "run", {"server": {"lifetime": 42}}, binary=binary)
    await daemon.start()
    try:
        reg = await daemon.wait_registered(10)
        assert reg.params["lt"] == "42" and reg.params["ep"] == daemon.endpoint
        assert (await server.client(daemon.endpoint).read("/3/0/0")).text == "Acme"
        mark = server.mark()
        assert await daemon.terminate() == 0
        await server.wait_deregistration(2, since=mark, ep=daemon.endpoint)
        assert "de-registered" in daemon.log_text()
    finally:
        await daemon.kill()


async def test_launcher_reports_a_silent_daemon(server, tmp_path):
    daemon = Lwm2md(server, tmp_path / "run", binary=_wrapper(tmp_path, "lwm2md", "exec sleep 1000"))
    await daemon.start()
    try:
        with pytest.raises(EventTimeout, match="registration not seen within 0.5 s"):
            await daemon.wait_registered(0.5)
        assert await daemon.terminate() == -signal.SIGTERM
    finally:
        await daemon.kill()


async def test_launcher_reports_an_exiting_daemon(server, tmp_path):
    binary = _wrapper(tmp_path, "lwm2md", "echo 'config error: boom' >&2; exit 3")
    daemon = Lwm2md(server, tmp_path / "run", binary=binary)
    await daemon.start()
    with pytest.raises(DaemonError, match="(?s)registration not seen: lwm2md exited with status 3.*boom"):
        await daemon.wait_registered(5)


async def test_launcher_kills_a_daemon_that_ignores_sigterm(server, tmp_path):
    binary = _wrapper(tmp_path, "lwm2md", "trap '' TERM; echo ready; exec sleep 1000")
    daemon = Lwm2md(server, tmp_path / "run", binary=binary)
    await daemon.start()
    deadline = server.now() + 5
    while "ready" not in daemon.log_text():  # SIGTERM before the trap would simply kill the shell
        assert server.now() < deadline, "stand-in never got ready"
        await asyncio.sleep(0.02)
    with pytest.raises(DaemonError, match="did not exit within 0.5 s"):
        await daemon.terminate(0.5)
    assert not daemon.running


# --- the DTLS front, against an mbedTLS client ---------------------------------------------------


def _mbedtls_client_config(front, suites: tuple[str, ...]):
    """A python-mbedtls DTLS client with the credentials ``start_test_front`` made for the daemon."""
    from mbedtls import pk, tls, x509

    cfg = front.client_config
    if cfg["security"] == "psk":
        key = Path(cfg["psk_key_file"]).read_bytes()
        return tls.DTLSConfiguration(
            ciphers=suites, pre_shared_key=(cfg["psk_identity"], key), validate_certificates=False
        )
    chain = (x509.CRT.from_file(cfg["certificate_file"]),)
    return tls.DTLSConfiguration(
        ciphers=suites,
        certificate_chain=(chain, pk.ECC.from_file(cfg["private_key_file"])),
        trust_store=tls.TrustStore.from_pem_file(cfg["server_certificate_file"]),
        validate_certificates=True,
    )


def _dtls_client_session(port: int, config, server_name: str | None, register: bytes) -> tuple[bytes, bytes]:
    """In a thread (blocking sockets): handshake, send ``register``, return its response; then
    answer the first request from the server with 2.05 "Self"; return (response, request)."""
    import socket

    from aiocoap import Message
    from mbedtls import tls

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    conn = tls.ClientContext(config).wrap_socket(sock, server_hostname=server_name)
    try:
        conn.do_handshake()
        conn.send(register)
        response = conn.recv(4096)
        request = conn.recv(4096)
        req = Message.decode(request)
        conn.send(coap_raw.encode(2, 0x45, req.mid, bytes(req.token), [], b"Self"))  # ACK 2.05
        return response, request
    finally:
        sock.close()


@pytest.mark.parametrize("mode", ["psk", "certificate"])
async def test_dtls_front_relays_both_ways(server, tmp_path, mode):
    """An mbedTLS client registers through the front (decrypted, relayed from the front's own
    socket), and a DM read from the server reaches it encrypted and gets its answer back."""
    from aiocoap import Message

    from dtls_front import CERT_SUITES, PSK_SUITES, SUITE_IDS, client_hello_suites, start_test_front

    front = await start_test_front(("127.0.0.1", server.port), tmp_path / "dtls", mode)
    try:
        # The client offers the daemon's suites backwards; the front picks in its own order.
        suites = tuple(reversed(PSK_SUITES if mode == "psk" else CERT_SUITES))
        query = [(15, q) for q in (b"ep=dtls-selftest", b"lt=60", b"lwm2m=1.1", b"b=U")]
        options = [(11, b"rd"), (12, bytes([CF_LINK_FORMAT])), *query]
        register = coap_raw.encode(0, 0x02, 0x1234, b"selftest", options, b"</1/0>,</3/0>")  # CON POST
        session = asyncio.ensure_future(
            asyncio.to_thread(
                _dtls_client_session,
                front.port,
                _mbedtls_client_config(front, suites),
                front.client_config.get("server_name"),
                register,
            )
        )
        reg = await server.wait_registration(5, ep="dtls-selftest")
        host, port = reg.remote.sockaddr[:2]
        assert (host.removeprefix("::ffff:"), port) in front.upstream_addresses
        read = await server.client("dtls-selftest").read("/3/0/0")
        assert (read.code, read.payload) == ("2.05", b"Self")
        response, request = await asyncio.wait_for(session, 5)
        assert str(Message.decode(response).code) == "2.01 Created"
        assert Message.decode(request).opt.uri_path == ("3", "0", "0")

        (hs,) = front.events_of("handshake")
        assert hs.cipher == (PSK_SUITES if mode == "psk" else CERT_SUITES)[0]
        if mode == "psk":
            assert hs.identity == front.client_config["psk_identity"]
        else:
            assert f"CN={front.pki.client_cn}" in hs.peer_certificate
        offered = [s for s in client_hello_suites(front.client_hellos[0][2]) if s != 0x00FF]  # minus SCSV
        assert offered == [SUITE_IDS[s] for s in suites]
        assert [Message.decode(p.data).mid for p in front.relayed("up")][0] == 0x1234
        front.assert_encrypted(b"dtls-selftest", b"Self")
    finally:
        await front.stop()


async def test_dtls_front_catches_plaintext(server, tmp_path):
    """Plaintext CoAP sent to the front is neither relayed nor taken for DTLS by assert_encrypted."""
    from dtls_front import start_test_front

    front = await start_test_front(("127.0.0.1", server.port), tmp_path / "dtls", "psk")
    peer = await coap_raw.RawUdpPeer().start()
    try:
        register = coap_raw.encode(0, 0x02, 0x4321, b"pt", [(11, b"rd"), (15, b"ep=plain")])
        peer.send(register, ("127.0.0.1", front.port))
        await front.wait_for(lambda: bool(front.wire), 2, "the plaintext datagram")
        with pytest.raises(AssertionError, match="not DTLS records|record"):
            front.assert_encrypted()
        await server.assert_no_event("register", 0.3)
        assert not server.wire and not front.relayed("up")
    finally:
        peer.close()
        await front.stop()

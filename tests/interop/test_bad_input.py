"""Malformed and hostile input: rejected as RFC 7252 / LwM2M require, and the client keeps serving.

Datagrams are injected from the server's own socket (the client's only peer), so a client that
filters by source address still has to parse them. Every test ends with a normal Read.
"""

from __future__ import annotations

import random
import secrets

import cbor2
import pytest

import coap_raw as raw
from daemon import DEVICE
from helpers import assert_still_serving, read_text
from lwm2m_server import code_str
from lwm2m_codecs import CF_SENML_CBOR, CF_SENML_JSON, CF_TEXT, CF_TLV, encode_senml_json

SILENCE = 1.0  # how long to wait for an answer that should not come


def assert_rst_or_nothing(reply, mid: int, what: str) -> None:
    """RFC 7252 §4.2/4.3: a malformed CON is rejected with RST (same MID) or silently ignored."""
    if reply is None:
        return
    assert reply.mtype == raw.RST and reply.mid == mid and int(reply.code) == 0, f"{what}: answered {reply}"


def request_bytes(server, *, mtype=raw.CON, code=raw.GET, path="/3/0/0", options=(), payload=b"", token=None):
    """A well-formed request (fresh MID and token); returns (datagram, mid, token)."""
    mid = server.next_mid()
    token = secrets.token_bytes(4) if token is None else token
    data = raw.encode(mtype, code, mid, token, raw.path_options(path) + list(options), payload)
    return data, mid, token


def is_valid_request(data: bytes) -> bool:
    try:
        msg = raw.decode(data)
    except raw.MalformedMessage:
        return False
    return msg.version == 1 and 1 <= msg.code <= 31


async def test_random_datagrams_are_survived(server, client):
    """60 seeded random datagrams (half with a plausible header) → the client keeps serving."""
    rng = random.Random(0x1A2B3C)
    sent = 0
    while sent < 60:
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
        if sent % 2 and data:
            data = bytes([0x40 | (data[0] & 0x3F)]) + data[1:]  # version 1
        if is_valid_request(data):
            continue  # only garbage: a valid request could legitimately change state
        server.raw_send(data)
        sent += 1
    await assert_still_serving(client)


async def test_datagrams_from_a_foreign_peer_are_survived(server, lwm2md, client):
    """Garbage and requests from an address that is not the server's (plain UDP socket)."""
    peer = await raw.RawUdpPeer().start()
    try:
        address = server.registration(lwm2md.endpoint).address
        rng = random.Random(0x5EED)
        for _ in range(20):
            peer.send(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))), address)
        peer.send(raw.encode(raw.CON, raw.EMPTY, 1), address)
        peer.send(raw.encode(raw.CON, raw.GET, 2, b"\x01", raw.path_options("/3/0/0")), address)
        await peer.recv(SILENCE)  # answering a stranger is allowed, not required
    finally:
        peer.close()
    await assert_still_serving(client)


MALFORMED_OPTIONS = {
    "truncated option value": bytes([0xB5]) + b"ab",  # Uri-Path claims 5 bytes, 2 follow
    "truncated extended option length": bytes([0xBD]),  # length nibble 13 without its byte
    "option delta 15": bytes([0xF1]) + b"x",
    "option length 15": bytes([0xBF]) + b"x" * 20,
    "payload marker without payload": bytes([0xB1]) + b"3" + b"\xff",
}


@pytest.mark.parametrize("name,body", list(MALFORMED_OPTIONS.items()), ids=list(MALFORMED_OPTIONS))
async def test_malformed_options_rst_or_ignored(server, client, name, body):
    mid, token = server.next_mid(), secrets.token_bytes(2)
    data = raw.encode(raw.CON, raw.GET, mid, token) + body
    assert_rst_or_nothing(await server.raw_exchange(data, timeout=SILENCE), mid, name)
    await assert_still_serving(client)


async def test_token_length_9_rst_or_ignored(server, client):
    mid = server.next_mid()
    data = raw.encode(raw.CON, raw.GET, mid, b"123456789", raw.path_options("/3/0/0"))
    assert data[0] & 0x0F == 9
    assert_rst_or_nothing(await server.raw_exchange(data, timeout=SILENCE), mid, "TKL 9")
    await assert_still_serving(client)


async def test_empty_message_with_token_rst_or_ignored(server, client):
    mid = server.next_mid()
    data = raw.encode(raw.CON, raw.EMPTY, mid, b"\x01\x02")
    assert_rst_or_nothing(await server.raw_exchange(data, timeout=SILENCE), mid, "empty message with a token")
    await assert_still_serving(client)


async def test_unknown_version_is_silently_ignored(server, client):
    data, _, _ = request_bytes(server)
    data = bytes([(data[0] & 0x3F) | (2 << 6)]) + data[1:]
    assert await server.raw_exchange(data, timeout=SILENCE) is None
    await assert_still_serving(client)


async def test_coap_ping_is_answered_with_rst(server, client):
    mid = server.next_mid()
    reply = await server.raw_exchange(raw.encode(raw.CON, raw.EMPTY, mid))
    assert reply is not None and reply.mtype == raw.RST and reply.mid == mid and int(reply.code) == 0


async def test_unknown_critical_option_is_402(server, client):
    """GET /3/0/0 with an unrecognised critical (odd) option → 4.02 Bad Option."""
    data, mid, token = request_bytes(server, options=[(65005, b"x")])
    reply = await server.raw_exchange(data)
    assert reply is not None, "no answer to a GET with an unknown critical option"
    assert (reply.mtype, reply.mid, bytes(reply.token)) == (raw.ACK, mid, token)
    assert code_str(reply.code) == "4.02"
    await assert_still_serving(client)


async def test_critical_option_with_bad_length_is_402(server, client):
    """Accept (critical, 0-2 bytes) with a 3-byte value is treated as unrecognised → 4.02."""
    data, mid, token = request_bytes(server, options=[(raw.OPT_ACCEPT, b"\x00\x00\x00")])
    reply = await server.raw_exchange(data)
    assert reply is not None and bytes(reply.token) == token
    assert code_str(reply.code) == "4.02"


async def test_unknown_elective_option_is_ignored(server, client):
    data, mid, token = request_bytes(server, options=[(65004, b"x"), (raw.OPT_ACCEPT, b"")])
    reply = await server.raw_exchange(data)
    assert reply is not None and (reply.mtype, reply.mid) == (raw.ACK, mid)
    assert code_str(reply.code) == "2.05" and reply.payload == DEVICE["manufacturer"].encode()


async def test_non_request_gets_non_response(server, client):
    data, _, token = request_bytes(server, mtype=raw.NON, options=[(raw.OPT_ACCEPT, b"")])
    reply = await server.raw_exchange(data)
    assert reply is not None and bytes(reply.token) == token
    assert reply.mtype == raw.NON and reply.payload == DEVICE["manufacturer"].encode()


async def test_duplicate_con_is_answered_but_executed_once(server, client):
    """The same CON Execute /1/0/8 twice: two identical answers, one registration Update."""
    data, mid, token = request_bytes(server, code=raw.POST, path="/1/0/8")
    mark = server.mark()
    first = await server.raw_exchange(data)
    second = await server.raw_exchange(data)
    assert first is not None and second is not None
    for reply in (first, second):
        assert (reply.mtype, reply.mid, bytes(reply.token)) == (raw.ACK, mid, token)
        assert code_str(reply.code) == "2.04"
    await server.wait_update(3, since=mark)
    await server.assert_no_event("update", 1.5)
    assert len(server.events_of("update", mark)) == 1


async def test_unexpected_response_and_reset_are_survived(server, client):
    """An unsolicited CON response (unknown token) → RST or ignored; a stray RST is ignored."""
    mid = server.next_mid()
    data = raw.encode(raw.CON, raw.code(2, 5), mid, secrets.token_bytes(4), payload=b"x")
    assert_rst_or_nothing(await server.raw_exchange(data, timeout=SILENCE), mid, "unsolicited response")
    server.raw_send(raw.encode(raw.RST, raw.EMPTY, server.next_mid()))
    await assert_still_serving(client)


BAD_TLV = {
    "length overruns payload": "C402003C",
    "3-byte integer": "C302000A3C",
    "boolean 2": "C10602",
    "trailing junk": "C102053C",
    "object instance inside an instance write": "0803C10205",
    "resource instance at instance level": "410205",
}
BAD_SENML_JSON = {
    "not JSON": b"not json",
    "object, not array": b'{"n":"/1/0/2","v":1}',
    "record without value": b'[{"n":"/1/0/2"}]',
    "string for an integer": b'[{"n":"/1/0/2","vs":"1"}]',
    "fraction for an integer": b'[{"n":"/1/0/2","v":1.5}]',
    "unknown must-understand field": b'[{"n":"/1/0/2","v":1,"x_":1}]',
    "name is not a path": b'[{"n":"one","v":1}]',
}
BAD_SENML_CBOR = {
    "not CBOR": b"\xff\xff",
    "map, not array": cbor2.dumps({0: "/1/0/2", 2: 1}),
    "string for an integer": cbor2.dumps([{0: "/1/0/2", 3: "1"}]),
    "truncated": cbor2.dumps([{0: "/1/0/2", 2: 1}])[:-1],
}


@pytest.mark.parametrize(
    "cf,payload",
    [pytest.param(CF_TLV, bytes.fromhex(v), id=f"tlv: {k}") for k, v in BAD_TLV.items()]
    + [pytest.param(CF_SENML_JSON, v, id=f"senml-json: {k}") for k, v in BAD_SENML_JSON.items()]
    + [pytest.param(CF_SENML_CBOR, v, id=f"senml-cbor: {k}") for k, v in BAD_SENML_CBOR.items()],
)
async def test_bad_partial_update_payload_is_400(client, cf, payload):
    """POST /1/0 with a broken TLV / SenML body → 4.00, nothing changes."""
    before = await read_text(client, "/1/0/2")
    resp = await client.write("/1/0", payload, cf, method="POST")
    assert resp.code == "4.00", f"→ {resp}"
    assert await read_text(client, "/1/0/2") == before
    await assert_still_serving(client)


@pytest.mark.parametrize(
    "path,text",
    [
        ("/1/0/2", b"abc"),
        ("/1/0/2", b"1.5"),
        ("/1/0/2", b""),
        ("/1/0/6", b"2"),
        ("/1/0/6", b"true"),
        ("/1/0/2", b"\xff\xfe"),
    ],
)
async def test_bad_text_write_is_400(client, path, text):
    before = await read_text(client, path)
    assert (await client.write(path, text, CF_TEXT)).code == "4.00"
    assert await read_text(client, path) == before


async def test_oversized_body_is_413(client):
    """A 200 KB SenML write (Block1, Size1 announced) → 4.13 by the block that crosses max_body_size."""
    payload = encode_senml_json({"/1/0/7": "U" * 200_000})
    responses = await client.write_blockwise("/1/0/7", payload, CF_SENML_JSON, szx=6)
    final = responses[-1]
    assert final.code == "4.13", f"last of {len(responses)} blocks → {final}"
    assert all(r.code == "2.31" for r in responses[:-1])
    assert len(responses) <= 65536 // 1024 + 1, f"4.13 only after {len(responses)} blocks of 1 KB"
    assert await read_text(client, "/1/0/7") == "U"


async def test_block1_without_first_block_is_408(client):
    """A Block1 request starting at NUM=1 → 4.08 Request Entity Incomplete."""
    resp = await client.request(
        "PUT", "/1/0/7", payload=b"x" * 64, content_format=CF_SENML_JSON, block1=(1, True, 2), blockwise=False
    )
    assert resp.code == "4.08", f"→ {resp}"
    assert await read_text(client, "/1/0/7") == "U"

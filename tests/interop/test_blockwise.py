"""Block-wise transfer (RFC 7959) of responses: Block2 with the smallest block size (SZX 0 = 16 B)."""

from __future__ import annotations

from helpers import assert_same_values
from lwm2m_codecs import CF_LINK_FORMAT, CF_SENML_JSON, CF_TLV, decode_link_format


def block2_records(server, since: float) -> list:
    """Block2 options of responses that arrived since loop time ``since``."""
    return [r.message.opt.block2 for r in server.wire if r.time >= since and r.message.opt.block2 is not None]


async def test_read_with_16_byte_blocks_equals_unblocked_read(server, client):
    """Read /1 in TLV with Block2 SZX 0: reassembled bytes equal the unblocked Read."""
    whole = await client.read("/1", CF_TLV)
    assert whole.code == "2.05" and len(whole.payload) > 16
    start = server.now()
    blocked = await client.read("/1", CF_TLV, block2_szx=0)
    assert (blocked.code, blocked.content_format) == ("2.05", CF_TLV)
    assert blocked.payload == whole.payload
    blocks = block2_records(server, start)
    assert len(blocks) == (len(whole.payload) + 15) // 16
    assert {b.size for b in blocks} == {16}
    assert [b.block_number for b in blocks] == list(range(len(blocks)))
    assert [b.more for b in blocks] == [True] * (len(blocks) - 1) + [False]


async def test_read_device_object_in_16_byte_blocks(server, client):
    """Read /3 in SenML JSON (long) with SZX 0: decodes to the same values as an unblocked Read."""
    whole = await client.read("/3", CF_SENML_JSON)
    start = server.now()
    blocked = await client.read("/3", CF_SENML_JSON, block2_szx=0)
    assert blocked.code == "2.05"
    assert len(block2_records(server, start)) >= len(whole.payload) // 16
    assert_same_values(whole.decode(), blocked.decode(), "unblocked vs 16-byte blocks")


async def test_discover_in_16_byte_blocks(server, client):
    whole = await client.discover("/3")
    blocked = await client.request("GET", "/3", accept=CF_LINK_FORMAT, block2_szx=0)
    assert (blocked.code, blocked.content_format) == ("2.05", CF_LINK_FORMAT)
    assert decode_link_format(blocked.payload) == decode_link_format(whole.payload)

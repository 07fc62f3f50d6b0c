"""Object 5 while a package streams in: State and Update Result changes reach observers, and
every other request is still served between two Block1 blocks of a push."""

from __future__ import annotations

from firmware import (
    CF_OCTET_STREAM, DOWNLOADED, DOWNLOADING, IDLE, PACKAGE, R_INTEGRITY, RESULT, STATE,
    make_image, make_package, read_str, wait_resource,
)

CF_TEXT = 0


async def push_with_reads_between(client, pkg: bytes, every: int = 64) -> tuple[list[str], int]:
    """Block1 push of ``pkg`` (1024-byte blocks) with a read of /3/0/0 every ``every`` blocks;
    returns the codes of the last answer and of the reads, and how many reads were made."""
    size, offset, reads, codes = 1024, 0, 0, []
    while True:
        more = offset + size < len(pkg)
        resp = await client.request(
            "PUT", PACKAGE, payload=pkg[offset : offset + size], content_format=CF_OCTET_STREAM,
            block1=(offset // size, more, 6), size1=len(pkg) if offset == 0 else None,
            blockwise=False,
        )
        codes.append(resp.code)
        if resp.code != "2.31" or not more:
            return codes, reads
        offset += size
        if (offset // size) % every == 0:
            assert await read_str(client, "/3/0/0") == "Interop Test Corp"
            assert await read_str(client, STATE) == str(DOWNLOADING)
            reads += 1


async def test_state_changes_are_notified_and_requests_served_during_a_push(
    fw_daemon, server, signer, tmp_path
):
    make_image(tmp_path / "image.bin", 200_000, seed=7)
    pkg = make_package(signer, tmp_path / "image.bin", tmp_path / "p.pkg", version="3.1.0",
                       compression="none")
    client = server.client(fw_daemon.endpoint)
    obs = await client.observe(STATE, CF_TEXT)
    assert obs.established, obs.initial
    codes, reads = await push_with_reads_between(client, pkg)
    assert codes[-1] == "2.04" and reads >= 3, (codes[-3:], reads)
    await wait_resource(client, STATE, DOWNLOADED, daemon=fw_daemon)
    seen = []
    while str(DOWNLOADED) not in seen:
        seen.append((await obs.next(10)).payload.decode())
    assert seen[0] == str(IDLE) and str(DOWNLOADING) in seen, seen
    assert seen.index(str(DOWNLOADING)) < seen.index(str(DOWNLOADED)), seen
    await client.cancel_observe(obs, "get")


async def test_a_refused_package_is_notified_on_update_result(
    fw_daemon, server, signer, tmp_path
):
    make_image(tmp_path / "image.bin", 100_000, seed=8)
    pkg = bytearray(make_package(signer, tmp_path / "image.bin", tmp_path / "p.pkg", version="3.2.0"))
    pkg[-100] ^= 0x01  # one flipped bit in the last chunk
    client = server.client(fw_daemon.endpoint)
    obs = await client.observe(RESULT, CF_TEXT)
    assert obs.established, obs.initial
    responses = await client.write_blockwise(PACKAGE, bytes(pkg), CF_OCTET_STREAM)
    assert responses[-1].code.startswith("4."), [r.code for r in responses][-3:]
    seen = [(await obs.next(10)).payload.decode()]
    while seen[-1] != str(R_INTEGRITY):
        seen.append((await obs.next(10)).payload.decode())
    assert await read_str(client, STATE) == str(IDLE)
    await client.cancel_observe(obs, "get")

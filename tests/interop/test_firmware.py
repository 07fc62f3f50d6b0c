"""Firmware updates end to end: the real daemon with the fake A/B machine, packages built and
signed by ``lwm2md-package`` and pushed with Block1: the update, refused packages, the
anti-rollback floor, cancelling. Pulls are in ``test_firmware_pull.py``, rollbacks in
``test_firmware_rollback.py``, kill -9 and power cuts in ``test_firmware_crash.py``.

Fixtures (conftest.py): ``signer`` (trusted), ``revoked_signer``, ``keys_dir``, ``fw_daemon``
(started, registered, slot A running), ``fw_unstarted``.
"""

from __future__ import annotations

import pytest

from firmware import (
    CF_OCTET_STREAM, DOWNLOADED, FACTORY_VERSION, IDLE, NAME, PACKAGE, R_CANCELLED, R_INITIAL,
    R_INTEGRITY, R_NO_SPACE, R_UNSUPPORTED, RESULT, STATE, UPDATE, URI, VERSION, assert_runs,
    boot_state, full_update, inspect_package, journal, make_image, make_package, make_signer,
    payload_start, flip, push, push_ok, read_int, read_str, reboot_and_restart, slot_bytes, snapshot, wait_resource,
)
from helpers import assert_still_serving

IMAGE_SIZE = 200_000
CHUNK = 64 << 10


async def test_push_update_reboot_commit(fw_daemon, server, signer, tmp_path):
    """Push with Block1 → Downloaded (slot B holds the image) → Update → fake reboot into the
    trial of B → health gate (registration) → commit: Result 1, B primary, /3/0/3 new."""
    image = make_image(tmp_path / "image.bin", 300_000, seed=1)
    pkg = make_package(signer, tmp_path / "image.bin", tmp_path / "p.pkg", version="2.0.0")
    client = server.client(fw_daemon.endpoint)
    assert await read_int(client, STATE) == IDLE
    assert await read_int(client, RESULT) == R_INITIAL
    assert await read_str(client, "/3/0/3") == FACTORY_VERSION
    before_a = slot_bytes(fw_daemon, "A", 1 << 20)
    await push_ok(client, fw_daemon, pkg)
    assert await read_int(client, RESULT) == R_INITIAL
    assert await read_str(client, NAME) == "interop-os"
    assert await read_str(client, VERSION) == "2.0.0"
    assert slot_bytes(fw_daemon, "B", len(image)) == image
    # Downloaded is not yet an update: A still runs, nothing is armed.
    state = assert_runs(fw_daemon, "A")
    assert state["lwm2md_bad_B"] == "1", state
    resp = await client.execute(UPDATE)
    assert resp.code == "2.04", resp.code
    await reboot_and_restart(fw_daemon)
    client = server.client(fw_daemon.endpoint)
    await wait_resource(client, RESULT, 1, daemon=fw_daemon)
    assert await read_int(client, STATE) == IDLE
    assert await read_str(client, VERSION) == "2.0.0"
    assert await read_str(client, "/3/0/3") == "2.0.0"
    state = assert_runs(fw_daemon, "B")
    assert state["lwm2md_tried"] == "0", state
    assert slot_bytes(fw_daemon, "A", 1 << 20) == before_a
    # A second update goes the other way, into A.
    image2 = make_image(tmp_path / "image2.bin", 150_000, seed=2)
    pkg2 = make_package(signer, tmp_path / "image2.bin", tmp_path / "p2.pkg", version="3.0.0")
    await full_update(server, fw_daemon, pkg2, image2, "3.0.0", "A")
    assert slot_bytes(fw_daemon, "B", len(image)) == image


async def test_update_needs_downloaded(fw_daemon, server):
    """Execute Update in Idle is refused (4.05) and changes nothing."""
    client = server.client(fw_daemon.endpoint)
    before = snapshot(fw_daemon)
    resp = await client.execute(UPDATE)
    assert resp.code == "4.05", resp.code
    assert await read_int(client, STATE) == IDLE
    assert snapshot(fw_daemon) == before


# ----- refused packages -----


def _chunk_offset(info: dict, index: int) -> int:
    """Offset in the package of chunk ``index``'s stored bytes."""
    return info["payload_offset"] + sum(c[0] for c in info["manifest"]["chunks"][:index])


def _refusal(case: str, signer, revoked_signer, tmp_path) -> tuple[bytes, int, str, int]:
    """(package bytes, expected Update Result, expected log text, image bytes that may reach
    slot B) for a refusal ``case``; results as README "Refusals and the Update Result"."""
    img = tmp_path / "image.bin"
    image = make_image(img, IMAGE_SIZE, seed=7)
    good = tmp_path / "good.pkg"
    pkg = make_package(signer, img, good, version="2.0.0")
    if case == "bad-signature":
        sig = payload_start(pkg) - 64
        return flip(pkg, sig + 10), R_INTEGRITY, "bad signature", 0
    if case == "manifest-tampered":
        # A byte of the signed manifest (its version text) changed: the signature no longer fits.
        at = pkg.index(b"2.0.0")
        return pkg[:at] + b"6" + pkg[at + 1 :], R_INTEGRITY, "bad signature", 0
    if case == "unknown-key":
        stranger = make_signer(tmp_path / "stranger", "stranger")
        data = make_package(stranger, img, tmp_path / "x.pkg", version="2.0.0")
        return data, R_INTEGRITY, f"signed with unknown key {stranger.key_id}", 0
    if case == "revoked-key":
        data = make_package(revoked_signer, img, tmp_path / "x.pkg", version="2.0.0")
        return data, R_INTEGRITY, f"signed with revoked key {revoked_signer.key_id}", 0
    if case == "incompatible":
        data = make_package(signer, img, tmp_path / "x.pkg", version="2.0.0", compatible="other-gw")
        return data, R_UNSUPPORTED, 'package is for "other-gw"', 0
    if case == "truncated":
        # Cut inside the last chunk: the chunks before it are verified and may be written.
        info = inspect_package(good)
        last = len(info["manifest"]["chunks"]) - 1
        cut = _chunk_offset(info, last) + 10
        return pkg[:cut], R_INTEGRITY, "package truncated", last * CHUNK
    if case == "trailing-data":
        # Every chunk verifies (and is written), but the package is refused: B stays unbootable.
        return pkg + b"\0", R_INTEGRITY, "data after the end of the payload", IMAGE_SIZE
    if case == "corrupted-chunk":
        info = inspect_package(good)
        at = _chunk_offset(info, 2) + 100
        # Chunks 0 and 1 were verified and may be in the slot; nothing of chunk 2 or later.
        return flip(pkg, at), R_INTEGRITY, "chunk 2 does not match its hash", 2 * CHUNK
    if case == "too-large":
        # A compressible image one chunk larger than the 4 MiB slot: a small package whose
        # manifest announces too much.
        big = tmp_path / "big.bin"
        big.write_bytes(b"lwm2md " * ((4 << 20) // 7 + 10000))
        data = make_package(signer, big, tmp_path / "x.pkg", version="2.0.0")
        assert len(data) < 1 << 20
        return data, R_NO_SPACE, "does not fit the slot", 0
    if case == "garbage":
        return bytes(range(256)) * 40, R_UNSUPPORTED, "not an lwm2md package (bad magic)", 0
    raise AssertionError(case)


REFUSALS = [
    "bad-signature", "manifest-tampered", "unknown-key", "revoked-key", "incompatible",
    "truncated", "trailing-data", "corrupted-chunk", "too-large", "garbage",
]


@pytest.mark.parametrize("case", REFUSALS)
async def test_refused_package(case, fw_daemon, server, signer, revoked_signer, tmp_path):
    """A refused push ends with an error response, State Idle and the README's Update Result;
    nothing is activated (boot variables, running slot and its bytes unchanged), no unverified
    byte reaches slot B, the daemon keeps serving, and a good package is accepted afterwards."""
    pkg, want, reason, may_write = _refusal(case, signer, revoked_signer, tmp_path)
    client = server.client(fw_daemon.endpoint)
    before = snapshot(fw_daemon)
    image = (tmp_path / "image.bin").read_bytes()
    responses = await push(client, pkg)
    last = responses[-1].code
    assert last.startswith("4."), f"{case}: last response {last} after {len(responses)} blocks"
    await wait_resource(client, RESULT, want, daemon=fw_daemon)
    assert await read_int(client, STATE) == IDLE
    assert await read_str(client, VERSION) == ""
    assert reason in fw_daemon.log_text(), f"{case}: {reason!r} not logged"
    # Nothing activated.
    assert snapshot(fw_daemon) == before
    assert boot_state(fw_daemon)["lwm2md_trial"] == ""
    assert boot_state(fw_daemon)["lwm2md_bad_B"] == "1", "the refused slot must stay unbootable"
    # Only verified chunks reached slot B: a prefix of them (the writer stages verified bytes
    # and writes them in aligned buffers, so the last ones before a refusal may never be
    # written), and nothing after them.
    written = slot_bytes(fw_daemon, "B", IMAGE_SIZE)
    same = next((i for i in range(may_write) if written[i] != image[i]), may_write)
    assert written[same:may_write] == bytes(may_write - same), f"{case}: foreign bytes in B"
    assert written[may_write:] == bytes(IMAGE_SIZE - may_write), f"{case}: unverified bytes in B"
    assert journal(fw_daemon)["slots"] == {}
    await assert_still_serving(client)
    resp = await client.execute(UPDATE)
    assert resp.code == "4.05", f"{case}: Update after a refusal → {resp.code}"
    # The next (good) package goes through.
    good = (tmp_path / "good.pkg").read_bytes()
    await push_ok(client, fw_daemon, good)
    assert await read_int(client, RESULT) == R_INITIAL
    assert slot_bytes(fw_daemon, "B", IMAGE_SIZE) == image
    assert snapshot(fw_daemon) == before


async def test_size1_beyond_the_slot_is_refused_at_once(fw_daemon, server):
    """A push announcing (Size1) a package that cannot hold an image fitting the slot is refused
    at the first block with 4.13 and Result 2, before anything is written. (Slightly more than
    the slot is allowed: header, manifest and compression overhead around a whole-slot image.)"""
    client = server.client(fw_daemon.endpoint)
    before = snapshot(fw_daemon)
    resp = await client.request(
        "PUT", PACKAGE, payload=b"LWM2MPKG" + bytes(1016), content_format=CF_OCTET_STREAM,
        block1=(0, True, 6), size1=64 << 20, blockwise=False,
    )
    assert resp.code == "4.13", resp.code
    await wait_resource(client, RESULT, R_NO_SPACE, daemon=fw_daemon)
    assert await read_int(client, STATE) == IDLE
    assert snapshot(fw_daemon) == before
    assert boot_state(fw_daemon)["lwm2md_bad_B"] == "0"


async def test_security_version_floor(fw_daemon, server, signer, tmp_path):
    """Committing security version 5 raises the floor: 4 is then refused as a downgrade
    (Result 6) with B still running; 5 again is accepted."""
    image = make_image(tmp_path / "v5.bin", IMAGE_SIZE, seed=5)
    pkg5 = make_package(signer, tmp_path / "v5.bin", tmp_path / "v5.pkg", version="5.0",
                        security_version=5)
    client = await full_update(server, fw_daemon, pkg5, image, "5.0", "B")
    assert journal(fw_daemon)["security_floor"] == 5
    before = snapshot(fw_daemon)
    make_image(tmp_path / "v4.bin", IMAGE_SIZE, seed=4)
    pkg4 = make_package(signer, tmp_path / "v4.bin", tmp_path / "v4.pkg", version="4.9",
                        security_version=4)
    responses = await push(client, pkg4)
    assert responses[-1].code.startswith("4."), responses[-1].code
    await wait_resource(client, RESULT, R_UNSUPPORTED, daemon=fw_daemon)
    assert await read_int(client, STATE) == IDLE
    assert "downgrade refused: security version 4 < 5" in fw_daemon.log_text()
    assert snapshot(fw_daemon) == before
    assert slot_bytes(fw_daemon, "A", IMAGE_SIZE) == bytes(IMAGE_SIZE)
    assert await read_str(client, "/3/0/3") == "5.0"
    # Equal to the floor is fine.
    image5b = make_image(tmp_path / "v5b.bin", IMAGE_SIZE, seed=55)
    pkg5b = make_package(signer, tmp_path / "v5b.bin", tmp_path / "v5b.pkg", version="5.1",
                         security_version=5)
    await push_ok(client, fw_daemon, pkg5b)
    assert slot_bytes(fw_daemon, "A", IMAGE_SIZE) == image5b


# ----- reset and cancel -----


@pytest.mark.parametrize("how", ["empty-uri", "nul-package", "cancel"])
async def test_reset_after_downloaded(how, fw_daemon, server, signer, tmp_path):
    """From Downloaded, an empty Package URI or a single ``\\0`` package resets to Idle with
    Result 0, Execute Cancel (/5/0/10) with Result 10; the image is not activated (Update is
    refused), and a new package is accepted afterwards."""
    image = make_image(tmp_path / "image.bin", IMAGE_SIZE, seed=3)
    pkg = make_package(signer, tmp_path / "image.bin", tmp_path / "p.pkg", version="2.0.0")
    client = server.client(fw_daemon.endpoint)
    before = snapshot(fw_daemon)
    await push_ok(client, fw_daemon, pkg)
    if how == "empty-uri":
        resp, want = await client.write(URI, b"", 0), R_INITIAL
    elif how == "nul-package":
        resp, want = await client.write(PACKAGE, b"\0", CF_OCTET_STREAM), R_INITIAL
    else:
        resp, want = await client.execute("/5/0/10"), R_CANCELLED
    assert resp.code == "2.04", resp.code
    assert await read_int(client, STATE) == IDLE
    assert await read_int(client, RESULT) == want
    assert await read_str(client, URI) == ""
    assert (await client.execute(UPDATE)).code == "4.05"
    assert snapshot(fw_daemon) == before
    assert boot_state(fw_daemon)["lwm2md_trial"] == ""
    # Again, to the end.
    await full_update(server, fw_daemon, pkg, image, "2.0.0", "B")


async def test_push_while_downloaded_is_refused(fw_daemon, server, signer, tmp_path):
    """A second package while one is Downloaded is refused (4.05); the first stays."""
    image = make_image(tmp_path / "image.bin", IMAGE_SIZE, seed=3)
    pkg = make_package(signer, tmp_path / "image.bin", tmp_path / "p.pkg", version="2.0.0")
    client = server.client(fw_daemon.endpoint)
    await push_ok(client, fw_daemon, pkg)
    responses = await push(client, pkg)
    assert responses[0].code == "4.05", responses[0].code
    assert await read_int(client, STATE) == DOWNLOADED
    assert slot_bytes(fw_daemon, "B", IMAGE_SIZE) == image

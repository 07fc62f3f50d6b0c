"""Firmware updates end to end: the real daemon with the fake A/B machine, packages built and
signed by ``lwm2md-package``, pushed with Block1 or pulled, the fake reboot, commit, rollback,
power cuts and refused packages.
"""

from __future__ import annotations

import pytest

from daemon import Lwm2md
from firmware import (
    CF_OCTET_STREAM, DOWNLOADED, IDLE, PACKAGE, R_SUCCESS, RESULT, STATE, UPDATE, VERSION,
    boot_state, firmware_config, make_image, make_package, make_signer, read_int, read_str,
    reboot_and_restart, slot_bytes, wait_resource,
)


@pytest.fixture
def signer(tmp_path):
    return make_signer(tmp_path / "signing", "release")


@pytest.fixture
def keys_dir(tmp_path, signer):
    d = tmp_path / "keys.d"
    d.mkdir()
    (d / "release.pub").write_bytes(signer.pub.read_bytes())
    return d


@pytest.fixture
async def fw_daemon(server, tmp_path, keys_dir, request):
    daemon = Lwm2md(server, tmp_path, firmware_config(tmp_path, keys_dir))
    await daemon.start()
    await daemon.wait_registered()
    yield daemon
    if daemon.running:
        await daemon.terminate()


async def test_push_update_reboot_commit(fw_daemon, server, signer, tmp_path):
    image = make_image(tmp_path / "image.bin", 300_000, seed=1)
    pkg = make_package(signer, tmp_path / "image.bin", tmp_path / "p.pkg", version="2.0.0")
    client = server.client(fw_daemon.endpoint)
    assert await read_int(client, STATE) == IDLE
    responses = await client.write_blockwise(PACKAGE, pkg, CF_OCTET_STREAM)
    assert responses[-1].code == "2.04", [r.code for r in responses][-3:]
    await wait_resource(client, STATE, DOWNLOADED, daemon=fw_daemon)
    assert slot_bytes(fw_daemon, "B", len(image)) == image
    resp = await client.execute(UPDATE)
    assert resp.code == "2.04", resp.code
    await reboot_and_restart(fw_daemon)
    client = server.client(fw_daemon.endpoint)
    await wait_resource(client, RESULT, R_SUCCESS, daemon=fw_daemon)
    assert await read_int(client, STATE) == IDLE
    assert await read_str(client, VERSION) == "2.0.0"
    assert await read_str(client, "/3/0/3") == "2.0.0"
    state = boot_state(fw_daemon)
    assert state["booted"] == "B" and state["lwm2md_slot"] == "B", state

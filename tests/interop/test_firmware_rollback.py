"""Rollback: the trial boot of the new slot does not pass the health gate, so lwm2md reverts to
the old slot and reboots; the server then reads State 2 (the image is kept), Update Result 8,
the old /3/0/3, and the machine runs slot A again. (A trial ended by a power cut is in
``test_firmware_crash.py``: the boot loader falls back by itself.)

``health_timeout`` is 10 s, the smallest the configuration accepts.
"""

from __future__ import annotations

import asyncio

import pytest

from firmware import (
    DOWNLOADED, FACTORY_VERSION, R_FAILED, RESULT, STATE, UPDATE, URI, VERSION, assert_runs,
    boot_state, full_update, journal, kill9, make_image, make_package, push_ok,
    read_int, read_str, slot_bytes, slot_sha, start_fresh, update_and_commit, wait_exit,
    wait_journal, wait_log, wait_resource,
)

IMAGE_SIZE = 150_000
HEALTH_TIMEOUT = 10


async def _into_trial(daemon, server, signer, tmp_path, *, silent: bool, check: bool = True):
    """Push 2.0.0, Update, the fake reboot; starts the daemon in the trial boot of B."""
    image = make_image(tmp_path / "image.bin", IMAGE_SIZE, seed=31)
    pkg = make_package(signer, tmp_path / "image.bin", tmp_path / "p.pkg", version="2.0.0")
    client = server.client(daemon.endpoint)
    await push_ok(client, daemon, pkg)
    assert (await client.execute(UPDATE)).code == "2.04"
    if silent:
        server.go_silent()
    assert await wait_exit(daemon, 20, "fake reboot") == 0
    mark = len(daemon.log_text())
    await daemon.start()
    await wait_log(daemon, "waiting for the health gate", start=mark)
    state = boot_state(daemon)
    assert not check or (state["booted"], state["lwm2md_trial"], state["lwm2md_tried"]) == ("B", "B", "1"), state
    return image, pkg, mark


async def _assert_rolled_back(daemon, server, image, slot_a):
    client = server.client(daemon.endpoint)
    await wait_resource(client, RESULT, R_FAILED, daemon=daemon)
    assert await read_int(client, STATE) == DOWNLOADED
    assert await read_str(client, VERSION) == "2.0.0"
    assert await read_str(client, "/3/0/3") == FACTORY_VERSION
    state = assert_runs(daemon, "A")
    assert state["lwm2md_bad_B"] == "1", state
    assert slot_sha(daemon, "A") == slot_a
    assert slot_bytes(daemon, "B", IMAGE_SIZE) == image
    assert journal(daemon)["security_floor"] == 0, "a failed trial must not raise the floor"
    return client


async def _then_a_fresh_update_works(daemon, server, signer, tmp_path):
    client = server.client(daemon.endpoint)
    assert (await client.write(URI, b"", 0)).code == "2.04"  # reset the failed image
    image2 = make_image(tmp_path / "image2.bin", IMAGE_SIZE, seed=32)
    pkg2 = make_package(signer, tmp_path / "image2.bin", tmp_path / "p2.pkg", version="2.0.1")
    await full_update(server, daemon, pkg2, image2, "2.0.1", "B")


@pytest.mark.lwm2md_config({"update": {"health_timeout": HEALTH_TIMEOUT}})
async def test_trial_without_registration_is_reverted(fw_daemon, server, signer, tmp_path):
    """``require_registration``: the LwM2M server is silent during the trial, the health
    deadline passes, lwm2md reverts to A and reboots; Result 8, A runs, /3/0/3 is the old one."""
    daemon = fw_daemon
    slot_a = slot_sha(daemon, "A")
    image, _, mark = await _into_trial(daemon, server, signer, tmp_path, silent=True)
    await wait_journal(daemon, lambda j: j["phase"]["phase"] == "Verifying")
    started = asyncio.get_running_loop().time()
    assert await wait_exit(daemon, HEALTH_TIMEOUT + 10, "revert reboot") == 0
    waited = asyncio.get_running_loop().time() - started
    assert waited >= HEALTH_TIMEOUT - 2, f"reverted after {waited:.1f} s, before the deadline"
    assert "the health gate was not passed in time" in daemon.log_text()[mark:]
    assert boot_state(daemon)["booted"] == "A"
    server.resume()
    await start_fresh(daemon)
    await _assert_rolled_back(daemon, server, image, slot_a)
    await _then_a_fresh_update_works(daemon, server, signer, tmp_path)


@pytest.mark.lwm2md_config(
    {"update": {"health_timeout": HEALTH_TIMEOUT, "health_target": "lwm2md-interop-never.target"}}
)
async def test_trial_with_unhealthy_system_is_reverted(fw_daemon, server, signer, tmp_path):
    """The system half of the gate (a systemd unit that never becomes active; without a system
    bus the check fails at once) fails although the trial registers: revert, Result 8."""
    daemon = fw_daemon
    slot_a = slot_sha(daemon, "A")
    # (Without a system bus the gate fails, and the revert runs, at once.)
    image, _, mark = await _into_trial(daemon, server, signer, tmp_path, silent=False, check=False)
    assert await wait_exit(daemon, HEALTH_TIMEOUT + 10, "revert reboot") == 0
    log = daemon.log_text()[mark:]
    assert "returning to slot A" in log, log[-3000:]
    await start_fresh(daemon)
    await _assert_rolled_back(daemon, server, image, slot_a)


@pytest.mark.lwm2md_config({"update": {"health_timeout": 60}})
async def test_crash_looping_trial_is_reverted(fw_daemon, server, signer, tmp_path):
    """The new image makes lwm2md crash again and again in the trial (kill -9, restarted in the
    same boot each time), long before the health deadline: after 5 restarts the trial is given
    up like a failed gate (revert, reboot), instead of staying uncommitted for ever."""
    daemon = fw_daemon
    slot_a = slot_sha(daemon, "A")
    image, _, _ = await _into_trial(daemon, server, signer, tmp_path, silent=True)
    for n in range(1, 6):
        await kill9(daemon)
        mark = len(daemon.log_text())
        await daemon.start()
        await wait_log(daemon, "restarted during the trial boot of slot B", start=mark)
        # Only a durable count counts: kill once the journal has it.
        await wait_journal(daemon, lambda j: j["reentries"] == n)
        assert boot_state(daemon)["booted"] == "B"
    await kill9(daemon)
    mark = len(daemon.log_text())
    await daemon.start()
    assert await wait_exit(daemon, 20, "revert reboot") == 0
    assert "restarted 5 times during the trial boot" in daemon.log_text()[mark:]
    server.resume()
    await start_fresh(daemon)
    await _assert_rolled_back(daemon, server, image, slot_a)
    # The image that failed can be tried again once the server wants it (Execute from 2).
    await update_and_commit(server, daemon, "2.0.0", "B")

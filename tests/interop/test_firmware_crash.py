"""kill -9 at the points of an update that matter, each followed by a plain restart (the daemon
crashed, systemd restarts it: same boot) or by a power cut (the fake boot loader runs once, then
the daemon starts in the new boot). Afterwards the machine runs a good slot, State and Result
agree with what really happened (never stuck in Updating, never "success" for an update that
did not run), and a fresh update still goes through.
"""

from __future__ import annotations

import pytest

from firmware import (
    CF_OCTET_STREAM, DOWNLOADED, FACTORY_VERSION, IDLE, PACKAGE, R_CONNECTION_LOST, R_DEFERRED,
    R_FAILED, R_INITIAL, R_SUCCESS, RESULT, STATE, UPDATE, UPDATING, VERSION, assert_runs,
    boot_state, full_update, journal, kill9, make_image, make_package, power_cycle, push_ok,
    read_int, read_str, settle, slot_bytes, slot_sha, start_fresh, update_and_commit,
    wait_exit, wait_journal, wait_log, wait_resource,
)

IMAGE_SIZE = 150_000
POINTS = ["mid-push", "downloaded", "deferred", "after-execute", "trial"]


@pytest.mark.parametrize("power_cut", [False, True], ids=["crash", "power-cut"])
@pytest.mark.parametrize("point", POINTS)
async def test_kill9_during_update(point, power_cut, fw_unstarted, server, signer, tmp_path):
    daemon = fw_unstarted
    inhibit = tmp_path / "inhibit"
    daemon.config["update"]["inhibit_files"] = [str(inhibit)]
    await start_fresh(daemon)
    image = make_image(tmp_path / "image.bin", IMAGE_SIZE, seed=21)
    pkg = make_package(signer, tmp_path / "image.bin", tmp_path / "p.pkg", version="2.0.0")
    client = server.client(daemon.endpoint)
    slot_a = slot_sha(daemon, "A")

    # ----- run to the crash point, then kill -9 -----
    if point == "mid-push":
        for num in range(40):  # 40 of ~150 blocks of 1 KiB
            resp = await client.request(
                "PUT", PACKAGE, payload=pkg[num * 1024 : (num + 1) * 1024],
                content_format=CF_OCTET_STREAM, block1=(num, True, 6),
                size1=len(pkg) if num == 0 else None, blockwise=False,
            )
            assert resp.code == "2.31", (num, resp.code)
        assert journal(daemon)["phase"]["phase"] == "Downloading"
    else:
        await push_ok(client, daemon, pkg)
    if point == "deferred":
        # An inhibitor holds the Execute back (Result 11, still Downloaded).
        inhibit.touch()
        assert (await client.write("/5/0/13", b"300", 0)).code == "2.04"
        assert (await client.execute(UPDATE)).code == "2.04"
        await wait_resource(client, RESULT, R_DEFERRED, daemon=daemon)
        assert await read_int(client, STATE) == DOWNLOADED
        assert journal(daemon)["update_requested"] is True
    if point == "after-execute":
        # The 2.04 means the request is durable; the kill lands somewhere in CheckInhibit,
        # the Updating journal, Activate or the reboot.
        assert (await client.execute(UPDATE)).code == "2.04"
    if point == "trial":
        assert (await client.execute(UPDATE)).code == "2.04"
        server.go_silent()  # the trial cannot register: it waits at the health gate
        assert await wait_exit(daemon, 20, "fake reboot") == 0
        mark = len(daemon.log_text())
        await daemon.start()
        await wait_log(daemon, "waiting for the health gate", start=mark)
        assert boot_state(daemon)["booted"] == "B"
        await wait_journal(daemon, lambda j: j["phase"]["phase"] == "Verifying")
    if daemon.running:
        await kill9(daemon)
    if power_cut:
        power_cycle(daemon)
    server.resume()
    inhibit.unlink(missing_ok=True)

    # ----- restart (and let any fake reboot happen) until the procedure is at rest -----
    j = await settle(daemon)
    client = server.client(daemon.endpoint)
    state = await wait_resource(client, STATE, {IDLE, DOWNLOADED}, daemon=daemon)
    assert state != UPDATING
    result = await read_int(client, RESULT)
    booted = boot_state(daemon)["booted"]
    expected = {
        # A push cannot continue without its exchange: Idle, connection lost. A runs.
        "mid-push": {(IDLE, R_CONNECTION_LOST, "A")},
        # A verified image survives: still Downloaded, not armed.
        "downloaded": {(DOWNLOADED, R_INITIAL, "A")},
        # The durable Execute is carried on after the restart: committed.
        "deferred": {(IDLE, R_SUCCESS, "B")},
        # Committed; or, after a power cut before the trial was armed, reported failed with the
        # image kept (Downloaded) so the server can retry.
        "after-execute": {(IDLE, R_SUCCESS, "B")} | ({(DOWNLOADED, R_FAILED, "A")} if power_cut else set()),
        # A crash in the trial: the trial goes on and commits. A power cut: the boot loader
        # falls back (the trial was tried and never committed): Result 8, A runs.
        "trial": {(DOWNLOADED, R_FAILED, "A")} if power_cut else {(IDLE, R_SUCCESS, "B")},
    }[point]
    assert (state, result, booted) in expected, (state, result, booted, j, daemon.log_text()[-3000:])
    assert_runs(daemon, booted)
    if booted == "A":
        assert slot_sha(daemon, "A") == slot_a, "the running slot was written"
        assert await read_str(client, "/3/0/3") == FACTORY_VERSION
        if state == DOWNLOADED:
            assert await read_str(client, VERSION) == "2.0.0"
            assert slot_bytes(daemon, "B", IMAGE_SIZE) == image
            # Not armed (assert_runs: primary A, no trial): the next boot is A again.
            # The kept image can be applied (again).
            await update_and_commit(server, daemon, "2.0.0", "B")
    else:
        assert await read_str(client, "/3/0/3") == "2.0.0"
        assert slot_bytes(daemon, "B", IMAGE_SIZE) == image
    if point == "mid-push":
        await full_update(server, daemon, pkg, image, "2.0.0", "B")

    # ----- a fresh update afterwards still works (into A now) -----
    image2 = make_image(tmp_path / "image2.bin", IMAGE_SIZE, seed=22)
    pkg2 = make_package(signer, tmp_path / "image2.bin", tmp_path / "p2.pkg", version="3.0.0")
    await full_update(server, daemon, pkg2, image2, "3.0.0", "A")
    assert slot_bytes(daemon, "B", IMAGE_SIZE) == image

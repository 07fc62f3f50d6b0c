"""Firmware updates on a real A/B machine: the slots are loop block devices, the boot loader
backend is GRUB (the real ``grub-editenv`` on a plain env directory, provisioned by
``lwm2md-slots``), and every reboot is decided by GRUB itself (``grub-emu`` running the shipped
``packaging/grub/lwm2md.cfg``). Each boot runs lwm2md chrooted into the file system on the loop
device GRUB chose, with GRUB's kernel arguments as ``/proc/cmdline`` and a new boot id
(``loop_machine.py``), so the daemon detects its slot as on a gateway. The firmware image is
itself an ext2 root file system; after the update the machine boots it.

The daemon's ``reboot_command`` only records the request (with the command line of the boot it
came from); the test then stops the daemon (SIGTERM) and "reboots": GRUB runs, and the daemon
starts again in whatever GRUB booted.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from conftest import DAEMON_KEY, _config_overrides, _stop_daemon
from daemon import Lwm2md, binary_path, deep_merge, to_toml
from firmware import (
    DOWNLOADED, DOWNLOADING, FACTORY_VERSION, IDLE, R_FAILED, R_INITIAL, R_SUCCESS, RESULT,
    STATE, UPDATE, URI, VERSION, RangeServer, firmware_config, journal, make_package, push_ok,
    read_int, read_str, sha256, start_fresh, wait_log, wait_resource,
)
from loop_machine import (
    RELEASE_FILE, LoopMachine, MachineUnavailable, check_environment, make_root_image, run,
)

NEW_VERSION = "2.0.0"
IMAGE_SIZE = 8 << 20  # the new root file system (slots are 24 MiB)
PAYLOAD_SIZE = 200_000  # random bytes in it, so the package is not all zeros
HEALTH_TIMEOUT = 10  # the smallest the configuration accepts


def _unavailable(reason: str):
    if os.environ.get("LWM2MD_REQUIRE_TOOLS"):
        pytest.fail(f"loop machine unavailable: {reason}", pytrace=False)
    pytest.skip(f"loop machine unavailable: {reason}")


try:
    check_environment()
except MachineUnavailable as e:
    if os.environ.get("LWM2MD_REQUIRE_TOOLS"):
        raise RuntimeError(f"LWM2MD_REQUIRE_TOOLS is set but {e}") from None
    pytest.skip(f"loop machine unavailable: {e}", allow_module_level=True)


def slots_tool() -> Path:
    return binary_path().parent / "lwm2md-slots"


# ----- fixtures -----


@pytest.fixture
def machine(tmp_path):
    """Two 24 MiB loop-device slots (A: a root file system with the factory version, B: empty)
    and an unprovisioned GRUB env directory. Unmounted and detached afterwards, also on failure."""
    if not slots_tool().is_file():
        _unavailable(f"{slots_tool()} missing (cargo build --bins)")
    m = LoopMachine(tmp_path, extra_dirs=[tmp_path, binary_path().parent])
    try:
        m.create(FACTORY_VERSION)
    except MachineUnavailable as e:
        m.close()
        _unavailable(str(e))
    except BaseException:
        m.close()
        raise
    yield m
    print(m.describe())  # shown with a failure report ("Captured stdout teardown")
    problems = m.close()
    assert not problems, problems


@pytest.fixture
async def grub_daemon(request, server, tmp_path, keys_dir, machine):
    """lwm2md with ``backend = "grub"`` on ``machine`` (not started; the env provisioned with
    ``lwm2md-slots provision --primary A``). Teardown as for ``lwm2md`` (runs before the
    machine's, so the loop devices are detached after the daemon stopped)."""
    update = firmware_config(tmp_path, keys_dir)["update"]
    del update["fake_dir"], update["fake_slot_size"]
    update |= {
        "backend": "grub",
        "grub_env_dir": str(machine.env_dir),
        "slot_a": machine.devices["A"],
        "slot_b": machine.devices["B"],
    }
    marker = tmp_path / "markers" / "rebooted"
    script = tmp_path / "reboot.sh"
    # Records the request and the command line of the boot it came from; never reboots.
    script.write_text(f'#!/bin/sh\necho "$(cat /proc/cmdline)" >> {marker}\n')
    script.chmod(0o755)
    overrides = deep_merge(
        {"update": update, "device": {"reboot_command": [str(script)]}}, _config_overrides(request)
    )
    daemon = Lwm2md(server, tmp_path, overrides)
    request.node.stash[DAEMON_KEY] = daemon
    daemon.config_path.write_text(to_toml(daemon.config))
    out = run(slots_tool(), "-c", daemon.config_path, "provision", "--primary", "A")
    assert "primary A" in out.stdout, out.stdout
    yield daemon
    await _stop_daemon(daemon, server)


@pytest.fixture
async def http_server(tmp_path):
    srv = await RangeServer(tmp_path / "www").start()
    yield srv
    await srv.stop()


# ----- helpers -----


async def settled_env(machine: LoopMachine, timeout: float = 5.0) -> dict[str, str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (env := machine.settled_env()) is None:
        if loop.time() > deadline:
            raise AssertionError(f"GRUB env still mid-transaction after {timeout} s\n"
                                 f"{machine.describe()}")
        await asyncio.sleep(0.05)
    return env


async def wait_env(machine: LoopMachine, name: str, value: str, timeout: float = 10.0) -> None:
    """Until the settled GRUB env has ``name=value`` (or the time is up: the caller's
    assertions then say what is wrong)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        env = machine.settled_env()
        if env is not None and env.get(name) == value:
            return
        await asyncio.sleep(0.05)


async def status(machine: LoopMachine, daemon: Lwm2md) -> dict[str, str]:
    """``lwm2md-slots status`` run in the booted system (it must exit 0 and name the slot GRUB
    booted), checked against GRUB's own reading of the env (``grub-editenv list`` of the copy
    the lock rule selects). Returns booted, primary, trial, tried, bad_A, bad_B.

    The tool prints ``bootable_X`` (1: may boot), the negation of the env's ``lwm2md_bad_X``,
    and no ``tried``: that one comes from the env alone.

    Waits (at most 5 s) until no env transaction is under way: reading a copy while
    grub-editenv rewrites it sees a torn block, which is what the locks are for."""
    env = await settled_env(machine)
    out = machine.run_in_boot(slots_tool(), "-c", daemon.config_path, "status")
    st = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    assert machine.settled_env() == env, "the env changed while lwm2md-slots read it"
    assert st["backend"] == "grub", st
    assert (st["slot_A"], st["slot_B"]) == (machine.devices["A"], machine.devices["B"]), st
    assert st["booted"] == machine.booted, (st, machine.booted)
    assert env["lock1"] == env["lock2"] == "0", f"a lock is still set: {env}"
    for slot in "AB":
        if f"bootable_{slot}" in st:
            assert st[f"bootable_{slot}"] in ("0", "1"), st
            st.setdefault(f"bad_{slot}", "0" if st[f"bootable_{slot}"] == "1" else "1")
    grub_view = {
        "primary": env.get("lwm2md_slot"),
        "trial": env.get("lwm2md_trial"),
        "bad_A": env.get("lwm2md_bad_A"),
        "bad_B": env.get("lwm2md_bad_B"),
    }
    assert {k: st.get(k) for k in grub_view} == grub_view, (st, env)
    if "tried" in st:
        assert st["tried"] == env.get("lwm2md_tried"), (st, env)
    st["tried"] = env.get("lwm2md_tried")
    return st


def assert_state(st: dict, **want: str) -> None:
    assert {k: st[k] for k in want} == want, st


def env_bytes(machine: LoopMachine) -> dict[str, bytes]:
    return {n: (machine.env_dir / n).read_bytes() for n in ("env1", "env2", "lock1", "lock2")}


async def boot_and_start(machine: LoopMachine, daemon: Lwm2md, slot: str, *, register=True):
    """GRUB boots (it must pick ``slot``, with root= that slot's loop device); lwm2md starts
    chrooted on it. Returns the GRUB boot."""
    boot = machine.power_on()
    assert boot.slot == slot, f"GRUB booted {boot.slot}, expected {slot}\n{machine.describe()}"
    assert boot.param("root") == machine.devices[slot], boot.linux
    daemon.wrapper = machine.wrapper()
    mark = len(daemon.log_text())
    if register:
        await start_fresh(daemon)
    else:
        await daemon.start()
    await wait_log(daemon, f"firmware: running slot {slot}", start=mark, timeout=10)
    # The daemon's / is the file system on the slot's loop device, holding that slot's image.
    root = Path(f"/proc/{daemon.proc.pid}/root")
    assert os.stat(root).st_dev == os.stat(machine.devices[slot]).st_rdev
    return boot


def release_of(daemon: Lwm2md) -> str:
    """The release file at the running daemon's root."""
    return (Path(f"/proc/{daemon.proc.pid}/root") / RELEASE_FILE).read_text()


async def shut_down(daemon: Lwm2md) -> None:
    """The machine goes down for the reboot lwm2md asked for: SIGTERM, exit 0."""
    status_ = await daemon.terminate()
    assert status_ == 0, f"exit status {status_}\n{daemon.log_text()[-3000:]}"


async def wait_reboot_request(daemon: Lwm2md, count: int, timeout: float = 20.0) -> str:
    """Waits for the ``count``-th reboot request; returns the command line it was made from."""
    marker = daemon.marker("rebooted")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        lines = marker.read_text().splitlines() if marker.exists() else []
        if len(lines) >= count:
            return lines[count - 1]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no reboot request #{count} within {timeout} s\n{daemon.log_text()[-4000:]}")


def new_root_image(machine: LoopMachine, tmp_path: Path) -> tuple[Path, bytes, bytes]:
    """The new firmware: an ext2 root file system naming NEW_VERSION; returns its path, its
    bytes and its payload."""
    payload = random.Random(7).randbytes(PAYLOAD_SIZE)
    path = tmp_path / "rootfs-new.ext2"
    make_root_image(path, IMAGE_SIZE, NEW_VERSION, machine.extra_dirs, payload=payload)
    return path, path.read_bytes(), payload


async def first_boot(machine: LoopMachine, daemon: Lwm2md, server) -> str:
    """Provisioned env → GRUB boots A without writing → lwm2md on A, Idle, factory version.
    Returns slot A's hash."""
    env = await settled_env(machine)  # as provisioned
    assert (env["lwm2md_slot"], env["lwm2md_trial"], env["lwm2md_bad_B"]) == ("A", "", "0"), env
    before = env_bytes(machine)
    slot_a = machine.slot_sha("A")
    await boot_and_start(machine, daemon, "A")
    assert env_bytes(machine) == before, "a steady-state boot must not write the env"
    assert f"VERSION_ID={FACTORY_VERSION}" in release_of(daemon)
    assert_state(await status(machine, daemon), booted="A", primary="A", trial="", tried="0",
                 bad_A="0", bad_B="0")
    client = server.client(daemon.endpoint)
    assert await read_int(client, STATE) == IDLE
    assert await read_str(client, "/3/0/3") == FACTORY_VERSION
    return slot_a


async def deliver(how: str, machine, daemon, server, pkg: bytes, http_server=None):
    """Pull (Package URI, HTTP) or push (Block1 to /5/0/0) into slot B, until Downloaded.
    During a pull the GRUB env must already mark B bad."""
    client = server.client(daemon.endpoint)
    if how == "push":
        await push_ok(client, daemon, pkg)
        return
    (http_server.root / "fw.pkg").write_bytes(pkg)
    # Slow enough (about 1 s) to look at the env while the slot is being written.
    uri = http_server.uri("fw.pkg", f"rate={max(len(pkg), 100_000)}")
    assert (await client.write(URI, uri.encode(), 0)).code == "2.04"
    await wait_resource(client, STATE, DOWNLOADING, daemon=daemon, interval=0.05)
    await wait_env(machine, "lwm2md_bad_B", "1")
    assert_state(await status(machine, daemon), booted="A", primary="A", trial="", bad_B="1")
    assert await read_int(client, STATE) == DOWNLOADING, "B was not marked bad while written"
    await wait_resource(client, STATE, DOWNLOADED, timeout=30, daemon=daemon)
    gets = [r for r in http_server.requests if r["path"].startswith("/files/fw.pkg")]
    assert [r["status"] for r in gets] == [200], gets


async def downloaded_then_execute(machine, daemon, server, image: bytes, slot_a: str) -> None:
    """Downloaded: B holds the image, is still marked bad, nothing armed. Execute Update: the
    trial of B is armed (B bootable, not yet tried), then lwm2md asks for the reboot from A."""
    client = server.client(daemon.endpoint)
    assert await read_int(client, RESULT) == R_INITIAL
    assert await read_str(client, VERSION) == NEW_VERSION
    assert machine.slot_bytes("B", len(image)) == image
    assert machine.slot_sha("A") == slot_a, "the running slot was written"
    assert_state(await status(machine, daemon), booted="A", primary="A", trial="", tried="0",
                 bad_A="0", bad_B="1")
    assert (await client.execute(UPDATE)).code == "2.04"
    cmdline = await wait_reboot_request(daemon, 1)
    assert {"lwm2md.slot=A", f"root={machine.devices['A']}"} <= set(cmdline.split()), cmdline
    assert_state(await status(machine, daemon), booted="A", primary="A", trial="B", tried="0",
                 bad_A="0", bad_B="0")
    assert journal(daemon)["phase"]["phase"] == "Updating"


def assert_new_image_boots(machine: LoopMachine, payload: bytes) -> None:
    """A program started in the booted slot sees the new image at its root."""
    out = machine.run_in_boot("/bin/sh", "-c", f"cat /{RELEASE_FILE}; sha256sum /opt/payload.bin; "
                              "cat /proc/cmdline")
    assert f"VERSION_ID={NEW_VERSION}" in out.stdout, out.stdout
    assert sha256(payload) in out.stdout, out.stdout
    assert f"root={machine.devices['B']}" in out.stdout, out.stdout


# ----- the tests -----


@pytest.mark.parametrize("how", ["pull", "push"])
async def test_update_commits_on_grub(how, machine, grub_daemon, server, signer, http_server,
                                      tmp_path):
    """Boot A (GRUB decides) → deliver a signed ext2 root file system (pull over HTTP, or push
    with Block1) into loop B (marked bad while written) → Execute → the reboot → GRUB boots the
    trial of B with root=B's device → lwm2md, chrooted on B, passes the health gate and commits:
    Result 1, State 0, /5/0/7 and /3/0/3 the new version, GRUB env primary B without a trial.
    The next GRUB boot stays on B without writing the env, and B's root is the new image. Slot
    A is never written."""
    daemon = grub_daemon
    slot_a = await first_boot(machine, daemon, server)
    image_path, image, payload = new_root_image(machine, tmp_path)
    pkg = make_package(signer, image_path, tmp_path / "fw.pkg", version=NEW_VERSION)
    await deliver(how, machine, daemon, server, pkg, http_server)
    await downloaded_then_execute(machine, daemon, server, image, slot_a)
    await shut_down(daemon)

    # GRUB consumes the trial (tried=1 before booting it) and boots B.
    await boot_and_start(machine, daemon, "B")
    assert f"VERSION_ID={NEW_VERSION}" in release_of(daemon)
    client = server.client(daemon.endpoint)
    await wait_resource(client, RESULT, R_SUCCESS, daemon=daemon)
    assert await read_int(client, STATE) == IDLE
    assert await read_str(client, VERSION) == NEW_VERSION
    assert await read_str(client, "/3/0/3") == NEW_VERSION
    assert_state(await status(machine, daemon), booted="B", primary="B", trial="", tried="0",
                 bad_A="0", bad_B="0")
    assert journal(daemon)["phase"]["phase"] == "Idle"
    await shut_down(daemon)

    # A steady boot: B again, nothing written; lwm2md there stays committed.
    before = env_bytes(machine)
    await boot_and_start(machine, daemon, "B")
    assert env_bytes(machine) == before, "a steady-state boot must not write the env"
    assert_new_image_boots(machine, payload)
    client = server.client(daemon.endpoint)
    assert await read_int(client, STATE) == IDLE
    assert await read_int(client, RESULT) == R_SUCCESS
    assert await read_str(client, "/3/0/3") == NEW_VERSION
    assert machine.slot_sha("A") == slot_a, "slot A was written"
    assert len(daemon.marker("rebooted").read_text().splitlines()) == 1


@pytest.mark.lwm2md_config({"update": {"health_timeout": HEALTH_TIMEOUT}})
@pytest.mark.parametrize("how", ["trial-hangs", "health-gate"])
async def test_failed_trial_rolls_back_on_grub(how, machine, grub_daemon, server, signer,
                                               tmp_path):
    """The trial boot of B never becomes healthy. ``trial-hangs``: lwm2md never runs in B
    (the new system hangs), the machine is reset, and GRUB itself falls back to A because the
    trial was tried and never committed. ``health-gate``: lwm2md runs in B but cannot reach its
    server; after ``health_timeout`` it reverts (GRUB env: A primary, B bad, written by
    grub-editenv from inside B) and asks for a reboot, and GRUB boots A. Either way lwm2md on A
    reports Result 8 and State 2 (the image kept), /3/0/3 is the old version, and slot A's
    bytes are untouched. The kept image can then be applied again, and commits."""
    daemon = grub_daemon
    slot_a = await first_boot(machine, daemon, server)
    image_path, image, _ = new_root_image(machine, tmp_path)
    pkg = make_package(signer, image_path, tmp_path / "fw.pkg", version=NEW_VERSION)
    await deliver("push", machine, daemon, server, pkg)
    await downloaded_then_execute(machine, daemon, server, image, slot_a)
    await shut_down(daemon)

    if how == "trial-hangs":
        boot = machine.power_on()
        assert boot.slot == "B", machine.describe()
        env = machine.env()
        assert (env["lwm2md_trial"], env["lwm2md_tried"]) == ("B", "1"), env
        # lwm2md never starts; the watchdog resets the machine: GRUB runs again.
        boot = await boot_and_start(machine, daemon, "A")
        assert "trial of slot B was not committed; falling back to A" in boot.console
        await wait_log(daemon, "the trial boot of slot B failed; the boot loader fell back to A")
    else:
        server.go_silent()
        mark = len(daemon.log_text())
        await boot_and_start(machine, daemon, "B", register=False)
        await wait_log(daemon, "trial boot of slot B; waiting for the health gate", start=mark)
        started = asyncio.get_running_loop().time()
        cmdline = await wait_reboot_request(daemon, 2, timeout=HEALTH_TIMEOUT + 10)
        waited = asyncio.get_running_loop().time() - started
        assert waited >= HEALTH_TIMEOUT - 2, f"reverted after {waited:.1f} s"
        assert "lwm2md.slot=B" in cmdline.split(), cmdline
        assert "the health gate was not passed in time" in daemon.log_text()
        assert_state(await status(machine, daemon), booted="B", primary="A", trial="", bad_B="1")
        await shut_down(daemon)
        server.resume()
        boot = await boot_and_start(machine, daemon, "A")
        await wait_log(daemon, "reverted from slot B to A after a failed health gate")

    client = server.client(daemon.endpoint)
    await wait_resource(client, RESULT, R_FAILED, daemon=daemon)
    assert await read_int(client, STATE) == DOWNLOADED
    assert await read_str(client, VERSION) == NEW_VERSION
    assert await read_str(client, "/3/0/3") == FACTORY_VERSION
    assert f"VERSION_ID={FACTORY_VERSION}" in release_of(daemon)
    # Both paths leave the failed slot unbootable: the revert marks it, and after a boot-loader
    # fallback (which only clears the trial) the daemon marks it once it sees the fallback.
    await wait_env(machine, "lwm2md_bad_B", "1")
    assert_state(await status(machine, daemon), booted="A", primary="A", trial="", tried="0",
                 bad_A="0", bad_B="1")
    assert machine.slot_sha("A") == slot_a, "slot A was written"
    assert machine.slot_bytes("B", len(image)) == image, "the kept image is gone"
    assert journal(daemon)["security_floor"] == 0, "a failed trial must not raise the floor"

    # The kept image can be applied again (Execute from State 2): GRUB boots B, lwm2md commits.
    requests = len(daemon.marker("rebooted").read_text().splitlines())
    assert (await client.execute(UPDATE)).code == "2.04"
    await wait_reboot_request(daemon, requests + 1)
    await shut_down(daemon)
    await boot_and_start(machine, daemon, "B")
    client = server.client(daemon.endpoint)
    await wait_resource(client, RESULT, R_SUCCESS, daemon=daemon)
    assert await read_str(client, "/3/0/3") == NEW_VERSION
    assert_state(await status(machine, daemon), booted="B", primary="B", trial="", tried="0",
                 bad_A="0", bad_B="0")
    assert machine.slot_sha("A") == slot_a, "slot A was written"

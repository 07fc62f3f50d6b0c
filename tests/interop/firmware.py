"""Firmware-update fixtures: signing keys, packages built by ``lwm2md-package``, a daemon
configured with the fake A/B machine, and the fake machine's reboot.

The fake backend reboots by applying the boot rule to its state and stopping the daemon (exit
status 0); :func:`reboot_and_restart` waits for that, then starts the daemon again, as systemd
would after a real reboot. A power cut is ``kill -9`` followed by :func:`power_cycle`
(``lwm2md-demo fake-boot``: the boot loader runs once) and a start.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from daemon import Lwm2md
from lwm2m_model import REPO_ROOT

#: The compatible string of the test device.
COMPATIBLE = "lwm2md-interop-gw"
#: Object 5 resources.
PACKAGE, URI, UPDATE, STATE, RESULT, NAME, VERSION = (
    "/5/0/0", "/5/0/1", "/5/0/2", "/5/0/3", "/5/0/5", "/5/0/6", "/5/0/7",
)
#: States (/5/0/3) and results (/5/0/5).
IDLE, DOWNLOADING, DOWNLOADED, UPDATING = 0, 1, 2, 3
R_INITIAL, R_SUCCESS, R_NO_SPACE, R_INTEGRITY, R_UNSUPPORTED, R_INVALID_URI, R_FAILED = 0, 1, 2, 5, 6, 7, 8
CF_OCTET_STREAM = 42
SLOT_SIZE = 4 << 20


def tool(name: str) -> Path:
    """A binary of this repository, next to ``$LWM2MD_BIN``."""
    main = Path(os.environ.get("LWM2MD_BIN", "target/debug/lwm2md"))
    main = main if main.is_absolute() else REPO_ROOT / main
    path = main.parent / name
    assert path.is_file(), f"{path} missing: run `cargo build --bins`"
    return path


def run_tool(name: str, *args: str | Path) -> str:
    out = subprocess.run(
        [str(tool(name)), *map(str, args)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, f"{name} {args}: {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


@dataclass
class Signer:
    """A signing key pair: ``key`` for ``lwm2md-package create``, ``pub`` for the device."""

    key: Path
    pub: Path
    key_id: str


def make_signer(directory: Path, name: str) -> Signer:
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / name
    key_id = run_tool("lwm2md-package", "keygen", "--out", stem).splitlines()[0].strip()
    return Signer(Path(f"{stem}.key"), Path(f"{stem}.pub"), key_id)


def make_image(path: Path, size: int, seed: int) -> bytes:
    """A deterministic image: compressible text runs mixed with noise."""
    import random

    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += f"lwm2md test image {seed} block {len(out)}\n".encode() * rng.randint(1, 20)
        out += rng.randbytes(rng.randint(16, 2048))
    data = bytes(out[:size])
    path.write_bytes(data)
    return data


def make_package(
    signer: Signer,
    image: Path,
    out: Path,
    *,
    version: str,
    name: str = "interop-os",
    compatible: str = COMPATIBLE,
    security_version: int = 1,
    compression: str = "zstd",
    chunk_size: str = "64K",
) -> bytes:
    run_tool(
        "lwm2md-package", "create", "--key", signer.key, "--image", image, "--out", out,
        "--compatible", compatible, "--name", name, "--version", version,
        "--security-version", str(security_version), "--compression", compression,
        "--chunk-size", chunk_size,
    )
    return out.read_bytes()


def firmware_config(workdir: Path, keys_dir: Path, **extra) -> dict:
    """``[update]`` with the fake machine under ``workdir/machine``."""
    return {
        "update": {
            "backend": "fake",
            "compatible": COMPATIBLE,
            "fake_dir": str(workdir / "machine"),
            "fake_slot_size": SLOT_SIZE,
            "keys_dir": str(keys_dir),
            "health_target": "",
            "health_timeout": 30,
            "download_retry_initial": 1,
            "download_retry_max": 2,
            **extra,
        }
    }


def machine(daemon: Lwm2md) -> Path:
    return Path(daemon.config["update"]["fake_dir"])


def boot_state(daemon: Lwm2md) -> dict:
    """The fake boot loader's variables and the running slot."""
    m = machine(daemon)
    state = json.loads((m / "bootstate.json").read_text())
    state["booted"] = (m / "booted").read_text().strip()
    return state


def slot_bytes(daemon: Lwm2md, slot: str, length: int) -> bytes:
    with open(machine(daemon) / f"slot-{slot.lower()}.img", "rb") as f:
        return f.read(length)


def power_cycle(daemon: Lwm2md) -> str:
    """The fake machine boots once (after a power cut); returns the slot it runs."""
    return run_tool("lwm2md-demo", "fake-boot", machine(daemon)).strip()


async def wait_exit(daemon: Lwm2md, timeout: float, what: str) -> int:
    try:
        return await asyncio.wait_for(daemon.proc.wait(), timeout)
    except TimeoutError:
        raise AssertionError(
            f"{what}: lwm2md still running after {timeout} s\n{daemon.log_text()[-4000:]}"
        ) from None


async def reboot_and_restart(daemon: Lwm2md, timeout: float = 20.0) -> None:
    """Wait for the fake reboot (the daemon exits 0), then start it again and wait for it to
    register."""
    status = await wait_exit(daemon, timeout, "fake reboot")
    assert status == 0, f"exit status {status} at the fake reboot\n{daemon.log_text()[-4000:]}"
    await daemon.start()
    await daemon.wait_registered(15.0)


async def read_int(client, path: str) -> int:
    return int(await read_str(client, path))


async def read_str(client, path: str) -> str:
    resp = await client.read(path, accept=0)  # text/plain
    assert resp.code == "2.05", f"read {path}: {resp.code}"
    return resp.text


async def wait_resource(
    client, path: str, want, timeout: float = 20.0, daemon=None, interval: float = 0.2
) -> int:
    """Poll ``path`` every ``interval`` s until it reads ``want`` (an int or a set of ints)."""
    wanted = want if isinstance(want, set) else {want}
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            last = await read_int(client, path)
        except Exception as e:  # noqa: BLE001 - the daemon may be between requests
            last = f"error {e}"
        if last in wanted:
            return last
        await asyncio.sleep(interval)
    log = daemon.log_text()[-4000:] if daemon is not None else ""
    raise AssertionError(f"{path} is {last}, not {want}, after {timeout} s\n{log}")

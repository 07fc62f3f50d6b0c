"""A real A/B machine for the firmware tests: two loop block devices as the root-file-system
slots, GRUB's boot state in a plain env directory (``env1``, ``env2``, ``lock1``, ``lock2``,
written by the real ``grub-editenv``), and every boot decided by GRUB itself: ``grub-emu``
runs the shipped ``packaging/grub/lwm2md.cfg`` on a copy of the env directory (an ext2 disk
image, because GRUB's ``save_env`` writes blocks in place), as ``grub_emu_boot`` in
``src/ab/testkit.rs`` does; the env files are copied back afterwards.

A "boot" of slot X runs a program in a new mount namespace chrooted into the file system ON
slot X's loop device (mounted read-only, like ``root=… ro``), with the host's ``/usr``,
``/etc``, ``/dev``, ``/proc``, ``/sys``, ``/tmp``, ``/run`` bound in (the mount points are part
of every slot image), ``/proc/cmdline`` replaced by the kernel arguments GRUB passed
(``root=/dev/loopN ro lwm2md.slot=X …``) and ``/proc/sys/kernel/random/boot_id`` by a fresh id
per boot. lwm2md therefore finds its slot exactly as on a gateway: from the command line,
cross-checked with the device of ``/``. The wrapper execs the program (``unshare`` → ``sh`` →
``chroot`` → program), so the PID the test holds is the daemon's and SIGTERM reaches it.

Needs root, loop devices, ``unshare``, ``mount``, ``chroot``, ``grub-emu``, ``grub-editenv``,
``mke2fs`` and ``debugfs``; :func:`check_environment` names what is missing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lwm2m_model import REPO_ROOT

GRUB_SNIPPET = REPO_ROOT / "packaging" / "grub" / "lwm2md.cfg"
TOOLS = (
    "losetup", "mount", "umount", "unshare", "chroot", "timeout", "grub-emu", "grub-editenv",
    "mke2fs", "debugfs",
)
#: Host trees bound into every boot: plain binds, and recursive ones (they hold sub-mounts).
BIND_DIRS = ("usr", "etc", "tmp")
RBIND_DIRS = ("dev", "proc", "sys", "run")
#: Merged-/usr symlinks on the host become the same symlinks in a slot image (else binds).
LINK_DIRS = ("bin", "sbin", "lib", "lib64")
#: The release file of a slot image, at its root (``/etc`` is the host's inside a boot).
RELEASE_FILE = "lwm2md-release"
ENV_FILES = ("env1", "env2", "lock1", "lock2")
SLOT_SIZE = 24 << 20

#: Runs in the new mount namespace: mount the slot, bind the host trees, replace the kernel
#: command line and boot id, chroot, exec the program.
BOOT_EXEC = r"""
set -eu
root=$1 dev=$2 cmdline=$3 boot_id=$4 binds=$5
shift 5
mount -o ro "$dev" "$root"
for d in {bind}; do mount --bind "/$d" "$root/$d"; done
for d in {rbind}; do mount --rbind "/$d" "$root/$d"; done
for d in {links}; do
    if [ ! -L "/$d" ] && [ -d "/$d" ]; then mount --bind "/$d" "$root/$d"; fi
done
IFS=:
for d in $binds; do mount --bind "$d" "$root$d"; done
unset IFS
mount --bind "$cmdline" "$root/proc/cmdline"
mount --bind "$boot_id" "$root/proc/sys/kernel/random/boot_id"
exec chroot "$root" "$@"
""".format(bind=" ".join(BIND_DIRS), rbind=" ".join(RBIND_DIRS), links=" ".join(LINK_DIRS))


class MachineUnavailable(Exception):
    """The host cannot run the loop machine (the test skips, or fails when tools are required)."""


def run(*argv: str | Path, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and out.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, argv))}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
        )
    return out


def check_environment() -> None:
    """Raises :class:`MachineUnavailable` naming what this host lacks."""
    if os.geteuid() != 0:
        raise MachineUnavailable("needs root (loop devices, mount, chroot)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise MachineUnavailable(f"missing tools: {', '.join(missing)}")
    if not GRUB_SNIPPET.is_file():
        raise MachineUnavailable(f"{GRUB_SNIPPET} missing")
    probe = run("unshare", "--mount", "--propagation", "private", "true", check=False)
    if probe.returncode != 0:
        raise MachineUnavailable(f"unshare --mount fails: {probe.stderr.strip()}")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def make_root_image(path: Path, size: int, version: str, extra_dirs: list[Path], *,
                    payload: bytes = b"") -> None:
    """An ext2 image shaped like a root file system this machine can boot: the mount points
    (``/usr``, ``/dev``, ``/proc``… and ``extra_dirs``), the merged-/usr links the host has,
    ``/lwm2md-release`` (os-release format, naming ``version``) and ``/opt/payload.bin``."""
    with tempfile.TemporaryDirectory(dir=path.parent) as tree:
        t = Path(tree)
        for d in (*BIND_DIRS, *RBIND_DIRS):
            (t / d).mkdir()
        for d in LINK_DIRS:
            host = Path("/") / d
            if host.is_symlink():
                (t / d).symlink_to(os.readlink(host))
            elif host.is_dir():
                (t / d).mkdir()
        for d in extra_dirs:
            (t / d.relative_to("/")).mkdir(parents=True, exist_ok=True)
        (t / RELEASE_FILE).write_text(
            f'NAME="lwm2md interop OS"\nID=lwm2md-interop\nVERSION_ID={version}\n'
        )
        (t / "opt").mkdir(exist_ok=True)
        (t / "opt" / "payload.bin").write_bytes(payload)
        path.unlink(missing_ok=True)
        run("mke2fs", "-q", "-F", "-t", "ext2", "-L", f"rootfs-{version}"[:16], "-d", t, path,
            f"{size >> 10}k")


def strip_escapes(text: str) -> str:
    """grub-emu's console output without terminal escape sequences and carriage returns."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "")


@dataclass
class GrubBoot:
    """What one grub-emu run decided."""

    slot: str
    #: The arguments of GRUB's ``linux`` command: kernel path, then the kernel command line.
    linux: list[str]
    console: str

    @property
    def cmdline(self) -> str:
        return " ".join(self.linux[1:])

    def param(self, key: str) -> str | None:
        return next((a.split("=", 1)[1] for a in self.linux[1:] if a.startswith(key + "=")), None)


@dataclass
class LoopMachine:
    """Two loop-device slots, a GRUB env directory, and boots decided by grub-emu."""

    workdir: Path
    #: Host directories outside the bound trees that must be visible in a boot (the test's
    #: work directory, the binaries' directory): mount points in every slot image.
    extra_dirs: list[Path] = field(default_factory=list)
    slot_size: int = SLOT_SIZE
    devices: dict[str, str] = field(default_factory=dict)
    boots: list[GrubBoot] = field(default_factory=list)
    booted: str | None = None
    _host_mounts: list[Path] = field(default_factory=list)

    def __post_init__(self):
        self.dir = self.workdir / "machine"
        self.env_dir = self.dir / "grubenv"
        self.root_mnt = self.dir / "root"
        self.cmdline_file = self.dir / "cmdline"
        self.boot_id_file = self.dir / "boot_id"
        self.extra_dirs = self._minimal(self.extra_dirs)

    @staticmethod
    def _minimal(dirs: list[Path]) -> list[Path]:
        """The directories not already inside a bound host tree, parents first."""
        bound = [Path("/") / d for d in (*BIND_DIRS, *RBIND_DIRS)]
        out = []
        for d in sorted({Path(os.path.realpath(p)) for p in dirs}):
            if not any(d == b or b in d.parents for b in bound):
                out.append(d)
        return out

    # ----- set-up and tear-down -----

    def create(self, factory_version: str) -> None:
        """Slot images (A: a root file system naming ``factory_version``; B: zeros), attached
        to loop devices."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.root_mnt.mkdir(exist_ok=True)
        for slot in "AB":
            img = self.dir / f"slot-{slot.lower()}.img"
            if slot == "A":
                make_root_image(img, self.slot_size, factory_version, self.extra_dirs,
                                payload=b"factory\n")
            else:
                with open(img, "wb") as f:
                    f.truncate(self.slot_size)
            out = run("losetup", "--find", "--show", img, check=False)
            if out.returncode != 0:
                raise MachineUnavailable(f"cannot attach a loop device: {out.stderr.strip()}")
            self.devices[slot] = out.stdout.strip()
        # Mounting must work here too (else every boot would fail less clearly).
        try:
            with self.mounted("A") as root:
                assert (root / RELEASE_FILE).is_file()
        except AssertionError as e:
            raise MachineUnavailable(f"cannot mount a loop device: {e}") from None

    def close(self) -> list[str]:
        """Unmounts what the host mounted and detaches the loop devices; returns problems."""
        problems = []
        for mnt in reversed(self._host_mounts):
            out = run("umount", mnt, check=False)
            if out.returncode != 0:
                run("umount", "-l", mnt, check=False)
                problems.append(f"umount {mnt}: {out.stderr.strip()}")
        self._host_mounts.clear()
        for slot, dev in list(self.devices.items()):
            out = run("losetup", "-d", dev, check=False)
            if out.returncode != 0:
                problems.append(f"losetup -d {dev}: {out.stderr.strip()}")
            del self.devices[slot]
        return problems

    # ----- the boot loader -----

    def grub_boot(self) -> GrubBoot:
        """Runs GRUB once on the env directory; returns what it booted."""
        n = len(self.boots) + 1
        work = self.dir / f"grub-{n}"
        fs = work / "fs" / "lwm2md"
        fs.mkdir(parents=True)
        present = [name for name in ENV_FILES if (self.env_dir / name).exists()]
        for name in present:
            shutil.copyfile(self.env_dir / name, fs / name)
        image = work / "boot.img"
        run("mke2fs", "-q", "-F", "-t", "ext2", "-b", "1024", "-d", work / "fs", image, "1M")
        (work / "device.map").write_text(f"(hd0) {image}\n")
        (work / "grub.cfg").write_text(
            "set lwm2md_envdir=(hd0)/lwm2md\n"
            "set lwm2md_dev_A=(hd0,gpt2)\n"
            "set lwm2md_dev_B=(hd0,gpt3)\n"
            f"set lwm2md_root_A={self.devices['A']}\n"
            f"set lwm2md_root_B={self.devices['B']}\n"
            'set lwm2md_cmdline="console=ttyS0 quiet"\n'
            # grub-emu cannot load a kernel: print what `linux` gets, then stop.
            'function linux { for a in $@; do echo "LWM2M-ARG [$a]"; done; halt; }\n'
            "set timeout=0\n"
            f"source (host){GRUB_SNIPPET}\n"
        )
        out = run("timeout", "30", "grub-emu", "-d", work, "-r", "host", "-m",
                  work / "device.map", check=False)
        console = strip_escapes(out.stdout + out.stderr)
        (work / "console.txt").write_text(console)
        linux = [
            line.strip().removeprefix("LWM2M-ARG [").removesuffix("]")
            for line in console.splitlines()
            if line.strip().startswith("LWM2M-ARG [")
        ]
        boot = GrubBoot(slot="", linux=linux, console=console)
        boot.slot = boot.param("lwm2md.slot") or ""
        assert boot.slot in ("A", "B"), f"GRUB booted no lwm2md entry (exit {out.returncode}):\n{console}"
        for name in present:
            run("debugfs", "-R", f"dump /lwm2md/{name} {self.env_dir / name}", image)
        self.boots.append(boot)
        return boot

    def power_on(self) -> GrubBoot:
        """GRUB boots; the next programs started with :meth:`wrapper` run in that boot."""
        boot = self.grub_boot()
        root = boot.param("root")
        assert root == self.devices[boot.slot], (
            f"GRUB booted slot {boot.slot} with root={root}, not {self.devices[boot.slot]}\n"
            f"{boot.console}"
        )
        self.cmdline_file.write_text(boot.cmdline + "\n")
        self.boot_id_file.write_text(f"{uuid.uuid4()}\n")
        self.booted = boot.slot
        return boot

    # ----- running programs in the booted system -----

    def wrapper(self) -> list[str]:
        """Argv prefix that runs a program (absolute path) in the booted slot."""
        assert self.booted is not None, "the machine has not booted"
        return [
            "unshare", "--mount", "--propagation", "private", "sh", "-c", BOOT_EXEC, "boot-exec",
            str(self.root_mnt), self.devices[self.booted], str(self.cmdline_file),
            str(self.boot_id_file), ":".join(map(str, self.extra_dirs)),
        ]

    def run_in_boot(self, *argv: str | Path, check: bool = True) -> subprocess.CompletedProcess:
        return run(*self.wrapper(), *argv, check=check)

    # ----- looking at the slots -----

    def slot_sha(self, slot: str) -> str:
        """SHA-256 of the whole slot device."""
        return sha256_file(self.devices[slot])

    def slot_bytes(self, slot: str, length: int) -> bytes:
        with open(self.devices[slot], "rb") as f:
            return f.read(length)

    @contextmanager
    def mounted(self, slot: str):
        """Slot ``slot``'s file system mounted read-only on the host."""
        mnt = Path(tempfile.mkdtemp(prefix=f"slot-{slot.lower()}-", dir=self.dir))
        run("mount", "-o", "ro", self.devices[slot], mnt)
        self._host_mounts.append(mnt)
        try:
            yield mnt
        finally:
            run("umount", mnt)
            self._host_mounts.remove(mnt)
            mnt.rmdir()

    def env(self) -> dict[str, str]:
        """The boot variables as GRUB reads them (``grub-editenv list`` of the copy the lock
        rule selects: lock2 ≠ 0 → env1, else lock1 ≠ 0 → env2, else env1), independent of
        lwm2md's own reader. Adds ``copy`` (1 or 2) and ``lock1``/``lock2``."""
        def listing(name: str) -> dict[str, str]:
            path = self.env_dir / name
            if not path.exists():
                return {}
            out = run("grub-editenv", path, "list")
            return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

        lock1 = listing("lock1").get("editing", "")
        lock2 = listing("lock2").get("editing", "")
        copy = 1 if lock2 != "0" else (2 if lock1 != "0" else 1)
        return {**listing(f"env{copy}"), "copy": str(copy), "lock1": lock1, "lock2": lock2}

    def settled_env(self) -> dict[str, str] | None:
        """:meth:`env` if no transaction is under way (both locks 0, both copies alike), else
        None (also when a file is being rewritten at this moment)."""
        try:
            env = self.env()
            other = self.env_copy(2 if env["copy"] == "1" else 1)
        except AssertionError:  # grub-editenv: invalid environment block (mid-write)
            return None
        mine = {k: v for k, v in env.items() if k.startswith("lwm2md_")}
        if env["lock1"] != "0" or env["lock2"] != "0" or other != mine:
            return None
        return env

    def env_copy(self, n: int) -> dict[str, str]:
        out = run("grub-editenv", self.env_dir / f"env{n}", "list")
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    def describe(self) -> str:
        lines = [f"devices: {self.devices}", f"booted: {self.booted}"]
        try:
            lines.append(f"env: {self.env()}")
        except Exception as e:  # noqa: BLE001 - only a report
            lines.append(f"env: unreadable ({e})")
        for n, boot in enumerate(self.boots, 1):
            lines.append(f"--- GRUB boot {n}: slot {boot.slot}, linux {boot.linux}")
            lines.append(boot.console.strip())
        return "\n".join(lines)

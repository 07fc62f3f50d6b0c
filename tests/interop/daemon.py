"""Configuration writer and process launcher for the real ``lwm2md`` binary.

The configuration follows the README's reference (TOML); ``base_config`` is what every test
starts from, and tests change single keys with ``@pytest.mark.lwm2md_config({...})``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
from pathlib import Path
from typing import Any

from lwm2m_server import Event, EventTimeout, Lwm2mServer
from lwm2m_model import REPO_ROOT

#: Fixed Device object values, so reads of /3/0 are deterministic.
DEVICE = {
    "manufacturer": "Interop Test Corp",
    "model": "LWM2MD-IT-1",
    "serial": "IT-000042",
    "firmware_version": "9.8.7-interop",
    "hardware_version": "HW-rev-3",
    "device_type": "interop-gateway",
}
SHORT_SERVER_ID = 1
LIFETIME = 300
REGISTRATION_TIMEOUT = 10.0
EXIT_TIMEOUT = 5.0


def binary_path() -> Path:
    """``$LWM2MD_BIN`` (relative paths are relative to the repository root)."""
    path = Path(os.environ.get("LWM2MD_BIN", "target/debug/lwm2md"))
    return path if path.is_absolute() else REPO_ROOT / path


def base_config(server_uri: str, state_dir: Path, marker_dir: Path, endpoint: str) -> dict[str, Any]:
    """The configuration every test starts from (see README "Configuration reference")."""
    return {
        "agent": {"endpoint": endpoint, "state_dir": str(state_dir), "log_level": "debug"},
        "coap": {
            "ack_timeout": 2.0,
            "ack_random_factor": 1.5,
            "max_retransmit": 4,
            "block_size": 1024,
            "max_body_size": 65536,
        },
        "registration": {"retry_initial": 1, "retry_max": 4},
        "observe": {"sample_interval": 1},
        "server": [server_table(server_uri)],
        "device": {
            **DEVICE,
            "reboot_command": ["/bin/sh", "-c", f"touch {marker_dir}/rebooted"],
            "factory_reset_command": ["/bin/sh", "-c", f"touch {marker_dir}/factory-reset"],
        },
        "connectivity": {"modem_manager": False},
    }


#: ``[bootstrap]`` keys every bootstrap test starts from (README "Configuration reference"):
#: no Client Hold Off Time, fallback after 3 failed rounds, the RFC 7252 EXCHANGE_LIFETIME.
BOOTSTRAP_DEFAULTS = {"hold_off": 0, "fallback_after": 3, "timeout": 247}


def bootstrap_config(bootstrap_uri: str, **keys: Any) -> dict[str, Any]:
    """Overrides for a daemon with the factory Bootstrap-Server account at ``bootstrap_uri``
    and no ``[[server]]`` (so it bootstraps at start); ``keys`` change ``[bootstrap]`` keys."""
    return {"bootstrap": {"uri": bootstrap_uri, **BOOTSTRAP_DEFAULTS, **keys}, "server": []}


def server_table(
    uri: str, short_id: int = SHORT_SERVER_ID, lifetime: int = LIFETIME, **keys: Any
) -> dict[str, Any]:
    """One ``[[server]]`` table (as in ``base_config``) for ``uri``."""
    return {"uri": uri, "short_id": short_id, "lifetime": lifetime, "binding": "U", **keys}


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge ``overrides`` into a copy of ``base``: tables merge recursively, other values replace.

    A dict given for a list of tables (``"server": {"lifetime": 20}``) merges into its first
    element, so a test can change one key of the single ``[[server]]`` entry. A list replaces
    (``"server": []`` leaves no ``[[server]]`` table); a dict for an empty list is an error.
    """
    out = dict(base)
    for key, value in overrides.items():
        current = out.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            out[key] = deep_merge(current, value)
        elif isinstance(current, list) and isinstance(value, dict):
            if not current or not isinstance(current[0], dict):
                raise ValueError(f"cannot merge {value!r} into {key} = {current!r}: no table to merge into")
            out[key] = [deep_merge(current[0], value), *current[1:]]
        else:
            out[key] = value
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON string escapes are valid TOML
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def to_toml(config: dict[str, Any], prefix: str = "") -> str:
    """Serialise nested dicts / lists of dicts (array of tables) to TOML."""
    lines = []
    tables = []
    for key, value in config.items():
        if isinstance(value, dict):
            tables.append((key, value, False))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables.append((key, value, True))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value, is_array in tables:
        name = f"{prefix}{key}"
        if is_array:
            for item in value:
                out += f"\n[[{name}]]\n" + to_toml(item, name + ".")
        else:
            out += f"\n[{name}]\n" + to_toml(value, name + ".")
    return out


class DaemonError(AssertionError):
    """lwm2md misbehaved at start or stop."""


class Lwm2md:
    """One lwm2md process with its own configuration, state directory and log file."""

    def __init__(
        self,
        server: Lwm2mServer,
        workdir: Path,
        overrides: dict[str, Any] | None = None,
        binary: Path | None = None,
    ):
        self.server = server
        self.binary = binary or binary_path()
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.marker_dir = workdir / "markers"
        self.config_path = workdir / "config.toml"
        self.log_path = workdir / "lwm2md.log"
        self.endpoint = f"urn:dev:os:lwm2md-interop-{secrets.token_hex(4)}"
        self.config = deep_merge(
            base_config(server.uri, self.state_dir, self.marker_dir, self.endpoint), overrides or {}
        )
        self.endpoint = self.config["agent"]["endpoint"]
        self.proc: asyncio.subprocess.Process | None = None
        self.registration: Event | None = None
        #: Teardown checks for a de-registration unless a test clears this.
        self.expect_deregistration = True
        #: Extra environment for the process (e.g. NOTIFY_SOCKET for the systemd tests).
        self.extra_env: dict[str, str] = {}
        #: Argv prefix the binary runs under (e.g. a mount namespace and chroot, see
        #: ``loop_machine.py``); it must exec the binary, so the PID and signals stay its own.
        self.wrapper: list[str] = []

    @property
    def server_config(self) -> dict[str, Any]:
        """The (single) ``[[server]]`` table."""
        return self.config["server"][0]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log_text(self) -> str:
        """Everything the daemon wrote to stdout/stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log file)"

    async def start(self) -> None:
        """Write the configuration and start the process (does not wait for registration)."""
        if not self.binary.is_file():
            raise DaemonError(
                f"lwm2md binary not found at {self.binary}: run `cargo build` or set LWM2MD_BIN"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(to_toml(self.config))
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}  # log to stderr
        env.setdefault("RUST_BACKTRACE", "1")
        env.update(self.extra_env)
        with open(self.log_path, "ab") as logfile:
            self.proc = await asyncio.create_subprocess_exec(
                *self.wrapper,
                str(self.binary),
                "--config",
                str(self.config_path),
                "--state-dir",
                str(self.state_dir),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
            )

    async def watch(self, awaitable, what: str):
        """Await ``awaitable`` but fail at once (with the log) if the process exits meanwhile."""
        task = asyncio.ensure_future(awaitable)
        exited = asyncio.ensure_future(self.proc.wait())
        try:
            done, _ = await asyncio.wait({task, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (task, exited):
                if not t.done():
                    t.cancel()
        if task in done:
            return task.result()  # re-raises EventTimeout etc.
        raise DaemonError(
            f"{what} not seen: lwm2md exited with status {self.proc.returncode}\n"
            f"--- lwm2md log (tail) ---\n{self.log_text()[-4000:]}"
        )

    async def wait_registered(self, timeout: float = REGISTRATION_TIMEOUT) -> Event:
        """Wait for the daemon's Register; fail fast (with the log) if the process exits first."""
        try:
            self.registration = await self.watch(
                self.server.wait_registration(timeout, ep=self.endpoint), "registration"
            )
        except EventTimeout:
            raise EventTimeout(
                f"registration not seen within {timeout} s from endpoint {self.endpoint} "
                f"(lwm2md pid {self.proc.pid} still running)\n--- lwm2md log (tail) ---\n"
                f"{self.log_text()[-4000:]}\n--- server events ---\n{self.server.describe_events()}"
            ) from None
        return self.registration

    async def wait_bootstrap_request(
        self, bootstrap_server, timeout: float = REGISTRATION_TIMEOUT, **kw
    ) -> Event:
        """Wait for this daemon's next Bootstrap-Request at ``bootstrap_server`` (a
        ``BootstrapServer``); fail fast with the log if the process exits first."""
        try:
            return await self.watch(
                bootstrap_server.wait_request(timeout, ep=self.endpoint, **kw), "Bootstrap-Request"
            )
        except EventTimeout:
            raise EventTimeout(
                f"Bootstrap-Request not seen within {timeout} s from endpoint {self.endpoint} "
                f"(lwm2md pid {self.proc.pid} still running)\n--- lwm2md log (tail) ---\n"
                f"{self.log_text()[-4000:]}\n--- bootstrap server events ---\n"
                f"{bootstrap_server.describe_events()}"
            ) from None

    async def terminate(self, timeout: float = EXIT_TIMEOUT) -> int:
        """SIGTERM; return the exit status, or kill and fail if it takes longer than ``timeout``."""
        if not self.running:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()
            raise DaemonError(f"lwm2md did not exit within {timeout} s of SIGTERM") from None

    async def kill(self) -> None:
        """SIGKILL and reap (no-op if the process has ended)."""
        if self.running:
            self.proc.kill()
            await self.proc.wait()

    def marker(self, name: str) -> Path:
        """Path of a file the configured reboot / factory-reset commands touch."""
        return self.marker_dir / name

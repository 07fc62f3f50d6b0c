"""A stand-in for the lwm2md binary with the Bootstrap interface, for dry runs of
test_bootstrap.py only (``LWM2MD_BIN`` pointing at a wrapper that runs this file).

Reads the same ``--config`` TOML as lwm2md (``[agent]``, ``[coap]``, ``[registration]``,
``[[server]]``, ``[bootstrap]``) and runs ``FakeBootstrapClient`` with its state in
``--state-dir``; SIGTERM de-registers and exits 0. It checks the tests' logic, not lwm2md.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_bootstrap_client import FakeBootstrapClient  # noqa: E402


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args()
    config = tomllib.loads(Path(args.config).read_text())
    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    bootstrap = config.get("bootstrap", {})
    coap = config.get("coap", {})
    registration = config.get("registration", {})
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    client = await FakeBootstrapClient(
        config["agent"]["endpoint"],
        bootstrap_uri=bootstrap.get("uri"),
        servers=config.get("server", []),
        hold_off=bootstrap.get("hold_off", 0),
        fallback_after=bootstrap.get("fallback_after", 3),
        bs_timeout=bootstrap.get("timeout", 247),
        retry_initial=registration.get("retry_initial", 15),
        retry_max=registration.get("retry_max", 3600),
        ack_timeout=coap.get("ack_timeout", 2.0),
        ack_random_factor=coap.get("ack_random_factor", 1.5),
        max_retransmit=coap.get("max_retransmit", 4),
        state_file=state_dir / "fake-bootstrap.json",
    ).start()
    await stop.wait()
    await client.shutdown()
    print("de-registered, exiting", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

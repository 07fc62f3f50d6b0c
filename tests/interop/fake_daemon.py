"""A stand-in for the lwm2md binary, used only by the harness self-tests.

Reads the same ``--config`` TOML as lwm2md, registers ``FakeLwm2mClient`` with the first
``[[server]]`` and de-registers on SIGTERM. It checks the launcher and the fixture plumbing,
not LwM2M behaviour.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_client import FakeLwm2mClient  # noqa: E402


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args()
    config = tomllib.loads(Path(args.config).read_text())
    server = config["server"][0]
    # The handler goes in before Register: a SIGTERM right after registering must still
    # lead to a De-register (the fixtures check for it).
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    client = await FakeLwm2mClient(
        server["uri"], config["agent"]["endpoint"], lifetime=server["lifetime"]
    ).start()
    resp = await client.register()
    print(f"registered: {resp.code}", file=sys.stderr, flush=True)
    await stop.wait()
    await client.deregister()
    await client.stop()
    print("de-registered, exiting", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

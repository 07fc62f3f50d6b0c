#!/usr/bin/env python3
"""An emulated slow, lossy link for the benchmarks, in user space: a relay on 127.0.0.1 that
delays every datagram (UDP) or every piece of a stream (TCP) by DELAY_MS in each direction and
drops LOSS percent of the datagrams (TCP is delayed only: its losses are the kernel's business).

Used instead of `tc netem` where the kernel lacks sch_netem (CONFIG_NET_SCH_NETEM). Both the
daemon and the reference client go through the same relay to the same server.

Usage: link.py udp|tcp LISTEN_PORT TARGET_PORT DELAY_MS LOSS_PERCENT [SEED]
"""

from __future__ import annotations

import asyncio
import random
import sys

HOST = "127.0.0.1"


class UdpRelay:
    """One upstream socket per client address, datagrams delayed and dropped independently."""

    def __init__(self, target: int, delay: float, loss: float, rng: random.Random):
        self.target, self.delay, self.loss, self.rng = target, delay, loss, rng
        self.front: asyncio.DatagramTransport | None = None
        self.upstreams: dict[tuple, asyncio.DatagramTransport] = {}

    def later(self, send, data: bytes) -> None:
        if self.rng.random() * 100 < self.loss:
            return
        asyncio.get_running_loop().call_later(self.delay, send, data)

    async def from_client(self, data: bytes, client: tuple) -> None:
        up = self.upstreams.get(client)
        if up is None:
            relay = self

            class Back(asyncio.DatagramProtocol):
                def datagram_received(self, d, _addr):
                    relay.later(lambda x: relay.front.sendto(x, client), d)

            up, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                Back, remote_addr=(HOST, self.target)
            )
            self.upstreams[client] = up
        self.later(up.sendto, data)


async def udp(listen: int, target: int, delay: float, loss: float, rng: random.Random) -> None:
    relay = UdpRelay(target, delay, loss, rng)

    class Front(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            asyncio.ensure_future(relay.from_client(data, addr))

    relay.front, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        Front, local_addr=(HOST, listen)
    )
    await asyncio.Event().wait()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copies with a fixed delay per piece, keeping the order (a queue drained by one task)."""
    queue: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def drain():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()

    task = asyncio.ensure_future(drain())
    while True:
        data = await reader.read(65536)
        await queue.put((loop.time() + delay, data))
        if not data:
            break
    await task


async def tcp(listen: int, target: int, delay: float) -> None:
    async def handle(cr, cw):
        try:
            ur, uw = await asyncio.open_connection(HOST, target)
            await asyncio.gather(pipe(cr, uw, delay), pipe(ur, cw, delay))
        except (ConnectionError, OSError):
            cw.close()

    server = await asyncio.start_server(handle, HOST, listen)
    async with server:
        await server.serve_forever()


def main() -> None:
    kind, listen, target, delay_ms, loss = sys.argv[1:6]
    rng = random.Random(int(sys.argv[6]) if len(sys.argv) > 6 else 1)
    delay = float(delay_ms) / 1000
    if kind == "udp":
        asyncio.run(udp(int(listen), int(target), delay, float(loss), rng))
    else:
        asyncio.run(tcp(int(listen), int(target), delay))


if __name__ == "__main__":
    main()

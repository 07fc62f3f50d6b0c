"""Byte-level CoAP (RFC 7252) helpers for malformed-input tests.

aiocoap refuses to build broken messages, so the bad-input tests assemble datagrams here.
``encode`` writes a well-formed message from parts; the tests then break it on purpose.
``decode`` parses a reply strictly (used with the plain UDP socket).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

CON, NON, ACK, RST = 0, 1, 2, 3
TYPE_NAMES = {CON: "CON", NON: "NON", ACK: "ACK", RST: "RST"}

GET, POST, PUT, DELETE = 0x01, 0x02, 0x03, 0x04
EMPTY = 0x00

OPT_OBSERVE = 6
OPT_URI_PATH = 11
OPT_CONTENT_FORMAT = 12
OPT_URI_QUERY = 15
OPT_ACCEPT = 17
OPT_BLOCK2 = 23
OPT_BLOCK1 = 27
OPT_SIZE1 = 60


def code(class_: int, detail: int) -> int:
    """``code(4, 2)`` → the code byte of 4.02."""
    return (class_ << 5) | detail


def code_str(code_byte: int) -> str:
    """``0x82`` → ``"4.02"``."""
    return f"{code_byte >> 5}.{code_byte & 0x1F:02d}"


def uint_bytes(value: int) -> bytes:
    """Minimal big-endian encoding of an option uint (0 → empty)."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""


def block_value(num: int, more: bool, szx: int) -> bytes:
    """Block1/Block2 option value: NUM | M | SZX."""
    return uint_bytes((num << 4) | (int(more) << 3) | szx)


def _nibble(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes([value - 13])
    return 14, (value - 269).to_bytes(2, "big")


def encode_options(options: list[tuple[int, bytes]]) -> bytes:
    """Delta-encode options (sorted stably by number)."""
    out = b""
    last = 0
    for number, value in sorted(options, key=lambda o: o[0]):
        d, d_ext = _nibble(number - last)
        ln, l_ext = _nibble(len(value))
        out += bytes([(d << 4) | ln]) + d_ext + l_ext + value
        last = number
    return out


def encode(
    mtype: int,
    code_byte: int,
    mid: int,
    token: bytes = b"",
    options: list[tuple[int, bytes]] = (),
    payload: bytes = b"",
    *,
    version: int = 1,
    tkl: int | None = None,
) -> bytes:
    """A CoAP datagram; ``tkl`` and ``version`` can be forced to invalid values."""
    tkl = len(token) if tkl is None else tkl
    header = bytes([(version << 6) | (mtype << 4) | tkl, code_byte]) + mid.to_bytes(2, "big")
    body = header + token + encode_options(list(options))
    if payload:
        body += b"\xff" + payload
    return body


def path_options(path: str) -> list[tuple[int, bytes]]:
    """``"/3/0/0"`` → Uri-Path options."""
    return [(OPT_URI_PATH, seg.encode()) for seg in path.split("/") if seg]


class MalformedMessage(ValueError):
    """The datagram is not valid CoAP."""


@dataclass
class RawMessage:
    """A decoded datagram."""

    version: int
    mtype: int
    code: int
    mid: int
    token: bytes
    options: list[tuple[int, bytes]] = field(default_factory=list)
    payload: bytes = b""

    @property
    def code_str(self) -> str:
        return code_str(self.code)

    def option(self, number: int) -> bytes | None:
        """The first value of option ``number`` or None."""
        for n, v in self.options:
            if n == number:
                return v
        return None


def decode(data: bytes) -> RawMessage:
    """Parse a datagram strictly (RFC 7252 §3)."""
    if len(data) < 4:
        raise MalformedMessage("shorter than the 4-byte header")
    version, mtype, tkl = data[0] >> 6, (data[0] >> 4) & 3, data[0] & 0xF
    if tkl > 8:
        raise MalformedMessage(f"token length {tkl}")
    if len(data) < 4 + tkl:
        raise MalformedMessage("truncated token")
    msg = RawMessage(version, mtype, data[1], int.from_bytes(data[2:4], "big"), data[4 : 4 + tkl])
    pos, number = 4 + tkl, 0
    while pos < len(data):
        if data[pos] == 0xFF:
            if pos + 1 == len(data):
                raise MalformedMessage("payload marker without payload")
            msg.payload = data[pos + 1 :]
            break
        delta, length = data[pos] >> 4, data[pos] & 0xF
        pos += 1
        if delta == 15 or length == 15:
            raise MalformedMessage("reserved option nibble 15")
        values = []
        for nib in (delta, length):
            if nib == 13:
                if pos >= len(data):
                    raise MalformedMessage("truncated option header")
                values.append(data[pos] + 13)
                pos += 1
            elif nib == 14:
                if pos + 2 > len(data):
                    raise MalformedMessage("truncated option header")
                values.append(int.from_bytes(data[pos : pos + 2], "big") + 269)
                pos += 2
            else:
                values.append(nib)
        number += values[0]
        if pos + values[1] > len(data):
            raise MalformedMessage("truncated option value")
        msg.options.append((number, data[pos : pos + values[1]]))
        pos += values[1]
    return msg


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue):
        self.queue = queue

    def datagram_received(self, data, addr):
        self.queue.put_nowait((data, addr))


class RawUdpPeer:
    """A plain UDP socket on 127.0.0.1 (a peer that is *not* the LwM2M server)."""

    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.transport = None

    async def start(self) -> RawUdpPeer:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self.queue), local_addr=("127.0.0.1", 0)
        )
        return self

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)

    async def recv(self, timeout: float) -> bytes | None:
        """The next datagram, or None after ``timeout`` seconds."""
        try:
            data, _ = await asyncio.wait_for(self.queue.get(), timeout)
            return data
        except TimeoutError:
            return None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

"""A DTLS 1.2 front for the Python LwM2M test server, on mbedTLS (``python-mbedtls``).

aiocoap 0.4.17 cannot be a DTLS server without extra native packages (its ``tinydtls_server``
transport is experimental and PSK only), and the daemon's DTLS must be checked against a stack
that is *not* the one it uses itself (webrtc-rs ``dtls``). So the unchanged aiocoap server stays
plaintext on 127.0.0.1 and this relay terminates DTLS in front of it:

    lwm2md ──DTLS/UDP──▶ DtlsFront (mbedTLS server) ──CoAP/UDP──▶ Lwm2mServer (aiocoap)

* The front listens on ``coaps://127.0.0.1:<port>``. Each DTLS client address gets its own
  plaintext UDP socket towards the aiocoap server, so the server sees one distinct remote per
  client and its Device Management requests (sent to the address the client registered from)
  come back through that socket, are encrypted and go to the right client.
* mbedTLS runs in memory-buffer mode (``ServerContext.wrap_buffers``): a datagram from the client
  is fed in, whatever mbedTLS wants to send is cut back into datagrams at record boundaries.
  HelloVerifyRequest cookies are on (python-mbedtls does not allow them off).
* A ClientHello with message_seq 0 from a known address starts a fresh mbedTLS context (the
  daemon re-handshakes from the same port after a failure or a lost association); the plaintext
  socket of that address is kept, so the server still sees the same remote.
* Everything is recorded for the tests: every datagram both ways with its parsed record headers
  (so a test can prove the traffic was encrypted), every decrypted datagram both ways (so a test
  can prove the server's messages went through the relay), handshakes with the negotiated cipher
  suite, the PSK identity the client presented and its certificate, and every failure.

mbedTLS only retransmits its own handshake flights when it is polled after a timer expires; this
front polls only when datagrams arrive. On loopback nothing is lost, and a client that
retransmits its flight still gets the server's flight again (mbedTLS answers retransmissions).

Certificates and keys are made with the ``openssl`` command line (``make_pki``): a throwaway CA,
a server certificate and a client certificate, all ECDSA P-256, keys as PKCS#8 PEM.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mbedtls import pk, x509
from mbedtls import tls as mtls
from mbedtls.exceptions import TLSError

log = logging.getLogger("dtls_front")

Address = tuple[str, int]

# DTLS record layer (RFC 6347 §4.1): type(1) version(2) epoch(2) sequence(6) length(2).
RECORD_HEADER = 13
CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA = 20, 21, 22, 23
CONTENT_TYPES = {CHANGE_CIPHER_SPEC: "ccs", ALERT: "alert", HANDSHAKE: "handshake", APPLICATION_DATA: "data"}
DTLS_VERSIONS = {0xFEFF: "1.0", 0xFEFD: "1.2"}
CLIENT_HELLO = 1
#: Largest datagram the front sends; records are never split (loopback takes anything).
MAX_DATAGRAM = 1400
#: mbedTLS error codes (positive, as python-mbedtls reports them).
ERR_PEER_CLOSE_NOTIFY = 0x7880

#: The cipher suites lwm2md offers, in its order (README "DTLS"), in mbedTLS spelling.
PSK_SUITES = (
    "TLS-PSK-WITH-AES-128-CCM-8",
    "TLS-PSK-WITH-AES-128-CCM",
    "TLS-PSK-WITH-AES-128-GCM-SHA256",
)
CERT_SUITES = (
    "TLS-ECDHE-ECDSA-WITH-AES-128-CCM-8",
    "TLS-ECDHE-ECDSA-WITH-AES-128-CCM",
    "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256",
)

#: IANA cipher suite IDs (RFC 6655, RFC 7251, RFC 5487) of the suites above.
SUITE_IDS = {
    "TLS-PSK-WITH-AES-128-CCM-8": 0xC0A8,
    "TLS-PSK-WITH-AES-128-CCM": 0xC0A4,
    "TLS-PSK-WITH-AES-128-GCM-SHA256": 0x00A8,
    "TLS-ECDHE-ECDSA-WITH-AES-128-CCM-8": 0xC0AE,
    "TLS-ECDHE-ECDSA-WITH-AES-128-CCM": 0xC0AC,
    "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256": 0xC02B,
}

#: The host name on the server certificate by default; the daemon is told to expect it
#: (``server_name``) because the URI holds an IP address.
SERVER_NAME = "lwm2m.interop.test"
PSK_IDENTITY = "lwm2md-interop"


# --- the record layer, as seen on the wire ----------------------------------------------------


@dataclass(frozen=True)
class Record:
    """The header of one DTLS record (plus the handshake header fields where readable)."""

    content_type: int
    version: int
    epoch: int
    sequence: int
    length: int
    #: For plaintext (epoch 0) handshake records: msg_type and message_seq.
    handshake_type: int | None = None
    message_seq: int | None = None
    #: For plaintext (epoch 0) alerts: (level, description); level 2 = fatal.
    alert: tuple[int, int] | None = None

    @property
    def kind(self) -> str:
        return CONTENT_TYPES.get(self.content_type, str(self.content_type))

    def __str__(self) -> str:
        detail = f"/{self.handshake_type}" if self.handshake_type is not None else ""
        if self.alert is not None:
            detail = f"/{self.alert[0]}.{self.alert[1]}"
        return f"{self.kind}{detail}@e{self.epoch}#{self.sequence}({self.length})"


class RecordError(ValueError):
    """A datagram that is not a sequence of whole DTLS records."""


def split_records(datagram: bytes) -> Iterator[tuple[Record, bytes]]:
    """Yield (header, whole record bytes) for each record; RecordError if anything is left over."""
    pos = 0
    while pos < len(datagram):
        if len(datagram) - pos < RECORD_HEADER:
            raise RecordError(f"{len(datagram) - pos} trailing bytes, shorter than a record header")
        ctype, version, epoch, seq_hi, seq_lo, length = struct.unpack_from("!BHHHIH", datagram, pos)
        end = pos + RECORD_HEADER + length
        if end > len(datagram):
            raise RecordError(f"record claims {length} bytes, {len(datagram) - pos - RECORD_HEADER} present")
        body = pos + RECORD_HEADER
        hs_type = msg_seq = alert = None
        if ctype == HANDSHAKE and epoch == 0 and length >= 6:
            hs_type = datagram[body]
            msg_seq = struct.unpack_from("!H", datagram, body + 4)[0]
        if ctype == ALERT and epoch == 0 and length == 2:
            alert = (datagram[body], datagram[body + 1])
        record = Record(ctype, version, epoch, (seq_hi << 32) | seq_lo, length, hs_type, msg_seq, alert)
        yield record, datagram[pos:end]
        pos = end


def parse_records(datagram: bytes) -> list[Record]:
    """The record headers of a datagram (RecordError if it is not made of whole records)."""
    return [record for record, _ in split_records(datagram)]


def client_hello_suites(record: bytes) -> list[int]:
    """The cipher suite IDs a ClientHello record offers, in the client's order (RFC 5246 §7.4.1.2,
    RFC 6347 §4.2.1: DTLS adds message_seq/fragment fields and the cookie). Unfragmented only."""
    pos = RECORD_HEADER + 12  # record header, DTLS handshake header
    pos += 2 + 32  # client_version, random
    pos += 1 + record[pos]  # session_id
    pos += 1 + record[pos]  # cookie
    (length,) = struct.unpack_from("!H", record, pos)
    return list(struct.unpack_from(f"!{length // 2}H", record, pos + 2))


# --- credentials ------------------------------------------------------------------------------


class RecordingPskStore(Mapping[str, bytes]):
    """The server's PSK table; remembers every identity mbedTLS looked up.

    python-mbedtls does not expose the identity a client presented, but its PSK callback looks
    the identity up in this mapping, so recording the lookups tells the tests which identity
    the daemon sent.
    """

    def __init__(self, keys: Mapping[str, bytes]):
        self._keys = dict(keys)
        self.lookups: list[str] = []

    def __getitem__(self, identity: str) -> bytes:
        self.lookups.append(identity)
        return self._keys[identity]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


@dataclass
class Pki:
    """Throwaway certificates: a CA, a server certificate and a client certificate (P-256)."""

    dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    server_host: str
    client_cert: Path
    client_key: Path
    client_cn: str


_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:{server_host}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def _openssl(*args: str | Path) -> None:
    done = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed:\n{done.stderr}")


def make_pki(
    directory: Path,
    *,
    server_host: str = SERVER_NAME,
    client_cn: str = "lwm2md-interop-client",
    ca_name: str = "ca",
) -> Pki:
    """Create a CA, a server certificate for ``server_host`` (subjectAltName DNS) and a client
    certificate with the ``openssl`` CLI. Keys are PKCS#8 PEM (what the daemon reads), mode 0600."""
    directory.mkdir(parents=True, exist_ok=True)
    cnf = directory / "openssl.cnf"
    cnf.write_text(_OPENSSL_CNF.format(server_host=server_host))

    def key(name: str) -> Path:
        path = directory / f"{name}.key"
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
        path.chmod(0o600)
        return path

    ca_key, server_key, client_key = key(ca_name), key("server"), key("client")
    ca_cert = directory / f"{ca_name}.pem"
    _openssl(
        "req", "-new", "-x509", "-config", cnf, "-extensions", "ca_ext", "-key", ca_key,
        "-subj", f"/CN=lwm2md interop {ca_name}", "-days", "2", "-out", ca_cert,
    )  # fmt: skip

    def issue(name: str, subject: str, ext: str) -> Path:
        csr, cert = directory / f"{name}.csr", directory / f"{name}.pem"
        key_file = directory / f"{name}.key"
        _openssl("req", "-new", "-config", cnf, "-key", key_file, "-subj", subject, "-out", csr)
        _openssl(
            "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-set_serial",
            str(int.from_bytes(os.urandom(8), "big") >> 1), "-days", "2", "-sha256",
            "-extfile", cnf, "-extensions", ext, "-out", cert,
        )  # fmt: skip
        return cert

    server_cert = issue("server", f"/CN={server_host}", "server_ext")
    client_cert = issue("client", f"/CN={client_cn}", "client_ext")
    return Pki(
        directory, ca_cert, ca_key, server_cert, server_key, server_host, client_cert, client_key, client_cn
    )


# --- the relay ----------------------------------------------------------------------------------


@dataclass
class Datagram:
    """One datagram on the DTLS side. ``direction``: "in" = from the client, "out" = to it."""

    time: float
    direction: str
    client: Address
    data: bytes
    records: list[Record]
    malformed: str | None = None

    def __str__(self) -> str:
        recs = " ".join(map(str, self.records)) or self.malformed
        peer = f"{self.client[0]}:{self.client[1]}"
        return f"[{self.time:.3f}] {self.direction} {peer} {len(self.data)} B: {recs}"


@dataclass
class Plaintext:
    """One datagram the relay decrypted ("up": client → server) or encrypted ("down")."""

    time: float
    direction: str
    client: Address
    data: bytes


@dataclass
class FrontEvent:
    """Something that happened to a client's DTLS state.

    kind: ``client-hello`` (a new handshake attempt), ``hello-verify`` (cookie sent),
    ``handshake`` (established: ``cipher``, ``identity``, ``peer_certificate``), ``failure``
    (``error``: the mbedTLS error), ``close-notify`` (the client closed the association),
    ``dropped`` (a server datagram for a client without an association).
    """

    kind: str
    time: float
    client: Address
    cipher: str | None = None
    identity: str | None = None
    peer_certificate: str | None = None
    error: str | None = None
    error_code: int | None = None

    def __str__(self) -> str:
        extra = " ".join(
            f"{k}={v!r}"
            for k, v in (("cipher", self.cipher), ("identity", self.identity), ("error", self.error))
            if v is not None
        )
        return f"[{self.time:.3f}] {self.kind} {self.client[0]}:{self.client[1]} {extra}"


class _Client:
    """One DTLS client address: its mbedTLS context (replaced on a new handshake) and its
    plaintext socket towards the LwM2M server (kept for the life of the front)."""

    def __init__(self, front: DtlsFront, address: Address):
        self.front = front
        self.address = address
        self.tls: mtls.TLSWrappedBuffer | None = None
        self.state = "idle"  # idle, handshake, established, failed, closed
        self.last_hello: bytes | None = None
        self._lookups_before = 0
        self.upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.upstream.bind((front.host, 0))
        self.upstream.connect(front.upstream)
        self.upstream.setblocking(False)
        self.upstream_address: Address = self.upstream.getsockname()
        front._loop.add_reader(self.upstream.fileno(), self._from_server)

    def close(self) -> None:
        self.front._loop.remove_reader(self.upstream.fileno())
        self.upstream.close()

    @property
    def _cookie_param(self) -> bytes:
        return f"{self.address[0]}:{self.address[1]}".encode()

    def _new_context(self) -> None:
        self.tls = self.front._context.wrap_buffers()
        self.tls.setcookieparam(self._cookie_param)
        self.state = "handshake"
        self.last_hello = None
        store = self.front._psk_store
        self._lookups_before = len(store.lookups) if store is not None else 0

    def _identity(self) -> str | None:
        """The PSK identity the client presented in the current handshake, if any."""
        store = self.front._psk_store
        if store is None or len(store.lookups) <= self._lookups_before:
            return None
        return store.lookups[-1]

    # client → server

    def from_client(self, data: bytes, records: list[tuple[Record, bytes]]) -> None:
        hello = next((raw for rec, raw in records if rec.handshake_type == CLIENT_HELLO), None)
        if hello is not None:
            self.front.client_hellos.append((self.front._now(), self.address, hello))
            msg_seq = next(rec.message_seq for rec, _ in records if rec.handshake_type == CLIENT_HELLO)
            retransmitted = hello[RECORD_HEADER:] == (self.last_hello or b"")[RECORD_HEADER:]
            if self.tls is None or (msg_seq == 0 and not retransmitted):
                self._new_context()
                self.front._event("client-hello", self.address)
            self.last_hello = hello
        if self.tls is None or self.state in ("failed", "closed"):
            return  # no association: mbedTLS would only drop it
        self.tls.receive_from_network(data)
        if self.state == "handshake":
            self._handshake()
        if self.state == "established":
            self._read_application_data()

    def _handshake(self) -> None:
        tls = self.tls
        while tls._handshake_state is not mtls.HandshakeStep.HANDSHAKE_OVER:
            try:
                tls.do_handshake()
            except mtls.WantReadError:
                self._flush()
                return
            except mtls.WantWriteError:
                self._flush()
            except mtls.HelloVerifyRequest:
                # mbedTLS reset the context after queueing the HelloVerifyRequest; the ClientHello
                # with the cookie comes next, to the same (reset) context.
                self._flush()
                tls.setcookieparam(self._cookie_param)
                self.front._event("hello-verify", self.address)
                return
            except TLSError as e:
                self._flush()  # the alert mbedTLS queued, if any
                self._fail(e)
                return
        self._flush()
        self.state = "established"
        cert = tls.getpeercert(binary_form=False)
        self.front._event(
            "handshake",
            self.address,
            cipher=tls.cipher(),
            identity=self._identity(),
            peer_certificate=str(cert) if cert is not None else None,
        )

    def _read_application_data(self) -> None:
        buf = bytearray(65536)
        while True:
            try:
                n = self.tls.readinto(buf, len(buf))
            except mtls.WantReadError:
                break
            except mtls.WantWriteError:
                self._flush()
                continue
            except mtls.RaggedEOF:
                self.state = "closed"
                self.front._event("close-notify", self.address)
                break
            except TLSError as e:
                self._flush()
                if e.err == ERR_PEER_CLOSE_NOTIFY:
                    self.state = "closed"
                    self.front._event("close-notify", self.address)
                else:
                    self._fail(e)
                break
            plain = bytes(buf[:n])
            self.front.plaintext.append(Plaintext(self.front._now(), "up", self.address, plain))
            try:
                self.upstream.send(plain)
            except OSError as e:
                log.warning("relay to the LwM2M server failed: %r", e)
        self._flush()  # e.g. a resent Finished flight

    def _fail(self, error: TLSError) -> None:
        self.state = "failed"
        self.front._event(
            "failure",
            self.address,
            identity=self._identity(),
            error=str(error),
            error_code=getattr(error, "err", None),
        )

    # server → client

    def _from_server(self) -> None:
        while True:
            try:
                plain = self.upstream.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ICMP port unreachable after the server stopped
                return
            if self.state != "established":
                self.front._event("dropped", self.address)
                continue
            self.front.plaintext.append(Plaintext(self.front._now(), "down", self.address, plain))
            try:
                self.tls.write(plain)
            except TLSError as e:
                self._fail(e)
                continue
            self._flush()

    def _flush(self) -> None:
        """Send what mbedTLS queued, cut into datagrams at record boundaries."""
        tls = self.tls
        pending = len(tls._output_buffer)
        if not pending:
            return
        data = tls.peek_outgoing(pending)
        tls.consume_outgoing(pending)
        try:
            records = list(split_records(data))
        except RecordError:  # cannot happen with mbedTLS; send it as it is
            self.front._send(data, self.address)
            return
        datagram = b""
        for _, raw in records:
            if datagram and len(datagram) + len(raw) > MAX_DATAGRAM:
                self.front._send(datagram, self.address)
                datagram = b""
            datagram += raw
        if datagram:
            self.front._send(datagram, self.address)


class _FrontProtocol(asyncio.DatagramProtocol):
    def __init__(self, front: DtlsFront):
        self.front = front

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self.front._from_client(data, (addr[0], addr[1]))
        except Exception:  # never let a harness bug kill the relay
            log.exception("DTLS front failed on a datagram from %s", addr)


class DtlsFront:
    """A DTLS 1.2 server (mbedTLS) relaying plaintext CoAP to ``upstream`` (the aiocoap server).

    Give either ``psk`` (identity → key) or ``certificate_chain`` (PEM paths: the server
    certificate first, then any intermediates) with ``private_key``; ``trust_anchor`` (PEM)
    makes the front require and verify a client certificate. ``ciphers`` restricts the cipher
    suites (mbedTLS names; default: the ones lwm2md offers for the mode, in its order).
    """

    def __init__(
        self,
        upstream: Address,
        *,
        psk: Mapping[str, bytes] | None = None,
        certificate_chain: list[Path] | None = None,
        private_key: Path | None = None,
        trust_anchor: Path | None = None,
        ciphers: tuple[str, ...] | None = None,
        host: str = "127.0.0.1",
    ):
        if (psk is None) == (certificate_chain is None):
            raise ValueError("give either psk or certificate_chain")
        self.upstream = upstream
        self.host = host
        self.mode = "psk" if psk is not None else "certificate"
        self.ciphers = ciphers or (PSK_SUITES if psk is not None else CERT_SUITES)
        self._psk_store = RecordingPskStore(psk) if psk is not None else None
        if psk is not None:
            config = mtls.DTLSConfiguration(
                ciphers=self.ciphers,
                lowest_supported_version=mtls.DTLSVersion.DTLSv1_2,
                highest_supported_version=mtls.DTLSVersion.DTLSv1_2,
                pre_shared_key_store=self._psk_store,
                validate_certificates=False,
            )
        else:
            chain = tuple(x509.CRT.from_file(p) for p in certificate_chain)
            key = pk.ECC.from_file(private_key)
            config = mtls.DTLSConfiguration(
                ciphers=self.ciphers,
                lowest_supported_version=mtls.DTLSVersion.DTLSv1_2,
                highest_supported_version=mtls.DTLSVersion.DTLSv1_2,
                certificate_chain=(chain, key),
                trust_store=mtls.TrustStore.from_pem_file(trust_anchor) if trust_anchor else None,
                validate_certificates=trust_anchor is not None,
            )
        self._context = mtls.ServerContext(config)
        self.port: int | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: dict[Address, _Client] = {}
        self._changed: asyncio.Event | None = None
        #: Every datagram on the DTLS side, both ways.
        self.wire: list[Datagram] = []
        #: Every plaintext datagram relayed, both ways.
        self.plaintext: list[Plaintext] = []
        self.events: list[FrontEvent] = []
        #: (time, client, record) of every ClientHello record received.
        self.client_hellos: list[tuple[float, Address, bytes]] = []
        #: The ``[[server]]`` keys a daemon needs to reach this front (set by ``start_test_front``).
        self.client_config: dict[str, Any] = {}
        #: The certificates, in certificate mode (set by ``start_test_front``).
        self.pki: Pki | None = None

    # lifecycle

    async def start(self) -> DtlsFront:
        """Bind 127.0.0.1:<ephemeral>."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _FrontProtocol(self), local_addr=(self.host, 0)
        )
        self.port = self._transport.get_extra_info("sockname")[1]
        return self

    async def stop(self) -> None:
        """Close every socket (no close_notify: the daemon is gone by now)."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    @property
    def uri(self) -> str:
        """``coaps://127.0.0.1:<port>`` for the daemon's configuration."""
        return f"coaps://{self.host}:{self.port}"

    def _now(self) -> float:
        return self._loop.time()

    # relaying

    def _from_client(self, data: bytes, addr: Address) -> None:
        try:
            records = list(split_records(data))
            malformed = None
        except RecordError as e:
            records, malformed = [], str(e)
        self.wire.append(Datagram(self._now(), "in", addr, data, [r for r, _ in records], malformed))
        client = self._clients.get(addr)
        if client is None:
            client = self._clients[addr] = _Client(self, addr)
        client.from_client(data, records)
        self._notify()

    def _send(self, data: bytes, addr: Address) -> None:
        records = parse_records(data) if data else []
        self.wire.append(Datagram(self._now(), "out", addr, data, records))
        if self._transport is not None:
            self._transport.sendto(data, addr)

    def _event(self, kind: str, client: Address, **kw: Any) -> None:
        event = FrontEvent(kind, self._now(), client, **kw)
        log.info("dtls front: %s", event)
        self.events.append(event)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # what the tests look at

    @property
    def upstream_addresses(self) -> set[Address]:
        """The addresses the LwM2M server sees for clients behind this front."""
        return {c.upstream_address for c in self._clients.values()}

    @property
    def client_addresses(self) -> set[Address]:
        """The DTLS clients' own addresses."""
        return {c.address for c in self._clients.values()}

    def events_of(self, kind: str) -> list[FrontEvent]:
        return [e for e in self.events if e.kind == kind]

    def records(self, direction: str, kind: str | None = None) -> list[Record]:
        """All record headers seen in ``direction`` ("in"/"out"), optionally of one kind."""
        return [r for d in self.wire if d.direction == direction for r in d.records if kind in (None, r.kind)]

    def relayed(self, direction: str, predicate: Callable[[bytes], bool] = lambda _: True) -> list[Plaintext]:
        """Plaintext datagrams relayed ``"up"`` or ``"down"`` that satisfy ``predicate``."""
        return [p for p in self.plaintext if p.direction == direction and predicate(p.data)]

    async def wait_event(
        self, kind: str | tuple[str, ...], timeout: float, *, since: int = 0, what: str | None = None
    ) -> FrontEvent:
        """The first event of ``kind`` at index ≥ ``since`` of ``events``; AssertionError on timeout."""
        kinds = (kind,) if isinstance(kind, str) else kind
        deadline = self._now() + timeout
        while True:
            for e in self.events[since:]:
                if e.kind in kinds:
                    return e
            remaining = deadline - self._now()
            if remaining <= 0:
                raise AssertionError(
                    f"{what or kinds} not seen at the DTLS front within {timeout} s\n{self.describe()}"
                )
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until ``condition()`` holds (checked after every datagram and event)."""
        deadline = self._now() + timeout
        while not condition():
            remaining = deadline - self._now()
            if remaining <= 0:
                raise AssertionError(
                    f"{what} not seen at the DTLS front within {timeout} s\n{self.describe()}"
                )
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass

    def assert_encrypted(self, *secrets: bytes) -> None:
        """Everything the client sent is whole DTLS 1.x records, application data only after a
        ChangeCipherSpec (epoch ≥ 1), and none of ``secrets`` (plaintext the client is known to
        have sent, e.g. its endpoint name) appears in the clear on the wire."""
        incoming = [d for d in self.wire if d.direction == "in"]
        assert incoming, "the DTLS front received nothing"
        for d in incoming:
            assert d.malformed is None, f"not DTLS records: {d}: {d.malformed}"
            for r in d.records:
                assert r.version in DTLS_VERSIONS, f"record version {r.version:#06x} in {d}"
                assert r.content_type in CONTENT_TYPES, f"record type {r.content_type} in {d}"
                if r.content_type == APPLICATION_DATA:
                    assert r.epoch >= 1, f"application data in epoch 0 (plaintext) in {d}"
        for d in self.wire:
            for s in secrets:
                assert s not in d.data, f"{s!r} in the clear on the DTLS side: {d}"

    def describe(self, last: int = 60) -> str:
        """Events and the tail of the wire log (for failure reports)."""
        events = "\n".join(map(str, self.events)) or "(no events)"
        wire = "\n".join(map(str, self.wire[-last:])) or "(no datagrams)"
        return (
            f"DTLS front {self.uri} ({self.mode}, {', '.join(self.ciphers)}) → {self.upstream}\n"
            f"events:\n{events}\nlast {last} datagrams:\n{wire}"
        )


# --- the test set-up --------------------------------------------------------------------------


def _write_secret(path: Path, data: bytes) -> Path:
    """A key file the daemon accepts: not readable by group or others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    path.chmod(0o600)
    return path


async def start_test_front(
    upstream: Address,
    workdir: Path,
    mode: str = "psk",
    *,
    ciphers: tuple[str, ...] | None = None,
    client_psk_key: bytes | None = None,
    client_psk_identity: str = PSK_IDENTITY,
    certificate_host: str = SERVER_NAME,
    server_name: str = SERVER_NAME,
    client_trusts_other_ca: bool = False,
) -> DtlsFront:
    """A started front plus the daemon's ``[[server]]`` keys in ``front.client_config``.

    ``psk``: a random 32-character key for ``PSK_IDENTITY``; ``client_psk_key`` /
    ``client_psk_identity`` give the daemon other credentials than the front's.
    ``certificate``: a fresh PKI (``make_pki``) whose server certificate names
    ``certificate_host``; the daemon expects ``server_name`` and trusts the CA (or, with
    ``client_trusts_other_ca``, an unrelated CA). The front requires the client certificate.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if mode == "psk":
        key = os.urandom(16).hex().encode()  # ASCII: "one trailing newline ignored" cannot bite
        front = DtlsFront(upstream, psk={PSK_IDENTITY: key}, ciphers=ciphers)
        key_file = _write_secret(workdir / "psk.key", client_psk_key if client_psk_key is not None else key)
        client = {"security": "psk", "psk_identity": client_psk_identity, "psk_key_file": str(key_file)}
    elif mode == "certificate":
        pki = make_pki(workdir / "pki", server_host=certificate_host)
        front = DtlsFront(
            upstream,
            certificate_chain=[pki.server_cert],
            private_key=pki.server_key,
            trust_anchor=pki.ca_cert,
            ciphers=ciphers,
        )
        front.pki = pki
        anchor = pki.ca_cert
        if client_trusts_other_ca:
            anchor = make_pki(workdir / "other-pki", server_host=certificate_host, ca_name="other-ca").ca_cert
        client = {
            "security": "certificate",
            "certificate_file": str(pki.client_cert),
            "private_key_file": str(pki.client_key),
            "server_certificate_file": str(anchor),
            "server_name": server_name,
        }
    else:
        raise ValueError(f"unknown DTLS mode {mode!r}")
    await front.start()
    front.client_config = {"uri": front.uri, **client}
    return front

"""LwM2M over DTLS 1.2 (``coaps://``) against an independent DTLS stack.

The daemon (webrtc-rs ``dtls`` inside) talks to ``DtlsFront`` (mbedTLS through python-mbedtls,
``dtls_front.py``), which terminates DTLS and relays plaintext CoAP to the unchanged aiocoap
``Lwm2mServer``. Every test checks both ends of the relay, so a daemon that fell back to
plaintext, or a harness that bypassed the front, fails:

* the DTLS side carried only well-formed DTLS records, application data only under epoch ≥ 1,
  and none of the known plaintext (endpoint name, Device strings) in the clear;
* everything the LwM2M server received came from the front's relay sockets, never from the
  daemon's own address, and the messages the tests look at were decrypted by the front.
"""

from __future__ import annotations

import re

import pytest
from aiocoap import Message

from daemon import DEVICE
from dtls_front import (
    CERT_SUITES,
    CLIENT_HELLO,
    PSK_IDENTITY,
    PSK_SUITES,
    SERVER_NAME,
    SUITE_IDS,
    DtlsFront,
    client_hello_suites,
)
from helpers import read_ok, read_text
from lwm2m_codecs import CF_SENML_CBOR, CF_TEXT
from lwm2m_server import Lwm2mServer

#: An Alert record's level for "fatal" (RFC 5246 §7.2).
FATAL = 2
#: mbedTLS errors: "Verification of the message MAC failed" (a wrong key shows up as the client's
#: Finished failing its MAC check) and "Unknown identity received".
ERR_INVALID_MAC = 0x7180
ERR_UNKNOWN_IDENTITY = 0x6C80


def _host_port(remote) -> tuple[str, int]:
    host, port = remote.sockaddr[0], remote.sockaddr[1]
    return (host.removeprefix("::ffff:"), port)


def assert_only_via_front(server: Lwm2mServer, front: DtlsFront) -> None:
    """Every datagram the LwM2M server received came out of the front's relay sockets."""
    assert server.wire, "the LwM2M server received nothing"
    seen = {_host_port(r.message.remote) for r in server.wire}
    assert seen <= front.upstream_addresses, (
        f"the server saw {seen}, the front relays from {front.upstream_addresses}"
    )
    assert not seen & front.client_addresses, "the daemon reached the server directly"


def decrypted(front: DtlsFront, direction: str) -> list[Message]:
    """The CoAP messages the front decrypted (``up``) or encrypted (``down``)."""
    return [Message.decode(p.data) for p in front.relayed(direction)]


def assert_came_through(front: DtlsFront, message: Message, what: str) -> None:
    """``message`` (as the server received it) was decrypted by the front: same MID and token."""
    key = (message.mid, bytes(message.token))
    assert key in {(m.mid, bytes(m.token)) for m in decrypted(front, "up")}, (
        f"{what} (MID {message.mid}, token {bytes(message.token).hex()}) was not decrypted by the front"
    )


def offered_suites(front: DtlsFront) -> list[int]:
    """The cipher suites of the first ClientHello the front received, in the client's order."""
    assert front.client_hellos, "no ClientHello reached the front"
    return client_hello_suites(front.client_hellos[0][2])


def assert_offers_in_order(front: DtlsFront, suites: tuple[str, ...]) -> None:
    """The ClientHello offers ``suites`` (README "DTLS"), in that relative order."""
    offered = offered_suites(front)
    ids = [SUITE_IDS[s] for s in suites]
    missing = [s for s, i in zip(suites, ids) if i not in offered]
    assert not missing, f"ClientHello lacks {missing}; offers {[f'{i:#06x}' for i in offered]}"
    positions = [offered.index(i) for i in ids]
    assert positions == sorted(positions), f"ClientHello offers {suites} out of order: {offered}"


def assert_registered_over_dtls(lwm2md, server: Lwm2mServer, front: DtlsFront) -> None:
    """The Register arrived decrypted through the front, from a relay socket."""
    reg = lwm2md.registration
    assert (reg.method, reg.path, reg.params["ep"]) == ("POST", "/rd", lwm2md.endpoint)
    assert _host_port(reg.remote) in front.upstream_addresses, (
        f"Register from {_host_port(reg.remote)}, not from a relay socket of the front: "
        f"{front.upstream_addresses}"
    )
    register = next(r.message for r in server.wire if r.message.opt.uri_path == ("rd",))
    assert_came_through(front, register, "the Register")
    assert_only_via_front(server, front)
    front.assert_encrypted(lwm2md.endpoint.encode())


def daemon_log_lines(lwm2md, pattern: str) -> list[str]:
    return [line for line in lwm2md.log_text().splitlines() if re.search(pattern, line)]


# --- PSK ------------------------------------------------------------------------------------------


@pytest.mark.dtls("psk")
async def test_psk_registration(lwm2md, server, dtls_front):
    """DTLS-PSK: handshake with the configured identity, the daemon's suites offered in its
    order, Register decrypted by the front; b=U as for coap://."""
    (hs,) = dtls_front.events_of("handshake")
    assert hs.identity == PSK_IDENTITY
    assert hs.cipher == "TLS-PSK-WITH-AES-128-CCM-8", hs
    assert_offers_in_order(dtls_front, PSK_SUITES)
    assert lwm2md.registration.params["b"] == "U"
    assert_registered_over_dtls(lwm2md, server, dtls_front)
    assert dtls_front.records("in", "data") and dtls_front.records("out", "data")
    assert not dtls_front.events_of("failure")


@pytest.mark.parametrize(
    "suite", [pytest.param(s, marks=pytest.mark.dtls("psk", ciphers=(s,)), id=s) for s in PSK_SUITES]
)
async def test_psk_each_cipher_suite(lwm2md, server, client, dtls_front, suite):
    """A server that accepts only one of the offered PSK suites still gets a working association."""
    (hs,) = dtls_front.events_of("handshake")
    assert hs.cipher == suite
    assert await read_text(client, "/3/0/0") == DEVICE["manufacturer"]
    assert_registered_over_dtls(lwm2md, server, dtls_front)
    dtls_front.assert_encrypted(lwm2md.endpoint.encode(), DEVICE["manufacturer"].encode())


@pytest.mark.dtls("psk")
async def test_psk_device_management(lwm2md, server, client, dtls_front):
    """Reads of /3/0 and /3/0/0, a lifetime write (→ Update) and a UTC-offset write, each read back,
    all through the DTLS association."""
    values = await read_ok(client, "/3/0", CF_SENML_CBOR)
    for path, key in (("/3/0/0", "manufacturer"), ("/3/0/1", "model"), ("/3/0/2", "serial")):
        assert values[path] == DEVICE[key], f"{path}: {values.get(path)!r}"
    assert await read_text(client, "/3/0/0") == DEVICE["manufacturer"]

    mark = server.mark()
    resp = await client.write("/1/0/1", b"45", CF_TEXT)
    assert resp.code == "2.04", resp
    update = await server.wait_update(3, since=mark)
    assert update.params == {"lt": "45"}
    assert await read_text(client, "/1/0/1") == "45"

    resp = await client.write("/3/0/14", b"+02:00", CF_TEXT)
    assert resp.code == "2.04", resp
    assert await read_text(client, "/3/0/14") == "+02:00"

    # Each request went down through the front and each response came back decrypted.
    requests_down = {bytes(m.token) for m in decrypted(dtls_front, "down") if m.code.is_request()}
    responses = [r.message for r in server.wire if r.message.code.is_response()]
    assert len(responses) >= 6, [str(r.message) for r in server.wire]
    for response in responses:
        assert_came_through(dtls_front, response, f"response {response}")
        assert bytes(response.token) in requests_down, (
            f"no request with token {bytes(response.token).hex()} went down through the front"
        )
    update_msg = next(r.message for r in server.wire if r.message.opt.uri_query == ("lt=45",))
    assert_came_through(dtls_front, update_msg, "the Update")
    assert_only_via_front(server, dtls_front)
    dtls_front.assert_encrypted(lwm2md.endpoint.encode(), DEVICE["manufacturer"].encode(), b"+02:00")


@pytest.mark.dtls("psk")
async def test_psk_observe(lwm2md, server, client, dtls_front):
    """Observe /3/0/13 (changes every second): notifications arrive over DTLS, then cancel."""
    obs = await client.observe("/3/0/13", accept=CF_TEXT)
    assert obs.established, obs.initial
    await obs.next(1)  # the initial response
    first, second = await obs.take(2, 4)
    assert int(second.payload) > int(first.payload), (first, second)
    notifications = [
        r.message
        for r in server.wire
        if bytes(r.message.token) == obs.token and r.message.opt.observe is not None
    ]
    assert len(notifications) >= 3
    for n in notifications:
        assert_came_through(dtls_front, n, f"notification Observe={n.opt.observe}")
    resp = await client.cancel_observe(obs, "get")
    assert resp.code == "2.05"
    assert_only_via_front(server, dtls_front)
    dtls_front.assert_encrypted(lwm2md.endpoint.encode())


@pytest.mark.dtls("psk")
async def test_sigterm_deregisters_over_dtls(lwm2md, server, dtls_front):
    """SIGTERM → the De-register goes through the association; exit status 0."""
    mark = server.mark()
    assert await lwm2md.terminate() == 0
    dereg = await server.wait_deregistration(1, since=mark)
    assert dereg.reg_id == lwm2md.registration.reg_id
    delete = next(r.message for r in server.wire if r.message.opt.uri_path == ("rd", dereg.reg_id))
    assert_came_through(dtls_front, delete, "the De-register")
    assert_only_via_front(server, dtls_front)


WRONG_KEY = b"0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "what",
    [
        pytest.param("key", marks=pytest.mark.dtls("psk", client_psk_key=WRONG_KEY), id="wrong-key"),
        pytest.param(
            "identity",
            marks=pytest.mark.dtls("psk", client_psk_identity="someone-else"),
            id="unknown-identity",
        ),
    ],
)
async def test_wrong_psk_never_registers(lwm2md_unstarted, server, dtls_front, what):
    """A PSK the server does not share: every handshake fails at the front, the daemon logs the
    DTLS failure and handshakes again after 1 s, then 2 s (back-off); nothing reaches the server."""
    daemon = lwm2md_unstarted

    def three_attempts() -> bool:
        return len(dtls_front.events_of("client-hello")) >= 3 and len(dtls_front.events_of("failure")) >= 2

    await daemon.start()
    await daemon.watch(dtls_front.wait_for(three_attempts, 8, "three handshakes"), "three handshakes")
    failures = dtls_front.events_of("failure")
    if what == "key":
        # Right identity, wrong key: mbedTLS cannot verify the client's Finished.
        expected = (PSK_IDENTITY, ERR_INVALID_MAC)
    else:
        expected = ("someone-else", ERR_UNKNOWN_IDENTITY)
    assert all((f.identity, f.error_code) == expected for f in failures), failures
    assert not dtls_front.events_of("handshake")

    # From a failure to the next handshake: 1 s, then 2 s (README "DTLS": 1, 2, 4 … 60 s).
    starts = [e.time for e in dtls_front.events_of("client-hello")]
    gaps = [starts[1] - failures[0].time, starts[2] - failures[1].time]
    assert 0.8 <= gaps[0] <= 1.6 and 1.7 <= gaps[1] <= 2.8, f"back-off {gaps}"

    warned = daemon_log_lines(daemon, rf"dtls: .*127\.0\.0\.1:{dtls_front.port}.*failed.*next handshake in")
    assert len(warned) >= 2, f"no DTLS failure logged:\n{daemon.log_text()[-3000:]}"
    assert "next handshake in 1s" in warned[0] and "next handshake in 2s" in warned[1], warned
    assert WRONG_KEY.decode() not in daemon.log_text(), "the key was logged"
    assert not server.events_of("register"), server.describe_events()
    assert not server.wire, "something reached the LwM2M server without an association"
    assert not dtls_front.relayed("up")
    assert daemon.running


# --- certificates -----------------------------------------------------------------------------


@pytest.mark.dtls("certificate")
async def test_certificate_registration_and_device_management(lwm2md, server, client, dtls_front):
    """Mutual certificate authentication: the front verified the daemon's client certificate
    against its CA, the daemon verified the front's (name lwm2m.interop.test via server_name);
    ECDHE-ECDSA suites offered in order; Register, reads and a write over the association."""
    (hs,) = dtls_front.events_of("handshake")
    assert hs.cipher == "TLS-ECDHE-ECDSA-WITH-AES-128-CCM-8", hs
    assert hs.peer_certificate is not None, "the daemon presented no client certificate"
    assert f"CN={dtls_front.pki.client_cn}" in hs.peer_certificate, hs.peer_certificate
    assert "issuer name       : CN=lwm2md interop ca" in hs.peer_certificate, hs.peer_certificate
    assert_offers_in_order(dtls_front, CERT_SUITES)
    assert_registered_over_dtls(lwm2md, server, dtls_front)

    assert await read_text(client, "/3/0/0") == DEVICE["manufacturer"]
    values = await read_ok(client, "/3/0", CF_SENML_CBOR)
    assert values["/3/0/17"] == DEVICE["device_type"]
    mark = server.mark()
    assert (await client.write("/1/0/1", b"50", CF_TEXT)).code == "2.04"
    assert (await server.wait_update(3, since=mark)).params == {"lt": "50"}
    assert await read_text(client, "/1/0/1") == "50"
    assert_only_via_front(server, dtls_front)
    dtls_front.assert_encrypted(lwm2md.endpoint.encode(), DEVICE["manufacturer"].encode())


@pytest.mark.parametrize(
    "suite", [pytest.param(s, marks=pytest.mark.dtls("certificate", ciphers=(s,)), id=s) for s in CERT_SUITES]
)
async def test_certificate_each_cipher_suite(lwm2md, server, client, dtls_front, suite):
    """A server that accepts only one of the offered ECDHE-ECDSA suites still gets an association."""
    (hs,) = dtls_front.events_of("handshake")
    assert hs.cipher == suite
    assert await read_text(client, "/3/0/0") == DEVICE["manufacturer"]
    assert_registered_over_dtls(lwm2md, server, dtls_front)


@pytest.mark.parametrize(
    "what",
    [
        pytest.param(
            "name",
            marks=pytest.mark.dtls("certificate", certificate_host="other.interop.test"),
            id="other-host",
        ),
        pytest.param(
            "issuer", marks=pytest.mark.dtls("certificate", client_trusts_other_ca=True), id="other-ca"
        ),
    ],
)
async def test_bad_server_certificate_aborts_handshake(lwm2md_unstarted, server, dtls_front, what):
    """A server certificate for another host name (or from a CA the daemon does not trust): the
    daemon aborts the handshake with a fatal alert before sending its own flight, logs why, tries
    again later, and never registers."""
    daemon = lwm2md_unstarted
    await daemon.start()
    await daemon.watch(
        dtls_front.wait_for(lambda: len(dtls_front.events_of("failure")) >= 2, 5, "two failed handshakes"),
        "two failed handshakes",
    )
    for attempt in {e.client for e in dtls_front.events_of("failure")}:
        sent = [r for d in dtls_front.wire if d.direction == "in" and d.client == attempt for r in d.records]
        alerts = [r.alert for r in sent if r.alert is not None]
        assert alerts and alerts[-1][0] == FATAL, f"no fatal alert from the daemon: {[str(r) for r in sent]}"
        kinds = [(r.kind, r.handshake_type) for r in sent]
        # Aborted after the server's flight: no Certificate (11), ClientKeyExchange (16), CCS, data.
        assert all(k in (("handshake", CLIENT_HELLO), ("alert", None)) for k in kinds), kinds
    assert not dtls_front.events_of("handshake")

    warned = daemon_log_lines(daemon, rf"dtls: handshake with 127\.0\.0\.1:{dtls_front.port} failed")
    assert warned, f"no DTLS failure logged:\n{daemon.log_text()[-3000:]}"
    assert re.search("certificate", warned[0], re.IGNORECASE), warned[0]
    if what == "name":
        assert SERVER_NAME in warned[0] or "other.interop.test" in warned[0], warned[0]
    assert not server.events_of("register"), server.describe_events()
    assert not server.wire, "something reached the LwM2M server without an association"
    assert daemon.running

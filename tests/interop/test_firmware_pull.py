"""Firmware pulls end to end: the server writes a Package URI (/5/0/1), the daemon downloads
the package from an independent server (libcoap's ``coap-server`` for coap://,
``tests/download/range_server.py`` for http://), verifies it into slot B, and the update runs as
for a push. Refused URIs and unreachable servers, cancelling a running pull, and resuming a
pull after the daemon is killed (crash, or power cut) midway.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from firmware import (
    DOWNLOADED, DOWNLOADING, IDLE, R_CANCELLED, R_CONNECTION_LOST, R_INITIAL, R_INTEGRITY,
    R_INVALID_URI, R_UNSUPPORTED_PROTOCOL, RESULT, STATE, URI, VERSION, LibcoapServer,
    RangeServer, SlowCoapRelay, assert_runs, boot_state, flip, free_port, journal, kill9, make_image,
    make_package, payload_start, power_cycle, push_ok, read_int, read_str, slot_bytes,
    snapshot, start_registered, update_and_commit, wait_log, wait_resource,
)
from helpers import assert_still_serving

CF_TEXT = 0
IMAGE_SIZE = 200_000


@pytest.fixture
async def http_server(tmp_path):
    srv = await RangeServer(tmp_path / "www").start()
    yield srv
    await srv.stop()


@pytest.fixture
async def https_server(tmp_path):
    """The same HTTP server behind TLS, with a certificate for ``localhost`` from a throwaway CA
    that no system store holds (``https_server.pki.ca_cert``)."""
    from dtls_front import make_pki

    pki = make_pki(tmp_path / "pki", server_host="localhost")
    srv = await RangeServer(tmp_path / "www-tls", tls=(pki.server_cert, pki.server_key)).start()
    srv.pki = pki
    yield srv
    await srv.stop()


@pytest.fixture
async def coap_server(tmp_path):
    srv = await LibcoapServer(tmp_path / "coap").start()
    yield srv
    await srv.stop()


async def write_uri(client, uri: str):
    resp = await client.write(URI, uri.encode(), CF_TEXT)
    assert resp.code == "2.04", f"Write {URI} {uri!r} → {resp.code}"


async def pull_and_commit(server, daemon, uri: str, image: bytes, version: str) -> None:
    client = server.client(daemon.endpoint)
    assert await read_int(client, STATE) == IDLE
    await write_uri(client, uri)
    # Downloading, then Downloaded: the State never skips back to Idle.
    await wait_resource(client, STATE, {DOWNLOADING, DOWNLOADED}, daemon=daemon)
    await wait_resource(client, STATE, DOWNLOADED, timeout=30, daemon=daemon)
    assert await read_int(client, RESULT) == R_INITIAL
    assert await read_str(client, URI) == uri
    assert await read_str(client, VERSION) == version
    assert slot_bytes(daemon, "B", len(image)) == image
    assert_runs(daemon, "A")
    await update_and_commit(server, daemon, version, "B")


async def test_pull_coap_libcoap(fw_daemon, server, signer, coap_server, tmp_path):
    """coap:// from libcoap's coap-server (Block2, 1 KiB blocks) → Downloaded → Update →
    reboot → commit."""
    image = make_image(tmp_path / "image.bin", IMAGE_SIZE, seed=11)
    pkg = make_package(signer, tmp_path / "image.bin", tmp_path / "p.pkg", version="2.1.0")
    await coap_server.put("fw.pkg", pkg)
    await pull_and_commit(server, fw_daemon, coap_server.uri("fw.pkg"), image, "2.1.0")


async def test_pull_http(fw_daemon, server, signer, http_server, tmp_path):
    """http:// from a plain HTTP/1.1 server → Downloaded → Update → reboot → commit; one GET
    of the whole package."""
    image = make_image(tmp_path / "image.bin", IMAGE_SIZE, seed=12)
    make_package(signer, tmp_path / "image.bin", http_server.root / "fw.pkg", version="2.2.0")
    uri = http_server.uri("fw.pkg")
    await pull_and_commit(server, fw_daemon, uri, image, "2.2.0")
    gets = [r for r in http_server.requests if r["path"].startswith("/files/fw.pkg")]
    assert [(r["status"], r["range"]) for r in gets] == [(200, None)], gets


async def test_pull_https_with_the_configured_ca(fw_unstarted, server, signer, https_server,
                                                 tmp_path):
    """https:// from a server whose CA is trusted only through ``[update] ca_file`` (rustls,
    certificate and host name checked) → Downloaded → Update → reboot → commit."""
    fw_unstarted.config["update"]["ca_file"] = str(https_server.pki.ca_cert)
    await start_registered(fw_unstarted)
    image = make_image(tmp_path / "image.bin", IMAGE_SIZE, seed=14)
    make_package(signer, tmp_path / "image.bin", https_server.root / "fw.pkg", version="2.4.0")
    uri = https_server.uri("fw.pkg")
    assert uri.startswith("https://localhost:"), uri
    await pull_and_commit(server, fw_unstarted, uri, image, "2.4.0")
    gets = [r for r in https_server.requests if r["path"].startswith("/files/fw.pkg")]
    assert [(r["status"], r["range"]) for r in gets] == [(200, None)], gets


async def test_pull_https_from_an_untrusted_server(fw_daemon, server, signer, https_server,
                                                   tmp_path):
    """The same server without ``ca_file``: its certificate chains to no trusted CA, so the
    pull fails at the handshake (Result 4, no retry, the reason logged), nothing is fetched or
    written, and the daemon keeps serving."""
    make_image(tmp_path / "image.bin", IMAGE_SIZE, seed=15)
    make_package(signer, tmp_path / "image.bin", https_server.root / "fw.pkg", version="2.5.0")
    client = server.client(fw_daemon.endpoint)
    before = snapshot(fw_daemon)
    await write_uri(client, https_server.uri("fw.pkg"))
    await wait_resource(client, RESULT, R_CONNECTION_LOST, daemon=fw_daemon)
    assert await read_int(client, STATE) == IDLE
    assert "certificate" in fw_daemon.log_text().lower(), fw_daemon.log_text()[-2000:]
    assert https_server.requests == [], "no request may go out over an untrusted connection"
    assert snapshot(fw_daemon) == before
    assert slot_bytes(fw_daemon, "B", IMAGE_SIZE) == bytes(IMAGE_SIZE)
    await assert_still_serving(client)


async def test_pull_refused_package(fw_daemon, server, signer, http_server, tmp_path):
    """A pulled package with a corrupted chunk ends Idle with Result 5; nothing activated."""
    make_image(tmp_path / "image.bin", IMAGE_SIZE, seed=13)
    pkg = make_package(signer, tmp_path / "image.bin", tmp_path / "p.pkg", version="2.3.0")
    (http_server.root / "bad.pkg").write_bytes(flip(pkg, payload_start(pkg) + 70_000))
    client = server.client(fw_daemon.endpoint)
    before = snapshot(fw_daemon)
    await write_uri(client, http_server.uri("bad.pkg"))
    await wait_resource(client, RESULT, R_INTEGRITY, daemon=fw_daemon)
    assert await read_int(client, STATE) == IDLE
    assert "chunk 1 does not match its hash" in fw_daemon.log_text()
    assert snapshot(fw_daemon) == before
    assert boot_state(fw_daemon)["lwm2md_bad_B"] == "1"
    # No retry of a package that can never verify.
    await asyncio.sleep(1.5)
    assert len([r for r in http_server.requests if r["path"].startswith("/files/bad")]) == 1


@pytest.mark.lwm2md_config({"update": {"download_retries": 1, "download_connect_timeout": 2}})
@pytest.mark.parametrize(
    "kind,want",
    [
        ("no-scheme", R_INVALID_URI),
        ("no-host", R_INVALID_URI),
        ("ftp", R_UNSUPPORTED_PROTOCOL),
        ("http-404", R_INVALID_URI),
        ("coap-404", R_INVALID_URI),
        ("unreachable", R_CONNECTION_LOST),
    ],
)
async def test_pull_bad_uri(kind, want, fw_daemon, server, http_server, coap_server):
    """A Package URI that cannot give a package: the Write succeeds (2.04, ETS int-778), the
    State ends (or stays) Idle with Result 7 (invalid URI, 404/4.04), 9 (a scheme we cannot
    pull) or 4 (nobody listening, after the retries); nothing is activated; the daemon keeps
    serving and a good URI afterwards is taken."""
    uri = {
        "no-scheme": "fw.example.net/pkg",
        "no-host": "http:///pkg",
        "ftp": "ftp://127.0.0.1/fw.pkg",
        "http-404": http_server.uri("missing.pkg"),
        "coap-404": coap_server.uri("missing.pkg"),
        "unreachable": f"http://127.0.0.1:{free_port()}/fw.pkg",
    }[kind]
    client = server.client(fw_daemon.endpoint)
    before = snapshot(fw_daemon)
    await write_uri(client, uri)
    await wait_resource(client, RESULT, want, timeout=30, daemon=fw_daemon)
    assert await read_int(client, STATE) == IDLE
    assert snapshot(fw_daemon) == before
    assert boot_state(fw_daemon)["lwm2md_trial"] == ""
    await assert_still_serving(client)
    # A new URI is taken from Idle after a failure.
    await write_uri(client, http_server.uri("missing-again.pkg"))
    await wait_resource(client, RESULT, R_INVALID_URI, daemon=fw_daemon)


@pytest.mark.parametrize("how", ["empty-uri", "cancel"])
async def test_cancel_running_pull(how, fw_daemon, server, signer, http_server, tmp_path):
    """Resetting (empty URI: Result 0) or cancelling (/5/0/10: Result 10) while a slow pull
    runs: State Idle at once, the transfer stops, a restart does not resume it, and the next
    update works."""
    image = make_image(tmp_path / "image.bin", 1 << 20, seed=14)
    make_package(signer, tmp_path / "image.bin", http_server.root / "fw.pkg", version="2.4.0",
                 compression="none")
    client = server.client(fw_daemon.endpoint)
    before = snapshot(fw_daemon)
    await write_uri(client, http_server.uri("fw.pkg", "rate=200000"))
    await wait_resource(client, STATE, DOWNLOADING, daemon=fw_daemon)
    await asyncio.sleep(1.0)
    if how == "empty-uri":
        resp, want = await client.write(URI, b"", CF_TEXT), R_INITIAL
    else:
        resp, want = await client.execute("/5/0/10"), R_CANCELLED
    assert resp.code == "2.04", resp.code
    assert await read_int(client, STATE) == IDLE
    assert await read_int(client, RESULT) == want
    assert await read_str(client, URI) == ""
    assert journal(fw_daemon)["phase"]["phase"] == "Idle"
    # The transfer really stopped: the slot does not fill up any more.
    await asyncio.sleep(0.5)
    partial = slot_bytes(fw_daemon, "B", len(image))
    await asyncio.sleep(1.0)
    assert slot_bytes(fw_daemon, "B", len(image)) == partial
    assert partial != image
    assert snapshot(fw_daemon) == before
    # A crash now does not bring the cancelled pull back.
    n_requests = len(http_server.requests)
    await kill9(fw_daemon)
    await start_registered(fw_daemon)
    client = server.client(fw_daemon.endpoint)
    assert await read_int(client, STATE) == IDLE
    assert await read_int(client, RESULT) == want
    await asyncio.sleep(1.0)
    assert len(http_server.requests) == n_requests, http_server.requests[n_requests:]
    # The next update, pushed this time, goes through.
    pkg = (http_server.root / "fw.pkg").read_bytes()
    await push_ok(client, fw_daemon, pkg)
    assert slot_bytes(fw_daemon, "B", len(image)) == image
    await update_and_commit(server, fw_daemon, "2.4.0", "B")


async def kill_mid_pull(daemon, power_cut: bool, *, polls: int, most: int) -> None:
    """Waits (up to ``polls`` × 50 ms) until the running pull's checkpoint covers at least 8
    chunks (and fewer than ``most``), then kill -9; for a power cut the boot loader runs too.
    The kill must land mid-transfer."""
    checkpoint = daemon.state_dir / "firmware-download.json"
    done = 0
    for _ in range(polls):
        await asyncio.sleep(0.05)
        try:
            done = (json.loads(checkpoint.read_text())["data"] or {}).get("chunks_done", 0)
        except (FileNotFoundError, ValueError):
            continue
        if done >= 8:
            break
    assert 8 <= done < most, f"checkpoint at chunk {done}\n{daemon.log_text()[-3000:]}"
    await kill9(daemon)
    assert journal(daemon)["phase"] == {"phase": "Downloading", "target": "B", "pull": True}
    if power_cut:
        assert power_cycle(daemon) == "A"


async def restart_until_downloaded(server, daemon, image: bytes, *, timeout: float) -> None:
    """Starts the killed daemon again: it resumes the pull (it says so) and ends Downloaded
    with ``image`` in slot B and no error result."""
    mark = len(daemon.log_text())
    await start_registered(daemon)
    client = server.client(daemon.endpoint)
    await wait_resource(client, STATE, DOWNLOADED, timeout=timeout, daemon=daemon)
    await wait_log(daemon, "resuming", start=mark)
    assert slot_bytes(daemon, "B", len(image)) == image
    assert await read_int(client, RESULT) == R_INITIAL


@pytest.mark.lwm2md_config({"update": {"checkpoint_bytes": 65536, "download_idle_timeout": 5}})
@pytest.mark.parametrize("power_cut", [False, True], ids=["crash", "power-cut"])
async def test_pull_resumes_after_kill(power_cut, fw_daemon, server, signer, http_server,
                                       tmp_path):
    """kill -9 in the middle of a slow 3 MiB pull (and, for a power cut, the boot loader runs):
    the restarted daemon resumes at its last checkpoint with Range requests (the signed header
    again, then the rest from a chunk boundary), ends Downloaded with the right slot bytes, and
    the update commits."""
    size = 3 << 20
    image = make_image(tmp_path / "image.bin", size, seed=15)
    pkg = make_package(signer, tmp_path / "image.bin", http_server.root / "big.pkg",
                       version="3.0.0", compression="none")
    start = payload_start(pkg)
    uri = http_server.uri("big.pkg", "rate=1500000")
    client = server.client(fw_daemon.endpoint)
    await write_uri(client, uri)
    await kill_mid_pull(fw_daemon, power_cut, polls=200, most=48)
    seen = len(http_server.requests)
    await restart_until_downloaded(server, fw_daemon, image, timeout=30)
    after = [r for r in http_server.requests[seen:] if r["path"].startswith("/files/big.pkg")]
    ranges = [r["range"] for r in after]
    assert ranges[0] == f"bytes=0-{start - 1}", ranges
    resumed_at = int(ranges[1].removeprefix("bytes=").split("-")[0])
    assert resumed_at >= start + 8 * 65536, ranges
    assert (resumed_at - start) % 65536 == 0, ranges  # a chunk boundary (uncompressed)
    assert all(r["status"] == 206 for r in after), after
    assert all(r["if_match"] for r in after[1:]), after  # the ETag of the first transfer
    await update_and_commit(server, fw_daemon, "3.0.0", "B")


@pytest.mark.lwm2md_config({"update": {"checkpoint_bytes": 65536, "download_idle_timeout": 5}})
@pytest.mark.parametrize("power_cut", [False, True], ids=["crash", "power-cut"])
async def test_pull_coap_resumes_after_kill(power_cut, fw_daemon, server, signer, coap_server,
                                            tmp_path):
    """kill -9 in the middle of a CoAP pull from libcoap (slowed down by a relay that holds
    every request 2 ms), for a power cut with the boot loader run: the restarted daemon, a new
    client to the server (new source port), fetches the signed header again from block 0, then
    continues from the block of its last checkpoint, not from the start; the slot ends
    byte-exact and the update commits."""
    size = 3 << 20
    image = make_image(tmp_path / "image.bin", size, seed=16)
    pkg = make_package(signer, tmp_path / "image.bin", tmp_path / "big.pkg",
                       version="3.1.0", compression="none")
    start = payload_start(pkg)
    await coap_server.put("big.pkg", pkg)
    relay = await SlowCoapRelay(coap_server.port, delay=0.002).start()
    try:
        client = server.client(fw_daemon.endpoint)
        await write_uri(client, relay.uri("big.pkg"))
        await kill_mid_pull(fw_daemon, power_cut, polls=400, most=40)
        total_blocks = -(-len(pkg) // 1024)
        seen = len(relay.requests)
        await restart_until_downloaded(server, fw_daemon, image, timeout=60)
        after = relay.requests[seen:]
        clients_before = {addr for addr, _ in relay.requests[:seen]}
        assert not clients_before & {addr for addr, _ in after}, "the restart kept its port?"
        blocks = [num for _, num in after]
        # The header again, from block 0 up to the block holding its last byte ...
        header_end = (start - 1) // 1024
        # (A retransmitted request repeats its block number: compare without repeats.)
        blocks = [b for i, b in enumerate(blocks) if i == 0 or b != blocks[i - 1]]
        assert blocks[: header_end + 1] == list(range(header_end + 1)), blocks[:40]
        # ... then the block holding the byte before the checkpoint's chunk boundary (at least
        # the 8th chunk of 64 KiB; uncompressed, so a chunk is 64 KiB of the package), and on.
        resumed = blocks[header_end + 1]
        assert resumed >= (start + 8 * 65536 - 1) // 1024, (resumed, blocks[:40])
        assert blocks[header_end + 1 :] == list(range(resumed, total_blocks)), "in order, once"
    finally:
        relay.stop()
    await update_and_commit(server, fw_daemon, "3.1.0", "B")

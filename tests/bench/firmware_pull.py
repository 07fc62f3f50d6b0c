#!/usr/bin/env python3
"""Firmware pull benchmark: the real daemon (fake A/B machine) pulls signed packages of several
sizes over HTTP from nginx and over CoAP from libcoap's coap-server, and we record the time from
writing /5/0/1 to State 2 (Downloaded: downloaded, verified chunk by chunk, written, slot read back
and hashed) and the daemon's peak RSS (VmHWM). Memory must not grow with the image size.

Each daemon transfer is compared with a reference on the same file, server and link:
  http: `curl -s URL | tee SLOTFILE | sha256sum` (download, write, hash: no signature or per-chunk
        checks, no read-back);
  coap: `coap-client-openssl -m get -b 1024 -B 3600 -o FILE URL` (the same 1024-byte blocks).

Uses the interop suite's LwM2M server and launcher (tests/interop). Usage:
    firmware_pull.py BINARY_DIR [--http-sizes 16,512] [--coap-sizes 16] [--push-sizes 16] [--runs N]
BINARY_DIR holds lwm2md and lwm2md-package (e.g. target/release).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "interop"))

from daemon import Lwm2md  # noqa: E402
from firmware import (  # noqa: E402
    CF_OCTET_STREAM, DOWNLOADED, PACKAGE, STATE, URI, firmware_config, make_package, make_signer,
)
from lwm2m_codecs import CF_TEXT  # noqa: E402
from lwm2m_server import Lwm2mServer  # noqa: E402

MIB = 1 << 20


def vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])  # kB
    return 0


def make_image(path: Path, size: int) -> None:
    """Half random (incompressible), half text (compressible), like a real root file system."""
    with open(path, "wb") as f:
        left = size
        text = b"lwm2md benchmark image: compressible text line\n" * 1400
        while left > 0:
            piece = os.urandom(min(left, 64 << 10))
            f.write(piece)
            left -= len(piece)
            if left > 0:
                t = text[: min(left, len(text))]
                f.write(t)
                left -= len(t)


def nginx(root: Path, work: Path, port: int) -> subprocess.Popen:
    conf = work / "nginx.conf"
    conf.write_text(
        f"daemon off; master_process off; pid {work}/nginx.pid; error_log stderr error;\n"
        "events { worker_connections 64; }\n"
        f"http {{ access_log off; sendfile on; client_body_temp_path {work}/t1; "
        f"proxy_temp_path {work}/t2; fastcgi_temp_path {work}/t3; uwsgi_temp_path {work}/t4; "
        f"scgi_temp_path {work}/t5; server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n"
    )
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    return subprocess.Popen([nginx_bin, "-p", str(work), "-c", str(conf)])


def coap_server(root: Path, port: int) -> subprocess.Popen:
    binary = next(
        b for b in ("coap-server-openssl", "coap-server-notls", "coap-server") if shutil.which(b)
    )
    # -d: dynamic resources; files are uploaded with PUT by coap-client before the run.
    return subprocess.Popen([binary, "-A", "127.0.0.1", "-p", str(port), "-d", "10", "-v", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def free_port(kind) -> int:
    import socket

    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def one_run(binary_dir: Path, work: Path, signer, keys: Path, pkg: Path, uri: str | None,
                  slot_size: int) -> tuple[float, int, int]:
    """(seconds to Downloaded, VmHWM kB, VmRSS at registration kB)."""
    server = await Lwm2mServer().start()
    run_dir = Path(tempfile.mkdtemp(dir=work))
    cfg = firmware_config(run_dir, keys)
    cfg["update"]["fake_slot_size"] = slot_size
    cfg["agent"] = {"log_level": "warn"}
    daemon = Lwm2md(server, run_dir, cfg, binary=binary_dir / "lwm2md")
    try:
        await daemon.start()
        await daemon.wait_registered()
        rss0 = vm(daemon.proc.pid, "VmRSS")
        client = server.client(daemon.endpoint, timeout=600)
        # Observed, not polled: polling costs the daemon and the server CPU the transfer needs
        # (2 cores), and its interval would be part of the measured time.
        obs = await client.observe(STATE, CF_TEXT)
        assert obs.established, obs.initial
        t0 = time.monotonic()
        if uri is not None:
            resp = await client.write(URI, uri.encode(), 0)
            assert resp.code == "2.04", resp.code
        else:
            responses = await client.write_blockwise(PACKAGE, pkg.read_bytes(), CF_OCTET_STREAM)
            assert responses[-1].code == "2.04", responses[-1].code
        while (await obs.next(1800)).payload.decode() != str(DOWNLOADED):
            pass
        seconds = time.monotonic() - t0
        hwm = vm(daemon.proc.pid, "VmHWM")
        await daemon.terminate()
        return seconds, hwm, rss0
    finally:
        await daemon.kill()
        await server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def reference(kind: str, uri: str, work: Path) -> float:
    out = work / "reference.out"
    t0 = time.monotonic()
    if kind == "http":
        subprocess.run(f"curl -s {uri} | tee {out} | sha256sum > /dev/null", shell=True, check=True)
    else:
        subprocess.run([COAP_CLIENT, "-m", "get", "-b", "1024", "-B", "3600", "-o", str(out), uri],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dt = time.monotonic() - t0
    out.unlink()
    return dt


COAP_CLIENT = next(
    (b for b in ("coap-client-openssl", "coap-client-notls", "coap-client") if shutil.which(b)), "coap-client"
)


def sizes(text: str) -> list[float]:
    return [float(s) for s in text.split(",") if s and float(s) > 0]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("binary_dir", type=Path)
    ap.add_argument("--http-sizes", default="16,512")
    ap.add_argument("--coap-sizes", default="16")
    ap.add_argument("--push-sizes", default="16")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--label", default="loopback")
    ap.add_argument("--link", default="", help="DELAY_MS,LOSS_PERCENT: go through tests/bench/link.py")
    args = ap.parse_args()
    os.environ["LWM2MD_BIN"] = str((args.binary_dir / "lwm2md").resolve())
    work = Path(tempfile.mkdtemp(prefix="fw-bench-"))
    www = work / "www"
    www.mkdir()
    signer = make_signer(work / "signing", "bench")
    keys = work / "keys.d"
    keys.mkdir()
    shutil.copy(signer.pub, keys / "bench.pub")
    import socket

    hport, cport = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    web = nginx(www, work, hport)
    coap = coap_server(www, cport)
    relays = []
    # What the clients use: the servers themselves, or the emulated link in front of them.
    h_use, c_use = hport, cport
    if args.link:
        delay_ms, loss = args.link.split(",")
        h_use, c_use = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
        link = str(Path(__file__).with_name("link.py"))
        relays = [
            subprocess.Popen([sys.executable, link, "udp", str(c_use), str(cport), delay_ms, loss]),
            subprocess.Popen([sys.executable, link, "tcp", str(h_use), str(hport), delay_ms, "0"]),
        ]

    def fresh_link() -> None:
        """Restarts the UDP relay, so that every run meets the same (seeded) loss pattern: with
        a relay shared by all runs, each run lost other datagrams, and a lost datagram costs a
        2-3 s retransmission timeout, more than the clients' own difference."""
        if not args.link:
            return
        relays[0].terminate()
        relays[0].wait()
        relays[0] = subprocess.Popen([sys.executable, link, "udp", str(c_use), str(cport), delay_ms, loss])
        time.sleep(0.3)

    time.sleep(0.5)
    print(f"== {args.label}: image half random, half text; zstd; 256 KiB chunks; "
          f"time = /5/0/1 (or first Block1) to State 2 (observed), median of {args.runs}; "
          f"ratio = median of paired runs")
    print(f"{'transfer':<6} {'image':>9} {'package':>9} {'lwm2md':>9} {'MiB/s':>7} {'reference':>10} "
          f"{'ratio':>6} {'peak RSS':>9} {'RSS reg.':>9}", flush=True)
    try:
        http_s, coap_s, push_s = sizes(args.http_sizes), sizes(args.coap_sizes), sizes(args.push_sizes)
        for mib in sorted(set(http_s + coap_s + push_s)):
            image = work / "image.bin"
            make_image(image, int(mib * MIB))
            name = f"fw-{mib:g}.pkg"
            pkg = www / name
            make_package(signer, image, pkg, version=f"{mib:g}.0", chunk_size="256K")
            image.unlink()
            slot = int(mib * MIB) + 8 * MIB
            plan = []
            if mib in http_s:
                plan.append(("http", f"http://127.0.0.1:{h_use}/{name}"))
            if mib in coap_s:
                # coap-server -d creates the resource on PUT.
                subprocess.run([COAP_CLIENT, "-m", "put", "-b", "1024", "-B", "3600", "-f", str(pkg),
                                f"coap://127.0.0.1:{cport}/{name}"], check=True,
                               stdout=subprocess.DEVNULL, timeout=7200)
                plan.append(("coap", f"coap://127.0.0.1:{c_use}/{name}"))
            if mib in push_s:
                plan.append(("push", None))
            for kind, uri in plan:
                # Each daemon run is followed by its reference run, and the ratio is the median
                # of the pairs' ratios: this machine's speed drifts between minutes (the same
                # `curl | tee | sha256sum` took 1.7 s and 3.9 s), which pairing cancels out.
                runs, refs, ratios = [], [], []
                for _ in range(args.runs):
                    fresh_link()
                    runs.append(await one_run(args.binary_dir, work, signer, keys, pkg, uri, slot))
                    if uri:
                        fresh_link()
                        refs.append(reference(kind, uri, work))
                        ratios.append(runs[-1][0] / refs[-1])
                runs.sort()
                secs, hwm, rss0 = runs[len(runs) // 2]
                ref = sorted(refs)[len(refs) // 2] if refs else None
                ref_txt = f"{ref:>8.2f} s" if ref else f"{'-':>10}"
                ratio = f"{sorted(ratios)[len(ratios) // 2]:>6.2f}" if ratios else f"{'-':>6}"
                print(f"{kind:<6} {mib:>5g} MiB {pkg.stat().st_size / MIB:>5.1f} MiB {secs:>7.2f} s "
                      f"{mib / secs:>7.1f} {ref_txt} {ratio} {hwm / 1024:>5.1f} MiB {rss0 / 1024:>5.1f} MiB",
                      flush=True)
            pkg.unlink()
    finally:
        for p in [web, coap, *relays]:
            p.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())

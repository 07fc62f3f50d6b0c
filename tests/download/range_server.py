#!/usr/bin/env python3
"""HTTP/1.1 file server with the behaviours the download tests need (standard library only).

Paths:
  /files/NAME              the file NAME under --root
  /status/CODE             answers CODE with a short body
  /redirect/N/NAME         302 with a relative Location, N times, then /files/NAME (query kept)
  /redirect-to?to=URL      302 to URL

Query parameters of /files (they compose):
  validators=all|etag|lm|none|weak   which validators are sent (default all: strong ETag from
                                     the content + Last-Modified from the mtime)
  framing=length|chunked|close       Content-Length (default), chunked, or end at close
  ranges=no                          ignore Range (always 200 with the whole file)
  cut=N                              every response ends after N body bytes (connection shut
                                     down with the body incomplete)
  stall=N                            every response stalls after N body bytes
  stall-head=1                       never answer
  rate=N                             send the body at about N bytes per second (pieces every
                                     50 ms), for tests that interrupt a transfer midway
  flaky=K                            the first K requests for this URL get 503

Preconditions: If-Match (strong comparison against the ETag, when ETags are on) and
If-Unmodified-Since (against the mtime) give 412. Range: one `bytes=` range; 416 with
`Content-Range: bytes */size` when it starts at or after the end.

Every request is logged to stdout as one JSON line (path, status, Range, If-Match,
If-Unmodified-Since, Host); prints "READY <port>" first.
"""

import argparse
import email.utils
import hashlib
import json
import os
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COUNTERS = {}
LOCK = threading.Lock()


def count(key):
    with LOCK:
        COUNTERS[key] = COUNTERS.get(key, 0) + 1
        return COUNTERS[key]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "range-server"

    def log_message(self, fmt, *args):  # the JSON log is enough
        pass

    def log_json(self, status):
        record = {
            "path": self.path,
            "status": status,
            "range": self.headers.get("Range"),
            "if_match": self.headers.get("If-Match"),
            "if_unmodified_since": self.headers.get("If-Unmodified-Since"),
            "host": self.headers.get("Host"),
        }
        with LOCK:
            print(json.dumps(record), flush=True)

    def simple(self, status, body=b"", headers=()):
        self.log_json(status)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        parts = url.path.split("/")[1:]
        mode, rest = (parts[0], parts[1:]) if parts else ("", [])
        if mode == "status":
            return self.simple(int(rest[0]), b"status page\n")
        if mode == "redirect":
            n, name = int(rest[0]), "/".join(rest[1:])
            target = f"../{n - 1}/{name}" if n > 1 else f"/files/{name}"
            if url.query:
                target += "?" + url.query
            return self.simple(302, b"", [("Location", target)])
        if mode == "redirect-to":
            return self.simple(302, b"", [("Location", query["to"])])
        if mode == "files":
            return self.serve("/".join(rest), query)
        return self.simple(404, b"no such path\n")

    def serve(self, name, query):
        if query.get("stall-head"):
            self.log_json(0)
            time.sleep(3600)
            return None
        if "flaky" in query and count(self.path) <= int(query["flaky"]):
            return self.simple(503, b"try later\n")
        path = os.path.join(self.server.root, name)
        try:
            with open(path, "rb") as f:
                data = f.read()
            mtime = os.stat(path).st_mtime
        except OSError:
            return self.simple(404, b"not found\n")
        kind = query.get("validators", "all")
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        last_modified = email.utils.formatdate(mtime, usegmt=True)
        validators = []
        if kind in ("all", "etag"):
            validators.append(("ETag", etag))
        if kind == "weak":
            validators.append(("ETag", "W/" + etag))
        if kind in ("all", "lm"):
            validators.append(("Last-Modified", last_modified))
        size = len(data)

        if_match = self.headers.get("If-Match")
        if if_match is not None:
            tags = [t.strip() for t in if_match.split(",")]
            strong = etag if kind in ("all", "etag") else None
            if "*" not in tags and strong not in tags:
                return self.simple(412, b"precondition failed\n", validators)
        ius = self.headers.get("If-Unmodified-Since")
        if ius is not None and if_match is None and kind in ("all", "lm"):
            try:
                since = email.utils.parsedate_to_datetime(ius).timestamp()
            except (TypeError, ValueError):
                since = None
            if since is not None and int(mtime) > since:
                return self.simple(412, b"precondition failed\n", validators)

        start, end, status = 0, size, 200
        header = self.headers.get("Range")
        if header and query.get("ranges") != "no":
            spec = header.strip()
            if spec.startswith("bytes=") and "," not in spec:
                first, _, last = spec[len("bytes="):].partition("-")
                if first == "":
                    start = max(0, size - int(last))
                else:
                    start = int(first)
                    end = min(size, int(last) + 1) if last else size
                if start >= size:
                    return self.simple(
                        416, b"", validators + [("Content-Range", f"bytes */{size}")]
                    )
                status = 206

        body = data[start:end]
        framing = query.get("framing", "length")
        self.log_json(status)
        self.send_response(status)
        for header_line in validators:
            self.send_header(*header_line)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        if framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        elif framing != "close":
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        limit = None
        if "cut" in query:
            limit = int(query["cut"])
        if "stall" in query:
            limit = int(query["stall"])
        try:
            if framing == "chunked":
                wire = bytearray()
                pos, step = 0, 1
                while pos < len(body):
                    piece = body[pos:pos + step]
                    wire += b"%x;ext=1\r\n" % len(piece) + piece + b"\r\n"
                    pos += len(piece)
                    step = step * 7 % 65521 + 1
                wire += b"0\r\nX-Trailer: yes\r\n\r\n"
                # A cut/stall counts chunked wire bytes, near enough for the tests.
                out = bytes(wire)
            else:
                out = body
            if limit is None and "rate" in query:
                piece = max(1, int(query["rate"]) // 20)
                for pos in range(0, len(out), piece):
                    self.wfile.write(out[pos:pos + piece])
                    self.wfile.flush()
                    time.sleep(0.05)
                return None
            if limit is None:
                self.wfile.write(out)
                return None
            self.wfile.write(out[:limit])
            self.wfile.flush()
            if "stall" in query:
                time.sleep(3600)
            else:
                # No TLS close_notify: to the client this is a cut connection, not an end.
                self.connection.shutdown(socket.SHUT_RDWR)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass
        return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.root = args.root
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Throughput of download::fetch over loopback, next to a reference client on the same file:
#   coap://   ours vs coap-client (libcoap 4.3.1), same server (coap-server, dynamic resource),
#             same block size (1024 bytes)
#   http://   ours vs curl, same server (nginx serving a directory)
#   https://  ours vs curl, nginx with a throwaway CA (skipped if openssl or nginx's ssl module
#             is missing)
# Our side is examples/fetch.rs: fetch() on a single-threaded runtime (as in the daemon) into a
# channel whose receiver only counts bytes. Each measurement runs RUNS times.
#
# Assumes the tools are installed (it installs nothing): coap-server-notls or -openssl,
# coap-client-openssl (or -notls), nginx, curl, openssl. Builds the example with --release.
#
# Usage: tests/bench/download.sh [SIZE_MIB (default 64)] [RUNS (default 3)]
set -euo pipefail
cd "$(dirname "$0")/../.."

SIZE_MIB=${1:-64}
RUNS=${2:-3}

need() { command -v "$1" >/dev/null || { echo "missing: $1" >&2; exit 1; }; }
pick() { for c in "$@"; do command -v "$c" >/dev/null && { echo "$c"; return; }; done; echo "missing: $*" >&2; exit 1; }
COAP_SERVER=$(pick coap-server-notls coap-server-openssl coap-server)
COAP_CLIENT=$(pick coap-client-openssl coap-client-notls coap-client)
NGINX=$(pick nginx /usr/sbin/nginx)
need curl
need python3

cargo build --release --example fetch -q
FETCH=target/release/examples/fetch

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c "import socket,sys; s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])" "$1"; }

mkdir -p "$WORK/www"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$WORK/www/big.bin"
BYTES=$(stat -c %s "$WORK/www/big.bin")
echo "file: $SIZE_MIB MiB ($BYTES bytes), $RUNS runs each, $(nproc) CPUs, $(uname -r)"

mibps() { python3 -c "import sys; print(f'{int(sys.argv[1]) / float(sys.argv[2]) / 1048576:.1f} MiB/s')" "$@"; }

# ---- CoAP ----
CPORT=$(free_port SOCK_DGRAM)
"$COAP_SERVER" -A 127.0.0.1 -p "$CPORT" -d 4 -v 0 &
PIDS+=($!)
sleep 0.5
echo
echo "== coap:// (block size 1024): PUT the file to the server's dynamic resource"
t0=$(date +%s.%N)
"$COAP_CLIENT" -m put -b 1024 -B 600 -f "$WORK/www/big.bin" "coap://127.0.0.1:$CPORT/big"
echo "   PUT took $(python3 -c "print(f'{$(date +%s.%N) - $t0:.2f} s')")"
for i in $(seq "$RUNS"); do
    echo -n "   ours          run $i: "
    "$FETCH" "coap://127.0.0.1:$CPORT/big" --szx 6
done
for i in $(seq "$RUNS"); do
    rm -f "$WORK/out"
    t0=$(date +%s.%N)
    "$COAP_CLIENT" -m get -b 1024 -B 600 -o "$WORK/out" "coap://127.0.0.1:$CPORT/big"
    dt=$(python3 -c "print($(date +%s.%N) - $t0)")
    got=$(stat -c %s "$WORK/out")
    echo "   coap-client   run $i: $got bytes in $(printf %.3f "$dt") s = $(mibps "$got" "$dt")"
done
cmp -s "$WORK/out" "$WORK/www/big.bin" && echo "   (coap-client output identical to the file)"

# ---- HTTP / HTTPS via nginx ----
HPORT=$(free_port SOCK_STREAM)
SPORT=$(free_port SOCK_STREAM)
TLS_SERVER=""
if command -v openssl >/dev/null; then
    (
        cd "$WORK"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
            -days 1 -subj "/CN=bench CA" -addext basicConstraints=critical,CA:TRUE \
            -addext keyUsage=critical,keyCertSign 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key -out srv.csr \
            -subj /CN=localhost 2>/dev/null
        printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' > srv.ext
        openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 1 \
            -extfile srv.ext 2>/dev/null
    )
    TLS_SERVER="server { listen 127.0.0.1:$SPORT ssl; ssl_certificate $WORK/srv.pem; ssl_certificate_key $WORK/srv.key; root $WORK/www; }"
fi
cat > "$WORK/nginx.conf" <<EOF
daemon off; master_process off; pid $WORK/nginx.pid; error_log stderr error;
events { worker_connections 64; }
http {
  access_log off; sendfile on;
  client_body_temp_path $WORK/t1; proxy_temp_path $WORK/t2; fastcgi_temp_path $WORK/t3;
  uwsgi_temp_path $WORK/t4; scgi_temp_path $WORK/t5;
  server { listen 127.0.0.1:$HPORT; root $WORK/www; }
  $TLS_SERVER
}
EOF
if ! "$NGINX" -t -p "$WORK" -c "$WORK/nginx.conf" 2>/dev/null; then
    echo "   (nginx cannot do TLS here: https skipped)"
    TLS_SERVER=""
    sed -i '/listen .*ssl/d' "$WORK/nginx.conf"
fi
"$NGINX" -p "$WORK" -c "$WORK/nginx.conf" &
PIDS+=($!)
sleep 0.5

echo
echo "== http:// (nginx)"
for i in $(seq "$RUNS"); do
    echo -n "   ours          run $i: "
    "$FETCH" "http://127.0.0.1:$HPORT/big.bin"
done
for i in $(seq "$RUNS"); do
    curl -s -o /dev/null -w "   curl          run $i: %{size_download} bytes in %{time_total} s = %{speed_download} B/s\n" \
        "http://127.0.0.1:$HPORT/big.bin"
done

if [ -n "$TLS_SERVER" ]; then
    echo
    echo "== https:// (nginx, TLS 1.3 as negotiated, throwaway CA)"
    for i in $(seq "$RUNS"); do
        echo -n "   ours          run $i: "
        "$FETCH" "https://localhost:$SPORT/big.bin" --ca "$WORK/ca.pem"
    done
    for i in $(seq "$RUNS"); do
        curl -s --cacert "$WORK/ca.pem" -o /dev/null \
            -w "   curl          run $i: %{size_download} bytes in %{time_total} s = %{speed_download} B/s\n" \
            "https://localhost:$SPORT/big.bin"
    done
fi

#!/usr/bin/env bash
# Firmware pull benchmark (README "Performance"): the release daemon pulls signed packages into
# its fake A/B machine over HTTP (nginx) and CoAP (libcoap's coap-server), compared with
# `curl | tee | sha256sum` and `coap-client-openssl` on the same file; peak RSS per image size.
# Then the same over an emulated link: a network namespace whose loopback has `tc netem`
# (25 ms each way = 50 ms RTT, 1 % loss), with smaller files (CoAP moves one 1 KiB block per RTT).
#
# Needs root (netns), the interop venv (tests/run creates it), nginx, curl, libcoap3-bin, iproute2.
# Usage: tests/bench/firmware.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=target/interop-venv
[[ -x $VENV/bin/python ]] || { echo "run tests/run once first (it creates $VENV)" >&2; exit 1; }
cargo build --release --bins >&2
PY="$VENV/bin/python tests/bench/firmware_pull.py target/release"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, kernel $(uname -r)"
if [[ ${1:-} == --quick ]]; then
    $PY --http-sizes 16 --coap-sizes 4 --push-sizes 4 --runs 1
    exit 0
fi
$PY --http-sizes 16,512 --coap-sizes 16 --push-sizes 16 --runs 3

NS=lwm2md-bench-$$
ip netns add "$NS"
trap 'ip netns del "$NS" 2>/dev/null || true' EXIT
ip -n "$NS" link set lo up
ip netns exec "$NS" tc qdisc add dev lo root netem delay 25ms loss 1%
ip netns exec "$NS" $PY --label "netem: 50 ms RTT, 1 % loss" --http-sizes 16 --coap-sizes 1 \
    --push-sizes 0.25 --runs 3

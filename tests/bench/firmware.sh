#!/usr/bin/env bash
# Firmware pull benchmark (README "Performance"): the release daemon pulls signed packages into
# its fake A/B machine over HTTP (nginx) and CoAP (libcoap's coap-server), compared with
# `curl | tee | sha256sum` and `coap-client-openssl` on the same file; peak RSS per image size.
# Then the same over an emulated link (50 ms RTT, 1 % loss): `tc netem` in a network namespace,
# or tests/bench/link.py where the kernel lacks netem; smaller files (CoAP moves one 1 KiB block
# per RTT).
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
$PY --http-sizes 16,512 --coap-sizes 16 --push-sizes 16 --runs 5

# The emulated link: netem in a network namespace when the kernel has it, else the user-space
# relay tests/bench/link.py (this machine's kernel lacks CONFIG_NET_SCH_NETEM). 25 ms each way
# (50 ms RTT), 1 % of the CoAP datagrams lost; HTTP is delayed only.
NETEM_ARGS=(--http-sizes 16 --coap-sizes 0.5 --push-sizes 0 --runs 3)
NS=lwm2md-bench-$$
if ip netns add "$NS" 2>/dev/null && ip -n "$NS" link set lo up &&
    ip netns exec "$NS" tc qdisc add dev lo root netem delay 25ms loss 1% 2>/dev/null; then
    trap 'ip netns del "$NS" 2>/dev/null || true' EXIT
    ip netns exec "$NS" $PY --label "netem: 50 ms RTT, 1 % loss" "${NETEM_ARGS[@]}"
else
    ip netns del "$NS" 2>/dev/null || true
    $PY --label "user-space link (tests/bench/link.py): 50 ms RTT, 1 % CoAP loss" --link 25,1 "${NETEM_ARGS[@]}"
fi

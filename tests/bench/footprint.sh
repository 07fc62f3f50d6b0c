#!/usr/bin/env bash
# Footprint benchmark (README "Performance"): builds the size-optimised binary and measures its
# stripped size, start-to-registered time, idle RSS and idle wake-ups against an aiocoap server.
# Needs the interop venv (tests/run creates it). Usage: tests/bench/footprint.sh [--runs N] [--idle S]
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=target/interop-venv
[[ -x $VENV/bin/python ]] || { echo "run tests/run once first (it creates $VENV)" >&2; exit 1; }
cargo build --profile min-size --bin lwm2md >&2
BIN=target/min-size/lwm2md
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, kernel $(uname -r)"
echo "binary (profile min-size: opt-level=z, lto=fat, codegen-units=1, panic=abort, stripped): $(stat -c %s "$BIN") bytes ($(numfmt --to=iec-i --suffix=B "$(stat -c %s "$BIN")"))"
"$VENV/bin/python" tests/bench/footprint.py "$BIN" "$@"

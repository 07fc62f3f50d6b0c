#!/usr/bin/env bash
# DTLS handshake benchmark (README "Performance"): handshake time (median and max of 20 on
# loopback), datagrams, bytes and round trips each way, with PSK and with certificates, against
# libcoap's OpenSSL and GnuTLS servers; and the cost of a re-handshake after a lost association.
# Runs the ignored test `bench_handshake_cost` of tests/dtls.rs in release mode.
# Needs libcoap3-bin (tests/run installs it).
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, kernel $(uname -r)"
cargo test --release --test dtls bench_handshake_cost -- --ignored --nocapture 2>&1 |
    grep -v "^running\|^test \|^$\|test result"

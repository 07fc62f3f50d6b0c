#!/usr/bin/env bash
# Fuzzes every target in this crate for N seconds each (default 60) and prints a summary.
#
#   tests/fuzz/run.sh [seconds-per-target] [target...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). cargo-fuzz passes nightly-only rustc flags
# (`-Zsanitizer=address`, sanitizer-coverage passes); on the stable toolchain we build anyway by
# setting RUSTC_BOOTSTRAP=1, which lets stable rustc accept `-Z` flags. No nightly is needed.
# Set SANITIZER=none for a faster, uninstrumented-for-memory build (the crate forbids unsafe,
# but its dependencies do not, so AddressSanitizer stays the default).
#
# Every target runs.
#
# Corpora (corpus/<target>/) and crash inputs (artifacts/<target>/) are git-ignored; the first
# run seeds each corpus with a few valid inputs so the fuzzer starts from real structure.
# Exit status: 0 when no target found anything, 1 otherwise.
set -u -o pipefail

SECS="${1:-60}"
shift || true
FUZZ_DIR="tests/fuzz"
cd "$(dirname "$0")/../.." || exit 2

export RUSTC_BOOTSTRAP=1
SAN_ARGS=()
if [[ -n "${SANITIZER:-}" ]]; then
    SAN_ARGS=(--sanitizer "$SANITIZER")
fi

if [[ $# -gt 0 ]]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cargo fuzz list --fuzz-dir "$FUZZ_DIR")
fi

# seed <target> <name> <printf-format>: writes one seed input unless the corpus already has it.
seed() {
    local dir="$FUZZ_DIR/corpus/$1"
    mkdir -p "$dir"
    [[ -e "$dir/seed-$2" ]] || printf "$3" >"$dir/seed-$2"
}

# The first byte of the content-format targets picks a schema; the payload follows it.
seed tlv example '\x00\xC4\x00Open\xC8\x01\x0AGW-EDGE-01\xC1\x09\x57\x86\x06\x41\x00\x01\x41\x01\x05'
seed tlv wrapped '\x00\x08\x00\x0B\xC1\x09\x57\x86\x06\x41\x00\x01\x41\x01\x05'
seed tlv multi '\x0A\x86\x0B\x41\x00\x00\x41\x03\xFE'
seed senml_json pack '\x00[{"bn":"/3/0/","n":"0","vs":"Open"},{"n":"9","v":87},{"n":"11/0","v":0.5},{"n":"13","vb":true,"t":1}]'
seed senml_json data '\x00[{"bn":"/5/0/0","vd":"3q2-7_8"},{"n":"/0/0/17","vlo":"3:0"}]'
seed senml_json paths '\x00[{"n":"/3/0/1"},{"bn":"/"}]'
seed senml_cbor pack '\x00\x82\xA3\x21\x65/3/0/\x00\x619\x02\x18\x57\xA2\x00\x6411/0\x02\xF9\x3E\x00'
seed senml_cbor other '\x00\x9F\xBF\x21\x66/0/0/\x00\x6217\x63vlo\x633:0\xFF\xA2\x00\x61\x35\x08\x42\x01\x02\xFF'
seed text_cbor_opaque int '\x00-42'
seed text_cbor_opaque float '\x031.5e3'
seed text_cbor_opaque cbor '\x00\xC1\x1A\x65\x53\xF1\x00'
seed link_format register '</1>;ver=1.2,</1/0>,</3/0/7>;dim=8;pmin=10;ct="60 110"'
seed exec_args args "0='foo',1"
seed path path '/3/0/11/2'
seed coap_message get '\x40\x01\x12\x34\xB1\x33\x01\x30'
# bootstrap_datagram: Bootstrap-Delete /, a Bootstrap-Write of /0/1 in SenML JSON, Finish.
seed bootstrap_datagram delete '\x00\x40\x04\x00\x01'
seed bootstrap_datagram write '\x00\x40\x03\x00\x03\xB1\x30\x01\x31\x11\x6E\xFF[{"bn":"/0/1/","n":"0","vs":"coap://x"},{"n":"1","vb":false},{"n":"2","v":3},{"n":"10","v":5}]'
seed bootstrap_datagram finish '\x00\x40\x02\x00\x02\xB2bs'

# seed_cat <target> <name> <printf-prefix> <file> [skip count]: a seed made of a prefix and
# a file's bytes (all, or `count` bytes after the first `skip`).
seed_cat() {
    local f="$FUZZ_DIR/corpus/$1/seed-$2"
    mkdir -p "$FUZZ_DIR/corpus/$1"
    [[ -e "$f" ]] && return
    {
        printf "$3"
        if [[ $# -ge 6 ]]; then tail -c +"$(($5 + 1))" "$4" | head -c "$6"; else cat "$4"; fi
    } >"$f"
}

# package_reader: the committed test vectors (mode 0, fed in pieces of 1185 bytes), and mode-1
# inputs whose signed chunk is a real zstd frame / gzip member (2-byte length, then the bytes).
PKG="tests/fixtures/packages"
for c in none zstd gzip; do
    seed_cat package_reader "v1-$c" '\x40' "$PKG/v1-$c.pkg"
done
# v1-zstd.pkg: the payload starts at 16 + 391 + 64 = 471; its first chunk is 1104 (0x0450) bytes.
seed_cat package_reader chunk-zstd '\x01\x01\x04\x50' "$PKG/v1-zstd.pkg" 471 1104
# gzip -n of "lwm2md test" (31 bytes).
seed package_reader chunk-gzip '\x01\x02\x00\x1f\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xcb\x29\xcf\x35\xca\x4d\x51\x28\x49\x2d\x2e\x01\x00\x7c\xf7\xe6\x0e\x0b\x00\x00\x00'

# One build for all targets (cargo fuzz run would otherwise rebuild per target).
mkdir -p "$FUZZ_DIR/artifacts"
echo "=== building (log: $FUZZ_DIR/artifacts/build.log)"
if ! cargo fuzz build --fuzz-dir "$FUZZ_DIR" "${SAN_ARGS[@]}" >"$FUZZ_DIR/artifacts/build.log" 2>&1; then
    tail -40 "$FUZZ_DIR/artifacts/build.log"
    exit 2
fi
SUMMARY=()
FAILED=0
for t in "${TARGETS[@]}"; do
    log="$FUZZ_DIR/artifacts/$t.log"
    mkdir -p "$FUZZ_DIR/corpus/$t"
    echo "=== $t (${SECS}s)"
    cargo fuzz run --fuzz-dir "$FUZZ_DIR" "${SAN_ARGS[@]}" "$t" -- \
        -max_total_time="$SECS" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    if [[ $rc -eq 0 ]]; then
        SUMMARY+=("$(printf '%-18s ok      execs=%-10s cov=%s' "$t" "${execs:-?}" "${cov:-?}")")
    else
        FAILED=1
        SUMMARY+=("$(printf '%-18s FAILED  execs=%-10s see %s' "$t" "${execs:-?}" "$log")")
        grep -m3 -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | sed 's/^/    /'
    fi
done

echo
echo "=== summary (${SECS}s per target)"
printf '%s\n' "${SUMMARY[@]}"
exit "$FAILED"

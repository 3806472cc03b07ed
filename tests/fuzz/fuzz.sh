#!/usr/bin/env bash
# Builds the kvgate fuzz targets (cargo-fuzz, libFuzzer), writes their seed corpora from the
# repository's fixtures, and runs them one after the other (one process, one core each).
#
#   tests/fuzz/fuzz.sh build               only build the targets (part of make test's build phase)
#   tests/fuzz/fuzz.sh smoke [TARGET...]   a few seconds per target on the seeds (make fuzz-smoke)
#   tests/fuzz/fuzz.sh long  [TARGET...]   FUZZ_RUNS (default 10^6) executions per target,
#                                          growing target/fuzz/corpus/TARGET (make fuzz)
#
# Environment: CARGO_FUZZ (the cargo-fuzz binary), FUZZ_TARGET_DIR (where the targets build,
# default $CARGO_TARGET_DIR/fuzz-build, else target/fuzz-build), FUZZ_WORK (default
# target/fuzz: seeds, corpora, crash artifacts, logs, summary), FUZZ_RUNS, FUZZ_SMOKE_SECS
# (default 5), KVGATE_MODEL_DIR (the Qwen3 tokenizer, default target/models/Qwen3-0.6B).
# Exits non-zero if any target crashed, timed out or ran out of memory; the input that did it
# is in FUZZ_WORK/artifacts/TARGET/ (replay: BINARY ARTIFACT).
set -euo pipefail

MODE=${1:-}
case "$MODE" in build | smoke | long) shift ;; *)
    echo "usage: $0 build|smoke|long [TARGET...]" >&2
    exit 2
    ;;
esac
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CARGO_FUZZ=${CARGO_FUZZ:-cargo-fuzz}
WORK=${FUZZ_WORK:-$ROOT/target/fuzz}
RUNS=${FUZZ_RUNS:-1000000}
SMOKE_SECS=${FUZZ_SMOKE_SECS:-5}
export KVGATE_REPO=${KVGATE_REPO:-$ROOT}
export KVGATE_MODEL_DIR=${KVGATE_MODEL_DIR:-$ROOT/target/models/Qwen3-0.6B}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/fuzz-build}
BIN=$CARGO_TARGET_DIR/$TRIPLE/release
ALL=(prompt template dynamo_events vllm_events sync_codec config index_ops)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${ALL[@]}"); fi

# Release build with debug assertions and overflow checks (-O -a); no sanitizer (-s none):
# the crates forbid unsafe code, and the targets look for panics, hangs and memory blow-ups.
# cargo-fuzz passes nightly-only -Z flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
echo "fuzz: building the targets"
(cd "$HERE" && RUSTC_BOOTSTRAP=1 "$CARGO_FUZZ" fuzz build --fuzz-dir "$HERE" --features libfuzzer -O -a -s none)
[ "$MODE" = build ] && exit 0

rm -rf "$WORK/seeds"
"$BIN/seeds" "$WORK/seeds"

opts() {
    case "$1" in
    prompt) echo "-max_len=4096 -dict=$HERE/dicts/json.dict -timeout=60" ;;
    template) echo "-max_len=8192 -dict=$HERE/dicts/jinja.dict -timeout=60" ;;
    dynamo_events | vllm_events) echo "-max_len=4096 -dict=$HERE/dicts/events.dict -timeout=20" ;;
    config) echo "-max_len=4096 -dict=$HERE/dicts/json.dict -timeout=20" ;;
    *) echo "-max_len=4096 -timeout=20" ;;
    esac
}

mkdir -p "$WORK/logs"
summary="$WORK/summary-$MODE.md"
{
    echo "| target | executions | time (s) | exec/s | corpus (files / KiB) | peak RSS (MB) | result |"
    echo "|---|---|---|---|---|---|---|"
} >"$summary"
failed=0
for t in "${targets[@]}"; do
    if [ ! -x "$BIN/$t" ]; then
        echo "fuzz: unknown target '$t' (targets: ${ALL[*]})" >&2
        exit 2
    fi
    if [ "$MODE" = smoke ]; then
        # A throw-away corpus: the seeds only, a fixed mutation seed, a fixed time.
        corpus="$WORK/smoke/$t"
        rm -rf "$corpus"
        limit=(-max_total_time="$SMOKE_SECS" -seed=1)
    else
        corpus="$WORK/corpus/$t"
        limit=(-runs="$RUNS")
    fi
    art="$WORK/artifacts/$t"
    log="$WORK/logs/$t-$MODE.log"
    mkdir -p "$corpus" "$art"
    echo "fuzz: $t ($MODE)"
    start=$(date +%s.%N)
    set +e
    # shellcheck disable=SC2046
    "$BIN/$t" $(opts "$t") "${limit[@]}" -print_final_stats=1 -artifact_prefix="$art/" \
        "$corpus" "$WORK/seeds/$t" >"$log" 2>&1
    rc=$?
    set -e
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    files=$(find "$corpus" -type f | wc -l)
    kib=$(($(du -sb "$corpus" | cut -f1) / 1024))
    rate=$(awk -v n="${execs:-0}" -v s="$secs" 'BEGIN { printf "%d", (s > 0 ? n / s : 0) }')
    if [ $rc -eq 0 ]; then
        result="ok, 0 crashes"
    else
        failed=1
        artifact=$(grep -o "Test unit written to .*" "$log" | tail -1 | sed 's/Test unit written to //')
        result="FAILED (exit $rc): ${artifact:-see $log}"
        echo "fuzz: $t FAILED, log $log:" >&2
        grep -E -A12 "panicked at|ERROR: libFuzzer|SUMMARY" "$log" | head -40 >&2 || tail -40 "$log" >&2
    fi
    printf '| `%s` | %s | %.0f | %s | %s / %s | %s | %s |\n' "$t" "${execs:-?}" "$secs" "$rate" \
        "$files" "$kib" "${rss:-?}" "$result" >>"$summary"
    echo "fuzz: $t: ${execs:-?} executions in $(printf '%.0f' "$secs") s, $result"
done
echo
cat "$summary"
exit $failed

#!/bin/sh
# Runs every fuzz target, or the named ones, for a bounded time each:
#   tests/fuzz/run.sh BUILD_DIR SECONDS [TARGET...]
# BUILD_DIR is built with ./configure CC=clang --enable-fuzzing. Each target starts from a
# fresh seed corpus plus what earlier runs found (BUILD_DIR/tests/fuzz/out/TARGET/corpus),
# one process, one core. A target passes when libFuzzer ends without a crash, leak, timeout
# or out-of-memory; its log and any crash input stay in out/TARGET/. The last line is
# "tally: P passed, F failed", which .ci/run adds up. See tests/fuzz/README.
set -u

if [ $# -lt 2 ]; then
  echo "usage: $0 BUILD_DIR SECONDS [TARGET...]" >&2
  exit 2
fi
build=$(cd "$1" && pwd) || exit 2
secs=$2
shift 2
src=$(cd "$(dirname "$0")/../.." && pwd)
targets=${*:-npy npz arch image archive params http multipart}
out=$build/tests/fuzz/out
fixtures=${BIT_FIXTURES:-$src/../shared/fixtures/bit-tiny}

rm -rf "$out/seeds"
mkdir -p "$out"
if ! "$build/tests/fuzz/mkcorpus" "$out/seeds" "$fixtures"; then
  echo "FAIL mkcorpus: no seed corpus"
  echo "tally: 0 passed, 1 failed"
  exit 1
fi

# Extraction and upload targets write files: keep them in memory when possible.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then TMPDIR=/dev/shm; export TMPDIR; fi
sym=$(command -v llvm-symbolizer || command -v llvm-symbolizer-14 || true)
[ -n "$sym" ] && { ASAN_SYMBOLIZER_PATH=$sym; export ASAN_SYMBOLIZER_PATH; }

passed=0
failed=0
for t in $targets; do
  bin=$build/tests/fuzz/fuzz_$t
  dir=$out/$t
  mkdir -p "$dir/corpus"
  rm -f "$dir"/crash-* "$dir"/leak-* "$dir"/timeout-* "$dir"/oom-*
  if [ ! -x "$bin" ]; then
    echo "FAIL $t: $bin not built"
    failed=$((failed + 1))
    continue
  fi
  "$bin" -max_total_time="$secs" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 \
    -dict="$src/tests/fuzz/dict/$t.dict" -artifact_prefix="$dir/" \
    "$dir/corpus" "$out/seeds/$t" >"$dir/log" 2>&1
  rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -n 1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$dir/log" | tail -n 1)
  if [ "$rc" = 0 ]; then
    echo "ok   $t: ${runs:-?} runs in ${secs}s, ${cov:-no coverage line}"
    passed=$((passed + 1))
  else
    echo "FAIL $t: libFuzzer exited $rc after ${runs:-?} runs; input: $(ls "$dir"/crash-* "$dir"/leak-* "$dir"/timeout-* "$dir"/oom-* 2>/dev/null | head -n 1)"
    grep -E -A 12 '^(==[0-9]+==ERROR|.*runtime error|.*fuzz check failed|==[0-9]+== ERROR: libFuzzer)' "$dir/log" | head -n 40
    failed=$((failed + 1))
  fi
done
echo "tally: $passed passed, $failed failed"
[ "$failed" = 0 ]

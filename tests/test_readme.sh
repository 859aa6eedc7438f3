#!/usr/bin/env bash
# The README's "Five minutes with curl" block, run as written against a fresh `bit serve`
# with the repository's models/ (the default model) from the repository's folder: the block
# is extracted from README.md, only its address changes (an ephemeral port instead of 8080,
# and BIT_URL for the bit commands), and every answer it prints is checked. So the README
# cannot drift from the product. Ends with "tally: P passed, F failed".
set -u
builddir=$(pwd)
srcdir=$(sed -n 's/^abs_top_srcdir = //p' "$builddir/Makefile" 2>/dev/null | head -n 1)
[ -n "$srcdir" ] || srcdir=$(cd "$(dirname "$0")/.." && pwd)
bin=${BIT_BIN:-$builddir/bit}
case "$bin" in /*) ;; *) bin=$builddir/$bin ;; esac # it is linked from elsewhere
skip() { echo "test_readme.sh: $* (skipped)"; echo "tally: 0 passed, 0 failed"; exit 77; }
[ -r "$srcdir/models/bitd-fashion-r23.npz" ] || skip "models/bitd-fashion-r23.npz is missing"
command -v jq >/dev/null && command -v curl >/dev/null || skip "jq and curl are needed (deploy/install-deps.sh)"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bit-readme-XXXXXX")
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid"; rm -rf "$tmp"; }
trap cleanup EXIT

# The first sh block after the heading.
awk '/^## Five minutes with curl/ {on = 1} on && /^```sh$/ {inb = 1; next} inb && /^```$/ {exit} inb' \
  "$srcdir/README.md" >"$tmp/block.sh"
passed=0 failed=0
check() { # NAME CONDITION...
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok   $name"; else failed=$((failed + 1)); echo "FAIL $name"; fi
}
check block_found grep -q 'bit job watch' "$tmp/block.sh"

# A fresh server: the repository's models, an empty data dir, any free port.
mkdir -p "$tmp/bin" "$tmp/var" && ln -s "$bin" "$tmp/bin/bit"
"$bin" serve --listen 127.0.0.1:0 --models-dir "$srcdir/models" --data-dir "$tmp/var" \
  >"$tmp/serve.log" 2>&1 &
pid=$!
port=
for _ in $(seq 1 100); do
  port=$(sed -n 's/.*"listening".*"url":"http:\/\/127\.0\.0\.1:\([0-9]*\)".*/\1/p' "$tmp/serve.log" | head -n 1)
  [ -n "$port" ] && break
  sleep 0.1
done
check server_started test -n "$port"
[ -n "$port" ] || { cat "$tmp/serve.log" >&2; echo "tally: $passed passed, $((failed + 1)) failed"; exit 1; }

# Run it from the repository's folder (its paths are relative to it), writing nowhere there.
mkdir -p "$tmp/repo" && ln -s "$srcdir/examples" "$tmp/repo/examples"
sed "s/localhost:8080/localhost:$port/g" "$tmp/block.sh" >"$tmp/run.sh"
t0=$(date +%s)
(cd "$tmp/repo" && PATH="$tmp/bin:$PATH" BIT_URL="http://127.0.0.1:$port" bash -e "$tmp/run.sh") \
  >"$tmp/out.txt" 2>"$tmp/err.txt"
rc=$?
echo "     the block took $(($(date +%s) - t0)) s (exit $rc)"
check block_runs test "$rc" = 0
[ "$rc" = 0 ] || { tail -20 "$tmp/err.txt" "$tmp/out.txt" >&2; }

# Its answers, in order: the model list, the dataset, the job, the classification.
jsons() { grep '^{' "$tmp/out.txt"; }
lists_default() { jsons | head -n 1 | jq -e '[.models[].name] | index("bitd-fashion-r23") != null' >/dev/null; }
dataset_stored() { jsons | jq -se 'map(select(.classes != null and .id != null and (.id | startswith("ds_")))) | length == 1' >/dev/null; }
job_succeeded() { jsons | jq -se 'map(select((.id // "" | startswith("job_")) and .status == "succeeded" and .hyperparameters.pretrain_resolution == 32)) | length == 1' >/dev/null; }
classified() { jsons | tail -n 1 | jq -e '.predictions | length == 3' >/dev/null; }
check lists_the_default_model lists_default
check stores_the_dataset dataset_stored
check job_succeeded job_succeeded
check classifies_top3 classified
[ "$failed" = 0 ] || { echo "--- output"; cat "$tmp/out.txt"; echo "--- stderr"; tail -20 "$tmp/err.txt"; } >&2
echo "tally: $passed passed, $failed failed"
[ "$failed" = 0 ]

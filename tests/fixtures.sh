#!/bin/sh
# Checks a copy of the bit-tiny reference fixtures (README: Test fixtures) against the SHA-256
# sums its own manifest.json lists, so a partial or damaged copy is found before the tests
# fail on it. Usage: tests/fixtures.sh [DIR] (default $BIT_FIXTURES, else
# ../shared/fixtures/bit-tiny beside the source tree). Exit 0 when every file matches.
set -u
dir=${1:-${BIT_FIXTURES:-$(cd "$(dirname "$0")/.." && pwd)/../shared/fixtures/bit-tiny}}
if [ ! -f "$dir/manifest.json" ]; then
  echo "fixtures: no manifest.json in $dir: not a copy of bit-tiny" >&2
  exit 1
fi
# "files": { "NAME": { ... "sha256": "HEX" ... }, ... }, one key a line (indent 2, then 3)
awk '/^ "files": \{/ { on = 1; next }
     on && /^ [}]/ { on = 0 }
     on && /^  "[^"]+": \{/ { split($0, q, "\""); name = q[2] }
     on && /"sha256": "/ { split($0, q, "\""); print q[4] "  " name }' "$dir/manifest.json" >"${TMPDIR:-/tmp}/bit-fixtures.$$"
n=$(wc -l <"${TMPDIR:-/tmp}/bit-fixtures.$$")
if [ "$n" -lt 1 ]; then
  echo "fixtures: $dir/manifest.json lists no files" >&2
  rm -f "${TMPDIR:-/tmp}/bit-fixtures.$$"
  exit 1
fi
out=$(cd "$dir" && sha256sum --quiet -c "${TMPDIR:-/tmp}/bit-fixtures.$$" 2>&1)
rc=$?
rm -f "${TMPDIR:-/tmp}/bit-fixtures.$$"
if [ "$rc" != 0 ]; then
  echo "$out" | grep "FAILED" | sed "s|^|fixtures: $dir/|" >&2
  echo "fixtures: $dir is not an intact copy of bit-tiny" >&2
  exit 1
fi
echo "fixtures: $n files in $dir match manifest.json"

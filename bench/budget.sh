#!/bin/sh
# Time budgets against the clock (a benchmark, not a test; issue 14's closing table): for each
# case and each budget, `bit finetune --budget-minutes B` and the same budget with
# `--mode linear`; prints the plan chosen (mode, resolution, steps), predicted vs actual
# minutes and validation top-1, one line per run, and appends each run as a JSON line to
# RESULTS so a table too long for one sitting can be gathered over several.
#
#   sh bench/budget.sh [CASE...]     cases: digits (default model, its scaled rule: 40/32),
#                                    r50-128 (R50x1, random weights, examples/digits: the
#                                    rule's 160/128), r50-480 (R50x1, random weights, the
#                                    digits upscaled to 128 px: the rule's 512/480)
#
# Environment: BIT (default build/bit), BUDGETS (minutes, default "5 30 120"), LINEAR (1: also
# the linear run at each budget; default 1), RESULTS (default bench/results/budget.jsonl),
# WORK (kept when given), PRECISION (default auto). Needs Debian's python3-pil for r50-480's
# upscaling. Run it on a quiet machine: the plan measures this machine's speed first, and
# anything that starts beside it afterwards makes the actual time longer than predicted.
set -eu
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
bit=${BIT:-$top/build/bit}
budgets=${BUDGETS:-5 30 120}
results=${RESULTS:-$here/results/budget.jsonl}
precision=${PRECISION:-auto}
cases=${*:-digits r50-128 r50-480}
[ -x "$bit" ] || { echo "budget.sh: no bit binary at $bit (set BIT)" >&2; exit 1; }
if [ -n "${WORK:-}" ]; then work=$WORK; mkdir -p "$work"
else work=$(mktemp -d "${TMPDIR:-/tmp}/bit-budget-XXXXXX"); trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$(dirname "$results")"

# The digits at 128 x 128 (nearest neighbour keeps the strokes sharp), so the HyperRule sees
# images of 96 px or more and picks 512/480.
upscale() { # SRC DST
  [ -d "$2" ] && return 0
  /usr/bin/python3 - "$1" "$2" <<'EOF'
import os, sys
from PIL import Image
src, dst = sys.argv[1], sys.argv[2]
for root, _, files in os.walk(src):
    for f in files:
        if f.endswith('.png'):
            out = os.path.join(dst, os.path.relpath(root, src))
            os.makedirs(out, exist_ok=True)
            Image.open(os.path.join(root, f)).resize((128, 128), Image.NEAREST).save(os.path.join(out, f))
EOF
}

# Case -> "MODEL DATA".
setup() {
  case "$1" in
    digits) echo "$top/models/bitd-fashion-r23.npz $top/examples/digits" ;;
    r50-128 | r50-480)
      [ -f "$work/r50/model.npz" ] ||
        "$bit" pretrain --arch R50x1 --init-only --seed 0 --out "$work/r50" >/dev/null
      if [ "$1" = r50-480 ]; then upscale "$top/examples/digits" "$work/digits128"
        echo "$work/r50/model.npz $work/digits128"
      else echo "$work/r50/model.npz $top/examples/digits"; fi ;;
    *) echo "budget.sh: unknown case $1 (digits, r50-128, r50-480)" >&2; exit 2 ;;
  esac
}

run() { # CASE BUDGET MODE MODEL DATA
  out=$work/$1-$2-$3 log=$work/$1-$2-$3.log
  rm -rf "$out"
  extra=""
  [ "$3" = linear ] && extra="--mode linear"
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  "$bit" finetune --model "$4" --data "$5" --out "$out" --budget-minutes "$2" \
    --precision "$precision" --json $extra >"$log" 2>&1 || { echo "$1 $2 $3: failed (log $log)"; return 0; }
  t1=$(date +%s.%N)
  # The start line carries the plan, the done line the final validation.
  python3 "$here/budget-row.py" "$log" "$1" "$2" "$3" "$t0" "$t1" "$results"
}

for c in $cases; do
  set -- $(setup "$c")
  for b in $budgets; do
    run "$c" "$b" full "$1" "$2"
    [ "${LINEAR:-1}" = 1 ] && run "$c" "$b" linear "$1" "$2"
  done
done
echo "budget.sh: runs appended to $results"

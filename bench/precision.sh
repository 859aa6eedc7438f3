#!/bin/sh
# bit bench side by side: an old build in f32 against this one in f32 and bf16 (R50x1, random
# weights, 10-class head, 2 threads): inference 128 px b1/b8/b32 and 480 px b1, training
# 128 px b16/b32 with peak RSS. Run on a quiet machine: one busy core stalls OpenMP's team.
#   OLD=/path/to/old/bit NEW=build/bit sh bench/precision.sh
set -eu
OLD=${OLD:?set OLD to the old build\'s bit} NEW=${NEW:-build/bit}
row() { # LABEL: the JSON line's figures
  python3 -c 'import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print("%-9s %7.1f images/s %8.1f ms  peak RSS %6.0f MB  %s %s" % (sys.argv[1], d["images_per_sec"], d["ms_per_batch"], d.get("peak_rss_mb", 0), d.get("precision", "f32"), d.get("isa", "")))' "$1"
}
for cfg in "--batch 1 --res 128" "--batch 8 --res 128" "--batch 32 --res 128" "--batch 1 --res 480" \
           "--train --batch 16 --res 128" "--train --batch 32 --res 128"; do
  echo "== $cfg"
  # shellcheck disable=SC2086
  "$OLD" bench --arch R50x1 --head 10 $cfg --iters 5 --threads 2 --precision f32 2>/dev/null | row old-f32
  # shellcheck disable=SC2086
  "$NEW" bench --arch R50x1 --head 10 $cfg --iters 5 --threads 2 --precision f32 2>/dev/null | row new-f32
  # shellcheck disable=SC2086
  "$NEW" bench --arch R50x1 --head 10 $cfg --iters 5 --threads 2 --precision bf16 2>/dev/null | row new-bf16
done

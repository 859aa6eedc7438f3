#!/bin/sh
# Transfer evidence for the default base model (a benchmark, not a test): 10-shot fine-tuning
# on examples/digits (scikit-learn's 8x8 digits, 10 training images per class, validation =
# the fixed val/ folder of 896 images) from the pre-trained model and from a random
# initialisation of the same architecture, with the same hyper-parameters (the HyperRule,
# its resolution scaled to the model's pre-training resolution). Prints one line per run and
# a table of the medians over SEEDS (default 0 1 2); the random initialisation of seed s is
# `bit pretrain --init-only --seed s`.
#
#   sh bench/transfer-digits.sh [MODEL.npz]     (default models/bitd-fashion-r23.npz)
#
# Environment: BIT (default build/bit), SEEDS, BATCH (default: the rule's 512), STEPS (scale
# the rule's schedule; default:
# the rule's own 500), WORK (kept when given), NICE (default 19). Runs under nice; ~5 minutes a run on
# 2 cores at today's speed.
set -eu
# A job under nice -n 19 on a shared machine is descheduled often: OpenMP threads that spin
# at barriers burn the few slices it gets (measured here: 13 img/s spinning, 110 passive,
# same load). Passive waiting costs little on an idle machine.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
model=${1:-$top/models/bitd-fashion-r23.npz}
data=$top/examples/digits
bit=${BIT:-$top/build/bit}
seeds=${SEEDS:-0 1 2}
json=${model%.npz}.json
[ -x "$bit" ] || { echo "transfer-digits.sh: no bit binary at $bit (set BIT)" >&2; exit 1; }
[ -r "$model" ] || { echo "transfer-digits.sh: no model $model" >&2; exit 1; }
if [ -n "${WORK:-}" ]; then work=$WORK; mkdir -p "$work"
else work=$(mktemp -d "${TMPDIR:-/tmp}/bit-transfer-XXXXXX"); trap 'rm -rf "$work"' EXIT
fi

# The architecture and the pre-training resolution come from the model itself.
arch=$("$bit" inspect "$model" | tr -d ' \n')
units=$(echo "$arch" | sed -n 's/.*"units":\[\([0-9,]*\)\].*/\1/p')
width=$(echo "$arch" | sed -n 's/.*"width":\([0-9]*\).*/\1/p')
pres=$(sed -n 's/.*"pretrain_resolution": *\([0-9]*\).*/\1/p' "$json" 2>/dev/null || true)
pres=${pres:-224}
common="--data $data --examples-per-class 10 --pretrain-res $pres --precision f32 --json"
[ -n "${STEPS:-}" ] && common="$common --steps $STEPS"
[ -n "${BATCH:-}" ] && common="$common --batch $BATCH"

val_top1() { sed -n 's/.*"type":"done".*"val_top1":\([0-9.]*\).*/\1/p' "$1"; }
median() {
  tr ' ' '\n' | grep . | sort -n | awk '{v[NR] = $1} END {print (v[int((NR + 1) / 2)] + v[int(NR / 2) + 1]) / 2}'
}
pct() { awk -v v="$1" 'BEGIN { printf "%.1f", 100 * v }'; }

pre="" rnd="" prep="" rndp=""
for s in $seeds; do
  "$bit" pretrain --units "$units" --width "$width" --init-only --seed "$s" --out "$work/init-$s" >/dev/null
  for kind in pretrained random; do
    base=$model
    [ "$kind" = random ] && base=$work/init-$s/model.npz
    t0=$(date +%s)
    # shellcheck disable=SC2086
    nice -n "${NICE:-19}" "$bit" finetune --model "$base" --out "$work/$kind-$s" --seed "$s" $common \
      >"$work/$kind-$s.log"
    acc=$(val_top1 "$work/$kind-$s.log")
    res=$(sed -n '/"resolution"/,/]/p' "$work/$kind-$s/state.json" | tr -d ' \n' | sed 's/"resolution"://; s/,$//')
    echo "{\"kind\": \"$kind\", \"seed\": $s, \"val_top1\": $acc, \"resolution\": $res, \"seconds\": $(($(date +%s) - t0))}"
    if [ "$kind" = pretrained ]; then pre="$pre $acc" prep="$prep $(pct "$acc")"
    else rnd="$rnd $acc" rndp="$rndp $(pct "$acc")"; fi
  done
done
mp=$(echo "$pre" | median)
mr=$(echo "$rnd" | median)
echo
echo "| initialisation | val top-1 % per seed ($seeds) | median |"
echo "| --- | --- | --- |"
echo "| pre-trained ($(basename "$model")) |$prep | $(pct "$mp") |"
echo "| random (same architecture) |$rndp | $(pct "$mr") |"
awk -v a="$mp" -v b="$mr" 'BEGIN { printf "pre-trained - random: %+.1f points\n", 100 * (a - b) }'

#!/bin/sh
# Serving throughput, side by side with the engine alone, on one machine in one run: a
# random-weight R50x1 checkpoint (10-class head) served as r128 (128x128) and r480 (480x480,
# via r480.json). First `bit bench` with every core (--threads CORES) at batch 1..8 picks the
# engine's best batch size, then an idle server under bench/loadgen (1 and 32 clients), each
# figure measured between two `bit bench` runs whose mean is its reference, then for each
# --infer-share policy a server at 8 clients, idle and while a fine-tune job trains. Prints
# JSON lines, then the issue-19 ratios with their targets. From the source tree:
#   sh bench/classify.sh [BUILD_DIR]
# env: SECS (per load level, default 10), ITERS (bit bench timed iterations at 128 px,
# default 20; a quarter of that at 480 px), CORES (default nproc), SHARES (the --infer-share
# policies compared while training, default "-1 0"), SERVE_ARGS, PORT.
# The machine may be shared: the script prints `uptime` before and after; compare only
# figures of one run.
set -eu
B=${1:-build}
SECS=${SECS:-10}
ITERS=${ITERS:-20}
PORT=${PORT:-18093}
CORES=${CORES:-$(nproc)}
SHARES=${SHARES:--1 0}
make -s -C "$B" bit bench/loadgen >/dev/null
W=$(mktemp -d "${TMPDIR:-/tmp}/bit-bench-XXXXXX")
PID=
stop_server() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; PID=; fi; }
cleanup() { stop_server; rm -rf "$W"; }
trap cleanup EXIT INT TERM
LG="$B/bench/loadgen"
mkdir -p "$W/models"
"$LG" --make-checkpoint "$W/models/r128.npz" --arch R50x1 --head 10
cp "$W/models/r128.npz" "$W/models/r480.npz"
echo '{"resolution": 480}' > "$W/models/r480.json"
"$LG" --make-image "$W/photo.jpg" --width 640 --height 480
"$LG" --make-dataset "$W/data.npz" --n 64 --res 64 --classes 4
URL="localhost:$PORT"

# bit bench at one batch size: its line, and ips/ms in $EIPS/$EMS
eng() { # res batch iters
    j=$("$B/bit" bench --model "$W/models/r128.npz" --batch "$2" --res "$1" --threads "$CORES" \
        --iters "$3" | tr -d '\n ')
    echo "{\"phase\":\"engine\",\"res\":$1,\"batch\":$2,\"bench\":$j}"
    EIPS=$(echo "$j" | jnum images_per_sec); EMS=$(echo "$j" | jnum ms_per_batch)
}
mean2() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (a + b) / 2 }'; }

# A number out of a one-line JSON object.
jnum() { sed -n "s/.*\"$1\":\([-0-9.e+]*\).*/\1/p" | head -n 1; }
metric() { curl -s "$URL/metrics" | awk -v k="$1" '$1 == k { print $2 }'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b > 0) ? a / b : 0 }'; }
echo "{\"phase\":\"machine\",\"cores\":$CORES,\"uptime\":\"$(uptime | sed 's/^ *//')\"}"

# ---- the engine alone, every core: the best batch size per resolution
for r in 128 480; do
    best=0; bestb=0
    it=$([ "$r" = 480 ] && echo $(( (ITERS + 3) / 4 )) || echo "$ITERS")
    for b in 1 2 4 8; do
        eng "$r" "$b" "$it"
        if awk -v a="$EIPS" -v b="$best" 'BEGIN { exit !(a > b) }'; then best=$EIPS; bestb=$b; fi
    done
    eval "eng_bestb_$r=$bestb"; eval "eng_it_$r=$it"
done

start_server() {
    # shellcheck disable=SC2086
    "$B/bit" serve --listen "127.0.0.1:$PORT" --data-dir "$W/var" --models-dir "$W/models" \
        --http-threads 8 --cores "$CORES" "$@" ${SERVE_ARGS:-} 2>"$W/serve.log" &
    PID=$!
    until curl -sf "$URL/healthz" >/dev/null; do sleep 0.2; done
}

# loadgen at one client count; prints its line and leaves it in $LAST, the mean batch in $MB
run() { # phase model clients
    s0=$(metric bit_inference_batch_size_sum); c0=$(metric bit_inference_batch_size_count)
    LAST=$("$LG" --port "$PORT" --model "$2" --image "$W/photo.jpg" --seconds "$SECS" --clients "$3")
    s1=$(metric bit_inference_batch_size_sum); c1=$(metric bit_inference_batch_size_count)
    MB=$(echo "$s0 $c0 $s1 $c1" | awk '{ printf "%.2f", ($4 > $2) ? ($3 - $1) / ($4 - $2) : 0 }')
    echo "$LAST" | sed "s/^{/{\"phase\":\"$1\",\"mean_batch\":$MB,/"
}

# ---- an idle server; each figure between two engine runs (the machine may be shared:
# its reference is their mean, measured minutes apart at most)
start_server
eng 128 1 "$ITERS"; a=$EMS
run idle r128 1;  srv_p50_1=$(echo "$LAST" | jnum p50_ms)
eng 128 1 "$ITERS"; eng_b1_ms=$(mean2 "$a" "$EMS")
# shellcheck disable=SC2154
eng 128 "$eng_bestb_128" "$ITERS"; a=$EIPS
run idle r128 32; srv_128=$(echo "$LAST" | jnum rps); mb_32=$MB
eng 128 "$eng_bestb_128" "$ITERS"; eng_best_128=$(mean2 "$a" "$EIPS")
# shellcheck disable=SC2154
eng 480 "$eng_bestb_480" "$eng_it_480"; a=$EIPS
run idle r480 32; srv_480=$(echo "$LAST" | jnum rps)
eng 480 "$eng_bestb_480" "$eng_it_480"; eng_best_480=$(mean2 "$a" "$EIPS")
stop_server

# ---- while a job trains, per policy: the idle p99 at 8 clients first, on the same server
TABLE=
for share in $SHARES; do
    rm -rf "${W:?}/var"
    start_server --infer-share "$share"
    run "idle-share$share" r128 8; idle_p99=$(echo "$LAST" | jnum p99_ms)
    DS=$(curl -s -H 'Content-Type: application/octet-stream' --data-binary @"$W/data.npz" \
        "$URL/v1/datasets?format=npz" | grep -o '"id":"ds_[0-9a-f]*"' | cut -d'"' -f4)
    JOB=$(curl -s -H 'Content-Type: application/json' -d "{\"dataset\": \"$DS\", \"base_model\": \"r128\",
        \"hyperparameters\": {\"steps\": 100000, \"batch\": 8}}" "$URL/v1/jobs" |
        grep -o '"id":"job_[0-9a-f]*"' | cut -d'"' -f4)
    until curl -s "$URL/v1/jobs/$JOB" | grep -q '"status":"running"'; do sleep 0.5; done
    sleep 5 # past the job's first steps (plans, packing)
    y0=$(metric bit_training_yields_total)
    run "training-share$share" r128 8; train_p99=$(echo "$LAST" | jnum p99_ms); train_rps=$(echo "$LAST" | jnum rps)
    tips=$(metric bit_training_images_per_second); y1=$(metric bit_training_yields_total)
    echo "{\"phase\":\"training-share$share\",\"train_images_per_sec\":$tips,\"yields\":$((${y1%.*} - ${y0%.*}))}"
    curl -s -X POST "$URL/v1/jobs/$JOB/cancel" >/dev/null
    stop_server
    TABLE="$TABLE$(printf '%-12s %10s %10s %8s %10s %12s' "$share" "$idle_p99" "$train_p99" \
        "$(div "$train_p99" "$idle_p99")" "$train_rps" "$tips")
"
done

echo "{\"phase\":\"machine\",\"uptime_after\":\"$(uptime | sed 's/^ *//')\"}"
# shellcheck disable=SC2154
{
    echo
    echo "issue 19 targets (server vs bit bench --threads $CORES, same run)"
    printf '  idle 32 clients 128 px: %s img/s vs engine best %s (batch %s): ratio %s (target >= 0.90)\n' \
        "$srv_128" "$eng_best_128" "$eng_bestb_128" "$(div "$srv_128" "$eng_best_128")"
    printf '  idle 32 clients 480 px: %s img/s vs engine best %s (batch %s): ratio %s (target >= 0.90)\n' \
        "$srv_480" "$eng_best_480" "$eng_bestb_480" "$(div "$srv_480" "$eng_best_480")"
    printf '  mean batch at 32 clients (128 px): %s (target >= 6)\n' "$mb_32"
    printf '  1 client 128 px p50: %s ms vs bit bench --batch 1 median %s ms: ratio %s (target <= 1.10)\n' \
        "$srv_p50_1" "$eng_b1_ms" "$(div "$srv_p50_1" "$eng_b1_ms")"
    echo "  while a job trains, 8 clients 128 px (p99 ratio target <= 2):"
    printf '  %-12s %10s %10s %8s %10s %12s\n' infer-share idle_p99 train_p99 ratio rps train_img/s
    printf '%s' "$TABLE" | sed 's/^/  /'
}

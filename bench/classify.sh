#!/bin/sh
# Classification under load: a random-weight R50x1 checkpoint (10-class head) served as r128
# (128x128) and r480 (480x480, via r480.json), bench/loadgen at 1, 8 and 32 clients, then the
# same while a fine-tune job trains, then the engine alone (bit bench, one thread: the server's
# default --infer-threads) for the server-overhead comparison. From the source tree:
#   sh bench/classify.sh [BUILD_DIR]     env: SECS (per level, default 10), SERVE_ARGS, PORT
set -eu
B=${1:-build}
SECS=${SECS:-10}
PORT=${PORT:-18093}
make -s -C "$B" bit bench/loadgen >/dev/null
W=$(mktemp -d "${TMPDIR:-/tmp}/bit-bench-XXXXXX")
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT INT TERM
LG="$B/bench/loadgen"
mkdir -p "$W/models"
"$LG" --make-checkpoint "$W/models/r128.npz" --arch R50x1 --head 10
cp "$W/models/r128.npz" "$W/models/r480.npz"
echo '{"resolution": 480}' > "$W/models/r480.json"
"$LG" --make-image "$W/photo.jpg" --width 640 --height 480
"$LG" --make-dataset "$W/data.npz" --n 64 --res 64 --classes 4

# shellcheck disable=SC2086
"$B/bit" serve --listen "127.0.0.1:$PORT" --data-dir "$W/var" --models-dir "$W/models" \
    --http-threads 32 ${SERVE_ARGS:-} 2>"$W/serve.log" &
PID=$!
until curl -sf "localhost:$PORT/healthz" >/dev/null; do sleep 0.2; done
URL="localhost:$PORT"

metric() { curl -s "$URL/metrics" | awk -v k="$1" '$1 == k { print $2 }'; }

# One model at 1, 8 and 32 clients, then its mean batch size over the run.
load() {
    s0=$(metric bit_inference_batch_size_sum); c0=$(metric bit_inference_batch_size_count)
    "$LG" --port "$PORT" --model "$2" --image "$W/photo.jpg" --seconds "$SECS" --clients 1,8,32 |
        sed "s/^{/{\"phase\":\"$1\",/"
    s1=$(metric bit_inference_batch_size_sum); c1=$(metric bit_inference_batch_size_count)
    echo "{\"phase\":\"$1\",\"model\":\"$2\",\"mean_batch\":$(echo "$s0 $c0 $s1 $c1" |
        awk '{ printf "%.2f", ($4 > $2) ? ($3 - $1) / ($4 - $2) : 0 }')}"
}

load idle r128
load idle r480

DS=$(curl -s -H 'Content-Type: application/octet-stream' --data-binary @"$W/data.npz" \
    "$URL/v1/datasets?format=npz" | grep -o '"id":"ds_[0-9a-f]*"' | cut -d'"' -f4)
JOB=$(curl -s -H 'Content-Type: application/json' -d "{\"dataset\": \"$DS\", \"base_model\": \"r128\",
    \"hyperparameters\": {\"steps\": 100000, \"batch\": 8}}" "$URL/v1/jobs" |
    grep -o '"id":"job_[0-9a-f]*"' | cut -d'"' -f4)
until curl -s "$URL/v1/jobs/$JOB" | grep -q '"status":"running"'; do sleep 0.5; done
sleep 5 # past the job's first steps (plans, packing)
load training r128
load training r480
echo "{\"phase\":\"training\",\"train_images_per_sec\":$(metric bit_training_images_per_second)}"
curl -s -X POST "$URL/v1/jobs/$JOB/cancel" >/dev/null
echo "{\"phase\":\"server\",\"peak_rss_mb\":$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$PID/status")}"

kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
for r in 128 480; do
    for b in 1 2 4 8; do
        iters=$([ "$r" = 480 ] && echo 3 || echo 20)
        printf '{"phase":"engine","res":%s,"batch":%s,"bench":%s}\n' "$r" "$b" \
            "$("$B/bit" bench --model "$W/models/r128.npz" --batch "$b" --res "$r" --threads 1 \
                --iters "$iters" | tr -d '\n ')"
    done
done

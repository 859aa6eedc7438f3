#!/bin/sh
# bit-fetch-weights: downloads released BiT checkpoints (.npz, the official schema bit loads
# unchanged) by name into the models directory, resumably, then prints each file's size and
# SHA-256 and checks it with `bit inspect`. `make install` installs it as bit-fetch-weights.
#
#   fetch-weights.sh [--dir DIR] [--force] [--no-check] NAME...
#   fetch-weights.sh --list
#
# DIR defaults to $BIT_MODELS_DIR, else ./models. A file lands as DIR/NAME.npz only once it
# is complete and `bit inspect` reads it with the architecture and head the table below
# gives (--no-check: any readable checkpoint); until then it is DIR/NAME.npz.part and the
# next run resumes it. BIT_WEIGHTS_BASE_URL replaces https://storage.googleapis.com/bit_models
# (a mirror; file:// works); BIT_BIN names the bit binary (default: bit on PATH, else the
# clone's build/bit or bit beside this script's directory). A failure says whether the network
# is missing (no DNS, no route: what to do offline) or a download was cut off (run again).
#
# Sources: google-research/big_transfer README (BiT-S/BiT-M NAME.npz, the -ILSVRC2012
# fine-tuned BiT-M models, and distill/ for the distilled R50x1 models and their
# BiT-M-R152x2 teachers). Parameter counts are bit's own (eng_arch_param_count).
set -eu

me="bit-fetch-weights"
base=${BIT_WEIGHTS_BASE_URL:-https://storage.googleapis.com/bit_models}
base=${base%/}

# NAME | path under the base URL | architecture | head classes | parameters (M) | what it is
table() {
  cat <<'EOF'
BiT-S-R50x1|BiT-S-R50x1.npz|R50x1|1000|25.5|BiT-S: pre-trained on ILSVRC-2012 (1.3M images)
BiT-S-R50x3|BiT-S-R50x3.npz|R50x3|1000|217.3|BiT-S: pre-trained on ILSVRC-2012
BiT-S-R101x1|BiT-S-R101x1.npz|R101x1|1000|44.5|BiT-S: pre-trained on ILSVRC-2012
BiT-S-R101x3|BiT-S-R101x3.npz|R101x3|1000|387.9|BiT-S: pre-trained on ILSVRC-2012
BiT-S-R152x2|BiT-S-R152x2.npz|R152x2|1000|236.3|BiT-S: pre-trained on ILSVRC-2012 (R152x2: added after the paper)
BiT-S-R152x4|BiT-S-R152x4.npz|R152x4|1000|936.5|BiT-S: pre-trained on ILSVRC-2012
BiT-M-R50x1|BiT-M-R50x1.npz|R50x1|21843|68.3|BiT-M: pre-trained on ImageNet-21k (14M images)
BiT-M-R50x3|BiT-M-R50x3.npz|R50x3|21843|345.4|BiT-M: pre-trained on ImageNet-21k
BiT-M-R101x1|BiT-M-R101x1.npz|R101x1|21843|87.2|BiT-M: pre-trained on ImageNet-21k
BiT-M-R101x3|BiT-M-R101x3.npz|R101x3|21843|516.0|BiT-M: pre-trained on ImageNet-21k
BiT-M-R152x2|BiT-M-R152x2.npz|R152x2|21843|321.7|BiT-M: pre-trained on ImageNet-21k (R152x2: added after the paper)
BiT-M-R152x4|BiT-M-R152x4.npz|R152x4|21843|1107.3|BiT-M: pre-trained on ImageNet-21k
BiT-M-R50x1-ILSVRC2012|BiT-M-R50x1-ILSVRC2012.npz|R50x1|1000|25.5|BiT-M fine-tuned on ILSVRC-2012: a 1000-class classifier
BiT-M-R50x3-ILSVRC2012|BiT-M-R50x3-ILSVRC2012.npz|R50x3|1000|217.3|BiT-M fine-tuned on ILSVRC-2012
BiT-M-R101x1-ILSVRC2012|BiT-M-R101x1-ILSVRC2012.npz|R101x1|1000|44.5|BiT-M fine-tuned on ILSVRC-2012
BiT-M-R101x3-ILSVRC2012|BiT-M-R101x3-ILSVRC2012.npz|R101x3|1000|387.9|BiT-M fine-tuned on ILSVRC-2012
BiT-M-R152x2-ILSVRC2012|BiT-M-R152x2-ILSVRC2012.npz|R152x2|1000|236.3|BiT-M fine-tuned on ILSVRC-2012
BiT-M-R152x4-ILSVRC2012|BiT-M-R152x4-ILSVRC2012.npz|R152x4|1000|936.5|BiT-M fine-tuned on ILSVRC-2012
BiT-R50x1-distilled-224|distill/R50x1_224.npz|R50x1|1000|25.5|R50x1 distilled from BiT-M-R152x2 on ILSVRC-2012, 224 px
BiT-R50x1-distilled-160|distill/R50x1_160.npz|R50x1|1000|25.5|R50x1 distilled from BiT-M-R152x2 on ILSVRC-2012, 160 px
BiT-M-R152x2-teacher-224|distill/R152x2_T_224.npz|R152x2|1000|236.3|the distillation teacher (BiT-M-R152x2 on ILSVRC-2012), 224 px
BiT-M-R152x2-teacher-384|distill/R152x2_T_384.npz|R152x2|1000|236.3|the distillation teacher, 384 px
EOF
}

usage() {
  cat <<EOF
usage: $me [--dir DIR] [--force] [--no-check] NAME...
       $me --list

Downloads released BiT checkpoints into DIR (default \$BIT_MODELS_DIR, else ./models) as
NAME.npz, resuming interrupted downloads, and checks each with \`bit inspect\`.

  --list       the names, architectures, head sizes, sizes and URLs
  --dir DIR    the models directory
  --force      download again even when DIR/NAME.npz exists
  --no-check   accept any readable checkpoint, not only the table's architecture and head
EOF
}

die() { # die MESSAGE [STATUS]
  echo "$me: $1" >&2
  exit "${2:-1}"
}

list() {
  printf '%-26s %-7s %6s %9s  %s\n' NAME ARCH HEAD SIZE URL
  table | while IFS='|' read -r n p a h m _; do
    printf '%-26s %-7s %6s %6.0f MB  %s/%s\n' "$n" "$a" "$h" "$(awk -v m="$m" 'BEGIN { print m * 4 }')" "$base" "$p"
  done
  printf '\nSIZE: float32 parameters; the head follows the name (BiT-M: ImageNet-21k, 21843 classes).\n'
}

field() { # field NAME COLUMN: a column of NAME's row; fails when NAME is not in the table
  table | awk -F'|' -v n="$1" -v c="$2" '$1 == n { print $c; found = 1 } END { exit !found }'
}

json_str() { sed -n "s/^ *\"$1\": \"\\(.*\\)\",*\$/\\1/p"; }
json_num() { sed -n "s/^ *\"$1\": \\([0-9]*\\),*\$/\\1/p"; }

# bit on PATH (BIT_BIN first), else the build in the clone this script belongs to: build/
# (the README's out-of-tree build) or the source directory itself (an in-tree build).
find_bit() {
  here=$(cd "$(dirname "$0")" && pwd)
  if [ -n "${BIT_BIN:-}" ]; then
    echo "$BIT_BIN"
  elif command -v bit >/dev/null 2>&1; then
    command -v bit
  else
    for b in "$here/../build/bit" "$here/../bit"; do
      [ -x "$b" ] && { echo "$b"; return 0; }
    done
    return 1
  fi
}

size_of() { stat -c %s "$1" 2>/dev/null || echo 0; }

# why CURL_EXIT URL BEFORE AFTER: what went wrong, for people; offline causes say what to do.
why() {
  offline="without a network, copy $name.npz from a machine that has it into $dir (README: Offline), or set BIT_WEIGHTS_BASE_URL to a mirror (file:// works)"
  case "$1" in
    5 | 6) echo "cannot resolve the host of $2: no network or no DNS here; $offline" ;;
    7) echo "cannot connect to the host of $2 (or to the proxy): no network, or it is blocked; $offline" ;;
    28) if [ "$4" -gt "$3" ]; then
          echo "the download stalled at $4 bytes; run again to resume"
        else
          echo "timed out connecting to $2: no network, or it is blocked; $offline"
        fi ;;
    18 | 16 | 52 | 55 | 56 | 92) echo "the download was interrupted at $4 bytes; run again to resume from there" ;;
    22) echo "the server refused $2 (an HTTP error: a wrong BIT_WEIGHTS_BASE_URL?)" ;;
    37) echo "cannot read $2" ;;
    *) echo "the download from $2 failed (curl exit $1); run again to resume" ;;
  esac
}

# download URL FILE: curl, resuming FILE when it holds a partial download.
download() {
  progress=-sS
  [ -t 2 ] && progress=--progress-bar
  rc=0
  curl -fL $progress --retry 3 --retry-delay 2 --connect-timeout 30 -C - -o "$2" "$1" || rc=$?
  if [ "$rc" = 33 ] || [ "$rc" = 36 ]; then # the server cannot resume there: start over
    echo "$me: cannot resume $2; downloading it again" >&2
    rm -f "$2"
    rc=0
    curl -fL $progress --retry 3 --retry-delay 2 --connect-timeout 30 -o "$2" "$1" || rc=$?
  fi
  return "$rc"
}

fetch_one() { # NAME: 0 when DIR/NAME.npz is in place and checked
  name=$1
  path=$(field "$name" 2) arch=$(field "$name" 3) head=$(field "$name" 4)
  final=$dir/$name.npz part=$dir/$name.npz.part
  if [ -f "$final" ] && [ "$force" = 0 ]; then
    echo "$name: already present"
    file=$final
  else
    url=$base/$path
    if [ -s "$part" ]; then
      echo "$name: resuming $url at $(stat -c %s "$part") bytes"
    else
      echo "$name: downloading $url"
    fi
    before=$(size_of "$part")
    if ! download "$url" "$part"; then
      echo "$me: $name: $(why "$rc" "$url" "$before" "$(size_of "$part")")" >&2
      [ -s "$part" ] || rm -f "$part"
      return 1
    fi
    file=$part
  fi
  if ! out=$("$bit" inspect "$file" 2>&1); then
    echo "$me: $name: $file is not a readable BiT checkpoint: $out" >&2
    [ "$file" = "$part" ] && rm -f "$part" # complete but wrong: the next run starts over
    return 1
  fi
  got_arch=$(echo "$out" | json_str architecture)
  got_head=$(echo "$out" | json_num head)
  params=$(echo "$out" | json_num parameters)
  if [ "$check" = 1 ] && { [ "$got_arch" != "$arch" ] || [ "$got_head" != "$head" ]; }; then
    echo "$me: $name: expected $arch with a $head-class head, $file holds $got_arch with a $got_head-class head (--no-check accepts it)" >&2
    [ "$file" = "$part" ] && rm -f "$part"
    return 1
  fi
  if [ "$file" = "$part" ]; then
    mv -f "$part" "$final"
  fi
  bytes=$(stat -c %s "$final")
  sum=$(sha256sum "$final" | cut -d' ' -f1)
  echo "$name: $final"
  awk -v b="$bytes" 'BEGIN { printf "  size    %.1f MB (%d bytes)\n", b / 1e6, b }'
  echo "  sha256  $sum"
  echo "  model   $got_arch, head $got_head, $params parameters"
}

names="" force=0 check=1 dir=${BIT_MODELS_DIR:-./models}
while [ $# -gt 0 ]; do
  case "$1" in
    --list) list; exit 0 ;;
    -h | --help) usage; exit 0 ;;
    --dir) [ $# -ge 2 ] || die "--dir needs a directory" 2; dir=$2; shift ;;
    --dir=*) dir=${1#*=} ;;
    --force) force=1 ;;
    --no-check) check=0 ;;
    -*) usage >&2; die "unknown option $1" 2 ;;
    *) names="$names $1" ;;
  esac
  shift
done
[ -n "$names" ] || { usage >&2; exit 2; }
for n in $names; do
  field "$n" 1 >/dev/null || die "unknown model '$n' (--list shows the names)" 2
done
command -v curl >/dev/null 2>&1 || die "curl is needed (Debian: apt-get install curl)"
bit=$(find_bit) || die "no bit binary: not on PATH, not in $(cd "$(dirname "$0")/.." && pwd)/build nor beside it; build it (README: command 1) or set BIT_BIN"
mkdir -p "$dir" || die "cannot create the models directory $dir"

failed=0
for n in $names; do
  fetch_one "$n" || failed=$((failed + 1))
done
[ "$failed" = 0 ] || die "$failed of the requested models failed"

#!/bin/sh
# The one list of Debian packages bitd needs, to build and to run.
# Used by the README, .ci/run and the Dockerfile. Idempotent and non-interactive.
#   install-deps.sh            build + runtime packages + test data (what a developer or CI
#                              needs; dataset-fashion-mnist: the default model's accuracy
#                              test and models/make-default.sh; jq: the README's quickstart)
#   install-deps.sh --runtime  runtime libraries only (what the Docker runtime stage needs)
#   install-deps.sh --fuzz     only what fuzzing adds (tests/fuzz/README): clang, libFuzzer
#   install-deps.sh --image    only what building and running the image adds (deploy/test-image.sh)
#   install-deps.sh --browser  only what the browser test adds (tests/test_web.py): Chromium
#   install-deps.sh --print [--runtime|--fuzz|--image|--browser]  print the list, install nothing
set -eu

BUILD_PKGS="build-essential autoconf automake pkg-config git ca-certificates
libdnnl-dev libzip-dev libjansson-dev libmicrohttpd-dev libsqlite3-dev
libjpeg62-turbo-dev libpng-dev libarchive-dev zlib1g-dev libjs-chart.js"
RUNTIME_PKGS="libdnnl2 libzip4 libjansson4 libmicrohttpd12 libsqlite3-0
libjpeg62-turbo libpng16-16 libarchive13 zlib1g libgomp1 curl ca-certificates"
TEST_PKGS="dataset-fashion-mnist jq"
# Fuzzing only, never part of the default list: clang with libFuzzer and the sanitizer
# runtimes (libclang-rt), its OpenMP (configure checks it), llvm-symbolizer for crash traces.
FUZZ_PKGS="clang-14 libclang-rt-14-dev libomp-14-dev llvm-14"
# The image stage only (deploy/test-image.sh), no Docker engine needed: podman with runc (crun
# refuses hybrid cgroups), CNI networking and catatonit (compose's init: true), debootstrap
# for the debian:bookworm-slim base, podman-compose and python3-yaml to read compose.yaml,
# jq and curl to talk to the container.
IMAGE_PKGS="podman runc containernetworking-plugins catatonit debootstrap podman-compose
python3-yaml jq curl"
# The web page's browser test only (libjs-chart.js above is compiled into bit, so the runtime
# needs nothing): headless Chromium, its WebDriver and Selenium for Debian's python3.
BROWSER_PKGS="chromium chromium-driver python3-selenium"

mode=build
print=0
for arg in "$@"; do
  case "$arg" in
    --runtime) mode=runtime ;;
    --fuzz) mode=fuzz ;;
    --image) mode=image ;;
    --browser) mode=browser ;;
    --print) print=1 ;;
    *) echo "install-deps.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
case "$mode" in
  runtime) pkgs=$RUNTIME_PKGS ;;
  fuzz) pkgs=$FUZZ_PKGS ;;
  image) pkgs=$IMAGE_PKGS ;;
  browser) pkgs=$BROWSER_PKGS ;;
  *) pkgs="$BUILD_PKGS $RUNTIME_PKGS $TEST_PKGS" ;;
esac

if [ "$print" = 1 ]; then echo $pkgs | tr ' ' '\n'; exit 0; fi

missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing

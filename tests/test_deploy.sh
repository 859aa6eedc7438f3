#!/usr/bin/env bash
# Deployment, as far as it can be proved without a Docker engine: the Dockerfile takes its
# packages from deploy/install-deps.sh, the runtime list covers what the binary links, make
# install lays out exactly deploy/install-manifest.txt (what the image copies), the
# entrypoint serves and stops on SIGTERM when run directly, compose.yaml, the Dockerfile and
# bit.service name real files and paths, the man page and `bit help` cover every command,
# option and variable, and bit-fetch-weights works against a file:// mirror (never the
# network). Runs from the build directory (make check); ends with "tally: P passed, F failed".
set -u

builddir=$(pwd)
if [ ! -f "$builddir/Makefile" ]; then
  echo "test_deploy.sh: run me from the build directory (make check)"
  echo "tally: 0 passed, 1 failed"
  exit 1
fi
mkvar() { sed -n "s/^$1 = //p" "$builddir/Makefile" | head -n 1; }
srcdir=$(mkvar abs_top_srcdir)
[ -n "$srcdir" ] || srcdir=$(cd "$(dirname "$0")/.." && pwd)
prefix=$(mkvar prefix)
version=$(mkvar PACKAGE_VERSION)
BIT_BIN=${BIT_BIN:-$builddir/bit}
BIT_FIXTURES=${BIT_FIXTURES:-$srcdir/../shared/fixtures/bit-tiny}
export BIT_BIN BIT_FIXTURES
# Nothing here may reach the network: downloads use file:// mirrors; proxies lead nowhere.
export http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9
unset BIT_WEIGHTS_BASE_URL BIT_API_TOKEN BIT_API_TOKEN_FILE BIT_LISTEN BIT_DATA_DIR BIT_MODELS_DIR

tmp=$(mktemp -d "${TMPDIR:-/tmp}/bit-deploy-XXXXXX")
servers=""
cleanup() {
  for p in $servers; do kill -KILL "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT

passed=0 failed=0 bad=0
fail() { # fail MESSAGE: the current case fails; the message says why
  echo "  test_deploy.sh: check failed: $*" >&2
  bad=1
}
check() { # check DESCRIPTION COMMAND...: fails the case when COMMAND fails
  local what=$1
  shift
  "$@" || fail "$what"
}
run() { # run CASE: a function; passes when no check in it failed
  bad=0
  "$1"
  if [ "$bad" = 0 ]; then
    passed=$((passed + 1))
    echo "ok   $1"
  else
    failed=$((failed + 1))
    echo "FAIL $1"
  fi
}
has() { grep -qF -- "$2" "$1" || { echo "  $1 lacks: $2" >&2; return 1; }; }

dockerfile=$srcdir/deploy/Dockerfile
compose=$srcdir/deploy/compose.yaml
entrypoint=$srcdir/deploy/entrypoint.sh
fetch=$srcdir/deploy/fetch-weights.sh
manifest=$srcdir/deploy/install-manifest.txt
unit=$srcdir/deploy/bit.service
manpage=$srcdir/docs/bit.1

# The Dockerfile's instructions: continuation lines joined, comments dropped.
instructions() { sed -e '/^[[:space:]]*#/d' "$dockerfile" | sed -e ':a' -e '/\\$/{N;s/\\\n/ /;ba' -e '}'; }
manifest_files() { grep -v -e '^#' -e '^[[:space:]]*$' "$manifest" | LC_ALL=C sort; }

# ---- (a) one source of truth for packages ----
dockerfile_packages_come_from_install_deps() {
  local ins pkgs p
  ins=$(instructions)
  check "the Dockerfile installs packages itself" \
    bash -c '! grep -Eq "apt-get|apt |aptitude|dpkg -i" <<<"$1"' _ "$ins"
  pkgs=$(for o in "" --runtime --fuzz; do sh "$srcdir/deploy/install-deps.sh" --print $o 2>/dev/null; done)
  check "install-deps.sh --print lists nothing" test -n "$pkgs"
  # curl may appear as the command of HEALTHCHECK, and nowhere else
  for p in $(echo "$pkgs" | sort -u); do
    if grep -v '^HEALTHCHECK' <<<"$ins" | grep -Eq "(^|[^A-Za-z0-9.+-])$(sed 's/[.+]/\\&/g' <<<"$p")([^A-Za-z0-9.+-]|$)"; then
      fail "the Dockerfile names the package $p: it belongs in deploy/install-deps.sh only"
    fi
  done
  check "two stages on debian:bookworm-slim" \
    bash -c '[ "$(grep -c "^FROM " <<<"$1")" = 2 ] && grep -q "^ARG BASE=debian:bookworm-slim$" <<<"$1"' _ "$ins"
  local build runtime
  build=$(awk '/^FROM .* AS build$/ { on = 1; next } /^FROM / { on = 0 } on' <<<"$ins")
  runtime=$(awk '/^FROM .* AS runtime$/ { on = 1; next } /^FROM / { on = 0 } on' <<<"$ins")
  check "the build stage runs install-deps.sh (every package)" \
    bash -c 'grep -Eq "^RUN sh deploy/install-deps.sh( |&|$)" <<<"$1" && ! grep -q -- "--runtime" <<<"$1"' _ "$build"
  check "the build stage builds as .ci/run does" \
    bash -c 'grep -q "autoreconf -fi && ./configure && make" <<<"$1"' _ "$build"
  check ".ci/run builds with autoreconf -fi, configure and make" \
    bash -c 'grep -q "autoreconf -fi" "$1" && grep -q "configure" "$1" && grep -q "make -s" "$1"' _ "$srcdir/.ci/run"
  check "the runtime stage runs install-deps.sh --runtime" \
    bash -c 'grep -q "^RUN sh /tmp/install-deps.sh --runtime" <<<"$1"' _ "$runtime"
  check "the runtime stage copies install-deps.sh from the context" \
    bash -c 'grep -q "^COPY deploy/install-deps.sh /tmp/install-deps.sh$" <<<"$1"' _ "$runtime"
}

# ---- (c) make install = the manifest = what the image copies ----
dest=$tmp/dest
install_log=$tmp/install.log
install_rc=1
do_install() {
  (unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES; make -s install DESTDIR="$dest") >"$install_log" 2>&1
  install_rc=$?
}

install_lays_out_the_manifest() {
  if [ "$install_rc" != 0 ]; then
    fail "make install DESTDIR=$dest failed:"
    tail -n 20 "$install_log" >&2
    return
  fi
  check "the prefix is known" test -n "$prefix"
  (cd "$dest" && find . \( -type f -o -type l \) | sed "s|^\./||") | LC_ALL=C sort >"$tmp/installed.txt"
  manifest_files | sed "s|^|${prefix#/}/|" | LC_ALL=C sort >"$tmp/expected.txt"
  if ! diff -u "$tmp/expected.txt" "$tmp/installed.txt" >"$tmp/install.diff"; then
    fail "make install differs from deploy/install-manifest.txt (- manifest, + installed):"
    cat "$tmp/install.diff" >&2
  fi
  check "the installed bit runs" bash -c '[ "$("$1" --version)" = "bit $2" ]' _ "$dest$prefix/bin/bit" "$version"
  check "the installed bit-fetch-weights runs" \
    bash -c '"$1" --list | grep -q "^BiT-M-R50x1 "' _ "$dest$prefix/bin/bit-fetch-weights"
  local ins
  ins=$(instructions)
  check "the Dockerfile installs into /out" bash -c 'grep -q "make install DESTDIR=/out" <<<"$1"' _ "$ins"
  check "the Dockerfile checks the installed tree against the manifest" \
    bash -c 'grep -q "cd /out/usr/local .*deploy/install-manifest.txt .*diff" <<<"$1"' _ "$ins"
  check "the runtime stage copies the installed tree" \
    bash -c 'grep -q "^COPY --from=build /out/usr/local/ /usr/local/$" <<<"$1"' _ "$ins"
  check "the manifest lists bin/bit and the man page" \
    bash -c 'grep -qx "bin/bit" "$1" && grep -qx "share/man/man1/bit.1" "$1"' _ "$manifest"
}

# ---- (d) the runtime package list covers the binary ----
owner() { # owner LIB_PATH: the Debian package holding it
  local p real cand
  real=$(readlink -f "$1")
  for cand in "$1" "$real" "/usr$1" "/usr$real" "${1#/usr}" "${real#/usr}"; do
    p=$(dpkg-query -S "$cand" 2>/dev/null | head -n 1 | cut -d: -f1)
    [ -n "$p" ] && { echo "$p"; return 0; }
  done
  return 1
}
declare -A deps_of=()
load_deps() { # every installed package's Depends and Pre-Depends, once
  local p st d
  while IFS=$'\t' read -r p st d; do
    [[ $st == "install ok installed" ]] && deps_of[$p]=$d
  done < <(dpkg-query -W -f='${Package}\t${Status}\t${Depends}, ${Pre-Depends}\n')
}
closure() { # closure PKG...: the packages and everything they depend on, as installed here
  local -A seen=()
  local todo=("$@") p alt
  while [ ${#todo[@]} -gt 0 ]; do
    p=${todo[0]}
    todo=("${todo[@]:1}")
    [ -n "${seen[$p]:-}" ] && continue
    seen[$p]=1
    # "a (>= 1) | b, c:any": every alternative that is installed
    for alt in $(tr ',|' '\n\n' <<<"${deps_of[$p]:-}" | sed -e 's/(.*)//' -e 's/:.*//' -e 's/[[:space:]]//g'); do
      [ -n "${deps_of[$alt]+x}" ] && [ -z "${seen[$alt]:-}" ] && todo+=("$alt")
    done
  done
  echo " ${!seen[*]} "
}

runtime_packages_cover_the_binary() {
  local runtime base covered direct lib path pkg sanitizers=0 skipped=""
  runtime=" $(sh "$srcdir/deploy/install-deps.sh" --print --runtime | tr '\n' ' ') "
  for pkg in $runtime; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
      fail "the runtime package $pkg is not installed here (deploy/install-deps.sh installs it)"
  done
  check "curl (the HEALTHCHECK) is a runtime package" bash -c '[[ "$1" == *" curl "* ]]' _ "$runtime"
  check "ca-certificates (bit-fetch-weights over https) is a runtime package" \
    bash -c '[[ "$1" == *" ca-certificates "* ]]' _ "$runtime"
  # every image has the Essential and Priority: required packages and what they depend on
  load_deps
  base=$(closure $(dpkg-query -W -f='${Package} ${Essential} ${Priority}\n' |
    awk '$2 == "yes" || $3 == "required" { print $1 }'))
  covered=$(closure $runtime)
  grep -q -- "-fsanitize" <<<"$(mkvar SAN_CFLAGS)" && sanitizers=1
  ldd "$BIT_BIN" >"$tmp/ldd.txt" 2>&1 || fail "ldd $BIT_BIN failed"
  direct=$(readelf -d "$BIT_BIN" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
  check "readelf finds the libraries bit needs" test -n "$direct"
  while read -r lib _ path _; do
    case "$lib" in linux-vdso* | linux-gate* | /*) continue ;; esac
    if [ "$path" = "not" ] || [ -z "$path" ]; then
      fail "$lib is not found by ldd"
      continue
    fi
    if ! pkg=$(owner "$path"); then
      fail "no Debian package owns $path ($lib)"
      continue
    fi
    if [ "$sanitizers" = 1 ] && [[ $lib == libasan* || $lib == libubsan* ]]; then
      skipped="$skipped $lib" # the sanitizer runtime of this --enable-sanitizers build
      continue
    fi
    if grep -qx -- "$lib" <<<"$direct"; then
      [[ $runtime == *" $pkg "* || $base == *" $pkg "* ]] ||
        fail "bit links $lib directly; its package $pkg is not in RUNTIME_PKGS of deploy/install-deps.sh"
    else
      [[ $covered == *" $pkg "* || $base == *" $pkg "* ]] ||
        fail "$lib (package $pkg) is needed but no runtime package depends on it"
    fi
  done <"$tmp/ldd.txt"
  [ -n "$skipped" ] && echo "  (sanitizer build: not in the image, not checked:$skipped)"
  return 0
}

# ---- (b) the entrypoint, run directly ----
# start_entrypoint LOG [ENV=VALUE...] -- [ARGS...]: starts it in the background; sets $pid
start_entrypoint() {
  local log=$1
  shift
  local envs=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  env PATH="$(dirname "$BIT_BIN"):$PATH" "${envs[@]}" sh "$entrypoint" "$@" 2>"$log" &
  pid=$!
  servers="$servers $pid"
}
# wait_port LOG PID: the port from the "listening" line; checks that PID (the entrypoint's)
# is bit's own (the entrypoint execs bit)
wait_port() {
  local i line
  port=""
  for i in $(seq 1 400); do
    line=$(grep '"event":"listening"' "$1" 2>/dev/null | tail -n 1)
    if [ -n "$line" ]; then
      port=$(sed -n 's/.*"url":"http:\/\/127\.0\.0\.1:\([0-9]*\)".*/\1/p' <<<"$line")
      bitpid=$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' <<<"$line")
      if [ "$bitpid" != "$2" ]; then
        fail "bit's pid $bitpid is not the entrypoint's $2 (no exec?)"
        servers="$servers $bitpid" # killed at exit, never left behind
      fi
      return 0
    fi
    kill -0 "$2" 2>/dev/null || break
    sleep 0.025
  done
  fail "the server did not start; its log:"
  cat "$1" >&2
  return 1
}
# stop PID LOG: SIGTERM, then the exit status must be 0 and the log say "stopped"
stop() {
  local rc
  kill -TERM "$1"
  [ -n "${bitpid:-}" ] && [ "$bitpid" != "$1" ] && kill -TERM "$bitpid" 2>/dev/null
  wait "$1"
  rc=$?
  servers=${servers/ $1/}
  check "SIGTERM: exit status 0, not $rc" test "$rc" = 0
  check "SIGTERM: the log says stopped" grep -q '"event":"stopped"' "$2"
}
status() { curl -s -o /dev/null -w '%{http_code}' --max-time 10 --noproxy '*' "$@"; }

entrypoint_serves_and_stops_on_sigterm() {
  local d=$tmp/ep1 log body
  mkdir -p "$d/models"
  ln -s "$BIT_FIXTURES/model.npz" "$d/models/tiny.npz"
  log=$d/serve.log
  start_entrypoint "$log" BIT_DATA_DIR="$d/data" BIT_MODELS_DIR="$d/models" BIT_LISTEN=127.0.0.1:0 -- \
    --train-threads 1
  wait_port "$log" "$pid" || { kill -KILL "$pid" 2>/dev/null; return; }
  body=$(curl -fsS --max-time 10 --noproxy '*' "http://127.0.0.1:$port/healthz") || fail "GET /healthz failed"
  check "/healthz says ok: $body" grep -q '"status": *"ok"' <<<"$body"
  check "the data directory was created with the database" test -f "$d/data/bit.db"
  check "no warning about the models directory" bash -c '! grep -q "no base models" "$1"' _ "$log"
  stop "$pid" "$log"
}

entrypoint_token_file() {
  local d=$tmp/ep2 log
  mkdir -p "$d/models"
  printf 'bitd-test-token-0123456789\n' >"$d/token"
  log=$d/serve.log
  start_entrypoint "$log" BIT_DATA_DIR="$d/data" BIT_MODELS_DIR="$d/models" BIT_LISTEN=127.0.0.1:0 \
    BIT_API_TOKEN_FILE="$d/token" -- --train-threads 1
  wait_port "$log" "$pid" || { kill -KILL "$pid" 2>/dev/null; return; }
  check "/healthz needs no token" test "$(status "http://127.0.0.1:$port/healthz")" = 200
  check "/v1/jobs without the token: 401" test "$(status "http://127.0.0.1:$port/v1/jobs")" = 401
  check "/v1/jobs with the token: 200" test "$(status -H 'Authorization: Bearer bitd-test-token-0123456789' \
    "http://127.0.0.1:$port/v1/jobs")" = 200
  check "an empty models directory is reported" grep -q "no base models" "$log"
  stop "$pid" "$log"
}

# expect_refusal DESCRIPTION NEEDLE [ENV=VALUE...] -- [ARGS...]: exits 1 before bit starts,
# saying NEEDLE
expect_refusal() {
  local what=$1 needle=$2 log=$tmp/refusal.log rc
  shift 2
  start_entrypoint "$log" "$@"
  wait "$pid"
  rc=$?
  servers=${servers/ $pid/}
  check "$what: exit status 1, not $rc" test "$rc" = 1
  grep -qF -- "$needle" "$log" || { fail "$what: the message lacks '$needle'"; cat "$log" >&2; }
  check "$what: bit did not start" bash -c '! grep -q "\"event\":\"listening\"" "$1"' _ "$log"
}

entrypoint_refuses_clearly() {
  local d=$tmp/ep3 out
  mkdir -p "$d/models" "$d/data"
  : >"$d/file"
  expect_refusal "missing token file" "BIT_API_TOKEN_FILE" BIT_DATA_DIR="$d/data" BIT_MODELS_DIR="$d/models" \
    BIT_LISTEN=127.0.0.1:0 BIT_API_TOKEN_FILE="$d/no-such-token" --
  expect_refusal "empty token file" "is empty" BIT_DATA_DIR="$d/data" BIT_MODELS_DIR="$d/models" \
    BIT_LISTEN=127.0.0.1:0 BIT_API_TOKEN_FILE="$d/file" --
  expect_refusal "data directory under a file" "data directory $d/file/data" BIT_DATA_DIR="$d/file/data" \
    BIT_MODELS_DIR="$d/models" BIT_LISTEN=127.0.0.1:0 --
  expect_refusal "--data-dir wins over BIT_DATA_DIR" "data directory $d/file/flag" BIT_DATA_DIR="$d/data" \
    BIT_MODELS_DIR="$d/models" BIT_LISTEN=127.0.0.1:0 -- --data-dir "$d/file/flag"
  expect_refusal "--models-dir=DIR is checked" "models directory $d/file/m" BIT_DATA_DIR="$d/data" \
    BIT_MODELS_DIR="$d/models" BIT_LISTEN=127.0.0.1:0 -- --models-dir="$d/file/m"
  # a command instead of options: run with the container defaults exported
  out=$(env -u BIT_DATA_DIR PATH="$(dirname "$BIT_BIN"):$PATH" sh "$entrypoint" sh -c 'echo "$BIT_DATA_DIR $BIT_MODELS_DIR $BIT_LISTEN"')
  check "another command gets the defaults: $out" test "$out" = "/var/lib/bit /models 0.0.0.0:8080"
  out=$(PATH="$(dirname "$BIT_BIN"):$PATH" sh "$entrypoint" bit --version)
  check "another command runs: $out" test "$out" = "bit $version"
  check "the entrypoint ends in exec bit serve" bash -c '[ "$(grep -v "^[[:space:]]*$" "$1" | tail -n 1)" = "exec bit serve \"\$@\"" ]' _ "$entrypoint"
}

# ---- (e) the Dockerfile, compose.yaml and bit.service name real files and paths ----
ignored() { # ignored PATH: whether .dockerignore keeps PATH out of the build context
  local pat neg out=1 p comp i n
  while IFS= read -r pat; do
    pat=${pat%%#*}
    pat=${pat%"${pat##*[![:space:]]}"}
    [ -z "$pat" ] && continue
    neg=0
    [ "${pat:0:1}" = "!" ] && neg=1 && pat=${pat:1}
    pat=${pat#/}
    pat=${pat%/}
    # PATH or a directory above it matches; **/ matches any directories
    IFS=/ read -ra comp <<<"$1"
    n=${#comp[@]}
    local hit=0
    for ((i = 1; i <= n; i++)); do
      p=$(IFS=/; echo "${comp[*]:0:i}")
      # shellcheck disable=SC2053
      if [[ $p == $pat ]] || { [[ $pat == '**/'* ]] && [[ /$p == */${pat#\*\*/} ]]; }; then hit=1; break; fi
    done
    [ "$hit" = 1 ] && { [ "$neg" = 1 ] && out=1 || out=0; }
  done <"$srcdir/.dockerignore"
  return $out
}

files_and_paths_are_real() {
  local ins src dst line
  ins=$(instructions)
  # COPY from the context: the sources exist and .dockerignore keeps them
  while read -r line; do
    set -- $line
    shift
    [[ ${1:-} == --chmod=* ]] && shift
    src=$1 dst=$2
    [ "$src" = "." ] && continue
    check "COPY $src: exists" test -e "$srcdir/$src"
    ignored "$src" && fail "COPY $src: .dockerignore leaves it out"
  done < <(grep '^COPY ' <<<"$ins" | grep -v -- '--from=')
  for f in configure.ac Makefile.am deploy/deploy.am deploy/install-manifest.txt server/cmd/main.c \
    engine/net.c tests/t.h docs/bit.1 deploy/fetch-weights.sh; do
    ignored "$f" && fail ".dockerignore leaves out $f, which the build needs"
  done
  for f in .git/HEAD build/bit build-san/Makefile ci-release/bit var/bit.db models/BiT-M-R50x1.npz \
    Makefile config.status bit deploy/bit.env deploy/.env deploy/secrets/bit_api_token autom4te.cache/x; do
    ignored "$f" || fail ".dockerignore lets $f into the build context"
  done
  # the entrypoint and the paths the image relies on
  check "ENTRYPOINT is the copied entrypoint, exec form" \
    bash -c 'grep -q "^COPY --chmod=0755 deploy/entrypoint.sh /usr/local/bin/bit-entrypoint$" <<<"$1" &&
             grep -q "^ENTRYPOINT \[\"/usr/local/bin/bit-entrypoint\"\]$" <<<"$1"' _ "$ins"
  check "VOLUME /var/lib/bit and /models" bash -c 'grep -q "^VOLUME \[\"/var/lib/bit\", \"/models\"\]$" <<<"$1"' _ "$ins"
  check "ENV: the volumes are the data and models directories, listening on 0.0.0.0:8080" \
    bash -c 'grep -q "^ENV .*BIT_LISTEN=0.0.0.0:8080" <<<"$1" && grep -q "^ENV .*BIT_DATA_DIR=/var/lib/bit" <<<"$1" &&
             grep -q "^ENV .*BIT_MODELS_DIR=/models" <<<"$1"' _ "$ins"
  check "EXPOSE 8080" bash -c 'grep -q "^EXPOSE 8080$" <<<"$1"' _ "$ins"
  check "HEALTHCHECK curls /healthz on the BIT_LISTEN port" \
    bash -c 'grep "^HEALTHCHECK" <<<"$1" | grep -q "curl .*BIT_LISTEN##\*:}/healthz"' _ "$ins"
  check "USER is unprivileged" bash -c 'u=$(sed -n "s/^USER //p" <<<"$1"); [ -n "$u" ] && [ "$u" != root ] && [ "$u" != 0 ]' _ "$ins"
  check "the user owns the volumes" bash -c 'grep -q "chown bit:bit /var/lib/bit /models" <<<"$1"' _ "$ins"
  check "STOPSIGNAL SIGTERM" bash -c 'grep -q "^STOPSIGNAL SIGTERM$" <<<"$1"' _ "$ins"
  # the entrypoint's container defaults are the image's
  check "the entrypoint defaults to the image's directories" \
    bash -c 'grep -q "BIT_DATA_DIR:=/var/lib/bit" "$1" && grep -q "BIT_MODELS_DIR:=/models" "$1"' _ "$entrypoint"
  # compose.yaml
  check "compose: the build context holds the Dockerfile" \
    bash -c 'grep -q "^      context: \.\.$" "$1" && grep -q "^      dockerfile: deploy/Dockerfile$" "$1" &&
             [ -f "$(dirname "$1")/../deploy/Dockerfile" ]' _ "$compose"
  check "compose: named volumes on /var/lib/bit and /models, declared" \
    bash -c 'grep -q "^      - bit-data:/var/lib/bit$" "$1" && grep -q "^      - bit-models:/models$" "$1" &&
             grep -q "^  bit-data:$" "$1" && grep -q "^  bit-models:$" "$1"' _ "$compose"
  check "compose: publishes the container port 8080" bash -c 'grep -q "^      - \"\${BIT_PUBLISH:-127.0.0.1:8080}:8080\"$" "$1"' _ "$compose"
  check "compose: cpus and memory limits; the server's core budget = the cpus" \
    bash -c 'grep -q "cpus: \"\${BIT_CPUS:-4}\"" "$1" && grep -q "memory: \${BIT_MEMORY:-" "$1" &&
             grep -q "BIT_CORES: \${BIT_CPUS:-4}" "$1"' _ "$compose"
  check "compose: the optional token (env file, secret the entrypoint reads)" \
    bash -c 'grep -q "path: ./bit.env" "$1" && grep -q "required: false" "$1" && grep -q "bit_api_token" "$1" &&
             grep -q "/run/secrets/bit_api_token" "$2"' _ "$compose" "$entrypoint"
  check "compose: a grace period for the graceful stop" bash -c 'grep -q "stop_grace_period:" "$1"' _ "$compose"
  # bit.service
  check "bit.service: starts the installed bit" \
    bash -c 'grep -qx "ExecStart=$2/bin/bit serve" "$1" && grep -qx "bin/bit" "$3"' _ "$unit" "$prefix" "$manifest"
  for line in User=bit EnvironmentFile=-/etc/default/bit NoNewPrivileges=yes ProtectSystem=strict \
    ReadWritePaths=/var/lib/bit PrivateTmp=yes Environment=BIT_DATA_DIR=/var/lib/bit KillSignal=SIGTERM; do
    grep -qx -- "$line" "$unit" || fail "bit.service lacks $line"
  done
  grep -q '^MemoryDenyWriteExecute' "$unit" && fail "bit.service: MemoryDenyWriteExecute breaks oneDNN's JIT"
  return 0
}

# ---- (f) the man page and bit help ----
man_page_and_help_cover_everything() {
  local man cmds c opts o topics t route
  man=$(sed -e 's/\\-/-/g' -e 's/\\(dq/"/g' "$manpage")
  check "make install installed the man page" test -f "$dest$prefix/share/man/man1/bit.1"
  check "the man page is bitd $version" grep -q "^\.TH BIT 1 .*\"bitd $version\"" "$manpage"
  cmds=$("$BIT_BIN" --help | awk '/^commands:/ { on = 1; next } on && /^  [a-z]/ { print $1 }')
  check "bit --help lists the commands" test -n "$cmds"
  check "bit --help mentions bit help" bash -c '"$1" --help | grep -Eq "^  help |bit help"' _ "$BIT_BIN"
  for c in $cmds; do
    grep -q "^\.SS \"bit $c" <<<"$man" || fail "the man page has no section for bit $c"
    [ "$c" = help ] && continue
    opts=$("$BIT_BIN" "$c" --help | grep -o -- '--[a-z][a-z0-9-]*' | sort -u)
    for o in $opts; do
      grep -q -- "$o\b" <<<"$man" || fail "the man page lacks $o of bit $c"
    done
    # bit help COMMAND is bit COMMAND --help
    if ! diff <("$BIT_BIN" help "$c" 2>&1) <("$BIT_BIN" "$c" --help 2>&1) >/dev/null; then
      fail "bit help $c differs from bit $c --help"
    fi
  done
  for o in $("$BIT_BIN" serve --help | grep -o 'BIT_[A-Z_]*' | sort -u) BIT_API_TOKEN; do
    grep -q "$o\b" <<<"$man" || fail "the man page lacks $o"
    "$BIT_BIN" help env | grep -q "$o\b" || fail "bit help env lacks $o"
  done
  topics="hyperrule api env"
  for t in $topics; do
    "$BIT_BIN" help "$t" >"$tmp/topic.txt" 2>&1 || fail "bit help $t failed"
    check "bit help $t says something" test "$(wc -l <"$tmp/topic.txt")" -gt 5
  done
  "$BIT_BIN" help help >"$tmp/topics.txt" 2>&1 || fail "bit help help failed"
  for t in $topics; do grep -q "^  $t " "$tmp/topics.txt" || fail "bit help help does not list $t"; done
  "$BIT_BIN" help no-such-topic >/dev/null 2>"$tmp/err.txt"
  check "bit help no-such-topic: exit 2" test $? = 2
  check "bit help no-such-topic: says so" grep -q "no command or topic 'no-such-topic'" "$tmp/err.txt"
  check "bit help (no topic) prints the overview" bash -c '"$1" help | grep -q "^commands:"' _ "$BIT_BIN"
  # every route of the API description is in bit help api and in the man page
  for route in $(sed -n 's/^  \(\/[^:]*\):$/\1/p' "$srcdir/api/openapi.yaml" | sed 's/{id}/ID/g'); do
    "$BIT_BIN" help api | grep -q -- "$route" || fail "bit help api lacks $route"
    grep -q -- "$route" <<<"$man" || fail "the man page lacks $route"
  done
}

# ---- bit-fetch-weights, offline ----
fetch_weights_offline() {
  local d=$tmp/fw out sum bytes names n
  mkdir -p "$d/mirror"
  out=$(sh "$fetch" --list) || fail "--list failed"
  names="BiT-S-R50x1 BiT-S-R50x3 BiT-S-R101x1 BiT-S-R101x3 BiT-S-R152x2 BiT-S-R152x4
    BiT-M-R50x1 BiT-M-R50x3 BiT-M-R101x1 BiT-M-R101x3 BiT-M-R152x2 BiT-M-R152x4
    BiT-M-R50x1-ILSVRC2012 BiT-M-R50x3-ILSVRC2012 BiT-M-R101x1-ILSVRC2012 BiT-M-R101x3-ILSVRC2012
    BiT-M-R152x2-ILSVRC2012 BiT-M-R152x4-ILSVRC2012 BiT-R50x1-distilled-224 BiT-R50x1-distilled-160"
  for n in $names; do grep -q "^$n " <<<"$out" || fail "--list lacks $n"; done
  for n in BiT-M-R50x1.npz BiT-S-R152x4.npz BiT-M-R50x1-ILSVRC2012.npz distill/R50x1_224.npz; do
    grep -q "https://storage.googleapis.com/bit_models/$n\$" <<<"$out" || fail "--list lacks the URL of $n"
  done
  check "--list: BiT-M-R50x1 is R50x1 with 21843 classes, 273 MB" grep -Eq '^BiT-M-R50x1 +R50x1 +21843 +273 MB ' <<<"$out"

  out=$(BIT_MODELS_DIR=$d/unknown sh "$fetch" BiT-M-R50x1 BiT-X-R9x9 2>&1)
  check "an unknown name: exit 2" test $? = 2
  check "an unknown name: says so" grep -q "unknown model 'BiT-X-R9x9'" <<<"$out"
  check "an unknown name: nothing downloaded" test ! -e "$d/unknown"

  cp "$BIT_FIXTURES/model.npz" "$d/mirror/BiT-M-R50x1.npz"
  sum=$(sha256sum "$d/mirror/BiT-M-R50x1.npz" | cut -d' ' -f1)
  bytes=$(stat -c %s "$d/mirror/BiT-M-R50x1.npz")
  export BIT_WEIGHTS_BASE_URL=file://$d/mirror

  out=$(sh "$fetch" --dir "$d/m1" BiT-M-R50x1 2>&1)
  check "not the table's architecture: exit 1" test $? = 1
  check "not the table's architecture: says what it holds" \
    grep -q "expected R50x1 with a 21843-class head, .* holds custom with a 10-class head" <<<"$out"
  check "not the table's architecture: nothing left" bash -c '[ -z "$(ls -A "$1")" ]' _ "$d/m1"

  out=$(BIT_MODELS_DIR=$d/m2 sh "$fetch" --no-check BiT-M-R50x1 2>&1)
  check "a download from the mirror: exit 0" test $? = 0
  check "a download from the mirror: the same bytes" cmp -s "$d/mirror/BiT-M-R50x1.npz" "$d/m2/BiT-M-R50x1.npz"
  check "a download from the mirror: no .part left" test ! -e "$d/m2/BiT-M-R50x1.npz.part"
  check "prints the sha256" grep -q "sha256  $sum" <<<"$out"
  check "prints the size" grep -q "($bytes bytes)" <<<"$out"
  check "bit inspect read it" grep -q "model   custom, head 10, 2017578 parameters" <<<"$out"

  out=$(BIT_MODELS_DIR=$d/m2 sh "$fetch" --no-check BiT-M-R50x1 2>&1)
  check "already present: exit 0, not downloaded again" bash -c '[ "$1" = 0 ] && grep -q "already present" <<<"$2"' _ $? "$out"

  mkdir -p "$d/m3"
  head -c 3000000 "$d/mirror/BiT-M-R50x1.npz" >"$d/m3/BiT-M-R50x1.npz.part"
  out=$(sh "$fetch" --dir "$d/m3" --no-check BiT-M-R50x1 2>&1)
  check "resume: exit 0" test $? = 0
  check "resume: resumed at 3000000 bytes" grep -q "resuming .* at 3000000 bytes" <<<"$out"
  check "resume: the same bytes" cmp -s "$d/mirror/BiT-M-R50x1.npz" "$d/m3/BiT-M-R50x1.npz"

  # the resumed bytes are kept, not fetched again: a wrong prefix stays wrong (and is removed)
  mkdir -p "$d/m4"
  head -c 3000000 /dev/zero >"$d/m4/BiT-M-R50x1.npz.part"
  out=$(sh "$fetch" --dir "$d/m4" --no-check BiT-M-R50x1 2>&1)
  check "resume onto a wrong prefix: exit 1" test $? = 1
  check "resume onto a wrong prefix: not a checkpoint" grep -q "is not a readable BiT checkpoint" <<<"$out"
  check "resume onto a wrong prefix: nothing left" bash -c '[ -z "$(ls -A "$1")" ]' _ "$d/m4"

  out=$(sh "$fetch" --dir "$d/m5" BiT-S-R50x1 2>&1)
  check "missing on the mirror: exit 1" test $? = 1
  check "missing on the mirror: says what it could not read" grep -q "BiT-S-R50x1: cannot read file://" <<<"$out"
  check "missing on the mirror: no file" test ! -e "$d/m5/BiT-S-R50x1.npz"
  unset BIT_WEIGHTS_BASE_URL
}

# No network, told apart from a cut-off download: the real curl against a proxy that refuses
# (this script points every proxy at 127.0.0.1:9), and a stand-in curl for what cannot be
# staged here (a host that does not resolve, a transfer cut off midway).
fetch_weights_without_a_network() {
  local d=$tmp/fwn out
  mkdir -p "$d/bin"
  out=$(sh "$fetch" --dir "$d/m1" BiT-M-R50x1 2>&1)
  check "no route: exit 1" test $? = 1
  check "no route: says there is no network and what to do" \
    grep -q "BiT-M-R50x1: cannot connect to the host of https://storage.googleapis.com/bit_models/BiT-M-R50x1.npz (or to the proxy): no network.*copy BiT-M-R50x1.npz from a machine that has it into $d/m1" <<<"$out"
  check "no route: does not say to run again" bash -c '! grep -q "run again" <<<"$1"' _ "$out"
  check "no route: no empty .part left" test ! -e "$d/m1/BiT-M-R50x1.npz.part"
  # a curl that fails as told: FAKE_CURL_EXIT, after writing FAKE_CURL_BYTES bytes to -o
  cat >"$d/bin/curl" <<'FAKE'
#!/bin/sh
o=""
while [ $# -gt 0 ]; do [ "$1" = -o ] && o=$2; shift; done
[ -n "$o" ] && head -c "${FAKE_CURL_BYTES:-0}" /dev/zero >>"$o"
exit "$FAKE_CURL_EXIT"
FAKE
  chmod +x "$d/bin/curl"
  out=$(PATH=$d/bin:$PATH FAKE_CURL_EXIT=6 sh "$fetch" --dir "$d/m2" BiT-M-R50x1 2>&1)
  check "host not found: exit 1" test $? = 1
  check "host not found: says so, and what to do offline" \
    grep -q "cannot resolve the host of .*: no network or no DNS here; without a network, copy BiT-M-R50x1.npz" <<<"$out"
  out=$(PATH=$d/bin:$PATH FAKE_CURL_EXIT=18 FAKE_CURL_BYTES=5000 sh "$fetch" --dir "$d/m3" BiT-M-R50x1 2>&1)
  check "cut off: exit 1" test $? = 1
  check "cut off: says where, and to run again" grep -q "the download was interrupted at 5000 bytes; run again to resume from there" <<<"$out"
  check "cut off: keeps what came" test "$(stat -c %s "$d/m3/BiT-M-R50x1.npz.part")" = 5000
  check "cut off: not taken for a missing network" bash -c '! grep -q "no network" <<<"$1"' _ "$out"
}

# From a clone, without bit on PATH and without BIT_BIN, the script finds the build: build/bit
# (README command 1) or bit in the source directory (a build in place).
fetch_weights_finds_the_build() {
  local d=$tmp/fwb out where
  mkdir -p "$d/mirror"
  cp "$BIT_FIXTURES/model.npz" "$d/mirror/BiT-M-R50x1.npz"
  for where in build/bit bit; do
    rm -rf "$d/clone" && mkdir -p "$d/clone/deploy" "$d/clone/build"
    cp "$fetch" "$d/clone/deploy/fetch-weights.sh"
    ln -s "$BIT_BIN" "$d/clone/$where"
    out=$(env -u BIT_BIN PATH=/usr/bin:/bin BIT_WEIGHTS_BASE_URL=file://$d/mirror \
          sh "$d/clone/deploy/fetch-weights.sh" --dir "$d/models-$where" --no-check BiT-M-R50x1 2>&1)
    check "$where: found and used" grep -q "model   custom, head 10" <<<"$out"
  done
  rm -rf "$d/clone/bit" "$d/clone/build/bit"
  out=$(env -u BIT_BIN PATH=/usr/bin:/bin sh "$d/clone/deploy/fetch-weights.sh" --dir "$d/none" BiT-M-R50x1 2>&1)
  check "no build: exit 1" test $? = 1
  check "no build: says where it looked and what to do" grep -q "not on PATH, not in $d/clone/build .*README" <<<"$out"
}

# The fixtures' checker accepts the real copy and refuses a damaged one (README: Test fixtures).
fixtures_checker() {
  local d=$tmp/fx
  check "the fixtures match their manifest" bash -c 'sh "$1" "$2" >/dev/null' _ "$srcdir/tests/fixtures.sh" "$BIT_FIXTURES"
  cp -r "$BIT_FIXTURES" "$d" && chmod -R u+w "$d"
  printf x >>"$d/labels.npy"
  rm -f "$d/logits2.npy"
  sh "$srcdir/tests/fixtures.sh" "$d" >"$tmp/fx.out" 2>&1
  check "a damaged copy: exit 1" test $? = 1
  check "a damaged copy: names the files" bash -c 'grep -q "labels.npy: FAILED" "$1" && grep -q "logits2.npy: FAILED" "$1"' _ "$tmp/fx.out"
  sh "$srcdir/tests/fixtures.sh" "$tmp/nowhere" >/dev/null 2>&1
  check "no copy: exit 1" test $? = 1
}

# What a user puts in models/ (downloads of hundreds of MB) never shows as untracked; what
# the repository ships there stays tracked.
models_dir_is_left_to_the_user() {
  if ! git -C "$srcdir" rev-parse --is-inside-work-tree >/dev/null 2>&1; then return; fi
  check "models/BiT-M-R50x1.npz is ignored" git -C "$srcdir" check-ignore -q models/BiT-M-R50x1.npz
  check "models/pets.labels.txt is ignored" git -C "$srcdir" check-ignore -q models/pets.labels.txt
  check "models/README.md is shipped" bash -c 'git -C "$1" ls-files --error-unmatch models/README.md >/dev/null' _ "$srcdir"
  # a path of the machine this was written on, spelt in two pieces so this line is no match
  check "no hard-coded machine paths in tracked files" bash -c '! git -C "$1" grep -n "/wor""k/"' _ "$srcdir"
}

# make install once (the layout, the man page and the installed tools use it)
do_install

run dockerfile_packages_come_from_install_deps
run install_lays_out_the_manifest
run runtime_packages_cover_the_binary
run entrypoint_serves_and_stops_on_sigterm
run entrypoint_token_file
run entrypoint_refuses_clearly
run files_and_paths_are_real
run man_page_and_help_cover_everything
run fetch_weights_offline
run fetch_weights_without_a_network
run fetch_weights_finds_the_build
run fixtures_checker
run models_dir_is_left_to_the_user

echo "tally: $passed passed, $failed failed"
[ "$failed" = 0 ]

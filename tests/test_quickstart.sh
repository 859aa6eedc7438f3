#!/usr/bin/env bash
# The README's two first commands compose, in either order, in one clone: command 1 (set up,
# build in build/, install, serve) and command 2 (bash .ci/run: builds in ci-*/). Each case
# copies the tracked files (what a fresh clone has) to a scratch directory, runs command 1's
# build steps exactly as the README spells them up to make, and .ci/run's configure and make,
# in one order or the other, plus a clone configured in place (./configure) before .ci/run.
# To stay quick the make steps build one small library (libsrv.a) instead of everything: the
# clash being guarded against is in configure and in VPATH, not in the compiler. Installing is
# test_deploy.sh's part, serving test_server's. Ends with "tally: P passed, F failed".
set -u

builddir=$(pwd)
srcdir=$(sed -n 's/^abs_top_srcdir = //p' "$builddir/Makefile" 2>/dev/null | head -n 1)
[ -n "$srcdir" ] || srcdir=$(cd "$(dirname "$0")/.." && pwd)
if ! git -C "$srcdir" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "test_quickstart.sh: $srcdir is not a git checkout: nothing to clone (skipped)"
  echo "tally: 0 passed, 0 failed"
  exit 77
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bit-quickstart-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0 bad=0
fail() { echo "  test_quickstart.sh: check failed: $*" >&2; bad=1; }
run() {
  bad=0
  "$1"
  if [ "$bad" = 0 ]; then passed=$((passed + 1)); echo "ok   $1"; else failed=$((failed + 1)); echo "FAIL $1"; fi
}

# Command 1 as the README writes it: one line of steps joined by &&.
cmd1=$(grep -m1 '^sh deploy/install-deps.sh && ' "$srcdir/README.md")

# A fresh clone: the tracked files as they are in the working tree.
clone() { # DIR
  mkdir -p "$1"
  (cd "$srcdir" && git ls-files -z | tar --null -T - -cf -) | tar -xf - -C "$1"
}

# Command 1's steps up to its make, then make of one small target, in DIR.
command1() { # DIR LOG
  local script="" step
  IFS=$'\a' read -r -a steps <<<"${cmd1// && /$'\a'}"
  for step in "${steps[@]}"; do
    case "$step" in
      make\ install* | bit\ serve* | cd\ ..) continue ;;
      make*) script="$script && make -s libsrv.a" ;;
      *) script="$script && $step" ;;
    esac
  done
  (cd "$1" && bash -c "${script# && }") >"$2" 2>&1
}

command2() { # DIR LOG
  (cd "$1" && CI_BUILD_ONLY=libsrv.a bash .ci/run) >"$2" 2>&1
}

readme_says_so() {
  [ -n "$cmd1" ] || { fail "README.md has no command 1 line (sh deploy/install-deps.sh && ...)"; return; }
  case "$cmd1" in
    *"mkdir -p build && cd build && ../configure"*"make"*) ;;
    *) fail "command 1 no longer builds in build/: $cmd1" ;;
  esac
  # The README's CLI sections say `bit ...`: command 1 must put it on PATH.
  case "$cmd1" in
    *"make install"*) ;;
    *) fail "command 1 no longer installs bit (make install): $cmd1" ;;
  esac
  grep -q '^bash .ci/run$' "$srcdir/README.md" || fail "README.md has no command 2 line (bash .ci/run)"
}

readme_then_ci() {
  local d=$tmp/one
  clone "$d"
  command1 "$d" "$tmp/one-1.log" || { fail "command 1 failed:"; tail -20 "$tmp/one-1.log" >&2; return; }
  [ -f "$d/build/libsrv.a" ] || fail "command 1 built nothing in build/"
  command2 "$d" "$tmp/one-2.log" || { fail "bash .ci/run failed after command 1:"; tail -20 "$tmp/one-2.log" >&2; }
  [ -f "$d/ci-release/libsrv.a" ] || fail ".ci/run built nothing in ci-release/"
  [ -f "$d/build/libsrv.a" ] || fail ".ci/run removed command 1's build"
}

ci_then_readme() {
  local d=$tmp/two
  clone "$d"
  command2 "$d" "$tmp/two-2.log" || { fail "bash .ci/run failed:"; tail -20 "$tmp/two-2.log" >&2; return; }
  command1 "$d" "$tmp/two-1.log" || { fail "command 1 failed after .ci/run:"; tail -20 "$tmp/two-1.log" >&2; }
  [ -f "$d/build/libsrv.a" ] && [ -f "$d/ci-release/libsrv.a" ] || fail "a build is missing"
}

# Someone configured the clone in place (the README once said ./configure): .ci/run says so,
# cleans it and still builds.
in_place_then_ci() {
  local d=$tmp/three
  clone "$d"
  (cd "$d" && autoreconf -fi && ./configure -q && make -s libsrv.a) >"$tmp/three-1.log" 2>&1 ||
    { fail "the in-place build failed:"; tail -20 "$tmp/three-1.log" >&2; return; }
  command2 "$d" "$tmp/three-2.log" || { fail "bash .ci/run failed on an in-place build:"; tail -20 "$tmp/three-2.log" >&2; }
  grep -q "configured in place" "$tmp/three-2.log" || fail ".ci/run did not say what it cleaned"
  [ -f "$d/ci-release/libsrv.a" ] || fail ".ci/run built nothing in ci-release/"
}

# The clones are independent: their cases run at once (each mostly waits on autoreconf and
# configure), and report in order.
run readme_says_so
cases="readme_then_ci ci_then_readme in_place_then_ci"
for c in $cases; do (run "$c" >"$tmp/$c.out" 2>&1) & done
wait
for c in $cases; do
  cat "$tmp/$c.out"
  if grep -q "^ok   $c" "$tmp/$c.out"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
echo "tally: $passed passed, $failed failed"
[ "$failed" = 0 ]

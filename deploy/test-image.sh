#!/usr/bin/env bash
# The container image, built and run for real with Debian's podman (no Docker engine needed):
# builds deploy/Dockerfile on a debian:bookworm-slim base made locally with debootstrap from
# this machine's Debian mirror, then runs the image as a user would — healthz and the
# HEALTHCHECK, uid 10001, the base model inside the image classifying, the README flow
# (upload a dataset, fine-tune, classify with the result) on a named volume, SIGTERM
# during a job (exit 0 within the grace period), a new container on the same volume that
# still has the job history and resumes the interrupted job (both with compose.yaml's init,
# read-only root and dropped capabilities) — and checks that
# deploy/compose.yaml parses. Prints the build time, the image size and the stage time.
#
#   deploy/test-image.sh          (as root, from anywhere; packages: install-deps.sh --image)
#
# Ends with "tally: P passed, F failed" (exit 0 or 1), or, on a machine with no usable
# container runtime, a line "test-image: skipped: WHY" and exit 77 (never a pass).
#
# The base model: every models/NAME.npz (with NAME.labels.txt, NAME.json) but fetched BiT-*
# goes into the image (deploy/Dockerfile, .dockerignore). While models/ has none, a tiny
# checkpoint from $BIT_FIXTURES stands in for the run as models/bitd-image-test.npz (removed
# at exit). BIT_IMAGE_MODEL picks the base model by name (default: the first base model the
# image lists); BIT_IMAGE_DATASET is a directory of class folders for the flow (default:
# small generated PNGs); BIT_IMAGE_HP the job's hyper-parameters (JSON).
# The image stays as localhost/bitd:test, its build stage as localhost/bitd:test-build: with
# the base, they are the cache of the next run (older layers of this script's builds are
# pruned at exit). podman rmi debian:bookworm-slim remakes the base.
set -uo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
image=localhost/bitd:test
label=org.bitd.image-test=1 # on every layer this script builds: what the prune may remove
base=debian:bookworm-slim
grace=60 # seconds before podman stop sends SIGKILL, as compose.yaml's stop_grace_period
tag=bitd-test-$$
vol=$tag-data
started=$(date +%s)
# podman's default rlimits are above what this VM allows, and crun refuses its hybrid
# cgroups: every podman call here uses runc and explicit limits.
pm() { podman --runtime runc "$@"; }
limits=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

say() { echo "test-image: $*"; }
skip() {
  say "skipped: $*"
  exit 77
}

work=$(mktemp -d "${TMPDIR:-/var/tmp}/bitd-image-XXXXXX")
staged=""
cleanup() {
  local c
  for c in $tag-a $tag-b $tag-c; do pm rm -f -v -t 0 "$c" >/dev/null 2>&1; done
  pm volume rm -f "$vol" >/dev/null 2>&1
  # layers of earlier builds that no tag reaches any more
  pm image prune -f --filter "label=$label" >/dev/null 2>&1
  for f in $staged; do rm -f "$f"; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP # the EXIT trap cleans up then too

# ---- can this machine run containers at all? ----
command -v podman >/dev/null 2>&1 || skip "no container runtime: podman is not installed (deploy/install-deps.sh --image)"
command -v runc >/dev/null 2>&1 || skip "podman is here but runc is not (deploy/install-deps.sh --image)"
[ "$(id -u)" = 0 ] || skip "needs root: the base is made with debootstrap and run by rootful podman"
if ! pm info >"$work/info.log" 2>&1; then
  tail -n 5 "$work/info.log"
  skip "podman cannot run here (podman info failed)"
fi

passed=0 failed=0 bad=0
fail() {
  echo "  test-image: check failed: $*" >&2
  bad=1
}
check() { # check DESCRIPTION COMMAND...
  local what=$1
  shift
  "$@" || fail "$what"
}
run() { # run CASE: passes when no check in it failed
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
finish() {
  say "stage time $(($(date +%s) - started)) s"
  echo "tally: $passed passed, $failed failed"
  [ "$failed" = 0 ] && exit 0
  exit 1
}
abort() { # a step everything after it needs failed: count it and stop
  fail "$*"
  failed=$((failed + 1))
  finish
}

# ---- deploy/compose.yaml parses ----
# Debian's podman-compose (1.0.3) has no `config` command and cannot turn the env_file long
# syntax (path/required, Compose 2.24) into podman options, so: its loader reads the file
# (YAML, interpolation, services), then a check against the Compose Specification resolves
# the variables with their defaults and checks every key, the volumes and secrets the
# service uses, the build context and the values' forms.
compose_file_parses() {
  local f=$top/deploy/compose.yaml
  (cd "$work" && podman-compose -f "$f" --dry-run ps) >"$work/compose.log" 2>&1 ||
    fail "podman-compose cannot read compose.yaml: $(tail -n 3 "$work/compose.log")"
  python3 - "$f" <<'PY' || fail "compose.yaml is not a valid Compose file (above)"
import os, re, sys, yaml
path = sys.argv[1]
errors = []
def err(m): errors.append(m)
TOP = {"version", "name", "include", "services", "networks", "volumes", "secrets", "configs"}
SERVICE = set("""annotations attach blkio_config build cap_add cap_drop cgroup cgroup_parent command
configs container_name cpu_count cpu_percent cpu_period cpu_quota cpu_rt_period cpu_rt_runtime
cpu_shares cpus cpuset credential_spec depends_on deploy develop device_cgroup_rules devices dns
dns_opt dns_search domainname entrypoint env_file environment expose extends external_links
extra_hosts gpus group_add healthcheck hostname image init ipc isolation labels label_file links
logging mac_address mem_limit mem_reservation mem_swappiness memswap_limit network_mode networks
oom_kill_disable oom_score_adj pid pids_limit platform ports post_start pre_stop privileged
profiles pull_policy read_only restart runtime scale secrets security_opt shm_size stdin_open
stop_grace_period stop_signal storage_opt sysctls tmpfs tty ulimits user userns_mode uts volumes
volumes_from working_dir""".split())
BUILD = set("""context dockerfile dockerfile_inline args ssh cache_from cache_to additional_contexts
extra_hosts isolation labels network no_cache platforms privileged pull secrets shm_size tags
target ulimits""".split())
DEPLOY = {"endpoint_mode", "labels", "mode", "placement", "replicas", "resources", "restart_policy",
          "rollback_config", "update_config"}
LIMITS = {"cpus", "memory", "pids", "devices"}
# interpolation as Compose does it, with an empty environment: defaults apply
VAR = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}|([A-Za-z_][A-Za-z0-9_]*)|)")
def subst(v, where):
    if isinstance(v, dict): return {k: subst(x, where + "." + str(k)) for k, x in v.items()}
    if isinstance(v, list): return [subst(x, where) for x in v]
    if not isinstance(v, str): return v
    def one(m):
        if m.group(0) == "$$": return "$"
        if m.group(0) == "$": err(f"{where}: a lone $ (write $$ for a literal one)"); return ""
        name, op, arg = m.group(1) or m.group(4), m.group(2), m.group(3)
        if op in (None, ":-", "-", ":+", "+"): return subst(arg or "", where) if op in (":-", "-") else ""
        err(f"{where}: ${{{name}{op}...}} requires {name}, which is unset"); return ""
    return VAR.sub(one, v)
try:
    raw = yaml.safe_load(open(path))
except yaml.YAMLError as e:
    print(f"{path}: YAML: {e}"); sys.exit(1)
c = subst(raw, "")
if not isinstance(c, dict) or not isinstance(c.get("services"), dict) or not c["services"]:
    print(f"{path}: no services"); sys.exit(1)
for k in c:
    if k not in TOP and not k.startswith("x-"): err(f"unknown top-level key {k}")
if "name" in c and not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", str(c["name"])): err("bad project name")
declared = {k: set((c.get(k) or {}).keys()) for k in ("volumes", "secrets", "networks")}
size = re.compile(r"\d+(\.\d+)?[bkmg]?b?", re.I)
for name, s in c["services"].items():
    at = f"services.{name}"
    for k in s:
        if k not in SERVICE and not k.startswith("x-"): err(f"{at}: unknown key {k}")
    b = s.get("build")
    if isinstance(b, dict):
        for k in b:
            if k not in BUILD: err(f"{at}.build: unknown key {k}")
        ctx = os.path.normpath(os.path.join(os.path.dirname(path), b.get("context", ".")))
        if not os.path.isfile(os.path.join(ctx, b.get("dockerfile", "Dockerfile"))):
            err(f"{at}.build: no {b.get('dockerfile', 'Dockerfile')} in the context {ctx}")
    for e in s.get("env_file", []) if isinstance(s.get("env_file"), list) else [s.get("env_file")] if s.get("env_file") else []:
        if isinstance(e, dict):
            if set(e) - {"path", "required", "format"} or "path" not in e: err(f"{at}.env_file: bad entry {e}")
            elif e.get("required", True) is not False and not os.path.exists(os.path.join(os.path.dirname(path), e["path"])):
                err(f"{at}.env_file: required {e['path']} is missing")
        elif not isinstance(e, str): err(f"{at}.env_file: bad entry {e}")
    for p in s.get("ports", []):
        if isinstance(p, str) and not re.fullmatch(r"((\[[0-9a-f:]+\]|[0-9.]+):)?(\d+(-\d+)?:)?\d+(-\d+)?(/(tcp|udp))?", p):
            err(f"{at}.ports: bad port {p}")
    for v in s.get("volumes", []):
        src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
        if ":" in (v if isinstance(v, str) else ":") and src and not src.startswith((".", "/", "~")) and src not in declared["volumes"]:
            err(f"{at}.volumes: {src} is not declared under volumes")
    for sec in s.get("secrets", []):
        n = sec if isinstance(sec, str) else sec.get("source")
        if n not in declared["secrets"]: err(f"{at}.secrets: {n} is not declared under secrets")
    d = s.get("deploy") or {}
    for k in d:
        if k not in DEPLOY: err(f"{at}.deploy: unknown key {k}")
    lim = (d.get("resources") or {}).get("limits") or {}
    for k in lim:
        if k not in LIMITS: err(f"{at}.deploy.resources.limits: unknown key {k}")
    if "cpus" in lim:
        try: float(lim["cpus"])
        except ValueError: err(f"{at}: cpus {lim['cpus']!r} is not a number")
    if "memory" in lim and not size.fullmatch(str(lim["memory"])): err(f"{at}: memory {lim['memory']!r} is not a size")
    if "stop_grace_period" in s and not re.fullmatch(r"(\d+(\.\d+)?(us|ms|s|m|h))+", str(s["stop_grace_period"])):
        err(f"{at}: stop_grace_period {s['stop_grace_period']!r} is not a duration")
    for k in ("init", "read_only"):
        if k in s and not isinstance(s[k], bool): err(f"{at}.{k}: not a boolean")
for e in errors: print(f"{path}: {e}")
sys.exit(1 if errors else 0)
PY
}
run compose_file_parses

# ---- the base: debian:bookworm-slim, made here ----
# "URI SUITE" for every enabled deb source of apt's configuration (one-line and deb822).
apt_sources() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" { print $2, $3 }'
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && enabled != "no")
          for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) print u[i], s[j]
        types = ""; enabled = ""; nu = 0; ns = 0
      }
      /^#/ { next }
      /^[[:space:]]*$/ { flush(); next }
      {
        key = tolower($0); sub(/:.*/, "", key)
        v = $0; sub(/^[^:]*:[[:space:]]*/, "", v); sub(/[[:space:]]+$/, "", v)
      }
      key == "types" { types = v }
      key == "enabled" { enabled = tolower(v) }
      key == "uris" { nu = split(v, u, /[[:space:]]+/) }
      key == "suites" { ns = split(v, s, /[[:space:]]+/) }
      END { flush() }' "$f"
  done
}

# The image's apt sources: this machine's mirrors for bookworm, -updates and -security.
write_base_sources() { # ROOTFS MIRROR
  local security updates=""
  security=$(apt_sources | awk '$2 == "bookworm-security" { print $1; exit }')
  apt_sources | grep -q " bookworm-updates$" && updates=" bookworm-updates"
  rm -f "$1/etc/apt/sources.list"
  {
    printf 'Types: deb\nURIs: %s\nSuites: bookworm%s\nComponents: main\n' "$2" "$updates"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    [ -n "$security" ] && printf '\nTypes: deb\nURIs: %s\nSuites: bookworm-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$security"
  } >"$1/etc/apt/sources.list.d/debian.sources"
}

# What makes the official image "slim": no documentation, manuals or translations from dpkg,
# no apt caches or package lists, no daemons started by package scripts.
slim_base() { # ROOTFS
  local r=$1
  cat >"$r/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
  printf 'Acquire::Languages "none";\n' >"$r/etc/apt/apt.conf.d/docker-no-languages"
  printf 'Acquire::GzipIndexes "true";\n' >"$r/etc/apt/apt.conf.d/docker-gzip-indexes"
  printf 'Apt::AutoRemove::SuggestsImportant "false";\n' >"$r/etc/apt/apt.conf.d/docker-autoremove-suggests"
  printf 'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\nDPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n' \
    >"$r/etc/apt/apt.conf.d/docker-clean"
  printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
  chmod 0755 "$r/usr/sbin/policy-rc.d"
  find "$r/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$r"/usr/share/{groff,info,linda,lintian/overrides,locale,man}/* "$r"/var/lib/apt/lists/* \
    "$r"/var/cache/apt/* "$r"/var/cache/debconf/*-old "$r"/var/log/*.log "$r"/var/log/apt/*
  # the runtime provides these
  : >"$r/etc/resolv.conf"
  : >"$r/etc/hostname"
}

make_base() {
  local mirror rootfs=$work/rootfs t0
  if pm image exists "$base"; then
    say "base $base: cached ($(pm image inspect --format '{{.Id}}' "$base" | cut -c1-12))"
    return 0
  fi
  command -v debootstrap >/dev/null 2>&1 || skip "debootstrap is not installed (deploy/install-deps.sh --image)"
  mirror=$(apt_sources | awk '$2 == "bookworm" { print $1; exit }')
  [ -n "$mirror" ] || abort "no Debian bookworm mirror in /etc/apt/sources.list*"
  say "base $base: debootstrap --variant=minbase bookworm from $mirror"
  t0=$(date +%s)
  if ! nice -n 10 debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -n 20 "$work/debootstrap.log"
    abort "debootstrap failed"
  fi
  write_base_sources "$rootfs" "$mirror"
  slim_base "$rootfs"
  if ! tar -C "$rootfs" --numeric-owner -c . |
    pm import --change 'CMD ["bash"]' --message "debootstrap --variant=minbase bookworm $mirror" - "$base" >"$work/import.log" 2>&1; then
    cat "$work/import.log"
    abort "podman import of the base failed"
  fi
  rm -rf "$rootfs"
  say "base $base: made in $(($(date +%s) - t0)) s"
}

make_base
# A trivial container with the flags used below: where this fails, podman cannot run
# containers on this machine (kernel, cgroups, seccomp), which is no verdict on the image.
if ! pm run --rm --network host "${limits[@]}" "$base" true >"$work/probe.log" 2>&1; then
  tail -n 5 "$work/probe.log"
  skip "podman cannot start a container on this machine"
fi

# ---- the build ----
# The flow's job: short, small batches (the HyperRule's 512 would take long on 2 cores); the
# rule picks the rest for the repository's own base model.
default_hp='{"steps": 30, "batch": 16, "eval_every": 10}'
stage_model() { # a tiny base model in models/ while the repository has none of its own
  local m
  for m in "$top"/models/*.npz; do
    case "$(basename "$m")" in BiT-*) ;; *) [ -e "$m" ] && return 0 ;; esac
  done
  local fx=${BIT_FIXTURES:-}
  for d in "$fx" "$top/../shared/fixtures/bit-tiny"; do
    [ -n "$d" ] && [ -f "$d/model.npz" ] && { fx=$d; break; }
  done
  [ -f "$fx/model.npz" ] || abort "models/ has no base model and the fixtures (BIT_FIXTURES) are missing"
  mkdir -p "$top/models"
  m=$top/models/bitd-image-test
  cp "$fx/model.npz" "$m.npz"
  printf '%s\n' zero one two three four five six seven eight nine >"$m.labels.txt"
  printf '{"resolution": 64}\n' >"$m.json"
  staged="$m.npz $m.labels.txt $m.json"
  default_hp='{"steps": 30, "batch": 16, "resolution": [72, 64], "eval_every": 10}' # its 64 px
  say "models/ has no base model: the fixture checkpoint stands in as bitd-image-test"
}
stage_model

build_s=0
image_builds() {
  local t0=$(date +%s) b=(--format docker --pull=never --network host "${limits[@]}" --label "$label")
  # --format docker: the OCI format has no HEALTHCHECK, podman would drop it
  if ! nice -n 10 podman --runtime runc build "${b[@]}" -f "$top/deploy/Dockerfile" -t "$image" "$top" >"$work/build.log" 2>&1; then
    tail -n 40 "$work/build.log" >&2
    fail "podman build failed (the log's end above)"
    return
  fi
  build_s=$(($(date +%s) - t0))
  say "build $build_s s ($(grep -c "STEP [0-9]" "$work/build.log") steps, $(grep -c "^--> Using cache" "$work/build.log") from the cache)"
  # the build stage tagged too (all from the cache): it stays the next run's cache
  nice -n 10 podman --runtime runc build "${b[@]}" --target build -f "$top/deploy/Dockerfile" -t "$image-build" "$top" \
    >"$work/build-stage.log" 2>&1 || fail "tagging the build stage failed: $(tail -n 5 "$work/build-stage.log")"
}
run image_builds
[ "$bad" = 0 ] || finish
size=$(pm image inspect --format '{{.Size}}' "$image")
say "image size $((size / 1000000)) MB ($size bytes)"

# ---- running it ----
api() { curl -sS --max-time 60 --noproxy '*' "$@"; }
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 10 --noproxy '*' "$@"; }
url=""
# start NAME [RUN OPTIONS...]: the image detached, port 8080 published on a free loopback
# port; waits for /healthz (60 s at most) and sets url
start() {
  local name=$1 port i
  shift
  url=""
  # --health-interval disable: no systemd timer (podman would need systemd for it); the
  # HEALTHCHECK itself is run below with podman healthcheck run
  if ! pm run -d --name "$name" "${limits[@]}" --health-interval disable -p 127.0.0.1::8080 "$@" "$image" >"$work/$name.run" 2>&1; then
    fail "podman run $name: $(cat "$work/$name.run")"
    return 1
  fi
  port=$(pm port "$name" 8080/tcp | sed -n 's/.*:\([0-9]*\)$/\1/p' | head -n 1)
  [ -n "$port" ] || { fail "$name: no published port"; return 1; }
  for i in $(seq 1 240); do
    [ "$(code "http://127.0.0.1:$port/healthz")" = 200 ] && { url=http://127.0.0.1:$port; return 0; }
    [ "$(pm inspect --format '{{.State.Running}}' "$name")" = true ] || break
    sleep 0.25
  done
  fail "$name: /healthz did not answer 200 within 60 s; its log:"
  pm logs "$name" 2>&1 | tail -n 20 >&2
  return 1
}
# stop NAME: podman stop sends SIGTERM (the image's STOPSIGNAL), SIGKILL after the grace
# period; bit must exit 0, before that
stop() {
  local t0 ms rc
  t0=$(date +%s%N)
  pm stop -t "$grace" "$1" >/dev/null 2>&1
  ms=$((($(date +%s%N) - t0) / 1000000))
  rc=$(pm inspect --format '{{.State.ExitCode}}' "$1")
  say "$1: SIGTERM -> exit $rc after $ms ms"
  check "$1: SIGTERM: exit status 0, not $rc" test "$rc" = 0
  check "$1: SIGTERM: stopped within the ${grace} s grace period ($ms ms)" test "$ms" -lt $((grace * 1000))
  check "$1: the log says stopped" bash -c 'podman --runtime runc logs "$1" 2>&1 | grep -q "\"event\":\"stopped\""' _ "$1"
}
jget() { jq -r "$1" <"$2" 2>/dev/null; }

# Pictures for the flow and for classify: NAME/*.png class folders whose classes differ in
# colour, plus one picture of each class beside them. Python's standard library writes PNG.
make_pictures() { # DIR CLASS...
  python3 - "$@" <<'PY'
import os, random, struct, sys, zlib
out, classes = sys.argv[1], sys.argv[2:]
tint = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 210)}
def png(path, w, h, rgb, rnd):
    rows = b"".join(b"\0" + bytes(max(0, min(255, c + rnd.randint(-40, 40) + (x + y) // 4 - 20))
                                  for x in range(w) for c in rgb) for y in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
rnd = random.Random(7)
for c in classes:
    os.makedirs(os.path.join(out, "data", c))
    for i in range(16):
        png(os.path.join(out, "data", c, "%02d.png" % i), 48 + rnd.randint(0, 16), 48, tint[c], rnd)
    png(os.path.join(out, c + ".png"), 56, 52, tint[c], rnd)
PY
}

model=${BIT_IMAGE_MODEL:-}
pictures=$work/pictures
# the base model inside the image: healthz, HEALTHCHECK, uid, classify, SIGTERM
runs_without_volumes() {
  local c=$tag-a pid f n
  start "$c" || return
  check "the image's HEALTHCHECK passes" pm healthcheck run "$c"
  pid=$(pm inspect --format '{{.State.Pid}}' "$c")
  check "the container's first process is bit itself (the entrypoint execs it)" \
    test "$(cat "/proc/$pid/comm" 2>/dev/null)" = bit
  check "bit runs as uid 10001: $(grep '^Uid:' "/proc/$pid/status" 2>/dev/null)" \
    grep -Eq '^Uid:[[:space:]]+10001[[:space:]]+10001[[:space:]]+10001[[:space:]]+10001$' "/proc/$pid/status"
  api "$url/v1/models" >"$work/models.json"
  # every base model of models/ is in the image
  for f in "$top"/models/*.npz; do
    [ -e "$f" ] || continue
    n=$(basename "$f" .npz)
    case "$n" in BiT-*) continue ;; esac
    check "the image lists models/$n.npz as a base model" \
      test "$(jq -r --arg n "$n" '.models[] | select(.name == $n) | .kind' "$work/models.json")" = base
  done
  [ -n "$model" ] || model=$(jget '[.models[] | select(.kind == "base")][0].name // empty' "$work/models.json")
  say "base model: ${model:-none}"
  if [ -z "$model" ]; then
    fail "the image has no base model: $(cat "$work/models.json")"
  else
    check "the base model's headers read: $(jq -c --arg n "$model" '.models[] | select(.name == $n) | .error' "$work/models.json")" \
      test "$(jq -r --arg n "$model" '.models[] | select(.name == $n) | .error // "none"' "$work/models.json")" = none
    api -H 'Content-Type: image/png' --data-binary "@$pictures/red.png" "$url/v1/models/$model/classify?top_k=3" >"$work/base.json"
    check "classify with $model: three predictions among its classes: $(head -c 300 "$work/base.json")" \
      test "$(jq --arg n "$model" --slurpfile m "$work/models.json" '
        ($m[0].models[] | select(.name == $n) | .classes) as $cl
        | (.predictions | length) == 3 and all(.predictions[]; .label as $l | $cl | index($l) != null)' \
        "$work/base.json")" = true
  fi
  stop "$c"
}

# wait_job ID STATUS SECONDS: polls the job until it has STATUS (0) or ends otherwise (1)
wait_job() {
  local i st
  for i in $(seq 1 $(($3 * 2))); do
    api "$url/v1/jobs/$1" >"$work/job.json" || return 1
    st=$(jget .status "$work/job.json")
    [ "$st" = "$2" ] && return 0
    case "$st" in succeeded | failed | cancelled) return 1 ;; esac
    sleep 0.5
  done
  return 1
}
# classify_all MODEL OUT: each probe picture through MODEL; OUT gets "file label score"
classify_all() {
  local f type
  : >"$2"
  for f in "${probes[@]}"; do
    case "$f" in *.png | *.PNG) type=image/png ;; *) type=image/jpeg ;; esac
    api -H "Content-Type: $type" --data-binary "@$f" "$url/v1/models/$1/classify?top_k=3" |
      jq -r --arg f "$(basename "$f")" '"\($f) \(.predictions[0].label) \(.predictions[0].score)"' >>"$2"
  done
}

ds_id="" job1="" job2="" stopped_step=0
# As deploy/compose.yaml runs it: an init forwarding signals, a read-only root with a tmpfs
# /tmp, no capabilities, no new privileges; thread budgets that fit 2 cores.
compose_like=(--init --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges
  -e BIT_TRAIN_THREADS=1 -e BIT_INFER_THREADS=1)
# the README's flow on a named volume, run as compose.yaml does, then SIGTERM while a job runs
readme_flow_on_a_named_volume() {
  local c=$tag-b data=${BIT_IMAGE_DATASET:-$pictures/data} hp
  hp=${BIT_IMAGE_HP:-$default_hp}
  [ -n "$model" ] || { fail "no base model to fine-tune"; return; }
  start "$c" "${compose_like[@]}" -v "$vol:/var/lib/bit" || return
  tar czf "$work/data.tgz" -C "$data" .
  api -H 'Content-Type: application/gzip' -T "$work/data.tgz" -X POST "$url/v1/datasets?name=image-test" >"$work/ds.json"
  ds_id=$(jget '.id // empty' "$work/ds.json")
  check "the dataset uploads: $(head -c 300 "$work/ds.json")" test -n "$ds_id"
  [ -n "$ds_id" ] || return
  api -X POST "$url/v1/jobs" -H 'Content-Type: application/json' \
    -d "{\"dataset\": \"$ds_id\", \"base_model\": \"$model\", \"name\": \"image-test\", \"hyperparameters\": $hp}" >"$work/j1.json"
  job1=$(jget '.id // empty' "$work/j1.json")
  check "the job is accepted: $(head -c 300 "$work/j1.json")" test -n "$job1"
  [ -n "$job1" ] || return
  local t0=$(date +%s)
  if ! wait_job "$job1" succeeded 600; then
    fail "the job did not succeed: $(head -c 600 "$work/job.json")"
    return
  fi
  say "job $job1: succeeded in $(($(date +%s) - t0)) s, $(jq -c '{steps: .progress.total_steps, val_top1: .metrics.val_top1, resolution: .hyperparameters.resolution}' "$work/job.json")"
  check "the job names its model image-test" test "$(jget .model "$work/job.json")" != null
  classify_all image-test "$work/ft1.txt"
  say "classify with image-test: $(tr '\n' ';' <"$work/ft1.txt")"
  jq -r '.classes[]' "$work/ds.json" >"$work/classes.txt"
  check "the fine-tuned model answers with the dataset's classes" \
    bash -c '[ "$(wc -l <"$1")" = "$3" ] && awk "NR == FNR { c[\$1] = 1; next } !(\$2 in c) { exit 1 }" "$2" "$1"' \
    _ "$work/ft1.txt" "$work/classes.txt" "${#probes[@]}"

  # a long job, stopped by SIGTERM while it runs: checkpointed and requeued
  api -X POST "$url/v1/jobs" -H 'Content-Type: application/json' \
    -d "{\"dataset\": \"$ds_id\", \"base_model\": \"$model\", \"name\": \"image-long\", \"hyperparameters\": $(jq -c '. + {steps: 100000, save_every: 5}' <<<"$hp")}" >"$work/j2.json"
  job2=$(jget '.id // empty' "$work/j2.json")
  check "the long job is accepted" test -n "$job2"
  local i
  for i in $(seq 1 240); do
    api "$url/v1/jobs/$job2" >"$work/job.json"
    stopped_step=$(jget .progress.step "$work/job.json")
    [ "${stopped_step:-0}" -ge 6 ] 2>/dev/null && break
    sleep 0.5
  done
  check "the long job runs: $(jq -c '{status, progress}' "$work/job.json")" test "${stopped_step:-0}" -ge 6
  stop "$c"
  check "the running job was requeued at the stop" \
    bash -c 'podman --runtime runc logs "$1" 2>&1 | grep "$2" | grep -q requeued' _ "$c" "$job2"
  pm rm -v "$c" >/dev/null 2>&1 # (podman complains that no systemd holds a healthcheck timer)
}

# a new container on the same volume: the history, the model and the interrupted job are there
history_survives_a_new_container() {
  local c=$tag-c i st step
  [ -n "$job1" ] || { fail "no job from the flow"; return; }
  start "$c" "${compose_like[@]}" -v "$vol:/var/lib/bit" || return
  api "$url/v1/jobs" >"$work/jobs.json"
  check "the job history survives: $(jq -c '[.jobs[]? | {id, status}]' "$work/jobs.json")" \
    test "$(jq -r --arg j "$job1" '.jobs[] | select(.id == $j) | .status' "$work/jobs.json")" = succeeded
  check "the dataset survives" test "$(code "$url/v1/datasets/$ds_id")" = 200
  classify_all image-test "$work/ft2.txt"
  check "the fine-tuned model answers as before: $(tr '\n' ';' <"$work/ft2.txt")" \
    bash -c '[ -s "$1" ] && paste -d" " "$1" "$2" | awk "\$2 != \$5 || (\$3 - \$6) ^ 2 > 1e-10 { exit 1 }"' _ "$work/ft1.txt" "$work/ft2.txt"
  if [ -n "$job2" ]; then
    for i in $(seq 1 240); do
      api "$url/v1/jobs/$job2" >"$work/job.json"
      st=$(jget .status "$work/job.json") step=$(jget .progress.step "$work/job.json")
      [ "$st" = running ] && [ "${step:-0}" -gt "$stopped_step" ] 2>/dev/null && break
      sleep 0.5
    done
    check "the interrupted job resumes past step $stopped_step: $(jq -c '{status, progress}' "$work/job.json")" \
      bash -c '[ "$1" = running ] && [ "$2" -gt "$3" ]' _ "$st" "${step:-0}" "$stopped_step"
    check "the log says resumed" bash -c 'podman --runtime runc logs "$1" 2>&1 | grep "$2" | grep -q resumed' _ "$c" "$job2"
    api -X POST "$url/v1/jobs/$job2/cancel" >/dev/null
    wait_job "$job2" cancelled 60 || fail "the long job did not cancel: $(head -c 300 "$work/job.json")"
  fi
  stop "$c"
}

mkdir -p "$pictures" && make_pictures "$pictures" red green blue || abort "cannot write the test pictures (python3)"
# What to classify: one picture per class beside the generated dataset, or the first three
# pictures of BIT_IMAGE_DATASET.
if [ -n "${BIT_IMAGE_DATASET:-}" ]; then
  mapfile -t probes < <(find "$BIT_IMAGE_DATASET" -type f \( -iname '*.png' -o -iname '*.jpg' -o -iname '*.jpeg' \) | LC_ALL=C sort | head -n 3)
else
  probes=("$pictures/red.png" "$pictures/green.png" "$pictures/blue.png")
fi
run runs_without_volumes
run readme_flow_on_a_named_volume
run history_survives_a_new_container
finish

#!/bin/sh
# bitd container entrypoint (also runs as is on a host): container defaults, clear checks of
# the data and models directories and of the token file, then `exec bit serve "$@"` so that
# bit is the process that receives SIGTERM (docker stop) and stops gracefully.
#
#   entrypoint.sh [SERVE OPTIONS]     run the server (flags win over BIT_* variables)
#   entrypoint.sh COMMAND [ARGS]      run another command in the same environment, e.g.
#                                     bit-fetch-weights BiT-M-R50x1, bit inspect FILE, sh
#
# BIT_DATA_DIR (default /var/lib/bit) must be writable, BIT_MODELS_DIR (default /models)
# readable; BIT_API_TOKEN_FILE, when set, must name a readable file holding the token. A
# Docker or compose secret named bit_api_token (/run/secrets/bit_api_token) is used as the
# token file when neither BIT_API_TOKEN nor BIT_API_TOKEN_FILE is set.
set -eu

me=bit-entrypoint
die() {
  echo "$me: $*" >&2
  exit 1
}
warn() { echo "$me: warning: $*" >&2; }

: "${BIT_DATA_DIR:=/var/lib/bit}"
: "${BIT_MODELS_DIR:=/models}"
: "${BIT_LISTEN:=0.0.0.0:8080}"
if [ -z "${BIT_API_TOKEN:-}" ] && [ -z "${BIT_API_TOKEN_FILE:-}" ] && [ -f /run/secrets/bit_api_token ]; then
  BIT_API_TOKEN_FILE=/run/secrets/bit_api_token
fi
export BIT_DATA_DIR BIT_MODELS_DIR BIT_LISTEN
if [ -n "${BIT_API_TOKEN_FILE:-}" ]; then export BIT_API_TOKEN_FILE; fi

# Another command: the same environment, no server checks.
case "${1:-}" in
  "" | -*) ;;
  *) exec "$@" ;;
esac

# Flags override the variables: check what bit serve will actually use.
data=$BIT_DATA_DIR models=$BIT_MODELS_DIR token_file=${BIT_API_TOKEN_FILE:-} listen=$BIT_LISTEN
prev=""
for a in "$@"; do
  case "$prev" in
    --data-dir) data=$a ;;
    --models-dir) models=$a ;;
    --api-token-file) token_file=$a ;;
    --listen) listen=$a ;;
  esac
  case "$a" in
    --data-dir=*) data=${a#*=} ;;
    --models-dir=*) models=${a#*=} ;;
    --api-token-file=*) token_file=${a#*=} ;;
    --listen=*) listen=${a#*=} ;;
  esac
  prev=$a
done

who="user $(id -un 2>/dev/null || echo '?') (uid $(id -u), gid $(id -g))"

# The data directory: created if missing, then it must be a writable directory.
if [ ! -d "$data" ]; then
  mkdir -p "$data" 2>/dev/null ||
    die "cannot create the data directory $data (BIT_DATA_DIR or --data-dir) as $who: create it, or mount a volume there that this user can write"
fi
if [ ! -w "$data" ] || [ ! -x "$data" ]; then
  die "the data directory $data (BIT_DATA_DIR or --data-dir) is not writable by $who: chown the volume to this uid, e.g. docker run --rm -v VOLUME:$data --user root IMAGE chown -R $(id -u):$(id -g) $data"
fi

# The models directory: base models NAME.npz; read only is enough.
if [ ! -d "$models" ]; then
  mkdir -p "$models" 2>/dev/null ||
    die "the models directory $models (BIT_MODELS_DIR or --models-dir) does not exist and cannot be created as $who"
fi
if [ ! -r "$models" ] || [ ! -x "$models" ]; then
  die "the models directory $models (BIT_MODELS_DIR or --models-dir) is not readable by $who"
fi
found=0
for f in "$models"/*.npz; do
  [ -e "$f" ] && found=1 && break
done
[ "$found" = 1 ] ||
  warn "no base models (*.npz) in $models yet: jobs need one; fetch with bit-fetch-weights NAME (bit-fetch-weights --list shows the names)"

# The token: bit serve reads the file itself; say clearly when it cannot.
if [ -n "$token_file" ]; then
  { [ -f "$token_file" ] && [ -r "$token_file" ]; } ||
    die "the API token file $token_file (BIT_API_TOKEN_FILE or --api-token-file) is missing or not readable by $who"
  [ -s "$token_file" ] || die "the API token file $token_file is empty: put a token of at least 16 characters in it"
elif [ -z "${BIT_API_TOKEN:-}" ]; then
  case "$listen" in
    127.* | localhost:* | "[::1]":*) ;;
    *) warn "no API token (BIT_API_TOKEN or BIT_API_TOKEN_FILE): anyone who can reach $listen can use the API" ;;
  esac
fi

exec bit serve "$@"

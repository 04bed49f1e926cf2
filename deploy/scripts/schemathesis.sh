#!/usr/bin/env bash
# Run schemathesis (PyPI) against a gateway over a fresh database: every phase (examples,
# coverage, fuzzing, stateful through the spec's links) and every check, with a real API key.
# usage: schemathesis.sh [MAX_EXAMPLES] [extra st arguments…]. Needs the debug binaries built.
set -euo pipefail
cd "$(dirname "$0")/../.."
max_examples="${1:-50}"; shift || true
venv=target/schemathesis
want="schemathesis==4.32.5"
if [ ! -f "$venv/.installed" ] || [ "$(cat "$venv/.installed")" != "$want" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$want"
  echo "$want" > "$venv/.installed"
fi

admin="${JEWELSHOT_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
db="jewelshot_st_$(date +%s)_$$"
work="$(mktemp -d)"
export JEWELSHOT_DATABASE__URL="${admin%/*}/$db"
export JEWELSHOT_QUEUE__NAME="jewelshot-st:$db"
export JEWELSHOT_STORAGE__LOCAL__ROOT="$work/files"
export JEWELSHOT_STORAGE__LOCAL__SIGNING_KEY="st-$db"
export JEWELSHOT_SECRETS__KEYS__ST="$(head -c 32 /dev/urandom | base64)"
export JEWELSHOT_GATEWAY__LISTEN=127.0.0.1:0
export JEWELSHOT_GATEWAY__METRICS_LISTEN=127.0.0.1:0
# The fuzzer submits many jobs from one key: the per-user limits would answer 429 to most.
export JEWELSHOT_LIMITS__SUBMITS_PER_MINUTE=0 JEWELSHOT_LIMITS__MAX_QUEUED_PER_USER=0
export RUST_LOG="${RUST_LOG:-warn}"
# Loopback webhooks, as in development: deploy/schemathesis/hooks.py stands a loopback receiver
# in for the public hosts this machine cannot resolve.
export JEWELSHOT_WEBHOOK__ALLOW_INSECURE=true
# Live status streams run until their job is final (no workers here): end them after a second, so
# schemathesis reads a whole stream (every event checked against the spec) and moves on.
export JEWELSHOT_GATEWAY__EVENTS_MAX_SECS=1
gw=""
cleanup() {
  [ -n "$gw" ] && kill "$gw" 2>/dev/null && wait "$gw" 2>/dev/null || true
  psql "$admin" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  redis-cli --scan --pattern "jewelshot-st:$db*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
psql "$admin" -qc "CREATE DATABASE $db"
./target/debug/jewelshot migrate >/dev/null
./target/debug/jewelshot users create --email st@example.com --plan pro >/dev/null
key="$(./target/debug/jewelshot keys create --user st@example.com --name schemathesis)"

./target/debug/jewelshot-gateway >"$work/stdout" 2>"$work/gateway.log" &
gw=$!
for _ in $(seq 100); do
  url="$(grep -o 'http://[0-9.:]*' "$work/stdout" | head -1 || true)"
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "${url:-}" ] || { echo "the gateway did not start:" >&2; cat "$work/gateway.log" >&2; exit 1; }
echo "schemathesis against $url (max $max_examples examples per operation)"
status=0
PYTHONPATH="deploy/schemathesis${PYTHONPATH:+:$PYTHONPATH}" SCHEMATHESIS_HOOKS=${ST_HOOKS:-hooks} \
"$venv/bin/st" --config-file deploy/schemathesis/schemathesis.toml run "$url/api/openapi.json" \
  --url "$url" \
  -H "Authorization: Bearer $key" \
  --checks all \
  `# DELETE /api/jobs/{id} cancels (CONTRACT.md): the job stays, canceled, and a poll still` \
  `# answers 200 with it, so "a deleted resource is gone" (ST301) does not apply to our only DELETE.` \
  --exclude-checks use_after_free \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "$max_examples" \
  --seed "${ST_SEED:-1}" \
  --no-color \
  "$@" || status=$?
if grep -q "panicked" "$work/gateway.log"; then
  echo "the gateway panicked:" >&2; grep -A3 panicked "$work/gateway.log" >&2; status=1
fi
exit $status

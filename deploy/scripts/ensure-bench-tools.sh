#!/usr/bin/env bash
# Load tools the gateway benchmark drives: wrk (HTTP load) and pgbench (Postgres's own ceiling).
# As root with apt they are installed (saying so); otherwise this says exactly what to run.
set -euo pipefail
. "$(dirname "$0")/apt.sh"
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v pgbench >/dev/null 2>&1 || missing+=(postgresql-contrib)
[ ${#missing[@]} -eq 0 ] && exit 0
if can_apt_install; then
  apt_install "${missing[@]}"
  exit 0
fi
cat >&2 <<MSG
error: missing benchmark tools: ${missing[*]}
  Debian/Ubuntu: sudo apt-get install ${missing[*]}
  macOS:         brew install wrk postgresql
  (As root, \`just\` installs them itself unless JEWELSHOT_AUTO_INSTALL=0.)
MSG
exit 1

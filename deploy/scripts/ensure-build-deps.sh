#!/usr/bin/env bash
# Build tools the codecs need: nasm (libjpeg-turbo's SIMD in mozjpeg-sys) and a C compiler.
# As root with apt they are installed (saying so); otherwise this says exactly what to run.
set -euo pipefail
. "$(dirname "$0")/apt.sh"
missing=()
command -v nasm >/dev/null 2>&1 || missing+=(nasm)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
[ ${#missing[@]} -eq 0 ] && exit 0
if can_apt_install; then
  apt_install "${missing[@]}"
  exit 0
fi
cat >&2 <<MSG
error: missing build tools: ${missing[*]}
  Debian/Ubuntu: sudo apt-get install ${missing[*]}
  macOS:         brew install ${missing[*]/gcc/}
  (As root, \`just\` installs them itself unless JEWELSHOT_AUTO_INSTALL=0.)
MSG
exit 1

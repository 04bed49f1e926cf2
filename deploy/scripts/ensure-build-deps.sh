#!/usr/bin/env bash
# Build tools the codecs need: nasm (libjpeg-turbo's SIMD in mozjpeg-sys) and a C compiler.
# Installed with apt when allowed (root, and CI=true or JEWELSHOT_AUTO_INSTALL=1); otherwise
# this says exactly what to run.
set -euo pipefail
missing=()
command -v nasm >/dev/null 2>&1 || missing+=(nasm)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && { [ "${CI:-}" = true ] || [ "${JEWELSHOT_AUTO_INSTALL:-}" = 1 ]; }; then
  echo "installing ${missing[*]} (apt)…"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  exit 0
fi
cat >&2 <<MSG
error: missing build tools: ${missing[*]}
  Debian/Ubuntu: sudo apt-get install ${missing[*]}
  macOS:         brew install ${missing[*]/gcc/}
  Or rerun as root with JEWELSHOT_AUTO_INSTALL=1 to let this script install them.
MSG
exit 1

#!/usr/bin/env bash
# Headless Chromium and its WebDriver for `just test-browser` (Debian's `chromium` and
# `chromium-driver`; as root with apt it is installed,
# otherwise the command to run is printed). Prints the browser's path.
set -euo pipefail
. "$(dirname "$0")/apt.sh"
find_browser() {
  for b in "${CHROMIUM:-}" chromium chromium-browser google-chrome; do
    [ -n "$b" ] && command -v "$b" >/dev/null 2>&1 && { command -v "$b"; return 0; }
  done
  return 1
}
if ! find_browser >/dev/null || ! command -v chromedriver >/dev/null 2>&1; then
  if can_apt_install; then apt_install chromium chromium-driver fonts-dejavu-core >&2; else
    echo "error: no Chromium or chromedriver: sudo apt-get install chromium chromium-driver" >&2; exit 1; fi
fi
find_browser

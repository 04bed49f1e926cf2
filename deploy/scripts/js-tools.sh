#!/usr/bin/env bash
# fal's official JavaScript client, pinned, in target/jstools (for the emulator interop test).
# Optional on a developer machine without Node.js; required in CI.
set -euo pipefail
dir=target/jstools
if ! command -v npm >/dev/null 2>&1; then
  if [ "${CI:-}" = true ]; then echo "error: Node.js/npm is required in CI for the fal JS interop test" >&2; exit 1; fi
  echo "note: Node.js not found; the @fal-ai/client interop test will be skipped"
  exit 0
fi
if [ -f "$dir/node_modules/@fal-ai/client/package.json" ] && cmp -s deploy/interop/fal-js/package.json "$dir/package.json"; then exit 0; fi
mkdir -p "$dir"
cp deploy/interop/fal-js/package.json deploy/interop/fal-js/check.mjs "$dir/"
(cd "$dir" && npm install --silent --no-audit --no-fund >/dev/null)
echo "js tools ready in $dir"

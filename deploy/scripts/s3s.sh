#!/usr/bin/env bash
# The S3-compatible test server: s3s-fs 0.14.1 from crates.io (newer versions need a newer rustc).
set -euo pipefail
want="0.14.1"
if command -v s3s-fs >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/s3s-fs" ]; then exit 0; fi
echo "installing s3s-fs $want (cargo install, about a minute)…"
cargo install s3s-fs --version "$want" --features binary --locked --quiet

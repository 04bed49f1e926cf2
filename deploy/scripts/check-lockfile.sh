#!/usr/bin/env bash
# Refuse lockfile entries we moved away from on purpose (an offline stand-in for an advisory
# check: each line is a crate, a version prefix and why). `just lint` runs it.
set -euo pipefail
cd "$(dirname "$0")/../.."
deny=(
  "rustls-webpki 0.101 the rustls 0.21 line (aws-sdk-s3 legacy stack), no longer maintained"
  "rustls 0.21 the legacy TLS stack; aws-sdk-s3 gets hyper 1 + rustls 0.23 (crates/storage)"
  "h2 0.3 hyper 0.14's HTTP/2; only the legacy aws-sdk-s3 client pulled it in"
  "hyper 0.14 the legacy HTTP stack"
)
found=0
for entry in "${deny[@]}"; do
  read -r name version reason <<<"$entry"
  if awk -v n="$name" -v v="$version" '
      $0 == "name = \"" n "\"" { want = 1; next }
      want && index($0, "version = \"" v) == 1 { hit = 1 }
      { want = 0 }
      END { exit hit ? 0 : 1 }' Cargo.lock; then
    echo "Cargo.lock has $name $version: $reason" >&2
    found=1
  fi
done
exit $found

# JewelShot — `just` lists the recipes. A newcomer needs only Rust: `cargo install just`, then
# `just demo` and `just test`.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Make sure Postgres and Redis answer on loopback (start or install them, or say how).
services:
    bash deploy/scripts/ensure-services.sh

# Interop tools: fal's official Python and JS clients, Standard Webhooks (target/pytools, target/jstools).
tools:
    bash deploy/scripts/python-tools.sh
    bash deploy/scripts/js-tools.sh

# Build every binary (gateway, worker, CLI, emulator, demo).
build:
    cargo build --workspace --bins

# Run every test: unit, API, end to end against the real binaries, Postgres and Redis.
test: services tools build
    @# Per-test databases from earlier runs (tests create jewelshot_test_<ulid>).
    -psql postgres://postgres@127.0.0.1:5432/postgres -qAt -c "select 'DROP DATABASE IF EXISTS ' || datname || ';' from pg_database where datname like 'jewelshot_test_%'" 2>/dev/null | psql postgres://postgres@127.0.0.1:5432/postgres -q >/dev/null 2>&1
    cargo test --workspace --all-targets -- --test-threads 2

# The whole system on this machine: emulator, gateway, two workers; a real edit of a shipped photo.
demo: services build
    RUST_BACKTRACE=0 ./target/debug/jewelshot-demo

# Formatting and lints, as CI checks them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Apply database migrations to JEWELSHOT_DATABASE__URL.
migrate: build
    ./target/debug/jewelshot migrate

# Run the fal emulator in the foreground (pass flags, e.g. `just emulator --reject`).
emulator *ARGS: build
    ./target/debug/fal-emulator {{ARGS}}

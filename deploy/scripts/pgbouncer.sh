#!/usr/bin/env bash
# A PgBouncer of the test run's own, in transaction pooling mode (as Supabase's pooler and
# Supavisor run), in front of the local Postgres: `pgbouncer.sh start PORT` / `pgbouncer.sh stop`.
# `just test-pooler` runs the tests through it. PgBouncer refuses to run as root, so as root it
# runs as the postgres user. Installs the Debian package when missing (as root with apt).
set -euo pipefail
. "$(dirname "$0")/apt.sh"
dir="$(pwd)/target/pgbouncer"
case "${1:-}" in
  start)
    port="${2:-6432}"
    if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
      if can_apt_install; then apt_install pgbouncer; else
        echo "error: pgbouncer is missing: sudo apt-get install pgbouncer" >&2; exit 1; fi
    fi
    bin="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
    mkdir -p "$dir"
    cat > "$dir/pgbouncer.ini" <<INI
[databases]
; every database name, to the local server, as the trust-auth postgres user
* = host=127.0.0.1 port=5432 user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = any
pool_mode = transaction
max_client_conn = 2000
default_pool_size = 20
max_db_connections = 40
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
    if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$dir"; as=(runuser -u postgres --); else as=(); fi
    "${as[@]}" "$bin" -d "$dir/pgbouncer.ini"
    for _ in $(seq 1 50); do
      (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && { echo "pgbouncer (transaction mode) on 127.0.0.1:$port"; exit 0; }
      sleep 0.1
    done
    echo "error: pgbouncer did not start; see $dir/pgbouncer.log" >&2; exit 1
    ;;
  stop)
    if [ -f "$dir/pgbouncer.pid" ]; then kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true; fi
    ;;
  *) echo "usage: $0 start [PORT] | stop" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Make sure Postgres and Redis answer on loopback; start them if installed, install them as root
# with apt (unless JEWELSHOT_AUTO_INSTALL=0), otherwise say exactly what to do.
set -euo pipefail
. "$(dirname "$0")/apt.sh"

PG_HOST=127.0.0.1 PG_PORT=5432 REDIS_PORT=6379
auto_install=false
if can_apt_install; then
  auto_install=true
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pg_ready() {
  if command -v psql >/dev/null 2>&1; then
    psql "postgres://postgres@$PG_HOST:$PG_PORT/postgres" -qAtc 'select 1' >/dev/null 2>&1
  else
    port_open "$PG_PORT"
  fi
}

redis_ready() {
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]
  else
    port_open "$REDIS_PORT"
  fi
}

wait_for() { # name check
  for _ in $(seq 1 50); do "$2" && return 0; sleep 0.2; done
  echo "error: $1 did not come up" >&2
  return 1
}

if ! pg_ready; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && ls /etc/postgresql >/dev/null 2>&1; then
    echo "starting PostgreSQL…"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  elif $auto_install; then
    apt_install postgresql
    ver=$(ls /etc/postgresql | head -1)
    # Local development only: trust loopback connections, as the project's defaults expect.
    sed -i 's/^\(host\s\+all\s\+all\s\+\(127.0.0.1\/32\|::1\/128\)\s\+\)\S\+/\1trust/' "/etc/postgresql/$ver/main/pg_hba.conf"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start
  else
    cat >&2 <<'MSG'
error: PostgreSQL is not answering on 127.0.0.1:5432.
  Debian/Ubuntu: sudo apt-get install postgresql, then allow local trust auth for user postgres
                 (or set JEWELSHOT_TEST_DATABASE_URL / JEWELSHOT_DATABASE__URL with a password).
  macOS:         brew install postgresql@16 && brew services start postgresql@16 && createuser -s postgres
  (As root, `just` installs and starts it itself unless JEWELSHOT_AUTO_INSTALL=0.)
MSG
    exit 1
  fi
  wait_for PostgreSQL pg_ready
fi

if ! redis_ready; then
  if ! command -v redis-server >/dev/null 2>&1 && $auto_install; then
    apt_install redis-server
  fi
  if command -v redis-server >/dev/null 2>&1; then
    echo "starting Redis…"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no >/dev/null
  else
    cat >&2 <<'MSG'
error: Redis is not answering on 127.0.0.1:6379.
  Debian/Ubuntu: sudo apt-get install redis-server
  macOS:         brew install redis && brew services start redis
  (As root, `just` installs and starts it itself unless JEWELSHOT_AUTO_INSTALL=0.)
MSG
    exit 1
  fi
  wait_for Redis redis_ready
fi
echo "PostgreSQL and Redis are up"

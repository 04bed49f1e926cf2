#!/usr/bin/env bash
# A Redis Cluster of the test run's own — three masters, no replicas, slots spread by
# `redis-cli --cluster create` — for `just test-cluster`: `redis-cluster.sh start BASEPORT`
# (nodes on BASEPORT..BASEPORT+2, cluster buses 100 above) prints the node list for
# JEWELSHOT_TEST_REDIS_CLUSTER; `redis-cluster.sh stop`. Nothing is kept on disk but each
# node's nodes.conf under target/redis-cluster.
set -euo pipefail
dir="$(pwd)/target/redis-cluster"
case "${1:-}" in
  start)
    base="${2:-7101}"
    for tool in redis-server redis-cli; do
      command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is missing (just services installs Redis)" >&2; exit 1; }
    done
    "$0" stop
    rm -rf "$dir" && mkdir -p "$dir"
    nodes=()
    for i in 0 1 2; do
      port=$((base + i))
      redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
        --cluster-enabled yes --cluster-port $((port + 100)) --cluster-node-timeout 5000 \
        --cluster-config-file "$dir/nodes-$port.conf" --pidfile "$dir/redis-$port.pid" \
        --logfile "$dir/redis-$port.log"
      nodes+=("127.0.0.1:$port")
    done
    for n in "${nodes[@]}"; do
      for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p "${n#*:}" ping >/dev/null 2>&1 && break; sleep 0.1; done
    done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log"
    for n in "${nodes[@]}"; do
      for _ in $(seq 1 100); do
        redis-cli -p "${n#*:}" cluster info | grep -q cluster_state:ok && break
        sleep 0.1
      done
      redis-cli -p "${n#*:}" cluster info | grep -q cluster_state:ok || { echo "error: $n is not ok; see $dir" >&2; exit 1; }
    done
    printf 'redis://%s,redis://%s,redis://%s\n' "${nodes[@]}"
    ;;
  stop)
    for pid in "$dir"/redis-*.pid; do
      [ -f "$pid" ] || continue
      p="$(cat "$pid")"
      kill "$p" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    done
    ;;
  *) echo "usage: $0 start [BASEPORT] | stop" >&2; exit 2 ;;
esac

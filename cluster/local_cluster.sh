#!/usr/bin/env bash
# A multi-node Ray cluster on one machine: a head node and N worker nodes (default 2), each a
# separate raylet, for testing job submission and multi-node scheduling without real machines.
#
#   cluster/local_cluster.sh start [--port 6379] [--workers 2] [--head-cpus 2] [--worker-cpus 1]
#   cluster/local_cluster.sh stop  [--port 6379]
#   cluster/local_cluster.sh status [--port 6379]
#
# The dashboard (job submission endpoint) binds to 127.0.0.1 only: Ray's dashboard has no
# authentication of its own here (token auth is disabled for this local cluster), so it must
# never listen on a public interface. Each cluster keeps its files under /tmp/salma-ray-<port>,
# and `stop` ends only the processes of that cluster (not other Ray clusters on the machine).
set -euo pipefail

action="${1:-}"; shift || true
port=6379 workers=2 head_cpus=2 worker_cpus=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --head-cpus) head_cpus="$2"; shift 2 ;;
    --worker-cpus) worker_cpus="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
RAY="${RAY:-$(dirname "$0")/../.venv/bin/ray}"
[[ -x "$RAY" ]] || RAY=ray
temp_dir="/tmp/salma-ray-$port"
dashboard_port=$((port + 1900))
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0

case "$action" in
  start)
    mkdir -p "$temp_dir"
    "$RAY" start --head --port="$port" --num-cpus="$head_cpus" --temp-dir="$temp_dir" \
      --dashboard-host=127.0.0.1 --dashboard-port="$dashboard_port" --include-dashboard=true \
      --disable-usage-stats >"$temp_dir/head.log" 2>&1
    for ((i = 1; i <= workers; i++)); do
      "$RAY" start --address="127.0.0.1:$port" --num-cpus="$worker_cpus" --temp-dir="$temp_dir" \
        >"$temp_dir/worker-$i.log" 2>&1
    done
    echo "cluster up: address 127.0.0.1:$port, dashboard/jobs http://127.0.0.1:$dashboard_port"
    echo "  RAY_ADDRESS=http://127.0.0.1:$dashboard_port ray job submit --working-dir . -- python -m pipelines.train --config experiments/quickstart.yaml"
    ;;
  stop)
    if pgrep -f "$temp_dir" >/dev/null; then
      pkill -TERM -f "$temp_dir" || true
      sleep 3
      pkill -KILL -f "$temp_dir" || true
    fi
    echo "cluster on port $port stopped"
    ;;
  status)
    "$RAY" status --address="127.0.0.1:$port"
    ;;
  *)
    sed -n '2,13p' "$0"; exit 2 ;;
esac

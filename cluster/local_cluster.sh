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
#
# Every node gets its own temp dir (<that folder>/head, /worker-1, ...), as on real machines. With
# one shared temp dir all raylets share one session folder, hence one
# runtime_resources/working_dir_files/_ray_pkg_<hash> per job, while each node's runtime-env agent
# keeps its own cache of what it has unpacked. When a job's driver calls ray.init(), every node
# installs the job's runtime_env; on a worker node that is a cache miss, and Ray unpacks the
# package with overwrite=True (WorkingDirPlugin.create in ray._private.runtime_env.working_dir),
# which deletes and re-creates the folder the driver is running in, on the head. The driver's cwd
# is then gone, and whatever calls os.getcwd() (MLflow's SQLite store does) fails mid-job.
#
# Likewise each node's dashboard agent listens on a port of its own choosing: on the default
# (52365) the first agent on the machine wins and the others run without HTTP, and when the head's
# loses, or another cluster on the machine holds the port, `ray job submit` answers "No available
# agent to submit job" forever.
#
# The nodes run with this venv's bin/ first on PATH, so a job's `python` is the venv's Python,
# the one whose packages the nodes were started with.
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
if [[ -x "$RAY" ]]; then
  bin_dir="$(cd "$(dirname "$RAY")" && pwd)"
  RAY="$bin_dir/$(basename "$RAY")"
  export PATH="$bin_dir:$PATH"
else
  RAY=ray
fi
temp_dir="/tmp/salma-ray-$port"
dashboard_port=$((port + 1900))
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0

case "$action" in
  start)
    mkdir -p "$temp_dir"
    "$RAY" start --head --port="$port" --num-cpus="$head_cpus" --temp-dir="$temp_dir/head" \
      --dashboard-host=127.0.0.1 --dashboard-port="$dashboard_port" --include-dashboard=true \
      --dashboard-agent-listen-port=0 --disable-usage-stats >"$temp_dir/head.log" 2>&1
    for ((i = 1; i <= workers; i++)); do
      "$RAY" start --address="127.0.0.1:$port" --num-cpus="$worker_cpus" --temp-dir="$temp_dir/worker-$i" \
        --dashboard-agent-listen-port=0 >"$temp_dir/worker-$i.log" 2>&1
    done
    echo "cluster up: address 127.0.0.1:$port, dashboard/jobs http://127.0.0.1:$dashboard_port"
    echo "  RAY_ADDRESS=http://127.0.0.1:$dashboard_port $RAY job submit --working-dir . -- python -m pipelines.train --config experiments/quickstart.yaml workdir=\$PWD/runs"
    ;;
  stop)
    # The cluster's processes: those under its temp dirs (the trailing / keeps port 6379 from
    # matching 63790), the head's Ray Client server, whose command line names only the GCS
    # address, and all their descendants: the agents and workers (ray::DashboardAgent, ray::IDLE)
    # name no folder, and an agent can outlive its raylet by minutes, holding its ports.
    own="$temp_dir/|ray\.util\.client\.server --address=[^ ]*:$port( |\$)"
    tree() { local p; for p in "$@"; do echo "$p"; tree $(pgrep -P "$p"); done; }
    started() { ps -o lstart= -p "$1" | tr -s ' ' _; }
    # Each as pid=start time, so that a PID another process gets meanwhile is never signalled.
    procs=$( (tree $(pgrep -f "$own") || true) | sort -u | while read -r p; do
      s=$(started "$p"); [[ -n "$s" ]] && echo "$p=$s"; done || true)
    alive() {  # those still running (a zombie has exited, whether reaped or not)
      local entry pid
      for entry in $procs; do
        pid=${entry%%=*}
        [[ "$(started "$pid")" == "${entry#*=}" ]] || continue
        [[ "$(ps -o stat= -p "$pid" | tr -d ' ')" == Z* ]] || echo "$pid"
      done
    }
    if [[ -n "$procs" ]]; then
      kill -TERM $(alive) 2>/dev/null || true
      for _ in $(seq 5); do [[ -z "$(alive)" ]] && break; sleep 1; done
      left=$(alive)
      if [[ -n "$left" ]]; then kill -KILL $left 2>/dev/null || true; fi
    fi
    echo "cluster on port $port stopped"
    ;;
  status)
    "$RAY" status --address="127.0.0.1:$port"
    ;;
  *)
    sed -n '2,12p' "$0"; exit 2 ;;
esac

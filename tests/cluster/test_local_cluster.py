"""The local multi-node Ray cluster of cluster/local_cluster.sh: a head and 2 worker nodes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "cluster" / "local_cluster.sh"

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    port = _free_port()
    while _free_port() == port + 1900:
        port = _free_port()
    env = {**os.environ, "RAY": str(Path(sys.executable).parent / "ray")}
    subprocess.run([str(SCRIPT), "start", "--port", str(port), "--head-cpus", "2", "--worker-cpus", "1"],
                   check=True, env=env, timeout=180)
    try:
        yield port, f"http://127.0.0.1:{port + 1900}"
    finally:
        subprocess.run([str(SCRIPT), "stop", "--port", str(port)], env=env, timeout=120)


def test_local_cluster_has_a_head_and_two_worker_nodes(cluster):
    port, _ = cluster
    import ray

    deadline = time.time() + 60
    nodes = []
    while time.time() < deadline:
        out = subprocess.run([str(Path(sys.executable).parent / "ray"), "status", f"--address=127.0.0.1:{port}"],
                             capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        nodes = [line for line in out.stdout.splitlines() if line.strip().startswith("1 node_")]
        if len(nodes) == 3:
            break
        time.sleep(2)
    assert len(nodes) == 3, out.stdout

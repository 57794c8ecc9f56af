"""Starting a private single-machine Ray cluster that listens on the loopback interface only.

By default Ray advertises the machine's outward IP as its node address, and its servers then
listen on every interface: the GCS, the raylet, every worker's gRPC server, the dashboard agent
and its metrics export port (which answers HTTP without authentication). A cluster that only
this machine uses needs none of that. Ray 2.60 offers no bind-address option for a node started
by ``ray.init``: ``_node_ip_address="127.0.0.1"`` is turned back into the outward IP
(``resolve_ip_for_localhost``). It does take the loopback address as the node IP where clusters
are switched off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, its own setting for laptops), and with
a loopback node IP every one of those servers binds 127.0.0.1. ``start_local_ray`` switches that
setting on: in the environment, which the node's processes and any process started from here
inherit (a process that connects with ``RAY_ADDRESS=127.0.0.1:…`` must resolve it to the loopback
address too, or Ray turns it into the outward IP, where nothing listens), and in Ray's module
constant, which this process read at import. ``local_ray`` restores both on exit. See
docs/security.md for what binds where.

``ray.init(address="local")`` alone is not enough on a machine where other Ray clusters run
(parallel test sessions, ``cluster/local_cluster.sh``): Ray Train's placement-group cleaner finds
"its" cluster by address, without one it picks the most recently started cluster on the machine,
does not find our Train controller there, and removes our placement group mid-run. So
``local_ray`` chooses the GCS port up front and exports ``RAY_ADDRESS`` before the cluster
starts; every Ray process inherits it. The same cleaner asks the state API at the dashboard
address the GCS records, which Ray fills in (127.0.0.1:8265) even with ``include_dashboard=False``:
another cluster's dashboard there would answer that our controller does not exist. So a cluster
without a dashboard records a free port of its own, where nothing answers (the cleaner then keeps
waiting, as it should).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LOOPBACK = "127.0.0.1"
_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_ENV = ("RAY_GCS_SERVER_PORT", "RAY_ADDRESS", _CLUSTER_SWITCH)


def start_local_ray(**init_kwargs: Any) -> Any:
    """``ray.init(address="local", **init_kwargs)``: a new private cluster whose servers listen on
    127.0.0.1 only (module docstring). Returns what ``ray.init`` returns."""
    import ray
    from ray._private import ray_constants

    if init_kwargs.get("include_dashboard") is False:
        init_kwargs.setdefault("dashboard_port", free_port())  # see the module docstring
    os.environ[_CLUSTER_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    return ray.init(address="local", **init_kwargs)


def init_ray(**init_kwargs: Any) -> Any:
    """The platform's Ray: the cluster at ``$RAY_ADDRESS`` when set (a job on a cluster, or a
    test cluster), else a new private loopback-only one (``start_local_ray``)."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        return ray.init(**init_kwargs)
    return start_local_ray(**init_kwargs)


@contextmanager
def local_ray(num_cpus: int, **init_kwargs: Any) -> Iterator[str]:
    """Start a private loopback-only Ray cluster with ``num_cpus`` logical CPUs (no dashboard
    unless asked); yields its address and shuts it down (restoring the environment) on exit."""
    import ray
    from ray._private import ray_constants

    port = free_port()
    saved = {name: os.environ.get(name) for name in _ENV}
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    address = f"{LOOPBACK}:{port}"
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    os.environ["RAY_ADDRESS"] = address
    init_kwargs.setdefault("include_dashboard", False)
    try:
        start_local_ray(num_cpus=num_cpus, **init_kwargs)
        yield address
    finally:
        ray.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        _restore_env(saved)


def free_port() -> int:
    """A TCP port of the loopback interface that was free a moment ago."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _restore_env(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

"""A private single-machine Ray cluster for tests, benchmarks and laptop runs.

``ray.init(address="local")`` alone is not enough on a machine where other Ray clusters run
(parallel test sessions, ``cluster/local_cluster.sh``): Ray Train's placement-group cleaner finds
"its" cluster by address, without one it picks the most recently started cluster on the machine,
does not find our Train controller there, and removes our placement group mid-run. So the GCS port
is chosen up front and exported as ``RAY_ADDRESS`` before the cluster starts; every Ray process
inherits it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

_ENV = ("RAY_GCS_SERVER_PORT", "RAY_ADDRESS")


@contextmanager
def local_ray(num_cpus: int, **init_kwargs) -> Iterator[str]:
    """Start a private Ray cluster with ``num_cpus`` logical CPUs (no dashboard unless asked);
    yields its address and shuts it down (restoring the environment) on exit."""
    import ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved = {name: os.environ.get(name) for name in _ENV}
    address = f"{ray.util.get_node_ip_address()}:{port}"
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    os.environ["RAY_ADDRESS"] = address
    init_kwargs.setdefault("include_dashboard", False)
    try:
        ray.init(address="local", num_cpus=num_cpus, **init_kwargs)
        yield address
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

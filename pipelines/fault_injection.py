"""Test-only fault injection: one training process fails once, on purpose, at a chosen point.

Armed by an environment variable holding JSON, e.g.::

    SALMA_FAULT_INJECTION='{"rank": 1, "step": 3, "action": "kill", "phase": "step",
                            "marker": "/abs/path/fired"}'

- ``phase: "step"`` fires at the start of the step that begins after ``step`` completed steps;
  ``phase: "checkpoint"`` fires while the checkpoint of step ``step`` is being written (after the
  data files, before the manifest and the atomic rename); ``phase: "reported"`` fires once the
  report of the checkpoint of step ``step`` has returned on every rank (each rank's part is in
  the run folder; Ray may not have registered the checkpoint yet).
- ``action: "kill"`` sends SIGKILL to the process (a lost worker); ``"raise"`` raises
  ``InjectedFault`` (a failing training function; in local mode it reaches the caller).
- ``marker`` makes it fire once: the file is created just before the fault, and an existing file
  disarms it, so the restarted worker group runs through.

``pipelines.train`` forwards the variable to the Ray workers' environment.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

ENV_VAR = "SALMA_FAULT_INJECTION"


class InjectedFault(RuntimeError):
    """Raised by ``action: "raise"``."""


@dataclass(frozen=True)
class FaultInjection:
    rank: int
    step: int
    marker: str
    action: Literal["kill", "raise"] = "kill"
    phase: Literal["step", "checkpoint", "reported"] = "step"

    @classmethod
    def from_env(cls) -> "FaultInjection | None":
        raw = os.environ.get(ENV_VAR)
        if not raw:
            return None
        fault = cls(**json.loads(raw))
        if fault.action not in ("kill", "raise") or fault.phase not in ("step", "checkpoint", "reported"):
            raise ValueError(f"{ENV_VAR}: action must be kill|raise and phase step|checkpoint|reported, got {raw}")
        if not os.path.isabs(fault.marker):
            raise ValueError(f"{ENV_VAR}: marker must be an absolute path (Ray workers change directory)")
        return fault

    def maybe_fire(self, *, phase: str, step: int, rank: int, before: Callable[[], None] | None = None) -> None:
        """Fire if this is the armed point and the marker does not exist yet. ``before`` runs
        first (the training loop uses it to let Ray commit the last checkpoint)."""
        if (phase, step, rank) != (self.phase, self.step, self.rank) or os.path.exists(self.marker):
            return
        if before is not None:
            before()
        with open(self.marker, "w") as f:
            f.write(f"{phase} {step} rank {rank} pid {os.getpid()}\n")
            f.flush()
            os.fsync(f.fileno())
        if self.action == "raise":
            raise InjectedFault(f"injected fault at {phase} {step} on rank {rank}")
        os.kill(os.getpid(), signal.SIGKILL)

"""The linters of the static checks (hadolint, kubectl for `kubectl kustomize`, kubernetes-validate,
checkov) live in a venv of their own, .venv-tools, made by `make tools`. `make test` sets
SALMA_TOOLS_BIN to its bin folder, and then a missing linter fails the check; a plain pytest run
looks in .venv-tools/bin and skips a check whose linter is not installed."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS_ENV_VAR = "SALMA_TOOLS_BIN"


@pytest.fixture(scope="session")
def tool() -> Callable[..., subprocess.CompletedProcess]:
    """``tool(name, *args, cwd=...)``: run a linter of .venv-tools (offline) and return the
    completed process, whatever its exit status."""

    def run(name: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
        configured = os.environ.get(TOOLS_ENV_VAR)
        path = Path(configured or ROOT / ".venv-tools" / "bin") / name
        if not path.is_file():
            message = f"{name} is not installed in {path.parent}: run `make tools`"
            if configured:
                pytest.fail(message)
            pytest.skip(message)
        return subprocess.run([str(path), *args], cwd=cwd, capture_output=True, text=True, timeout=300)

    return run

"""Packaging: pyproject.toml's dependencies are what salma and pipelines import, and the project
installs as a plain package into a fresh venv (the Makefile's CPU recipe: `pip install .` with the
CPU torch, sam2 without its torchvision) and imports away from the source tree."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
# cluster/requirements.py is a script, not a package module.
_spec = importlib.util.spec_from_file_location("cluster_requirements", ROOT / "cluster" / "requirements.py")
cluster_requirements = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cluster_requirements)
requirements = cluster_requirements.requirements
# Import names that are not their distribution's name.
DISTRIBUTION_OF = {"PIL": "pillow", "cv2": "opencv-python-headless", "yaml": "pyyaml"}


def _third_party_imports() -> set[str]:
    """The top-level modules that salma/ and pipelines/ import, less the standard library and the
    project itself."""
    import ast

    found = set()
    for package in ("salma", "pipelines"):
        for source in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text(), str(source))):
                if isinstance(node, ast.Import):
                    found |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"salma", "pipelines", "__future__"}


def test_every_third_party_import_is_a_declared_dependency():
    """Of the dependencies or of an optional extra (imported where it is used, with an error that
    names the install command when it is missing: the demo's gradio)."""
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    declared = {cluster_requirements.requirement_name(r) for r in requirements(PYPROJECT, extras=list(extras))}
    imported = {cluster_requirements.canonical_name(DISTRIBUTION_OF.get(m, m)) for m in _third_party_imports()}
    assert imported - declared == set(), "imported but not in pyproject.toml's dependencies or extras"
    core = {cluster_requirements.requirement_name(r) for r in requirements(PYPROJECT)}
    assert {"torch", "sam2", "deepspeed", "ray", "mlflow"} <= imported & core


def test_requirements_lists_what_pyproject_says(tmp_path):
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    everything = requirements(PYPROJECT, extras=["dev"])
    assert everything == project["dependencies"] + project["optional-dependencies"]["dev"]
    assert requirements(PYPROJECT, only=["SAM2"]) == ["sam2==1.1.0"]
    assert "sam2==1.1.0" not in requirements(PYPROJECT, without=["sam2"])
    assert len(requirements(PYPROJECT, without=["sam2"])) == len(project["dependencies"]) - 1
    with pytest.raises(SystemExit, match="no extra named gpu"):
        requirements(PYPROJECT, extras=["gpu"])
    with pytest.raises(SystemExit, match="torchvision: not a requirement"):
        requirements(PYPROJECT, without=["torchvision"])


def test_the_license_is_an_spdx_expression():
    """A table (`{text = ...}`) is deprecated by setuptools and warned about at every install."""
    assert tomllib.loads(PYPROJECT.read_text())["project"]["license"] == "Apache-2.0"


@pytest.mark.slow
def test_pip_install_into_a_fresh_venv_imports_the_package_outside_the_source_tree(tmp_path):
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MAKEFLAGS", "MAKELEVEL")}
    install = subprocess.run(
        ["make", "--no-print-directory", "install", f"VENV={venv}", "PROJECT=.", "EXTRAS="],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500,
    )
    output = install.stdout + install.stderr
    assert install.returncode == 0, output[-6000:]
    # The install reads as a success: pip has no missing requirement to report.
    assert "ERROR" not in output and "SetuptoolsDeprecationWarning" not in output, output[-6000:]

    python = str(venv / "bin" / "python")
    script = "import salma, pipelines.train, sam2, deepspeed; print('FILES', salma.__file__, pipelines.train.__file__)"
    imported = subprocess.run([python, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert imported.returncode == 0, imported.stderr[-4000:]
    (files,) = [line.split()[1:] for line in imported.stdout.splitlines() if line.startswith("FILES ")]
    assert len(files) == 2 and all(f.startswith(str(venv / "lib")) for f in files), imported.stdout
    assert (venv / "bin" / "salma").is_file()

    # The plain `pip install .` resolves too: with torchvision for sam2 (what a CUDA machine gets).
    report = tmp_path / "report.json"
    resolve = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--dry-run", "--no-build-isolation", "--quiet", "--report", str(report), str(ROOT)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert resolve.returncode == 0, resolve.stderr[-4000:]
    planned = {item["metadata"]["name"] for item in json.loads(report.read_text())["install"]}
    assert {"salma", "torchvision"} <= planned, sorted(planned)

"""Static checks of the cluster image (there is no Docker engine on the machines the tests run on,
so `docker build` itself is not run here): cluster/Dockerfile lints clean with hadolint, checkov
finds nothing that is not fixed or explained, its pins agree with pyproject.toml, the Makefile and
the KubeRay manifests, and its build context holds what it copies."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from test_manifests import assert_nothing_unexplained, checkov_reports

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "cluster" / "Dockerfile"
DOCKERIGNORE = ROOT / "cluster" / "Dockerfile.dockerignore"


def _build_args() -> dict[str, str]:
    """Each ARG's default (the last one wins when several stages repeat it; they must agree)."""
    args: dict[str, str] = {}
    for name, value in re.findall(r"^ARG (\w+)=(.*)$", DOCKERFILE.read_text(), re.MULTILINE):
        value = value.strip().strip('"')
        assert args.setdefault(name, value) == value, f"ARG {name} has two defaults"
    return args


def _dependency(name: str) -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (requirement,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == name]
    return requirement


def test_hadolint_finds_nothing(tool):
    result = tool("hadolint", "--no-color", str(DOCKERFILE))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_hadolint_does_lint(tool, tmp_path):
    """The same invocation on a Dockerfile with an untagged base and unpinned pip install fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM rayproject/ray\nRUN pip install torch\n")
    result = tool("hadolint", "--no-color", str(bad))
    assert result.returncode != 0 and "DL3006" in result.stdout and "DL3013" in result.stdout, result.stdout


def test_checkov_finds_nothing_unexplained_in_the_dockerfile(tool):
    reports = checkov_reports(tool, DOCKERFILE)
    assert [r["check_type"] for r in reports] == ["dockerfile"]
    assert reports[0]["summary"]["passed"] > 0
    assert_nothing_unexplained(reports)


def test_the_image_pins_agree_with_the_project():
    args = _build_args()
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)-cu(\d+)", args["RAY_IMAGE"])
    assert match, f"RAY_IMAGE={args['RAY_IMAGE']} is not an official Ray GPU image of a release"
    ray_version, python_minor, cuda = match.groups()
    assert Version(ray_version) in _dependency("ray").specifier
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"3.{python_minor}" in project["requires-python"] and int(python_minor) == 11
    # PyTorch's index for the image's CUDA version; torch as on the CPU path; its torchvision.
    assert args["TORCH_INDEX_URL"] == f"https://download.pytorch.org/whl/cu{cuda}"
    cpu_torch = re.search(r"^CPU_TORCH \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    torch = Version(args["TORCH_VERSION"])
    assert args["TORCH_VERSION"] == cpu_torch and torch in _dependency("torch").specifier
    assert Version(args["TORCHVISION_VERSION"]).release[:2] == (0, torch.minor + 15)
    assert Version(args["DEEPSPEED_VERSION"]) in _dependency("deepspeed").specifier
    # The Ray version of the KubeRay manifests is the image's.
    cluster = yaml.safe_load((ROOT / "cluster" / "kuberay" / "raycluster" / "raycluster.yaml").read_text())
    assert cluster["spec"]["rayVersion"] == ray_version


def test_the_image_runs_as_a_non_root_user_in_every_stage():
    stages = re.split(r"^FROM ", DOCKERFILE.read_text(), flags=re.MULTILINE)[1:]
    assert len(stages) == 2
    for stage in stages:
        users = re.findall(r"^USER (\S+)$", stage, re.MULTILINE)
        assert users and all(u.split(":")[0] not in ("0", "root") for u in users), stage[:60]


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_private():
    sources = [
        src for line in re.findall(r"^COPY (?!.*--from)(.*)$", DOCKERFILE.read_text(), re.MULTILINE)
        for src in [w for w in line.split() if not w.startswith("--")][:-1]
    ]
    assert sources, "no COPY found"
    included = {line[1:].rstrip("/") for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")}
    for src in sources:
        assert (ROOT / src).exists(), src
        assert src.rstrip("/") in included, f"{src} is copied but excluded from the build context"
    rules = [line for line in DOCKERIGNORE.read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*", "the context must start from nothing"


def test_make_image_says_plainly_when_there_is_no_docker_engine():
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        pytest.skip("a Docker engine answers here: `make image` would build for real")
    result = subprocess.run(["make", "--no-print-directory", "image"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "no Docker engine" in result.stderr, result.stderr

"""Write ``crd_schemas.json`` (the test fixture) from KubeRay's CRD files.

    python tests/cluster/kuberay/prune_crds.py RAYCLUSTERS_CRD RAYJOBS_CRD --source "TEXT"

The inputs are ``ray-operator/config/crd/bases/ray.io_rayclusters.yaml`` and
``ray.io_rayjobs.yaml`` of the KubeRay release that docs/cluster.md names. From each it keeps the
``v1`` version's schema of ``spec`` and drops what the check does not need: descriptions, and the
embedded core/v1 PodTemplateSpec schemas (``template``, ``submitterPodTemplate``), which are
replaced by a marker; tests/cluster/test_manifests.py validates those pod templates with
kubernetes-validate against the Kubernetes schema itself.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

POD_TEMPLATE_FIELDS = ("template", "submitterPodTemplate")
POD_TEMPLATE_MARKER = {"x-salma-pod-template": True}


def pruned(schema: dict) -> dict:
    """The schema without descriptions, pod templates replaced by the marker."""
    out = {}
    for key, value in schema.items():
        if key == "description":
            continue
        if key == "properties":
            value = {
                name: POD_TEMPLATE_MARKER if name in POD_TEMPLATE_FIELDS else pruned(sub)
                for name, sub in value.items()
            }
        elif isinstance(value, dict):
            value = pruned(value)
        elif isinstance(value, list):
            value = [pruned(v) if isinstance(v, dict) else v for v in value]
        out[key] = value
    return out


def spec_schema(crd_file: Path) -> tuple[str, dict]:
    crd = yaml.safe_load(crd_file.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return crd["spec"]["names"]["kind"], pruned(version["schema"]["openAPIV3Schema"]["properties"]["spec"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("crds", nargs="+", type=Path)
    parser.add_argument("--source", required=True, help="where the CRD files come from (release, commit, license)")
    args = parser.parse_args(argv)
    fixture = {"source": args.source, "apiVersion": "ray.io/v1", "spec": dict(map(spec_schema, args.crds))}
    out = Path(__file__).with_name("crd_schemas.json")
    out.write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

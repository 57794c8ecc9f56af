"""Static checks of the cluster definitions, offline: the KubeRay kustomizations render (`kubectl
kustomize`) with the image of cluster/kuberay/image in every container; every field of the
RayCluster and RayJob is in KubeRay's CRD schema (tests/cluster/kuberay/crd_schemas.json, pruned
from the release docs/cluster.md names); the core objects and the Ray pod templates are valid
Kubernetes (kubernetes-validate, strict); checkov finds nothing that is not fixed or explained;
cluster/launcher.yaml passes Ray's own launcher validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "cluster" / "kuberay"
KUSTOMIZATIONS = ("raycluster", "rayjob")
CRD_FIXTURE = Path(__file__).with_name("kuberay") / "crd_schemas.json"
KUBERAY_VERSION = "v1.7.0"  # the release docs/cluster.md names; the fixture is pruned from it
KUBERNETES_VERSION = "1.33.0"  # the oldest Kubernetes docs/cluster.md supports
RAY_KINDS = ("RayCluster", "RayJob")
POD_TEMPLATE_MARKER = "x-salma-pod-template"


# ----------------------------------------------------------------------- KubeRay CRD schema check
def crd_errors(value: Any, schema: dict, path: str, pod_templates: list[tuple[str, dict]]) -> list[str]:
    """What in ``value`` the structural schema ``schema`` does not allow: unknown fields (which the
    API server would drop or refuse), wrong types, values outside an enum, missing required
    fields. Pod templates (marked in the pruned schema) are collected in ``pod_templates`` for
    the Kubernetes schema instead."""
    if schema.get(POD_TEMPLATE_MARKER):
        pod_templates.append((path, value))
        return []
    if schema.get("x-kubernetes-int-or-string"):
        return [] if isinstance(value, (int, str)) and not isinstance(value, bool) else [f"{path}: not an int or string"]
    kind = schema.get("type")
    python_types = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}
    if kind in python_types and (
        not isinstance(value, python_types[kind]) or (kind in ("integer", "number") and isinstance(value, bool))
    ):
        return [f"{path}: {type(value).__name__} where the schema wants {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: {value!r} is not one of {schema['enum']}"]
    errors = []
    if isinstance(value, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        errors += [f"{path}.{name}: required, missing" for name in schema.get("required", []) if name not in value]
        for name, sub in value.items():
            if properties is not None and name in properties:
                errors += crd_errors(sub, properties[name], f"{path}.{name}", pod_templates)
            elif isinstance(extra, dict):
                errors += crd_errors(sub, extra, f"{path}.{name}", pod_templates)
            elif not (extra or schema.get("x-kubernetes-preserve-unknown-fields")):
                errors.append(f"{path}.{name}: not a field of KubeRay {KUBERAY_VERSION}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += crd_errors(item, schema["items"], f"{path}[{i}]", pod_templates)
    return errors


@pytest.fixture(scope="module")
def crd_schemas() -> dict:
    fixture = json.loads(CRD_FIXTURE.read_text())
    assert KUBERAY_VERSION in fixture["source"] and "Apache" in fixture["source"]
    assert set(fixture["spec"]) == set(RAY_KINDS)
    return fixture


def _ray_objects(documents: list[dict]) -> list[dict]:
    return [d for d in documents if d.get("kind") in RAY_KINDS]


def _check_ray_object(obj: dict, schemas: dict) -> tuple[list[str], list[tuple[str, dict]]]:
    pod_templates: list[tuple[str, dict]] = []
    errors = [] if obj.get("apiVersion") == schemas["apiVersion"] else [f"apiVersion {obj.get('apiVersion')}"]
    unknown_top = set(obj) - {"apiVersion", "kind", "metadata", "spec"}
    errors += [f"{obj['kind']}.{name}: not a top-level field" for name in sorted(unknown_top)]
    errors += crd_errors(obj["spec"], schemas["spec"][obj["kind"]], f"{obj['kind']}.spec", pod_templates)
    return errors, pod_templates


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_raycluster_and_rayjob_field_is_in_the_kuberay_crd(name, crd_schemas):
    (manifest,) = (KUBERAY / name).glob(f"{name}.yaml")
    (obj,) = _ray_objects(list(yaml.safe_load_all(manifest.read_text())))
    errors, pod_templates = _check_ray_object(obj, crd_schemas)
    assert errors == [], f"{manifest.relative_to(ROOT)}:\n" + "\n".join(errors)
    assert pod_templates, "no pod template found: the check did not reach the Ray pods"


def test_the_crd_check_finds_a_misspelt_field_a_bad_type_and_a_bad_enum(crd_schemas):
    obj = yaml.safe_load((KUBERAY / "raycluster" / "raycluster.yaml").read_text())
    obj["spec"]["headGroupSpec"]["rayStartParam"] = {}
    obj["spec"]["workerGroupSpecs"][0]["replicas"] = "1"
    obj["spec"]["authOptions"]["mode"] = "password"
    errors, _ = _check_ray_object(obj, crd_schemas)
    assert errors == [
        "RayCluster.spec.authOptions.mode: 'password' is not one of ['disabled', 'token']",
        f"RayCluster.spec.headGroupSpec.rayStartParam: not a field of KubeRay {KUBERAY_VERSION}",
        "RayCluster.spec.workerGroupSpecs[0].replicas: str where the schema wants integer",
    ]


# ------------------------------------------------------------------------ rendered kustomizations
def _image_of_the_component() -> str:
    component = yaml.safe_load((KUBERAY / "image" / "kustomization.yaml").read_text())
    (image,) = component["images"]
    return f"{image['newName']}:{image['newTag']}"


def _containers(value: Any) -> list[dict]:
    """Every container (and init container) anywhere in an object."""
    found = []
    if isinstance(value, dict):
        for key, sub in value.items():
            if key in ("containers", "initContainers") and isinstance(sub, list):
                found += sub
            found += _containers(sub)
    elif isinstance(value, list):
        for sub in value:
            found += _containers(sub)
    return found


@pytest.fixture(scope="module")
def rendered(tool) -> dict[str, list[dict]]:
    """``kubectl kustomize`` of each kustomization: its objects."""
    out = {}
    for name in KUSTOMIZATIONS:
        result = tool("kubectl", "kustomize", str(KUBERAY / name))
        assert result.returncode == 0, result.stderr
        out[name] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return out


def test_the_kustomizations_put_the_one_image_in_every_container_in_namespace_salma(rendered):
    image = _image_of_the_component()
    for name, objects in rendered.items():
        containers = [c for obj in objects for c in _containers(obj)]
        assert containers, name
        assert {c["image"] for c in containers} == {image}, name
        assert {obj["metadata"].get("namespace") for obj in objects if obj["kind"] != "Namespace"} == {"salma"}
    kinds = {obj["kind"] for obj in rendered["raycluster"]}
    assert {"RayCluster", "PersistentVolumeClaim", "Deployment", "Service", "NetworkPolicy"} <= kinds
    assert [obj["kind"] for obj in rendered["rayjob"]] == ["RayJob"]


@pytest.fixture(scope="module")
def kubernetes_files(rendered, crd_schemas, tmp_path_factory) -> list[Path]:
    """The rendered core objects, and every Ray pod template as a Pod (its metadata, so checkov
    reads its annotations), written to files for the linters."""
    folder = tmp_path_factory.mktemp("kubernetes")
    core, pods = {}, []
    for objects in rendered.values():
        for obj in objects:
            if obj["kind"] in RAY_KINDS:
                errors, templates = _check_ray_object(obj, crd_schemas)
                assert errors == [], errors
                for path, template in templates:
                    slug = path.split(".spec.", 1)[1].replace(".", "-").replace("[", "-").replace("]", "")
                    metadata = {**template.get("metadata", {}), "name": f"{obj['metadata']['name']}-{slug}".lower(),
                                "namespace": obj["metadata"]["namespace"]}
                    pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})
            else:
                core[(obj["kind"], obj["metadata"]["name"])] = obj
    files = [folder / "core.yaml", folder / "pods.yaml"]
    files[0].write_text(yaml.safe_dump_all(list(core.values()), sort_keys=False))
    files[1].write_text(yaml.safe_dump_all(pods, sort_keys=False))
    # head + gpu workers of the RayCluster, and the RayJob's submitter
    assert len(pods) == 3, [p["metadata"]["name"] for p in pods]
    return files


def test_core_objects_and_ray_pod_templates_are_valid_kubernetes(tool, kubernetes_files):
    result = tool("kubernetes-validate", "--strict", "-k", KUBERNETES_VERSION, *map(str, kubernetes_files))
    passed = [line for line in result.stdout.splitlines() if " passed for resource " in line]
    assert result.returncode == 0 and "ERROR" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert len(passed) == sum(len(list(yaml.safe_load_all(f.read_text()))) for f in kubernetes_files), result.stdout


def test_kubernetes_validate_rejects_an_unknown_pod_field(tool, kubernetes_files, tmp_path):
    pod = next(yaml.safe_load_all(kubernetes_files[1].read_text()))
    pod["spec"]["containers"][0]["imagePullPolicies"] = "Always"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(pod))
    result = tool("kubernetes-validate", "--strict", "-k", KUBERNETES_VERSION, str(bad))
    assert result.returncode != 0 and "imagePullPolicies" in result.stdout + result.stderr


def checkov_reports(tool, *files: Path) -> list[dict]:
    """checkov's JSON reports (one per framework) for ``files``, offline."""
    args = [arg for f in files for arg in ("-f", str(f))]
    result = tool("checkov", *args, "--skip-download", "--compact", "-o", "json")
    assert result.stdout.strip(), result.stderr
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, list) else [reports]


def assert_nothing_unexplained(reports: list[dict]) -> None:
    failed = [
        (c["check_id"], c["resource"], c["file_path"]) for r in reports for c in r["results"]["failed_checks"]
    ]
    assert failed == [], "checkov findings neither fixed nor explained:\n" + "\n".join(map(str, failed))
    unexplained = [
        (c["check_id"], c["resource"]) for r in reports for c in r["results"]["skipped_checks"]
        if len((c.get("check_result", {}).get("suppress_comment") or "").strip()) < 20
    ]
    assert unexplained == [], f"skipped without a reason: {unexplained}"


def test_checkov_finds_nothing_unexplained_in_the_kubernetes_objects(tool, kubernetes_files):
    reports = checkov_reports(tool, *kubernetes_files)
    assert_nothing_unexplained(reports)
    scanned = {c["resource"] for r in reports for c in r["results"]["passed_checks"]}
    pods = [p["metadata"]["name"] for p in yaml.safe_load_all(kubernetes_files[1].read_text())]
    assert all(any(pod in resource for resource in scanned) for pod in pods), (pods, sorted(scanned))


# ------------------------------------------------------------------------- Ray cluster launcher
def test_the_launcher_config_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster" / "launcher.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["docker"]["image"] == _image_of_the_component()
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}

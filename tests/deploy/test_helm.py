"""The Helm chart lints, renders with the Helm v4 engine for the default values and the GPU
profile, and every rendered manifest validates against the Kubernetes 1.33 schemas in strict
mode. KEDA's ScaledObject and TriggerAuthentication are custom resources with no bundled
schema, so they are skipped by name and checked by hand."""

from __future__ import annotations

import base64
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.deploy.tools import REPO_ROOT

CHART = REPO_ROOT / "helm" / "sdft"
KUBERNETES_VERSION = "1.33.0"
# Custom resources whose schemas ship with their operator, not with Kubernetes.
CUSTOM_RESOURCES = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
}

Manifest = dict[str, Any]


def _gpu_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values-gpu.yaml").read_text())


def _render(values: dict[str, Any] | None = None) -> list[Manifest]:
    chart = helm.Chart.load(str(CHART))
    try:
        rendered = chart.render(values, name="sdft", namespace="ml", is_install=True)
    finally:
        chart.close()
    manifests: list[Manifest] = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return manifests


def _find(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    for manifest in manifests:
        if manifest["kind"] == kind and manifest["metadata"]["name"] == name:
            return manifest
    raise AssertionError(f"no {kind} named {name} among {[_key(m) for m in manifests]}")


def _key(manifest: Manifest) -> str:
    return f"{manifest['kind']}/{manifest['metadata']['name']}"


def _kinds(manifests: list[Manifest]) -> set[str]:
    return {_key(manifest) for manifest in manifests}


def _container(deployment: Manifest) -> Manifest:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _validate_strict(manifests: list[Manifest]) -> list[str]:
    """Validate every manifest; return the custom resources that were skipped."""
    skipped: list[str] = []
    for manifest in manifests:
        if (manifest["apiVersion"], manifest["kind"]) in CUSTOM_RESOURCES:
            skipped.append(_key(manifest))
            continue
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(part) for part in err.path)
            raise AssertionError(f"{_key(manifest)} is invalid at {path}: {err.message}") from err
    return skipped


@pytest.mark.parametrize("profile", ["default", "gpu"])
def test_chart_lints_without_warnings(profile: str) -> None:
    values = _gpu_values() if profile == "gpu" else None

    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBERNETES_VERSION}")

    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


def test_default_render_validates_strictly() -> None:
    manifests = _render()

    assert _kinds(manifests) == {
        "ConfigMap/sdft",
        "Secret/sdft",
        "Secret/sdft-migrations",
        "ServiceAccount/sdft",
        "Deployment/sdft-api",
        "Service/sdft-api",
        "Deployment/sdft-worker",
        "Job/sdft-migrations",
    }
    assert _validate_strict(manifests) == []


def test_gpu_render_validates_strictly() -> None:
    manifests = _render(_gpu_values())

    skipped = _validate_strict(manifests)

    assert "Ingress/sdft-api" in _kinds(manifests)
    assert sorted(skipped) == ["ScaledObject/sdft-worker", "TriggerAuthentication/sdft-worker"]


def test_gpu_worker_requests_gpu() -> None:
    worker = _find(_render(_gpu_values()), "Deployment", "sdft-worker")
    pod = worker["spec"]["template"]["spec"]
    resources = _container(worker)["resources"]

    assert resources["requests"]["nvidia.com/gpu"] == "1"
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert resources["limits"]["memory"] == "160Gi"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "replicas" not in worker["spec"], "KEDA owns the replica count when autoscaling"


def test_worker_mounts_memory_shm() -> None:
    worker = _find(_render(), "Deployment", "sdft-worker")
    volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in _container(worker)["volumeMounts"]}

    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert mounts["dshm"] == "/dev/shm"


def test_api_probes_health_endpoints() -> None:
    api = _container(_find(_render(), "Deployment", "sdft-api"))

    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["resources"]["requests"]["cpu"] == "250m"
    assert api["resources"]["limits"]["memory"] == "1Gi"


def test_migrations_run_as_hook() -> None:
    manifests = _render({"secrets": {"databaseUrl": "postgresql+psycopg://u:p@db:5432/sdft"}})
    job = _find(manifests, "Job", "sdft-migrations")
    hook_secret = _find(manifests, "Secret", "sdft-migrations")

    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        annotations["helm.sh/hook-weight"]
    )
    container = _container(job)
    assert container["args"] == ["sdft", "db", "upgrade"]
    secret_ref = container["env"][0]["valueFrom"]["secretKeyRef"]
    assert secret_ref == {"name": "sdft-migrations", "key": "SDFT_DATABASE_URL"}
    stored = base64.b64decode(hook_secret["data"]["SDFT_DATABASE_URL"]).decode()
    assert stored == "postgresql+psycopg://u:p@db:5432/sdft"


def test_existing_secret_replaces_chart_secret() -> None:
    manifests = _render({"secrets": {"existingSecret": "conn"}})

    assert not any(m["kind"] == "Secret" for m in manifests)
    api = _container(_find(manifests, "Deployment", "sdft-api"))
    assert {"secretRef": {"name": "conn"}} in api["envFrom"]
    job = _container(_find(manifests, "Job", "sdft-migrations"))
    assert job["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "conn"


def test_keda_scales_on_train_list() -> None:
    scaled = _find(_render(_gpu_values()), "ScaledObject", "sdft-worker")
    trigger = scaled["spec"]["triggers"][0]

    assert scaled["spec"]["scaleTargetRef"] == {"name": "sdft-worker"}
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == "train"
    assert trigger["metadata"]["address"] == "redis-master.redis.svc:6379"
    assert trigger["authenticationRef"] == {"name": "sdft-worker"}


def test_autoscaling_without_redis_address_fails() -> None:
    with pytest.raises(helm.HelmError, match="redisAddress"):
        _render({"autoscaling": {"enabled": True}})


def test_config_map_carries_extra_env() -> None:
    config = _find(_render(_gpu_values()), "ConfigMap", "sdft")

    assert config["data"]["SDFT_JOB_TIME_LIMIT_S"] == "172800"
    assert config["data"]["SDFT_S3_ENDPOINT_URL"] == "http://seaweedfs-s3.storage.svc:8333"


@pytest.mark.parametrize(
    ("values", "mentioned"),
    [
        ({"worker": {"gpu": 1}}, "gpu"),
        ({"api": {"port": "eighty"}}, "port"),
        ({"config": {"extraEnv": {"JOB_TIME_LIMIT": "1"}}}, "JOB_TIME_LIMIT"),
    ],
)
def test_schema_rejects_invalid_values(values: dict[str, Any], mentioned: str) -> None:
    with pytest.raises(helm.HelmError, match=mentioned):
        _render(values)

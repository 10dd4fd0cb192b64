"""Fixtures of the API tests: a client, a model folder and an uploaded dataset per test."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.settings import Settings
from tests.fixtures.services import TenantKey

DRONE_TRACES = Path("../shared/data/traces/openai_chat/drone_tools_head.jsonl")
MODEL_NAME = "tiny-api-model"


@pytest.fixture
def model_name(service_settings: Settings) -> str:
    """A folder under SDFT_MODELS_DIR that passes model validation (the API never loads it)."""
    folder = service_settings.models_dir / MODEL_NAME
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return MODEL_NAME


@pytest.fixture
def drone_bytes() -> bytes:
    return DRONE_TRACES.read_bytes()


@pytest.fixture
def upload_dataset(api_client: TestClient, drone_bytes: bytes) -> Callable[[TenantKey], str]:
    """Factory: upload the drone traces for a tenant and return the dataset id."""

    def upload(tenant: TenantKey) -> str:
        response = api_client.post(
            "/datasets",
            headers=tenant.headers,
            files={"file": ("drone.jsonl", drone_bytes, "application/jsonl")},
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    return upload


@pytest.fixture
def submit_job(
    api_client: TestClient, model_name: str, upload_dataset: Callable[[TenantKey], str]
) -> Callable[..., dict[str, Any]]:
    """Factory: submit a job with a fresh dataset and return the response body."""

    def submit(tenant: TenantKey, config: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"dataset_id": upload_dataset(tenant), "model": model_name, "config": config or {}}
        response = api_client.post("/jobs", headers=tenant.headers, json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    return submit

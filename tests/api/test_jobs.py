"""POST/GET /jobs and cancel, against the real database and Redis broker."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from api.db.session import session_scope
from api.services import queue
from api.services.jobs import get_job_for_update, transition
from api.settings import Settings
from sdft.config import SDFTConfig
from tests.fixtures.services import TenantKey


def test_create_job_echoes_defaults(
    api_client: TestClient,
    tenant: TenantKey,
    model_name: str,
    upload_dataset: Callable[[TenantKey], str],
    service_settings: Settings,
) -> None:
    dataset_id = upload_dataset(tenant)
    body = {"dataset_id": dataset_id, "model": model_name, "config": {"max_steps": 5}}

    response = api_client.post("/jobs", headers=tenant.headers, json=body)

    assert response.status_code == 201, response.text
    job = response.json()
    assert job["id"].startswith("job_")
    assert job["status"] == "queued"
    assert job["model"] == model_name
    assert job["dataset_id"] == dataset_id
    assert job["total_steps"] == 5
    assert job["current_step"] == 0
    assert job["progress"] == 0.0
    expected = SDFTConfig(max_steps=5).to_dict()
    assert job["config"] == expected
    assert job["config"]["lora_rank"] == 64

    # The task message is in the train queue of this run's Redis database.
    client = redis.Redis.from_url(service_settings.redis_url_value)
    messages = [json.loads(m) for m in client.lrange("train", 0, -1)]
    assert any(m["headers"]["task"] == "sdft.train_job" for m in messages)
    assert any(job["id"] in json.dumps(m["headers"].get("kwargsrepr", "")) for m in messages)


def test_create_job_multipart(
    api_client: TestClient, tenant: TenantKey, model_name: str, drone_bytes: bytes
) -> None:
    response = api_client.post(
        "/jobs",
        headers=tenant.headers,
        files={"dataset": ("drone.jsonl", drone_bytes)},
        data={"model": model_name, "config": json.dumps({"learning_rate": 2e-5})},
    )

    assert response.status_code == 201, response.text
    job = response.json()
    assert job["config"]["learning_rate"] == 2e-5
    dataset = api_client.get(f"/datasets/{job['dataset_id']}", headers=tenant.headers)
    assert dataset.status_code == 200
    assert dataset.json()["records"] == 8


def test_invalid_config_names_option(
    api_client: TestClient,
    tenant: TenantKey,
    model_name: str,
    upload_dataset: Callable[[TenantKey], str],
) -> None:
    body = {
        "dataset_id": upload_dataset(tenant),
        "model": model_name,
        "config": {"learning_rate": -1, "lora_rank": "big", "warmpu_steps": 3},
    }

    response = api_client.post("/jobs", headers=tenant.headers, json=body)

    assert response.status_code == 422
    error = response.json()["error"]
    assert "warmpu_steps: unknown option" in error["message"]
    body["config"] = {"learning_rate": -1, "lora_rank": "big"}
    response = api_client.post("/jobs", headers=tenant.headers, json=body)
    problems = response.json()["error"]["problems"]
    assert any(p.startswith("config.lora_rank='big'") for p in problems)


def test_multipart_bad_config_uploads_nothing(
    api_client: TestClient, tenant: TenantKey, model_name: str, drone_bytes: bytes
) -> None:
    response = api_client.post(
        "/jobs",
        headers=tenant.headers,
        files={"dataset": ("drone.jsonl", drone_bytes)},
        data={"model": model_name, "config": json.dumps({"max_steps": 0})},
    )

    assert response.status_code == 422
    assert "max_steps=0" in response.json()["error"]["message"]
    assert api_client.get("/datasets", headers=tenant.headers).json()["data"] == []


def test_unknown_and_traversal_models(
    api_client: TestClient, tenant: TenantKey, upload_dataset: Callable[[TenantKey], str]
) -> None:
    dataset_id = upload_dataset(tenant)
    for name in ("no-such-model", "../models", "/etc", "a/../../b", "..", "s3://bucket/../x"):
        response = api_client.post(
            "/jobs", headers=tenant.headers, json={"dataset_id": dataset_id, "model": name}
        )
        assert response.status_code == 422, name
        message = response.json()["error"]["message"]
        assert repr(name) in message, message
        assert "SDFT_MODELS_DIR" in message


def test_missing_s3_model(
    api_client: TestClient,
    tenant: TenantKey,
    upload_dataset: Callable[[TenantKey], str],
    service_settings: Settings,
) -> None:
    name = f"s3://{service_settings.s3_bucket}/models/absent"
    response = api_client.post(
        "/jobs", headers=tenant.headers, json={"dataset_id": upload_dataset(tenant), "model": name}
    )
    assert response.status_code == 422
    assert "config.json" in response.json()["error"]["message"]


def test_unknown_dataset_404(api_client: TestClient, tenant: TenantKey, model_name: str) -> None:
    response = api_client.post(
        "/jobs", headers=tenant.headers, json={"dataset_id": "ds_missing", "model": model_name}
    )
    assert response.status_code == 404
    assert "ds_missing" in response.json()["error"]["message"]


def test_list_jobs_pagination_and_filter(
    api_client: TestClient, tenant: TenantKey, submit_job: Callable[..., dict[str, Any]]
) -> None:
    ids = [submit_job(tenant)["id"] for _ in range(3)]
    with session_scope() as session:
        transition(session, get_job_for_update(session, ids[1]), "running")

    page = api_client.get("/jobs", headers=tenant.headers, params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == [ids[2], ids[1]]
    assert page["has_more"] is True
    rest = api_client.get(
        "/jobs", headers=tenant.headers, params={"limit": 2, "after": page["next_cursor"]}
    ).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]]
    assert rest["has_more"] is False
    assert "next_cursor" not in rest or rest["next_cursor"] is None

    running = api_client.get("/jobs", headers=tenant.headers, params={"status": "running"}).json()
    assert [j["id"] for j in running["data"]] == [ids[1]]
    invalid = api_client.get("/jobs", headers=tenant.headers, params={"status": "exploded"})
    assert invalid.status_code == 422


def test_cancel_queued_then_terminal(
    api_client: TestClient, tenant: TenantKey, submit_job: Callable[..., dict[str, Any]]
) -> None:
    job_id = submit_job(tenant)["id"]

    cancelled = api_client.post(f"/jobs/{job_id}/cancel", headers=tenant.headers)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None

    again = api_client.post(f"/jobs/{job_id}/cancel", headers=tenant.headers)
    assert again.status_code == 409
    assert "already cancelled" in again.json()["error"]["message"]


def test_cancel_running_publishes(
    api_client: TestClient,
    tenant: TenantKey,
    submit_job: Callable[..., dict[str, Any]],
    service_settings: Settings,
) -> None:
    job_id = submit_job(tenant)["id"]
    with session_scope() as session:
        transition(session, get_job_for_update(session, job_id), "running")
    client = redis.Redis.from_url(service_settings.redis_url_value)
    pubsub = client.pubsub()
    pubsub.subscribe(f"sdft:jobs:{job_id}:control")
    pubsub.get_message(timeout=1)  # the subscribe confirmation

    response = api_client.post(f"/jobs/{job_id}/cancel", headers=tenant.headers)

    assert response.status_code == 200
    assert response.json()["status"] == "cancelling"
    assert response.json()["cancel_requested_at"] is not None
    message = pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
    assert message is not None
    assert json.loads(message["data"])["action"] == "cancel"
    assert client.get(f"sdft:jobs:{job_id}:cancel") == b"1"
    pubsub.close()


def test_broker_failure_fails_job(
    api_client: TestClient,
    tenant: TenantKey,
    model_name: str,
    upload_dataset: Callable[[TenantKey], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broker_down(job_id: str) -> str:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    monkeypatch.setattr(queue, "enqueue_training", broker_down)
    body = {"dataset_id": upload_dataset(tenant), "model": model_name}

    response = api_client.post("/jobs", headers=tenant.headers, json=body)

    assert response.status_code == 201
    assert response.json()["status"] == "failed"
    assert "message broker failed" in response.json()["error"]
    stored = api_client.get(f"/jobs/{response.json()['id']}", headers=tenant.headers).json()
    assert stored["status"] == "failed"

"""POST/GET /datasets against the real database and S3."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from fastapi.testclient import TestClient

from api.settings import Settings
from api.storage import Storage, dataset_records_key
from tests.fixtures.services import TenantKey


def _objects(storage: Storage, prefix: str = "datasets/") -> set[str]:
    return {info.key for info in storage.list_prefix(prefix)}


def test_upload_drone_traces(
    api_client: TestClient, tenant: TenantKey, drone_bytes: bytes, service_settings: Settings
) -> None:
    response = api_client.post(
        "/datasets",
        headers=tenant.headers,
        files={"file": ("../../drone tools.jsonl", drone_bytes, "application/jsonl")},
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"].startswith("ds_")
    assert body["records"] == 8
    assert body["bytes"] == len(drone_bytes)
    assert body["filename"] == "drone tools.jsonl"
    assert body["report"]["errors"] == []

    storage = Storage.from_settings(service_settings)
    stored = storage.open_stream(dataset_records_key(body["id"])).read().decode().splitlines()
    assert len(stored) == 8
    first = json.loads(stored[0])
    assert first["completion"][0]["role"] == "assistant"
    # Arguments encoded twice in the source come out as a JSON object.
    assert isinstance(first["completion"][0]["tool_calls"][0]["function"]["arguments"], dict)

    fetched = api_client.get(f"/datasets/{body['id']}", headers=tenant.headers)
    assert fetched.status_code == 200
    assert fetched.json()["report"]["records"] == 8


def test_upload_gzip(api_client: TestClient, tenant: TenantKey, drone_bytes: bytes) -> None:
    response = api_client.post(
        "/datasets",
        headers=tenant.headers,
        files={"file": ("drone.jsonl.gz", gzip.compress(drone_bytes), "application/gzip")},
    )

    assert response.status_code == 201, response.text
    assert response.json()["records"] == 8
    assert response.json()["report"]["compressed"] is True


def test_invalid_lines_rejected(
    api_client: TestClient, tenant: TenantKey, drone_bytes: bytes, service_settings: Settings
) -> None:
    storage = Storage.from_settings(service_settings)
    before = _objects(storage)
    lines = drone_bytes.decode().splitlines()
    lines.insert(2, "{not json")
    lines.insert(5, json.dumps({"messages": "not a list"}))
    content = ("\n".join(lines) + "\n").encode()

    response = api_client.post(
        "/datasets", headers=tenant.headers, files={"file": ("bad.jsonl", content)}
    )

    assert response.status_code == 422
    error = response.json()["error"]
    assert len(error["problems"]) == 2
    assert error["problems"][0].startswith("line 3: invalid JSON")
    assert error["problems"][1] == "line 6: messages: expected a non-empty list of messages"
    assert "has 2 invalid line(s)" in error["message"]
    assert _objects(storage) == before
    listed = api_client.get("/datasets", headers=tenant.headers).json()
    assert listed["data"] == []


def test_lenient_upload_skips_lines(
    api_client: TestClient, tenant: TenantKey, drone_bytes: bytes
) -> None:
    content = drone_bytes + b"[1, 2]\n"
    response = api_client.post(
        "/datasets",
        headers=tenant.headers,
        files={"file": ("mixed.jsonl", content)},
        data={"strict": "false"},
    )

    assert response.status_code == 201, response.text
    assert response.json()["records"] == 8
    assert response.json()["report"]["skipped"] == 1
    assert response.json()["report"]["errors"][0]["line"] == 9


def test_empty_and_bad_format(api_client: TestClient, tenant: TenantKey) -> None:
    empty = api_client.post(
        "/datasets", headers=tenant.headers, files={"file": ("e.jsonl", b"\n\n")}
    )
    assert empty.status_code == 422
    assert "the input is empty" in empty.json()["error"]["message"]

    bad_format = api_client.post(
        "/datasets",
        headers=tenant.headers,
        files={"file": ("e.jsonl", b"{}\n")},
        data={"format": "parquet"},
    )
    assert bad_format.status_code == 422
    assert "'parquet' is not supported" in bad_format.json()["error"]["message"]


def test_many_errors_listed_up_to_50(
    api_client: TestClient, tenant: TenantKey, drone_bytes: bytes
) -> None:
    content = drone_bytes.splitlines(keepends=True)[0] + b"oops\n" * 120
    response = api_client.post(
        "/datasets", headers=tenant.headers, files={"file": ("bad.jsonl", content)}
    )

    assert response.status_code == 422
    error = response.json()["error"]
    assert len(error["problems"]) == 50
    assert error["problems"][0].startswith("line 2:")
    assert error["problems"][-1].startswith("line 51:")
    assert "at least 50 invalid line(s)" in error["message"]


def test_list_datasets_paginated(
    api_client: TestClient, tenant: TenantKey, drone_bytes: bytes
) -> None:
    ids = []
    for index in range(3):
        response = api_client.post(
            "/datasets", headers=tenant.headers, files={"file": (f"d{index}.jsonl", drone_bytes)}
        )
        ids.append(response.json()["id"])

    first = api_client.get("/datasets", headers=tenant.headers, params={"limit": 2}).json()
    assert [d["id"] for d in first["data"]] == [ids[2], ids[1]]
    assert first["has_more"] is True
    second = api_client.get(
        "/datasets", headers=tenant.headers, params={"limit": 2, "after": first["next_cursor"]}
    ).json()
    assert [d["id"] for d in second["data"]] == [ids[0]]
    assert second["has_more"] is False


def test_trace_formats_detected(api_client: TestClient, tenant: TenantKey) -> None:
    traces = Path("../shared/data/traces")
    cases = {
        "claude_code/session_short.jsonl": "claude_code",
        "sharegpt/glaive_toolcall_zh_head.json": "sharegpt",
        "agent_trajectories/sweagent_function_calling.traj": "swe_agent",
    }
    for relpath, expected in cases.items():
        response = api_client.post(
            "/datasets",
            headers=tenant.headers,
            files={"file": (Path(relpath).name, (traces / relpath).read_bytes())},
            data={"strict": "false"},
        )
        assert response.status_code == 201, (relpath, response.text)
        body = response.json()
        assert body["format"] == expected, relpath
        assert body["records"] > 0, relpath
        assert body["report"]["turns"] >= body["records"], relpath


def test_truncated_gzip_rejected(
    api_client: TestClient, tenant: TenantKey, drone_bytes: bytes
) -> None:
    truncated = gzip.compress(drone_bytes)[:-20]
    response = api_client.post(
        "/datasets", headers=tenant.headers, files={"file": ("d.jsonl.gz", truncated)}
    )

    assert response.status_code == 422
    assert "gzip data is corrupted or truncated" in response.json()["error"]["message"]

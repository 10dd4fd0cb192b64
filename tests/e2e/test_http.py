"""End to end over HTTP: upload, train, stream, download and load the merged model."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import (
    DRONE_TRACES,
    TINY_MODEL_NAME,
    Processes,
    all_events,
    all_metrics,
    assert_steps_complete,
    client_for,
    create_job,
    download_artifact,
    upload_dataset,
    wait_for_job,
)
from tests.fixtures.services import TenantKey

MAX_STEPS = 2


def read_sse(url: str, headers: dict[str, str], events: list[tuple[str, str, str]]) -> None:
    """Collect (event, id, data) of a metrics stream until the server ends it."""
    with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(10, read=300)) as body:
        event, event_id, data = "message", "", []
        for line in body.iter_lines():
            if line == "":
                if data:
                    events.append((event, event_id, "\n".join(data)))
                event, event_id, data = "message", "", []
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())


def test_train_job_over_http(processes: Processes, tenant: TenantKey, tmp_path: Path) -> None:
    api = processes.api()
    processes.worker()
    client = client_for(api, tenant)

    dataset = upload_dataset(client, "drone_tools_head.jsonl", Path(DRONE_TRACES).read_bytes())
    assert dataset["records"] == 8
    job = create_job(
        client,
        dataset["id"],
        max_steps=MAX_STEPS,
        max_rollout_tokens=16,
        lora_rank=4,
        lora_alpha=8,
        checkpoint_every=MAX_STEPS,
        gradient_checkpointing=False,
        device="cpu",
        dtype="float32",
    )
    assert job["status"] == "queued"
    assert job["config"]["lora_rank"] == 4

    # Follow the live stream from the start, while polling the same rows.
    streamed: list[tuple[str, str, str]] = []
    reader = threading.Thread(
        target=read_sse,
        args=(f"{api.url}/jobs/{job['id']}/metrics/stream", tenant.headers, streamed),
        daemon=True,
    )
    reader.start()
    finished = wait_for_job(
        client,
        job["id"],
        lambda j: j["status"] in ("succeeded", "failed", "cancelled"),
        timeout_s=300,
        describe="the job to finish",
        tails=processes.tails,
    )
    assert finished["status"] == "succeeded", finished["error"]
    assert finished["current_step"] == MAX_STEPS
    assert finished["attempt"] == 1

    polled = all_metrics(client, job["id"])
    assert_steps_complete(polled, MAX_STEPS)
    assert {"loss", "lr", "grad_norm"} <= set(polled[0]["metrics"])

    reader.join(timeout=60)
    assert not reader.is_alive(), "the metrics stream did not end after the job finished"
    metric_events = [
        (event_id, json.loads(data)) for event, event_id, data in streamed if event == "metric"
    ]
    assert [event_id for event_id, _ in metric_events] == [str(r["step"]) for r in polled]
    assert [row["metrics"] for _, row in metric_events] == [r["metrics"] for r in polled]
    assert streamed[-1][0] == "end"
    assert json.loads(streamed[-1][2])["status"] == "succeeded"

    kinds = [event["type"] for event in all_events(client, job["id"])]
    assert "teacher_check" in kinds
    assert "checkpoint_saved" in kinds
    assert kinds.count("artifact_uploaded") >= 2

    model_dir = tmp_path / "merged"
    files = download_artifact(client, job["id"], model_dir)
    assert "config.json" in {entry["path"] for entry in files}
    assert_loads_and_generates(model_dir)


def assert_loads_and_generates(model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.dtype == torch.bfloat16
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Take off to 100 meters."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert output.shape[1] > prompt["input_ids"].shape[1]


def test_invalid_requests_get_422(processes: Processes, tenant: TenantKey) -> None:
    api = processes.api()
    client = client_for(api, tenant)
    dataset = upload_dataset(client, "drone_tools_head.jsonl", Path(DRONE_TRACES).read_bytes())

    bad_config = client.post(
        "/jobs",
        json={"dataset_id": dataset["id"], "model": TINY_MODEL_NAME, "config": {"lora_rank": 0}},
    )
    assert bad_config.status_code == 422, bad_config.text
    assert "lora_rank" in bad_config.text

    unknown_option = client.post(
        "/jobs",
        json={"dataset_id": dataset["id"], "model": TINY_MODEL_NAME, "config": {"lora_rnak": 4}},
    )
    assert unknown_option.status_code == 422, unknown_option.text
    assert "lora_rnak" in unknown_option.text

    unknown_model = client.post(
        "/jobs", json={"dataset_id": dataset["id"], "model": "no-such-model", "config": {}}
    )
    assert unknown_model.status_code == 422, unknown_model.text
    assert "no-such-model" in unknown_model.text

    lines = [json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "{not json"]
    bad_dataset = client.post(
        "/datasets",
        files={"file": ("bad.jsonl", ("\n".join(lines) + "\n").encode(), "application/jsonl")},
    )
    assert bad_dataset.status_code == 422, bad_dataset.text
    body: dict[str, Any] = bad_dataset.json()
    problems = " ".join(body["error"]["problems"])
    assert "line 1" in problems
    assert "line 2" in problems

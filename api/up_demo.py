"""The demo job of `sdft up --demo`, driven through the public HTTP API like any client.

It imports SmolLM2-135M-Instruct into the models folder, uploads the example traces and
submits a short SDFT job sized for a CPU. It prints each step's loss and KL as the worker
reports them, then lists the merged model's files with their download links.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx
import typer

logger = logging.getLogger(__name__)

DEMO_MODEL = "SmolLM2-135M-Instruct"
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
# Metric names of the divergence the job optimizes, one per loss option.
DIVERGENCE_METRICS = ("kl/reverse", "kl/forward", "jsd")
POLL_S = 2.0
# The 8-step demo took 25 minutes on 2 CPU cores shared with other jobs; this leaves room for
# a slower machine.
DEMO_TIMEOUT_S = 3600.0


def demo_config(steps: int) -> dict[str, Any]:
    """Return job options small enough for a CPU: a rank-8 adapter on SmolLM2's attention and
    MLP projections, 32-token rollouts, and ten times the reference run's learning rate."""
    return {
        "max_steps": steps,
        "warmup_steps": 0,
        "learning_rate": 1e-4,
        "lora_rank": 8,
        "lora_alpha": 16,
        "lora_target_modules": [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        "max_seq_length": 8192,
        "max_teacher_prompt_tokens": 6144,
        "max_rollout_tokens": 32,
        "gradient_checkpointing": False,
        "checkpoint_every": max(1, steps // 2),
    }


def run_demo(api_url: str, key: str, *, steps: int, dataset: Path) -> int:
    """Run the demo job end to end; return 0 when it succeeded, 1 otherwise."""
    ensure_demo_model()
    with httpx.Client(
        base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as client:
        try:
            dataset_id = upload_dataset(client, dataset)
            job = submit_job(client, dataset_id, steps)
            typer.echo(f"Job {job['id']} queued: {steps} steps of {DEMO_MODEL} on {dataset.name}.")
            job = follow_job(client, job["id"])
        except (RuntimeError, TimeoutError, httpx.HTTPError) as err:
            typer.echo(f"error: the demo failed: {err}", err=True)
            return 1
        if job["status"] != "succeeded":
            typer.echo(f"Job {job['id']} ended {job['status']}: {job.get('error') or 'no error'}")
            print_events(client, job["id"])
            return 1
        print_artifacts(client, job["id"])
    return 0


def ensure_demo_model() -> Path:
    """Import SmolLM2-135M-Instruct into SDFT_MODELS_DIR unless a previous run did."""
    from api.settings import get_settings

    target = Path(get_settings().models_dir) / DEMO_MODEL
    if (target / "config.json").is_file():
        return target
    typer.echo(f"Importing {DEMO_MODEL} into {target} (once)…")
    from sdft.models.smollm2 import import_smollm2

    partial = target.with_name(target.name + ".partial")
    import_smollm2(partial)
    # Only a complete folder gets the final name, so an interrupted import is redone.
    partial.rename(target)
    return target


def upload_dataset(client: httpx.Client, dataset: Path) -> str:
    if not dataset.is_file():
        raise typer.BadParameter(f"dataset {dataset} not found; pass --demo-dataset PATH")
    with dataset.open("rb") as handle:
        response = client.post(
            "/datasets", files={"file": (dataset.name, handle, "application/jsonl")}
        )
    body = _checked(response, "upload the dataset")
    typer.echo(f"Uploaded {dataset.name}: {body['records']} records as {body['id']}.")
    return str(body["id"])


def submit_job(client: httpx.Client, dataset_id: str, steps: int) -> dict[str, Any]:
    payload = {"dataset_id": dataset_id, "model": DEMO_MODEL, "config": demo_config(steps)}
    return _checked(client.post("/jobs", json=payload), "submit the job")


def follow_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Print new metric rows and status changes until the job ends; return the final job."""
    last_step = -1
    last_status = ""
    deadline = time.monotonic() + DEMO_TIMEOUT_S
    while time.monotonic() < deadline:
        job = _checked(client.get(f"/jobs/{job_id}"), "read the job")
        # Metrics first: the worker writes them in batches, so the last steps of a phase can
        # arrive in the same poll as the next phase's status.
        rows = _checked(
            client.get(f"/jobs/{job_id}/metrics", params={"after_step": last_step}),
            "read the metrics",
        )["data"]
        for row in rows:
            last_step = max(last_step, int(row["step"]))
            typer.echo("  " + format_metrics(row["step"], job["total_steps"], row["metrics"]))
        if job["status"] != last_status:
            last_status = job["status"]
            typer.echo(f"  status: {last_status}")
        if job["status"] in TERMINAL_STATUSES:
            return job
        time.sleep(POLL_S)
    raise TimeoutError(
        f"job {job_id} did not finish within {DEMO_TIMEOUT_S:.0f} s; its status and logs stay "
        "available while `sdft up` runs"
    )


def format_metrics(step: int, total_steps: int, metrics: dict[str, Any]) -> str:
    """Format one step as `step 3/8  loss 0.412  kl/reverse 0.398  rollout 32 tokens`."""
    parts = [f"step {step}/{total_steps}"]
    if isinstance(metrics.get("loss"), int | float):
        parts.append(f"loss {metrics['loss']:.4f}")
    for name in DIVERGENCE_METRICS:
        if isinstance(metrics.get(name), int | float):
            parts.append(f"{name} {metrics[name]:.4f}")
            break
    if isinstance(metrics.get("rollout/tokens"), int | float):
        parts.append(f"rollout {int(metrics['rollout/tokens'])} tokens")
    if isinstance(metrics.get("time/step_s"), int | float):
        parts.append(f"{metrics['time/step_s']:.1f} s")
    return "  ".join(parts)


def print_artifacts(client: httpx.Client, job_id: str) -> None:
    files = _checked(client.get(f"/jobs/{job_id}/artifacts"), "list the artifacts")["data"]
    typer.echo(f"Merged model of {job_id} ({len(files)} files), download links:")
    for entry in files:
        typer.echo(f"  {entry['path']}  {entry['size']:,} bytes\n    {entry['url']}")
    typer.echo(
        "The links work while `sdft up` runs on this data folder, until they expire "
        f"(SDFT_PRESIGN_EXPIRY_S); GET /jobs/{job_id}/artifacts lists fresh ones."
    )


def print_events(client: httpx.Client, job_id: str) -> None:
    try:
        events = _checked(client.get(f"/jobs/{job_id}/events"), "read the events")["data"]
    except RuntimeError as err:
        logger.warning("could not read the events of job %s: %s", job_id, err)
        return
    for event in events[-10:]:
        typer.echo(f"  event {event.get('type')}: {event.get('message')}")


def _checked(response: httpx.Response, action: str) -> dict[str, Any]:
    if response.is_success:
        return response.json()
    raise RuntimeError(
        f"failed to {action}: {response.request.method} {response.request.url.path} returned "
        f"{response.status_code}: {response.text[:1000]}"
    )

"""Load benchmark: concurrent clients poll job metrics and list jobs on a real uvicorn process
backed by PostgreSQL, Redis and SeaweedFS, all on loopback, for a bounded time.

    python bench/bench_load.py --clients 200 --seconds 30

The per-key rate limit is raised for the run, since every client shares one API key. The
baseline, measured in the same run, sends the same clients to GET /healthz (no database) for a
third of the time. The script prints the ratio of the two throughputs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.service_stack import Stack, service_stack  # noqa: E402

TRACES = (
    Path(__file__).resolve().parents[1] / "../shared/data/traces/openai_chat/drone_tools_head.jsonl"
)
JOBS = 20
JOBS_WITH_METRICS = 5
METRIC_ROWS = 300


def prepare(stack: Stack) -> list[str]:
    """Create a model folder, a dataset, JOBS jobs and METRIC_ROWS metric rows per job."""
    from sqlalchemy.dialects.postgresql import insert

    from api.db.models import JobMetric
    from api.db.session import session_scope

    model_dir = Path(stack.env["SDFT_MODELS_DIR"]) / "bench-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.Client(base_url=stack.base_url, headers=headers, timeout=60) as client:
        dataset = client.post("/datasets", files={"file": ("d.jsonl", TRACES.read_bytes())})
        dataset.raise_for_status()
        body = {"dataset_id": dataset.json()["id"], "model": "bench-model"}
        job_ids = []
        for _ in range(JOBS):
            response = client.post("/jobs", json=body)
            response.raise_for_status()
            job_ids.append(response.json()["id"])

    with session_scope() as session:
        for job_id in job_ids[:JOBS_WITH_METRICS]:
            rows = [
                {"job_id": job_id, "step": step, "metrics": {"loss": 1 / step, "teacher/kl": 0.2}}
                for step in range(1, METRIC_ROWS + 1)
            ]
            session.execute(insert(JobMetric).values(rows).on_conflict_do_nothing())
    return job_ids


async def client_loop(
    session: aiohttp.ClientSession,
    base_url: str,
    job_ids: list[str],
    deadline: float,
    latencies: list[float],
    errors: Counter[str],
) -> None:
    rng = random.Random()
    turn = 0
    while time.monotonic() < deadline:
        if not job_ids:
            url, params = "/healthz", {}
        elif turn % 2 == 0:
            job_id = rng.choice(job_ids[:JOBS_WITH_METRICS])
            url = f"/jobs/{job_id}/metrics"
            params = {"after_step": rng.randrange(0, METRIC_ROWS), "limit": 50}
        else:
            url, params = "/jobs", {"limit": 20}
        turn += 1
        started = time.perf_counter()
        try:
            async with session.get(base_url + url, params=params) as response:
                await response.read()
                if response.status != 200:
                    errors[f"HTTP {response.status}"] += 1
                    continue
        except (aiohttp.ClientError, TimeoutError) as exc:
            errors[type(exc).__name__] += 1
            continue
        latencies.append(time.perf_counter() - started)


def _api_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the uvicorn process and its worker processes."""
    root = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])


async def run_load(stack: Stack, job_ids: list[str], clients: int, seconds: float) -> dict:
    """Run `clients` concurrent loops for `seconds`; with no job ids they call /healthz."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    cpu_started = time.process_time()
    api_cpu_started = _api_cpu_seconds(stack.api_pid)

    # aiohttp rather than httpx: httpx's pool costs several ms of client CPU per request at
    # 200 connections, which starved the API of CPU on a 2-core machine.
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(
        connector=connector,
        headers={"Authorization": f"Bearer {stack.api_key}"},
        timeout=aiohttp.ClientTimeout(total=30),
    ) as session:
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(
            *(
                client_loop(session, stack.base_url, job_ids, deadline, latencies, errors)
                for _ in range(clients)
            )
        )
        elapsed = time.monotonic() - started

    # CPU seconds per wall second: both processes share the machine's cores.
    client_cpu = (time.process_time() - cpu_started) / elapsed
    api_cpu = (_api_cpu_seconds(stack.api_pid) - api_cpu_started) / elapsed

    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests_ok": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(quantiles[49] * 1000, 1),
        "p90_ms": round(quantiles[89] * 1000, 1),
        "p99_ms": round(quantiles[98] * 1000, 1),
        "client_cpu_cores": round(client_cpu, 2),
        "api_cpu_cores": round(api_cpu, 2),
        "load_average_1m": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes")
    args = parser.parse_args()
    if not 1 <= args.clients <= 1000 or not 0 < args.seconds <= 300:
        parser.error("keep the load bounded: 1-1000 clients for at most 300 s")

    extra = {
        "SDFT_RATE_LIMIT_PER_MINUTE": str(10**9),
        "SDFT_MAX_JOBS_IN_FLIGHT_PER_TENANT": str(JOBS + 1),
    }
    with service_stack(extra_env=extra, api_workers=args.api_workers) as stack:
        job_ids = prepare(stack)
        result = asyncio.run(run_load(stack, job_ids, args.clients, args.seconds))
        baseline = asyncio.run(run_load(stack, [], args.clients, args.seconds / 3))
    result["api_workers"] = args.api_workers
    result["baseline_healthz"] = baseline
    result["ratio_to_healthz"] = round(result["requests_per_s"] / baseline["requests_per_s"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

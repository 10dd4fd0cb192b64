"""Small parts of the worker: retry policy, heartbeat thread, model cache, Celery settings, CLI."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
import sqlalchemy.exc

from api.settings import Settings
from worker.heartbeat import Heartbeat
from worker.model_cache import COMPLETE_MARKER, ensure_cached_model
from worker.retry import call_with_retry, is_transient


def test_retry_recovers_from_transient_errors() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise redis.exceptions.ConnectionError("connection refused")
        return "ok"

    assert call_with_retry("flaky call", flaky, initial_s=0.01, max_backoff_s=0.02) == "ok"
    assert len(calls) == 3


def test_retry_raises_other_errors_at_once() -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        call_with_retry("broken call", broken, initial_s=0.01)
    assert len(calls) == 1


def test_retry_gives_up_after_max_wait() -> None:
    def down() -> None:
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionError("refused"))

    started = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError):
        call_with_retry("down call", down, max_wait_s=0.3, initial_s=0.05, max_backoff_s=0.1)
    assert time.monotonic() - started < 5


def test_transient_error_classes() -> None:
    assert is_transient(ConnectionRefusedError())
    assert is_transient(redis.exceptions.TimeoutError())
    assert not is_transient(KeyError("x"))


def test_heartbeat_survives_errors_and_detects_loss() -> None:
    outcomes: list[object] = [RuntimeError("database down"), True, False]
    beats: list[int] = []

    def beat() -> bool:
        beats.append(1)
        outcome = outcomes.pop(0) if outcomes else False
        if isinstance(outcome, Exception):
            raise outcome
        return bool(outcome)

    heartbeat = Heartbeat(beat, interval_s=0.01).start()
    assert heartbeat.lost.wait(timeout=5)
    heartbeat.stop()

    assert len(beats) == 3
    assert heartbeat.failures == 0


def test_model_cache_downloads_once(tmp_path: Path) -> None:
    downloads: list[Path] = []
    barrier = threading.Barrier(4)

    def download(directory: Path) -> None:
        downloads.append(directory)
        (directory / "config.json").write_text("{}")
        time.sleep(0.2)

    target = tmp_path / "models" / "tiny"
    results: list[Path] = []

    def fetch() -> None:
        barrier.wait()
        results.append(ensure_cached_model("s3://models/tiny", target, download))

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(downloads) == 1
    assert results == [target] * 4
    assert (target / "config.json").is_file()
    assert (target / COMPLETE_MARKER).is_file()
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".download-")] == []


def test_model_cache_rejects_folder_without_config(tmp_path: Path) -> None:
    def download(directory: Path) -> None:
        (directory / "weights.bin").write_bytes(b"0")

    target = tmp_path / "models" / "broken"
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ensure_cached_model("s3://models/broken", target, download)
    assert not target.exists()


def test_s3_model_is_cached_locally(service_settings: Settings, tiny_qwen3_5_dir: Path) -> None:
    from api.storage import Storage
    from worker.models import local_model_dir

    storage = Storage.from_settings(service_settings)
    models_bucket = Storage(storage.client, service_settings.s3_bucket + "-models")
    models_bucket.ensure_bucket()
    models_bucket.upload_dir("org/tiny-qwen3_5/", tiny_qwen3_5_dir)
    uri = f"s3://{models_bucket.bucket}/org/tiny-qwen3_5"

    first = local_model_dir(uri, service_settings, storage)
    mtime = (first / "config.json").stat().st_mtime_ns
    second = local_model_dir(uri, service_settings, storage)

    assert first == second
    assert first.is_relative_to(service_settings.cache_dir.resolve())
    assert (first / "model.safetensors").is_file()
    assert (second / "config.json").stat().st_mtime_ns == mtime


def test_celery_settings_for_long_jobs(service_settings: Settings) -> None:
    from worker.celery_app import TRAIN_TASK, celery_app
    from worker.tasks import train_job

    conf = celery_app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    visibility = conf.broker_transport_options["visibility_timeout"]
    assert visibility > service_settings.job_time_limit_s
    assert train_job.name == TRAIN_TASK
    assert train_job.acks_late is True
    assert conf.task_routes[TRAIN_TASK]["queue"] == "train"


@pytest.mark.parametrize(
    ("pool", "concurrency", "message"),
    [("prefork", 1, "not supported"), ("solo", 2, "one task at a time"), ("threads", 0, ">= 1")],
)
def test_run_worker_rejects_unsafe_pools(pool: str, concurrency: int, message: str) -> None:
    from worker.cli import run_worker

    with pytest.raises(ValueError, match=message):
        run_worker(["train"], concurrency, pool)

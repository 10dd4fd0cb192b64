"""Run one claimed training job: fetch inputs, train with checkpoints in S3, merge, upload.

Phases and statuses: claim (running) -> download dataset, model and the last checkpoint -> train
(`SDFTRun`, resumed from the checkpoint when this is not the first attempt) -> merging ->
uploading -> succeeded. A cancel request ends the job in `cancelled` within one training step or
at the next phase boundary. Any other error ends it in `failed` with the error's type and message.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from api.db.models import EVENT_TYPES
from api.storage import MANIFEST_NAME, checkpoint_prefix, merged_prefix
from worker import joblog
from worker.heartbeat import Heartbeat
from worker.jobstore import (
    AttemptStore,
    ClaimedJob,
    JobCancelledDuringUpload,
    JobLost,
    SessionFactory,
    claim_job,
)
from worker.metrics import MetricsWriter
from worker.retry import call_with_retry

if TYPE_CHECKING:
    from api.settings import Settings
    from api.storage import Storage

logger = logging.getLogger(__name__)

CHECKPOINT_MARKER = "checkpoint.json"
# Checkpoints kept in S3: the newest one, plus the one before it in case the newest turns out
# unreadable when a later attempt downloads it.
CHECKPOINTS_KEPT = 2
MAX_ERROR_CHARS = 2000

_CHECKPOINT_DIR_RE = re.compile(r"^step-(\d+)$")


class JobStopped(Exception):
    """Training stopped early; `reason` is "cancelled", "time_limit" or "lost"."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class RunOutcome:
    job_id: str
    status: str  # the job's final status, or "skipped" when the claim failed, "lost" on takeover


def checkpoints_root(job_id: str) -> str:
    return f"jobs/{job_id}/checkpoints/"


class JobRunner:
    """Claim and run the job `job_id` on this worker.

    A job error ends the job in `failed` instead of raising. `run()` raises only when the claim
    cannot reach the database after retries. It returns the outcome for the task's log.
    """

    def __init__(
        self,
        job_id: str,
        *,
        worker_id: str,
        settings: Settings,
        session_factory: SessionFactory,
        storage: Storage,
        redis_client: Any | None = None,
    ):
        self.job_id = job_id
        self.worker_id = worker_id
        self.settings = settings
        self.session_factory = session_factory
        self.storage = storage
        self.redis = redis_client
        self.store: AttemptStore | None = None
        self.metrics: MetricsWriter | None = None
        self.heartbeat: Heartbeat | None = None
        self._stop: JobStopped | None = None
        self._last_progress_error = 0.0

    def run(self) -> RunOutcome:
        with joblog.job_context(self.job_id):
            job = claim_job(
                self.session_factory,
                self.job_id,
                self.worker_id,
                float(self.settings.heartbeat_stale_after_s),
            )
            if job is None:
                logger.info("job is not claimable (finished, cancelled or held by a live worker)")
                return RunOutcome(self.job_id, "skipped")
            logger.info(
                "claimed job (attempt %d, was %s) on worker %s",
                job.attempt,
                job.previous_status,
                self.worker_id,
            )
            self.store = AttemptStore(self.session_factory, job, self.worker_id)
            self.metrics = MetricsWriter(
                self.store,
                self.redis,
                batch_size=int(self.settings.metrics_batch_size),
                channel=f"sdft:jobs:{self.job_id}:metrics",
            )
            workdir = (
                Path(self.settings.cache_dir) / "jobs" / self.job_id / f"attempt-{job.attempt}"
            )
            heartbeat = Heartbeat(
                self.store.heartbeat,
                float(self.settings.heartbeat_interval_s),
                name=f"heartbeat-{self.job_id}",
            )
            self.heartbeat = heartbeat
            with heartbeat:
                try:
                    status = self._run_claimed(job, workdir)
                except JobLost as lost:
                    logger.warning("stopping: %s", lost)
                    status = "lost"
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
            logger.info("job attempt %d ended: %s", job.attempt, status)
            return RunOutcome(self.job_id, status)

    # -- phases ------------------------------------------------------------------------------

    def _run_claimed(self, job: ClaimedJob, workdir: Path) -> str:
        assert self.store is not None
        try:
            return self._train_merge_upload(job, workdir)
        except JobStopped as stopped:
            return self._finish_stopped(stopped)
        except JobCancelledDuringUpload:
            self._delete_partial_artifact()
            return self.store.transition("cancelled")
        except JobLost:
            raise
        except Exception as error:  # noqa: BLE001 - every failure must end the job readably
            logger.exception("job failed")
            message = self._readable_error(error)
            try:
                self.store.add_event("error", message, {"type": type(error).__name__})
                return self.store.transition("failed", error=message)
            except JobLost:
                raise
            except Exception:  # noqa: BLE001
                # The database is still unreachable after retries: leave the row as it is. The
                # heartbeat stops with this attempt, so the reaper requeues or fails the job.
                logger.exception("could not record the failure; the reaper will handle the job")
                return "failed"

    def _train_merge_upload(self, job: ClaimedJob, workdir: Path) -> str:
        from sdft.config import SDFTConfig
        from sdft.data.records import read_records

        assert self.store is not None and self.metrics is not None
        workdir.mkdir(parents=True, exist_ok=True)
        output_dir = workdir / "output"

        config = SDFTConfig.from_dict(job.config)
        self.store.set_total_steps(config.max_steps)
        dataset_path = self._download_dataset(job, workdir)
        records = read_records(dataset_path)
        logger.info("dataset %s: %d records", job.dataset_id, len(records))
        model_dir = self._model_dir(job.model)
        resume_from = self._prepare_resume(job, output_dir)
        self._check_stop()

        result = self._train(config, model_dir, records, output_dir, resume_from)
        self.metrics.flush()
        if result["stopped"]:
            self._check_stop()
            raise JobStopped("cancelled", "training stopped on request")

        if self.store.transition("merging") == "cancelling":
            raise JobStopped("cancelled", "cancel requested before merging")
        merged_dir = result["run"].save_merged(workdir / "merged")
        self._check_stop()

        if self.store.transition("uploading") == "cancelling":
            raise JobStopped("cancelled", "cancel requested before uploading")
        self._upload_artifact(Path(merged_dir))
        self._delete_checkpoints(keep=0)
        return "succeeded"

    def _train(
        self,
        config: Any,
        model_dir: Path,
        records: Sequence[Any],
        output_dir: Path,
        resume_from: Path | None,
    ) -> dict[str, Any]:
        from sdft.trainer import SDFTRun, TrainCallbacks

        runner = self

        class Callbacks(TrainCallbacks):
            def on_metrics(self, step: int, metrics: dict[str, Any]) -> None:
                runner._on_metrics(step, metrics)

            def on_event(self, kind: str, data: dict[str, Any]) -> None:
                runner._on_event(kind, data)

            def should_stop(self) -> bool:
                return runner._should_stop()

        run = SDFTRun(config, model_dir, records, output_dir, Callbacks())
        result = run.train(resume_from=resume_from)
        return {"run": run, "stopped": bool(result.stopped), "result": result}

    # -- inputs ------------------------------------------------------------------------------

    def _download_dataset(self, job: ClaimedJob, workdir: Path) -> Path:
        from sqlalchemy import text

        with self.session_factory() as session:
            key = session.execute(
                text("SELECT s3_key FROM datasets WHERE id = :id"), {"id": job.dataset_id}
            ).scalar_one_or_none()
        if key is None:
            raise LookupError(f"dataset {job.dataset_id} of job {job.id} not found in the database")
        path = workdir / "records.jsonl"
        call_with_retry(
            f"download dataset {key}", lambda: self.storage.download_file(key, str(path))
        )
        return path

    def _model_dir(self, name: str) -> Path:
        from worker.models import local_model_dir

        return local_model_dir(name, self.settings, self.storage)

    def _prepare_resume(self, job: ClaimedJob, output_dir: Path) -> Path | None:
        """Download the newest complete checkpoint of an earlier attempt and reset the metrics
        after it. Returns the local checkpoint folder, or None to start from step 0."""
        assert self.store is not None
        if job.attempt == 1 and job.last_checkpoint_key is None:
            return None

        found = self._latest_stored_checkpoint(job)
        resume_step = found[0] if found else 0
        deleted = self.store.delete_metrics_after(resume_step)
        message = (
            f"attempt {job.attempt} resumes from the checkpoint of step {resume_step}"
            if found
            else f"attempt {job.attempt} restarts from step 0 (no stored checkpoint)"
        )
        logger.info("%s; deleted %d metric rows of later steps", message, deleted)
        self.store.add_event(
            "restarted",
            message,
            {
                "attempt": job.attempt,
                "resume_step": resume_step,
                "checkpoint_key": found[1] if found else None,
                "previous_status": job.previous_status,
                "deleted_metric_rows": deleted,
            },
        )
        if not found:
            return None

        step, prefix = found
        local = output_dir / "checkpoints" / f"step-{step:06d}"
        local.parent.mkdir(parents=True, exist_ok=True)
        call_with_retry(
            f"download checkpoint {prefix}",
            lambda: self.storage.download_prefix(prefix, str(local)),
        )
        (local / CHECKPOINT_MARKER).unlink(missing_ok=True)
        joblog.set_step(step)
        return local

    def _latest_stored_checkpoint(self, job: ClaimedJob) -> tuple[int, str] | None:
        """Return (step, prefix) of the newest checkpoint in S3 whose upload completed.

        Each checkpoint's marker is written last, so a folder with a marker is complete. The
        listing finds the checkpoint the job row names, or an older complete one when that one
        is gone.
        """
        steps = self._stored_checkpoint_steps()
        complete = [step for step, is_complete in steps.items() if is_complete]
        if job.last_checkpoint_step is not None and job.last_checkpoint_step not in complete:
            logger.warning(
                "the recorded checkpoint of step %s is missing or incomplete in S3; "
                "using the newest complete one instead",
                job.last_checkpoint_step,
            )
        if not complete:
            return None
        step = max(complete)
        return step, checkpoint_prefix(self.job_id, step)

    def _stored_checkpoint_steps(self) -> dict[int, bool]:
        """Map the step of each checkpoint folder in S3 to whether its marker exists."""
        root = checkpoints_root(self.job_id)
        keys = call_with_retry(
            f"list checkpoints under {root}",
            lambda: [info.key for info in self.storage.list_prefix(root)],
        )
        steps: dict[int, bool] = {}
        for key in keys:
            name = key[len(root) :].split("/", 1)[0]
            match = _CHECKPOINT_DIR_RE.match(name)
            if not match:
                continue
            step = int(match.group(1))
            is_marker = key == f"{root}{name}/{CHECKPOINT_MARKER}"
            steps[step] = steps.get(step, False) or is_marker
        return steps

    # -- callbacks from the trainer -----------------------------------------------------------

    def _on_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        assert self.metrics is not None
        joblog.set_step(step)
        self.metrics.add(step, metrics)

    def _on_event(self, kind: str, data: dict[str, Any]) -> None:
        assert self.store is not None and self.metrics is not None
        if kind == "checkpoint_saved":
            self._store_checkpoint(int(data["step"]), Path(data["path"]))
            return
        if kind == "stopped":
            logger.info("trainer stopped early: %s", data)
            return
        if kind not in EVENT_TYPES:
            logger.info("trainer event %s: %s", kind, data)
            return
        event_data = _json_safe(data)
        message = _event_message(kind, event_data)
        if kind == "resumed":
            logger.info("%s", message)
        self.store.add_event(kind, message, event_data)

    def _should_stop(self) -> bool:
        """Checked by the trainer every step: record progress and heartbeat in one update,
        and stop on a cancel request, the time limit or a takeover."""
        assert self.store is not None and self.metrics is not None
        if self._stop is not None:
            return True
        if self.heartbeat is not None and self.heartbeat.lost.is_set():
            self._stop = JobStopped("lost", "the heartbeat found the job taken over")
            return True
        self.metrics.maybe_flush()
        try:
            progress = self.store.record_progress(self.metrics.last_step)
        except JobLost as lost:
            self._stop = JobStopped("lost", str(lost))
            return True
        except Exception as error:  # noqa: BLE001 - a database outage must not stop training
            now = time.monotonic()
            if now - self._last_progress_error > 30:
                logger.warning(
                    "could not record progress (%s: %s); training continues",
                    type(error).__name__,
                    error,
                )
                self._last_progress_error = now
            return False
        if progress.cancel_requested:
            self._stop = JobStopped("cancelled", "cancel requested")
        elif progress.over_time_limit:
            limit = self.store.job.time_limit_s
            self._stop = JobStopped(
                "time_limit",
                f"time limit of {limit} s exceeded at step {self.metrics.last_step or 0}; "
                "raise time_limit_s or lower max_steps",
            )
        return self._stop is not None

    def _check_stop(self) -> None:
        """Raise JobStopped at a phase boundary when the job must not go on."""
        if self._should_stop():
            assert self._stop is not None
            raise self._stop

    # -- checkpoints and artifact ---------------------------------------------------------------

    def _store_checkpoint(self, step: int, local_dir: Path) -> None:
        """Upload a checkpoint the trainer just saved, then record it in the job row.

        The metric rows up to `step` are flushed first, so a resumed attempt never lacks the
        rows of the steps its checkpoint covers.
        """
        assert self.store is not None and self.metrics is not None
        self.metrics.flush()
        prefix = checkpoint_prefix(self.job_id, step)
        files = call_with_retry(
            f"upload checkpoint {prefix}", lambda: self.storage.upload_dir(prefix, str(local_dir))
        )
        marker = {"step": step, "attempt": self.store.job.attempt, "files": _file_list(files)}
        call_with_retry(
            f"write checkpoint marker {prefix}",
            lambda: self.storage.put_json(prefix + CHECKPOINT_MARKER, marker),
        )
        self.store.record_checkpoint(step, prefix)
        logger.info("checkpoint of step %d uploaded to %s (%d files)", step, prefix, len(files))
        self._delete_checkpoints(keep=CHECKPOINTS_KEPT)
        for older in local_dir.parent.glob("step-*"):
            if older != local_dir and older.is_dir():
                shutil.rmtree(older, ignore_errors=True)

    def _delete_checkpoints(self, *, keep: int) -> None:
        """Delete stored checkpoints but the newest `keep`. Failures are logged, not raised:
        a leftover checkpoint costs space, not correctness."""
        try:
            steps = sorted(self._stored_checkpoint_steps(), reverse=True)
            for step in steps[keep:]:
                prefix = checkpoint_prefix(self.job_id, step)
                call_with_retry(
                    f"delete checkpoint {prefix}", lambda p=prefix: self.storage.delete_prefix(p)
                )
        except Exception as error:  # noqa: BLE001
            logger.warning("could not delete old checkpoints: %s: %s", type(error).__name__, error)

    def _upload_artifact(self, merged_dir: Path) -> None:
        """Upload the merged model, then `manifest.json`, then the artifact rows.

        The manifest is written last and the rows are stored with the `succeeded` status in one
        transaction, so a reader that finds either one finds a complete artifact.
        """
        assert self.store is not None
        prefix = merged_prefix(self.job_id)
        call_with_retry(f"clear {prefix}", lambda: self.storage.delete_prefix(prefix))
        uploaded: list[tuple[str, int, str, str]] = []
        paths = sorted(p for p in merged_dir.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
        if not paths:
            raise FileNotFoundError(f"save_merged wrote no files into {merged_dir}")
        for path in paths:
            self._check_stop()
            relpath = path.relative_to(merged_dir).as_posix()
            key = prefix + relpath
            size, sha256 = call_with_retry(
                f"upload {key}", lambda p=path, k=key: _upload_file(self.storage, k, p)
            )
            uploaded.append((relpath, size, sha256, key))
            self.store.add_event(
                "artifact_uploaded",
                f"uploaded {relpath} ({size} bytes)",
                {"path": relpath, "size": size, "sha256": sha256},
            )
        self._check_stop()

        files = [(path, size, sha256) for path, size, sha256, _ in uploaded]
        call_with_retry(
            f"write {prefix}{MANIFEST_NAME}",
            lambda: self.storage.write_manifest(self.job_id, files),
        )
        self.store.replace_artifacts(uploaded)
        logger.info("artifact complete: %d files under %s", len(uploaded), prefix)

    def _delete_partial_artifact(self) -> None:
        try:
            call_with_retry(
                "delete partial artifact",
                lambda: self.storage.delete_prefix(merged_prefix(self.job_id)),
            )
        except Exception as error:  # noqa: BLE001
            logger.warning("could not delete the partial artifact: %s", error)

    # -- endings -------------------------------------------------------------------------------

    def _finish_stopped(self, stopped: JobStopped) -> str:
        assert self.store is not None
        if stopped.reason == "lost":
            raise JobLost(str(stopped))
        if stopped.reason == "cancelled":
            logger.info("job cancelled: %s", stopped)
            self._delete_partial_artifact()
            return self.store.transition("cancelled")
        logger.warning("job failed: %s", stopped)
        self.store.add_event("error", str(stopped), {"reason": stopped.reason})
        return self.store.transition("failed", error=str(stopped))

    def _readable_error(self, error: BaseException) -> str:
        message = f"{type(error).__name__}: {error}"
        for secret in self.settings.secret_values():
            message = message.replace(secret, "***")
        if len(message) > MAX_ERROR_CHARS:
            message = message[: MAX_ERROR_CHARS - 3] + "..."
        return message


def _upload_file(storage: Storage, key: str, path: Path) -> tuple[int, str]:
    with open(path, "rb") as handle:
        return storage.upload_fileobj(key, handle)


def _file_list(files: Any) -> list[dict[str, Any]]:
    return [{"path": str(p), "size": int(s), "sha256": str(h)} for p, s, h in files]


def _json_safe(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(data, default=str))


def _event_message(kind: str, data: dict[str, Any]) -> str:
    if kind == "example_skipped":
        return f"skipped an example: {data.get('reason', 'no reason given')}"
    if kind == "resumed":
        return f"training resumed at step {data.get('step', '?')}"
    if kind == "teacher_check":
        return "teacher check on the first records"
    return kind.replace("_", " ")

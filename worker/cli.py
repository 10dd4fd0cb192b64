"""Start a Celery worker process for the training queue (the `sdft worker` command).

Usage outside the `sdft` command: `python -m worker.cli --queues train --beat`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

logger = logging.getLogger(__name__)

# Training runs in the worker's main process or its threads, never in forked children, because a
# child forked after CUDA was initialised in the parent cannot use the GPU. A training job uses
# one GPU for its whole run anyway.
SUPPORTED_POOLS = ("solo", "threads")


def run_worker(
    queues: Sequence[str] = ("train",),
    concurrency: int = 1,
    pool: str = "solo",
    *,
    beat: bool = False,
    hostname: str | None = None,
    loglevel: str = "INFO",
) -> None:
    """Run a Celery worker until it is stopped; with `beat`, also run the reaper in a thread."""
    if pool not in SUPPORTED_POOLS:
        raise ValueError(
            f"pool {pool!r} is not supported; use one of {', '.join(SUPPORTED_POOLS)} "
            "(training must not run in a forked child process)"
        )
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if pool == "solo" and concurrency != 1:
        raise ValueError("the solo pool runs one task at a time; use --concurrency 1")
    queue_names = [q.strip() for q in queues if q.strip()]
    if not queue_names:
        raise ValueError("no queue given; pass at least one queue name, such as train")

    from worker.celery_app import celery_app

    reaper = None
    if beat:
        from api.settings import get_settings
        from worker.reaper import ReaperThread

        reaper = ReaperThread(float(get_settings().reaper_interval_s)).start()
    node = hostname or "sdft"
    argv = [
        "worker",
        f"--queues={','.join(queue_names)}",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--hostname={node}@%h",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
    try:
        celery_app.worker_main(argv)
    finally:
        if reaper is not None:
            reaper.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.cli", description=__doc__)
    parser.add_argument("--queues", default="train", help="comma-separated queue names")
    parser.add_argument("--concurrency", type=int, default=1, help="tasks run at once")
    parser.add_argument("--pool", default="solo", choices=SUPPORTED_POOLS)
    parser.add_argument("--beat", action="store_true", help="also run the reaper in a thread")
    parser.add_argument("--hostname", default=None, help="Celery node name (before the @)")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    run_worker(
        args.queues.split(","),
        args.concurrency,
        args.pool,
        beat=args.beat,
        hostname=args.hostname,
        loglevel=args.loglevel,
    )


if __name__ == "__main__":
    main()

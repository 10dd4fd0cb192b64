"""Per-step training metrics: flat dicts with slash-separated names, stored as JSON lines.

One dict per optimizer step, passed to `TrainCallbacks.on_metrics` and appended to
`metrics.jsonl`. Names use the same spelling everywhere they are stored or shown.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sdft.config import LossName

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"

# Names whose values depend on wall-clock time, so two identical runs differ only here.
TIMING_METRICS: frozenset[str] = frozenset(
    {"time/step_s", "time/rollout_s", "throughput/tokens_per_s"}
)

_DIVERGENCE_METRICS: dict[str, str] = {
    "reverse_kl": "kl/reverse",
    "forward_kl": "kl/forward",
    "jsd": "jsd",
}


def divergence_metric(loss: LossName) -> str:
    """Return the metric name of the divergence that `loss` optimizes."""
    return _DIVERGENCE_METRICS[loss]


class MetricsLog:
    """Append-only `metrics.jsonl` writer. Each line is one step's flat dict."""

    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / METRICS_FILE

    def append(self, metrics: dict[str, Any]) -> None:
        # Non-finite floats would make the line invalid JSON, so they are written as null.
        clean = {key: _json_number(value) for key, value in metrics.items()}
        line = json.dumps(clean, sort_keys=True, allow_nan=False)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()

    def truncate_after(self, step: int) -> int:
        """Drop the lines of steps after `step`; return how many were dropped.

        A run that resumes from a checkpoint redoes the steps after it, so lines that an
        interrupted run wrote for those steps must go.
        """
        if not self.path.exists():
            return 0
        kept: list[str] = []
        dropped = 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                line_step = json.loads(line).get("step")
            except json.JSONDecodeError:
                # A line cut by a crash mid-write; it belongs to the last, unfinished step.
                dropped += 1
                continue
            if isinstance(line_step, int) and line_step > step:
                dropped += 1
            else:
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)
        if dropped:
            logger.info("dropped %d metrics lines after step %d from %s", dropped, step, self.path)
        return dropped

    def read(self) -> list[dict[str, Any]]:
        return list(read_metrics(self.path))


def read_metrics(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the step dicts of a `metrics.jsonl` file."""
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

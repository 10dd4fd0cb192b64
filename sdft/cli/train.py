"""`sdft train` and `sdft teacher-check`: run SDFT, or inspect the teacher, from the shell."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import typer
from tqdm import tqdm

from sdft.config import ConfigError, SDFTConfig, parse_overrides
from sdft.data.records import Record
from sdft.metrics import divergence_metric

logger = logging.getLogger(__name__)

_EXIT_USAGE = 2
_EXIT_FAILED = 1


# Options shared by both commands.
ModelOption = Annotated[Path, typer.Option("--model", help="Local folder of the base model.")]
DatasetOption = Annotated[Path, typer.Option("--dataset", help="JSONL file of training records.")]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="YAML file of SDFTConfig options.")
]
OverridesOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override one option, as key=value (YAML value); repeatable."),
]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root `sdft` command."""
    app.command("train")(train)
    app.command("teacher-check")(teacher_check)


def train(
    model: ModelOption,
    dataset: DatasetOption,
    output: Annotated[
        Path,
        typer.Option("--output", help="Run folder for metrics.jsonl, checkpoints/ and merged/."),
    ],
    config_file: ConfigOption = None,
    overrides: OverridesOption = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            help="Checkpoint folder to continue from, or 'latest' for the newest one in --output.",
        ),
    ] = None,
    teacher_check_records: Annotated[
        int,
        typer.Option(
            "--teacher-check-records", help="Records scored by the teacher check before step 1."
        ),
    ] = 2,
    merge: Annotated[
        bool,
        typer.Option(
            "--merge/--no-merge", help="Save the merged bf16 model to OUTPUT/merged at the end."
        ),
    ] = True,
) -> None:
    """Fine-tune MODEL on DATASET with SDFT and save the merged model."""
    from sdft.checkpoint import CheckpointError, latest_checkpoint
    from sdft.models.loading import ModelLoadError
    from sdft.trainer import SDFTRun, TrainingError

    config = _load_config(config_file, overrides)
    records = _load_records(dataset)
    resume_from = _resume_path(resume, output)

    callbacks = _ProgressCallbacks(config, initial_step=_checkpoint_step(resume_from))
    run = SDFTRun(
        config,
        model,
        records,
        output,
        callbacks,
        teacher_check_records=teacher_check_records,
    )
    previous_handler = signal.signal(signal.SIGINT, callbacks.request_stop)
    try:
        result = run.train(resume_from=resume_from)
    except (ModelLoadError, CheckpointError) as exc:
        _fail(str(exc), _EXIT_USAGE)
    except TrainingError as exc:
        _fail(str(exc), _EXIT_FAILED)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        callbacks.close()

    if result.stopped:
        latest = latest_checkpoint(output)
        hint = f"; continue with --resume {latest}" if latest else ""
        typer.echo(f"stopped after step {result.steps_done}{hint}", err=True)
        raise typer.Exit(130)

    typer.echo(
        f"trained {result.steps_done} steps: {result.rollouts} rollouts "
        f"({result.truncated_rollouts} truncated), skipped {sum(result.skipped.values())} "
        f"records {result.skipped or ''}".rstrip()
    )
    typer.echo(f"metrics: {output / 'metrics.jsonl'}")
    if result.last_checkpoint is not None:
        typer.echo(f"checkpoint: {result.last_checkpoint}")
    if merge:
        merged = run.save_merged(output / "merged")
        typer.echo(f"merged model: {merged}")


def teacher_check(
    model: ModelOption,
    dataset: DatasetOption,
    layout: Annotated[
        str,
        typer.Option("--layout", help="Teacher layout: reference_block, demonstration or all."),
    ] = "all",
    num_records: Annotated[int, typer.Option("--records", help="Number of records to score.")] = 3,
    max_new_tokens: Annotated[
        int,
        typer.Option(
            "--max-new-tokens", help="Length limit of each greedy teacher output, in tokens."
        ),
    ] = 64,
    config_file: ConfigOption = None,
    overrides: OverridesOption = None,
) -> None:
    """Show whether the teacher, given the expert reference, scores and writes like the expert.

    Per layout: mean log-prob per token of the expert turn with the reference (teacher
    prompt) and without it (student prompt), and the teacher's greedy outputs.
    """
    from sdft.models.loading import ModelLoadError, load_model_and_tokenizer, resolve_device_dtype
    from sdft.teacher_check import LAYOUTS, run_teacher_check

    if layout == "all":
        layouts = list(LAYOUTS)
    elif layout in LAYOUTS:
        layouts = [layout]
    else:
        _fail(
            f"--layout {layout!r} is invalid; use one of {', '.join(LAYOUTS)} or all", _EXIT_USAGE
        )
    if num_records <= 0 or max_new_tokens <= 0:
        _fail("--records and --max-new-tokens must be positive integers", _EXIT_USAGE)

    config = _load_config(config_file, overrides)
    records = _load_records(dataset)
    try:
        device, dtype = resolve_device_dtype(config)
        base_model, tokenizer = load_model_and_tokenizer(model, device=device, dtype=dtype)
    except (ModelLoadError, ValueError) as exc:
        _fail(str(exc), _EXIT_USAGE)

    report = run_teacher_check(
        base_model,
        tokenizer,
        config,
        records,
        layouts=layouts,
        num_records=num_records,
        max_new_tokens=max_new_tokens,
    )
    if not report.rows:
        _fail(
            "no record fits max_teacher_prompt_tokens and max_seq_length; raise them with --set",
            _EXIT_FAILED,
        )
    typer.echo(report.format_table())


class _ProgressCallbacks:
    """Show a tqdm bar with loss and divergence, and stop cleanly on the first Ctrl-C."""

    def __init__(self, config: SDFTConfig, initial_step: int) -> None:
        self.divergence_name = divergence_metric(config.loss)
        self.total = config.max_steps
        self.initial_step = initial_step
        self._bar: tqdm | None = None
        self.stop_requested = False

    @property
    def bar(self) -> tqdm:
        # Created on first use, so that model loading errors are not printed under a bar.
        if self._bar is None:
            self._bar = tqdm(
                total=self.total, initial=self.initial_step, unit="step", dynamic_ncols=True
            )
        return self._bar

    def on_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        postfix = {"loss": f"{metrics['loss']:.4g}"}
        if self.divergence_name in metrics:
            postfix[self.divergence_name] = f"{metrics[self.divergence_name]:.4g}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(step - self.bar.n)

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "checkpoint_saved":
            self.bar.write(f"checkpoint of step {data['step']}: {data['path']}")
        elif kind == "resumed":
            self.bar.write(f"resumed from step {data['step']}: {data['path']}")

    def should_stop(self) -> bool:
        return self.stop_requested

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested:
            # A second Ctrl-C stops at once, without waiting for the step to finish.
            raise KeyboardInterrupt
        self.stop_requested = True
        self.bar.write("stopping after the current step (Ctrl-C again to abort at once)")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _load_config(config_file: Path | None, overrides: list[str] | None) -> SDFTConfig:
    overrides = overrides or []
    try:
        if config_file is not None:
            return SDFTConfig.from_yaml(config_file, overrides)
        return SDFTConfig.from_dict(parse_overrides(overrides))
    except ConfigError as exc:
        typer.echo("invalid config:", err=True)
        for problem in exc.problems:
            typer.echo(f"  {problem}", err=True)
        raise typer.Exit(_EXIT_USAGE) from exc
    except OSError as exc:
        _fail(f"cannot read config file {config_file}: {exc.strerror}", _EXIT_USAGE)


def _load_records(dataset: Path) -> list[Record]:
    """Read a dataset in any supported trace format, as `sdft dataset convert` would."""
    from sdft.ingest import IngestError, convert

    try:
        conversion = convert(dataset)
        records = list(conversion)
    except IngestError as exc:
        _fail(f"{dataset}: {exc}", _EXIT_USAGE)
    except OSError as exc:
        _fail(f"cannot read dataset {dataset}: {exc.strerror}", _EXIT_USAGE)
    if not records:
        dropped = conversion.report.to_dict().get("dropped") or {}
        detail = f" (dropped: {dropped})" if dropped else ""
        _fail(f"{dataset} contains no usable records{detail}", _EXIT_USAGE)
    logger.info(
        "read %d records from %s (format %s)", len(records), dataset, conversion.report.format
    )
    return records


def _resume_path(resume: str | None, output: Path) -> Path | None:
    from sdft.checkpoint import latest_checkpoint

    if resume is None:
        return None
    if resume == "latest":
        latest = latest_checkpoint(output)
        if latest is None:
            _fail(f"--resume latest: {output} has no checkpoint yet", _EXIT_USAGE)
        return latest
    path = Path(resume)
    if not path.is_dir():
        _fail(f"--resume {resume}: checkpoint folder not found", _EXIT_USAGE)
    return path


def _checkpoint_step(path: Path | None) -> int:
    if path is None:
        return 0
    from sdft.checkpoint import CheckpointError, read_checkpoint

    try:
        return read_checkpoint(path).state.step
    except CheckpointError as exc:
        _fail(str(exc), _EXIT_USAGE)


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    sys.stderr.flush()
    raise typer.Exit(code)

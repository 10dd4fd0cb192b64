"""`sdft dataset convert` and `sdft dataset inspect`: trace files to training records."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from sdft.config import SDFTConfig

DEFAULT_MAX_TEACHER_PROMPT_TOKENS = SDFTConfig().max_teacher_prompt_tokens
# Inputs below this size get no progress bar: without --model they take seconds to convert.
PROGRESS_MIN_BYTES = 16 * 1024 * 1024

dataset_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Convert agent traces into SDFT records, and inspect datasets.",
)

FromOption = Annotated[
    str | None,
    typer.Option(
        "--from",
        help="Input format: claude_code, openai, messages_parts, sharegpt (also hermes), "
        "swe_agent or records. Detected from the content when omitted.",
    ),
]
ModelOption = Annotated[
    Path | None,
    typer.Option(
        "--model",
        help="Local model folder. Its tokenizer measures prompts, turns whose teacher prompt "
        "is too long are dropped, and turns with images are dropped unless the model has "
        "a vision encoder.",
        file_okay=False,
        exists=True,
    ),
]
MaxTeacherOption = Annotated[
    int,
    typer.Option(
        "--max-teacher-prompt-tokens",
        min=1,
        help="Drop turns whose teacher prompt is longer than this many tokens (with --model).",
    ),
]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root `sdft` command."""
    app.add_typer(dataset_app, name="dataset")


@dataset_app.command("convert")
def convert_command(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Trace files: JSONL, one JSON document, or either compressed with gzip.",
            exists=True,
            dir_okay=False,
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Output JSONL file of prompt/completion records.")
    ],
    from_format: FromOption = None,
    model: ModelOption = None,
    max_teacher_prompt_tokens: MaxTeacherOption = DEFAULT_MAX_TEACHER_PROMPT_TOKENS,
    lenient: Annotated[
        bool,
        typer.Option(
            "--lenient", help="Skip invalid lines and list them in the report instead of failing."
        ),
    ] = False,
    report_path: Annotated[
        Path | None, typer.Option("--report", help="Also write the report as JSON to this file.")
    ] = None,
) -> None:
    """Convert trace files into one record per assistant turn and print what was kept.

    Exits with status 2, writing nothing, when an input is invalid (unless --lenient).
    """
    from sdft.ingest import DigestSet, IngestError, IngestErrors, convert

    _check_format(from_format)
    length_function, has_vision = _load_model_info(model)
    seen = DigestSet()
    reports: list[dict[str, Any]] = []
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out, _progress(inputs) as bar:
            for path in inputs:
                conversion = convert(
                    path,
                    format=from_format,
                    strict=not lenient,
                    teacher_prompt_length=length_function,
                    max_teacher_prompt_tokens=max_teacher_prompt_tokens if model else None,
                    has_vision=has_vision,
                    dedup_keys=seen,
                )
                reported = 0
                try:
                    for record in conversion:
                        out.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
                        reported = _advance(bar, conversion.bytes_read, reported)
                except IngestErrors as exc:
                    _fail(path, exc.errors, exc.total)
                except IngestError as exc:
                    _fail(path, [exc], 1)
                _advance(bar, conversion.bytes_read, reported)
                report = conversion.report.to_dict()
                reports.append({"input": str(path), **report})
                _print_report(path, report)
        os.replace(temp_name, output)
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)

    total = sum(report["records"] for report in reports)
    typer.echo(f"wrote {total} records to {output}")
    if report_path is not None:
        report_path.write_text(json.dumps(reports, indent=2, ensure_ascii=False) + "\n")


@dataset_app.command("inspect")
def inspect_command(
    path: Annotated[
        Path, typer.Argument(help="A trace or record file in any supported format.", exists=True)
    ],
    from_format: FromOption = None,
    model: ModelOption = None,
    max_teacher_prompt_tokens: MaxTeacherOption = DEFAULT_MAX_TEACHER_PROMPT_TOKENS,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Print counts, drops by reason, turns per conversation, tools used, and token lengths.

    Token-length percentiles (p50/p90/p99/max of the student prompt, teacher prompt and
    expert turn) need --model. Invalid lines are listed, not fatal.
    """
    from sdft.ingest import IngestError, convert

    _check_format(from_format)
    length_function, has_vision = _load_model_info(model)
    conversion = convert(
        path,
        format=from_format,
        strict=False,
        teacher_prompt_length=length_function,
        max_teacher_prompt_tokens=max_teacher_prompt_tokens if model else None,
        has_vision=has_vision,
    )
    try:
        with _progress([path]) as bar:
            reported = 0
            for _ in conversion:
                reported = _advance(bar, conversion.bytes_read, reported)
    except IngestError as exc:
        _fail(path, [exc], 1)
    report = conversion.report.to_dict()
    if as_json:
        typer.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        _print_report(path, report)


def _load_model_info(model: Path | None) -> tuple[Any, bool]:
    """Return the prompt-length function of a local model folder and whether it takes images.

    Exits with status 2 when the folder has no config.json, or no tokenizer with a chat
    template.
    """
    if model is None:
        return None, False
    from transformers import AutoTokenizer

    from sdft.ingest import make_length_function

    config_path = model / "config.json"
    if not config_path.is_file():
        typer.echo(f"error: {model} has no config.json; pass a model folder", err=True)
        raise typer.Exit(2)
    config = json.loads(config_path.read_text(encoding="utf-8"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model), local_files_only=True)
        length_function = make_length_function(tokenizer)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: cannot measure prompts with the tokenizer of {model}: {exc}", err=True)
        raise typer.Exit(2) from exc
    return length_function, "vision_config" in config


def _check_format(name: str | None) -> None:
    from sdft.ingest import resolve_format

    try:
        resolve_format(name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--from") from exc


def _progress(inputs: list[Path]) -> Any:
    from tqdm import tqdm

    total = sum(path.stat().st_size for path in inputs)
    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc="reading",
        disable=total < PROGRESS_MIN_BYTES,
        leave=False,
    )


def _advance(bar: Any, bytes_read: int, reported: int) -> int:
    if bytes_read > reported:
        bar.update(bytes_read - reported)
    return max(bytes_read, reported)


def _fail(path: Path, errors: list[Any], total: int) -> None:
    """Print the errors of one input and exit with status 2."""
    if total == 1:
        typer.echo(f"error: {path}: {errors[0]}; nothing was written", err=True)
    else:
        typer.echo(f"error: {path}: {total} invalid input lines; nothing was written", err=True)
        for error in errors:
            typer.echo(f"  {error}", err=True)
        if total > len(errors):
            typer.echo(f"  ... and {total - len(errors)} more", err=True)
    if any(error.line is not None for error in errors):
        typer.echo("use --lenient to skip invalid lines and keep the rest", err=True)
    raise typer.Exit(2)


def _print_report(path: Path, report: dict[str, Any]) -> None:
    echo = typer.echo
    echo(f"{path}: format {report['format']}")

    echo(
        f"  records {report['records']} from {report['turns']} assistant turns "
        f"in {report['conversations']} conversations"
    )
    for reason, count in report["dropped"].items():
        echo(f"  dropped {count}: {reason}")
    if report["reasoning_removed"]:
        echo(f"  reasoning blocks removed: {report['reasoning_removed']}")
    for kind, count in report["skipped_events"].items():
        echo(f"  skipped {count} non-dialogue lines: {kind}")

    stats = report["turns_per_conversation"]
    echo(
        f"  turns per conversation: min {stats['min']}, median {stats['median']}, "
        f"mean {stats['mean']}, max {stats['max']}"
    )
    tools = list(report["tools_used"].items())
    if tools:
        listed = ", ".join(f"{name} {count}" for name, count in tools[:10])
        more = f" (+{len(tools) - 10} more)" if len(tools) > 10 else ""
        echo(f"  tools used: {listed}{more}")
    for kind, values in report.get("token_lengths", {}).items():
        echo(
            f"  {kind} tokens: p50 {values['p50']}, p90 {values['p90']}, "
            f"p99 {values['p99']}, max {values['max']}"
        )

    if report["error_count"]:
        echo(f"  invalid lines skipped: {report['error_count']}")
        for error in report["errors"]:
            where = f"line {error['line']}" if error["line"] is not None else "input"
            if "item" in error:
                where += f", item {error['item']}"
            echo(f"    {where}: {error['reason']}")

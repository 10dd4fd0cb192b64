"""`sdft models` commands."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from sdft.cli import models


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """Root command of the test app."""

    models.register(app)
    return app


def test_cli_tiny_prints_folder(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    result = CliRunner().invoke(_app(), ["models", "tiny", str(out), "--arch", "llama"])
    assert result.exit_code == 0, result.output
    # Progress bars go to stderr; stdout carries only the folder.
    assert result.stdout.strip() == str(out)
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"


def test_cli_tiny_vision(tmp_path: Path) -> None:
    out = tmp_path / "tiny-vl"
    result = CliRunner().invoke(_app(), ["models", "tiny", str(out), "--vision"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen3_5ForConditionalGeneration"]


def test_cli_tiny_rejects_vision_llama(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        _app(), ["models", "tiny", str(tmp_path), "--arch", "llama", "--vision"]
    )
    assert result.exit_code == 2
    assert "vision=True needs arch='qwen3_5'" in result.output


def test_cli_verify_fails_on_float32(tiny_llama_dir: Path) -> None:
    result = CliRunner().invoke(_app(), ["models", "verify", str(tiny_llama_dir)])
    assert result.exit_code == 1
    assert json.loads(result.output)["ok"] is False

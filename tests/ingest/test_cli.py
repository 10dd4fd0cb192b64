"""`sdft dataset convert` and `sdft dataset inspect`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from sdft.cli import dataset
from sdft.data.records import read_records

TRACES = Path("../shared/data/traces")
DATA = Path(__file__).parent.parent / "data" / "traces"


def _app() -> typer.Typer:
    app = typer.Typer()
    dataset.register(app)
    return app


def _run(*args: str):
    return CliRunner().invoke(_app(), ["dataset", *args])


def test_convert_writes_records(tmp_path: Path) -> None:
    output = tmp_path / "out" / "records.jsonl"

    result = _run(
        "convert",
        str(TRACES / "claude_code/session_short.jsonl"),
        str(TRACES / "openai_chat/drone_tools_head.jsonl"),
        "-o",
        str(output),
    )

    assert result.exit_code == 0, result.output
    assert len(read_records(output)) == 9
    assert "format claude_code" in result.output
    assert "format openai" in result.output
    assert "skipped 3 non-dialogue lines: progress" in result.output
    assert "wrote 9 records" in result.output


def test_convert_strict_failure_exit_2(tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    good = (DATA / "openai/tricky.jsonl").read_text().splitlines()[0]
    source.write_text(f"{good}\n{{oops\n{good}\n[1]\n")
    output = tmp_path / "records.jsonl"

    result = _run("convert", str(source), "-o", str(output))

    assert result.exit_code == 2
    assert "2 invalid input lines; nothing was written" in result.output
    assert "line 2: invalid JSON" in result.output
    assert "line 4: the line is a JSON array" in result.output
    assert "--lenient" in result.output
    assert not output.exists()
    assert not list(tmp_path.glob(".records.jsonl.*"))


def test_convert_lenient_keeps_rest(tmp_path: Path) -> None:
    source = tmp_path / "bad.jsonl"
    good = (DATA / "openai/tricky.jsonl").read_text().splitlines()[0]
    source.write_text(f"{good}\n{{oops\n")
    output = tmp_path / "records.jsonl"
    report = tmp_path / "report.json"

    result = _run("convert", str(source), "--lenient", "-o", str(output), "--report", str(report))

    assert result.exit_code == 0, result.output
    assert len(read_records(output)) == 2
    assert "invalid lines skipped: 1" in result.output
    [entry] = json.loads(report.read_text())
    assert entry["input"] == str(source)
    assert entry["errors"] == [
        {
            "line": 2,
            "reason": "invalid JSON: Expecting property name enclosed in double quotes at column 2",
        }
    ]


def test_convert_duplicates_across_inputs(tmp_path: Path) -> None:
    source = DATA / "records/prompt_completion.jsonl"
    output = tmp_path / "records.jsonl"

    result = _run("convert", str(source), str(source), "-o", str(output))

    assert result.exit_code == 0, result.output
    assert len(read_records(output)) == 2
    assert "dropped 3: duplicate" in result.output


def test_convert_fatal_error_message(tmp_path: Path) -> None:
    source = tmp_path / "empty.jsonl"
    source.write_text("")

    result = _run("convert", str(source), "-o", str(tmp_path / "out.jsonl"))

    assert result.exit_code == 2
    assert "the input is empty" in result.output


def test_convert_explicit_format(tmp_path: Path) -> None:
    output = tmp_path / "records.jsonl"

    result = _run(
        "convert", str(DATA / "sharegpt/hermes.jsonl"), "--from", "hermes", "-o", str(output)
    )

    assert result.exit_code == 0, result.output
    assert len(read_records(output)) == 2


def test_convert_with_model_limit(tmp_path: Path, tiny_qwen3_5_dir: Path) -> None:
    output = tmp_path / "records.jsonl"

    result = _run(
        "convert",
        str(TRACES / "claude_code/session_coverage_fix.jsonl"),
        "--model",
        str(tiny_qwen3_5_dir),
        "--max-teacher-prompt-tokens",
        "1000",
        "-o",
        str(output),
    )

    assert result.exit_code == 0, result.output
    assert "teacher_prompt_too_long" in result.output
    assert 0 < len(read_records(output)) < 14


def test_convert_images_with_vision_model(tmp_path: Path, tiny_qwen3_5_vl_dir: Path) -> None:
    output = tmp_path / "records.jsonl"
    source = str(DATA / "claude_code/image_result.jsonl")

    with_vision = _run("convert", source, "--model", str(tiny_qwen3_5_vl_dir), "-o", str(output))
    vision_count = len(read_records(output))
    text_only = _run("convert", source, "-o", str(output))

    assert with_vision.exit_code == 0, with_vision.output
    assert vision_count == 2
    assert "dropped 1: has_images" in text_only.output


def test_inspect_token_percentiles(tiny_qwen3_5_dir: Path) -> None:
    result = _run(
        "inspect",
        str(TRACES / "messages_tools/reason_tool_use_50.jsonl"),
        "--model",
        str(tiny_qwen3_5_dir),
    )

    assert result.exit_code == 0, result.output
    assert "format messages_parts" in result.output
    assert "dropped 3: duplicate" in result.output
    assert "turns per conversation: min 1, median 1, mean 2.24, max 6" in result.output
    for kind in ("student_prompt", "teacher_prompt", "expert_turn"):
        assert f"{kind} tokens: p50 " in result.output
    assert "tools used: circle_area 5" in result.output


def test_inspect_json_without_model() -> None:
    result = _run("inspect", str(TRACES / "sharegpt/glaive_toolcall_zh_head.json"), "--json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["format"] == "sharegpt"
    assert report["records"] == 160
    assert "token_lengths" not in report


def test_unknown_from_format_rejected(tmp_path: Path) -> None:
    result = _run(
        "convert", str(DATA / "openai/tricky.jsonl"), "--from", "alpaca", "-o", str(tmp_path / "o")
    )

    assert result.exit_code == 2
    assert "unknown format 'alpaca'" in result.output


def test_model_without_chat_template(tmp_path: Path, tiny_qwen3_5_dir: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for item in tiny_qwen3_5_dir.iterdir():
        if item.name != "chat_template.jinja":
            (model / item.name).write_bytes(item.read_bytes())
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))

    result = _run("inspect", str(DATA / "openai/tricky.jsonl"), "--model", str(model))

    assert result.exit_code == 2
    assert "no chat template" in result.output

"""A run resumed from a checkpoint continues exactly like the uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from sdft.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, read_checkpoint
from sdft.metrics import TIMING_METRICS, MetricsLog
from sdft.trainer import SDFTRun
from tests.sdft.test_trainer import Recorder, lora_weights, short_records, tiny_config


def comparable(metrics: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in metrics.items() if key not in TIMING_METRICS}


@pytest.mark.parametrize(
    ("options", "interruption"),
    [
        # Mixed on/off-policy draws and LoRA dropout exercise the policy RNG and the global
        # torch RNG; rollouts exercise the sampling generator. The first half is a complete
        # run of 2 steps, which the second half extends.
        ({"lambda_on_policy": 0.5, "lora_dropout": 0.1}, "extend"),
        # The first half is stopped after step 2, as the service stops a job.
        ({"teacher": "ema", "ema_decay": 0.5, "lr_scheduler": "cosine", "warmup_steps": 1}, "stop"),
        # A finished cosine run extended to more steps follows the longer schedule.
        ({"lr_scheduler": "cosine", "warmup_steps": 1}, "extend"),
    ],
    ids=["base-teacher-extend", "ema-teacher-stop", "cosine-extend"],
)
def test_resume_matches_uninterrupted(
    tmp_path: Path, tiny_qwen3_5_dir: Path, options: dict[str, Any], interruption: str
) -> None:
    records = short_records()[:3]  # 4 steps cross an epoch boundary
    config = tiny_config(max_steps=4, checkpoint_every=2, **options)

    full = Recorder()
    full_run = SDFTRun(
        config, tiny_qwen3_5_dir, records, tmp_path / "full", full, teacher_check_records=0
    )
    full_run.train()

    if interruption == "extend":
        first = SDFTRun(
            config.replace(max_steps=2),
            tiny_qwen3_5_dir,
            records,
            tmp_path / "split",
            teacher_check_records=0,
        )
        assert not first.train().stopped
    else:
        stopper = Recorder(stop_after=2)
        first = SDFTRun(
            config, tiny_qwen3_5_dir, records, tmp_path / "split", stopper, teacher_check_records=0
        )
        assert first.train().stopped
    checkpoint = tmp_path / "split" / "checkpoints" / "step-000002"
    assert checkpoint.is_dir()

    resumed = Recorder()
    second = SDFTRun(config, tiny_qwen3_5_dir, records, tmp_path / "split", resumed)
    result = second.train(resume_from=checkpoint)

    assert result.steps_done == 4
    assert resumed.kinds()[0] == "resumed"
    assert resumed.events[0][1] == {"path": str(checkpoint), "step": 2}
    assert "teacher_check" not in resumed.kinds()
    assert [m["step"] for m in resumed.metrics] == [3, 4]
    for expected, actual in zip(full.metrics[2:], resumed.metrics, strict=True):
        expected, actual = comparable(expected), comparable(actual)
        assert expected.keys() == actual.keys()
        for key, value in expected.items():
            assert actual[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key

    assert full_run.model is not None and second.model is not None
    for adapter in second._adapter_names:
        full_weights = lora_weights(full_run.model, adapter)
        resumed_weights = lora_weights(second.model, adapter)
        assert full_weights.keys() == resumed_weights.keys()
        for name, weight in full_weights.items():
            torch.testing.assert_close(resumed_weights[name], weight, rtol=1e-6, atol=1e-8)

    # The resumed run's metrics file contains each step once, in order.
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").open()]
    assert steps == [1, 2, 3, 4]


def test_resume_drops_metrics_after_checkpoint(tmp_path: Path, tiny_qwen3_5_dir: Path) -> None:
    records = short_records()[:2]
    config = tiny_config(max_steps=3, checkpoint_every=1)
    SDFTRun(config, tiny_qwen3_5_dir, records, tmp_path, teacher_check_records=0).train()
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step-000001",
        "step-000002",
        "step-000003",
    ]

    # Resuming from step 1 in the same folder redoes steps 2 and 3.
    checkpoint = tmp_path / "checkpoints" / "step-000001"
    rerun = SDFTRun(config, tiny_qwen3_5_dir, records, tmp_path, teacher_check_records=0)
    rerun.train(resume_from=checkpoint)

    steps = [m["step"] for m in MetricsLog(tmp_path).read()]
    assert steps == [1, 2, 3]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-000003"
    assert read_checkpoint(latest_checkpoint(tmp_path)).state.step == 3


def test_checkpoint_contents(tmp_path: Path, tiny_qwen3_5_dir: Path) -> None:
    config = tiny_config(max_steps=2, checkpoint_every=1)
    SDFTRun(config, tiny_qwen3_5_dir, short_records(), tmp_path, teacher_check_records=0).train()
    checkpoint = tmp_path / "checkpoints" / "step-000002"

    for name in ("optimizer.pt", "scheduler.pt", "rng.pt", "state.json"):
        assert (checkpoint / name).is_file(), name
    assert (checkpoint / "adapter" / "adapter_config.json").is_file()
    assert (checkpoint / "adapter" / "adapter_model.safetensors").is_file()
    loaded = read_checkpoint(checkpoint)
    assert loaded.state.step == 2
    assert loaded.state.data.index == 2
    assert loaded.state.data.epoch == 0
    assert loaded.records == 4
    assert loaded.config == config.to_dict()
    # No temporary folder is left behind after the rename.
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["step-000001", "step-000002"]


def test_resume_rejects_other_dataset(tmp_path: Path, tiny_qwen3_5_dir: Path) -> None:
    config = tiny_config(max_steps=1)
    SDFTRun(config, tiny_qwen3_5_dir, short_records(), tmp_path, teacher_check_records=0).train()
    checkpoint = tmp_path / "checkpoints" / "step-000001"

    run = SDFTRun(config, tiny_qwen3_5_dir, short_records()[:2], tmp_path / "other")
    with pytest.raises(RuntimeError, match="trained on 4 records but this run has 2"):
        run.train(resume_from=checkpoint)


def test_fresh_run_rejects_used_folder(tmp_path: Path, tiny_qwen3_5_dir: Path) -> None:
    config = tiny_config(max_steps=1)
    SDFTRun(config, tiny_qwen3_5_dir, short_records(), tmp_path, teacher_check_records=0).train()

    again = SDFTRun(config, tiny_qwen3_5_dir, short_records(), tmp_path, teacher_check_records=0)
    with pytest.raises(RuntimeError, match="already contains checkpoints.*step-000001"):
        again.train()


def test_resume_rejects_missing_checkpoint(tmp_path: Path, tiny_qwen3_5_dir: Path) -> None:
    run = SDFTRun(tiny_config(), tiny_qwen3_5_dir, short_records(), tmp_path)
    with pytest.raises(CheckpointError, match="state.json is missing"):
        run.train(resume_from=tmp_path / "nowhere")


def test_metrics_log_truncation(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    for step in (1, 2, 3):
        log.append({"step": step, "loss": float(step)})
    with log.path.open("a") as handle:
        handle.write('{"step": 4, "lo')  # cut by a crash mid-write

    assert log.truncate_after(2) == 2
    assert [m["step"] for m in log.read()] == [1, 2]
    log.append({"step": 3, "loss": float("nan")})
    assert log.read()[-1] == {"step": 3, "loss": None}

"""The demo job's options are valid SDFT options, and its progress lines show the metrics that
the trainer reports."""

from __future__ import annotations

import pytest

from api.up_demo import demo_config, format_metrics
from sdft.config import SDFTConfig


@pytest.mark.parametrize("steps", [1, 8, 50])
def test_demo_config_is_valid(steps: int) -> None:
    config = SDFTConfig.from_dict(demo_config(steps))

    assert config.max_steps == steps
    assert 1 <= config.checkpoint_every <= steps
    assert config.max_rollout_tokens <= 64
    assert "in_proj_qkv" not in config.lora_target_modules


def test_progress_line_shows_loss_and_kl() -> None:
    metrics = {"loss": 0.30491, "kl/reverse": 0.2875, "rollout/tokens": 32, "time/step_s": 12.34}

    line = format_metrics(3, 8, metrics)

    assert line == "step 3/8  loss 0.3049  kl/reverse 0.2875  rollout 32 tokens  12.3 s"


def test_progress_line_skips_missing_metrics() -> None:
    assert format_metrics(1, 2, {"loss": None, "jsd": 0.5}) == "step 1/2  jsd 0.5000"

"""Real training steps of SDFTRun on tiny random models, on CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from sdft.cli import train as train_cli
from sdft.config import SDFTConfig
from sdft.data.records import Record, parse_record
from sdft.models.loading import load_model_and_tokenizer
from sdft.prompts import PromptBuilder
from sdft.rollout import Rollout
from sdft.teacher_check import expert_logprobs
from sdft.trainer import SDFTRun, TrainCallbacks, TrainingError

DRONE_TRACES = Path("../shared/data/traces/openai_chat/drone_tools_head.jsonl")

QUESTIONS = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("How many legs has a spider?", "A spider has eight legs."),
    ("What do bees make?", "Bees make honey."),
]


def chat_record(question: str, answer: str) -> Record:
    return parse_record(
        {
            "messages": [
                {"role": "system", "content": "Answer in one line."},
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
        }
    )


def short_records() -> list[Record]:
    return [chat_record(q, a) for q, a in QUESTIONS]


def tiny_config(**overrides: Any) -> SDFTConfig:
    """Settings for a fast CPU run: short rollouts, rank-4 adapter, a high learning rate."""
    options: dict[str, Any] = {
        "max_steps": 2,
        "max_seq_length": 512,
        "max_teacher_prompt_tokens": 448,
        "max_rollout_tokens": 8,
        "lora_rank": 4,
        "lora_alpha": 8,
        "learning_rate": 1e-2,
        "warmup_steps": 0,
        "gradient_checkpointing": False,
        "checkpoint_every": 100,
    }
    options.update(overrides)
    return SDFTConfig(**options)


class Recorder(TrainCallbacks):
    """Keep every metrics dict and event; optionally stop after `stop_after` steps."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.metrics: list[dict[str, Any]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.stop_after = stop_after

    def on_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        self.metrics.append(metrics)

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.metrics) >= self.stop_after

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]


def lora_weights(model: torch.nn.Module, adapter: str = "default") -> dict[str, torch.Tensor]:
    return {
        name: param.detach().clone()
        for name, param in model.named_parameters()
        if "lora_" in name and f".{adapter}." in name
    }


def test_trains_lora_only(tmp_path: Path, tiny_qwen3_5_dir: Path) -> None:
    records = short_records()
    config = tiny_config(max_steps=3)
    base, tokenizer = load_model_and_tokenizer(tiny_qwen3_5_dir, device="cpu", dtype="float32")
    probe = torch.tensor([tokenizer("<|im_start|>user\nWhat do bees make?")["input_ids"]])
    with torch.no_grad():
        logits_before = base(probe).logits

    recorder = Recorder()
    run = SDFTRun(config, tiny_qwen3_5_dir, records, tmp_path, recorder, teacher_check_records=0)
    result = run.train()
    model = run.model
    assert model is not None

    assert result.steps_done == 3
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    # Every LoRA B matrix starts at zero; a nonzero one received gradient.
    moved = {name: w for name, w in lora_weights(model).items() if "lora_B" in name}
    assert moved and all(w.abs().sum() > 0 for w in moved.values())

    saved = load_file(tiny_qwen3_5_dir / "model.safetensors")
    base_state = model.get_base_model().state_dict()
    for name, tensor in saved.items():
        trained_name = name.replace(".weight", ".base_layer.weight")
        current = base_state.get(trained_name, base_state.get(name))
        assert current is not None, name
        assert torch.equal(current, tensor), f"base weight {name} changed"

    with torch.no_grad(), model.disable_adapter():
        teacher_logits = model(probe).logits
    with torch.no_grad():
        student_logits = model(probe).logits
    torch.testing.assert_close(teacher_logits, logits_before, rtol=0, atol=1e-6)
    assert not torch.allclose(student_logits, logits_before, atol=1e-4)


def test_step_metrics_complete(tmp_path: Path, tiny_qwen3_5_dir: Path) -> None:
    config = tiny_config()
    recorder = Recorder()
    run = SDFTRun(config, tiny_qwen3_5_dir, short_records(), tmp_path, recorder)
    result = run.train()

    assert [m["step"] for m in recorder.metrics] == [1, 2]
    expected = {
        "step",
        "loss",
        "kl/reverse",
        "rollout/tokens",
        "rollout/truncated_fraction",
        "student/logprob_mean",
        "teacher/logprob_mean",
        "lr",
        "grad_norm",
        "examples/skipped",
        "examples/on_policy",
        "time/step_s",
        "time/rollout_s",
        "throughput/tokens_per_s",
    }
    for metrics in recorder.metrics:
        assert expected <= set(metrics)
        assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
        # A random model almost never samples EOS within 8 tokens: every rollout is cut.
        assert metrics["rollout/tokens"] == config.max_rollout_tokens
        assert metrics["rollout/truncated_fraction"] == 1.0
        assert metrics["examples/on_policy"] == 1
        assert metrics["lr"] == pytest.approx(1e-2)
    assert result.truncated_rollouts == result.rollouts == 2

    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == recorder.metrics
    # The teacher check runs once, before the first step.
    assert recorder.kinds()[0] == "teacher_check"
    summary = recorder.events[0][1]["summary"]["reference_block"]
    assert summary["records"] == 2
    assert result.teacher_check is not None
    assert "teacher layout reference_block" in result.teacher_check.format_table()
    # The final step always leaves a checkpoint.
    assert recorder.kinds()[-1] == "checkpoint_saved"
    assert recorder.events[-1][1]["step"] == 2
    assert result.last_checkpoint == tmp_path / "checkpoints" / "step-000002"


@pytest.mark.parametrize("reason", ["teacher_prompt_too_long", "student_prompt_too_long"])
def test_overlong_record_skipped(tmp_path: Path, tiny_qwen3_5_dir: Path, reason: str) -> None:
    long_record = chat_record("Tell me about rivers. " * 30, "Rivers flow.")
    records = [*short_records()[:2], long_record]
    # A short instruction keeps the teacher prompt close to the student prompt, so a
    # limit can fall between the two.
    config = tiny_config(max_steps=3, max_rollout_tokens=16, teacher_instruction="{reference}")
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen3_5_dir)
    long_prompts = PromptBuilder(tokenizer, config).build(long_record)
    if reason == "teacher_prompt_too_long":
        config = config.replace(max_teacher_prompt_tokens=len(long_prompts.teacher) - 1)
    else:
        limit = len(long_prompts.student) + config.max_rollout_tokens - 1
        assert len(long_prompts.teacher) <= limit
        config = config.replace(max_seq_length=limit, max_teacher_prompt_tokens=limit)

    recorder = Recorder()
    run = SDFTRun(config, tiny_qwen3_5_dir, records, tmp_path, recorder, teacher_check_records=0)
    result = run.train()

    assert result.steps_done == 3
    assert set(result.skipped) == {reason}
    skips = [data for kind, data in recorder.events if kind == "example_skipped"]
    assert len(skips) == result.skipped[reason] >= 1
    assert all(skip["record_index"] == 2 and skip["reason"] == reason for skip in skips)
    assert all(skip["tokens"] > skip["limit"] for skip in skips)
    assert recorder.metrics[-1]["examples/skipped"] == result.skipped[reason]
    # Skipping never shortens a step: each step still trains on one record.
    assert all(m["examples/on_policy"] == 1 for m in recorder.metrics)


def test_all_records_too_long(tmp_path: Path, tiny_qwen3_5_dir: Path) -> None:
    config = tiny_config(max_teacher_prompt_tokens=50)
    run = SDFTRun(config, tiny_qwen3_5_dir, short_records(), tmp_path, teacher_check_records=0)
    with pytest.raises(TrainingError, match="all 4 records are skipped.*max_teacher_prompt_tokens"):
        run.train()


def test_cross_entropy_lowers_expert_nll(tmp_path: Path, tiny_qwen3_5_dir: Path) -> None:
    records = short_records()[:2]
    config = tiny_config(max_steps=6, lambda_on_policy=0.0)
    recorder = Recorder()
    run = SDFTRun(config, tiny_qwen3_5_dir, records, tmp_path, recorder, teacher_check_records=0)

    base, tokenizer = load_model_and_tokenizer(tiny_qwen3_5_dir, device="cpu", dtype="float32")
    builder = PromptBuilder(tokenizer, config, records)
    prompts = [builder.build(r, i) for i, r in enumerate(records)]

    def expert_nll(model: torch.nn.Module) -> float:
        values = [
            -expert_logprobs(model, p.student.token_ids, p, config, torch.device("cpu")).mean()
            for p in prompts
        ]
        return float(torch.stack(values).mean())

    before = expert_nll(base)
    run.train()
    assert run.model is not None
    after = expert_nll(run.model)

    assert after < before - 0.5, (before, after)
    for metrics in recorder.metrics:
        assert metrics["examples/off_policy"] == 1
        assert metrics["examples/on_policy"] == 0
        assert metrics["rollout/tokens"] == 0
        assert "kl/reverse" not in metrics
    nll = [m["expert/nll_mean"] for m in recorder.metrics]
    assert nll[-1] < nll[0]


def test_mixed_policy_follows_lambda(tmp_path: Path, tiny_qwen3_5_dir: Path) -> None:
    config = tiny_config(max_steps=4, batch_size=2, lambda_on_policy=0.5)
    recorder = Recorder()
    run = SDFTRun(
        config, tiny_qwen3_5_dir, short_records(), tmp_path, recorder, teacher_check_records=0
    )
    run.train()

    on_policy = sum(m["examples/on_policy"] for m in recorder.metrics)
    off_policy = sum(m["examples/off_policy"] for m in recorder.metrics)
    assert on_policy + off_policy == 8
    assert 0 < on_policy < 8


def test_ema_teacher_moves(tmp_path: Path, tiny_qwen3_5_dir: Path) -> None:
    config = tiny_config(max_steps=3, teacher="ema", ema_decay=0.5)
    recorder = Recorder()
    run = SDFTRun(
        config, tiny_qwen3_5_dir, short_records(), tmp_path, recorder, teacher_check_records=0
    )
    result = run.train()
    assert run.model is not None

    student = lora_weights(run.model, "default")
    ema = lora_weights(run.model, "ema")
    assert len(ema) == len(student) > 0
    ema_b = {name: w for name, w in ema.items() if "lora_B" in name}
    # B starts at zero for both; the EMA copy moved towards the student but trails it.
    assert all(w.abs().sum() > 0 for w in ema_b.values())
    for name, weight in ema_b.items():
        assert not torch.equal(weight, student[name.replace(".ema.", ".default.")])
    assert all(not p.requires_grad for n, p in run.model.named_parameters() if ".ema." in n)
    assert all(math.isfinite(m["kl/reverse"]) for m in recorder.metrics)

    assert result.last_checkpoint is not None
    assert (result.last_checkpoint / "adapter" / "adapter_model.safetensors").is_file()
    assert (result.last_checkpoint / "adapter" / "ema" / "adapter_model.safetensors").is_file()


def test_should_stop_within_one_step(tmp_path: Path, tiny_qwen3_5_dir: Path) -> None:
    recorder = Recorder(stop_after=1)
    config = tiny_config(max_steps=5, checkpoint_every=1)
    run = SDFTRun(
        config, tiny_qwen3_5_dir, short_records(), tmp_path, recorder, teacher_check_records=0
    )
    result = run.train()

    assert result.stopped
    assert result.steps_done == 1
    assert recorder.kinds() == ["checkpoint_saved", "stopped"]
    assert recorder.events[-1][1] == {"step": 1}
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000001"]


def test_empty_rollout_adds_zero_loss(
    tmp_path: Path, tiny_qwen3_5_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sampler always emits at least one token, so an empty rollout is forced here.
    def empty_rollout(model: torch.nn.Module, prompt_ids: torch.Tensor, **_: Any) -> Rollout:
        return Rollout(tokens=prompt_ids.new_zeros(0), truncated=False, finish="eos")

    monkeypatch.setattr("sdft.trainer.sample_rollout", empty_rollout)
    recorder = Recorder()
    run = SDFTRun(
        tiny_config(),
        tiny_qwen3_5_dir,
        short_records(),
        tmp_path,
        recorder,
        teacher_check_records=0,
    )
    run.train()
    assert run.model is not None

    for metrics in recorder.metrics:
        assert metrics["loss"] == 0.0
        assert metrics["grad_norm"] == 0.0
        assert metrics["rollout/tokens"] == 0
        assert "kl/reverse" not in metrics
    assert all(w.abs().sum() == 0 for n, w in lora_weights(run.model).items() if "lora_B" in n)


def test_gradient_checkpointing_same_update(tmp_path: Path, tiny_qwen3_5_dir: Path) -> None:
    results = {}
    for enabled in (False, True):
        recorder = Recorder()
        config = tiny_config(max_steps=1, gradient_checkpointing=enabled)
        run = SDFTRun(
            config,
            tiny_qwen3_5_dir,
            short_records(),
            tmp_path / str(enabled),
            recorder,
            teacher_check_records=0,
        )
        run.train()
        assert run.model is not None
        assert run.model.get_base_model().is_activation_checkpointing == enabled
        results[enabled] = (recorder.metrics[0], lora_weights(run.model))

    plain_metrics, plain_weights = results[False]
    checkpointed_metrics, checkpointed_weights = results[True]
    assert checkpointed_metrics["loss"] == pytest.approx(plain_metrics["loss"], rel=1e-5)
    assert checkpointed_metrics["grad_norm"] == pytest.approx(plain_metrics["grad_norm"], rel=1e-4)
    assert checkpointed_metrics["grad_norm"] > 0
    for name, weight in plain_weights.items():
        torch.testing.assert_close(checkpointed_weights[name], weight, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model_fixture", ["tiny_qwen3_5_vl_dir", "tiny_llama_dir"])
def test_other_architectures_train(
    tmp_path: Path, model_fixture: str, request: pytest.FixtureRequest
) -> None:
    model_dir = request.getfixturevalue(model_fixture)
    recorder = Recorder()
    run = SDFTRun(
        tiny_config(max_steps=1),
        model_dir,
        short_records(),
        tmp_path,
        recorder,
        teacher_check_records=0,
    )
    run.train()
    assert run.model is not None

    assert math.isfinite(recorder.metrics[0]["kl/reverse"])
    assert recorder.metrics[0]["grad_norm"] > 0
    assert all(w.abs().sum() > 0 for n, w in lora_weights(run.model).items() if "lora_B" in n)


def test_cli_train_drone_traces(tmp_path: Path, tiny_qwen3_5_dir: Path) -> None:
    output = tmp_path / "run"
    result = invoke(
        "train",
        "--model", str(tiny_qwen3_5_dir),
        "--dataset", str(DRONE_TRACES),
        "--output", str(output),
        "--teacher-check-records", "1",
        "--set", "max_steps=2",
        "--set", "checkpoint_every=1",
        "--set", "max_seq_length=4096",
        "--set", "max_teacher_prompt_tokens=3584",
        "--set", "max_rollout_tokens=8",
        "--set", "lora_rank=4",
        "--set", "gradient_checkpointing=false",
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    lines = (output / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == [
        "step-000001",
        "step-000002",
    ]
    assert "merged model:" in result.output

    merged = output / "merged"
    config = json.loads((merged / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(merged)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert model.dtype == torch.bfloat16
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Take off, please."}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    generated = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]


def test_cli_rejects_invalid_config(tmp_path: Path) -> None:
    result = invoke(
        "train", "--model", str(tmp_path), "--dataset", str(DRONE_TRACES),
        "--output", str(tmp_path / "out"), "--set", "max_steps=0", "--set", "lora_rank=-1",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "max_steps=0: must be a positive integer" in result.output
    assert "lora_rank=-1: must be a positive integer" in result.output


def test_cli_reports_bad_record_line(tmp_path: Path) -> None:
    dataset = tmp_path / "data.jsonl"
    good = json.dumps(chat_record("Hi?", "Hello.").to_json())
    dataset.write_text(f'{good}\n{{"prompt": []}}\n')
    result = invoke(
        "train",
        "--model",
        str(tmp_path),
        "--dataset",
        str(dataset),
        "--output",
        str(tmp_path / "o"),
    )
    assert result.exit_code == 2
    assert "line 2:" in result.output


def test_cli_teacher_check_all_layouts(tmp_path: Path, tiny_qwen3_5_dir: Path) -> None:
    dataset = tmp_path / "data.jsonl"
    dataset.write_text("".join(json.dumps(r.to_json()) + "\n" for r in short_records()))
    result = invoke(
        "teacher-check", "--model", str(tiny_qwen3_5_dir), "--dataset", str(dataset),
        "--records", "2", "--max-new-tokens", "4", "--set", "demonstration_examples=1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "teacher layout reference_block" in result.output
    assert "teacher layout demonstration" in result.output
    assert result.output.count("expert:  Paris is the capital of France.") == 2


def invoke(*args: str) -> Any:
    app = typer.Typer()
    train_cli.register(app)
    return CliRunner().invoke(app, list(args))


def test_cli_train_reads_claude_code_log(tmp_path: Path, tiny_qwen3_5_dir: Path) -> None:
    output = tmp_path / "run"
    result = invoke(
        "train",
        "--model", str(tiny_qwen3_5_dir),
        "--dataset", "../shared/data/traces/claude_code/session_short.jsonl",
        "--output", str(output),
        "--no-merge",
        "--teacher-check-records", "0",
        "--set", "max_steps=1",
        "--set", "max_rollout_tokens=4",
        "--set", "lora_rank=2",
        "--set", "gradient_checkpointing=false",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert (output / "metrics.jsonl").is_file()

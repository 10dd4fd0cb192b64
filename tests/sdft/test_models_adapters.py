"""LoRA adapters on the language trunk and the EMA adapter."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from sdft.config import DEFAULT_TARGET_MODULES, SDFTConfig
from sdft.models.adapters import (
    EMA_ADAPTER,
    STUDENT_ADAPTER,
    add_ema_adapter,
    attach_adapter,
    update_ema_adapter,
    use_adapter,
)
from sdft.models.loading import load_model_and_tokenizer

CONFIG = SDFTConfig(device="cpu", lora_rank=4, lora_alpha=8)


def _lora_module_names(model: PeftModel) -> list[str]:
    return [name for name, _ in model.named_modules() if name.endswith(".lora_A")]


def _adapter_params(model: PeftModel, adapter: str) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if f".{adapter}." in n}


def test_all_ten_targets_match_qwen3_5(tiny_qwen3_5_dir: Path) -> None:
    model, _ = load_model_and_tokenizer(tiny_qwen3_5_dir, device="cpu", dtype="float32")
    peft_model, report = attach_adapter(model, CONFIG)

    assert set(report.matched) == set(DEFAULT_TARGET_MODULES)
    assert report.unmatched == []
    # 1 full-attention layer, 3 linear-attention layers, 4 MLPs.
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert report.matched[name] == 1, name
    for name in ("in_proj_qkv", "in_proj_z", "out_proj"):
        assert report.matched[name] == 3, name
    for name in ("gate_proj", "up_proj", "down_proj"):
        assert report.matched[name] == 4, name
    assert len(_lora_module_names(peft_model)) == report.adapted_modules == 25
    assert report.language_prefix == "model"
    assert report.trainable_parameters == sum(
        p.numel() for p in peft_model.parameters() if p.requires_grad
    )


def test_vl_adapts_language_trunk_only(tiny_qwen3_5_vl_dir: Path) -> None:
    # linear_fc1 and linear_fc2 exist only in the vision tower's MLPs and patch merger.
    targets = (*DEFAULT_TARGET_MODULES, "linear_fc1", "linear_fc2")
    config = CONFIG.replace(lora_target_modules=targets)
    model, _ = load_model_and_tokenizer(tiny_qwen3_5_vl_dir, device="cpu", dtype="float32")

    peft_model, report = attach_adapter(model, config)

    adapted = _lora_module_names(peft_model)
    assert report.language_prefix == "model.language_model"
    assert len(adapted) == 25
    assert all(".language_model." in name for name in adapted)
    assert not [name for name in adapted if "visual" in name]
    assert report.unmatched == ["linear_fc1", "linear_fc2"]
    assert report.skipped_vision_modules > 0


def test_unmatched_target_is_reported(
    tiny_llama_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, _ = load_model_and_tokenizer(tiny_llama_dir, device="cpu", dtype="float32")
    config = CONFIG.replace(lora_target_modules=("q_proj", "v_proj", "in_proj_qkv", "foo"))

    with caplog.at_level(logging.WARNING, logger="sdft.models.adapters"):
        _, report = attach_adapter(model, config)

    assert report.matched == {"q_proj": 2, "v_proj": 2}
    assert report.unmatched == ["in_proj_qkv", "foo"]
    assert "lora_target_modules: 'foo' matches no module in LlamaForCausalLM" in caplog.text
    assert "'in_proj_qkv' matches no module" in caplog.text


def test_no_matching_target_raises(tiny_llama_dir: Path) -> None:
    model, _ = load_model_and_tokenizer(tiny_llama_dir, device="cpu", dtype="float32")
    config = CONFIG.replace(lora_target_modules=("foo", "bar"))
    with pytest.raises(ValueError, match="no name matches"):
        attach_adapter(model, config)


def test_adapter_starts_as_identity(tiny_qwen3_5_dir: Path) -> None:
    model, tokenizer = load_model_and_tokenizer(tiny_qwen3_5_dir, device="cpu", dtype="float32")
    ids = tokenizer("The capital of France", return_tensors="pt").input_ids
    with torch.no_grad():
        base_logits = model(input_ids=ids).logits

    peft_model, _ = attach_adapter(model, CONFIG)
    with torch.no_grad():
        adapted_logits = peft_model(input_ids=ids).logits

    torch.testing.assert_close(adapted_logits, base_logits)


def test_training_step_updates_student_only(tiny_qwen3_5_dir: Path) -> None:
    model, tokenizer = load_model_and_tokenizer(tiny_qwen3_5_dir, device="cpu", dtype="float32")
    peft_model, _ = attach_adapter(model, CONFIG)
    add_ema_adapter(peft_model)
    student_before = {n: p.clone() for n, p in _adapter_params(peft_model, STUDENT_ADAPTER).items()}
    ema_before = {n: p.clone() for n, p in _adapter_params(peft_model, EMA_ADAPTER).items()}
    base_before = peft_model.get_base_model().lm_head.weight.clone()

    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    ids = tokenizer("The capital of France is Paris.", return_tensors="pt").input_ids
    loss = peft_model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()

    student_after = _adapter_params(peft_model, STUDENT_ADAPTER)
    changed = [n for n, p in student_after.items() if not torch.equal(p, student_before[n])]
    assert changed
    for name, param in _adapter_params(peft_model, EMA_ADAPTER).items():
        assert torch.equal(param, ema_before[name]), name
        assert not param.requires_grad, name
    assert torch.equal(peft_model.get_base_model().lm_head.weight, base_before)


def test_ema_adapter_tracks_student(tiny_qwen3_5_dir: Path) -> None:
    model, _ = load_model_and_tokenizer(tiny_qwen3_5_dir, device="cpu", dtype="float32")
    peft_model, _ = attach_adapter(model, CONFIG)
    add_ema_adapter(peft_model)
    student = _adapter_params(peft_model, STUDENT_ADAPTER)
    ema = _adapter_params(peft_model, EMA_ADAPTER)
    name = next(n for n in student if "lora_B" in n)
    ema_name = name.replace(f".{STUDENT_ADAPTER}.", f".{EMA_ADAPTER}.")
    assert torch.equal(ema[ema_name], student[name])

    with torch.no_grad():
        student[name].fill_(1.0)
    update_ema_adapter(peft_model, decay=0.75)

    torch.testing.assert_close(ema[ema_name], torch.full_like(ema[ema_name], 0.25))
    assert peft_model.active_adapter == STUDENT_ADAPTER


def test_use_adapter_restores_student(tiny_qwen3_5_dir: Path) -> None:
    model, tokenizer = load_model_and_tokenizer(tiny_qwen3_5_dir, device="cpu", dtype="float32")
    peft_model, _ = attach_adapter(model, CONFIG)
    add_ema_adapter(peft_model)
    with torch.no_grad():
        for param in _adapter_params(peft_model, STUDENT_ADAPTER).values():
            param.normal_(0, 0.2)
    ids = tokenizer("Hello there", return_tensors="pt").input_ids
    with torch.no_grad():
        student_logits = peft_model(input_ids=ids).logits
        with use_adapter(peft_model, EMA_ADAPTER):
            assert peft_model.active_adapter == EMA_ADAPTER
            ema_logits = peft_model(input_ids=ids).logits
        restored_logits = peft_model(input_ids=ids).logits

    assert not torch.allclose(student_logits, ema_logits)
    torch.testing.assert_close(restored_logits, student_logits)
    assert peft_model.active_adapter == STUDENT_ADAPTER
    assert all(p.requires_grad for p in _adapter_params(peft_model, STUDENT_ADAPTER).values())
    assert not any(p.requires_grad for p in _adapter_params(peft_model, EMA_ADAPTER).values())


def test_attach_twice_is_rejected(tiny_llama_dir: Path) -> None:
    model, _ = load_model_and_tokenizer(tiny_llama_dir, device="cpu", dtype="float32")
    peft_model, _ = attach_adapter(model, CONFIG)
    with pytest.raises(ValueError, match="already carries adapters"):
        attach_adapter(peft_model, CONFIG)

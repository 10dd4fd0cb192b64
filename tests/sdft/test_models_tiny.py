"""Tiny model builder: real architectures, loadable through the standard auto classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sdft.models.tiny import build_tiny_model


def _config(model_dir: Path) -> dict:
    return json.loads((model_dir / "config.json").read_text(encoding="utf-8"))


def test_tiny_qwen3_5_mixes_layer_types(tiny_qwen3_5_dir: Path) -> None:
    config = _config(tiny_qwen3_5_dir)
    assert config["model_type"] == "qwen3_5_text"
    assert config["architectures"] == ["Qwen3_5ForCausalLM"]
    assert config["layer_types"].count("linear_attention") == 3
    assert config["layer_types"].count("full_attention") == 1

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_5_dir)
    layers = model.model.layers
    assert sum(hasattr(layer, "linear_attn") for layer in layers) == 3
    assert sum(hasattr(layer, "self_attn") for layer in layers) == 1


@pytest.mark.parametrize("fixture", ["tiny_qwen3_5_dir", "tiny_qwen3_5_vl_dir", "tiny_llama_dir"])
def test_tiny_model_generates(fixture: str, request: pytest.FixtureRequest) -> None:
    model_dir: Path = request.getfixturevalue(fixture)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        enable_thinking=False,
        return_tensors="pt",
        return_dict=True,
    )
    prompt_len = inputs["input_ids"].shape[1]

    output = model.generate(**inputs, max_new_tokens=6, do_sample=False)

    assert output.shape[1] > prompt_len
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_tiny_vl_keeps_trunk_under_language_model(tiny_qwen3_5_vl_dir: Path) -> None:
    config = _config(tiny_qwen3_5_vl_dir)
    assert config["model_type"] == "qwen3_5"
    assert config["architectures"] == ["Qwen3_5ForConditionalGeneration"]
    assert config["text_config"]["layer_types"].count("full_attention") == 1

    from safetensors import safe_open

    with safe_open(str(tiny_qwen3_5_vl_dir / "model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    assert any(k.startswith("model.language_model.layers.0.linear_attn.") for k in keys)
    assert any(k.startswith("model.visual.") for k in keys)


def test_tiny_model_is_deterministic_per_seed(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "a", arch="llama", seed=3)
    second = build_tiny_model(tmp_path / "b", arch="llama", seed=3)
    other = build_tiny_model(tmp_path / "c", arch="llama", seed=4)
    weights = [
        AutoModelForCausalLM.from_pretrained(d).lm_head.weight for d in (first, second, other)
    ]
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])


def test_tiny_model_rejects_vision_llama(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vision=True needs arch='qwen3_5'"):
        build_tiny_model(tmp_path, arch="llama", vision=True)

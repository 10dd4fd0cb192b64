"""Loading local checkpoints on the run's device and dtype."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer, Qwen3_5ForCausalLM, Qwen3_5ForConditionalGeneration

from sdft.config import SDFTConfig
from sdft.models.loading import (
    ModelLoadError,
    is_vision_language,
    load_model_and_tokenizer,
    parse_dtype,
    resolve_device_dtype,
)


def test_resolve_cpu_defaults_to_float32() -> None:
    device, dtype = resolve_device_dtype(SDFTConfig(device="cpu"))
    assert device == torch.device("cpu")
    assert dtype == torch.float32


def test_resolve_auto_matches_hardware() -> None:
    device, dtype = resolve_device_dtype(SDFTConfig())
    if torch.cuda.is_available():
        assert (device.type, dtype) == ("cuda", torch.bfloat16)
    else:
        assert (device.type, dtype) == ("cpu", torch.float32)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_rejects_missing_cuda() -> None:
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device_dtype(SDFTConfig(device="cuda"))


@pytest.mark.parametrize("name", ["float16", "fp16", torch.float16])
def test_float16_is_rejected(name: str | torch.dtype) -> None:
    with pytest.raises(ValueError, match="NaN gradients in float16"):
        parse_dtype(name)
    with pytest.raises(ValueError, match="NaN gradients in float16"):
        resolve_device_dtype(SimpleNamespace(device="cpu", dtype=name))


def test_load_rejects_float16(tiny_qwen3_5_dir: Path) -> None:
    with pytest.raises(ValueError, match="float16"):
        load_model_and_tokenizer(tiny_qwen3_5_dir, device="cpu", dtype=torch.float16)


def test_load_rejects_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_model_and_tokenizer(tmp_path / "absent", device="cpu", dtype="float32")


def test_load_rejects_hub_id() -> None:
    with pytest.raises(ModelLoadError, match="hub ids are not downloaded"):
        load_model_and_tokenizer("Qwen/Qwen3.5-9B", device="cpu", dtype="float32")


def test_load_rejects_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model_and_tokenizer(tmp_path, device="cpu", dtype="float32")


def test_load_text_model(tiny_qwen3_5_dir: Path) -> None:
    model, tokenizer = load_model_and_tokenizer(tiny_qwen3_5_dir, device="cpu", dtype="float32")
    assert isinstance(model, Qwen3_5ForCausalLM)
    assert not is_vision_language(model)
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.chat_template


def test_load_bfloat16_on_cpu(tiny_qwen3_5_dir: Path) -> None:
    model, _ = load_model_and_tokenizer(tiny_qwen3_5_dir, device="cpu", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_load_vl_keeps_vision_tower(tiny_qwen3_5_vl_dir: Path) -> None:
    model, tokenizer = load_model_and_tokenizer(
        tiny_qwen3_5_vl_dir, device="cpu", dtype=torch.float32
    )
    assert isinstance(model, Qwen3_5ForConditionalGeneration)
    assert is_vision_language(model)
    assert any(name.startswith("model.visual.") for name, _ in model.named_parameters())

    # Text-only forward through the vision-language class, as the trainer runs it.
    ids = tokenizer("Hello there", return_tensors="pt").input_ids
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.text_config.vocab_size)


def test_load_sets_missing_pad_token(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no-pad"
    shutil.copytree(tiny_llama_dir, folder)
    config_path = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config.pop("pad_token", None)
    config_path.write_text(json.dumps(tokenizer_config))
    assert AutoTokenizer.from_pretrained(folder).pad_token is None

    model, tokenizer = load_model_and_tokenizer(folder, device="cpu", dtype="float32")

    assert tokenizer.pad_token == "<|endoftext|>"
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_load_vl_without_architectures(tiny_qwen3_5_vl_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no-architectures"
    shutil.copytree(tiny_qwen3_5_vl_dir, folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    del config["architectures"]
    config_path.write_text(json.dumps(config))

    model, _ = load_model_and_tokenizer(folder, device="cpu", dtype="float32")

    assert isinstance(model, Qwen3_5ForConditionalGeneration)


def test_load_replaces_eos_pad_token(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "eos-pad"
    shutil.copytree(tiny_llama_dir, folder)
    config_path = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["pad_token"] = "<|im_end|>"
    config_path.write_text(json.dumps(tokenizer_config))
    assert AutoTokenizer.from_pretrained(folder).pad_token == "<|im_end|>"

    _, tokenizer = load_model_and_tokenizer(folder, device="cpu", dtype="float32")

    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id

"""Merged bf16 export of a trained adapter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from sdft.config import SDFTConfig
from sdft.models.adapters import STUDENT_ADAPTER, add_ema_adapter, attach_adapter
from sdft.models.export import MergedReport, save_merged, verify_merged
from sdft.models.loading import load_model_and_tokenizer, model_class_for

CONFIG = SDFTConfig(device="cpu", lora_rank=4, lora_alpha=8)
RUN_INFO = {
    "config": CONFIG.to_dict(),
    "dataset_records": 12,
    "steps": 3,
    "rollouts": 3,
    "job_id": "job-1",
}


def _adapted(model_dir: Path) -> tuple[PeftModel, PreTrainedTokenizerBase, torch.Tensor]:
    """Load a model, attach a LoRA with random non-zero B, and return it with sample ids."""
    model, tokenizer = load_model_and_tokenizer(model_dir, device="cpu", dtype="float32")
    ids = tokenizer("The capital of France is Paris.", return_tensors="pt").input_ids
    peft_model, _ = attach_adapter(model, CONFIG)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if f"lora_B.{STUDENT_ADAPTER}." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return peft_model, tokenizer, ids


def _all_keys(folder: Path) -> list[str]:
    keys: list[str] = []
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            keys.extend(handle.keys())
    return keys


def test_merged_matches_adapted_model(tiny_qwen3_5_dir: Path, tmp_path: Path) -> None:
    peft_model, tokenizer, ids = _adapted(tiny_qwen3_5_dir)
    with torch.no_grad():
        adapted_logits = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            base_logits = peft_model(input_ids=ids).logits
    add_ema_adapter(peft_model)

    report = save_merged(
        peft_model, tokenizer, tmp_path, base_model_dir=tiny_qwen3_5_dir, run_info=RUN_INFO
    )

    assert report.ok
    assert report.dtypes == {"BF16": report.tensor_count}
    assert report.lora_keys == []
    assert not [key for key in _all_keys(tmp_path) if "lora" in key or "base_layer" in key]
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"

    # fp32 compute isolates the bf16 rounding of the weights from bf16 arithmetic.
    merged = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
    adapter_effect = (adapted_logits - base_logits).abs().max()
    merge_error = (merged_logits - adapted_logits).abs().max()
    assert adapter_effect > 0.1
    assert merge_error < 0.1 * adapter_effect


def test_merged_folder_loads_and_generates(tiny_qwen3_5_dir: Path, tmp_path: Path) -> None:
    peft_model, tokenizer, _ = _adapted(tiny_qwen3_5_dir)
    save_merged(peft_model, tokenizer, tmp_path, base_model_dir=tiny_qwen3_5_dir, run_info=RUN_INFO)

    model, loaded_tokenizer = load_model_and_tokenizer(tmp_path, device="cpu", dtype="bfloat16")
    inputs = loaded_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}],
        add_generation_prompt=True,
        enable_thinking=False,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**inputs, max_new_tokens=4, do_sample=False)

    assert output.shape[1] > inputs["input_ids"].shape[1]
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert (tmp_path / "generation_config.json").is_file()
    assert json.loads((tmp_path / "sdft_run.json").read_text())["job_id"] == "job-1"


def test_model_card_lists_run_settings(tiny_llama_dir: Path, tmp_path: Path) -> None:
    peft_model, tokenizer, _ = _adapted(tiny_llama_dir)
    save_merged(peft_model, tokenizer, tmp_path, base_model_dir=tiny_llama_dir, run_info=RUN_INFO)

    card = (tmp_path / "README.md").read_text()
    assert "| steps completed | 3 |" in card
    assert "| dataset records | 12 |" in card
    assert "| rollouts sampled | 3 |" in card
    assert "| `lora_rank` | 4 |" in card
    assert "| `lora_alpha` | 8 |" in card
    assert "| `learning_rate` | 1e-05 |" in card
    assert "| size on disk |" in card
    assert "LlamaForCausalLM.from_pretrained" in card


def test_vl_merge_keeps_vision_tower(tiny_qwen3_5_vl_dir: Path, tmp_path: Path) -> None:
    peft_model, tokenizer, ids = _adapted(tiny_qwen3_5_vl_dir)
    with torch.no_grad():
        adapted_logits = peft_model(input_ids=ids).logits
    base_class = model_class_for(tiny_qwen3_5_vl_dir)
    base_visual = {
        key: value.clone()
        for key, value in peft_model.get_base_model().state_dict().items()
        if key.startswith("model.visual.")
    }

    report = save_merged(
        peft_model, tokenizer, tmp_path, base_model_dir=tiny_qwen3_5_vl_dir, run_info=RUN_INFO
    )

    assert report.ok
    assert report.architectures == ["Qwen3_5ForConditionalGeneration"]
    assert model_class_for(tmp_path) is base_class
    merged = base_class.from_pretrained(tmp_path, dtype=torch.float32)
    merged_visual = {k: v for k, v in merged.state_dict().items() if k.startswith("model.visual.")}
    assert merged_visual.keys() == base_visual.keys()
    for key, value in base_visual.items():
        torch.testing.assert_close(merged_visual[key], value.to(torch.bfloat16).float())
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
    assert (merged_logits - adapted_logits).abs().max() < 0.05


def test_verify_flags_float32_checkpoint(tiny_llama_dir: Path) -> None:
    report = verify_merged(tiny_llama_dir)
    assert not report.ok
    assert report.dtypes == {"F32": report.tensor_count}
    assert len(report.non_bf16) == report.tensor_count


def test_verify_rejects_folder_without_weights(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no .safetensors files"):
        verify_merged(tmp_path)


def _save_sharded(
    peft_model: PeftModel, tokenizer: PreTrainedTokenizerBase, out: Path, base_dir: Path
) -> MergedReport:
    # 300 KB shards split the 0.9 MB tiny checkpoint into several files.
    return save_merged(
        peft_model,
        tokenizer,
        out,
        base_model_dir=base_dir,
        run_info=RUN_INFO,
        max_shard_size="300KB",
    )


def test_sharded_merge_loads(tiny_qwen3_5_dir: Path, tmp_path: Path) -> None:
    peft_model, tokenizer, ids = _adapted(tiny_qwen3_5_dir)
    with torch.no_grad():
        adapted_logits = peft_model(input_ids=ids).logits

    report = _save_sharded(peft_model, tokenizer, tmp_path, tiny_qwen3_5_dir)

    assert report.ok
    assert len(report.shards) > 1
    assert (tmp_path / "model.safetensors.index.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
    assert (merged_logits - adapted_logits).abs().max() < 0.05


def test_verify_reports_missing_shard(tiny_qwen3_5_dir: Path, tmp_path: Path) -> None:
    peft_model, tokenizer, _ = _adapted(tiny_qwen3_5_dir)
    report = _save_sharded(peft_model, tokenizer, tmp_path, tiny_qwen3_5_dir)
    (tmp_path / report.shards[0]).unlink()

    damaged = verify_merged(tmp_path)

    assert damaged.missing_shards == [report.shards[0]]
    assert not damaged.ok


def test_merge_refuses_folder_with_weights(tiny_llama_dir: Path, tmp_path: Path) -> None:
    stale = tmp_path / "model-00009-of-00009.safetensors"
    stale.write_bytes(b"stale")
    peft_model, tokenizer, _ = _adapted(tiny_llama_dir)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_merged(peft_model, tokenizer, tmp_path, base_model_dir=tiny_llama_dir, run_info={})

    report = save_merged(
        peft_model,
        tokenizer,
        tmp_path,
        base_model_dir=tiny_llama_dir,
        run_info={},
        overwrite=True,
    )

    assert report.ok
    assert not stale.exists()
    assert report.shards == ["model.safetensors"]


def test_merge_keeps_tied_embeddings(tiny_llama_dir: Path, tmp_path: Path) -> None:
    base_dir = tmp_path / "tied-base"
    shutil.copytree(tiny_llama_dir, base_dir)
    config = LlamaConfig.from_pretrained(base_dir)
    config.tie_word_embeddings = True
    LlamaForCausalLM(config).save_pretrained(base_dir)
    peft_model, tokenizer, ids = _adapted(base_dir)
    with torch.no_grad():
        adapted_logits = peft_model(input_ids=ids).logits

    report = save_merged(
        peft_model, tokenizer, tmp_path / "merged", base_model_dir=base_dir, run_info={}
    )

    assert report.ok
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
    assert (merged_logits - adapted_logits).abs().max() < 0.05

"""Merge the trained LoRA adapter into the base weights and save a bf16 checkpoint."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME

from sdft.models.adapters import EMA_ADAPTER, STUDENT_ADAPTER

logger = logging.getLogger(__name__)

# A 9B model in bf16 (about 18 GB) is written as four shards of at most 5 GB.
MAX_SHARD_SIZE = "5GB"

# Files of the base folder that the merged model needs and that neither save_pretrained
# nor the tokenizer writes: image and video preprocessing of vision-language models, and
# the license.
_CARRIED_FILES = (
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "processor_config.json",
    "LICENSE",
    "LICENSE.txt",
    "LICENSE.md",
)

_LORA_MARKERS = ("lora_", "base_layer", "modules_to_save")

# Config options shown first in the model card, in this order.
_CARD_OPTIONS = (
    "max_steps",
    "batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler",
    "warmup_steps",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "loss",
    "lambda_on_policy",
    "kl_temperature",
    "teacher",
    "max_seq_length",
    "max_teacher_prompt_tokens",
    "max_rollout_tokens",
    "rollout_temperature",
    "rollout_top_p",
    "seed",
)


@dataclass(frozen=True)
class MergedReport:
    """Contents of a merged output folder, as read back from its files."""

    out_dir: Path
    tensor_count: int
    parameter_count: int
    total_bytes: int
    dtypes: dict[str, int]
    non_bf16: list[str]
    lora_keys: list[str]
    config_dtype: str | None
    architectures: list[str]
    shards: list[str] = field(default_factory=list)
    missing_shards: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.tensor_count > 0
            and not self.missing_shards
            and not self.non_bf16
            and not self.lora_keys
            and self.config_dtype == "bfloat16"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "ok": self.ok,
            "tensor_count": self.tensor_count,
            "parameter_count": self.parameter_count,
            "total_bytes": self.total_bytes,
            "dtypes": dict(self.dtypes),
            "non_bf16": list(self.non_bf16),
            "lora_keys": list(self.lora_keys),
            "config_dtype": self.config_dtype,
            "architectures": list(self.architectures),
            "shards": list(self.shards),
            "missing_shards": list(self.missing_shards),
        }


def save_merged(
    peft_model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    *,
    base_model_dir: str | Path,
    run_info: dict[str, Any],
    max_shard_size: str | int = MAX_SHARD_SIZE,
    overwrite: bool = False,
) -> MergedReport:
    """Merge the student adapter into the base weights and save the result in bf16.

    This consumes `peft_model`: the merge rewrites its base weights in place and casts them
    to bf16, so the caller must not train or score with it afterwards. Merging in place
    avoids holding a second copy of the weights in memory.

    The output contains sharded safetensors, config with `dtype` bfloat16, tokenizer, chat
    template, generation config, the preprocessor files of a vision-language base and a
    README.md model card built from `run_info`. The card reads the keys `config`,
    `dataset_records` and `steps`, and when present `dataset_bytes`, `dataset_tokens`,
    `rollouts`, `truncated_rollouts` and `job_id`. All of `run_info` goes to `sdft_run.json`.
    A vision-language base keeps its vision tower and loads with the same class as the base.

    Raises FileExistsError when `out_dir` already contains weights, unless `overwrite` is
    set, in which case the old weight files are deleted first. Raises RuntimeError when the
    written folder fails `verify_merged`.
    """
    out = Path(out_dir)
    base_dir = Path(base_model_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear_old_weights(out, overwrite)

    if EMA_ADAPTER in peft_model.peft_config:
        # The EMA weights are not part of the artifact. Deleting them before the merge frees
        # their memory, and the student stays the only adapter to merge.
        peft_model.delete_adapter(EMA_ADAPTER)
    if peft_model.active_adapter != STUDENT_ADAPTER:
        peft_model.set_adapter(STUDENT_ADAPTER)
    merged: PreTrainedModel = peft_model.merge_and_unload(progressbar=False, safe_merge=True)

    merged.bfloat16()
    _set_config_dtype(merged)
    leftover = [name for name in merged.state_dict() if _is_lora_key(name)]
    if leftover:
        raise RuntimeError(f"merge left adapter tensors in the model: {leftover[:5]}")

    merged.save_pretrained(out, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out)
    if tokenizer.chat_template is None:
        logger.warning("tokenizer has no chat template; %s is saved without one", out)
    _copy_base_files(base_dir, out)

    (out / "sdft_run.json").write_text(
        json.dumps(_jsonable(run_info), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    report = verify_merged(out)
    (out / "README.md").write_text(
        model_card(run_info, report, base_dir, type(merged).__name__), encoding="utf-8"
    )
    if not report.ok:
        raise RuntimeError(f"merged checkpoint in {out} failed verification: {report.to_dict()}")
    logger.info(
        "saved merged %s (%d parameters, %.1f MB) to %s",
        type(merged).__name__,
        report.parameter_count,
        report.total_bytes / 1e6,
        out,
    )
    return report


def verify_merged(out_dir: str | Path) -> MergedReport:
    """Read a merged folder's safetensors headers and config, without loading the weights.

    The report is `ok` when every shard named by the index exists, every tensor is bf16,
    no LoRA key remains and the config's `dtype` is bfloat16.
    """
    out = Path(out_dir)
    shards = sorted(out.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no .safetensors files in {out}; is it a saved model folder?")
    missing_shards: list[str] = []
    index_path = out / SAFE_WEIGHTS_INDEX_NAME
    if index_path.is_file():
        # A sharded checkpoint loads only the shards its index names, so only those count.
        index = json.loads(index_path.read_text(encoding="utf-8"))
        listed = sorted(set(index.get("weight_map", {}).values()))
        missing_shards = [name for name in listed if not (out / name).is_file()]
        shards = [out / name for name in listed if (out / name).is_file()]

    dtypes: Counter[str] = Counter()
    non_bf16: list[str] = []
    lora_keys: list[str] = []
    parameter_count = 0
    tensor_count = 0
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            for key in handle.keys():
                tensor_slice = handle.get_slice(key)
                dtype = tensor_slice.get_dtype()
                numel = 1
                for size in tensor_slice.get_shape():
                    numel *= size
                tensor_count += 1
                parameter_count += numel
                dtypes[dtype] += 1
                if dtype != "BF16":
                    non_bf16.append(f"{key} ({dtype})")
                if _is_lora_key(key):
                    lora_keys.append(key)

    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    return MergedReport(
        out_dir=out,
        tensor_count=tensor_count,
        parameter_count=parameter_count,
        total_bytes=sum(shard.stat().st_size for shard in shards),
        dtypes=dict(dtypes),
        non_bf16=non_bf16,
        lora_keys=lora_keys,
        config_dtype=config.get("dtype") or config.get("torch_dtype"),
        architectures=list(config.get("architectures") or []),
        shards=[shard.name for shard in shards],
        missing_shards=missing_shards,
    )


def model_card(
    run_info: dict[str, Any], report: MergedReport, base_dir: Path, model_class: str
) -> str:
    """Render the README.md of a merged model: what it is, how it was trained, how to load it."""
    config: dict[str, Any] = dict(run_info.get("config") or {})
    ordered = [key for key in _CARD_OPTIONS if key in config]
    ordered += sorted(key for key in config if key not in _CARD_OPTIONS)

    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        "- sdft",
        "- self-distillation",
        "- lora-merged",
        "---",
        "",
        f"# {base_dir.name} + SDFT",
        "",
        f"This model is `{base_dir.name}` fine-tuned with Self-Distillation Fine-Tuning (SDFT): "
        "a LoRA adapter trained on its own rollouts to match the base model prompted with an "
        "expert reference, then merged into the base weights and saved in bfloat16.",
        "",
        "## Run",
        "",
        "| | |",
        "|---|---|",
    ]
    for label, key in (
        ("job", "job_id"),
        ("steps completed", "steps"),
        ("dataset records", "dataset_records"),
        ("dataset tokens", "dataset_tokens"),
        ("dataset size (bytes)", "dataset_bytes"),
        ("rollouts sampled", "rollouts"),
        ("rollouts truncated at max_rollout_tokens", "truncated_rollouts"),
    ):
        if run_info.get(key) is not None:
            lines.append(f"| {label} | {_cell(run_info[key])} |")
    lines += [
        f"| parameters | {report.parameter_count:,} |",
        f"| size on disk | {_size(report.total_bytes)} in {len(report.shards)} file(s) |",
        "",
        "## Settings",
        "",
        "| option | value |",
        "|---|---|",
    ]
    lines += [f"| `{key}` | {_cell(config[key])} |" for key in ordered]
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        f"from transformers import AutoTokenizer, {model_class}",
        "",
        f'model = {model_class}.from_pretrained("path/to/this/folder", dtype="bfloat16")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        "```",
        "",
    ]
    return "\n".join(lines)


def _clear_old_weights(out: Path, overwrite: bool) -> None:
    old = sorted(out.glob("*.safetensors")) + sorted(out.glob("*.safetensors.index.json"))
    if not old:
        return
    if not overwrite:
        raise FileExistsError(
            f"{out} already contains weights ({old[0].name}); pass overwrite=True to "
            "replace them or choose an empty folder"
        )
    # Stale shards of an earlier save would otherwise sit beside the new ones.
    for path in old:
        path.unlink()


def _set_config_dtype(model: PreTrainedModel) -> None:
    model.config.dtype = torch.bfloat16
    for sub_name in ("text_config", "vision_config"):
        sub_config = getattr(model.config, sub_name, None)
        if sub_config is not None:
            sub_config.dtype = torch.bfloat16


def _is_lora_key(name: str) -> bool:
    return any(marker in name for marker in _LORA_MARKERS)


def _copy_base_files(base_dir: Path, out: Path) -> None:
    for name in _CARRIED_FILES:
        source = base_dir / name
        if source.is_file() and not (out / name).exists():
            shutil.copy2(source, out / name)


def _size(num_bytes: int) -> str:
    if num_bytes >= 1e9:
        return f"{num_bytes / 1e9:.2f} GB"
    return f"{num_bytes / 1e6:.1f} MB"


def _cell(value: Any) -> str:
    if isinstance(value, list | tuple):
        text = ", ".join(str(item) for item in value)
    elif isinstance(value, str) and "\n" in value:
        text = value.replace("\n", " ")
    else:
        text = str(value)
    if len(text) > 120:
        text = text[:117] + "..."
    return text.replace("|", "\\|")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)

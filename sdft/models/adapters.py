"""LoRA adapters on the language trunk, and the EMA copy of the student adapter.

The student is the base model with the "default" adapter active. The teacher is either
the base model (adapter disabled) or, with `teacher="ema"`, the base model with a frozen
"ema" adapter whose weights trail the student's.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from sdft.models.loading import VISION_MODULE_MARKERS

logger = logging.getLogger(__name__)

STUDENT_ADAPTER = "default"
EMA_ADAPTER = "ema"

# Layer types of language trunks that peft's LoRA wraps. A target name that matches only
# other modules (a norm, a container) adapts nothing.
_LORA_LAYER_TYPES = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d)


class AdapterSettings(Protocol):
    """The adapter options of `SDFTConfig`.

    Members are read-only properties so that frozen dataclasses such as `SDFTConfig` match.
    """

    @property
    def lora_rank(self) -> int: ...

    @property
    def lora_alpha(self) -> int: ...

    @property
    def lora_dropout(self) -> float: ...

    @property
    def lora_target_modules(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class AdapterReport:
    """Outcome of attaching the student adapter: what each target name matched."""

    language_prefix: str
    target_pattern: str
    matched: dict[str, int]
    unmatched: list[str]
    trainable_parameters: int
    total_parameters: int
    skipped_vision_modules: int = 0

    @property
    def adapted_modules(self) -> int:
        return sum(self.matched.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "language_prefix": self.language_prefix,
            "target_pattern": self.target_pattern,
            "matched": dict(self.matched),
            "unmatched": list(self.unmatched),
            "adapted_modules": self.adapted_modules,
            "trainable_parameters": self.trainable_parameters,
            "total_parameters": self.total_parameters,
            "skipped_vision_modules": self.skipped_vision_modules,
        }


def attach_adapter(model: nn.Module, config: AdapterSettings) -> tuple[PeftModel, AdapterReport]:
    """Wrap `model` in a PEFT model with the student LoRA adapter on its language trunk.

    Target names are matched against the last component of module names under the trunk
    only, so a vision tower with modules of the same name (`out_proj`, `qkv`) is never
    adapted. Names that match nothing are logged as warnings and listed in the report;
    when no name matches at all a ValueError is raised.
    """
    if isinstance(model, PeftModel):
        raise ValueError(
            f"{type(model.base_model.model).__name__} already carries adapters "
            f"{sorted(model.peft_config)}; attach the student adapter to the base model once"
        )
    targets = list(dict.fromkeys(config.lora_target_modules))
    prefix = language_prefix(model)
    matched, skipped_vision = _count_targets(model, prefix, targets)
    unmatched = [name for name in targets if matched[name] == 0]
    model_name = type(model).__name__
    for name in unmatched:
        logger.warning("lora_target_modules: %r matches no module in %s", name, model_name)
    if len(unmatched) == len(targets):
        raise ValueError(
            f"lora_target_modules={targets}: no name matches a Linear module of the language "
            f"trunk of {model_name} (under {prefix or 'the model root'!r}); pick names from "
            f"{sorted(linear_module_names(model, prefix))}"
        )

    pattern = target_pattern(prefix, [name for name in targets if matched[name] > 0])
    lora_config = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=pattern,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora_config, adapter_name=STUDENT_ADAPTER)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    report = AdapterReport(
        language_prefix=prefix,
        target_pattern=pattern,
        matched={name: count for name, count in matched.items() if count},
        unmatched=unmatched,
        trainable_parameters=trainable,
        total_parameters=total,
        skipped_vision_modules=skipped_vision,
    )
    logger.info(
        "attached LoRA r=%d alpha=%d to %d modules of %s (%d trainable of %d parameters)",
        config.lora_rank,
        config.lora_alpha,
        report.adapted_modules,
        model_name,
        trainable,
        total,
    )
    return peft_model, report


def language_prefix(model: nn.Module) -> str:
    """Return the dotted name of the language trunk inside `model`.

    "model" for causal LMs such as `Qwen3_5ForCausalLM`, "model.language_model" for
    vision-language models such as `Qwen3_5ForConditionalGeneration`.
    """
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    if decoder is None or decoder is model:
        return ""
    for name, module in model.named_modules():
        if module is decoder:
            return name
    raise ValueError(
        f"{type(model).__name__}.get_decoder() returned a module that is not part of the model"
    )


def target_pattern(prefix: str, names: Sequence[str]) -> str:
    """Build the regex peft full-matches against module names to select the targets.

    The pattern requires the trunk prefix and also excludes any path through a vision
    module, in case a model nests its vision tower under the trunk.
    """
    alternatives = "|".join(re.escape(name) for name in names)
    markers = "|".join(re.escape(marker) for marker in VISION_MODULE_MARKERS)
    head = rf"{re.escape(prefix)}\." if prefix else ""
    return rf"(?!.*(?:{markers})){head}(?:.*\.)?(?:{alternatives})"


def linear_module_names(model: nn.Module, prefix: str) -> set[str]:
    """Return the distinct last name components of LoRA-capable modules under `prefix`."""
    return {
        name.rsplit(".", 1)[-1]
        for name, module in _trunk_modules(model, prefix)
        if isinstance(module, _LORA_LAYER_TYPES)
    }


def _trunk_modules(model: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if prefix and not name.startswith(prefix + "."):
            continue
        if _is_vision_module(name):
            continue
        yield name, module


def _is_vision_module(name: str) -> bool:
    return any(marker in part for part in name.split(".") for marker in VISION_MODULE_MARKERS)


def _count_targets(
    model: nn.Module, prefix: str, targets: Sequence[str]
) -> tuple[dict[str, int], int]:
    counts = dict.fromkeys(targets, 0)
    for _, module_name, module in _leaf_matches(model, prefix, targets):
        if isinstance(module, _LORA_LAYER_TYPES):
            counts[module_name] += 1
    skipped_vision = sum(
        1
        for name, module in model.named_modules()
        if _is_vision_module(name)
        and name.rsplit(".", 1)[-1] in counts
        and isinstance(module, _LORA_LAYER_TYPES)
    )
    return counts, skipped_vision


def _leaf_matches(
    model: nn.Module, prefix: str, targets: Sequence[str]
) -> Iterator[tuple[str, str, nn.Module]]:
    wanted = set(targets)
    for name, module in _trunk_modules(model, prefix):
        last = name.rsplit(".", 1)[-1]
        if last in wanted:
            yield name, last, module


def add_ema_adapter(model: PeftModel) -> None:
    """Add a frozen "ema" adapter that starts as an exact copy of the student adapter."""
    if EMA_ADAPTER in model.peft_config:
        raise ValueError(f"the model already has an adapter named {EMA_ADAPTER!r}")
    model.add_adapter(EMA_ADAPTER, copy.deepcopy(model.peft_config[STUDENT_ADAPTER]))
    with torch.no_grad():
        for student, ema in _ema_pairs(model):
            ema.copy_(student)
    # add_adapter leaves the student active; the EMA weights change only by update_ema_adapter.
    for _, ema in _ema_pairs(model):
        ema.requires_grad_(False)
    logger.info("added frozen %r adapter tracking %r", EMA_ADAPTER, STUDENT_ADAPTER)


@torch.no_grad()
def update_ema_adapter(model: PeftModel, decay: float) -> None:
    """Move each "ema" adapter weight towards the student's: ema = decay*ema + (1-decay)*student.

    Adds the "ema" adapter first when the model has none yet.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay={decay}: must be in [0, 1)")
    if EMA_ADAPTER not in model.peft_config:
        add_ema_adapter(model)
        return
    for student, ema in _ema_pairs(model):
        ema.lerp_(student.to(ema.dtype), 1.0 - decay)


def _ema_pairs(model: PeftModel) -> list[tuple[torch.Tensor, torch.Tensor]]:
    params = dict(model.named_parameters())
    student_tag = f".{STUDENT_ADAPTER}."
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    for name, param in params.items():
        if student_tag not in name:
            continue
        ema_name = name.replace(student_tag, f".{EMA_ADAPTER}.")
        ema = params.get(ema_name)
        if ema is None:
            raise RuntimeError(f"adapter weight {name} has no EMA counterpart {ema_name}")
        pairs.append((param, ema))
    if not pairs:
        raise RuntimeError(f"no weights of adapter {STUDENT_ADAPTER!r} found in the model")
    return pairs


@contextlib.contextmanager
def use_adapter(model: PeftModel, adapter_name: str) -> Iterator[PeftModel]:
    """Run the block with `adapter_name` active, then restore the previous adapter.

    peft's `set_adapter` also flips `requires_grad` (it makes the active adapter trainable
    and freezes the others), so the flags of every parameter are saved and restored, which
    keeps the student trainable and the EMA adapter frozen.
    """
    if adapter_name not in model.peft_config:
        raise ValueError(
            f"adapter {adapter_name!r} not found; the model has {sorted(model.peft_config)}"
        )
    previous = model.active_adapter
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    model.set_adapter(adapter_name)
    try:
        yield model
    finally:
        model.set_adapter(previous)
        for name, param in model.named_parameters():
            param.requires_grad_(flags[name])

"""Training configuration for SDFT runs.

Defaults reproduce the reference run: Qwen3.5-9B, 600 steps at batch 1, LoRA r=64 on
every attention, linear-attention and MLP projection of the language trunk.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

LossName = Literal["reverse_kl", "forward_kl", "jsd"]
TeacherMode = Literal["base", "ema"]
TeacherLayout = Literal["reference_block", "demonstration"]
SchedulerName = Literal["constant", "linear", "cosine"]

DEFAULT_TARGET_MODULES: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "in_proj_qkv",
    "in_proj_z",
    "out_proj",
)

DEFAULT_TEACHER_INSTRUCTION = (
    "<expert_reference>\n{reference}\n</expert_reference>\n"
    "Above is an expert's reply to this conversation. Write your own reply to the "
    "conversation: follow the expert's approach, tool calls and format, in your own words."
)


class _YamlLoader(yaml.SafeLoader):
    """Safe YAML loader that reads `1e-5` as a float: YAML 1.1, which PyYAML follows, needs a
    dot in the mantissa and would otherwise return the string '1e-5'."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


class ConfigError(ValueError):
    """Invalid configuration; `problems` contains one message per invalid option."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid config: " + "; ".join(problems))


@dataclass(frozen=True)
class SDFTConfig:
    """All settings of one SDFT run. Token counts are in tokens of the base model's tokenizer."""

    # Sequence limits.
    max_seq_length: int = 65536
    max_teacher_prompt_tokens: int = 57344
    max_rollout_tokens: int = 8192

    # Optimization.
    max_steps: int = 600
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-5
    warmup_steps: int = 20
    lr_scheduler: SchedulerName = "constant"
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = True
    seed: int = 0

    # Adapter.
    lora_rank: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES

    # Objective.
    loss: LossName = "reverse_kl"
    jsd_beta: float = 0.5
    kl_temperature: float = 1.0
    lambda_on_policy: float = 1.0
    top_k_logits: int | None = None
    # Logit chunks are sized in bytes: blocks over glibc's 32 MiB mmap threshold are
    # returned to the OS after every use and faulted in again, which is slow on CPU.
    logits_chunk_bytes: int = 16 * 1024 * 1024

    # Rollout sampling.
    rollout_temperature: float = 0.8
    rollout_top_p: float = 0.95

    # Teacher.
    teacher: TeacherMode = "base"
    ema_decay: float = 0.99
    teacher_layout: TeacherLayout = "reference_block"
    teacher_instruction: str = DEFAULT_TEACHER_INSTRUCTION
    demonstration_examples: int = 0
    enable_thinking: bool = False

    # Checkpoints.
    checkpoint_every: int = 100

    # Device and precision: "auto" picks CUDA in bf16 when available, else CPU in fp32.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.lora_target_modules, list):
            object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))
        problems = self._problems()
        if problems:
            raise ConfigError(problems)

    def _problems(self) -> list[str]:
        problems: list[str] = []

        def check(ok: bool, option: str, message: str) -> None:
            if not ok:
                value = getattr(self, option)
                problems.append(f"{option}={value!r}: {message}")

        type_problems = _type_problems(self)
        if type_problems:
            # Range checks would fail on a value of the wrong type, so they run on a copy that
            # has the defaults in those options: every other bad option is still reported.
            defaults: dict[str, Any] = {
                name: SDFTConfig.__dataclass_fields__[name].default for name in type_problems
            }
            try:
                dataclasses.replace(self, **defaults)
            except ConfigError as exc:
                return list(type_problems.values()) + exc.problems
            return list(type_problems.values())

        for name in (
            "max_seq_length",
            "max_teacher_prompt_tokens",
            "max_rollout_tokens",
            "max_steps",
            "batch_size",
            "gradient_accumulation_steps",
            "lora_rank",
            "checkpoint_every",
            "logits_chunk_bytes",
        ):
            check(getattr(self, name) > 0, name, "must be a positive integer")
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        check(self.demonstration_examples >= 0, "demonstration_examples", "must be >= 0")
        check(
            math.isfinite(self.learning_rate) and self.learning_rate > 0,
            "learning_rate",
            "must be a positive number",
        )
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(0 <= self.adam_beta1 < 1, "adam_beta1", "must be in [0, 1)")
        check(0 <= self.adam_beta2 < 1, "adam_beta2", "must be in [0, 1)")
        check(self.max_grad_norm > 0, "max_grad_norm", "must be > 0")
        check(self.lora_alpha > 0, "lora_alpha", "must be > 0")
        check(0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1)")
        check(len(self.lora_target_modules) > 0, "lora_target_modules", "must name a module")
        check(0 < self.jsd_beta < 1, "jsd_beta", "must be in (0, 1)")
        check(self.kl_temperature > 0, "kl_temperature", "must be > 0")
        check(0 <= self.lambda_on_policy <= 1, "lambda_on_policy", "must be in [0, 1]")
        check(
            self.top_k_logits is None or self.top_k_logits > 0,
            "top_k_logits",
            "must be a positive integer, or null for the exact full-vocabulary loss",
        )
        check(self.rollout_temperature > 0, "rollout_temperature", "must be > 0")
        check(0 < self.rollout_top_p <= 1, "rollout_top_p", "must be in (0, 1]")
        check(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")
        check(
            "{reference}" in self.teacher_instruction,
            "teacher_instruction",
            "must contain the placeholder {reference}",
        )
        check(
            self.max_teacher_prompt_tokens <= self.max_seq_length,
            "max_teacher_prompt_tokens",
            f"must not exceed max_seq_length ({self.max_seq_length})",
        )
        check(
            self.max_rollout_tokens < self.max_seq_length,
            "max_rollout_tokens",
            f"must be below max_seq_length ({self.max_seq_length})",
        )
        check(
            not (self.device == "cpu" and self.dtype == "bfloat16"),
            "dtype",
            "bfloat16 training is for CUDA; use float32 on CPU",
        )
        return problems

    @property
    def lora_scaling(self) -> float:
        return self.lora_alpha / self.lora_rank

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lora_target_modules"] = list(self.lora_target_modules)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SDFTConfig:
        """Build a config from a mapping; unknown keys are rejected with the list of known ones."""
        if not isinstance(data, Mapping):
            raise ConfigError([f"config must be a mapping of options, got {type(data).__name__}"])
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                [
                    f"{key}: unknown option (known options: {', '.join(sorted(known))})"
                    for key in unknown
                ]
            )
        return cls(**dict(data))

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Iterable[str] = ()) -> SDFTConfig:
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = load_yaml(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError([f"{path}: invalid YAML: {exc}"]) from exc
        if not isinstance(data, dict):
            raise ConfigError([f"{path}: the top level must be a mapping of options"])
        return cls.from_dict({**data, **parse_overrides(overrides)})

    def replace(self, **changes: Any) -> SDFTConfig:
        return dataclasses.replace(self, **changes)


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse `key=value` strings; values are read as YAML scalars or lists (`1e-5`, `[a, b]`)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError([f"{item!r}: expected key=value"])
        try:
            overrides[key.strip()] = load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError([f"{key}: cannot parse value {raw!r}: {exc}"]) from exc
    return overrides


def _type_problems(config: SDFTConfig) -> dict[str, str]:
    """Check each option against its annotation so that YAML or JSON input of the wrong type
    is reported by name instead of failing later inside torch. Returns messages by option."""
    problems = {}
    hints = get_type_hints(SDFTConfig)
    for f in fields(SDFTConfig):
        value = getattr(config, f.name)
        expected = hints[f.name]
        if not _matches(value, expected):
            problems[f.name] = f"{f.name}={value!r}: expected {_describe(expected)}"
    return problems


def _matches(value: Any, expected: Any) -> bool:
    origin = get_origin(expected)
    if origin is Literal:
        return value in get_args(expected)
    if origin is tuple:
        return isinstance(value, tuple) and all(isinstance(v, str) and v for v in value)
    if origin is not None and type(None) in get_args(expected):  # Optional[X]
        inner = [a for a in get_args(expected) if a is not type(None)]
        return value is None or any(_matches(value, a) for a in inner)
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    return True


def _describe(expected: Any) -> str:
    origin = get_origin(expected)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(expected))
    if origin is tuple:
        return "a list of module names"
    if origin is not None and type(None) in get_args(expected):
        inner = [a for a in get_args(expected) if a is not type(None)]
        return " or ".join(_describe(a) for a in inner) + " or null"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        expected, str(expected)
    )

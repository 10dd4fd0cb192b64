"""Load a base model and its tokenizer from a local folder, on the device and dtype of a run."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Protocol

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

logger = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# Module-name fragments of vision towers and their projectors in vision-language checkpoints.
VISION_MODULE_MARKERS = (
    "visual",
    "vision_tower",
    "vision_model",
    "vision_encoder",
    "multi_modal_projector",
    "image_newline",
)


class ModelLoadError(RuntimeError):
    """A model folder that cannot be loaded; the message names the folder and the fix."""


class ModelLoader(Protocol):
    """A model class or auto class: anything with `from_pretrained`."""

    def from_pretrained(self, *args: Any, **kwargs: Any) -> Any: ...


class DeviceSettings(Protocol):
    """The two options of `SDFTConfig` that choose where a run computes.

    Members are read-only properties so that frozen dataclasses such as `SDFTConfig` match.
    """

    @property
    def device(self) -> str: ...

    @property
    def dtype(self) -> str: ...


def resolve_device_dtype(config: DeviceSettings) -> tuple[torch.device, torch.dtype]:
    """Resolve `config.device` and `config.dtype` to concrete torch values.

    "auto" picks CUDA in bfloat16 when a GPU is visible, else CPU in float32. float16 is
    rejected: the Gated DeltaNet layers of Qwen3.5 produce NaN gradients in float16.
    """
    device_name = config.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name not in ("cpu", "cuda"):
        raise ValueError(f"device={config.device!r}: expected 'auto', 'cpu' or 'cuda'")
    if device_name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device='cuda' but torch sees no CUDA device; set device to 'cpu' or 'auto', "
            "or check the driver and CUDA_VISIBLE_DEVICES"
        )
    device = torch.device(device_name)

    dtype_name = config.dtype
    if dtype_name == "auto":
        dtype_name = "bfloat16" if device.type == "cuda" else "float32"
    dtype = parse_dtype(dtype_name)
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            "dtype='bfloat16' but this GPU has no bfloat16 support; use dtype='float32'"
        )
    return device, dtype


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map a dtype name to a training dtype, rejecting float16 and anything unknown."""
    if isinstance(name, torch.dtype):
        dtype = name
    else:
        if name in ("float16", "fp16", "half"):
            dtype = torch.float16
        elif name in _DTYPES:
            dtype = _DTYPES[name]
        else:
            raise ValueError(f"dtype={name!r}: expected 'auto', 'float32' or 'bfloat16'")
    if dtype == torch.float16:
        raise ValueError(
            "dtype float16 is not supported: the linear-attention (Gated DeltaNet) layers of "
            "Qwen3.5 give NaN gradients in float16. Use bfloat16 on GPU or float32 on CPU."
        )
    if dtype not in _DTYPES.values():
        raise ValueError(f"dtype={dtype}: expected torch.float32 or torch.bfloat16")
    return dtype


def load_model_and_tokenizer(
    model_dir: str | Path,
    *,
    device: torch.device | str,
    dtype: torch.dtype | str,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the model and tokenizer saved in the local folder `model_dir`.

    Never contacts a model hub and never runs code shipped with the checkpoint. A
    vision-language checkpoint loads with the class named in its config, so the vision tower
    survives a later merged export. Training uses its text path only.

    The pad token becomes `<|endoftext|>`, when the vocabulary has it, if the tokenizer has
    no pad token or pads with its EOS token. Without `<|endoftext|>` a missing pad token
    falls back to the EOS token.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ModelLoadError(
            f"model folder {str(folder)!r} not found: pass the path of a local folder "
            "saved with save_pretrained (hub ids are not downloaded)"
        )
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"model folder {str(folder)!r} has no config.json: pass a folder saved with "
            "save_pretrained, or import the model first (see `sdft models --help`)"
        )
    device = torch.device(device)
    dtype = parse_dtype(dtype)

    model_class = model_class_for(folder)
    load_kwargs: dict[str, Any] = {
        "dtype": dtype,
        "local_files_only": True,
        "trust_remote_code": False,
    }
    if device.type == "cuda":
        # Loading straight onto the GPU avoids a second full copy of the weights in host RAM.
        # NOTE: the CPU test suite never runs this branch.
        load_kwargs["device_map"] = {"": str(device)}
    try:
        model = model_class.from_pretrained(folder, **load_kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"failed to load the model in {str(folder)!r}: {exc}") from exc
    if device.type != "cuda":
        model.to(device=device)

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            folder, local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"failed to load the tokenizer in {str(folder)!r}: {exc}") from exc
    _ensure_pad_token(model, tokenizer)
    _check_vocab(model, tokenizer, folder)
    if not tokenizer.chat_template:
        logger.warning(
            "tokenizer in %s has no chat template; conversations cannot be rendered until "
            "one is added (chat_template.jinja)",
            folder,
        )

    logger.info(
        "loaded %s from %s on %s in %s (%d parameters)",
        type(model).__name__,
        folder,
        device,
        dtype,
        sum(p.numel() for p in model.parameters()),
    )
    return model, tokenizer


def model_class_for(model_dir: str | Path) -> ModelLoader:
    """Pick the class to load a checkpoint with.

    Vision-language checkpoints use the transformers class in their config's
    `architectures`, so the vision tower is loaded and saved back. Text-only checkpoints use
    `AutoModelForCausalLM`.
    """
    folder = Path(model_dir)
    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if "vision_config" not in raw:
        return AutoModelForCausalLM

    names = raw.get("architectures") or []
    for name in names:
        model_class = getattr(transformers, name, None)
        if isinstance(model_class, type) and issubclass(model_class, PreTrainedModel):
            return model_class
    # A vision-language config without a known class name still loads through the
    # image-text-to-text auto class, which picks the class from the config's model_type and
    # raises ValueError (reported as ModelLoadError) for a type it does not know.
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText


def is_vision_language(model: torch.nn.Module) -> bool:
    """Return whether `model` (or the model a PEFT wrapper adapts) has a vision tower."""
    config = getattr(model, "config", None)
    return config is not None and getattr(config, "vision_config", None) is not None


def _ensure_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    # Rollouts end with the EOS token, so a pad token equal to EOS would let padding masks
    # hide real EOS tokens. <|endoftext|> (Qwen, SmolLM2) is the preferred distinct pad.
    preferred = "<|endoftext|>" if "<|endoftext|>" in tokenizer.get_vocab() else None
    if tokenizer.pad_token is None:
        fallback = preferred if preferred is not None else tokenizer.eos_token
        if fallback is None:
            raise ModelLoadError(
                "tokenizer has neither a pad token nor an EOS token; add one to "
                "tokenizer_config.json"
            )
        tokenizer.pad_token = fallback
        logger.info("tokenizer has no pad token; using %r", fallback)
    elif (
        tokenizer.pad_token == tokenizer.eos_token
        and preferred is not None
        and preferred != tokenizer.eos_token
    ):
        logger.info("pad token equals the EOS token %r; using %r", tokenizer.eos_token, preferred)
        tokenizer.pad_token = preferred
    if tokenizer.pad_token == tokenizer.eos_token:
        logger.warning(
            "pad token equals the EOS token %r; mask padding by attention mask, not by token id",
            tokenizer.eos_token,
        )

    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id


def _check_vocab(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, torch.nn.Embedding):
        return
    rows = embedding.weight.shape[0]
    if len(tokenizer) > rows:
        raise ModelLoadError(
            f"tokenizer in {str(folder)!r} has {len(tokenizer)} ids but the model's embedding "
            f"has {rows} rows; the tokenizer does not belong to this model"
        )

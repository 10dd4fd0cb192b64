"""Model building, loading, LoRA adapters and merged export for SDFT runs.

Submodules: `tiny` (random test models), `loading` (local checkpoints), `adapters` (student
and EMA LoRA adapters), `export` (merged bf16 artifact) and `smollm2` (GGUF import).
"""

from sdft.models.adapters import (
    EMA_ADAPTER,
    STUDENT_ADAPTER,
    AdapterReport,
    add_ema_adapter,
    attach_adapter,
    update_ema_adapter,
    use_adapter,
)
from sdft.models.export import MergedReport, save_merged, verify_merged
from sdft.models.loading import (
    ModelLoadError,
    load_model_and_tokenizer,
    parse_dtype,
    resolve_device_dtype,
)
from sdft.models.smollm2 import import_smollm2
from sdft.models.tiny import build_tiny_model

__all__ = [
    "EMA_ADAPTER",
    "STUDENT_ADAPTER",
    "AdapterReport",
    "MergedReport",
    "ModelLoadError",
    "add_ema_adapter",
    "attach_adapter",
    "build_tiny_model",
    "import_smollm2",
    "load_model_and_tokenizer",
    "parse_dtype",
    "resolve_device_dtype",
    "save_merged",
    "update_ema_adapter",
    "use_adapter",
    "verify_merged",
]

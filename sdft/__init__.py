"""Self-Distillation Fine-Tuning (SDFT): on-policy distillation of a LoRA student from the
same base model prompted with an expert reference."""

__version__ = "0.1.0"

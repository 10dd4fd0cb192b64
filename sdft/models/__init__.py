"""Model building, loading, LoRA adapters and merged export for SDFT runs."""

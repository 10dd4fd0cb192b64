"""Training checkpoints that let a run resume exactly where it stopped.

Layout of `output_dir/checkpoints/step-000010/`:

- `adapter/`: peft `save_pretrained` of the trained adapter ("default"); with the EMA
  teacher, the "ema" adapter is in `adapter/ema/`.
- `optimizer.pt`, `scheduler.pt`: their `state_dict()`s.
- `rng.pt`: torch CPU and CUDA generator states, and the trainer's own torch generators.
- `state.json`: step, data position, counters, Python and NumPy RNG states, the trainer's
  own `random.Random` states, and the run's config.

A checkpoint is written to a hidden temporary folder and renamed into place, so a folder
named `step-*` is always complete.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
_FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint folder that is missing, incomplete, or does not fit the current run."""


@dataclass
class DataPosition:
    """Position of the data loader: the next record is `order(epoch)[index]`.

    The order of each epoch is a permutation of the records drawn from `seed` and the
    epoch number, so the position alone restores it.
    """

    epoch: int = 0
    index: int = 0
    seed: int = 0


@dataclass
class TrainState:
    """Counters that a resumed run continues from."""

    step: int = 0
    data: DataPosition = field(default_factory=DataPosition)
    skipped: dict[str, int] = field(default_factory=dict)
    rollouts: int = 0
    truncated_rollouts: int = 0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(
            step=int(data["step"]),
            data=DataPosition(**data["data"]),
            skipped={str(k): int(v) for k, v in data.get("skipped", {}).items()},
            rollouts=int(data.get("rollouts", 0)),
            truncated_rollouts=int(data.get("truncated_rollouts", 0)),
        )


@dataclass
class RandomState:
    """The random sources of a run besides the global ones: named Python and torch RNGs."""

    python: dict[str, random.Random] = field(default_factory=dict)
    torch: dict[str, torch.Generator] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedCheckpoint:
    path: Path
    state: TrainState
    config: dict[str, Any]
    records: int


def checkpoint_path(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR / f"step-{step:06d}"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Return the complete checkpoints of a run, oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in root.iterdir()
        if (match := _STEP_DIR.match(path.name)) and (path / STATE_FILE).is_file()
    ]
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: Path) -> Path | None:
    """Return the checkpoint with the highest step, or None when the run has none."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(
    output_dir: Path,
    *,
    model: PeftModel,
    adapter_names: list[str],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
    random_state: RandomState,
    config: dict[str, Any],
    records: int,
) -> Path:
    """Write the checkpoint of `state.step` atomically and return its folder.

    An existing checkpoint of the same step is replaced.
    """
    final = checkpoint_path(output_dir, state.step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)  # left over from a run that died while writing
    tmp.mkdir()

    model.save_pretrained(str(tmp / "adapter"), selected_adapters=adapter_names)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(_torch_rng_states(random_state), tmp / "rng.pt")
    payload = {
        "format_version": _FORMAT_VERSION,
        "state": state.to_dict(),
        "rng": _python_rng_states(random_state),
        "adapter_names": adapter_names,
        "config": config,
        "records": records,
    }
    (tmp / STATE_FILE).write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")
    _fsync_tree(tmp)

    if final.exists():
        old = final.parent / f".{final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)
    logger.info("saved checkpoint of step %d to %s", state.step, final)
    return final


def read_checkpoint(path: Path) -> LoadedCheckpoint:
    """Read a checkpoint's `state.json` without touching model or optimizer."""
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(
            f"{path} is not a checkpoint: {STATE_FILE} is missing; pass a folder such as "
            f"<output>/{CHECKPOINTS_DIR}/step-000100"
        )
    payload = json.loads(state_file.read_text(encoding="utf-8"))
    if payload.get("format_version") != _FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {payload.get('format_version')!r} is not supported "
            f"(expected {_FORMAT_VERSION})"
        )
    return LoadedCheckpoint(
        path=path,
        state=TrainState.from_dict(payload["state"]),
        config=payload["config"],
        records=int(payload["records"]),
    )


def load_checkpoint(
    path: Path,
    *,
    model: PeftModel,
    adapter_names: list[str],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    random_state: RandomState,
) -> LoadedCheckpoint:
    """Restore adapter weights, optimizer, scheduler and every RNG from `path`.

    The global RNGs (Python, NumPy, torch CPU and CUDA) are set too, so call this after
    anything else that draws random numbers during setup.
    """
    loaded = read_checkpoint(path)
    payload = json.loads((loaded.path / STATE_FILE).read_text(encoding="utf-8"))
    saved_adapters = payload["adapter_names"]
    if sorted(saved_adapters) != sorted(adapter_names):
        raise CheckpointError(
            f"{path} contains adapters {saved_adapters} but this run has {adapter_names}; "
            "resume with the same `teacher` option as the original run"
        )

    for name in adapter_names:
        folder = loaded.path / "adapter" if name == "default" else loaded.path / "adapter" / name
        weights = load_file(folder / "adapter_model.safetensors")
        result = set_peft_model_state_dict(model, weights, adapter_name=name)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise CheckpointError(
                f"{folder}: {len(unexpected)} adapter weights do not match the model "
                f"(first: {unexpected[0]}); resume with the same model and LoRA options"
            )

    optimizer.load_state_dict(torch.load(loaded.path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(loaded.path / "scheduler.pt", weights_only=True))
    _restore_python_rng(payload["rng"], random_state)
    _restore_torch_rng(torch.load(loaded.path / "rng.pt", weights_only=True), random_state)
    logger.info("restored checkpoint of step %d from %s", loaded.state.step, loaded.path)
    return loaded


# RNG states.


def _python_rng_states(random_state: RandomState) -> dict[str, Any]:
    states: dict[str, Any] = {
        "python": _encode_python_state(random.getstate()),
        "named": {
            name: _encode_python_state(rng.getstate()) for name, rng in random_state.python.items()
        },
    }
    try:
        import numpy as np
    except ImportError:
        states["numpy"] = None
    else:
        numpy_state = np.random.get_state(legacy=True)
        # legacy=True returns a dict only for a bit generator other than MT19937, which the
        # global RandomState does not use.
        if not isinstance(numpy_state, tuple):
            raise CheckpointError(
                f"np.random.get_state(legacy=True) returned a {type(numpy_state).__name__}, "
                "expected the MT19937 state tuple; the checkpoint cannot store it"
            )
        kind, keys, pos, has_gauss, cached = numpy_state
        states["numpy"] = [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    return states


def _restore_python_rng(states: dict[str, Any], random_state: RandomState) -> None:
    random.setstate(_decode_python_state(states["python"]))
    for name, rng in random_state.python.items():
        if name not in states["named"]:
            raise CheckpointError(f"the checkpoint has no state for the RNG {name!r}")
        rng.setstate(_decode_python_state(states["named"][name]))
    if states.get("numpy") is not None:
        import numpy as np

        kind, keys, pos, has_gauss, cached = states["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _encode_python_state(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]


def _decode_python_state(data: list[Any]) -> tuple[Any, ...]:
    version, internal, gauss_next = data
    return (version, tuple(internal), gauss_next)


def _torch_rng_states(random_state: RandomState) -> dict[str, Any]:
    states: dict[str, Any] = {
        "cpu": torch.get_rng_state(),
        "named": {name: gen.get_state() for name, gen in random_state.torch.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_torch_rng(states: dict[str, Any], random_state: RandomState) -> None:
    torch.set_rng_state(states["cpu"])
    cuda_states = states.get("cuda")
    if cuda_states is not None:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_states):
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning(
                "the checkpoint has CUDA RNG states for %d devices, this machine has %d; "
                "sampling after resume will differ from the original run",
                len(cuda_states),
                torch.cuda.device_count() if torch.cuda.is_available() else 0,
            )
    for name, generator in random_state.torch.items():
        if name not in states["named"]:
            raise CheckpointError(f"the checkpoint has no state for the generator {name!r}")
        generator.set_state(states["named"][name])


# Durability.


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    for path in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""Atomic, resumable checkpoints.

A checkpoint folder ``step-000042`` holds the model (or LoRA adapter) in safetensors through
``save_pretrained``, the processor, and ``trainer_state.pt`` with optimizer, scheduler, RNG states,
the data position and the step. It is written to a temporary folder and renamed, so a crash
leaves either the previous checkpoint or the new one, never half of one. Loading uses
``weights_only=True``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

PREFIX = "step-"


def _rng_state() -> dict[str, Any]:
    # Sampling and data order use their own seeded generators; the global torch RNGs cover
    # dropout and anything a user's code draws.
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_atomic(target: Path, write: Any) -> Path:
    """Call ``write(tmp_dir)`` then rename ``tmp_dir`` to ``target`` (replacing it)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model: torch.nn.Module,
    processor: Any,
    trainer_state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write ``run_dir/step-NNNNNN`` atomically and delete all but the newest ``keep_last``."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        torch.save({**trainer_state, "step": step, "rng": _rng_state()}, tmp / "trainer_state.pt")

    path = write_atomic(Path(run_dir) / f"{PREFIX}{step:06d}", write)
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return []
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """Read ``trainer_state.pt`` (tensors and plain data only) and restore the RNG states."""
    path = Path(checkpoint) / "trainer_state.pt"
    if not path.exists():
        raise FileNotFoundError(f"{checkpoint} is not a checkpoint: {path.name} is missing")
    state = torch.load(path, weights_only=True)
    _set_rng_state(state.pop("rng"))
    return state

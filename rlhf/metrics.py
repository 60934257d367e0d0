"""Metrics go to ``metrics.jsonl`` always, and to TensorBoard / W&B / trackio when asked."""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BACKENDS = ("tensorboard", "wandb", "trackio")


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"reward": {"acc": {"mean": 1}}}`` → ``{"reward/acc/mean": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


class MetricsLogger:
    def __init__(self, run_dir: Path, report_to: list[str] = (), config: dict | None = None):
        unknown = sorted(set(report_to) - set(BACKENDS))
        if unknown:
            raise ValueError(f"run.report_to: unknown {unknown}; choose from {list(BACKENDS)}")
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tensorboard = self._wandb = self._trackio = None
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if "wandb" in report_to:
            import wandb

            self._wandb = wandb.init(dir=str(run_dir), config=config or {})
        if "trackio" in report_to:
            import trackio

            self._trackio = trackio
            trackio.init(project=Path(run_dir).name, config=config or {})

    def truncate_after(self, step: int) -> None:
        """Forget logged steps after ``step``: a run started afresh (0) replaces an earlier run's
        log in its folder; a resumed run replaces the steps it is about to redo."""
        if not self.path.exists():
            return
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        flat = flatten(metrics)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **flat}, default=_jsonable) + "\n")
        numeric = {
            k: float(v)
            for k, v in flat.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        if self._tensorboard is not None:
            for key, value in numeric.items():
                self._tensorboard.add_scalar(key, value, step)
            self._tensorboard.flush()
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)
        if self._trackio is not None:
            self._trackio.log(numeric, step=step)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._trackio is not None:
            self._trackio.finish()


def _jsonable(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


class Timer:
    """Accumulates wall time per named phase: ``with timer("generation"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

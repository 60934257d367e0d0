"""What a run reports: metrics reduced over micro-batches and processes, logged on the main
process to ``metrics.jsonl`` (always) and to the trackers of ``run.report_to``; sample
completions to ``samples.jsonl``; progress on the terminal or, in a log file, as plain lines.

The trackers are accelerate's (``accelerate.tracking``: TensorBoard, W&B, trackio), started with
the resolved recipe as their configuration, as ``Accelerator.init_trackers`` starts them; they are
built here rather than through the trainers' ``Accelerator`` so that the three trainers share one
code path and an ``Accelerator`` passed in by a caller need not know the run folder.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rlhf.config import TRACKERS, ConfigError

SAMPLES_TABLE = "samples"


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


# ------------------------------------------------------------------ reduction
class StepMetrics:
    """One step's metrics accumulated over micro-batches, then reduced over processes.

    ``mean`` entries are weighted means (per-token statistics weighted by the micro-batch's
    trained tokens); ``total`` entries add up (a micro-batch's share of a loss normalised by
    whole-batch counts: the batch's loss is the sum of the shares); ``maximum`` entries take the
    largest. A process may hold no micro-batch, so the reduction gathers each process's entries
    by name rather than summing tensors of a fixed layout.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[str, float, float]] = {}  # name → (kind, value, weight)

    def mean(self, stats: dict[str, float], weight: float = 1.0) -> None:
        for key, value in stats.items():
            self._add(key, "mean", float(value) * weight, weight)

    def total(self, stats: dict[str, float], scale: float = 1.0) -> None:
        for key, value in stats.items():
            self._add(key, "total", float(value) * scale, 0.0)

    def maximum(self, stats: dict[str, float]) -> None:
        for key, value in stats.items():
            self._add(key, "max", float(value), 0.0)

    def _add(self, key: str, kind: str, value: float, weight: float) -> None:
        if key in self._entries:
            known, old, old_weight = self._entries[key]
            if known != kind:
                raise ValueError(f"metric {key!r} added as {known} and as {kind}")
            value = max(old, value) if kind == "max" else old + value
            weight += old_weight
        self._entries[key] = (kind, value, weight)

    def reduce(self, accelerator: Any = None) -> dict[str, float]:
        """The step's values over all processes (every process must call this)."""
        parts = [self._entries]
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            parts = gather_object([self._entries])
        merged = StepMetrics()
        for entries in parts:
            for key, (kind, value, weight) in entries.items():
                merged._add(key, kind, value, weight)
        return {
            key: (value / weight if weight > 0 else math.nan) if kind == "mean" else value
            for key, (kind, value, weight) in merged._entries.items()
        }


def explained_variance(sums: list[float]) -> float:
    """``1 - Var(returns - values) / Var(returns)`` from ``[n, Σr, Σr², Σd, Σd²]`` (``d`` = returns
    - values over the trained tokens): 1 when the critic predicts the returns, 0 when it
    predicts no better than their mean, negative when worse. NaN without variance to explain."""
    n, r, r2, d, d2 = sums
    if n < 2:
        return math.nan
    var_returns = r2 / n - (r / n) ** 2
    var_residual = d2 / n - (d / n) ** 2
    return 1.0 - var_residual / var_returns if var_returns > 1e-12 else math.nan


# ------------------------------------------------------------------ logging
def tracker_config(config: Any) -> dict[str, bool | int | float | str]:
    """The resolved recipe as the flat ``{"algorithm/beta": 0.04, ...}`` trackers take as
    hyper-parameters (lists and None written as text: TensorBoard's hparams take scalars only),
    credentials masked (a judge URL's ``user:key@``, a key pasted into ``api_key_env``)."""
    from omegaconf import OmegaConf

    from rewards.redact import redact

    values = flatten(redact(OmegaConf.to_container(OmegaConf.structured(config), resolve=True)))
    return {
        k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in values.items()
    }


class MetricsLogger:
    """One run's log. On the main process: ``metrics.jsonl`` always, ``samples.jsonl`` for sample
    completions, and the trackers named in ``report_to`` started with ``config`` (the resolved
    recipe) under ``project``; on other processes, nothing (the metrics are reduced before)."""

    def __init__(
        self,
        run_dir: Path,
        report_to: list[str] = (),
        *,
        config: Any = None,
        project: str = "speech-rlhf",
        main_process: bool = True,
    ):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.samples_path = self.run_dir / "samples.jsonl"
        self.main_process = main_process
        self.trackers: list[Any] = []
        if not main_process:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        except OSError as err:
            raise ConfigError(
                f"run.output_dir: cannot write {self.path}: {err.strerror or err}"
            ) from err
        if list(report_to) == ["all"]:  # as TRL: every tracker that is installed
            from accelerate.tracking import get_available_trackers

            available = {str(t) for t in get_available_trackers()}
            report_to = [name for name in TRACKERS if name in available]
        self.trackers = [self._tracker(name, project) for name in report_to]
        for tracker in self.trackers:
            tracker.start()
            if config is not None:
                tracker.store_init_configuration(tracker_config(config))

    def _tracker(self, name: str, project: str) -> Any:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

        if name not in LOGGER_TYPE_TO_CLASS:
            raise ConfigError(f"run.report_to: unknown tracker {name!r}")
        if name not in [str(t) for t in get_available_trackers()]:
            raise ConfigError(f"run.report_to: {name} is not installed (pip install {name})")
        if name == "tensorboard":
            return LOGGER_TYPE_TO_CLASS[name]("tensorboard", self.run_dir)  # run_dir/tensorboard
        kwargs = {"name": self.run_dir.name}
        if name == "wandb":
            kwargs["dir"] = str(self.run_dir)
        return LOGGER_TYPE_TO_CLASS[name](project, **kwargs)

    def truncate_after(self, step: int) -> None:
        """Forget logged steps after ``step``: a run started afresh (0) replaces an earlier run's
        log in its folder; a resumed run replaces the steps it is about to redo."""
        if not self.main_process:
            return
        for path in (self.path, self.samples_path):
            if path.exists():
                lines = [line for line in path.read_text().splitlines() if line.strip()]
                kept = [line for line in lines if json.loads(line)["step"] <= step]
                path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.main_process:
            return
        flat = flatten(metrics)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **flat}, default=_jsonable) + "\n")
        numeric = {
            k: float(v)
            for k, v in flat.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        for tracker in self.trackers:
            tracker.log(numeric, step=step)

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Sample completions (``{prompt_id, think, answer, rewards: {name: score}, total}``) to
        ``samples.jsonl``, and as a table to the trackers that have tables (W&B)."""
        if not self.main_process or not rows:
            return
        with self.samples_path.open("a") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **row}, default=_jsonable) + "\n")
        names = list(dict.fromkeys(name for row in rows for name in row.get("rewards", {})))
        columns = ["step", *(k for k in rows[0] if k != "rewards"), *names]
        data = [
            [step, *(v for k, v in row.items() if k != "rewards")]
            + [row.get("rewards", {}).get(name) for name in names]
            for row in rows
        ]
        for tracker in self.trackers:
            if hasattr(tracker, "log_table"):
                tracker.log_table(SAMPLES_TABLE, columns=columns, data=data, step=step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def _jsonable(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------ time and progress
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


class StepProgress:
    """Progress of a training loop, on the main process: a rich bar on a terminal; elsewhere (a
    batch job's log, ``rlhf demo > log``), where a bar prints nothing until it ends, a plain line
    every ``every`` steps and at the last: ``RL step 20/100  reward 0.512  accuracy 0.400  1.2
    s/step  ETA 0:01:38``.

    ``with StepProgress("RL", total, completed=start) as progress: progress.update(step, {...})``
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        completed: int = 0,
        every: int = 10,
        enabled: bool = True,
        stream: Any = None,
    ):
        self.label, self.total, self.every, self.enabled = label, total, max(every, 1), enabled
        self.stream = stream or sys.stdout
        self.first_step, self.started = completed, time.perf_counter()
        self.last_step, self.last_time = completed, self.started
        self._bar = self._task = None
        if enabled and self.stream.isatty():
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn(f"[bold]{label}[/] step {{task.completed}}/{{task.total}}"),
                BarColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self._task = self._bar.add_task(label, total=total, completed=completed, status="")

    def __enter__(self) -> StepProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()

    def update(self, step: int, values: dict[str, float]) -> None:
        """``step`` is done; ``values`` (``{"reward": 0.5, ...}``) describe it."""
        if not self.enabled:
            return
        status = "  ".join(f"{k} {v:.3f}" for k, v in values.items() if v is not None)
        if self._bar is not None:
            self._bar.update(self._task, completed=step, status=status)
            return
        if step % self.every and step != self.total:
            return
        now = time.perf_counter()
        per_step = (now - self.last_time) / max(step - self.last_step, 1)
        overall = (now - self.started) / max(step - self.first_step, 1)
        eta = _clock(overall * (self.total - step))
        line = f"{self.label} step {step}/{self.total}  {status}  {per_step:.2f} s/step  ETA {eta}"
        print(line.replace("    ", "  "), file=self.stream, flush=True)
        self.last_step, self.last_time = step, now


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

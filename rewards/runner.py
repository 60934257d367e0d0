"""Score a batch with a weighted list of rewards, and never let one reward crash training.

Each reward runs concurrently with the others: async functions on the event loop, plain
functions on daemon threads. An exception, a wrong-length return, a timeout, or a score that is
not a usable number (see :func:`score_value`) turns only that reward's scores for the samples
concerned into ``None``; the loss is counted and its first message kept in the metrics, with any
credentials masked. ``None`` is "does not apply", excluded from the weighted total and from the
statistics, never read as 0.

A timed-out plain function cannot be stopped: its thread is abandoned and finishes (or not) in the
background. An async function that blocks without awaiting stalls the whole runner; make
blocking async code await ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import decimal
import inspect
import logging
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rewards.redact import redact
from rewards.registry import get_reward
from rewards.text import completion_text
from rewards.threads import run_in_daemon_thread

logger = logging.getLogger(__name__)

# Keys of a recipe entry that configure the spec; every other key is a parameter of the reward.
SPEC_KEYS = ("name", "weight", "timeout_s", "alias", "where", "as_messages", "remote")

MAX_ABS_SCORE = 1e6
"""Largest score magnitude taken as a reward: beyond it a score is a bug (an unscaled count, a
sentinel like 1e30), and one such value would swamp every advantage of its batch."""


@dataclass
class RewardSpec:
    """One weighted reward of a recipe.

    Args:
        name: registered name, ``"package.module:function"``, or the function itself.
        weight: factor in the total; 0 keeps the reward as a logged metric only.
        params: keyword arguments of the reward (``max_words``, ``model``, ...).
        timeout_s: seconds before the call is given up (None: wait forever).
        alias: key in results and metrics (default: the name); needed to use one reward twice.
        where: only score rows whose columns hold these values, e.g. ``{task: transcribe}`` or
            ``{task: [gender, pitch]}``; other rows get None.
        as_messages: pass completions in TRL's conversational form (``[{"role": "assistant",
            "content": text}]``), for functions written for it such as
            ``trl.rewards.think_format_reward``.
        remote: run the reward in one shared Ray actor with these options (``num_cpus``,
            ``num_gpus``, ``name``); see :func:`rewards.remote.remote_reward`.
    """

    name: str | Callable[..., Any]
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = 60.0
    alias: str | None = None
    where: dict[str, Any] | None = None
    as_messages: bool = False
    remote: dict[str, Any] | None = None

    def __repr__(self) -> str:  # parameters may hold a judge URL with credentials
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return f"RewardSpec({', '.join(f'{k}={v!r}' for k, v in redact(fields).items())})"

    @property
    def key(self) -> str:
        if self.alias:
            return self.alias
        if isinstance(self.name, str):
            return self.name
        return getattr(self.name, "__name__", type(self.name).__name__)

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any] | str, origin: str = "reward") -> RewardSpec:
        """Read a recipe entry ``{name: ..., weight: ..., <params>}``; errors name ``origin``."""
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, Mapping):
            raise ValueError(f"{origin}: expected a mapping with a 'name', got {entry!r}")
        entry = dict(entry)
        if not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ValueError(f"{origin}: missing 'name' (keys: {sorted(entry)})")
        try:
            weight = float(entry.get("weight", 1.0))
            timeout = entry.get("timeout_s", 60.0)
            timeout = None if timeout is None else float(timeout)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{origin}: 'weight' and 'timeout_s' must be numbers ({e})") from None
        if entry.get("remote") is True:
            entry["remote"] = {}
        for key in ("where", "remote"):
            if entry.get(key) is not None and not isinstance(entry[key], Mapping):
                raise ValueError(f"{origin}: {key!r} must be a mapping, got {entry[key]!r}")
        return cls(
            name=entry["name"],
            weight=weight,
            params={k: v for k, v in entry.items() if k not in SPEC_KEYS},
            timeout_s=timeout,
            alias=entry.get("alias"),
            where=dict(entry["where"]) if entry.get("where") else None,
            as_messages=bool(entry.get("as_messages", False)),
            remote=dict(entry["remote"]) if entry.get("remote") is not None else None,
        )


def load_specs(source: str | os.PathLike | Sequence[Any] | Mapping[str, Any]) -> list[RewardSpec]:
    """Reward specs from a YAML file or parsed data: a list of entries, or ``{rewards: [...]}``."""
    origin, data = "rewards", source
    if isinstance(source, (str, os.PathLike)):
        origin = str(source)
        try:
            data = yaml.safe_load(Path(source).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"{origin}: cannot read reward specs: {e}") from None
    if isinstance(data, Mapping):
        if "rewards" not in data:
            raise ValueError(f"{origin}: expected a list or a 'rewards' key (keys: {sorted(data)})")
        data = data["rewards"]
    if not isinstance(data, Sequence) or isinstance(data, str):
        raise ValueError(f"{origin}: expected a list of reward specs, got {type(data).__name__}")
    return [RewardSpec.from_dict(entry, f"{origin}: rewards[{i}]") for i, entry in enumerate(data)]


@dataclass
class RewardResult:
    """Scores of one batch.

    ``per_reward[key][i]`` is the unweighted score of sample i (None: not applicable or lost to an
    error); ``total[i]`` the combination over the rewards that apply (None when none does);
    ``metrics[key]`` holds ``mean``, ``std`` (over applicable samples, None when there are none),
    ``applicable`` (fraction of the batch), ``errors`` (samples lost to errors), ``first_error``.
    """

    per_reward: dict[str, list[float | None]]
    total: list[float | None]
    metrics: dict[str, dict[str, Any]]

    def per_sample(self) -> list[dict[str, float | None]]:
        """``{key: score}`` for each sample."""
        return [{k: v[i] for k, v in self.per_reward.items()} for i in range(len(self.total))]

    def flat_metrics(self, prefix: str = "rewards/") -> dict[str, float]:
        """Numeric metrics for loggers: ``{prefix}{key}/{mean,std,applicable,errors}`` and total."""
        flat = {}
        stats = {**self.metrics, "total": _stats(self.total, 0, None)}
        for key, values in stats.items():
            for stat in ("mean", "std", "applicable", "errors"):
                if values.get(stat) is not None and not (key == "total" and stat == "errors"):
                    flat[f"{prefix}{key}/{stat}"] = float(values[stat])
        return flat

    @classmethod
    def concat(cls, results: Sequence[RewardResult]) -> RewardResult:
        """One result for several batches scored with the same runner."""
        keys = list(results[0].per_reward) if results else []
        per_reward = {k: [v for r in results for v in r.per_reward[k]] for k in keys}
        metrics = {}
        for k in keys:
            errors = sum(r.metrics[k]["errors"] for r in results)
            first = next(
                (r.metrics[k]["first_error"] for r in results if r.metrics[k]["first_error"]), None
            )
            metrics[k] = _stats(per_reward[k], errors, first)
        return cls(per_reward, [t for r in results for t in r.total], metrics)


class RewardRunner:
    """Evaluate weighted rewards on a batch: ``runner(prompts, completions, **columns)``.

    Args:
        specs: :class:`RewardSpec` objects, recipe entries (mappings or names) or functions.
        combine: ``"sum"`` — Σ weight·score over the rewards that apply; ``"mean"`` — the same
            divided by Σ|weight| of those rewards.
        max_workers: rewards running at the same time.

    Rewards are built (models loaded, parameters checked) here, once.
    """

    def __init__(
        self,
        specs: Sequence[RewardSpec | Mapping[str, Any] | str | Callable[..., Any]],
        combine: str = "sum",
        max_workers: int = 8,
    ):
        if combine not in ("sum", "mean"):
            raise ValueError(f"combine must be 'sum' or 'mean', got {combine!r}")
        self.specs = [_as_spec(s, i) for i, s in enumerate(specs)]
        keys = [spec.key for spec in self.specs]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"rewards used twice: {duplicates}; give each an 'alias'")
        self.combine = combine
        self.max_workers = max(1, int(max_workers))
        self.functions = {spec.key: _build(spec) for spec in self.specs}

    @property
    def keys(self) -> list[str]:
        return [spec.key for spec in self.specs]

    def __call__(
        self, prompts: Sequence[Any] | None, completions: Sequence[Any], **kwargs: Any
    ) -> RewardResult:
        coro = self.ascore(prompts, completions, **kwargs)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        # Called from inside an event loop (a notebook, an async Ray actor): use a loop of our own.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, coro).result()

    async def ascore(
        self, prompts: Sequence[Any] | None, completions: Sequence[Any], **kwargs: Any
    ) -> RewardResult:
        """The async form of ``__call__``."""
        n = len(completions)
        prompts = [None] * n if prompts is None else list(prompts)
        completions = list(completions)
        limit = asyncio.Semaphore(self.max_workers)
        outcomes = await asyncio.gather(
            *(self._score(spec, limit, prompts, completions, kwargs) for spec in self.specs)
        )
        per_reward, metrics = {}, {}
        for spec, (values, errors, first_error) in zip(self.specs, outcomes, strict=True):
            per_reward[spec.key] = values
            metrics[spec.key] = _stats(values, errors, first_error)
            if errors:
                logger.warning(
                    "reward %s: %d of %d samples lost: %s", spec.key, errors, n, first_error
                )
        return RewardResult(per_reward, self._combine(per_reward, n), metrics)

    def _combine(self, per_reward: dict[str, list[float | None]], n: int) -> list[float | None]:
        total: list[float | None] = []
        for i in range(n):
            terms = [
                (spec.weight, per_reward[spec.key][i])
                for spec in self.specs
                if spec.weight != 0 and per_reward[spec.key][i] is not None
            ]
            if not terms:
                total.append(None)
                continue
            value = sum(w * v for w, v in terms)
            if self.combine == "mean":
                value /= sum(abs(w) for w, _ in terms)
            total.append(value)
        return total

    async def _score(
        self,
        spec: RewardSpec,
        limit: asyncio.Semaphore,
        prompts: list[Any],
        completions: list[Any],
        kwargs: dict[str, Any],
    ) -> tuple[list[float | None], int, str | None]:
        """One reward over the batch: (scores, samples lost to errors, first error message)."""
        n = len(completions)
        values: list[float | None] = [None] * n
        try:
            rows = _select(spec.where, kwargs, n)
        except KeyError as e:
            return values, n, _describe(e)
        if not rows:
            return values, 0, None

        def take(seq: Sequence[Any]) -> list[Any]:
            return [seq[i] for i in rows]

        sub_completions = take(completions)
        if spec.as_messages:
            sub_completions = [
                [{"role": "assistant", "content": completion_text(c)}] for c in sub_completions
            ]
        sub_kwargs = {k: take(v) if _per_sample(v, n) else v for k, v in kwargs.items()}
        fn = self.functions[spec.key]
        try:
            async with limit:
                ok, out = await asyncio.wait_for(
                    _invoke(fn, take(prompts), sub_completions, sub_kwargs), spec.timeout_s
                )
        except asyncio.TimeoutError:
            return values, len(rows), f"timed out after {spec.timeout_s:g} s"
        if not ok:
            return values, len(rows), _describe(out)
        if isinstance(out, (str, bytes, Mapping)) or not hasattr(out, "__len__"):
            return values, len(rows), f"returned {type(out).__name__}, not a list of scores"
        if len(out) != len(rows):
            return values, len(rows), f"returned {len(out)} scores for {len(rows)} completions"
        errors, first_error = 0, None
        for i, score in zip(rows, out, strict=True):
            try:
                values[i] = score_value(score)
            except ValueError as e:
                errors += 1
                first_error = first_error or f"sample {i}: {e}"
        return values, errors, first_error


def score_value(score: Any) -> float | None:
    """One returned score as a float, None for "does not apply"; ``ValueError`` saying why not.

    Accepted: real numbers (``int``, ``float``, ``Decimal``, numpy scalars, 0-d arrays and
    tensors) and bools (1.0 / 0.0, as TRL takes them). Refused: strings (even ``"0.5"``: a reward
    returning text is broken), complex numbers, containers and other objects, NaN, infinities,
    and magnitudes over ``MAX_ABS_SCORE``.
    """
    if score is None:
        return None
    if getattr(score, "ndim", None) == 0 and hasattr(score, "item"):
        score = score.item()  # a 0-d numpy array or torch tensor
    if not isinstance(score, (numbers.Real, decimal.Decimal)):
        shown = repr(score)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ValueError(f"returned {type(score).__name__} {shown}, not a number")
    value = float(score)
    if not math.isfinite(value):
        raise ValueError(f"returned {value}")
    if abs(value) > MAX_ABS_SCORE:
        raise ValueError(f"returned {value:g}, beyond the ±{MAX_ABS_SCORE:g} a score may reach")
    return value


async def _invoke(fn: Callable[..., Any], prompts, completions, kwargs) -> tuple[bool, Any]:
    """Call ``fn`` with keywords, as TRL does; (True, result) or (False, exception)."""
    try:
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__):
            out = await fn(prompts=prompts, completions=completions, **kwargs)
        else:
            out = await run_in_daemon_thread(fn, prompts=prompts, completions=completions, **kwargs)
            if inspect.isawaitable(out):
                out = await out
        return True, out
    except Exception as e:
        return False, e


def _as_spec(
    spec: RewardSpec | Mapping[str, Any] | str | Callable[..., Any], index: int
) -> RewardSpec:
    if isinstance(spec, RewardSpec):
        return spec
    if callable(spec):
        return RewardSpec(spec)
    return RewardSpec.from_dict(spec, f"rewards[{index}]")


def _build(spec: RewardSpec) -> Callable[..., Any]:
    if spec.remote is not None:
        from rewards.remote import remote_reward  # imports ray: only when asked for

        return remote_reward(spec.name, params=spec.params, **spec.remote)
    return get_reward(spec.name, **spec.params)


def _select(where: Mapping[str, Any] | None, kwargs: Mapping[str, Any], n: int) -> list[int]:
    """Indices of the rows whose columns match ``where`` (a value or a list of values each)."""
    rows = list(range(n))
    for col, allowed in (where or {}).items():
        if col not in kwargs:
            raise KeyError(f"where: no column {col!r} in the batch (columns: {sorted(kwargs)})")
        allowed = list(allowed) if isinstance(allowed, (list, tuple, set)) else [allowed]
        rows = [i for i in rows if kwargs[col][i] in allowed]
    return rows


def _per_sample(value: Any, n: int) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) and len(value) == n


def _describe(error: BaseException) -> str:
    """``Type: message``, credentials masked (a judge's URL may be in the message)."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    return redact(f"{type(error).__name__}: {message}")


def _stats(values: list[float | None], errors: int, first_error: str | None) -> dict[str, Any]:
    present = [v for v in values if v is not None]
    return {
        "mean": float(np.mean(present)) if present else None,
        "std": float(np.std(present)) if present else None,
        "applicable": len(present) / len(values) if values else 0.0,
        "errors": errors,
        "first_error": first_error,
    }

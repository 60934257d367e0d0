"""Runs that cannot learn say so: a watchdog over each RL step's learning signal.

A step teaches the policy something only if some group survived selection, some sample got a
reward, some completion token is trained and some advantage on it is non-zero. A recipe can pass
every load-time check and still have none of these at run time: every reward raises (a judge
that is down, a reward reading a column the data lacks), dynamic sampling drops every group (a
policy that gets everything right, or wrong), ``mask_truncated`` with completions that all hit
``max_new_tokens``, rewards that score every completion alike. Such a run logs loss 0 and grad
0 and looks alive.

The watchdog reads each step's metrics. The first step without signal prints a warning naming
the cause (a step or two of it is normal early on: dynamic sampling may drop every group while
the policy is still uniform); after ``patience`` steps in a row without signal the run stops
with ``NoLearningSignal`` (the CLI's one-line error, exit 2) naming the cause. ``patience`` 0
only warns.
"""

from __future__ import annotations

import logging
from typing import Any

from rlhf.config import ConfigError

logger = logging.getLogger(__name__)


class NoLearningSignal(ConfigError):
    """A run whose recent steps had nothing to learn from; the message names the cause."""


def missing_signal(metrics: dict[str, Any], mask_truncated: bool = False) -> str | None:
    """Why the step with these metrics (the RL trainer's) teaches nothing, or None if it does.

    Causes are checked from the earliest stage of the step to the last, so the root one is named.
    """
    rewarded = metrics.get("reward_total", {}).get("applicable")
    if rewarded == 0:
        errors = [
            f"{name}: {stats['first_error']}"
            for name, stats in metrics.get("reward", {}).items()
            if isinstance(stats, dict) and stats.get("first_error")
        ]
        if errors:
            return f"every reward failed on every sample (first error: {errors[0]})"
        return "no reward applies to any sample (every reward returned None)"
    if metrics.get("groups_kept") == 0:
        return (
            "every group was dropped by group selection (algorithm.dynamic_sampling drops groups "
            "whose completions all score alike; algorithm.difficulty_band those outside the band)"
        )
    if metrics.get("trained_tokens") == 0:
        truncated = metrics.get("finish", {}).get("length", 0.0)
        if mask_truncated and truncated == 1.0:
            return (
                "every completion was cut at rollout.sampling.max_new_tokens and masked "
                "(algorithm.mask_truncated): raise max_new_tokens"
            )
        return "no completion token is trained (every loss mask is empty)"
    if metrics.get("advantage_abs_max") == 0:
        return (
            "every advantage is 0 (all completions of each prompt scored alike): use rewards "
            "that tell completions apart, or algorithm.dynamic_sampling to skip such groups"
        )
    if metrics.get("grad_norm") == 0:
        return "the policy's gradient is 0"
    return None


class LearningSignalWatchdog:
    """Warns at the first step without learning signal of each cause; stops after ``patience``
    such steps in a row (0: never stops)."""

    def __init__(self, patience: int, *, mask_truncated: bool = False):
        self.patience, self.mask_truncated = patience, mask_truncated
        self.silent_steps = 0
        self.warned: set[str] = set()

    def observe(self, step: int, metrics: dict[str, Any]) -> None:
        cause = missing_signal(metrics, self.mask_truncated)
        if cause is None:
            self.silent_steps = 0
            return
        self.silent_steps += 1
        if self.patience and self.silent_steps >= self.patience:
            raise NoLearningSignal(
                f"stopped at step {step}: {self.silent_steps} steps in a row without learning "
                f"signal: {cause} (run.max_steps_without_signal={self.patience})"
            )
        if cause not in self.warned:
            self.warned.add(cause)
            stop = (
                f"the run stops after {self.patience} such steps in a row"
                if self.patience
                else "run.max_steps_without_signal=0: the run goes on"
            )
            logger.warning("WARNING step %d has nothing to learn from: %s; %s", step, cause, stop)

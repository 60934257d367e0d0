"""Runs that cannot learn stop (or warn) naming the cause, instead of logging zeros and exiting 0."""

from __future__ import annotations

import logging
import re

import pytest
from test_trainer import tiny_rl_config

from rewards import reward
from rlhf.learning_signal import LearningSignalWatchdog, NoLearningSignal, missing_signal
from rlhf.trainer import RLTrainer

LEARNING = {
    "reward_total": {"applicable": 1.0},
    "groups_kept": 2,
    "trained_tokens": 40,
    "advantage_abs_max": 0.7,
    "grad_norm": 0.3,
}


@reward("signal_test_broken")
def broken(prompts, completions, **kwargs):
    raise ConnectionError("judge at http://judge:8000 refused the connection")


@reward("signal_test_flat")
def flat(prompts, completions, **kwargs):
    return [1.0] * len(completions)


@pytest.mark.parametrize(
    "change, cause",
    [
        (
            {"reward_total": {"applicable": 0.0}, "reward": {"r": {"first_error": "KeyError: x"}}},
            r"every reward failed on every sample \(first error: r: KeyError: x\)",
        ),
        ({"reward_total": {"applicable": 0.0}}, "no reward applies to any sample"),
        ({"groups_kept": 0}, "every group was dropped by group selection"),
        ({"trained_tokens": 0, "finish": {"length": 1.0}}, "cut at rollout.sampling.max_new"),
        ({"advantage_abs_max": 0.0}, "every advantage is 0"),
        ({"grad_norm": 0.0}, "gradient is 0"),
    ],
)
def test_each_cause_is_named(change, cause):
    assert missing_signal(LEARNING) is None
    found = missing_signal({**LEARNING, **change}, mask_truncated=True)
    assert found is not None and re.search(cause, found), found


def test_the_watchdog_warns_once_then_stops_after_patience_steps_in_a_row(caplog):
    watchdog = LearningSignalWatchdog(3)
    silent = {**LEARNING, "groups_kept": 0}
    with caplog.at_level(logging.WARNING, logger="rlhf.learning_signal"):
        watchdog.observe(1, silent)
        watchdog.observe(2, silent)
        watchdog.observe(3, LEARNING)  # a step with signal resets the count
        watchdog.observe(4, silent)
        watchdog.observe(5, silent)
        with pytest.raises(NoLearningSignal, match="stopped at step 6: 3 steps in a row"):
            watchdog.observe(6, silent)
    assert len(caplog.records) == 1 and "stops after 3 such steps" in caplog.text
    never = LearningSignalWatchdog(0)
    for step in range(10):
        never.observe(step, silent)  # patience 0: warns, never stops


def test_a_run_whose_every_reward_fails_stops_naming_the_first_error(
    tiny_model_dir, tiny_dataset_dir, tmp_path
):
    config = tiny_rl_config(
        tiny_model_dir,
        tiny_dataset_dir,
        tmp_path / "run",
        "run.steps=4",
        "run.max_steps_without_signal=2",
        "rewards=[{name: signal_test_broken}]",
    )
    trainer = RLTrainer(config)
    with pytest.raises(NoLearningSignal) as caught:
        trainer.train()
    message = str(caught.value)
    assert message.startswith("stopped at step 2: 2 steps in a row without learning signal")
    assert "every reward failed on every sample" in message
    assert "ConnectionError: judge at http://judge:8000 refused the connection" in message
    assert not (tmp_path / "run" / "final").exists()  # no "final" model that equals its input


def test_a_run_with_equal_rewards_and_no_dynamic_sampling_stops_on_zero_advantages(
    tiny_model_dir, tiny_dataset_dir, tmp_path
):
    config = tiny_rl_config(
        tiny_model_dir,
        tiny_dataset_dir,
        tmp_path / "run",
        "run.steps=3",
        "run.max_steps_without_signal=1",
        "algorithm.dynamic_sampling=false",
        "rewards=[{name: signal_test_flat}]",
    )
    with pytest.raises(NoLearningSignal, match=r"stopped at step 1: .*every advantage is 0"):
        RLTrainer(config).train()

"""`rlhf bench step` drives our trainer and TRL's GRPOTrainer on one workload (shrunk here)."""

from __future__ import annotations

import argparse
import math

import pytest

from rlhf import bench

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_bench_step_times_both_trainers(monkeypatch, capsys):
    for name, value in {
        "STEP_PROMPTS": 2,
        "STEP_SAMPLES": 2,
        "STEP_TOKENS": 4,
        "STEP_MICRO_BATCH": 2,
    }.items():
        monkeypatch.setattr(bench, name, value)
    results = bench.bench_step(argparse.Namespace(steps=1))
    assert len(results["ours_steps"]) == len(results["trl_steps"]) == 1
    assert results["ours_s_per_step"] > 0 and results["trl_s_per_step"] > 0
    assert math.isclose(results["ratio"], results["ours_s_per_step"] / results["trl_s_per_step"])
    assert "ours / TRL = " in capsys.readouterr().out

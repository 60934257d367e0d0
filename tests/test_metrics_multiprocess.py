"""Two processes log what one process logs: metrics are reduced over processes, and only the main
process writes (metrics.jsonl, the tracker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rewards import completion_fields, reward
from rlhf.config import RLConfig, load_config
from rlhf.distributed import free_port
from rlhf.trainer import RLTrainer


@reward("multiprocess_test_think_chars")
def think_chars(prompts, completions, **kwargs):
    """Varies across random completions, so a random policy gets non-zero advantages."""
    return [len(c.think or "") / 10 for c in completion_fields(completions, kwargs)]


LAUNCHED = """
import sys

sys.path.insert(0, sys.argv.pop(1))
import test_metrics_multiprocess  # noqa: F401  (registers the test's reward)
from rlhf.cli import main

code = main(["train", *sys.argv[1:]])
import torch.distributed as dist
if dist.is_initialized():  # else gloo may abort at exit
    dist.destroy_process_group()
sys.exit(code)
"""


def test_two_processes_log_the_one_process_loss(tiny_model_dir, tiny_dataset_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "rewards:\n  - {name: multiprocess_test_think_chars}\n  - {name: paralinguistic}\n"
    )
    overrides = [
        f"model.path={tiny_model_dir}",
        f"data.path={tiny_dataset_dir}",
        "data.tasks=[gender,pitch,speed]",
        "run.steps=1",
        "run.save_every=0",
        "rollout.prompts_per_step=2",
        "rollout.num_generations=4",
        "rollout.sampling.max_new_tokens=12",
        "rollout.sampling.temperature=1.0",
        "optim.micro_batch_size=2",  # 4 micro-batches: 2 per process
        "algorithm.beta=0.05",
        "run.report_to=[tensorboard]",
    ]
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED)
    two = tmp_path / "two"
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch"),
        # --multi_gpu picks torchrun's launcher; without GPUs accelerate runs it as MULTI_CPU (gloo)
        *("--multi_gpu", "--num_processes", "2", "--num_machines", "1"),
        *("--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(free_port())),
        *(str(script), str(Path(__file__).parent), str(recipe)),
        *(*overrides, f"run.output_dir={two}"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    one = tmp_path / "one"
    config = load_config(RLConfig, recipe, [*overrides, f"run.output_dir={one}"])
    RLTrainer(config).train()

    def logged(run) -> dict:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 1  # written once, by the main process
        return json.loads(lines[0])

    single, double = logged(one), logged(two)
    assert single["trained_tokens"] == double["trained_tokens"] > 0
    for key in ("loss", "policy_loss", "kl", "entropy", "approx_kl", "clip_fraction"):
        assert double[key] == pytest.approx(single[key], rel=1e-3, abs=1e-6), key
    assert single["policy_loss"] != 0
    # one TensorBoard writer (the main process's) for the scalars, one for the recipe
    assert len(list((two / "tensorboard").glob("events.out.tfevents.*"))) == 1

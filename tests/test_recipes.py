"""Every shipped RL recipe runs for 2 steps on the tiny model (CPU), PPO and GRPO alike, in its
own precision: the paper recipes compute in bf16 (over fp32 weights) with gradient checkpointing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rlhf.cli import main
from rlhf.config import RLConfig, load_config
from rlhf.trainer import RLTrainer

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
TINY = [
    "run.steps=2",
    "run.save_every=0",
    "rollout.prompts_per_step=2",
    "rollout.num_generations=2",
    "rollout.batch_size=8",
    "rollout.sampling.max_new_tokens=12",
    "optim.micro_batch_size=4",
    "algorithm.dynamic_sampling=false",
    "algorithm.difficulty_band=null",
]


@pytest.fixture(scope="module")
def reward_model_dir(tiny_model_dir, tiny_dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm")
    code = main(
        [
            "reward-model",
            str(RECIPES / "tiny_reward_model.yaml"),
            f"model.path={tiny_model_dir}",
            f"data.path={tiny_dataset_dir}",
            f"run.output_dir={out}",
            "run.steps=2",
            "batch_size=4",
            "eval_pairs=0",
        ]
    )
    assert code == 0
    return out / "final"


@pytest.mark.parametrize(
    "recipe",
    [
        "tiny_grpo.yaml",
        "tiny_grpo_asr.yaml",
        "tiny_grpo_spoken.yaml",
        "step_audio2_ppo_think.yaml",
        "step_audio2_ppo_rm.yaml",
        "step_audio2_grpo_perception.yaml",
        "step_audio_r1_ppo.yaml",
    ],
)
def test_recipe_runs_two_steps(recipe, tiny_model_dir, tiny_dataset_dir, tmp_path, request):
    overrides = [
        f"model.path={tiny_model_dir}",
        f"data.path={tiny_dataset_dir}",
        f"run.output_dir={tmp_path / 'run'}",
        *TINY,
    ]
    if recipe == "step_audio2_ppo_rm.yaml":
        rm = request.getfixturevalue("reward_model_dir")
        overrides.append(f"rewards=[{{name: reward_model, path: {rm}}}]")
    config = load_config(RLConfig, RECIPES / recipe, overrides)
    trainer = RLTrainer(config)
    if recipe.startswith("step_audio"):
        assert trainer.compute_dtype == torch.bfloat16
    models = [trainer.model] + ([trainer.critic.scorer] if trainer.critic is not None else [])
    assert all(p.dtype == torch.float32 for m in models for p in m.parameters())
    history = trainer.train()
    assert len(history) == 2
    assert all(math.isfinite(m["loss"]) for m in history)
    if config.algorithm.name == "ppo":
        assert all(math.isfinite(m["value_loss"]) for m in history)
    assert (tmp_path / "run" / "final" / "config.json").exists()

"""The RL loop end to end on the tiny model: a step runs, learns, logs, and resumes exactly."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rewards import completion_fields, reward
from rlhf.config import RLConfig, load_config
from rlhf.metrics import MetricsLogger, read_metrics
from rlhf.trainer import RLTrainer


@reward("trainer_test_think_chars")
def answer_length(prompts, completions, **kwargs):
    """Varies across random completions, so a random policy gets non-zero advantages."""
    return [len(c.think or "") / 10 for c in completion_fields(completions, kwargs)]


@reward("trainer_test_flat_on_gender")
def flat_on_gender(prompts, completions, task, **kwargs):
    """The same reward for every answer to a gender question: dynamic sampling drops its group."""
    fields = completion_fields(completions, kwargs)
    return [0.0 if t == "gender" else 1 + len(c.think or "") / 10 for t, c in zip(task, fields)]


def tiny_rl_config(model_dir, data_dir, out_dir, *extra: str) -> RLConfig:
    return load_config(
        RLConfig,
        None,
        [
            f"model.path={model_dir}",
            f"data.path={data_dir}",
            "data.tasks=[gender,pitch,speed]",
            f"run.output_dir={out_dir}",
            "run.steps=2",
            "run.save_every=2",
            "rollout.prompts_per_step=2",
            "rollout.num_generations=4",
            "rollout.sampling.max_new_tokens=12",
            "rollout.sampling.temperature=1.0",
            "optim.lr=1e-3",
            "optim.micro_batch_size=4",
            "rewards=[{name: trainer_test_think_chars}, {name: think_length, max_words: 4}, {name: paralinguistic}]",
            *extra,
        ],
    )


def test_grpo_steps_log_metrics_and_change_weights(tiny_model_dir, tiny_dataset_dir, tmp_path):
    config = tiny_rl_config(
        tiny_model_dir, tiny_dataset_dir, tmp_path / "run", "algorithm.beta=0.05"
    )
    trainer = RLTrainer(config)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    history = trainer.train()

    assert len(history) == 2
    metrics = history[-1]
    for key in ("loss", "grad_norm", "kl", "clip_fraction", "entropy", "audio_sensitivity"):
        assert math.isfinite(metrics[key]), key
    assert set(metrics["time"]) >= {"generation", "logprobs", "update", "sync", "decode", "rewards"}
    assert metrics["reward"]["think_length"]["applicable"] == 1.0
    # the policy hears its audio: silencing it changes the log-probs of what it said
    assert metrics["audio_sensitivity"] > 0
    assert 0.0 <= metrics["audio_preferred"] <= 1.0
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and not any(k.startswith("encoder.") for k in changed)  # frozen

    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    # a run started afresh in the same folder replaces the log; one resumed redoes lost steps
    RLTrainer(config).train()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    logger = MetricsLogger(tmp_path / "run")
    logger.truncate_after(1)
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1]
    assert (tmp_path / "run" / "config.yaml").exists()
    assert (tmp_path / "run" / "step-000002" / "trainer_state.pt").exists()
    assert (tmp_path / "run" / "final" / "config.json").exists()


def test_dynamic_sampling_refills_the_dropped_groups(tiny_model_dir, tiny_dataset_dir, tmp_path):
    def run(refill_rounds: int) -> list[dict]:
        config = tiny_rl_config(
            tiny_model_dir,
            tiny_dataset_dir,
            tmp_path / f"refill{refill_rounds}",
            "data.tasks=[gender,pitch]",
            "run.steps=3",
            "algorithm.dynamic_sampling=true",
            f"algorithm.refill_rounds={refill_rounds}",
            "rewards=[{name: trainer_test_flat_on_gender}]",
        )
        return RLTrainer(config).train()

    def groups_trained(metrics: dict) -> float:
        return metrics["groups_kept_fraction"] * metrics["prompts_generated"]

    dropped = run(0)
    assert [m["prompts_generated"] for m in dropped] == [2, 2, 2]
    assert min(groups_trained(m) for m in dropped) < 2  # gender questions were dropped
    refilled = run(16)
    assert [groups_trained(m) for m in refilled] == pytest.approx([2, 2, 2])
    assert sum(m["prompts_generated"] for m in refilled) > 6


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_gives_the_same_steps_as_never_stopping(
    tiny_model_dir, tiny_dataset_dir, tmp_path, lora
):
    extra = [
        "run.save_every=2",
        f"model.lora.enabled={lora}",
        "model.lora.r=4",
        "run.deterministic=true",  # GPU kernels with atomics (embedding backward) otherwise
    ]
    straight = RLTrainer(
        tiny_rl_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "a", "run.steps=4", *extra)
    )
    straight_history = straight.train()

    first = RLTrainer(
        tiny_rl_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "b", "run.steps=2", *extra)
    )
    first.train()
    resumed = RLTrainer(
        tiny_rl_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "b", "run.steps=4", *extra)
    )
    resumed_history = resumed.train(resume=True)

    assert resumed.global_step == 4 and len(resumed_history) == 2
    for a, b in zip(straight_history[2:], resumed_history):
        assert a["loss"] == b["loss"]
        assert a["reward_total"] == b["reward_total"]
        assert a["completion_length"] == b["completion_length"]
    for (name, x), (_, y) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items()
    ):
        assert torch.equal(x, y), name


def test_unknown_recipe_key_names_the_nearest(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("algorithm:\n  clip_hgh: 0.3\n")
    with pytest.raises(
        ValueError, match=r"unknown key 'algorithm.clip_hgh'.*'algorithm.clip_high'"
    ):
        load_config(RLConfig, recipe)


def test_logged_losses_do_not_depend_on_the_micro_batch_size(
    tiny_model_dir, tiny_dataset_dir, tmp_path
):
    """The batch's loss is the sum of its micro-batches' shares and per-token statistics are
    token-weighted, so one micro-batch of 8 and four of 2 log the same figures."""

    def first_step(micro_batch_size: int) -> dict:
        config = tiny_rl_config(
            tiny_model_dir,
            tiny_dataset_dir,
            tmp_path / f"mb{micro_batch_size}",
            "algorithm.beta=0.05",
            f"optim.micro_batch_size={micro_batch_size}",
        )
        return RLTrainer(config).step()

    whole, parts = first_step(8), first_step(2)
    assert whole["trained_tokens"] == parts["trained_tokens"] > 0
    for key in ("loss", "policy_loss", "kl", "entropy", "clip_fraction", "approx_kl"):
        assert parts[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-6), key
    assert whole["policy_loss"] != 0


def test_ppo_logs_approx_kl_and_the_critics_explained_variance(
    tiny_model_dir, tiny_dataset_dir, tmp_path
):
    config = tiny_rl_config(
        tiny_model_dir,
        tiny_dataset_dir,
        tmp_path / "ppo",
        "algorithm.name=ppo",
        "algorithm.num_iterations=2",
        "run.steps=1",
        "run.log_samples_every=1",
    )
    metrics = RLTrainer(config).train()[0]
    assert metrics["approx_kl"] > 0  # the second iteration moved away from the old policy
    assert math.isfinite(metrics["explained_variance"]) and metrics["explained_variance"] <= 1
    # the step's completions, as a table
    rows = [json.loads(line) for line in (tmp_path / "ppo" / "samples.jsonl").open()]
    assert len(rows) == 8 and {r["step"] for r in rows} == {1}
    assert set(rows[0]) == {"step", "prompt_id", "think", "answer", "rewards", "total"}
    assert set(rows[0]["rewards"]) == {"trainer_test_think_chars", "think_length", "paralinguistic"}

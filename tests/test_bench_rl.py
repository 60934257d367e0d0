"""`rlhf bench rl`'s summary: figures of eval JSONs gathered per seed, mean and range over seeds."""

import pytest

from rlhf.bench_rl import accuracies, over_seeds, table


def _report(gender, pitch, speed, silence):
    mean = (gender + pitch + speed) / 3
    return {
        "paralinguistic": {"gender": gender, "pitch": pitch, "speed": speed},
        "accuracy_mean": mean,
        "ablations": {"silence": {"accuracy_mean": silence}},
    }


def test_gain_is_per_seed_against_the_one_sft_start():
    sft = accuracies(_report(0.9, 0.6, 0.3, 0.45))
    seeds = [accuracies(_report(0.9, 0.9, 0.3, 0.44)), accuracies(_report(0.9, 0.63, 0.3, 0.5))]
    summary = over_seeds(sft, seeds)
    assert summary["gain"]["min"] == pytest.approx(0.01)
    assert summary["gain"]["max"] == pytest.approx(0.1)
    assert summary["gain"]["mean"] == pytest.approx(0.055)
    assert summary["grpo"]["pitch"] == pytest.approx({"mean": 0.765, "min": 0.63, "max": 0.9})
    assert summary["grpo"]["silence"] == pytest.approx({"mean": 0.47, "min": 0.44, "max": 0.5})


def test_table_names_the_ablations_and_shows_the_range():
    sft = accuracies(_report(0.9, 0.6, 0.3, 0.45))
    seeds = {0: accuracies(_report(0.9, 0.9, 0.3, 0.44))}
    results = {"sft": sft, "seeds": seeds, **over_seeds(sft, list(seeds.values()))}
    rows = table(results).columns[0]._cells
    assert "mean, audio → silence" in rows and "gain in mean" in rows
    assert table(results).columns[2]._cells[-1] == "+0.100 [+0.100, +0.100]"


def test_ppo_stage_one_example_is_a_valid_recipe_with_a_15_word_budget():
    from rlhf.bench_rl import PPO_THINK_TINY
    from rlhf.config import RLConfig, load_config
    from rlhf.demo import recipe

    config = load_config(RLConfig, recipe("step_audio2_ppo_think.yaml"), PPO_THINK_TINY)
    assert config.algorithm.name == "ppo"
    assert config.rewards == [{"name": "think_length", "max_words": 15}]
    assert (config.run.steps, config.optim.lr) == (40, 1e-4)

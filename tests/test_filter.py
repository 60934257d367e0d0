"""`rlhf filter`: pass counts per prompt, the band, the filtered dataset and the histogram."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import rollouts  # noqa: F401  (registers the architecture)
from rewards import reward
from rlhf.cli import main
from rlhf.config import RLConfig, load_config
from rlhf.data.grammar import corpus
from rlhf.data.loading import load_prompt_dataset
from rlhf.data.synth import build
from rlhf.filter import filter_prompts, histogram, pass_counts
from rollouts.tiny import make_tiny
from rollouts.types import Rollout

RECIPE = Path(__file__).parents[1] / "recipes" / "step_audio_r1_ppo.yaml"


@reward("test_filter_coin")
def coin(prompts, completions, **kwargs):
    """A fair coin per completion text, so pass counts spread over 0..k deterministically."""
    return [float(hashlib.sha256(c.encode()).digest()[0] % 2) for c in completions]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("filter")
    make_tiny(root / "tiny", [corpus()], num_audio_codes=32)
    build(root / "data", num_clips=16, test_clips=2, codebook_size=16, workers=1)
    return root


def overrides(workdir: Path) -> list[str]:
    return [
        f"model.path={workdir / 'tiny'}",
        f"data.path={workdir / 'data'}",
        "data.tasks=null",
        "rollout.sampling.max_new_tokens=6",
        "rollout.batch_size=32",
        "rewards=[{name: test_filter_coin}, {name: think_length, weight: 0.0}]",
    ]


def rollout(prompt_id: str, total: float | None, coin_score: float | None = None) -> Rollout:
    return Rollout(
        prompt_id, 0, 0, [], [], [], [], "", None, "", "", [], [], "stop", 0,
        rewards={"coin": coin_score}, reward=total,
    )  # fmt: skip


def test_pass_counts_and_histogram():
    samples = [rollout("a", 1.0, 0.0), rollout("a", 0.5, 1.0), rollout("a", None, None)]
    samples += [rollout("b", 0.9, 1.0)]
    assert pass_counts(samples) == {"a": 1, "b": 1}  # above 0.5; None is no pass
    assert pass_counts(samples, threshold=0.4) == {"a": 2, "b": 1}
    assert pass_counts(samples, reward="coin") == {"a": 1, "b": 1}
    assert histogram([0, 2, 2, 4], 4) == {"0": 1, "1": 0, "2": 2, "3": 0, "4": 1}


def test_filter_keeps_the_band_and_writes_data_and_histogram(workdir):
    out = workdir / "filtered"
    code = main(["filter", str(RECIPE), *overrides(workdir), "--out", str(out), "--band", "1", "3", "--samples", "4"])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "pass_counts.json").read_text())
    counts = summary["counts"]
    source = load_prompt_dataset(workdir / "data", "train")
    assert summary["prompts"] == len(source) == len(counts)
    assert sum(summary["histogram"].values()) == len(counts)
    assert len({c for c in counts.values()}) > 1  # the coin spreads them
    kept = [i for i, c in counts.items() if 1 <= c <= 3]
    assert summary["kept"] == len(kept) and summary["band"] == [1, 3]

    filtered = load_prompt_dataset(out / "data", "train")
    assert filtered["id"] == kept  # in the source's order
    assert len(load_prompt_dataset(out / "data", "test")) == len(
        load_prompt_dataset(workdir / "data", "test")
    )  # other splits carried over
    assert (out / "pass_counts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the same seed samples the same completions: the same counts, judged by one reward too
    config = load_config(RLConfig, RECIPE, overrides(workdir))
    again = filter_prompts(config, workdir / "again", (1, 3), 4, reward="test_filter_coin")
    assert again["counts"] == counts and again["reward"] == "test_filter_coin"


def test_filter_rejects_a_bad_band_or_reward(workdir):
    config = load_config(RLConfig, RECIPE, overrides(workdir))
    with pytest.raises(ValueError, match="--band"):
        filter_prompts(config, workdir / "bad", (5, 9), 8)
    with pytest.raises(ValueError, match="not one of the recipe's rewards"):
        filter_prompts(config, workdir / "bad", (1, 2), 2, reward="nope")
    assert not (workdir / "bad").exists()

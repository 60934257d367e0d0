"""Reward model: the sequence-classification head, preference pairs, Bradley–Terry training, and
the ``reward_model`` reward loading the trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import torch

import rollouts  # noqa: F401  (registers the architecture and the reward_model reward)
from rewards import RewardRunner, get_reward
from rlhf.config import load_config
from rlhf.data.grammar import DIMENSIONS, corpus
from rlhf.data.synth import build
from rlhf.reward_model import (
    RewardModelConfig,
    RewardModelTrainer,
    bradley_terry_loss,
    load_pairs,
    pair_rewards,
)
from rollouts.processor import StepAudio2Processor
from rollouts.tiny import make_tiny
from rollouts.value_model import StepAudio2ForSequenceClassification, preference_inputs

RECIPE = Path(__file__).parents[1] / "recipes" / "tiny_reward_model.yaml"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reward_model")
    make_tiny(root / "tiny", [corpus()], num_audio_codes=32)
    build(root / "data", num_clips=10, test_clips=2, tasks_per_clip=1, codebook_size=16, workers=1)
    return root


def config(workdir: Path, *overrides: str) -> RewardModelConfig:
    return load_config(
        RewardModelConfig,
        RECIPE,
        [
            f"model.path={workdir / 'tiny'}",
            f"data.path={workdir / 'data'}",
            f"run.output_dir={workdir / 'run'}",
            "data.max_samples=null",
            *overrides,
        ],
    )


def test_sequence_classification_loads_a_causal_lm_and_scores_the_last_real_token(workdir):
    model = StepAudio2ForSequenceClassification.from_pretrained(workdir / "tiny", num_labels=1)
    processor = StepAudio2Processor.from_pretrained(workdir / "tiny")
    pairs = load_pairs(config(workdir).data, "train", processor.tokenizer, ["no_reasoning"], 0)[:2]
    inputs = preference_inputs(processor, [p.sample for p in pairs], [p.chosen for p in pairs])
    assert (
        inputs["input_ids"][0, inputs["attention_mask"][0].sum() - 1] == processor.special_ids.eot
    )
    with torch.no_grad():
        batched = model(**inputs).logits[:, 0]
        for row in range(2):  # padding never changes a row's score
            alone = preference_inputs(processor, [pairs[row].sample], [pairs[row].chosen])
            assert torch.allclose(model(**alone).logits[0, 0], batched[row], atol=1e-5)
    assert model.config.num_labels == 1 and model.score.weight.shape == (1, 128)


def test_pairs_derived_from_the_synthetic_targets(workdir):
    cfg = config(workdir)
    tokenizer = StepAudio2Processor.from_pretrained(workdir / "tiny").tokenizer
    pairs = load_pairs(cfg.data, "train", tokenizer, ["wrong_answer", "no_reasoning"], seed=0)
    kinds = {p.kind for p in pairs}
    judge = get_reward("paralinguistic")
    assert kinds == {"wrong_answer", "no_reasoning"}
    for pair in pairs:
        columns = pair.sample.columns
        assert pair.chosen != pair.rejected
        assert "</think>" in pair.chosen and "</think>" in pair.rejected
        if pair.kind == "no_reasoning":
            assert pair.rejected.startswith("</think>")
            assert pair.chosen.endswith(pair.rejected)
        else:
            assert not pair.sample.spoken  # spoken answers' codes belong to their target
            answer = pair.rejected.partition("</think>")[2]
            if columns["task"] in DIMENSIONS:  # the paralinguistic reward agrees
                task, label = [columns["task"]] * 2, [columns["label"]] * 2
                scores = judge([None] * 2, [pair.chosen, pair.rejected], task=task, label=label)
                assert scores == [1.0, 0.0]
            else:
                assert columns["transcript"] not in answer
    # the same seed gives the same pairs
    again = load_pairs(cfg.data, "train", tokenizer, ["wrong_answer", "no_reasoning"], seed=0)
    assert [(p.chosen, p.rejected) for p in again] == [(p.chosen, p.rejected) for p in pairs]


def test_given_chosen_and_rejected_columns_are_used(workdir, tmp_path):
    rows = datasets.load_from_disk(str(workdir / "data" / "data"))["train"].select(range(3))
    rows = rows.add_column("chosen", ["good"] * 3).add_column("rejected", ["bad"] * 3)
    rows.save_to_disk(str(tmp_path / "prefs"))
    cfg = config(workdir, f"data.path={tmp_path / 'prefs'}")
    tokenizer = StepAudio2Processor.from_pretrained(workdir / "tiny").tokenizer
    pairs = load_pairs(cfg.data, "train", tokenizer, ["wrong_answer"], seed=0)
    assert [(p.chosen, p.rejected, p.kind) for p in pairs] == [("good", "bad", "given")] * 3
    assert pairs[0].sample.audio and pairs[0].sample.audio[0].dtype.name == "float32"


def test_bradley_terry_training_and_the_reward_model_reward(workdir):
    cfg = config(
        workdir,
        "run.steps=14",
        "batch_size=8",
        "optim.micro_batch_size=8",
        "optim.lr=3e-4",
        "optim.lr_scheduler=constant",
        "optim.warmup_steps=0",
        "max_length=256",
        "eval_pairs=8",
    )
    trainer = RewardModelTrainer(cfg)
    pairs = trainer.pairs
    with torch.no_grad():
        before = bradley_terry_loss(
            *pair_rewards(trainer.model, trainer.processor, pairs, cfg.max_length, "cpu")
        ).mean()
    history = trainer.train()
    trainer.model.eval()
    with torch.no_grad():
        chosen, rejected = pair_rewards(
            trainer.model, trainer.processor, pairs, cfg.max_length, "cpu"
        )
    after = bradley_terry_loss(chosen, rejected).mean()
    assert after < 0.6 * before, (float(before), float(after), [h["loss"] for h in history])
    assert (chosen > rejected).float().mean() >= 0.75

    final = Path(cfg.run.output_dir) / "final"
    assert (final / "model.safetensors").exists() and (
        Path(cfg.run.output_dir) / "eval.json"
    ).exists()
    # the reward loads the checkpoint by path and gives the trainer's scores, through the runner
    runner = RewardRunner([{"name": "reward_model", "path": str(final), "batch_size": 3}])
    samples = [p.sample for p in pairs]
    columns = {
        "audio": [s.audio[0] for s in samples] * 2,
        "sample_rate": [16000] * (2 * len(pairs)),
        "spoken": [s.spoken for s in samples] * 2,
    }
    result = runner(
        [s.messages for s in samples] * 2,
        [p.chosen for p in pairs] + [p.rejected for p in pairs],
        **columns,
    )
    scores = torch.tensor(result.total)
    assert torch.allclose(scores, torch.cat([chosen, rejected]), atol=1e-4)
    assert result.metrics["reward_model"]["errors"] == 0


def test_reward_model_reward_rejects_a_multi_label_checkpoint(workdir, tmp_path):
    StepAudio2ForSequenceClassification.from_pretrained(
        workdir / "tiny", num_labels=3
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_labels=3"):
        get_reward("reward_model", path=str(tmp_path))

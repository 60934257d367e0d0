"""SFT: labels cover exactly the assistant's target, the loss is the causal-LM loss on them, and a
short run learns and leaves a checkpoint that ``from_pretrained`` loads."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import rollouts  # noqa: F401  (registers the architecture)
from rlhf.cli import main
from rlhf.config import DataConfig
from rlhf.data.grammar import corpus
from rlhf.sft import load_examples, sequence_batch
from rollouts.chat import IGNORE_INDEX, render_completion
from rollouts.policy import Policy
from rollouts.processor import StepAudio2Processor
from rollouts.tiny import make_tiny


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "data"
    args = ["--num-clips", "6", "--test-clips", "2", "--tasks-per-clip", "5"]
    assert main(["make-data", str(out), *args, "--codebook-size", "8", "--workers", "1"]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("sft") / "tiny", corpus().splitlines(), 16, seed=0)


@pytest.fixture(scope="session")
def examples(tiny_data):
    return load_examples(DataConfig(path=str(tiny_data), split="train"))


def _mixed(examples, count=4):
    """A few examples, spoken (TA4) ones included."""
    spoken = [e for e in examples if e.sample.spoken]
    text = [e for e in examples if not e.sample.spoken]
    assert spoken and text
    return [spoken[0], *text[: count - 2], spoken[1]]


@pytest.mark.parametrize("train_on", ["both", "text"])
def test_labels_are_exactly_the_assistant_target(tiny_model, examples, train_on):
    processor = StepAudio2Processor.from_pretrained(tiny_model)
    ids = processor.special_ids
    chosen = _mixed(examples)
    batch = processor.sft_batch([e.sample for e in chosen], [e.target for e in chosen], train_on)
    input_ids, labels = batch["input_ids"], batch["labels"]
    assert batch["input_features"].shape[0] == len(chosen)  # one clip per row

    saw_ta4_pads = False
    for row, example in enumerate(chosen):
        sample = example.sample
        prompt = processor([sample])["input_ids"][0].tolist()  # one row: no padding
        target = render_completion(example.target, processor.tokenizer, sample.think, sample.spoken)
        length = len(prompt) + len(target)
        assert input_ids[row, :length].tolist() == prompt + target
        assert (labels[row, : len(prompt)] == IGNORE_INDEX).all(), "prompt tokens carry loss"
        assert (labels[row, length:] == IGNORE_INDEX).all(), "padding carries loss"
        assert (batch["attention_mask"][row, length:] == 0).all()
        for position, token in enumerate(target, start=len(prompt)):
            trained = train_on == "both" or not ids.is_audio(token)  # TA4 pads included
            assert labels[row, position] == (token if trained else IGNORE_INDEX), (
                f"row {row} position {position} token {token}"
            )
            saw_ta4_pads |= token in (ids.tts_pad, ids.audio_pad)
        if sample.spoken:
            codes = [t for t in target if ids.is_audio(t)]
            trained_codes = [t for t in labels[row].tolist() if ids.is_audio(t)]
            assert trained_codes == (codes if train_on == "both" else [])
        assert labels[row, length - 1] == ids.eot  # the model learns to end its turn
    assert saw_ta4_pads, "the spoken targets should hold TA4 padding"
    assert not (labels == ids.pad).any()


def test_sft_loss_is_the_causal_lm_loss_on_labelled_tokens(tiny_model, examples):
    policy = Policy.from_pretrained(tiny_model)
    chosen = _mixed(examples)
    batch = policy.processor.sft_batch([e.sample for e in chosen], [e.target for e in chosen])
    sequences = sequence_batch(batch)
    mask = sequences.completion_mask.bool()
    assert int(mask.sum()) == int((batch["labels"] != IGNORE_INDEX).sum())
    assert (
        sequences.completion_ids[mask].tolist()
        == batch["labels"][batch["labels"] != IGNORE_INDEX].tolist()
    )
    with torch.no_grad():
        logprobs, _ = policy.logprobs(sequences, chunk_size=7)  # several chunks
        reference = policy.model(**batch).loss
    ours = -(logprobs * mask).sum() / mask.sum()
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def _recipe(tmp_path, model, data, **extra) -> str:
    path = tmp_path / "recipe.yaml"
    lines = [
        f"model: {{path: {model}}}",
        f"data: {{path: {data}, max_samples: 8}}",
        "optim: {lr: 3.0e-3, micro_batch_size: 4, lr_scheduler: constant}",
        f"run: {{output_dir: {tmp_path / 'run'}, steps: 8}}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_full_sft_learns_and_saves_a_loadable_checkpoint(tmp_path, tiny_model, tiny_data):
    recipe = _recipe(tmp_path, tiny_model, tiny_data)
    assert main(["sft", recipe]) == 0

    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    losses = [r["loss"] for r in records]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-2:]) / 2 < losses[0] - 0.5, losses
    assert (run / "config.yaml").exists()

    before = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    after = AutoModelForCausalLM.from_pretrained(run / "final").state_dict()
    assert before.keys() == after.keys()
    frozen = [k for k in before if k.startswith("encoder.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])
    assert not torch.equal(before["adapter.linear2.weight"], after["adapter.linear2.weight"])
    processor = StepAudio2Processor.from_pretrained(run / "final")
    assert processor.special_ids.num_audio_codes == 16
    assert not any(p.name.startswith(".") for p in run.iterdir()), "temporary folder left behind"


def test_lora_sft_by_epochs_saves_merged_weights(tmp_path, tiny_model, tiny_data):
    recipe = _recipe(tmp_path, tiny_model, tiny_data)
    overrides = ["model.lora.enabled=true", "model.lora.r=4", "epochs=1", "optim.lr=1e-2"]
    assert main(["sft", recipe, *overrides]) == 0

    run = tmp_path / "run"
    records = (run / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 2  # one epoch of 8 rows in micro-batches of 4
    before = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    after = AutoModelForCausalLM.from_pretrained(run / "final").state_dict()
    assert before.keys() == after.keys(), "adapter weights should be merged away"
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("_proj" in k for k in changed), sorted(changed)


def test_without_think_the_target_is_the_answer_alone(tiny_model, tiny_data, examples):
    """`data.think: false` (no `<think>` prefill) trains the answer directly: a think block in the
    target would teach a format the prompt never asks for."""
    direct = load_examples(DataConfig(path=str(tiny_data), split="train", think=False))
    processor = StepAudio2Processor.from_pretrained(tiny_model)
    think_end = processor.tokenizer.convert_tokens_to_ids("</think>")
    assert all(e.target.think for e in examples)  # the rows do carry reasoning
    for with_think, alone in zip(examples, direct, strict=True):
        assert alone.target.think is None
        assert alone.target.text == with_think.target.text
        assert alone.target.audio_codes == with_think.target.audio_codes
        target = render_completion(alone.target, processor.tokenizer, False, alone.sample.spoken)
        assert think_end not in target

"""Tests for StepAudio2Processor: batching audio prompts for generation and SFT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rollouts.audio import CHUNK_SAMPLES, SAMPLE_RATE, log_mel, num_audio_tokens
from rollouts.chat import IGNORE_INDEX, AssistantTarget, render_prompt
from rollouts.processor import StepAudio2Processor
from rollouts.tokenizer import train_tokenizer
from rollouts.types import PromptSample

CORPUS = ["What is the speaker's gender? The speaker is male. Transcribe the clip please."] * 20


@pytest.fixture(scope="module")
def processor():
    return StepAudio2Processor(train_tokenizer(CORPUS, num_audio_codes=16, vocab_size=300))


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)


def audio_sample(id_: str, seconds: float, **kw) -> PromptSample:
    messages = [
        {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "gender?"}]}
    ]
    return PromptSample(id_, messages, [noise(seconds)], **kw)


def test_batch_pads_to_longest_clip_and_left_pads_ids(processor):
    samples = [audio_sample("short", 1.0), audio_sample("long", 2.5, think=False)]
    batch = processor(samples)
    frames = [log_mel(clip).shape[1] for s in samples for clip in s.audio]  # 102, 252
    assert batch["input_features"].shape == (2, 128, max(frames))  # not 30 s
    assert batch["feature_lens"].tolist() == [t - 2 for t in frames]
    assert batch["input_features"][0, :, frames[0] :].abs().sum() == 0

    special = processor.special_ids
    patches = (batch["input_ids"] == special.audio_patch).sum(1).tolist()
    assert patches == [num_audio_tokens(t) for t in frames] == [13, 31]
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.dtype == mask.dtype == torch.long
    for b, sample in enumerate(samples):
        row = render_prompt(sample.messages, processor.tokenizer, [patches[b]], sample.think)
        assert ids[b, mask[b].bool()].tolist() == row
        assert mask[b, -1] == 1 and mask[b].sum() == len(row)  # left padded
        assert (ids[b, ~mask[b].bool()] == special.pad).all()
    assert mask[0, 0] == 0 or mask[1, 0] == 0


def test_long_clip_becomes_several_blocks(processor):
    sample = audio_sample("long", 26.0)
    batch = processor([sample])
    pieces = [sample.audio[0][:CHUNK_SAMPLES], sample.audio[0][CHUNK_SAMPLES:]]
    counts = [num_audio_tokens(log_mel(p).shape[1]) for p in pieces]
    assert counts == [313, 13]
    assert batch["input_features"].shape == (2, 128, 2502)
    ids = batch["input_ids"][0]
    special = processor.special_ids
    assert (ids == special.audio_start).sum() == 2
    assert (ids == special.audio_patch).sum() == sum(counts)


def test_no_audio_gives_no_features(processor):
    batch = processor([PromptSample("t", [{"role": "user", "content": "Hello"}])])
    assert batch["input_features"] is None and batch["feature_lens"] is None
    assert batch["input_ids"].shape == batch["attention_mask"].shape


def test_errors_name_the_sample(processor):
    bad = PromptSample("row-7", [{"role": "user", "content": [{"type": "audio"}]}], [])
    with pytest.raises(ValueError, match="sample 'row-7'"):
        processor([bad])


def test_sft_batch_right_pads_with_labels(processor):
    samples = [audio_sample("a", 1.0), audio_sample("b", 2.0, think=False, spoken=True)]
    targets = [
        AssistantTarget(think="a deep voice", text="male"),
        AssistantTarget(think=None, text="male", audio_codes=list(range(10))),
    ]
    batch = processor.sft_batch(samples, targets, train_on="both")
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape
    assert batch["input_features"].shape[0] == 2
    special = processor.special_ids
    for b in range(2):
        n = int(mask[b].sum())
        assert mask[b, :n].all() and not mask[b, n:].any()  # right padded
        assert (labels[b, n:] == IGNORE_INDEX).all()
        assert labels[b, n - 1] == special.eot == ids[b, n - 1]
        trained = labels[b] != IGNORE_INDEX
        assert (labels[b][trained] == ids[b][trained]).all()
        assert not (ids[b][trained] == special.pad).any()
        assert not (ids[b][trained] == special.audio_patch).any()  # prompt never trained
    spoken = ids[1][labels[1] != IGNORE_INDEX]  # 10 codes: 3 chunks, both streams padded
    assert (spoken == special.tts_pad).any() and (spoken == special.audio_pad).sum() == 2
    with pytest.raises(ValueError, match="2 samples but 1 targets"):
        processor.sft_batch(samples, targets[:1])


def test_save_and_load(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "processor_config.json").exists()
    assert (tmp_path / "tokenizer.json").exists()
    loaded = StepAudio2Processor.from_pretrained(tmp_path)
    assert loaded.special_ids == processor.special_ids
    samples = [audio_sample("a", 1.0), PromptSample("t", [{"role": "user", "content": "Hi"}])]
    assert torch.equal(loaded(samples)["input_ids"], processor(samples)["input_ids"])

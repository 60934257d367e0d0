"""Tests for the tiny checkpoint: built offline, loads through the Auto classes, runs on audio."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import rollouts  # noqa: F401  (registers the architecture with the Auto classes)
from rollouts.chat import parse_completion
from rollouts.processor import StepAudio2Processor
from rollouts.tiny import make_tiny
from rollouts.tokens import SpecialIds, audio_token
from rollouts.types import PromptSample

CORPUS = [
    "You are a helpful assistant. What is the speaker's gender? The speaker is male.",
    "Is the pitch low or high? The pitch is low. Transcribe the clip. Hello world.",
] * 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("ckpt") / "tiny", CORPUS, num_audio_codes=64)


def test_loads_offline_with_the_auto_classes(tiny):
    assert (tiny / "model.safetensors").exists() and not list(tiny.glob("*.bin"))
    assert not list(tiny.parent.glob(".tiny.*"))  # no temporary directories left behind
    model = AutoModelForCausalLM.from_pretrained(tiny)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    processor = StepAudio2Processor.from_pretrained(tiny)
    ids = processor.special_ids
    assert ids == SpecialIds.from_tokenizer(tokenizer) and ids.num_audio_codes == 64
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.config.audio_start_token_id == ids.audio_start
    assert model.config.audio_patch_token_id == ids.audio_patch
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 2e7

    generation = json.loads((tiny / "generation_config.json").read_text())
    assert generation["eos_token_id"] == ids.eot == tokenizer.eos_token_id
    assert generation["pad_token_id"] == ids.pad == tokenizer.pad_token_id
    assert (generation["temperature"], generation["top_p"]) == (0.7, 0.9)
    assert generation["repetition_penalty"] == 1.05


def test_generates_from_audio_prompts(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    processor = StepAudio2Processor.from_pretrained(tiny)
    rng = np.random.default_rng(0)
    messages = [
        {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "gender?"}]}
    ]
    samples = [
        PromptSample(str(i), messages, [(0.1 * rng.standard_normal(n)).astype(np.float32)])
        for i, n in enumerate([16000, 28000])
    ]
    inputs = processor(samples)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] <= inputs["input_ids"].shape[1] + 5
    for row in out[:, inputs["input_ids"].shape[1] :].tolist():
        parsed = parse_completion(
            row, processor.tokenizer, think_prefilled=True, spoken_prefilled=False
        )
        assert isinstance(parsed.text, str)


def test_seeded_rebuild_replaces_checkpoint(tmp_path):
    out = tmp_path / "t"
    make_tiny(out, CORPUS, num_audio_codes=8, seed=1)
    first = AutoModelForCausalLM.from_pretrained(out).state_dict()
    make_tiny(out, CORPUS, num_audio_codes=8, seed=1)  # replaces the existing checkpoint
    again = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    make_tiny(out, CORPUS, num_audio_codes=8, seed=2)
    other = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert not torch.equal(first["lm_head.weight"], other["lm_head.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="precious"):
        make_tiny(precious, CORPUS, num_audio_codes=8)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_default_has_every_audio_code(tmp_path):
    out = make_tiny(tmp_path / "full", CORPUS)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = SpecialIds.from_tokenizer(tokenizer)
    assert ids.num_audio_codes == 6561
    assert len(tokenizer) == ids.audio_code0 + 6562  # codes 0..6561 close the vocabulary
    assert (
        tokenizer.convert_ids_to_tokens(len(tokenizer) - 1) == audio_token(6561) == "<audio_6561>"
    )
    assert json.loads((out / "config.json").read_text())["text_config"]["vocab_size"] == len(
        tokenizer
    )

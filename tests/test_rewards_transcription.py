"""Transcription fidelity: normaliser, WER/CER, reward mappings, spoken answers through ASR."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rewards import TextNormalizer, error_rate, error_to_reward, get_reward, number_to_words
from rewards.transcription import transcription


def test_number_to_words():
    assert number_to_words(0) == "zero"
    assert number_to_words(13) == "thirteen"
    assert number_to_words(40) == "forty"
    assert number_to_words(99) == "ninety nine"
    assert number_to_words(100) == "one hundred"
    assert number_to_words(1205) == "one thousand two hundred five"
    assert number_to_words(999_999) == "nine hundred ninety nine thousand nine hundred ninety nine"
    with pytest.raises(ValueError):
        number_to_words(1_000_000)


def test_normalizer():
    norm = TextNormalizer()
    assert norm("It's 25 past 3, Mr. Smith!") == "its twenty five past three mr smith"
    assert norm("1,500 people; 2.5 km") == "one thousand five hundred people two point five km"
    assert norm("12345678") == "one two three four five six seven eight"
    assert norm("well-known") == "well known"
    assert TextNormalizer(lowercase=False, digits_to_words=False)("Room 7.") == "Room 7"
    assert TextNormalizer(remove_whitespace=True)("你好， 世界。") == "你好世界"


def test_error_rates():
    assert error_rate("The cat sat.", "the cat sat") == 0.0
    assert error_rate("I have 2 cats", "i have two cats") == 0.0
    assert error_rate("a b c d", "a b x d") == 0.25
    assert error_rate("a b c d", "") == 1.0
    assert error_rate("", "anything") is None
    assert error_rate("今天天气很好。", "今天天气很好") == 0.0  # auto → CER for Chinese
    assert error_rate("今天天气很好", "今天天气不好") == pytest.approx(1 / 6)
    assert error_rate("abcd", "abed", metric="cer") == 0.25
    with pytest.raises(ValueError, match="metric"):
        error_rate("a", "a", metric="bleu")


def test_error_to_reward():
    assert error_to_reward(0.0) == 1.0
    assert error_to_reward(0.25) == 0.75
    assert error_to_reward(1.7) == 0.0  # clipped: insertions push WER past 1
    assert error_to_reward(0.2, "tanh") == pytest.approx(1 - math.tanh(0.6))
    with pytest.raises(ValueError, match="mapping"):
        error_to_reward(0.1, "log")


def test_transcription_reward():
    completions = [
        "<think>transcribe</think>The cat sat on 2 mats.",
        "</think>the dog sat",
        "</think>",
        "</think>今天天气很好",
        "no label",
    ]
    labels = ["the cat sat on two mats", "the cat sat", "the cat sat", "今天天气不好", None]
    scores = transcription(None, completions, label=labels)
    assert scores == pytest.approx([1.0, 2 / 3, 0.0, 5 / 6, None])
    tanh = transcription(None, completions[:2], label=labels[:2], mapping="tanh")
    assert tanh == pytest.approx([1.0, 1 - math.tanh(1.0)])
    # TRL's `solution` column stands in for `label`; a missing column is a clear error.
    assert transcription(None, completions[:1], solution=labels[:1]) == [1.0]
    with pytest.raises(KeyError, match="no column 'transcript'"):
        transcription(None, completions[:1], reference_column="transcript", label=labels[:1])


def fake_detokenizer(codes):
    """0.1 s of 24 kHz audio per code."""
    return np.full(len(codes) * 2400, 0.1, dtype=np.float32), 24000


def fake_asr(waveforms, sample_rate):
    assert sample_rate == 16000
    return ["hello world" if len(w) == 4 * 1600 else "goodbye" for w in waveforms]


def test_spoken_fidelity_with_pluggable_detokenizer_and_asr():
    fidelity = get_reward("spoken_fidelity", detokenizer=fake_detokenizer, asr=fake_asr)
    four = "<audio_1><audio_2><audio_3><audio_4>"
    completions = [
        "</think><tts_start>hello"
        + four
        + " world"
        + "<audio_6561>" * 4
        + "<tts_end>",  # 4 real codes
        "</think><tts_start>hello" + four + " world" + four + "<tts_end>",  # 8 codes: "goodbye"
        "</think>text only",
    ]
    assert fidelity(None, completions) == [1.0, 0.0, None]
    against_label = get_reward(
        "spoken_fidelity", detokenizer=fake_detokenizer, asr=fake_asr, compare_to="label"
    )
    assert against_label(None, completions, label=["hello there", "goodbye", "x"]) == [
        0.5,
        1.0,
        None,
    ]


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    """A randomly initialised Whisper with a 33-token character vocabulary, saved offline."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
    )

    path = tmp_path_factory.mktemp("tiny_whisper")
    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz Ġ")}
    for token in (
        "<|endoftext|>",
        "<|startoftranscript|>",
        "<|en|>",
        "<|transcribe|>",
        "<|notimestamps|>",
    ):
        vocab[token] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    eos = vocab["<|endoftext|>"]
    tokenizer = WhisperTokenizer(
        str(path / "vocab.json"),
        str(path / "merges.txt"),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    config = WhisperConfig(
        vocab_size=len(vocab),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_mel_bins=80,
        max_target_positions=32,
        decoder_start_token_id=vocab["<|startoftranscript|>"],
        eos_token_id=eos,
        pad_token_id=eos,
        bos_token_id=eos,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        eos_token_id=eos,
        pad_token_id=eos,
        max_new_tokens=6,
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(path)
    return str(path)


def test_pipeline_asr_on_a_tiny_whisper(tiny_whisper):
    from rewards.asr import PipelineASR

    asr = PipelineASR(tiny_whisper, batch_size=2)
    rng = np.random.default_rng(0)
    texts = asr(
        [rng.normal(size=24000).astype(np.float32), np.zeros(4800, np.float32)], sample_rate=24000
    )
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert asr([], 16000) == []
    # By path from a recipe: the reward builds the pipeline itself and scores in [0, 1].
    fidelity = get_reward(
        "spoken_fidelity", detokenizer=fake_detokenizer, asr=tiny_whisper, compare_to="label"
    )
    scores = fidelity(None, ["<tts_start>hi" + "<audio_3>" * 4 + "<tts_end>"], label=["hi"])
    assert len(scores) == 1 and 0.0 <= scores[0] <= 1.0

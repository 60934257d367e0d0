"""Tiny randomly initialised checkpoints of each model family, built locally with no network.

Each has its family's architecture, vocabulary layout and files, only small: what tests, CI and the
demo run on. The configs are the released ones with widths and depths shrunk (the same for every
family: a 4-layer, 128-wide decoder and a 2-layer, 128-wide audio encoder), and the tokenizer is
trained on a local corpus. ``rlhf make-tiny`` wraps ``make_tiny``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig

from rollouts.tokenizer import train_chatml_tokenizer, train_tokenizer
from rollouts.tokens import NUM_AUDIO_CODES
from rollouts.types import SamplingParams

ARCHS = ("step-audio-2", "qwen2-audio", "qwen2.5-omni", "text")
DECODER = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
ENCODER = {
    "d_model": 128,
    "encoder_layers": 2,
    "encoder_attention_heads": 4,
    "encoder_ffn_dim": 512,
}
QWEN2_AUDIO_WINDOW_S = 6
"""Qwen2-Audio's encoder hears a fixed window (30 s released); the tiny one 6 s, enough for the
synthetic clips (at most 4.5 s) and a fifth of the encoder work."""


def make_tiny(
    out_dir: str | os.PathLike,
    corpus: Iterable[str],
    num_audio_codes: int = NUM_AUDIO_CODES,
    seed: int = 0,
    arch: str = "step-audio-2",
) -> Path:
    """Train a tokenizer on ``corpus``, build a seeded random ``arch`` model, save both and the
    processor.

    ``out_dir`` then loads with ``rollouts.policy.Policy.from_pretrained`` and with the family's
    own transformers classes (``AutoModelForCausalLM`` for Step-Audio 2, after ``import
    rollouts``). Written to a temporary sibling directory and renamed into place, so a crash never
    leaves half a checkpoint. An existing checkpoint there is replaced; any other non-empty
    directory is refused. ``num_audio_codes`` applies to Step-Audio 2, the one family that speaks.
    """
    if arch not in BUILDERS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    out = Path(out_dir)
    if out.exists() and (
        not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").exists())
    ):
        raise FileExistsError(f"{out}: exists and is not a checkpoint directory; not overwriting")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor = BUILDERS[arch](list(corpus), num_audio_codes)
    _sampling_defaults(model, processor)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # beside out_dir, so the rename stays on one filesystem
    try:
        model.save_pretrained(tmp)  # safetensors + config.json + generation_config.json
        processor.save_pretrained(tmp)  # tokenizer (+ feature extractor) + processor config
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        if old.exists() and not out.exists():  # put the previous checkpoint back
            old.rename(out)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out


def _sampling_defaults(model, processor) -> None:
    """The published sampling settings, stopping at the end of the assistant turn."""
    tokenizer = getattr(processor, "tokenizer", processor)
    defaults = SamplingParams()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=defaults.temperature,
        top_p=defaults.top_p,
        top_k=defaults.top_k,
        repetition_penalty=defaults.repetition_penalty,
    )


def _step_audio_2(corpus: list[str], num_audio_codes: int):
    from rollouts.modeling import StepAudio2ForCausalLM, tiny_config
    from rollouts.processor import StepAudio2Processor
    from rollouts.tokens import SpecialIds

    tokenizer = train_tokenizer(corpus, num_audio_codes=num_audio_codes)
    ids = SpecialIds.from_tokenizer(tokenizer)
    config = tiny_config(
        vocab_size=len(tokenizer),
        audio_start_token_id=ids.audio_start,
        audio_patch_token_id=ids.audio_patch,
        eos_token_id=ids.eot,
        pad_token_id=ids.pad,
    )
    return StepAudio2ForCausalLM(config), StepAudio2Processor(tokenizer)


def _text_config(tokenizer, **extra: Any) -> dict[str, Any]:
    return {
        **DECODER,
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **extra,
    }


def _whisper_features(window_s: int):
    from transformers import WhisperFeatureExtractor

    # 128 mel bins as in Qwen2-Audio and Qwen2.5-Omni (Whisper large-v3's front end)
    return WhisperFeatureExtractor(feature_size=128, chunk_length=window_s)


def _he_init_convolutions(encoder: torch.nn.Module) -> None:
    """He init for a Whisper-style encoder's two convolutions, as our tiny Step-Audio 2 has: with
    transformers' default N(0, 0.02) a random encoder shrinks the mel input to noise, and a tiny
    model trained from scratch never learns to hear its audio."""
    with torch.no_grad():
        for conv in (encoder.conv1, encoder.conv2):
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            torch.nn.init.zeros_(conv.bias)


def _qwen2_audio(corpus: list[str], num_audio_codes: int):
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
    )
    from transformers.models.whisper.modeling_whisper import sinusoids

    tokenizer = train_chatml_tokenizer(corpus)
    frames = QWEN2_AUDIO_WINDOW_S * 100  # 10 ms hop
    config = Qwen2AudioConfig(
        audio_config={**ENCODER, "num_mel_bins": 128, "max_source_positions": frames // 2},
        text_config={"model_type": "qwen2", **_text_config(tokenizer)},
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    processor = Qwen2AudioProcessor(_whisper_features(QWEN2_AUDIO_WINDOW_S), tokenizer)
    model = Qwen2AudioForConditionalGeneration(config)
    encoder = model.model.audio_tower
    with torch.no_grad():  # Whisper's fixed table, which the released checkpoint stores
        encoder.embed_positions.weight.copy_(sinusoids(*encoder.embed_positions.weight.shape))
    _he_init_convolutions(encoder)
    return model, processor


def _qwen2_5_omni(corpus: list[str], num_audio_codes: int):
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    from rollouts.adapters.qwen2_5_omni import OmniAudioProcessor

    tokenizer = train_chatml_tokenizer(corpus)
    head_dim = DECODER["hidden_size"] // DECODER["num_attention_heads"]
    # multimodal rotary sections (time, height, width) split head_dim / 2 frequencies: 16, 24, 24
    # of 64 in the released model, in the same proportions here
    mrope = [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]
    token = tokenizer.convert_tokens_to_ids
    config = Qwen2_5OmniThinkerConfig(
        audio_config={**ENCODER, "num_mel_bins": 128, "output_dim": DECODER["hidden_size"]},
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": DECODER["hidden_size"],
        },
        text_config=_text_config(
            tokenizer,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope},
        ),
        audio_token_id=token("<|AUDIO|>"),
        audio_start_token_id=token("<|audio_bos|>"),
        audio_end_token_id=token("<|audio_eos|>"),
        image_token_id=token("<|IMAGE|>"),
        video_token_id=token("<|VIDEO|>"),
        vision_start_token_id=token("<|vision_bos|>"),
        vision_end_token_id=token("<|vision_eos|>"),
    )
    processor = OmniAudioProcessor(_whisper_features(30), tokenizer)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config)
    _he_init_convolutions(model.model.audio_tower)
    return model, processor


def _text(corpus: list[str], num_audio_codes: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = train_chatml_tokenizer(corpus)
    return Qwen2ForCausalLM(Qwen2Config(**_text_config(tokenizer))), tokenizer


BUILDERS: dict[str, Callable[[list[str], int], tuple[Any, Any]]] = {
    "step-audio-2": _step_audio_2,
    "qwen2-audio": _qwen2_audio,
    "qwen2.5-omni": _qwen2_5_omni,
    "text": _text,
}

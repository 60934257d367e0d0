"""A tiny randomly initialised Step-Audio 2 checkpoint, built locally with no network.

Same architecture, vocabulary layout and files as the released model, only small: what tests, CI
and the demo run on. ``rlhf make-tiny`` wraps ``make_tiny``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import GenerationConfig

from rollouts.modeling import StepAudio2ForCausalLM, tiny_config
from rollouts.processor import StepAudio2Processor
from rollouts.tokenizer import train_tokenizer
from rollouts.tokens import NUM_AUDIO_CODES, SpecialIds
from rollouts.types import SamplingParams


def make_tiny(
    out_dir: str | os.PathLike,
    corpus: Iterable[str],
    num_audio_codes: int = NUM_AUDIO_CODES,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on ``corpus``, build a seeded random model, save both and the processor.

    ``out_dir`` then loads with ``AutoModelForCausalLM`` (after ``import rollouts``),
    ``AutoTokenizer`` and ``StepAudio2Processor``. Written to a temporary sibling directory and
    renamed into place, so a crash never leaves half a checkpoint. An existing checkpoint there is
    replaced; any other non-empty directory is refused.
    """
    out = Path(out_dir)
    if out.exists() and (
        not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").exists())
    ):
        raise FileExistsError(f"{out}: exists and is not a checkpoint directory; not overwriting")

    tokenizer = train_tokenizer(corpus, num_audio_codes=num_audio_codes)
    ids = SpecialIds.from_tokenizer(tokenizer)
    config = tiny_config(
        vocab_size=len(tokenizer),
        audio_start_token_id=ids.audio_start,
        audio_patch_token_id=ids.audio_patch,
        eos_token_id=ids.eot,
        pad_token_id=ids.pad,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = StepAudio2ForCausalLM(config)
    defaults = SamplingParams()  # the published sampling settings
    model.generation_config = GenerationConfig(
        eos_token_id=ids.eot,
        pad_token_id=ids.pad,
        do_sample=True,
        temperature=defaults.temperature,
        top_p=defaults.top_p,
        top_k=defaults.top_k,
        repetition_penalty=defaults.repetition_penalty,
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # beside out_dir, so the rename stays on one filesystem
    try:
        model.save_pretrained(tmp)  # safetensors + config.json + generation_config.json
        StepAudio2Processor(tokenizer).save_pretrained(tmp)  # tokenizer + processor_config.json
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

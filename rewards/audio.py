"""Waveforms for model-backed rewards, whatever form the batch carries them in.

``rollouts.audio`` is the real audio loader, but rewards may not import it; this is the small part
rewards need: decode bytes with soundfile, mix to mono, resample with soxr.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import soundfile
import soxr

SAMPLE_RATE = 16000


def to_mono(
    audio: Any, sample_rate: int | None = None, target_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """A float32 mono waveform at ``target_rate``.

    ``audio``: an array (at ``sample_rate``, default 16 kHz), a list of clips (concatenated),
    encoded bytes, or a Hugging Face audio dict (``array`` + ``sampling_rate``, or ``bytes``).
    """
    rate = sample_rate or SAMPLE_RATE
    if isinstance(audio, Mapping):
        if audio.get("array") is not None:
            audio, rate = audio["array"], audio.get("sampling_rate", rate)
        else:
            audio = audio.get("bytes")
    if isinstance(audio, (bytes, bytearray)):
        audio, rate = soundfile.read(io.BytesIO(audio), dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)
    elif isinstance(audio, Sequence) and audio and not np.isscalar(audio[0]):
        audio = np.concatenate([np.asarray(clip, dtype=np.float32).reshape(-1) for clip in audio])
    wav = np.asarray(audio, dtype=np.float32)
    if wav.ndim == 2:  # (samples, channels) or (channels, samples): mix the short axis
        wav = wav.mean(axis=int(np.argmin(wav.shape)))
    if wav.size == 0:
        raise ValueError("empty waveform")
    if rate != target_rate:
        wav = soxr.resample(wav, rate, target_rate).astype(np.float32)
    return wav


def sample_rates(kwargs: Mapping[str, Any], n: int) -> list[int | None]:
    """The ``sample_rate`` keyword per sample: one int for the batch, or a list."""
    rate = kwargs.get("sample_rate")
    if isinstance(rate, Sequence):
        return list(rate)
    return [rate] * n

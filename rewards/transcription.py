"""Transcription fidelity: word / character error rates mapped to rewards.

:func:`transcription` scores the text answer against a reference column (ASR tasks).
:class:`SpokenFidelity` scores what a spoken answer actually says: its audio codes go through a
``detokenizer`` to a waveform and an ``asr`` back to text, which is compared with the answer's
own text stream (is the speech faithful to the text?) or with a reference column.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jiwer
import numpy as np

from rewards.audio import SAMPLE_RATE, to_mono
from rewards.normalize import TextNormalizer
from rewards.registry import resolve, reward
from rewards.text import AUDIO_PAD_CODE, CJK, column, completion_fields

Detokenizer = Callable[[list[int]], tuple[np.ndarray, int]]
ASR = Callable[[list[np.ndarray], int], list[str]]


def error_rate(
    reference: str, hypothesis: str, metric: str = "auto", normalizer: TextNormalizer | None = None
) -> float | None:
    """WER or CER after normalising both texts; None when the reference is empty.

    ``metric``: ``"wer"``, ``"cer"``, or ``"auto"`` — CER when the reference holds Chinese,
    Japanese or Korean characters (no spaces between words), WER otherwise.
    """
    normalizer = normalizer or TextNormalizer()
    if metric == "auto":
        metric = "cer" if CJK.search(reference or "") else "wer"
    if metric not in ("wer", "cer"):
        raise ValueError(f"metric must be 'wer', 'cer' or 'auto', got {metric!r}")
    if metric == "cer" and CJK.search(reference or ""):
        normalizer = TextNormalizer(
            normalizer.lowercase, normalizer.remove_punctuation, False, remove_whitespace=True
        )
    ref, hyp = normalizer(reference or ""), normalizer(hypothesis or "")
    if not ref:
        return None
    if not hyp:
        return 1.0
    return float(jiwer.wer(ref, hyp) if metric == "wer" else jiwer.cer(ref, hyp))


def error_to_reward(error: float, mapping: str = "linear", scale: float = 3.0) -> float:
    """``linear``: 1 − error clipped to [0, 1]; ``tanh``: 1 − tanh(scale·error) (Llasa-GRPO)."""
    if mapping == "linear":
        return min(1.0, max(0.0, 1.0 - error))
    if mapping == "tanh":
        return 1.0 - math.tanh(scale * error)
    raise ValueError(f"mapping must be 'linear' or 'tanh', got {mapping!r}")


@reward("transcription")
def transcription(
    prompts: list[Any],
    completions: list[Any],
    reference_column: str = "label",
    source: str = "answer",
    metric: str = "auto",
    mapping: str = "linear",
    scale: float = 3.0,
    lowercase: bool = True,
    remove_punctuation: bool = True,
    digits_to_words: bool = True,
    **kwargs: Any,
) -> list[float | None]:
    """Reward the ``source`` text (``answer`` or ``spoken_text``) for matching the reference.

    Restrict it to transcription rows in the recipe: ``where: {task: transcribe}``.
    """
    if source not in ("answer", "spoken_text"):
        raise ValueError(f"transcription: source must be 'answer' or 'spoken_text', got {source!r}")
    normalizer = TextNormalizer(lowercase, remove_punctuation, digits_to_words)
    references = column(kwargs, reference_column, "transcription")
    scores: list[float | None] = []
    for parsed, ref in zip(completion_fields(completions, kwargs), references, strict=True):
        error = (
            None
            if ref is None
            else error_rate(str(ref), getattr(parsed, source), metric, normalizer)
        )
        scores.append(None if error is None else error_to_reward(error, mapping, scale))
    return scores


@reward("spoken_fidelity")
class SpokenFidelity:
    """Transcribe the spoken answer and score it against a text.

    Args:
        detokenizer: ``codes -> (waveform, sample_rate)``, or ``"package.module:name"`` of one.
        asr: ``(waveforms, sample_rate) -> texts``, ``"package.module:name"`` of one, or a path
            to a Whisper-family checkpoint (loaded with :class:`rewards.asr.PipelineASR`).
        compare_to: ``"spoken_text"`` (the answer's own text stream) or a column name
            (e.g. ``"label"``).
        device: for an ASR checkpoint.

    Samples without audio codes get None. The other arguments are those of :func:`transcription`.
    """

    def __init__(
        self,
        detokenizer: Detokenizer | str,
        asr: ASR | str,
        compare_to: str = "spoken_text",
        metric: str = "auto",
        mapping: str = "linear",
        scale: float = 3.0,
        lowercase: bool = True,
        remove_punctuation: bool = True,
        digits_to_words: bool = True,
        audio_pad_code: int = AUDIO_PAD_CODE,
        device: str | int | None = None,
    ):
        self.detokenizer = resolve(detokenizer)
        if isinstance(asr, str) and ":" not in asr:
            from rewards.asr import PipelineASR

            asr = PipelineASR(asr, device=device)
        self.asr = resolve(asr)
        self.compare_to = compare_to
        self.metric, self.mapping, self.scale = metric, mapping, scale
        self.normalizer = TextNormalizer(lowercase, remove_punctuation, digits_to_words)
        self.audio_pad_code = audio_pad_code

    def __call__(
        self, prompts: list[Any], completions: list[Any], **kwargs: Any
    ) -> list[float | None]:
        parsed = completion_fields(completions, kwargs)
        if self.compare_to == "spoken_text":
            references = [p.spoken_text for p in parsed]
        else:
            references = column(kwargs, self.compare_to, "spoken_fidelity")
        rows = [
            i
            for i, p in enumerate(parsed)
            if references[i] and any(code != self.audio_pad_code for code in p.audio_codes)
        ]
        waveforms = []
        for i in rows:
            codes = [code for code in parsed[i].audio_codes if code != self.audio_pad_code]
            wav, rate = self.detokenizer(codes)
            waveforms.append(to_mono(wav, rate))
        texts = self.asr(waveforms, SAMPLE_RATE) if waveforms else []
        scores: list[float | None] = [None] * len(parsed)
        for i, text in zip(rows, texts, strict=True):
            error = error_rate(str(references[i]), text, self.metric, self.normalizer)
            scores[i] = None if error is None else error_to_reward(error, self.mapping, self.scale)
        return scores

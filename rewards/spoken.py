"""The spoken answer itself: a well-formed TA4 reply that says the intended words at the intended
length.

A policy trained on text questions can keep answering aloud in form while its speech drifts: five
times too many audio codes, or a text stream that no longer says the reply. :func:`spoken_answer`
scores what can be checked offline, without a vocoder or an ASR model: the TA4 structure
(:func:`rewards.format.ta4_format`), the text stream against the intended reply (WER, as
:func:`rewards.transcription.transcription`) and the number of audio codes against the target's.
:class:`rewards.transcription.SpokenFidelity` adds an ASR of the decoded codes where one is at hand.
"""

from __future__ import annotations

from typing import Any

from rewards.format import ta4_format
from rewards.registry import reward
from rewards.text import AUDIO_PAD_CODE, completion_fields
from rewards.transcription import transcription


@reward("spoken_answer")
def spoken_answer(
    prompts: list[Any],
    completions: list[Any],
    reference_column: str = "label",
    codes_column: str | None = "target_audio_codes",
    spoken_column: str = "spoken",
    audio_pad_code: int = AUDIO_PAD_CODE,
    **kwargs: Any,
) -> list[float | None]:
    """0.0 for a row to be answered aloud without a well-formed TA4 answer; otherwise the mean of
    the text stream's fidelity to ``reference_column`` (1 − WER, clipped at 0) and the length
    score ``min(n, m) / max(n, m)`` of its n audio codes (pads not counted) against the m codes
    of ``codes_column`` (left out when that column is None or empty). None for the other rows.

    Args:
        reference_column: the intended reply, as text.
        codes_column: the intended reply's audio codes (only their number is used).
        spoken_column: which rows are meant to be answered aloud; without it, the rows whose
            completion holds a TA4 answer.
    """
    shape = ta4_format(
        prompts, completions, audio_pad_code=audio_pad_code, spoken_column=spoken_column, **kwargs
    )
    fidelity = transcription(
        prompts, completions, reference_column=reference_column, source="spoken_text", **kwargs
    )
    targets = kwargs.get(codes_column) if codes_column else None
    parsed = completion_fields(completions, kwargs)
    scores: list[float | None] = []
    for i, (ok, text_score) in enumerate(zip(shape, fidelity, strict=True)):
        if ok is None:
            scores.append(None)
            continue
        if not ok:
            scores.append(0.0)
            continue
        parts = [0.0 if text_score is None else text_score]
        wanted = len(targets[i] or []) if targets is not None else 0
        if wanted:
            spoken = sum(code != audio_pad_code for code in parsed[i].audio_codes)
            parts.append(min(spoken, wanted) / max(spoken, wanted))
        scores.append(sum(parts) / len(parts))
    return scores

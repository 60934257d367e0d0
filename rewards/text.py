"""Reading a completion string: its think part, its answer, its spoken text and its audio codes.

The rollout engine passes ``think`` / ``answer`` / ``spoken_text`` / ``audio_codes`` as keyword
arguments, parsed by ``rollouts.chat`` (the one real parser). Rewards used without the engine
(plain TRL, ``rlhf rewards score`` on a JSONL file) get only the completion strings, so
:func:`completion_fields` falls back to :func:`split_completion`, a small best-effort reading of
the same format from the text, special tokens kept.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

THINK, THINK_END = "<think>", "</think>"
TTS_START, TTS_END, TTS_PAD = "<tts_start>", "<tts_end>", "<tts_pad>"
TOOL_CALL, TOOL_CALL_END = "<tool_call>", "</tool_call>"
ENGINE_FIELDS = ("think", "answer", "spoken_text", "audio_codes")
AUDIO_PAD_CODE = 6561  # `<audio_6561>` pads the audio stream of a TA4 answer (CosyVoice 2 codebook)

AUDIO_TOKEN = re.compile(r"<audio_(\d+)>")
# Control tokens such as <|EOT|> / <|endoftext|> that may close a decoded completion.
CONTROL_TOKEN = re.compile(r"<\|[^<>|]{1,40}\|>")
TOOL_BLOCK = re.compile(re.escape(TOOL_CALL) + r".*?(?:" + re.escape(TOOL_CALL_END) + r"|$)", re.S)
SPEECH_TOKEN = re.compile(r"<audio_\d+>|<tts_start>|<tts_end>|<tts_pad>")
# Kana, CJK ideographs and Hangul: scripts written without spaces between words.
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
# One "word": a CJK character or a run of word characters.
WORD = re.compile(CJK.pattern + r"|\w+")


@dataclass(frozen=True)
class Completion:
    """One completion, read: ``think`` is None when there is no think block."""

    text: str
    think: str | None
    answer: str
    spoken_text: str
    audio_codes: list[int] = field(default_factory=list)
    think_closed: bool = False


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or TRL's conversational form (a list of messages)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        content = completion[-1].get("content") or ""
        if isinstance(content, str):
            return content
        return "".join(part.get("text") or "" for part in content if isinstance(part, Mapping))
    return "" if completion is None else str(completion)


def prompt_text(prompt: Any) -> str:
    """The last user text of a prompt (a string or a list of chat messages)."""
    if isinstance(prompt, str) or prompt is None:
        return prompt or ""
    users = [m for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
    return completion_text(users[-1:] or prompt).strip()


def strip_speech_tokens(text: str) -> str:
    """Text with audio codes, TTS markers and control tokens removed."""
    return CONTROL_TOKEN.sub("", SPEECH_TOKEN.sub("", text))


def count_words(text: str) -> int:
    """Words in ``text``; each CJK character counts as one word."""
    return len(WORD.findall(text))


def split_completion(text: str, audio_pad_code: int = AUDIO_PAD_CODE) -> Completion:
    """Split a decoded completion into think, answer, spoken text and audio codes.

    Works whether or not ``<think>`` / ``<tts_start>`` were prefilled in the prompt: an answer that
    holds audio codes or ``<tts_end>`` but no ``<tts_start>`` is read as a prefilled spoken answer.
    Audio pad codes are dropped from ``audio_codes``.
    """
    text = completion_text(text)
    body = CONTROL_TOKEN.sub("", text)
    if THINK_END in body:
        head, _, rest = body.partition(THINK_END)
        think, closed = head.replace(THINK, "", 1).strip(), True
    elif body.lstrip().startswith(THINK):
        think, rest, closed = body.lstrip()[len(THINK) :].strip(), "", False
    else:
        think, rest, closed = None, body, False
    rest = TOOL_BLOCK.sub("", rest)
    codes = [int(k) for k in AUDIO_TOKEN.findall(rest)]
    spoken_part = rest
    if TTS_START not in rest and (TTS_END in rest or codes):
        spoken_part = TTS_START + rest
    spoken = []
    for block in spoken_part.split(TTS_START)[1:]:
        spoken.append(strip_speech_tokens(block.split(TTS_END)[0]))
    return Completion(
        text=text,
        think=think,
        answer=strip_speech_tokens(rest).strip(),
        spoken_text="".join(spoken).strip(),
        audio_codes=[k for k in codes if k != audio_pad_code],
        think_closed=closed,
    )


def completion_fields(completions: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Completion]:
    """Each completion read: the engine's parsed fields when the batch carries all of them
    (``think``, ``answer``, ``spoken_text``, ``audio_codes``), else :func:`split_completion`.

    All four or none: a lone ``answer`` is more likely a dataset's gold answer (GSM8K) than ours.
    """
    engine = all(isinstance(kwargs.get(key), Sequence) for key in ENGINE_FIELDS)
    out = []
    for i, completion in enumerate(completions):
        text = completion_text(completion)
        if not engine:
            out.append(split_completion(text))
            continue
        out.append(
            Completion(
                text=text,
                think=kwargs["think"][i],
                answer=kwargs["answer"][i] or "",
                spoken_text=kwargs["spoken_text"][i] or "",
                audio_codes=list(kwargs["audio_codes"][i] or []),
                think_closed=THINK_END in text,
            )
        )
    return out


def column(kwargs: Mapping[str, Any], name: str, reward: str) -> list[Any]:
    """The dataset column ``name`` (TRL's ``solution`` stands in for ``label``), or a clear error."""
    if name in kwargs:
        return list(kwargs[name])
    if name == "label" and "solution" in kwargs:
        return list(kwargs["solution"])
    available = sorted(k for k in kwargs if k not in ("prompts", "completions"))
    raise KeyError(f"{reward}: no column {name!r} in the batch (columns: {available})")

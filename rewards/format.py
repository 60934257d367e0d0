"""Format rewards: think/answer structure, think length, TA4 spoken answers, tool calls.

They read the raw completion string, special tokens kept, and score 1.0 or 0.0 (the soft think
length excepted). Step-Audio 2's first PPO stage trains on :func:`think_length` alone; Step-Audio-R1
adds "reasoning present" (``think_length`` without a maximum) to answer accuracy so that thinking
does not shrink.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from rewards.registry import reward
from rewards.text import (
    AUDIO_PAD_CODE,
    CONTROL_TOKEN,
    THINK,
    THINK_END,
    TOOL_CALL,
    TOOL_CALL_END,
    TTS_END,
    TTS_PAD,
    TTS_START,
    completion_fields,
    completion_text,
    count_words,
)


@reward("think_format")
def think_format(
    prompts: list[Any],
    completions: list[Any],
    think_tags: Sequence[str] = (THINK, THINK_END),
    answer_tags: Sequence[str] | None = None,
    think_prefilled: bool | None = None,
    **kwargs: Any,
) -> list[float]:
    """1.0 for ``[<think>] reasoning </think> answer``: each tag once, non-empty parts.

    Args:
        think_tags: opening and closing tag of the reasoning.
        answer_tags: when given (e.g. ``["<answer>", "</answer>"]``) the whole answer must be
            wrapped in them.
        think_prefilled: True when the prompt ends with the opening tag (Step-Audio 2), so the
            completion must not repeat it; False when the completion must open it; None accepts
            both.
    """
    return [
        float(_well_formed(completion_text(c), think_tags, answer_tags, think_prefilled))
        for c in completions
    ]


def _well_formed(text, think_tags, answer_tags, think_prefilled) -> bool:
    open_tag, close_tag = think_tags
    text = CONTROL_TOKEN.sub("", text).strip()
    opened = text.count(open_tag)
    if text.count(close_tag) != 1 or opened > 1:
        return False
    if opened and not text.startswith(open_tag):
        return False
    if (think_prefilled is True and opened) or (think_prefilled is False and not opened):
        return False
    reasoning, _, answer = text[len(open_tag) if opened else 0 :].partition(close_tag)
    answer = answer.strip()
    if not reasoning.strip() or not answer:
        return False
    if answer_tags is None:
        return True
    a_open, a_close = answer_tags
    if text.count(a_open) != 1 or text.count(a_close) != 1:
        return False
    return (
        answer.startswith(a_open)
        and answer.endswith(a_close)
        and bool(answer[len(a_open) : -len(a_close)].strip())
    )


@reward("think_length")
def think_length(
    prompts: list[Any],
    completions: list[Any],
    max_words: int | None = None,
    min_words: int = 1,
    max_tokens: int | None = None,
    tokenizer: str | None = None,
    **kwargs: Any,
) -> list[float]:
    """Step-Audio 2's binary reward: 1.0 when reasoning is present (closed ``</think>``, at least
    ``min_words``) and no longer than ``max_words`` words / ``max_tokens`` tokens.

    Without a maximum this is "reasoning present". Counting tokens needs ``tokenizer``, a path or
    hub id loaded with ``AutoTokenizer``. CJK characters count as one word each.
    """
    if max_tokens is not None and tokenizer is None:
        raise ValueError("think_length: max_tokens needs a tokenizer path")
    scores = []
    for parsed in completion_fields(completions, kwargs):
        think = parsed.think or ""
        ok = parsed.think_closed and count_words(think) >= max(min_words, 1)
        if ok and max_words is not None:
            ok = count_words(think) <= max_words
        if ok and max_tokens is not None:
            ok = (
                len(_tokenizer(tokenizer)(think, add_special_tokens=False)["input_ids"])
                <= max_tokens
            )
        scores.append(float(ok))
    return scores


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@reward("think_length_soft")
def think_length_soft(
    prompts: list[Any],
    completions: list[Any],
    target_words: int = 100,
    alpha: float = 0.1,
    delta: float = 0.5,
    **kwargs: Any,
) -> list[float]:
    """AudSemThinker's soft cap ``clip(alpha·(target_words − n_words) + delta, 0, 1)``.

    Full reward up to about ``target_words``, falling linearly to 0 just past it; 0 without a
    closed think block.
    """
    scores = []
    for parsed in completion_fields(completions, kwargs):
        if parsed.think is None or not parsed.think_closed:
            scores.append(0.0)
            continue
        value = alpha * (target_words - count_words(parsed.think)) + delta
        scores.append(min(1.0, max(0.0, value)))
    return scores


_TA4_PIECE = re.compile(r"(<tts_start>|<tts_end>|<tts_pad>|<audio_\d+>)")


@reward("ta4_format")
def ta4_format(
    prompts: list[Any],
    completions: list[Any],
    audio_pad_code: int = AUDIO_PAD_CODE,
    spoken_column: str = "spoken",
    **kwargs: Any,
) -> list[float | None]:
    """1.0 for a well-formed TA4 spoken answer, 0.0 for a broken one, None for a text answer.

    Well-formed: ``<tts_start>`` and ``<tts_end>`` balanced; inside, chunks of one text token and
    four audio codes; the text pad ``<tts_pad>`` and the audio pad code only at the end, in every
    chunk after their first one; at least one real chunk. A row whose ``spoken`` column is True
    must hold a spoken answer. ``<tts_start>`` may have been prefilled.

    From text alone two text tokens in a row read as one piece; pass token ids through
    ``rollouts.chat`` for that check.
    """
    spoken_rows = kwargs.get(spoken_column)
    scores: list[float | None] = []
    for i, completion in enumerate(completions):
        text = CONTROL_TOKEN.sub("", completion_text(completion))
        answer = text.partition(THINK_END)[2] if THINK_END in text else text
        required = bool(spoken_rows[i]) if isinstance(spoken_rows, Sequence) else False
        if not _TA4_PIECE.search(answer):
            scores.append(0.0 if required else None)
            continue
        scores.append(float(_ta4_ok(answer, audio_pad_code)))
    return scores


def _ta4_ok(answer: str, pad_code: int) -> bool:
    pieces = [p for p in _TA4_PIECE.split(answer) if p]
    first_start = pieces.index(TTS_START) if TTS_START in pieces else len(pieces)
    if TTS_START not in pieces or pieces[:first_start].count(TTS_END):
        pieces = [TTS_START, *pieces]  # `<tts_start>` was prefilled in the prompt
    blocks, inside, current = [], False, []
    for piece in pieces:
        if piece == TTS_START:
            if inside:
                return False
            inside, current = True, []
        elif piece == TTS_END:
            if not inside:
                return False
            blocks.append(current)
            inside = False
        elif inside:
            current.append(piece)
        elif piece == TTS_PAD or piece.startswith("<audio_"):
            return False  # speech tokens outside a spoken block
    return not inside and bool(blocks) and all(_chunks_ok(block, pad_code) for block in blocks)


def _chunks_ok(pieces: list[str], pad_code: int) -> bool:
    if not pieces or len(pieces) % 5:
        return False
    text_padded = audio_padded = False
    for start in range(0, len(pieces), 5):
        text, audio = pieces[start], pieces[start + 1 : start + 5]
        if text.startswith("<audio_"):
            return False
        if text == TTS_PAD:
            text_padded = True
        elif text_padded:
            return False
        codes = []
        for token in audio:
            if not token.startswith("<audio_"):
                return False
            codes.append(int(token[len("<audio_") : -1]))
        for code in codes:
            if code > pad_code:
                return False
            if code == pad_code:
                audio_padded = True
            elif audio_padded:
                return False
        if text_padded and all(code == pad_code for code in codes):
            return False  # a chunk of pads only: the answer should have ended
    return True


_TOOL_BLOCK = re.compile(re.escape(TOOL_CALL) + r"(.*?)" + re.escape(TOOL_CALL_END), re.S)


@reward("tool_call")
def tool_call(
    prompts: list[Any],
    completions: list[Any],
    known_tools: Sequence[str | Mapping[str, Any]] | None = None,
    tools_column: str = "tools",
    **kwargs: Any,
) -> list[float | None]:
    """1.0 when every ``<tool_call>function\\n{name}\\n{json}</tool_call>`` is valid; None without
    tool calls.

    Valid: tags balanced, a known tool name, arguments that parse as a JSON object holding the
    schema's required parameters. Known tools come from ``known_tools`` (names or JSON schemas), else
    from the row's ``tools`` column (schemas); with neither, any identifier is accepted.
    """
    rows = kwargs.get(tools_column)
    scores: list[float | None] = []
    for i, completion in enumerate(completions):
        text = completion_text(completion)
        if TOOL_CALL not in text and TOOL_CALL_END not in text:
            scores.append(None)
            continue
        known = _tool_schemas(
            known_tools
            if known_tools is not None
            else (rows[i] if isinstance(rows, Sequence) else None)
        )
        calls = _TOOL_BLOCK.findall(text)
        balanced = len(calls) == text.count(TOOL_CALL) == text.count(TOOL_CALL_END)
        scores.append(float(balanced and all(_call_ok(call, known) for call in calls)))
    return scores


def _tool_schemas(tools: Any) -> dict[str, Mapping[str, Any]] | None:
    """``{name: parameters schema}`` from names or OpenAI-style schemas; None means any tool."""
    if not tools:
        return None
    schemas = {}
    for tool in tools:
        if isinstance(tool, str):
            schemas[tool] = {}
        elif isinstance(tool, Mapping):
            spec = tool.get("function", tool)
            schemas[spec.get("name", "")] = spec.get("parameters") or {}
    return schemas


def _call_ok(call: str, known: dict[str, Mapping[str, Any]] | None) -> bool:
    kind, _, rest = call.strip().partition("\n")
    name, _, arguments = rest.partition("\n")
    name = name.strip()
    if kind.strip() != "function" or not name.isidentifier():
        return False
    if known is not None and name not in known:
        return False
    try:
        args = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        return False
    if not isinstance(args, dict):
        return False
    required = (known or {}).get(name, {}).get("required", [])
    return all(key in args for key in required)

"""Step-Audio 2's chat format: the one place that builds prompts and reads completions.

Layout (as StepFun's released ``stepaudio2.py`` builds it):

* a turn is ``<|BOT|>{role}\\n{content}<|EOT|>`` with roles ``system``, ``human`` (HF ``user``),
  ``assistant`` and ``function_output`` (HF ``tool``); no BOS. Like StepFun's code, each piece
  (turn header, text part, audio block) is tokenized on its own and the ids concatenated;
* an audio clip is ``<audio_start>`` + ``<audio_patch>`` x n + ``<audio_end>``, one block per
  25 s piece of the clip;
* tool schemas are a ``<|BOT|>tool_json_schemas\\n[...]<|EOT|>`` turn after the system turn; a call
  is ``<tool_call>function\\n{name}\\n{json args}</tool_call>``;
* the generation prompt is ``<|BOT|>assistant\\n``, prefilled with ``<think>\\n`` in think mode or
  ``<tts_start>`` for a spoken answer without thinking. After ``</think>`` comes the answer: text,
  or ``\\n\\n<tts_start>`` and a spoken answer;
* a spoken answer is TA4 (see ``build_ta4``), then ``<tts_end>``, then optional plain text.

Prior assistant turns are rendered without their thinking; a spoken one as ``<tts_start>`` + TA4.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rollouts.tokens import (
    BOT,
    EOT,
    NUM_AUDIO_CODES,
    PAD,
    SPECIAL_TOKENS,
    THINK,
    THINK_END,
    TOOL_CALL,
    TOOL_CALL_END,
    TTS_END,
    TTS_PAD,
    TTS_START,
    SpecialIds,
)

TrainOn = Literal["text", "audio", "both"]
TRAIN_ON = ("text", "audio", "both")

ROLES = {
    "system": "system",
    "user": "human",
    "human": "human",
    "assistant": "assistant",
    "tool": "function_output",
    "function_output": "function_output",
}
GENERATION_PROMPT = f"{BOT}assistant\n"
THINK_PREFILL = f"{THINK}\n"
SPOKEN_PREFILL = TTS_START
ANSWER_SEPARATOR = "\n\n"  # between </think> and the answer
TOOLS_ROLE = "tool_json_schemas"
IGNORE_INDEX = -100

# Audio counts for one audio part: its patch count, or one count per 25 s block.
AudioCount = int | Sequence[int]


@dataclass
class AssistantTarget:
    """What the assistant should answer in SFT: optional thinking, text, optional speech codes."""

    think: str | None
    text: str
    audio_codes: list[int] = field(default_factory=list)


@dataclass
class ParsedCompletion:
    """A completion split into its parts.

    ``text`` is the completion with special tokens kept (up to ``<|EOT|>``); ``think`` is None when
    the completion has no thinking; ``answer`` is everything after the thinking as plain text (the
    TA4 text tokens joined for a spoken answer, tool calls and special tokens removed);
    ``spoken_text`` and ``audio_codes`` (pads removed) come from the TA4 part only.
    """

    text: str
    think: str | None
    answer: str
    spoken_text: str
    audio_codes: list[int]
    tool_calls: list[dict[str, Any]]
    think_closed: bool


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def _audio_blocks(counts: Sequence[AudioCount]) -> Iterator[list[int]]:
    for count in counts:
        yield [int(c) for c in count] if isinstance(count, (list, tuple)) else [int(count)]


def _drop_think(text: str) -> str:
    """History keeps no thinking: drop everything up to the last ``</think>``."""
    if THINK_END in text:
        return text.rsplit(THINK_END, 1)[1].lstrip()
    return text.removeprefix(THINK)


def format_tool_call(name: str, arguments: Any) -> str:
    """``<tool_call>function\\n{name}\\n{json args}</tool_call>``."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return f"{TOOL_CALL}function\n{name}\n{args}{TOOL_CALL_END}"


def _tool_calls_text(calls: Sequence[dict[str, Any]], where: str) -> str:
    out = []
    for k, call in enumerate(calls):
        fn = call.get("function", call)  # HF {"type": "function", "function": {...}} or flat
        if "name" not in fn:
            raise ValueError(f"{where}: tool_calls[{k}] has no 'name'")
        out.append(format_tool_call(fn["name"], fn.get("arguments", {})))
    return "".join(out)


def _render_turn(
    message: dict[str, Any], where: str, tokenizer, ids: SpecialIds, blocks: Iterator[list[int]]
) -> list[int]:
    role = ROLES[message["role"]]
    content = message.get("content")
    if content is None:
        content = ""
    assistant = role == "assistant"
    if isinstance(content, str):
        parts: list[dict[str, Any]] = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        parts = content
    else:
        raise ValueError(f"{where}: content must be a string or a list of parts")

    # Pieces, each tokenized alone (as StepFun's code does); audio blocks are built as ids.
    pieces: list[str | list[int]] = []
    for k, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text") or ""
            pieces.append(_drop_think(text) if assistant else text)
        elif kind == "audio":
            counts = next(blocks, None)
            if counts is None:
                raise ValueError(f"{where}: more audio parts than audio_token_counts")
            for n in counts:
                pieces.append([ids.audio_start] + [ids.audio_patch] * n + [ids.audio_end])
        else:
            raise ValueError(f"{where}: content[{k}] has unknown type {kind!r}")
    tool_calls = _tool_calls_text(message.get("tool_calls") or [], where)

    header = f"{BOT}{role}\n"
    if assistant and message.get("audio_codes") is not None:
        text = "".join(p for p in pieces if isinstance(p, str))
        ta4 = build_ta4(_encode(tokenizer, text), message["audio_codes"], ids)
        calls = _encode(tokenizer, tool_calls)
        return [*_encode(tokenizer, header), ids.tts_start, *ta4, *calls, ids.eot]
    if isinstance(content, str):  # one piece, as StepFun tokenizes string content
        return _encode(tokenizer, f"{header}{pieces[0]}{tool_calls}{EOT}")
    out = _encode(tokenizer, header)
    for piece in [*pieces, tool_calls]:
        out += piece if isinstance(piece, list) else _encode(tokenizer, piece)
    return [*out, ids.eot]


def _render_history(
    messages: Sequence[dict[str, Any]],
    tokenizer,
    ids: SpecialIds,
    audio_token_counts: Sequence[AudioCount],
    tools: Sequence[dict[str, Any]] | None,
) -> list[int]:
    blocks = _audio_blocks(audio_token_counts)
    tools_turn = (
        _encode(tokenizer, f"{BOT}{TOOLS_ROLE}\n{json.dumps(list(tools), ensure_ascii=False)}{EOT}")
        if tools
        else []
    )
    out: list[int] = []
    if not (messages and isinstance(messages[0], dict) and messages[0].get("role") == "system"):
        out += tools_turn
    for i, message in enumerate(messages):
        where = f"message {i}"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            role = message.get("role") if isinstance(message, dict) else None
            raise ValueError(f"{where}: unknown role {role!r}; expected one of {sorted(ROLES)}")
        out += _render_turn(message, where, tokenizer, ids, blocks)
        if i == 0 and message["role"] == "system":
            out += tools_turn
    if next(blocks, None) is not None:
        raise ValueError("audio_token_counts has more entries than the messages have audio parts")
    return out


def speech_prefilled(think: bool, spoken: bool) -> bool:
    """Whether the prompt ends with ``<tts_start>``: a spoken answer without thinking (with
    thinking, the model writes ``<tts_start>`` after ``</think>``)."""
    return spoken and not think


def generation_prefill(think: bool, spoken: bool) -> str:
    """What the assistant turn is prefilled with: ``<think>\\n``, ``<tts_start>`` or nothing."""
    if think:
        return THINK_PREFILL
    return SPOKEN_PREFILL if speech_prefilled(think, spoken) else ""


def render_prompt(
    messages: Sequence[dict[str, Any]],
    tokenizer,
    audio_token_counts: Sequence[AudioCount],
    think: bool = True,
    spoken: bool = False,
    tools: Sequence[dict[str, Any]] | None = None,
) -> list[int]:
    """Token ids of ``messages`` followed by the (prefilled) generation prompt.

    ``audio_token_counts[n]`` is the patch count of the n-th audio part, or a list of counts when
    the clip spans several 25 s blocks. In think mode a spoken answer is not prefilled: the model
    writes ``</think>\\n\\n<tts_start>`` itself.
    """
    ids = SpecialIds.from_tokenizer(tokenizer)
    history = _render_history(messages, tokenizer, ids, audio_token_counts, tools)
    return history + _encode(tokenizer, GENERATION_PROMPT + generation_prefill(think, spoken))


def render_completion(target: AssistantTarget, tokenizer, think: bool, spoken: bool) -> list[int]:
    """The ids the model should generate after ``render_prompt``'s prefill, ``<|EOT|>`` included."""
    ids = SpecialIds.from_tokenizer(tokenizer)
    head = f"{target.think or ''}{THINK_END}{ANSWER_SEPARATOR}" if think else ""
    if not spoken:
        return [*_encode(tokenizer, head + target.text), ids.eot]
    ta4 = build_ta4(_encode(tokenizer, target.text), target.audio_codes, ids)
    opening = _encode(tokenizer, head + TTS_START) if think else []  # else prefilled
    return [*opening, *ta4, ids.eot]


def render_sft(
    messages: Sequence[dict[str, Any]],
    target: AssistantTarget,
    tokenizer,
    audio_token_counts: Sequence[AudioCount],
    think: bool = True,
    spoken: bool = False,
    tools: Sequence[dict[str, Any]] | None = None,
    train_on: TrainOn = "both",
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for SFT: prompt + target; labels are -100 except trained tokens."""
    ids = SpecialIds.from_tokenizer(tokenizer)
    prompt = render_prompt(messages, tokenizer, audio_token_counts, think, spoken, tools)
    completion = render_completion(target, tokenizer, think, spoken)
    mask = completion_loss_mask(completion, ids, train_on, speech_prefilled(think, spoken))
    labels = [IGNORE_INDEX] * len(prompt) + [
        t if m else IGNORE_INDEX for t, m in zip(completion, mask, strict=True)
    ]
    return prompt + completion, labels


def build_ta4(text_ids: Sequence[int], audio_codes: Sequence[int], ids: SpecialIds) -> list[int]:
    """Interleave text and speech as TA4: chunks of 1 text token + 4 audio tokens, then ``<tts_end>``.

    The shorter stream is padded (``<tts_pad>`` for text, the audio pad code for audio) so both
    fill the same number of chunks. ``<tts_start>`` is not included.
    """
    for k, code in enumerate(audio_codes):
        if not 0 <= code < ids.num_audio_codes:
            raise ValueError(f"audio_codes[{k}] = {code} is outside [0, {ids.num_audio_codes})")
    chunks = max(len(text_ids), math.ceil(len(audio_codes) / 4))
    text = [*text_ids, *[ids.tts_pad] * (chunks - len(text_ids))]
    audio = [ids.audio_code0 + c for c in audio_codes]
    audio += [ids.audio_pad] * (4 * chunks - len(audio))
    out: list[int] = []
    for i in range(chunks):
        out.append(text[i])
        out.extend(audio[4 * i : 4 * i + 4])
    out.append(ids.tts_end)
    return out


def parse_ta4(token_ids: Sequence[int], ids: SpecialIds) -> tuple[list[int], list[int]]:
    """``(text_ids, audio_codes)`` of a TA4 stream, pads dropped; stops at ``<tts_end>``.

    Tolerant of misaligned chunks: every audio id is audio, everything else is text.
    """
    text: list[int] = []
    codes: list[int] = []
    for t in token_ids:
        if t == ids.tts_end:
            break
        if ids.is_audio(t):
            if t != ids.audio_pad:
                codes.append(t - ids.audio_code0)
        elif t not in (ids.tts_pad, ids.tts_start):
            text.append(t)
    return text, codes


def completion_loss_mask(
    completion_ids: Sequence[int],
    ids: SpecialIds,
    train_on: TrainOn = "both",
    speaking: bool = False,
) -> list[int]:
    """1 for each completion token that is trained, else 0.

    ``train_on`` picks the text stream (everything outside speech, structural tokens such as
    ``</think>``, ``<|EOT|>`` and ``<tts_start>`` included, and inside speech the TA4 text tokens
    and the text pad ``<tts_pad>``), the audio stream (the codes inside speech, the audio pad code
    included), or both. Speech runs from ``<tts_start>`` to ``<tts_end>``; ``speaking``: the prompt
    ended with ``<tts_start>``, so the completion starts inside it. An audio code outside speech
    belongs to the text stream: it is the policy writing a code where text goes, an error that RL
    on text must see (left out, a text-only policy that drifted into codes was never corrected
    and its RL collapsed into endless codes, measured). The TA4 pads are the model's own output: a
    policy never trained on them cannot close a chunk once one stream runs out. Never trained:
    sequence padding, and any turn the model did not write: a completion that continues after a
    tool call holds ``<|BOT|>function_output\\n...<|EOT|><|BOT|>assistant\\n``, all of it masked.
    """
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on must be one of {TRAIN_ON}, got {train_on!r}")
    text_on, audio_on = train_on in ("text", "both"), train_on in ("audio", "both")
    header = list(ids.assistant_header)
    mask: list[int] = []
    own_turn = True  # a completion starts inside the assistant's turn
    i = 0
    while i < len(completion_ids):
        t = completion_ids[i]
        if t == ids.bot:
            if list(completion_ids[i : i + len(header)]) == header:
                span = min(len(header), len(completion_ids) - i)
                mask += [0] * span
                i += span
                own_turn, speaking = True, False
                continue
            own_turn = False
        if not own_turn or (t == ids.pad and t != ids.eot):
            mask.append(0)
        elif ids.is_audio(t) and speaking:
            mask.append(int(audio_on))
        else:
            mask.append(int(text_on))
        if t == ids.tts_start:
            speaking = True
        elif t in (ids.tts_end, ids.eot):
            speaking = False
        i += 1
    return mask


_AUDIO_RE = re.compile(r"<audio_(\d{1,9})>")
_TOOL_RE = re.compile(re.escape(TOOL_CALL) + r"(.*?)(" + re.escape(TOOL_CALL_END) + r"|\Z)", re.S)
_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS) + r"|<audio_\d+>")


def _parse_tool_call(body: str, closed: bool) -> dict[str, Any]:
    head, _, tail = body.lstrip("\n").partition("\n")
    if head.strip() == "function":
        name, _, args = tail.partition("\n")
    else:  # lenient: the name on the first line
        name, args = head, tail
    call: dict[str, Any] = {"name": name.strip(), "arguments": {}, "error": None}
    args = args.strip()
    if args:
        try:
            call["arguments"] = json.loads(args)
        except (ValueError, RecursionError) as e:
            call["arguments"], call["error"] = args, f"arguments are not valid JSON: {e}"
    if not call["name"]:
        call["error"] = "tool call has no function name"
    if not closed:
        call["error"] = f"unclosed {TOOL_CALL}"
    return call


def _plain(text: str) -> str:
    """Text without tool calls and special tokens."""
    return _SPECIAL_RE.sub("", _TOOL_RE.sub("", text)).strip()


def parse_completion_text(
    text: str,
    think_prefilled: bool,
    spoken_prefilled: bool,
    audio_pad: int = NUM_AUDIO_CODES,
) -> ParsedCompletion:
    """Split a completion, decoded with its special tokens, into its parts; never raises.

    ``think_prefilled``: the prompt ended with ``<think>\\n``, so the completion starts inside
    the thinking; ``spoken_prefilled``: the prompt ended with ``<tts_start>``. Anything before a
    ``</think>`` counts as thinking even without the prefill. Codes >= ``audio_pad`` are padding.
    """
    text = text.partition(EOT)[0]
    while text.endswith(PAD):
        text = text[: -len(PAD)]

    think, think_closed, rest = None, False, text
    if think_prefilled or THINK_END in rest or rest.lstrip().startswith(THINK):
        body, sep, rest = rest.partition(THINK_END)
        think, think_closed = body.replace(THINK, "").strip(), bool(sep)

    if spoken_prefilled:
        rest = TTS_START + rest
    # Outside TA4 everything is plain text; inside, audio tokens go to the codes.
    plain_parts, spoken_parts, codes = [], [], []
    first, *spoken_segments = rest.split(TTS_START)
    plain_parts.append(first)
    for segment in spoken_segments:
        spoken, _, after = segment.partition(TTS_END)
        codes += [c for c in map(int, _AUDIO_RE.findall(spoken)) if c < audio_pad]
        spoken = _AUDIO_RE.sub("", spoken).replace(TTS_PAD, "")
        spoken_parts.append(spoken)
        plain_parts += [spoken, after]
    answer_text = "".join(plain_parts)
    tool_calls = [
        _parse_tool_call(m.group(1), bool(m.group(2))) for m in _TOOL_RE.finditer(answer_text)
    ]
    return ParsedCompletion(
        text=text,
        think=think,
        answer=_plain(answer_text),
        spoken_text=_plain("".join(spoken_parts)),
        audio_codes=codes,
        tool_calls=tool_calls,
        think_closed=think_closed,
    )


def parse_completion(
    completion_ids: Sequence[int], tokenizer, think_prefilled: bool, spoken_prefilled: bool
) -> ParsedCompletion:
    """``parse_completion_text`` of the ids, cut at ``<|EOT|>`` and without padding."""
    ids = SpecialIds.from_tokenizer(tokenizer)
    kept: list[int] = []
    for t in completion_ids:
        if t == ids.eot:
            break
        if t != ids.pad:
            kept.append(int(t))
    text = tokenizer.decode(kept, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return parse_completion_text(text, think_prefilled, spoken_prefilled, ids.num_audio_codes)

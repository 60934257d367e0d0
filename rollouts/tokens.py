"""Step-Audio 2's special tokens, by name, and their ids in a given tokenizer.

Ids are always looked up in the tokenizer, never hard-coded, so the same code serves the released
158 720-token vocabulary and our tiny locally trained one.
"""

from __future__ import annotations

from dataclasses import dataclass

# the tokens a completion's text shows are defined once, in the lowest layer, for rewards to read
from rewards.text import THINK, THINK_END, TOOL_CALL, TOOL_CALL_END, TTS_END, TTS_PAD, TTS_START

BOT = "<|BOT|>"
EOT = "<|EOT|>"
PAD = "<|endoftext|>"  # pad token (the released model pads with it too)
AUDIO_START = "<audio_start>"
AUDIO_END = "<audio_end>"
AUDIO_PATCH = "<audio_patch>"

SPECIAL_TOKENS: tuple[str, ...] = (
    PAD,
    BOT,
    EOT,
    AUDIO_START,
    AUDIO_END,
    AUDIO_PATCH,
    TTS_START,
    TTS_END,
    TTS_PAD,
    THINK,
    THINK_END,
    TOOL_CALL,
    TOOL_CALL_END,
)
"""Every special token except the audio codes."""

NUM_AUDIO_CODES = 6561  # CosyVoice 2 codebook of the released model


def audio_token(k: int) -> str:
    """The token of audio code ``k``."""
    return f"<audio_{k}>"


def audio_tokens(num_codes: int = NUM_AUDIO_CODES) -> list[str]:
    """``<audio_0>`` .. ``<audio_{num_codes}>``; the last one is the audio pad."""
    return [audio_token(k) for k in range(num_codes + 1)]


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens in one tokenizer.

    Audio code ``k`` has id ``audio_code0 + k``; ``audio_pad`` is the *id* of code
    ``num_audio_codes`` (``<audio_6561>`` for the released model). ``assistant_header`` is the
    tokenisation of ``<|BOT|>assistant\\n``, which lets id-level code tell the model's own turns
    from injected ones (tool outputs) without the tokenizer.
    """

    bot: int
    eot: int
    pad: int
    audio_start: int
    audio_end: int
    audio_patch: int
    tts_start: int
    tts_end: int
    tts_pad: int
    think: int
    think_end: int
    tool_call: int
    tool_call_end: int
    audio_code0: int
    num_audio_codes: int
    audio_pad: int
    assistant_header: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer) -> SpecialIds:
        """Look every special token up; ``KeyError`` names any token the vocabulary lacks."""

        def lookup(token: str) -> int | None:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id:
                return None
            return token_id

        def require(token: str) -> int:
            token_id = lookup(token)
            if token_id is None:
                raise KeyError(f"tokenizer has no {token!r} token")
            return token_id

        code0 = require(audio_token(0))
        # The codes are contiguous: find the last one by doubling, then bisection.
        high = 1
        while lookup(audio_token(high)) is not None:
            high *= 2
        low = high // 2  # exists (or is code 0)
        while high - low > 1:
            mid = (low + high) // 2
            if lookup(audio_token(mid)) is None:
                high = mid
            else:
                low = mid
        if low == 0 or require(audio_token(low)) != code0 + low:
            raise KeyError(
                f"tokenizer's audio tokens are not contiguous ids up to {audio_token(low)}"
            )
        header = tokenizer.encode(f"{BOT}assistant\n", add_special_tokens=False)
        return cls(
            bot=require(BOT),
            eot=require(EOT),
            pad=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else require(EOT),
            audio_start=require(AUDIO_START),
            audio_end=require(AUDIO_END),
            audio_patch=require(AUDIO_PATCH),
            tts_start=require(TTS_START),
            tts_end=require(TTS_END),
            tts_pad=require(TTS_PAD),
            think=require(THINK),
            think_end=require(THINK_END),
            tool_call=require(TOOL_CALL),
            tool_call_end=require(TOOL_CALL_END),
            audio_code0=code0,
            num_audio_codes=low,
            audio_pad=code0 + low,
            assistant_header=tuple(header),
        )

    def is_audio(self, token_id: int) -> bool:
        """True for audio codes, the audio pad included."""
        return self.audio_code0 <= token_id <= self.audio_pad

    def audio_id(self, code: int) -> int:
        return self.audio_code0 + code

    def audio_code(self, token_id: int) -> int:
        return token_id - self.audio_code0

"""Small byte-level BPE tokenizers for the tiny models, trained locally.

The released models' tokenizers are Qwen2.5's byte-level BPE plus each family's special tokens:
Step-Audio 2's (its chat markers and 6562 audio codes) or ChatML's with Qwen's audio markers. For
the tiny models we train the same kind of tokenizer on a local corpus, so every code path
(formatting, parsing, generation, decoding) runs unchanged on a laptop and with no network.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rollouts.tokens import (
    EOT,
    NUM_AUDIO_CODES,
    PAD,
    SPECIAL_TOKENS,
    THINK,
    THINK_END,
    audio_tokens,
)

CHATML_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
    THINK,
    THINK_END,
)
"""Qwen's ChatML, audio and vision markers, and the think tags our prompts and rewards use."""

CHATML_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen2-Audio-Instruct's chat format (ChatML, one ``Audio n:`` block per clip)."""


def _special(token: str) -> AddedToken:
    # matched verbatim (no normalisation, no whitespace stripping), never split or merged
    return AddedToken(token, special=True, normalized=False, lstrip=False, rstrip=False)


def _train_bpe(
    corpus: Iterable[str], special: Sequence[str], appended: Sequence[str], vocab_size: int
) -> Tokenizer:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[_special(t) for t in special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    backend.add_special_tokens([_special(t) for t in appended])
    return backend


def train_tokenizer(
    corpus: Iterable[str], num_audio_codes: int = NUM_AUDIO_CODES, vocab_size: int = 2000
) -> PreTrainedTokenizerFast:
    """Step-Audio 2's kind: a BPE of ``vocab_size`` text tokens (specials included).

    The audio codes ``<audio_0>`` .. ``<audio_{num_audio_codes}>`` (the last is the pad) come after
    all text and special tokens, in order, as the released vocabulary has them. ``eos`` is
    ``<|EOT|>`` (generation stops at the end of the assistant turn); ``pad`` is ``<|endoftext|>``.
    """
    if num_audio_codes < 1:
        raise ValueError(f"num_audio_codes must be >= 1, got {num_audio_codes}")
    backend = _train_bpe(corpus, SPECIAL_TOKENS, audio_tokens(num_audio_codes), vocab_size)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOT,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
        model_max_length=16384,
    )


def train_chatml_tokenizer(
    corpus: Iterable[str], vocab_size: int = 2000
) -> PreTrainedTokenizerFast:
    """The Qwen families' kind: ChatML and audio markers, eos ``<|im_end|>`` (the end of an
    assistant turn), pad ``<|endoftext|>``, and the ChatML chat template."""
    backend = _train_bpe(corpus, CHATML_SPECIAL_TOKENS, (), vocab_size)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
        model_max_length=16384,
        chat_template=CHATML_TEMPLATE,
    )

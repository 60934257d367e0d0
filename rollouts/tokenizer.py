"""A small byte-level BPE tokenizer with Step-Audio 2's special and audio-code tokens.

The released model's tokenizer is Qwen2.5's byte-level BPE plus these tokens. For the tiny model we
train the same kind of tokenizer on a local corpus, so every code path (formatting, parsing,
generation, decoding) runs unchanged on a laptop and with no network.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rollouts.tokens import EOT, NUM_AUDIO_CODES, PAD, SPECIAL_TOKENS, audio_tokens


def _special(token: str) -> AddedToken:
    # matched verbatim (no normalisation, no whitespace stripping), never split or merged
    return AddedToken(token, special=True, normalized=False, lstrip=False, rstrip=False)


def train_tokenizer(
    corpus: Iterable[str], num_audio_codes: int = NUM_AUDIO_CODES, vocab_size: int = 2000
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of ``vocab_size`` text tokens (specials included) on ``corpus``.

    The audio codes ``<audio_0>`` .. ``<audio_{num_audio_codes}>`` (the last is the pad) come after
    all text and special tokens, in order, as the released vocabulary has them. ``eos`` is
    ``<|EOT|>`` (generation stops at the end of the assistant turn); ``pad`` is ``<|endoftext|>``.
    """
    if num_audio_codes < 1:
        raise ValueError(f"num_audio_codes must be >= 1, got {num_audio_codes}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[_special(t) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    backend.add_special_tokens([_special(t) for t in audio_tokens(num_audio_codes)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOT,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
        model_max_length=16384,
    )

"""Configuration of the Step-Audio 2 speech LLM, laid out like the released `config.json`.

`text_config` is a plain Qwen2Config (the decoder) and `audio_encoder_config` holds the Whisper-style
encoder and adaptor sizes under their released names, so the released file loads unchanged.

Sub-configs are built in `__post_init__` from a dict or the defaults, as transformers' own
multimodal configs do, rather than through `SubConfigSpec`: that class first appears in
transformers 5.20, and vLLM builds pin transformers below it.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import ClassVar

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig, Qwen2Config

# The decoder of Step-Audio-2-mini (Qwen2.5-7B shaped, larger vocabulary), as its config.json has it.
MINI_TEXT_CONFIG = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 158720,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1e6,
    "max_position_embeddings": 16384,
    "pad_token_id": 151643,
    "eos_token_id": [151643, 151645, 151665],
    "tie_word_embeddings": False,
}


@strict
class StepAudio2EncoderConfig(PreTrainedConfig):
    """Audio encoder (Whisper-style) and adaptor sizes, under the names of the released config.

    n_audio_ctx bounds the encoder positions (after the stride-2 conv), i.e. 2 * n_audio_ctx mel
    frames (30 s). The released file also carries `n_codebook_size`, which no module uses.
    """

    model_type = "step_audio_2_encoder"

    n_mels: int = 128
    n_audio_ctx: int = 1500
    n_audio_state: int = 1280
    n_audio_head: int = 20
    n_audio_layer: int = 32
    llm_dim: int = 3584
    kernel_size: int = 3
    adapter_stride: int = 2

    def __post_init__(self, **kwargs):
        # A misspelt size would otherwise be stored as an extra attribute and the default used.
        names = [f.name for f in dataclasses.fields(self)]
        for key in kwargs:
            if key not in names and (
                near := difflib.get_close_matches(key, names, n=1, cutoff=0.8)
            ):
                raise ValueError(
                    f"audio_encoder_config: unknown key {key!r}; did you mean {near[0]!r}?"
                )
        super().__post_init__(**kwargs)


@strict
class StepAudio2Config(PreTrainedConfig):
    """Step-Audio 2: audio encoder -> adaptor -> Qwen2 decoder.

    The `<audio_patch>` tokens that follow the n-th `<audio_start>` of a batch receive the adaptor
    outputs of the n-th audio clip. Both ids are configurable because a tiny model with its own
    tokenizer places them elsewhere; the defaults are those of Step-Audio-2-mini.
    """

    model_type = "step_audio_2"
    sub_configs: ClassVar[dict[str, type[PreTrainedConfig]]] = {
        "text_config": Qwen2Config,
        "audio_encoder_config": StepAudio2EncoderConfig,
    }

    text_config: dict | Qwen2Config | None = None
    audio_encoder_config: dict | StepAudio2EncoderConfig | None = None
    audio_start_token_id: int = 151688
    audio_patch_token_id: int = 151690

    def __post_init__(self, **kwargs):
        # A dict replaces the defaults whole (the released file spells every decoder size out);
        # None means the released model.
        if not isinstance(self.text_config, Qwen2Config):
            self.text_config = Qwen2Config(**(self.text_config or MINI_TEXT_CONFIG))
        if not isinstance(self.audio_encoder_config, StepAudio2EncoderConfig):
            self.audio_encoder_config = StepAudio2EncoderConfig(**(self.audio_encoder_config or {}))
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """The adaptor must land in the decoder width, and encoder heads must split the width."""
        super().validate_architecture()
        text, audio = self.text_config, self.audio_encoder_config
        if audio.llm_dim != text.hidden_size:
            raise ValueError(
                f"audio_encoder_config.llm_dim ({audio.llm_dim}) must equal "
                f"text_config.hidden_size ({text.hidden_size})"
            )
        if audio.n_audio_state % audio.n_audio_head:
            raise ValueError(
                f"audio_encoder_config.n_audio_state ({audio.n_audio_state}) is not divisible by "
                f"n_audio_head ({audio.n_audio_head})"
            )
        for key in ("audio_start_token_id", "audio_patch_token_id"):
            if not 0 <= getattr(self, key) < text.vocab_size:
                raise ValueError(
                    f"{key}={getattr(self, key)} is outside the vocabulary "
                    f"(text_config.vocab_size={text.vocab_size})"
                )


def tiny_config(
    vocab_size: int,
    audio_start_token_id: int,
    audio_patch_token_id: int,
    eos_token_id: int | list[int],
    pad_token_id: int,
) -> StepAudio2Config:
    """A few-million-parameter Step-Audio 2 with the real structure, for tests, CI and the demo.

    Only widths and depths shrink: the encoder keeps 128 mels and 1500 positions, the adaptor
    keeps its conv (k3 s2) and 2048-wide MLP, the decoder keeps GQA and an untied lm_head.
    """
    hidden = 128
    return StepAudio2Config(
        text_config={
            **MINI_TEXT_CONFIG,
            "hidden_size": hidden,
            "intermediate_size": 384,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": vocab_size,
            "eos_token_id": eos_token_id,
            "pad_token_id": pad_token_id,
        },
        audio_encoder_config={
            "n_audio_state": 128,
            "n_audio_head": 4,
            "n_audio_layer": 2,
            "llm_dim": hidden,
        },
        audio_start_token_id=audio_start_token_id,
        audio_patch_token_id=audio_patch_token_id,
    )

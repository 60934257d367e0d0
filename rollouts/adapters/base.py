"""The model-adapter contract, and what every adapter shares.

An adapter is bound to one processor (``adapter_cls(processor)``) and is stateless otherwise: the
model is passed to the calls that run it, so the same adapter serves the policy, its frozen
reference copy and a peft-wrapped model alike.

Audio tensors travel under two names whatever the family: ``input_features`` (one row per clip
the encoder sees, in prompt order) and ``feature_lens`` (each row's length, in the family's own
unit). ``clip_index`` (optional) lets several sequences share one encoded clip: entry k is the
feature row of the k-th audio block of the batch, row-major.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from rollouts.audio import AudioError
from rollouts.chat import ParsedCompletion, TrainOn
from rollouts.types import PromptSample


class AudioMismatchError(AudioError):
    """The audio placeholders of a batch do not match the audio features given with it."""


@dataclass(frozen=True)
class VllmNames:
    """What a vLLM engine needs to serve the family: the model class it registers, the text that
    stands for one clip in a prompt, and the ``multi_modal_data`` key of the waveforms."""

    architecture: str
    audio_placeholder: str | None
    multi_modal_data_key: str | None = "audio"


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding, so left- and right-padded rows see the same positions."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


class ModelAdapter:
    """One model family. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    """The ``--arch`` name of the family (``rlhf make-tiny``, ``rlhf demo``)."""
    model_types: ClassVar[tuple[str, ...]] = ()
    architectures: ClassVar[tuple[str, ...]] = ()
    lora_targets: ClassVar[tuple[str, ...]] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    """Default LoRA target layers: the language model's attention and MLP projections."""
    audio_encoder: ClassVar[str | None] = None
    """Attribute path, on the bare model, of the audio encoder that ``freeze_audio_encoder`` freezes."""
    vllm: ClassVar[VllmNames]
    speaks: ClassVar[bool] = False
    """Whether completions may hold audio codes (a spoken answer)."""

    def __init__(self, processor: Any):
        self.processor = processor

    # ------------------------------------------------------------------ loading
    @classmethod
    def load_model(cls, path, dtype: torch.dtype) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)

    @classmethod
    def load_processor(cls, path) -> Any:
        raise NotImplementedError

    def vllm_names(self, config) -> VllmNames:
        """The names a vLLM engine needs for a checkpoint with this ``config``; a family with no
        model class of its own (a plain causal LM) is served as the checkpoint's architecture."""
        if self.vllm.architecture:
            return self.vllm
        return VllmNames((config.architectures or [""])[0], None, None)

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    # ------------------------------------------------------------------ tokens
    @property
    def pad_id(self) -> int:
        raise NotImplementedError

    @property
    def stop_ids(self) -> frozenset[int]:
        """Tokens that end a completion (kept in it, and trained)."""
        raise NotImplementedError

    @property
    def banned_ids(self) -> list[int]:
        """Tokens only the processor may place: sampling one would corrupt the sequence."""
        raise NotImplementedError

    @property
    def audio_pad_code(self) -> int | None:
        """The code that pads a spoken answer's audio stream; None for text-only models."""
        return None

    # ------------------------------------------------------------------ prompts
    def prompt_inputs(self, samples: Sequence[PromptSample]) -> dict[str, torch.Tensor | None]:
        """Generation inputs: ``input_ids`` / ``attention_mask`` left padded, ``input_features``
        and ``feature_lens`` of every clip in sample order (None when the batch has no audio)."""
        raise NotImplementedError

    def sft_batch(
        self, samples: Sequence[PromptSample], targets: Sequence[Any], train_on: TrainOn = "both"
    ) -> dict[str, torch.Tensor | None]:
        """Training inputs: prompt + target right padded, ``labels`` -100 except trained tokens."""
        raise NotImplementedError

    def count_clips(self, prompt_ids: Sequence[int]) -> int:
        """Audio blocks (feature rows) a prompt's ids hold."""
        raise NotImplementedError

    # ------------------------------------------------------------------ model
    def hidden_states(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        feature_lens: torch.Tensor | None = None,
        clip_index: torch.Tensor | None = None,
        cache: Any = None,
    ) -> torch.Tensor:
        """Last decoder hidden states ``[B, L, H]`` of the bare model (audio embedded when
        features are given: the prefill, or a training forward). With ``cache``, ``input_ids``
        are the new tokens and ``attention_mask`` covers the cache too."""
        raise NotImplementedError

    # ------------------------------------------------------------------ completions
    def parse(self, completion_ids: Sequence[int], sample: PromptSample) -> ParsedCompletion:
        raise NotImplementedError

    def loss_mask(
        self,
        completion_ids: Sequence[int],
        train_on: TrainOn = "text",
        sample: PromptSample | None = None,
    ) -> list[int]:
        """1 for each trained completion token; ``sample`` says how the prompt was prefilled."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared helpers
    @classmethod
    def freeze_audio_encoder(cls, model: torch.nn.Module) -> None:
        if cls.audio_encoder is None:
            return
        module = model
        for attribute in cls.audio_encoder.split("."):
            module = getattr(module, attribute)
        module.requires_grad_(False)

    lora_scope: ClassVar[str | None] = None
    """Regex of the module paths LoRA may adapt (None: any); keeps it out of the audio encoder."""

    @classmethod
    def lora_target_modules(cls, names: Sequence[str] | None = None) -> list[str] | str:
        """peft ``target_modules`` for the layer ``names`` (default ``lora_targets``), inside
        ``lora_scope`` only."""
        names = list(names or cls.lora_targets)
        if cls.lora_scope is None:
            return names
        return rf"{cls.lora_scope}\.({'|'.join(re.escape(n) for n in names)})"

    def check_clips(
        self, rows: Sequence[Sequence[int]], clip_index: torch.Tensor | None, num_features: int
    ) -> None:
        """Every audio block of ``rows`` has a feature row, and every feature row a block.

        ``AudioMismatchError`` names the first row whose blocks have no features.
        """
        counts = [self.count_clips(row) for row in rows]
        blocks = sum(counts)
        wanted = len(clip_index) if clip_index is not None else num_features
        if blocks == wanted and (clip_index is None or bool((clip_index < num_features).all())):
            return
        seen = 0
        for row, count in enumerate(counts):
            if seen + count > wanted:
                raise AudioMismatchError(
                    f"batch row {row}: {count} audio block(s) in its prompt ids but only "
                    f"{wanted - seen} clip feature(s) left for it ({num_features} given)"
                )
            seen += count
        raise AudioMismatchError(
            f"{blocks} audio block(s) in the batch's prompt ids but {wanted} clip feature(s) "
            "given: some clip was dropped from the prompts"
        )

"""Step-Audio 2: our own transformers model and processor, its chat format and TA4 speech.

A prompt's clips are cut into 25 s pieces, each an ``<audio_start>`` + ``<audio_patch>`` x n +
``<audio_end>`` block (``rollouts.processor``); completions end at ``<|EOT|>`` and may hold a TA4
spoken answer (``rollouts.chat``). The model embeds the audio itself (``embed_inputs``), once per
clip even when many sequences share it (``clip_index``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import torch

from rollouts.adapters.base import ModelAdapter, VllmNames
from rollouts.chat import (
    ParsedCompletion,
    TrainOn,
    completion_loss_mask,
    parse_completion,
    speech_prefilled,
)
from rollouts.processor import StepAudio2Processor
from rollouts.tokens import AUDIO_PATCH
from rollouts.types import PromptSample


class StepAudio2Adapter(ModelAdapter):
    name = "step-audio-2"
    model_types = ("step_audio_2",)
    architectures = ("StepAudio2ForCausalLM",)
    audio_encoder = "encoder"
    vllm = VllmNames("StepAudio2ForCausalLM", AUDIO_PATCH)
    speaks = True

    processor: StepAudio2Processor

    @classmethod
    def load_processor(cls, path) -> StepAudio2Processor:
        return StepAudio2Processor.from_pretrained(path)

    @cached_property
    def special(self):
        return self.processor.special_ids

    @property
    def pad_id(self) -> int:
        return self.special.pad

    @property
    def stop_ids(self) -> frozenset[int]:
        return frozenset({self.special.eot})

    @property
    def banned_ids(self) -> list[int]:
        s = self.special
        return [s.audio_start, s.audio_end, s.audio_patch, s.bot, s.pad]

    @property
    def audio_pad_code(self) -> int:
        return self.special.num_audio_codes

    def prompt_inputs(self, samples: Sequence[PromptSample]) -> dict[str, torch.Tensor | None]:
        return self.processor(samples)

    def sft_batch(self, samples, targets, train_on: TrainOn = "both"):
        return self.processor.sft_batch(samples, targets, train_on)

    def count_clips(self, prompt_ids: Sequence[int]) -> int:
        return list(prompt_ids).count(self.special.audio_start)

    def hidden_states(
        self,
        model,
        input_ids,
        attention_mask,
        *,
        position_ids=None,
        input_features=None,
        feature_lens=None,
        clip_index=None,
        cache=None,
    ) -> torch.Tensor:
        embeds = model.embed_inputs(input_ids, input_features, feature_lens, clip_index)
        out = model.model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
        )
        return out.last_hidden_state

    def parse(self, completion_ids: Sequence[int], sample: PromptSample) -> ParsedCompletion:
        return parse_completion(
            completion_ids,
            self.processor.tokenizer,
            think_prefilled=sample.think,
            spoken_prefilled=speech_prefilled(sample.think, sample.spoken),
        )

    def loss_mask(
        self,
        completion_ids: Sequence[int],
        train_on: TrainOn = "text",
        sample: PromptSample | None = None,
    ) -> list[int]:
        speaking = sample is not None and speech_prefilled(sample.think, sample.spoken)
        return completion_loss_mask(completion_ids, self.special, train_on, speaking)

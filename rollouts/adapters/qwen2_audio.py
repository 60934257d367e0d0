"""Qwen2-Audio (``Qwen2AudioForConditionalGeneration``) with its own ``Qwen2AudioProcessor``.

The processor does the audio work: a Whisper log-mel per clip, padded to the encoder's fixed
window (30 s for the released model: its encoder takes exactly ``2 × max_source_positions`` mel
frames), and each ``<|AUDIO|>`` of the chat template's ``<|audio_bos|><|AUDIO|><|audio_eos|>``
expanded to one placeholder per encoder output frame. The model merges the clip embeddings into
the placeholders itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rollouts.adapters.base import VllmNames
from rollouts.adapters.causal_lm import CausalLMAdapter
from rollouts.audio import SAMPLE_RATE, AudioError
from rollouts.types import PromptSample

AUDIO = "<|AUDIO|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"


class Qwen2AudioAdapter(CausalLMAdapter):
    name = "qwen2-audio"
    model_types = ("qwen2_audio",)
    architectures = ("Qwen2AudioForConditionalGeneration",)
    lora_scope = r".*language_model.*"  # the encoder has q/k/v_proj too: leave it alone
    audio_encoder = "model.audio_tower"
    vllm = VllmNames("Qwen2AudioForConditionalGeneration", f"{AUDIO_BOS}{AUDIO}{AUDIO_EOS}")
    placeholder_tokens = (AUDIO, AUDIO_BOS, AUDIO_EOS)

    @classmethod
    def load_model(cls, path, dtype: torch.dtype) -> torch.nn.Module:
        from transformers import Qwen2AudioForConditionalGeneration

        return Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=dtype)

    @classmethod
    def load_processor(cls, path):
        from transformers import Qwen2AudioProcessor

        return Qwen2AudioProcessor.from_pretrained(path)

    def encode_prompt(self, sample: PromptSample) -> tuple[list[int], dict[str, torch.Tensor]]:
        text = self.render(sample)
        if text.count(AUDIO) != len(sample.audio):
            raise ValueError(
                f"{text.count(AUDIO)} audio part(s) in the messages but {len(sample.audio)} clip(s)"
            )
        if not sample.audio:
            return self.tokenizer.encode(text, add_special_tokens=False), {}
        window = self.processor.feature_extractor.n_samples
        for k, clip in enumerate(sample.audio):
            if len(clip) > window:  # the processor would cut it silently
                raise AudioError(
                    f"audio[{k}] lasts {len(clip) / SAMPLE_RATE:.1f} s but this model hears at "
                    f"most {window / SAMPLE_RATE:.0f} s per clip; split or trim it"
                )
        inputs = self.processor(
            text=[text], audio=list(sample.audio), sampling_rate=SAMPLE_RATE, return_tensors="pt"
        )
        features = {
            "input_features": inputs["input_features"],
            "feature_lens": inputs["feature_attention_mask"].sum(-1),
        }
        return inputs["input_ids"][0].tolist(), features

    def collate_features(self, parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        # every clip is already padded to the encoder's window
        return {
            key: torch.cat([p[key] for p in parts]) for key in ("input_features", "feature_lens")
        }

    def count_clips(self, prompt_ids: Sequence[int]) -> int:
        return list(prompt_ids).count(self._token_id(AUDIO_BOS))

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
        """The model's own forward without the LM head. Clips shared through ``clip_index`` are
        repeated and encoded once per sequence: the model has no call that embeds given audio."""
        audio = {}
        if input_features is not None:
            if clip_index is not None:
                input_features, feature_lens = input_features[clip_index], feature_lens[clip_index]
            frames = torch.arange(input_features.shape[-1], device=feature_lens.device)
            audio = {
                "input_features": input_features,
                "feature_attention_mask": (frames < feature_lens[:, None]).long(),
            }
        out = model.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
            **audio,
        )
        return out.last_hidden_state

"""Qwen2-Audio (``Qwen2AudioForConditionalGeneration``) with its own ``Qwen2AudioProcessor``.

The processor does the audio work: a Whisper log-mel per clip, padded to the encoder's fixed
window (30 s for the released model: its encoder takes exactly ``2 × max_source_positions`` mel
frames), and each ``<|AUDIO|>`` of the chat template's ``<|audio_bos|><|AUDIO|><|audio_eos|>``
expanded to one placeholder per encoder output frame. The model's own modules encode the clips
and run the decoder; the adapter writes each clip's embeddings over its placeholders, so a clip
that several sequences share is encoded once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rollouts.adapters.base import AudioMismatchError, VllmNames
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
        """The model's forward without the LM head, each distinct clip encoded once: the model
        merges audio only for one feature row per clip, while the samples of a prompt share it."""
        inner = model.model
        embeds = inner.get_input_embeddings()(input_ids)
        if input_features is not None:
            clips = self.audio_embeddings(inner, input_features, feature_lens)
            order = range(len(clips)) if clip_index is None else clip_index.tolist()
            audio = torch.cat([clips[k] for k in order])
            placeholders = input_ids == self._token_id(AUDIO)
            if int(placeholders.sum()) != len(audio):
                raise AudioMismatchError(
                    f"{int(placeholders.sum())} {AUDIO} placeholders in the batch but its clips "
                    f"encode to {len(audio)} frames"
                )
            embeds = embeds.masked_scatter(placeholders[..., None], audio.to(embeds.dtype))
        out = inner.language_model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
        )
        return out.last_hidden_state

    def audio_embeddings(
        self, inner, input_features: torch.Tensor, feature_lens: torch.Tensor
    ) -> list[torch.Tensor]:
        """Each clip's embeddings in the decoder's space, ``[frames_k, H]``: the audio branch of
        ``Qwen2AudioModel.forward`` (which offers no call of its own for it), mels masked past
        each clip's length."""
        from transformers.masking_utils import create_bidirectional_mask

        tower = inner.audio_tower
        conv_lens, out_lens = tower._get_feat_extract_output_lengths(feature_lens)
        width = (input_features.shape[-1] - 2) // 2 + 1
        valid = torch.arange(width, device=conv_lens.device)[None, :] < conv_lens[:, None]
        mask = create_bidirectional_mask(
            config=tower.config,
            inputs_embeds=input_features.new_zeros(len(input_features), width, 1),
            attention_mask=valid.long(),
        )
        states = inner.multi_modal_projector(
            tower(input_features, attention_mask=mask).last_hidden_state
        )
        return [state[:n] for state, n in zip(states, out_lens.tolist(), strict=True)]

"""Qwen2.5-Omni's thinker (``Qwen2_5OmniThinkerForConditionalGeneration``): audio in, text out.

Inputs are built from its Whisper feature extractor and tokenizer here rather than by
``Qwen2_5OmniProcessor``, which also needs the image and video processors (their fast versions
import torchvision) although audio RL never uses them. What the processor would do for audio is
small: a log-mel per clip, and each ``<|AUDIO|>`` of the template's
``<|audio_bos|><|AUDIO|><|audio_eos|>`` repeated once per encoder output frame, counted with
transformers' own ``_get_feat_extract_output_lengths``. Unlike Qwen2-Audio's, its encoder takes
clips of any length, so a batch pads mels to its longest clip only; and for text and audio alone
the model's multimodal rotary positions are the plain positions, so ``position_ids`` may be 1-D.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import ProcessorMixin

from rollouts.adapters.base import VllmNames
from rollouts.adapters.qwen2_audio import AUDIO, Qwen2AudioAdapter
from rollouts.audio import SAMPLE_RATE
from rollouts.types import PromptSample


class OmniAudioProcessor(ProcessorMixin):
    """Qwen2.5-Omni's processor for audio and text only: a feature extractor and a tokenizer."""

    def __init__(self, feature_extractor, tokenizer, chat_template=None):
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template)

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> OmniAudioProcessor:
        """Reads a released Omni checkpoint (whose processor config names the image and video
        processors too) as well as one this class saved."""
        from transformers import AutoTokenizer, WhisperFeatureExtractor

        tokenizer = AutoTokenizer.from_pretrained(path)
        template = tokenizer.chat_template
        saved = Path(path) / "chat_template.json"
        if template is None and saved.exists():
            template = json.loads(saved.read_text())["chat_template"]
        return cls(WhisperFeatureExtractor.from_pretrained(path), tokenizer, chat_template=template)


class Qwen25OmniThinkerAdapter(Qwen2AudioAdapter):
    name = "qwen2.5-omni"
    model_types = ("qwen2_5_omni_thinker", "qwen2_5_omni")
    architectures = ("Qwen2_5OmniThinkerForConditionalGeneration", "Qwen2_5OmniModel")
    placeholder_tokens = (
        *Qwen2AudioAdapter.placeholder_tokens,
        "<|IMAGE|>",
        "<|VIDEO|>",
        "<|vision_bos|>",
        "<|vision_eos|>",
    )
    vllm = VllmNames(
        "Qwen2_5OmniThinkerForConditionalGeneration", "<|audio_bos|><|AUDIO|><|audio_eos|>"
    )

    @classmethod
    def load_model(cls, path, dtype: torch.dtype) -> torch.nn.Module:
        from transformers import (
            AutoConfig,
            Qwen2_5OmniForConditionalGeneration,
            Qwen2_5OmniThinkerForConditionalGeneration,
        )

        if AutoConfig.from_pretrained(path).model_type == "qwen2_5_omni":  # thinker + talker
            full = Qwen2_5OmniForConditionalGeneration.from_pretrained(
                path, dtype=dtype, enable_audio_output=False
            )
            return full.thinker
        return Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(path, dtype=dtype)

    @classmethod
    def load_processor(cls, path) -> OmniAudioProcessor:
        return OmniAudioProcessor.from_pretrained(path)

    def encode_prompt(self, sample: PromptSample) -> tuple[list[int], dict[str, torch.Tensor]]:
        from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import (
            _get_feat_extract_output_lengths,
        )

        text = self.render(sample)
        pieces = text.split(AUDIO)
        if len(pieces) - 1 != len(sample.audio):
            raise ValueError(
                f"{len(pieces) - 1} audio part(s) in the messages but {len(sample.audio)} clip(s)"
            )
        if not sample.audio:
            return self.tokenizer.encode(text, add_special_tokens=False), {}
        # each clip alone, so its mel never depends on which clips share its batch
        mels = [
            self.processor.feature_extractor(
                clip,
                sampling_rate=SAMPLE_RATE,
                padding="longest",
                return_attention_mask=True,
                return_tensors="pt",
            )
            for clip in sample.audio
        ]
        lens = torch.cat([m["attention_mask"].sum(-1) for m in mels])
        expanded = pieces[0]
        for count, piece in zip(_get_feat_extract_output_lengths(lens).tolist(), pieces[1:]):
            expanded += AUDIO * count + piece
        features = self.collate_features(
            [
                {"input_features": m["input_features"], "feature_lens": m["attention_mask"].sum(-1)}
                for m in mels
            ]
        )
        return self.tokenizer.encode(expanded, add_special_tokens=False), features

    def collate_features(self, parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Mels zero-padded to the longest clip; the lengths mask the padding out."""
        longest = max(p["input_features"].shape[-1] for p in parts)
        features = torch.cat(
            [
                torch.nn.functional.pad(
                    p["input_features"], (0, longest - p["input_features"].shape[-1])
                )
                for p in parts
            ]
        )
        return {
            "input_features": features,
            "feature_lens": torch.cat([p["feature_lens"] for p in parts]),
        }

    def audio_embeddings(
        self, inner, input_features: torch.Tensor, feature_lens: torch.Tensor
    ) -> list[torch.Tensor]:
        frames = torch.arange(input_features.shape[-1], device=feature_lens.device)
        packed = inner.get_audio_features(
            input_features, feature_attention_mask=(frames < feature_lens[:, None]).long()
        ).last_hidden_state
        _, out_lens = inner.audio_tower._get_feat_extract_output_lengths(feature_lens)
        return list(packed.split(out_lens.tolist()))

"""Step-Audio 2 as a vLLM model: our audio encoder and adaptor, vLLM's Qwen2 decoder.

Upstream vLLM does not ship Step-Audio 2; this module adds it, laid out like vLLM's Qwen2-Audio:

* ``StepAudio2MultiModalProcessor`` turns each audio item (one waveform of at most 25 s, 16 kHz)
  into its log-mel (``rollouts.audio.log_mel``) and expands the one ``<audio_patch>`` that stands
  for it in the prompt into ``num_audio_tokens(frames)`` patches, so a prompt rendered with one
  patch per block comes out exactly as ``rollouts.processor`` renders it. A clip longer than 25 s
  is several items, one per ``rollouts.audio.split_clip`` piece, as it is several blocks there.
* ``StepAudio2ForVLLM`` runs the encoder and adaptor of ``rollouts.modeling`` (the very torch
  modules of our transformers model) on those mels and writes their outputs over the patches;
  the decoder and LM head are vLLM's ``Qwen2ForCausalLM``.
* Weights load from the released checkpoint's names, which are our transformers model's
  state-dict names: ``model.*`` / ``lm_head.*`` go to the decoder, ``encoder.*`` / ``adapter.*``
  stay. The same names serve weight sync (full state dicts) and LoRA adapters (peft's names).

``register`` is the ``vllm.general_plugins`` entry point of this package: vLLM calls it in every
engine process, before it resolves the checkpoint's ``StepAudio2ForCausalLM`` architecture.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from transformers import BatchFeature
from vllm.config import VllmConfig
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict
from vllm.model_executor.models.interfaces import (
    MultiModalEmbeddings,
    SupportsLoRA,
    SupportsMultiModal,
)
from vllm.model_executor.models.module_mapping import MultiModelKeys
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)
from vllm.multimodal.processing.inputs import ProcessorInputs
from vllm.sequence import IntermediateTensors

from rollouts.audio import CHUNK_SAMPLES, SAMPLE_RATE, log_mel, num_audio_tokens
from rollouts.modeling import StepAudio2Config
from rollouts.modeling.modeling_step_audio_2 import StepAudio2Adapter, StepAudio2AudioEncoder

ARCHITECTURE = "StepAudio2ForCausalLM"  # the released config's architecture name


def register() -> None:
    """The ``vllm.general_plugins`` entry point: our config with transformers, our model with vLLM."""
    from vllm import ModelRegistry

    import rollouts  # noqa: F401  (registers StepAudio2Config with AutoConfig)

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, f"{__name__}:StepAudio2ForVLLM")


class StepAudio2ProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> StepAudio2Config:
        return self.ctx.get_hf_config(StepAudio2Config)

    def get_data_parser(self) -> MultiModalDataParser:
        # the engine hands over 16 kHz mono pieces: nothing to resample
        return MultiModalDataParser(
            target_sr=SAMPLE_RATE,
            target_channels=1,
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"audio": None}

    @cached_property
    def max_patches(self) -> int:
        """Patches of a full 25 s piece, the longest an item may be."""
        return num_audio_tokens(log_mel(np.zeros(CHUNK_SAMPLES, np.float32)).shape[1])

    def get_mm_max_tokens_per_item(
        self, seq_len: int, mm_counts: Mapping[str, int] | None = None
    ) -> Mapping[str, int]:
        return {"audio": self.max_patches}


class StepAudio2DummyInputsBuilder(BaseDummyInputsBuilder[StepAudio2ProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return ""  # the processor builds the dummy prompt from token ids (no tokenizer needed)

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions
    ) -> MultiModalDataDict:
        return {
            "audio": self._get_dummy_audios(
                length=CHUNK_SAMPLES,
                num_audios=mm_counts.get("audio", 0),
                overrides=mm_options.get("audio"),
            )
        }


class StepAudio2MultiModalProcessor(BaseMultiModalProcessor[StepAudio2ProcessingInfo]):
    """Audio items → log-mels; each item's single `<audio_patch>` → its patch run."""

    requires_tokenizer = False  # prompts arrive as token ids

    def get_dummy_inputs(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions
    ) -> ProcessorInputs:
        inputs = super().get_dummy_inputs(seq_len, mm_counts, mm_options)
        inputs.prompt = [self.info.get_hf_config().audio_patch_token_id] * mm_counts.get("audio", 0)
        return inputs

    def _call_hf_processor(
        self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]
    ) -> BatchFeature:
        pieces = hf_data.get("audio") or []
        for n, piece in enumerate(pieces):
            if len(piece) > CHUNK_SAMPLES:
                raise ValueError(
                    f"audio item {n} holds {len(piece)} samples, more than one 25 s piece "
                    f"({CHUNK_SAMPLES}); pass rollouts.audio.split_clip's pieces as items"
                )
        mels = [torch.from_numpy(log_mel(np.asarray(piece, np.float32))) for piece in pieces]
        return BatchFeature({"input_features": mels})

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {"input_features": MultiModalFieldConfig.batched("audio")}

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        patch = self.info.get_hf_config().audio_patch_token_id
        features = out_mm_kwargs.get_data().get("input_features", [])

        def patches(item: int) -> list[int]:
            return [patch] * num_audio_tokens(features[item].shape[-1])

        return [PromptReplacement(modality="audio", target=[patch], replacement=patches)]


@MULTIMODAL_REGISTRY.register_processor(
    StepAudio2MultiModalProcessor,
    info=StepAudio2ProcessingInfo,
    dummy_inputs=StepAudio2DummyInputsBuilder,
)
class StepAudio2ForVLLM(nn.Module, SupportsMultiModal, SupportsLoRA):
    """Step-Audio 2 for vLLM: ``encoder`` → ``adapter`` → ``language_model`` (vLLM's Qwen2)."""

    packed_modules_mapping: ClassVar[dict[str, list[str]]] = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={
            "model.": "language_model.model.",
            "lm_head.": "language_model.lm_head.",
        }
    )

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("audio"):
            return "<audio_start><audio_patch><audio_end>"
        raise ValueError("Step-Audio 2 takes audio only")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config: StepAudio2Config = vllm_config.model_config.hf_config
        self.config = config
        with self._mark_tower_model(vllm_config, "audio"):
            self.encoder = StepAudio2AudioEncoder(config.audio_encoder_config)
            self.adapter = StepAudio2Adapter(config.audio_encoder_config)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=["Qwen2ForCausalLM"],
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def get_mm_mapping(self) -> MultiModelKeys:
        """LoRA adapts the decoder only; the encoder and adaptor stay as released."""
        return MultiModelKeys.from_string_field(
            language_model="language_model.", connector="adapter.", tower_model="encoder."
        )

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """Each audio item's adaptor outputs ``[patches, hidden]``, in item order."""
        features = kwargs.get("input_features")
        if features is None:
            return []
        mels = list(features)  # a list of [n_mels, T] (a stacked tensor when all T agree)
        frames = torch.tensor([mel.shape[-1] for mel in mels])
        dtype = self.encoder.conv1.weight.dtype
        padded = nn.utils.rnn.pad_sequence([mel.T for mel in mels], batch_first=True)
        padded = padded.transpose(1, 2).to(self.encoder.conv1.weight.device, dtype)
        # feature_lens is a clip's frame count minus 2 (the released `wav_lens`)
        audio = self.adapter(self.encoder(padded, (frames - 2).to(padded.device)))
        return tuple(audio[n, : num_audio_tokens(int(t))] for n, t in enumerate(frames))

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(
            input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds
        )

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)

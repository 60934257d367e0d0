"""Model adapters: what differs between speech-LLM families, behind one contract.

The policy, the rollout engine and the trainers never ask which model they run. Everything that
depends on the family goes through its ``ModelAdapter``, chosen from the checkpoint's config
(``model_type``, else ``architectures``), never from a recipe flag:

- prompts (chat + audio) → token ids with the audio placeholders expanded, and audio features;
- SFT inputs with labels on the assistant's own tokens;
- completions → think / answer (spoken text and audio codes where the model speaks), loss masks;
- the hidden-states call that the chunked log-probs and the KV-cached sampling both use;
- default LoRA targets, the audio encoder to freeze, and the names a vLLM engine needs.

One small module per family: ``step_audio_2``, ``qwen2_audio``, ``qwen2_5_omni``, ``causal_lm``.
"""

from __future__ import annotations

from rollouts.adapters.base import AudioMismatchError, ModelAdapter, VllmNames
from rollouts.adapters.causal_lm import CausalLMAdapter
from rollouts.adapters.qwen2_5_omni import Qwen25OmniThinkerAdapter
from rollouts.adapters.qwen2_audio import Qwen2AudioAdapter
from rollouts.adapters.step_audio_2 import StepAudio2Adapter

ADAPTERS: tuple[type[ModelAdapter], ...] = (
    StepAudio2Adapter,
    Qwen2AudioAdapter,
    Qwen25OmniThinkerAdapter,
)
"""Families with their own adapter; any other causal LM gets ``CausalLMAdapter``."""

ARCHS = {adapter.name: adapter for adapter in (*ADAPTERS, CausalLMAdapter)}


def adapter_for(config) -> type[ModelAdapter]:
    """The adapter class of a checkpoint's config (a ``PretrainedConfig`` or its dict)."""
    values = config if isinstance(config, dict) else config.to_dict()
    model_type = values.get("model_type")
    architectures = set(values.get("architectures") or ())
    for adapter in ADAPTERS:
        if model_type in adapter.model_types or architectures & set(adapter.architectures):
            return adapter
    return CausalLMAdapter


__all__ = [
    "ADAPTERS",
    "ARCHS",
    "AudioMismatchError",
    "CausalLMAdapter",
    "ModelAdapter",
    "Qwen2AudioAdapter",
    "Qwen25OmniThinkerAdapter",
    "StepAudio2Adapter",
    "VllmNames",
    "adapter_for",
]

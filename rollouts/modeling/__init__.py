"""Our transformers implementation of the Step-Audio 2 speech LLM (config, model, tiny config)."""

from .configuration_step_audio_2 import StepAudio2Config, StepAudio2EncoderConfig, tiny_config
from .modeling_step_audio_2 import StepAudio2ForCausalLM

__all__ = ["StepAudio2Config", "StepAudio2EncoderConfig", "StepAudio2ForCausalLM", "tiny_config"]

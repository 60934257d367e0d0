"""Running the speech LLM: audio front end, model, prompt formats, generation engines."""

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoProcessor,
)

from rollouts.modeling import StepAudio2Config, StepAudio2ForCausalLM
from rollouts.processor import StepAudio2Processor
from rollouts.value_model import StepAudio2ForSequenceClassification  # also registers reward_model

# So that AutoConfig / AutoModelForCausalLM.from_pretrained load our checkpoints without remote code.
AutoConfig.register(StepAudio2Config.model_type, StepAudio2Config, exist_ok=True)
AutoModelForCausalLM.register(StepAudio2Config, StepAudio2ForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(
    StepAudio2Config, StepAudio2ForSequenceClassification, exist_ok=True
)
AutoProcessor.register(StepAudio2Config, StepAudio2Processor, exist_ok=True)

"""Step-Audio 2 with a scalar head: preference reward models and full-model PPO critics.

``StepAudio2ForSequenceClassification`` is the causal LM's body under the same names (``model``,
``encoder``, ``adapter``) with a ``score`` head instead of ``lm_head``, so a policy or SFT
checkpoint loads into it directly (``lm_head`` is left out, ``score`` is new). As transformers'
``*ForSequenceClassification`` models do, it scores each sequence at its last real token.
``import rollouts`` registers it with ``AutoModelForSequenceClassification``.

The ``reward_model`` reward scores completions with a checkpoint trained by
``rlhf reward-model``. It lives here, not in ``rewards``, because it runs our model: ``rollouts``
may register into the rewards registry, ``rewards`` never imports ``rollouts``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import Qwen2Model
from transformers.modeling_outputs import SequenceClassifierOutputWithPast
from transformers.utils import can_return_tuple

from rewards import reward
from rewards.text import completion_text
from rollouts.audio import load_audio
from rollouts.modeling import StepAudio2Config
from rollouts.modeling.modeling_step_audio_2 import (
    StepAudio2Adapter,
    StepAudio2AudioEncoder,
    StepAudio2ForCausalLM,
    StepAudio2PreTrainedModel,
)
from rollouts.processor import StepAudio2Processor
from rollouts.types import PromptSample


class StepAudio2ForSequenceClassification(StepAudio2PreTrainedModel):
    """Step-Audio 2 body + ``score`` (Linear(hidden, num_labels), no bias) at the last real token.

    A reward model uses ``num_labels=1``; pass it to ``from_pretrained`` when starting from a
    causal-LM checkpoint, whose config carries transformers' default of 2.
    """

    def __init__(self, config: StepAudio2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = Qwen2Model(config.text_config)
        self.score = nn.Linear(config.text_config.hidden_size, config.num_labels, bias=False)
        self.encoder = StepAudio2AudioEncoder(config.audio_encoder_config)
        self.adapter = StepAudio2Adapter(config.audio_encoder_config)
        self.post_init()

    # The audio path is the causal LM's, method for method: the attribute names are the same, and
    # sharing the code keeps the two models embedding audio identically.
    num_audio_tokens = StepAudio2ForCausalLM.num_audio_tokens
    get_audio_features = StepAudio2ForCausalLM.get_audio_features
    embed_inputs = StepAudio2ForCausalLM.embed_inputs
    _audio_patch_mask = StepAudio2ForCausalLM._audio_patch_mask
    _raise_patch_mismatch = staticmethod(StepAudio2ForCausalLM._raise_patch_mismatch)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        feature_lens: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        """``logits [B, num_labels]`` read at each row's last attended (else last non-pad) token."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            inputs_embeds = self.embed_inputs(input_ids, input_features, feature_lens)
        outputs = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        last = last_token_index(
            input_ids, attention_mask, self.config.text_config.pad_token_id, hidden
        )
        pooled = self.score(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=pooled, config=self.config)
        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


def last_token_index(
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    pad_token_id: int | None,
    hidden: torch.Tensor,
) -> torch.Tensor:
    """``[B]`` index of each row's last real token: the last attended position (either padding
    side), else the last non-pad id, else the last position."""
    if attention_mask is not None:
        real = attention_mask.bool()
    elif input_ids is not None and pad_token_id is not None:
        real = input_ids != pad_token_id
    else:
        return torch.full((hidden.shape[0],), hidden.shape[1] - 1, device=hidden.device)
    positions = torch.arange(real.shape[1], device=real.device)
    return torch.where(real, positions, -1).amax(dim=1).clamp(min=0).to(hidden.device)


def preference_inputs(
    processor: StepAudio2Processor,
    samples: Sequence[PromptSample],
    completions: Sequence[str | Sequence[str]],
    max_length: int | None = None,
) -> dict[str, torch.Tensor | None]:
    """Right-padded ``prompt + completion + <|EOT|>`` rows with the prompts' audio features.

    ``completions[i]`` is one completion of ``samples[i]`` or several (a chosen and a rejected
    one); rows come sample by sample, so a sample's audio is read and its mel computed once.
    Completions are strings in the policy's output format (special tokens kept, as
    ``Rollout.text``), tokenised here so that a reward model scores what it was trained on,
    whatever produced them. Every row ends with ``<|EOT|>``, where the score is read. Over
    ``max_length`` a completion's tail is cut (its ``<|EOT|>`` kept); a prompt alone too long is
    an error naming the sample.
    """
    if len(samples) != len(completions):
        raise ValueError(f"{len(samples)} prompts but {len(completions)} completions")
    tokenizer, ids = processor.tokenizer, processor.special_ids
    prompts = processor(samples)
    rows, clips, first_clip = [], [], 0
    for b, (sample, options) in enumerate(zip(samples, completions)):
        prompt = prompts["input_ids"][b][prompts["attention_mask"][b].bool()].tolist()
        room = None if max_length is None else max_length - len(prompt) - 1
        if room is not None and room < 0:
            raise ValueError(
                f"sample {sample.id!r}: the prompt alone has {len(prompt)} tokens, more than "
                f"max_length={max_length}"
            )
        num_clips = prompt.count(ids.audio_start)  # 25 s pieces, in the features' order
        for completion in [options] if isinstance(options, str) else options:
            answer = tokenizer.encode(completion, add_special_tokens=False) if completion else []
            rows.append([*prompt, *answer[:room], ids.eot])
            clips += range(first_clip, first_clip + num_clips)
        first_clip += num_clips
    longest = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), longest), ids.pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, : len(row)] = torch.tensor(row)
        attention_mask[b, : len(row)] = 1
    features, lens = prompts["input_features"], prompts["feature_lens"]
    if features is not None:
        features, lens = features[clips], lens[clips]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "input_features": features,
        "feature_lens": lens,
    }


def prompt_sample(
    index: int, prompt: Any, audio: Any, sample_rate: int | None, think: bool, spoken: bool
) -> PromptSample:
    """A reward call's prompt (chat messages or a string) and its input audio as a sample."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    clips = [] if audio is None else [load_audio(audio, sample_rate, name=f"audio[{index}]")]
    return PromptSample(
        id=str(index), messages=messages, audio=clips, columns={}, think=think, spoken=spoken
    )


@reward("reward_model")
class RewardModel:
    """A preference reward model's score of each completion (a float, unbounded).

    Args:
        path: checkpoint written by ``rlhf reward-model`` (model + processor).
        batch_size: completions scored per forward pass.
        device: where the model runs (default: CUDA when available).
        dtype: ``float32`` | ``bfloat16`` | ``float16``.
        think: whether the policy's prompts were prefilled with ``<think>`` (the recipe's
            ``data.think``); the reward model must see the same prompt.
        max_length: tokens per prompt + completion; longer completions are cut.

    The prompt audio comes from the ``audio`` column (one clip per prompt, as the rollout engine
    passes it) and ``spoken`` from the column of that name.
    """

    def __init__(
        self,
        path: str,
        batch_size: int = 8,
        device: str | None = None,
        dtype: str = "float32",
        think: bool = True,
        max_length: int | None = 4096,
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = StepAudio2ForSequenceClassification.from_pretrained(
            path, dtype=getattr(torch, dtype)
        )
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"{path}: a reward model has one output, this checkpoint has "
                f"num_labels={self.model.config.num_labels} (train one with 'rlhf reward-model')"
            )
        self.model.to(self.device).eval().requires_grad_(False)
        self.processor = StepAudio2Processor.from_pretrained(path)
        self.batch_size, self.think, self.max_length = batch_size, think, max_length

    @torch.inference_mode()
    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        n = len(completions)
        audio = kwargs.get("audio") or [None] * n
        rates = kwargs.get("sample_rate") or [None] * n
        spoken = kwargs.get("spoken") or [False] * n
        texts = [completion_text(c) for c in completions]
        scores: list[float] = []
        for start in range(0, n, self.batch_size):
            batch = range(start, min(start + self.batch_size, n))
            samples = [
                prompt_sample(i, prompts[i], audio[i], rates[i], self.think, bool(spoken[i]))
                for i in batch
            ]
            inputs = preference_inputs(
                self.processor, samples, [texts[i] for i in batch], self.max_length
            )
            inputs = {k: v.to(self.device) for k, v in inputs.items() if v is not None}
            scores += self.model(**inputs).logits[:, 0].float().tolist()
        return scores

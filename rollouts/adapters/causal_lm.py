"""Any causal LM with a chat template: prompts through the tokenizer's template, text answers.

What Qwen2-Audio and Qwen2.5-Omni's thinker share with a plain text LM lives here too: a prompt is
the chat template's rendering plus the think prefill (``<think>\\n``), a completion ends at the
end-of-turn token (``<|im_end|>`` for ChatML models, else the tokenizer's eos) and is read with the
same think / answer rules as Step-Audio 2's (``rollouts.chat.parse_completion_text``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

import torch

from rollouts.adapters.base import ModelAdapter, VllmNames
from rollouts.chat import (
    ANSWER_SEPARATOR,
    IGNORE_INDEX,
    THINK_PREFILL,
    TRAIN_ON,
    AssistantTarget,
    ParsedCompletion,
    TrainOn,
    parse_completion_text,
)
from rollouts.processor import pad_rows
from rollouts.tokens import THINK_END
from rollouts.types import PromptSample

END_OF_TURN = "<|im_end|>"  # ChatML, the format of the Qwen families
TURN_START = "<|im_start|>"
ROLES = {"human": "user", "function_output": "tool"}  # Step-Audio 2 role names → HF ones


class CausalLMAdapter(ModelAdapter):
    """A text-only causal LM (``AutoModelForCausalLM``); the processor is its tokenizer."""

    name = "text"
    vllm = VllmNames("", None, None)  # vLLM serves it as the checkpoint's own architecture

    @classmethod
    def load_processor(cls, path) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)

    # ------------------------------------------------------------------ tokens
    def _token_id(self, token: str) -> int | None:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        return None if token_id is None or token_id == self.tokenizer.unk_token_id else token_id

    @cached_property
    def end_of_turn(self) -> int:
        eot = self._token_id(END_OF_TURN)
        return eot if eot is not None else self.tokenizer.eos_token_id

    @cached_property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.end_of_turn

    @cached_property
    def stop_ids(self) -> frozenset[int]:
        eos = self.tokenizer.eos_token_id
        return frozenset({self.end_of_turn} | ({eos} if eos is not None else set()))

    @cached_property
    def banned_ids(self) -> list[int]:
        ids = [self._token_id(t) for t in (TURN_START, *self.placeholder_tokens)] + [self.pad_id]
        return sorted({i for i in ids if i is not None} - self.stop_ids)

    placeholder_tokens: tuple[str, ...] = ()
    """Tokens that stand for audio in a prompt (none for a text model)."""

    # ------------------------------------------------------------------ prompts
    def chat(self, sample: PromptSample) -> list[dict[str, Any]]:
        """The sample's messages as the chat template expects them: HF role names, and audio parts
        that carry an ``audio`` key (templates test for it to place a clip)."""
        out = []
        for message in sample.messages:
            content = message.get("content")
            if isinstance(content, list):
                content = [
                    {**part, "audio": part.get("audio") or f"clip {k}"}
                    if part.get("type") == "audio"
                    else part
                    for k, part in enumerate(content)
                ]
            role = ROLES.get(message.get("role"), message.get("role"))
            out.append({**message, "role": role, "content": content})
        return out

    def render(self, sample: PromptSample) -> str:
        """The prompt text: chat template with the generation prompt, then the think prefill."""
        template = getattr(self.processor, "chat_template", None) or ""
        if sample.tools and "tools" not in template:
            raise ValueError("the sample has tools but this model's chat template ignores them")
        text = self.processor.apply_chat_template(
            self.chat(sample), tools=sample.tools, tokenize=False, add_generation_prompt=True
        )
        return text + (THINK_PREFILL if sample.think else "")

    def encode_prompt(self, sample: PromptSample) -> tuple[list[int], dict[str, torch.Tensor]]:
        """A prompt's ids and its audio features (``input_features`` / ``feature_lens``)."""
        if sample.audio:
            raise ValueError(
                f"{len(sample.audio)} audio clip(s), but this model has no audio input"
            )
        return self.tokenizer.encode(self.render(sample), add_special_tokens=False), {}

    def encode_target(self, target: AssistantTarget, think: bool) -> list[int]:
        """The ids the model should write after the prompt's prefill, end of turn included."""
        if target.audio_codes:
            raise ValueError("the target has audio codes, but this model writes text only")
        head = f"{target.think or ''}{THINK_END}{ANSWER_SEPARATOR}" if think else ""
        return [
            *self.tokenizer.encode(head + target.text, add_special_tokens=False),
            self.end_of_turn,
        ]

    def _encode_all(self, samples: Sequence[PromptSample]):
        rows, audio = [], []
        for sample in samples:
            try:
                ids, features = self.encode_prompt(sample)
            except ValueError as e:
                raise type(e)(f"sample {sample.id!r}: {e}") from e
            rows.append(ids)
            if features:
                audio.append(features)
        if not audio:
            return rows, {"input_features": None, "feature_lens": None}
        return rows, self.collate_features(audio)

    def collate_features(self, parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The audio features of several prompts as one batch (the family's own padding)."""
        raise NotImplementedError

    def prompt_inputs(self, samples: Sequence[PromptSample]) -> dict[str, torch.Tensor | None]:
        rows, audio = self._encode_all(samples)
        return {**pad_rows(rows, self.pad_id, left=True), **audio}

    def sft_batch(
        self,
        samples: Sequence[PromptSample],
        targets: Sequence[AssistantTarget],
        train_on: TrainOn = "both",
    ) -> dict[str, torch.Tensor | None]:
        if len(samples) != len(targets):
            raise ValueError(f"{len(samples)} samples but {len(targets)} targets")
        prompts, audio = self._encode_all(samples)
        rows, label_rows = [], []
        for sample, prompt, target in zip(samples, prompts, targets, strict=True):
            try:
                completion = self.encode_target(target, sample.think)
            except ValueError as e:
                raise type(e)(f"sample {sample.id!r}: {e}") from e
            mask = self.loss_mask(completion, train_on)
            rows.append(prompt + completion)
            label_rows.append(
                [IGNORE_INDEX] * len(prompt)
                + [t if m else IGNORE_INDEX for t, m in zip(completion, mask, strict=True)]
            )
        batch = pad_rows(rows, self.pad_id, left=False)
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        for b, row in enumerate(label_rows):
            labels[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        return {**batch, "labels": labels, **audio}

    def count_clips(self, prompt_ids: Sequence[int]) -> int:
        return 0

    # ------------------------------------------------------------------ model
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
        if input_features is not None:
            raise ValueError("audio features given to a text-only model")
        out = model.get_decoder()(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
        )
        return out.last_hidden_state

    # ------------------------------------------------------------------ completions
    def parse(self, completion_ids: Sequence[int], sample: PromptSample) -> ParsedCompletion:
        kept: list[int] = []
        for t in completion_ids:
            if t in self.stop_ids:
                break
            if t != self.pad_id:
                kept.append(int(t))
        text = self.tokenizer.decode(
            kept, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        return parse_completion_text(text, think_prefilled=sample.think, spoken_prefilled=False)

    def loss_mask(
        self,
        completion_ids: Sequence[int],
        train_on: TrainOn = "text",
        sample: PromptSample | None = None,
    ) -> list[int]:
        """1 for the model's own tokens up to and including the first stop token, else 0; a
        text-only model has no audio codes, so ``train_on="audio"`` trains nothing."""
        if train_on not in TRAIN_ON:
            raise ValueError(f"train_on must be one of {TRAIN_ON}, got {train_on!r}")
        on = int(train_on != "audio")
        mask, open_turn = [], True
        for t in completion_ids:
            if not open_turn:
                mask.append(0)
            elif t in self.stop_ids:
                mask.append(on)
                open_turn = False
            else:
                mask.append(0 if t == self.pad_id else on)
        return mask

"""The Step-Audio 2 processor: prompt samples in, model-ready tensors out.

It joins the audio front end (``rollouts.audio``) and the chat format (``rollouts.chat``): each
clip is cut into 25 s pieces, each piece becomes one log-mel and one ``<audio_start>`` block whose
patch count matches what the encoder produces for it. A ``transformers`` ``ProcessorMixin``, so
``save_pretrained`` / ``from_pretrained`` (and ``AutoProcessor`` once registered) work as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import torch
from transformers import ProcessorMixin

from rollouts.audio import batch_mels, log_mel, num_audio_tokens, split_clip
from rollouts.chat import IGNORE_INDEX, AssistantTarget, TrainOn, render_prompt, render_sft
from rollouts.tokens import SpecialIds
from rollouts.types import PromptSample


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, left: bool) -> dict[str, torch.Tensor]:
    """``input_ids`` / ``attention_mask`` of token rows, padded on the left or the right."""
    if not rows:
        raise ValueError("no samples to process")
    longest = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for b, row in enumerate(rows):
        span = slice(longest - len(row), longest) if left else slice(0, len(row))
        input_ids[b, span] = torch.tensor(list(row), dtype=torch.long)
        attention_mask[b, span] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


class StepAudio2Processor(ProcessorMixin):
    """Wraps the tokenizer; ``__call__`` builds generation inputs, ``sft_batch`` training ones."""

    def __init__(self, tokenizer):  # named so ProcessorMixin saves and loads the tokenizer
        super().__init__(tokenizer)

    @cached_property
    def special_ids(self) -> SpecialIds:
        return SpecialIds.from_tokenizer(self.tokenizer)

    def __repr__(self) -> str:  # the default prints every added token (6562 audio codes)
        ids = self.special_ids
        return (
            f"{type(self).__name__}(tokenizer={type(self.tokenizer).__name__}, "
            f"vocab={len(self.tokenizer)}, audio_codes={ids.num_audio_codes})"
        )

    def _audio(self, sample: PromptSample) -> tuple[list[list[int]], list]:
        """Per clip, the patch count of each 25 s piece; and the pieces' mels, in order."""
        counts, mels = [], []
        for n, clip in enumerate(sample.audio):
            pieces = [log_mel(piece) for piece in split_clip(clip)]
            if not pieces:
                raise ValueError(f"audio[{n}] is empty")
            counts.append([num_audio_tokens(mel.shape[1]) for mel in pieces])
            mels += pieces
        return counts, mels

    def _features(self, mels: list) -> dict[str, torch.Tensor | None]:
        if not mels:
            return {"input_features": None, "feature_lens": None}
        features, feature_lens = batch_mels(mels)
        return {"input_features": features, "feature_lens": feature_lens}

    def _pad(self, rows: Sequence[list[int]], left: bool) -> dict[str, torch.Tensor]:
        return pad_rows(rows, self.special_ids.pad, left)

    def __call__(self, samples: Sequence[PromptSample]) -> dict[str, torch.Tensor | None]:
        """Generation inputs: ``input_ids`` / ``attention_mask`` left padded, audio features of
        every clip piece in sample order (``None`` when the batch has no audio)."""
        rows, mels = [], []
        for sample in samples:
            try:
                counts, sample_mels = self._audio(sample)
                ids = render_prompt(
                    sample.messages,
                    self.tokenizer,
                    counts,
                    sample.think,
                    sample.spoken,
                    sample.tools,
                )
            except ValueError as e:
                raise ValueError(f"sample {sample.id!r}: {e}") from e
            rows.append(ids)
            mels += sample_mels
        return {**self._pad(rows, left=True), **self._features(mels)}

    def sft_batch(
        self,
        samples: Sequence[PromptSample],
        targets: Sequence[AssistantTarget],
        train_on: TrainOn = "both",
    ) -> dict[str, torch.Tensor | None]:
        """Training inputs: prompt + target, right padded, ``labels`` -100 except trained tokens."""
        if len(samples) != len(targets):
            raise ValueError(f"{len(samples)} samples but {len(targets)} targets")
        rows, label_rows, mels = [], [], []
        for sample, target in zip(samples, targets, strict=True):
            try:
                counts, sample_mels = self._audio(sample)
                ids, labels = render_sft(
                    sample.messages,
                    target,
                    self.tokenizer,
                    counts,
                    sample.think,
                    sample.spoken,
                    sample.tools,
                    train_on,
                )
            except ValueError as e:
                raise ValueError(f"sample {sample.id!r}: {e}") from e
            rows.append(ids)
            label_rows.append(labels)
            mels += sample_mels
        batch = self._pad(rows, left=False)
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        for b, row in enumerate(label_rows):
            labels[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        return {**batch, "labels": labels, **self._features(mels)}

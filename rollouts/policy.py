"""The policy: a speech LLM and its processor, seen from RL.

Both the rollout engine and the trainer go through this object, so prompts are built, audio is
embedded and log-probs are computed one way only.

Log-probs never materialise ``[B, T, V]`` logits: hidden states of the completion positions are
gathered, then pushed through the LM head in chunks of tokens, each chunk under activation
checkpointing so that backward recomputes its logits instead of keeping them (V is 158 720 for
Step-Audio 2; fp32 logits of 8 × 2048 tokens would take 10 GiB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint

from rollouts.processor import StepAudio2Processor
from rollouts.types import PromptSample


@dataclass
class SequenceBatch:
    """Prompt + completion sequences, right-padded, with what is needed to score completions.

    ``completion_mask[b, t]`` is 1 where ``completion_ids[b, t]`` is a real completion token.
    """

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    prompt_lengths: torch.Tensor  # [B]
    completion_ids: torch.Tensor  # [B, C]
    completion_mask: torch.Tensor  # [B, C]
    input_features: torch.Tensor | None  # [N_clips, 128, T]
    feature_lens: torch.Tensor | None  # [N_clips]

    def to(self, device: torch.device | str) -> SequenceBatch:
        moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in vars(self).items()}
        return SequenceBatch(**moved)


class Policy:
    """Model + processor. ``model`` may be a peft ``PeftModel``; ``base`` is the bare LM."""

    def __init__(self, model: torch.nn.Module, processor: StepAudio2Processor):
        self.model = model
        self.processor = processor

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, dtype: str = "float32", device: str = "cpu"
    ) -> Policy:
        from transformers import AutoModelForCausalLM

        import rollouts  # noqa: F401  (registers the Step-Audio 2 architecture)

        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        return cls(model.to(device), StepAudio2Processor.from_pretrained(path))

    @property
    def base(self) -> torch.nn.Module:
        """The underlying causal LM, whether or not peft wraps it."""
        get_base = getattr(self.model, "get_base_model", None)
        return get_base() if get_base is not None else self.model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def build_inputs(self, samples: Sequence[PromptSample]) -> dict[str, torch.Tensor]:
        """Left-padded generation inputs for ``samples`` on the policy's device."""
        inputs = self.processor(list(samples))
        return {k: v.to(self.device) for k, v in inputs.items() if v is not None}

    def sequence_batch(
        self,
        prompt_ids: Sequence[Sequence[int]],
        completion_ids: Sequence[Sequence[int]],
        input_features: torch.Tensor | None,
        feature_lens: torch.Tensor | None,
    ) -> SequenceBatch:
        """Right-pad prompt + completion pairs; audio features are those of the prompts, in order."""
        pad_id = self.processor.tokenizer.pad_token_id
        lengths = [len(p) + len(c) for p, c in zip(prompt_ids, completion_ids)]
        max_len, max_completion = max(lengths), max(max(len(c) for c in completion_ids), 1)
        batch = len(prompt_ids)
        input_ids = torch.full((batch, max_len), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, max_len), dtype=torch.long)
        completions = torch.full((batch, max_completion), pad_id, dtype=torch.long)
        completion_mask = torch.zeros((batch, max_completion), dtype=torch.long)
        for b, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids)):
            row = list(prompt) + list(completion)
            input_ids[b, : len(row)] = torch.tensor(row)
            attention_mask[b, : len(row)] = 1
            completions[b, : len(completion)] = torch.tensor(list(completion), dtype=torch.long)
            completion_mask[b, : len(completion)] = 1
        prompt_lengths = torch.tensor([len(p) for p in prompt_ids])
        return SequenceBatch(
            input_ids,
            attention_mask,
            prompt_lengths,
            completions,
            completion_mask,
            input_features,
            feature_lens,
        ).to(self.device)

    def hidden_states(self, batch: SequenceBatch) -> torch.Tensor:
        """Last decoder hidden states ``[B, L, H]`` (audio embedded, LoRA applied if present)."""
        base = self.base
        embeds = base.embed_inputs(batch.input_ids, batch.input_features, batch.feature_lens)
        out = base.model(inputs_embeds=embeds, attention_mask=batch.attention_mask, use_cache=False)
        return out.last_hidden_state

    def logprobs(
        self,
        batch: SequenceBatch,
        *,
        temperature: float = 1.0,
        chunk_size: int = 1024,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs ``[B, C]`` of the completions (0 on padding), and entropies.

        Written by hand because no library scores only selected positions through the LM head
        chunk by chunk with recomputation in backward.
        """
        hidden = self.hidden_states(batch)
        batch_size, num_completion = batch.completion_ids.shape
        # hidden state at position p predicts token p + 1: completion token t of row b sits at
        # prompt_length + t and is predicted from prompt_length + t - 1.
        offsets = torch.arange(num_completion, device=hidden.device)
        positions = (batch.prompt_lengths[:, None] - 1 + offsets[None, :]).clamp(
            max=hidden.shape[1] - 1
        )
        selected = batch.completion_mask.bool()
        rows = torch.arange(batch_size, device=hidden.device)[:, None].expand_as(positions)
        flat_hidden = hidden[rows[selected], positions[selected]]  # [N, H]
        flat_targets = batch.completion_ids[selected]  # [N]
        logps, entropies = chunked_logprobs(
            flat_hidden, flat_targets, self.base.lm_head.weight, temperature, chunk_size
        )

        def scatter(values: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(batch_size, num_completion, device=hidden.device, dtype=torch.float32)
            return out.masked_scatter(selected, values)

        return scatter(logps), (scatter(entropies) if with_entropy else None)


def chunked_logprobs(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies of ``targets [N]`` given ``hidden [N, H]`` and the LM head.

    At most ``chunk_size × V`` fp32 logits exist at a time, in forward and in backward.
    """
    logps, entropies = [], []
    for start in range(0, targets.numel(), chunk_size):
        args = (hidden[start : start + chunk_size], targets[start : start + chunk_size], weight)
        if torch.is_grad_enabled():
            lp, ent = checkpoint(_chunk_logprobs, *args, temperature, use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs(*args, temperature)
        logps.append(lp)
        entropies.append(ent)
    if not logps:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return torch.cat(logps), torch.cat(entropies)


def _chunk_logprobs(
    hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = (hidden @ weight.T).float() / temperature
    log_normaliser = logits.logsumexp(-1)
    logps = logits.gather(-1, targets[:, None]).squeeze(-1) - log_normaliser
    probs = (logits - log_normaliser[:, None]).exp()
    entropy = log_normaliser - (probs * logits).sum(-1)
    return logps, entropy

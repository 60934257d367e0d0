"""The policy: a speech LLM and its processor, seen from RL.

Both the rollout engine and the trainer go through this object, so prompts are built, audio is
embedded and log-probs are computed one way only.

Log-probs never materialise ``[B, T, V]`` logits: hidden states of the completion positions are
gathered, then pushed through the LM head in chunks of tokens, forward and backward (V is 158 720
for Step-Audio 2; fp32 logits of 8 × 2048 tokens would take 10 GiB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

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
    clip_index: torch.Tensor | None = None  # [N_starts]: clip of each <audio_start>; None: in order

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
        clip_index: torch.Tensor | None = None,
    ) -> SequenceBatch:
        """Right-pad prompt + completion pairs; audio features are those of the prompts, in order,
        or each distinct clip once with ``clip_index`` naming the clip of every `<audio_start>`."""
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
            clip_index,
        ).to(self.device)

    def hidden_states(self, batch: SequenceBatch) -> torch.Tensor:
        """Last decoder hidden states ``[B, L, H]`` (audio embedded, LoRA applied if present)."""
        base = self.base
        embeds = base.embed_inputs(
            batch.input_ids, batch.input_features, batch.feature_lens, batch.clip_index
        )
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
    return _ChunkedLogprobs.apply(hidden, weight, targets, temperature, chunk_size)


class _ChunkedLogprobs(torch.autograd.Function):
    """Log-softmax at the targets and entropy through the LM head, chunk by chunk.

    Written by hand because activation checkpointing per chunk does not bound memory (autograd
    keeps every chunk's recomputed logits until the backward pass ends) and the fused kernels
    that do (Liger, TRL's) need Triton on a GPU. Backward recomputes each chunk's logits and
    applies the closed-form gradients, with ``z = logits / T``, ``p = softmax(z)``:
    ``∂logp_y/∂z = onehot(y) - p`` and ``∂H/∂z = -p (log p + H)``.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk_size):
        logps = hidden.new_empty(targets.shape, dtype=torch.float32)
        entropies = torch.empty_like(logps)
        for start in range(0, targets.numel(), chunk_size):
            rows = slice(start, start + chunk_size)
            log_p = _log_softmax(hidden[rows], weight, temperature)
            logps[rows] = log_p.gather(-1, targets[rows, None]).squeeze(-1)
            entropies[rows] = -log_p.exp().mul_(log_p).sum(-1)
        ctx.save_for_backward(hidden, weight, targets, entropies)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return logps, entropies

    @staticmethod
    def backward(ctx, grad_logps, grad_entropies):
        hidden, weight, targets, entropies = ctx.saved_tensors
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = (
            torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        )
        for start in range(0, targets.numel(), ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            g_logp = grad_logps[rows, None]
            # in place, so that two chunk-sized tensors exist: log p (becoming ∂/∂z) and p
            log_p = _log_softmax(hidden[rows], weight, ctx.temperature)
            p = log_p.exp()
            if grad_entropies is not None:
                grad_z = log_p.add_(entropies[rows, None]).mul_(grad_entropies[rows, None])
                grad_z.add_(g_logp).mul_(p).neg_()
            else:
                grad_z = p.mul_(-g_logp)
            grad_z.scatter_add_(-1, targets[rows, None], g_logp)
            grad_logits = grad_z.div_(ctx.temperature).to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[rows] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += (grad_logits.T @ hidden[rows]).float()
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None


def _log_softmax(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    z = (hidden @ weight.T).float().div_(temperature)
    return z.sub_(z.logsumexp(-1, keepdim=True))

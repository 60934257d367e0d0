"""The policy: a speech LLM, its processor and its model adapter, seen from RL.

Both the rollout engine and the trainer go through this object, so prompts are built, audio is
embedded and log-probs are computed one way only, whatever the model family: what differs between
families (chat format, audio placeholders, the hidden-states call) is the adapter's
(``rollouts.adapters``), chosen from the checkpoint's config.

Audio is never silently dropped on the way from the rollout to the trainer: every training forward
checks that its prompts' audio blocks match the features given, and ``rollout_batch`` that each
rollout's prompt ids are what the trainer rebuilds from the same prompt.

Log-probs never materialise ``[B, T, V]`` logits: hidden states of the completion positions are
gathered, then pushed through the LM head in chunks of tokens, forward and backward (V is 158 720
for Step-Audio 2; fp32 logits of 8 × 2048 tokens would take 10 GiB).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rollouts.adapters import AudioMismatchError, ModelAdapter, adapter_for
from rollouts.adapters.base import positions
from rollouts.types import PromptSample, Rollout


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
    input_features: torch.Tensor | None  # [N_clips, mel bins, T]
    feature_lens: torch.Tensor | None  # [N_clips], in the model family's unit
    clip_index: torch.Tensor | None = None  # [N_blocks]: clip of each audio block; None: in order

    def to(self, device: torch.device | str) -> SequenceBatch:
        moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in vars(self).items()}
        return SequenceBatch(**moved)


class Policy:
    """Model + processor + adapter. ``model`` may be a peft ``PeftModel``; ``base`` is the bare
    LM; ``processor`` is the family's own (what checkpoints save beside the weights)."""

    def __init__(self, model: torch.nn.Module, processor: Any, adapter: ModelAdapter | None = None):
        self.model = model
        self.processor = processor
        self.adapter = adapter or adapter_for(self.base.config)(processor)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, dtype: str = "float32", device: str = "cpu"
    ) -> Policy:
        """The checkpoint at ``path``, loaded by the adapter its config names."""
        from transformers import AutoConfig

        import rollouts  # noqa: F401  (registers the Step-Audio 2 architecture)

        family = adapter_for(AutoConfig.from_pretrained(path))
        processor = family.load_processor(path)
        model = family.load_model(path, getattr(torch, dtype))
        return cls(model.to(device), processor, family(processor))

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
        inputs = self.adapter.prompt_inputs(list(samples))
        return {k: v.to(self.device) for k, v in inputs.items() if v is not None}

    def sft_batch(self, samples: Sequence[PromptSample], targets: Sequence[Any], train_on="both"):
        """Right-padded prompt + target inputs with ``labels`` (-100 except trained tokens)."""
        return self.adapter.sft_batch(list(samples), list(targets), train_on)

    def rollout_batch(
        self, samples: Mapping[str, PromptSample], rollouts: Sequence[Rollout]
    ) -> SequenceBatch:
        """The training sequences of ``rollouts``: each distinct prompt is processed once and its
        clips are shared by its samples (``clip_index``).

        Raises ``AudioMismatchError`` naming the rollout whose prompt ids differ from this
        rebuild of its prompt (a clip lost, or added, between dataset, engine and trainer).
        """
        distinct = list(dict.fromkeys(r.prompt_id for r in rollouts))
        prompts = self.adapter.prompt_inputs([samples[p] for p in distinct])
        rebuilt = {
            p: ids[mask.bool()].tolist()
            for p, ids, mask in zip(distinct, prompts["input_ids"], prompts["attention_mask"])
        }
        for i, r in enumerate(rollouts):
            ours = rebuilt[r.prompt_id]
            if list(r.prompt_ids) != ours:
                clips = self.adapter.count_clips
                raise AudioMismatchError(
                    f"rollout {i} (prompt {r.prompt_id!r}, sample {r.sample_index}): its prompt "
                    f"ids ({len(r.prompt_ids)} tokens, {clips(r.prompt_ids)} audio blocks) are not "
                    f"the trainer's rebuild of that prompt ({len(ours)} tokens, {clips(ours)} "
                    "audio blocks)"
                )
        return self.sequence_batch(
            [r.prompt_ids for r in rollouts],
            [r.completion_ids for r in rollouts],
            prompts.get("input_features"),
            prompts.get("feature_lens"),
            self.clip_index(rollouts, distinct, rebuilt),
        )

    def clip_index(
        self, rollouts: Sequence[Rollout], distinct: list[str], prompt_ids: Mapping[str, list[int]]
    ) -> torch.Tensor:
        """For each audio block of ``rollouts``, its feature row among those of the ``distinct``
        prompts (processed once each, in that order)."""
        clips = {p: self.adapter.count_clips(prompt_ids[p]) for p in distinct}
        first = dict(zip(distinct, itertools.accumulate((clips[p] for p in distinct), initial=0)))
        index = [first[r.prompt_id] + k for r in rollouts for k in range(clips[r.prompt_id])]
        return torch.tensor(index, dtype=torch.long)

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
        pad_id = self.adapter.pad_id
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
        """Last decoder hidden states ``[B, L, H]`` (audio embedded, LoRA applied if present),
        after checking that the rows' audio blocks and the features given match."""
        features = batch.input_features
        self.adapter.check_clips(
            batch.input_ids.tolist(), batch.clip_index, 0 if features is None else len(features)
        )
        return self.adapter.hidden_states(
            self.base,
            batch.input_ids,
            batch.attention_mask,
            position_ids=positions(batch.attention_mask),
            input_features=features,
            feature_lens=batch.feature_lens,
            clip_index=batch.clip_index,
        )

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
        chunk by chunk with recomputation in backward. Under autocast the decoder and the LM head
        run in the autocast dtype; log-softmax and entropy are accumulated in fp32.
        """
        hidden = self.hidden_states(batch)
        where, selected = completion_positions(batch, hidden.shape[1])
        rows = torch.arange(len(where), device=hidden.device)[:, None].expand_as(where)
        flat_hidden = hidden[rows[selected], where[selected]]  # [N, H]
        flat_targets = batch.completion_ids[selected]  # [N]
        logps, entropies = chunked_logprobs(
            flat_hidden, flat_targets, self.base.lm_head.weight, temperature, chunk_size
        )

        def scatter(values: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(selected.shape, device=hidden.device, dtype=torch.float32)
            return out.masked_scatter(selected, values)

        return scatter(logps), (scatter(entropies) if with_entropy else None)


def completion_positions(batch: SequenceBatch, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, C]`` positions of the hidden states that predict each completion token, and the mask
    of real completion tokens: token t of row b sits at ``prompt_length + t`` and is predicted
    from ``prompt_length + t - 1``."""
    offsets = torch.arange(batch.completion_ids.shape[1], device=batch.completion_ids.device)
    where = (batch.prompt_lengths[:, None] - 1 + offsets[None, :]).clamp(0, length - 1)
    return where, batch.completion_mask.bool()


class LogProbModel(torch.nn.Module):
    """``Policy.logprobs`` (and, with a value head, PPO values) as a module's ``forward``.

    Distributed wrappers act through module hooks: FSDP gathers a module's parameters before its
    ``forward`` and reduces their gradients after backward. The log-prob path calls the decoder
    and then multiplies by the LM head weight directly, so it must run inside the forward of a
    module that owns them all, this one, for the wrapper to see it. ``values`` is a second entry
    point (FSDP registers it with ``register_fsdp_forward_method``).
    """

    def __init__(self, policy: Policy, value_head: torch.nn.Module | None = None):
        super().__init__()
        self.policy = policy
        self.model = policy.model  # registered: its parameters are this module's
        self.value_head = value_head

    def forward(
        self,
        batch: SequenceBatch,
        *,
        temperature: float = 1.0,
        chunk_size: int = 1024,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.policy.logprobs(
            batch, temperature=temperature, chunk_size=chunk_size, with_entropy=with_entropy
        )

    def values(self, batch: SequenceBatch) -> torch.Tensor:
        """``[B, C]`` fp32 values aligned with the log-probs: ``values[b, t]`` is the value head
        on the state that predicts completion token t; 0 on padding."""
        hidden = self.policy.hidden_states(batch)
        where, selected = completion_positions(batch, hidden.shape[1])
        rows = torch.arange(len(where), device=hidden.device)[:, None]
        values = self.value_head(hidden[rows, where]).squeeze(-1).float()
        return values * selected


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
        # backward recomputes the logits as forward did: in the autocast dtype, if any
        device = hidden.device.type
        ctx.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        stored = weight  # backward casts again rather than keep a cast copy alive
        weight = _compute_weight(weight, ctx.autocast)
        logps = hidden.new_empty(targets.shape, dtype=torch.float32)
        entropies = torch.empty_like(logps)
        for start in range(0, targets.numel(), chunk_size):
            rows = slice(start, start + chunk_size)
            log_p = _log_softmax(hidden[rows], weight, temperature)
            logps[rows] = log_p.gather(-1, targets[rows, None]).squeeze(-1)
            entropies[rows] = -log_p.exp().mul_(log_p).sum(-1)
        ctx.save_for_backward(hidden, stored, targets, entropies)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return logps, entropies

    @staticmethod
    def backward(ctx, grad_logps, grad_entropies):
        device, dtype, enabled = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            return _chunked_backward(ctx, grad_logps, grad_entropies)


def _compute_weight(weight: torch.Tensor, autocast: tuple) -> torch.Tensor:
    """The LM head weight cast once to the autocast dtype (if any), not once per chunk."""
    _, dtype, enabled = autocast
    return weight.to(dtype) if enabled and weight.is_floating_point() else weight


def _chunked_backward(ctx, grad_logps, grad_entropies):
    """``_ChunkedLogprobs.backward``: each chunk's logits recomputed, closed-form gradients
    (accumulated in fp32, returned in the weight's own dtype)."""
    hidden, weight, targets, entropies = ctx.saved_tensors
    weight_dtype = weight.dtype
    weight = _compute_weight(weight, ctx.autocast)
    grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
    grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
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
        grad_weight = grad_weight.to(weight_dtype)
    return grad_hidden, grad_weight, None, None, None


def _log_softmax(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    z = (hidden @ weight.T).float().div_(temperature)
    return z.sub_(z.logsumexp(-1, keepdim=True))

"""Policy and value losses: clipped importance-ratio surrogate, KL to the reference, aggregation.

Pure tensor functions over completion tokens: every ``[B, T]`` input is aligned with the
completion, ``mask`` is 1 on trained tokens. Log-probs come from the trainer (chunked elsewhere).

Aggregation modes and TRL 1.16 ``GRPOTrainer`` loss types (``_compute_loss``):

==========  =============  ===========================================================
ours        TRL loss_type  ``sum(loss * mask)`` is divided by
==========  =============  ===========================================================
token_mean  ``dapo``       the tokens of the whole batch: ``total_tokens`` = TRL's
            (TRL default)  ``num_items_in_batch`` (per process: global count / processes)
token_mean  ``bnpo``       the micro-batch's tokens (local ``mask.sum()``); TRL then
                           divides by the number of micro-batches
seq_mean    ``grpo``       per sequence its token count, then ``total_sequences``
                           (TRL: the micro-batch size, then the number of micro-batches)
dr_grpo     ``dr_grpo``    ``total_sequences * max_completion_length`` (TRL: micro-batch
                           size times it, then the number of micro-batches)
==========  =============  ===========================================================

``total_tokens`` / ``total_sequences`` default to the micro-batch's own, so with one micro-batch
on one process ``dapo`` and ``bnpo`` coincide. Passing the whole batch's counts makes the
micro-batch losses sum to the full-batch loss under gradient accumulation. GSPO is ``seq_mean``
with ``importance_sampling_level="sequence"`` (TRL: ``loss_type="grpo"``, same level).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Aggregation = Literal["token_mean", "seq_mean", "dr_grpo"]
KLEstimator = Literal["k1", "k3"]
ImportanceSamplingLevel = Literal["token", "sequence"]


def _check_same_shape(mask: Tensor, **tensors: Tensor | None) -> None:
    if mask.dim() != 2:
        raise ValueError(f"mask must be [B, T]; got {tuple(mask.shape)}")
    for name, x in tensors.items():
        if x is not None and x.shape != mask.shape:
            raise ValueError(f"{name} must match mask {tuple(mask.shape)}; got {tuple(x.shape)}")


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    mode: Aggregation,
    *,
    max_completion_length: int | None = None,
    total_tokens: float | Tensor | None = None,
    total_sequences: int | None = None,
) -> Tensor:
    """Reduce a ``[B, T]`` per-token quantity (or ``[B, 1]``, broadcast) to a scalar.

    ``token_mean``: ``sum(x * mask) / total_tokens`` (default: ``mask.sum()``).
    ``seq_mean``: each row's token mean, summed, ``/ total_sequences`` (default ``B``); an
    all-masked row counts as 0, as in TRL.
    ``dr_grpo``: ``sum(x * mask) / (total_sequences * max_completion_length)``, a constant
    normaliser so long and short completions weigh the same per token (Dr. GRPO).
    """
    mask = mask.to(per_token.dtype)
    masked = torch.where(mask.bool(), per_token, 0.0)  # not `* mask`: padding may hold inf/NaN
    if mode == "token_mean":
        denominator = mask.sum() if total_tokens is None else total_tokens
        return masked.sum() / torch.as_tensor(
            denominator, dtype=masked.dtype, device=masked.device
        ).clamp(min=1)
    sequences = mask.size(0) if total_sequences is None else total_sequences
    if mode == "seq_mean":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / max(sequences, 1)
    if mode == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("aggregation 'dr_grpo' needs max_completion_length")
        return masked.sum() / (max(sequences, 1) * max_completion_length)
    raise ValueError(f"aggregation must be 'token_mean', 'seq_mean' or 'dr_grpo', got {mode!r}")


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-token estimate of KL(policy || reference) from samples of the policy (Schulman's k1/k3).

    ``k1 = log p - log p_ref``: unbiased, high variance, can be negative; its gradient in a loss
    is zero in expectation, so use it in the reward. ``k3 = exp(log p_ref - log p) -
    (log p_ref - log p) - 1``: unbiased, non-negative, low variance; TRL's loss-side KL.
    """
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return torch.exp(log_ratio) - log_ratio - 1
    raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {estimator!r}")


def truncated_importance_weights(
    old_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, cap: float
) -> tuple[Tensor, dict[str, float]]:
    """Truncated importance sampling (TIS) weights of the engine/trainer mismatch, ``[B, T]``.

    A rollout engine (vLLM) samples from slightly different probabilities than the trainer
    computes (other kernels, precision), so its samples are off-policy for the trainer's old
    policy. Each token's loss is weighted by ``min(π_old / π_engine, cap) =
    min(exp(old - behaviour), cap)``, as TRL's ``token_truncate`` and verl's TIS do; the cap bounds
    the variance that a rare engine token would add. No gradient flows through the weights.
    Metrics: ``tis_weight_mean`` and ``tis_truncated_fraction`` over trained tokens.
    """
    _check_same_shape(mask, old_logprobs=old_logprobs, behaviour_logprobs=behaviour_logprobs)
    if cap <= 0:
        raise ValueError(f"the TIS cap must be > 0, got {cap}")
    valid = mask.bool()
    log_ratio = torch.where(valid, old_logprobs.float() - behaviour_logprobs.float(), 0.0)
    ratio = torch.exp(log_ratio.detach())
    weights = ratio.clamp(max=cap)
    count = valid.sum().clamp(min=1)
    metrics = {
        "tis_weight_mean": (torch.where(valid, weights, 0.0).sum() / count).item(),
        "tis_truncated_fraction": ((ratio > cap) & valid).sum().item() / count.item(),
    }
    return weights, metrics


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    importance_sampling_level: ImportanceSamplingLevel = "token",
    aggregation: Aggregation = "token_mean",
    ref_logprobs: Tensor | None = None,
    beta: float = 0.0,
    kl_estimator: KLEstimator = "k3",
    kl_importance_weighted: bool = True,
    importance_weights: Tensor | None = None,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    max_completion_length: int | None = None,
    total_tokens: float | Tensor | None = None,
    total_sequences: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO/GRPO clipped surrogate, plus ``beta * KL`` and minus ``entropy_coef * entropy``.

    Args:
        logprobs: ``[B, T]`` log-probs of the completion tokens under the policy (with grad).
        old_logprobs: ``[B, T]`` under the policy that generated them (behaviour policy).
        advantages: ``[B]`` (one per sequence, GRPO family) or ``[B, T]`` (per token, PPO).
        mask: ``[B, T]``, 1 = trained token.
        clip_low, clip_high: the ratio is clipped to ``[1 - clip_low, 1 + clip_high]``
            (DAPO's clip-higher: ``clip_high=0.28``).
        importance_sampling_level: ``token`` (PPO/GRPO) or ``sequence`` (GSPO: one ratio per
            sequence, ``exp`` of the mean token log-ratio).
        aggregation: see the module table; ``max_completion_length`` for ``dr_grpo``,
            ``total_tokens`` / ``total_sequences`` for gradient accumulation.
        ref_logprobs, beta, kl_estimator: ``beta * KL(policy || ref)`` is added per token before
            aggregation (TRL's loss-side KL uses k3). ``ref_logprobs`` alone logs the KL.
        kl_importance_weighted: multiply the per-token KL by the (unclipped, differentiable)
            importance ratio, which makes its gradient the unbiased reverse-KL gradient when the
            samples come from the old policy (DeepSeek-V3.2; TRL's ``use_bias_correction_kl``,
            on by default in TRL 1.16). It changes the gradient even on-policy.
        importance_weights: ``[B, T]`` weights of each token's surrogate (not of the KL or
            entropy terms), e.g. ``truncated_importance_weights`` of an engine that samples from
            other probabilities than the trainer's (TRL multiplies the same term).
        entropy, entropy_coef: ``[B, T]`` per-token entropy; ``entropy_coef`` times its token
            mean over the batch is subtracted (TRL's entropy bonus, whatever the aggregation).

    Returns ``(loss, metrics)``; metrics are floats: ``policy_loss`` (surrogate only),
    ``clip_fraction`` and its ``_low`` / ``_high`` parts (share of tokens, or sequences at
    sequence level, whose gradient the clip removes), ``ratio_mean``, ``ratio_max``, and
    ``kl`` (as it enters the loss) / ``entropy`` when given (token means).
    """
    _check_same_shape(
        mask,
        logprobs=logprobs,
        old_logprobs=old_logprobs,
        ref_logprobs=ref_logprobs,
        entropy=entropy,
        importance_weights=importance_weights,
    )
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    if advantages.size(0) != mask.size(0) or advantages.size(1) not in (1, mask.size(1)):
        raise ValueError(f"advantages must be [B] or [B, T] for mask {tuple(mask.shape)}")
    if beta != 0.0 and ref_logprobs is None:
        raise ValueError("beta != 0 needs ref_logprobs")
    if importance_sampling_level not in ("token", "sequence"):
        raise ValueError(
            f"importance_sampling_level must be 'token' or 'sequence', got {importance_sampling_level!r}"
        )

    # Ratios and the loss in fp32 whatever the model's dtype (bf16 log-probs lose the ratio).
    logprobs, old_logprobs = logprobs.float(), old_logprobs.float()
    valid = mask.bool()
    mask = mask.float()
    # Untrained positions may hold anything (padding, -inf); keep them out of exp().
    log_ratio = torch.where(valid, logprobs - old_logprobs, 0.0)
    if importance_sampling_level == "sequence":
        log_ratio = (log_ratio.sum(-1) / mask.sum(-1).clamp(min=1)).unsqueeze(-1)
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    per_token = -torch.min(ratio * advantages, clipped * advantages)
    if importance_weights is not None:
        per_token = per_token * importance_weights.float()

    def reduce(x: Tensor) -> Tensor:
        return aggregate(
            x,
            mask,
            aggregation,
            max_completion_length=max_completion_length,
            total_tokens=total_tokens,
            total_sequences=total_sequences,
        )

    surrogate = reduce(per_token)
    loss, kl = surrogate, None
    if ref_logprobs is not None:
        # Zero both sides off the mask first, so padding cannot put inf/NaN into the gradient.
        kl = kl_estimate(
            torch.where(valid, logprobs, 0.0),
            torch.where(valid, ref_logprobs.float(), 0.0),
            kl_estimator,
        )
        if kl_importance_weighted:
            kl = kl * ratio
        if beta != 0.0:
            loss = loss + beta * reduce(kl)
    if entropy is not None and entropy_coef != 0.0:
        bonus = aggregate(entropy.float(), mask, "token_mean", total_tokens=total_tokens)
        loss = loss - entropy_coef * bonus

    with torch.no_grad():
        low = ((ratio < 1 - clip_low) & (advantages < 0)).to(mask.dtype)
        high = ((ratio > 1 + clip_high) & (advantages > 0)).to(mask.dtype)

        def mean(x: Tensor) -> float:
            if x.size(1) == 1:  # one value per sequence
                return x.mean().item()
            return (torch.where(valid, x, 0.0).sum() / mask.sum().clamp(min=1)).item()

        ratio_full = ratio.expand_as(mask)
        metrics = {
            "policy_loss": surrogate.item(),
            "clip_fraction": mean(low + high),
            "clip_fraction_low": mean(low),
            "clip_fraction_high": mean(high),
            "ratio_mean": mean(ratio),
            "ratio_max": ratio_full[valid].max().item() if valid.any() else 1.0,
        }
        if kl is not None:
            metrics["kl"] = mean(kl)
        if entropy is not None:
            metrics["entropy"] = mean(entropy)
    return loss, metrics


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range_value: float | None = 0.2,
    aggregation: Aggregation = "token_mean",
    *,
    max_completion_length: int | None = None,
    total_tokens: float | Tensor | None = None,
    total_sequences: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO's clipped value loss ``0.5 * max((V - R)^2, (V_clip - R)^2)``.

    ``V_clip = V_old + clamp(V - V_old, -c, c)`` keeps the critic from moving far from the
    values the advantages were computed with; ``clip_range_value=None`` disables it. All inputs
    ``[B, T]``; aggregated like the policy loss. Metrics: ``value_loss``, ``value_clip_fraction``
    (tokens where the clipped term is the larger), ``value_mean``.
    """
    _check_same_shape(mask, values=values, old_values=old_values, returns=returns)
    values, old_values, returns = values.float(), old_values.float(), returns.float()
    loss_unclipped = (values - returns) ** 2
    if clip_range_value is None:
        per_token = loss_unclipped
        clipped_share = torch.zeros_like(per_token)
    else:
        clipped_values = old_values + torch.clamp(
            values - old_values, -clip_range_value, clip_range_value
        )
        loss_clipped = (clipped_values - returns) ** 2
        per_token = torch.max(loss_unclipped, loss_clipped)
        clipped_share = (loss_clipped > loss_unclipped).to(values.dtype)
    loss = 0.5 * aggregate(
        per_token,
        mask,
        aggregation,
        max_completion_length=max_completion_length,
        total_tokens=total_tokens,
        total_sequences=total_sequences,
    )
    with torch.no_grad():
        valid = mask.bool()
        n = valid.sum().clamp(min=1)
        metrics = {
            "value_loss": loss.item(),
            "value_clip_fraction": (torch.where(valid, clipped_share, 0.0).sum() / n).item(),
            "value_mean": (torch.where(valid, values, 0.0).sum() / n).item(),
        }
    return loss, metrics

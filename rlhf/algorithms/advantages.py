"""Advantage estimators: group-relative (GRPO, Dr. GRPO, RLOO) and GAE for PPO.

Pure tensor functions. A reward of NaN means "no reward applied to this sample" (every reward
function returned ``None``): it is left out of every statistic and its advantage is 0, so it
neither biases its group's baseline nor moves the policy.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from rlhf.algorithms.filtering import dynamic_sampling_mask
from rlhf.algorithms.losses import KLEstimator, kl_estimate

Estimator = Literal["grpo", "dr_grpo", "rloo"]
RewardScaling = Literal["group", "batch", "none"]

_DEFAULT_SCALING: dict[str, RewardScaling] = {"grpo": "group", "dr_grpo": "none", "rloo": "none"}


def group_advantages(
    rewards: Tensor,
    groups: Tensor,
    estimator: Estimator = "grpo",
    scale_rewards: RewardScaling | None = None,
    eps: float = 1e-4,
) -> Tensor:
    """One advantage per sample from the rewards of the other samples of its prompt.

    Args:
        rewards: ``[N]`` float, NaN = no applicable reward.
        groups: ``[N]`` long, the prompt (group) id of each sample. Ids need not be contiguous,
            sorted or equally sized.
        estimator: the baseline subtracted from each reward:
            ``grpo`` / ``dr_grpo``: the group mean; ``rloo``: the mean of the *other* valid
            samples of the group, i.e. ``n / (n - 1) * (r - mean)`` for ``n`` valid samples.
        scale_rewards: what the centred reward is divided by (``+ eps``):
            ``group``: the group's reward std; ``batch``: the std of all valid rewards of the
            batch (group baseline, batch scale); ``none``: nothing. ``None`` picks the estimator's
            own choice: ``group`` for grpo, ``none`` for dr_grpo (whose point is to not divide)
            and rloo.
        eps: added to the std, TRL's 1e-4.

    Stds are unbiased (Bessel), over valid rewards only, as TRL's ``nanstd``; so ``grpo`` with
    ``scale_rewards`` group | batch | none equals TRL 1.16 ``GRPOTrainer`` with the same setting,
    and ``rloo`` equals TRL ``RLOOTrainer`` with ``normalize_advantages=False``.

    Returns ``[N]`` float32. It is 0 for a NaN reward, for a group with fewer than two valid
    rewards and for a group whose rewards are all equal.
    """
    if rewards.dim() != 1 or groups.shape != rewards.shape:
        raise ValueError(
            f"rewards and groups must both be [N]; got rewards {tuple(rewards.shape)}, "
            f"groups {tuple(groups.shape)}"
        )
    if estimator not in _DEFAULT_SCALING:
        raise ValueError(f"estimator must be one of {sorted(_DEFAULT_SCALING)}, got {estimator!r}")
    scaling = _DEFAULT_SCALING[estimator] if scale_rewards is None else scale_rewards
    if scaling not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scaling!r}")
    if estimator == "dr_grpo" and scaling != "none":
        raise ValueError(
            "estimator 'dr_grpo' never divides by a std; use estimator='grpo' with "
            f"scale_rewards={scaling!r} instead"
        )

    rewards = rewards.float()
    valid = ~torch.isnan(rewards)
    r = torch.where(valid, rewards, 0.0)
    ids, index = torch.unique(groups, return_inverse=True)
    num_groups = ids.numel()

    def group_sum(x: Tensor) -> Tensor:
        return torch.zeros(num_groups, dtype=x.dtype, device=x.device).index_add_(0, index, x)

    count = group_sum(valid.float())[index]
    total = group_sum(r)[index]
    mean = total / count.clamp(min=1)
    # RLOO's baseline leaves the sample out: the mean of the other valid rewards of its group.
    baseline = (total - r) / (count - 1).clamp(min=1) if estimator == "rloo" else mean
    advantages = r - baseline

    if scaling == "group":
        var = group_sum(torch.where(valid, (r - mean) ** 2, 0.0))[index] / (count - 1).clamp(min=1)
        advantages = advantages / (var.sqrt() + eps)
    elif scaling == "batch":
        n = int(valid.sum())
        std = rewards[valid].std() if n > 1 else rewards.new_zeros(())
        advantages = advantages / (std + eps)

    # Exactly 0 where there is no signal: round-off in a constant group's mean must not come
    # back, divided by the eps-sized std, as an advantage.
    informative = dynamic_sampling_mask(rewards, groups)
    return torch.where(valid & informative, advantages, 0.0)


def final_token_rewards(scores: Tensor, mask: Tensor) -> Tensor:
    """Place each sequence's score on its last trained token: PPO's sparse reward.

    ``scores`` is ``[B]``, ``mask`` ``[B, T]`` (1 = trained token). Returns ``[B, T]`` float32,
    zero elsewhere; a row without any trained token gets no reward. Scores must be finite: drop
    or fill rows whose reward is missing before calling.
    """
    if scores.dim() != 1 or mask.dim() != 2 or scores.size(0) != mask.size(0):
        raise ValueError(
            f"scores must be [B] and mask [B, T]; got {tuple(scores.shape)} and {tuple(mask.shape)}"
        )
    bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"scores must be finite; rows {bad} are not")
    mask = mask.bool()
    positions = torch.arange(mask.size(1), device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, -1).amax(dim=1)
    out = torch.zeros(mask.shape, dtype=torch.float32, device=scores.device)
    rows = (last >= 0).nonzero().flatten()
    out[rows, last[rows]] = scores[rows].float()
    return out


def kl_penalty(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    coef: float,
    estimator: KLEstimator = "k1",
) -> Tensor:
    """Per-token reward ``-coef * KL`` for putting the KL to the reference in the reward.

    ``[B, T]``, zero on untrained tokens. PPO adds it to the token rewards before :func:`gae`;
    the GRPO family subtracts its row sum from the sequence reward before
    :func:`group_advantages`. It carries no gradient (rewards are constants).
    """
    kl = kl_estimate(logprobs.detach(), ref_logprobs.detach(), estimator)
    return -coef * kl * mask.float()


@torch.no_grad()
def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over completion tokens (one token = one step).

    ``rewards``, ``values`` and ``mask`` are ``[B, T]``. The sequence ends after the last token
    (next value 0). Untrained tokens (mask 0: padding, tool output) are skipped: the recursion
    passes over them as if they were absent, so rewards must sit on trained tokens (as
    :func:`final_token_rewards` places them).

        delta_t = r_t + gamma * V_{t'} - V_t,   A_t = delta_t + gamma * lam * A_{t'}

    where t' is the next trained token. Returns ``(advantages, returns = advantages + values)``,
    both zero on untrained tokens. With gamma = lam = 1 the advantage is the sum of future
    rewards minus V_t.
    """
    if not rewards.shape == values.shape == mask.shape or rewards.dim() != 2:
        raise ValueError(
            "rewards, values and mask must all be [B, T]; got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    rewards, values, mask = rewards.float(), values.float(), mask.float()
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = advantage * m
        next_value = torch.where(m.bool(), values[:, t], next_value)
        next_advantage = torch.where(m.bool(), advantage, next_advantage)
    returns = (advantages + values) * mask
    return advantages, returns


def masked_moments(x: Tensor, mask: Tensor) -> Tensor:
    """``[sum, sum of squares, count]`` of ``x`` over its masked entries. Moments of the parts of a
    batch (micro-batches, processes) add up to the whole batch's, which ``whiten`` then uses."""
    mask = mask.float()
    return torch.stack([(x * mask).sum(), (x.square() * mask).sum(), mask.sum()])


def whiten(
    x: Tensor,
    mask: Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    moments: Tensor | None = None,
) -> Tensor:
    """Normalise ``x`` to unit variance (and zero mean) over its masked entries.

    PPO's optional advantage whitening. The variance is unbiased; untrained entries come back 0.
    With ``shift_mean=False`` the mean is kept (only the scale changes). ``moments`` (the
    ``masked_moments`` of the whole batch) whiten one part of a batch by the whole's statistics.
    """
    if x.shape != mask.shape:
        raise ValueError(
            f"x and mask must have the same shape; got {tuple(x.shape)}, {tuple(mask.shape)}"
        )
    total, squares, n = (masked_moments(x, mask) if moments is None else moments).tolist()
    mean = total / max(n, 1.0)
    var = max(squares - n * mean**2, 0.0) / max(n - 1, 1.0)
    out = (x - mean) / math.sqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.float()

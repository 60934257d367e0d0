"""Which samples and prompts are worth training on: dynamic sampling and difficulty filtering.

A group whose rewards are all equal has zero group-relative advantage, so it adds nothing but
noise and compute (DAPO's dynamic sampling drops it). Prompts that are always solved or never
solved teach nothing either; Step-Audio-R1 keeps only prompts with 3 to 6 of 8 samples correct
(training on always-failed prompts collapsed).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _group_index(groups: Tensor) -> tuple[Tensor, Tensor, int]:
    ids, index = torch.unique(groups, return_inverse=True)
    return ids, index, ids.numel()


def dynamic_sampling_mask(rewards: Tensor, groups: Tensor, atol: float = 0.0) -> Tensor:
    """``[N]`` bool: True for every sample of a group whose valid rewards differ.

    NaN rewards (no applicable reward) are ignored when comparing; a group with fewer than two
    valid rewards is dropped. "Differ" means ``max - min > atol``. The decision is per group:
    a kept group keeps all its samples, its NaN-reward ones included (their advantage is 0).
    """
    if rewards.dim() != 1 or groups.shape != rewards.shape:
        raise ValueError(
            f"rewards and groups must both be [N]; got {tuple(rewards.shape)}, {tuple(groups.shape)}"
        )
    _, index, num_groups = _group_index(groups)
    valid = ~torch.isnan(rewards)
    r = rewards.float()
    high = r.new_full((num_groups,), -torch.inf).scatter_reduce(
        0, index, torch.where(valid, r, -torch.inf), "amax"
    )
    low = r.new_full((num_groups,), torch.inf).scatter_reduce(
        0, index, torch.where(valid, r, torch.inf), "amin"
    )
    # With fewer than two valid rewards, high - low is 0 or -inf: never kept.
    return (high - low > atol)[index]


def pass_rate(correct: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
    """Share of correct samples per prompt: ``(group_ids [G] sorted, rates [G] float32)``.

    ``correct`` is ``[N]`` bool or 0/1 float, NaN = could not be judged (left out of the
    denominator). A prompt with no judged sample has rate NaN.
    """
    if correct.dim() != 1 or groups.shape != correct.shape:
        raise ValueError(
            f"correct and groups must both be [N]; got {tuple(correct.shape)}, {tuple(groups.shape)}"
        )
    ids, index, num_groups = _group_index(groups)
    c = correct.float()
    judged = ~torch.isnan(c)
    hits = c.new_zeros(num_groups).index_add_(0, index, torch.where(judged, c, 0.0))
    counts = c.new_zeros(num_groups).index_add_(0, index, judged.float())
    return ids, hits / counts


def difficulty_filter(pass_rates: Tensor, low: float, high: float) -> Tensor:
    """Keep mask for prompts whose pass rate lies in ``[low, high]`` (inclusive; NaN dropped).

    Step-Audio-R1's band, 3 to 6 correct of 8, is ``low=3/8, high=6/8``. Bounds are compared
    with a 1e-6 tolerance, so a band written as decimals (0.375) keeps the exact fractions.
    """
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"need 0 <= low <= high <= 1; got low={low}, high={high}")
    return (pass_rates >= low - 1e-6) & (pass_rates <= high + 1e-6)

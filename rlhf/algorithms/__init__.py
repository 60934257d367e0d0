"""RL algorithms as pure tensor functions: advantages, losses and sample filtering.

No model, no trainer: the trainer gathers log-probs, rewards and masks, and calls these.
"""

from rlhf.algorithms.advantages import (
    Estimator,
    RewardScaling,
    final_token_rewards,
    gae,
    group_advantages,
    kl_penalty,
    masked_moments,
    whiten,
)
from rlhf.algorithms.filtering import difficulty_filter, dynamic_sampling_mask, pass_rate
from rlhf.algorithms.losses import (
    Aggregation,
    ImportanceSamplingLevel,
    KLEstimator,
    aggregate,
    kl_estimate,
    policy_loss,
    truncated_importance_weights,
    value_loss,
)

__all__ = [
    "Aggregation",
    "Estimator",
    "ImportanceSamplingLevel",
    "KLEstimator",
    "RewardScaling",
    "aggregate",
    "difficulty_filter",
    "dynamic_sampling_mask",
    "final_token_rewards",
    "gae",
    "group_advantages",
    "kl_estimate",
    "kl_penalty",
    "masked_moments",
    "pass_rate",
    "policy_loss",
    "truncated_importance_weights",
    "value_loss",
    "whiten",
]

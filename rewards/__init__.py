"""Rewards for speech RL: plain functions with TRL's signature, and a runner that never crashes training."""

from rewards import accuracy, format, judge, paralinguistic, spoken, transcription  # noqa: F401
from rewards.normalize import TextNormalizer, number_to_words
from rewards.registry import check_reward, get_reward, registered_rewards, reward
from rewards.runner import RewardResult, RewardRunner, RewardSpec, load_specs
from rewards.text import Completion, completion_fields, split_completion
from rewards.transcription import error_rate, error_to_reward

__all__ = [
    "Completion",
    "RewardResult",
    "RewardRunner",
    "RewardSpec",
    "TextNormalizer",
    "check_reward",
    "completion_fields",
    "error_rate",
    "error_to_reward",
    "get_reward",
    "load_specs",
    "number_to_words",
    "registered_rewards",
    "reward",
    "split_completion",
]

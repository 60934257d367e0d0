"""The data that flows through one RL step: prompts in, rollouts out.

Plain dataclasses so they pickle cheaply to Ray workers and read clearly in the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class PromptSample:
    """One prompt: a chat in Hugging Face message form plus the waveforms it refers to.

    ``messages`` content is a string or a list of parts ``{"type": "text", "text": ...}`` /
    ``{"type": "audio"}``; the n-th audio part takes ``audio[n]`` (16 kHz mono float32).
    ``columns`` carries every other dataset column to the reward functions.
    """

    id: str
    messages: list[dict[str, Any]]
    audio: list[np.ndarray] = field(default_factory=list)
    columns: dict[str, Any] = field(default_factory=dict)
    think: bool = True
    spoken: bool = False
    tools: list[dict[str, Any]] | None = None


@dataclass
class SamplingParams:
    """Decoding settings; defaults are Step-Audio 2's published ones."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0
    repetition_penalty: float = 1.05
    max_new_tokens: int = 256
    seed: int = 0


@dataclass
class Rollout:
    """One sampled completion of one prompt, with everything training and rewards need."""

    prompt_id: str
    group: int
    sample_index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    loss_mask: list[int]
    text: str
    think: str | None
    answer: str
    spoken_text: str
    audio_codes: list[int]
    tool_calls: list[dict[str, Any]]
    finish_reason: str
    policy_version: int = 0
    rewards: dict[str, float | None] = field(default_factory=dict)
    reward: float | None = None

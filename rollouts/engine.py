"""The local rollout engine: batched, KV-cached sampling of n completions per prompt.

Each prompt's audio is encoded and its prefix prefilled once; the cache is then repeated for its
n samples. Every sample draws from its own random generator, seeded from (seed, prompt id, sample
index), so a rollout does not depend on which other prompts share its batch or worker — the
property that lets the Ray pool reproduce the local engine exactly.

Sampling is written by hand rather than through ``generate()`` because ``generate()`` has one RNG
for the whole batch and does not return behaviour log-probs of the unfiltered distribution.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from rewards import RewardRunner
from rollouts.adapters.base import ModelAdapter, positions
from rollouts.policy import Policy
from rollouts.types import PromptSample, Rollout, SamplingParams


def sample_seed(seed: int, prompt_id: str, sample_index: int) -> int:
    """A stable 63-bit seed for one sample, independent of batching."""
    digest = hashlib.sha256(f"{seed}\0{prompt_id}\0{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class LocalEngine:
    """Generates rollouts in this process. ``batch_size`` bounds the sequences decoded together."""

    def __init__(
        self,
        policy: Policy,
        reward_runner: RewardRunner | None = None,
        *,
        batch_size: int = 16,
        train_on: str = "text",
        shares_weights: bool = False,
    ):
        self.policy = policy
        self.reward_runner = reward_runner
        self.batch_size = batch_size
        self.train_on = train_on
        # True when the trainer updates this very model in place: nothing to sync.
        self.shares_weights = shares_weights
        self.policy_version = 0
        self._metrics: dict[str, Any] = {}

    def metrics(self) -> dict[str, Any]:
        """Reward statistics and the generation / reward time split of the last ``generate``."""
        return self._metrics

    def update_weights(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Load new policy weights (a full state dict, or adapter tensors only)."""
        from rollouts.weights import load_policy_weights

        load_policy_weights(self.policy.model, state)
        self.policy_version = version

    @torch.no_grad()
    def generate(
        self, samples: Sequence[PromptSample], n: int, sampling: SamplingParams
    ) -> list[Rollout]:
        """n rollouts per prompt, in prompt order, parsed, masked and scored."""
        started = time.perf_counter()
        prompts_per_batch = max(1, self.batch_size // n)
        rollouts: list[Rollout] = []
        for start in range(0, len(samples), prompts_per_batch):
            chunk = samples[start : start + prompts_per_batch]
            rollouts += self._generate_chunk(chunk, start, n, sampling)
        decoded = time.perf_counter()
        self._metrics = {"time": {"decode": decoded - started}}
        if self.reward_runner is not None:
            self._metrics["reward"] = self.score(samples, rollouts, n)
            self._metrics["time"]["rewards"] = time.perf_counter() - decoded
        return rollouts

    def score(
        self, samples: Sequence[PromptSample], rollouts: list[Rollout], n: int
    ) -> dict[str, Any]:
        """Fill ``rewards`` and ``reward`` of each rollout; return the runner's statistics."""
        return score_rollouts(self.reward_runner, samples, rollouts, n)

    def _generate_chunk(
        self, samples: Sequence[PromptSample], first_group: int, n: int, sampling: SamplingParams
    ) -> list[Rollout]:
        policy, base, adapter = self.policy, self.policy.base, self.policy.adapter
        inputs = policy.build_inputs(samples)
        attention_mask = inputs["attention_mask"]
        position_ids = positions(attention_mask)
        cache = DynamicCache()
        hidden = adapter.hidden_states(
            base,
            inputs["input_ids"],
            attention_mask,
            position_ids=position_ids,
            input_features=inputs.get("input_features"),
            feature_lens=inputs.get("feature_lens"),
            cache=cache,
        )
        # share the prefilled prompt between its n samples
        cache.batch_repeat_interleave(n)
        logits = base.lm_head(hidden[:, -1]).float().repeat_interleave(n, dim=0)
        attention_mask = attention_mask.repeat_interleave(n, dim=0)
        next_position = position_ids[:, -1:].repeat_interleave(n, dim=0) + 1

        # tokens that only the processor may place: sampling them would corrupt the sequence
        banned = torch.tensor(adapter.banned_ids, dtype=torch.long, device=logits.device)
        stop = adapter.stop_ids
        rows = len(samples) * n
        generators = [
            torch.Generator().manual_seed(sample_seed(sampling.seed, s.id, k))
            for s in samples
            for k in range(n)
        ]
        tokens = [[] for _ in range(rows)]
        logprobs = [[] for _ in range(rows)]
        finish = ["length"] * rows
        active = list(range(rows))  # rows still decoding, in cache order
        # tokens each active row has generated, for the repetition penalty
        seen = torch.zeros(rows, logits.shape[-1], dtype=torch.bool, device=logits.device)
        prompt_ids = [
            inputs["input_ids"][b][inputs["attention_mask"][b].bool()].tolist()
            for b in range(len(samples))
        ]
        for _ in range(sampling.max_new_tokens):
            chosen, chosen_logprobs = _sample(
                logits,
                banned,
                seen,
                [generators[r] for r in active],
                sampling,
            )
            seen[torch.arange(len(active), device=seen.device), chosen] = True
            keep = []
            for i, row in enumerate(active):
                token = int(chosen[i])
                tokens[row].append(token)
                logprobs[row].append(float(chosen_logprobs[i]))
                if token in stop:
                    finish[row] = "stop"
                else:
                    keep.append(i)
            if not keep or len(tokens[active[0]]) >= sampling.max_new_tokens:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=logits.device)
                cache.batch_select_indices(index)
                attention_mask, next_position = attention_mask[index], next_position[index]
                chosen, seen = chosen[index], seen[index]
                active = [active[i] for i in keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(active), 1)], 1)
            hidden = adapter.hidden_states(
                base,
                chosen[:, None].to(attention_mask.device),
                attention_mask,
                position_ids=next_position,
                cache=cache,
            )
            logits = base.lm_head(hidden[:, -1]).float()
            next_position = next_position + 1

        return [
            build_rollout(
                adapter,
                samples[row // n],
                group=first_group + row // n,
                sample_index=row % n,
                prompt_ids=prompt_ids[row // n],
                completion_ids=tokens[row],
                logprobs=logprobs[row],
                finish_reason=finish[row],
                train_on=self.train_on,
                policy_version=self.policy_version,
            )
            for row in range(rows)
        ]


def build_rollout(
    adapter: ModelAdapter,
    sample: PromptSample,
    *,
    group: int,
    sample_index: int,
    prompt_ids: list[int],
    completion_ids: list[int],
    logprobs: list[float],
    finish_reason: str,
    train_on: str,
    policy_version: int,
) -> Rollout:
    """One sampled completion, parsed and masked: what every engine returns, built one way."""
    parsed = adapter.parse(completion_ids, sample)
    return Rollout(
        prompt_id=sample.id,
        group=group,
        sample_index=sample_index,
        prompt_ids=prompt_ids,
        completion_ids=completion_ids,
        logprobs=logprobs,
        loss_mask=adapter.loss_mask(completion_ids, train_on, sample),
        text=parsed.text,
        think=parsed.think,
        answer=parsed.answer,
        spoken_text=parsed.spoken_text,
        audio_codes=parsed.audio_codes,
        tool_calls=parsed.tool_calls,
        finish_reason=finish_reason,
        policy_version=policy_version,
    )


def score_rollouts(
    reward_runner: RewardRunner, samples: Sequence[PromptSample], rollouts: list[Rollout], n: int
) -> dict[str, Any]:
    """Fill ``rewards`` and ``reward`` of the n rollouts per prompt; return the runner's statistics."""
    owners = [samples[i // n] for i in range(len(rollouts))]
    columns = {key for s in owners for key in s.columns}
    kwargs: dict[str, list[Any]] = {
        key: [s.columns.get(key) for s in owners] for key in sorted(columns)
    }
    kwargs.update(
        completion_ids=[r.completion_ids for r in rollouts],
        think=[r.think for r in rollouts],
        answer=[r.answer for r in rollouts],
        spoken_text=[r.spoken_text for r in rollouts],
        audio_codes=[r.audio_codes for r in rollouts],
        tool_calls=[r.tool_calls for r in rollouts],
        audio=[s.audio[0] if s.audio else None for s in owners],
        sample_rate=[16000] * len(rollouts),
    )
    result = reward_runner([s.messages for s in owners], [r.text for r in rollouts], **kwargs)
    for i, rollout in enumerate(rollouts):
        rollout.rewards = {name: values[i] for name, values in result.per_reward.items()}
        rollout.reward = result.total[i]
    return result.metrics


def _sample(
    logits: torch.Tensor,
    banned: torch.Tensor,
    seen: torch.Tensor,
    generators: list[torch.Generator],
    sampling: SamplingParams,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row; return it and its log-prob under softmax(logits / temperature).

    The behaviour log-prob is taken before banning, repetition penalty and top-k/top-p filtering,
    which is what the trainer recomputes; the trainer logs the remaining mismatch.
    """
    temperature = sampling.temperature
    scaled = logits / temperature if temperature > 0 else logits
    behaviour = torch.log_softmax(scaled, dim=-1)
    adjusted = scaled.index_fill(-1, banned, float("-inf"))
    if temperature <= 0:
        chosen = adjusted.argmax(-1)
        return chosen, behaviour.gather(-1, chosen[:, None]).squeeze(-1)
    if sampling.repetition_penalty != 1.0:
        penalised = torch.where(
            adjusted > 0,
            adjusted / sampling.repetition_penalty,
            adjusted * sampling.repetition_penalty,
        )
        adjusted = torch.where(seen, penalised, adjusted)
    if sampling.top_k > 0:
        kth = adjusted.topk(min(sampling.top_k, adjusted.shape[-1]), dim=-1).values[:, -1:]
        adjusted = adjusted.masked_fill(adjusted < kth, float("-inf"))
    probs = torch.softmax(adjusted, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > sampling.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    chosen = _draw(probs, generators)
    return chosen, behaviour.gather(-1, chosen[:, None]).squeeze(-1)


def _draw(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row of ``probs`` (unnormalised is fine), row i from ``generators[i]``.

    By inverse CDF: each row's generator draws one uniform and one batched ``searchsorted`` picks
    every row's token. Written by hand because ``torch.multinomial`` takes a single generator, so
    per-row seeding (what makes a rollout independent of its batch) would cost one call per row
    and token, the largest single cost of CPU decoding.
    """
    uniforms = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    cdf = probs.double().cumsum(-1)
    targets = uniforms.to(cdf.device)[:, None] * cdf[:, -1:]
    # side="right": a token of probability 0 (a flat step of the CDF) is never picked
    chosen = torch.searchsorted(cdf, targets, right=True).squeeze(-1)
    last_possible = (probs > 0).long().cumsum(-1).argmax(-1)  # rounding can land past the end
    return torch.minimum(chosen, last_possible)

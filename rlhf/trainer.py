"""The RL trainer: GRPO-family and PPO updates of a speech LLM from its own rollouts.

``RLTrainer.step`` is one RL step, top to bottom: prompts → rollouts (rewards are computed next to
generation, by the engine) → group selection → log-probs → advantages → policy (and critic)
update → weight sync. Everything around it (setup, batching, checkpoints) is in helpers below.

Precision: fp32 weights and AdamW state, forward and backward under autocast in ``model.dtype``.
The local engine generates with the trained model itself only when that is fp32 compute and
unsharded; otherwise it holds an unsharded copy in ``model.dtype`` on the main process, synced
with (gathered) weights after each update, like a remote engine.

Multi-process training (``accelerate launch``): the main process alone talks to the rollout
engine and broadcasts the rollouts; each process trains on its share of the micro-batches (the
same number on each: FSDP's collectives need every process in every forward). The policy, the
reference and the critic are sharded with FSDP2 (``run.distributed``), which reduces gradients;
log-probs and values run inside ``LogProbModel``'s forward so that the wrapper sees them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed

from rewards import RewardRunner, RewardSpec
from rlhf.algorithms import (
    final_token_rewards,
    gae,
    group_advantages,
    kl_penalty,
    masked_moments,
    policy_loss,
    truncated_importance_weights,
    whiten,
)
from rlhf.algorithms.filtering import difficulty_filter, dynamic_sampling_mask, pass_rate
from rlhf.checkpoint import (
    TRAINER_STATE,
    find_checkpoint,
    load_trainer_state,
    run_identity,
    save_checkpoint,
)
from rlhf.config import RLConfig
from rlhf.data.loading import load_split, row_to_sample
from rlhf.data.stream import PromptStream
from rlhf.distributed import load_sharded, save_sharded, shard
from rlhf.learning_signal import LearningSignalWatchdog
from rlhf.metrics import MetricsLogger, StepMetrics, Timer, explained_variance
from rlhf.training import (
    autocast,
    build_optimizer,
    compute_dtype,
    disable_dropout,
    load_policy,
    optimizer_step,
    prepare_model,
    save_pretrained,
    train_loop,
)
from rollouts.engine import LocalEngine, sample_seed
from rollouts.policy import LogProbModel, Policy, SequenceBatch
from rollouts.types import PromptSample, Rollout, SamplingParams
from rollouts.weights import policy_state, state_bytes


@dataclass
class MicroBatch:
    """The tensors one forward/backward pass needs, built once per step.

    ``rows`` indexes the step's rollouts; ``advantages`` is ``[b]`` (GRPO family) or ``[b, C]``
    (PPO, with ``values`` and ``returns``).
    """

    rows: torch.Tensor  # [b] long
    sequences: SequenceBatch
    loss_mask: torch.Tensor  # [b, C] float: trained completion tokens of usable samples
    behaviour_logprobs: torch.Tensor  # [b, C] from the rollout engine
    old_logprobs: torch.Tensor | None = None  # [b, C], when num_iterations > 1
    ref_logprobs: torch.Tensor | None = None  # [b, C], when beta > 0
    values: torch.Tensor | None = None  # [b, C], PPO
    returns: torch.Tensor | None = None  # [b, C], PPO
    advantages: torch.Tensor | None = None
    filler: bool = False  # a stand-in with nothing to train, so every process runs as many


def reward_specs(entries: list[dict[str, Any]]) -> list[RewardSpec]:
    """Recipe entries ``{name, weight, timeout_s, **params}`` → reward specs."""
    return [RewardSpec.from_dict(dict(entry)) for entry in entries]


class RLTrainer:
    def __init__(self, config: RLConfig, *, accelerator: Accelerator | None = None):
        self.config = config
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        self.run_dir = Path(config.run.output_dir)
        set_seed(config.run.seed, deterministic=config.run.deterministic)
        acfg = config.algorithm

        device = self.accelerator.device
        self.compute_dtype = compute_dtype(config.model)
        # Sharded models load on the CPU: FSDP2 moves each unit to the GPU as it shards it, so no
        # GPU ever holds a whole model (FSDP replaces the parameters: optimizers come after).
        self.sharded = self.accelerator.num_processes > 1
        load_device = "cpu" if self.sharded else device
        self.policy = load_policy(config.model, load_device)
        self.model = disable_dropout(self.policy.model)
        self.scorer = LogProbModel(self.policy)
        self.lora = config.model.lora.enabled
        # truncated importance sampling of the engine/trainer mismatch: by default where the
        # engine computes its own log-probs (vLLM), not where it runs the trainer's model code
        rcfg = config.rollout
        on_vllm = rcfg.engine == "vllm" or (rcfg.engine == "ray" and rcfg.ray.backend == "vllm")
        default_cap = 3.0 if on_vllm else 0.0
        self.tis_cap = default_cap if acfg.tis_cap is None else acfg.tis_cap
        # The reference: with LoRA, the same base with adapters disabled; otherwise the starting
        # checkpoint loaded again (sharded like the policy, never a copy of the policy's memory).
        self.reference: LogProbModel | None = None
        if acfg.beta > 0 and not self.lora:
            # in the compute dtype: it is never trained
            reference = Policy.from_pretrained(
                config.model.path, dtype=config.model.dtype, device=str(load_device)
            )
            reference.model.eval().requires_grad_(False)
            self.reference = LogProbModel(reference)
        critic_scorer = None
        if acfg.name == "ppo":
            from rlhf.critic import critic_scorer as build_critic_scorer

            critic_scorer = build_critic_scorer(config, self.scorer, load_device)
        if self.sharded:
            for module in dict.fromkeys((self.scorer, self.reference, critic_scorer)):
                if module is not None:
                    shard(module, config.run.distributed, device)
        self.critic = None
        if critic_scorer is not None:
            from rlhf.critic import CRITIC_ADAPTER, Critic

            self.critic = Critic(critic_scorer, config, CRITIC_ADAPTER if self.lora else None)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = build_optimizer(
            trainable, config.optim, config.run.steps * acfg.num_iterations
        )

        dataset = load_split(config.data)
        source = f"{config.data.path}:{config.data.split}"
        self.prompts = PromptStream(
            len(dataset),
            lambda i: row_to_sample(
                dataset[i], i, source, think=config.data.think, max_audio_s=config.data.max_audio_s
            ),
            seed=config.run.seed,
            shuffle=config.data.shuffle,
        )
        # The local engine generates with the trained model itself when it is unsharded fp32;
        # else it holds its own unsharded copy in the compute dtype, synced after each update.
        local = config.rollout.engine == "local"
        self.shares_weights = local and not self.sharded and self.compute_dtype == torch.float32
        self.engine = None
        if self.accelerator.is_main_process:
            self.engine = build_engine(
                config,
                # an engine of its own model (vLLM, Ray) needs no second copy of the policy here
                self.policy if self.shares_weights or not local else engine_policy(config, device),
                reward_specs(config.rewards),
                shares_weights=self.shares_weights,
            )
        if local and not self.shares_weights:
            self.sync_weights(version=0)  # a LoRA adapter starts random: the engine needs it
        self.logger = MetricsLogger(
            self.run_dir,
            config.run.report_to,
            config=config,
            project=config.run.project,
            main_process=self.accelerator.is_main_process,
        )
        self.watchdog = LearningSignalWatchdog(
            config.run.max_steps_without_signal, mask_truncated=acfg.mask_truncated
        )
        self.global_step = 0

    # ------------------------------------------------------------------ the RL step
    def step(self) -> dict[str, Any]:
        """One RL step; returns its metrics."""
        cfg, acfg = self.config, self.config.algorithm
        timer = Timer()

        # 1. Rollouts: n completions per prompt, scored by the rewards on the engine's side.
        # 2. Which groups to learn from (difficulty band, dynamic sampling). With
        #    `refill_rounds`, fresh prompts are rolled out until prompts_per_step groups are kept.
        samples, generated, rollouts = [], [], []
        for refill in range(1 + acfg.refill_rounds):
            missing = cfg.rollout.prompts_per_step - len({r.group for r in rollouts})
            if missing == 0:
                break
            batch = self.prompts.next(missing)
            with timer("generation"):
                new, round_metrics = self.generate(batch, refill, first_group=len(samples))
            if refill == 0:
                engine_metrics = round_metrics  # rewards as sampled, before any filtering
            samples += batch
            generated += new
            rollouts += self.select_groups(new)
        selection_metrics = {
            "groups_kept": len({r.group for r in rollouts}),
            "groups_kept_fraction": len(rollouts) / len(generated),
            "prompts_generated": len(samples),
        }

        # 3. Micro-batches with old and reference log-probs, and the critic's values (PPO).
        with timer("logprobs"):
            micro_batches = self.micro_batches(samples, rollouts)

        # 4. Advantages: group-normalised rewards (GRPO family) or GAE on the critic (PPO).
        rewards = torch.tensor([math.nan if r.reward is None else r.reward for r in rollouts])
        if self.critic is None:
            rewards = rewards - self.sequence_kl_penalty(micro_batches, len(rollouts))
            advantages = group_advantages(
                rewards,
                torch.tensor([r.group for r in rollouts]),
                estimator=acfg.advantage,
                scale_rewards=acfg.scale_rewards,
            ).to(self.accelerator.device)
            for mb in micro_batches:
                mb.advantages = advantages[mb.rows]
        else:
            self.gae_advantages(micro_batches, rewards)

        batch_metrics = self.batch_metrics(micro_batches)

        # 5. Policy (and critic) update: num_iterations optimizer steps over the batch.
        with timer("update"):
            update_metrics = self.update(micro_batches)

        # 6. Weight sync to the rollout engine.
        with timer("sync"):
            sync_bytes = self.sync_weights()

        self.global_step += 1
        tokens = sum(len(r.completion_ids) for r in generated)
        total_seconds = sum(timer.seconds.values())
        metrics = {
            **engine_metrics,
            "time": {**engine_metrics.get("time", {}), **timer.seconds, "step": total_seconds},
            **selection_metrics,
            **batch_metrics,
            **update_metrics,
            **rollout_metrics(generated),  # what the policy does, before any group is dropped
            "tokens_per_second": tokens / max(timer.seconds.get("generation", 0.0), 1e-9),
            "sync_bytes": sync_bytes,
            "lr": self.scheduler.get_last_lr()[0],
        }
        every = cfg.run.log_samples_every
        if every and self.global_step % every == 0:
            self.logger.log_samples(self.global_step, sample_rows(generated))
        return metrics

    # ------------------------------------------------------------------ stages
    def generate(
        self, samples: list[PromptSample], refill: int, first_group: int
    ) -> tuple[list[Rollout], dict[str, Any]]:
        """Main process asks the engine; every process receives the same rollouts, their groups
        numbered from ``first_group``."""
        rcfg = self.config.rollout
        sampling = SamplingParams(
            **vars(rcfg.sampling),
            seed=sample_seed(self.config.run.seed, f"step {self.global_step}", refill),
        )
        payload: list[Any] = [None]
        if self.accelerator.is_main_process:
            rollouts = self.engine.generate(samples, rcfg.num_generations, sampling)
            rollouts = [replace(r, group=r.group + first_group) for r in rollouts]
            payload = [(rollouts, self.engine.metrics())]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(payload)
        return payload[0]

    def select_groups(self, rollouts: list[Rollout]) -> list[Rollout]:
        """The rollouts of the groups inside the difficulty band that are worth learning from."""
        acfg = self.config.algorithm
        rewards = torch.tensor([math.nan if r.reward is None else r.reward for r in rollouts])
        groups = torch.tensor([r.group for r in rollouts])
        keep = torch.ones(len(rollouts), dtype=torch.bool)
        if acfg.difficulty_band is not None:
            low, high = acfg.difficulty_band
            # a sample passes when its reward exceeds 0.5; unscored samples are not judged
            correct = torch.where(rewards.isnan(), math.nan, (rewards > 0.5).float())
            ids, rates = pass_rate(correct, groups)
            keep &= difficulty_filter(rates, low, high)[torch.searchsorted(ids, groups)]
        if acfg.dynamic_sampling:
            keep &= dynamic_sampling_mask(rewards, groups)
        return [r for r, k in zip(rollouts, keep.tolist()) if k]

    def micro_batches(
        self, samples: list[PromptSample], rollouts: list[Rollout]
    ) -> list[MicroBatch]:
        """This process's share of micro-batches, with what must be computed before updating.

        Every process gets as many: one short of micro-batches repeats the first with nothing to
        train (``filler``), since a sharded model's forward is a collective of all processes.
        """
        cfg, acfg = self.config, self.config.algorithm
        device = self.accelerator.device
        by_id = {s.id: s for s in samples}
        size = cfg.optim.micro_batch_size
        world = self.accelerator.num_processes
        starts = list(range(0, len(rollouts), size))
        mine = starts[self.accelerator.process_index :: world]
        fillers = math.ceil(len(starts) / world) - len(mine)
        batches = []
        for start, filler in [(s, False) for s in mine] + [(0, True)] * fillers:
            part = rollouts[start : start + size]
            # a group's clip encoded once; raises if a rollout's prompt lost or gained a clip
            sequences = self.policy.rollout_batch(by_id, part)
            width = sequences.completion_ids.shape[1]
            loss_mask = torch.zeros(len(part), width)
            behaviour = torch.zeros(len(part), width)
            for i, r in enumerate(part):
                truncated = acfg.mask_truncated and r.finish_reason == "length"
                if r.reward is not None and not truncated and not filler:
                    loss_mask[i, : len(r.loss_mask)] = torch.tensor(r.loss_mask, dtype=torch.float)
                behaviour[i, : len(r.logprobs)] = torch.tensor(r.logprobs)
            batches.append(
                MicroBatch(
                    torch.arange(start, start + len(part), device=device),
                    sequences,
                    loss_mask.to(device),
                    behaviour.to(device),
                    filler=filler,
                )
            )
        with torch.no_grad():
            for mb in batches:
                if acfg.num_iterations > 1 or acfg.kl_in == "reward":
                    mb.old_logprobs = self.logprobs(mb.sequences)[0]
                if acfg.beta > 0:
                    mb.ref_logprobs = self.reference_logprobs(mb.sequences)
                if self.critic is not None:
                    mb.values = self.critic.values(mb.sequences)
        return batches

    def sequence_kl_penalty(self, micro_batches: list[MicroBatch], num_rows: int) -> torch.Tensor:
        """``beta × Σ_t KL`` per rollout when the KL goes into the reward (GRPO family), else 0."""
        acfg = self.config.algorithm
        penalty = torch.zeros(num_rows, device=self.accelerator.device)
        if acfg.beta == 0 or acfg.kl_in != "reward":
            return penalty.cpu()
        for mb in micro_batches:
            per_token = kl_penalty(
                mb.old_logprobs, mb.ref_logprobs, mb.loss_mask, acfg.beta, acfg.kl_estimator
            )
            penalty[mb.rows] = -per_token.sum(-1)
        return self.all_sum(penalty).cpu()

    def gae_advantages(self, micro_batches: list[MicroBatch], rewards: torch.Tensor) -> None:
        """PPO: the score on the final token (minus per-token KL), GAE, optional whitening."""
        acfg, ppo = self.config.algorithm, self.config.algorithm.ppo
        for mb in micro_batches:
            scores = rewards[mb.rows.cpu()].nan_to_num(0.0).to(mb.loss_mask.device)
            token_rewards = final_token_rewards(scores, mb.loss_mask)
            if acfg.beta > 0 and acfg.kl_in == "reward":
                token_rewards = token_rewards + kl_penalty(
                    mb.old_logprobs, mb.ref_logprobs, mb.loss_mask, acfg.beta, acfg.kl_estimator
                )
            mb.advantages, mb.returns = gae(
                token_rewards, mb.values, mb.loss_mask, ppo.gamma, ppo.lam
            )
        if ppo.whiten_advantages:  # by the statistics of the whole batch, all processes
            moments = torch.zeros(3, device=self.accelerator.device)
            for mb in micro_batches:
                moments += masked_moments(mb.advantages, mb.loss_mask)
            moments = self.all_sum(moments)
            for mb in micro_batches:
                mb.advantages = whiten(mb.advantages, mb.loss_mask, moments=moments)

    def update(self, micro_batches: list[MicroBatch]) -> dict[str, Any]:
        """``num_iterations`` optimizer steps; each accumulates gradients over all micro-batches."""
        cfg, acfg = self.config, self.config.algorithm
        totals = self.normalisers(micro_batches)
        train_policy = self.critic is None or self.global_step >= acfg.ppo.critic_warmup_steps
        # per-token statistics weighted by each micro-batch's trained tokens; loss shares add up
        step_metrics = StepMetrics()

        grad_norms, critic_norms = [], []
        for _ in range(acfg.num_iterations):
            for mb in micro_batches:
                if self.critic is not None:
                    critic_stats = self.critic.backward(
                        mb.sequences,
                        mb.values,
                        mb.returns,
                        mb.loss_mask,
                        weight=float(mb.loss_mask.sum()) / totals["tokens"],
                    )
                    step_metrics.mean(critic_stats, weight=float(mb.loss_mask.sum()))
                if not train_policy:
                    continue
                logprobs, entropy = self.logprobs(mb.sequences, with_entropy=True)
                old = mb.old_logprobs if acfg.num_iterations > 1 else logprobs.detach()
                tis_weights, tis_stats = None, {}
                if self.tis_cap > 0:
                    tis_weights, tis_stats = truncated_importance_weights(
                        old, mb.behaviour_logprobs, mb.loss_mask, self.tis_cap
                    )
                loss, stats = policy_loss(
                    logprobs,
                    old,
                    mb.advantages,
                    mb.loss_mask,
                    clip_low=acfg.clip_low,
                    clip_high=acfg.clip_high,
                    importance_sampling_level=acfg.importance_sampling,
                    aggregation=acfg.loss_aggregation,
                    ref_logprobs=mb.ref_logprobs,
                    beta=acfg.beta if acfg.kl_in == "loss" else 0.0,
                    kl_estimator=acfg.kl_estimator,
                    entropy=entropy,
                    entropy_coef=acfg.entropy_coef,
                    importance_weights=tis_weights,
                    max_completion_length=cfg.rollout.sampling.max_new_tokens,
                    # normalise by the whole batch so the micro-batch gradients sum to its gradient
                    total_tokens=totals["tokens"],
                    total_sequences=totals["rows"],
                )
                self.accelerator.backward(loss)
                tokens = mb.loss_mask.sum()
                mismatch = (logprobs.detach() - mb.behaviour_logprobs).abs() * mb.loss_mask
                stats["logprob_mismatch"] = float(mismatch.sum() / tokens.clamp(min=1))
                stats.update(tis_stats)
                # approx_kl: 0.5 (log π - log π_old)² per trained token (TRL's PPO estimator),
                # against the policy that sampled (num_iterations 1) or the step's old policy
                behaviour = mb.old_logprobs if acfg.num_iterations > 1 else mb.behaviour_logprobs
                drift = (logprobs.detach() - behaviour) * mb.loss_mask
                stats["approx_kl"] = float(0.5 * drift.square().sum() / tokens.clamp(min=1))
                ratio_max = stats.pop("ratio_max")
                if tokens > 0:  # a micro-batch with nothing to train has no ratio
                    step_metrics.maximum({"ratio_max": ratio_max})
                shares = {"loss": loss.item(), "policy_loss": stats.pop("policy_loss")}
                step_metrics.total(shares, scale=1 / acfg.num_iterations)
                step_metrics.mean(stats, weight=float(tokens))
            if self.critic is not None:
                critic_norms.append(self.critic.optimizer_step(cfg.optim.max_grad_norm))
            if train_policy:
                grad_norms.append(self.optimizer_step())
        if micro_batches:
            step_metrics.mean(self.audio_sensitivity(micro_batches[0]))
        metrics = step_metrics.reduce(self.accelerator)  # over micro-batches and processes
        if grad_norms:
            metrics["grad_norm"] = sum(grad_norms) / len(grad_norms)
        if critic_norms:
            metrics["critic_grad_norm"] = sum(critic_norms) / len(critic_norms)
        return metrics

    def sync_weights(self, version: int | None = None) -> int:
        """Send the new weights (adapter only under LoRA) to the engine; returns bytes sent.
        Sharded weights are gathered whole first, by every process."""
        if self.shares_weights:
            return 0
        state = policy_state(self.model)
        if not self.accelerator.is_main_process:
            return 0
        version = self.global_step + 1 if version is None else version
        self.engine.update_weights(state, version=version)
        return state_bytes(state)

    # ------------------------------------------------------------------ helpers
    def logprobs(
        self,
        sequences: SequenceBatch,
        with_entropy: bool = False,
        scorer: LogProbModel | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The policy's (or ``scorer``'s) log-probs, in the compute dtype."""
        with autocast(self.compute_dtype, self.accelerator.device):
            return (scorer or self.scorer)(
                sequences,
                temperature=self.config.rollout.sampling.temperature or 1.0,
                chunk_size=self.config.run.logprob_chunk_size,
                with_entropy=with_entropy,
            )

    def reference_logprobs(self, sequences: SequenceBatch) -> torch.Tensor:
        if self.reference is not None:
            return self.logprobs(sequences, scorer=self.reference)[0]
        with self.model.disable_adapter():
            return self.logprobs(sequences)[0]

    @torch.no_grad()
    def audio_sensitivity(self, mb: MicroBatch) -> dict[str, float]:
        """How much the sampled completions depend on their audio, with silence in its place.

        ``audio_sensitivity``: mean |Δ log-prob| per completion token; zero means the policy
        ignores its audio (the "audio silently dropped" failure). ``audio_preferred``: the share
        of completions the policy finds likelier with their own clip than with silence (ties
        count half): 0.5 means the answers do not depend on what it hears, near 1 that they do.
        Both come from one micro-batch and two forward passes; the accuracy with and without the
        audio itself, which needs fresh decoding, is ``rlhf eval --ablate silence``.
        """
        if mb.sequences.input_features is None:
            return {"audio_sensitivity": 0.0, "audio_preferred": 0.5}
        silent = copy.copy(mb.sequences)
        silent.input_features = torch.zeros_like(mb.sequences.input_features)
        with_audio, _ = self.logprobs(mb.sequences)
        without, _ = self.logprobs(silent)
        mask = mb.sequences.completion_mask.float()
        delta = (with_audio - without) * mask
        gain = delta.sum(dim=1)  # log p(completion | clip) - log p(completion | silence)
        preferred = (gain > 0).float() + 0.5 * (gain == 0).float()
        return {
            "audio_sensitivity": float(delta.abs().sum() / mask.sum().clamp(min=1)),
            "audio_preferred": float(preferred.mean()),
        }

    def batch_metrics(self, micro_batches: list[MicroBatch]) -> dict[str, float]:
        """What the update will learn from, over all processes: trained tokens, the largest
        |advantage| on them (0: nothing to learn) and, with a critic, its explained variance."""
        stats = StepMetrics()
        stats.total({"trained_tokens": 0.0})  # also when every group was dropped
        stats.maximum({"advantage_abs_max": 0.0})
        for mb in micro_batches:
            trained = mb.loss_mask.bool()
            advantages = mb.advantages if mb.advantages.dim() == 2 else mb.advantages[:, None]
            largest = torch.where(trained, advantages.abs(), 0.0).max() if trained.any() else 0.0
            stats.total({"trained_tokens": float(mb.loss_mask.sum())})
            stats.maximum({"advantage_abs_max": float(largest)})
            if mb.values is not None:
                returns = torch.where(trained, mb.returns, 0.0).float()
                residual = torch.where(trained, mb.returns - mb.values, 0.0).float()
                parts = (trained.sum(), returns.sum(), returns.square().sum())
                parts += (residual.sum(), residual.square().sum())
                stats.total({f"ev{i}": float(x) for i, x in enumerate(parts)})
        reduced = stats.reduce(self.accelerator)
        sums = [reduced.pop(f"ev{i}", 0.0) for i in range(5)]
        if self.critic is not None:
            reduced["explained_variance"] = explained_variance(sums)
        return reduced

    def normalisers(self, micro_batches: list[MicroBatch]) -> dict[str, float]:
        """Trained tokens and sequences of the whole batch, over all processes."""
        local = torch.tensor(
            [
                sum(float(mb.loss_mask.sum()) for mb in micro_batches),
                sum(len(mb.loss_mask) for mb in micro_batches if not mb.filler),
            ],
            device=self.accelerator.device,
        )
        tokens, rows = (max(float(x), 1.0) for x in self.all_sum(local))
        return {"tokens": tokens, "rows": int(rows)}

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return values
        return self.accelerator.reduce(values, "sum")

    def optimizer_step(self) -> float:
        # each process's loss is normalised by whole-batch counts, so the shards' gradients add up
        params = [p for p in self.model.parameters() if p.requires_grad]
        return optimizer_step(
            params, self.optimizer, self.scheduler, self.config.optim.max_grad_norm
        )

    # ------------------------------------------------------------------ run, save, resume
    def train(self, resume: bool | str = False) -> list[dict[str, Any]]:
        cfg = self.config
        if resume:
            self.resume(None if resume is True else Path(resume))
        self.logger.truncate_after(self.global_step)

        def after_step(metrics: dict[str, Any]) -> None:
            self.watchdog.observe(self.global_step, metrics)  # stops a run that cannot learn
            if cfg.run.save_every and self.global_step % cfg.run.save_every == 0:
                self.save()

        history = train_loop(
            self,
            "RL",
            cfg.run.steps,
            main_process=self.accelerator.is_main_process,
            status=lambda m: {
                "reward": m.get("reward_total", {}).get("mean"),
                "accuracy": m.get("accuracy"),
            },
            after_step=after_step,
        )
        if self.global_step % max(cfg.run.save_every, 1) != 0:
            self.save()
        self.save_final(self.run_dir / "final")
        self.logger.close()
        self.accelerator.end_training()
        return history

    def trainer_state(self) -> dict[str, Any]:
        """What ``trainer_state.pt`` holds; the optimizers' and critic's states only when
        unsharded (else they are in the sharded ``state/``)."""
        state = {"scheduler": self.scheduler.state_dict(), "prompts": self.prompts.state_dict()}
        if not self.sharded:
            state["optimizer"] = self.optimizer.state_dict()
            state["critic"] = self.critic.state_dict() if self.critic is not None else None
        return state

    def sharded_parts(self) -> dict[str, tuple[torch.nn.Module, list[torch.optim.Optimizer]]]:
        """The sharded checkpoint's parts: each trained module and the optimizers over it."""
        if self.critic is None:
            return {"policy": (self.scorer, [self.optimizer])}
        if self.critic.scorer is self.scorer:  # LoRA: one module, two adapters
            return {"policy": (self.scorer, [self.optimizer, self.critic.optimizer])}
        return {
            "policy": (self.scorer, [self.optimizer]),
            "critic": (self.critic.scorer, [self.critic.optimizer]),
        }

    def save(self) -> Path:
        """This step's checkpoint; every process takes part."""

        def write(folder: Path) -> None:
            if self.sharded:
                save_sharded(folder, self.sharded_parts())  # each process its shards
            elif self.accelerator.is_main_process:
                self.model.save_pretrained(folder)
            if self.accelerator.is_main_process:
                self.policy.processor.save_pretrained(folder)
                state = {**self.trainer_state(), "step": self.global_step}
                torch.save(state, folder / TRAINER_STATE)

        return save_checkpoint(
            self.run_dir,
            self.global_step,
            write,
            identity=self.identity(),
            keep_last=self.config.run.keep_last,
            accelerator=self.accelerator,
        )

    def identity(self) -> dict[str, Any]:
        """What a checkpoint of this run must match to be resumed by it."""
        return run_identity(self.config, self.prompts.num_rows)

    def resume(self, checkpoint: Path | None = None) -> None:
        """Restore weights, optimizer, scheduler, data position, step and RNG from a checkpoint."""
        # verified: intact, of this run (else the newest intact one, or an error)
        checkpoint = find_checkpoint(self.run_dir, self.identity(), checkpoint)
        state = load_trainer_state(checkpoint, self.accelerator.process_index)
        if self.sharded:
            load_sharded(checkpoint, self.sharded_parts())
        else:
            load_weights(self.model, checkpoint)
            self.optimizer.load_state_dict(state["optimizer"])
            if self.critic is not None:
                self.critic.load_state_dict(state["critic"], source=str(checkpoint))
        self.scheduler.load_state_dict(state["scheduler"])
        self.prompts.load_state_dict(state["prompts"])
        self.global_step = int(state["step"])
        self.sync_weights(version=self.global_step)

    def save_final(self, path: Path) -> None:
        """A plain ``from_pretrained`` checkpoint (LoRA merged) for eval and the next stage."""
        save_pretrained(
            self.model, self.policy.processor, path, self.accelerator, self.config.model
        )


def load_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """Load what ``save_pretrained`` wrote into ``checkpoint`` (the adapter alone under LoRA).
    Every weight the run trains must be there and nothing else: a missing or unexpected tensor
    is an error naming the checkpoint, never a silent partial restore."""
    from safetensors.torch import load_file

    from rlhf.checkpoint import CheckpointError

    state = {}
    for file in sorted(checkpoint.glob("*.safetensors")):
        state.update(load_file(file))
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        wanted = set(get_peft_model_state_dict(model))
        missing, unexpected = sorted(wanted - set(state)), sorted(set(state) - wanted)
        if not missing and not unexpected:
            set_peft_model_state_dict(model, state)
    else:
        result = model.load_state_dict(state, strict=False)
        missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        raise CheckpointError(
            f"{checkpoint}: the saved weights do not fit this run's model: missing "
            f"{missing[:3]}{' ...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
        )


def engine_policy(config: RLConfig, device: torch.device | str) -> Policy:
    """The local engine's own copy of the policy when the trained one is sharded: unsharded, in
    the compute dtype, with the same LoRA adapter (its weights arrive by ``sync_weights``)."""
    policy = Policy.from_pretrained(config.model.path, dtype=config.model.dtype, device=str(device))
    untrained = replace(config.model, gradient_checkpointing=False)
    policy.model = prepare_model(policy.model, untrained).eval()
    return policy


ACCURACY_REWARDS = ("accuracy", "paralinguistic")


def sample_rows(rollouts: list[Rollout]) -> list[dict[str, Any]]:
    """The completions of a step as rows of the samples table."""
    return [
        {
            "prompt_id": r.prompt_id,
            "think": r.think,
            "answer": r.answer,
            "rewards": r.rewards,
            "total": r.reward,
        }
        for r in rollouts
    ]


def rollout_metrics(rollouts: list[Rollout]) -> dict[str, Any]:
    """What the completions look like: total reward, accuracy, lengths, thinking, finish."""
    if not rollouts:
        return {}
    totals = torch.tensor([r.reward for r in rollouts if r.reward is not None])
    correct = [
        r.rewards[name]
        for r in rollouts
        for name in ACCURACY_REWARDS
        if r.rewards.get(name) is not None
    ]
    lengths = torch.tensor([len(r.completion_ids) for r in rollouts], dtype=torch.float)
    think_words = torch.tensor([len((r.think or "").split()) for r in rollouts], dtype=torch.float)
    finish = {}
    for r in rollouts:
        finish[r.finish_reason] = finish.get(r.finish_reason, 0) + 1
    return {
        "reward_total": {
            "mean": float(totals.mean()) if len(totals) else math.nan,
            "std": float(totals.std()) if len(totals) > 1 else 0.0,
            "applicable": len(totals) / len(rollouts),
        },
        "accuracy": sum(correct) / len(correct) if correct else math.nan,
        "completion_length": {"mean": float(lengths.mean()), "max": float(lengths.max())},
        "think_words": {"mean": float(think_words.mean())},
        "finish": {k: v / len(rollouts) for k, v in finish.items()},
        "policy_version": max(r.policy_version for r in rollouts),
    }


def build_engine(
    config: RLConfig, policy: Policy, reward_specs: list[RewardSpec], shares_weights: bool = True
):
    rcfg = config.rollout
    if rcfg.engine == "local":
        return LocalEngine(
            policy,
            RewardRunner(reward_specs),
            batch_size=rcfg.batch_size,
            train_on=rcfg.train_on,
            shares_weights=shares_weights,
        )
    if rcfg.engine == "ray":
        from rollouts.ray_pool import RayEngine, connect

        ray = rcfg.ray
        # join the configured cluster before a remote reward would start Ray on its own
        connect(ray.address, ray.num_workers, ray.num_cpus_per_worker, ray.num_gpus_per_worker)
        return RayEngine.from_config(config, RewardRunner(reward_specs))
    if rcfg.engine == "vllm":
        from rollouts.vllm_engine import VLLMEngine

        return VLLMEngine.from_config(config, policy.adapter, RewardRunner(reward_specs))
    raise ValueError(f"rollout.engine: unknown {rcfg.engine!r}; choose 'local', 'vllm' or 'ray'")

"""Rollouts on a Ray cluster: a pool of actors, each holding a policy copy and a local engine.

``RayEngine`` keeps the engine contract of :class:`~rollouts.engine.LocalEngine`: ``generate``
returns the same rollouts in prompt order whatever the number of workers (each sample is seeded
from its prompt, never from its worker), ``update_weights`` ships new weights, ``metrics``
describes the last call. Prompts are cut into contiguous shards, one per worker, so the n samples
of a prompt are generated and scored by one worker, next to the model.

Weight sync puts the state once in the object store; every worker fetches it from there. Under
LoRA the state is the adapter alone, and workers wrap the base model with the same LoRA config so
the adapter names match.

Fault tolerance: every wait on a worker is bounded by ``call_timeout_s``. A worker that dies or
does not answer in time is killed and replaced in the same placement bundle, started with the
latest weights, and its shard is retried — at most ``max_retries`` times, then ``generate``
raises ``RolloutWorkerError``. An exception raised by our own code on a worker is a bug or bad
input, not a fault: it is raised at once with the worker's traceback, not retried.

This module imports only ``rollouts`` and ``rewards``: nothing of the trainer has to exist on a
worker node.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rewards import RewardResult, RewardRunner
from rewards.errors import MissingExtraError
from rollouts.engine import LocalEngine
from rollouts.types import PromptSample, Rollout, SamplingParams
from rollouts.weights import state_bytes

try:
    import ray
    from ray.exceptions import GetTimeoutError, RayError, RayTaskError
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
except ImportError as err:
    raise MissingExtraError("ray", err) from err


class RolloutWorkerError(RuntimeError):
    """A shard could not be generated: a worker kept failing, or raised an exception."""


@dataclass
class WorkerModel:
    """What a worker loads: the checkpoint, its dtype and, for LoRA runs, peft ``LoraConfig`` kwargs.

    ``lora`` must match the trainer's adapter (same rank, alpha, target modules) so that the
    adapter tensors it sends load by name.
    """

    path: str
    dtype: str = "float32"
    lora: dict[str, Any] | None = None
    vllm: dict[str, Any] | None = None  # VLLMOptions fields: a vLLM engine instead of a local one


@dataclass
class PoolMetrics:
    """Counters of the pool's life, reported under ``metrics()["ray"]``."""

    workers: int = 0
    restarts: int = 0
    generate_calls: int = 0
    syncs: int = 0
    sync_seconds: float = 0.0
    sync_bytes: int = 0
    retries_last_generate: int = 0


class RolloutWorker:
    """One Ray actor: a policy copy and a ``LocalEngine`` that generates and scores a shard, or
    a ``VLLMEngine`` when ``model.vllm`` is set (``rollout.ray.backend: vllm``)."""

    def __init__(
        self,
        model: WorkerModel,
        reward_runner: RewardRunner | None,
        state: dict[str, torch.Tensor] | None,
        version: int,
        *,
        batch_size: int,
        train_on: str,
        num_threads: int,
    ):
        from rollouts.policy import Policy

        torch.set_num_threads(num_threads)
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        if model.vllm is not None:
            from rollouts.vllm_engine import VLLMEngine, VLLMOptions

            options = VLLMOptions(dtype=model.dtype, lora=model.lora, **model.vllm)
            self.engine = VLLMEngine.from_checkpoint(
                model.path, reward_runner, train_on=train_on, options=options
            )
        else:
            policy = Policy.from_pretrained(model.path, dtype=model.dtype, device=device)
            if model.lora is not None:
                from peft import LoraConfig, get_peft_model

                # the trainer's adapter exactly: the family scopes the layer names (never inside
                # the audio encoder), as rlhf.training.prepare_model does
                targets = policy.adapter.lora_target_modules(model.lora["target_modules"])
                lora = LoraConfig(**{**model.lora, "target_modules": targets})
                policy.model = get_peft_model(policy.model, lora)
            policy.model.eval()
            self.engine = LocalEngine(
                policy, reward_runner, batch_size=batch_size, train_on=train_on
            )
        if state is not None:  # a replacement worker starts from the latest sync
            self.engine.update_weights(state, version)
        self.info = {
            "pid": os.getpid(),
            "node": ray.util.get_node_ip_address(),
            "device": device,
        }

    def ready(self) -> dict[str, Any]:
        return self.info

    def update_weights(self, state: dict[str, torch.Tensor], version: int) -> None:
        self.engine.update_weights(state, version)

    def generate(
        self, samples: list[PromptSample], n: int, sampling: SamplingParams
    ) -> tuple[list[Rollout], dict[str, Any]]:
        rollouts = self.engine.generate(samples, n, sampling)
        return rollouts, self.engine.metrics()


class RayEngine:
    """A pool of ``num_workers`` Ray actors behind the local engine's interface.

    Args:
        model: the checkpoint every worker loads (see :class:`WorkerModel`).
        reward_runner: scores rollouts on the workers; shipped to them once, so it must pickle
            (``RewardRunner`` does; shared model-backed rewards travel as actor handles).
        num_workers, num_cpus_per_worker, num_gpus_per_worker: the pool's placement group, one
            bundle per worker.
        placement_strategy: Ray's ``PACK`` | ``SPREAD`` | ``STRICT_PACK`` | ``STRICT_SPREAD``.
        address: empty — start a local Ray with exactly the pool's resources; ``"auto"`` or
            ``"host:port"`` — join that cluster (see :func:`connect`). Ignored when this process
            is already connected.
        call_timeout_s: the longest wait for any one call to a worker (start, sync or shard).
        max_retries: how often a shard is retried on a fresh worker before giving up.
        batch_size, train_on: passed to each worker's ``LocalEngine``.
    """

    shares_weights = False

    def __init__(
        self,
        model: WorkerModel,
        reward_runner: RewardRunner | None = None,
        *,
        num_workers: int = 2,
        num_cpus_per_worker: float = 1.0,
        num_gpus_per_worker: float = 0.0,
        placement_strategy: str = "PACK",
        address: str = "",
        call_timeout_s: float = 600.0,
        max_retries: int = 2,
        batch_size: int = 16,
        train_on: str = "text",
    ):
        if num_workers < 1:
            raise ValueError(f"rollout.ray.num_workers must be >= 1, got {num_workers}")
        self.call_timeout_s = call_timeout_s
        self.max_retries = max_retries
        self.policy_version = 0
        self._stats = PoolMetrics(workers=num_workers)
        self._last: dict[str, Any] = {}
        self._weights: tuple[ray.ObjectRef, int] | None = None  # latest sync, for new workers

        connect(address, num_workers, num_cpus_per_worker, num_gpus_per_worker)
        bundle = {"CPU": num_cpus_per_worker}
        if num_gpus_per_worker > 0:
            bundle["GPU"] = num_gpus_per_worker
        self._placement = placement_group([dict(bundle)] * num_workers, placement_strategy)
        try:
            ray.get(self._placement.ready(), timeout=call_timeout_s)
        except GetTimeoutError:
            remove_placement_group(self._placement)
            raise RolloutWorkerError(
                f"Ray cannot place {num_workers} rollout workers of {bundle} "
                f"({placement_strategy}) within {call_timeout_s:g} s; cluster resources: "
                f"{ray.cluster_resources()}"
            ) from None

        self._actor_options = {"num_cpus": num_cpus_per_worker, "num_gpus": num_gpus_per_worker}
        self._worker_args = (model, ray.put(reward_runner))
        self._worker_kwargs = {
            "batch_size": batch_size,
            "train_on": train_on,
            "num_threads": max(1, math.floor(num_cpus_per_worker)),
        }
        self.workers = [self._start_worker(i) for i in range(num_workers)]
        # where each worker runs: {"pid", "node", "device"}
        self.worker_info: list[dict[str, Any]] = self._call_all(
            "ready", [()] * num_workers, "start"
        )

    @classmethod
    def from_config(cls, config: Any, reward_runner: RewardRunner | None = None) -> RayEngine:
        """Build from a recipe: reads ``config.model`` and ``config.rollout`` (with ``.ray``)."""
        mcfg, rcfg = config.model, config.rollout
        lora = None
        if mcfg.lora.enabled:  # the same adapter as the trainer's
            lora = {
                "r": mcfg.lora.r,
                "lora_alpha": mcfg.lora.alpha,
                "lora_dropout": mcfg.lora.dropout,
                "target_modules": list(mcfg.lora.target_modules),
            }
        ray_cfg = rcfg.ray
        vllm = vars(rcfg.vllm).copy() if ray_cfg.backend == "vllm" else None
        return cls(
            WorkerModel(str(mcfg.path), mcfg.dtype, lora, vllm),
            reward_runner,
            num_workers=ray_cfg.num_workers,
            num_cpus_per_worker=ray_cfg.num_cpus_per_worker,
            num_gpus_per_worker=ray_cfg.num_gpus_per_worker,
            placement_strategy=ray_cfg.placement_strategy,
            address=ray_cfg.address,
            call_timeout_s=ray_cfg.call_timeout_s,
            max_retries=ray_cfg.max_retries,
            batch_size=rcfg.batch_size,
            train_on=rcfg.train_on,
        )

    # ------------------------------------------------------------------ the engine contract
    def generate(
        self, samples: Sequence[PromptSample], n: int, sampling: SamplingParams
    ) -> list[Rollout]:
        """n rollouts per prompt, in prompt order; each shard generated and scored by one worker."""
        samples = list(samples)
        bounds = _shard_bounds(len(samples), len(self.workers))
        args = [(samples[start:stop], n, sampling) for start, stop in bounds]
        retries_before = self._stats.restarts
        results = self._call_all("generate", args, "generate")
        self._stats.generate_calls += 1
        self._stats.retries_last_generate = self._stats.restarts - retries_before

        rollouts: list[Rollout] = []
        shard_rewards: list[RewardResult] = []
        times: dict[str, float] = {}
        for (start, _), (shard, metrics) in zip(bounds, results, strict=True):
            for rollout in shard:  # group numbers are per shard on the worker: make them global
                rollout.group += start
            rollouts += shard
            for key, seconds in metrics.get("time", {}).items():
                times[key] = max(times.get(key, 0.0), seconds)  # shards run side by side
            if "reward" in metrics:
                shard_rewards.append(_shard_reward_result(shard, metrics["reward"]))
        self._last = {"time": times}
        if shard_rewards:
            self._last["reward"] = RewardResult.concat(shard_rewards).metrics
        return rollouts

    def update_weights(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Put ``state`` (full, or the LoRA adapter) in the object store once; all workers load it."""
        started = time.perf_counter()
        self._weights = (ray.put(state), version)
        self._call_all("update_weights", [self._weights] * len(self.workers), "weight sync")
        self.policy_version = version
        self._stats.syncs += 1
        self._stats.sync_seconds = time.perf_counter() - started
        self._stats.sync_bytes = state_bytes(state)

    def metrics(self) -> dict[str, Any]:
        """The last ``generate``'s time split and reward statistics, and the pool's counters."""
        stats = self._stats
        pool = {
            "workers": stats.workers,
            "restarts": stats.restarts,
            "retries_last_generate": stats.retries_last_generate,
            "generate_calls": stats.generate_calls,
            "syncs": stats.syncs,
            "sync_seconds": stats.sync_seconds,
            "sync_bytes": stats.sync_bytes,
            "policy_version": self.policy_version,
        }
        return {**self._last, "ray": pool}

    def shutdown(self) -> None:
        """Stop the workers and free their placement group (Ray itself keeps running)."""
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.workers = []
        remove_placement_group(self._placement)

    # ------------------------------------------------------------------ workers
    def _start_worker(self, index: int) -> Any:
        strategy = PlacementGroupSchedulingStrategy(
            self._placement, placement_group_bundle_index=index
        )
        actor = ray.remote(RolloutWorker).options(
            **self._actor_options, scheduling_strategy=strategy
        )
        return actor.remote(
            *self._worker_args, *(self._weights or (None, 0)), **self._worker_kwargs
        )

    def _replace_worker(self, index: int) -> None:
        """Kill worker ``index`` (dead or stuck) and start a fresh one with the latest weights."""
        ray.kill(self.workers[index], no_restart=True)
        self.workers[index] = self._start_worker(index)
        self._stats.restarts += 1

    def _call_all(self, method: str, args: list[tuple], what: str) -> list[Any]:
        """Call ``method`` on workers 0..len(args)-1 with their arguments; results in order.

        A worker that dies or exceeds ``call_timeout_s`` is replaced and its call resubmitted, up
        to ``max_retries`` times per call; a replacement gets one more ``call_timeout_s`` to load
        the model. A call that keeps failing raises, after its worker was replaced once more, so
        that the pool stays usable.
        """
        results: list[Any] = [None] * len(args)
        attempts = [0] * len(args)
        pending: dict[ray.ObjectRef, tuple[int, float]] = {}

        def submit(i: int, allowance: float = 0.0) -> None:
            ref = getattr(self.workers[i], method).remote(*args[i])
            pending[ref] = (i, time.monotonic() + allowance + self.call_timeout_s)

        for i in range(len(args)):
            submit(i)
        while pending:
            next_deadline = min(deadline for _, deadline in pending.values())
            wait = max(0.0, next_deadline - time.monotonic())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=wait)
            failed: list[tuple[int, str]] = []
            for ref in ready:
                i, _ = pending.pop(ref)
                try:
                    results[i] = ray.get(ref, timeout=self.call_timeout_s)
                except RayTaskError as err:  # our code raised on the worker: do not retry
                    raise RolloutWorkerError(
                        f"rollout worker {i} raised during {what}: {err}"
                    ) from err
                except RayError as err:  # the worker died, or its node did
                    failed.append((i, f"{type(err).__name__}: {err}"))
            now = time.monotonic()
            for ref, (i, deadline) in list(pending.items()):
                if deadline <= now:
                    del pending[ref]
                    failed.append((i, f"no answer within call_timeout_s={self.call_timeout_s:g}"))
            for i, reason in failed:
                attempts[i] += 1
                self._replace_worker(i)
                if attempts[i] > self.max_retries:
                    raise RolloutWorkerError(
                        f"rollout worker {i} failed {attempts[i]} times during {what} "
                        f"(max_retries={self.max_retries}); last failure: {reason}"
                    )
                submit(i, allowance=self.call_timeout_s)
        return results


def connect(address: str = "", num_workers: int = 1, cpus: float = 1.0, gpus: float = 0.0) -> None:
    """Join the cluster at ``address``, or start a local Ray holding just the pool's resources.

    Does nothing when this process is already connected. Call it before anything else touches
    Ray (a reward placed on a shared actor, say): Ray's first use connects implicitly, elsewhere.
    ``address="local"`` makes Ray start a new instance even when ``ray start`` was run on this
    machine before (a plain ``ray.init()`` would join that one).
    """
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
        return
    ray.init(
        address="local",
        num_cpus=max(1, math.ceil(num_workers * cpus)),
        num_gpus=math.ceil(num_workers * gpus),
        include_dashboard=False,
    )


def _shard_bounds(num_prompts: int, num_workers: int) -> list[tuple[int, int]]:
    """Contiguous, non-empty ``(start, stop)`` prompt ranges, sizes differing by at most one."""
    shards = min(num_workers, num_prompts)
    if shards == 0:
        return []
    size, extra = divmod(num_prompts, shards)
    bounds, start = [], 0
    for i in range(shards):
        stop = start + size + (i < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def _shard_reward_result(rollouts: list[Rollout], metrics: dict[str, Any]) -> RewardResult:
    """Rebuild a shard's ``RewardResult`` from its scored rollouts, to merge the shards' statistics."""
    per_reward = {key: [r.rewards.get(key) for r in rollouts] for key in metrics}
    return RewardResult(per_reward, [r.reward for r in rollouts], metrics)

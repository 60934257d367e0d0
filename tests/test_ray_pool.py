"""The Ray rollout pool: same rollouts as the local engine, weight sync, faults, timeouts.

One local Ray (2 CPUs) serves the whole module. Faults are injected from inside a task by a
reward function that the test arms through files: a worker that claims the "crash" file exits
mid-batch, as a process killed by the OOM killer would.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from rewards import RewardRunner, RewardSpec
from rollouts import ray_pool
from rollouts.engine import LocalEngine
from rollouts.policy import Policy
from rollouts.ray_pool import RayEngine, RolloutWorkerError, WorkerModel
from rollouts.types import PromptSample, SamplingParams
from rollouts.weights import policy_state, state_bytes

LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
SAMPLING = SamplingParams(max_new_tokens=12, seed=7)
N = 2


def fault_reward(control: Path):
    """A reward that reports completion lengths, and injects the faults armed in ``control``.

    Defined inside a function so that Ray pickles it by value: workers cannot import test modules.
    """

    def claim(fault: str) -> bool:  # the first worker to rename the file takes the fault
        try:
            (control / fault).rename(control / f"{fault}-{os.getpid()}")
        except FileNotFoundError:
            return False
        return True

    def probe(prompts, completions, **kwargs):
        if claim("crash"):
            os._exit(1)
        if (control / "crash_always").exists() and "p0" in kwargs["name"]:  # one shard, always
            os._exit(1)
        if claim("hang"):
            time.sleep(60)
        return [len(c) / 100 for c in completions]

    return probe


@pytest.fixture(scope="module")
def control(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


def pid_reward():
    """The scoring process's id as the reward (by value, like ``fault_reward``)."""

    def pid(prompts, completions, **kwargs):
        return [float(os.getpid())] * len(completions)

    return pid


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def runner(local_ray, control):
    specs = [
        RewardSpec("think_format"),
        RewardSpec(fault_reward(control), timeout_s=None),
        # a model-backed reward would sit on one shared actor that every worker calls
        RewardSpec(pid_reward(), weight=0.0, remote={"num_cpus": 0}),
    ]
    return RewardRunner(specs)


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(0)
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Who?"}]}]
    return [
        PromptSample(
            f"p{i}",
            messages,
            [(0.1 * rng.standard_normal(n)).astype(np.float32)],
            columns={"name": f"p{i}"},
        )
        for i, n in enumerate([16000, 6000, 22000, 9000, 12000])
    ]


@pytest.fixture(scope="module")
def pools(local_ray, tiny_model_dir, runner):
    """A 2-worker full-weights pool and a 1-worker LoRA pool on one local Ray."""
    common = {"num_cpus_per_worker": 0.5, "call_timeout_s": 60.0, "max_retries": 1}
    with ThreadPoolExecutor(2) as threads:  # start both pools' workers side by side
        two = threads.submit(
            RayEngine,
            WorkerModel(str(tiny_model_dir)),
            runner,
            num_workers=2,
            batch_size=4,
            **common,
        )
        # B = 0 in a fresh adapter: until a sync, the LoRA pool samples exactly like the base model
        one = threads.submit(
            RayEngine, WorkerModel(str(tiny_model_dir), lora=LORA), runner, num_workers=1, **common
        )
        two, one = two.result(), one.result()
    yield two, one
    two.shutdown()
    one.shutdown()


def local_engine(tiny_model_dir, runner, lora=False) -> LocalEngine:
    policy = Policy.from_pretrained(tiny_model_dir)
    if lora:
        from peft import LoraConfig, get_peft_model

        policy.model = get_peft_model(policy.model, LoraConfig(**LORA))
    return LocalEngine(policy, runner, batch_size=16)


def assert_same_rollouts(expected, got):
    assert [(r.prompt_id, r.group, r.sample_index) for r in got] == [
        (r.prompt_id, r.group, r.sample_index) for r in expected
    ]
    for a, b in zip(expected, got, strict=True):
        assert b.completion_ids == a.completion_ids
        assert b.prompt_ids == a.prompt_ids and b.loss_mask == a.loss_mask
        np.testing.assert_allclose(b.logprobs, a.logprobs, atol=1e-4)
        assert (b.rewards, b.reward, b.policy_version) == (a.rewards, a.reward, a.policy_version)


def test_local_ray_is_started_with_the_pools_resources(monkeypatch):
    calls = []
    monkeypatch.setattr(ray_pool.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_pool.ray, "init", lambda **kw: calls.append(kw))
    ray_pool.connect("", num_workers=3, cpus=1.5, gpus=0.5)
    ray_pool.connect("10.0.0.1:6379", num_workers=3, cpus=1.5, gpus=0.5)
    assert calls == [
        {"address": "local", "num_cpus": 5, "num_gpus": 2, "include_dashboard": False},
        {"address": "10.0.0.1:6379"},
    ]
    assert ray_pool._shard_bounds(5, 2) == [(0, 3), (3, 5)]
    assert ray_pool._shard_bounds(1, 4) == [(0, 1)]


def test_pool_gives_the_local_engines_rollouts_with_one_or_two_workers(
    pools, tiny_model_dir, runner, samples
):
    two, one = pools
    expected = local_engine(tiny_model_dir, runner).generate(samples, N, SAMPLING)
    assert len({tuple(r.completion_ids) for r in expected}) > 1  # sampling, not one fixed answer
    assert_same_rollouts(expected, one.generate(samples, N, SAMPLING))
    assert_same_rollouts(expected, two.generate(samples, N, SAMPLING))

    metrics = two.metrics()
    assert metrics["ray"]["workers"] == 2 and metrics["ray"]["retries_last_generate"] == 0
    lengths = [r.rewards["probe"] for r in expected]
    assert metrics["reward"]["probe"]["mean"] == pytest.approx(np.mean(lengths))
    assert metrics["reward"]["probe"]["applicable"] == 1.0
    assert metrics["time"]["decode"] > 0
    # every worker scored through the one shared reward actor (the rollouts matched the local
    # engine's, which called it from this process)
    worker_pids = {info["pid"] for info in two.worker_info + one.worker_info}
    assert len({r.rewards["pid"] for r in expected}) == 1
    assert expected[0].rewards["pid"] not in worker_pids | {os.getpid()}


def test_lora_sync_sends_only_the_adapter(pools, tiny_model_dir, runner, samples):
    _, one = pools
    local = local_engine(tiny_model_dir, runner, lora=True)
    with torch.no_grad():
        for name, param in local.policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    adapter = policy_state(local.policy.model)
    assert adapter and all("lora_" in name for name in adapter)
    one.update_weights(adapter, version=3)
    local.policy_version = 3

    expected = local.generate(samples, N, SAMPLING)
    assert_same_rollouts(expected, one.generate(samples, N, SAMPLING))
    full = state_bytes(Policy.from_pretrained(tiny_model_dir).model.state_dict())
    stats = one.metrics()["ray"]
    assert stats["sync_bytes"] == state_bytes(adapter) < full / 10
    assert stats["syncs"] == 1 and stats["policy_version"] == 3 and stats["sync_seconds"] > 0


def test_worker_dying_mid_batch_is_replaced_with_the_latest_weights(
    pools, tiny_model_dir, runner, samples, control
):
    two, _ = pools
    local = local_engine(tiny_model_dir, runner)
    with torch.no_grad():
        local.policy.model.lm_head.weight.mul_(1.5)
    state = policy_state(local.policy.model)
    two.update_weights(state, version=1)
    local.update_weights(state, version=1)
    restarts = two.metrics()["ray"]["restarts"]

    (control / "crash").touch()
    got = two.generate(samples, N, SAMPLING)
    assert not (control / "crash").exists()  # a worker did claim it and die

    # every prompt exactly once, in order, from the new weights
    assert_same_rollouts(local.generate(samples, N, SAMPLING), got)
    assert {r.policy_version for r in got} == {1}
    stats = two.metrics()["ray"]
    assert stats["restarts"] == restarts + 1 and stats["retries_last_generate"] == 1
    assert stats["sync_bytes"] == state_bytes(state)


def test_persistent_failures_raise_a_clear_error_instead_of_hanging(pools, samples, control):
    two, _ = pools
    (control / "hang").touch()
    two.call_timeout_s, two.max_retries = 3.0, 0
    started = time.monotonic()
    try:
        with pytest.raises(RolloutWorkerError, match="no answer within call_timeout_s=3"):
            two.generate(samples, N, SAMPLING)
    finally:
        two.call_timeout_s, two.max_retries = 60.0, 1
    assert time.monotonic() - started < 30

    (control / "crash_always").touch()
    try:
        with pytest.raises(RolloutWorkerError, match=r"failed 2 times during generate"):
            two.generate(samples, N, SAMPLING)
    finally:
        (control / "crash_always").unlink()

    # the failed workers were replaced: the pool works again
    assert len(two.generate(samples[:2], N, SAMPLING)) == 2 * N

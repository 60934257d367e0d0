"""Joining a running Ray cluster, and training with 2 processes against a rollout pool on it.

The test starts its own head (``ray start --head --block`` on 127.0.0.1, in a process group of
its own) and stops exactly that group afterwards; ``ray stop`` would stop every Ray on the
machine. Driver and cluster must agree on token authentication (``RAY_AUTH_MODE``): a local
``ray.init`` earlier in this process turned it on here, ``ray start`` alone would not; so the head
gets this process's mode.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from rlhf.distributed import free_port
from rollouts.ray_pool import RayEngine, WorkerModel
from rollouts.types import PromptSample, SamplingParams

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny_grpo_ray.yaml"

# Runs `rlhf train` and records, per rank, which rollouts it trained on and the weights it ended
# each step with: the trainer's own metrics come from the main process only.
TRACED_TRAIN = """
import json, sys
from pathlib import Path
from rlhf import trainer as T
from rlhf.cli import main
from rlhf.distributed import full_tensor

log = Path(sys.argv[1])
micro_batches, optimizer_step = T.RLTrainer.micro_batches, T.RLTrainer.optimizer_step

def record(self, **entry):
    with (log / f"rank{self.accelerator.process_index}.jsonl").open("a") as f:
        f.write(json.dumps({"step": self.global_step + 1, **entry}) + "\\n")

def traced_micro_batches(self, samples, rollouts):
    batches = micro_batches(self, samples, rollouts)
    rows = [r for mb in batches for r in mb.rows.tolist()]
    record(self, rows=rows, rollouts=len(rollouts), has_engine=self.engine is not None)
    return batches

def traced_optimizer_step(self):
    norm = optimizer_step(self)
    params = [full_tensor(p) for p in self.model.parameters() if p.requires_grad]  # FSDP shards
    record(self, weights=float(sum(p.double().sum() for p in params)))
    return norm

T.RLTrainer.micro_batches = traced_micro_batches
T.RLTrainer.optimizer_step = traced_optimizer_step
code = main(["train", *sys.argv[2:]])
import torch.distributed as dist
if dist.is_initialized():  # else gloo may abort at exit ("terminate called without an active exception")
    dist.destroy_process_group()
sys.exit(code)
"""


def find(entries: list[dict], step: int, key: str) -> dict:
    return next(e for e in entries if e["step"] == step and key in e)


@pytest.fixture(scope="module")
def ray_head():
    """A one-node Ray cluster with 2 CPUs; yields its address."""
    port = free_port()
    # its own temp dir: `ray start` records its address there, where no other ray.init looks
    temp_dir = tempfile.mkdtemp(prefix="rayhead", dir="/tmp")  # short: socket paths are limited
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    log = Path(temp_dir) / "head.log"
    head = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            "--block",
            f"--port={port}",
            f"--temp-dir={temp_dir}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=false",
            f"--dashboard-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopping it stops nothing else
    )
    deadline = time.monotonic() + 90
    while "Ray runtime started" not in log.read_text():
        if head.poll() is not None or time.monotonic() > deadline:
            stop(head)
            pytest.fail("ray start --head failed:\n" + log.read_text())
        time.sleep(0.5)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def stop(head: subprocess.Popen) -> None:
    """Stop the head's process group: ``ray start``, GCS, raylet and the workers they started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            break
        time.sleep(2)
    head.wait(timeout=30)


def test_pool_joins_a_running_cluster(ray_head, tiny_model_dir):
    rng = np.random.default_rng(0)
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Who?"}]}]
    samples = [
        PromptSample(f"p{i}", messages, [(0.1 * rng.standard_normal(8000)).astype(np.float32)])
        for i in range(3)
    ]
    assert not ray.is_initialized()
    engine = RayEngine(WorkerModel(str(tiny_model_dir)), address=ray_head, num_workers=1)
    try:
        assert ray.get_runtime_context().gcs_address.endswith(ray_head.split(":")[1])
        assert ray.cluster_resources()["CPU"] == 2  # the head's, not a new local Ray
        rollouts = engine.generate(samples, 2, SamplingParams(max_new_tokens=6))
        assert [r.prompt_id for r in rollouts] == ["p0", "p0", "p1", "p1", "p2", "p2"]
    finally:
        engine.shutdown()
        ray.shutdown()


def test_two_processes_train_against_one_pool(ray_head, tiny_model_dir, tiny_dataset_dir, tmp_path):
    script = tmp_path / "traced_train.py"
    script.write_text(TRACED_TRAIN)
    run = tmp_path / "run"
    overrides = [
        f"model.path={tiny_model_dir}",
        f"data.path={tiny_dataset_dir}",
        f"run.output_dir={run}",
        "run.steps=2",
        "run.save_every=0",
        "rollout.prompts_per_step=2",
        "rollout.num_generations=4",
        "rollout.sampling.max_new_tokens=8",
        "optim.micro_batch_size=2",
        "algorithm.dynamic_sampling=false",  # a random model scores every group alike
        f"rollout.ray.address={ray_head}",
        "rollout.ray.num_workers=1",
        "rollout.ray.call_timeout_s=120",
    ]
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch"),
        # --multi_gpu picks torchrun's launcher; without GPUs accelerate runs it as MULTI_CPU (gloo).
        # (--cpu would start a single process.)
        *("--multi_gpu", "--num_processes", "2", "--num_machines", "1"),
        *("--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(free_port())),
        *(str(script), str(tmp_path), str(RECIPE), *overrides),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    ranks = [
        [json.loads(line) for line in (tmp_path / f"rank{r}.jsonl").read_text().splitlines()]
        for r in range(2)
    ]
    for step in (1, 2):
        shards = [find(entries, step, "rows") for entries in ranks]
        # rollouts reach both ranks, only the main process holds the engine
        assert [s["has_engine"] for s in shards] == [True, False]
        assert shards[0]["rollouts"] == shards[1]["rollouts"] == 8
        # each rank trains on its own shard; together they cover the batch once
        assert shards[0]["rows"] and shards[1]["rows"]
        assert sorted(shards[0]["rows"] + shards[1]["rows"]) == list(range(8))
        # gradients were reduced by FSDP: both ranks end the step with the same (gathered) weights
        weights = [find(entries, step, "weights") for entries in ranks]
        assert weights[0]["weights"] == weights[1]["weights"]

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    # one generate per step; one weight sync per step, seen by the next step's rollouts
    assert [m["ray/generate_calls"] for m in metrics] == [1, 2]
    assert [m["ray/syncs"] for m in metrics] == [0, 1]
    assert [m["policy_version"] for m in metrics] == [0, 1]
    assert all(m["sync_bytes"] > 0 for m in metrics)
    assert metrics[1]["ray/sync_bytes"] == metrics[0]["sync_bytes"]

"""Two processes with FSDP2 (gloo, CPU) train as one process does on the whole batch.

One ``accelerate launch`` of two processes runs, one after the other: a GRPO step (full
fine-tuning, KL to a sharded reference, a micro-batch count that does not split evenly: one
process pads with a filler), its resumed second step, a GRPO step with LoRA, a PPO step with its
critic, an SFT step with the model replicated rather than sharded (``run.distributed=ddp``) and
a reward-model step.
The same commands run in this process, unsharded. Losses (summed over processes), gradient norms
and the consolidated ``final/`` weights must agree.

Tolerances: both runs compute in fp32 on the same micro-batches, so they differ only in the
order in which gradients are summed (gloo's reduction against local accumulation): ~1e-6
relative in gradients, hence 1e-4 relative on losses and gradient norms. A gradient averaged
instead of summed over the two processes (the critic's old 1/world bug) halves its norm. The
updated weights' difference is compared with the update itself: within 1e-3 of its norm. (Not
element by element: the first AdamW step is ``lr · g / (|g| + 1e-8)``, so a gradient component
near 1e-8 turns a 1e-6 relative difference into a visible fraction of its step; measured: up to
1.3 % of one step on a few SFT encoder biases, 0 to 1e-7 elsewhere.)

A checkpoint whose weights do not fit the model resuming it fails, naming it, sharded or not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.cli import main
from rlhf.config import OptimConfig
from rlhf.distributed import free_port

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
GRPO_LR = 1e-3

# Runs `rlhf` commands, one after the other, in each process of an `accelerate launch`.
LAUNCHED = """
import json, os, shutil, sys
import torch.distributed as dist
from accelerate import Accelerator
from rlhf.cli import main
from rlhf.config import OptimConfig
from rlhf.distributed import free_port

# `rlhf train` ends with accelerate's end_training, which destroys the process group; here the
# commands share one (no tracker is used)
Accelerator.end_training = lambda self: None
for command in json.loads(sys.argv[1]):
    assert main(command["argv"]) == 0, command
    if command.get("keep_final") and os.environ["RANK"] == "0":
        shutil.copytree(command["final"], command["keep_final"])
    dist.barrier()
dist.destroy_process_group()  # else gloo may abort at exit
"""


def commands(model_dir, data_dir, out: Path, processes: int) -> dict[str, list[str]]:
    """name → `rlhf` argv; ``grpo_resumed`` continues ``grpo``'s run folder to step 2. (An SFT
    step takes a micro-batch from each process: 4 examples either way.)"""
    common = [f"model.path={model_dir}", f"data.path={data_dir}", "run.save_every=1"]
    rl = [
        *common,
        "model.dtype=float32",  # the equality is about sharding: see the module docstring
        "rollout.prompts_per_step=2",
        "rollout.num_generations=3",  # 6 rollouts in micro-batches of 2: 3 micro-batches
        "rollout.sampling.max_new_tokens=8",
        "optim.micro_batch_size=2",
        "algorithm.dynamic_sampling=false",
        "algorithm.refill_rounds=0",
        "algorithm.difficulty_band=null",
    ]
    grpo = [
        *("train", str(RECIPES / "tiny_grpo.yaml"), *rl, f"optim.lr={GRPO_LR}"),
        "algorithm.entropy_coef=0.01",  # a gradient even when a random policy's rewards tie
    ]
    return {
        "grpo": [*grpo, f"run.output_dir={out / 'grpo'}", "run.steps=1"],
        "grpo_resumed": [*grpo, f"run.output_dir={out / 'grpo'}", "run.steps=2", "--resume"],
        "lora": [
            *grpo,
            f"run.output_dir={out / 'lora'}",
            "run.steps=1",
            "model.lora.enabled=true",
            "model.lora.r=4",
        ],
        "ppo": [
            "train",
            str(RECIPES / "step_audio2_ppo_think.yaml"),
            *rl,
            f"run.output_dir={out / 'ppo'}",
            "run.steps=1",
            "rollout.batch_size=8",
            "rollout.num_generations=1",
            "rollout.prompts_per_step=5",
            "optim.lr=1e-3",
            "algorithm.ppo.critic_lr=1e-3",
        ],
        "sft": [
            "sft",
            str(RECIPES / "tiny_sft.yaml"),
            *common,
            f"run.output_dir={out / 'sft'}",
            "run.steps=1",
            f"optim.micro_batch_size={4 // processes}",
            "run.distributed=ddp",  # replicated, not sharded
            "optim.warmup_steps=0",
        ],
        "reward_model": [
            "reward-model",
            str(RECIPES / "tiny_reward_model.yaml"),
            *common,
            f"run.output_dir={out / 'reward_model'}",
            "run.steps=1",
            "batch_size=4",
            "eval_pairs=0",
            "optim.warmup_steps=0",
        ],
    }


def run_launched(script_dir: Path, argvs: dict[str, list[str]], out: Path) -> None:
    plan = []
    for name, argv in argvs.items():
        entry = {"argv": argv}
        if name == "grpo":  # step 1's weights, before the resumed run overwrites final/
            entry |= {"final": str(out / "grpo" / "final"), "keep_final": str(out / "grpo_1")}
        plan.append(entry)
    script = script_dir / "launched.py"
    script.write_text(LAUNCHED)
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch"),
        *("--multi_gpu", "--num_processes", "2", "--num_machines", "1"),
        *("--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(free_port())),
        *(str(script), json.dumps(plan)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def assert_same_update(
    start: dict[str, torch.Tensor], ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]
) -> None:
    """Both runs moved the weights from ``start`` alike: their difference is within 1e-3 of the
    update's norm (see the module docstring)."""
    assert ours.keys() == theirs.keys()
    difference = torch.cat([(ours[k] - theirs[k]).flatten() for k in ours]).norm()
    shared = [k for k in ours if k in start]  # a reward model's new score head is not
    update = torch.cat([(theirs[k] - start[k]).flatten() for k in shared]).norm()
    assert update > 0 and difference < 1e-3 * update, (float(difference), float(update))


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tiny_dataset_dir, tmp_path_factory):
    """(sharded, single-process) output folders of the same commands."""
    sharded, single = tmp_path_factory.mktemp("fsdp"), tmp_path_factory.mktemp("single")
    run_launched(sharded, commands(tiny_model_dir, tiny_dataset_dir, sharded, 2), sharded)
    for name, argv in commands(tiny_model_dir, tiny_dataset_dir, single, 1).items():
        assert main(argv) == 0, name
        if name == "grpo":
            (single / "grpo" / "final").rename(single / "grpo_1")
    return sharded, single


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, final, steps",
    [
        ("grpo", "grpo_1", [1]),
        ("grpo", "grpo/final", [1, 2]),
        ("lora", "lora/final", [1]),
        ("ppo", "ppo/final", [1]),
        ("sft", "sft/final", [1]),
        ("reward_model", "reward_model/final", [1]),
    ],
    ids=["grpo", "grpo_resumed", "lora", "ppo", "sft", "reward_model"],
)
def test_two_fsdp_processes_equal_one(runs, tiny_model_dir, name, final, steps):
    model_dir = Path(tiny_model_dir)
    sharded, single = runs
    ours, theirs = metrics(sharded / name), metrics(single / name)
    for step in steps:
        a, b = ours[step - 1], theirs[step - 1]
        assert a["step"] == b["step"] == step
        for key in ("loss", "grad_norm", "critic_grad_norm", "value_loss"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert_same_update(weights(model_dir), weights(sharded / final), weights(single / final))


def test_a_sharded_checkpoint_that_does_not_fit_fails_naming_it(runs, tiny_model_dir):
    """The sharded checkpoint holds the decoder's trained weights; a model that also trains its
    audio encoder finds them missing (one process: DCP reads any number of shards)."""
    from rlhf.checkpoint import CheckpointError
    from rlhf.config import ModelConfig
    from rlhf.distributed import load_sharded
    from rlhf.training import build_optimizer, load_policy
    from rollouts.policy import LogProbModel

    checkpoint = runs[0] / "grpo" / "step-000002"
    config = ModelConfig(path=str(tiny_model_dir), freeze_audio_encoder=False)
    scorer = LogProbModel(load_policy(config, "cpu"))
    params = [p for p in scorer.parameters() if p.requires_grad]
    optimizer, _ = build_optimizer(params, OptimConfig())
    with pytest.raises(CheckpointError, match=rf"{checkpoint}: .* missing \['model.encoder"):
        load_sharded(checkpoint, {"policy": (scorer, [optimizer])})


def test_a_checkpoint_with_missing_or_extra_weights_fails_naming_it(tiny_model_dir, tmp_path):
    from safetensors.torch import save_file

    from rlhf.checkpoint import CheckpointError
    from rlhf.trainer import load_weights
    from rollouts.policy import Policy

    model = Policy.from_pretrained(tiny_model_dir).model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.pop("lm_head.weight")
    state["extra.weight"] = torch.zeros(2)
    save_file(state, tmp_path / "model.safetensors")
    pattern = rf"{tmp_path}: .* missing \['lm_head.weight'\], unexpected \['extra.weight'\]"
    with pytest.raises(CheckpointError, match=pattern):
        load_weights(model, tmp_path)


@pytest.mark.slow
def test_the_demo_shares_each_sft_step_over_two_processes(
    tiny_model_dir, tiny_dataset_dir, tmp_path
):
    """`rlhf demo`'s SFT stages over two DDP processes train on the recipe's rows per step and
    compute the losses one process does (DDP's average instead of a sum would halve the update)."""
    from rlhf.demo import sft

    common = [f"model.path={tiny_model_dir}", f"data.path={tiny_dataset_dir}", "run.steps=2"]
    common += ["optim.micro_batch_size=4", "optim.warmup_steps=0"]
    for processes in (1, 2):
        out = f"run.output_dir={tmp_path / str(processes)}"
        sft(str(RECIPES / "tiny_sft.yaml"), *common, out, processes=processes, threads=1)
    one, two = metrics(tmp_path / "1"), metrics(tmp_path / "2")
    assert [m["tokens"] for m in two] == [m["tokens"] for m in one]
    for key in ("loss", "grad_norm"):
        assert [m[key] for m in two] == pytest.approx([m[key] for m in one], rel=1e-4), key
    final = [weights(tmp_path / n / "final") for n in ("2", "1")]
    assert_same_update(weights(Path(tiny_model_dir)), *final)

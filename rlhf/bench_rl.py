"""`rlhf bench rl`: whether the demo's RL gains hold, over rollout seeds and unseen speakers.

One run of the demo's first half (data, tiny model, SFT), then from that one SFT policy:

- the demo's GRPO recipe once per ``--seeds`` entry (``run.seed``: the prompts' order and every
  sampled token), each checkpoint evaluated on the held-out split, whose speakers never speak in
  training, with every listening ablation (silence, noise, shuffle);
- the transcription recipe (``tiny_grpo_asr.yaml``, WER reward): WER before and after;
- the spoken-answer recipe (``tiny_grpo_spoken.yaml``): TA4 format and audio-code length before
  and after;
- PPO stage 1 (``step_audio2_ppo_think.yaml``'s tiny example, the think-length reward alone):
  how often the think budget is kept in the first and last steps, and held-out accuracy and think
  length before and after.

Prints the mean and range over seeds and writes everything to ``OUT/bench_rl.json``. The README's
"Measured" figures come from this command; the demo is one seed of it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rich.table import Table

from rlhf.demo import console, evaluate, prepare, recipe, rlhf
from rlhf.evaluate import ABLATIONS, DIMENSIONS, SPOKEN, TRANSCRIBE
from rlhf.metrics import read_metrics

# The tiny example in step_audio2_ppo_think.yaml: a 15-word budget for a policy whose SFT targets
# think 5-40 words, so that the reward has something to change.
PPO_THINK_TINY = (
    "model.dtype=float32",
    "model.gradient_checkpointing=false",
    "rollout.sampling.max_new_tokens=96",
    "optim.lr=1e-4",
    "algorithm.ppo.critic_lr=1e-3",
    "run.steps=40",
    "rewards=[{name: think_length, max_words: 15}]",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/bench_rl"), help="run folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="GRPO seeds")
    parser.add_argument("--num-clips", type=int, default=1200, help="training clips")
    parser.add_argument("--test-clips", type=int, default=300, help="held-out clips")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (as the demo)")
    parser.add_argument(
        "--skip",
        nargs="*",
        choices=("asr", "spoken", "ppo"),
        default=[],
        help="recipes to leave out",
    )


def accuracies(report: dict) -> dict[str, float]:
    """Per-dimension and mean accuracy of one eval JSON, and the mean under each ablation."""
    figures = {dim: report["paralinguistic"][dim] for dim in DIMENSIONS}
    figures["mean"] = report["accuracy_mean"]
    for name, ablated in (report.get("ablations") or {}).items():
        figures[name] = ablated["accuracy_mean"]
    return figures


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def over_seeds(sft: dict[str, float], seeds: list[dict[str, float]]) -> dict:
    """Each figure's mean and range over the seeds' GRPO checkpoints, and the gain in mean
    accuracy over the SFT start (mean, worst and best seed)."""
    return {
        "grpo": {key: spread([seed[key] for seed in seeds]) for key in sft},
        "gain": spread([seed["mean"] - sft["mean"] for seed in seeds]),
    }


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)  # one thread: the same figures on a loaded machine
    out: Path = args.out
    dataset, sft = prepare(out, num_clips=args.num_clips, test_clips=args.test_clips)
    sft_report = evaluate(out, "sft", sft, dataset, ablate=ABLATIONS)
    results: dict = {"sft": accuracies(sft_report), "seeds": {}}

    for seed in args.seeds:
        run_dir = out / f"grpo_seed{seed}"
        rlhf(
            "train",
            recipe("tiny_grpo.yaml"),
            f"model.path={sft}",
            f"data.path={dataset}",
            f"run.output_dir={run_dir}",
            f"run.seed={seed}",
        )
        report = evaluate(out, f"grpo_seed{seed}", run_dir / "final", dataset, ablate=ABLATIONS)
        results["seeds"][seed] = accuracies(report)

    results.update(over_seeds(results["sft"], list(results["seeds"].values())))

    for name, tasks, recipe_name in (
        ("asr", TRANSCRIBE, "tiny_grpo_asr.yaml"),
        ("spoken", SPOKEN, "tiny_grpo_spoken.yaml"),
    ):
        if name in args.skip:
            continue
        run_dir = out / f"grpo_{name}"
        rlhf(
            "train",
            recipe(recipe_name),
            f"model.path={sft}",
            f"data.path={dataset}",
            f"run.output_dir={run_dir}",
        )
        after = evaluate(out, f"grpo_{name}", run_dir / "final", dataset, tasks=(tasks,))
        results[name] = {"sft": sft_report[name], "grpo": after[name]}

    if "ppo" not in args.skip:
        results["ppo_think"] = ppo_think(out, sft, dataset)

    (out / "bench_rl.json").write_text(json.dumps(results, indent=2))
    console.print(table(results))
    console.print(f"figures in {out / 'bench_rl.json'}")
    return 0


def ppo_think(out: Path, sft: Path, dataset: str) -> dict:
    """PPO stage 1 on the SFT policy: the think-length reward's mean (the share of rollouts within
    budget) over the first and the last 10 steps, and the held-out questions before and after."""
    run_dir = out / "ppo_think"
    rlhf(
        "train",
        recipe("step_audio2_ppo_think.yaml"),
        f"model.path={sft}",
        f"data.path={dataset}",
        f"run.output_dir={run_dir}",
        *PPO_THINK_TINY,
    )
    within = [step["reward/think_length/mean"] for step in read_metrics(run_dir)]
    figures: dict = {
        "within_budget": {
            "first": statistics.fmean(within[:10]),
            "last": statistics.fmean(within[-10:]),
        }
    }
    for name, model in (("sft", sft), ("ppo", run_dir / "final")):
        report = evaluate(
            out, f"{name}_questions", model, dataset, ablate=(), tasks=tuple(DIMENSIONS)
        )
        figures[name] = {**accuracies(report), "think_words": report["think_words_mean"]}
    return figures


def table(results: dict) -> Table:
    """SFT against GRPO (mean [min, max] over seeds) on the held-out split."""
    seeds = len(results["seeds"])
    view = Table(title=f"held-out, unseen speakers: SFT → GRPO over {seeds} seeds")
    for column in ("accuracy", "SFT", "GRPO mean [min, max]"):
        view.add_column(column, justify="left" if column == "accuracy" else "right")
    for key in results["sft"]:
        grpo = results["grpo"][key]
        label = key if key in (*DIMENSIONS, "mean") else f"mean, audio → {key}"
        view.add_row(
            label,
            f"{results['sft'][key]:.3f}",
            f"{grpo['mean']:.3f} [{grpo['min']:.3f}, {grpo['max']:.3f}]",
        )
    gain = results["gain"]
    view.add_row(
        "gain in mean", "", f"{gain['mean']:+.3f} [{gain['min']:+.3f}, {gain['max']:+.3f}]"
    )
    return view

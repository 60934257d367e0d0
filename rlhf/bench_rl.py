"""`rlhf bench rl`: whether the demo's RL gains hold, over rollout seeds and unseen speakers.

One run of the demo's first half (data, tiny model, SFT), then from that one SFT policy:

- the demo's GRPO recipe once per ``--seeds`` entry (``run.seed``: the prompts' order and every
  sampled token), each checkpoint evaluated on the held-out split, whose speakers never speak in
  training, with every listening ablation (silence, noise, shuffle);
- the transcription recipe (``tiny_grpo_asr.yaml``, WER reward): WER before and after;
- the speaking stage (``tiny_sft_speak.yaml``: more SFT on the spoken rows) and, from the policy
  it makes, the spoken-answer recipe (``tiny_grpo_spoken.yaml``): TA4 format and audio-code length
  after each SFT stage and after GRPO;
- PPO stage 1 (``step_audio2_ppo_think.yaml``'s tiny example: the think-length reward with the
  answer's accuracy): how often the think budget is kept in the first and last steps, and
  held-out accuracy and think length before and after.

After SFT these runs are independent: they run ``--jobs`` at a time, each a process of its own
whose output goes to ``OUT/{run}.log``. Prints the mean and range over seeds and writes everything
to ``OUT/bench_rl.json``. The README's "Measured" figures come from this command; the demo is one
seed of it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from rich.table import Table

from rlhf.demo import Job, console, eval_argv, prepare, recipe, run_jobs, sft_processes
from rlhf.evaluate import ABLATIONS, DIMENSIONS, SPOKEN, TRANSCRIBE
from rlhf.metrics import read_metrics

# The tiny example in step_audio2_ppo_think.yaml, on the paralinguistic questions: a 20-word budget
# for a policy whose SFT targets think 5-40 words, so that the length reward has something to
# change, and the answer's accuracy beside it. With the length reward alone the tiny policy cut its
# reasoning to 3-5 words and held-out accuracy fell (0.634 -> 0.448 at 15 words, 0.491 at 20).
PPO_THINK_TINY = (
    "model.dtype=float32",
    "model.gradient_checkpointing=false",
    "rollout.sampling.max_new_tokens=96",
    "optim.lr=1e-4",
    "algorithm.ppo.critic_lr=1e-3",
    "run.steps=40",
    "data.tasks=[gender,pitch,speed]",
    "rewards=[{name: think_length, max_words: 20}, {name: paralinguistic}]",
)
# The recipes run once besides GRPO: (name, eval task, recipe, the SFT stage they start from:
# None for the demo's SFT policy). The spoken recipe needs a policy whose answers are well-formed
# TA4, which the speaking stage makes; the questions' GRPO starts from the demo's SFT, since from
# the speaking stage it gained too little (see tiny_sft_speak.yaml).
RECIPES_AFTER_SFT = (
    ("asr", TRANSCRIBE, "tiny_grpo_asr.yaml", None),
    ("spoken", SPOKEN, "tiny_grpo_spoken.yaml", ("speak", "tiny_sft_speak.yaml")),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/bench_rl"), help="run folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="GRPO seeds")
    parser.add_argument("--num-clips", type=int, default=1200, help="training clips")
    parser.add_argument("--test-clips", type=int, default=300, help="held-out clips")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (as the demo)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="runs at once after SFT, each a process of --threads threads (default: 2 on a "
        "machine with 2 cores or more)",
    )
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


def jobs(out: Path, sft: Path, dataset: str, seeds: list[int], skip: list[str]) -> list[Job]:
    """Every run that starts from the SFT policy, with its evaluations, as independent jobs. Run
    ``name`` trains into ``out/name`` and is evaluated into ``out/eval_{name}.json``."""

    def train(
        name: str, recipe_name: str, *overrides: str, start: Path = sft, command: str = "train"
    ) -> list[str]:
        paths = [f"model.path={start}", f"data.path={dataset}", f"run.output_dir={out / name}"]
        return [command, recipe(recipe_name), *paths, *overrides]

    def evaluate(name: str, model: Path, ablate=ABLATIONS, tasks=()) -> list[str]:
        return eval_argv(out / f"eval_{name}.json", model, dataset, ablate, tasks)

    todo = [Job("eval_sft", [evaluate("sft", sft)])]
    for seed in seeds:
        name = f"grpo_seed{seed}"
        run = train(name, "tiny_grpo.yaml", f"run.seed={seed}")
        todo.append(Job(name, [run, evaluate(name, out / name / "final")]))
    for task_name, tasks, recipe_name, stage in RECIPES_AFTER_SFT:
        if task_name not in skip:
            name, start, commands = f"grpo_{task_name}", sft, []
            if stage:  # the SFT stage first, evaluated on every task
                stage_name, stage_recipe = stage
                start = out / stage_name / "final"
                commands += [
                    train(stage_name, stage_recipe, command="sft"),
                    evaluate(stage_name, start, ()),
                ]
            after = evaluate(name, out / name / "final", (), (tasks,))
            todo.append(Job(name, [*commands, train(name, recipe_name, start=start), after]))
    if "ppo" not in skip:
        run = train("ppo_think", "step_audio2_ppo_think.yaml", *PPO_THINK_TINY)
        questions = [
            evaluate(f"{name}_questions", model, (), tuple(DIMENSIONS))
            for name, model in (("sft", sft), ("ppo", out / "ppo_think" / "final"))
        ]
        todo.append(Job("ppo_think", [run, *questions]))
    return todo


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)  # one thread: the same figures on a loaded machine
    out: Path = args.out
    dataset, sft = prepare(
        out,
        num_clips=args.num_clips,
        test_clips=args.test_clips,
        processes=sft_processes(),  # as the demo
        threads=args.threads,
    )
    run_jobs(jobs(out, sft, dataset, args.seeds, args.skip), out, args.jobs, args.threads)

    def report(name: str) -> dict:
        return json.loads((out / f"eval_{name}.json").read_text())

    sft_report = report("sft")
    results: dict = {"sft": accuracies(sft_report), "seeds": {}}
    for seed in args.seeds:
        results["seeds"][seed] = accuracies(report(f"grpo_seed{seed}"))
    results.update(over_seeds(results["sft"], list(results["seeds"].values())))
    for name, _, _, stage in RECIPES_AFTER_SFT:
        if name not in args.skip:
            results[name] = {"sft": sft_report[name], "grpo": report(f"grpo_{name}")[name]}
            if stage:
                stage_report = report(stage[0])
                results[name][stage[0]] = {
                    name: stage_report[name],
                    **accuracies(stage_report),
                    "format_ok": stage_report["format_ok"],
                    "aloud": stage_report["aloud"],
                }
    if "ppo" not in args.skip:
        within = [step["reward/think_length/mean"] for step in read_metrics(out / "ppo_think")]
        results["ppo_think"] = {
            "within_budget": {
                "first": statistics.fmean(within[:10]),
                "last": statistics.fmean(within[-10:]),
            },
        }
        for name in ("sft", "ppo"):
            questions = report(f"{name}_questions")
            results["ppo_think"][name] = {
                **accuracies(questions),
                "think_words": questions["think_words_mean"],
            }

    (out / "bench_rl.json").write_text(json.dumps(results, indent=2))
    console.print(table(results))
    console.print(f"figures in {out / 'bench_rl.json'}")
    return 0


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

"""`rlhf demo [--out DIR] [--arch A]`: the whole toolkit on a laptop CPU, in minutes.

Synthetic speech → tiny model (Step-Audio 2 by default; ``--arch qwen2-audio``, ``qwen2.5-omni``) →
SFT in two stages on a small set, the clips of 8 of the 24 training speakers (learn to hear: short
answers to the paralinguistic questions; then reasoning, transcripts and spoken answers) →
evaluation → GRPO on labels only, on every training speaker → evaluation on speakers never heard
in training → plot. SFT on few speakers, RL on many, is what leaves RL something to learn: with
every speaker in SFT the tiny policy starts GRPO at its ceiling. Each stage is the `rlhf` command
a user would type (printed before it runs), so the demo doubles as a worked example of the
command line. On a CPU machine the SFT stages share each step over two single-threaded processes
(``accelerate launch``, DDP); GRPO runs in this process beside the SFT evaluation in another. The
recipes are the same for every family: only ``model.path`` changes, and for a model that answers
in text only, SFT leaves out the spoken-reply rows. ``rlhf bench rl`` runs the same stages over
several GRPO seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
console = Console()


def show(command: str) -> None:
    """Print ``command`` as typed: escaped, since ``data.tasks=[a,b]`` reads as markup to rich."""
    console.print(f"\n[bold cyan]$ {escape(command)}[/]")


def rlhf(*argv: str) -> None:
    """Run ``rlhf ARGV`` in this process, printed first as a user would type it."""
    from rlhf.cli import main

    show(f"rlhf {shlex.join(argv)}")
    code = main(list(argv))
    if code:
        raise SystemExit(f"rlhf {argv[0]} failed with exit code {code}")


def sft(path: str, *overrides: str, processes: int, threads: int) -> None:
    """``rlhf sft PATH OVERRIDES``: in this process, or data parallel over ``processes``
    processes of ``threads`` threads (``accelerate launch``, torch DDP over gloo) that share
    each step's rows, printed as a user would type it. Two single-threaded processes use both
    cores of a small machine without the stalls of two threads in one process (see ``run``),
    and a third process there slows them evenly."""
    if processes == 1:
        rlhf("sft", path, *overrides)
        return
    from rlhf.config import SFTConfig, load_config
    from rlhf.distributed import free_port

    rows = load_config(SFTConfig, path, overrides).optim.micro_batch_size
    if rows % processes:
        raise SystemExit(f"{path}: {rows} rows per step do not split over {processes} processes")
    launch = ["--multi_gpu", "--num_processes", str(processes), "--mixed_precision", "no"]
    command = ["-m", "rlhf.cli", "sft", path, *overrides, "run.distributed=ddp"]
    command.append(f"optim.micro_batch_size={rows // processes}")  # the recipe's rows per step
    show(f"accelerate launch {shlex.join(launch + command)}")
    unasked = ("--num_machines", "1", "--dynamo_backend", "no")  # else accelerate asks or warns
    port = ("--main_process_port", str(free_port()))
    launcher = [sys.executable, "-m", "accelerate.commands.launch", *launch, *unasked, *port]
    if code := subprocess.run([*launcher, *command], env=threaded_env(threads)).returncode:
        raise SystemExit(f"rlhf sft failed with exit code {code}")


def recipe(name: str) -> str:
    path = RECIPES / name
    if not path.exists():
        raise SystemExit(
            f"recipe {path} not found: run the demo from a source checkout (pip install -e .)"
        )
    return str(path)


def compare(before: dict, after: dict) -> Table:
    """The held-out figures of two eval JSONs side by side: accuracy (also with the audio
    ablated, when evaluated so), transcription, and the shape and length of spoken answers."""
    speakers = before.get("speakers") or {}
    title = "held-out test split: SFT → GRPO"
    if speakers.get("unseen") is not None:
        title += f" ({speakers['unseen']} of {speakers['n']} speakers unseen in training)"
    table = Table(title=title)
    for column in ("metric", "SFT", "GRPO", "change"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    rows = [(f"accuracy {dim}", ("paralinguistic", dim)) for dim in before["paralinguistic"]]
    rows.append(("accuracy mean", ("accuracy_mean",)))
    for name, figures in (before.get("ablations") or {}).items():
        rows.append((f"  {name}", ("ablations", name, "accuracy_mean")))
        if "donor" in figures:
            rows.append((f"  {name} (heard)", ("ablations", name, "donor", "accuracy_mean")))
    rows += [
        ("WER", ("asr", "wer")),
        ("CER", ("asr", "cer")),
        ("think words", ("think_words_mean",)),
        ("format ok", ("format_ok",)),
        ("text questions answered aloud", ("aloud",)),
        ("spoken TA4 format ok", ("spoken", "ta4_ok")),
        ("spoken audio codes", ("spoken", "audio_codes_mean")),
    ]
    for label, keys in rows:
        a, b = _get(before, keys), _get(after, keys)
        if a is None or b is None:
            continue
        table.add_row(label, f"{a:.3f}", f"{b:.3f}", f"{b - a:+.3f}")
    return table


def _get(report: dict, keys: tuple[str, ...]) -> float | None:
    value = report
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder")
    parser.add_argument(
        "--arch",
        choices=("step-audio-2", "qwen2-audio", "qwen2.5-omni"),
        default="step-audio-2",
        help="model family of the tiny policy (default step-audio-2)",
    )
    parser.add_argument("--num-clips", type=int, default=1200, help="training clips")
    parser.add_argument("--test-clips", type=int, default=300, help="held-out clips")
    parser.add_argument("--rl-steps", type=int, default=None, help="override the GRPO steps")
    parser.add_argument(
        "--sft-steps",
        type=int,
        default=None,
        help="override the steps of the reasoning SFT stage (tiny_sft.yaml)",
    )
    parser.add_argument(
        "--sft-processes",
        type=int,
        default=None,
        help="processes that share each SFT step (default: 2 on a CPU machine with 2 cores or "
        "more, else 1)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: not slowed by other processes on a small machine, "
        "and the same figures on every run)",
    )


def sft_processes() -> int:
    """Two data-parallel SFT processes where the demo runs on CPU cores, one on a GPU."""
    import torch

    return 1 if torch.cuda.is_available() else min(2, os.cpu_count() or 1)


def prepare(
    out: Path,
    *,
    arch: str = "step-audio-2",
    num_clips: int = 1200,
    test_clips: int = 300,
    sft_steps: int | None = None,
    processes: int = 1,
    threads: int = 1,
) -> tuple[str, Path]:
    """The demo's first half: data, a tiny ``arch`` model and its two SFT stages (learn to hear,
    then reason), each over ``processes`` processes; returns the dataset folder and the SFT
    checkpoint."""
    data, tiny, listen, tuned = out / "data", out / "tiny", out / "listen", out / "sft"
    dataset = str(data / "data")
    rlhf("make-data", str(data), "--num-clips", str(num_clips), "--test-clips", str(test_clips))
    speaks = arch == "step-audio-2"  # the one family with spoken (TA4) answers
    rlhf("make-tiny", str(tiny), "--arch", arch, *(["--audio-codes", "64"] * speaks))
    sft(
        recipe("tiny_sft_listen.yaml"),
        f"model.path={tiny}",
        f"data.path={dataset}",
        f"run.output_dir={listen}",
        processes=processes,
        threads=threads,
    )
    overrides = [
        f"model.path={listen / 'final'}",
        f"data.path={dataset}",
        f"run.output_dir={tuned}",
    ]
    if not speaks:
        overrides += ["train_on=text", "data.tasks=[transcribe,gender,pitch,speed]"]
    if sft_steps:
        overrides.append(f"run.steps={sft_steps}")
    sft(recipe("tiny_sft.yaml"), *overrides, processes=processes, threads=threads)
    return dataset, tuned / "final"


def eval_argv(
    report: Path,
    model: Path,
    dataset: str,
    ablate: tuple[str, ...] = ("silence",),
    tasks: tuple[str, ...] = (),
) -> list[str]:
    """``rlhf eval`` of ``model`` on the held-out split into the JSON ``report``."""
    argv = ["eval", "--model", str(model), "--data", dataset, "--batch-size", "64"]
    argv += ["--json", str(report)]
    if ablate:
        argv += ["--ablate", *ablate]
    if tasks:
        argv += ["--tasks", *tasks]
    return argv


def evaluate(
    out: Path,
    name: str,
    model: Path,
    dataset: str,
    *,
    ablate: tuple[str, ...] = ("silence",),
    tasks: tuple[str, ...] = (),
) -> dict:
    """``rlhf eval`` of ``model`` into ``out/eval_{name}.json``; returns the report."""
    report = out / f"eval_{name}.json"
    rlhf(*eval_argv(report, model, dataset, ablate, tasks))
    return json.loads(report.read_text())


def start(argv: list[str], log: IO, threads: int) -> subprocess.Popen:
    """``rlhf ARGV`` in a process of its own with ``threads`` torch threads, its output into
    ``log``. Single-threaded processes never wait on each other, so two of them use both cores
    of a small machine and a third process there slows them without stalling them."""
    env = {**threaded_env(threads), "COLUMNS": "100"}
    return subprocess.Popen(
        [sys.executable, "-m", "rlhf.cli", *argv], stdout=log, stderr=subprocess.STDOUT, env=env
    )


def threaded_env(threads: int) -> dict[str, str]:
    """This process's environment for a child process of ``threads`` torch threads."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads)}


class BackgroundEval:
    """``rlhf eval`` in a process of its own while this process trains: the second core of a
    small machine does the SFT evaluation during GRPO. Its output goes to ``out/eval_{name}.log``
    and is printed by ``report()``."""

    def __init__(self, out: Path, name: str, model: Path, dataset: str, threads: int):
        self.report_path, self.log = out / f"eval_{name}.json", out / f"eval_{name}.log"
        argv = eval_argv(self.report_path, model, dataset)
        show(f"rlhf {shlex.join(argv)} > {self.log} &")
        with self.log.open("w") as log:
            self.process = start(argv, log, threads)

    def report(self) -> dict:
        if self.process.wait():
            raise SystemExit(f"rlhf eval failed (exit code {self.process.returncode}): {self.log}")
        console.print(self.log.read_text())
        return json.loads(self.report_path.read_text())


@dataclass
class Job:
    """``rlhf`` commands to run one after another, logged to ``{name}.log``."""

    name: str
    commands: list[list[str]]


def run_jobs(jobs: list[Job], out: Path, workers: int, threads: int) -> None:
    """Run ``jobs``, ``workers`` at a time, each command a process of ``threads`` threads (see
    ``start``); stops at the first that fails, naming its log."""

    def work(job: Job) -> None:
        log_path = out / f"{job.name}.log"
        with log_path.open("w") as log:
            for argv in job.commands:
                show(f"rlhf {shlex.join(argv)} >> {log_path}")
                log.write(f"$ rlhf {shlex.join(argv)}\n")
                log.flush()
                if code := start(argv, log, threads).wait():
                    raise SystemExit(f"rlhf {argv[0]} failed (exit code {code}): {log_path}")
        console.print(f"[green]{job.name} done[/]")

    with ThreadPoolExecutor(workers) as pool:
        for done in [pool.submit(work, job) for job in jobs]:
            done.result()


def run(args: argparse.Namespace) -> int:
    import torch

    # Threads of one process that wait for each other stall when another process holds a core
    # (SFT steps went from 0.5 s to 5-11 s), and results depend on the thread count through the
    # order of reductions: one thread is both robust and reproducible.
    torch.set_num_threads(args.threads)
    out: Path = args.out
    started = time.perf_counter()
    dataset, sft = prepare(
        out,
        arch=args.arch,
        num_clips=args.num_clips,
        test_clips=args.test_clips,
        sft_steps=args.sft_steps,
        processes=args.sft_processes or sft_processes(),
        threads=args.threads,
    )
    before = BackgroundEval(out, "sft", sft, dataset, args.threads)
    grpo = out / "grpo"
    overrides = [f"model.path={sft}", f"data.path={dataset}", f"run.output_dir={grpo}"]
    if args.rl_steps:
        overrides.append(f"run.steps={args.rl_steps}")
    rlhf("train", recipe("tiny_grpo.yaml"), *overrides)
    after = evaluate(out, "rl", grpo / "final", dataset)
    rlhf("plot", str(grpo), "--out", str(out / "curves.png"))

    console.print(compare(before.report(), after))
    minutes = (time.perf_counter() - started) / 60
    console.print(f"demo finished in {minutes:.1f} min; everything is in {out}/")
    return 0

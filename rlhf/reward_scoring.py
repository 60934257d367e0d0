"""`rlhf rewards score`: try reward functions on saved completions before training with them.

    rlhf rewards score --rewards SPEC.yaml --completions FILE.jsonl [--out SCORES.jsonl]

SPEC.yaml is a list of reward specs (``- {name: think_length, weight: 0.2, max_words: 60}``) or a
mapping with a ``rewards`` key. Each JSONL row holds ``completion`` (a string, or TRL's list of
messages) or ``completions`` (a list of them), optionally ``prompt``, and any dataset columns the
rewards read (``label``, ``task``, ...). Prints mean / std / applicable / errors per reward and
writes one JSON line of scores per completion.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rewards import RewardResult, RewardRunner, load_specs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    score = actions.add_parser("score", help="score completions from a JSONL file")
    score.add_argument("--rewards", required=True, type=Path, help="YAML list of reward specs")
    score.add_argument("--completions", required=True, type=Path, help="JSONL, one row per prompt")
    score.add_argument("--out", type=Path, help="per-sample scores (default: FILE.scores.jsonl)")
    score.add_argument("--batch-size", type=int, default=64, help="completions per runner call")
    score.add_argument("--combine", choices=("sum", "mean"), default="sum")


def run(args: argparse.Namespace) -> int:
    try:
        runner = RewardRunner(load_specs(args.rewards), combine=args.combine)
        samples = read_completions(args.completions)
    except (ValueError, TypeError) as e:
        print(f"rlhf rewards score: error: {e}", file=sys.stderr)
        return 2
    results = []
    for start in range(0, len(samples), max(1, args.batch_size)):
        batch = samples[start : start + args.batch_size]
        columns = sorted({key for s in batch for key in s["columns"]})
        kwargs = {key: [s["columns"].get(key) for s in batch] for key in columns}
        results.append(
            runner([s["prompt"] for s in batch], [s["completion"] for s in batch], **kwargs)
        )
    result = (
        RewardResult.concat(results)
        if results
        else RewardResult({k: [] for k in runner.keys}, [], {})
    )
    out = args.out or args.completions.with_suffix(".scores.jsonl")
    with open(out, "w") as f:
        for sample, scores, total in zip(samples, result.per_sample(), result.total, strict=True):
            row = {
                "line": sample["line"],
                "index": sample["index"],
                "rewards": scores,
                "total": total,
            }
            if "id" in sample["columns"]:
                row["id"] = sample["columns"]["id"]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    _print_table(result, len(samples), out)
    return 0


def read_completions(path: Path) -> list[dict[str, Any]]:
    """One sample per completion: ``{line, index, prompt, completion, columns}``."""
    samples = []
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        if "completion" in row:
            completions = [row.pop("completion")]
        elif isinstance(row.get("completions"), list):
            completions = row.pop("completions")
        else:
            raise ValueError(
                f"{path}:{number}: no 'completion' (or 'completions' list) in {sorted(row)}"
            )
        prompt = row.pop("prompt", None)
        for index, completion in enumerate(completions):
            if not isinstance(completion, (str, list)):
                raise ValueError(
                    f"{path}:{number}: completion {index} is {type(completion).__name__}, "
                    "expected a string or a list of messages"
                )
            samples.append(
                {
                    "line": number,
                    "index": index,
                    "prompt": prompt,
                    "completion": completion,
                    "columns": row,
                }
            )
    return samples


def _print_table(result: RewardResult, n: int, out: Path) -> None:
    table = Table(title=f"rewards over {n} completions")
    for header in ("reward", "mean", "std", "applicable", "errors"):
        table.add_column(header, justify="left" if header == "reward" else "right")

    def fmt(value: float | None) -> str:
        return "—" if value is None else f"{value:.4f}"

    for key, m in result.metrics.items():
        table.add_row(
            key, fmt(m["mean"]), fmt(m["std"]), f"{m['applicable']:.0%}", str(m["errors"])
        )
    present = [t for t in result.total if t is not None]
    mean = sum(present) / len(present) if present else None
    table.add_row(
        "total", fmt(mean), "", f"{len(present) / n:.0%}" if n else "0%", "", style="bold"
    )
    console = Console()
    console.print(table)
    for key, m in result.metrics.items():
        if m["first_error"]:
            console.print(f"[red]{escape(key)}[/red]: {escape(m['first_error'])}", highlight=False)
    console.print(f"scores written to {out}")

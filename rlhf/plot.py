"""`rlhf plot RUN_DIR`: the run's main curves, one PNG."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from rewards.errors import UserError
from rlhf.metrics import read_metrics

PREFERRED = (
    "reward_total/mean",
    "accuracy",
    "think_words/mean",
    "completion_length/mean",
    "kl",
    "approx_kl",
    "explained_variance",
    "entropy",
    "clip_fraction",
    "grad_norm",
    "loss",
    "value_loss",
)


def plot_run(run_dir: Path, out: Path | None = None, keys: list[str] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    available = {k for row in rows for k, v in row.items() if isinstance(v, (int, float))}
    keys = keys or [k for k in PREFERRED if k in available]
    keys += sorted(k for k in available if k.startswith("reward/") and k.endswith("/mean"))
    keys = list(dict.fromkeys(keys))
    if not keys:
        raise UserError(f"{run_dir}/metrics.jsonl has no numeric metrics to plot")
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path)
    parser.add_argument(
        "--out", type=Path, default=None, help="PNG path (default RUN_DIR/curves.png)"
    )
    parser.add_argument("--keys", nargs="*", default=None, help="metric names to draw")


def run(args: argparse.Namespace) -> int:
    print(plot_run(args.run_dir, args.out, args.keys))
    return 0

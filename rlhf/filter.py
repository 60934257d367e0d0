"""`rlhf filter RECIPE.yaml [key=value ...] --out DIR [--band 3 6] [--samples 8]`: difficulty filtering.

Step-Audio-R1 trains only on prompts that its starting policy solves sometimes: 3 to 6 correct of 8
samples. Prompts always failed teach nothing and made training collapse; prompts always solved
teach nothing either. This command samples ``--samples`` completions of every prompt with the
recipe's model, sampling settings and rewards (the local engine), counts the passes (total reward,
or one reward's score, above ``--threshold``), and keeps the prompts whose count lies in the band,
bounds included. It writes, atomically:

- ``DIR/data``: the dataset with the filtered split (other splits copied unchanged), for
  ``data.path=DIR/data``;
- ``DIR/pass_counts.json``: the histogram of pass counts and every prompt's count;
- ``DIR/pass_counts.png``: the histogram, the kept band shaded.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.progress import track

from rewards import RewardRunner, RewardSpec
from rlhf.config import RLConfig, load_config
from rlhf.preflight import check_model_path

if TYPE_CHECKING:  # torch, datasets and the model load in the functions that use them
    import datasets

    from rollouts.types import Rollout


def pass_counts(
    rollouts: list[Rollout], threshold: float = 0.5, reward: str | None = None
) -> dict[str, int]:
    """Passes per prompt id: samples whose total reward (or ``reward``'s score) is above
    ``threshold``; a missing score (None) is no pass."""
    counts: dict[str, int] = {}
    for r in rollouts:
        score = r.reward if reward is None else (r.rewards or {}).get(reward)
        counts[r.prompt_id] = counts.get(r.prompt_id, 0) + int(
            score is not None and score > threshold
        )
    return counts


def sample_pass_counts(
    config: RLConfig,
    dataset: datasets.Dataset,
    source: str,
    samples: int,
    threshold: float,
    reward: str | None,
    chunk: int = 64,
) -> list[int]:
    """Pass count of each row of ``dataset``, in order."""
    import torch

    from rlhf.data.loading import row_to_sample
    from rollouts.engine import LocalEngine, sample_seed
    from rollouts.policy import Policy
    from rollouts.types import SamplingParams

    device = "cuda" if torch.cuda.is_available() else "cpu"
    policy = Policy.from_pretrained(config.model.path, dtype=config.model.dtype, device=device)
    specs = [
        RewardSpec.from_dict(dict(entry), f"rewards[{i}]") for i, entry in enumerate(config.rewards)
    ]
    if not specs:
        raise ValueError("the recipe has no rewards: nothing decides which samples pass")
    runner = RewardRunner(specs)
    if reward is not None and reward not in runner.keys:
        raise ValueError(f"--reward {reward!r} is not one of the recipe's rewards: {runner.keys}")
    engine = LocalEngine(
        policy, runner, batch_size=config.rollout.batch_size, train_on=config.rollout.train_on
    )
    sampling = SamplingParams(
        **vars(config.rollout.sampling), seed=sample_seed(config.run.seed, "filter", 0)
    )
    counts: list[int] = []
    for start in track(range(0, len(dataset), chunk), description=f"sampling {samples} per prompt"):
        rows = range(start, min(start + chunk, len(dataset)))
        prompts = [
            row_to_sample(
                dataset[i], i, source, think=config.data.think, max_audio_s=config.data.max_audio_s
            )
            for i in rows
        ]
        by_id = pass_counts(engine.generate(prompts, samples, sampling), threshold, reward)
        counts += [by_id.get(p.id, 0) for p in prompts]
    return counts


def histogram(counts: list[int], samples: int) -> dict[str, int]:
    """``{"0": prompts with 0 passes, ..., str(samples): ...}``."""
    tally = Counter(counts)
    return {str(k): tally.get(k, 0) for k in range(samples + 1)}


def plot_histogram(hist: dict[str, int], band: tuple[int, int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    passes = [int(k) for k in hist]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.axvspan(band[0] - 0.5, band[1] + 0.5, color="tab:green", alpha=0.15, label="kept")
    ax.bar(passes, list(hist.values()), color="tab:blue")
    ax.set_xticks(passes)
    ax.set_xlabel(f"passes out of {passes[-1]} samples")
    ax.set_ylabel("prompts")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def filter_prompts(
    config: RLConfig,
    out: Path,
    band: tuple[int, int] = (3, 6),
    samples: int = 8,
    threshold: float = 0.5,
    reward: str | None = None,
) -> dict[str, Any]:
    """Sample, count, keep the band, write ``out``; returns the summary written to the JSON."""
    import datasets

    from rlhf.checkpoint import write_atomic
    from rlhf.data.loading import load_split

    low, high = band
    if not 0 <= low <= high <= samples:
        raise ValueError(f"--band {low} {high}: need 0 <= low <= high <= --samples ({samples})")
    data = config.data
    dataset = load_split(data)
    source = f"{data.path}:{data.split}"
    counts = sample_pass_counts(config, dataset, source, samples, threshold, reward)

    keep = [i for i, c in enumerate(counts) if low <= c <= high]
    ids = [str(row_id) for row_id in dataset["id"]] if "id" in dataset.column_names else None
    summary = {
        "source": source,
        "model": config.model.path,
        "samples": samples,
        "band": [low, high],
        "threshold": threshold,
        "reward": reward or "total",
        "prompts": len(counts),
        "kept": len(keep),
        "histogram": histogram(counts, samples),
        "counts": dict(zip(ids or map(str, range(len(counts))), counts)),
    }
    splits = {data.split: dataset.select(keep)}
    others = _other_splits(data.path, data.split)
    splits.update(others)

    def write(tmp: Path) -> None:
        datasets.DatasetDict(splits).save_to_disk(str(tmp / "data"))
        (tmp / "pass_counts.json").write_text(json.dumps(summary, indent=2) + "\n")
        title = f"{source}: kept {len(keep)} of {len(counts)} prompts ({low}-{high} of {samples})"
        plot_histogram(summary["histogram"], (low, high), tmp / "pass_counts.png", title)

    write_atomic(Path(out), write)
    return summary


def _other_splits(path: str, split: str) -> dict[str, datasets.Dataset]:
    """The dataset's other splits (a saved ``DatasetDict``), to carry over unfiltered."""
    import datasets

    try:
        splits = datasets.load_from_disk(str(_dataset_dict_root(Path(path))))
    except (FileNotFoundError, ValueError):
        return {}
    if not isinstance(splits, datasets.DatasetDict):
        return {}
    return {name: splits[name] for name in splits if name != split}


def _dataset_dict_root(path: Path) -> Path:
    return path / "data" if (path / "data" / "dataset_dict.json").is_file() else path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="RL recipe whose model, sampling, data and rewards are used")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    parser.add_argument(
        "--out", type=Path, required=True, help="folder to write data/ and the histogram to"
    )
    parser.add_argument(
        "--band",
        type=int,
        nargs=2,
        default=(3, 6),
        metavar=("LOW", "HIGH"),
        help="keep prompts with LOW..HIGH passes, inclusive (default 3 6, Step-Audio-R1's)",
    )
    parser.add_argument("--samples", type=int, default=8, help="completions per prompt (default 8)")
    parser.add_argument(
        "--threshold", type=float, default=0.5, help="a sample passes when its score is above this"
    )
    parser.add_argument(
        "--reward",
        default=None,
        help="judge passes by this reward's score (its name or alias) instead of the total",
    )


def run(args: argparse.Namespace) -> int:
    import rollouts  # noqa: F401  (registers the architecture and rollouts' rewards)

    config = load_config(RLConfig, args.recipe, args.overrides)
    check_model_path("model.path", config.model.path)
    summary = filter_prompts(
        config, args.out, tuple(args.band), args.samples, args.threshold, args.reward
    )
    print(f"pass counts ({summary['samples']} samples per prompt): {summary['histogram']}")
    print(
        f"kept {summary['kept']} of {summary['prompts']} prompts with "
        f"{summary['band'][0]}-{summary['band'][1]} passes; dataset {args.out / 'data'}"
    )
    return 0

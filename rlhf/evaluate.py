"""`rlhf eval --model DIR --data DIR`: greedy decoding on a held-out split, scored.

What a checkpoint can do before and after RL, in numbers: accuracy on each paralinguistic question
(gender, pitch, speed), WER / CER on transcription, how long it thinks, and how often its output
has the expected shape. Scoring reuses the reward functions (label matching, the text
normaliser, the format checks), so evaluation and training judge answers the same way.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jiwer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rewards import TextNormalizer
from rewards.format import ta4_format, think_format
from rewards.paralinguistic import LABELS, asserted_levels, paralinguistic
from rewards.text import count_words

if TYPE_CHECKING:
    from rollouts.types import PromptSample, Rollout

DIMENSIONS = {"gender": 2, "pitch": 2, "speed": 3}  # questions scored by label, with level counts
TRANSCRIBE = "transcribe"
SPOKEN = "spoken"


def evaluate(
    model_dir: str | Path,
    data_dir: str | Path,
    split: str = "test",
    max_samples: int | None = None,
    batch_size: int = 16,
    *,
    max_new_tokens: int = 256,
    think: bool = True,
    max_audio_s: float | None = 30.0,
    device: str = "cpu",
    dtype: str = "float32",
    progress: bool = True,
) -> dict[str, Any]:
    """Greedy completions of ``model_dir`` for the rows of ``data_dir``'s ``split``, scored.

    Greedy decoding without repetition penalty: the figures say what the policy itself prefers,
    reproducibly (Step-Audio 2's serving settings, top_p 0.9 and repetition_penalty 1.05, are
    ``SamplingParams``' defaults, for sampling). ``dtype`` is the dtype the weights load in;
    ``max_audio_s`` the longest clip a row may hold, as a recipe's ``data.max_audio_s``.

    Returns ``{"n", "paralinguistic": {dim: accuracy}, "asr": {"wer", "cer"},
    "think_words_mean", "format_ok", "counts", ...}``; a figure with no row to measure it is None.
    """
    from rlhf.data.loading import load_prompt_dataset, row_to_sample
    from rollouts.engine import LocalEngine
    from rollouts.policy import Policy
    from rollouts.types import SamplingParams

    started = time.perf_counter()
    dataset = load_prompt_dataset(data_dir, split)
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"{data_dir}:{split}: no rows to evaluate")
    source = f"{data_dir}:{split}"
    samples = [
        row_to_sample(row, i, source, think=think, max_audio_s=max_audio_s)
        for i, row in enumerate(dataset)
    ]

    policy = Policy.from_pretrained(model_dir, device=device, dtype=dtype)
    policy.model.eval()
    engine = LocalEngine(policy, batch_size=batch_size)
    greedy = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=max_new_tokens)
    rollouts: list[Rollout] = []
    columns = (
        TextColumn("[bold]eval[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("eval", total=len(samples))
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            rollouts += engine.generate(chunk, 1, greedy)
            bar.update(task, advance=len(chunk))

    results = score(samples, rollouts, policy.adapter.audio_pad_code)
    results["seconds"] = time.perf_counter() - started
    return results


def score(
    samples: list[PromptSample], rollouts: list[Rollout], audio_pad_code: int
) -> dict[str, Any]:
    """The evaluation figures of one rollout per sample (columns ``task`` and ``label``)."""
    tasks = [s.columns.get("task") for s in samples]
    labels = [s.columns.get("label") for s in samples]
    prompts = [s.messages for s in samples]
    texts = [r.text for r in rollouts]
    parsed = {
        "think": [r.think for r in rollouts],
        "answer": [r.answer for r in rollouts],
        "spoken_text": [r.spoken_text for r in rollouts],
        "audio_codes": [r.audio_codes for r in rollouts],
    }
    results: dict[str, Any] = {"n": len(samples)}

    correct = paralinguistic(prompts, texts, label=labels, task=tasks, **parsed)
    results["paralinguistic"] = {
        dim: _mean([c for c, t in zip(correct, tasks) if t == dim and c is not None])
        for dim in DIMENSIONS
    }
    # what the answers say, per question: shows a policy that always gives the same level
    results["predicted"] = {
        dim: dict(
            sorted(
                Counter(
                    _asserted(rollouts[i].answer, dim) for i, t in enumerate(tasks) if t == dim
                ).items()
            )
        )
        for dim in DIMENSIONS
    }

    normalize = TextNormalizer()
    rows = [i for i, t in enumerate(tasks) if t == TRANSCRIBE and normalize(labels[i] or "")]
    references = [normalize(labels[i]) for i in rows]
    hypotheses = [normalize(rollouts[i].answer) for i in rows]
    results["asr"] = {
        "wer": float(jiwer.wer(references, hypotheses)) if rows else None,
        "cer": float(jiwer.cer(references, hypotheses)) if rows else None,
    }

    results["think_words_mean"] = _mean([count_words(r.think or "") for r in rollouts])
    thought = think_format(prompts, texts, think_prefilled=True)
    spoken_ok = ta4_format(
        prompts, texts, audio_pad_code=audio_pad_code, spoken=[s.spoken for s in samples]
    )
    well_formed = [
        float(r.finish_reason == "stop" and t == 1.0 and s != 0.0)
        for r, t, s in zip(rollouts, thought, spoken_ok)
    ]
    results["format_ok"] = _mean(well_formed)
    results["format_ok_by_task"] = {
        task: _mean([ok for ok, t in zip(well_formed, tasks) if t == task])
        for task in sorted(set(map(str, tasks)))
    }

    spoken = [i for i, s in enumerate(samples) if s.spoken]
    results["spoken"] = {
        "exact": _mean(
            [float(normalize(rollouts[i].spoken_text) == normalize(labels[i])) for i in spoken]
        ),
        "wer": (
            float(
                jiwer.wer(
                    [normalize(labels[i]) for i in spoken],
                    [normalize(rollouts[i].spoken_text) for i in spoken],
                )
            )
            if spoken
            else None
        ),
        "audio_codes_mean": _mean([len(rollouts[i].audio_codes) for i in spoken]),
    }
    results["counts"] = dict(sorted(Counter(str(t) for t in tasks).items()))
    results["completion_tokens_mean"] = _mean([len(r.completion_ids) for r in rollouts])
    results["finished"] = _mean([float(r.finish_reason == "stop") for r in rollouts])
    return results


def _asserted(answer: str, dimension: str) -> str:
    """The one level ``answer`` names for ``dimension``, or "none" / "several"."""
    found = asserted_levels(answer, LABELS[dimension])
    return found.pop() if len(found) == 1 else ("none" if not found else "several")


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def print_table(results: dict[str, Any], console: Console | None = None, title: str = "") -> None:
    """The figures as a table, with the chance level of each paralinguistic question."""

    def show(value: float | None, digits: int = 3) -> str:
        return "—" if value is None else f"{value:.{digits}f}"

    counts = results.get("counts", {})
    table = Table(title=title or f"evaluation ({results['n']} prompts)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("chance", justify="right")
    table.add_column("rows", justify="right")
    for dim, levels in DIMENSIONS.items():
        accuracy = results["paralinguistic"][dim]
        table.add_row(
            f"{dim} accuracy", show(accuracy), f"{1 / levels:.3f}", str(counts.get(dim, 0))
        )
    rows = str(counts.get(TRANSCRIBE, 0))
    table.add_row("ASR WER", show(results["asr"]["wer"]), "", rows)
    table.add_row("ASR CER", show(results["asr"]["cer"]), "", rows)
    spoken = results.get("spoken", {})
    table.add_row("spoken exact", show(spoken.get("exact")), "", str(counts.get(SPOKEN, 0)))
    table.add_row("think words (mean)", show(results["think_words_mean"], 1), "", str(results["n"]))
    table.add_row("format ok", show(results["format_ok"]), "", str(results["n"]))
    (console or Console()).print(table)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint folder (from_pretrained)")
    parser.add_argument("--data", required=True, help="dataset folder (from rlhf make-data)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument("--max-samples", type=int, help="evaluate the first N rows only")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts decoded together")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--no-think", action="store_true", help="do not prefill <think>")
    parser.add_argument(
        "--max-audio-s",
        type=float,
        default=30.0,
        help="longest clip a row may hold, in seconds (0: no limit), as data.max_audio_s",
    )
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda when available, else cpu)"
    )
    parser.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16", "float16"),
        help="dtype the weights load in (default: the checkpoint's own, else float32)",
    )


def checkpoint_dtype(model_dir: str | Path) -> str:
    """The dtype a checkpoint's ``config.json`` records (``dtype`` / ``torch_dtype``), when it
    is a float dtype; float32 otherwise."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return "float32"
    recorded = config.get("dtype") or config.get("torch_dtype")
    return recorded if recorded in ("float32", "bfloat16", "float16") else "float32"


def run(args: argparse.Namespace) -> int:
    import torch

    from rlhf.preflight import check_model_path

    check_model_path("--model", args.model)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = evaluate(
        args.model,
        args.data,
        args.split,
        max_samples=args.max_samples,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        think=not args.no_think,
        max_audio_s=args.max_audio_s or None,
        device=device,
        dtype=args.dtype or checkpoint_dtype(args.model),
    )
    print_table(results, title=f"{args.model} on {args.data}:{args.split}")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {path}")
    return 0

"""`rlhf eval --model DIR --data DIR`: greedy decoding on a held-out split, scored.

What a checkpoint can do before and after RL, in numbers: accuracy on each paralinguistic question
(gender, pitch, speed), WER / CER on transcription, how long it thinks, and how often its output
has the expected shape (spoken answers: TA4 format and length in audio codes). Scoring reuses the
reward functions (label matching, the text normaliser, the format checks), so evaluation and
training judge answers the same way.

``--ablate silence noise shuffle`` is the listening check: the same rows again with each clip
replaced by silence or by noise of the same length and loudness, or by another row's clip (same
question). A policy that listens falls to chance under silence and noise, and under shuffle
answers the other row's label (scored both ways); one that keeps its accuracy without the audio
answers from something else (the prompt, the clip's length, priors).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jiwer
import numpy as np
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
ABLATIONS = ("silence", "noise", "shuffle")


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
    ablate: Sequence[str] = (),
    tasks: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Greedy completions of ``model_dir`` for the rows of ``data_dir``'s ``split``, scored.

    Greedy decoding without repetition penalty: the figures say what the policy itself prefers,
    reproducibly (Step-Audio 2's serving settings, top_p 0.9 and repetition_penalty 1.05, are
    ``SamplingParams``' defaults, for sampling). ``dtype`` is the dtype the weights load in;
    ``max_audio_s`` the longest clip a row may hold, as a recipe's ``data.max_audio_s``.
    ``ablate``: names from ``ABLATIONS``, each decoded and scored again on ablated audio (the
    paralinguistic and transcription rows). ``tasks``: only the rows of these tasks.

    Returns ``{"n", "paralinguistic": {dim: accuracy}, "accuracy_mean", "asr": {"wer", "cer"},
    "think_words_mean", "format_ok", "aloud", "spoken", "counts", "speakers", "ablations",
    ...}``; a figure with no row to measure it is None.
    """
    from rlhf.data.loading import load_prompt_dataset, row_to_sample
    from rollouts.engine import LocalEngine
    from rollouts.policy import Policy
    from rollouts.types import SamplingParams

    started = time.perf_counter()
    dataset = load_prompt_dataset(data_dir, split)
    if tasks:
        if "task" not in dataset.column_names:
            raise ValueError(f"{data_dir}:{split}: no `task` column to select tasks {list(tasks)}")
        wanted = set(tasks)
        dataset = dataset.filter(lambda task: task in wanted, input_columns="task")
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"{data_dir}:{split}: no rows to evaluate")
    unknown = sorted(set(ablate) - set(ABLATIONS))
    if unknown:
        raise ValueError(f"unknown ablation(s) {unknown}; choose from {list(ABLATIONS)}")
    source = f"{data_dir}:{split}"
    samples = [
        row_to_sample(row, i, source, think=think, max_audio_s=max_audio_s)
        for i, row in enumerate(dataset)
    ]

    policy = Policy.from_pretrained(model_dir, device=device, dtype=dtype)
    policy.model.eval()
    engine = LocalEngine(policy, batch_size=batch_size)
    greedy = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=max_new_tokens)
    pad = policy.adapter.audio_pad_code

    def decode(rows: list[PromptSample], label: str) -> list[Rollout]:
        rollouts: list[Rollout] = []
        columns = (TextColumn(f"[bold]{label}[/]"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, TimeElapsedColumn(), disable=not progress, transient=True) as bar:
            task = bar.add_task(label, total=len(rows))
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                rollouts += engine.generate(chunk, 1, greedy)
                bar.update(task, advance=len(chunk))
        return rollouts

    results = score(samples, decode(samples, "eval"), pad)
    results["speakers"] = speaker_counts(dataset, data_dir, split)
    results["ablations"] = {}
    # the headline figures come from the questions and transcripts: spoken rows (the longest
    # completions) are not decoded again
    answered = [s for s in samples if s.columns.get("task") in (*DIMENSIONS, TRANSCRIBE)]
    for name in ablate:
        ablated, donors = ablate_audio(answered, name)
        rollouts = decode(ablated, name)
        figures = _headline(score(ablated, rollouts, pad))
        if donors is not None:  # also scored against the labels of the clips actually heard
            heard = [_relabel(s, answered[d]) for s, d in zip(ablated, donors, strict=True)]
            figures["donor"] = _headline(score(heard, rollouts, pad))
        results["ablations"][name] = figures
    results["seconds"] = time.perf_counter() - started
    return results


def ablate_audio(
    samples: list[PromptSample], ablation: str, seed: int = 0
) -> tuple[list[PromptSample], list[int] | None]:
    """``samples`` with their clips ablated, and for ``shuffle`` the row each clip came from.

    ``silence``: zeros of the clip's length. ``noise``: Gaussian noise of the clip's length and
    RMS. ``shuffle``: the clip of another row asking the same question (a random derangement
    within each task; a task with a single row keeps its clip).
    """
    rng = np.random.default_rng(seed)
    if ablation == "silence":
        return [_with_audio(s, [np.zeros_like(a) for a in s.audio]) for s in samples], None
    if ablation == "noise":
        return [
            _with_audio(
                s,
                [
                    (rng.standard_normal(len(a)) * np.sqrt(np.mean(np.square(a)))).astype(a.dtype)
                    for a in s.audio
                ],
            )
            for s in samples
        ], None
    if ablation != "shuffle":
        raise ValueError(f"unknown ablation {ablation!r}; choose from {list(ABLATIONS)}")
    donors = list(range(len(samples)))
    for task in sorted({str(s.columns.get("task")) for s in samples}):
        rows = rng.permutation(
            [i for i, s in enumerate(samples) if str(s.columns.get("task")) == task]
        )
        for i, row in enumerate(rows):  # each row hears the next one's clip: nobody its own
            donors[row] = int(rows[(i + 1) % len(rows)])
    return [_with_audio(s, samples[d].audio) for s, d in zip(samples, donors, strict=True)], donors


def _with_audio(sample: PromptSample, audio: list[np.ndarray]) -> PromptSample:
    return dataclasses.replace(sample, audio=list(audio))


def _relabel(sample: PromptSample, donor: PromptSample) -> PromptSample:
    return dataclasses.replace(
        sample, columns={**sample.columns, "label": donor.columns.get("label")}
    )


def _headline(results: dict[str, Any]) -> dict[str, Any]:
    """The figures an ablation is compared on."""
    keys = ("paralinguistic", "accuracy_mean", "asr")
    return {key: results[key] for key in keys}


def speaker_counts(dataset, data_dir: str | Path, split: str) -> dict[str, int | None] | None:
    """How many speakers ``dataset`` (a ``speaker`` column) holds, and how many of them never
    speak in the ``train`` split of ``data_dir`` (None without one); None without the column."""
    from rlhf.data.loading import load_prompt_dataset

    if "speaker" not in dataset.column_names:
        return None
    speakers = set(dataset["speaker"])
    unseen = None
    if split != "train":
        try:
            train = load_prompt_dataset(data_dir, "train")
        except KeyError:
            train = None
        if train is not None and "speaker" in train.column_names:
            unseen = len(speakers - set(train["speaker"]))
    return {"n": len(speakers), "unseen": unseen}


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
    scored = [v for v in results["paralinguistic"].values() if v is not None]
    results["accuracy_mean"] = _mean(scored)
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
    # text questions answered in speech: what training on spoken answers can teach a policy
    results["aloud"] = _mean(
        [float(ok is not None) for ok, s in zip(spoken_ok, samples) if not s.spoken]
    )
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
        "ta4_ok": _mean([float(spoken_ok[i] == 1.0) for i in spoken]),
        "audio_codes_mean": _mean([len(rollouts[i].audio_codes) for i in spoken]),
        "target_audio_codes_mean": _mean(
            [
                len(codes)
                for i in spoken
                if (codes := samples[i].columns.get("target_audio_codes")) is not None
            ]
        ),
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
    """The figures as a table, with the chance level of each paralinguistic question and, after
    ``--ablate``, the same figures with the audio ablated ("shuffle (heard)": scored against the
    labels of the clip the policy heard instead of its own)."""

    def show(value: float | None, digits: int = 3) -> str:
        return "—" if value is None else f"{value:.{digits}f}"

    counts = results.get("counts", {})
    ablations = results.get("ablations") or {}
    speakers = results.get("speakers") or {}
    table = Table(title=title or f"evaluation ({results['n']} prompts)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    columns: list[tuple[str, dict[str, Any]]] = []
    for name, figures in ablations.items():
        columns.append((name, figures))
        if "donor" in figures:
            columns.append((f"{name} (heard)", figures["donor"]))
    for name, _ in columns:
        table.add_column(name, justify="right")
    table.add_column("chance", justify="right")
    table.add_column("rows", justify="right")

    def ablated(*keys: str) -> list[str]:
        return [show(_get(figures, keys)) for _, figures in columns]

    def blank() -> list[str]:
        return [""] * len(columns)

    for dim, levels in DIMENSIONS.items():
        accuracy = results["paralinguistic"][dim]
        table.add_row(
            f"{dim} accuracy",
            show(accuracy),
            *ablated("paralinguistic", dim),
            f"{1 / levels:.3f}",
            str(counts.get(dim, 0)),
        )
    chance = sum(1 / levels for levels in DIMENSIONS.values()) / len(DIMENSIONS)
    table.add_row(
        "accuracy mean",
        show(results.get("accuracy_mean")),
        *ablated("accuracy_mean"),
        f"{chance:.3f}",
        "",
    )
    rows = str(counts.get(TRANSCRIBE, 0))
    table.add_row("ASR WER", show(results["asr"]["wer"]), *ablated("asr", "wer"), "", rows)
    table.add_row("ASR CER", show(results["asr"]["cer"]), *blank(), "", rows)
    spoken = results.get("spoken", {})
    n_spoken = str(counts.get(SPOKEN, 0))
    table.add_row("spoken exact", show(spoken.get("exact")), *blank(), "", n_spoken)
    table.add_row("spoken TA4 format ok", show(spoken.get("ta4_ok")), *blank(), "", n_spoken)
    target = spoken.get("target_audio_codes_mean")
    label = "spoken audio codes (mean)" + (f", target {target:.0f}" if target else "")
    table.add_row(label, show(spoken.get("audio_codes_mean"), 1), *blank(), "", n_spoken)
    table.add_row(
        "think words (mean)",
        show(results["think_words_mean"], 1),
        *blank(),
        "",
        str(results["n"]),
    )
    table.add_row("format ok", show(results["format_ok"]), *blank(), "", str(results["n"]))
    n_text = str(results["n"] - counts.get(SPOKEN, 0))
    table.add_row("text questions answered aloud", show(results.get("aloud")), *blank(), "", n_text)
    if speakers.get("unseen") is not None:
        unseen = f"{speakers['unseen']} of {speakers['n']}"
        table.add_row("speakers unseen in training", unseen, *blank(), "", "")
    (console or Console()).print(table)


def _get(report: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    value: Any = report
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint folder (from_pretrained)")
    parser.add_argument("--data", required=True, help="dataset folder (from rlhf make-data)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument("--max-samples", type=int, help="evaluate the first N rows only")
    parser.add_argument(
        "--tasks", nargs="+", help="evaluate only the rows of these tasks (the `task` column)"
    )
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
    parser.add_argument(
        "--ablate",
        nargs="+",
        default=[],
        choices=ABLATIONS,
        metavar="{" + ",".join(ABLATIONS) + "}",
        help="listening check: score again with each clip replaced by silence or noise of its "
        "length, or by another row's clip (shuffle; also scored on that clip's labels)",
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
        ablate=args.ablate,
        tasks=args.tasks,
    )
    print_table(results, title=f"{args.model} on {args.data}:{args.split}")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {path}")
    return 0

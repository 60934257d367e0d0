"""`rlhf bench`: the speed and memory figures quoted in the README, reproducible.

- ``rlhf bench logprobs``: peak memory and time of the chunked log-prob path (forward + backward)
  against the naive full-logits path, for one shape. Each variant runs in a fresh subprocess on
  CPU (peak RSS above the inputs) or measures ``torch.cuda.max_memory_allocated`` on a GPU.
- ``rlhf bench generate``: batched generation of 8 clips × 64 tokens on a model folder, with and
  without the KV cache.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path


def _logprob_variant(
    variant: str, batch: int, tokens: int, hidden: int, vocab: int, device: str, chunk: int
) -> dict:
    import torch

    from rollouts.policy import chunked_logprobs

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    h = torch.randn(batch * tokens, hidden, device=device, dtype=dtype, requires_grad=True)
    weight = torch.randn(vocab, hidden, device=device, dtype=dtype, requires_grad=True)
    weight.data.mul_(hidden**-0.5)
    targets = torch.randint(vocab, (batch * tokens,), device=device)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    if variant == "naive":
        logits = (h @ weight.T).float()
        logps = logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    else:
        logps, _ = chunked_logprobs(h, targets, weight, 1.0, chunk)
    logps.sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"variant": variant, "peak_bytes": peak, "seconds": time.perf_counter() - start}


def _run_isolated(queue: mp.Queue, *args) -> None:
    queue.put(_logprob_variant(*args))


def bench_logprobs(args: argparse.Namespace) -> dict:
    import torch

    shape = (args.batch, args.tokens, args.hidden, args.vocab, args.device, args.chunk_size)
    results = {}
    for variant in ("chunked", "naive"):
        if args.device == "cuda":
            results[variant] = _logprob_variant(variant, *shape)
            torch.cuda.empty_cache()
        else:
            ctx = mp.get_context("spawn")
            queue = ctx.Queue()
            proc = ctx.Process(target=_run_isolated, args=(queue, variant, *shape))
            proc.start()
            proc.join()
            if proc.exitcode != 0:
                results[variant] = {"variant": variant, "error": f"exit code {proc.exitcode}"}
                continue
            results[variant] = queue.get()
    gib = 2**30
    print(
        f"log-probs fwd+bwd, {args.batch}×{args.tokens} tokens, hidden {args.hidden}, "
        f"vocab {args.vocab}, {args.device}:"
    )
    for name, r in results.items():
        if "error" in r:
            print(f"  {name:8s} failed ({r['error']})")
        else:
            print(f"  {name:8s} peak {r['peak_bytes'] / gib:7.2f} GiB   {r['seconds']:6.2f} s")
    return results


def bench_generate(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from rollouts.policy import Policy
    from rollouts.types import PromptSample

    policy = Policy.from_pretrained(args.model, device=args.device)
    rng = np.random.default_rng(0)
    samples = [
        PromptSample(
            id=str(i),
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "audio"}, {"type": "text", "text": "Transcribe."}],
                }
            ],
            audio=[0.1 * rng.standard_normal(16000 * (2 + i % 3)).astype("float32")],
        )
        for i in range(args.clips)
    ]
    inputs = policy.build_inputs(samples)
    with torch.no_grad():  # warm-up: first-call allocations and kernel selection
        policy.model.generate(**inputs, max_new_tokens=2, do_sample=False)
    results = {}
    for use_cache in (True, False):
        start = time.perf_counter()
        with torch.no_grad():
            policy.model.generate(
                **inputs,
                max_new_tokens=args.tokens,
                min_new_tokens=args.tokens,
                do_sample=False,
                use_cache=use_cache,
            )
        results["cache" if use_cache else "no_cache"] = time.perf_counter() - start
    print(
        f"generate {args.clips} clips × {args.tokens} tokens on {args.device}: "
        f"with cache {results['cache']:.2f} s, without {results['no_cache']:.2f} s"
    )
    return results


def bench_cli(args: argparse.Namespace) -> dict:
    """Seconds until `rlhf --help` and each `rlhf CMD --help` answer, each run in a fresh
    interpreter as a user's shell would (median of ``--repeats``): the CLI imports no torch,
    transformers or datasets before a command runs, and this shows it stays that way."""
    import statistics
    import subprocess
    import sys

    from rlhf.cli import COMMANDS

    results = {}
    for argv in ([], *([name] for name in COMMANDS)):
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            command = [sys.executable, "-m", "rlhf.cli", *argv, "--help"]
            subprocess.run(command, check=True, capture_output=True)
            seconds.append(time.perf_counter() - start)
        label = " ".join(["rlhf", *argv, "--help"])
        results[label] = statistics.median(seconds)
        print(f"  {label:28s} {results[label]:6.2f} s")
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True)
    lp = sub.add_parser("logprobs", help="chunked vs naive log-prob memory")
    lp.add_argument("--batch", type=int, default=2)
    lp.add_argument("--tokens", type=int, default=1024)
    lp.add_argument("--hidden", type=int, default=3584)
    lp.add_argument("--vocab", type=int, default=158720)
    lp.add_argument("--chunk-size", type=int, default=1024)
    lp.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    gen = sub.add_parser("generate", help="batched generation with and without the KV cache")
    gen.add_argument("--model", type=Path, required=True)
    gen.add_argument("--clips", type=int, default=8)
    gen.add_argument("--tokens", type=int, default=64)
    gen.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    cli = sub.add_parser("cli", help="seconds until `rlhf --help` and `rlhf CMD --help` answer")
    cli.add_argument("--repeats", type=int, default=3, help="runs per command (median)")
    for p in (lp, gen, cli):
        p.add_argument("--json", type=Path, default=None, help="also write the figures here")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "device", "") is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    benches = {"logprobs": bench_logprobs, "generate": bench_generate, "cli": bench_cli}
    results = benches[args.what](args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0

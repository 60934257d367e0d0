"""`rlhf bench`: the speed and memory figures quoted in the README, reproducible.

- ``rlhf bench logprobs``: peak memory and time of the chunked log-prob path (forward + backward)
  against the naive full-logits path, for one shape. Each variant runs in a fresh subprocess on
  CPU (peak RSS above the inputs) or measures ``torch.cuda.max_memory_allocated`` on a GPU.
- ``rlhf bench generate``: batched generation of 8 clips × 64 tokens on a model folder, with and
  without the KV cache.
- ``rlhf bench step``: one GRPO configuration (8 prompts × 8 samples × 64 tokens, β 0.04, full
  fine-tuning) on the same tiny text model, prompts and reward, through our trainer and through
  TRL's ``GRPOTrainer``, in one run: seconds per step of each and their ratio.
- ``rlhf bench rl``: the demo's SFT → GRPO over several seeds, with the listening ablations and
  the transcription and spoken-answer recipes (``rlhf.bench_rl``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from dataclasses import replace
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
    if args.engine:
        return bench_engines(args, policy, samples)
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


def bench_engines(args: argparse.Namespace, policy, samples) -> dict:
    """Rollouts of the same clips (``--n`` samples each, up to ``--tokens`` tokens, temperature
    1) through each ``--engine``; completion tokens per second after a short warm-up."""
    from rollouts.engine import LocalEngine
    from rollouts.types import SamplingParams

    policy.model.eval()
    sampling = SamplingParams(temperature=1.0, top_p=1.0, repetition_penalty=1.0)
    results = {}
    for name in args.engine:
        if name == "vllm":
            from rollouts.vllm_engine import VLLMEngine, VLLMOptions

            engine = VLLMEngine(args.model, policy.adapter, options=VLLMOptions(dtype=args.dtype))
        else:
            engine = LocalEngine(policy, batch_size=len(samples) * args.n)
        engine.generate(samples, args.n, replace(sampling, max_new_tokens=2))
        start = time.perf_counter()
        rollouts = engine.generate(samples, args.n, replace(sampling, max_new_tokens=args.tokens))
        seconds = time.perf_counter() - start
        tokens = sum(len(r.completion_ids) for r in rollouts)
        results[name] = {
            "seconds": seconds,
            "tokens": tokens,
            "tokens_per_second": tokens / seconds,
        }
    print(
        f"rollouts of {len(samples)} clips × {args.n} samples × ≤{args.tokens} tokens on {args.device}:"
    )
    for name, r in results.items():
        print(
            f"  {name:6s} {r['tokens_per_second']:8.0f} tokens/s ({r['tokens']} tokens in {r['seconds']:.2f} s)"
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


STEP_PROMPTS, STEP_SAMPLES, STEP_TOKENS, STEP_BETA, STEP_MICRO_BATCH = 8, 8, 64, 0.04, 16


def _step_reward(prompts, completions, **kwargs) -> list[float]:
    """Characters written, scaled: varies across random completions, so advantages are not 0."""
    from rewards.text import completion_text

    return [len(completion_text(c)) / 100 for c in completions]


def _step_workload(out: Path) -> tuple[Path, Path]:
    """The tiny text model and a JSONL of chat prompts (grammar sentences), written under ``out``."""
    import numpy as np

    from rlhf.data.grammar import corpus, sentence
    from rollouts.tiny import make_tiny

    model = make_tiny(out / "model", corpus().splitlines(), arch="text")
    rng = np.random.default_rng(0)
    rows = [
        {"messages": [{"role": "user", "content": f"Say it again: {sentence(rng)}"}]}
        for _ in range(STEP_PROMPTS)
    ]
    prompts = out / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return model, prompts


def _ours_step_seconds(model: Path, prompts: Path, out: Path, steps: int) -> list[float]:
    from rewards import reward
    from rlhf.config import RLConfig, load_config
    from rlhf.trainer import RLTrainer

    reward("bench_step_length")(_step_reward)
    config = load_config(
        RLConfig,
        None,
        [
            f"model.path={model}",
            f"data.path={prompts}",
            "data.think=false",  # TRL's prompts are the chat template's, with no think prefill
            f"run.output_dir={out}",
            f"run.steps={steps}",
            "run.save_every=0",
            f"rollout.prompts_per_step={STEP_PROMPTS}",
            f"rollout.num_generations={STEP_SAMPLES}",
            f"rollout.batch_size={STEP_PROMPTS * STEP_SAMPLES}",
            f"rollout.sampling.max_new_tokens={STEP_TOKENS}",
            "rollout.sampling.temperature=1.0",
            "rollout.sampling.top_p=1.0",
            "rollout.sampling.repetition_penalty=1.0",
            f"algorithm.beta={STEP_BETA}",
            "optim.lr=1e-6",
            f"optim.micro_batch_size={STEP_MICRO_BATCH}",
            "rewards=[{name: bench_step_length}]",
        ],
    )
    trainer = RLTrainer(config)
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        trainer.step()
        seconds.append(time.perf_counter() - started)
    return seconds


def _trl_step_seconds(model: Path, prompts: Path, out: Path, steps: int) -> list[float]:
    import datasets
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class StepClock(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.started)

    clock = StepClock()
    dataset = datasets.load_dataset("json", data_files=str(prompts), split="train")
    dataset = dataset.map(lambda row: {"prompt": row["messages"]}, remove_columns=["messages"])
    args = GRPOConfig(
        output_dir=str(out),
        report_to="none",
        use_cpu=True,
        bf16=False,
        max_steps=steps,
        learning_rate=1e-6,
        per_device_train_batch_size=STEP_MICRO_BATCH,
        gradient_accumulation_steps=STEP_PROMPTS * STEP_SAMPLES // STEP_MICRO_BATCH,
        num_generations=STEP_SAMPLES,
        max_completion_length=STEP_TOKENS,
        temperature=1.0,
        top_p=1.0,
        repetition_penalty=1.0,
        beta=STEP_BETA,
        logging_strategy="no",
        save_strategy="no",
        seed=0,
    )
    trainer = GRPOTrainer(
        model=str(model),
        reward_funcs=_step_reward,
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(model),
        callbacks=[clock],
    )
    trainer.train()
    return clock.seconds


def bench_step(args: argparse.Namespace) -> dict:
    """Seconds per GRPO step of our trainer and of TRL's on one workload; the first step of
    each is a warm-up and not counted. The ratio compares each side's fastest step, the one least
    disturbed by whatever else the machine runs (the two sides run one after the other)."""
    import tempfile

    import torch
    import trl

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        model, prompts = _step_workload(out)
        ours = _ours_step_seconds(model, prompts, out / "ours", args.steps + 1)[1:]
        theirs = _trl_step_seconds(model, prompts, out / "trl", args.steps + 1)[1:]
    results = {
        "workload": {
            "prompts": STEP_PROMPTS,
            "samples": STEP_SAMPLES,
            "max_new_tokens": STEP_TOKENS,
            "beta": STEP_BETA,
            "micro_batch": STEP_MICRO_BATCH,
            "threads": torch.get_num_threads(),
            "trl": trl.__version__,
        },
        "ours_s_per_step": min(ours),
        "trl_s_per_step": min(theirs),
        "ours_steps": ours,
        "trl_steps": theirs,
    }
    results["ratio"] = results["ours_s_per_step"] / results["trl_s_per_step"]

    def show(steps: list[float]) -> str:
        return f"{min(steps):6.2f} s/step (mean {sum(steps) / len(steps):.2f})"

    print(
        f"GRPO step, {STEP_PROMPTS} prompts × {STEP_SAMPLES} samples × {STEP_TOKENS} tokens, "
        f"β {STEP_BETA}, full fine-tuning, tiny text model, {torch.get_num_threads()} threads, "
        f"fastest of {args.steps} steps after one warm-up:\n"
        f"  ours {show(ours)}\n"
        f"  TRL  {show(theirs)}, trl {trl.__version__} GRPOTrainer\n"
        f"  ours / TRL = {results['ratio']:.2f}"
    )
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
    gen.add_argument(
        "--engine",
        nargs="+",
        choices=("local", "vllm"),
        help="time rollouts through these engines instead (tokens/s side by side)",
    )
    gen.add_argument("--n", type=int, default=8, help="samples per clip with --engine")
    gen.add_argument("--dtype", default="float32", help="vLLM's compute dtype with --engine vllm")
    cli = sub.add_parser("cli", help="seconds until `rlhf --help` and `rlhf CMD --help` answer")
    cli.add_argument("--repeats", type=int, default=3, help="runs per command (median)")
    step = sub.add_parser("step", help="seconds per GRPO step: our trainer against TRL's")
    step.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
    from rlhf import bench_rl

    rl = sub.add_parser("rl", help="SFT → GRPO over several seeds, unseen speakers, ablations")
    bench_rl.add_arguments(rl)
    for p in (lp, gen, cli, step):
        p.add_argument("--json", type=Path, default=None, help="also write the figures here")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "device", "") is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.what == "rl":
        from rlhf import bench_rl

        return bench_rl.run(args)
    benches = {
        "logprobs": bench_logprobs,
        "generate": bench_generate,
        "cli": bench_cli,
        "step": bench_step,
    }
    results = benches[args.what](args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0

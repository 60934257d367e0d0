"""A Bradley–Terry preference reward model (`rlhf reward-model RECIPE.yaml [key=value ...]`).

Step-Audio 2's second PPO stage takes its reward from a learned preference model. This trains one:
a ``StepAudio2ForSequenceClassification`` (the speech LLM with a one-output ``score`` head, read at
the completion's closing ``<|EOT|>``) started from an SFT checkpoint, with the Bradley–Terry loss
``-log σ(r(prompt, chosen) - r(prompt, rejected))`` over preference pairs whose prompts may hold
audio. The final checkpoint (``run.output_dir/final``, written atomically, LoRA merged) is what
the ``reward_model`` reward loads by path.

Pairs come from ``chosen`` / ``rejected`` completion columns when the dataset has them, or are
derived from the synthetic data's targets (``rlhf make-data``): the target answer with its
reasoning is chosen over a wrong answer reasoned towards (``wrong_answer``) or the right answer
without reasoning (``no_reasoning``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.progress import track

from rlhf.config import (
    PAIR_KINDS,
    ConfigError,
    DataConfig,
    ModelConfig,
    RewardModelConfig,
)
from rlhf.data import grammar
from rlhf.data.loading import load_split, row_to_sample
from rlhf.data.stream import PromptStream
from rlhf.distributed import shard
from rlhf.metrics import MetricsLogger
from rlhf.training import (
    autocast,
    build_optimizer,
    compute_dtype,
    optimizer_step,
    prepare_model,
    save_pretrained,
    train_loop,
)
from rollouts.chat import AssistantTarget, render_completion
from rollouts.processor import StepAudio2Processor
from rollouts.types import PromptSample
from rollouts.value_model import StepAudio2ForSequenceClassification, preference_inputs


@dataclass
class PreferencePair:
    """A prompt and two completions of it (strings in the policy's output format)."""

    sample: PromptSample
    chosen: str
    rejected: str
    kind: str = "given"


def completion_string(target: AssistantTarget, tokenizer, think: bool, spoken: bool) -> str:
    """What the policy would output for ``target``: ``Rollout.text``'s form (no ``<|EOT|>``)."""
    ids = render_completion(target, tokenizer, think, spoken)[:-1]
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def derived_pair(
    row: dict[str, Any], sample: PromptSample, kind: str, tokenizer, rng: np.random.Generator
) -> PreferencePair | None:
    """A pair from a synthetic row's target; None when ``kind`` does not apply to the row.

    ``wrong_answer``: the reasoning and answer for another level of the asked dimension (another
    sentence for transcription; not for spoken answers, whose audio codes belong to the target);
    ``no_reasoning``: the right answer with an empty ``<think>`` (only when the prompt thinks).
    """
    think, spoken, task = sample.think, sample.spoken, row["task"]
    chosen = AssistantTarget(
        think=row.get("target_think") or None,
        text=row["target_answer"],
        audio_codes=list(row.get("target_audio_codes") or []),
    )
    if kind == "no_reasoning":
        if not think or not chosen.think:
            return None
        rejected = AssistantTarget(think=None, text=chosen.text, audio_codes=chosen.audio_codes)
    elif kind == "wrong_answer":
        if spoken:
            return None
        if task in grammar.DIMENSIONS:
            level = str(rng.choice([x for x in grammar.DIMENSIONS[task] if x != row["label"]]))
            text = grammar.answer(task, level, rng)
            reasoning = grammar.think(task, rng, dimension=task, level=level)
        elif task == "transcribe":
            text = grammar.sentence(rng)
            while text == row["target_answer"]:
                text = grammar.sentence(rng)
            reasoning = grammar.think(task, rng, transcript=text)
        else:
            return None
        rejected = AssistantTarget(think=reasoning if think else None, text=text)
    else:
        raise ValueError(f"pair_kinds: unknown {kind!r}; choose from {list(PAIR_KINDS)}")
    return PreferencePair(
        sample,
        completion_string(chosen, tokenizer, think, spoken),
        completion_string(rejected, tokenizer, think, spoken),
        kind,
    )


def load_pairs(
    data: DataConfig,
    split: str,
    tokenizer,
    kinds: list[str],
    seed: int,
    max_rows: int | None = None,
    dataset: datasets.Dataset | None = None,
) -> list[PreferencePair]:
    """Preference pairs of the first rows of ``data.path:split`` (audio decoded once, here)."""
    if dataset is None:
        dataset = load_split(data, split)
    limit = min(len(dataset), max_rows or len(dataset))
    source = f"{data.path}:{split}"
    columns = set(dataset.column_names)
    given = {"chosen", "rejected"} <= columns
    if not given:
        missing = sorted({"task", "label", "target_answer"} - columns)
        if missing:
            raise KeyError(
                f"{source}: preference data needs 'chosen' and 'rejected' columns, or the "
                f"synthetic targets to derive them from; missing {missing} "
                f"(columns: {sorted(columns)})"
            )
    pairs: list[PreferencePair] = []
    rows = dataset.select(range(limit)) if limit < len(dataset) else dataset
    for index, row in enumerate(track(rows, description="building pairs", transient=True)):
        sample = row_to_sample(row, index, source, think=data.think, max_audio_s=data.max_audio_s)
        if given:
            pairs.append(PreferencePair(sample, str(row["chosen"]), str(row["rejected"])))
            continue
        rng = np.random.default_rng([seed, index])
        for kind in kinds:
            pair = derived_pair(row, sample, kind, tokenizer, rng)
            if pair is not None:
                pairs.append(pair)
    if not pairs:
        raise ValueError(f"{source}: no preference pairs (pair_kinds={kinds}, tasks={data.tasks})")
    return pairs


def load_reward_model(config: ModelConfig, device: torch.device) -> torch.nn.Module:
    """The SFT checkpoint with a fresh one-output ``score`` head, fp32 weights (``config.dtype``
    is the compute dtype); LoRA adapters when enabled (``score`` then trains in full, as peft's
    ``modules_to_save``)."""
    compute_dtype(config)  # a bad dtype fails before the weights load
    model = StepAudio2ForSequenceClassification.from_pretrained(
        config.path, num_labels=1, dtype=torch.float32
    ).to(device)
    return prepare_model(model, config, modules_to_save=["score"])


def pair_rewards(
    model: torch.nn.Module,
    processor: StepAudio2Processor,
    pairs: list[PreferencePair],
    max_length: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the chosen and the rejected completions, ``[n]`` each, in one forward pass
    computing in ``dtype``."""
    inputs = preference_inputs(
        processor, [p.sample for p in pairs], [(p.chosen, p.rejected) for p in pairs], max_length
    )
    inputs = {k: v.to(device) for k, v in inputs.items() if v is not None}
    with autocast(dtype, device):
        scores = model(**inputs).logits[:, 0].float().view(len(pairs), 2)
    return scores[:, 0], scores[:, 1]


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """``-log σ(r_chosen - r_rejected)`` per pair."""
    return -F.logsigmoid(chosen - rejected)


class RewardModelTrainer:
    def __init__(self, config: RewardModelConfig, *, accelerator: Accelerator | None = None):
        self.config = config
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        self.run_dir = Path(config.run.output_dir)
        set_seed(config.run.seed)
        if config.batch_size < 1 or config.optim.micro_batch_size < 1:
            raise ValueError("batch_size and optim.micro_batch_size must be at least 1")

        self.processor = StepAudio2Processor.from_pretrained(config.model.path)
        self.pairs = load_pairs(
            config.data,
            config.data.split,
            self.processor.tokenizer,
            list(config.pair_kinds),
            config.run.seed,
        )
        self.stream = PromptStream(
            len(self.pairs),
            self.pairs.__getitem__,
            seed=config.run.seed,
            shuffle=config.data.shuffle,
        )
        self.compute_dtype = compute_dtype(config.model)
        sharded = self.accelerator.num_processes > 1  # then loaded on the CPU, moved as sharded
        self.model = load_reward_model(config.model, "cpu" if sharded else self.accelerator.device)
        if sharded:
            if config.batch_size % self.accelerator.num_processes:
                raise ConfigError(
                    f"batch_size: {config.batch_size} pairs do not split evenly over "
                    f"{self.accelerator.num_processes} processes"
                )
            shard(self.model, config.run.distributed, self.accelerator.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = build_optimizer(
            self.params, config.optim, config.run.steps
        )
        self.logger = MetricsLogger(
            self.run_dir,
            config.run.report_to,
            config=config,
            project=config.run.project,
            main_process=self.is_main,
        )
        self.logger.truncate_after(0)  # a fresh run (the reward model does not resume)
        self.global_step = 0

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def step(self) -> dict[str, Any]:
        """One optimizer step on the next ``batch_size`` pairs; returns its metrics."""
        cfg, acc = self.config, self.accelerator
        started = time.perf_counter()
        batch = self.stream.next(cfg.batch_size)
        mine = batch[acc.process_index :: acc.num_processes]
        self.model.train()
        sums = torch.zeros(3, device=acc.device)  # loss, correct, margin
        size = cfg.optim.micro_batch_size
        for start in range(0, len(mine), size):
            part = mine[start : start + size]
            chosen, rejected = pair_rewards(
                self.model, self.processor, part, cfg.max_length, acc.device, self.compute_dtype
            )
            loss = bradley_terry_loss(chosen, rejected).sum()
            # the mean over the whole batch: the processes' gradients are summed
            acc.backward(loss / len(batch))
            margin = (chosen - rejected).detach()
            sums += torch.stack([loss.detach(), (margin > 0).float().sum(), margin.sum()])
        grad_norm = self._optimizer_step()
        if acc.num_processes > 1:
            sums = acc.reduce(sums, "sum")
        self.global_step += 1
        loss, correct, margin = (float(x) / len(batch) for x in sums)
        return {
            "loss": loss,
            "accuracy": correct,
            "margin": margin,
            "grad_norm": grad_norm,
            "lr": self.scheduler.get_last_lr()[0],
            "epoch": self.stream.epoch + self.stream.offset / self.stream.num_rows,
            "time": {"step": time.perf_counter() - started},
        }

    def _optimizer_step(self) -> float:
        return optimizer_step(
            self.params, self.optimizer, self.scheduler, self.config.optim.max_grad_norm
        )

    @torch.no_grad()
    def evaluate(self, pairs: list[PreferencePair]) -> dict[str, Any]:
        """Pairwise accuracy (chosen scored above rejected), overall and per pair kind."""
        self.model.eval()
        margins, kinds = [], []
        size = self.config.optim.micro_batch_size
        for start in range(0, len(pairs), size):
            part = pairs[start : start + size]
            chosen, rejected = pair_rewards(
                self.model,
                self.processor,
                part,
                self.config.max_length,
                self.accelerator.device,
                self.compute_dtype,
            )
            margins += (chosen - rejected).tolist()
            kinds += [p.kind for p in part]
        margins_t = torch.tensor(margins)
        result: dict[str, Any] = {
            "pairs": len(margins),
            "accuracy": float((margins_t > 0).float().mean()),
            "margin": float(margins_t.mean()),
        }
        for kind in sorted(set(kinds)):
            of_kind = margins_t[[k == kind for k in kinds]]
            result[f"accuracy_{kind}"] = float((of_kind > 0).float().mean())
        return result

    def train(self) -> list[dict[str, Any]]:
        """Train, log every step, evaluate on ``data.eval_split``, save ``run_dir/final``."""
        cfg = self.config
        history = train_loop(
            self,
            "reward model",
            cfg.run.steps,
            main_process=self.is_main,
            status=lambda m: {"loss": m["loss"], "accuracy": m["accuracy"]},
        )
        if cfg.eval_pairs and self.is_main:
            evaluation = self.evaluate_split(cfg.data.eval_split)
            if evaluation is not None:
                (self.run_dir / "eval.json").write_text(json.dumps(evaluation, indent=2) + "\n")
                self.logger.log(self.global_step, {"eval": evaluation})
        self.save_final(self.run_dir / "final")
        self.logger.close()
        return history

    def evaluate_split(self, split: str) -> dict[str, Any] | None:
        """``evaluate`` on up to ``eval_pairs`` pairs of ``split``; None when there is no such
        split (a dataset file has none: it is all one split)."""
        cfg = self.config
        if Path(cfg.data.path).is_file():
            return None
        try:
            dataset = load_split(cfg.data, split)
        except KeyError:
            return None
        pairs = load_pairs(
            cfg.data,
            split,
            self.processor.tokenizer,
            list(cfg.pair_kinds),
            cfg.run.seed + 1,
            max_rows=cfg.eval_pairs,
            dataset=dataset,
        )
        return {"split": split, **self.evaluate(pairs[: cfg.eval_pairs])}

    def save_final(self, path: Path) -> Path:
        """A plain ``from_pretrained`` checkpoint (LoRA merged) with its processor: what the
        ``reward_model`` reward loads."""
        return save_pretrained(
            self.model, self.processor, path, self.accelerator, self.config.model
        )

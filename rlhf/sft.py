"""Supervised fine-tuning on assistant targets.

The warm start that RL begins from (Step-Audio 2 runs its RL stages after a cold-start SFT). Each
dataset row is a prompt (``row_to_sample``) plus the answer the assistant should write
(``target_think`` / ``target_answer`` / ``target_audio_codes``). ``Policy.sft_batch`` renders
both and labels only the assistant's own tokens: reasoning, answer text and the audio codes of a
TA4 answer as ``train_on`` says, never the prompt, padding or tool outputs.

The loss is the mean negative log-likelihood over the labelled tokens of a step, computed with
``Policy.logprobs``: the same chunked LM-head path RL uses, so SFT and RL agree on what a
log-prob is and no ``[B, T, V]`` logits are materialised. As in RL, the weights and AdamW state
are fp32 and ``model.dtype`` is the compute dtype (autocast); with several processes the
``LogProbModel`` is sharded with FSDP2 (``run.distributed=fsdp``) or replicated with torch's DDP
(``ddp``: ``rlhf.distributed.replicate``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.progress import track

from rlhf.config import DataConfig, SFTConfig
from rlhf.data.loading import load_split, row_to_sample
from rlhf.data.stream import PromptStream
from rlhf.distributed import replicate, shard
from rlhf.metrics import MetricsLogger
from rlhf.training import (
    autocast,
    build_optimizer,
    compute_dtype,
    load_policy,
    optimizer_step,
    save_pretrained,
    train_loop,
)
from rollouts.chat import IGNORE_INDEX, AssistantTarget
from rollouts.policy import LogProbModel, SequenceBatch
from rollouts.types import PromptSample


@dataclass
class Example:
    """One SFT pair: the prompt (audio already decoded) and the answer to learn."""

    sample: PromptSample
    target: AssistantTarget


def row_target(row: dict[str, Any], where: str = "row", think: bool = True) -> AssistantTarget:
    """The assistant answer of a dataset row (columns ``target_think``, ``target_answer``,
    ``target_audio_codes``); ``where`` names the row in errors. Without ``think`` (the recipe's
    ``data.think: false``: no ``<think>`` prefill) the reasoning is left out and the answer is
    learnt directly."""
    if row.get("target_answer") is None:
        raise KeyError(f"{where}: no 'target_answer' to train on; columns: {sorted(row)}")
    return AssistantTarget(
        think=(row.get("target_think") or None) if think else None,
        text=row["target_answer"],
        audio_codes=list(row.get("target_audio_codes") or []),
    )


def load_examples(data: DataConfig, split: str | None = None) -> list[Example]:
    """Rows of ``data.path`` as examples, audio decoded once here rather than at every step."""
    split = split or data.split
    dataset = load_split(data, split)
    source = f"{data.path}:{split}"
    examples = []
    for index, row in enumerate(track(dataset, description="decoding audio", transient=True)):
        sample = row_to_sample(row, index, source, think=data.think, max_audio_s=data.max_audio_s)
        examples.append(Example(sample, row_target(row, f"{source} row {index}", data.think)))
    return examples


def sequence_batch(batch: dict[str, torch.Tensor | None]) -> SequenceBatch:
    """An ``sft_batch`` as a ``SequenceBatch`` whose "completion" starts at the first labelled
    token and whose mask is the labels' (so ``Policy.logprobs`` scores exactly those tokens)."""
    input_ids, labels = batch["input_ids"], batch["labels"]
    lengths = batch["attention_mask"].sum(-1)
    labelled = labels != IGNORE_INDEX
    first = torch.where(labelled.any(-1), labelled.long().argmax(-1), lengths)
    width = max(int((lengths - first).max()), 1)
    positions = first[:, None] + torch.arange(width)[None, :]
    inside = positions < input_ids.shape[1]
    positions = positions.clamp(max=input_ids.shape[1] - 1)
    return SequenceBatch(
        input_ids=input_ids,
        attention_mask=batch["attention_mask"],
        prompt_lengths=first,
        completion_ids=input_ids.gather(1, positions),
        completion_mask=(labelled.gather(1, positions) & inside).long(),
        input_features=batch.get("input_features"),
        feature_lens=batch.get("feature_lens"),
    )


class SFTTrainer:
    """Fine-tunes ``config.model.path`` on ``config.data``; ``train()`` runs it end to end."""

    def __init__(self, config: SFTConfig, *, accelerator: Accelerator | None = None):
        self.config = config
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        self.run_dir = Path(config.run.output_dir)
        set_seed(config.run.seed)

        self.examples = load_examples(config.data)
        self.compute_dtype = compute_dtype(config.model)
        several = self.accelerator.num_processes > 1  # then loaded on the CPU, moved when wrapped
        self.policy = load_policy(config.model, "cpu" if several else self.accelerator.device)
        self.model = self.policy.model
        self.scorer = LogProbModel(self.policy)
        if several and config.run.distributed == "ddp":
            self.scorer = replicate(self.scorer, self.accelerator.device)
        elif several:
            shard(self.scorer, config.run.distributed, self.accelerator.device)
        # One step: a micro-batch on every process; their gradients are summed (see step).
        self.batch_size = config.optim.micro_batch_size * self.accelerator.num_processes
        self.steps = config.run.steps
        if config.epochs is not None:
            self.steps = math.ceil(config.epochs * len(self.examples) / self.batch_size)
        self.stream = PromptStream(
            len(self.examples),
            self.examples.__getitem__,
            seed=config.run.seed,
            shuffle=config.data.shuffle,
        )

        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = build_optimizer(trainable, config.optim, self.steps)
        self.logger = MetricsLogger(
            self.run_dir,
            config.run.report_to,
            config=config,
            project=config.run.project,
            main_process=self.is_main,
        )
        self.logger.truncate_after(0)  # a fresh run (SFT does not resume)
        self.global_step = 0

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def step(self) -> dict[str, Any]:
        """One optimizer step on the next batch; returns its metrics."""
        started = time.perf_counter()
        examples = self.stream.next(self.batch_size)
        mine = examples[self.accelerator.process_index :: self.accelerator.num_processes]
        self.model.train()
        batch = self.policy.sft_batch(
            [e.sample for e in mine], [e.target for e in mine], self.config.train_on
        )
        sequences = sequence_batch(batch).to(self.accelerator.device)
        with autocast(self.compute_dtype, self.accelerator.device):
            logprobs, _ = self.scorer(sequences, chunk_size=self.config.run.logprob_chunk_size)
        mask = sequences.completion_mask.float()
        nll = -(logprobs * mask).sum()
        # token mean over the whole step: each process divides by the tokens of all of them, and
        # the processes' gradients are summed
        tokens = self._sum(mask.sum().detach())
        self.accelerator.backward(nll / tokens.clamp(min=1))
        grad_norm = optimizer_step(
            [p for p in self.model.parameters() if p.requires_grad],
            self.optimizer,
            self.scheduler,
            self.config.optim.max_grad_norm,
        )
        self.global_step += 1
        loss = float(self._sum(nll.detach()) / tokens.clamp(min=1))
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "tokens": int(tokens),
            "grad_norm": grad_norm,
            "lr": self.scheduler.get_last_lr()[0],
            "epoch": self.stream.epoch + self.stream.offset / self.stream.num_rows,
            "time": {"step": time.perf_counter() - started},
        }

    def _sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return value
        return self.accelerator.reduce(value.to(self.accelerator.device), "sum")

    def train(self) -> list[dict[str, Any]]:
        """Run every step, log each, save ``run_dir/final``; returns the per-step metrics."""
        history = train_loop(
            self, "SFT", self.steps, main_process=self.is_main, status=lambda m: {"loss": m["loss"]}
        )
        self.save_final(self.run_dir / "final")
        self.logger.close()
        return history

    def save_final(self, path: Path) -> Path:
        """A plain ``from_pretrained`` checkpoint (LoRA merged in) with its processor."""
        return save_pretrained(
            self.model, self.policy.processor, path, self.accelerator, self.config.model
        )

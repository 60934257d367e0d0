"""What the SFT, reward-model and RL trainers do the same way: prepare, step, save.

Gradients are averaged across processes by hand instead of wrapping the model in DDP: the chunked
log-prob path calls the decoder and LM head directly, which DDP's forward hooks would not see.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from rlhf.checkpoint import write_atomic
from rlhf.config import ModelConfig
from rollouts.adapters import adapter_for
from rollouts.policy import Policy


def prepare_model(
    model: torch.nn.Module, config: ModelConfig, *, modules_to_save: list[str] | None = None
) -> torch.nn.Module:
    """Freeze the audio encoder, enable gradient checkpointing and add LoRA, as configured."""
    if config.freeze_audio_encoder:
        adapter_for(model.config).freeze_audio_encoder(model)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if not config.lora.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        # the model family's rule: Qwen2-Audio's encoder has q/k/v_proj too, and is left alone
        target_modules=adapter_for(model.config).lora_target_modules(config.lora.target_modules),
        modules_to_save=modules_to_save,
    )
    return get_peft_model(model, lora)


def load_policy(config: ModelConfig, device: torch.device | str) -> Policy:
    """The checkpoint at ``config.path`` as a policy, ready to train (``prepare_model``)."""
    policy = Policy.from_pretrained(config.path, dtype=config.dtype, device=str(device))
    policy.model = prepare_model(policy.model, config)
    return policy


def optimizer_step(
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    accelerator: Accelerator,
    max_grad_norm: float,
    *,
    reduce: str = "mean",
) -> float:
    """Combine gradients over processes (``mean``, or ``sum`` when each process's loss is
    already normalised by whole-batch counts), clip, step; returns the norm before clipping."""
    if accelerator.num_processes > 1:
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad = accelerator.reduce(p.grad, reduce)
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


def save_pretrained(
    model: torch.nn.Module, processor: Any, path: Path, accelerator: Accelerator
) -> Path:
    """A plain ``from_pretrained`` folder (LoRA merged in) with its processor, written atomically."""
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    if accelerator.is_main_process:

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)

        write_atomic(Path(path), write)
    accelerator.wait_for_everyone()
    return Path(path)

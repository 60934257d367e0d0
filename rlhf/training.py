"""What the SFT, reward-model and RL trainers do the same way: load, prepare, optimise, save.

Precision: parameters, gradients and AdamW state are fp32 (the master weights); ``model.dtype``
is the compute dtype, applied with autocast around every forward (``autocast``). An update at an
RL learning rate is far below bf16's spacing (lr 1e-6 against 1.2e-4 between bf16 neighbours of
a weight of 0.02), so AdamW on bf16 parameters would leave most weights unchanged: fp32 master
weights are the only way a recipe trains, and nothing here makes parameters bf16.

Across processes, gradients are reduced by the sharding wrapper (``rlhf.distributed``), never by
hand: every trainer normalises its loss by whole-batch counts, so the processes' gradients add up.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from transformers import get_scheduler

from rlhf.checkpoint import write_atomic
from rlhf.config import ConfigError, ModelConfig, OptimConfig, save_config
from rlhf.metrics import MetricsLogger, StepProgress
from rollouts.adapters import adapter_for
from rollouts.policy import Policy

COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def compute_dtype(config: ModelConfig) -> torch.dtype:
    """The recipe's ``model.dtype``: what forward and backward compute in (never the weights')."""
    if config.dtype not in COMPUTE_DTYPES:
        hint = (
            " (float16 would need loss scaling; use bfloat16)" if config.dtype == "float16" else ""
        )
        raise ConfigError(
            f"model.dtype: {config.dtype!r} is not a compute dtype; choose one of "
            f"{sorted(COMPUTE_DTYPES)}{hint}"
        )
    return COMPUTE_DTYPES[config.dtype]


def autocast(dtype: torch.dtype, device: torch.device | str) -> AbstractContextManager:
    """Compute in ``dtype`` over fp32 weights (CPU and CUDA autocast both support bf16).

    Without autocast's cache of cast weights: it would keep a ``dtype`` copy of every trained
    weight until the forward ends (2 bytes × parameters, unsharded even under FSDP), where each
    decoder weight is used once per forward anyway."""
    device_type = torch.device(device).type
    enabled = dtype != torch.float32
    return torch.autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=False)


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Every dropout off, so that train mode (which gradient checkpointing needs) computes what
    eval mode does: RL's ratios compare log-probs of the same weights, which dropout would
    perturb. Covers ``nn.Dropout`` modules and attention dropout, read from the attention module
    (transformers' eager and SDPA paths) and from the config."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.0
        config = getattr(module, "config", None)
        for sub in (config, getattr(config, "text_config", None)):
            if sub is not None and hasattr(sub, "attention_dropout"):
                sub.attention_dropout = 0.0
    return model


def prepare_model(
    model: torch.nn.Module, config: ModelConfig, *, modules_to_save: list[str] | None = None
) -> torch.nn.Module:
    """Freeze the audio encoder, enable gradient checkpointing and add LoRA, as configured.

    Checkpointing only recomputes in train mode, so the model is left in train mode.
    """
    if config.freeze_audio_encoder:
        adapter_for(model.config).freeze_audio_encoder(model)
    if config.gradient_checkpointing:
        enable_checkpointing(model)
    model.train()
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


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer in backward, non-reentrant: it composes with FSDP's hooks
    and needs no input that requires grad. Only takes effect in train mode."""
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def load_policy(config: ModelConfig, device: torch.device | str) -> Policy:
    """The checkpoint at ``config.path`` with fp32 weights, ready to train (``prepare_model``)."""
    compute_dtype(config)  # a bad dtype fails here, before the weights load
    policy = Policy.from_pretrained(config.path, dtype="float32", device=str(device))
    policy.model = prepare_model(policy.model, config)
    return policy


def build_optimizer(
    params: list[torch.nn.Parameter],
    optim: OptimConfig,
    num_steps: int | None = None,
    lr: float | None = None,
) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over fp32 ``params`` (the master weights), and the configured LR schedule over
    ``num_steps`` optimizer steps (None: a constant lr, no scheduler)."""
    low = sorted({str(p.dtype) for p in params if p.dtype != torch.float32})
    if low:
        raise TypeError(
            f"trainable parameters in {low}: AdamW needs fp32 master weights (an lr of 1e-6 "
            "does not move a bf16 weight); load fp32 and set model.dtype as the compute dtype"
        )
    optimizer = torch.optim.AdamW(
        params, lr=optim.lr if lr is None else lr, weight_decay=optim.weight_decay
    )
    if num_steps is None:
        return optimizer, None
    scheduler = get_scheduler(
        optim.lr_scheduler,
        optimizer,
        num_warmup_steps=optim.warmup_steps,
        num_training_steps=num_steps,
    )
    return optimizer, scheduler


def optimizer_step(
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    max_grad_norm: float,
) -> float:
    """Clip, step, zero; returns the gradient norm before clipping (over all shards)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP: the norm of the whole gradient
        norm = norm.full_tensor()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


def save_pretrained(
    model: torch.nn.Module,
    processor: Any,
    path: Path,
    accelerator: Accelerator,
    config: ModelConfig | None = None,
) -> Path:
    """A plain ``from_pretrained`` folder (LoRA merged in) with its processor, written atomically.

    A sharded model is gathered into a fresh unsharded copy on the main process first (loaded
    from ``config.path``, LoRA added as in training), so the folder is the same either way.
    """
    from rlhf.distributed import full_state_dict, is_sharded

    if is_sharded(model):
        state = full_state_dict(model)  # every process takes part; the main one gets it all
        if not accelerator.is_main_process:
            accelerator.wait_for_everyone()
            return Path(path)
        model = unsharded_copy(model, config)
        model.load_state_dict(state, strict=True)
    if accelerator.is_main_process:
        if hasattr(model, "merge_and_unload"):
            import copy

            model = copy.deepcopy(model).merge_and_unload()

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)

        write_atomic(Path(path), write)
    accelerator.wait_for_everyone()
    return Path(path)


def unsharded_copy(model: torch.nn.Module, config: ModelConfig | None) -> torch.nn.Module:
    """A CPU model of ``model``'s class and adapters, loaded from ``config.path``."""
    if config is None:
        raise ValueError("saving a sharded model needs its ModelConfig to rebuild it unsharded")
    from torch.distributed.fsdp import FSDPModule

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # a wrapped root's class is FSDP2's subclass of the model's: build the model's own
    cls = next(c for c in type(base).__mro__ if not issubclass(c, FSDPModule))
    fresh = cls.from_pretrained(config.path, config=base.config, dtype=torch.float32)
    if hasattr(model, "peft_config"):
        from peft import get_peft_model

        for name, adapter in model.peft_config.items():
            if name == "default":
                fresh = get_peft_model(fresh, adapter)
            else:
                fresh.add_adapter(name, adapter)
    return fresh


class Steppable(Protocol):
    """What ``train_loop`` needs of a trainer."""

    config: Any
    run_dir: Path
    global_step: int
    logger: MetricsLogger

    def step(self) -> dict[str, Any]: ...


def train_loop(
    trainer: Steppable,
    label: str,
    total: int,
    *,
    main_process: bool,
    status: Callable[[dict[str, Any]], dict[str, Any]],
    after_step: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """The loop of every trainer (RL, SFT, reward model): write the resolved recipe into the run
    folder, then step until ``total``, logging each step's metrics and showing ``status(metrics)``
    as progress; ``after_step`` is the trainer's own per-step work (RL: the learning-signal
    watchdog and checkpoints). Returns the steps' metrics."""
    if main_process:
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(trainer.config, trainer.run_dir / "config.yaml")
    history = []
    with StepProgress(
        label,
        total,
        completed=trainer.global_step,
        every=trainer.config.run.progress_every,
        enabled=main_process,
    ) as progress:
        while trainer.global_step < total:
            metrics = trainer.step()
            history.append(metrics)
            trainer.logger.log(trainer.global_step, metrics)
            progress.update(trainer.global_step, status(metrics))
            if after_step is not None:
                after_step(metrics)
    return history

"""Recipes: YAML files mapped onto typed dataclasses with OmegaConf structured configs.

A recipe is validated before anything runs: an unknown key is an error that names the file and the
nearest valid key, a wrong type names the key, and ``key.sub=value`` overrides from the command line
go through the same checks. The resolved config is saved into the run folder.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema."""


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )


@dataclass
class ModelConfig:
    path: str = MISSING
    dtype: str = "float32"  # float32 | bfloat16 | float16
    lora: LoraConfig = field(default_factory=LoraConfig)
    freeze_audio_encoder: bool = True
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    path: str = MISSING
    split: str = "train"
    eval_split: str = "test"
    tasks: list[str] | None = None  # keep rows whose `task` column is one of these
    max_samples: int | None = None
    think: bool = True  # prefill `<think>` so the policy reasons before answering
    shuffle: bool = True


@dataclass
class SamplingConfig:
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0
    repetition_penalty: float = 1.05
    max_new_tokens: int = 256


@dataclass
class RayConfig:
    address: str = ""  # empty: start a local Ray; "host:port" or "auto": join that cluster
    num_workers: int = 2
    num_cpus_per_worker: float = 1.0
    num_gpus_per_worker: float = 0.0
    placement_strategy: str = "PACK"
    call_timeout_s: float = 600.0
    max_retries: int = 2


@dataclass
class RolloutConfig:
    engine: str = "local"  # local | ray
    prompts_per_step: int = 8
    num_generations: int = 8  # group size n
    batch_size: int = 16  # sequences decoded together by one engine
    train_on: str = "text"  # text | audio | both: which completion tokens are trained
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass
class PPOConfig:
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    value_clip: float = 0.2
    value_coef: float = 1.0
    critic_lr: float = 5e-6
    critic_warmup_steps: int = 0
    critic_path: str | None = None  # full fine-tuning: initialise the critic from here


@dataclass
class AlgorithmConfig:
    name: str = "grpo"  # grpo | ppo
    advantage: str = "grpo"  # grpo | dr_grpo | rloo (ppo uses gae)
    scale_rewards: str | None = None  # group | batch | none; None: the estimator's own default
    loss_aggregation: str = "token_mean"  # token_mean | seq_mean | dr_grpo
    clip_low: float = 0.2
    clip_high: float = 0.2
    importance_sampling: str = "token"  # token | sequence (GSPO)
    beta: float = 0.0  # KL coefficient to the reference policy
    kl_estimator: str = "k3"  # k1 | k3
    kl_in: str = "loss"  # loss | reward
    entropy_coef: float = 0.0
    mask_truncated: bool = False
    num_iterations: int = 1
    dynamic_sampling: bool = False  # drop groups whose rewards are all equal
    refill_rounds: int = 0  # extra rollout rounds of fresh prompts to refill dropped groups (DAPO)
    difficulty_band: list[float] | None = None  # keep prompts whose pass rate is inside [lo, hi]
    ppo: PPOConfig = field(default_factory=PPOConfig)


@dataclass
class OptimConfig:
    lr: float = 1e-6
    weight_decay: float = 0.0
    lr_scheduler: str = "constant"  # any transformers scheduler name
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    micro_batch_size: int = 8  # sequences per forward/backward; gradients accumulate over the rest


@dataclass
class RunConfig:
    output_dir: str = "runs/rl"
    steps: int = 100
    seed: int = 0
    save_every: int = 50
    keep_last: int = 2
    report_to: list[str] = field(default_factory=list)  # tensorboard | wandb | trackio
    logprob_chunk_size: int = 1024  # tokens per chunk through the LM head
    # bitwise-reproducible GPU runs (slower kernels); CPU runs are reproducible anyway
    deterministic: bool = False


@dataclass
class RLConfig:
    """`rlhf train`: one RL experiment."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    rewards: list[Any] = field(default_factory=list)  # [{name, weight, timeout_s, **params}]


@dataclass
class SFTConfig:
    """`rlhf sft`: supervised fine-tuning on assistant targets."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3))
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/sft", steps=200))
    train_on: str = "both"
    epochs: int | None = None  # when set, overrides run.steps


def _check_keys(schema: type, values: Any, source: str, prefix: str = "") -> None:
    """Reject keys the schema does not have, naming the nearest valid one."""
    if not isinstance(values, dict) or not dataclasses.is_dataclass(schema):
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in fields:
            near = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{near[0]}'?" if near else ""
            valid = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: unknown key '{path}'{hint} (valid keys: {valid})")
        default = fields[key].default_factory() if callable(fields[key].default_factory) else None
        if dataclasses.is_dataclass(default):
            _check_keys(type(default), value, source, prefix=f"{path}.")


def load_config(schema: type[T], path: str | Path | None, overrides: list[str] = ()) -> T:
    """Build ``schema`` from a YAML recipe plus ``key.sub=value`` overrides, validated."""
    source = str(path) if path else "<defaults>"
    try:
        values = OmegaConf.to_container(OmegaConf.load(path)) if path else {}
    except FileNotFoundError as err:
        raise ConfigError(f"recipe not found: {source}") from err
    except Exception as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from err
    _check_keys(schema, values or {}, source)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not of the form key.sub=value")
    dotlist = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    _check_keys(schema, dotlist, "command line")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), values or {}, dotlist)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"{source}: key '{key}': {err.msg}") from err


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML so a run folder says exactly what ran."""
    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))

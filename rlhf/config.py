"""Recipes: YAML files mapped onto typed dataclasses with OmegaConf structured configs.

A recipe is validated before anything runs, in one place (:func:`load_config`), from each field's
metadata: ``help`` (every key has one; ``--print-config`` prints them), ``choices`` (a closed set of
values, matched exactly: ``PPO`` is refused with "did you mean 'ppo'"), and ``ge`` / ``gt`` / ``le``
(numeric bounds). An unknown key names the nearest valid one, a wrong type names the key, and every
message says where the value came from: the recipe file or a ``key.sub=value`` override on the
command line. Rewards are resolved at load time too (name and parameters), so a typo in a reward
costs nothing. The resolved config is saved into the run folder.

OmegaConf's structured configs accept ``str``, numbers, lists, dicts and Enums but not
``typing.Literal``, so closed sets of strings are ``str`` fields with ``choices`` metadata.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rewards.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A recipe or override that does not fit the schema."""


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    choices: Sequence[Any] = (),
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
) -> Any:
    """A config field with its help text, allowed values and numeric bounds (checked on load)."""
    metadata = {"help": help, "choices": tuple(choices), "ge": ge, "gt": gt, "le": le}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# transformers' SchedulerType names that `get_scheduler` builds from a step count alone
# (reduce_lr_on_plateau wants a metric, greedy a Trainer); tests check they exist in transformers.
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)
TRACKERS = ("tensorboard", "wandb", "trackio")
TRAIN_ON = ("text", "audio", "both")
GROUP_ADVANTAGES = ("grpo", "dr_grpo", "rloo")


@dataclass
class LoraConfig:
    enabled: bool = option(False, "train LoRA adapters instead of the full weights (peft)")
    r: int = option(16, "LoRA rank", ge=1)
    alpha: int = option(32, "LoRA alpha: the adapter's output is scaled by alpha / r", gt=0)
    dropout: float = option(0.0, "dropout on the adapters' input", ge=0, le=1)
    target_modules: list[str] = option(
        help="the language model's linear layers that get adapters",
        factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    )


@dataclass
class ModelConfig:
    path: str = option(
        help="checkpoint folder (from_pretrained), or a Hugging Face hub id such as org/name"
    )
    dtype: str = option(
        "float32",
        "COMPUTE dtype of forward and backward (autocast); parameters, gradients and optimizer "
        "state stay float32 whatever this says",
        choices=("float32", "bfloat16"),
    )
    lora: LoraConfig = option(help="LoRA adapters", factory=LoraConfig)
    freeze_audio_encoder: bool = option(True, "keep the audio encoder and adaptor frozen")
    gradient_checkpointing: bool = option(
        False, "recompute activations in backward: less memory, about a third more compute"
    )


@dataclass
class DataConfig:
    path: str = option(
        help="dataset: a save_to_disk folder, a .jsonl/.json/.parquet/.csv file, or a hub id "
        "(org/name) read with datasets.load_dataset"
    )
    split: str = option("train", "split to train on")
    eval_split: str = option("test", "split to evaluate on")
    tasks: list[str] | None = option(
        None, "keep only rows whose `task` column is one of these (null: all rows)"
    )
    where: dict[str, list[str]] | None = option(
        None,
        "keep only rows whose column holds one of the listed values, for each column named "
        "(e.g. {speaker: [en-us+f1, en-us+m2]}: SFT on a few speakers, RL on all); with tasks, "
        "before max_samples",
    )
    max_samples: int | None = option(None, "use the first N rows only (null: all)", ge=1)
    task_repeats: dict[str, int] | None = option(
        None,
        "mixture weights: each row of a task named here comes this many times per epoch, the "
        "other rows once (e.g. {spoken: 4}); applied after tasks and max_samples",
    )
    think: bool = option(True, "prefill `<think>` so the policy reasons before answering")
    shuffle: bool = option(True, "visit prompts in a seeded random order")
    max_audio_s: float | None = option(
        30.0,
        "longest clip a row may hold, in seconds (null: no limit); a guard against stray long "
        "recordings, each 25 s of which adds 313 prompt tokens",
        gt=0,
    )
    validate: str = option(
        "auto",
        "decode and check every row before the first step: always, never, or auto (when the "
        "split has at most 2000 rows); `--dry-run` always does",
        choices=("auto", "always", "never"),
    )


@dataclass
class SamplingConfig:
    """RL samples the policy's own distribution by default (TRL's defaults): the loss treats the
    sampled tokens as draws from the plain softmax, which top-p, top-k and a repetition penalty
    would change. Step-Audio 2's inference settings (top_p 0.9, repetition_penalty 1.05) are for
    evaluation and serving."""

    temperature: float = option(0.7, "softmax temperature of sampling (0: greedy)", ge=0)
    top_p: float = option(1.0, "nucleus sampling mass (1: off, on-policy)", gt=0, le=1)
    top_k: int = option(0, "sample among the k likeliest tokens (0: off, on-policy)", ge=0)
    repetition_penalty: float = option(
        1.0, "divide logits of tokens already generated by this (1: off, on-policy)", gt=0
    )
    max_new_tokens: int = option(256, "completion length limit, in tokens", ge=1)


@dataclass
class RayConfig:
    address: str = option("", 'empty: start a local Ray; "host:port" or "auto": join that cluster')
    num_workers: int = option(2, "rollout workers, each with its own copy of the policy", ge=1)
    num_cpus_per_worker: float = option(1.0, "CPUs reserved per worker", ge=0)
    num_gpus_per_worker: float = option(0.0, "GPUs reserved per worker (fractions share one)", ge=0)
    placement_strategy: str = option(
        "PACK",
        "Ray placement group strategy of the workers",
        choices=("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
    )
    call_timeout_s: float = option(600.0, "seconds a worker may take for one generate call", gt=0)
    max_retries: int = option(2, "times a failed worker is restarted and its call retried", ge=0)
    backend: str = option(
        "local",
        "the engine inside each worker (vllm: set up by rollout.vllm)",
        choices=("local", "vllm"),
    )


@dataclass
class VLLMConfig:
    max_model_len: int = option(4096, "longest prompt + completion vLLM serves, in tokens", ge=1)
    gpu_memory_utilization: float = option(
        0.3, "GPU memory share vLLM may take beside the trainer (GPU only)", gt=0, le=1
    )
    kv_cache_gib: float | None = option(
        None, "fixed KV cache size in GiB (null: from gpu_memory_utilization; CPU: 0.5)", gt=0
    )
    enforce_eager: bool = option(False, "no CUDA graphs (always so on CPU)")
    sleep: bool = option(True, "offload vLLM's weights and free its KV cache while training (GPU)")


@dataclass
class RolloutConfig:
    engine: str = option(
        "local",
        "where completions are generated: in process, on Ray workers, or with vLLM",
        choices=("local", "ray", "vllm"),
    )
    prompts_per_step: int = option(8, "prompts sampled per RL step", ge=1)
    num_generations: int = option(
        8, "completions per prompt (the group size; at least 2 for group advantages)", ge=1
    )
    batch_size: int = option(16, "sequences decoded together by one engine", ge=1)
    train_on: str = option(
        "text", "which completion tokens are trained: text, audio codes, or both", choices=TRAIN_ON
    )
    sampling: SamplingConfig = option(help="decoding settings", factory=SamplingConfig)
    ray: RayConfig = option(help="Ray workers (rollout.engine=ray)", factory=RayConfig)
    vllm: VLLMConfig = option(help="the vLLM engine (rollout.engine=vllm)", factory=VLLMConfig)


@dataclass
class PPOConfig:
    gamma: float = option(1.0, "discount of GAE", ge=0, le=1)
    lam: float = option(0.95, "lambda of GAE", ge=0, le=1)
    whiten_advantages: bool = option(True, "normalise advantages to mean 0, std 1 per batch")
    value_clip: float = option(0.2, "clip range of the value loss around the old values", ge=0)
    value_coef: float = option(1.0, "weight of the value loss", ge=0)
    critic_lr: float = option(5e-6, "learning rate of the critic", gt=0)
    critic_warmup_steps: int = option(0, "steps that train the critic only, policy frozen", ge=0)
    critic_path: str | None = option(
        None, "full fine-tuning: initialise the critic from this checkpoint (null: the policy's)"
    )


@dataclass
class AlgorithmConfig:
    name: str = option("grpo", "RL algorithm", choices=("grpo", "ppo"))
    advantage: str = option(
        "grpo",
        "group advantage estimator of the GRPO family (PPO uses GAE)",
        choices=GROUP_ADVANTAGES,
    )
    scale_rewards: str | None = option(
        None,
        "what centred rewards are divided by: group std, batch std, or nothing (null: the "
        "estimator's own default)",
        choices=("group", "batch", "none"),
    )
    loss_aggregation: str = option(
        "token_mean",
        "how per-token losses become one number",
        choices=("token_mean", "seq_mean", "dr_grpo"),
    )
    clip_low: float = option(0.2, "lower clip range of the importance ratio (1 - clip_low)", ge=0)
    clip_high: float = option(0.2, "upper clip range of the importance ratio (1 + clip_high)", ge=0)
    importance_sampling: str = option(
        "token", "ratio per token, or per sequence (GSPO)", choices=("token", "sequence")
    )
    tis_cap: float | None = option(
        None,
        "truncated importance sampling on the trainer/engine ratio: each token's loss is weighted "
        "by min(exp(logp_trainer - logp_engine), tis_cap) (null: 3 with rollout.engine=vllm, "
        "off otherwise; 0: off)",
        ge=0,
    )
    beta: float = option(0.0, "KL coefficient to the reference policy (0: no reference)", ge=0)
    kl_estimator: str = option(
        "k3", "per-token KL estimator (Schulman's k1 / k3)", choices=("k1", "k3")
    )
    kl_in: str = option(
        "loss",
        "where the KL term goes: the loss, or the per-token reward",
        choices=("loss", "reward"),
    )
    entropy_coef: float = option(0.0, "entropy bonus coefficient", ge=0)
    mask_truncated: bool = option(False, "leave completions cut at max_new_tokens out of the loss")
    num_iterations: int = option(1, "optimisation passes over each batch of rollouts", ge=1)
    dynamic_sampling: bool = option(False, "drop groups whose rewards are all equal (DAPO)")
    refill_rounds: int = option(
        0, "extra rollout rounds of fresh prompts to refill dropped groups (DAPO)", ge=0
    )
    difficulty_band: list[float] | None = option(
        None, "keep prompts whose pass rate is inside [lo, hi] (null: all)"
    )
    ppo: PPOConfig = option(help="PPO's critic and GAE", factory=PPOConfig)


@dataclass
class OptimConfig:
    lr: float = option(1e-6, "learning rate (AdamW)", gt=0)
    weight_decay: float = option(0.0, "AdamW weight decay", ge=0)
    lr_scheduler: str = option(
        "constant",
        "transformers learning-rate schedule (SchedulerType name)",
        choices=LR_SCHEDULERS,
    )
    warmup_steps: int = option(0, "learning-rate warmup steps", ge=0)
    max_grad_norm: float = option(1.0, "gradient norm clip", gt=0)
    micro_batch_size: int = option(
        8, "sequences per forward/backward; gradients accumulate over the rest", ge=1
    )


@dataclass
class RunConfig:
    output_dir: str = option("runs/rl", "run folder: checkpoints, metrics, resolved recipe")
    steps: int = option(100, "optimizer steps to run", ge=1)
    seed: int = option(0, "seed of sampling, shuffling and initialisation")
    save_every: int = option(50, "save a checkpoint every N steps (0: only at the end)", ge=0)
    keep_last: int = option(2, "checkpoints kept (0: all)", ge=0)
    report_to: Any = option(
        help=f"trackers: one name, a list, 'all' or 'none' (choices: {', '.join(TRACKERS)})",
        factory=list,
    )
    logprob_chunk_size: int = option(1024, "tokens per chunk through the LM head", ge=1)
    deterministic: bool = option(
        False, "bitwise-reproducible GPU runs (slower kernels); CPU runs are reproducible anyway"
    )
    distributed: str = option(
        "fsdp",
        "with several processes (accelerate launch): 'fsdp' shards parameters, gradients and "
        "optimizer state of the policy, reference and critic over them (FSDP2, ZeRO-3); 'ddp' "
        "keeps a whole copy on each and all-reduces gradients (for models that fit one device)",
        choices=("fsdp", "ddp"),
    )
    project: str = option(
        "speech-rlhf", "tracker project (W&B, trackio); the run is named after output_dir's folder"
    )
    log_samples_every: int = option(
        10, "log a table of sample completions every N steps to samples.jsonl (0: never)", ge=0
    )
    progress_every: int = option(
        10, "when output is not a terminal, print a progress line every N steps", ge=1
    )
    max_steps_without_signal: int = option(
        5,
        "stop (exit 2) after N steps in a row with nothing to learn from: every group dropped, "
        "every reward failed, every completion masked, every advantage 0 (0: never stop)",
        ge=0,
    )


@dataclass
class RLConfig:
    """`rlhf train`: one RL experiment."""

    model: ModelConfig = option(help="the policy", factory=ModelConfig)
    data: DataConfig = option(help="the prompts", factory=DataConfig)
    rollout: RolloutConfig = option(help="generating completions", factory=RolloutConfig)
    algorithm: AlgorithmConfig = option(help="the RL objective", factory=AlgorithmConfig)
    optim: OptimConfig = option(help="the optimizer", factory=OptimConfig)
    run: RunConfig = option(help="the run folder and its length", factory=RunConfig)
    rewards: list[Any] = option(
        help="weighted rewards: [{name, weight, timeout_s, where, alias, <parameters>}]",
        factory=list,
    )

    def check(self, fail: Callable[[str, str], None]) -> None:
        """Rules across keys: a run that could not learn is refused here."""
        if not self.rewards:
            fail("rewards", "the list is empty; RL needs at least one reward")
        if self.algorithm.name == "grpo" and self.rollout.num_generations < 2:
            fail(
                "rollout.num_generations",
                f"{self.rollout.num_generations} is too few: group advantages ({self.algorithm.advantage}) "
                "compare the completions of one prompt, so a group needs at least 2 (with 1 "
                "every advantage is 0)",
            )
        band = self.algorithm.difficulty_band
        if band is not None and not (len(band) == 2 and 0 <= band[0] <= band[1] <= 1):
            fail("algorithm.difficulty_band", f"{band} is not [lo, hi] with 0 <= lo <= hi <= 1")
        check_rewards(self.rewards, fail)


@dataclass
class SFTConfig:
    """`rlhf sft`: supervised fine-tuning on assistant targets."""

    model: ModelConfig = option(help="the model to fine-tune", factory=ModelConfig)
    data: DataConfig = option(help="rows with target_* columns", factory=DataConfig)
    optim: OptimConfig = option(help="the optimizer", factory=lambda: OptimConfig(lr=1e-3))
    run: RunConfig = option(
        help="the run folder and its length",
        factory=lambda: RunConfig(output_dir="runs/sft", steps=200),
    )
    train_on: str = option(
        "both", "which target tokens are trained: text, audio codes, or both", choices=TRAIN_ON
    )
    epochs: int | None = option(None, "when set, overrides run.steps", ge=1)


PAIR_KINDS = ("wrong_answer", "no_reasoning")


@dataclass
class RewardModelConfig:
    """`rlhf reward-model`: one Bradley-Terry preference reward model."""

    model: ModelConfig = option(
        help="the SFT checkpoint the model starts from", factory=ModelConfig
    )
    data: DataConfig = option(
        help="rows with chosen/rejected columns, or synthetic targets", factory=DataConfig
    )
    optim: OptimConfig = option(
        help="the optimizer", factory=lambda: OptimConfig(lr=1e-5, micro_batch_size=4)
    )
    run: RunConfig = option(
        help="the run folder and its length",
        factory=lambda: RunConfig(output_dir="runs/reward_model", steps=200),
    )
    batch_size: int = option(16, "pairs per optimizer step, over all processes", ge=1)
    max_length: int = option(
        2048, "tokens of prompt + completion; longer completions are cut", ge=1
    )
    pair_kinds: list[str] = option(
        help=f"pairs derived from synthetic targets (rows without chosen/rejected): "
        f"{', '.join(PAIR_KINDS)}",
        factory=lambda: list(PAIR_KINDS),
    )
    eval_pairs: int = option(
        200, "pairs of data.eval_split scored at the end (0: no evaluation)", ge=0
    )

    def check(self, fail: Callable[[str, str], None]) -> None:
        for kind in self.pair_kinds:
            if kind not in PAIR_KINDS:
                valid = ", ".join(PAIR_KINDS)
                fail("pair_kinds", f"{kind!r} is not one of {valid}{_nearest(kind, PAIR_KINDS)}")


def check_rewards(entries: list[Any], fail: Callable[[str, str], None]) -> None:
    """Resolve each reward's name and parameters now, without building it (no model loads)."""
    from rewards import RewardSpec, check_reward, registered_rewards

    for i, entry in enumerate(entries):
        key = f"rewards[{i}]"
        try:
            spec = RewardSpec.from_dict(entry, key)
            if ":" not in spec.name and spec.name not in registered_rewards():
                import rollouts  # noqa: F401  (registers the model-backed rewards: reward_model)
            check_reward(spec.name, **spec.params)
        except (ValueError, TypeError) as err:
            fail(key, f"{err}".removeprefix(f"{key}: "))


def _nearest(value: Any, choices: Sequence[Any]) -> str:
    text = str(value)
    near = [c for c in choices if str(c).lower() == text.lower()]
    near = near or difflib.get_close_matches(
        text.lower(), [str(c) for c in choices], n=1, cutoff=0.4
    )
    return f"; did you mean '{near[0]}'?" if near else ""


def _check_values(config: Any, fail: Callable[[str, str], None], prefix: str = "") -> None:
    """Every field against its metadata: choices and numeric bounds."""
    for f in dataclasses.fields(config):
        key, value = f"{prefix}{f.name}", getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            _check_values(value, fail, f"{key}.")
            continue
        meta = f.metadata
        if value is None or not meta:
            continue
        choices = meta["choices"]
        if choices and value not in choices:
            valid = ", ".join(map(str, choices))
            fail(key, f"{value!r} is not one of {valid}{_nearest(value, choices)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            fail(key, f"{value!r} is not a finite number")
        for bound, ok, word in (
            ("ge", lambda v, b: v >= b, ">="),
            ("gt", lambda v, b: v > b, ">"),
            ("le", lambda v, b: v <= b, "<="),
        ):
            if meta[bound] is not None and not ok(value, meta[bound]):
                fail(key, f"{value!r} must be {word} {meta[bound]:g}")


def _report_to(value: Any) -> list[str]:
    """TRL's forms: one tracker, a list, 'all' (every installed tracker, resolved when the run
    starts) or 'none'."""
    names = [value] if isinstance(value, str) else list(value or [])
    if names == ["none"]:
        return []
    if names == ["all"]:
        return names
    for name in names:
        if name not in TRACKERS:
            valid = ", ".join((*TRACKERS, "all", "none"))
            raise ValueError(f"{name!r} is not one of {valid}{_nearest(name, TRACKERS)}")
    return names


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


def _flat_keys(values: Any, prefix: str = "") -> set[str]:
    if not isinstance(values, dict):
        return {prefix.rstrip(".")} if prefix else set()
    keys = {prefix.rstrip(".")} if prefix else set()
    for key, value in values.items():
        keys |= _flat_keys(value, f"{prefix}{key}.")
    return keys


def load_config(schema: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Build ``schema`` from a YAML recipe plus ``key.sub=value`` overrides, validated."""
    source = str(path) if path else "<defaults>"
    try:
        values = OmegaConf.to_container(OmegaConf.load(path)) if path else {}
    except FileNotFoundError as err:
        raise ConfigError(f"recipe not found: {source}") from err
    except Exception as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from err
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{source}: a recipe is a mapping of keys, got {type(values).__name__}")
    _check_keys(schema, values or {}, source)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not of the form key.sub=value")
    try:
        dotlist = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        raise ConfigError(f"command line: cannot parse the overrides: {err}") from err
    _check_keys(schema, dotlist, "command line")
    given_on_command_line = _flat_keys(dotlist)

    def where(key: str) -> str:
        parts = key.replace("[", ".").split(".")
        prefixes = {".".join(parts[: i + 1]) for i in range(len(parts))}
        if prefixes & given_on_command_line:
            override = next(o for o in overrides if o.split("=", 1)[0].strip() in prefixes)
            return f"command line override '{override}'"
        return source

    merged = OmegaConf.structured(schema)
    for layer, origin in ((values or {}, None), (dotlist, "command line")):
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None) or "?"
            place = where(key) if origin else source
            raise ConfigError(f"{place}: key '{key}': {_first_line(err.msg)}") from err
    try:
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"{where(key)}: key '{key}': {_first_line(err.msg)}") from err

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{where(key)}: {key}: {message}")

    _check_values(config, fail)
    run = getattr(config, "run", None)
    if run is not None:
        try:
            run.report_to = _report_to(run.report_to)
        except (TypeError, ValueError) as err:
            fail("run.report_to", str(err))
    if hasattr(config, "check"):
        config.check(fail)
    return config


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else message


def config_to_yaml(config: Any, comments: bool = True) -> str:
    """The resolved config as YAML, each key preceded by its help text as a comment; credentials
    masked (a judge URL's ``user:key@``, a key pasted into ``api_key_env``)."""
    import yaml

    from rewards.redact import redact

    def scalar(value: Any) -> str:
        return (
            yaml.safe_dump(value, default_flow_style=True, width=10**6)
            .strip()
            .removesuffix("\n...")
            .removesuffix("...")
            .strip()
        )

    lines: list[str] = []

    def emit(obj: Any, indent: int) -> None:
        pad = "  " * indent
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            text = f.metadata.get("help", "") if comments else ""
            if text:
                lines.append(f"{pad}# {text}")
            if dataclasses.is_dataclass(value):
                lines.append(f"{pad}{f.name}:")
                emit(value, indent + 1)
            else:
                lines.append(f"{pad}{f.name}: {scalar(redact(value))}")

    emit(config, 0)
    return "\n".join(lines) + "\n"


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML so a run folder says exactly what ran, credentials
    masked (a judge URL's ``user:key@``, a key pasted into ``api_key_env``)."""
    from rewards.redact import redact

    values = OmegaConf.to_container(OmegaConf.structured(config))
    Path(path).write_text(OmegaConf.to_yaml(redact(values)))

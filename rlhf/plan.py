"""`rlhf plan RECIPE.yaml --gpus N --gpu-memory GB [key=value ...]`: memory per GPU, before launching.

The recipe's policy is built on the meta device (shapes only: nothing is read or allocated) from
``model.path``'s ``config.json``, or ``--model-config``, or, when neither exists, the released
Step-Audio-2-mini config. Then every term one training process holds is added up as the trainer
lays it out (``rlhf.training``, ``rlhf.distributed``), with ``S`` the shards of a model (the
GPUs under ``run.distributed=fsdp``, 1 under ``ddp``), ``P`` parameters, ``T`` trained ones:

- parameters ``4 B × P / S`` (fp32 master weights), gradients ``4 B × T / S``, AdamW ``8 B × T / S``;
- gathered (fsdp): the unsharded fp32 working set, ``4 B ×`` (the root unit: embeddings, LM head,
  final norm, adaptor, encoder stem; plus two decoder layers, the running and the prefetched);
- reference (``beta > 0``, no LoRA): ``2 B × P / S``, held in the compute dtype;
- critic (PPO): full fine-tuning, the same body with a 1-output head, as the policy
  (``16 B × T_critic / S`` plus its frozen part); under LoRA a second adapter (``16 B ×`` its size);
- activations of one micro-batch, ``n = micro_batch_size × (prompt_tokens + max_new_tokens)``
  tokens, SDPA/flash attention (no ``L²`` term), per layer and token ``a = 2 B × (6 H + 4 I) +
  8 B × H`` (bf16 norm outputs, q/k/v, attention output, MLP gate, up and product; the fp32
  residual and norm input): ``layers × a × n`` without checkpointing, ``4 B × H × layers × n``
  (each layer's fp32 input) ``+ a × n`` (the layer being recomputed) with it;
- log-prob chunk: ``2 × 4 B × chunk × V`` (log p and p in the backward) ``+ 4 B × n × H``;
- rollout engine, main process, local engine only: its ``2 B × P`` copy (when it does not share
  the trained weights), its KV cache ``2 B × 2 × layers × kv_heads × head_dim × batch × tokens``
  and ``4 B × batch × V`` logits. Generation and the update do not overlap: the peak holds the
  larger of the two transients;
- ``reward_model`` rewards: the scoring model (the body and a 1-output head) in its ``dtype``, on
  the main process's GPU unless its ``device`` names another one.

The total is that of the fullest GPU: the main process's, or another one holding a reward model.

It fits when the total is within 90 % of ``--gpu-memory`` (the CUDA context, the allocator's
fragmentation and NCCL buffers take the rest). When it does not, the plan names the settings
that would make it fit, each tried through this same estimate.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

GB = 1e9
USABLE = 0.9
RELEASED_CONFIG = Path(__file__).resolve().parent.parent / "rollouts" / "modeling"
RELEASED_CONFIG = RELEASED_CONFIG / "step_audio_2_mini_config.json"


@dataclass
class Shapes:
    """What the estimate needs of a model, counted on the meta device."""

    name: str
    params: int
    encoder: int  # the audio encoder (frozen by model.freeze_audio_encoder)
    adapter: int  # the audio adaptor (frozen in a critic with the encoder)
    lm_head: int
    root: int  # parameters outside every decoder layer and encoder block (FSDP's root unit)
    layer: int  # one decoder layer
    lora: int  # LoRA adapter parameters for the recipe's target modules
    hidden: int
    intermediate: int
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int


def model_shapes(config_path: Path, lora_r: int, lora_targets: list[str]) -> Shapes:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

    import rollouts  # noqa: F401  (registers Step-Audio 2)

    if config_path.name.endswith(".json"):
        config_dict, _ = PretrainedConfig.get_config_dict(str(config_path))
        config = AutoConfig.for_model(**config_dict)
    else:
        config = AutoConfig.from_pretrained(config_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    text = config.get_text_config()
    units = set(getattr(model, "_no_split_modules", None) or ())
    in_units, layer = 0, 0
    for module in model.modules():
        if type(module).__name__ in units:
            size = sum(p.numel() for p in module.parameters())
            in_units += size
            if type(module).__name__ == "Qwen2DecoderLayer" or "Decoder" in type(module).__name__:
                layer = max(layer, size)
    lora = sum(
        lora_r * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
        and name.rsplit(".", 1)[-1] in lora_targets
        and "encoder" not in name
    )

    def count(name: str) -> int:
        module = getattr(model, name, None)
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    params = sum(p.numel() for p in model.parameters())
    heads = text.num_attention_heads
    return Shapes(
        name=type(model).__name__,
        params=params,
        encoder=count("encoder"),
        adapter=count("adapter"),
        lm_head=count("lm_head"),
        root=params - in_units,
        layer=layer,
        lora=lora,
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        layers=text.num_hidden_layers,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        vocab=text.vocab_size,
    )


def estimate(config: Any, shapes: Shapes, gpus: int, prompt_tokens: int) -> dict[str, float]:
    """Bytes per GPU of each term (see the module docstring), the worst process's."""
    model, algorithm = config.model, config.algorithm
    lora = model.lora.enabled
    sharded = gpus > 1
    shards = gpus if sharded and config.run.distributed == "fsdp" else 1
    compute_bytes = 2 if model.dtype == "bfloat16" else 4
    frozen = shapes.encoder if model.freeze_audio_encoder else 0
    trained = shapes.lora if lora else shapes.params - frozen
    terms: dict[str, float] = {
        "parameters": 4 * (shapes.params + (shapes.lora if lora else 0)) / shards,
        "gradients": 4 * trained / shards,
        "optimizer": 8 * trained / shards,
        "gathered": 4 * (shapes.root + 2 * shapes.layer) if shards > 1 else 0.0,
        "reference": compute_bytes * shapes.params / shards
        if algorithm.beta > 0 and not lora
        else 0.0,
        "critic": 0.0,
    }
    if algorithm.name == "ppo":
        if lora:
            terms["critic"] = 16 * shapes.lora + 16 * (shapes.hidden + 1)
        else:
            body = shapes.params - shapes.lm_head + shapes.hidden  # the score head for lm_head
            critic_frozen = shapes.encoder + shapes.adapter if model.freeze_audio_encoder else 0
            terms["critic"] = (4 * body + 12 * (body - critic_frozen)) / shards
    tokens = config.optim.micro_batch_size * (
        prompt_tokens + config.rollout.sampling.max_new_tokens
    )
    per_token = 2 * (6 * shapes.hidden + 4 * shapes.intermediate) + 8 * shapes.hidden
    stored = 4 * shapes.hidden * shapes.layers * tokens + per_token * tokens
    full = shapes.layers * per_token * tokens
    terms["activations"] = stored if model.gradient_checkpointing else full
    terms["activations_other"] = full if model.gradient_checkpointing else stored
    chunk = min(config.run.logprob_chunk_size, tokens)
    terms["logprob_chunk"] = 2 * 4 * chunk * shapes.vocab + 4 * tokens * shapes.hidden
    local = config.rollout.engine == "local"
    shares = local and not sharded and model.dtype == "float32"
    terms["engine_weights"] = compute_bytes * shapes.params if local and not shares else 0.0
    sequence = prompt_tokens + config.rollout.sampling.max_new_tokens
    kv = 2 * 2 * shapes.layers * shapes.kv_heads * shapes.head_dim * sequence
    terms["engine_cache"] = config.rollout.batch_size * (kv + 4 * shapes.vocab) if local else 0.0
    scorer = shapes.params - shapes.lm_head + shapes.hidden
    on_main = on_other = 0.0
    for entry in config.rewards:
        if dict(entry).get("name") == "reward_model":
            size = scorer * (2 if entry.get("dtype") in ("bfloat16", "float16") else 4)
            if str(entry.get("device") or "cuda:0") in ("cuda", "cuda:0"):
                on_main += size
            else:
                on_other += size
    terms["reward_models"] = on_main
    terms["reward_models_elsewhere"] = on_other
    static = sum(terms[k] for k in ("parameters", "gradients", "optimizer", "reference", "critic"))
    update = terms["gathered"] + terms["activations"] + terms["logprob_chunk"]
    main = static + terms["engine_weights"] + on_main + max(update, terms["engine_cache"])
    terms["total"] = max(main, static + on_other + update)
    return terms


def _set(section: str, **changes: Any):
    return lambda config: replace_in(config, section, **changes)


SUGGESTIONS = (
    ("model.gradient_checkpointing=true", _set("model", gradient_checkpointing=True)),
    ("run.distributed=fsdp", _set("run", distributed="fsdp")),
    ("rollout.engine=ray (generation on other GPUs)", _set("rollout", engine="ray")),
    ("optim.micro_batch_size=1", _set("optim", micro_batch_size=1)),
    ("rollout.batch_size=16", _set("rollout", batch_size=16)),
    ("run.logprob_chunk_size=256", _set("run", logprob_chunk_size=256)),
    (
        "model.lora.enabled=true",
        lambda config: replace_in(config, "model", lora=replace(config.model.lora, enabled=True)),
    ),
)
"""Single changes the plan tries when a recipe does not fit, in the order it names them."""


def replace_in(config: Any, section: str, **changes: Any) -> Any:
    return replace(config, **{section: replace(getattr(config, section), **changes)})


def suggestions(config: Any, shapes: Shapes, gpus: int, memory: float, prompt_tokens: int):
    """The single settings that would make the plan fit, and else how many GPUs would."""
    usable = USABLE * memory
    fixes = []
    for text, change in SUGGESTIONS:
        changed = change(config)
        if changed != config and estimate(changed, shapes, gpus, prompt_tokens)["total"] <= usable:
            fixes.append(text)
    if not fixes:
        for more in (2 * gpus, 4 * gpus, 8 * gpus):
            if estimate(config, shapes, more, prompt_tokens)["total"] <= usable:
                fixes.append(f"{more} GPUs")
                break
    return fixes


def render(
    config: Any, shapes: Shapes, source: str, gpus: int, memory: float, prompt_tokens: int
) -> str:
    """The plan as text: one line per term, GB per GPU, and whether it fits."""
    terms = {k: v / GB for k, v in estimate(config, shapes, gpus, prompt_tokens).items()}
    shards = gpus if gpus > 1 and config.run.distributed == "fsdp" else 1
    if shards > 1:
        layout = f"run.distributed=fsdp: each model split over {shards} GPUs"
    else:
        layout = "run.distributed=ddp: a whole copy per GPU" if gpus > 1 else "one process"
    model, rollout = config.model, config.rollout
    tuning = f"LoRA r={model.lora.r}" if model.lora.enabled else "full fine-tuning"
    tokens = config.optim.micro_batch_size * (prompt_tokens + rollout.sampling.max_new_tokens)
    on, off = ("on", "off") if model.gradient_checkpointing else ("off", "on")
    rows = [
        ("parameters (fp32 master weights)", "parameters"),
        ("gradients (fp32)", "gradients"),
        ("optimizer state (AdamW, 2 x fp32)", "optimizer"),
        ("gathered for compute (FSDP root unit + 2 layers)", "gathered"),
        ("reference (compute dtype)", "reference"),
        ("critic (weights, gradients, AdamW)", "critic"),
        (f"activations, {tokens} tokens, checkpointing {on}", "activations"),
        (f"  (with checkpointing {off})", "activations_other"),
        (f"log-prob chunk ({config.run.logprob_chunk_size} tokens)", "logprob_chunk"),
        ("rollout engine (main process): weights", "engine_weights"),
        (f"  KV cache + logits of {rollout.batch_size} sequences", "engine_cache"),
        ("reward models (main process)", "reward_models"),
        ("  on another GPU (their `device`)", "reward_models_elsewhere"),
        ("total at peak, fullest GPU", "total"),
    ]
    lines = [
        f"{gpus} x {memory:g} GB, {layout}",
        f"model: {shapes.name} ({source}), {shapes.params / 1e9:.2f} B parameters, "
        f"compute {model.dtype}, {tuning}",
        "",
        f"{'per GPU':<50}{'GB':>7}",
        *(f"{label:<50}{terms[key]:>7.1f}" for label, key in rows),
        "",
    ]
    usable = USABLE * memory
    if terms["total"] <= usable:
        lines.append(f"fits: {terms['total']:.1f} GB of {usable:.0f} GB usable ({memory:g} GB)")
    else:
        fixes = suggestions(config, shapes, gpus, memory * GB, prompt_tokens)
        advice = f"change one of: {', '.join(fixes)}" if fixes else "no single setting fixes it"
        lines.append(f"does NOT fit: {terms['total']:.1f} GB > {usable:.0f} GB usable; {advice}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="YAML recipe of `rlhf train` (see recipes/)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs the run uses (default 8)")
    parser.add_argument(
        "--gpu-memory", type=float, default=80.0, help="memory of one GPU in GB (default 80)"
    )
    parser.add_argument(
        "--prompt-tokens",
        type=int,
        default=512,
        help="tokens of a prompt (default 512: a 25 s clip is 312 audio tokens, plus the text)",
    )
    parser.add_argument(
        "--model-config",
        default=None,
        help="config.json (or folder) of the model; default: model.path's, else the released "
        "Step-Audio-2-mini config",
    )


def run(args: argparse.Namespace) -> int:
    from rlhf.config import ConfigError, RLConfig, load_config

    if args.gpus < 1 or args.gpu_memory <= 0 or args.prompt_tokens < 1:
        raise ConfigError("--gpus, --gpu-memory and --prompt-tokens must be positive")
    config = load_config(RLConfig, args.recipe, args.overrides)
    if args.model_config:
        source = Path(args.model_config)
    elif (Path(config.model.path) / "config.json").exists():
        source = Path(config.model.path)
    else:
        source = RELEASED_CONFIG
    lora = config.model.lora
    shapes = model_shapes(source, lora.r, list(lora.target_modules))
    label = "released Step-Audio-2-mini config" if source == RELEASED_CONFIG else str(source)
    print(f"rlhf plan {args.recipe}")
    print(render(config, shapes, label, args.gpus, args.gpu_memory, args.prompt_tokens))
    return 0

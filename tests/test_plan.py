"""`rlhf plan`: memory per GPU from meta-device models, for the paper recipes and the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf.cli import main
from rlhf.config import RLConfig, load_config
from rlhf.plan import RELEASED_CONFIG, estimate, model_shapes
from rollouts.policy import Policy

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
PAPER = [
    "step_audio2_ppo_think.yaml",
    "step_audio2_ppo_rm.yaml",
    "step_audio2_grpo_perception.yaml",
    "step_audio_r1_ppo.yaml",
]


@pytest.mark.parametrize("recipe", PAPER)
def test_paper_recipes_fit_eight_80gb_gpus(recipe, capsys):
    assert main(["plan", str(RECIPES / recipe), "--gpus", "8", "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out
    assert "(released Step-Audio-2-mini config), 8.32 B parameters" in out
    assert "\nfits: " in out, out


def test_a_plan_that_does_not_fit_names_the_setting_to_change(capsys):
    recipe = str(RECIPES / "step_audio2_ppo_think.yaml")
    main(["plan", recipe, "--gpus", "8", "model.gradient_checkpointing=false"])
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("does NOT fit: 120.9 GB > 72 GB usable"), last
    assert last.endswith("change one of: model.gradient_checkpointing=true"), last


def test_counts_match_the_real_model_and_sharding_divides_the_state(tiny_model_dir):
    """Parameter and LoRA counts are the loaded model's; fsdp divides the trained state by the
    number of GPUs, ddp does not; checkpointing keeps one fp32 hidden state per layer and token
    instead of every layer's activations."""
    from peft import LoraConfig, get_peft_model

    config = load_config(
        RLConfig,
        RECIPES / "step_audio2_grpo_perception.yaml",
        [f"model.path={tiny_model_dir}", "model.lora.r=4"],
    )
    targets = list(config.model.lora.target_modules)
    shapes = model_shapes(Path(tiny_model_dir), 4, targets)
    model = Policy.from_pretrained(tiny_model_dir).model
    assert shapes.params == sum(p.numel() for p in model.parameters())
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=targets))
    lora = sum(p.numel() for n, p in peft.named_parameters() if "lora_" in n)
    assert shapes.lora == lora

    one, eight = (estimate(config, shapes, gpus, 512) for gpus in (1, 8))
    trained = shapes.params - shapes.encoder  # the audio encoder is frozen
    assert one["optimizer"] == 8 * trained and eight["optimizer"] == one["optimizer"] / 8
    ddp = estimate(replace_run(config, distributed="ddp"), shapes, 8, 512)
    assert ddp["optimizer"] == one["optimizer"] and ddp["gathered"] == 0
    tokens = config.optim.micro_batch_size * (512 + config.rollout.sampling.max_new_tokens)
    kept = 4 * shapes.hidden * shapes.layers * tokens
    assert one["activations"] - kept == one["activations_other"] / shapes.layers


def replace_run(config, **changes):
    from dataclasses import replace

    return replace(config, run=replace(config.run, **changes))


def test_the_released_config_is_step_audio_2_mini():
    shapes = model_shapes(RELEASED_CONFIG, 16, ["q_proj"])
    assert (shapes.hidden, shapes.layers, shapes.vocab) == (3584, 28, 158720)
    assert shapes.lm_head == 3584 * 158720
    assert shapes.params == 8_315_179_264


def test_a_reward_model_counts_on_the_gpu_it_is_placed_on():
    """ppo_rm puts its bf16 reward model on GPU 1, beside no engine; on the main GPU it would
    not fit."""
    recipe = RECIPES / "step_audio2_ppo_rm.yaml"
    shapes = model_shapes(RELEASED_CONFIG, 16, ["q_proj"])
    scorer = 2 * (shapes.params - shapes.lm_head + shapes.hidden)
    placed = estimate(load_config(RLConfig, recipe, []), shapes, 8, 512)
    assert (placed["reward_models"], placed["reward_models_elsewhere"]) == (0, scorer)
    main_gpu = load_config(
        RLConfig, recipe, ["rewards=[{name: reward_model, path: rm, dtype: bfloat16}]"]
    )
    crowded = estimate(main_gpu, shapes, 8, 512)
    assert crowded["reward_models"] == scorer
    assert crowded["total"] == placed["total"] + scorer > 72e9

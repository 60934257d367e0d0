"""PPO critic: value alignment, training, and separation from the policy under LoRA and full FT."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from rlhf.algorithms import final_token_rewards, gae
from rlhf.config import RLConfig, load_config
from rlhf.critic import CRITIC_ADAPTER, build_critic
from rlhf.data.grammar import corpus
from rollouts.policy import Policy
from rollouts.tiny import make_tiny
from rollouts.types import PromptSample
from rollouts.weights import policy_state


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("critic") / "tiny", [corpus()], num_audio_codes=32)


def rl_config(path, *overrides: str) -> RLConfig:
    return load_config(
        RLConfig,
        None,
        [
            f"model.path={path}",
            "data.path=unused",
            "algorithm.name=ppo",
            "algorithm.ppo.critic_lr=0.001",
            "rewards=[{name: think_length}]",
            *overrides,
        ],
    )


def lora_policy(config: RLConfig) -> Policy:
    """The trainer's LoRA policy: the checkpoint with a peft "default" adapter."""
    from peft import LoraConfig, get_peft_model

    policy = Policy.from_pretrained(config.model.path)
    policy.base.encoder.requires_grad_(False)
    policy.base.adapter.requires_grad_(False)
    lora = config.model.lora
    policy.model = get_peft_model(
        policy.model,
        LoraConfig(r=lora.r, lora_alpha=lora.alpha, target_modules=list(lora.target_modules)),
    )
    return policy


def sequences(policy: Policy):
    """Three prompts with audio of different lengths, completions of 6, 9 and 3 tokens."""
    rng = np.random.default_rng(0)
    samples = [
        PromptSample(
            id=str(i),
            messages=[
                {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Pace?"}]}
            ],
            audio=[(0.1 * rng.standard_normal(seconds * 16000)).astype(np.float32)],
            columns={},
        )
        for i, seconds in enumerate((1, 2, 1))
    ]
    inputs = policy.processor(samples)
    prompts = [
        row[mask.bool()].tolist()
        for row, mask in zip(inputs["input_ids"], inputs["attention_mask"])
    ]
    completions = [rng.integers(10, 200, size=n).tolist() for n in (6, 9, 3)]
    return policy.sequence_batch(
        prompts, completions, inputs["input_features"], inputs["feature_lens"]
    )


def lora_params(model, adapter: str) -> list[torch.nn.Parameter]:
    return [p for name, p in model.named_parameters() if f".{adapter}." in name]


def train_critic(critic, batch, returns, steps: int) -> list[float]:
    mask = batch.completion_mask.float()
    losses = []
    for _ in range(steps):
        old = critic.values(batch)
        losses.append(critic.backward(batch, old, returns, mask)["value_loss"])
        critic.optimizer_step(max_grad_norm=1.0)
    return losses


def targets(batch) -> torch.Tensor:
    scores = torch.tensor([1.0, -1.0, 0.5])
    mask = batch.completion_mask
    zeros = torch.zeros(mask.shape)
    return gae(final_token_rewards(scores, mask), zeros, mask, gamma=1.0, lam=1.0)[1]


def test_lora_critic_is_a_second_adapter_kept_apart_from_the_policy(tiny):
    config = rl_config(tiny, "model.lora.enabled=true")
    policy = lora_policy(config)
    base_count = sum(p.numel() for p in policy.base.parameters())
    critic = build_critic(config, policy, "cpu")
    model = policy.model
    assert model.active_adapter == "default"
    # no second base: only the adapter's and the head's parameters were added
    critic_ids = {id(p) for p in critic.parameters()}
    added = sum(p.numel() for p in critic.parameters())
    head = sum(p.numel() for p in critic.head.parameters())
    assert sum(p.numel() for p in policy.base.parameters()) - base_count == added - head
    # what the trainer hands the policy optimizer (requires_grad) holds no critic parameter
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and not critic_ids & {id(p) for p in trainable}
    assert all(not p.requires_grad for p in lora_params(model, CRITIC_ADAPTER))

    batch = sequences(policy)
    before, _ = policy.logprobs(batch)
    critic.values(batch)  # switches adapters and back
    assert model.active_adapter == "default"
    assert torch.equal(policy.logprobs(batch)[0], before)

    # the policy's loss reaches the policy's adapter only
    policy.logprobs(batch)[0].sum().backward()
    assert all(p.grad is None for p in critic.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_params(model, "default"))
    model.zero_grad(set_to_none=True)

    # the critic's loss reaches the critic only, and is not dropped by the adapter switch
    mask = batch.completion_mask.float()
    critic.backward(batch, critic.values(batch), targets(batch), mask)
    assert all(p.grad is None for p in lora_params(model, "default"))
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
    assert critic.head.weight.grad.abs().sum() > 0
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in lora_params(model, CRITIC_ADAPTER)
    )
    assert all(not p.requires_grad for p in lora_params(model, CRITIC_ADAPTER))


def test_lora_value_loss_falls_and_policy_is_untouched(tiny):
    config = rl_config(tiny, "model.lora.enabled=true")
    policy = lora_policy(config)
    critic = build_critic(config, policy, "cpu")
    batch = sequences(policy)
    policy_before = {k: v.clone() for k, v in policy_state(policy.model).items()}
    logprobs_before, _ = policy.logprobs(batch)

    losses = train_critic(critic, batch, targets(batch), steps=12)
    assert losses[-1] < 0.1 * losses[0], losses

    # the policy (adapter and merged weights) did not move, and the critic is not merged into it
    after = policy_state(policy.model)
    assert after.keys() == policy_before.keys()
    assert not any(CRITIC_ADAPTER in k for k in after)
    assert all(torch.equal(after[k], v) for k, v in policy_before.items())
    assert torch.allclose(policy.logprobs(batch)[0], logprobs_before)
    merged = Policy(copy.deepcopy(policy.model).merge_and_unload(), policy.processor)
    assert torch.allclose(merged.logprobs(batch)[0], logprobs_before, atol=1e-5)

    # the state round-trips through torch.save with weights_only, into a fresh policy's critic
    state = critic.state_dict()
    path = tiny.parent / "critic_state.pt"
    torch.save(state, path)
    other_policy = lora_policy(config)
    other = build_critic(config, other_policy, "cpu")
    other.load_state_dict(torch.load(path, weights_only=True))
    assert torch.allclose(other.values(batch), critic.values(batch), atol=1e-6)


def test_critic_backward_is_right_under_gradient_checkpointing(tiny):
    """Checkpointing re-runs the decoder in backward: the critic adapter must still be active."""
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        config = rl_config(tiny, "model.lora.enabled=true")
        policy = lora_policy(config)
        if checkpointing:
            policy.base.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        critic = build_critic(config, policy, "cpu")
        batch = sequences(policy)
        train_critic(critic, batch, targets(batch), steps=1)  # makes lora_B non-zero
        policy.model.train()
        critic.backward(batch, critic.values(batch), targets(batch), batch.completion_mask.float())
        assert all(p.grad is not None for p in critic.parameters())
        grads.append([p.grad.clone() for p in critic.parameters()])
        assert all(p.grad is None for p in lora_params(policy.model, "default"))
    for plain, checkpointed in zip(*grads):
        assert torch.allclose(plain, checkpointed, atol=1e-6)


def test_full_critic_values_are_prefix_scores_and_train(tiny):
    from rollouts.value_model import StepAudio2ForSequenceClassification

    config = rl_config(tiny)
    policy = Policy.from_pretrained(tiny)
    critic = build_critic(config, policy, "cpu")
    policy_ids = {p.data_ptr() for p in policy.model.parameters()}
    assert not policy_ids & {p.data_ptr() for p in critic.parameters()}  # a copy, not shared

    batch = sequences(policy)
    values = critic.values(batch)
    assert values.shape == batch.completion_ids.shape
    assert torch.all(values[batch.completion_mask == 0] == 0)
    # values[b, t] is the score of the prefix that predicts completion token t
    model = critic.body.model
    row, t = 1, 4
    end = int(batch.prompt_lengths[row]) + t
    clips = slice(row, row + 1)
    with torch.no_grad():
        prefix = model(
            input_ids=batch.input_ids[row : row + 1, :end],
            input_features=batch.input_features[clips],
            feature_lens=batch.feature_lens[clips],
        ).logits[0, 0]
    assert torch.allclose(values[row, t], prefix, atol=1e-5)

    policy_before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    losses = train_critic(critic, batch, targets(batch), steps=15)
    assert losses[-1] < 0.3 * losses[0], losses
    assert all(torch.equal(v, policy.model.state_dict()[k]) for k, v in policy_before.items())

    # a reward-model checkpoint as critic_path keeps its trained score head
    rm_dir = tiny.parent / "rm_as_critic"
    model.save_pretrained(rm_dir)
    policy.processor.save_pretrained(rm_dir)
    from_rm = build_critic(rl_config(tiny, f"algorithm.ppo.critic_path={rm_dir}"), policy, "cpu")
    assert isinstance(from_rm.body.model, StepAudio2ForSequenceClassification)
    assert torch.allclose(from_rm.values(batch), critic.values(batch), atol=1e-5)


def test_lora_critic_rejects_a_critic_path(tiny):
    config = rl_config(tiny, "model.lora.enabled=true", "algorithm.ppo.critic_path=/somewhere")
    with pytest.raises(ValueError, match="critic_path"):
        build_critic(config, lora_policy(config), "cpu")

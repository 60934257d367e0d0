"""Parity with TRL 1.x: our advantages and policy loss against GRPOTrainer's and RLOOTrainer's code.

A tiny random Qwen2 and a word-level tokenizer are built locally (no network). TRL's trainers are
constructed for real and their own methods called: `compute_loss` on hand-made inputs shaped as
`_generate_and_score_completions` returns them, and `_generate_and_score_completions` itself
(a few sampled tokens from the tiny model, rewards read from a dataset column) for the
advantages. Our side computes log-probs from full logits and calls `rlhf.algorithms`. Losses and
every parameter gradient agree to 1e-5.
"""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from rlhf.algorithms import group_advantages, policy_loss

# TRL/transformers deprecation chatter (gradient_checkpointing naming) is not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

VOCAB = 48
NUM_GENERATIONS = 2
MAX_COMPLETION_LENGTH = 8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny Qwen2 (TRL loads the reference model from the path) and its tokenizer."""
    vocab = {"<unk>": 0, "<pad>": 1, "<eos>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
    )
    path = tmp_path_factory.mktemp("tiny_qwen2")
    Qwen2ForCausalLM(config).save_pretrained(path)
    return str(path), tokenizer


def _common_args(tmp_path, **overrides) -> dict:
    args = dict(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=4,
        num_generations=NUM_GENERATIONS,
        max_completion_length=MAX_COMPLETION_LENGTH,
        logging_strategy="no",
        save_strategy="no",
        seed=0,
    )
    return {**args, **overrides}


def _grpo_trainer(tiny, tmp_path, **overrides) -> GRPOTrainer:
    path, tokenizer = tiny
    trainer = GRPOTrainer(
        model=path,
        reward_funcs=_column_reward,
        args=GRPOConfig(**_common_args(tmp_path, **overrides)),
        train_dataset=_dataset(),
        processing_class=tokenizer,
    )
    trainer.model.train()
    # Set by Trainer's training loop: the number of micro-batches in this optimizer step.
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    return trainer


def _column_reward(prompts, completions, reward, **kwargs):
    """The reward is a dataset column, so the test fixes it whatever the model generates."""
    return reward


def _dataset():
    from datasets import Dataset

    return Dataset.from_dict({"prompt": ["w3 w4"], "reward": [0.0]})


def _loss_inputs(model, generator: torch.Generator, completion_lens=(6, 2, 4, 1)) -> dict:
    """A batch shaped as GRPOTrainer's `_generate_and_score_completions` output (4 completions)."""
    prompt_lens = [3, 5, 4, 5]
    batch, p_len, c_len = 4, max(prompt_lens), max(completion_lens)
    prompt_ids = torch.full((batch, p_len), 1)
    prompt_mask = torch.zeros(batch, p_len, dtype=torch.long)
    completion_ids = torch.full((batch, c_len), 1)
    completion_mask = torch.zeros(batch, c_len, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_lens, completion_lens, strict=True)):
        prompt_ids[i, p_len - p :] = torch.randint(3, VOCAB, (p,), generator=generator)  # left pad
        prompt_mask[i, p_len - p :] = 1
        completion_ids[i, :c] = torch.randint(3, VOCAB, (c,), generator=generator)  # right pad
        completion_mask[i, :c] = 1
    rewards = torch.tensor([1.0, 0.0, 0.3, 0.9])
    groups = torch.arange(batch) // NUM_GENERATIONS
    with torch.no_grad():
        logps, _ = _our_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
    # Old and reference log-probs off the current ones. The row shifts put sequence 0 (A > 0) above
    # and sequence 1 (A < 0) below the clip range, so both clipped branches are compared, at token
    # and at sequence level. Untrained positions hold 0, as TRL's fused log-prob pass returns there.
    mask = completion_mask.bool()
    shift = torch.tensor([[-0.4], [0.4], [0.0], [-0.1]])
    noise = 0.3 * torch.randn(logps.shape, generator=generator)
    old = torch.where(mask, logps + shift + noise, 0.0)
    ref = torch.where(mask, logps + 0.5 * torch.randn(logps.shape, generator=generator), 0.0)
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": group_advantages(rewards, groups, "grpo"),
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": completion_mask.sum(),
    }


def _our_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask):
    """Completion log-probs and entropies from full logits: the simple path, not the chunked one."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logits = logits[:, prompt_ids.size(1) - 1 : -1].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    logps = log_probs.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return logps, entropy


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


AGGREGATION = {"grpo": "seq_mean", "dapo": "token_mean", "bnpo": "token_mean", "dr_grpo": "dr_grpo"}
# (TRL loss_type, beta, importance_sampling_level, epsilon_high, entropy_coef, use_bias_correction_kl)
CASES = [
    *[(loss, beta, "token", 0.2, 0.0, True) for loss in AGGREGATION for beta in (0.0, 0.1)],
    ("grpo", 0.0, "sequence", 0.2, 0.0, True),  # GSPO
    ("grpo", 0.1, "sequence", 0.28, 0.0, True),
    ("dapo", 0.0, "token", 0.28, 0.0, True),  # clip-higher
    ("dapo", 0.05, "token", 0.28, 0.01, True),  # entropy bonus
    ("grpo", 0.1, "token", 0.2, 0.0, False),  # plain k3, no importance weight on the KL
    ("dr_grpo", 0.1, "token", 0.2, 0.0, False),
]


@pytest.mark.parametrize(
    ("loss_type", "beta", "level", "epsilon_high", "entropy_coef", "bias_correction"), CASES
)
def test_policy_loss_matches_trl(
    tiny, tmp_path, loss_type, beta, level, epsilon_high, entropy_coef, bias_correction
):
    trainer = _grpo_trainer(
        tiny,
        tmp_path,
        loss_type=loss_type,
        beta=beta,
        importance_sampling_level=level,
        epsilon=0.2,
        epsilon_high=epsilon_high,
        entropy_coef=entropy_coef,
        use_bias_correction_kl=bias_correction,
    )
    model = trainer.model
    inputs = _loss_inputs(model, torch.Generator().manual_seed(1))

    model.zero_grad(set_to_none=True)
    trl_loss = trainer.compute_loss(model, inputs)
    trl_loss.backward()
    trl_grads = _grads(model)

    logps, entropy = _our_logprobs(
        model,
        inputs["prompt_ids"],
        inputs["prompt_mask"],
        inputs["completion_ids"],
        inputs["completion_mask"],
    )
    loss, metrics = policy_loss(
        logps,
        inputs["old_per_token_logps"],
        inputs["advantages"],
        inputs["completion_mask"],
        clip_low=0.2,
        clip_high=epsilon_high,
        importance_sampling_level=level,
        aggregation=AGGREGATION[loss_type],
        ref_logprobs=inputs["ref_per_token_logps"],
        beta=beta,
        kl_estimator="k3",
        kl_importance_weighted=bias_correction,
        entropy=entropy,
        entropy_coef=entropy_coef,
        max_completion_length=MAX_COMPLETION_LENGTH,
    )
    loss.backward()
    our_grads = _grads(model)

    torch.testing.assert_close(loss, trl_loss, atol=1e-5, rtol=1e-5)
    assert our_grads.keys() == trl_grads.keys() and len(our_grads) > 10
    for name, grad in our_grads.items():
        torch.testing.assert_close(grad, trl_grads[name], atol=1e-5, rtol=1e-5, msg=name)
    assert metrics["clip_fraction_low"] > 0 and metrics["clip_fraction_high"] > 0
    trl_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    assert metrics["clip_fraction_low"] == pytest.approx(
        trl_metrics["clip_ratio/low_mean"], abs=1e-6
    )
    assert metrics["clip_fraction_high"] == pytest.approx(
        trl_metrics["clip_ratio/high_mean"], abs=1e-6
    )
    assert metrics["entropy"] == pytest.approx(trl_metrics["entropy"], abs=1e-5)
    if beta:
        assert metrics["kl"] == pytest.approx(trl_metrics["kl"], abs=1e-5)


@pytest.mark.parametrize(("loss_type", "beta"), [("dapo", 0.1), ("grpo", 0.0), ("dr_grpo", 0.1)])
def test_gradient_accumulation_matches_trl(tiny, tmp_path, loss_type, beta):
    """Two micro-batches of unequal token counts: `total_tokens` is TRL's `num_items_in_batch`."""
    trainer = _grpo_trainer(
        tiny, tmp_path, loss_type=loss_type, beta=beta, gradient_accumulation_steps=2
    )
    model = trainer.model
    micro = [
        _loss_inputs(model, torch.Generator().manual_seed(1)),
        _loss_inputs(model, torch.Generator().manual_seed(2), completion_lens=(1, 1, 3, 2)),
    ]
    total_tokens = sum(m["completion_mask"].sum() for m in micro)
    model.zero_grad(set_to_none=True)
    trl_loss = 0.0
    for inputs in micro:
        inputs["num_items_in_batch"] = total_tokens  # spans the generation batch in TRL
        loss = trainer.compute_loss(model, inputs)
        loss.backward()
        trl_loss += loss.detach()
    trl_grads = _grads(model)

    our_loss = 0.0
    for inputs in micro:
        logps, _ = _our_logprobs(
            model,
            inputs["prompt_ids"],
            inputs["prompt_mask"],
            inputs["completion_ids"],
            inputs["completion_mask"],
        )
        loss, _ = policy_loss(
            logps,
            inputs["old_per_token_logps"],
            inputs["advantages"],
            inputs["completion_mask"],
            aggregation=AGGREGATION[loss_type],
            ref_logprobs=inputs["ref_per_token_logps"],
            beta=beta,
            max_completion_length=MAX_COMPLETION_LENGTH,
            total_tokens=total_tokens,
            total_sequences=8,
        )
        loss.backward()
        our_loss += loss.detach()
    our_grads = _grads(model)

    torch.testing.assert_close(our_loss, trl_loss, atol=1e-5, rtol=1e-5)
    for name, grad in our_grads.items():
        torch.testing.assert_close(grad, trl_grads[name], atol=1e-5, rtol=1e-5, msg=name)


# Rewards of 3 prompts x 4 generations: a mixed group, a group with None, a constant group.
GROUP_REWARDS = [[1.0, 0.0, 0.5, 0.2], [None, 1.0, 0.0, 1.0], [0.7, 0.7, 0.7, 0.7]]


def _reward_inputs():
    return [
        {"prompt": f"w{3 + p} w{10 + p}", "reward": r}
        for p, group in enumerate(GROUP_REWARDS)
        for r in group
    ]


def _our_advantages(estimator, scale_rewards):
    rewards = torch.tensor([torch.nan if r is None else r for g in GROUP_REWARDS for r in g])
    groups = torch.arange(rewards.numel()) // 4
    return group_advantages(rewards, groups, estimator, scale_rewards)


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_grpo_advantages_match_trl(tiny, tmp_path, scale_rewards):
    trainer = _grpo_trainer(
        tiny,
        tmp_path,
        per_device_train_batch_size=12,
        num_generations=4,
        max_completion_length=3,
        scale_rewards=scale_rewards,
    )
    out = trainer._generate_and_score_completions(_reward_inputs())
    torch.testing.assert_close(out["advantages"], _our_advantages("grpo", scale_rewards))
    if scale_rewards == "none":  # Dr. GRPO's advantage is GRPO without the std
        torch.testing.assert_close(out["advantages"], _our_advantages("dr_grpo", None))


def test_rloo_advantages_match_trl(tiny, tmp_path):
    path, tokenizer = tiny
    args = RLOOConfig(
        **_common_args(
            tmp_path,
            per_device_train_batch_size=12,
            num_generations=4,
            max_completion_length=3,
            beta=0.0,
            normalize_advantages=False,
        )
    )
    trainer = RLOOTrainer(
        model=path,
        reward_funcs=_column_reward,
        args=args,
        train_dataset=_dataset(),
        processing_class=tokenizer,
    )
    trainer.model.train()
    out = trainer._generate_and_score_completions(_reward_inputs())
    torch.testing.assert_close(out["advantages"], _our_advantages("rloo", None))

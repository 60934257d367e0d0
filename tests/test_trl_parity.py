"""Parity with TRL 1.x: our advantages and policy loss against GRPOTrainer's / RLOOTrainer's own code.

A tiny random Qwen2 and a word-level tokenizer are built locally (no network). TRL's trainers are
constructed for real and their methods called: `compute_loss` on hand-made inputs of the shape
`_generate_and_score_completions` returns, and `_generate_and_score_completions` itself (tiny
greedy-free generation, rewards taken from a dataset column) for the advantages. Our side computes
log-probs from full logits and calls `rlhf.algorithms`. Loss and every gradient agree to 1e-5.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from rlhf.algorithms import group_advantages, policy_loss

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
    return dict(
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
        **overrides,
    )


def _grpo_trainer(tiny, tmp_path, dataset=None, **overrides) -> GRPOTrainer:
    path, tokenizer = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(
            model=path,
            reward_funcs=_column_reward,
            args=GRPOConfig(**_common_args(tmp_path, **overrides)),
            train_dataset=dataset or _dataset(),
            processing_class=tokenizer,
        )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop; one micro-batch here
    return trainer


def _column_reward(prompts, completions, reward, **kwargs):
    """The reward is a dataset column, so the test fixes it whatever the model generates."""
    return reward


def _dataset():
    from datasets import Dataset

    return Dataset.from_dict({"prompt": ["w3 w4"], "reward": [0.0]})


def _loss_inputs(model, generator: torch.Generator) -> dict:
    """A batch shaped as GRPOTrainer's `_generate_and_score_completions` output (4 completions)."""
    prompt_lens, completion_lens = [3, 5, 4, 5], [6, 2, 4, 1]
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
    # Old and reference log-probs off the current ones, so that ratios get clipped on both sides.
    # Untrained positions hold 0, as TRL's fused log-prob pass returns there.
    mask = completion_mask.bool()
    old = torch.where(mask, logps + 0.3 * torch.randn(logps.shape, generator=generator), 0.0)
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


# (TRL loss_type, beta, importance_sampling_level, epsilon_high, entropy_coef) -> our aggregation
AGGREGATION = {"grpo": "seq_mean", "dapo": "token_mean", "bnpo": "token_mean", "dr_grpo": "dr_grpo"}
CASES = [
    *[(loss, beta, "token", 0.2, 0.0) for loss in AGGREGATION for beta in (0.0, 0.1)],
    ("grpo", 0.0, "sequence", 0.2, 0.0),  # GSPO
    ("grpo", 0.1, "sequence", 0.28, 0.0),
    ("dapo", 0.0, "token", 0.28, 0.0),  # clip-higher
    ("dapo", 0.05, "token", 0.28, 0.01),  # entropy bonus
]


@pytest.mark.parametrize(("loss_type", "beta", "level", "epsilon_high", "entropy_coef"), CASES)
def test_policy_loss_matches_trl(tiny, tmp_path, loss_type, beta, level, epsilon_high, entropy_coef):
    trainer = _grpo_trainer(
        tiny,
        tmp_path,
        loss_type=loss_type,
        beta=beta,
        importance_sampling_level=level,
        epsilon=0.2,
        epsilon_high=epsilon_high,
        entropy_coef=entropy_coef,
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
    # The batch exercises both clip sides, so the comparison covers the clipped branches too.
    assert metrics["clip_fraction_low"] > 0 or metrics["clip_fraction_high"] > 0
    trl_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    assert metrics["clip_fraction_low"] == pytest.approx(trl_metrics["clip_ratio/low_mean"], abs=1e-6)
    assert metrics["clip_fraction_high"] == pytest.approx(trl_metrics["clip_ratio/high_mean"], abs=1e-6)
    assert metrics["entropy"] == pytest.approx(trl_metrics["entropy"], abs=1e-5)
    if beta:
        assert metrics["kl"] == pytest.approx(trl_metrics["kl"], abs=1e-5)


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
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

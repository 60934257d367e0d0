"""Advantages, policy-loss clipping and aggregation, KL estimators and filtering, on hand examples."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.algorithms import (
    aggregate,
    difficulty_filter,
    dynamic_sampling_mask,
    group_advantages,
    kl_estimate,
    kl_penalty,
    pass_rate,
    policy_loss,
)

NAN = float("nan")


# --- advantages ---------------------------------------------------------------------------


def test_grpo_advantage_is_group_zscore_with_unbiased_std():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 4.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    adv = group_advantages(rewards, groups, "grpo")
    std0 = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()  # unbiased: sqrt(1/3)
    expected0 = (torch.tensor([1.0, 0.0, 0.0, 1.0]) - 0.5) / (std0 + 1e-4)
    std1 = math.sqrt(2.0)  # values 2, 4: mean 3, unbiased var (1 + 1) / 1
    expected1 = torch.tensor([-1.0, 1.0]) / (std1 + 1e-4)
    torch.testing.assert_close(adv, torch.cat([expected0, expected1]))


def test_nan_rewards_get_zero_advantage_and_are_left_out_of_the_statistics():
    groups = torch.tensor([0, 0, 0, 0])
    with_nan = group_advantages(torch.tensor([1.0, NAN, 0.0, 0.5]), groups, "grpo")
    without = group_advantages(torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0, 0, 0]), "grpo")
    assert with_nan[1] == 0
    torch.testing.assert_close(with_nan[[0, 2, 3]], without)
    for estimator in ("grpo", "dr_grpo", "rloo"):
        out = group_advantages(
            torch.tensor([NAN, NAN, 1.0, 2.0]), torch.tensor([0, 0, 1, 1]), estimator
        )
        assert torch.isfinite(out).all() and (out[:2] == 0).all() and out[3] > 0


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_single_sample_and_constant_groups_give_zero(estimator):
    rewards = torch.tensor([3.0, 0.7, 0.7, 0.7, 5.0, NAN])
    groups = torch.tensor([0, 1, 1, 1, 2, 2])  # group 2 has one valid reward
    assert (group_advantages(rewards, groups, estimator) == 0).all()
    assert (group_advantages(rewards, groups, "grpo", "batch") == 0).all()


def test_rloo_is_reward_minus_mean_of_the_others():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.1])
    adv = group_advantages(rewards, torch.zeros(4, dtype=torch.long), "rloo")
    expected = torch.stack(
        [rewards[i] - torch.cat([rewards[:i], rewards[i + 1 :]]).mean() for i in range(4)]
    )
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(adv, 4 / 3 * (rewards - rewards.mean()))  # n / (n - 1) (r - mean)


def test_batch_scaling_uses_group_mean_and_batch_std():
    rewards = torch.tensor([0.0, 1.0, 10.0, 14.0])
    groups = torch.tensor([0, 0, 1, 1])
    adv = group_advantages(rewards, groups, "grpo", "batch")
    expected = torch.tensor([-0.5, 0.5, -2.0, 2.0]) / (rewards.std() + 1e-4)
    torch.testing.assert_close(adv, expected)


def test_dr_grpo_is_unscaled_and_refuses_a_std():
    rewards = torch.tensor([0.0, 1.0, 10.0, 14.0])
    groups = torch.tensor([0, 0, 1, 1])
    expected = torch.tensor([-0.5, 0.5, -2.0, 2.0])
    torch.testing.assert_close(group_advantages(rewards, groups, "dr_grpo"), expected)
    torch.testing.assert_close(group_advantages(rewards, groups, "grpo", "none"), expected)
    with pytest.raises(ValueError, match="dr_grpo"):
        group_advantages(rewards, groups, "dr_grpo", "group")


def test_group_ids_need_not_be_sorted_or_contiguous():
    rewards = torch.tensor([1.0, 0.0, 0.2, 0.9, 0.5, 0.4])
    groups = torch.tensor([0, 0, 0, 7, 7, 7])
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    shuffled = group_advantages(rewards[perm], groups[perm], "grpo")
    torch.testing.assert_close(shuffled, group_advantages(rewards, groups, "grpo")[perm])


def test_advantage_inputs_are_checked():
    with pytest.raises(ValueError, match="groups"):
        group_advantages(torch.zeros(3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="estimator"):
        group_advantages(torch.zeros(2), torch.zeros(2, dtype=torch.long), "ppo")


# --- policy loss: clipping ----------------------------------------------------------------


def _one_token(ratio: float, advantage: float, **kwargs):
    logprobs = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, metrics = policy_loss(
        logprobs, torch.zeros(1, 1), torch.tensor([advantage]), torch.ones(1, 1), **kwargs
    )
    loss.backward()
    return loss.item(), logprobs.grad.item(), metrics


def test_asymmetric_clip_bounds():
    # ratio 1.25, A > 0: clipped at 1.2 (no gradient), not at 1.28.
    loss, grad, metrics = _one_token(1.25, 1.0, clip_low=0.2, clip_high=0.2)
    assert loss == pytest.approx(-1.2) and grad == 0.0
    assert metrics["clip_fraction_high"] == 1.0 and metrics["clip_fraction_low"] == 0.0
    loss, grad, metrics = _one_token(1.25, 1.0, clip_low=0.2, clip_high=0.28)
    assert loss == pytest.approx(-1.25) and grad == pytest.approx(-1.25)  # d(-r A)/d log r
    assert metrics["clip_fraction"] == 0.0
    # ratio 0.75, A < 0: below 1 - clip_low = 0.8, clipped; with clip_low 0.3 it is not.
    loss, grad, metrics = _one_token(0.75, -1.0, clip_low=0.2, clip_high=0.28)
    assert loss == pytest.approx(0.8) and grad == 0.0 and metrics["clip_fraction_low"] == 1.0
    loss, grad, _ = _one_token(0.75, -1.0, clip_low=0.3, clip_high=0.28)
    assert loss == pytest.approx(0.75) and grad == pytest.approx(0.75)
    # Outside the range on the side that does not help the objective: the ratio is kept.
    loss, grad, metrics = _one_token(0.5, 1.0)
    assert loss == pytest.approx(-0.5) and grad == pytest.approx(-0.5)
    assert metrics["clip_fraction"] == 0.0


def test_clip_fraction_counts_trained_tokens_only():
    logprobs = torch.log(torch.tensor([[1.5, 1.0, 1.5, 1.5], [0.5, 1.0, 1.0, 1.0]]))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    _, metrics = policy_loss(logprobs, torch.zeros(2, 4), torch.tensor([1.0, -1.0]), mask)
    assert metrics["clip_fraction_high"] == pytest.approx(2 / 5)
    assert metrics["clip_fraction_low"] == pytest.approx(1 / 5)
    assert metrics["clip_fraction"] == pytest.approx(3 / 5)
    assert metrics["ratio_max"] == pytest.approx(1.5)


def test_sequence_level_ratio_is_exp_of_mean_log_ratio():
    log_ratio = torch.tensor([[0.05, 0.15, 0.9]])
    mask = torch.tensor([[1, 1, 0]])
    loss, metrics = policy_loss(
        log_ratio,
        torch.zeros(1, 3),
        torch.tensor([2.0]),
        mask,
        importance_sampling_level="sequence",
        aggregation="seq_mean",
    )
    assert metrics["ratio_mean"] == pytest.approx(math.exp(0.1))
    assert loss.item() == pytest.approx(-2 * math.exp(0.1))


def test_padding_cannot_poison_the_loss():
    logprobs = torch.tensor([[-1.0, -torch.inf]], requires_grad=True)
    ref = torch.tensor([[-1.2, torch.nan]])
    entropy = torch.tensor([[0.5, torch.nan]])
    loss, metrics = policy_loss(
        logprobs,
        torch.tensor([[-1.1, 0.0]]),
        torch.tensor([1.0]),
        torch.tensor([[1, 0]]),
        ref_logprobs=ref,
        beta=0.1,
        entropy=entropy,
        entropy_coef=0.01,
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logprobs.grad).all()
    assert all(math.isfinite(v) for v in metrics.values())


def test_policy_loss_inputs_are_checked():
    lp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="old_logprobs"):
        policy_loss(lp, torch.zeros(2, 2), torch.zeros(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(lp, lp, torch.zeros(2), torch.ones(2, 3), beta=0.1)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(lp, lp, torch.zeros(3), torch.ones(2, 3))


# --- aggregation --------------------------------------------------------------------------

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_aggregation_modes_on_a_hand_example():
    assert aggregate(PER_TOKEN, MASK, "token_mean").item() == pytest.approx(10 / 4)
    assert aggregate(PER_TOKEN, MASK, "seq_mean").item() == pytest.approx((2 + 4) / 2)
    dr = aggregate(PER_TOKEN, MASK, "dr_grpo", max_completion_length=5)
    assert dr.item() == pytest.approx(10 / (2 * 5))
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate(PER_TOKEN, MASK, "dr_grpo")
    with pytest.raises(ValueError, match="token_mean"):
        aggregate(PER_TOKEN, MASK, "sum")


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean", "dr_grpo"])
def test_micro_batches_sum_to_the_full_batch(mode):
    torch.manual_seed(0)
    x = torch.randn(6, 5)
    mask = (torch.arange(5) < torch.tensor([5, 1, 3, 4, 2, 5])[:, None]).long()
    full = aggregate(x, mask, mode, max_completion_length=5)
    parts = sum(
        aggregate(
            x[i : i + 2],
            mask[i : i + 2],
            mode,
            max_completion_length=5,
            total_tokens=mask.sum(),
            total_sequences=6,
        )
        for i in range(0, 6, 2)
    )
    torch.testing.assert_close(parts, full)


# --- KL estimators ------------------------------------------------------------------------


def test_k1_and_k3_values():
    logp, ref = torch.tensor(math.log(0.5)), torch.tensor(math.log(0.25))
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 - math.log(0.5) - 1)
    assert kl_estimate(ref, logp, "k3").item() == pytest.approx(2 - math.log(2) - 1)
    with pytest.raises(ValueError, match="k1"):
        kl_estimate(logp, ref, "k2")


def test_k1_and_k3_are_unbiased_kl_estimates():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.2, 0.6])
    kl = (p * (p / q).log()).sum()
    for estimator in ("k1", "k3"):
        expectation = (p * kl_estimate(p.log(), q.log(), estimator)).sum()
        torch.testing.assert_close(expectation, kl)
    assert (kl_estimate(p.log(), q.log(), "k3") >= 0).all()


def test_kl_penalty_is_a_negative_per_token_reward():
    logp = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0, -1.0]])
    penalty = kl_penalty(logp, ref, torch.tensor([[1, 1, 0]]), coef=0.1)
    torch.testing.assert_close(penalty, torch.tensor([[-0.05, 0.0, 0.0]]))
    assert not penalty.requires_grad


# --- filtering ----------------------------------------------------------------------------


def test_dynamic_sampling_drops_groups_with_equal_rewards():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, NAN, 1.0, NAN, NAN, 1.0, NAN, 0.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4])
    keep = dynamic_sampling_mask(rewards, groups)
    assert keep.tolist() == [True, True] + [False] * 6 + [True] * 3
    near = dynamic_sampling_mask(torch.tensor([0.3, 0.1 + 0.2]), torch.tensor([0, 0]), atol=1e-6)
    assert not near.any()


def test_pass_rate_and_step_audio_r1_difficulty_band():
    correct_counts = [0, 2, 3, 5, 6, 7, 8]
    correct = torch.tensor([float(i < c) for c in correct_counts for i in range(8)])
    groups = torch.arange(len(correct_counts)).repeat_interleave(8) * 10
    ids, rates = pass_rate(correct, groups)
    assert ids.tolist() == [0, 10, 20, 30, 40, 50, 60]
    torch.testing.assert_close(rates, torch.tensor(correct_counts) / 8)
    assert difficulty_filter(rates, 3 / 8, 6 / 8).tolist() == [
        False,
        False,
        True,
        True,
        True,
        False,
        False,
    ]
    assert (
        difficulty_filter(rates, 0.375, 0.75).tolist()
        == difficulty_filter(rates, 3 / 8, 6 / 8).tolist()
    )
    assert difficulty_filter(rates, 0.0, 0.25).tolist() == [True, True] + [False] * 5
    with pytest.raises(ValueError, match="low"):
        difficulty_filter(rates, 0.8, 0.2)


def test_pass_rate_ignores_unjudged_samples():
    _, rates = pass_rate(torch.tensor([1.0, NAN, 0.0, NAN]), torch.tensor([0, 0, 0, 1]))
    assert rates[0].item() == pytest.approx(0.5) and math.isnan(rates[1].item())
    assert not difficulty_filter(rates, 0.0, 1.0)[1]

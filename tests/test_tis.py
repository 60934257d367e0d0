"""Truncated importance sampling of the engine/trainer log-prob mismatch (TRL's token_truncate)."""

import math

import pytest
import torch

from rlhf.algorithms import policy_loss, truncated_importance_weights


def test_weights_are_the_capped_ratio_on_trained_tokens_only():
    old = torch.tensor([[0.0, -1.0, -2.0, 5.0]])
    behaviour = torch.tensor([[0.0, -1.5, 0.0, 0.0]])  # last token: padding, ratio e^5
    mask = torch.tensor([[1, 1, 1, 0]])
    weights, metrics = truncated_importance_weights(old, behaviour, mask, cap=1.5)
    expected = [1.0, min(math.exp(0.5), 1.5), math.exp(-2.0), 1.0]
    torch.testing.assert_close(weights[0], torch.tensor(expected))
    assert metrics["tis_truncated_fraction"] == pytest.approx(1 / 3)  # the e^0.5 token
    assert metrics["tis_weight_mean"] == pytest.approx(sum(expected[:3]) / 3)


def test_weights_carry_no_gradient():
    old = torch.zeros(1, 3, requires_grad=True)
    weights, _ = truncated_importance_weights(old, torch.full((1, 3), -0.1), torch.ones(1, 3), 2.0)
    assert not weights.requires_grad


def test_policy_loss_weights_each_tokens_surrogate():
    torch.manual_seed(0)
    logprobs = torch.randn(2, 5, requires_grad=True)
    old = logprobs.detach() + 0.05 * torch.randn(2, 5)
    advantages = torch.tensor([1.0, -0.5])
    mask = torch.ones(2, 5)
    weights = torch.rand(2, 5) * 2

    weighted, _ = policy_loss(logprobs, old, advantages, mask, importance_weights=weights)
    per_token = []
    for b in range(2):
        for t in range(5):
            one = torch.zeros(2, 5)
            one[b, t] = 1
            loss, _ = policy_loss(logprobs, old, advantages, one)
            per_token.append(loss * weights[b, t])  # token_mean over one token: the token's term
    torch.testing.assert_close(weighted, torch.stack(per_token).sum() / mask.sum())


def test_unit_weights_leave_the_loss_unchanged():
    torch.manual_seed(1)
    logprobs, old = torch.randn(3, 4), torch.randn(3, 4)
    advantages, mask = torch.randn(3), (torch.rand(3, 4) > 0.3).float()
    plain, _ = policy_loss(logprobs, old, advantages, mask)
    weighted, _ = policy_loss(logprobs, old, advantages, mask, importance_weights=torch.ones(3, 4))
    torch.testing.assert_close(plain, weighted)


def test_a_non_positive_cap_is_refused():
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_importance_weights(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), 0.0)

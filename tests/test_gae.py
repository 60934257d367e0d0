"""PPO pieces: GAE on hand-computed examples, value-loss clipping, and a value head that learns."""

from __future__ import annotations

import pytest
import torch

from rlhf.algorithms import final_token_rewards, gae, masked_moments, value_loss, whiten


def test_gae_hand_computed_gamma_lambda_below_one():
    # gamma 0.9, lam 0.8, gamma * lam = 0.72; the value after the last token is 0.
    # t=2: delta = 1 - 0.8 = 0.2                         A = 0.2
    # t=1: delta = 0.9 * 0.8 - 0.4 = 0.32                A = 0.32 + 0.72 * 0.2 = 0.464
    # t=0: delta = 0.9 * 0.4 - 0.5 = -0.14               A = -0.14 + 0.72 * 0.464 = 0.19408
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.4, 0.8]])
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.8)
    torch.testing.assert_close(advantages, torch.tensor([[0.19408, 0.464, 0.2]]))
    torch.testing.assert_close(returns, torch.tensor([[0.69408, 0.864, 1.0]]))


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.0, 0.5, 1.0]])
    values = torch.tensor([[0.5, 0.4, 0.8]])
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(returns, torch.tensor([[1.5, 1.5, 1.0]]))
    torch.testing.assert_close(advantages, torch.tensor([[1.0, 1.1, 0.2]]))


def test_gae_skips_untrained_tokens():
    # Row 0: right padding with a garbage value. Row 1: an untrained token in the middle (tool
    # output) is passed over: t=0 bootstraps from the value at t=2.
    #   row 0: t=1: A = 1 - 0.4 = 0.6; t=0: A = (0.9 * 0.4 - 0.5) + 0.72 * 0.6 = 0.292
    #   row 1: t=2: A = 0.2;           t=0: A = (0.9 * 0.8 - 0.5) + 0.72 * 0.2 = 0.364
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    rewards = final_token_rewards(torch.tensor([1.0, 1.0]), mask)
    torch.testing.assert_close(rewards, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    values = torch.tensor([[0.5, 0.4, 9.9], [0.5, 7.0, 0.8]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(advantages, torch.tensor([[0.292, 0.6, 0.0], [0.364, 0.0, 0.2]]))
    torch.testing.assert_close(returns, torch.tensor([[0.792, 1.0, 0.0], [0.864, 0.0, 1.0]]))


def test_final_token_rewards_rejects_missing_scores_and_handles_empty_rows():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    torch.testing.assert_close(
        final_token_rewards(torch.tensor([2.0, 3.0]), mask)[1], torch.zeros(3)
    )
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        final_token_rewards(torch.tensor([1.0, float("nan")]), mask)


def test_whiten_over_mask():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    out = whiten(x, mask)
    kept = out[mask.bool()]
    assert out[0, 2] == 0
    assert kept.mean().abs() < 1e-6 and kept.std() == pytest.approx(1.0, abs=1e-5)
    kept = whiten(x, mask, shift_mean=False)[mask.bool()]
    assert kept.mean() == pytest.approx(3.0, abs=1e-5)


def test_value_loss_clipping():
    ones = torch.ones(1, 1)
    # The value moved 1.0 from the old value, past the 0.2 clip, away from the return: the
    # clipped (worse) term wins and carries no gradient.
    values = torch.tensor([[1.0]], requires_grad=True)
    loss, metrics = value_loss(values, torch.zeros(1, 1), 2 * ones, ones, clip_range_value=0.2)
    assert loss.item() == pytest.approx(0.5 * 1.8**2)
    assert metrics["value_clip_fraction"] == 1.0
    loss.backward()
    assert values.grad.item() == 0.0
    # Towards the return: the unclipped term is larger, so it trains as usual.
    values = torch.tensor([[1.0]], requires_grad=True)
    loss, metrics = value_loss(
        values, torch.zeros(1, 1), torch.zeros(1, 1), ones, clip_range_value=0.2
    )
    assert loss.item() == pytest.approx(0.5) and metrics["value_clip_fraction"] == 0.0
    loss.backward()
    assert values.grad.item() == pytest.approx(1.0)
    # No clipping.
    loss, _ = value_loss(torch.ones(1, 1), torch.zeros(1, 1), 2 * ones, ones, clip_range_value=None)
    assert loss.item() == pytest.approx(0.5)


def test_value_head_learns_on_a_fixed_batch():
    """Five PPO rounds of 10 critic steps each; old values refreshed per round as PPO does.

    Features are one fixed vector per sequence plus token noise, so a linear head can fit the
    reward-to-go (gamma = lam = 1: each sequence's score on all its tokens).
    """
    torch.manual_seed(0)
    batch, steps, dim = 8, 6, 16
    features = torch.randn(batch, 1, dim) + 0.05 * torch.randn(batch, steps, dim)
    lengths = torch.tensor([6, 5, 4, 6, 3, 2, 6, 1])
    mask = (torch.arange(steps) < lengths[:, None]).long()
    scores = torch.randn(batch)
    rewards = final_token_rewards(scores, mask)
    head = torch.nn.Linear(dim, 1)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-2)
    losses = []
    for _ in range(5):
        with torch.no_grad():
            old_values = head(features).squeeze(-1)
        _, returns = gae(rewards, old_values, mask, gamma=1.0, lam=1.0)
        for _ in range(10):
            values = head(features).squeeze(-1)
            loss, _ = value_loss(values, old_values, returns, mask, clip_range_value=0.2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert len(losses) == 50
    assert losses[-1] < 0.1 * losses[0]
    torch.testing.assert_close(returns, scores[:, None] * mask)


def test_whiten_by_the_moments_of_the_whole_batch_equals_whitening_the_whole():
    torch.manual_seed(0)
    x, mask = torch.randn(6, 5), (torch.rand(6, 5) > 0.3).float()
    whole = whiten(x, mask)
    moments = masked_moments(x[:2], mask[:2]) + masked_moments(x[2:], mask[2:])
    parts = torch.cat(
        [whiten(x[:2], mask[:2], moments=moments), whiten(x[2:], mask[2:], moments=moments)]
    )
    assert torch.allclose(parts, whole, atol=1e-6)
    assert not torch.allclose(whiten(x[:2], mask[:2]), whole[:2], atol=1e-3)  # parts alone differ

"""The local engine's sampling: per-row seeded draws, independent of batching."""

from __future__ import annotations

import torch

from rollouts.engine import LocalEngine, _draw
from rollouts.policy import Policy
from rollouts.types import PromptSample, SamplingParams


def test_draw_follows_each_rows_distribution_and_never_picks_impossible_tokens():
    probs = torch.softmax(torch.randn(3, 40, generator=torch.Generator().manual_seed(0)), -1)
    probs[:, [0, 7, 39]] = 0.0  # banned or filtered: the first, one inside, the last
    generators = [torch.Generator().manual_seed(k) for k in range(3)]
    counts = torch.zeros(3, 40)
    for _ in range(6000):
        counts[torch.arange(3), _draw(probs, generators)] += 1
    assert counts[:, [0, 7, 39]].sum() == 0
    expected = probs / probs.sum(-1, keepdim=True)
    assert (counts / 6000 - expected).abs().max() < 0.03
    # a row's draw depends on its own generator only
    alone = _draw(probs[1:2], [torch.Generator().manual_seed(5)])
    together = _draw(probs, [torch.Generator().manual_seed(k) for k in (9, 5, 3)])
    assert alone.item() == together[1].item()


def test_a_rollout_does_not_depend_on_its_batch(tiny_model_dir):
    policy = Policy.from_pretrained(tiny_model_dir)
    samples = [
        PromptSample(id=f"q{i}", messages=[{"role": "user", "content": f"Question {i}?"}])
        for i in range(3)
    ]
    sampling = SamplingParams(max_new_tokens=6, seed=3)
    apart = LocalEngine(policy, batch_size=2).generate(samples, 2, sampling)
    together = LocalEngine(policy, batch_size=16).generate(samples, 2, sampling)
    assert [r.completion_ids for r in apart] == [r.completion_ids for r in together]
    for a, b in zip(apart, together):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs))

"""The policy's chunked log-probs equal the full-logits computation, values and gradients."""

from __future__ import annotations

import pytest
import torch

from rollouts.policy import chunked_logprobs


def naive(hidden, targets, weight, temperature):
    log_p = ((hidden @ weight.T).float() / temperature).log_softmax(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return log_p.gather(-1, targets[:, None]).squeeze(-1), entropy


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_and_entropy_match_full_logits(chunk_size, temperature):
    torch.manual_seed(0)
    hidden = torch.randn(23, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(50, (23,))
    upstream = torch.randn(23, dtype=torch.float64), torch.randn(23, dtype=torch.float64)

    ours = chunked_logprobs(hidden, targets, weight, temperature, chunk_size)
    ours_grads = torch.autograd.grad(
        (ours[0] * upstream[0]).sum() + (ours[1] * upstream[1]).sum(), (hidden, weight)
    )
    ref = naive(hidden, targets, weight, temperature)
    ref_grads = torch.autograd.grad(
        (ref[0] * upstream[0]).sum() + (ref[1] * upstream[1]).sum(), (hidden, weight)
    )
    for a, b in zip((*ours, *ours_grads), (*ref, *ref_grads), strict=True):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-6)


def test_gradient_of_logprobs_alone_and_frozen_weight():
    torch.manual_seed(1)
    hidden = torch.randn(9, 8, requires_grad=True)
    weight = torch.randn(30, 8)  # frozen LM head: no gradient requested for it
    targets = torch.randint(30, (9,))
    logps, _ = chunked_logprobs(hidden, targets, weight, 1.0, 4)
    (grad,) = torch.autograd.grad(logps.sum(), hidden)
    (expected,) = torch.autograd.grad(naive(hidden, targets, weight, 1.0)[0].sum(), hidden)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5)


def test_policy_logprobs_match_the_model_forward(tiny_model_dir):
    """Through the real model: chunked completion log-probs = log-softmax of forward logits."""
    import numpy as np

    from rollouts.policy import Policy
    from rollouts.types import PromptSample

    policy = Policy.from_pretrained(tiny_model_dir)
    rng = np.random.default_rng(0)
    samples = [
        PromptSample(
            id=str(i),
            messages=[
                {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Hi"}]}
            ],
            audio=[0.1 * rng.standard_normal(8000 * (i + 1)).astype("float32")],
        )
        for i in range(2)
    ]
    prompts = policy.processor(samples)
    prompt_ids = [
        ids[mask.bool()].tolist()
        for ids, mask in zip(prompts["input_ids"], prompts["attention_mask"])
    ]
    completions = [[5, 6, 7], [8, 9]]
    batch = policy.sequence_batch(
        prompt_ids, completions, prompts["input_features"], prompts["feature_lens"]
    )
    logps, _ = policy.logprobs(batch, chunk_size=2)
    with torch.no_grad():
        out = policy.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            input_features=batch.input_features,
            feature_lens=batch.feature_lens,
            use_cache=False,
        )
    log_p = out.logits.float().log_softmax(-1)
    for b, completion in enumerate(completions):
        start = len(prompt_ids[b])
        expected = [log_p[b, start + t - 1, tok] for t, tok in enumerate(completion)]
        torch.testing.assert_close(
            logps[b, : len(completion)], torch.stack(expected), atol=1e-5, rtol=1e-5
        )
        assert torch.all(logps[b, len(completion) :] == 0)

    # the same rows with each clip encoded once and shared through clip_index, rows reordered
    order = [1, 0, 1]
    shared = policy.sequence_batch(
        [prompt_ids[i] for i in order],
        [completions[i] for i in order],
        prompts["input_features"],
        prompts["feature_lens"],
        clip_index=torch.tensor(order),
    )
    shared_logps, _ = policy.logprobs(shared, chunk_size=2)
    for row, i in enumerate(order):
        torch.testing.assert_close(shared_logps[row], logps[i, : shared_logps.shape[1]])

"""How the trainers compute: fp32 master weights under bf16 autocast, and gradient checkpointing
that really recomputes on the RL path with dropout off."""

from __future__ import annotations

import pytest
import torch
from test_trainer import tiny_rl_config

from rlhf.config import ConfigError, ModelConfig
from rlhf.trainer import RLTrainer
from rlhf.training import autocast, build_optimizer, compute_dtype, load_policy
from rollouts.policy import LogProbModel, SequenceBatch, chunked_logprobs

LR = 1e-6


def one_batch(policy):
    """Three random sequences over the whole vocabulary, all positions scored."""
    torch.manual_seed(0)
    vocab = policy.base.config.text_config.vocab_size
    ids = torch.randint(0, vocab - 200, (3, 24))
    ones = torch.ones_like(ids)
    return SequenceBatch(ids, ones, torch.full((3,), 8), ids[:, 8:], ones[:, 8:], None, None)


def adamw_deltas(model_dir, dtype: str, steps: int = 3):
    """Weight changes after ``steps`` AdamW steps at lr 1e-6 computing in ``dtype``, and the
    weights before."""
    config = ModelConfig(path=str(model_dir), dtype=dtype)
    policy = load_policy(config, "cpu")
    scorer = LogProbModel(policy)
    params = {n: p for n, p in policy.model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer, _ = build_optimizer(list(params.values()), ModelOptim(), None)
    batch = one_batch(policy)
    for _ in range(steps):
        with autocast(compute_dtype(config), "cpu"):
            logprobs, _ = scorer(batch)
        (-logprobs.mean()).backward()
        optimizer.step()
        optimizer.zero_grad()
    return {n: p.detach() - before[n] for n, p in params.items()}, before


class ModelOptim:
    """The optimizer settings build_optimizer reads."""

    lr = LR
    weight_decay = 0.0


def test_fp32_master_weights_under_bf16_compute_move_as_fp32_training_does(tiny_model_dir):
    """At an RL learning rate the bf16-compute run's updates are the fp32 run's.

    Early AdamW steps move a weight by about ``lr · sign(gradient)``: |m / sqrt(v)| is 1 at the
    first step whatever the gradient's size. So two runs move alike wherever their gradients agree
    in sign, and bf16 compute (8-bit mantissa, ~0.4 % error per op) flips the sign only of
    gradient components near zero. Hence: update vectors with cosine > 0.95, norms within 5 %.

    The contrast: the same update applied to bf16 parameters (what a bf16-only AdamW does) is
    rounded away: bf16 neighbours of a weight of 0.02 are 1.2e-4 apart, 120 × the step.
    """
    fp32, _ = adamw_deltas(tiny_model_dir, "float32")
    bf16, before = adamw_deltas(tiny_model_dir, "bfloat16")
    a = torch.cat([d.flatten() for d in fp32.values()])
    b = torch.cat([bf16[n].flatten() for n in fp32])
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.95
    assert abs(b.norm() / a.norm() - 1) < 0.05
    moved = (b != 0).float().mean()
    assert moved > 0.5  # the fp32 master weights took the step (a frozen LM-head row stays)

    # a bf16 parameter cannot hold the same step: almost every weight stays where it was
    w = torch.cat([before[n].flatten() for n in fp32])
    stepped = (w.bfloat16() + b.bfloat16()).float()
    bf16_moved = (stepped != w.bfloat16().float()).float().mean()
    assert bf16_moved < 0.1 * moved, (float(bf16_moved), float(moved))


def test_bf16_parameters_and_float16_compute_are_refused(tiny_model_dir):
    weights = [torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))]
    with pytest.raises(TypeError, match="fp32 master weights"):
        build_optimizer(weights, ModelOptim())
    with pytest.raises(ConfigError, match="float16 would need loss scaling"):
        compute_dtype(ModelConfig(path=str(tiny_model_dir), dtype="float16"))


def test_chunked_logprobs_compute_in_bf16_and_accumulate_in_fp32():
    """Under autocast the LM-head product is bf16 (forward and the recomputation in backward),
    the log-softmax fp32: log-probs within bf16's rounding of fp32, gradients close."""
    torch.manual_seed(0)
    hidden = torch.randn(40, 32, requires_grad=True)
    weight = (0.2 * torch.randn(500, 32)).requires_grad_()
    targets = torch.randint(500, (40,))
    exact = chunked_logprobs(hidden, targets, weight, 1.0, 16)[0]
    exact_grads = torch.autograd.grad(exact.sum(), (hidden, weight))
    with autocast(torch.bfloat16, "cpu"):
        low = chunked_logprobs(hidden, targets, weight, 1.0, 16)[0]
        low_grads = torch.autograd.grad(low.sum(), (hidden, weight))
    assert low.dtype == torch.float32
    assert not torch.equal(low, exact)  # the product really ran in bf16
    torch.testing.assert_close(low, exact, atol=0.05, rtol=0.01)
    for ours, ref in zip(low_grads, exact_grads, strict=True):
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, ref, atol=0.02, rtol=0.05)


def test_rl_update_recomputes_decoder_layers_with_dropout_off(
    tiny_model_dir, tiny_dataset_dir, tmp_path
):
    """With gradient checkpointing each decoder layer runs again in backward: its MLP's
    ``forward`` is called twice with grad per micro-batch (checkpointing skips module hooks when
    it recomputes, so the count wraps ``forward`` itself). The policy is in train mode, every
    dropout 0."""
    calls = {}
    for checkpointing in (False, True):
        config = tiny_rl_config(
            tiny_model_dir,
            tiny_dataset_dir,
            tmp_path / str(checkpointing),
            "run.steps=1",
            "run.save_every=0",
            f"model.gradient_checkpointing={str(checkpointing).lower()}",
        )
        trainer = RLTrainer(config)
        assert trainer.model.training
        assert trainer.model.config.text_config.attention_dropout == 0.0
        dropouts = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout)]
        assert all(m.p == 0.0 for m in dropouts)
        calls[checkpointing] = count_update_calls(trainer)
    runs, micro_batches = calls[False]
    assert runs == micro_batches  # one forward with grad per micro-batch
    assert calls[True] == (2 * micro_batches, micro_batches)  # and one recomputation each


def count_update_calls(trainer: RLTrainer) -> tuple[int, int]:
    """(forward calls with grad of layer 0's MLP during the update, micro-batches) of a step."""
    mlp = trainer.policy.base.model.layers[0].mlp
    forward, update = mlp.forward, trainer.update
    count, seen = [0], []

    def counted(*args, **kwargs):
        count[0] += int(torch.is_grad_enabled())
        return forward(*args, **kwargs)

    def counted_update(micro_batches):
        count[0] = 0
        result = update(micro_batches)
        seen.append((count[0], len(micro_batches)))
        return result

    mlp.forward, trainer.update = counted, counted_update
    trainer.step()
    return seen[0]

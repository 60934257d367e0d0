"""PPO's critic: the value of the state before each completion token, trained on its own.

With LoRA the critic is a second adapter, ``"critic"``, on the policy's own peft model plus a value
head: the base weights are shared, not copied. With full fine-tuning it is a separate model with a
one-output ``score`` head, loaded from the policy's checkpoint or from ``algorithm.ppo.critic_path``:
for Step-Audio 2 a ``StepAudio2ForSequenceClassification`` (a reward model trained by
``rlhf reward-model`` makes a good start: its ``score`` is kept); for the other families, which
transformers gives no sequence-classification class, the family's own model with a fresh ``score``
beside its (unused) LM head.

Either way the critic has its own fp32 AdamW at ``ppo.critic_lr``, computes in ``model.dtype``
like the policy, and its parameters never meet the policy's optimizer. Its values come from a
``LogProbModel``'s ``values`` (the module a distributed wrapper holds). Under LoRA two pitfalls
make the critic own its backward pass (:meth:`backward`) rather than hand out values with a
graph: peft's ``set_adapter`` also sets ``requires_grad`` (only
the active adapter's weights require grad, and autograd silently drops gradients of a leaf that
stopped requiring grad before backward), and gradient checkpointing re-runs the decoder during
backward with whatever adapter is active then. So the critic adapter is active from its forward to
the end of its backward, and the policy's adapter at all other times: the policy optimizer, built
from the parameters that require grad, never sees the critic's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from rlhf.algorithms import value_loss
from rlhf.config import RLConfig
from rlhf.training import (
    autocast,
    build_optimizer,
    compute_dtype,
    disable_dropout,
    enable_checkpointing,
    optimizer_step,
)
from rollouts.adapters import ModelAdapter, StepAudio2Adapter
from rollouts.policy import LogProbModel, Policy, SequenceBatch

CRITIC_ADAPTER = "critic"


class Critic:
    """``values(sequences) -> [B, C]``, ``backward(...)`` for the value loss, ``optimizer_step``.

    Values come from ``scorer.values`` (a ``LogProbModel`` with a value head, possibly sharded),
    aligned with ``Policy.logprobs``: ``values[b, t]`` is V of the prefix that predicts completion
    token t (the hidden state at ``prompt_length + t - 1``), 0 on padding. Build the critic after
    sharding ``scorer``: its optimizer holds the parameters the scorer has then.
    """

    def __init__(self, scorer: LogProbModel, config: RLConfig, adapter: str | None = None):
        self.scorer = scorer
        self.body = scorer.policy  # decoder path: hidden_states(sequences) -> [B, L, H]
        self.adapter = adapter  # the peft adapter to activate, None for a separate model
        self.ppo = config.algorithm.ppo
        self.compute_dtype = compute_dtype(config.model)
        if adapter is None:
            self._params = [p for p in scorer.parameters() if p.requires_grad]
        else:
            marker = f".{adapter}."
            self._params = [
                p
                for name, p in scorer.named_parameters()
                if marker in name or name.startswith("value_head.")
            ]
        self.optimizer, _ = build_optimizer(self._params, config.optim, lr=self.ppo.critic_lr)

    @property
    def head(self) -> nn.Module:
        return self.scorer.value_head

    def parameters(self) -> Iterator[nn.Parameter]:
        """What the critic trains: adapter (or whole-model) weights and the value head."""
        return iter(self._params)

    @contextmanager
    def _active(self) -> Iterator[None]:
        """Under LoRA: the critic adapter (trainable) inside, the previous adapter(s) after; the
        compute dtype throughout."""
        device = next(iter(self._params)).device
        with autocast(self.compute_dtype, device):
            if self.adapter is None:
                yield
                return
            model = self.body.model
            previous = model.active_adapter
            model.set_adapter(self.adapter)
            try:
                yield
            finally:
                model.set_adapter(previous)

    @torch.no_grad()
    def values(self, sequences: SequenceBatch) -> torch.Tensor:
        """``[B, C]`` float32 values, without a graph: train with :meth:`backward`."""
        with self._active():
            return self.scorer.values(sequences)

    def backward(
        self,
        sequences: SequenceBatch,
        old_values: torch.Tensor,
        returns: torch.Tensor,
        mask: torch.Tensor,
        weight: float = 1.0,
    ) -> dict[str, float]:
        """Back-propagate ``weight * value_coef *`` the clipped value loss of one micro-batch.

        The loss is the token mean over ``mask`` (``[B, C]``, the trained tokens) of
        ``0.5 * max((V - R)^2, (V_clip - R)^2)`` with ``V_clip`` within ``ppo.value_clip`` of
        ``old_values``; pass ``weight`` = this micro-batch's share of the whole batch's tokens
        (over all processes) to accumulate a batch mean: the processes' gradients are summed.
        Gradients reach only the critic. Returns the loss's metrics.
        """
        with self._active():
            values = self.scorer.values(sequences)
            loss, metrics = value_loss(
                values, old_values, returns, mask.float(), clip_range_value=self.ppo.value_clip
            )
            (loss * (weight * self.ppo.value_coef)).backward()
        return metrics

    def optimizer_step(self, max_grad_norm: float) -> float:
        """Clip, step, zero; returns the norm before clipping. Under FSDP the gradients were
        already summed over processes by the wrapper."""
        return optimizer_step(self._params, self.optimizer, None, max_grad_norm)

    def state_dict(self) -> dict[str, Any]:
        """Adapter + head (or the whole critic model) and optimizer; loads with ``weights_only``."""
        state: dict[str, Any] = {"optimizer": self.optimizer.state_dict()}
        if self.adapter is not None:
            from peft import get_peft_model_state_dict

            state["adapter"] = get_peft_model_state_dict(self.body.model, adapter_name=self.adapter)
            state["head"] = self.head.state_dict()
        else:
            state["model"] = self.body.model.state_dict()  # ``score``, the head, included
        return state

    def load_state_dict(self, state: dict[str, Any], source: str = "critic state") -> None:
        """Restore :meth:`state_dict`; missing or unexpected weights are an error naming
        ``source``."""
        if self.adapter is not None:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(
                self.body.model, state["adapter"], adapter_name=self.adapter
            )
            if getattr(result, "unexpected_keys", None):
                raise KeyError(
                    f"{source}: unexpected critic adapter keys {result.unexpected_keys[:5]}"
                )
            self.head.load_state_dict(state["head"])
        else:
            result = self.body.model.load_state_dict(state["model"], strict=False)
            if result.missing_keys or result.unexpected_keys:
                raise KeyError(
                    f"{source}: critic weights missing {result.missing_keys[:3]}, "
                    f"unexpected {result.unexpected_keys[:3]}"
                )
        self.optimizer.load_state_dict(state["optimizer"])


def value_head(hidden_size: int, device: torch.device | str) -> nn.Linear:
    """Linear(hidden, 1) in fp32, near-zero output at the start: weights ~ N(0, 1/(H+1)), bias 0,
    so that early values neither dominate GAE nor blow up the value loss."""
    head = nn.Linear(hidden_size, 1, device=device, dtype=torch.float32)
    nn.init.normal_(head.weight, std=1.0 / (hidden_size + 1))
    nn.init.zeros_(head.bias)
    return head


def build_critic(config: RLConfig, policy: Policy, device: torch.device | str) -> Critic:
    """The critic PPO needs, unsharded (see ``critic_scorer`` to shard it first)."""
    scorer = critic_scorer(config, LogProbModel(policy), device)
    return Critic(scorer, config, adapter=CRITIC_ADAPTER if config.model.lora.enabled else None)


def critic_scorer(
    config: RLConfig, policy_scorer: LogProbModel, device: torch.device | str
) -> LogProbModel:
    """What computes the critic's values. Under LoRA: ``policy_scorer`` itself, given a second
    adapter and a value head (one module, so that one FSDP wrapper holds the shared base); with
    full fine-tuning: a separate model with its own ``score`` head."""
    if config.model.lora.enabled:
        return _lora_critic(config, policy_scorer, device)
    return _full_critic(config, policy_scorer.policy, device)


def _lora_critic(
    config: RLConfig, scorer: LogProbModel, device: torch.device | str
) -> LogProbModel:
    from peft import LoraConfig

    policy = scorer.policy
    model = policy.model
    if not hasattr(model, "peft_config"):
        raise TypeError(
            "model.lora.enabled: the policy model must be a peft model for a LoRA critic"
        )
    if config.algorithm.ppo.critic_path:
        raise ValueError(
            "algorithm.ppo.critic_path initialises a full fine-tuning critic; with model.lora "
            "the critic is a fresh adapter on the policy's base: unset critic_path or disable LoRA"
        )
    lora = config.model.lora
    policy_adapter = model.active_adapter
    model.add_adapter(
        CRITIC_ADAPTER,
        LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            # the family's rule, as for the policy's adapter: never inside the audio encoder
            target_modules=policy.adapter.lora_target_modules(lora.target_modules),
        ),
    )
    model.set_adapter(policy_adapter)  # the policy's adapter trainable, the critic's frozen
    scorer.value_head = value_head(policy.base.config.get_text_config().hidden_size, device)
    return scorer


def _full_critic(config: RLConfig, policy: Policy, device: torch.device | str) -> LogProbModel:
    source = config.algorithm.ppo.critic_path or config.model.path
    model = _critic_model(type(policy.adapter), source).to(device)
    if config.model.freeze_audio_encoder:
        policy.adapter.freeze_audio_encoder(model)
    if config.model.gradient_checkpointing:
        enable_checkpointing(model)
    disable_dropout(model.train())
    return LogProbModel(Policy(model, policy.processor, policy.adapter), value_head=model.score)


def _critic_model(family: type[ModelAdapter], source: str) -> nn.Module:
    """The checkpoint at ``source`` with a one-output ``score`` head, fp32; a head that the
    checkpoint lacks (a policy or SFT checkpoint) starts near zero, as ``value_head`` does."""
    if family is StepAudio2Adapter:
        from rollouts.value_model import StepAudio2ForSequenceClassification

        model, info = StepAudio2ForSequenceClassification.from_pretrained(
            source, num_labels=1, dtype=torch.float32, output_loading_info=True
        )
        if "score.weight" in info["missing_keys"]:
            with torch.no_grad():
                nn.init.normal_(model.score.weight, std=1.0 / (model.score.in_features + 1))
        return model
    model = family.load_model(source, torch.float32)
    hidden = model.config.get_text_config().hidden_size
    model.score = nn.Linear(hidden, 1, bias=False)  # a submodule: saved with the critic's state
    with torch.no_grad():
        nn.init.normal_(model.score.weight, std=1.0 / (hidden + 1))
    return model

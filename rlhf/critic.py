"""PPO's critic: the value of the state before each completion token, trained on its own.

With LoRA the critic is a second adapter, ``"critic"``, on the policy's own peft model plus a value
head: the base weights are shared, not copied (DESIGN.md). With full fine-tuning it is a separate
``StepAudio2ForSequenceClassification`` whose one-output ``score`` is the value head, loaded from
the policy's checkpoint or from ``algorithm.ppo.critic_path`` (a reward model trained by
``rlhf reward-model`` makes a good start: its ``score`` is kept).

Either way the critic has its own AdamW at ``ppo.critic_lr`` and its parameters never meet the
policy's optimizer. Under LoRA two pitfalls make the critic own its backward pass (:meth:`backward`)
rather than hand out values with a graph: peft's ``set_adapter`` also sets ``requires_grad`` (only
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
from rollouts.policy import Policy, SequenceBatch

CRITIC_ADAPTER = "critic"


class Critic:
    """``values(sequences) -> [B, C]``, ``backward(...)`` for the value loss, ``optimizer_step``.

    Values are aligned with ``Policy.logprobs``: ``values[b, t]`` is V of the prefix that predicts
    completion token t (the hidden state at ``prompt_length + t - 1``), 0 on padding.
    """

    def __init__(
        self,
        body: Policy,
        head: nn.Linear,
        params: list[nn.Parameter],
        config: RLConfig,
        adapter: str | None = None,
    ):
        self.body = body  # decoder path: hidden_states(sequences) -> [B, L, H]
        self.head = head
        self.adapter = adapter  # the peft adapter to activate, None for a separate model
        self.ppo = config.algorithm.ppo
        self._params = params
        self.optimizer = torch.optim.AdamW(
            params, lr=self.ppo.critic_lr, weight_decay=config.optim.weight_decay
        )

    def parameters(self) -> Iterator[nn.Parameter]:
        """What the critic trains: adapter (or whole-model) weights and the value head."""
        return iter(self._params)

    @contextmanager
    def _active(self) -> Iterator[None]:
        """Under LoRA: the critic adapter (trainable) inside, the previous adapter(s) after."""
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

    def _values(self, sequences: SequenceBatch) -> torch.Tensor:
        hidden = self.body.hidden_states(sequences)
        batch, width = sequences.completion_ids.shape
        offsets = torch.arange(width, device=hidden.device)
        positions = (sequences.prompt_lengths[:, None] - 1 + offsets[None, :]).clamp(
            0, hidden.shape[1] - 1
        )
        rows = torch.arange(batch, device=hidden.device)[:, None]
        states = hidden[rows, positions]  # [B, C, H]
        values = self.head(states.to(self.head.weight.dtype)).squeeze(-1).float()
        return values * sequences.completion_mask

    @torch.no_grad()
    def values(self, sequences: SequenceBatch) -> torch.Tensor:
        """``[B, C]`` float32 values, without a graph: train with :meth:`backward`."""
        with self._active():
            return self._values(sequences)

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
        ``old_values``; pass ``weight`` = this micro-batch's share of the batch's tokens to
        accumulate a batch mean. Gradients reach only the critic. Returns the loss's metrics.
        """
        with self._active():
            values = self._values(sequences)
            loss, metrics = value_loss(
                values, old_values, returns, mask.float(), clip_range_value=self.ppo.value_clip
            )
            (loss * (weight * self.ppo.value_coef)).backward()
        return metrics

    def optimizer_step(self, max_grad_norm: float) -> float:
        """Average gradients over processes, clip, step, zero; returns the norm before clipping."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            for p in self._params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
                p.grad /= world
        norm = torch.nn.utils.clip_grad_norm_(self._params, max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.adapter is not None:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(
                self.body.model, state["adapter"], adapter_name=self.adapter
            )
            if getattr(result, "unexpected_keys", None):
                raise KeyError(f"critic adapter: unexpected keys {result.unexpected_keys[:5]}")
            self.head.load_state_dict(state["head"])
        else:
            self.body.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


def value_head(hidden_size: int, device: torch.device | str) -> nn.Linear:
    """Linear(hidden, 1) in fp32, near-zero output at the start: weights ~ N(0, 1/(H+1)), bias 0,
    so that early values neither dominate GAE nor blow up the value loss."""
    head = nn.Linear(hidden_size, 1, device=device, dtype=torch.float32)
    nn.init.normal_(head.weight, std=1.0 / (hidden_size + 1))
    nn.init.zeros_(head.bias)
    return head


def build_critic(config: RLConfig, policy: Policy, device: torch.device | str) -> Critic:
    """The critic PPO needs: a second LoRA adapter on ``policy.model`` under LoRA, else a copy."""
    if config.model.lora.enabled:
        return _lora_critic(config, policy, device)
    return _full_critic(config, policy, device)


def _lora_critic(config: RLConfig, policy: Policy, device: torch.device | str) -> Critic:
    from peft import LoraConfig

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
            target_modules=list(lora.target_modules),
        ),
    )
    model.set_adapter(policy_adapter)  # the policy's adapter trainable, the critic's frozen
    marker = f".{CRITIC_ADAPTER}."
    adapter_params = [p for name, p in model.named_parameters() if marker in name]
    head = value_head(policy.base.config.text_config.hidden_size, device)
    return Critic(
        policy, head, [*adapter_params, *head.parameters()], config, adapter=CRITIC_ADAPTER
    )


def _full_critic(config: RLConfig, policy: Policy, device: torch.device | str) -> Critic:
    from rollouts.value_model import StepAudio2ForSequenceClassification

    source = config.algorithm.ppo.critic_path or config.model.path
    model, info = StepAudio2ForSequenceClassification.from_pretrained(
        source, num_labels=1, dtype=getattr(torch, config.model.dtype), output_loading_info=True
    )
    model.to(device)
    if "score.weight" in info["missing_keys"]:  # a policy checkpoint: no value head yet
        with torch.no_grad():
            nn.init.normal_(model.score.weight, std=1.0 / (model.score.in_features + 1))
    if config.model.freeze_audio_encoder:
        for module in (model.encoder, model.adapter):
            module.requires_grad_(False)
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    return Critic(Policy(model, policy.processor), model.score, params, config)

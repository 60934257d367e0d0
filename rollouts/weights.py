"""What travels on a weight sync: the LoRA adapter tensors only, or the full state dict.

Shipping merged LoRA weights as a full model is a pain users of other toolkits report; here a
LoRA run extracts and loads only the adapter (peft's own state-dict helpers do the naming).
"""

from __future__ import annotations

import torch


def is_peft_model(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def policy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a rollout worker needs to match ``model``: adapter only under LoRA. Sharded
    (FSDP) tensors are gathered whole, so every process must call this."""
    if is_peft_model(model):
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(model)
    else:
        state = model.state_dict()
    from torch.distributed.tensor import DTensor

    return {
        name: (t.full_tensor() if isinstance(t, DTensor) else t).detach().cpu().clone()
        for name, t in state.items()
    }


def load_policy_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load what ``policy_state`` produced; every tensor must find its place."""
    if is_peft_model(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, state)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
    else:
        result = model.load_state_dict(state, strict=True)
        unexpected = list(result.unexpected_keys)
    if unexpected:
        raise KeyError(f"weight sync: unexpected keys {unexpected[:5]}")


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())

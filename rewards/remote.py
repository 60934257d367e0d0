"""Place a reward in one Ray actor that every rollout worker shares.

Model-backed rewards (ASR, classifiers, reward models) should load their model once, on the
device the recipe gives them, not once per worker. :func:`remote_reward` builds the reward inside
a named actor and returns a proxy with the reward's signature; each process asking for the same
reward with the same parameters gets the same actor (``get_if_exists``). The actor belongs to the
process that created it first and ends with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
from collections.abc import Callable
from typing import Any

from rewards.errors import MissingExtraError
from rewards.registry import get_reward

try:
    import ray
except ImportError as err:
    raise MissingExtraError("ray", err) from err


class _RewardActor:
    """Holds one built reward; scores batches sent by the proxies."""

    def __init__(self, reward: str | Callable[..., Any], params: dict[str, Any]):
        self.fn = get_reward(reward, **params)

    def score(
        self, prompts: list[Any], completions: list[Any], **kwargs: Any
    ) -> list[float | None]:
        out = self.fn(prompts=prompts, completions=completions, **kwargs)
        if inspect.isawaitable(out):
            out = asyncio.run(out)
        return list(out)


class RemoteReward:
    """``fn(prompts, completions, **kwargs)`` that scores on the shared actor (one round trip)."""

    def __init__(self, actor: Any, name: str):
        self.actor = actor
        self.__name__ = name

    def __call__(
        self, prompts: list[Any], completions: list[Any], **kwargs: Any
    ) -> list[float | None]:
        return ray.get(self.actor.score.remote(prompts, completions, **kwargs))

    def __repr__(self) -> str:
        return f"RemoteReward({self.__name__!r})"


def remote_reward(
    reward: str | Callable[..., Any],
    params: dict[str, Any] | None = None,
    *,
    name: str | None = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
    max_concurrency: int = 1,
) -> RemoteReward:
    """Build ``get_reward(reward, **params)`` in a shared Ray actor and return its proxy.

    Args:
        reward: registered name, ``"package.module:function"``, or a (picklable) callable.
        params: the reward's parameters.
        name: the actor's name; by default derived from the reward and its parameters, so equal
            specs share one actor.
        num_cpus, num_gpus: resources of the actor (a fraction of a GPU is fine).
        max_concurrency: batches the actor scores at once; 1 queues them.
    """
    params = dict(params or {})
    label = reward if isinstance(reward, str) else f"{reward.__module__}.{reward.__qualname__}"
    if name is None:
        digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=repr).encode()).hexdigest()
        name = f"reward:{label}:{digest[:12]}"
    actor = (
        ray.remote(_RewardActor)
        .options(
            name=name,
            get_if_exists=True,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            max_concurrency=max_concurrency,
        )
        .remote(reward, params)
    )
    return RemoteReward(actor, label)

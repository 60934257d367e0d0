"""Reward lookup: by registered name, or by ``"package.module:function"``.

A recipe names a reward and gives its parameters inline, e.g.
``{name: think_length, max_words: 60, weight: 0.2}``; :func:`get_reward` turns the name and the
parameters into one callable with TRL's signature. Parameters are checked against the
reward's signature when the recipe is loaded, not on the first batch of training.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

RewardFn = Callable[..., Any]

_REGISTRY: dict[str, Any] = {}
# Call arguments, never parameters: the batch itself.
_BATCH_ARGS = ("prompts", "completions")


def reward(name: str | None = None) -> Callable[[Any], Any]:
    """Register a reward function, or a class whose instances are reward functions.

    >>> @reward("short_answer")
    ... def short_answer(prompts, completions, max_words=20, **kwargs): ...

    A class is instantiated with the recipe's parameters (load models in ``__init__``, once);
    a function gets them as keyword arguments on every call.
    """

    def register(obj: Any) -> Any:
        key = name or obj.__name__
        existing = _REGISTRY.get(key)
        # Re-running the same definition (a notebook cell, a reloaded module) replaces it.
        if existing is not None and _origin(existing) != _origin(obj):
            raise ValueError(
                f"reward {key!r} is already registered by "
                f"{existing.__module__}.{existing.__qualname__}"
            )
        _REGISTRY[key] = obj
        return obj

    return register


def _origin(obj: Any) -> tuple[str, str]:
    return getattr(obj, "__module__", ""), getattr(obj, "__qualname__", "")


def registered_rewards() -> list[str]:
    """Names of all registered rewards, sorted."""
    return sorted(_REGISTRY)


def get_reward(name: str | RewardFn, **params: Any) -> RewardFn:
    """Build a reward callable ``fn(prompts, completions, **kwargs) -> list[float | None]``.

    ``name`` is a registered name, ``"package.module:attribute"``, or a callable. The object
    found is used as follows: a class is instantiated with ``params``; a function that takes
    neither ``completions`` nor ``**kwargs`` is a factory (such as
    ``trl.rewards:get_soft_overlong_punishment``) called with ``params`` to make the reward; any
    other callable is the reward, with ``params`` bound as keyword arguments.
    """
    obj = name if callable(name) else _lookup(name)
    label = name if isinstance(name, str) else getattr(name, "__name__", repr(name))
    if inspect.isclass(obj):
        _check_params(obj.__init__, params, label, skip_self=True)
        return obj(**params)
    parameters = inspect.signature(obj).parameters.values()
    takes_batch = any(p.name == "completions" or p.kind == p.VAR_KEYWORD for p in parameters)
    if inspect.isfunction(obj) and not takes_batch:
        _check_params(obj, params, label)
        built = obj(**params)
        if not callable(built):
            raise TypeError(
                f"reward factory {label!r} returned {type(built).__name__}, not a function"
            )
        return built
    _check_params(obj, params, label)
    return _bind(obj, params) if params else obj


def check_reward(name: str | RewardFn, **params: Any) -> None:
    """Raise ``ValueError`` for what :func:`get_reward` would refuse (an unknown name, module or
    parameter, a missing required one) without building the reward: no class is instantiated and
    no factory called, so a recipe's rewards are checked before any model loads."""
    obj = name if callable(name) else _lookup(name)
    label = name if isinstance(name, str) else getattr(name, "__name__", repr(name))
    if inspect.isclass(obj):
        _check_params(obj.__init__, params, label, skip_self=True)
    else:
        _check_params(obj, params, label)


def _lookup(name: str) -> Any:
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            hint = "; pip install 'speech-rlhf[trl]' brings it" if e.name == "trl" else ""
            raise ValueError(
                f"reward {name!r}: cannot import module {module_name!r}: {e}{hint}"
            ) from e
        try:
            return functools.reduce(getattr, attr.split("."), module)
        except AttributeError:
            raise ValueError(f"reward {name!r}: module {module_name!r} has no {attr!r}") from None
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(
        f"unknown reward {name!r}; {hint}registered: {', '.join(registered_rewards())} "
        "(or give 'package.module:function')"
    )


def _check_params(
    fn: Callable, params: dict[str, Any], label: str, skip_self: bool = False
) -> None:
    """Unknown parameters, and missing keyword-only ones (recipe parameters without a default)."""
    signature = list(inspect.signature(fn).parameters.values())[1 if skip_self else 0 :]
    accepted = [
        p.name
        for p in signature
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in _BATCH_ARGS
    ]
    missing = [
        p.name
        for p in signature
        if p.kind == p.KEYWORD_ONLY and p.default is p.empty and p.name not in params
    ]
    if missing:
        raise ValueError(f"reward {label!r} needs parameter(s) {missing}")
    for key in params:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"reward {label!r} has no parameter {key!r}{hint} (parameters: {accepted})"
            )


def _bind(fn: RewardFn, params: dict[str, Any]) -> RewardFn:
    if inspect.iscoroutinefunction(fn):
        return AsyncBoundReward(fn, params)
    return BoundReward(fn, params)


class BoundReward:
    """A reward with its recipe parameters fixed (they win over dataset columns of the same name).

    A class, not a closure, so a runner pickles to Ray workers with plain pickle.
    """

    def __init__(self, fn: RewardFn, params: dict[str, Any]):
        self.fn, self.params = fn, dict(params)
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **{**kwargs, **self.params})

    def __repr__(self) -> str:
        return f"{self.__name__}({', '.join(f'{k}={v!r}' for k, v in self.params.items())})"


class AsyncBoundReward(BoundReward):
    """:class:`BoundReward` for an ``async def`` reward."""

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return await self.fn(*args, **{**kwargs, **self.params})


def resolve(obj: Any) -> Any:
    """A helper object given by the recipe as ``"package.module:name"`` (a detokenizer, an ASR):
    the object itself, a class instantiated without arguments; anything else is returned as is."""
    if not isinstance(obj, str):
        return obj
    if ":" not in obj:
        raise ValueError(f"expected 'package.module:name', got {obj!r}")
    target = _lookup(obj)
    return target() if inspect.isclass(target) else target

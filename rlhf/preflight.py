"""Validate before spending compute: what `rlhf train` / `rlhf sft` check before any weights load.

A bad row at position 7 of a dataset used to stop a run at step 4, hours in for a large model;
a missing model folder surfaced as a hub "repo id" error. Here, in order, each step cheap:

1. the run folder can be written (not a file, not read-only), and Ray is installed when the
   recipe runs anything on it;
2. ``model.path`` (and a PPO critic's) is a local folder, or a hub id the hub cache or the network
   has, and its *config* loads (``AutoConfig``: no weights);
3. the dataset split loads and keeps rows after ``data.tasks`` / ``data.where`` /
   ``data.max_samples``;
4. every row goes through ``row_to_sample`` (its audio decoded and checked against its messages):
   always for ``--dry-run`` and ``data.validate=always``, for splits of at most
   ``SCAN_AUTO_MAX_ROWS`` rows under ``data.validate=auto``. All bad rows are collected and the
   first ``MAX_REPORTED`` reported, with the count.

The recipe's keys, values and rewards were checked when it loaded (``rlhf.config.load_config``).
Every problem raises a ``UserError`` subclass: one line, exit status 2 from the CLI.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rlhf.config import ConfigError, DataConfig, ModelConfig, RunConfig

SCAN_AUTO_MAX_ROWS = 2000
MAX_REPORTED = 10


class BadRowsError(ConfigError):
    """Dataset rows that cannot be trained on; the message lists the first ones and the count."""


def check(config: Any, *, dry_run: bool = False) -> None:
    """All checks for a loaded ``RLConfig`` / ``SFTConfig`` (see the module docstring)."""
    check_output_dir(config.run)
    check_extras(config)
    check_model_path("model.path", config.model.path)
    critic = getattr(getattr(config, "algorithm", None), "ppo", None)
    if critic is not None and config.algorithm.name == "ppo" and critic.critic_path:
        check_model_path("algorithm.ppo.critic_path", critic.critic_path)
    if dry_run:
        load_model_config(config.model)
    from rlhf.data.loading import load_split

    dataset = load_split(config.data)
    mode = config.data.validate
    if dry_run or mode == "always" or (mode == "auto" and len(dataset) <= SCAN_AUTO_MAX_ROWS):
        scan_rows(dataset, config.data)


def check_output_dir(run: RunConfig) -> None:
    """``run.output_dir`` is, or can become, a folder this process may write into."""
    out = Path(run.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"run.output_dir: {out} is a file, not a folder")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"run.output_dir: {out} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"run.output_dir: {out} cannot be written: {existing} is read-only")


def check_extras(config: Any) -> None:
    """Ray, when the recipe needs it (``rollout.engine=ray``, a reward with ``remote:``), is
    installed: it is the ``[ray]`` extra, not a dependency."""
    import importlib.util

    rollout = getattr(config, "rollout", None)
    remote = [
        i
        for i, r in enumerate(getattr(config, "rewards", []))
        if isinstance(r, dict) and r.get("remote")
    ]
    needs = "rollout.engine=ray" if rollout is not None and rollout.engine == "ray" else None
    needs = needs or (f"rewards[{remote[0]}].remote" if remote else None)
    if needs and importlib.util.find_spec("ray") is None:
        raise ConfigError(f"{needs} needs Ray: pip install 'speech-rlhf[ray]'")


def check_model_path(key: str, path: str) -> None:
    """A local folder with a ``config.json``, or a hub id (checked in the cache when offline)."""
    from rlhf.data.loading import HUB_ID

    local = Path(path)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ConfigError(f"{key}: {path} has no config.json; not a model checkpoint folder")
        return
    if local.exists():
        raise ConfigError(f"{key}: {path} is a file, not a checkpoint folder")
    if not HUB_ID.match(path):
        raise ConfigError(f"{key}: {path}: no such folder")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(path, "config.json"), str):
            raise ConfigError(
                f"{key}: {path}: no such local folder, and no hub model of that id in the "
                "Hugging Face cache (HF_HUB_OFFLINE is set)"
            )


def load_model_config(model: ModelConfig) -> Any:
    """The model's ``config.json`` through ``AutoConfig`` (no weights), or a one-line error."""
    from transformers import AutoConfig

    import rollouts  # noqa: F401  (registers the Step-Audio 2 architecture)

    try:
        return AutoConfig.from_pretrained(model.path)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model.path: {model.path}: cannot load its config: {first}") from err


def scan_rows(dataset: Any, data: DataConfig, *, progress: bool = True) -> int:
    """Every row of ``dataset`` through ``row_to_sample``; raises ``BadRowsError`` listing the
    first ``MAX_REPORTED`` bad rows and their count. Returns the number of rows checked."""
    from rich.progress import track

    from rlhf.data.loading import row_to_sample

    source = f"{data.path}:{data.split}"
    bad: list[str] = []
    rows = track(
        enumerate(dataset),
        total=len(dataset),
        description="checking rows",
        transient=True,
        disable=not progress,
    )
    for index, row in rows:
        try:
            row_to_sample(row, index, source, think=data.think, max_audio_s=data.max_audio_s)
        except (ValueError, KeyError, TypeError, OSError) as err:
            # KeyError's str() quotes its message; every other error is its message
            bad.append(err.args[0] if isinstance(err, KeyError) and err.args else str(err))
    if bad:
        shown = "; ".join(bad[:MAX_REPORTED])
        more = f" (first {MAX_REPORTED} shown)" if len(bad) > MAX_REPORTED else ""
        raise BadRowsError(
            f"{source}: {len(bad)} of {len(dataset)} rows are unusable{more}: {shown}"
        )
    return len(dataset)

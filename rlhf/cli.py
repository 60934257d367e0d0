"""The `rlhf` command: one entry point, one module per subcommand.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int | None``. Only the
module of the command being run is imported, so `rlhf --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rlhf.config import ConfigError
from rollouts.audio import AudioError

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("rlhf.demo", "make data, build the tiny model, SFT, GRPO and evaluate, end to end"),
    "make-tiny": ("rlhf.tiny", "build a tiny randomly initialised Step-Audio 2 model + tokenizer"),
    "make-data": ("rlhf.data.synth", "synthesise the paralinguistic speech dataset"),
    "sft": ("rlhf.sft", "supervised fine-tuning from a recipe"),
    "train": ("rlhf.train", "RL training (GRPO family, PPO) from a recipe"),
    "eval": ("rlhf.evaluate", "evaluate a checkpoint on a held-out split"),
    "rewards": ("rlhf.reward_scoring", "score completions with reward functions"),
    "filter": ("rlhf.filter", "keep prompts whose pass rate lies in a band"),
    "reward-model": ("rlhf.reward_model", "train a Bradley-Terry preference reward model"),
    "plot": ("rlhf.plot", "draw a run's metric curves to PNG"),
    "bench": ("rlhf.bench", "measure speed and memory"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "usage: rlhf COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"rlhf: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"rlhf {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return module.run(args) or 0
    except (ConfigError, AudioError, FileNotFoundError) as err:
        # the user's input is wrong, not our code: say what and where, without a traceback
        print(f"rlhf {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

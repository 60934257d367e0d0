"""The `rlhf` command: one entry point, one module per subcommand.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int | None``, and
imports torch, transformers and datasets inside ``run``, not at module level: only the module of
the command being run is imported, so `rlhf --help` and `rlhf CMD --help` answer at once.

A mistake in what the user gave (a ``UserError``: a recipe, dataset, audio file or path) is one
line on stderr, ``rlhf CMD: error: ...``, and exit status 2, as argparse does for bad arguments.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from rewards.errors import UserError

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("rlhf.demo", "make data, build the tiny model, SFT, GRPO and evaluate, end to end"),
    "make-tiny": (
        "rlhf.tiny",
        "build a tiny random checkpoint (Step-Audio 2, Qwen2-Audio, Qwen2.5-Omni, text) + tokenizer",
    ),
    "make-data": ("rlhf.data.synth", "synthesise the paralinguistic speech dataset"),
    "sft": ("rlhf.train", "supervised fine-tuning from a recipe"),
    "train": ("rlhf.train", "RL training (GRPO family, PPO) from a recipe"),
    "eval": ("rlhf.evaluate", "evaluate a checkpoint on a held-out split"),
    "rewards": ("rlhf.reward_scoring", "score completions with reward functions"),
    "filter": ("rlhf.filter", "keep prompts whose pass rate lies in a band"),
    "reward-model": ("rlhf.train", "train a Bradley-Terry preference reward model"),
    "plot": ("rlhf.plot", "draw a run's metric curves to PNG"),
    "bench": ("rlhf.bench", "measure speed and memory"),
    "plan": ("rlhf.plan", "memory per GPU of a recipe before launching it (meta-device models)"),
}


def package_version() -> str:
    try:
        return version("speech-rlhf")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return (
        "usage: rlhf [--version] COMMAND [ARGS...]\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\n`rlhf COMMAND --help` describes a command's arguments."
    )


def build_parser(name: str) -> tuple[ModuleType, argparse.ArgumentParser]:
    """The module of command ``name`` and its argument parser (``args.command`` is ``name``)."""
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"rlhf {name}", description=help_)
    parser.set_defaults(command=name)
    module.add_arguments(parser)
    return module, parser


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Options may come between positionals (``RECIPE --resume key=value``): argparse's
    intermixed parsing, except for commands with subcommands, which it does not support."""
    try:
        return parser.parse_intermixed_args(argv)
    except TypeError:  # raised before parsing, for parsers with subcommands
        return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(_usage(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"rlhf (speech-rlhf) {package_version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        near = difflib.get_close_matches(name, COMMANDS, n=1, cutoff=0.5)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        print(f"rlhf: unknown command {name!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, parser = build_parser(name)
    args = parse_arguments(parser, rest)
    try:
        return module.run(args) or 0
    except (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as err:
        # the user's input is wrong, not our code: say what and where, without a traceback
        print(f"rlhf {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

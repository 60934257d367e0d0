"""`rlhf train RECIPE.yaml [key=value ...] [--resume [CHECKPOINT]]`."""

from __future__ import annotations

import argparse

from rlhf.config import RLConfig, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="YAML recipe (see recipes/)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        help="resume from the newest checkpoint in run.output_dir, or from the given one",
    )


def run(args: argparse.Namespace) -> int:
    from rlhf.trainer import RLTrainer

    config = load_config(RLConfig, args.recipe, args.overrides)
    trainer = RLTrainer(config)
    history = trainer.train(resume=args.resume)
    if history:
        last = history[-1]
        print(f"done: {trainer.global_step} steps, run folder {config.run.output_dir}")
        print(f"last step mean reward {last.get('reward_total', {}).get('mean')}")
    return 0

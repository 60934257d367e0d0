"""`rlhf train` and `rlhf sft`: a recipe and its overrides, checked, then the trainer.

    rlhf train RECIPE.yaml [key.sub=value ...] [--resume | --resume-from CHECKPOINT]
                           [--print-config] [--dry-run]
    rlhf sft   RECIPE.yaml [key.sub=value ...] [--print-config] [--dry-run]

Before any weights load, ``rlhf.preflight`` checks what can be checked cheaply (paths, the
model's config, the dataset split); small datasets are scanned row by row too (``data.validate``).
``--dry-run`` does all of it, always scanning the whole split, and exits: 0 when the run could
start, 2 with every problem found otherwise.
"""

from __future__ import annotations

import argparse
import time

RESUME_HELP = (
    "--resume continues from the newest intact checkpoint in run.output_dir; "
    "--resume-from PATH from that checkpoint folder"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="YAML recipe (see recipes/)")
    parser.add_argument(
        "overrides", nargs="*", help="key.sub=value overrides, e.g. run.steps=10 'rewards=[...]'"
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved recipe (YAML, each key's help as a comment) and exit",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the recipe, the model config, the rewards and every dataset row, then exit "
        "(no weights load, nothing is written)",
    )
    if parser.get_default("command") == "train":
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--resume", action="store_true", help=RESUME_HELP)
        group.add_argument("--resume-from", metavar="PATH", default=None, help=RESUME_HELP)


def run(args: argparse.Namespace) -> int:
    from rlhf import preflight
    from rlhf.config import RLConfig, SFTConfig, config_to_yaml, load_config

    is_sft = args.command == "sft"
    config = load_config(SFTConfig if is_sft else RLConfig, args.recipe, args.overrides)
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    resume = getattr(args, "resume_from", None) or getattr(args, "resume", False)
    preflight.check(config, dry_run=args.dry_run)
    if args.dry_run:
        print(f"dry run: {args.recipe} is ready to train")
        return 0
    started = time.perf_counter()
    if is_sft:
        from rlhf.sft import SFTTrainer

        trainer = SFTTrainer(config)
        history = trainer.train()
        if trainer.is_main:
            last = history[-1]["loss"] if history else float("nan")
            print(
                f"done: {trainer.global_step} steps in {time.perf_counter() - started:.0f} s, "
                f"final loss {last:.3f}; checkpoint {trainer.run_dir / 'final'}"
            )
        return 0

    from rlhf.trainer import RLTrainer

    trainer = RLTrainer(config)
    history = trainer.train(resume=resume)
    if history:
        last = history[-1]
        print(
            f"done: {trainer.global_step} steps in {time.perf_counter() - started:.0f} s, "
            f"run folder {config.run.output_dir}"
        )
        print(f"last step mean reward {last.get('reward_total', {}).get('mean')}")
    return 0

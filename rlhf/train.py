"""`rlhf train`, `rlhf sft`, `rlhf reward-model`: a recipe and its overrides, checked, then the
trainer.

    rlhf train        RECIPE.yaml [key.sub=value ...] [--resume | --resume-from CHECKPOINT]
                                  [--print-config] [--dry-run]
    rlhf sft          RECIPE.yaml [key.sub=value ...] [--print-config] [--dry-run]
    rlhf reward-model RECIPE.yaml [key.sub=value ...] [--print-config] [--dry-run]

Before any weights load, ``rlhf.preflight`` checks what can be checked cheaply (paths, the
model's config, the dataset split); small datasets are scanned row by row too (``data.validate``).
``--dry-run`` does all of it, always scanning the whole split, and exits: 0 when the run could
start, 2 with every problem found otherwise.
"""

from __future__ import annotations

import argparse
import time


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
        group.add_argument(
            "--resume",
            action="store_true",
            help="continue from the newest intact checkpoint in run.output_dir (a flag: "
            "`--resume run.steps=5` keeps run.steps=5 an override)",
        )
        group.add_argument(
            "--resume-from", metavar="PATH", default=None, help="continue from this checkpoint"
        )


def run(args: argparse.Namespace) -> int:
    from rlhf import preflight
    from rlhf.config import RewardModelConfig, RLConfig, SFTConfig, config_to_yaml, load_config

    schemas = {"train": RLConfig, "sft": SFTConfig, "reward-model": RewardModelConfig}
    config = load_config(schemas[args.command], args.recipe, args.overrides)
    if args.print_config:
        print(config_to_yaml(config), end="")
        return 0
    resume = getattr(args, "resume_from", None) or getattr(args, "resume", False)
    preflight.check(config, dry_run=args.dry_run)
    if args.dry_run:
        print(f"dry run: {args.recipe} is ready to train")
        return 0
    started = time.perf_counter()
    if args.command == "reward-model":
        return _train_reward_model(config, started)
    if args.command == "sft":
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


def _train_reward_model(config, started: float) -> int:
    from rlhf.reward_model import RewardModelTrainer

    trainer = RewardModelTrainer(config)
    history = trainer.train()
    if trainer.is_main:
        last = history[-1] if history else {}
        print(
            f"done: {trainer.global_step} steps in {time.perf_counter() - started:.0f} s, "
            f"last loss {last.get('loss', float('nan')):.3f}, "
            f"accuracy {last.get('accuracy', float('nan')):.2f}; "
            f"checkpoint {trainer.run_dir / 'final'}"
        )
        evaluation = trainer.run_dir / "eval.json"
        if evaluation.exists():
            print(f"held-out pairs: {evaluation.read_text().strip()}")
    return 0

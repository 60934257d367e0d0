"""`rlhf make-tiny OUT_DIR [--audio-codes N] [--seed S]`: the tiny model the demo and tests train.

``rollouts.tiny.make_tiny`` builds and saves it; this command only adds what ``rollouts`` may not
import: the synthetic-data grammar, whose text trains the tokenizer.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", help="folder to save the model, tokenizer and processor into")
    parser.add_argument(
        "--audio-codes",
        type=int,
        default=None,
        help="audio-code tokens in the vocabulary (default: as many as the real model has)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")


def run(args: argparse.Namespace) -> int:
    from transformers import AutoModelForCausalLM

    import rollouts  # noqa: F401  (registers the architecture with the Auto classes)
    from rlhf.data.grammar import corpus
    from rollouts.tiny import make_tiny
    from rollouts.tokens import NUM_AUDIO_CODES

    codes = NUM_AUDIO_CODES if args.audio_codes is None else args.audio_codes
    out = make_tiny(args.out_dir, corpus().splitlines(), num_audio_codes=codes, seed=args.seed)
    model = AutoModelForCausalLM.from_pretrained(out)
    total = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {out}: {total / 1e6:.2f} M parameters, vocabulary {model.config.text_config.vocab_size}"
    )
    return 0

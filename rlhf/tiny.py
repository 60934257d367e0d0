"""`rlhf make-tiny OUT_DIR [--arch A] [--audio-codes N] [--seed S]`: a tiny model to train.

``rollouts.tiny.make_tiny`` builds and saves it (``--arch``: step-audio-2, qwen2-audio,
qwen2.5-omni or text); this command only adds what ``rollouts`` may not import: the
synthetic-data grammar, whose text trains the tokenizer.
"""

from __future__ import annotations

import argparse

ARCHS = ("step-audio-2", "qwen2-audio", "qwen2.5-omni", "text")  # rollouts.tiny.ARCHS, unimported


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", help="folder to save the model, tokenizer and processor into")
    parser.add_argument(
        "--arch", choices=ARCHS, default="step-audio-2", help="model family (default step-audio-2)"
    )
    parser.add_argument(
        "--audio-codes",
        type=int,
        default=None,
        help="Step-Audio 2's audio-code tokens (default: as many as the real model has)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")


def run(args: argparse.Namespace) -> int:
    from rlhf.data.grammar import corpus
    from rollouts.policy import Policy
    from rollouts.tiny import make_tiny
    from rollouts.tokens import NUM_AUDIO_CODES

    codes = NUM_AUDIO_CODES if args.audio_codes is None else args.audio_codes
    out = make_tiny(
        args.out_dir, corpus().splitlines(), num_audio_codes=codes, seed=args.seed, arch=args.arch
    )
    model = Policy.from_pretrained(out).base
    total = sum(p.numel() for p in model.parameters())
    vocab = model.get_output_embeddings().weight.shape[0]
    print(
        f"wrote {out}: {type(model).__name__}, {total / 1e6:.2f} M parameters, vocabulary {vocab}"
    )
    return 0

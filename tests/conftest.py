"""Shared test setup: single-threaded torch (CI has 2 cores) and offline Hugging Face."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Step-Audio 2 checkpoint with the grammar's tokenizer (64 audio codes)."""
    from rlhf.data.grammar import corpus
    from rollouts.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny"), corpus().splitlines(), num_audio_codes=64)


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory):
    """A small synthetic speech dataset (train 16 clips, test 6 clips); returns the dataset dir."""
    from rlhf.data.synth import build

    out = tmp_path_factory.mktemp("speech")
    build(out, num_clips=16, test_clips=6, seed=0, tasks_per_clip=5, test_tasks_per_clip=5)
    return out / "data"

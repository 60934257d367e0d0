"""Rewards for speech RL: plain functions with TRL's signature, and a runner that never crashes training."""

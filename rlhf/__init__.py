"""Learning: data, advantages, losses, the RL loop, SFT, checkpoints, config and the `rlhf` command."""

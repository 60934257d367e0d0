"""An endless, resumable stream of prompts: shuffled per epoch, its position saved in checkpoints.

The order is a pure function of (seed, epoch), so the position ``(epoch, offset)`` is all a
checkpoint needs to make a resumed run draw exactly the prompts it would have drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


class PromptStream:
    def __init__(
        self, num_rows: int, take: Callable[[int], Any], *, seed: int = 0, shuffle: bool = True
    ):
        if num_rows == 0:
            raise ValueError("the prompt dataset is empty")
        self.num_rows, self.take, self.seed, self.shuffle = num_rows, take, seed, shuffle
        self.epoch, self.offset = 0, 0

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_rows)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)

    def next(self, count: int) -> list[Any]:
        """The next ``count`` prompts, wrapping into a new epoch when one runs out."""
        items = []
        while len(items) < count:
            order = self._order(self.epoch)
            index = int(order[self.offset])
            items.append(self.take(index))
            self.offset += 1
            if self.offset == self.num_rows:
                self.epoch, self.offset = self.epoch + 1, 0
        return items

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])

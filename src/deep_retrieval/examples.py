"""The training examples of a Dataset: (input history, target item) pairs, in batches.

``context = "prefix"``: every item but the first of a row is a target, its input the items
before it (time-ordered logs, the paper). ``context = "others"``: every item of a row of
length >= 2 is a target, its input the row's other items (logs without a meaningful order).
"""

from __future__ import annotations

import numpy as np
import torch

from .data.dataset import Dataset, pad_histories, pad_others


class Examples:
    """The training pairs of a Dataset: target = an item, input = its context."""

    def __init__(self, ds: Dataset, max_len: int, context: str = "prefix"):
        tr = ds.train
        self.values, self.max_len, self.context = tr.values, max_len, context
        if context == "prefix":
            self.pos = ds.example_positions()  # (N,) positions of targets in train.values
        else:
            self.pos = np.flatnonzero(np.repeat(tr.lengths >= 2, tr.lengths))  # (N,)
        rows = np.searchsorted(tr.offsets, self.pos, side="right") - 1  # (N,)
        self.starts, self.ends = tr.offsets[rows], tr.offsets[rows + 1]  # (N,) each target's row
        self.targets = self.values[self.pos]  # (N,)

    def __len__(self) -> int:
        return len(self.pos)

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch, L) histories padded -1, (batch,) lengths, (batch,) targets."""
        if self.context == "prefix":
            hist, lengths = pad_histories(self.values, self.starts[idx], self.pos[idx], self.max_len)
        else:
            hist, lengths = pad_others(self.values, self.starts[idx], self.ends[idx], self.pos[idx],
                                       self.max_len)
        return torch.from_numpy(hist), torch.from_numpy(lengths), torch.from_numpy(self.targets[idx])

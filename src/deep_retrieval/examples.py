"""The training examples of a Dataset, in batches: (input history, target item(s)).

``context`` (``train.context``):

- ``"prefix"``: every item but the first of a row is a target, its input the items before
  it (time-ordered logs, the paper).
- ``"others"``: every item of a row of length >= 2 is a target, its input the row's other
  items (logs without a meaningful order; the input then looks like a serving history).
- ``"user"``: one example per row of length >= 2: the input is the row's last ``max_len``
  items, the targets are all of the row's items (use with ``encoder.dropout``, so that the
  model learns to predict the items it does not see; a multi-target loss per user).

``batch`` returns targets ``(batch,)`` for the first two and ``(batch, T)`` padded with -1
for ``"user"``; ``pairs`` flattens either into (row in the batch, item) pairs, which is what
the M-step scores and counts.
"""

from __future__ import annotations

import numpy as np
import torch

from .data.dataset import Dataset, Ragged, pad_histories, pad_others, pad_ragged


class Examples:
    def __init__(self, ds: Dataset, max_len: int, context: str = "prefix"):
        tr = ds.train
        self.values, self.max_len, self.context = tr.values, max_len, context
        if context == "user":
            self.rows = np.flatnonzero(tr.lengths >= 2)  # (N,) one example per row
            self.starts, self.ends = tr.offsets[self.rows], tr.offsets[self.rows + 1]  # (N,)
            self.targets = None  # several per example: see ``pairs``
            return
        if context == "prefix":
            self.pos = ds.example_positions()  # (N,) positions of targets in train.values
        else:
            self.pos = np.flatnonzero(np.repeat(tr.lengths >= 2, tr.lengths))  # (N,)
        rows = np.searchsorted(tr.offsets, self.pos, side="right") - 1  # (N,)
        self.starts, self.ends = tr.offsets[rows], tr.offsets[rows + 1]  # (N,) each target's row
        self.targets = self.values[self.pos]  # (N,)

    def __len__(self) -> int:
        return len(self.starts)

    def only_targets_at(self, mask: np.ndarray) -> Examples:
        """Keep the examples whose target sits where ``mask`` (aligned with the training
        values) is True, in place: earlier items then serve as inputs only (``"prefix"`` and
        ``"others"``; a ``"user"`` example keeps every item of its row as a target)."""
        if self.context != "user":
            keep = mask[self.pos]
            self.pos, self.starts, self.ends = self.pos[keep], self.starts[keep], self.ends[keep]
            self.targets = self.targets[keep]
        return self

    def _rows(self, idx: np.ndarray) -> Ragged:
        """The whole rows of the examples ``idx`` (``"user"``), as a Ragged."""
        lengths = self.ends[idx] - self.starts[idx]  # (b,)
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.arange(offsets[-1], dtype=np.int64) + np.repeat(self.starts[idx] - offsets[:-1], lengths)
        return Ragged(self.values[flat], offsets)

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch, L) histories padded -1, (batch,) lengths, targets (batch,) or (batch, T) padded -1."""
        if self.context == "user":
            hist, lengths = pad_histories(self.values, self.starts[idx], self.ends[idx], self.max_len)
            rows = self._rows(idx)
            targets, _ = pad_ragged(rows, int(rows.lengths.max(initial=1)))  # (batch, T), oldest first
            return torch.from_numpy(hist), torch.from_numpy(lengths), torch.from_numpy(targets)
        if self.context == "prefix":
            hist, lengths = pad_histories(self.values, self.starts[idx], self.pos[idx], self.max_len)
        else:
            hist, lengths = pad_others(self.values, self.starts[idx], self.ends[idx], self.pos[idx],
                                       self.max_len)
        return torch.from_numpy(hist), torch.from_numpy(lengths), torch.from_numpy(self.targets[idx])

    def pairs(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every (example's row in ``idx``, target item) pair of the examples ``idx``: (n,), (n,)."""
        if self.context != "user":
            return np.arange(len(idx), dtype=np.int64), self.targets[idx]
        rows = self._rows(idx)
        return rows.row_ids(), rows.values

    def item_counts(self, V: int) -> np.ndarray:
        """(V,) N_v: how often each item is a target over all the examples."""
        return np.bincount(self.pairs(np.arange(len(self)))[1], minlength=V)

"""Seeded, resumable mini-batches over in-memory arrays (x, y).

The order of epoch `e` is a permutation drawn from a generator seeded with the pair (seed, e), so it depends only on
(seed, e): skipping, replaying or resuming an epoch never changes which examples land in which batch. A trainer saves
`state_dict()` next to its weights and, after `load_state_dict`, receives bit-identical remaining batches.

Cost per batch: exactly one gather per array, `np.take(x, idx, axis=0, out=buffer)`, written into a buffer that is
allocated once and reused. `mode="clip"` is passed because with the default `mode="raise"` NumPy first gathers into a
hidden temporary and then copies it into `out`; our indices come from a permutation, so they are always in range.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


class BatchIterator:
    """Mini-batches of (x, y) in a seeded order, one epoch per `for` loop.

        it = BatchIterator(x, y, batch_size=128, seed=0)
        for epoch in range(10):
            for xb, yb in it:          # xb (B, *x.shape[1:]), yb (B, *y.shape[1:]); B = batch_size or the remainder
                ...
        state = it.state_dict()        # {"epoch": ..., "batch": ..., ...}: where the next batch comes from

    `for xb, yb in it` yields the batches left in the current epoch and then moves `epoch` on by one. For step-based
    training, `next_batch()` returns one batch at a time and rolls over epochs by itself.

    Buffers: with `reuse_buffers=True` (the default) every batch is a view into the same two arrays, overwritten by the
    next batch. Use a batch before asking for the next one, or `.copy()` it; `list(it)` would give the same view over
    and over. `reuse_buffers=False` gathers each batch into a new array (still one gather, no further copy).
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        reuse_buffers: bool = True,
    ):
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim == 0 or y.ndim == 0:
            raise ValueError(
                f"BatchIterator: x and y need a leading example axis; received shapes {x.shape} and {y.shape}"
            )
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"BatchIterator: x and y must hold the same number of examples; "
                f"received x with {x.shape[0]} (shape {x.shape}) and y with {y.shape[0]} (shape {y.shape})"
            )
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"BatchIterator: batch_size must be a positive integer; received {batch_size!r}")
        self.x, self.y = x, y
        self.n = int(x.shape[0])
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.reuse_buffers = bool(reuse_buffers)
        self.epoch = 0  # the epoch the next batch comes from
        self.batch = 0  # index, within that epoch, of the next batch
        self._order_epoch: int | None = None
        self._order: np.ndarray | None = None
        if self.reuse_buffers:
            self._x_buf = np.empty((self.batch_size, *x.shape[1:]), dtype=x.dtype)
            self._y_buf = np.empty((self.batch_size, *y.shape[1:]), dtype=y.dtype)

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)  # ceil

    def order(self, epoch: int) -> np.ndarray:
        """The example indices of `epoch` in the order they are served; a function of (seed, epoch) only."""
        if self._order_epoch != epoch:
            if self.shuffle:
                # SeedSequence([seed, epoch]) mixes both numbers; nearby seeds/epochs still give unrelated streams.
                self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            else:
                self._order = np.arange(self.n)
            self._order_epoch = epoch
        return self._order

    def _gather(self, epoch: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.order(epoch)[batch * self.batch_size : (batch + 1) * self.batch_size]
        m = len(idx)
        if self.reuse_buffers:
            xb, yb = self._x_buf[:m], self._y_buf[:m]  # leading slices of C-contiguous buffers: still contiguous
        else:
            xb = np.empty((m, *self.x.shape[1:]), dtype=self.x.dtype)
            yb = np.empty((m, *self.y.shape[1:]), dtype=self.y.dtype)
        np.take(self.x, idx, axis=0, out=xb, mode="clip")
        np.take(self.y, idx, axis=0, out=yb, mode="clip")
        return xb, yb

    def _roll_over_if_done(self) -> None:
        if self.batch >= len(self) > 0:
            self.epoch += 1
            self.batch = 0

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The next batch, moving into the next epoch when the current one is used up."""
        if len(self) == 0:
            raise ValueError(
                f"BatchIterator: no batches: {self.n} examples with batch_size={self.batch_size} and drop_last=True"
            )
        self._roll_over_if_done()
        out = self._gather(self.epoch, self.batch)
        self.batch += 1  # advanced before the caller sees the batch: a state saved now resumes after it
        return out

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The batches left in the current epoch; afterwards `epoch` has moved on by one."""
        self._roll_over_if_done()  # a state saved right after an epoch's last batch starts the next epoch
        epoch = self.epoch
        while self.epoch == epoch and self.batch < len(self):
            out = self._gather(self.epoch, self.batch)
            self.batch += 1
            yield out
        if self.epoch == epoch:
            self.epoch += 1
            self.batch = 0

    def state_dict(self) -> dict:
        """Where the next batch comes from, plus the settings that must match on restore."""
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "n": self.n,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at `state["epoch"]`, `state["batch"]`; the settings saved with it must match this iterator's."""
        mine = self.state_dict()
        for key in ("seed", "shuffle", "batch_size", "drop_last", "n"):
            if key in state and state[key] != mine[key]:
                raise ValueError(
                    f"BatchIterator.load_state_dict: the state was saved with {key}={state[key]!r} but this iterator "
                    f"has {key}={mine[key]!r}; build the iterator with the same data and settings to resume"
                )
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if epoch < 0 or not 0 <= batch <= len(self):
            raise ValueError(
                f"BatchIterator.load_state_dict: expected epoch >= 0 and 0 <= batch <= {len(self)}; "
                f"received epoch={epoch}, batch={batch}"
            )
        self.epoch, self.batch = epoch, batch

    def __repr__(self) -> str:
        return (
            f"BatchIterator(n={self.n}, batch_size={self.batch_size}, shuffle={self.shuffle}, seed={self.seed}, "
            f"drop_last={self.drop_last}, epoch={self.epoch}, batch={self.batch}/{len(self)})"
        )

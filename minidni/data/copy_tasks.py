"""Copy and Repeat Copy: synthetic sequence tasks that need memory over many time steps.

Graves et al. 2014 (Neural Turing Machines), Sec. 4.1 Copy and 4.2 Repeat Copy, define the tasks; Jaderberg et al.
2016, Sec. 3.1 uses them to show that synthetic gradients let an RNN trained with short truncated BPTT still learn
dependencies longer than its truncation window (they report the longest sequence length solved, raising it by a
curriculum; the `length` and `repeats` ranges here are what a curriculum changes).

Layout, time-major, one episode per batch column b (all episodes start at t = 0; shorter ones are zero-padded):

Copy, episode of length L:
    t = 0 .. L-1      inputs[t, b, :w] = the L random binary vectors       (w = width)
    t = L             inputs[t, b, w]  = 1                                  the delimiter channel: "now copy"
    t = L+1 .. 2L     targets[t, b, :]  = the same vectors, mask[t, b] = 1 (the loss counts only these steps)
    inputs (T, B, w+1), targets (T, B, w), mask (T, B) with T = 2 * max(L) + 1.

Repeat Copy, L vectors to be written R times:
    t = 0 .. L-1                inputs[t, b, :w]  = the vectors
    t = L                       inputs[t, b, w]   = 1,  inputs[t, b, w+1] = R / repeat_scale   (the repeat count)
    t = L+1 .. L+R*L            targets[t, b, :w] = the vectors, R times over
    t = L+R*L+1                 targets[t, b, w]  = 1    the end marker: the net must say when it is done
    mask[t, b] = 1 for t = L+1 .. L+R*L+1
    inputs (T, B, w+2), targets (T, B, w+1), mask (T, B) with T = max(L + R*L + 2).
Graves et al. normalise the repeat count to zero mean and unit variance; here it is divided by `repeat_scale`
(default: the largest allowed R) so it lies in (0, 1] and means the same thing for any batch.

All randomness comes from the `np.random.Generator` passed in: the same generator state gives the same batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SequenceBatch:
    """A batch of episodes, time-major: inputs (T, B, C_in), targets (T, B, C_out), mask (T, B), all float32.

    `mask` is 1 at the steps whose outputs are scored (use it to weight a per-step loss) and 0 elsewhere.
    `lengths` (B,) is each episode's sequence length L; `repeats` (B,) the repeat count R (Repeat Copy only).
    """

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray
    repeats: np.ndarray | None = None

    @property
    def num_steps(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.inputs.shape[1])


def _as_generator(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    raise TypeError(
        f"expected rng to be a np.random.Generator (e.g. np.random.default_rng(0)) or an int seed; "
        f"received {type(rng).__name__}"
    )


def _int_range(value, name: str) -> tuple[int, int]:
    """An int n means exactly n; a pair (lo, hi) means uniform on lo..hi inclusive."""
    lo, hi = (value, value) if np.ndim(value) == 0 else tuple(value)
    if int(lo) != lo or int(hi) != hi or not 1 <= lo <= hi:
        raise ValueError(f"{name} must be an int >= 1 or a pair (lo, hi) with 1 <= lo <= hi; received {value!r}")
    return int(lo), int(hi)


def copy_task(batch_size: int, *, rng, width: int = 8, length=(1, 20)) -> SequenceBatch:
    """A batch of Copy episodes (Graves et al. 2014, Sec. 4.1); see the module docstring for the layout.

    length: L for every episode (int) or a range (lo, hi) from which each episode draws its own L.
    """
    rng = _as_generator(rng)
    lo, hi = _int_range(length, "length")
    if batch_size < 1 or width < 1:
        raise ValueError(f"copy_task: batch_size and width must be >= 1; received {batch_size}, {width}")
    lengths = rng.integers(lo, hi + 1, size=batch_size)  # (B,)
    max_len = int(lengths.max())
    bits = rng.integers(0, 2, size=(max_len, batch_size, width)).astype(np.float32)  # (maxL, B, w)

    steps = 2 * max_len + 1
    inputs = np.zeros((steps, batch_size, width + 1), dtype=np.float32)
    targets = np.zeros((steps, batch_size, width), dtype=np.float32)
    mask = np.zeros((steps, batch_size), dtype=np.float32)
    for b, L in enumerate(lengths):
        inputs[:L, b, :width] = bits[:L, b]
        inputs[L, b, width] = 1.0  # delimiter
        targets[L + 1 : 2 * L + 1, b] = bits[:L, b]
        mask[L + 1 : 2 * L + 1, b] = 1.0
    return SequenceBatch(inputs, targets, mask, lengths.astype(np.int64))


def repeat_copy_task(
    batch_size: int,
    *,
    rng,
    width: int = 8,
    length=(1, 10),
    repeats=(1, 10),
    repeat_scale: float | None = None,
) -> SequenceBatch:
    """A batch of Repeat Copy episodes (Graves et al. 2014, Sec. 4.2); see the module docstring for the layout.

    length, repeats: an int (fixed) or a range (lo, hi) drawn per episode.
    repeat_scale:    the repeat-count channel holds R / repeat_scale; default the upper end of `repeats`. Fix it when a
                     curriculum grows `repeats`, so the same R always reads the same.
    """
    rng = _as_generator(rng)
    lo, hi = _int_range(length, "length")
    r_lo, r_hi = _int_range(repeats, "repeats")
    if batch_size < 1 or width < 1:
        raise ValueError(f"repeat_copy_task: batch_size and width must be >= 1; received {batch_size}, {width}")
    scale = float(r_hi if repeat_scale is None else repeat_scale)
    if scale <= 0:
        raise ValueError(f"repeat_copy_task: repeat_scale must be > 0; received {repeat_scale!r}")
    lengths = rng.integers(lo, hi + 1, size=batch_size)  # (B,)
    reps = rng.integers(r_lo, r_hi + 1, size=batch_size)  # (B,)
    max_len = int(lengths.max())
    bits = rng.integers(0, 2, size=(max_len, batch_size, width)).astype(np.float32)  # (maxL, B, w)

    steps = int((lengths + reps * lengths + 2).max())
    inputs = np.zeros((steps, batch_size, width + 2), dtype=np.float32)
    targets = np.zeros((steps, batch_size, width + 1), dtype=np.float32)
    mask = np.zeros((steps, batch_size), dtype=np.float32)
    for b, (L, R) in enumerate(zip(lengths, reps)):
        inputs[:L, b, :width] = bits[:L, b]
        inputs[L, b, width] = 1.0  # delimiter
        inputs[L, b, width + 1] = R / scale  # repeat count
        end = L + 1 + R * L  # the step of the end marker
        targets[L + 1 : end, b, :width] = np.tile(bits[:L, b], (R, 1))  # (R*L, w)
        targets[end, b, width] = 1.0
        mask[L + 1 : end + 1, b] = 1.0
    return SequenceBatch(inputs, targets, mask, lengths.astype(np.int64), reps.astype(np.int64))

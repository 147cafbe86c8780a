"""Streams of MNIST digits for the two-timescale system: one digit per step of network A, with A's and B's counting
labels (Jaderberg et al. 2016, arXiv v1 Sec. 3.3, appendix A.4).

The paper says A "classifies the number of odd digits it has seen" and B, ticking once every T steps of A,
"the number of 3s in A's stream"; it gives neither the counting windows nor the tick phase. Our reading, chosen so
that A's task needs a memory of T steps, B's a memory of T of its own ticks, and B's task needs something A is not
asked to know (whether a digit was a 3, not just odd):

    A's label at step t (t = 1, 2, ...):          the number of odd digits among the last T digits   d_{t-T+1} .. d_t
    B ticks after A's steps T, 2T, 3T, ...:      at tick k (after step t = kT) B's label is
                                                  the number of 3s among the last T^2 digits          d_{t-T^2+1} .. d_t

A stream starts empty, so near its start a window holds the digits seen so far (fewer than T or T^2). The labels
are classes: A's lie in 0 .. T (T + 1 classes), B's in 0 .. T^2 (T^2 + 1 classes).

    streams = DigitStreams(images, digits, T=4, batch_size=32, rng=np.random.default_rng(0))
    x, a_labels, b_labels, d = streams.next(16)     # (16, B, 784), (16, B), (4, B) at the ticks, (16, B) digits

`next(n)` needs n to be a multiple of T (a window of whole ticks). The generator keeps, per stream, the last T^2 - 1
digits and the step count, so consecutive windows continue one stream; `state_dict()` / `load_state_dict()` make it
resumable exactly.
"""
from __future__ import annotations

import numpy as np


def count_last(hits, window, history=None):
    """counts[t, b] = the number of True in hits[t - window + 1 .. t, b] (fewer at the stream's start).

    hits (n, B) bool; history (h, B) bool: the steps before hits[0] (the stream so far, h < window is enough).
    A running sum: c[t] = S[t] - S[t - window] with S the cumulative sum over [history, hits]."""
    hits = np.asarray(hits, dtype=bool)
    history = np.zeros((0,) + hits.shape[1:], dtype=bool) if history is None else np.asarray(history, dtype=bool)
    full = np.concatenate([history, hits], axis=0)
    S = np.concatenate([np.zeros((1,) + full.shape[1:], np.int64), np.cumsum(full, axis=0)], axis=0)  # S[i]: full[:i]
    ends = np.arange(len(history) + 1, len(full) + 1)                 # 1 + the index of each step of hits in full
    return S[ends] - S[np.maximum(ends - window, 0)]


def odd_counts(digits, T, history=None):
    """A's labels: the number of odd digits among the last T (digits (n, B) ints; history as in count_last)."""
    h = None if history is None else np.asarray(history) % 2 == 1
    return count_last(np.asarray(digits) % 2 == 1, T, h)


def three_counts(digits, T, history=None):
    """The number of 3s among the last T^2 digits at every step; B reads it at its ticks (see DigitStreams)."""
    h = None if history is None else np.asarray(history) == 3
    return count_last(np.asarray(digits) == 3, T * T, h)


class DigitStreams:
    """batch_size parallel streams of digits drawn uniformly from (images (N, 784), digits (N,)); see the docstring."""

    def __init__(self, images, digits, T, batch_size, rng):
        if int(T) != T or T < 1:
            raise ValueError(f"DigitStreams: T is a number of steps >= 1, got {T!r}")
        if len(images) != len(digits):
            raise ValueError(f"DigitStreams: {len(images)} images but {len(digits)} digit labels; they must match")
        self.images, self.digits = images, np.asarray(digits, dtype=np.int64)
        self.T, self.batch_size, self.rng = int(T), int(batch_size), rng
        self.history = np.zeros((0, self.batch_size), np.int64)       # the last < T^2 digits of each stream
        self.steps = 0                                                 # steps of A done on these streams

    @property
    def n_classes(self):
        """(A's, B's) number of classes: T + 1 and T^2 + 1."""
        return self.T + 1, self.T * self.T + 1

    def next(self, n):
        """The next n steps (n a multiple of T): x (n, B, 784), a_labels (n, B), b_labels (n // T, B), digits (n, B)."""
        if n % self.T:
            raise ValueError(f"DigitStreams.next: n must be a multiple of T = {self.T} (whole ticks of B), got {n}")
        index = self.rng.integers(0, len(self.digits), size=(n, self.batch_size))
        d = self.digits[index]                                         # (n, B)
        a = odd_counts(d, self.T, self.history)
        threes = three_counts(d, self.T, self.history)
        b = threes[self.T - 1::self.T]                                 # B ticks after steps T, 2T, ... (0-based)
        keep = self.T * self.T - 1
        self.history = np.concatenate([self.history, d], axis=0)[-keep:] if keep else self.history[:0]
        self.steps += n
        return self.images[index], a, b, d

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state, "history": self.history.tolist(), "steps": self.steps}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.history = np.asarray(state["history"], np.int64).reshape(-1, self.batch_size)
        self.steps = int(state["steps"])

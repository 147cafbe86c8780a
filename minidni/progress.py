"""Progress bars for long jobs (a run's steps, a table's cells, a comparison's sub-runs), drawn by tqdm on stderr.

    with Progress(total=4280, desc="mnist-fcn-bprop") as bar:      # one bar; nested bars stack below it
        for step in ...:
            bar.update(step, "loss 0.31 acc 91.2%")                 # the absolute position, and a short status

Three things tqdm does not do on its own, and this wrapper adds:
- The rate (and so the ETA) is measured from the end of the first update on: the first step of a run compiles the
  Numba kernels (seconds), which would otherwise make the ETA wildly long at the start.
- When stderr is not a terminal (a log file, a pipe), a redrawn line would pile up thousands of carriage returns, so
  the bar prints one plain line at every 10% instead (tqdm's own format, without the redraws).
- `nested()`: inside this block, runs told to be quiet still show their bar (and nothing else), under the bar of the
  job that runs them: `minidni table` shows "cell i of n", then the steps of that cell.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time

from tqdm import tqdm

BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

_nested = contextvars.ContextVar("minidni_nested_progress", default=False)


@contextlib.contextmanager
def nested():
    """Within this block, quiet runs draw their progress bar (without messages) below the caller's bar."""
    token = _nested.set(True)
    try:
        yield
    finally:
        _nested.reset(token)


def show_bar(quiet):
    """Whether a job that was told `quiet` draws its bar: not quiet, or quiet but nested under another bar."""
    return not quiet or _nested.get()


def is_nested():
    return _nested.get()


def _columns(stream):
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


class Progress:
    """A tqdm bar from `initial` to `total` on `stream` (stderr); `enabled=False` makes every method a no-op.

    leave: keep the finished bar on screen (False for inner bars of a grid: they make room for the next one).
    warmup: measure the rate from the end of the first update on (for steps: the first one compiles kernels).
    """

    def __init__(self, total, initial=0, desc="", unit="step", stream=None, enabled=True, leave=True, warmup=True):
        self.enabled, self.total, self.desc, self.unit = enabled, max(int(total), 1), desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.is_tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.n = self.initial = initial
        self.status = ""
        self._warm = not warmup                 # the first update (kernel compilation) is not counted in the rate
        self._t0 = time.perf_counter()
        self._last_decile = initial * 10 // self.total
        self.bar = None
        if enabled and self.is_tty:
            # follow the terminal's width; a terminal that reports none (0 columns, e.g. under `script`) gets 100
            sized = _columns(self.stream) > 0
            self.bar = tqdm(total=self.total, initial=initial, desc=desc, unit=unit, file=self.stream, leave=leave,
                            dynamic_ncols=sized, ncols=None if sized else 100, bar_format=BAR_FORMAT)

    def update(self, n, status=None):
        """Move the bar to position `n` (absolute), with an optional short status shown after it."""
        if not self.enabled:
            return
        if status is not None:
            self.status = status
        if not self._warm:                      # the end of the first update: start the clock here
            self._warm, self.n, self.initial, self._t0 = True, n, n, time.perf_counter()
            if self.bar is not None:
                self.bar.reset(total=self.total)
                self.bar.n = self.bar.last_print_n = self.bar.initial = n
                self.bar.set_postfix_str(self.status)
            return
        self.n = n
        if self.bar is not None:
            if self.status:
                self.bar.set_postfix_str(self.status, refresh=False)
            self.bar.update(n - self.bar.n)
            return
        decile = n * 10 // self.total           # a file or a pipe: one plain line at every 10%
        if decile > self._last_decile:
            self._last_decile = decile
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self):
        """The bar as one line of text (tqdm's format), as it stands now."""
        elapsed = time.perf_counter() - self._t0
        rate = (self.n - self.initial) / elapsed if elapsed > 0 and self.n > self.initial else None
        return tqdm.format_meter(self.n, self.total, elapsed, ncols=100, prefix=self.desc, unit=self.unit,
                                 rate=rate, postfix=self.status or None, bar_format=BAR_FORMAT,
                                 initial=self.initial, ascii=True)

    def write(self, text):
        """Print a line above the bar (or just the line, when it is not a terminal)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.enabled = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

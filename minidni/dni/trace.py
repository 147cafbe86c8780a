"""Timelines: which module was busy with what, when. A schedule drawn by tick, or a run drawn by wall-clock time.

The picture behind Jaderberg et al. 2016, Sec. 1-2: with backprop a module idles until the gradient comes back down
(update locking); with DNI every module can be busy as soon as it has an input. `draw_timeline` makes that picture
for any event list (x = tick) or for a `Trace` recorded by a runner (x = seconds, one box per event from its real start
to its real end), so the overlap of a concurrent run is there to be seen, not assumed.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from .schedules import KINDS, Event

COLORS = {
    "forward": "#4C72B0",
    "forward_unlocked": "#64B5CD",
    "update_synthetic": "#55A868",
    "update_true": "#C44E52",
    "backprop": "#DD8452",
    "target": "#8172B3",
    "train_synth": "#937860",
    "train_input": "#DA8BC3",
    "forward_window": "#4C72B0",
    "backward_synthetic": "#55A868",
    "backward_truncated": "#DD8452",
    "train_aux": "#DA8BC3",
    "step_core": "#8C8C8C",
}


@dataclass(frozen=True)
class Span:
    """One executed event: its wall-clock start and end (seconds since the trace began) and the thread that ran it."""

    event: Event
    start: float
    end: float
    thread: str

    @property
    def seconds(self):
        return self.end - self.start


class Trace:
    """The record of a run: one Span per executed event, in the order they finished. Thread-safe to append to."""

    def __init__(self, origin):
        self.origin, self.spans = origin, []
        self._lock = threading.Lock()

    def add(self, event, start, end):
        span = Span(event, start - self.origin, end - self.origin, threading.current_thread().name)
        with self._lock:
            self.spans.append(span)

    def __len__(self):
        return len(self.spans)

    def busy(self):
        """{module: total seconds spent in events}."""
        out = {}
        for s in self.spans:
            out[s.event.module] = out.get(s.event.module, 0.0) + s.seconds
        return out

    def utilisation(self):
        """{module: busy seconds / wall-clock seconds of the whole trace}: 1.0 is a module that never waited."""
        if not self.spans:
            return {}
        wall = max(s.end for s in self.spans) - min(s.start for s in self.spans)
        return {m: t / wall if wall > 0 else 0.0 for m, t in self.busy().items()}

    def by_kind(self):
        """{kind: total seconds}: where the time went."""
        out = {}
        for s in self.spans:
            out[s.event.kind] = out.get(s.event.kind, 0.0) + s.seconds
        return out

    def waits(self):
        """{module: seconds it waited for its gradient}: update locking, measured.

        For each (module, batch), the time from the end of the module's forward pass to the start of the event that
        updated it with a gradient from above (`backprop` or `update_true`), summed over batches. A module that
        updates from a synthetic gradient right after its forward pass never enters this sum: under DNI only the top
        module (which needs the loss) and locked backprop show waits. Modules without such events are left out.
        """
        fwd_end, upd_start = {}, {}
        for s in self.spans:
            key = (s.event.module, s.event.batch)
            if s.event.kind in ("forward", "forward_unlocked"):
                fwd_end[key] = s.end
            elif s.event.kind in ("backprop", "update_true"):
                upd_start.setdefault(key, s.start)
        out = {}
        for (m, b), t in upd_start.items():
            if (m, b) in fwd_end:
                out[m] = out.get(m, 0.0) + max(t - fwd_end[(m, b)], 0.0)
        return out

    def overlap(self, at_least=2):
        """Seconds of wall-clock time during which `at_least` events ran at the same time.

        A sweep over the spans' starts and ends, counting how many are running. The sequential Runner gives 0.0;
        a ConcurrentRunner gives the time its worker threads really ran side by side.
        """
        if at_least < 1:
            raise ValueError(f"Trace.overlap: at_least must be >= 1, got {at_least}")
        # at equal times an end (-1) sorts before a start (+1): touching spans do not overlap
        edges = sorted([(s.start, 1) for s in self.spans] + [(s.end, -1) for s in self.spans])
        running, last, total = 0, None, 0.0
        for t, step in edges:
            if running >= at_least:
                total += t - last
            running, last = running + step, t
        return total

    def draw(self, path=None, n_modules=None, title="", ax=None):
        return draw_timeline(self, path=path, n_modules=n_modules, title=title, ax=ax)


def draw_timeline(source, path=None, n_modules=None, title="", ax=None):
    """Draw events (a list of Event: x = tick) or a Trace (x = seconds) as coloured boxes, one row per module.

    Several events of one module in one tick share the tick's width in order. Returns the matplotlib figure; saves a
    PNG when `path` is given. Drawn with matplotlib's object API (a Figure on the Agg canvas, as in
    minidni/results.py): pyplot's global backend is left alone and no display is needed; in a notebook
    `minidni.lesson.show(fig, name)` shows it inline.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if isinstance(source, Trace):
        boxes = [(s.event, s.start, s.seconds) for s in source.spans]
        xlabel = "wall-clock time (s)"
    else:
        groups = {}
        for e in source:
            groups.setdefault((e.tick, e.module), []).append(e)
        boxes = []
        for (tick, _), evs in groups.items():
            w = 1.0 / len(evs)
            boxes += [(e, tick + k * w, w) for k, e in enumerate(evs)]
        xlabel = "tick"
    if n_modules is None:
        n_modules = 1 + max((b[0].module for b in boxes), default=0)
    if ax is None:
        fig = Figure(figsize=(min(3 + 0.35 * len(boxes) / max(n_modules, 1), 16), 1 + 0.6 * n_modules))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
    else:
        fig = ax.figure
    edge = 0.0 if isinstance(source, Trace) else 0.5  # real events can be very short: no white edge to hide them
    for e, x, w in boxes:
        ax.broken_barh([(x, w)], (e.module - 0.4, 0.8), facecolors=COLORS[e.kind], edgecolors="white", linewidth=edge)
        if not isinstance(source, Trace) and w >= 0.3:
            ax.text(x + w / 2, e.module, str(e.batch), ha="center", va="center", fontsize=7, color="white")
    ax.set_yticks(range(n_modules))
    ax.set_yticklabels([f"module {m}" for m in range(n_modules)])
    ax.set_ylim(-0.6, n_modules - 0.4)
    ax.set_xlabel(xlabel)
    kinds = [k for k in KINDS if any(b[0].kind == k for b in boxes)]
    ax.legend(handles=[Patch(color=COLORS[k], label=k) for k in kinds], loc="upper left", bbox_to_anchor=(1.0, 1.0),
              fontsize=7, frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig

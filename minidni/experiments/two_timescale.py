"""Two networks at two timescales: a fast network A reads one MNIST digit per step, a slow network B ticks once every
T steps of A and reads A's message; trained end to end, with a synthetic gradient on A's message (DNI), or with no
gradient from B to A (Jaderberg et al. 2016, arXiv v1 Sec. 3.3, appendix A.4).

    two-timescale-bptt     end to end: A and B update once per T^2 steps of A, B's gradient flows back into A
    two-timescale-dni      A updates every T steps with g_hat = 10 * M(m) on its message m; M learns from B's gradient
    two-timescale-nograd   A updates every T steps on its own loss; B's gradient never reaches A

    minidni run two-timescale-dni --set T=4 --steps 2000 --out runs/tt-dni

The task (minidni/data/digit_streams.py): A classifies the number of odd digits among its last T digits, B the number
of 3s among the last T^2 digits, at each of its ticks. B's label needs to know which digits were 3s, which A's own task
does not: only B's gradient teaches A's message to carry it.

The networks (the paper's shapes, widths set by the config):
    A   digit x (784) -> [Linear -> batch norm -> ReLU] x 2 (fcn) -> LSTM cell (hidden) -> readout (T + 1 classes)
        message m = batch_norm(h W_m) (message units), made at the step where B ticks
    B   LSTM cell (hidden_b) over A's messages, one step per tick -> readout (T^2 + 1 classes)
    M   m -> Linear -> ReLU (synth_hidden) -> Linear (zero-initialised); g_hat = synth_scale * M(m) (the paper: 10)
        where A uses it; M(m) regresses on dL_B/dm (scale_target, as in dni/boundary.py) or g_hat does
The paper's A is a "batch-normalised LSTM"; here the batch norm is on the LSTM's input (the FCN's layers), not on its
recurrent path (a simplification, stated in docs/results-rnn.md).

Losses: each step's cross-entropy is a mean over the batch; a window's loss sums its steps. B runs truncated BPTT over
its last T ticks (T^2 steps of A) and updates at the window's end; each message reaches B as a fresh leaf, so
dL_B/dm_k is that leaf's gradient. End to end, A's backward adds <dL_B/dm_k, m_k> for each tick: the exact chain rule,
T^2 steps after the first of those digits was read. With DNI, A backprops its T steps + <g_hat(m_k), m_k> at once;
M then regresses on dL_B/dm_k (||M(m_k) - g||^2, or ||g_hat - g||^2) when B's update produces it. M works in
per-example units (g = dloss_b/dm_k of each stream's own loss, i.e. batch size x the gradient of the batch mean) so
its targets do not shrink with the batch; A divides g_hat by the batch size, as the mean does.

Who updates when is a schedule (`TwoTimescale`), in the event vocabulary of dni/schedules.py: module 0 is A, 1 is B,
2 is M; one tick is one step of A. The learner runs its events one at a time, so the timeline drawn (timeline.png)
is what ran. A run writes metrics.jsonl (train records every log_every windows, test records every eval_every),
curves.png (accuracy of A and B against steps of A and against wall time), timeline.png / timeline.txt,
summary.json, config.toml and checkpoint.npz (--resume continues exactly).
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import kernels, nn, ops
from ..autograd import no_grad
from ..config import ConfigError, TrainConfig, param, to_toml
from ..data.digit_streams import DigitStreams
from ..data.mnist import load_mnist
from ..device import count_correct, get_device, move
from ..dni.boundary import synthesizer_loss
from ..dni.schedules import Event, check, format_grid, sort_events
from ..dni.synthesizer import Synthesizer
from ..optim import Adam
from ..tensor import Tensor
from ..train import CHECKPOINT, CONFIG, METRICS, SUMMARY, read_checkpoint, versions, write_checkpoint
from . import register

METHODS = ("bptt", "dni", "nograd")
CURVES_PNG, TIMELINE_PNG, TIMELINE_TXT = "curves.png", "timeline.png", "timeline.txt"
ROWS = ("A", "B", "M")                       # module 0, 1, 2 of the schedule


# ---- the schedule ----------------------------------------------------------------------------------------------------
class TwoTimescale:
    """Who updates when, as events. Window w is T ticks of B = T^2 steps of A (steps t = w T^2 .. (w + 1) T^2 - 1);
    one tick of the timeline is one step of A. Keys:

        ("hA", t) A's state after t steps      ("graphA", t) step t's loss      ("msg", k) A's message at B's tick k
        ("hB", k) B's state after k ticks      ("graphB", k) B's tick k          ("dmsg", k) dL_B/dm_k

    Events of window w (base = its first tick):
        forward A (F)  each step, at tick base + j; at j = iT + T - 1 it also writes the message of tick k = wT + i
        forward B (F)  tick k, at base + (i + 1) T: the tick after A made the message (A goes on meanwhile)
        update B (L)   at base + T^2, after its last forward: backprop B's T ticks, step, write dmsg (not in nograd)
        bptt    A backprop (B) at base + T^2 + 1: its T^2 steps + <dmsg_k, m_k>; A waits 2 ticks per window
        dni     A update_synthetic (U) at the end of each T steps: the T steps + <g_hat(m_k), m_k>;
                M train_synth (S) at base + T^2 + 1 on (m_k, dmsg_k) of the window
        nograd  A backward_truncated (X) at the end of each T steps: its own T steps only
    """

    def __init__(self, T, method):
        if int(T) != T or T < 2:
            raise ValueError(f"two-timescale: T is a number of steps >= 2 (B ticks every T steps of A), got {T!r}")
        if method not in METHODS:
            raise ValueError(f"two-timescale: method must be one of {METHODS}, got {method!r}")
        self.T, self.method = int(T), method

    @property
    def steps_per_window(self):
        return self.T * self.T

    @property
    def span(self):
        """Ticks per window: T^2 steps of A, plus the two ticks A waits for B's gradient end to end."""
        return self.steps_per_window + (2 if self.method == "bptt" else 0)

    @property
    def segment(self):
        """Steps of A per update of A (its truncation): T^2 end to end, else T."""
        return self.steps_per_window if self.method == "bptt" else self.T

    def window_events(self, w):
        T, n, base = self.T, self.steps_per_window, w * self.span
        t0, k0 = w * n, w * T
        events = []
        for j in range(n):
            t, k = t0 + j, k0 + j // T
            msg = (("msg", k),) if j % T == T - 1 else ()
            events.append(Event("forward", 0, k, base + j, (("batch", w), ("hA", t)),
                                (("hA", t + 1), ("graphA", t)) + msg))
            if msg and self.method != "bptt":
                kind = "update_synthetic" if self.method == "dni" else "backward_truncated"
                steps = tuple(("graphA", s) for s in range(t + 1 - T, t + 1))
                events.append(Event(kind, 0, k, base + j, steps + msg, ()))
        ticks = range(k0, k0 + T)
        for i, k in enumerate(ticks):
            events.append(Event("forward", 1, k, base + (i + 1) * T, (("batch", w), ("msg", k), ("hB", k)),
                                (("hB", k + 1), ("graphB", k))))
        grads = tuple(("dmsg", k) for k in ticks) if self.method != "nograd" else ()
        events.append(Event("update_true", 1, k0 + T - 1, base + n, tuple(("graphB", k) for k in ticks), grads))
        msgs = tuple(("msg", k) for k in ticks)
        if self.method == "bptt":
            events.append(Event("backprop", 0, k0 + T - 1, base + n + 1,
                                tuple(("graphA", s) for s in range(t0, t0 + n)) + msgs + grads, ()))
        elif self.method == "dni":
            events.append(Event("train_synth", 2, k0 + T - 1, base + n + 1, msgs + grads, ()))
        return sort_events(events)

    def events(self, n_windows):
        """Every event of n_windows in the sequential order. In dni, M's training of window w falls in window w+1's
        second tick; the learner runs it at window w's end instead, which gives the same numbers: M's next reader
        is A's update T - 1 ticks into window w+1, and within a tick the higher module (M) goes first."""
        return sort_events([e for w in range(n_windows) for e in self.window_events(w)])

    def check(self, n_windows):
        """schedules.check on n_windows (the initial states count as data)."""
        start = Event("forward_window", 0, -1, -1, (), (("hA", 0), ("hB", 0)))
        return check([start] + self.events(n_windows)) - 1

    @property
    def n_modules(self):
        return 3 if self.method == "dni" else 2

    def grid(self, n_windows):
        text = format_grid(self.events(n_windows), self.n_modules, title=f"{self!r}: one tick = one step of A")
        for m, name in enumerate(ROWS):
            text = text.replace(f"module {m}", f"{name}       ")
        return text + "\n(the number is B's tick k: A's steps kT .. kT + T - 1 make the message m_k)"

    def draw(self, n_windows, path=None, ax=None):
        from ..dni.trace import draw_timeline

        fig = draw_timeline(self.events(n_windows), n_modules=self.n_modules, ax=ax,
                            title=f"{self!r}: a tick is a step of A, the number B's tick")
        fig.axes[0].set_yticklabels([f"{ROWS[m]} (module {m})" for m in range(self.n_modules)])
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
        return fig

    def __repr__(self):
        return f"two_timescale(T={self.T}, method={self.method!r})"


# ---- the networks and the learner ------------------------------------------------------------------------------------
class NetworkA(nn.Module):
    """digit -> [Linear -> BN -> ReLU] x 2 -> LSTM cell -> readout (T + 1 classes); message = BN(h W_m)."""

    def __init__(self, fcn, hidden, message, n_classes, rng):
        super().__init__()
        self.fcn = nn.Sequential(nn.Linear(784, fcn, bias=False, rng=rng), nn.BatchNorm1d(fcn), nn.ReLU(),
                                 nn.Linear(fcn, fcn, bias=False, rng=rng), nn.BatchNorm1d(fcn), nn.ReLU())
        self.cell = nn.LSTMCell(fcn, hidden, rng=rng)
        self.readout = nn.Linear(hidden, n_classes, rng=rng)
        self.message = nn.Sequential(nn.Linear(hidden, message, bias=False, rng=rng), nn.BatchNorm1d(message))


class NetworkB(nn.Module):
    """A's message -> LSTM cell, one step per tick -> readout (T^2 + 1 classes)."""

    def __init__(self, message, hidden, n_classes, rng):
        super().__init__()
        self.cell = nn.LSTMCell(message, hidden, rng=rng)
        self.readout = nn.Linear(hidden, n_classes, rng=rng)


def _count(logits, labels):
    return count_correct(logits.data, labels)          # on a device only the count comes back


class TwoTimescaleLearner:
    """A, B (and M for DNI) with their optimizers; `train_window` runs one window's events (see TwoTimescale)."""

    def __init__(self, config, method):
        r = np.random.default_rng(config.seed)
        T = config.T
        self.schedule = TwoTimescale(T, method)
        self.method = method
        self.A = NetworkA(config.fcn, config.hidden, config.message, T + 1, r)
        self.B = NetworkB(config.message, config.hidden_b, T * T + 1, r)
        self.opt_A, self.opt_B = Adam(self.A.parameters(), lr=config.lr), Adam(self.B.parameters(), lr=config.lr)
        self.M = self.opt_M = None
        if method == "dni":
            width = config.synth_hidden if config.synth_hidden > 0 else config.message
            self.M = Synthesizer(config.message, hidden=(width,), batch_norm=False, rng=r)     # M(m), unscaled
            self.synth_scale, self.scale_target = config.synth_scale, config.scale_target
            self.opt_M = Adam(self.M.parameters(), lr=config.synth_lr)
        self.windows = 0                                  # windows trained
        self.state = {"A": self._zeros(config.batch_size, config.hidden),
                      "B": self._zeros(config.batch_size, config.hidden_b)}
        self.last = {}                                    # what the last window did: synthetic and true gradients

    # ---- where it runs ----------------------------------------------------------------------------------------------
    @property
    def device(self):
        """The device of A's parameters (minidni.device): where every step computes."""
        return self.A.cell.W_x.device

    def to(self, device):
        """Move A, B, M, their optimizers' state and the carried states to `device`; returns self."""
        dev = get_device(device)
        for m in self.modules().values():
            m.to(dev)
        for opt in (self.opt_A, self.opt_B, self.opt_M):
            if opt is not None:
                opt.to(dev)
        self.state = {net: tuple(move(s, dev) for s in pair) for net, pair in self.state.items()}
        return self

    def _zeros(self, batch, width):
        return (self.device.zeros((batch, width), np.float32),) * 2

    # ---- running a window -------------------------------------------------------------------------------------------
    def train_window(self, x, a_labels, b_labels):
        """One window of T^2 steps of A: x (T^2, B, 784), a_labels (T^2, B), b_labels (T, B). Returns its stats."""
        for _ in self.steps(x, a_labels, b_labels):
            pass
        return self._stats

    @no_grad()
    def evaluate(self, streams, n_windows):
        """Accuracy of A and B on n_windows of fresh `streams`, batch norm in eval mode, only the forward events."""
        self.A.eval(), self.B.eval()
        B = streams.batch_size
        state = {"A": self._zeros(B, self.A.cell.hidden_size), "B": self._zeros(B, self.B.cell.hidden_size)}
        total = {"correct_a": 0, "n_a": 0, "correct_b": 0, "n_b": 0, "loss_a": 0.0, "loss_b": 0.0}
        for w in range(n_windows):
            events = [e for e in self.schedule.window_events(w) if e.kind == "forward"]
            stats = self._run(events, w, streams.next(self.schedule.steps_per_window)[:3], state)
            for key in total:
                total[key] += stats[key]
        self.A.train(), self.B.train()
        return total

    def _run(self, events, w, data, state):
        for _ in self._steps(events, w, data, state):
            pass
        return self._stats

    def steps(self, x, a_labels, b_labels):
        """train_window one event at a time: yields (event, store) after each, for tests and lessons to look inside.
        The store is the window's own: what it holds is dropped with it at the window's end."""
        self.A.train(), self.B.train()
        yield from self._steps(self.schedule.window_events(self.windows), self.windows, (x, a_labels, b_labels),
                               self.state)
        self.windows += 1

    def _steps(self, events, w, data, state):
        x, a_labels, b_labels = data
        x = self.device.from_host(np.asarray(x))        # the window's digits go to the device once; labels stay here
        self._data, self._w, self._state = (x, a_labels, b_labels), w, state
        self._stats = {"correct_a": 0, "n_a": 0, "correct_b": 0, "n_b": 0, "loss_a": 0.0, "loss_b": 0.0,
                       "synth_loss": None, "synth_rel": None}
        store = {("hA", w * self.schedule.steps_per_window): tuple(Tensor(s) for s in state["A"]),
                 ("hB", w * self.schedule.T): tuple(Tensor(s) for s in state["B"])}
        for e in events:
            self.do(e, store)
            yield e, store

    def do(self, event, store):
        """Execute one event on `store` (the key-value store of the schedule's keys)."""
        name = {("forward", 0): self._forward_A, ("forward", 1): self._forward_B, ("update_true", 1): self._update_B,
                ("update_synthetic", 0): self._update_A, ("backward_truncated", 0): self._update_A,
                ("backprop", 0): self._update_A, ("train_synth", 2): self._train_M}[(event.kind, event.module)]
        name(event, store)

    def _forward_A(self, e, store):
        x, a_labels, _ = self._data
        (_, t), = [k for k in e.reads if k[0] == "hA"]
        j = t - self._w * self.schedule.steps_per_window
        h, c = store.pop(("hA", t))
        if t % self.schedule.segment == 0:                        # A's truncation: its state arrives detached
            h, c = Tensor(h.data), Tensor(c.data)
        h, c = self.A.cell(self.A.fcn(Tensor(x[j])), (h, c))
        logits = self.A.readout(h)
        loss = ops.cross_entropy(logits, a_labels[j])
        store[("hA", t + 1)], store[("graphA", t)] = (h, c), loss
        for key in e.writes:
            if key[0] == "msg":
                store[key] = self.A.message(h)                     # (B, message)
        self._stats["loss_a"] += loss.item()
        self._stats["correct_a"] += _count(logits, a_labels[j])
        self._stats["n_a"] += len(a_labels[j])
        if j == self.schedule.steps_per_window - 1:
            self._state["A"] = (h.data, c.data)

    def _forward_B(self, e, store):
        _, _, b_labels = self._data
        k = next(key[1] for key in e.reads if key[0] == "msg")
        i = k - self._w * self.schedule.T
        leaf = Tensor(store[("msg", k)].data, requires_grad=True)   # B's input: dL_B/dm_k collects here
        h, c = store.pop(("hB", k))
        if i == 0:                                                   # B's truncation: T ticks
            h, c = Tensor(h.data), Tensor(c.data)
        h, c = self.B.cell(leaf, (h, c))
        logits = self.B.readout(h)
        loss = ops.cross_entropy(logits, b_labels[i])
        store[("hB", k + 1)], store[("graphB", k)] = (h, c), (leaf, loss)
        self._stats["loss_b"] += loss.item()
        self._stats["correct_b"] += _count(logits, b_labels[i])
        self._stats["n_b"] += len(b_labels[i])
        if i == self.schedule.T - 1:
            self._state["B"] = (h.data, c.data)

    def _update_B(self, e, store):
        graphs = [store.pop(key) for key in e.reads]
        self.opt_B.zero_grad()
        ops.sum(ops.concat([ops.reshape(loss, (1,)) for _, loss in graphs], axis=0)).backward()
        self.opt_B.step()
        self.last["true"] = {}
        for (leaf, _), key in zip(graphs, e.writes):
            store[key] = leaf.grad                                   # ("dmsg", k): (B, message)
            self.last["true"][key[1]] = leaf.grad

    def _update_A(self, e, store):
        """A's backward and step: its steps' losses, plus B's gradient (bptt), M's (dni) or nothing (nograd)."""
        losses = [store.pop(key) for key in e.reads if key[0] == "graphA"]
        total = ops.sum(ops.concat([ops.reshape(loss, (1,)) for loss in losses], axis=0))
        msgs = [key for key in e.reads if key[0] == "msg"]
        if e.kind == "update_synthetic":
            (_, k), = msgs
            m = store[("msg", k)]
            dev = self.device
            with no_grad():                                          # per example / B
                g_hat = dev.binary("div", dev.binary("mul", self.M(Tensor(m.data)).data, self.synth_scale), m.shape[0])
            self.last.setdefault("synthetic", {})[k] = g_hat
            total = total + ops.sum(m * Tensor(g_hat))
        elif e.kind == "backprop":
            for _, k in msgs:
                total = total + ops.sum(store[("msg", k)] * Tensor(store[("dmsg", k)]))
        self.opt_A.zero_grad()
        total.backward()
        self.opt_A.step()

    def _train_M(self, e, store):
        msgs = [store.pop(key).data for key in e.reads if key[0] == "msg"]
        grads = [store.pop(key) for key in e.reads if key[0] == "dmsg"]
        dev = self.device
        target = dev.binary("mul", dev.concatenate(grads, 0), grads[0].shape[0])  # (T B, message): B dL_B/dm_k
        pred = self.M(Tensor(dev.concatenate(msgs, 0)))              # M(m), raw
        loss = synthesizer_loss(pred, target, self.synth_scale, self.scale_target, reduction="sum")
        self.opt_M.zero_grad()
        loss.backward()
        self.opt_M.step()
        # the loss relative to ||g||^2: 1 is a synthesizer that says 0, below 1 it explains part of B's gradient
        self._stats["synth_loss"] = loss.item()
        g2 = float(dev.to_host(dev.reduce("sum", dev.unary("square", target))))
        self._stats["synth_rel"] = loss.item() / max(g2, 1e-30)

    # ---- state ------------------------------------------------------------------------------------------------------
    def modules(self):
        return {"A": self.A, "B": self.B, **({"M": self.M} if self.M is not None else {})}

    def parameters(self):
        return [p for m in self.modules().values() for p in m.parameters()]

    def state_dict(self):
        state = {f"{name}/{k}": v for name, m in self.modules().items() for k, v in m.state_dict().items()}
        for name, opt in (("A", self.opt_A), ("B", self.opt_B), ("M", self.opt_M)):
            if opt is not None:
                state.update({f"optim_{name}/{k}": v for k, v in opt.state_dict().items()})
        for net in ("A", "B"):
            state[f"state_{net}/h"], state[f"state_{net}/c"] = (self.device.host_copy(s) for s in self.state[net])
        return state

    def load_state_dict(self, state):
        part = lambda prefix: {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}  # noqa: E731
        for name, m in self.modules().items():
            m.load_state_dict(part(name + "/"))
        for name, opt in (("A", self.opt_A), ("B", self.opt_B), ("M", self.opt_M)):
            if opt is not None:
                opt.load_state_dict(part(f"optim_{name}/"))
        dev = self.device
        for net in ("A", "B"):
            self.state[net] = tuple(dev.from_host(np.array(state[f"state_{net}/{s}"])) for s in ("h", "c"))


# ---- the config ------------------------------------------------------------------------------------------------------
@dataclass
class TwoTimescaleConfig(TrainConfig):
    """The two-timescale system (Sec. 3.3, A.4). The budget of docs/results-rnn.md is the default."""

    T: int = param(4, "B ticks once every T steps of A; A counts odd digits in its last T, B 3s in the last T^2",
                   ge=2)
    fcn: int = param(64, "units of A's two Linear -> BN -> ReLU layers (the paper: 256)", ge=1)
    hidden: int = param(64, "units of A's LSTM (the paper: 256)", ge=1)
    message: int = param(64, "units of A's message to B (Linear -> BN)", ge=1)
    hidden_b: int = param(64, "units of B's LSTM (the paper: 256)", ge=1)
    synth_hidden: int = param(0, "units of the synthesizer's hidden ReLU layer (0: as wide as the message; the "
                                 "paper: 256)", ge=0)
    synth_scale: float = param(10.0, "A uses synth_scale * M(m) as B's gradient (the paper: 10)", gt=0.0)
    scale_target: bool = param(True, "true: M(m) regresses on dL_B/dm, so A gets synth_scale times B's gradient "
                                     "(the factor where it is used, as the 0.1 of the Copy runs); false: "
                                     "synth_scale * M(m) regresses on it (the factor only speeds M up)")
    synth_lr: float = param(1e-5, "learning rate of Adam for the synthesizer (the paper: 1e-5)", gt=0.0)
    steps: int = param(3000, "windows to train: each is T^2 steps of A and one update of B", ge=0)
    batch_size: int = param(32, "streams trained in parallel", ge=2)
    lr: float = param(1e-3, "learning rate of Adam for A and B", gt=0.0)
    eval_every: int = param(100, "evaluate on streams of MNIST test digits every this many windows", ge=1)
    eval_streams: int = param(256, "streams in an evaluation", ge=2)
    eval_windows: int = param(4, "windows (T^2 steps each) per evaluation stream", ge=1)
    log_every: int = param(20, "write a training record every this many windows", ge=1)
    checkpoint_every: int = param(500, "save checkpoint.npz every this many windows (0: only at the end)", ge=0)
    epochs: int = param(0, "unused: the streams are generated, a run is `steps` windows long", ge=0)


# ---- plots -----------------------------------------------------------------------------------------------------------
def plot_runs(runs, path, title=""):
    """runs: {label: metrics records}. Accuracy of A and B (test records) against steps of A and wall time; train
    records dotted. A 2 x 2 figure saved as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 7), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    for n, (label, records) in enumerate(runs.items()):
        color = f"C{n}"
        for split, style in (("test", "-"), ("train", ":")):
            rows = [r for r in records if r["split"] == split]
            if not rows:
                continue
            for col, x in enumerate(("steps_a", "wall_time_s")):
                for row, net in enumerate(("a", "b")):
                    axes[row, col].plot([r[x] for r in rows], [100 * r[f"acc_{net}"] for r in rows], style,
                                        color=color, label=f"{label} ({split})")
    for row, net in enumerate(("A", "B")):
        for col, xlabel in enumerate(("steps of A (digits per stream)", "wall-clock time (s)")):
            ax = axes[row, col]
            ax.set(xlabel=xlabel, ylabel=f"accuracy of {net} (%)")
            ax.grid(True, alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return Path(path)


def steps_to_reach(records, key, level, split="test"):
    """The first test record (steps of A, wall seconds) at which `key` >= level; (None, None) if never."""
    hit = next((r for r in records if r["split"] == split and r[key] >= level), None)
    return (hit["steps_a"], hit["wall_time_s"]) if hit else (None, None)


def final(records, key, last=3):
    """The mean of `key` over the last `last` test records: a run's final performance, less noisy than one eval."""
    tests = [r[key] for r in records if r["split"] == "test"][-last:]
    return float(np.mean(tests)) if tests else None


def compare(run_dirs, plot=None, levels_a=(0.86, 0.88, 0.90), levels_b=(0.5, 0.6, 0.7)):
    """A markdown table of finished runs (folders) for the paper's three claims: final test accuracy of A and B (the
    mean of the last three evaluations), and the steps of A at which each first reached the given accuracies (on
    the test streams). Draws the runs together (plot_runs) when `plot` is a path."""
    runs = {}
    for d in run_dirs:
        summary = json.loads((Path(d) / SUMMARY).read_text())
        with open(Path(d) / METRICS) as fh:
            runs[summary["method"]] = ([json.loads(line) for line in fh if line.strip()], summary["wall_time_s"])
    header = (["method", "A final", "B final"] + [f"A at {100 * v:g}%" for v in levels_a]
              + [f"B at {100 * v:g}%" for v in levels_b] + ["wall time"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, (records, wall) in runs.items():
        cells = [method, f"{100 * final(records, 'acc_a'):.1f}%", f"{100 * final(records, 'acc_b'):.1f}%"]
        for key, levels in (("acc_a", levels_a), ("acc_b", levels_b)):
            for level in levels:
                steps, secs = steps_to_reach(records, key, level)
                cells.append("never" if steps is None else f"{steps:,} ({secs:.0f} s)")
        lines.append("| " + " | ".join(cells + [f"{wall:.0f} s"]) + " |")
    if plot is not None:
        plot_runs({m: r for m, (r, _) in runs.items()}, plot, title="two-timescale system: accuracy of A and B")
    return "\n".join(lines)


# ---- the run ---------------------------------------------------------------------------------------------------------
def run_two_timescale(config, out_dir, method, name, *, resume=False, quiet=False, hooks=()):
    """Train `method` for config.steps windows; returns the summary dict. Each hook is called as
    hook(window, stats, learner) after every window."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mnist = load_mnist(validation=0)
    learner = TwoTimescaleLearner(config, method).to(config.device)   # checkpoints load into it there
    streams = DigitStreams(mnist.train.x, mnist.train.y, config.T, config.batch_size,
                           np.random.default_rng([config.seed, 1]))
    step, records, wall = 0, [], 0.0
    window = {"loss_a": 0.0, "loss_b": 0.0, "correct_a": 0, "n_a": 0, "correct_b": 0, "n_b": 0, "n": 0}
    if resume:
        meta, state = read_checkpoint(out_dir / CHECKPOINT)
        if meta.get("experiment") != name:
            raise ConfigError(f"resume: {out_dir / CHECKPOINT} is a checkpoint of {meta.get('experiment')!r}, "
                              f"not {name!r}")
        learner.load_state_dict(state)
        learner.windows = meta["step"]
        streams.load_state_dict(meta["streams"])
        step, records, wall, window = meta["step"], meta["records"], meta["wall_time_s"], meta["window"]
    else:
        for f in (METRICS, SUMMARY, CHECKPOINT, CURVES_PNG, TIMELINE_PNG, TIMELINE_TXT):
            (out_dir / f).unlink(missing_ok=True)
    (out_dir / CONFIG).write_text(to_toml(config, header=f"{name}: the settings of this run.\n"
                                                         f"Rerun with: minidni run {name} --config FILE"))
    with open(out_dir / METRICS, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    schedule = learner.schedule
    if not (resume and (out_dir / TIMELINE_PNG).is_file()):
        (out_dir / TIMELINE_TXT).write_text(schedule.grid(2) + "\n")
        schedule.draw(2, path=out_dir / TIMELINE_PNG)
    per_window = schedule.steps_per_window
    t_start = time.perf_counter()

    def now():
        return round(wall + time.perf_counter() - t_start, 2)

    def log(rec):
        records.append(rec)
        with open(out_dir / METRICS, "a") as fh:
            fh.write(json.dumps(rec) + "\n")

    def evaluate():
        test = DigitStreams(mnist.test.x, mnist.test.y, config.T, config.eval_streams,
                            np.random.default_rng([config.seed, 2]))            # the same test streams every time
        s = learner.evaluate(test, config.eval_windows)
        rec = {"step": step, "steps_a": step * per_window, "epoch": 0, "split": "test",
               "acc_a": s["correct_a"] / s["n_a"], "acc_b": s["correct_b"] / s["n_b"],
               "loss_a": s["loss_a"] / (config.eval_windows * per_window),
               "loss_b": s["loss_b"] / (config.eval_windows * config.T), "wall_time_s": now()}
        log(rec)
        if not quiet:
            print(f"window {step}/{config.steps}  test: A {100 * rec['acc_a']:.1f}%  B {100 * rec['acc_b']:.1f}%",
                  flush=True)

    def save():
        write_checkpoint(out_dir / CHECKPOINT, learner.state_dict(),
                         {"experiment": name, "step": step, "records": records, "streams": streams.state_dict(),
                          "window": window, "wall_time_s": now()})

    with kernels.use_backend(config.backend):
        try:
            if step == 0:
                evaluate()
            while step < config.steps:
                x, a, b, _ = streams.next(per_window)
                stats = learner.train_window(x, a, b)
                if not (np.isfinite(stats["loss_a"]) and np.isfinite(stats["loss_b"])):
                    raise FloatingPointError(f"{name}: a loss is not finite at window {step + 1}: {stats}")
                step += 1
                for key in ("loss_a", "loss_b", "correct_a", "n_a", "correct_b", "n_b"):
                    window[key] += stats[key]
                window["n"] += 1
                if step % config.log_every == 0 or step == config.steps:
                    log({"step": step, "steps_a": step * per_window, "epoch": 0, "split": "train",
                         "acc_a": window["correct_a"] / window["n_a"], "acc_b": window["correct_b"] / window["n_b"],
                         "loss_a": window["loss_a"] / (window["n"] * per_window),
                         "loss_b": window["loss_b"] / (window["n"] * config.T), "synth_loss": stats["synth_loss"],
                         "synth_rel": stats["synth_rel"], "wall_time_s": now()})
                    window = {k: 0 for k in window}
                if step % config.eval_every == 0 or step == config.steps:
                    evaluate()
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    save()
                for hook in hooks:
                    hook(step, stats, learner)
        except KeyboardInterrupt:
            save()
            raise
        save()
    plot_runs({method: records}, out_dir / CURVES_PNG, title=f"{name}, T = {config.T}")
    tests = [r for r in records if r["split"] == "test"]
    summary = {"experiment": name, "status": "finished", "method": method, "T": config.T, "steps": step,
               "steps_a": step * per_window, "epochs": 0, "val_error": None, "test_error": None,
               "test_acc_a": tests[-1]["acc_a"] if tests else None, "test_acc_b": tests[-1]["acc_b"] if tests else None,
               "wall_time_s": now(), "num_parameters": int(sum(p.size for p in learner.parameters())),
               "backend": kernels.get_backend(), "versions": versions(), "platform": platform.platform(),
               "cpu_count": os.cpu_count(), "config": config.to_dict(),
               "files": {"metrics": METRICS, "plot": CURVES_PNG, "timeline": TIMELINE_PNG, "checkpoint": CHECKPOINT}}
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ---- the three experiments -------------------------------------------------------------------------------------------
_WHAT = {"bptt": "end to end (A and B update once per T^2 steps of A, B's gradient flows into A)",
         "dni": "DNI (A updates every T steps with a synthetic gradient on its message)",
         "nograd": "no gradient from B to A (A updates every T steps on its own loss)"}


def _make(method):
    name = f"two-timescale-{method}"

    @register(name, f"two networks at two timescales on MNIST digit streams, {_WHAT[method]} (Sec. 3.3)",
              TwoTimescaleConfig)
    def run(config, out_dir, *, resume=False, quiet=False, hooks=()):
        return run_two_timescale(config, out_dir, method, name, resume=resume, quiet=quiet, hooks=hooks)

    return run


for _method in METHODS:
    _make(_method)


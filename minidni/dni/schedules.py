"""Update schedules as data: who computes what, on which batch, in which time slot (Jaderberg et al. 2016, Sec. 1-2;
feed-forward experiments Sec. 3.3).

A schedule turns (number of batches, number of modules) into a list of `Event`s. Nothing runs here: you can print
the list, step through it, draw it as a timeline (`draw`), check its data flow (`check`), and hand it to a runner
(runner.py), which executes it one event at a time or, tick by tick, one worker thread per module.

Every event belongs to one module (its *worker*, which owns the module, the synthesizer M_i on its output, and their
optimizers) and one *tick* (a time slot). The rule that makes concurrency safe and exact: within a tick, no worker
reads an activation or target that another worker writes in that tick -- data moves between workers only from one
tick to a later one. `check(events)` verifies it; each event lists the keys it reads and writes:

    ("batch", b)       the data (x, y) of batch b            (handed in by the runner, read by anyone)
    ("graph", i, b)    module i's input leaf and output tensor: the local graph its update backprops through
    ("h", i, b)        the output h_i of module i on batch b  (input of module i+1, input of synthesizer M_i)
    ("dh", i, b)       the gradient module i+1 sent down to h_i when it updated: the bootstrapped target for M_i
                       (or, in locked backprop, the true gradient)
    ("true_dh", i, b)  the true gradient dL/dh_i, computed only when target="true"

The schedules:

    locked          plain backprop, the reference: forward every module, loss, backprop down, each module steps as
                    its gradient arrives (the "update locking" of Sec. 1)
    dni             every module updates with its synthetic gradient right after its own forward pass (Sec. 2);
                    M_i trains as soon as its target exists. One batch at a time.
    stochastic(p)   as dni, but after each forward pass a module updates only with probability p (the paper's
                    asynchronous, sporadic-update experiment, Sec. 3.3); seeded per batch: reproducible coin flips
    delayed(k)      as dni, but M_i trains on (h, y, target) of batch t-k: its target arrives k steps late
    pipelined       module i works on batch t while module i+1 works on batch t-1 (at tick T module i processes batch
                    T-i): every module busy at once, which DNI allows and backprop does not
    unlocked        (unlock.py) forward AND update unlocked: module i+1 runs on a synthetic input I(x) (Sec. 2.3, 3.4)

Within a tick the sequential order is: higher modules first, then the order the events were generated in. Any
order gives the same numbers when the data-flow rule holds; top-down also makes an Oracle synthesizer exact in a
two-module pipeline (see tests/test_dni_schedules.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# kind -> (letter for the grid, what it does)
KINDS = {
    "forward": ("F", "forward: h_i = f_i(h_{i-1}); the top module also computes the loss"),
    "forward_unlocked": ("f", "forward on a synthetic input: h_i = f_i(I_i(x)), not waiting for module i-1"),
    "update_synthetic": ("U", "update module i with its synthetic gradient g_hat_i = M_i(h_i [, y])"),
    "update_true": ("L", "top module: backprop the loss, step; sends dL/dh down"),
    "backprop": ("B", "locked: backprop the gradient from above through module i, step"),
    "target": ("T", "true gradient dL/dh_i as M_i's target (backprop through every module above)"),
    "train_synth": ("S", "train synthesizer M_i one step on ||M_i(h_i [, y]) - target_i||^2"),
    "train_input": ("I", "train synthetic-input model I_i one step on ||I_i(x) - h_{i-1}||^2"),
    # truncated BPTT over the windows of an episode (tbptt.py): module 0 is the core, module 1 its synthesizer
    "forward_window": ("W", "forward the core T steps from the carried (detached) state; the window's losses"),
    "backward_synthetic": ("G", "backprop the window's losses + scale * M(h_T) injected at its last state"),
    "backward_truncated": ("X", "backprop the window's losses only: the gradient from beyond the window is dropped"),
    "train_aux": ("A", "Aux: regress the core's prediction made T steps ago on the synthetic gradient now"),
    "step_core": ("P", "optimizer step of the core (LSTM, readout, Aux head) on the window's gradients"),
}
TARGETS = ("bootstrap", "true")


@dataclass(frozen=True)
class Event:
    """One step of work: `kind` for `module` on `batch`, in time slot `tick`. Reads and writes the listed keys."""

    kind: str
    module: int
    batch: int
    tick: int
    reads: tuple = field(default=(), repr=False, compare=False)
    writes: tuple = field(default=(), repr=False, compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Event: unknown kind {self.kind!r}; the kinds are {', '.join(KINDS)}")

    @property
    def short(self):
        """A letter for the kind and the batch number: 'F3' is a forward pass on batch 3."""
        return f"{KINDS[self.kind][0]}{self.batch}"

    def __str__(self):
        return f"tick {self.tick:>3} | module {self.module} | {self.kind:<16} | batch {self.batch}"


def _count(value, name, where, minimum):
    """An integer >= minimum (a NumPy integer too, never a bool or a float), or a ValueError that says so."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_sizes(n_batches, n_modules, where="schedule"):
    """A schedule needs at least one batch and one module: refuse 0, negative or fractional sizes."""
    return _count(n_batches, "n_batches", where, 1), _count(n_modules, "n_modules", where, 1)


def key_str(key):
    return f"{key[0]}[{','.join(str(k) for k in key[1:])}]"


# ---- the event builders: each states what it reads and writes --------------------------------------------------------
def _forward(i, b, tick, top, unlocked=False):
    if unlocked and i > 0:  # runs on I_i(x): needs only the data
        reads, kind = (("batch", b),), "forward_unlocked"
    else:
        reads, kind = ((("batch", b),) if i == 0 else (("batch", b), ("h", i - 1, b))), "forward"
    writes = (("graph", i, b),) + ((("h", i, b),) if i < top else ())
    return Event(kind, i, b, tick, reads, writes)


def _update(i, b, tick, top):
    kind = "update_true" if i == top else "update_synthetic"
    writes = (("dh", i - 1, b),) if i > 0 else ()
    return Event(kind, i, b, tick, (("graph", i, b), ("batch", b)), writes)


def _backprop(i, b, tick):
    writes = (("dh", i - 1, b),) if i > 0 else ()
    return Event("backprop", i, b, tick, (("graph", i, b), ("dh", i, b)), writes)


def _target(i, b, tick):
    return Event("target", i, b, tick, (("h", i, b), ("batch", b)), (("true_dh", i, b),))


def _train_synth(i, b, tick, target):
    source = ("dh", i, b) if target == "bootstrap" else ("true_dh", i, b)
    return Event("train_synth", i, b, tick, (("h", i, b), ("batch", b), source), ())


def _train_input(j, b, tick):
    return Event("train_input", j, b, tick, (("h", j - 1, b), ("batch", b)), ())


def decoupled_batch(b, n_modules, target, tick_of, train_tick_of, updates=None, unlocked=False):
    """The events of batch b for the decoupled schedules: each module forward + update at tick_of(i); M_i trains at
    train_tick_of(i). `updates[i]` False skips module i's update (stochastic schedule)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    top = n_modules - 1
    updates = [True] * n_modules if updates is None else list(updates)
    events = []
    for i in range(n_modules):
        t = tick_of(i)
        events.append(_forward(i, b, t, top, unlocked))
        if updates[i]:
            events.append(_update(i, b, t, top))
        if i < top:
            if target == "true":
                events += [_target(i, b, t), _train_synth(i, b, train_tick_of(i), target)]
            elif updates[i + 1]:  # the bootstrapped target exists only if module i+1 updated on this batch
                events.append(_train_synth(i, b, train_tick_of(i), target))
    return events


def sort_events(events):
    """The sequential order: by tick, higher modules first, then generation order (Python's sort is stable)."""
    return sorted(events, key=lambda e: (e.tick, -e.module))


# ---- schedules -------------------------------------------------------------------------------------------------------
class Schedule:
    """Base class. A subclass defines `batch_events(b, n_modules, target)`: the events of batch b, with their ticks.

    per_batch: True when running all of batch b's events before feeding batch b+1 gives the same result as the
    planned order (then a learner may call it one batch at a time, as the Trainer does).
    """

    name = "schedule"
    per_batch = True

    def batch_events(self, b, n_modules, target="bootstrap"):  # pragma: no cover - abstract
        raise NotImplementedError

    def events(self, n_batches, n_modules, target="bootstrap"):
        """Every event of n_batches batches, in the order a sequential runner executes them."""
        n_batches, n_modules = check_sizes(n_batches, n_modules, f"{self!r}.events")
        return sort_events([e for b in range(n_batches) for e in self.batch_events(b, n_modules, target)])

    def first_tick(self, b, n_modules, target="bootstrap"):
        """The tick at which batch b starts; nondecreasing in b (a streaming runner relies on it)."""
        _count(n_modules, "n_modules", f"{self!r}.first_tick", 1)
        return min(e.tick for e in self.batch_events(b, n_modules, target))

    def describe(self, n_batches, n_modules, target="bootstrap", io=False):
        """The event list as text, one line per event (`io=True` adds what each event reads and writes)."""
        lines = [f"{self!r}: {n_batches} batches, {n_modules} modules, target={target}"]
        for e in self.events(n_batches, n_modules, target):
            extra = ""
            if io:
                extra = (f"   reads {', '.join(key_str(k) for k in e.reads) or '-'}"
                         f"; writes {', '.join(key_str(k) for k in e.writes) or '-'}")
            lines.append(str(e) + extra)
        return "\n".join(lines)

    def grid(self, n_batches, n_modules, target="bootstrap"):
        return format_grid(self.events(n_batches, n_modules, target), n_modules, title=repr(self))

    def draw(self, n_batches, n_modules, path=None, target="bootstrap", ax=None):
        from .trace import draw_timeline

        return draw_timeline(self.events(n_batches, n_modules, target), path=path, n_modules=n_modules,
                             title=f"{self!r}, target={target}", ax=ax)

    def __repr__(self):
        return f"{self.name}()"


class Locked(Schedule):
    """Backprop: forward up, loss, then backward down; a module steps when the true gradient reaches it.

    Ticks per batch: 2M - 1 (M forwards, then M - 1 backprops below the top): the "V" of update locking.
    """

    name = "locked"

    def batch_events(self, b, n_modules, target="bootstrap"):
        top = n_modules - 1
        base = b * (2 * n_modules - 1)
        events = [_forward(i, b, base + i, top) for i in range(n_modules)]
        events.append(_update(top, b, base + top, top))
        events += [_backprop(i, b, base + 2 * top - i) for i in range(top - 1, -1, -1)]
        return events


class DNI(Schedule):
    """Module i does forward + synthetic update at tick b*M + i; M_i trains as soon as its target exists
    (bootstrap: two ticks later, after module i+1 updated; true: at once)."""

    name = "dni"

    def batch_events(self, b, n_modules, target="bootstrap"):
        base, lag = b * n_modules, (2 if target == "bootstrap" else 0)
        return decoupled_batch(b, n_modules, target, lambda i: base + i, lambda i: base + i + lag)


class Stochastic(Schedule):
    """As `dni`, but after its forward pass each module updates only with probability p_update.

    The coin flips of batch b come from np.random.default_rng([seed, b]): the same for a given (seed, b) however the
    schedule is run, streamed or planned. The top module flips too (its loss is still computed and logged).
    """

    name = "stochastic"

    def __init__(self, p_update=0.5, seed=0):
        if not 0.0 <= p_update <= 1.0:
            raise ValueError(f"stochastic: p_update is a probability, got {p_update}")
        self.p_update, self.seed = float(p_update), int(seed)

    def updates(self, b, n_modules):
        """Which modules update on batch b: a list of n_modules bools."""
        return list(np.random.default_rng([self.seed, b]).random(n_modules) < self.p_update)

    def batch_events(self, b, n_modules, target="bootstrap"):
        base, lag = b * n_modules, (2 if target == "bootstrap" else 0)
        return decoupled_batch(b, n_modules, target, lambda i: base + i, lambda i: base + i + lag,
                               updates=self.updates(b, n_modules))

    def __repr__(self):
        return f"stochastic(p_update={self.p_update:g}, seed={self.seed})"


class Delayed(Schedule):
    """As `dni`, but M_i's training on batch t happens k batches later: the target arrives k steps late, and
    (h, y, target) of the last k batches are kept until then."""

    name = "delayed"

    def __init__(self, k=1):
        self.k = _count(k, "k (the delay, in batches)", "delayed", 0)
        self.per_batch = self.k == 0

    def batch_events(self, b, n_modules, target="bootstrap"):
        base, lag = b * n_modules, (2 if target == "bootstrap" else 0)
        later = (b + self.k) * n_modules
        return decoupled_batch(b, n_modules, target, lambda i: base + i, lambda i: later + i + lag)

    def __repr__(self):
        return f"delayed(k={self.k})"


class Pipelined(Schedule):
    """At tick T module i processes batch T - i (forward + update): all modules busy at once. M_i trains on batch t
    two ticks after module i's update (bootstrap: once module i+1 has sent the target down)."""

    name = "pipelined"
    per_batch = False

    def batch_events(self, b, n_modules, target="bootstrap"):
        lag = 2 if target == "bootstrap" else 0
        return decoupled_batch(b, n_modules, target, lambda i: b + i, lambda i: b + i + lag)


def locked():
    return Locked()


def dni():
    return DNI()


def stochastic(p_update=0.5, seed=0):
    return Stochastic(p_update, seed)


def delayed(k=1):
    return Delayed(k)


def pipelined():
    return Pipelined()


# ---- checking and printing -------------------------------------------------------------------------------------------
def check(events):
    """Verify the data flow of an ordered event list; raise ValueError at the first violation.

    * ticks never go backwards;
    * every key an event reads was written before (batch data excepted: the runner provides it), in an EARLIER tick
      or earlier in the same tick by the same module (its own worker);
    * no key is written twice.
    Returns the number of events checked.
    """
    written, last_tick = {}, None
    for e in events:
        if last_tick is not None and e.tick < last_tick:
            raise ValueError(f"{e}: comes after tick {last_tick}; events must be sorted by tick")
        last_tick = e.tick
        for k in e.reads:
            if k[0] == "batch":
                continue
            if k not in written:
                raise ValueError(f"{e}: reads {key_str(k)}, which no earlier event wrote")
            tick, module = written[k]
            if tick == e.tick and module != e.module:
                raise ValueError(f"{e}: reads {key_str(k)}, which module {module} writes in the same tick; two "
                                 "workers would race. Move the reader to a later tick.")
        for k in e.writes:
            if k in written:
                raise ValueError(f"{e}: writes {key_str(k)} a second time")
            written[k] = (e.tick, e.module)
    return len(events)


def format_grid(events, n_modules, title=""):
    """The events as a text timeline: one row per module (top module first), one column per tick.

        tick       0     1     2     3
        module 1         F0L0  F1L1
        module 0   F0U0  F1U1  S0     S1      (F forward, U synthetic update, L loss + update, S train M_i)
    """
    if not events:
        return title + "\n(no events)"
    ticks = sorted({e.tick for e in events})
    cells = {}
    for e in events:
        cells[(e.module, e.tick)] = cells.get((e.module, e.tick), "") + e.short
    width = max(max(len(c) for c in cells.values()), max(len(str(t)) for t in ticks)) + 2
    label = len(f"module {n_modules - 1}") + 2
    lines = [title] if title else []
    lines.append("tick".ljust(label) + "".join(str(t).ljust(width) for t in ticks))
    for m in range(n_modules - 1, -1, -1):
        lines.append(f"module {m}".ljust(label) + "".join(cells.get((m, t), "").ljust(width) for t in ticks).rstrip())
    kinds = [k for k in KINDS if any(e.kind == k for e in events)]
    lines.append("  ".join(f"{KINDS[k][0]} {k}" for k in kinds) + "   (letter + batch number)")
    return "\n".join(lines)

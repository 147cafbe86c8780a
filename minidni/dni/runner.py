"""Runners: execute an update schedule on a DNINet, one event at a time or one tick at a time on worker threads
(Jaderberg et al. 2016, Sec. 1-2: decoupled modules can run, and update, at the same time).

    runner = Runner(net, schedules.pipelined(), batches)    # batches: a list of (x, y), an iterator, or a BatchIterator
    event = runner.step()          # run the next event and return it (for lessons: look at runner.store after it)
    runner.run()                   # run everything that is left (run(n) feeds n more batches, then drains)

What the runner keeps: `store`, a dict of the activations and targets in flight, keyed as in schedules.py
(("h", i, b), ("dh", i, b), ...). When batch b is fed, the runner counts how many of its events read each key; after
the last reader has run the entry is deleted, so memory holds only what is still needed (`len(runner.store)` after a
run is 0). It also records, in order: `log` (loss and correct count of each batch), `synth_log` (each synthesizer
update's loss), `input_log` (each synthetic-input update's loss), `diagnostics` (g_hat against the true gradient, every
`diagnose_every` batches) and `trace` (every event's wall-clock start and end, see trace.py).

Batches are fed lazily: an event runs once no batch still to come could precede it (its tick is before the first tick
of the next batch), so a runner streams through an endless batch source with a bounded store.

`ConcurrentRunner` runs each tick's events on one worker thread per module (a worker owns module i, synthesizer M_i
and their optimizers), then waits for all of them (the barrier) before the next tick. Python threads run at the same
time here because NumPy's BLAS and the Numba kernels release the GIL. Each worker writes its results into its own
dict; the main thread merges them after the barrier. Because the schedule guarantees that no worker reads what another
writes in the same tick (schedules.check), every worker sees exactly the values the sequential runner would show it,
so the parameters come out BIT-IDENTICAL to `Runner(..., blas_threads=1)`. BLAS is limited to one thread per worker
(threadpoolctl) so the workers do not fight over the cores -- and the sequential runner must use the same count to
match bit for bit, because OpenBLAS splits a large product differently over different numbers of threads.
"""
from __future__ import annotations

import contextlib
import heapq
import math
import queue
import threading
import time
import warnings

import numpy as np

from ..device import CPU, count_correct
from ..tensor import Tensor
from .interface import gradient_agreement, update_from_gradient, update_from_loss
from .schedules import key_str
from .synthesizer import Oracle
from .trace import Trace


_controller = None


def blas_threads_limit(n):
    """A context manager that runs its block with BLAS limited to n threads (threadpoolctl); a no-op for None."""
    global _controller
    if n is None:
        return contextlib.nullcontext()
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            warnings.warn("minidni.dni: threadpoolctl is not installed, so BLAS thread counts cannot be set: results "
                          "may differ in the last bits between runners, and worker threads compete for cores "
                          "(`pip install threadpoolctl`)")
            _controller = False
        else:
            _controller = ThreadpoolController()
    return _controller.limit(limits=n, user_api="blas") if _controller else contextlib.nullcontext()


def _batch_source(batches):
    """(iterator of (x, y), endless?) from a sequence, an iterator, or an object with next_batch() (minidni.data's)."""
    if batches is None:
        return None, False
    if hasattr(batches, "next_batch"):
        return iter(batches.next_batch, None), True
    return iter(batches), False


class Runner:
    """Execute `schedule` on `net` one event at a time, in the schedule's order. See the module docstring.

    blas_threads   run with BLAS limited to this many threads (None: leave BLAS alone). OpenBLAS splits a large matrix
                   product differently for different thread counts, which changes the last bits of the result; to
                   compare with a ConcurrentRunner bit for bit, give both the same count (it uses 1 per worker).
    """

    def __init__(self, net, schedule=None, batches=None, *, diagnose_every=0, blas_threads=None):
        self.net, self.blas_threads = net, blas_threads
        self.schedule = schedule if schedule is not None else net.schedule
        self.n_modules, self.target = len(net.modules), net.target
        self.diagnose_every = int(diagnose_every)
        self.store, self._refs = {}, {}
        self._queue, self._seq = [], 0         # heap of (tick, -module, seq, event)
        self.n_fed, self.events_run, self._first_tick = 0, 0, (None, None)
        (self._source, self._endless), self._exhausted = _batch_source(batches), False
        self.log, self.synth_log, self.input_log, self.diagnostics = [], [], [], []
        self.trace = Trace(time.perf_counter())
        kinds = {e.kind for e in self.schedule.batch_events(0, self.n_modules, self.target)}
        if "forward_unlocked" in kinds and getattr(net, "inputs", None) is None:
            raise ValueError(f"Runner: {self.schedule!r} runs modules on synthetic inputs, but the net has none; "
                             "attach them first with dni.add_synthetic_inputs(net, in_features)")
        if "update_synthetic" in kinds and len(net.interfaces) < self.n_modules - 1:
            raise ValueError(f"Runner: {self.schedule!r} updates modules with synthetic gradients, but the net has "
                             "no synthesizers; give DNINet synthesizers, or use the locked schedule")

    # ---- feeding batches ------------------------------------------------------------------------------------------
    def feed(self, x, y, copy=True):
        """Hand in the next batch: store it and queue the schedule's events for it.

        The batch is copied (a BatchIterator reuses its buffers, and a pipelined schedule still reads batch b after
        batch b+1 arrives); copy=False is for a caller that runs the batch to the end before fetching the next.
        """
        b = self.n_fed
        events = self.schedule.batch_events(b, self.n_modules, self.target)
        x, y = (np.array(x), np.array(y)) if copy else (x, y)
        device = getattr(self.net, "device", CPU)
        if device is not CPU:                         # the inputs go to the net's device once; labels stay here
            x = device.from_host(np.asarray(x))
        self.store[("batch", b)] = (x, y)
        for e in events:
            for k in e.reads:
                self._refs[k] = self._refs.get(k, 0) + 1
            heapq.heappush(self._queue, (e.tick, -e.module, self._seq, e))
            self._seq += 1
        self.n_fed += 1
        return b

    def _feed_from_source(self):
        if self._source is None or self._exhausted:
            return False
        try:
            x, y = next(self._source)
        except StopIteration:
            self._exhausted = True
            return False
        self.feed(x, y)
        return True

    def pending(self):
        """The queued events in the order they will run."""
        return [item[3] for item in sorted(self._queue)]

    def _bound(self):
        """Events before this tick can run: no batch still to be fed has an event earlier than that."""
        if self._exhausted:
            return math.inf
        if self._first_tick[0] != self.n_fed:       # cached: asked before every event
            self._first_tick = (self.n_fed, self.schedule.first_tick(self.n_fed, self.n_modules, self.target))
        return self._first_tick[1]

    # ---- running ----------------------------------------------------------------------------------------------------
    def step(self, drain=False):
        """Run the next event (feeding a batch from the source if needed) and return it; None when all is done.

        Without a batch source (batches fed by hand with feed()), None means: feed the next batch, or flush() -- or
        call step(drain=True), which says no batch is coming and runs the events still queued one at a time."""
        self.net.train()
        with blas_threads_limit(self.blas_threads):
            while True:
                no_more = drain and (self._source is None or self._exhausted)
                done = self._advance(math.inf if no_more else self._bound())
                if done is not None:
                    return done
                if not self._feed_from_source():
                    if self._source is None or not self._queue:
                        return None

    def run(self, n_batches=None):
        """Feed n_batches more batches from the source (all of them if None), running events as they become ready,
        then drain: run every event still queued. Returns self."""
        if n_batches is None and self._endless:
            raise ValueError("Runner.run: the batch source never ends (it has next_batch()); say how many batches "
                             "to run: run(n_batches)")
        self.net.train()
        fed = 0
        with blas_threads_limit(self.blas_threads):
            while n_batches is None or fed < n_batches:
                while self._advance(self._bound()) is not None:
                    pass
                if not self._feed_from_source():
                    break
                fed += 1
        return self.flush()

    def advance(self, n_batches):
        """Feed n_batches more batches, running events as they become ready, WITHOUT the final drain: a pipeline stays
        full from one call to the next (benchmarks time its steady state this way; run(n) also drains)."""
        target = self.n_fed + n_batches
        with blas_threads_limit(self.blas_threads):
            while self.n_fed < target:
                while self._advance(self._bound()) is not None:
                    pass
                if not self._feed_from_source():
                    break
        return self

    def close(self):
        """Release what the runner holds (worker threads, actors); the sequential runner holds nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def flush(self):
        """Run every queued event (the end of a run: batches in flight are finished)."""
        self.net.train()
        with blas_threads_limit(self.blas_threads):
            while self._advance(math.inf) is not None:
                pass
        return self

    def _advance(self, bound):
        """Sequential: run the first queued event if its tick is before `bound`; return it (or None)."""
        if not self._queue or self._queue[0][0] >= bound:
            return None
        event = heapq.heappop(self._queue)[3]
        writes, records = self._run_worker([event])
        self._commit([([event], writes, records)])
        return event

    def _run_worker(self, events):
        """Run one worker's events of one tick, in order. Reads see the shared store plus this worker's own writes;
        writes go to a private dict the caller merges. Returns (writes, records)."""
        writes, records = {}, []

        def read(key):
            if key in writes:
                return writes[key]
            try:
                return self.store[key]
            except KeyError:
                raise KeyError(f"{event}: needs {key_str(key)}, which is not in the store (never written, or already "
                               "freed): the schedule is inconsistent; schedules.check(events) finds where") from None

        for event in events:
            t0 = time.perf_counter()
            getattr(self, "_do_" + event.kind)(event, read, writes, records)
            self.trace.add(event, t0, time.perf_counter())
        return writes, records

    def _commit(self, results):
        """Merge workers' writes into the store, append their records, free entries nobody will read again."""
        for events, writes, records in results:
            self.store.update(writes)
            for key in writes:
                if self._refs.get(key, 0) == 0:      # written, but no event reads it (e.g. a dh with no trainee)
                    del self.store[key]
            for kind, record in records:
                {"loss": self.log, "synth": self.synth_log, "input": self.input_log,
                 "diagnostic": self.diagnostics}[kind].append(record)
        for events, _, _ in results:
            self.events_run += len(events)
            for e in events:
                for key in e.reads:
                    self._refs[key] -= 1
                    if self._refs[key] == 0:
                        del self._refs[key]
                        self.store.pop(key, None)

    # ---- what each kind of event does (see schedules.KINDS) ----------------------------------------------------------
    def _store_forward(self, event, inp, h, y, writes, records):
        i, b = event.module, event.batch
        if i < self.n_modules - 1:
            writes[("graph", i, b)] = (inp, h)
            writes[("h", i, b)] = h.data
        else:  # the top module: its output is the logits
            loss = self.net.loss(h, y)
            writes[("graph", i, b)] = (inp, h, loss)
            records.append(("loss", {"batch": b, "loss": loss.item(), "n": len(y),
                                     "correct": count_correct(h.data, y)}))

    def _do_forward(self, event, read, writes, records):
        i, b = event.module, event.batch
        x, y = read(("batch", b))
        # the input is a fresh leaf: module i's graph ends here, and inp.grad will be what module i sends down
        inp = Tensor(x) if i == 0 else Tensor(read(("h", i - 1, b)), requires_grad=True)
        self._store_forward(event, inp, self.net.modules[i](inp), y, writes, records)

    def _do_forward_unlocked(self, event, read, writes, records):
        i, b = event.module, event.batch
        x, y = read(("batch", b))
        inp = Tensor(self.net.inputs[i].predict(x), requires_grad=True)     # h_hat_{i-1} = I_i(x)
        self._store_forward(event, inp, self.net.modules[i](inp), y, writes, records)

    def _do_update_synthetic(self, event, read, writes, records):
        i, b = event.module, event.batch
        if i >= len(self.net.interfaces):
            raise ValueError(f"{event}: the net has no synthesizer on module {i}'s output; give DNINet synthesizers "
                             "or use the locked schedule")
        inp, h = read(("graph", i, b))[:2]
        _, y = read(("batch", b))
        g_hat = self.net.interfaces[i].synthetic_gradient(h.data, y)        # (B, D), like h
        if self.diagnose_every and b % self.diagnose_every == 0:
            true = self.net.true_gradient(i, h.data, y)
            records.append(("diagnostic", {"batch": b, "module": i, **gradient_agreement(g_hat, true)}))
        dh = update_from_gradient(self.net.modules[i], self.net.optimizers[i], inp, h, g_hat)
        if i > 0:
            writes[("dh", i - 1, b)] = dh                 # the bootstrapped target for M_{i-1}

    def _do_update_true(self, event, read, writes, records):
        i, b = event.module, event.batch
        inp, _, loss = read(("graph", i, b))
        dh = update_from_loss(self.net.modules[i], self.net.optimizers[i], inp, loss)
        if i > 0:
            writes[("dh", i - 1, b)] = dh                 # the true gradient dL/dh_{i-1}

    def _do_backprop(self, event, read, writes, records):
        i, b = event.module, event.batch
        inp, h = read(("graph", i, b))[:2]
        dh = update_from_gradient(self.net.modules[i], self.net.optimizers[i], inp, h, read(("dh", i, b)))
        if i > 0:
            writes[("dh", i - 1, b)] = dh

    def _do_target(self, event, read, writes, records):
        i, b = event.module, event.batch
        _, y = read(("batch", b))
        writes[("true_dh", i, b)] = self.net.true_gradient(i, read(("h", i, b)), y)

    def _do_train_synth(self, event, read, writes, records):
        i, b = event.module, event.batch
        _, y = read(("batch", b))
        target = read(("dh", i, b) if self.target == "bootstrap" else ("true_dh", i, b))
        loss = self.net.interfaces[i].train(read(("h", i, b)), y, target)
        records.append(("synth", {"batch": b, "module": i, "loss": loss}))

    def _do_train_input(self, event, read, writes, records):
        j, b = event.module, event.batch
        x, _ = read(("batch", b))
        loss = self.net.inputs[j].train(x, read(("h", j - 1, b)))
        records.append(("input", {"batch": b, "module": j, "loss": loss}))

    # ---- summaries --------------------------------------------------------------------------------------------------
    def losses(self):
        """The loss of each batch, in batch order."""
        return np.array([r["loss"] for r in sorted(self.log, key=lambda r: r["batch"])])

    def __repr__(self):
        return (f"{type(self).__name__}({self.schedule!r}, {self.n_modules} modules, target={self.target}: "
                f"{self.n_fed} batches fed, {self.events_run} events run, {len(self._queue)} queued, "
                f"{len(self.store)} entries in the store)")


class _Worker(threading.Thread):
    """Owns module i: takes a tick's list of events from `inbox`, runs them, puts (writes, records) in `outbox`."""

    def __init__(self, runner, index):
        super().__init__(name=f"dni-worker-{index}", daemon=True)
        self.runner, self.inbox, self.outbox = runner, queue.Queue(), queue.Queue()

    def run(self):
        while True:
            events = self.inbox.get()
            if events is None:
                return
            try:
                self.outbox.put(self.runner._run_worker(events))
            except BaseException as exc:  # handed to the main thread, which re-raises it
                self.outbox.put(exc)


def reads_other_modules(net, diagnose_every):
    """What in this set-up would make a module's worker read other modules (so no runner can give each worker only
    its own): a list of reasons, empty when none."""
    reasons = []
    if net.target == "true":
        reasons.append('target="true" (the target of M_i is computed through the modules above)')
    if any(isinstance(s, Oracle) for s in net.synthesizers):
        reasons.append("Oracle synthesizers (they run the modules above)")
    if diagnose_every:
        reasons.append("diagnostics (they compute true gradients through the modules above)")
    return reasons


class ConcurrentRunner(Runner):
    """Run each tick's events on one worker thread per module; bit-identical to a Runner on the same schedule.

    `step()` runs one whole tick and returns its events. Use it as a context manager (or call close()) to stop the
    workers. While it runs, BLAS is limited to `blas_threads` (1) threads, so each worker uses one core; it matches
    `Runner(..., blas_threads=1)` bit for bit (see Runner on why the count matters).
    Refuses what would make workers read each other's state within a tick: target="true", Oracle synthesizers and
    diagnostics (each runs the modules above).
    """

    def __init__(self, net, schedule=None, batches=None, *, blas_threads=1, diagnose_every=0):
        super().__init__(net, schedule, batches, diagnose_every=diagnose_every, blas_threads=blas_threads)
        reasons = reads_other_modules(net, diagnose_every)
        if reasons:
            raise ValueError("ConcurrentRunner: a worker may only touch its own module, but " + "; ".join(reasons) +
                             " would read modules other workers are updating in the same tick. Use the sequential "
                             "Runner for these.")
        self._workers = None

    def _start(self):
        if self._workers is None:
            self._workers = [_Worker(self, i) for i in range(self.n_modules)]
            for w in self._workers:
                w.start()

    def close(self):
        """Stop the worker threads."""
        if self._workers is not None:
            for w in self._workers:
                w.inbox.put(None)
            for w in self._workers:
                w.join()
            self._workers = None


    def _advance(self, bound):
        """Run every queued event of the earliest tick (if before `bound`), one worker per module; return them."""
        if not self._queue or self._queue[0][0] >= bound:
            return None
        tick, events = self._queue[0][0], []
        while self._queue and self._queue[0][0] == tick:
            events.append(heapq.heappop(self._queue)[3])
        by_module = {}
        for e in events:
            by_module.setdefault(e.module, []).append(e)
        self._check_tick(by_module)
        self._start()
        for m, evs in by_module.items():
            self._workers[m].inbox.put(evs)
        results = {m: self._workers[m].outbox.get() for m in by_module}      # the barrier
        for m, r in results.items():
            if isinstance(r, BaseException):
                raise r
        # merged in the sequential runner's order (higher modules first), so logs come out in the same order
        self._commit([(by_module[m], *results[m]) for m in sorted(by_module, reverse=True)])
        return events

    @staticmethod
    def _check_tick(by_module):
        written = {k: m for m, evs in by_module.items() for e in evs for k in e.writes}
        for m, evs in by_module.items():
            for e in evs:
                for k in e.reads:
                    if written.get(k, m) != m:
                        raise RuntimeError(f"{e}: reads {key_str(k)}, which module {written[k]}'s worker writes in the "
                                           "same tick: the schedule would make two workers race")

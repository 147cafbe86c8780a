"""A schedule simulator: how long a batch would take with the modules on N workers joined by a network link, who is
busy, and where the link eats the gain (Jaderberg et al. 2016, Sec. 1-2: decoupled modules need not wait for each
other, so on separate machines they can run at the same time; Sec. 3.3: the MNIST FCN).

Nothing is computed here: the events of a schedule (schedules.py) are laid out in time, a discrete-event simulation.

    costs = profile_costs(net, schedules.pipelined(), batches)     # seconds per (kind, module), measured with Runner
    sim = simulate(schedules.pipelined(), costs, n_workers=2, link=Link.gbit(10))
    print(sim); sim.draw("pipelined.png")

The rules (the model of a driver that submits every call in the schedule's order to actors that run their calls in
the order they came, as Ray's do, or of machines that follow the schedule on their own):

  * module i lives on worker placement[i] (default: contiguous blocks, module i on worker i * W // M);
  * a worker runs its events one at a time, in the schedule's order;
  * an event starts when its worker is free and every key it reads has arrived, and lasts costs[(kind, module)] plus
    `dispatch` (a runner's fixed cost per event). Its writes exist when it ends;
  * a key written on worker a and read on worker b != a travels over the link: it leaves when written and a's link
    is free (a worker sends one message at a time), keeps the link busy bytes / bandwidth, and arrives `latency`
    after it finished sending. On one worker a key is free. The batch data (x, y) is on every worker from the start;
  * per_call > 0: a runner that sends each worker one call per tick (the RayRunner) pays per_call on the first event
    of every (worker, tick);
  * sync="tick" adds the barrier of the ConcurrentRunner: the events of tick T start only once every event of the
    ticks before has ended, plus `tick_overhead` (the hand-off to the worker threads and back);
  * submit > 0: a driver hands out the calls one at a time in the schedule's order, `submit` seconds each: the k-th
    event cannot start before (k + 1) * submit.
  * cores: the workers share one machine of `cores` cores with the runner's own processes, which burn `background`
    CPU-seconds per tick (a Ray driver, raylet and the actors' call handling; a thread runner's hand-offs). The time
    per batch is then at least (busy time of every worker + background * ticks) / (batches * cores): a CPU bound
    that the dataflow timeline alone does not see. `per_batch` reports the larger of the two; the timeline drawn is
    the dataflow's.

The bytes of each transfer follow from the shapes: h_i and dh_i are (batch, width_i) arrays of the net's dtype
(`transfer_bytes` runs one forward pass to read them; `activation_bytes` computes them from widths).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .schedules import KINDS, Schedule, key_str, sort_events
from .trace import Span, Trace, draw_timeline

SYNCS = ("dataflow", "tick")


@dataclass(frozen=True)
class Link:
    """A network link: `latency` seconds per message plus bytes / `bandwidth` (bytes per second)."""

    latency: float = 0.0
    bandwidth: float = math.inf

    def __post_init__(self):
        if not self.latency >= 0 or not self.bandwidth > 0:
            raise ValueError(f"Link: latency must be >= 0 s and bandwidth > 0 bytes/s, got latency={self.latency!r}, "
                             f"bandwidth={self.bandwidth!r}")

    @classmethod
    def gbit(cls, gbit_per_s, latency=50e-6):
        """A link of `gbit_per_s` Gbit/s (10**9 bits) and `latency` seconds (default 50 us, a switched LAN)."""
        return cls(latency, gbit_per_s * 1e9 / 8)

    def send_seconds(self, nbytes):
        """How long a message of nbytes keeps the sender's link busy."""
        return nbytes / self.bandwidth

    def seconds(self, nbytes):
        """How long a message of nbytes takes on an idle link: latency + bytes / bandwidth."""
        return self.latency + self.send_seconds(nbytes)

    @property
    def free(self):
        return self.latency == 0 and self.bandwidth == math.inf

    def __str__(self):
        if self.free:
            return "free link"
        bw = "inf" if self.bandwidth == math.inf else f"{self.bandwidth * 8 / 1e9:g} Gbit/s"
        return f"{bw}, latency {1e6 * self.latency:g} us"


# ---- costs and bytes -------------------------------------------------------------------------------------------------
@dataclass
class Profile:
    """What a profiling pass measured: mean seconds per (kind, module) event, the bytes of each h / dh, and the
    runner's own time per event outside the events (its bookkeeping: `dispatch` for the simulator)."""

    costs: dict
    nbytes: dict
    overhead: float
    counts: dict = field(default_factory=dict)
    blas_threads: int | None = None
    schedule: str = ""

    @classmethod
    def from_spans(cls, spans, wall, nbytes=None, statistic="mean", blas_threads=None, schedule=""):
        """A Profile from a runner's trace spans and the wall-clock seconds they took: each (kind, module)'s mean (or
        median) duration; overhead = the wall-clock time outside the events, per event."""
        if statistic not in ("mean", "median"):
            raise ValueError(f"Profile: statistic must be 'mean' or 'median', got {statistic!r}")
        if not spans:
            raise ValueError("Profile: no events were traced: is the batch source empty?")
        durations = {}
        for s in spans:
            durations.setdefault((s.event.kind, s.event.module), []).append(s.seconds)
        average = np.median if statistic == "median" else np.mean
        return cls({k: float(average(v)) for k, v in durations.items()}, dict(nbytes or {}),
                   max(wall - sum(s.seconds for s in spans), 0.0) / len(spans),
                   {k: len(v) for k, v in durations.items()}, blas_threads, str(schedule))

    def __str__(self):
        lines = [f"profile of {self.schedule} (BLAS threads {self.blas_threads}): mean ms per event, "
                 f"runner overhead {1e3 * self.overhead:.3f} ms per event"]
        for (kind, m), s in sorted(self.costs.items(), key=lambda kv: (kv[0][1], list(KINDS).index(kv[0][0]))):
            lines.append(f"  module {m}  {kind:<18}{1e3 * s:9.3f} ms  (n={self.counts.get((kind, m), '?')})")
        return "\n".join(lines)


def tensor_bytes(shape, dtype=np.float32):
    """Bytes of an array of this shape and dtype: prod(shape) * itemsize."""
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def activation_bytes(batch, widths, dtype=np.float32):
    """{("h", i): bytes, ("dh", i): bytes, ("true_dh", i): bytes} for module outputs of the given widths
    (widths[i] is the width of h_i; dh_i and true_dh_i have h_i's shape)."""
    out = {}
    for i, w in enumerate(widths):
        shape = (batch, *w) if isinstance(w, tuple) else (batch, w)
        for name in ("h", "dh", "true_dh"):
            out[(name, i)] = tensor_bytes(shape, dtype)
    return out


def transfer_bytes(net, x):
    """The bytes of each h_i / dh_i of `net` on a batch x, read from one forward pass (eval mode, no graph)."""
    from ..autograd import no_grad
    from ..tensor import Tensor

    out = {}
    with no_grad():
        net.eval()
        h = Tensor(x)
        for i, m in enumerate(net.modules[:-1]):
            h = m(h)
            for name in ("h", "dh", "true_dh"):
                out[(name, i)] = int(h.data.nbytes)
        net.train()
    return out


def profile_costs(net, schedule=None, batches=None, *, n_batches=4, warmup=1, blas_threads=1, statistic="mean"):
    """Measure the cost of every event: run `warmup` batches with a Runner, then `n_batches` more, and average each
    (kind, module)'s event duration from the runner's trace. It TRAINS `net` on those batches.

    batches: a list of (x, y) (at least warmup + n_batches), an iterator, or a BatchIterator. Returns a Profile;
    its `overhead` is the runner's wall-clock time outside the events, per event. statistic="median" takes the
    median duration instead of the mean: on a shared machine it ignores the event whose thread was descheduled.
    """
    from .runner import Runner

    schedule = schedule if schedule is not None else net.schedule
    if isinstance(batches, (list, tuple)) and len(batches) < warmup + n_batches:
        raise ValueError(f"profile_costs: needs warmup + n_batches = {warmup + n_batches} batches, got {len(batches)}")
    runner = Runner(net, schedule, batches, blas_threads=blas_threads)
    if warmup:
        runner.run(warmup)
    runner.trace.spans.clear()
    t0 = time.perf_counter()
    runner.run(n_batches)
    wall = time.perf_counter() - t0
    x = first_inputs(batches)
    return Profile.from_spans(runner.trace.spans, wall, transfer_bytes(net, x) if x is not None else {}, statistic,
                              blas_threads, repr(schedule))


def first_inputs(batches):
    """A batch of inputs to read the activation shapes from (the runner's store is empty after a run)."""
    if isinstance(batches, (list, tuple)) and batches:
        return batches[0][0]
    if hasattr(batches, "x") and hasattr(batches, "batch_size"):      # a BatchIterator
        return batches.x[:batches.batch_size]
    return None


# ---- the simulation --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Transfer:
    """One message: `key` from worker `src` to worker `dst`; it left at `start` and arrived at `arrive`."""

    key: tuple
    src: int
    dst: int
    nbytes: int
    start: float
    arrive: float


class Simulation:
    """The result of `simulate`: the timeline (a Trace, so Trace's busy / utilisation / overlap / draw apply), the
    transfers, the makespan (whole run) and the steady-state time per batch, and each worker's busy time."""

    def __init__(self, schedule, n_batches, n_modules, n_workers, placement, link, sync, trace, transfers,
                 batch_start, worker_busy, cpu_bound=0.0):
        self.schedule, self.n_batches, self.n_modules, self.n_workers = schedule, n_batches, n_modules, n_workers
        self.placement, self.link, self.sync = placement, link, sync
        self.trace, self.transfers, self.batch_start, self.busy = trace, transfers, batch_start, worker_busy
        self.makespan = max((s.end for s in trace.spans), default=0.0)
        self.cpu_bound = float(cpu_bound)          # seconds per batch the shared cores allow at best (0: no bound)

    @property
    def dataflow_per_batch(self):
        """Seconds per batch in steady state on the timeline: the mean gap between the starts of successive batches
        (their first events) over the second half of the run, so the pipeline's fill and drain are left out (what a
        runner timed over a long stream shows); makespan / n_batches for fewer than 3 batches."""
        n = self.n_batches
        if n < 3:
            return self.makespan / n
        k = n // 2
        return (self.batch_start[n - 1] - self.batch_start[k - 1]) / (n - k)

    @property
    def per_batch(self):
        """Seconds per batch in steady state: the timeline's (dataflow_per_batch), or the shared cores' CPU bound
        (cpu_bound, simulate(cores=...)) where that is larger."""
        return max(self.dataflow_per_batch, self.cpu_bound)

    @property
    def utilisation(self):
        """{worker: busy seconds / makespan}."""
        return {w: (b / self.makespan if self.makespan else 0.0) for w, b in self.busy.items()}

    @property
    def comm_seconds(self):
        """Seconds of link time: the sum over messages of latency + bytes / bandwidth (overlapping or not)."""
        return sum(t.arrive - t.start for t in self.transfers)

    def __str__(self):
        lines = [f"simulated {self.schedule!r}: {self.n_batches} batches, {self.n_modules} modules on "
                 f"{self.n_workers} workers (placement {self.placement}), {self.link}, sync={self.sync}",
                 f"  makespan {1e3 * self.makespan:.3f} ms, {1e3 * self.per_batch:.3f} ms per batch in steady state"
                 + (f" (the shared cores' bound {1e3 * self.cpu_bound:.3f} ms, the timeline "
                    f"{1e3 * self.dataflow_per_batch:.3f} ms)" if self.cpu_bound else ""),
                 f"  {len(self.transfers)} transfers, {self.comm_seconds * 1e3:.3f} ms of link time"]
        for w in range(self.n_workers):
            mods = [m for m, p in enumerate(self.placement) if p == w]
            lines.append(f"  worker {w} (modules {mods or '-'}): busy {1e3 * self.busy[w]:.3f} ms "
                         f"({100 * self.utilisation[w]:.0f}%)")
        return "\n".join(lines)

    __repr__ = __str__

    def draw(self, path=None, title=None, ax=None, transfers=True):
        """The simulated timeline with the runners' drawing (trace.draw_timeline), one row per module; each transfer
        is a grey line from the sender's row when it left to the receiver's row when it arrived."""
        fig = draw_timeline(self.trace, path=None, n_modules=self.n_modules, ax=ax,
                            title=title if title is not None else f"simulated: {self.schedule!r}, {self.n_workers} "
                            f"workers, {self.link}, sync={self.sync}, {1e3 * self.per_batch:.2f} ms/batch")
        ax = fig.axes[0]
        if transfers:
            for t in self.transfers:
                if t.key[0] == "h":            # h_i goes up to module i+1
                    src_m, dst_m = t.key[1], t.key[1] + 1
                elif t.key[0] == "dh":         # dh_i comes down from module i+1
                    src_m, dst_m = t.key[1] + 1, t.key[1]
                else:
                    continue
                ax.plot([t.start, t.arrive], [src_m, dst_m], color="0.3", linewidth=0.6, alpha=0.7)
        ax.set_xlabel("simulated time (s)")
        if path is not None:
            fig.savefig(path, dpi=110)
        return fig


def _lookup(costs, event):
    """Seconds of an event from a {(kind, module): s} or {kind: s} dict, or a ValueError that names what is missing."""
    for key in ((event.kind, event.module), event.kind):
        if key in costs:
            return float(costs[key])
    have = ", ".join(f"{k[0]}@{k[1]}" if isinstance(k, tuple) else str(k) for k in sorted(costs, key=str))
    raise ValueError(f"simulate: no cost for {event.kind!r} of module {event.module} ({event}); the costs have: "
                     f"{have or 'nothing'}. Profile the same schedule and net (profile_costs), or add the entry.")


def simulate(schedule, costs, n_workers=None, link=Link(), *, n_batches=16, n_modules=None, nbytes=None,
             placement=None, sync="dataflow", dispatch=None, per_call=0.0, tick_overhead=0.0, submit=0.0,
             target="bootstrap", cores=None, background=0.0):
    """Lay out the events of `schedule` in time on `n_workers` workers; return a Simulation (see the module docstring).

    schedule   a Schedule, or a list of Events (in the schedule's order)
    costs      a Profile (from profile_costs), {(kind, module): seconds} or {kind: seconds}
    n_workers  default: one per module; placement: module -> worker (default contiguous blocks)
    link       Link(latency, bandwidth); nbytes {("h", i): bytes, ("dh", i): bytes, ...} (default: the Profile's)
    dispatch   seconds added to every event (default: the Profile's runner overhead, else 0)
    per_call   seconds added to a worker's first event of each tick (one remote call per worker and tick)
    sync       "dataflow" (an event waits only for its worker and its inputs) or "tick" (plus the barrier after
               every tick, and tick_overhead seconds before each tick after the first: the ConcurrentRunner)
    submit     a driver's serial cost per event: the k-th event of the schedule starts at (k + 1) * submit at the
               earliest
    cores      the cores the workers share with the runner's processes (None: a core per worker, no bound);
               background: those processes' CPU-seconds per tick
    """
    if sync not in SYNCS:
        raise ValueError(f"simulate: sync must be one of {SYNCS}, got {sync!r}")
    profile = costs if isinstance(costs, Profile) else None
    cost_table = profile.costs if profile else dict(costs)
    if nbytes is None:
        nbytes = profile.nbytes if profile else {}
    if dispatch is None:
        dispatch = profile.overhead if profile else 0.0
    if n_modules is None:
        mods = [k[1] for k in cost_table if isinstance(k, tuple)]
        if not mods:
            raise ValueError("simulate: costs keyed by kind only do not say how many modules there are: pass n_modules")
        n_modules = 1 + max(mods)
    if isinstance(schedule, Schedule):
        events = schedule.events(n_batches, n_modules, target)
    else:
        events = sort_events(list(schedule))
        n_batches = 1 + max(e.batch for e in events)
        schedule = "events"
    n_workers = n_modules if n_workers is None else int(n_workers)
    if n_workers < 1:
        raise ValueError(f"simulate: n_workers must be >= 1, got {n_workers}")
    if placement is None:
        used = min(n_workers, n_modules)
        placement = [i * used // n_modules for i in range(n_modules)]
    placement = list(placement)
    if len(placement) != n_modules or not all(0 <= p < n_workers for p in placement):
        raise ValueError(f"simulate: placement must give each of the {n_modules} modules a worker in "
                         f"0..{n_workers - 1}, got {placement}")

    readers = {}                                   # key -> the workers that read it
    for e in events:
        for k in e.reads:
            if k[0] != "batch":
                readers.setdefault(k, set()).add(placement[e.module])

    trace, transfers = Trace(0.0), []
    worker_free = [0.0] * n_workers
    link_free = [0.0] * n_workers                 # each worker's outgoing link
    arrival = {}                                   # (key, worker) -> when the key is there
    batch_start = [math.inf] * n_batches
    busy = [0.0] * n_workers
    last_tick = [None] * n_workers                 # the tick of each worker's last call (per_call)

    def ready_at(event):
        t = 0.0
        for k in event.reads:
            if k[0] == "batch":
                continue
            t = max(t, arrival[(k, placement[event.module])])
        return t

    def run(event, earliest):
        w = placement[event.module]
        start = max(worker_free[w], ready_at(event), earliest)
        seconds = _lookup(cost_table, event) + dispatch
        if last_tick[w] != event.tick:
            seconds += per_call
            last_tick[w] = event.tick
        end = start + seconds
        worker_free[w] = end
        busy[w] += seconds
        trace.spans.append(Span(event, start, end, f"worker {w}"))
        batch_start[event.batch] = min(batch_start[event.batch], start)
        for k in event.writes:
            arrival[(k, w)] = end
            for dst in sorted(readers.get(k, ())):
                if dst == w:
                    continue
                size = _bytes(nbytes, k, link, event)
                leave = max(end, link_free[w])
                link_free[w] = leave + link.send_seconds(size)
                arrival[(k, dst)] = link_free[w] + link.latency
                transfers.append(Transfer(k, w, dst, size, leave, arrival[(k, dst)]))

    order = {id(e): n for n, e in enumerate(events)}
    if sync == "tick":
        tick, tick_start, last_end = None, 0.0, 0.0
        for e in events:
            if e.tick != tick:
                tick_start = last_end + (tick_overhead if tick is not None else 0.0)
                tick = e.tick
            run(e, max(tick_start, (order[id(e)] + 1) * submit))
            last_end = max(last_end, worker_free[placement[e.module]])
    else:
        queues = [[e for e in events if placement[e.module] == w] for w in range(n_workers)]
        heads = [0] * n_workers
        left = len(events)
        while left:
            progressed = False
            for w in range(n_workers):
                while heads[w] < len(queues[w]):
                    e = queues[w][heads[w]]
                    if any(k[0] != "batch" and (k, w) not in arrival for k in e.reads):
                        break
                    run(e, (order[id(e)] + 1) * submit)
                    heads[w] += 1
                    left -= 1
                    progressed = True
            if not progressed:
                stuck = [queues[w][heads[w]] for w in range(n_workers) if heads[w] < len(queues[w])]
                missing = [key_str(k) for k in stuck[0].reads if k[0] != "batch" and (k, placement[stuck[0].module])
                           not in arrival]
                raise ValueError(f"simulate: deadlock: {stuck[0]} waits for {', '.join(missing)}, which no event "
                                 "before it on any worker writes; the schedule is inconsistent (schedules.check)")
    trace.spans.sort(key=lambda s: (s.start, s.event.module))
    cpu_bound = 0.0
    if cores is not None:
        if not cores >= 1 or not background >= 0:
            raise ValueError(f"simulate: cores must be >= 1 and background >= 0 CPU-seconds per tick, got "
                             f"cores={cores!r}, background={background!r}")
        n_ticks = len({e.tick for e in events})
        cpu_bound = (sum(busy) + background * n_ticks) / (n_batches * cores)
    return Simulation(schedule, n_batches, n_modules, n_workers, placement, link, sync, trace, transfers, batch_start,
                      dict(enumerate(busy)), cpu_bound)


def _bytes(nbytes, key, link, event):
    if (key[0], key[1]) in nbytes:
        return int(nbytes[(key[0], key[1])])
    if link.bandwidth == math.inf:
        return 0
    raise ValueError(f"simulate: {event} sends {key_str(key)} to another worker, but the byte counts have no entry "
                     f"{(key[0], key[1])!r}; give nbytes (activation_bytes / transfer_bytes) or a Profile")

"""Distributed DNI benchmark: locked backprop in one process, the thread runner and the Ray runner, measured, and the
schedule simulator's prediction beside each measurement; then the simulator's forecast for 2, 4 and 8 machines
(Jaderberg et al. 2016, Sec. 1-2: decoupled modules can run on separate workers at the same time; Sec. 3.3: the
MNIST FCN).

Two nets, batch 256, Adam, float32, trained on the real MNIST (minidni.data, shipped with the package):

  mnist   the paper's 6-layer FCN, 784 -> 256 x 5 -> 10 with batch norm, cut after hidden layer 1 ("2+4", the
          FLOP-balanced cut of bench_dni.py) into two modules, a cDNI linear synthesizer on the cut
  wide    784 -> W x 2K -> 10 (default W = 2048, K = 2), cut in the middle: two modules of K hidden layers each, a
          cDNI linear synthesizer (W + 10 -> W) on the cut; a module's step costs ~200 ms on one core, far above
          Ray's per-hop overhead (~1-2 ms). Napkin math (printed): the synthesizer's prediction and training step
          cost as much as one W x W layer's step, so even a perfect two-worker pipeline is at most
          FLOPs(locked) / FLOPs(busiest module) = 1.44x locked backprop on one thread at K = 2 (2K/(K+1) for
          large W)
  bottleneck  784 -> W x K -> C -> W x K -> C -> 10 (default C = 256), cut after the first C: the same wide layers,
          but the modules meet at a narrow layer, so the synthesizer (C + 10 -> C) and the hop (batch x C floats)
          are cheap; the perfect pipeline is then bounded by the modules' balance alone (module 0 has the input
          layer, module 1 the output layer): 1.88x at the defaults

Configurations (each net):

  locked      backprop, the whole net as one module, Runner, BLAS on every core
  locked-1t   the same with BLAS limited to one thread
  pipe-seq    the two modules, `pipelined` schedule, sequential Runner, one BLAS thread
  pipe-conc   the same on the ConcurrentRunner: a worker thread per module, one BLAS thread each
  pipe-ray    the same on the RayRunner: an actor per module (one CPU, one BLAS thread); only when ray and
              minidni/dni/ray_runner.py import

Measured: all runners of a net are built first and timed round-robin (each sample ~`--sample-s` seconds of one
configuration, after a `--settle` pause), a step is one batch in steady state (batches are fed and their events run
as they become ready; the pipeline is never drained between samples; the Ray runner's ticks still in flight in the
actors are waited for at the end of its sample, so its work never runs into the next configuration's). The median over samples is the number; the
spread (max / min - 1 over the samples) is printed beside it, because the machine may be shared.

Simulated (minidni.dni.simulate): event costs come from three profiling runners on FRESH nets (seed 1, their own
data order; not the timed runners), sequential Runners of locked with BLAS on every core, locked with one thread and
pipelined with one thread, timed round-robin among the measured configurations (so both see the same load); the cost
of each (kind, module) is the mean of its events' durations (`--statistic median`: the median, which on a busy
machine leaves out the events whose thread was descheduled, and so predicts a quiet machine). Then

  locked / locked-1t / pipe-seq   one worker: the sum of the events plus the runner's bookkeeping per event
  pipe-conc                       two workers, the tick barrier (sync="tick") plus the runner's own time per tick
                                  (hand-off to the threads, barrier, bookkeeping), measured on a tiny net as its
                                  wall-clock time minus its critical path
  pipe-ray                        two workers, dataflow (each actor runs its calls in the order the driver sent
                                  them), a hop's latency and bandwidth measured between two idle actors, and the
                                  RayRunner's own time per tick on a tiny net (its events take microseconds: the
                                  driver's submissions and the calls) as the driver's serial cost, spread over the
                                  tick's events (`submit`); and the shared cores (simulate's `cores`): the actors
                                  share this machine's cores with Ray's processes, which burn per tick the CPU
                                  measured on that tiny net (driver, actors, raylet, GCS; psutil) plus the copies of
                                  what crosses per tick (h, dh, the batch), each at the hop's measured bandwidth

and the error, simulated / measured - 1, is printed for every configuration. Last, the forecast: the simulated speed-up
of dni and pipelined over locked backprop on one machine, on 2, 4 and 8 machines joined at 1, 10 and 100 Gbit/s (latency
50 us), for the 6-layer MNIST net and for a wide net of modules of `--predict-width` units (costs profiled here with
one BLAS thread: a machine is one core of this one; the schedules profiled round-robin, `--profile-batches` each),
and where communication eats the gain.

    python benchmarks/bench_distributed.py            # writes benchmarks/results/distributed-*.json (~3-5 min quiet)
    python benchmarks/bench_distributed.py --quick    # smoke run: small wide net, few samples (< 1 min)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_dni import fwd_flops, minidni_arrays, net_flops  # noqa: E402  (float32 check's arrays; napkin math)
from bench_engine import check_float32  # noqa: E402

B, D_IN, D_OUT = 256, 784, 10
MNIST_H, MNIST_K, MNIST_CUT = 256, 5, 1                 # 6 weight layers; cut after hidden layer 1 ("2+4")
CONFIGS = ("locked", "locked-1t", "pipe-seq", "pipe-conc", "pipe-ray")
MACHINES, GBITS, LATENCY = (2, 4, 8), (1, 10, 100), 50e-6
# cuts of the 6-layer MNIST net into N modules (after these hidden layers), roughly FLOP-balanced; 6 is the most
MNIST_CUTS = {1: [], 2: [1], 4: [0, 2, 3], 6: [0, 1, 2, 3, 4]}


def ray_runner_class():
    """(RayRunner, None) when ray and minidni/dni/ray_runner.py import, else (None, the reason)."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        return None, f"ray is not installed ({exc}); pip install -e '.[distributed]'"
    try:
        from minidni.dni.ray_runner import RayRunner
    except ImportError as exc:
        return None, f"minidni/dni/ray_runner.py does not import yet ({exc})"
    return RayRunner, None


# ---- nets and data ---------------------------------------------------------------------------------------------------
def mnist_batches(seed=0, batch=B):
    from minidni.data import BatchIterator, load_mnist

    train = load_mnist().train
    return BatchIterator(train.x, train.y, batch_size=batch, seed=seed, drop_last=True)


def net_widths(net):
    """The hidden widths of a bench net name: 'mnist', 'wide:W:K' (K hidden layers of W per module) or
    'bottleneck:W:K:C' (784 -> W x K -> C -> W x K -> C -> 10, cut at the first C)."""
    if net == "mnist":
        return [MNIST_H] * MNIST_K
    kind, *args = net.split(":")
    if kind == "wide":
        w, k = map(int, args)
        return [w] * (2 * k)
    w, k, c = map(int, args)
    return [w] * k + [c] + [w] * k + [c]


def middle_cut(net):
    """The hidden layer after which the two-module pipelines cut `net`."""
    if net == "mnist":
        return [MNIST_CUT]
    kind, w, k, *_ = net.split(":")
    return [int(k) - 1] if kind == "wide" else [int(k)]


def net_label(net):
    """784-256x5-10 style: runs of equal widths as WxN."""
    runs = []
    for w in net_widths(net):
        if runs and runs[-1][0] == w:
            runs[-1][1] += 1
        else:
            runs.append([w, 1])
    return "-".join([str(D_IN)] + [f"{w}x{n}" if n > 1 else str(w) for w, n in runs] + [str(D_OUT)])


def build_net(net, split_after, seed=0):
    """The DNINet of `net` cut after the given hidden layers (none: one module, for locked backprop), cDNI linear
    synthesizers on the cuts."""
    from minidni.dni import DNINet, Synthesizer, adam, mlp_modules
    from minidni.dni import schedules as S

    widths = net_widths(net)
    modules = mlp_modules(D_IN, widths, D_OUT, None, split_after=split_after, rng=seed)
    if not split_after:
        return DNINet(modules, None, schedule=S.locked())
    synths = [Synthesizer(widths[cut], D_OUT, rng=seed + 1 + k) for k, cut in enumerate(split_after)]
    return DNINet(modules, synths, optimizer=adam(1e-3))


def ideal_pipeline(net):
    """FLOPs of locked backprop over those of the busiest module of the two-module pipeline: the most a perfect
    two-worker pipeline can gain over locked backprop on one thread. Module 0 pays for its synthesizer (g_hat =
    M(h), then M's training step: forward again, dW); module 1's first layer also computes dx."""
    widths = net_widths(net)
    cut = middle_cut(net)[0] + 1                         # hidden layers in module 0
    dims = [D_IN] + widths + [D_OUT]
    synth = 3 * 2 * B * (widths[cut - 1] + D_OUT) * widths[cut - 1]
    module0, module1 = net_flops(dims[:cut + 1], B) + synth, 3 * fwd_flops(dims[cut:], B)
    return net_flops(dims, B) / max(module0, module1), module0, module1


def build(net, config, seed=0):
    """(net, runner) of one configuration; the runner streams from an endless seeded MNIST BatchIterator."""
    from minidni.dni import ConcurrentRunner, Runner
    from minidni.dni import schedules as S

    data = mnist_batches(seed)
    if config.startswith("locked"):
        dnet = build_net(net, [], seed)
        return dnet, Runner(dnet, S.locked(), data, blas_threads=1 if config == "locked-1t" else None)
    dnet = build_net(net, middle_cut(net), seed)
    if config == "pipe-conc":
        return dnet, ConcurrentRunner(dnet, S.pipelined(), data)
    if config == "pipe-ray":
        RayRunner, why = ray_runner_class()
        if RayRunner is None:
            raise RuntimeError(why)
        return dnet, RayRunner(dnet, S.pipelined(), data, checkpoint_every=0)     # no checkpoints while timing
    return dnet, Runner(dnet, S.pipelined(), data, blas_threads=1)


def advance(runner, n):
    """Feed n more batches, running events as they become ready: Runner.run's loop without its final drain, so a
    pipeline stays full from one sample to the next (as bench_dni.py's workers do)."""
    runner.advance(n)
    if hasattr(runner, "wait"):      # Ray: advance returns with up to ticks_in_flight ticks still running in the
        runner.wait()                # actors; wait for them, so no sample's work spills into the next one's
    return runner


# ---- measuring -------------------------------------------------------------------------------------------------------
PROFILES = {"locked": ([], "locked", None), "locked-1t": ([], "locked", 1), "pipelined-1t": (None, "pipelined", 1)}


def profile_runner(net, name):
    """A sequential Runner on a FRESH net (seed 1, its own data order) for one of PROFILES: its trace is the profile."""
    from minidni.dni import Runner
    from minidni.dni import schedules as S

    cut, schedule, threads = PROFILES[name]
    dnet = build_net(net, middle_cut(net) if cut is None else cut, seed=1)
    return dnet, Runner(dnet, getattr(S, schedule)(), mnist_batches(seed=1), blas_threads=threads)


def measure(net, configs, samples, sample_s, settle, statistic="mean"):
    """Time the configurations round-robin, and the profiling runners among them (so both see the same load).

    Returns ({config: {"s_per_step": median, "samples_s": [...], "spread": max/min - 1, ...}},
             {profile name: Profile from the profiling runner's spans over all its samples})."""
    from minidni.dni.simulate import Profile, transfer_bytes

    built = {c: build(net, c) for c in configs}
    built.update({f"profile:{p}": profile_runner(net, p) for p in PROFILES})
    walls = {p: 0.0 for p in PROFILES}
    try:
        n_per = {}
        for c, (dnet, runner) in built.items():          # warm-up (Numba, BLAS buffers, the pipeline's fill)
            dnet.train()
            advance(runner, 2)
            t = time.perf_counter()
            advance(runner, 1)
            n_per[c] = max(1, int(round(sample_s / max(time.perf_counter() - t, 1e-6))))
            if hasattr(runner, "trace"):
                runner.trace.spans.clear()
        for _, runner in built.values():
            if hasattr(runner, "sync"):                  # Ray: bring the actors' state back into the driver's net
                runner.sync()
        checked = {c: check_float32(f"{net} {c}", minidni_arrays(d, *first_rows())) for c, (d, _) in built.items()}
        raw = {c: [] for c in configs}
        for _ in range(samples):
            for c, (_, runner) in built.items():        # round-robin: a drift of a shared machine hits all alike
                time.sleep(settle)
                t = time.perf_counter()
                advance(runner, n_per[c])
                wall = time.perf_counter() - t
                if c in raw:
                    raw[c].append(wall / n_per[c])
                    if hasattr(runner, "trace"):
                        runner.trace.spans.clear()
                else:
                    walls[c.removeprefix("profile:")] += wall
        x = first_rows(B)[0]
        prof = {p: Profile.from_spans(built[f"profile:{p}"][1].trace.spans, walls[p],
                                      transfer_bytes(built[f"profile:{p}"][0], x), statistic, PROFILES[p][2],
                                      PROFILES[p][1] + "()") for p in PROFILES}
    finally:
        for _, runner in built.values():
            if hasattr(runner, "close"):
                runner.close()
    meas = {c: {"s_per_step": float(np.median(v)), "samples_s": v, "spread": max(v) / min(v) - 1,
                "steps_per_sample": n_per[c], "float32_arrays": checked[c]} for c, v in raw.items()}
    return meas, prof


def first_rows(n=8):
    from minidni.data import load_mnist

    train = load_mnist().train
    return train.x[:n], train.y[:n]


def tick_overhead(ticks=300):
    """Seconds the ConcurrentRunner adds per tick (the hand-off to the worker threads, the barrier, the merge): on a
    tiny two-module net (width 8, batch 4, pipelined), the wall-clock time per tick minus the critical path (the
    busiest worker's events in each tick, from the trace); the best of three runs."""
    from minidni.data import BatchIterator
    from minidni.dni import ConcurrentRunner, DNINet, Synthesizer, adam, mlp_modules
    from minidni.dni import schedules as S

    rng = np.random.default_rng(0)
    x, y = rng.random((4096, 8), dtype=np.float32), rng.integers(0, 2, 4096)
    net = DNINet(mlp_modules(8, 8, 2, 1, split_after=[0], rng=0), [Synthesizer(8, 2, rng=1)], optimizer=adam())
    best = np.inf
    with ConcurrentRunner(net, S.pipelined(), BatchIterator(x, y, batch_size=4, seed=0)) as runner:
        advance(runner, 20)
        for _ in range(3):
            runner.trace.spans.clear()
            t = time.perf_counter()
            advance(runner, ticks)
            wall = time.perf_counter() - t
            per = {}
            for sp in runner.trace.spans:
                per[(sp.event.tick, sp.event.module)] = per.get((sp.event.tick, sp.event.module), 0.0) + sp.seconds
            critical = {}
            for (tick, _), sec in per.items():
                critical[tick] = max(critical.get(tick, 0.0), sec)
            best = min(best, (wall - sum(critical.values())) / max(len(critical), 1))
    return max(best, 0.0)


def ray_tick_overhead(ticks=200):
    """(seconds per tick, CPU-seconds per tick) of the RayRunner on a tiny two-module net (width 8, batch 4,
    pipelined), where the events take microseconds: what the driver's submissions and the calls cost per tick (best of
    three), and the CPU that costs in every process of the local Ray (driver, actors, raylet, GCS; None without
    psutil): on a machine the actors share, that CPU is taken from them."""
    from minidni.data import BatchIterator
    from minidni.dni import DNINet, Synthesizer, adam, mlp_modules
    from minidni.dni import schedules as S

    RayRunner, why = ray_runner_class()
    rng = np.random.default_rng(0)
    x, y = rng.random((4096, 8), dtype=np.float32), rng.integers(0, 2, 4096)
    net = DNINet(mlp_modules(8, 8, 2, 1, split_after=[0], rng=0), [Synthesizer(8, 2, rng=1)], optimizer=adam())
    runner = RayRunner(net, S.pipelined(), BatchIterator(x, y, batch_size=4, seed=0), checkpoint_every=0)
    try:
        advance(runner, 20)
        best, cpu = np.inf, np.inf
        for _ in range(3):
            c = cpu_seconds()
            t = time.perf_counter()
            advance(runner, ticks)
            wall = time.perf_counter() - t
            best = min(best, wall / ticks)
            if c is not None:
                cpu = min(cpu, (cpu_seconds() - c) / ticks)
    finally:
        runner.close()
    return best, (None if cpu == np.inf else cpu)


def cpu_seconds():
    """User + system CPU-seconds so far of this process and every process it started (a local Ray's raylet, GCS and
    workers among them); None without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    me = psutil.Process()
    total = 0.0
    for p in [me] + me.children(recursive=True):
        try:
            t = p.cpu_times()
        except psutil.Error:                         # a process that ended meanwhile
            continue
        total += t.user + t.system
    return total


def blas_state():
    """{"threads": BLAS threads this process starts with (threadpoolctl), "env": the thread variables set}: `locked`
    leaves BLAS alone, so an OPENBLAS_NUM_THREADS=1 left in the shell silently makes it locked-1t."""
    from threadpoolctl import threadpool_info

    counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
    return {"threads": max(counts) if counts else 1, "env": {k: os.environ[k] for k in names if k in os.environ}}


def two_at_once(n=1024, reps=20):
    """How fast two one-thread GEMM streams run side by side, as a fraction of one alone (1.0: two free cores). The
    simulator gives each worker a core of its own; on a shared machine this says how far that holds right now."""
    import threading

    from threadpoolctl import threadpool_limits

    a = np.ones((256, n), np.float32)
    w = np.ones((n, n), np.float32)

    def stream(out, k):
        t = time.perf_counter()
        for _ in range(reps):
            a @ w
        out[k] = time.perf_counter() - t

    # the limit is the process's, so it is set once, here: two threads that each entered and left threadpool_limits
    # would race, and the last to leave could restore the other's 1 -- BLAS then stayed on one thread for the rest of
    # the benchmark, and `locked` measured the same as locked-1t (runs of Dec 2 before 12:30)
    with threadpool_limits(1, user_api="blas"):
        alone = [0.0]
        stream(alone, 0)
        pair = [0.0, 0.0]
        threads = [threading.Thread(target=stream, args=(pair, k)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return alone[0] / max(pair)


def ray_link(nbytes, repeats=20):
    """(latency s, bandwidth bytes/s, per-call s) of a hop between two Ray actors on this machine, from medians of
    round trips: an empty call (the per-call cost), and a call that takes an array made by the other actor, of 1 KB
    (call + latency) and of nbytes (call + latency + nbytes / bandwidth)."""
    import ray

    @ray.remote(num_cpus=0)
    class Echo:
        def make(self, n):
            return np.ones(n // 4, np.float32)

        def take(self, a):
            return 0 if a is None else a.nbytes

    a, b = Echo.remote(), Echo.remote()
    ray.get([a.take.remote(None), b.take.remote(None)])

    def round_trip(size):
        times = []
        for _ in range(repeats):
            ref = a.make.remote(size) if size else None
            if ref is not None:
                ray.wait([ref])
            t = time.perf_counter()
            ray.get(b.take.remote(ref))
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    call, small, big = round_trip(0), round_trip(1024), round_trip(nbytes)
    for actor in (a, b):
        ray.kill(actor)
    return max(small - call, 0.0), (nbytes - 1024) / max(big - small, 1e-6), call


# ---- simulating ------------------------------------------------------------------------------------------------------
def simulated(configs, prof, tick_s, ray):
    """{config: simulated seconds per step} from the profiles."""
    from minidni.dni import Link, simulate
    from minidni.dni import schedules as S

    out = {}
    for c in configs:
        if c in ("locked", "locked-1t"):
            sim = simulate(S.locked(), prof[c], n_workers=1, n_batches=16)
        elif c == "pipe-seq":
            sim = simulate(S.pipelined(), prof["pipelined-1t"], n_workers=1, n_batches=16)
        elif c == "pipe-conc":
            sim = simulate(S.pipelined(), prof["pipelined-1t"], n_workers=2, n_batches=16, sync="tick",
                           dispatch=0.0, tick_overhead=tick_s)     # tick_s holds the runner's bookkeeping too
        else:                                            # pipe-ray: dataflow over the measured actor hop
            latency, bandwidth, _, tick_ray, cpu_ray = ray    # the driver: tick_ray per tick, spread over its events
            per_tick = len(S.pipelined().batch_events(0, 2))
            # on one machine the actors share the cores with Ray's own processes: per tick, the CPU Ray burns on a
            # tiny net, plus the copies of what crosses per tick (h and dh between the actors, the batch from the
            # driver to module 0), each costing its measured time on the hop, which is CPU work within one machine
            prof_p = prof["pipelined-1t"]
            copies = (sum(prof_p.nbytes.values()) + batch_bytes()) / bandwidth
            shared = {} if cpu_ray is None else {"cores": os.cpu_count(), "background": cpu_ray + copies}
            sim = simulate(S.pipelined(), prof["pipelined-1t"], n_workers=2, n_batches=16, dispatch=0.0,
                           link=Link(latency, bandwidth), submit=tick_ray / per_tick, **shared)
        out[c] = sim
    return out


def batch_bytes():
    """Bytes of one batch as the driver sends it to module 0's actor: the MNIST rows x (B, 784) and their labels."""
    x, y = first_rows(B)
    return x.nbytes + y.nbytes


def extend(costs, n_from, n_to):
    """Costs of an n_to-module net of identical middle modules from an n_from-module profile (n_from >= 3): module 0
    and the top keep theirs, every middle module takes module 1's."""
    out = {}
    for (kind, m), s in costs.items():
        if m == 0:
            out[(kind, 0)] = s
        elif m == n_from - 1:
            out[(kind, n_to - 1)] = s
        elif m == 1:
            out.update({(kind, k): s for k in range(1, n_to - 1)})
    return out


def profile_together(make_net, scheds, n_batches, seed):
    """{schedule name: Profile}: one sequential Runner (one BLAS thread) per schedule, each on a fresh net from
    make_net(), fed one batch in turn, round-robin, so that a drift of a shared machine hits all schedules alike."""
    from minidni.dni import Runner
    from minidni.dni.simulate import Profile, transfer_bytes

    runs = {name: (make_net(), s) for name, s in scheds.items()}
    runs = {name: (net, Runner(net, s, mnist_batches(seed), blas_threads=1)) for name, (net, s) in runs.items()}
    walls = dict.fromkeys(runs, 0.0)
    for _, runner in runs.values():
        advance(runner, 1)                               # warm-up
        runner.trace.spans.clear()
    for _ in range(n_batches):
        for name, (_, runner) in runs.items():
            t = time.perf_counter()
            advance(runner, 1)
            walls[name] += time.perf_counter() - t
    for name, (_, runner) in runs.items():               # drain: the last batches' events (and, with few batches,
        t = time.perf_counter()                          # a deep pipeline's top module) are in the profile too
        runner.flush()
        walls[name] += time.perf_counter() - t
    x = first_rows(B)[0]
    return {name: Profile.from_spans(r.trace.spans, walls[name], transfer_bytes(net, x), "median", 1,
                                     repr(scheds[name])) for name, (net, r) in runs.items()}


def forecast(predict_width, n_batches):
    """The simulated speed-up of dni and pipelined over locked backprop on one machine, on N machines at each
    bandwidth; rows of dicts. The baseline is the locked schedule of the same cut on one worker."""
    from minidni.dni import simulate
    from minidni.dni import schedules as S
    from minidni.dni.simulate import Profile, activation_bytes

    scheds = {"locked": S.locked(), "dni": S.dni(), "pipelined": S.pipelined()}
    rows = []
    for n_mod in (2, 4, 6):                              # mnist: one profile per cut (6 weight layers: <= 6 modules)
        prof = profile_together(lambda: build_net("mnist", MNIST_CUTS[n_mod], seed=2), scheds, n_batches, seed=2)
        one = simulate(S.locked(), prof["locked"], n_workers=1, n_batches=24).per_batch
        machines = [m for m in MACHINES if min(m, 6) == n_mod] or [n_mod]
        rows += forecast_rows("mnist 784-256x5-10", n_mod, machines, prof, scheds, one)
    # wide: a 3-module profile (bottom, middle, top) of one hidden layer of `predict_width` each, extended to N
    wide3 = profile_together(lambda: build_wide_chain(predict_width, 3), scheds, n_batches, seed=3)
    for n_mod in MACHINES:
        prof = {name: Profile(extend(p.costs, 3, n_mod), activation_bytes(B, [predict_width] * (n_mod - 1)),
                              p.overhead, blas_threads=1, schedule=p.schedule) for name, p in wide3.items()}
        one = simulate(S.locked(), prof["locked"], n_workers=1, n_batches=24).per_batch
        rows += forecast_rows(f"wide {n_mod} x {predict_width}", n_mod, [n_mod], prof, scheds, one)
    return rows


def build_wide_chain(width, n_modules, seed=2):
    """784 -> width x n_modules -> 10, one hidden layer per module (the top one also has the output layer)."""
    from minidni.dni import DNINet, Synthesizer, adam, mlp_modules

    modules = mlp_modules(D_IN, width, D_OUT, n_modules, split_after=list(range(n_modules - 1)), rng=seed)
    return DNINet(modules, [Synthesizer(width, D_OUT, rng=seed + 1 + k) for k in range(n_modules - 1)],
                  optimizer=adam(1e-3))


def forecast_rows(label, n_mod, machines, prof, scheds, one):
    """One row per (machines, bandwidth): each schedule's simulated time per batch and speed-up over `one`, the
    seconds per batch of locked backprop on one machine."""
    from minidni.dni import Link, simulate

    rows = []
    for n_machines in machines:
        free = {k: simulate(s, prof[k], n_workers=n_mod, n_batches=24).per_batch for k, s in scheds.items()}
        for gbit in GBITS:
            link = Link.gbit(gbit, LATENCY)
            row = {"net": label, "machines": n_machines, "modules": n_mod, "gbit_s": gbit,
                   "locked_1_machine_ms": 1e3 * one}
            for k, s in scheds.items():
                sim = simulate(s, prof[k], n_workers=n_mod, n_batches=24, link=link)
                row[f"{k}_ms"] = 1e3 * sim.per_batch
                row[f"{k}_speedup"] = one / sim.per_batch
                row[f"{k}_speedup_free_link"] = one / free[k]
                row[f"{k}_comm_ms_per_batch"] = 1e3 * sim.comm_seconds / sim.n_batches
            rows.append(row)
    return rows


# ---- the driver ------------------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=7)
    ap.add_argument("--sample-s", type=float, default=0.6, help="target seconds of one sample")
    ap.add_argument("--settle", type=float, default=0.3, help="seconds of pause before each sample")
    ap.add_argument("--wide-width", type=int, default=2048, help="units per hidden layer of the wide net")
    ap.add_argument("--wide-layers", type=int, default=2, help="hidden layers per module of the wide net")
    ap.add_argument("--bottleneck-width", type=int, default=256, help="units of the bottleneck net's narrow layers "
                    "(its wide ones: --wide-width x --wide-layers per module)")
    ap.add_argument("--predict-width", type=int, default=4096, help="units per module of the forecast's wide net")
    ap.add_argument("--profile-batches", type=int, default=6, help="batches per schedule in the forecast's profiles")
    ap.add_argument("--statistic", choices=["mean", "median"], default="mean", help="the event cost of the "
                    "validation's profiles: the mean duration (what a long run pays, stalls of a busy machine "
                    "included) or the median (an undisturbed event's; the forecast always uses the median)")
    ap.add_argument("--nets", nargs="+", default=["mnist", "wide", "bottleneck"],
                    choices=["mnist", "wide", "bottleneck"])
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray runner")
    ap.add_argument("--no-forecast", action="store_true", help="skip the 2/4/8-machine forecast")
    ap.add_argument("--quick", action="store_true", help="3 samples of ~0.1 s, wide net 512 x 2, forecast width 512")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    if args.quick:                                       # smaller defaults; a value given on the command line stays
        quick = dict(samples=3, sample_s=0.1, settle=0.05, profile_batches=3, wide_width=512, wide_layers=1,
                     predict_width=512, bottleneck_width=64)
        for name, value in quick.items():
            if getattr(args, name) == ap.get_default(name):
                setattr(args, name, value)
    t_start = time.perf_counter()
    nets = {"mnist": "mnist", "wide": f"wide:{args.wide_width}:{args.wide_layers}",
            "bottleneck": f"bottleneck:{args.wide_width}:{args.wide_layers}:{args.bottleneck_width}"}
    RayRunner, ray_why = (None, "--no-ray") if args.no_ray else ray_runner_class()
    configs = [c for c in CONFIGS if c != "pipe-ray" or RayRunner is not None]
    if RayRunner is None:
        print(f"pipe-ray: SKIPPED: {ray_why}")
    ray_started = False
    if RayRunner is not None:
        import ray

        from minidni.dni.ray_runner import start_local_ray

        if not ray.is_initialized():
            start_local_ray(num_cpus=os.cpu_count())
            ray_started = True
    load_start = os.getloadavg()[0]
    blas = blas_state()
    env = ", ".join(f"{k}={v}" for k, v in blas["env"].items()) or "no thread variables set"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; numpy {np.__version__}; "
          f"load average {load_start:.2f} at start; BLAS {blas['threads']} threads ({env})")
    if blas["threads"] < (os.cpu_count() or 1):
        print(f"WARNING: BLAS starts with {blas['threads']} thread(s) on {os.cpu_count()} cores, so `locked` (BLAS "
              "left alone) measures the same as locked-1t; unset " + (", ".join(blas["env"]) or "the limit") +
              " to compare with BLAS on every core")

    pair = two_at_once()
    print(f"two one-thread GEMM streams side by side run at {pair:.2f} of one alone's speed each (1.00: two free "
          "cores; the simulator assumes a core per worker)")
    tick_s = tick_overhead(100 if args.quick else 300)
    ray_tick = ray_cpu = None
    if RayRunner is not None:
        ray_tick, ray_cpu = ray_tick_overhead(50 if args.quick else 200)
        cpu_text = "not measured: no psutil" if ray_cpu is None else f"{1e3 * ray_cpu:.3f} CPU-ms in all its processes"
        print(f"RayRunner's own time per tick (tiny net): {1e3 * ray_tick:.3f} ms, {cpu_text} (the simulator takes "
              "that CPU from the actors' cores)")
    print(f"ConcurrentRunner's own time per tick (tiny net, wall - critical path): {1e3 * tick_s:.3f} ms")
    if blas_state()["threads"] != blas["threads"]:
        raise RuntimeError(f"bench_distributed: BLAS had {blas['threads']} threads at the start and "
                           f"{blas_state()['threads']} after the overhead measurements: a thread limit leaked, and "
                           "`locked` would not be BLAS on every core")
    results, tables = [], {}
    try:
        for key in args.nets:
            net = nets[key]
            width = net_widths(net)[middle_cut(net)[0]]     # of the cut: what crosses between the modules
            ray = None
            if RayRunner is not None:
                ray = ray_link(B * width * 4) + (ray_tick, ray_cpu)
                print(f"{key}: Ray hop on this machine: call {1e3 * ray[2]:.3f} ms, latency {1e3 * ray[0]:.3f} ms, "
                      f"{B * width * 4 / 1e6:.2f} MB at {ray[1] * 8 / 1e9:.2f} Gbit/s")
            meas, prof = measure(net, configs, args.samples, args.sample_s, args.settle, args.statistic)
            sims = simulated(configs, prof, tick_s, ray)
            base, base1 = meas["locked"]["s_per_step"], meas["locked-1t"]["s_per_step"]
            title = (f"{key}: {net_label(net)}, batch {B}, two modules for the pipelines (cut after hidden layer "
                     f"{middle_cut(net)[0]}, {width} wide), cDNI linear synthesizer; median of {args.samples} samples")
            print("\n" + title)
            print(f"  {'configuration':<12}{'measured ms':>12}{'spread':>8}{'simulated ms':>14}{'error':>8}"
                  f"{'vs locked':>11}{'vs 1t':>7}{'sim vs 1t':>11}")
            rows = []
            for c in configs:
                m, s = meas[c]["s_per_step"], sims[c].per_batch
                row = {"net": key, "net_spec": net, "config": c, **meas[c], "simulated_s_per_step": s,
                       "error": s / m - 1, "speedup_vs_locked": base / m, "speedup_vs_locked_1t": base1 / m,
                       "simulated_speedup_vs_locked_1t": sims["locked-1t"].per_batch / s}
                rows.append(row)
                print(f"  {c:<12}{1e3 * m:>12.2f}{100 * row['spread']:>7.0f}%{1e3 * s:>14.2f}"
                      f"{100 * row['error']:>+7.0f}%{base / m:>10.2f}x{base1 / m:>6.2f}x"
                      f"{row['simulated_speedup_vs_locked_1t']:>10.2f}x")
            ideal, m0, m1 = ideal_pipeline(net)
            print(f"  napkin: module 0 {m0 / 1e9:.2f} GFLOP (with its synthesizer), module 1 {m1 / 1e9:.2f} GFLOP per "
                  f"batch: a perfect 2-worker pipeline is at most {ideal:.2f}x locked backprop on one thread")
            tables.setdefault(key, {})["ideal_pipeline_vs_locked_1t"] = ideal
            worst = max(abs(r["error"]) for r in rows)
            print(f"  worst simulator error {100 * worst:.0f}% (target 20%); spread = max/min - 1 over the samples")
            print("  profile (pipelined, 1 BLAS thread):\n    " + str(prof["pipelined-1t"]).replace("\n", "\n    "))
            results += rows
            tables[key] |= {"profiles": {k: {"costs_ms": {f"{kk[0]}@{kk[1]}": 1e3 * v for kk, v in p.costs.items()},
                                            "overhead_ms": 1e3 * p.overhead} for k, p in prof.items()},
                           "ray_link": None if ray is None else {"latency_s": ray[0], "bandwidth_Bps": ray[1],
                                                                  "call_s": ray[2], "runner_tick_s": ray[3],
                                                                  "runner_tick_cpu_s": ray[4]}}
    finally:
        if ray_started:
            import ray as ray_module

            ray_module.shutdown()

    fc = []
    if not args.no_forecast:
        fc = forecast(args.predict_width, args.profile_batches)
        print(f"\nforecast: speed-up over locked backprop on ONE machine (one core, this machine's profile), modules "
              f"on N machines, link latency {1e6 * LATENCY:.0f} us (free link in brackets)")
        print(f"  {'net':<22}{'machines':>9}{'modules':>8}{'Gbit/s':>7}{'locked N':>10}{'dni':>14}"
              f"{'pipelined':>16}{'comm ms/batch':>15}")
        for r in fc:
            print(f"  {r['net']:<22}{r['machines']:>9}{r['modules']:>8}{r['gbit_s']:>7}"
                  f"{r['locked_speedup']:>9.2f}x{r['dni_speedup']:>7.2f}x ({r['dni_speedup_free_link']:.2f})"
                  f"{r['pipelined_speedup']:>8.2f}x ({r['pipelined_speedup_free_link']:.2f})"
                  f"{r['pipelined_comm_ms_per_batch']:>15.2f}")
        print("  where communication eats the gain (a schedule keeps < 80% of its free-link speed-up):")
        eaten = [(k, r) for r in fc for k in ("dni", "pipelined")
                 if r[f"{k}_speedup"] < 0.8 * r[f"{k}_speedup_free_link"]]
        for k, r in eaten:
            print(f"    {k:<9} {r['net']}, {r['machines']} machines at {r['gbit_s']} Gbit/s: {r[f'{k}_speedup']:.2f}x "
                  f"of {r[f'{k}_speedup_free_link']:.2f}x  ({r[f'{k}_comm_ms_per_batch']:.2f} ms of link per batch, "
                  f"{r[f'{k}_ms']:.2f} ms per batch)")
        if not eaten:
            print("    nowhere in this grid")
        slow = [r for r in fc if r["locked_speedup"] < 0.8]
        print("  locked backprop spread over the machines (model parallel) loses > 20% to the link: " +
              ("; ".join(f"{r['net']} on {r['machines']} at {r['gbit_s']} Gbit/s ({r['locked_speedup']:.2f}x)"
                         for r in slow) or "nowhere"))

    load_end = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.out / f"distributed-{platform.node() or 'host'}-{stamp}.json"
    path.write_text(json.dumps({
        "command": "python benchmarks/bench_distributed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cores": os.cpu_count(), "processor": platform.processor(), "python": platform.python_version(),
                    "numpy": np.__version__, "load_start": load_start, "load_end": load_end,
                    "blas_threads": blas["threads"], "blas_threads_end": blas_state()["threads"],
                    "thread_env": blas["env"]},
        "batch": B, "wide": nets["wide"], "bottleneck": nets["bottleneck"], "predict_width": args.predict_width, "ray": ray_why or "used",
        "statistic": args.statistic,
        "tick_overhead_s": tick_s, "ray_tick_overhead_s": ray_tick, "ray_tick_cpu_s": ray_cpu, "two_at_once": pair, "results": results,
        "details": tables, "forecast": fc,
        "wall_s": time.perf_counter() - t_start}, indent=1))
    print(f"\nload average {load_end:.2f} at the end\nwrote {path}  ({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())

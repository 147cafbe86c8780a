"""LSTM benchmark: steps/s of one truncated-BPTT training step, minidni against PyTorch, at the paper's sizes.

One step (Jaderberg et al. 2016, Sec. 3.2: an LSTM trained by truncated BPTT over windows of T steps): from the state
carried over from the previous window (detached), forward T steps, a linear readout H -> I on every output and the
mean softmax cross-entropy over all T B outputs, backward, one Adam step (lr 1e-3). Sizes: Copy (input 10, hidden 256,
batch 256) and Penn Treebank characters (input 50, hidden 1024, batch 32 and 256), at T = 5 and T = 20. Engines:

  minidni           nn.LSTM: the window as one op (ops.lstm), Numba kernels
  minidni-cell      nn.LSTM(per_step=True): T ops.lstm_cell steps, Numba kernels (the simple variant)
  torch             torch.nn.LSTM, PyTorch's fused CPU LSTM
  torch-cell        a torch.nn.LSTMCell loop over the T steps

All float32. Each engine runs in a worker process of its own, driven round-robin (bench_engine.measure: every
sample times a few steps of one engine while the others idle, after a settle pause); we report the median steps/s
over the samples and the ratio to torch.nn.LSTM. PyTorch gets as many threads as NumPy's BLAS has (`--threads N`
sets both). On a shared machine `--threads 1 --clock cpu` times each worker's CPU time instead of the elapsed time,
so the time a worker spends descheduled by other people's jobs is not counted.

Also: the cost of a DNI step over a BPTT step at the same T (dni.RecurrentLearner, Copy size, `--no-dni` skips it),
and with `--kernels` only the gate kernels (every Numba version and the NumPy reference, checked, then timed).

The GEMM bound: the step's matrix products alone, the same shapes, timed back to back with NumPy (the input projection
(T B, I) x (I, 4H), T recurrent products (B, H) x (H, 4H), the readout, and their backward: T products dz W_h^T,
dW_h, dW_x and the readout's two). No engine that calls this BLAS for them beats it; "% bound" is the fraction of it
each engine reaches, and what is missing is the engine's own cost (gates, loss, Adam, the graph).

    python benchmarks/bench_lstm.py                           # full run, writes benchmarks/results/lstm-*.json
    python benchmarks/bench_lstm.py --threads 1 --clock cpu   # the same, robust to a busy machine
    python benchmarks/bench_lstm.py --kernels                 # the gate kernels alone
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
from bench_engine import measure  # noqa: E402

SIZES = {"copy": (10, 256, 256), "ptb-b32": (50, 1024, 32), "ptb-b256": (50, 1024, 256)}   # (I, H, B)
ENGINES = ("minidni", "minidni-cell", "torch", "torch-cell")


def blas_threads():
    from threadpoolctl import threadpool_info

    counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(counts) if counts else os.cpu_count()


def _data(T, I, B):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    labels = rng.integers(0, I, T * B)
    return x, labels


# ---- napkin math ----------------------------------------------------------------------------------------------------
def step_flops(T, I, H, B):
    """Matmul FLOPs of one step: forward X W_x, T h W_h, readout; backward T dz W_h^T, dW_h, dW_x, readout dW, dx."""
    fwd = 2 * T * B * I * 4 * H + T * 2 * B * H * 4 * H + 2 * T * B * H * I
    bwd = T * 2 * B * 4 * H * H + 2 * T * B * H * 4 * H + 2 * T * B * I * 4 * H + 2 * (2 * T * B * H * I)
    return fwd + bwd


def gemm_gflops(n, clock, reps=5):
    """The machine's float32 GEMM rate: an n^3 product (NumPy), median of reps, timed with `clock`."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    c = np.empty_like(a)
    np.matmul(a, a, out=c)
    times = []
    for _ in range(reps):
        t0 = clock()
        np.matmul(a, a, out=c)
        times.append(clock() - t0)
    return 2 * n ** 3 / float(np.median(times)) / 1e9


def gemm_bound_steps_per_s(T, I, H, B, reps=5, clock=time.perf_counter):
    """One step's matrix products alone (NumPy, float32, the shapes above), median over reps: steps/s."""
    rng = np.random.default_rng(0)
    f = np.float32
    X, W_x, W_h = rng.random((T * B, I), f), rng.random((I, 4 * H), f), rng.random((H, 4 * H), f)
    hs, W_o = rng.random((T * B, H), f), rng.random((H, I), f)
    dZ, dY = rng.random((T * B, 4 * H), f), rng.random((T * B, I), f)
    zh = np.empty((B, 4 * H), f)
    dh = np.empty((B, H), f)

    def matmuls():
        np.matmul(X, W_x)
        for t in range(T):
            np.matmul(hs[t * B:(t + 1) * B], W_h, out=zh)
        np.matmul(hs, W_o)
        np.matmul(hs.T, dY), np.matmul(dY, W_o.T)
        for t in range(T):
            np.matmul(dZ[t * B:(t + 1) * B], W_h.T, out=dh)
        np.matmul(hs.T, dZ), np.matmul(X.T, dZ)

    matmuls()
    times = []
    for _ in range(reps):
        t0 = clock()
        matmuls()
        times.append(clock() - t0)
    return 1 / float(np.median(times))


# ---- the engines: each returns a `step()` closure doing one training step -------------------------------------
def make_minidni(T, I, H, B, per_step):
    import minidni as md
    from minidni import nn, ops, optim

    md.set_backend("numba")
    lstm = nn.LSTM(I, H, rng=0, per_step=per_step)
    readout = nn.Linear(H, I, rng=1)
    opt = optim.Adam(lstm.parameters() + readout.parameters(), lr=1e-3)
    x, labels = _data(T, I, B)
    xt = md.Tensor(x)
    state = [None]

    def step():
        outputs, (h, c) = lstm(xt, state[0])
        loss = ops.cross_entropy(readout(ops.concat(outputs, axis=0)), labels)   # (T B, H) -> (T B, I)
        opt.zero_grad()
        loss.backward()
        opt.step()
        state[0] = (h.detach(), c.detach())
        return loss

    return step


def make_torch(T, I, H, B, cell):
    import torch

    torch.manual_seed(0)
    lstm = torch.nn.LSTMCell(I, H) if cell else torch.nn.LSTM(I, H)
    readout = torch.nn.Linear(H, I)
    opt = torch.optim.Adam(list(lstm.parameters()) + list(readout.parameters()), lr=1e-3)
    x, labels = _data(T, I, B)
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
    loss_fn = torch.nn.CrossEntropyLoss()
    state = [(torch.zeros(B, H), torch.zeros(B, H))]

    def step():
        h, c = state[0]
        if cell:
            outs = []
            for t in range(T):
                h, c = lstm(xt[t], (h, c))
                outs.append(h)
            out = torch.stack(outs)
        else:
            out, (h, c) = lstm(xt, (h[None], c[None]))
            h, c = h[0], c[0]
        loss = loss_fn(readout(out.reshape(T * B, H)), yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state[0] = (h.detach(), c.detach())
        return loss

    return step


def make_tbptt(T, I, H, B, method):
    """One window of truncated BPTT by dni.RecurrentLearner (readout H -> 8 bits, the bit loss, Adam), "bptt" or
    "dni" (the recurrent synthesizer at every boundary, trained on its bootstrapped target). An episode of 4 T steps
    is 4 windows; step() runs one episode, so steps/s of these engines are episodes/s."""
    import minidni as md
    from minidni import dni, nn

    md.set_backend("numba")
    lstm, readout = nn.LSTM(I, H, rng=0), nn.Linear(H, 8, rng=1)
    synth = dni.RecurrentSynthesizer(H, rng=2) if method == "dni" else None
    learner = dni.RecurrentLearner(lstm, readout, dni.tbptt(T, method), synth)
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((4 * T, B, I)).astype(np.float32)
    targets = rng.integers(0, 2, (4 * T, B, 8)).astype(np.float32)
    mask = np.ones((4 * T, B), np.float32)
    return lambda: learner.train_episode(inputs, targets, mask)


def bench_kernels(sizes, reps=30):
    """The gate kernels alone, llm.c style: each Numba version first checked against the NumPy reference (float32),
    then timed (best of `reps` calls, microseconds; the best, since the machine is shared), forward and backward."""
    from minidni.kernels import cpu, reference

    rows = []
    print("\ngate kernels, float32, us per call (best of %d), one (B, H) step" % reps)
    for size in sizes:
        _, H, B = SIZES[size]
        r = np.random.default_rng(0)
        zx, zh = (2 * r.standard_normal((B, 4 * H)).astype(np.float32) for _ in range(2))
        b = r.standard_normal(4 * H).astype(np.float32)
        c, dh, dc = (r.standard_normal((B, H)).astype(np.float32) for _ in range(3))
        want = reference.lstm_gates_forward(zx, zh, b, c)
        want_b = reference.lstm_gates_backward(want[2], c, want[1], dh, dc)
        fwd = {"reference": lambda: reference.lstm_gates_forward(zx, zh, b, c)}
        bwd = {"reference": lambda: reference.lstm_gates_backward(want[2], c, want[1], dh, dc)}
        for v in sorted(cpu.LSTM_GATES_FORWARD_VERSIONS):
            got = cpu.lstm_gates_forward(zx, zh, b, c, _version=v)
            got_b = cpu.lstm_gates_backward(want[2], c, want[1], dh, dc, _version=v)
            for a, e in zip(got + got_b, want + want_b):
                np.testing.assert_allclose(a, e, rtol=1e-5, atol=2e-6, err_msg=f"version {v}")
            fwd[f"version {v}"] = lambda v=v: cpu.lstm_gates_forward(zx, zh, b, c, _version=v)
            bwd[f"version {v}"] = lambda v=v: cpu.lstm_gates_backward(want[2], c, want[1], dh, dc, _version=v)
        print(f"  {size} (B {B}, H {H}):" + "".join(f"  {name} {_best_us(fwd[name], reps):.0f} / "
                                                   f"{_best_us(bwd[name], reps):.0f}" for name in fwd))
        rows.append({"size": size, "B": B, "H": H, **{f"{name} forward_us": _best_us(fwd[name], reps)
                                                       for name in fwd},
                     **{f"{name} backward_us": _best_us(bwd[name], reps) for name in bwd}})
    return rows


def _best_us(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * min(times)


def worker():
    """Worker process (bench_engine's protocol): build one engine from 'name T:I:H:B bn', then time steps on request."""
    name, spec, _ = sys.stdin.readline().split()
    T, I, H, B, threads, cpu_clock = map(int, spec.split(":"))
    if threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads, user_api="blas")   # stays in force for the life of this process
    if name.startswith("torch"):
        import torch

        torch.set_num_threads(blas_threads())
        step = make_torch(T, I, H, B, cell=name == "torch-cell")
    elif name.startswith("tbptt-"):
        step = make_tbptt(T, I, H, B, name.split("-")[1])
    else:
        step = make_minidni(T, I, H, B, per_step=name == "minidni-cell")
    clock = time.process_time if cpu_clock else time.perf_counter
    print("ready", flush=True)
    for line in sys.stdin:   # bench_engine.serve's protocol, with the clock chosen by --clock
        n = int(line)
        t0 = clock()
        for _ in range(n):
            step()
        print(clock() - t0, flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--T", type=int, nargs="+", default=[5, 20])
    ap.add_argument("--samples", type=int, default=7)
    ap.add_argument("--sample-s", type=float, default=0.5, help="about this many seconds of steps per sample")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--settle", type=float, default=0.3, help="seconds of pause before each sample")
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    ap.add_argument("--hidden", type=int, default=None, help="override the hidden size (smoke tests)")
    ap.add_argument("--threads", type=int, default=0, help="BLAS (and so torch) threads per worker; 0: BLAS's default")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: elapsed time; cpu: the worker's CPU time (with --threads 1, robust to other "
                         "processes on a shared machine: time spent descheduled is not counted)")
    ap.add_argument("--ceiling-n", type=int, default=2048, help="size of the square GEMM that measures the ceiling")
    ap.add_argument("--no-dni", action="store_true", help="skip the DNI-over-BPTT cost (Copy size only)")
    ap.add_argument("--kernels", action="store_true", help="only time the gate kernels, every version and the reference")
    ap.add_argument("--quick", action="store_true", help="3 samples")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker()
    if args.quick:
        args.samples = 3
    try:
        import torch
    except ImportError:
        torch = None
        args.engines = [e for e in args.engines if not e.startswith("torch")]
    import numba
    from threadpoolctl import threadpool_limits

    if args.kernels:
        return bench_kernels(args.sizes)

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    with threadpool_limits(args.threads or None, user_api="blas"):
        ceiling = gemm_gflops(args.ceiling_n, clock)
    threads = args.threads or blas_threads()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} BLAS threads "
          f"(torch gets the same); numpy {np.__version__}, numba {numba.__version__}, "
          f"torch {torch.__version__ if torch else 'absent'}")
    print(f"float32 GEMM ceiling (numpy, {args.ceiling_n}^3, {args.clock} clock): {ceiling:.1f} GFLOP/s")
    from minidni.memory import malloc_env, policy

    print(f"allocator: {policy()['why']}; every engine's worker runs with {malloc_env()}")
    if args.clock == "cpu" and threads != 1:
        print("note: --clock cpu with more than one thread counts the threads' spinning too")
    results = []
    for size in args.sizes:
        I, H, B = SIZES[size]
        H = args.hidden or H
        for T in args.T:
            flops = step_flops(T, I, H, B)
            with threadpool_limits(args.threads or None, user_api="blas"):
                bound = gemm_bound_steps_per_s(T, I, H, B, clock=clock)
            per_sample = max(1, round(args.sample_s * bound / 2))   # engines run at most ~1/2 of the bound
            med, raw = measure(args.engines, f"{T}:{I}:{H}:{B}:{args.threads}:{int(args.clock == 'cpu')}",
                               False, args.samples, per_sample, args.warmup,
                               args.settle, script=__file__)
            print(f"\n{size}: input {I}, hidden {H}, batch {B}, T = {T}  ({flops / 1e9:.2f} GFLOP of products per "
                  f"step; median of {args.samples} samples x {per_sample} steps)")
            print(f"  GEMM bound (the step's matmuls alone, NumPy): {bound:.1f} steps/s "
                  f"({100 * bound * flops / (ceiling * 1e9):.0f}% of the {args.ceiling_n}^3 GEMM rate)")
            print(f"  {'engine':<14}{'steps/s':>9}{'vs torch':>10}{'% bound':>9}{'spread':>9}")
            for name, rate in med.items():
                vs = f"{rate / med['torch']:.2f}x" if "torch" in med else "-"
                spread = (max(raw[name]) - min(raw[name])) / rate
                print(f"  {name:<14}{rate:>9.2f}{vs:>10}{100 * rate / bound:>8.0f}%{100 * spread:>8.0f}%")
                results.append({"size": size, "input": I, "hidden": H, "batch": B, "T": T, "engine": name,
                                "steps_per_s": rate, "samples": raw[name],
                                "vs_torch": rate / med["torch"] if "torch" in med else None,
                                "gemm_bound_steps_per_s": bound, "bound_fraction": rate / bound,
                                "gflop_per_step": flops / 1e9})

    dni_cost = []
    if not args.no_dni and "copy" in args.sizes:
        I, H, B = SIZES["copy"]
        H = args.hidden or H
        print("\nthe cost of DNI over BPTT (dni.RecurrentLearner, copy size, episodes of 4 windows of T steps)")
        for T in args.T:
            per_sample = max(1, round(args.sample_s * gemm_bound_steps_per_s(T, I, H, B, clock=clock) / 8))
            med, raw = measure(["tbptt-bptt", "tbptt-dni"], f"{T}:{I}:{H}:{B}:{args.threads}:"
                               f"{int(args.clock == 'cpu')}", False, args.samples, per_sample, args.warmup,
                               args.settle, script=__file__)
            ratio = med["tbptt-bptt"] / med["tbptt-dni"]
            print(f"  T = {T}: BPTT {med['tbptt-bptt']:.2f}, DNI {med['tbptt-dni']:.2f} episodes/s: a DNI step costs "
                  f"{ratio:.2f}x a BPTT step")
            dni_cost.append({"T": T, "bptt_episodes_per_s": med["tbptt-bptt"], "dni_episodes_per_s": med["tbptt-dni"],
                             "samples": raw, "dni_over_bptt_cost": ratio})

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"lstm-{platform.node() or 'host'}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({
        "command": "python benchmarks/bench_lstm.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cores": os.cpu_count(), "blas_threads": threads, "processor": platform.processor(),
                    "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
                    "torch": torch.__version__ if torch else None, "allocator": policy(),
                    "worker_env": malloc_env()},
        "clock": args.clock, "gemm_gflops": ceiling, "results": results, "dni_cost": dni_cost}, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

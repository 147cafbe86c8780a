"""Engine benchmark: training steps per second of the paper's fully connected MNIST net on this machine.

The net is Jaderberg et al. 2016's feed-forward MNIST model (Sec. 3.3, appendix A): 784 -> 256 x k -> 10, ReLU,
optionally batch norm after every hidden linear layer, batch 256, Adam. We train it on random MNIST-shaped data with

  minidni-numba   the engine on the Numba kernels (the default backend)
  minidni-numba-fused   the same net built with nn.mlp(..., fused=True): each ReLU fused into the linear or
                  batch-norm op before it (ops.linear_relu, ops.batch_norm_relu; the same numbers bit for bit)
  minidni-numpy   the engine on the NumPy reference kernels (MINIDNI_BACKEND=numpy)
  numpy-loop      a plain hand-written NumPy forward/backward/Adam, no autodiff (what "no engine" costs)
  torch / torch-fused   PyTorch CPU eager with its default Adam and with Adam(fused=True), if torch is installed

Each engine runs in a worker process of its own (so no engine's thread pool -- OpenMP in PyTorch, OpenBLAS in NumPy
-- spins against another's), and the workers are driven round-robin in the same run: each sample times
`--steps-per-sample` steps of one engine while the others wait idle, after warm-up and after a pause (`--settle`,
0.3 s) that lets the previous engine's thread pool go to sleep: OpenBLAS and OpenMP threads busy-wait for a while
after their last call, and on 2 cores a pool still spinning slows the next engine (PyTorch's default Adam, with many
small parallel regions, lost 3x to it in our first runs). We report the median steps/s and
the ratio to PyTorch. The machine's float32 GEMM rate
(NumPy, 2048^3) is the ceiling: napkin math gives each step's FLOPs (forward 2*B*in*out per layer, backward 2x that
minus the input layer's dx), and the fraction of the ceiling a step achieves. A step's matrix products at batch 256 run
well below the 2048^3 rate, so we also time those products alone (same shapes, NumPy) -- the "GEMM-only bound" that
no engine calling this BLAS can beat -- and print each engine's fraction of it: what remains is the engine's own cost.
JIT compile time (cold cache, then warm cache) is measured in fresh subprocesses.

Every engine trains in float32, and that is checked, not assumed: each engine's `step` carries `step.arrays()`
(parameters, gradients, optimizer moments, activations) and its worker refuses to start unless all of them are
float32 after a step (`check_float32`; the numpy-loop baseline once ran in float64 because a float32 array divided
by np.sqrt(int), a float64 scalar, is float64 under NumPy 2's promotion rules).

    python benchmarks/bench_engine.py                 # full run, writes benchmarks/results/engine-*.json
    python benchmarks/bench_engine.py --quick         # fewer samples
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
B, D_IN, H, D_OUT = 256, 784, 256, 10


# ---- napkin math ---------------------------------------------------------------------------------------------------------
def step_flops(k):
    """Matmul FLOPs of one training step: forward x W, backward dW = x^T g and dx = g W^T (not for the input layer)."""
    dims = [D_IN] + [H] * k + [D_OUT]
    fwd = sum(2 * B * a * b for a, b in zip(dims[:-1], dims[1:]))
    dW = fwd
    dx = fwd - 2 * B * dims[0] * dims[1]
    return fwd + dW + dx


def gemm_gflops(n=2048, reps=5):
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = a.copy()
    c = np.empty_like(a)
    np.matmul(a, b, out=c)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / np.median(times) / 1e9


def gemm_only_steps_per_s(k, reps=30):
    """The bound no engine beats with these BLAS calls: one step's matmuls alone (the same shapes, transposes and
    skipped input-layer dx as a training step), timed back to back with NumPy; median over reps."""
    rng = np.random.default_rng(0)
    dims = [D_IN] + [H] * k + [D_OUT]
    Ws = [rng.random((a, b), dtype=np.float32) for a, b in zip(dims[:-1], dims[1:])]
    acts = [rng.random((B, d), dtype=np.float32) for d in dims]

    def matmuls():
        for i, W in enumerate(Ws):
            np.matmul(acts[i], W)
        for i in range(len(Ws) - 1, -1, -1):
            np.matmul(acts[i].T, acts[i + 1])  # dW = x^T g
            if i > 0:
                np.matmul(acts[i + 1], Ws[i].T)  # dx = g W^T

    for _ in range(5):
        matmuls()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        matmuls()
        times.append(time.perf_counter() - t)
    return 1 / float(np.median(times))


# ---- float32 everywhere --------------------------------------------------------------------------------------------
def check_float32(engine, arrays):
    """Raise unless every array (NumPy or torch) in {name: array} is float32: engines are compared at one precision.
    Returns how many arrays were checked."""
    if not arrays:
        raise AssertionError(f"{engine}: no arrays to check; the benchmark must verify that it trains in float32")
    bad = [f"{name} is {str(a.dtype).replace('torch.', '')}" for name, a in arrays.items()
           if str(a.dtype).replace("torch.", "") != "float32"]
    if bad:
        raise AssertionError(f"{engine}: every engine must train in float32, but after a step "
                             f"{len(bad)} of {len(arrays)} arrays are not: {', '.join(bad[:5])}"
                             + (", ..." if len(bad) > 5 else ""))
    return len(arrays)


def minidni_arrays(model, opt, x):
    """{name: array} of a minidni nn.Sequential after a step: parameters, gradients, Adam moments, and the
    activation after every layer (one extra forward pass in eval mode, outside any timing)."""
    from minidni.autograd import no_grad

    out = {f"param {n}": p.data for n, p in model.named_parameters()}
    out.update({f"grad {n}": p.grad for n, p in model.named_parameters() if p.grad is not None})
    out.update({f"adam {name}.{k}": b for name in ("m", "v") for k, b in enumerate(getattr(opt, name, []))})
    with no_grad():
        model.eval()
        h = x
        for i, layer in enumerate(model):
            h = layer(h)
            out[f"activation {i} ({type(layer).__name__})"] = h.data
        model.train()
    return out


def torch_arrays(model, opt, x):
    """The same for a torch nn.Sequential and its optimizer."""
    import torch

    out = {f"param {n}": p for n, p in model.named_parameters()}
    out.update({f"grad {n}": p.grad for n, p in model.named_parameters() if p.grad is not None})
    out.update({f"adam {k} of {n}": v for n, p in model.named_parameters() for k, v in opt.state.get(p, {}).items()
                if k != "step"})
    with torch.no_grad():
        model.eval()
        h = x
        for i, layer in enumerate(model):
            h = layer(h)
            out[f"activation {i} ({type(layer).__name__})"] = h
        model.train()
    return out


# ---- the engines: each returns a `step()` closure doing one full training step ------------------------------------------------
# (and `step.arrays()`, what check_float32 inspects after a step)
def make_minidni(k, bn, backend, x, y, fused=False):
    import minidni as md
    from minidni import nn, ops, optim

    md.set_backend(backend)  # one engine per worker process
    model = nn.mlp(D_IN, H, D_OUT, n_hidden=k, batch_norm=bn, rng=0, fused=fused)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    xt = md.Tensor(x)

    def step():
        loss = ops.cross_entropy(model(xt), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    step.arrays = lambda: minidni_arrays(model, opt, xt)
    return step


def make_numpy_loop(k, bn, x, y):
    """Hand-written forward/backward with in-place NumPy Adam: the plainest possible training step."""
    rng = np.random.default_rng(0)
    dims = [D_IN] + [H] * k + [D_OUT]
    # scale in float64, THEN cast: float32 / np.sqrt(a) (a float64 scalar) would be float64 under NumPy 2
    Ws = [(rng.uniform(-1, 1, (a, b)) / np.sqrt(a)).astype(np.float32) for a, b in zip(dims[:-1], dims[1:])]
    bs = [np.zeros(b, np.float32) for b in dims[1:]]
    gammas = [np.ones(H, np.float32) for _ in range(k)]
    betas = [np.zeros(H, np.float32) for _ in range(k)]
    params = Ws + bs + (gammas + betas if bn else [])
    ms = [np.zeros_like(p) for p in params]
    vs = [np.zeros_like(p) for p in params]
    t = [0]
    onehot = np.eye(D_OUT, dtype=np.float32)[y]
    last = {}

    def step():
        acts, caches = [x], []
        h = x
        for i in range(k):
            z = h @ Ws[i] + bs[i]
            if bn:
                mu = z.mean(0)
                var = z.var(0)
                inv = 1 / np.sqrt(var + 1e-5)
                zh = (z - mu) * inv
                caches.append((zh, inv))
                z = zh * gammas[i] + betas[i]
            h = np.maximum(z, 0)
            acts.append(h)
        logits = h @ Ws[k] + bs[k]
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        loss = -np.log(p[np.arange(B), y] + 1e-12).mean()
        g = (p - onehot) / B
        grads_W, grads_b, grads_gamma, grads_beta = [None] * (k + 1), [None] * (k + 1), [None] * k, [None] * k
        for i in range(k, -1, -1):
            grads_W[i] = acts[i].T @ g
            grads_b[i] = g.sum(0)
            if i == 0:
                break
            g = (g @ Ws[i].T) * (acts[i] > 0)
            if bn:
                zh, inv = caches[i - 1]
                grads_beta[i - 1] = g.sum(0)
                grads_gamma[i - 1] = (g * zh).sum(0)
                g = (gammas[i - 1] * inv / B) * (B * g - grads_beta[i - 1] - zh * grads_gamma[i - 1])
        grads = grads_W + grads_b + (grads_gamma + grads_beta if bn else [])
        last.update(acts=acts, probs=p, grads=grads, loss=loss)
        t[0] += 1
        c1, c2 = 1 - 0.9 ** t[0], 1 - 0.999 ** t[0]
        for p_, g_, m, v in zip(params, grads, ms, vs):
            m *= 0.9
            m += 0.1 * g_
            v *= 0.999
            v += 0.001 * g_ * g_
            p_ -= (1e-3 / c1) * m / (np.sqrt(v / c2) + 1e-8)
        return loss

    def arrays():
        out = {f"param {i}": p_ for i, p_ in enumerate(params)}
        out.update({f"grad {i}": g_ for i, g_ in enumerate(last["grads"])})
        out.update({f"adam m.{i}": m for i, m in enumerate(ms)} | {f"adam v.{i}": v for i, v in enumerate(vs)})
        out.update({f"activation {i}": a for i, a in enumerate(last["acts"])})
        out.update(probs=last["probs"], loss=np.asarray(last["loss"]))
        return out

    step.arrays = arrays
    return step


def make_torch(k, bn, x, y, fused):
    import torch

    torch.manual_seed(0)
    layers, width = [], D_IN
    for _ in range(k):
        layers.append(torch.nn.Linear(width, H, bias=not bn))
        if bn:
            layers.append(torch.nn.BatchNorm1d(H))
        layers.append(torch.nn.ReLU())
        width = H
    layers.append(torch.nn.Linear(width, D_OUT))
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()

    step.arrays = lambda: torch_arrays(model, opt, xt)
    return step


# ---- measurement ----------------------------------------------------------------------------------------------------------------
def make_engine(name, k, bn, x, y):
    if name.startswith("minidni-"):  # minidni-BACKEND or minidni-BACKEND-fused (nn.mlp(..., fused=True))
        parts = name.split("-")
        return make_minidni(k, bn, parts[1], x, y, fused=parts[-1] == "fused")
    if name == "numpy-loop":
        return make_numpy_loop(k, bn, x, y)
    return make_torch(k, bn, x, y, fused=name == "torch-fused")


def worker():
    """Worker process: build one engine, then answer 'n' on stdin with the seconds n steps took."""
    name, k, bn = sys.stdin.readline().split()
    if name.startswith("torch"):
        import torch

        torch.set_num_threads(os.cpu_count())
    rng = np.random.default_rng(0)
    x = rng.random((B, D_IN), dtype=np.float32)
    y = rng.integers(0, D_OUT, B)
    serve(make_engine(name, int(k), bn == "1", x, y), name)


def serve(step, name="engine"):
    """The worker's side of `measure`: say ready, then for each line n on stdin print the seconds n steps took.

    A step with `step.arrays` is first run once and checked to train in float32 (else the worker says why, and
    `measure` stops)."""
    if hasattr(step, "arrays"):
        step()
        try:
            check_float32(name, step.arrays())
        except AssertionError as e:
            print(f"error: {e}", flush=True)
            raise
    print("ready", flush=True)
    for line in sys.stdin:
        n = int(line)
        t = time.perf_counter()
        for _ in range(n):
            step()
        print(time.perf_counter() - t, flush=True)


def worker_env():
    """The environment of an engine's worker process: this one's, plus the allocator policy minidni applies at import
    (minidni/memory.py) as glibc's variables, so a PyTorch worker runs under it too and the benchmarks compare
    engines, not two malloc settings."""
    from minidni.memory import malloc_env

    return {**os.environ, **malloc_env()}


def measure(names, k, bn, samples, steps_per_sample, warmup, settle, script=__file__):
    """Median steps/s of each engine (and the raw samples): one `script --worker` process per engine name, driven
    round-robin. Other benchmarks pass their own script, whose worker speaks the same protocol as `worker()`."""
    procs = {}
    for name in names:
        p = subprocess.Popen([sys.executable, str(script), "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=worker_env())
        p.stdin.write(f"{name} {k} {int(bn)}\n")
        p.stdin.flush()
        procs[name] = p

    def ask(p, n):
        p.stdin.write(f"{n}\n")
        p.stdin.flush()
        return float(p.stdout.readline())

    try:
        for name, p in procs.items():
            line = p.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"benchmark worker for {name} failed to start" + (f": {line}" if line else ""))
            ask(p, warmup)
        rates = {name: [] for name in names}
        for _ in range(samples):
            for name, p in procs.items():  # round-robin, so slow drifts of the machine hit every engine alike
                time.sleep(settle)
                rates[name].append(steps_per_sample / ask(p, steps_per_sample))
    finally:
        for p in procs.values():
            p.stdin.close()
            p.wait()
    return {name: float(np.median(r)) for name, r in rates.items()}, rates


_COLD_SNIPPET = """
import time, numpy as np
t0 = time.perf_counter()
import minidni as md
from minidni import nn, ops, optim
t1 = time.perf_counter()
x = np.random.default_rng(0).random((256, 784), dtype=np.float32); y = np.arange(256) % 10
model = nn.mlp(784, 256, 10, n_hidden=5, batch_norm=True, rng=0); opt = optim.Adam(model.parameters())
t2 = time.perf_counter()
loss = ops.cross_entropy(model(md.Tensor(x)), y); loss.backward(); opt.step()
t3 = time.perf_counter()
print(t1 - t0, t3 - t2)
"""


def jit_times():
    """First training step (JIT compile + run) in a fresh process with an empty cache, then with the cache warm."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, MINIDNI_BACKEND="numba")
        out = {}
        for label in ("cold", "warm"):
            res = subprocess.run([sys.executable, "-c", _COLD_SNIPPET], env=env, capture_output=True, text=True,
                                 check=True)
            imp, first = map(float, res.stdout.split())
            out[label] = {"import_s": imp, "first_step_s": first}
        return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=18)
    ap.add_argument("--steps-per-sample", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 5], help="hidden layer counts k")
    ap.add_argument("--settle", type=float, default=0.3, help="seconds of pause before each sample")
    ap.add_argument("--quick", action="store_true", help="5 samples of 5 steps")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker()
    if args.quick:
        args.samples, args.steps_per_sample, args.warmup = 5, 5, 3

    try:
        import torch

        have_torch = not args.no_torch
    except ImportError:
        torch, have_torch = None, False

    import numba

    ceiling = gemm_gflops()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; numpy {np.__version__}, "
          f"numba {numba.__version__}, torch {torch.__version__ if torch else 'absent'}")
    print(f"float32 GEMM ceiling (numpy, 2048^3): {ceiling:.1f} GFLOP/s")
    jit = jit_times()
    print(f"JIT: first step with a cold cache {jit['cold']['first_step_s']:.2f} s, warm cache "
          f"{jit['warm']['first_step_s']:.2f} s (import {jit['warm']['import_s']:.2f} s)")

    names = (["minidni-numba", "minidni-numba-fused", "minidni-numpy", "numpy-loop"]
             + (["torch", "torch-fused"] if have_torch else []))
    results = []
    for k in args.layers:
        for bn in (False, True):
            med, raw = measure(names, k, bn, args.samples, args.steps_per_sample, args.warmup, args.settle)
            flops = step_flops(k)
            bound = gemm_only_steps_per_s(k)
            print(f"\n784-256x{k}-10, batch norm {'on' if bn else 'off'}, batch {B}, Adam "
                  f"({flops / 1e6:.0f} MFLOP/step; median of {args.samples} samples x {args.steps_per_sample} steps)")
            print(f"  GEMM-only bound (this step's matmuls alone, NumPy): {bound:.1f} steps/s "
                  f"({100 * bound * flops / (ceiling * 1e9):.0f}% of the 2048^3 GEMM rate)")
            print(f"  {'engine':<20}{'steps/s':>9}{'vs torch':>10}{'vs fused':>10}{'vs numpy':>10}{'% GEMM':>8}"
                  f"{'% bound':>9}")
            for name, rate in med.items():
                vs = lambda ref: f"{rate / med[ref]:.2f}x" if ref in med else "-"  # noqa: E731
                frac = rate * flops / (ceiling * 1e9)
                print(f"  {name:<20}{rate:>9.1f}{vs('torch'):>10}{vs('torch-fused'):>10}{vs('minidni-numpy'):>10}"
                      f"{100 * frac:>7.0f}%{100 * rate / bound:>8.0f}%")
                results.append({"hidden_layers": k, "batch_norm": bn, "engine": name, "steps_per_s": rate,
                                "samples": raw[name], "gemm_fraction": frac, "mflop_per_step": flops / 1e6,
                                "gemm_only_steps_per_s": bound})

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.out / f"engine-{platform.node() or 'host'}-{stamp}.json"
    path.write_text(json.dumps({
        "command": "python benchmarks/bench_engine.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cores": os.cpu_count(), "processor": platform.processor(), "python": platform.python_version(),
                    "numpy": np.__version__, "numba": numba.__version__,
                    "torch": torch.__version__ if torch else None},
        "gemm_gflops": ceiling, "jit": jit, "results": results}, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

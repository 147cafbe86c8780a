"""DNI benchmark: what synthetic gradients cost per step, and what the concurrent pipelined runner buys on this
machine's cores (Jaderberg et al. 2016, Sec. 1-2: decoupled modules can run at the same time; Sec. 3.3: the MNIST FCN).

The net is the paper's MNIST FCN, 784 -> 256 x 5 -> 10 (6 weight layers), Linear -> BatchNorm -> ReLU, batch 256,
Adam, trained on the real MNIST (minidni.data, shipped with the package). Configurations, each in a worker process of
its own, driven round-robin as in bench_engine.py (each sample times ~`--sample-s` seconds of one configuration while
the others wait idle, after a `--settle` pause that lets the previous worker's BLAS threads stop spinning):

  locked            backprop, the whole net as one module; BLAS on all cores (the natural baseline)
  locked-1t         the same with BLAS limited to one thread
  dni / cdni        DNI / cDNI after every hidden layer (5 linear synthesizers; DNINet's per-batch `dni` schedule)
  dni-mlp / cdni-mlp  the same with the paper's MLP synthesizers (two hidden layers of 1024, batch norm)
  torch-KIND        the natural peer of each of those four: the same DNI written in PyTorch in this file
                    (`TorchDNI`, from the paper, not from minidni's code): the same modules, synthesizers (output
                    layer zero-initialised; cDNI: [h, onehot(y)] as input), bootstrapped targets, mean squared
                    synthetic-gradient loss, Adam (lr 1e-3, torch's default implementation) on every module and
                    synthesizer, the same MNIST batches, float32. minidni's step time over torch's is printed as a
                    ratio ("vs torch": > 1 means minidni is slower). Only when torch is installed.
  pipe-seq  SPLIT   the net cut into TWO modules, cDNI linear synthesizer on the cut, `pipelined` schedule,
                    sequential Runner with BLAS at 1 thread (the reference the concurrent runner must match bit for bit)
  pipe-conc SPLIT   the same on the ConcurrentRunner: one thread per module, BLAS at 1 thread per worker
  tick-seq / tick-conc  a tiny 2-module net (width 8, batch 4): what's left is the runners' own per-tick overhead

SPLIT "3+3" cuts after hidden layer 2 (784-256-256-256 | 256-256-256-10, the split asked for); "2+4" cuts after
hidden layer 1 and is the FLOP-balanced one once module 0 also pays for its synthesizer (napkin math below).
A "step" is one batch; for the pipelined runners it is one tick in steady state (both modules busy).

What is checked, not assumed: every worker trains in float32 (after its first timed sample it checks its parameters,
gradients, Adam moments and activations, bench_engine.check_float32, and stops the run otherwise); after the timed
run every pipelined worker trains to the same batch count (at least `--train-batches`), flushes, and saves its state (parameters, batch-norm statistics, Adam moments of the
modules and the synthesizer); pipe-seq and pipe-conc must be np.array_equal, and their test accuracy is printed next
to locked backprop's after the same number of batches.

Synthesizer cost is measured two ways: wall time inside the synthesizers (g_hat = M(h) and M's training step, timed
around Interface.synthetic_gradient / Interface.train) as a fraction of the wall-clock time ("in synth"), and the
step time of dni / cdni / cdni-mlp against locked.
For the concurrent runner the trace of the timed samples is split into: sum over ticks of the busiest worker's time
(the critical path), the imbalance (critical path minus the mean worker time), and the rest (hand-off to the worker
threads, the barrier, the main thread's bookkeeping, GIL contention outside events).

Napkin math: matmul FLOPs per step (forward 2*B*in*out per layer, backward dW the same and dx the same except for the
input layer; synthesizer: g_hat forward + training forward + dW + dx of its inner layers), and the fraction of the
machine's float32 GEMM rate (NumPy, 2048^3, BLAS on all cores and on one core, measured in the same run).

    python benchmarks/bench_dni.py            # full run, writes benchmarks/results/dni-*.json (~2-3 min on 2 quiet
                                              # cores before the torch peers; 15 min with them at load average 12)
    python benchmarks/bench_dni.py --quick    # fewer, shorter samples and training (< 1 min)
    python benchmarks/bench_dni.py --only dni # locked and the DNI configurations with their PyTorch peers only
    python benchmarks/bench_dni.py --only dni --batch 8 --width 16 --layers 2 --synth-width 16   # a smoke run
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
sys.path.insert(0, str(HERE))
from bench_engine import check_float32, gemm_gflops, worker_env  # noqa: E402  (same ceiling as bench_engine)

B, D_IN, H, D_OUT, K = 256, 784, 256, 10, 5          # batch, MNIST, hidden width, classes, hidden layers (6 layers)
SYNTH_HIDDEN = (1024, 1024)                            # the paper's MLP synthesizer
SPLITS = {"3+3": 2, "2+4": 1}                          # name -> the hidden layer after which the net is cut
DNI_KINDS = ("dni", "cdni", "dni-mlp", "cdni-mlp")     # conditioned: "cdni..."; MLP synthesizers: "...-mlp"


TORCH_THREADS = os.cpu_count()                         # torch's intra-op threads (minidni's BLAS uses every core)


def configure(batch=B, width=H, layers=K, synth_width=SYNTH_HIDDEN[0], torch_threads=TORCH_THREADS):
    """Set the sizes (the defaults are the paper's; small ones make a smoke run). Driver and workers call it alike."""
    global B, H, K, SYNTH_HIDDEN, NET_DIMS, TORCH_THREADS
    B, H, K, SYNTH_HIDDEN = batch, width, layers, (synth_width, synth_width)
    TORCH_THREADS = torch_threads
    NET_DIMS = [D_IN] + [H] * K + [D_OUT]


# ---- napkin math -----------------------------------------------------------------------------------------------------
def fwd_flops(dims, batch=B):
    return sum(2 * batch * a * b for a, b in zip(dims[:-1], dims[1:]))


def net_flops(dims, batch=B):
    """A training step of an MLP: forward, dW, dx of every layer but the first (its input is the data)."""
    f = fwd_flops(dims, batch)
    return 3 * f - 2 * batch * dims[0] * dims[1]


def synth_flops(conditioned, hidden, batch=B):
    """One synthesizer per step: g_hat = M(h) (forward), then one training step on an earlier batch (forward, dW,
    dx inside M; its input h needs no gradient)."""
    dims = [H + (D_OUT if conditioned else 0), *hidden, H]
    return fwd_flops(dims, batch) + net_flops(dims, batch)


NET_DIMS = [D_IN] + [H] * K + [D_OUT]


def module_dims(split):
    cut = SPLITS[split] + 1                              # number of hidden layers in module 0
    return NET_DIMS[:cut + 1], NET_DIMS[cut:]


def config_flops(name):
    kind, _, split = name.partition(" ")
    if kind.startswith("tick"):
        return None
    base = net_flops(NET_DIMS)
    if kind.startswith("locked"):
        return {"total": base}
    kind = kind.removeprefix("torch-")
    if kind in DNI_KINDS:
        hidden = SYNTH_HIDDEN if kind.endswith("-mlp") else ()
        return {"total": base + K * synth_flops(kind.startswith("cdni"), hidden)}
    lower, upper = module_dims(split)
    m0 = net_flops(lower) + synth_flops(True, ())
    m1 = 3 * fwd_flops(upper)                            # module 1's input is h: its first layer needs dx too
    return {"total": m0 + m1, "module0": m0, "module1": m1}


# ---- the configurations (built inside a worker) ----------------------------------------------------------------------
def build(name, seed=0):
    """(net, runner) for one configuration; runners stream from an endless seeded BatchIterator."""
    from minidni.data import BatchIterator, load_mnist
    from minidni.dni import ConcurrentRunner, DNINet, Runner, Synthesizer, adam, mlp_modules, mnist_fcn
    from minidni.dni import schedules as S

    kind, _, split = name.partition(" ")
    if kind.startswith("tick"):                          # tiny: the runner's overhead, not the arithmetic
        rng = np.random.default_rng(seed)
        x, y = rng.random((4096, 8), dtype=np.float32), rng.integers(0, 2, 4096)
        data = BatchIterator(x, y, batch_size=4, seed=seed)
        net = DNINet(mlp_modules(8, 8, 2, 1, split_after=[0], rng=seed), [Synthesizer(8, 2, rng=seed + 1)],
                     optimizer=adam(1e-3))
        cls = ConcurrentRunner if kind == "tick-conc" else Runner
        return net, cls(net, S.pipelined(), data, blas_threads=1)
    mnist = load_mnist()
    data = BatchIterator(mnist.train.x, mnist.train.y, batch_size=B, seed=seed, drop_last=True)
    if kind.startswith("locked"):
        net = DNINet(mlp_modules(D_IN, H, D_OUT, K, split_after=[], rng=seed), None, schedule=S.locked())
        return net, Runner(net, S.locked(), data, blas_threads=1 if kind == "locked-1t" else None)
    if kind in DNI_KINDS:
        net = mnist_fcn(layers=K + 1, hidden=H, synthesizer="mlp" if kind.endswith("-mlp") else "linear",
                        synth_hidden=SYNTH_HIDDEN, conditioned=kind.startswith("cdni"), seed=seed)
        return net, Runner(net, net.schedule, data)      # what DNINet.train_step runs: BLAS left alone
    modules = mlp_modules(D_IN, H, D_OUT, K, split_after=[SPLITS[split]], rng=seed)
    net = DNINet(modules, [Synthesizer(H, D_OUT, rng=seed + 1)], optimizer=adam(1e-3))
    if kind == "pipe-conc":
        return net, ConcurrentRunner(net, S.pipelined(), data)
    return net, Runner(net, S.pipelined(), data, blas_threads=1)


# ---- the PyTorch peer ------------------------------------------------------------------------------------------------
class TorchDNI:
    """DNI for the MNIST FCN in PyTorch, from the paper (Jaderberg et al. 2016, Sec. 2, 3.3), one batch per `step`:

        for module i = 0 .. n-1:   h_i = f_i(h_{i-1}.detach())                      (x for i = 0)
            i < n-1:  g_hat_i = M_i(h_i [, onehot(y)]);  h_i.backward(g_hat_i);  step f_i      (update unlocked)
            i = n-1:  L = cross_entropy(h_i, y);  L.backward();  step f_i
            i > 0:    target_{i-1} = d/dh_{i-1} of that backward (the bootstrapped target: g_hat_i carried back
                      through f_i, or the true gradient from the top module);
                      L_M = mean((g_hat_{i-1} - target_{i-1})^2);  step M_{i-1}

    Modules: [Linear (no bias) -> BatchNorm1d -> ReLU] per hidden layer, then Linear; synthesizers: Linear (DNI) or
    [Linear (no bias) -> BatchNorm1d -> ReLU] x 2 -> Linear, the output layer zero-initialised; Adam for every part.
    M_i's training reuses the graph of its prediction g_hat_i (M_i has not changed in between), as minidni does.
    """

    def __init__(self, kind, seed=0, lr=1e-3):
        import torch

        nn = torch.nn
        torch.manual_seed(seed)
        self.torch, self.conditioned = torch, kind.startswith("cdni")
        dims = [D_IN] + [H] * K
        self.modules = [nn.Sequential(nn.Linear(a, H, bias=False), nn.BatchNorm1d(H), nn.ReLU()) for a in dims[:-1]]
        self.modules.append(nn.Sequential(nn.Linear(H, D_OUT)))
        self.synths = []
        for _ in range(K):
            width, layers = H + (D_OUT if self.conditioned else 0), []
            for w in (SYNTH_HIDDEN if kind.endswith("-mlp") else ()):
                layers += [nn.Linear(width, w, bias=False), nn.BatchNorm1d(w), nn.ReLU()]
                width = w
            out = nn.Linear(width, H)
            nn.init.zeros_(out.weight), nn.init.zeros_(out.bias)      # g_hat = 0 at step 0
            self.synths.append(nn.Sequential(*layers, out))
        self.opts = [torch.optim.Adam(m.parameters(), lr=lr) for m in self.modules]
        self.synth_opts = [torch.optim.Adam(m.parameters(), lr=lr) for m in self.synths]
        self.synth_s = {"g_hat": 0.0, "train": 0.0}                  # wall time inside the synthesizers
        self.last = {}

    def step(self, x, y):
        torch, F, top = self.torch, self.torch.nn.functional, len(self.modules) - 1
        onehot = F.one_hot(y, D_OUT).to(x.dtype) if self.conditioned else None
        h, g_hat_below = x, None
        for i, (f, opt) in enumerate(zip(self.modules, self.opts)):
            inp = h.detach().requires_grad_(i > 0)                    # the module's graph stays local
            out = f(inp)                                              # (B, H), the logits (B, 10) at the top
            opt.zero_grad(set_to_none=True)
            if i < top:
                t = time.perf_counter()
                s_in = out.detach() if onehot is None else torch.cat([out.detach(), onehot], dim=1)
                g_hat = self.synths[i](s_in)                          # (B, H)
                self.synth_s["g_hat"] += time.perf_counter() - t
                out.backward(g_hat.detach())
            else:
                g_hat, loss = None, F.cross_entropy(out, y)
                loss.backward()
            opt.step()
            if i > 0:                                                 # train M_{i-1} on its target, inp.grad
                t = time.perf_counter()
                sopt = self.synth_opts[i - 1]
                sopt.zero_grad(set_to_none=True)
                F.mse_loss(g_hat_below, inp.grad).backward()
                sopt.step()
                self.synth_s["train"] += time.perf_counter() - t
            self.last[f"activation {i}"] = out
            h, g_hat_below = out, g_hat
        return loss

    def arrays(self):
        """{name: tensor} for check_float32: parameters, gradients, Adam moments, the activations of the last step."""
        out = dict(self.last)
        for kind, parts, opts in (("module", self.modules, self.opts), ("synth", self.synths, self.synth_opts)):
            for i, (m, o) in enumerate(zip(parts, opts)):
                for n, prm in m.named_parameters():
                    out[f"{kind}{i} param {n}"] = prm
                    if prm.grad is not None:
                        out[f"{kind}{i} grad {n}"] = prm.grad
                    out.update({f"{kind}{i} adam {k} of {n}": v for k, v in o.state.get(prm, {}).items()
                                if k != "step"})
        return out


def minidni_arrays(net, x, y):
    """{name: array} of a DNINet for check_float32: parameters, gradients, optimizer moments, and each module's and
    synthesizer's output on (x, y) (one extra forward in eval mode)."""
    from minidni.autograd import no_grad
    from minidni.tensor import Tensor

    out = {}
    for name, part in net.named_parts():
        for n, prm in part.named_parameters():
            out[f"{name} param {n}"] = prm.data
            if prm.grad is not None:
                out[f"{name} grad {n}"] = prm.grad
    for kind, i, opt in net._optimizers():
        out.update({f"{kind}{i} adam {b}.{k}": a for b in ("m", "v") for k, a in enumerate(getattr(opt, b, []))})
    with no_grad():
        net.eval()
        h = Tensor(x)
        for i, m in enumerate(net.modules):
            h = m(h)
            out[f"activation {i}"] = h.data
            if i < len(net.interfaces) and net.interfaces[i].learns:
                out[f"g_hat {i}"] = net.interfaces[i].synthesizer(h, y).data
        net.train()
    return out


def torch_worker(name):
    """The worker of a torch-KIND configuration: the same commands as `worker` ("run" only)."""
    import torch

    from minidni.data import BatchIterator, load_mnist

    torch.set_num_threads(TORCH_THREADS)
    mnist = load_mnist()
    data = BatchIterator(mnist.train.x, mnist.train.y, batch_size=B, seed=0, drop_last=True)
    model = TorchDNI(name.removeprefix("torch-"))
    for part in model.modules + model.synths:
        part.train()
    checked = 0
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] != "run":
            raise SystemExit(f"{name}: only 'run' is supported, got {cmd['cmd']!r}")
        before = dict(model.synth_s)
        t = time.perf_counter()
        for _ in range(cmd["n"]):
            x, y = data.next_batch()
            model.step(torch.from_numpy(x), torch.from_numpy(y))
        wall = time.perf_counter() - t
        if not checked:
            checked = check_float32(name, model.arrays())
        print(json.dumps({"seconds": wall, "synth": {k: model.synth_s[k] - before[k] for k in before}, "kinds": {},
                          "float32_arrays": checked, **trace_split([], cmd["n"])}), flush=True)


def _timed(fn, acc, key):
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            acc[key] += time.perf_counter() - t
    return wrapper


def trace_split(spans, n_ticks):
    """Busy time of the given spans: total, and per tick the busiest worker (critical path) and the mean worker."""
    per = {}
    for s in spans:
        key = (s.event.tick, s.event.module)
        per[key] = per.get(key, 0.0) + s.seconds
    ticks = {}
    for (tick, m), sec in per.items():
        ticks.setdefault(tick, []).append(sec)
    workers = 1 + max((s.event.module for s in spans), default=0)
    return {"busy_s": sum(per.values()), "critical_s": sum(max(v) for v in ticks.values()),
            "mean_worker_s": sum(sum(v) / workers for v in ticks.values()), "ticks": len(ticks),
            "n_ticks_asked": n_ticks}


def runner_batch(name, n=8):
    """A few rows of the data `name` trains on, for the float32 check's forward pass."""
    if name.startswith("tick"):
        return np.random.default_rng(0).random((n, 8), dtype=np.float32), np.arange(n) % 2
    from minidni.data import load_mnist

    train = load_mnist().train
    return train.x[:n], train.y[:n]


def worker():
    """Worker process: build one configuration, answer JSON commands on stdin with one JSON line each."""
    name = sys.stdin.readline().strip()
    if name.startswith("torch-"):
        return torch_worker(name)
    net, runner = build(name)
    checked = 0
    synth_s = {"g_hat": 0.0, "train": 0.0}
    for itf in net.interfaces:                           # time spent inside the synthesizers
        itf.synthetic_gradient = _timed(itf.synthetic_gradient, synth_s, "g_hat")
        itf.train = _timed(itf.train, synth_s, "train")
    net.train()

    def advance(n):
        """Feed n more batches, running events as they become ready: Runner.run's loop without its final drain, so
        a pipeline stays full from one sample to the next (step() would also re-enter the BLAS limit and walk the
        modules for train mode once per event)."""
        runner.advance(n)

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "run":
            before, spans0 = dict(synth_s), len(runner.trace.spans)
            t = time.perf_counter()
            advance(cmd["n"])
            wall = time.perf_counter() - t
            spans = runner.trace.spans[spans0:]
            kinds = {}
            for s in spans:
                kinds[s.event.kind] = kinds.get(s.event.kind, 0.0) + s.seconds
            if not checked:                              # after the first sample: has it trained in float32?
                x, y = runner_batch(name)
                checked = check_float32(name, minidni_arrays(net, x, y))
            out = {"seconds": wall, "synth": {k: synth_s[k] - before[k] for k in synth_s}, "kinds": kinds,
                   "float32_arrays": checked, **trace_split(spans, cmd["n"])}
            runner.trace.spans.clear()                   # keep the trace (and its memory) bounded
        elif cmd["cmd"] == "finish":                     # train to a fixed batch count, drain, evaluate, save
            if runner.n_fed > cmd["batches"]:
                raise SystemExit(f"{name}: already fed {runner.n_fed} batches, more than {cmd['batches']}")
            advance(cmd["batches"] - runner.n_fed)
            runner.flush()
            runner.trace.spans.clear()
            out = {"batches": runner.n_fed}
            if not name.startswith("tick"):
                from minidni.data import load_mnist

                test = load_mnist().test
                out["test_accuracy"] = net.evaluate(test.x, test.y)["accuracy"]
            # parameters, batch-norm running statistics and optimizer moments: everything a run leaves behind
            np.savez(cmd["path"], **{k.replace("/", "__"): np.asarray(v) for k, v in net.state_dict().items()})
            out["path"] = cmd["path"]
        print(json.dumps(out), flush=True)
    if hasattr(runner, "close"):
        runner.close()


# ---- the driver ------------------------------------------------------------------------------------------------------
class Worker:
    def __init__(self, name):
        self.name = name
        sizes = ["--batch", str(B), "--width", str(H), "--layers", str(K), "--synth-width", str(SYNTH_HIDDEN[0]),
                 "--torch-threads", str(TORCH_THREADS)]
        self.p = subprocess.Popen([sys.executable, __file__, "--worker", *sizes], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=worker_env())   # bench_engine's allocator
        self.p.stdin.write(name + "\n")
        self.p.stdin.flush()

    def ask(self, **cmd):
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker {self.name!r} died (see its stderr above)")
        return json.loads(line)

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=15)
    ap.add_argument("--sample-s", type=float, default=0.25, help="target seconds of one sample")
    ap.add_argument("--settle", type=float, default=0.3, help="seconds of pause before each sample")
    ap.add_argument("--train-batches", type=int, default=400, help="batches every pipelined/locked worker trains "
                    "in all before the bit-identity check and the test accuracy")
    ap.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    ap.add_argument("--quick", action="store_true", help="5 samples of ~0.1 s, 150 training batches, split 3+3")
    ap.add_argument("--only", choices=["all", "dni"], default="all", help="dni: locked and the DNI configurations "
                    "(with their PyTorch peers) only; no pipelined runners")
    ap.add_argument("--synths", nargs="+", default=list(DNI_KINDS), choices=list(DNI_KINDS),
                    help="which DNI configurations to run")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch DNI peers")
    ap.add_argument("--batch", type=int, default=B)
    ap.add_argument("--width", type=int, default=H, help="hidden units per layer")
    ap.add_argument("--layers", type=int, default=K, help="hidden layers (the net has one more weight layer)")
    ap.add_argument("--synth-width", type=int, default=SYNTH_HIDDEN[0], help="hidden units of the MLP synthesizers")
    ap.add_argument("--torch-threads", type=int, default=TORCH_THREADS, help="torch.set_num_threads for the "
                    "PyTorch peers (default: every core; on a machine that other jobs load, OpenMP threads that "
                    "wait for descheduled ones can make torch 20x slower, and 1 is the fairer number)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    configure(args.batch, args.width, args.layers, args.synth_width, args.torch_threads)
    if args.worker:
        return worker()
    if args.quick:
        args.samples, args.sample_s, args.settle, args.train_batches, args.splits = 5, 0.1, 0.2, 150, ["3+3"]
    full = args.only == "all"
    if full and K <= max(SPLITS[s] for s in args.splits):
        raise SystemExit(f"bench_dni: the splits {args.splits} need more than {max(SPLITS[s] for s in args.splits)} "
                         f"hidden layers, got --layers {K}; use --only dni for smaller nets")
    try:
        import torch
    except ImportError:
        torch = None
    with_torch = torch is not None and not args.no_torch

    import numba
    from threadpoolctl import threadpool_limits

    t_start = time.perf_counter()
    names = (["locked", "locked-1t"] if full else ["locked"]) + list(args.synths)
    names += [f"torch-{kind}" for kind in args.synths] if with_torch else []
    if full:
        for split in args.splits:
            names += [f"pipe-seq {split}", f"pipe-conc {split}"]
        names += ["tick-seq", "tick-conc"]
    workers = {n: Worker(n) for n in names}
    try:
        for w in workers.values():
            if not json.loads(w.p.stdout.readline() or "{}").get("ready"):
                raise RuntimeError(f"benchmark worker {w.name!r} failed to start")
        t_ready = time.perf_counter() - t_start
        ceiling = gemm_gflops()                          # all cores (the workers are idle, waiting on stdin)
        with threadpool_limits(1, user_api="blas"):
            ceiling_1 = gemm_gflops()
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; numpy "
              f"{np.__version__}, numba {numba.__version__}, torch {torch.__version__ if torch else 'absent'}; "
              f"load average {os.getloadavg()[0]:.2f} at start; workers ready in {t_ready:.1f} s")
        print(f"float32 GEMM ceiling (numpy, 2048^3): {ceiling:.1f} GFLOP/s on all cores, {ceiling_1:.1f} on one")

        # warm-up, then choose each configuration's steps per sample from its warm-up speed
        n_per, warm = {}, {}
        for name, w in workers.items():
            dt = w.ask(cmd="run", n=2)["seconds"] / 2
            n = max(1, int(round(args.sample_s / 2 / dt)))
            dt = w.ask(cmd="run", n=n)["seconds"] / n
            n_per[name] = max(1, int(round(args.sample_s / dt)))
            warm[name] = 2 + n
        raw = {n: [] for n in names}
        for _ in range(args.samples):
            for name, w in workers.items():              # round-robin: drifts of a shared machine hit all alike
                time.sleep(args.settle)
                raw[name].append(w.ask(cmd="run", n=n_per[name]) | {"n": n_per[name]})
        load_end = os.getloadavg()[0]

        # train the locked and pipelined workers to the same batch count, compare, evaluate
        finals, identical = {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, w in workers.items():
                if full and name.startswith(("locked", "pipe", "tick")):
                    path = os.path.join(tmp, name.replace(" ", "_") + ".npz")
                    fed = sum(r["n"] for r in raw[name]) + warm[name]
                    # tick workers ran many tiny batches: bring both to the same count, whatever it is
                    total = args.train_batches if not name.startswith("tick") else None
                    finals[name] = (w, path, total, fed)
            tick_total = max([0] + [f[3] for n, f in finals.items() if n.startswith("tick")])
            big_total = max([args.train_batches] + [f[3] for n, f in finals.items() if not n.startswith("tick")])
            for name, (w, path, total, _) in finals.items():
                finals[name] = w.ask(cmd="finish", batches=tick_total if total is None else big_total, path=path)
            for split in (args.splits + ["tick"]) if full else []:
                a, b = (f"pipe-seq {split}", f"pipe-conc {split}") if split != "tick" else ("tick-seq", "tick-conc")
                pa, pb = np.load(finals[a]["path"]), np.load(finals[b]["path"])
                identical[split] = len(pa.files) == len(pb.files) and all(np.array_equal(pa[k], pb[k])
                                                                            for k in pa.files)
    finally:
        for w in workers.values():
            w.close()

    # ---- tables ---------------------------------------------------------------------------------------------------
    med = {}
    for name in names:
        per_step = [r["seconds"] / r["n"] for r in raw[name]]
        med[name] = float(np.median(per_step))
    base, base1 = med["locked"], med.get("locked-1t", float("nan"))
    print(f"\nMNIST FCN 784-{H}x{K}-10, batch norm, batch {B}, Adam, real MNIST; median of {args.samples} samples "
          f"(load average {load_end:.2f} at the end)")
    print(f"  {'configuration':<16}{'ms/step':>9}{'samples/s':>11}{'MFLOP':>8}{'GFLOP/s':>9}{'%GEMM':>7}"
          f"{'%1-core':>8}{'vs locked':>11}{'vs 1t':>7}{'in synth':>10}")
    results = []
    for name in names:
        sec = med[name]
        fl = config_flops(name)
        rs = raw[name]
        synth = sum(r["synth"]["g_hat"] + r["synth"]["train"] for r in rs) / sum(r["seconds"] for r in rs)
        row = {"config": name, "s_per_step": sec, "samples_per_s": (B if fl else 4) / sec,
               "speedup_vs_locked": base / sec, "speedup_vs_locked_1t": base1 / sec, "synth_fraction": synth,
               "steps_per_sample": rs[0]["n"], "samples_s": [r["seconds"] / r["n"] for r in rs]}
        if fl:
            row.update(mflop_per_step=fl["total"] / 1e6, gflops=fl["total"] / sec / 1e9,
                       gemm_fraction=fl["total"] / sec / 1e9 / ceiling, gemm_fraction_1core=fl["total"] / sec / 1e9
                       / ceiling_1, flops=fl)
            napkin = (f"{fl['total'] / 1e6:>8.0f}{row['gflops']:>9.1f}{100 * row['gemm_fraction']:>6.0f}%"
                      f"{100 * row['gemm_fraction_1core']:>7.0f}%")
        else:
            napkin = f"{'-':>8}{'-':>9}{'-':>7}{'-':>8}"
        vs = (f"{base / sec:>10.2f}x" + (f"{base1 / sec:>6.2f}x" if full else f"{'-':>7}")) \
            if fl and not name.startswith("torch-") else f"{'-':>11}{'-':>7}"    # torch: see its own table below
        print(f"  {name:<16}{1e3 * sec:>9.2f}{row['samples_per_s']:>11.0f}{napkin}{vs}{100 * synth:>9.0f}%")
        results.append(row)
    by = {r["config"]: r for r in results}

    torch_ratio = {}
    if with_torch:
        print(f"\nminidni DNI vs PyTorch DNI (the same algorithm, recipe, batches; float32; torch on {TORCH_THREADS} "
              "threads): step time ratio, > 1 means minidni is slower")
        for kind in args.synths:
            ours, theirs = med[kind], med[f"torch-{kind}"]
            torch_ratio[kind] = ours / theirs
            by[kind]["vs_torch"] = torch_ratio[kind]
            print(f"  {kind:<10} minidni {1e3 * ours:8.2f} ms   torch {1e3 * theirs:8.2f} ms   minidni / torch "
                  f"{ours / theirs:5.2f}x   (in synth: minidni {100 * by[kind]['synth_fraction']:.0f}%, torch "
                  f"{100 * by[f'torch-{kind}']['synth_fraction']:.0f}%)")

    print("\nwhere the time goes (busy seconds per step by event kind, from the runner's trace)")
    for name in names:
        if name.startswith("torch-"):                    # no runner, no trace
            continue
        rs = raw[name]
        steps = sum(r["n"] for r in rs)
        kinds = {}
        for r in rs:
            for k, v in r["kinds"].items():
                kinds[k] = kinds.get(k, 0.0) + v
        by[name]["ms_per_step_by_kind"] = {k: 1e3 * v / steps for k, v in kinds.items()}
        print(f"  {name:<16}" + "  ".join(f"{k} {1e3 * v / steps:.2f}" for k, v in kinds.items()) + "  ms")

    tick_over = None
    if full:                                             # the pipelined runners
        print("\npipelined runners, per tick (ms): wall = critical path (busiest worker) + overhead; imbalance = "
              "critical path - mean worker")
        for name in names:
            if not name.startswith(("pipe", "tick")):
                continue
            rs = raw[name]
            n = sum(r["n"] for r in rs)
            wall, crit, mean = (sum(r[k] for r in rs) / n for k in ("seconds", "critical_s", "mean_worker_s"))
            busy = sum(r["busy_s"] for r in rs) / n
            by[name]["per_tick_ms"] = {"wall": 1e3 * wall, "busy_all_workers": 1e3 * busy, "critical": 1e3 * crit,
                                       "imbalance": 1e3 * (crit - mean), "overhead": 1e3 * (wall - crit)}
            if name.startswith(("pipe-seq", "tick-seq")):   # one thread: every event is on the critical path
                by[name]["per_tick_ms"]["overhead"] = 1e3 * (wall - busy)
                print(f"  {name:<16} wall {1e3 * wall:.3f}  events {1e3 * busy:.3f}  outside events "
                      f"{1e3 * (wall - busy):.3f}")
            else:
                print(f"  {name:<16} wall {1e3 * wall:.3f}  critical {1e3 * crit:.3f}  (imbalance "
                      f"{1e3 * (crit - mean):.3f})  overhead {1e3 * (wall - crit):.3f}  [all workers busy "
                      f"{1e3 * busy:.3f}]")
        tick_over = 1e3 * (med["tick-conc"] - med["tick-seq"])
        print(f"  the concurrent runner's own cost per tick (tiny net, tick-conc - tick-seq): {tick_over:.3f} ms")

        print("\nconcurrent pipelined runner vs locked backprop (same net, 2 modules, cDNI linear synthesizer):")
        for split in args.splits:
            conc, seq = by[f"pipe-conc {split}"], by[f"pipe-seq {split}"]
            fl = config_flops(f"pipe-conc {split}")
            ideal = config_flops("locked")["total"] / max(fl["module0"], fl["module1"])
            print(f"  split {split}: {conc['speedup_vs_locked']:.2f}x vs locked on all cores (BLAS {os.cpu_count()} "
                  f"threads), {conc['speedup_vs_locked_1t']:.2f}x vs locked with 1 BLAS thread; over the sequential "
                  f"pipeline {seq['s_per_step'] / conc['s_per_step']:.2f}x.  FLOPs module0 {fl['module0'] / 1e6:.0f} "
                  f"(with its synthesizer) / module1 {fl['module1'] / 1e6:.0f} MFLOP: a perfect 2-core pipeline is at "
                  f"most {ideal:.2f}x over 1-thread locked")
            print(f"    bit-identical to the sequential runner after {finals[f'pipe-seq {split}']['batches']} batches: "
                  f"{identical[split]};  test accuracy seq {finals[f'pipe-seq {split}']['test_accuracy']:.4f}, conc "
                  f"{finals[f'pipe-conc {split}']['test_accuracy']:.4f}  (locked backprop "
                  f"{finals['locked']['test_accuracy']:.4f}, locked 1t {finals['locked-1t']['test_accuracy']:.4f})")
        print(f"  tiny net bit-identical: {identical['tick']}")
    if base > base1:
        print(f"  WARNING: locked backprop is SLOWER with BLAS on all cores ({1e3 * base:.2f} ms) than on one "
              f"({1e3 * base1:.2f} ms): the machine is oversubscribed (load average {load_end:.2f}), multi-threaded "
              "BLAS waits for descheduled threads, and every ratio against 'locked' is inflated. Rerun on a quiet "
              "machine.")
    if not all(identical.values()):
        print("  ERROR: the concurrent runner did NOT reproduce the sequential runner bit for bit")

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.out / f"dni-{platform.node() or 'host'}-{stamp}.json"
    path.write_text(json.dumps({
        "command": "python benchmarks/bench_dni.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cores": os.cpu_count(), "processor": platform.processor(), "python": platform.python_version(),
                    "numpy": np.__version__, "numba": numba.__version__, "load_end": load_end,
                    "thread_env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}},
        "gemm_gflops": ceiling, "gemm_gflops_1core": ceiling_1, "batch": B, "hidden_layers": K, "width": H,
        "synth_hidden": list(SYNTH_HIDDEN), "only": args.only, "vs_torch": torch_ratio, "torch_threads": TORCH_THREADS,
        "bit_identical": identical, "tick_overhead_ms": tick_over,
        "final": {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in finals.items()},
        "results": results, "wall_s": time.perf_counter() - t_start}, indent=1))
    print(f"\nwrote {path}  ({time.perf_counter() - t_start:.0f} s)")
    if not all(identical.values()):
        return 1


if __name__ == "__main__":
    sys.exit(main())

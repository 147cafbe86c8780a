"""Can minidni beat OpenBLAS's own threading on a training step's small matrix products? (issue #2's open lever)

A step of the paper's MNIST net (Jaderberg et al. 2016, Sec. 3.3: 784 -> 256 x 5 -> 10, batch 256) is ~70% matrix
products of 256 x 256 x 256 and 256 x 784 x 256. At that size OpenBLAS's two threads are only ~1.2-1.6x faster than
one (the 2048^3 ceiling scales 2.3x), so splitting the work ourselves -- one BLAS thread per core -- looks like a
lever. This script measures three ways to run the products a step needs, each against NumPy's two-thread matmul:

  numpy-2t     np.matmul with OpenBLAS on both cores, one product after another (what the engine does)
  threads-1t   two Python threads, BLAS limited to one thread each: the backward pair dx = g W^T and dW = x^T g at
               the same time, and the forward x W as two half-batches (a persistent worker, lock hand-off)
  prange-1t    the same split inside one Numba kernel, `for t in prange(2): np.dot(...)` -- Numba reaches BLAS
               through SciPy's OpenBLAS (limited to one thread), and OpenMP's spinning threads make the hand-off
               cheap. Needs SciPy, which minidni does not depend on: skipped when absent (`pip install scipy`).

and then (with SciPy) a whole training step: the engine as it is against the engine with every linear-layer product
routed through the prange-1t kernels (forward row halves, backward dx || dW, the input layer's dW as row halves of
x^T), each in its own worker process, driven round-robin as in bench_engine.py.

    python benchmarks/bench_gemm_split.py            # ~1 min; prints microseconds per product and ms per step
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_engine import B, D_IN, D_OUT, make_minidni, measure, serve  # noqa: E402


def have_scipy():
    try:
        import scipy.linalg  # noqa: F401  (numba finds BLAS through scipy.linalg.cython_blas)
        return True
    except ImportError:
        return False


def blas_threads(n):
    """Limit every OpenBLAS loaded so far to n threads (NumPy's and, once imported, SciPy's: numba calls the
    latter), for the rest of the process. A library loaded later keeps its own default."""
    from threadpoolctl import ThreadpoolController

    for lib in ThreadpoolController().lib_controllers:
        if lib.internal_api == "openblas":
            lib.set_num_threads(n)


# ---- the prange-1t kernels: two BLAS calls, one per OpenMP thread ----------------------------------------------------------
def prange_kernels():
    """(pair, halves): pair(a1, b1, o1, a2, b2, o2) computes o1 = a1 b1 and o2 = a2 b2 at once; halves(a, b, o) is
    o = a b as two row halves. The operands must be contiguous (C or F) for numba to call BLAS without a copy.
    Limits BLAS to one thread (after SciPy's OpenBLAS is loaded: two OpenMP threads each starting two BLAS threads
    on two cores made every product ~20x slower when we got this order wrong)."""
    import scipy.linalg  # noqa: F401
    from numba import njit, prange

    blas_threads(1)

    @njit(nogil=True, parallel=True)
    def pair(a1, b1, o1, a2, b2, o2):
        for t in prange(2):
            if t == 0:
                np.dot(a1, b1, o1)
            else:
                np.dot(a2, b2, o2)

    def halves(a, b, o):
        h = a.shape[0] // 2
        if a.flags.f_contiguous and not a.flags.c_contiguous:    # x^T: its row halves are only contiguous in C order
            a = np.ascontiguousarray(a)
        pair(a[:h], b, o[:h], a[h:], b, o[h:])

    return pair, halves


def patch_engine_with_prange_gemms():
    """Route minidni's Numba linear-layer products through the prange-1t kernels (the `split` engine below)."""
    from minidni.kernels import cpu

    pair, halves = prange_kernels()

    def matmul(a, b):
        o = np.empty((a.shape[0], b.shape[1]), a.dtype)
        halves(a, b, o)
        return o

    def linear_forward(x, W, b):
        y = matmul(x, W)
        if b is not None:
            cpu._add_row_(y, b)
        return y

    def linear_relu_forward(x, W, b):
        y = matmul(x, W)
        if b is not None:
            cpu._add_row_relu_(y, b)
        else:
            cpu._relu_(y.reshape(-1))
        return y

    def linear_backward(x, W, g, need_x, need_W, need_b):
        g = np.ascontiguousarray(g)
        dx = dW = None
        if need_x and need_W:
            dx, dW = np.empty((g.shape[0], W.shape[0]), g.dtype), np.empty(W.shape, g.dtype)
            pair(g, W.T, dx, x.T, g, dW)
        elif need_W:
            dW = matmul(x.T, g)
        elif need_x:
            dx = matmul(g, W.T)
        return dx, dW, (cpu.sum_rows(g) if need_b else None)

    cpu.linear_forward, cpu.linear_relu_forward, cpu.linear_backward = linear_forward, linear_relu_forward, \
        linear_backward   # linear_relu_backward looks linear_backward up at call time, so it follows


# ---- part 1: single products ----------------------------------------------------------------------------------------------
class Worker(threading.Thread):
    """A persistent thread that runs one job per hand-off (two locks: go, done)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.go, self.done, self.job = threading.Lock(), threading.Lock(), None
        self.go.acquire()
        self.done.acquire()
        self.start()

    def run(self):
        while True:
            self.go.acquire()
            fn, args = self.job
            fn(*args)
            self.done.release()

    def submit(self, fn, *args):
        self.job = (fn, args)
        self.go.release()

    def wait(self):
        self.done.acquire()


def time_us(fn, reps):
    """Microseconds per call: the median over 7 samples of `reps` back-to-back calls. Unlike bench_kernels.best_us
    (each call timed alone) the calls follow each other without a timer between them, so a hand-off to a thread
    that is still awake is timed as a training step would see it."""
    for _ in range(max(5, reps // 10)):
        fn()
    samples = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        samples.append((time.perf_counter() - t) / reps)
    return 1e6 * float(np.median(samples))


def micro(reps):
    rng = np.random.default_rng(0)
    g, W, h = (rng.random((256, 256), dtype=np.float32) for _ in range(3))
    x, W0 = rng.random((B, D_IN), dtype=np.float32), rng.random((D_IN, 256), dtype=np.float32)
    dx, dW, y = np.empty_like(g), np.empty_like(W), np.empty((B, 256), np.float32)
    rows = {}

    blas_threads(2)
    rows["numpy-2t"] = (time_us(lambda: (np.matmul(g, W.T, out=dx), np.matmul(h.T, g, out=dW)), reps),
                        time_us(lambda: np.matmul(x, W0, out=y), reps))
    blas_threads(1)
    w = Worker()

    def pair_threads():
        w.submit(np.matmul, h.T, g, dW)
        np.matmul(g, W.T, out=dx)
        w.wait()

    def rows_threads():
        w.submit(np.matmul, x[:128], W0, y[:128])
        np.matmul(x[128:], W0, out=y[128:])
        w.wait()

    rows["threads-1t"] = (time_us(pair_threads, reps), time_us(rows_threads, reps))
    rows["hand-off alone"] = (time_us(lambda: (w.submit(int), w.wait()), reps), float("nan"))
    if have_scipy():
        pair, halves = prange_kernels()
        pair(g, W.T, dx, h.T, g, dW)
        halves(x, W0, y)
        for got, want in ((dx, g @ W.T), (dW, h.T @ g), (y, x @ W0)):   # the same products, another BLAS build
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
        rows["prange-1t"] = (time_us(lambda: pair(g, W.T, dx, h.T, g, dW), reps),
                             time_us(lambda: halves(x, W0, y), reps))
    blas_threads(2)
    return rows


# ---- part 2: whole training steps, engine as it is vs prange-1t products ---------------------------------------------------
def worker():
    """bench_engine.measure's worker protocol: build the engine named on stdin, then time n steps per request."""
    name, k, bn = sys.stdin.readline().split()
    if name == "split":
        patch_engine_with_prange_gemms()          # one BLAS thread per OpenMP thread
    rng = np.random.default_rng(0)
    x, y = rng.random((B, D_IN), dtype=np.float32), rng.integers(0, D_OUT, B)
    from minidni import kernels

    serve(make_minidni(int(k), bn == "1", kernels.get_backend(), x, y, fused=True))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=100, help="products per timing sample")
    ap.add_argument("--samples", type=int, default=15, help="round-robin samples per step configuration")
    ap.add_argument("--steps-per-sample", type=int, default=50)
    ap.add_argument("--settle", type=float, default=0.3)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker()
    print(f"{os.cpu_count()} cores; SciPy {'present' if have_scipy() else 'absent: prange-1t skipped'}")
    print("products of one step, microseconds (median of 7 samples):")
    print(f"  {'way':16s} {'dx || dW, 256^3 each':>22s} {'x W, 256x784x256':>18s}")
    for name, (pair_us, fwd_us) in micro(args.reps).items():
        print(f"  {name:16s} {pair_us:22.1f} {fwd_us:18.1f}")
    if not have_scipy():
        return 0
    print("whole training steps, 784-256x5-10, fused layers, ms per step (median of round-robin samples):")
    for bn in (False, True):
        rates, _ = measure(["engine", "split"], 5, bn, args.samples, args.steps_per_sample, 20, args.settle,
                           script=__file__)
        ms = {name: 1e3 / r for name, r in rates.items()}
        print(f"  batch norm {'on ' if bn else 'off'}: engine {ms['engine']:.3f}  with prange-1t products "
              f"{ms['split']:.3f}  ({ms['engine'] / ms['split']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Kernel benchmark: every kernel of the Numba backend against the NumPy reference, llm.c style.

For each kernel at the sizes of the paper's MNIST net (batch 256, 256 features; Adam over the 465k parameters of the
784-256x5-10 net) we first check the Numba result against the reference, then time both and print microseconds,
the speed-up and the memory bandwidth the kernel achieves (napkin math: bytes read + written / time).

It also measures the two compile-option decisions documented in minidni/kernels/cpu.py:
  * `parallel=True` (prange) for the Adam update -- a variant defined here, not in the engine -- against the serial
    kernel, in the configuration that matters: called between BLAS calls that use every core;
  * the batch-norm forward kernel, version 1 (three passes) against version 2 (two passes).
And the accuracy of the one-pass batch-norm statistics far from zero (float64, mean 1e4, std 1), against the
two-pass formula in extended precision.

Everything is timed in float32, and `check` asserts it: each kernel's outputs must be float32 too.

    python benchmarks/bench_kernels.py
"""
from __future__ import annotations

import os
import time

import numpy as np

from minidni.kernels import cpu, reference as ref

N, C, P = 256, 256, 465_418


def best_us(fn, reps=200):
    for _ in range(10):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e6 * float(np.median(times))


def check(name, a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        if x is None and y is None:
            continue
        for side, out in (("numba", x), ("reference", y)):
            dtype = np.asarray(out).dtype
            if dtype.kind == "f" and dtype != np.float32:
                raise AssertionError(f"{name}: the {side} kernel returned {dtype} for float32 inputs; every kernel "
                                     "is benchmarked (and must compute) in float32")
        if not np.allclose(x, y, rtol=rtol, atol=atol):
            raise AssertionError(f"{name}: numba and reference differ by {np.abs(np.asarray(x) - y).max()}")


def main():
    rng = np.random.default_rng(0)
    f32 = np.float32
    x = rng.standard_normal((N, C), dtype=f32)
    g = rng.standard_normal((N, C), dtype=f32)
    y = np.maximum(x, 0)
    b = rng.standard_normal(C, dtype=f32)
    gamma = rng.random(C, dtype=f32) + 0.5
    logits = rng.standard_normal((N, 10), dtype=f32)
    labels = rng.integers(0, 10, N)
    eps = f32(1e-5)
    xhat = ref.batchnorm_train_forward(x, gamma, b, eps)[1]
    invstd = rng.random(C, dtype=f32) + 0.5
    nbytes = x.nbytes

    cases = [
        ("relu_forward", (x,), 2 * nbytes),
        ("relu_backward", (y, g), 3 * nbytes),
        ("tanh_forward", (x,), 2 * nbytes),
        ("sigmoid_forward", (x,), 2 * nbytes),
        ("sum_rows", (g,), nbytes),
        ("softmax_xent_forward", (logits, labels), 2 * logits.nbytes),
        ("softmax_xent_backward", (ref.softmax_xent_forward(logits, labels)[1], labels, f32(1)), 2 * logits.nbytes),
        ("mse_forward", (x, g), 2 * nbytes),
        ("batchnorm_train_forward", (x, gamma, b, eps), 3 * nbytes),
        ("batchnorm_eval_forward", (x, gamma, b, b, gamma, eps), 2 * nbytes),
        ("batchnorm_backward", (g, xhat, gamma, invstd, True), 3 * nbytes),
        # fused layers: each replaces its op plus a ReLU pass (relu_forward / relu_backward above)
        ("batchnorm_relu_train_forward", (x, gamma, b, eps), 2 * nbytes),
        ("batchnorm_relu_backward", (g, x, y, b, gamma, invstd, True), 4 * nbytes),
    ]
    print(f"kernels at batch {N} x {C} features, float32 (median of 200 calls)")
    print(f"  {'kernel':<30}{'numpy us':>10}{'numba us':>10}{'speed-up':>10}{'numba GB/s':>12}")
    for name, args, moved in cases:
        check(name, getattr(cpu, name)(*args), getattr(ref, name)(*args))
        t_ref = best_us(lambda: getattr(ref, name)(*args))
        t_cpu = best_us(lambda: getattr(cpu, name)(*args))
        print(f"  {name:<30}{t_ref:>10.1f}{t_cpu:>10.1f}{t_ref / t_cpu:>9.1f}x{moved / t_cpu / 1e3:>12.1f}")

    # Adam over every parameter of the 784-256x5-10 net, as one flat array
    p = rng.standard_normal(P, dtype=f32)
    grad = rng.standard_normal(P, dtype=f32)
    hyper = tuple(f32(v) for v in (1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001, 0.0))
    m, v = np.zeros_like(p), np.zeros_like(p)
    m2, v2, p2 = m.copy(), v.copy(), p.copy()
    ref.adam_step_(p2, grad, m2, v2, *hyper)
    cpu.adam_step_(p, grad, m, v, *hyper)
    check("adam_step_", p, p2)
    moved = 7 * p.nbytes  # read p, g, m, v; write p, m, v
    t_ref = best_us(lambda: ref.adam_step_(p2, grad, m2, v2, *hyper), 50)
    t_cpu = best_us(lambda: cpu.adam_step_(p, grad, m, v, *hyper), 50)
    print(f"  {'adam_step_ (465k params)':<30}{t_ref:>10.1f}{t_cpu:>10.1f}{t_ref / t_cpu:>9.1f}x"
          f"{moved / t_cpu / 1e3:>12.1f}")

    xs = 1e4 + rng.standard_normal((N, C))                          # float64, |mean| / std = 1e4
    xl = xs.astype(np.longdouble)
    exact = ((xl - xl.mean(axis=0)) ** 2).mean(axis=0)
    ones, zeros = np.ones(C), np.zeros(C)
    errs = {lib: float(np.max(np.abs(k.batchnorm_train_forward(xs, ones, zeros, 1e-5)[3] - exact) / exact))
            for lib, k in (("numpy", ref), ("numba", cpu))}
    print(f"\nbatch-norm variance at mean 1e4, std 1 (float64), max relative error: numpy {errs['numpy']:.1e}, "
          f"numba {errs['numba']:.1e}")

    print("\ncompile options")
    for version in (1, 2):
        t = best_us(lambda: cpu.batchnorm_train_forward(x, gamma, b, eps, _version=version))
        print(f"  batchnorm_train_forward version {version}: {t:.1f} us")

    from numba import njit, prange

    @njit(parallel=True, nogil=True, error_model="numpy")
    def adam_parallel(p, g, m, v, lr, beta1, beta2, eps, bias1, bias2, weight_decay):
        one = p.dtype.type(1)
        step, inv_sqrt_b2 = lr / bias1, one / np.sqrt(bias2)
        for i in prange(p.size):
            gi = g[i] + weight_decay * p[i]
            mi = beta1 * m[i] + (one - beta1) * gi
            vi = beta2 * v[i] + (one - beta2) * gi * gi
            m[i], v[i] = mi, vi
            p[i] -= step * mi / (np.sqrt(vi) * inv_sqrt_b2 + eps)

    adam_parallel(p, grad, m, v, *hyper)
    import numba

    a = rng.standard_normal((N, 784), dtype=f32)
    w = rng.standard_normal((784, C), dtype=f32)

    def serial_between_gemms():
        np.matmul(a, w)
        cpu.adam_step_(p, grad, m, v, *hyper)

    def parallel_between_gemms():
        np.matmul(a, w)
        adam_parallel(p, grad, m, v, *hyper)

    t_gemm = best_us(lambda: np.matmul(a, w), 50)
    t_s = best_us(serial_between_gemms, 50) - t_gemm
    t_p = best_us(parallel_between_gemms, 50) - t_gemm
    print(f"  adam alone: serial {best_us(lambda: cpu.adam_step_(p, grad, m, v, *hyper), 50):.0f} us, "
          f"prange {best_us(lambda: adam_parallel(p, grad, m, v, *hyper), 50):.0f} us "
          f"(threading layer {numba.threading_layer()}, {numba.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})")
    print(f"  adam after a 256x784x256 GEMM (its time subtracted): serial {t_s:.0f} us, prange {t_p:.0f} us")


if __name__ == "__main__":
    main()

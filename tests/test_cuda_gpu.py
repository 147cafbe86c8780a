"""The CUDA kernels on a real GPU, at the block and tile sizes gpu.py launches there (256 threads, 16 x 16 and
128 x 128 tiles): skipped without a GPU. `benchmarks/gpu_check.sh` runs these (`pytest -m gpu`).

The simulator tests (tests/test_cuda_kernels.py) run the same arithmetic with small blocks and hide races; here the
real hardware runs it, on shapes that are ragged against the GPU tiles, against the NumPy reference at the tolerances
of tests/test_kernels.py (float32 to 1e-5 relative to the values' size).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def _real_gpu():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False
    try:
        from numba import cuda

        return cuda.is_available()
    except Exception:
        return False


if not _real_gpu():
    pytest.skip("needs a CUDA GPU (not the simulator)", allow_module_level=True)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from helpers import assert_close  # noqa: E402
from minidni.kernels import gpu, reference  # noqa: E402
from test_kernels import CASES, REF  # noqa: E402


def dev(a):
    return gpu.to_device(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=["float32", "float64"])
@settings(max_examples=10, deadline=None, derandomize=True)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_kernel_parity_on_the_gpu(name, dtype, data, seed):
    args = CASES[name](data.draw, np.random.default_rng(seed), dtype)
    ref_args = [np.array(a) if isinstance(a, np.ndarray) else a for a in args]
    dev_args = [dev(a) for a in args]
    expected = REF[name](*ref_args)
    got = getattr(gpu, name)(*dev_args)
    if name.endswith("_"):
        pairs = [(gpu.to_host(a), ra) for a, ra in zip(dev_args, ref_args) if isinstance(ra, np.ndarray)]
    else:
        got = got if isinstance(got, tuple) else (got,)
        expected = expected if isinstance(expected, tuple) else (expected,)
        pairs = [(None if g is None else gpu.to_host(g), e) for g, e in zip(got, expected)]
    for k, (g, e) in enumerate(pairs):
        if e is None:
            assert g is None
            continue
        assert g.shape == np.shape(e) and g.dtype == np.asarray(e).dtype, f"{name} output {k}"
        assert_close(g, e, dtype, f"{name} output {k}")


@pytest.mark.parametrize("variant", [1, 2, 3])
@pytest.mark.parametrize("m,k,n", [(300, 257, 190), (129, 1000, 65), (1, 33, 513), (1024, 64, 1024)])
def test_matmul_variants_ragged_against_gpu_tiles(variant, m, k, n):
    r = np.random.default_rng(m + k + n)
    a, b = r.standard_normal((m, k)).astype(np.float32), r.standard_normal((k, n)).astype(np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64)
    assert_close(gpu.to_host(gpu.matmul(dev(a), dev(b), variant=variant)), want, np.float32, f"v{variant}")


@pytest.mark.parametrize("variant", [1, 2, 3])
def test_fused_linear_relu_and_transposes_on_the_gpu(variant):
    r = np.random.default_rng(variant)
    a, b, bias = r.standard_normal((200, 300)), r.standard_normal((150, 200)), r.standard_normal(150)
    got = gpu._matmul(dev(a), dev(b), ta=True, tb=True, bias=dev(bias), relu=True, variant=variant)
    assert_close(gpu.to_host(got), np.maximum(a.T @ b.T + bias, 0), np.float64, f"v{variant}")


@pytest.mark.parametrize("variant", [1, 2, 3])
@pytest.mark.parametrize("axis", [None, 0, 1, (0, 2)])
def test_reductions_on_the_gpu(variant, axis, monkeypatch):
    monkeypatch.setattr(gpu, "REDUCE_VARIANT", variant)
    x = np.random.default_rng(0).standard_normal((37, 1500, 3))
    for op in ("sum", "max", "min", "mean"):
        assert_close(gpu.to_host(gpu.reduce(op, dev(x), axis)), getattr(x, op)(axis=axis), np.float64, op)


def test_scatter_add_with_many_repeated_indices():
    """Atomic adds: many threads hit the same rows (an embedding's gradient)."""
    r = np.random.default_rng(1)
    idx = r.integers(0, 5, 4000)
    g = r.standard_normal((4000, 7))
    want = np.zeros((5, 7))
    np.add.at(want, idx, g)
    got = gpu.scatter_add(gpu.full((5, 7), 0, np.float64), dev(idx), dev(g))
    assert_close(gpu.to_host(got), want, np.float64, "scatter_add")


def test_lstm_gates_at_the_benchmark_shapes():
    r = np.random.default_rng(2)
    zx, zh, c = (r.standard_normal(s).astype(np.float32) for s in ((64, 1024), (64, 1024), (64, 256)))
    b = r.standard_normal(1024).astype(np.float32)
    got = gpu.lstm_gates_forward(dev(zx), dev(zh), dev(b), dev(c))
    for g, e in zip(got, reference.lstm_gates_forward(zx, zh, b, c)):
        assert_close(gpu.to_host(g), e, np.float32, "lstm_gates_forward")


@pytest.mark.parametrize("variant", [1, 2])
def test_batchnorm_on_a_tall_batch(variant, monkeypatch):
    """FCN-6's batch 4096: both column kernels (a thread per column, column blocks), forward and backward."""
    monkeypatch.setattr(gpu, "BATCHNORM_VARIANT", variant)
    r = np.random.default_rng(3)
    x = (3 + r.standard_normal((4096, 257))).astype(np.float32)
    gamma, beta = r.standard_normal(257).astype(np.float32), r.standard_normal(257).astype(np.float32)
    eps = np.float32(1e-5)
    y, mu, var, invstd = gpu.batchnorm_relu_train_forward(dev(x), dev(gamma), dev(beta), eps)
    for got, want in zip((y, mu, var, invstd), reference.batchnorm_relu_train_forward(x, gamma, beta, eps)):
        assert_close(gpu.to_host(got), want, np.float32, "batchnorm_relu_train_forward")
    g = r.standard_normal(x.shape).astype(np.float32)
    want = reference.batchnorm_relu_backward(g, x, gpu.to_host(y), gpu.to_host(mu), gamma, gpu.to_host(invstd), True)
    got = gpu.batchnorm_relu_backward(dev(g), dev(x), y, mu, dev(gamma), invstd, True)
    for k, (a, b) in enumerate(zip(got, want)):
        assert_close(gpu.to_host(a), b, np.float32, f"batchnorm_relu_backward output {k}")


@pytest.mark.parametrize("variant", [1, 2, 3])
def test_weight_gradient_at_a_large_batch_splits_k(variant):
    """dW = x^T g at batch 4096: few output tiles, a long K, so gpu.py splits K (partial products, then a sum)."""
    r = np.random.default_rng(4)
    x, g = r.standard_normal((4096, 300)).astype(np.float32), r.standard_normal((4096, 10)).astype(np.float32)
    dW = gpu._matmul(dev(x), dev(g), ta=True, variant=variant)
    assert gpu._split_k(4096, 3) > 1
    assert_close(gpu.to_host(dW), x.astype(np.float64).T @ g, np.float32, f"v{variant} dW")

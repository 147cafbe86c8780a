"""The CUDA kernels (kernels/cuda.py through kernels/gpu.py) against the NumPy reference, under the CUDA simulator.

These tests run only when NUMBA_ENABLE_CUDASIM=1 was set before numba was imported, i.e. in their own process:
tests/test_cuda_simulator.py starts one (`NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda_kernels.py`), so
the normal suite runs them too. The simulator runs one OS thread per CUDA thread and hides races, so blocks are
small here (gpu.py picks 32 threads, 8 x 8 tiles under the simulator) and shapes tiny but ragged: not multiples of
a tile, several tiles along each axis where tiles matter. A real GPU runs the same cases (tests/test_cuda_gpu.py);
tests/test_cuda_ptx.py compiles every kernel for one.

Each reference.py function gets the inputs of its CPU parity case (tests/test_kernels.py), made C-contiguous and
copied to the device, and is compared at the same tolerances (float32 to 1e-5, float64 to 1e-12, relative to the
values' size). Every numbered variant is checked, not only the default.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("CUDA simulator tests: run with NUMBA_ENABLE_CUDASIM=1 (tests/test_cuda_simulator.py does)",
                allow_module_level=True)
pytest.importorskip("numba.cuda", reason="numba-cuda is not installed: pip install -e '.[cuda]'")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from helpers import assert_close  # noqa: E402
from minidni.kernels import gpu, reference  # noqa: E402
from test_kernels import CASES, REF  # noqa: E402  (the CPU parity cases: the same inputs for every backend)

DTYPES = (np.float32, np.float64)
# the simulator is slow: a few examples a kernel
FEW = settings(max_examples=4, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture])


def dev(a):
    return gpu.to_device(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a


def host(x):
    return None if x is None else gpu.to_host(x)


def check_outputs(name, got, expected, dtype):
    got = got if isinstance(got, tuple) else (got,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert len(got) == len(expected), f"{name}: {len(got)} results, reference {len(expected)}"
    for k, (g, e) in enumerate(zip(got, expected)):
        if e is None:
            assert g is None, f"{name} output {k}: reference gives None, cuda gives {type(g).__name__}"
            continue
        g, e = host(g), np.asarray(e)
        assert g.shape == e.shape and g.dtype == e.dtype, f"{name} output {k}: cuda {g.dtype}{g.shape}, " \
                                                            f"reference {e.dtype}{e.shape}"
        assert_close(g, e, dtype, f"{name} output {k}")


# ---- every reference.py function, on its CPU parity case ------------------------------------------------------------
# every matmul variant under the linear layer (the other users of matmul, fused and conv, run the default v3), and
# both batch-norm variants (v1 a thread per column, v2 column blocks)
VARIANTS = {"linear_forward": ("MATMUL_VARIANT", (1, 2, 3)), "linear_backward": ("MATMUL_VARIANT", (1, 2, 3)),
            **{name: ("BATCHNORM_VARIANT", (1, 2)) for name in ("batchnorm_train_forward", "batchnorm_backward",
                                                                "batchnorm_relu_train_forward",
                                                                "batchnorm_relu_backward")}}
PARITY = [(name, setting, v) for name in sorted(CASES)
          for setting, versions in [VARIANTS.get(name, (None, (None,)))] for v in versions]


@pytest.mark.parametrize("name,setting,variant", PARITY, ids=[f"{n}-v{v}" if v else n for n, _, v in PARITY])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@FEW
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_kernel_parity(name, setting, variant, dtype, data, seed, monkeypatch):
    if setting:
        monkeypatch.setattr(gpu, setting, variant)
    args = CASES[name](data.draw, np.random.default_rng(seed), dtype)
    ref_args = [np.array(a) if isinstance(a, np.ndarray) else a for a in args]
    dev_args = [dev(a) for a in args]
    expected = REF[name](*ref_args)
    got = getattr(gpu, name)(*dev_args)
    if name.endswith("_"):  # in place: compare what was updated
        assert got is None
        for k, (a, ra) in enumerate(zip(dev_args, ref_args)):
            if isinstance(ra, np.ndarray):
                assert_close(host(a), ra, dtype, f"{name} argument {k} after the in-place update")
    else:
        check_outputs(name, got, expected, dtype)
        for k, (a, before) in enumerate(zip(dev_args, args)):  # kernels never modify their inputs
            if isinstance(before, np.ndarray):
                np.testing.assert_array_equal(host(a), before, err_msg=f"cuda {name} modified its argument {k}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_lstm_gates_write_into_out(dtype):
    r = np.random.default_rng(1)
    zx, zh, c = (r.standard_normal(s).astype(dtype) for s in ((3, 20), (3, 20), (3, 5)))
    b = r.standard_normal(20).astype(dtype)
    out = tuple(gpu.full(s, 0, dtype) for s in ((3, 5), (3, 5), (3, 20)))
    got = gpu.lstm_gates_forward(dev(zx), dev(zh), dev(b), dev(c), out=out)
    assert all(g is o for g, o in zip(got, out))
    check_outputs("lstm_gates_forward(out=)", got, reference.lstm_gates_forward(zx, zh, b, c), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", ["adam_step_", "sgd_step_"])
def test_in_place_kernels_several_steps(name, dtype):
    """Ten updates in a row with the state (m, v, momentum buffer) kept on the device between calls."""
    r = np.random.default_rng(5)
    shape = (7, 3)
    p_ref = r.standard_normal(shape).astype(dtype)
    state_ref = [np.zeros(shape, dtype), np.zeros(shape, dtype)]
    p_dev, state_dev = dev(p_ref), [dev(s) for s in state_ref]
    s = np.dtype(dtype).type
    for t in range(1, 11):
        g = r.standard_normal(shape).astype(dtype)
        if name == "adam_step_":
            rest = (s(1e-2), s(0.9), s(0.999), s(1e-8), s(1 - 0.9 ** t), s(1 - 0.999 ** t), s(0.01))
            reference.adam_step_(p_ref, g, *state_ref, *rest)
            gpu.adam_step_(p_dev, dev(g), *state_dev, *rest)
        else:
            rest = (s(0.1), s(0.9), s(0.01), True)
            reference.sgd_step_(p_ref, g, state_ref[0], *rest)
            gpu.sgd_step_(p_dev, dev(g), state_dev[0], *rest)
    assert_close(host(p_dev), p_ref, dtype, "parameters after 10 steps")
    for a, b in zip(state_dev, state_ref):
        assert_close(host(a), b, dtype, "optimizer state after 10 steps")


# ---- matmul variants on shapes that span several tiles ---------------------------------------------------------------
# (M, K, N, split-K slices): ragged against 8x8 and 8x8x4 tiles; None = gpu.py's choice (1 at these sizes)
MATMUL_SHAPES = [(1, 1, 1, None), (13, 11, 17, None), (9, 20, 3, None), (17, 5, 16, None), (13, 11, 17, 3),
                 (9, 20, 3, 3)]


@pytest.mark.parametrize("variant", [1, 2, 3])
@pytest.mark.parametrize("m,k,n,split", MATMUL_SHAPES)
def test_matmul_variants_across_tiles(variant, m, k, n, split, monkeypatch):
    """split: K cut into 3 slices (split-K: partial products, then their sum), ragged slices included."""
    monkeypatch.setattr(gpu, "SPLIT_K", split)
    r = np.random.default_rng(m * 100 + k * 10 + n)
    a, b = r.standard_normal((m, k)).astype(np.float32), r.standard_normal((k, n)).astype(np.float32)
    got = host(gpu.matmul(dev(a), dev(b), variant=variant))
    assert_close(got, a @ b, np.float32, f"v{variant} {a.shape}@{b.shape}")


@pytest.mark.parametrize("variant", [1, 2, 3])
def test_matmul_transposed_operands_bias_and_relu(variant):
    """The fused epilogues and the in-place transposes of the backward pass: relu(A^T B^T + bias)."""
    r = np.random.default_rng(variant)
    a, b, bias = r.standard_normal((11, 10)), r.standard_normal((9, 11)), r.standard_normal(9)
    got = gpu._matmul(dev(a), dev(b), ta=True, tb=True, bias=dev(bias), relu=True, variant=variant)
    assert_close(host(got), np.maximum(a.T @ b.T + bias, 0), np.float64, f"v{variant}")


@pytest.mark.parametrize("variant", [1, 2, 3])
def test_split_k_weight_gradient(variant, monkeypatch):
    """dW = x^T g with K = the batch cut into slices (what a large batch gets on a GPU), and K = 0."""
    monkeypatch.setattr(gpu, "SPLIT_K", 4)
    r = np.random.default_rng(variant)
    x, g = r.standard_normal((19, 6)), r.standard_normal((19, 5))
    _, dW, _ = gpu.linear_backward(dev(x), dev(np.zeros((6, 5))), dev(g), False, True, False)
    assert_close(host(dW), x.T @ g, np.float64, f"v{variant} split-K dW")
    empty = gpu._matmul(gpu.full((0, 3), 0, np.float64), gpu.full((0, 2), 0, np.float64), ta=True, variant=variant)
    np.testing.assert_array_equal(host(empty), np.zeros((3, 2)))


def test_matmul_explains_mismatched_shapes():
    with pytest.raises(ValueError, match=r"inner dimensions differ.*\(3 vs 4\)"):
        gpu.matmul(gpu.full((2, 3), 1, np.float32), gpu.full((4, 5), 1, np.float32))


# ---- elementwise primitives ------------------------------------------------------------------------------------------
def positive_or_normal(op, r, shape, dtype):
    x = r.standard_normal(shape)
    return (np.abs(x) + 0.2 if op in ("log", "sqrt", "log1p") else x).astype(dtype)


NUMPY_UNARY = {"neg": np.negative, "exp": np.exp, "log": np.log, "log1p": np.log1p, "sqrt": np.sqrt, "abs": np.abs,
               "square": np.square, "relu": lambda x: np.maximum(x, 0), "tanh": np.tanh,
               "sigmoid": reference.sigmoid_forward, "sign": np.sign}


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("op", sorted(NUMPY_UNARY))
def test_unary(op, dtype):
    x = positive_or_normal(op, np.random.default_rng(0), (3, 5), dtype)
    x[0, 0] = 0  # sign(0) = 0, relu(0) = 0
    if op in ("log", "sqrt"):
        x[0, 0] = 1
    assert_close(host(gpu.unary(op, dev(x))), NUMPY_UNARY[op](x), dtype, op)


NUMPY_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "pow": np.power,
                "maximum": np.maximum, "minimum": np.minimum, "gt": np.greater, "ge": np.greater_equal,
                "lt": np.less, "le": np.less_equal, "eq": np.equal}
SHAPE_PAIRS = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 3), (4, 1)), ((), (2, 3))]


@pytest.mark.parametrize("variant", [None, 1])
@pytest.mark.parametrize("shapes", SHAPE_PAIRS, ids=[f"{a}-{b}" for a, b in SHAPE_PAIRS])
@pytest.mark.parametrize("op", sorted(NUMPY_BINARY))
def test_binary_broadcasting(op, shapes, variant, monkeypatch):
    monkeypatch.setattr(gpu, "ELEMENTWISE_VARIANT", variant)
    r = np.random.default_rng(1)
    a, b = (r.uniform(0.5, 2.0, s).astype(np.float32) for s in shapes)
    b.reshape(-1)[:1] = a.reshape(-1)[:1]  # one tie, so eq / ge / le see equality
    want = NUMPY_BINARY[op](a, b).astype(np.float32)
    assert_close(host(gpu.binary(op, dev(a), dev(b))), want, np.float32, f"{op} {shapes}")


@pytest.mark.parametrize("op", sorted(NUMPY_BINARY))
def test_binary_with_a_python_scalar(op):
    x = np.random.default_rng(2).uniform(0.5, 2.0, (2, 5))
    x[0, 0] = 1.5
    for left, right, got in ((x, 1.5, gpu.binary(op, dev(x), 1.5)), (1.5, x, gpu.binary(op, 1.5, dev(x)))):
        assert host(got).dtype == np.float64
        assert_close(host(got), NUMPY_BINARY[op](left, right), np.float64, op)


def test_binary_nan_and_activation_backward_ops():
    x = np.array([np.nan, 1.0, -2.0], np.float32)
    y = np.array([0.0, np.nan, 3.0], np.float32)
    np.testing.assert_array_equal(host(gpu.binary("maximum", dev(x), dev(y))), np.maximum(x, y))
    np.testing.assert_array_equal(host(gpu.binary("minimum", dev(x), dev(y))), np.minimum(x, y))
    np.testing.assert_array_equal(host(gpu.relu_backward(dev(np.array([0.0, 2.0], np.float32)),
                                                         dev(np.array([np.nan, 3.0], np.float32)))), [np.nan, 3.0])


def test_binary_explains_shapes_that_do_not_broadcast():
    with pytest.raises(ValueError, match=r"binary add: shapes \(2, 3\) and \(4,\) do not broadcast"):
        gpu.binary("add", gpu.full((2, 3), 0, np.float32), gpu.full((4,), 0, np.float32))
    with pytest.raises(ValueError, match="unknown op 'plus'"):
        gpu.binary("plus", gpu.full((2,), 0, np.float32), 1.0)


# ---- reductions ------------------------------------------------------------------------------------------------------
AXES = [None, 0, 1, -1, (0, 2), (1, 2), (0, 1, 2)]
# v2 (a block per output) on the layouts it is for: few outputs, long rows (a block per output is slow to
# simulate); v3 (column blocks) for reductions over a leading axis
REDUCE_CASES = [(1, axis, False) for axis in AXES] + [(1, axis, True) for axis in (None, 1, (0, 2))] + \
    [(2, axis, False) for axis in (None, (1, 2))] + [(3, axis, False) for axis in (None, 0, 1, (0, 2))]


@pytest.mark.parametrize("variant,axis,keepdims", REDUCE_CASES, ids=[f"v{v}-{a}-{k}" for v, a, k in REDUCE_CASES])
@pytest.mark.parametrize("op", ["sum", "max", "min", "mean"])
def test_reduce(op, axis, keepdims, variant, monkeypatch):
    monkeypatch.setattr(gpu, "REDUCE_VARIANT", variant)
    x = np.random.default_rng(3).standard_normal((3, 11, 5)).astype(np.float32)  # 11 > 8 threads: strided shares
    want = getattr(x, op)(axis=axis, keepdims=keepdims)
    got = host(gpu.reduce(op, dev(x), axis, keepdims))
    assert got.shape == want.shape
    assert_close(got, want, np.float32, f"{op} axis={axis}")


@pytest.mark.parametrize("variant", [1, 2, 3])
def test_reduce_max_propagates_nan(variant, monkeypatch):
    monkeypatch.setattr(gpu, "REDUCE_VARIANT", variant)
    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    x[1, 2] = np.nan
    for op in ("max", "min", "sum"):
        np.testing.assert_array_equal(host(gpu.reduce(op, dev(x), 1)), getattr(x, op)(axis=1))


@pytest.mark.parametrize("axis", [None, 0, 1, 2])
def test_argmax(axis):
    x = np.random.default_rng(4).standard_normal((3, 4, 5)).astype(np.float32)
    x[0, 1, 2] = x[0, 2, 2]  # a tie: the first one wins
    got = host(gpu.argmax(dev(x), axis))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, np.argmax(x, axis=axis))


# ---- data movement ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axes", [(1, 0, 2), (2, 0, 1), (0, 2, 1), None])
def test_transpose(axes):
    x = np.random.default_rng(5).standard_normal((2, 3, 4))
    got = host(gpu.transpose(dev(x), axes))
    np.testing.assert_array_equal(got, np.transpose(x, axes))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_take_and_scatter_add(axis):
    r = np.random.default_rng(6)
    x = r.standard_normal((4, 3, 5))
    idx = np.array([[2, 0], [2, -1]])  # repeated and negative indices
    idx = idx % x.shape[axis] if axis else idx
    np.testing.assert_array_equal(host(gpu.take(dev(x), dev(idx), axis)), np.take(x, idx, axis=axis))
    g = r.standard_normal(np.take(x, idx, axis=axis).shape)
    out = np.zeros_like(x)
    np.add.at(out, (slice(None),) * (axis % 3) + (idx,), g)
    got = gpu.scatter_add(gpu.full(x.shape, 0, np.float64), dev(idx), dev(g), axis)
    assert_close(host(got), out, np.float64, "scatter_add")


def test_full_copy_cast_where():
    r = np.random.default_rng(7)
    np.testing.assert_array_equal(host(gpu.full((2, 3), 2.5, np.float32)), np.full((2, 3), 2.5, np.float32))
    x = r.standard_normal((3, 4))
    c = gpu.copy(dev(x))
    np.testing.assert_array_equal(host(c), x)
    assert host(gpu.cast(dev(x), np.float32)).dtype == np.float32
    np.testing.assert_array_equal(host(gpu.cast(dev(x), np.float32)), x.astype(np.float32))
    cond = x > 0
    np.testing.assert_array_equal(host(gpu.where(dev(cond), dev(x), 0.0)), np.where(cond, x, 0.0))
    b = r.standard_normal(4)
    np.testing.assert_array_equal(host(gpu.where(dev(cond[:1]), dev(x), dev(b))), np.where(cond[:1], x, b))


INDICES = [(slice(1, 3),), (slice(None), 2), (1, slice(None, None, 2), slice(3, None)), (slice(None, None, -1),),
           (Ellipsis, slice(1, 4)), (-1,), (slice(4, 0, -2), 0, 1)]


@pytest.mark.parametrize("index", INDICES, ids=str)
def test_slice_copy_and_slice_add(index):
    r = np.random.default_rng(8)
    x = r.standard_normal((5, 4, 6))
    np.testing.assert_array_equal(host(gpu.slice_copy(dev(x), index)), x[index])
    g = r.standard_normal(x[index].shape)
    want = x.copy()
    want[index] += g
    got = gpu.slice_add(dev(x), index, dev(g))
    assert_close(host(got), want, np.float64, f"slice_add {index}")


def test_slice_add_broadcasts_g_and_explains_bad_indices():
    x = np.zeros((3, 4))
    got = host(gpu.slice_add(dev(x), (slice(None), slice(1, 3)), dev(np.array([1.0, 2.0]))))
    want = x.copy()
    want[:, 1:3] += [1.0, 2.0]
    np.testing.assert_array_equal(got, want)
    with pytest.raises(IndexError, match="index 3 is out of bounds for axis 0 of size 3"):
        gpu.slice_copy(dev(x), (3,))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_concatenate_and_pad(axis):
    r = np.random.default_rng(9)
    xs = [r.standard_normal(tuple(k + 1 if d == axis else n for d, n in enumerate((2, 3, 4)))) for k in range(3)]
    np.testing.assert_array_equal(host(gpu.concatenate([dev(x) for x in xs], axis)), np.concatenate(xs, axis))
    pads = [(1, 0), (0, 2), (2, 1)]
    np.testing.assert_array_equal(host(gpu.pad(dev(xs[0]), pads)), np.pad(xs[0], pads))


def test_to_device_and_back_and_availability():
    x = np.arange(6.0).reshape(2, 3).T  # not contiguous: copied
    np.testing.assert_array_equal(gpu.to_host(gpu.to_device(x)), x)
    assert gpu.is_available() and gpu.why_unavailable() is None and gpu.SIMULATOR


def test_integer_and_bool_operands_follow_numpy_dtypes():
    labels = np.array([0, 2, 1, 2])
    pred = np.array([0, 1, 1, 2])
    hits = gpu.binary("eq", dev(labels), dev(pred))
    assert host(hits).dtype == np.int64 and host(gpu.reduce("sum", hits)).item() == 3
    assert host(gpu.reduce("mean", hits)).dtype == np.float64 and host(gpu.reduce("mean", hits)) == 0.75
    assert host(gpu.reduce("sum", dev(labels == 2))).item() == 2
    half = host(gpu.binary("mul", dev(labels), 0.5))
    np.testing.assert_array_equal(half, labels * 0.5)
    x32 = dev(np.ones(3, np.float32))
    assert host(gpu.binary("mul", x32, 0)).dtype == np.float32 and host(gpu.binary("add", 2.5, x32)).dtype == np.float32


@pytest.mark.parametrize("variant", [1, 2, 3])
def test_fused_relu_epilogue_keeps_nan_and_zeroes_minus_infinity(variant, monkeypatch):
    monkeypatch.setattr(gpu, "MATMUL_VARIANT", variant)
    x, W = np.ones((2, 3), np.float32), np.zeros((3, 3), np.float32)
    b = np.array([-np.inf, np.nan, 2.0], np.float32)
    np.testing.assert_array_equal(host(gpu.linear_relu_forward(dev(x), dev(W), dev(b))),
                                  reference.linear_relu_forward(x, W, b))

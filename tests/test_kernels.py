"""Backend parity: every kernel of kernels/cpu.py (Numba) against its specification in kernels/reference.py (NumPy).

The two modules must define the same public functions with the same signatures (enumerated by name, so a kernel added
to one backend only fails here), and each kernel gets random small shapes from hypothesis, float32 and float64,
C-contiguous, transposed, strided and broadcast (zero-stride) inputs. Kernels must not modify their inputs, except
the in-place ones (name ending in `_`), which are run on copies and compared on what they update. A kernel with
several numbered versions (`cpu.<NAME>_VERSIONS`) has every version checked, not only the default.
Then the ops themselves run on both backends with broadcast and non-contiguous operands.
"""
from __future__ import annotations

import functools
import inspect

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import LAYOUTS, SETTINGS, assert_close, with_layout
from minidni import Tensor, ops, use_backend
from minidni.kernels import cpu, reference

DTYPES = (np.float32, np.float64)


def public_functions(module):
    return {name: f for name, f in vars(module).items()
            if inspect.isfunction(f) and f.__module__ == module.__name__ and not name.startswith("_")}


REF, CPU = public_functions(reference), public_functions(cpu)


def test_backends_define_the_same_kernels():
    assert set(REF) == set(CPU), (f"only in reference.py: {sorted(set(REF) - set(CPU))}; "
                                  f"only in cpu.py: {sorted(set(CPU) - set(REF))}")
    assert reference.NAME == "numpy" and cpu.NAME == "numba"


@pytest.mark.parametrize("name", sorted(set(REF) & set(CPU)))
def test_same_signature(name):
    """Same public parameters in the same order; cpu may add private ones (`_version=...`) that have defaults."""
    ref = inspect.signature(REF[name])
    fast = inspect.signature(CPU[name])
    public = [p for p in fast.parameters.values() if not p.name.startswith("_")]
    private = [p for p in fast.parameters.values() if p.name.startswith("_")]
    assert [(p.name, p.kind, p.default) for p in ref.parameters.values()] == \
        [(p.name, p.kind, p.default) for p in public], f"{name}: reference{ref} vs cpu{fast}"
    assert all(p.default is not inspect.Parameter.empty for p in private), f"cpu.{name}{fast}: private args need defaults"


def implementations(name):
    """[(id, callable)]: cpu.<name> itself, then each numbered version in cpu.<NAME>_VERSIONS -- called through the
    public function's `_version` argument when it has one, or directly when the version takes the same arguments."""
    public = CPU[name]
    params = inspect.signature(public).parameters
    table = getattr(cpu, name.upper() + "_VERSIONS", None)
    if "_version" in params:
        assert table, f"cpu.{name} takes _version but cpu.{name.upper()}_VERSIONS is missing"
    found = [("", public)]
    for k, impl in sorted((table or {}).items()):
        if "_version" in params:
            found.append((f"v{k}", functools.partial(public, _version=k)))
        elif list(inspect.signature(impl).parameters) == [p for p in params if not p.startswith("_")]:
            found.append((f"v{k}", impl))
    return found


# ---- random inputs ------------------------------------------------------------------------------------------------------
def draw_array(draw, r, shape, dtype, values="normal", broadcast=True, layouts=LAYOUTS):
    """An array of `shape` with random values in a drawn memory layout (a zero-stride broadcast view when allowed)."""
    kinds = layouts + (("broadcast",) if broadcast and len(shape) >= 1 else ())
    layout = draw(st.sampled_from(kinds))
    sample_shape = (1,) + tuple(shape[1:]) if layout == "broadcast" else shape
    if values == "normal":
        a = r.standard_normal(sample_shape)
    elif values == "positive":
        a = r.uniform(0.2, 3.0, sample_shape)
    elif values == "standardized":  # columns with mean 0 and std 1 exactly: batch norm's xhat
        a = r.standard_normal(sample_shape)
        a = (a - a.mean(axis=0)) / a.std(axis=0)
    else:
        raise ValueError(values)
    a = a.astype(dtype)
    if layout == "broadcast":
        return np.broadcast_to(a, shape)
    return with_layout(a, layout)


def well_conditioned_batch(r, n, c, dtype):
    """(n, c) columns with spread in [0.5, 2] around an offset in [-2, 2]: batch statistics that are not degenerate."""
    z = r.standard_normal((n, c))
    z = (z - z.mean(axis=0)) / z.std(axis=0)
    return (r.uniform(-2, 2, c) + r.uniform(0.5, 2, c) * z).astype(dtype)


def shape_nd(draw, min_dims=0, max_dims=3):
    return tuple(draw(st.lists(st.integers(1, 5), min_size=min_dims, max_size=max_dims)))


def scalar(dtype, value):
    return np.dtype(dtype).type(value)


def _unary(values="normal"):
    def make(draw, r, dtype):
        return (draw_array(draw, r, shape_nd(draw), dtype, values),)
    return make


def _unary_backward(forward):
    def make(draw, r, dtype):
        shape = shape_nd(draw)
        x = draw_array(draw, r, shape, dtype)
        y = with_layout(getattr(reference, forward)(np.ascontiguousarray(x)), draw(st.sampled_from(LAYOUTS)))
        return y, draw_array(draw, r, shape, dtype)
    return make


def _linear_forward(draw, r, dtype):
    n, i, o = (draw(st.integers(1, 6)) for _ in range(3))
    b = draw_array(draw, r, (o,), dtype, broadcast=False) if draw(st.booleans()) else None
    return draw_array(draw, r, (n, i), dtype), draw_array(draw, r, (i, o), dtype), b


def _linear_backward(draw, r, dtype):
    n, i, o = (draw(st.integers(1, 6)) for _ in range(3))
    need = tuple(draw(st.booleans()) for _ in range(3))
    return (draw_array(draw, r, (n, i), dtype), draw_array(draw, r, (i, o), dtype),
            draw_array(draw, r, (n, o), dtype)) + need


def _linear_relu_backward(draw, r, dtype):
    n, i, o = (draw(st.integers(1, 6)) for _ in range(3))
    need = tuple(draw(st.booleans()) for _ in range(3))
    x, W = draw_array(draw, r, (n, i), dtype), draw_array(draw, r, (i, o), dtype)
    y = with_layout(reference.linear_relu_forward(np.ascontiguousarray(x), np.ascontiguousarray(W), None),
                    draw(st.sampled_from(LAYOUTS)))     # the forward's output: zeros where the ReLU clipped
    return (x, W, y, draw_array(draw, r, (n, o), dtype)) + need


def _sum_rows(draw, r, dtype):
    return (draw_array(draw, r, (draw(st.integers(1, 6)), draw(st.integers(1, 6))), dtype),)


def _labels(draw, r, n, c):
    labels = r.integers(0, c, n)
    return labels if draw(st.booleans()) else with_layout(labels, "strided")


def _softmax_xent_forward(draw, r, dtype):
    n, c = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    scale = draw(st.sampled_from([0.1, 1.0, 20.0]))
    return scale * draw_array(draw, r, (n, c), dtype), _labels(draw, r, n, c)


def _softmax_xent_backward(draw, r, dtype):
    n, c = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    z = r.standard_normal((n, c))
    probs = (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).astype(dtype)
    g = np.asarray(r.standard_normal(), dtype=dtype)  # dL/dloss: a 0-d array, as backward passes it
    return probs, _labels(draw, r, n, c), g


def _mse_forward(draw, r, dtype):
    shape = shape_nd(draw, min_dims=1)
    return draw_array(draw, r, shape, dtype), draw_array(draw, r, shape, dtype)


def _mse_backward(draw, r, dtype):
    return _mse_forward(draw, r, dtype) + (np.asarray(r.standard_normal(), dtype=dtype),)


def _batchnorm_train_forward(draw, r, dtype):
    n, c = draw(st.integers(2, 8)), draw(st.integers(1, 5))
    x = with_layout(well_conditioned_batch(r, n, c, dtype), draw(st.sampled_from(LAYOUTS)))
    return (x, draw_array(draw, r, (c,), dtype, broadcast=False), draw_array(draw, r, (c,), dtype, broadcast=False),
            scalar(dtype, draw(st.sampled_from([1e-5, 1e-3, 0.1]))))


def _batchnorm_eval_forward(draw, r, dtype):
    n, c = draw(st.integers(1, 8)), draw(st.integers(1, 5))
    vec = lambda values="normal": draw_array(draw, r, (c,), dtype, values, broadcast=False)  # noqa: E731
    return (draw_array(draw, r, (n, c), dtype), vec(), vec(), vec(), vec("positive"), scalar(dtype, 1e-5))


def _batchnorm_backward(draw, r, dtype):
    n, c = draw(st.integers(2, 8)), draw(st.integers(1, 5))
    return (draw_array(draw, r, (n, c), dtype), draw_array(draw, r, (n, c), dtype, "standardized", broadcast=False),
            draw_array(draw, r, (c,), dtype, broadcast=False),
            draw_array(draw, r, (c,), dtype, "positive", broadcast=False), draw(st.booleans()))


def _batchnorm_relu_backward(draw, r, dtype):
    n, c = draw(st.integers(2, 8)), draw(st.integers(1, 5))
    x = with_layout(well_conditioned_batch(r, n, c, dtype), draw(st.sampled_from(LAYOUTS)))
    gamma = draw_array(draw, r, (c,), dtype, broadcast=False)
    y, mu, _, invstd = reference.batchnorm_relu_train_forward(np.ascontiguousarray(x), gamma,
                                                              r.standard_normal(c).astype(dtype), scalar(dtype, 1e-5))
    y = with_layout(y, draw(st.sampled_from(LAYOUTS)))        # the forward's output: zeros where the ReLU clipped
    return draw_array(draw, r, (n, c), dtype), x, y, mu, gamma, invstd, draw(st.booleans())


def _adam_step_(draw, r, dtype):
    shape = shape_nd(draw, min_dims=1)
    t = draw(st.integers(1, 5))
    b1, b2 = 0.9, 0.999
    p = r.standard_normal(shape).astype(dtype)  # updated in place: contiguous, as the optimizers guarantee
    m = (0.1 * r.standard_normal(shape)).astype(dtype)
    v = (0.01 * r.uniform(0, 1, shape)).astype(dtype)
    wd = draw(st.sampled_from([0.0, 0.01]))
    return (p, draw_array(draw, r, shape, dtype), m, v) + tuple(scalar(dtype, s) for s in (
        draw(st.sampled_from([1e-3, 0.1])), b1, b2, 1e-8, 1 - b1 ** t, 1 - b2 ** t, wd))


def _sgd_step_(draw, r, dtype):
    shape = shape_nd(draw, min_dims=1)
    momentum = draw(st.sampled_from([0.0, 0.9]))
    nesterov = bool(momentum) and draw(st.booleans())
    return (r.standard_normal(shape).astype(dtype), draw_array(draw, r, shape, dtype),
            r.standard_normal(shape).astype(dtype), scalar(dtype, draw(st.sampled_from([0.01, 0.5]))),
            scalar(dtype, momentum), scalar(dtype, draw(st.sampled_from([0.0, 0.01]))), nesterov)


def _conv_geometry(draw):
    n, c, o = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1)))
    h, w = draw(st.integers(kh, 6)), draw(st.integers(kw, 6))
    oh, ow = (h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1
    return (n, c, h, w), (o, c, kh, kw), (n, o, oh, ow), stride, padding


def _conv2d_forward(draw, r, dtype):
    xs, ws, _, stride, padding = _conv_geometry(draw)
    b = draw_array(draw, r, (ws[0],), dtype, broadcast=False) if draw(st.booleans()) else None
    return draw_array(draw, r, xs, dtype), draw_array(draw, r, ws, dtype), b, stride, padding


def _conv2d_backward(draw, r, dtype):
    xs, ws, ys, stride, padding = _conv_geometry(draw)
    need = tuple(draw(st.booleans()) for _ in range(3))
    return (draw_array(draw, r, xs, dtype), draw_array(draw, r, ws, dtype), draw_array(draw, r, ys, dtype),
            stride, padding) + need


def _pool_geometry(draw):
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(kernel[0], 7)),
             draw(st.integers(kernel[1], 7)))
    return shape, kernel, stride


def _maxpool2d_forward(draw, r, dtype):
    shape, kernel, stride = _pool_geometry(draw)
    return draw_array(draw, r, shape, dtype, broadcast=False), kernel, stride  # continuous values: no ties


def _maxpool2d_backward(draw, r, dtype):
    shape, kernel, stride = _pool_geometry(draw)
    _, argmax = reference.maxpool2d_forward(r.standard_normal(shape).astype(dtype), kernel, stride)
    return draw_array(draw, r, argmax.shape, dtype), argmax, shape, kernel, stride


def _avgpool2d_forward(draw, r, dtype):
    shape, kernel, stride = _pool_geometry(draw)
    return draw_array(draw, r, shape, dtype, broadcast=False), kernel, stride


def _avgpool2d_backward(draw, r, dtype):
    shape, kernel, stride = _pool_geometry(draw)
    out = (shape[0], shape[1], (shape[2] - kernel[0]) // stride[0] + 1, (shape[3] - kernel[1]) // stride[1] + 1)
    return draw_array(draw, r, out, dtype), shape, kernel, stride


def _lstm_gates_forward(draw, r, dtype):
    n, h = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return (draw_array(draw, r, (n, 4 * h), dtype), draw_array(draw, r, (n, 4 * h), dtype),
            draw_array(draw, r, (4 * h,), dtype, broadcast=False), draw_array(draw, r, (n, h), dtype))


def _lstm_gates_backward(draw, r, dtype):
    zx, zh, b, c = _lstm_gates_forward(draw, r, dtype)
    _, c_new, gates = reference.lstm_gates_forward(zx, zh, b, c)   # gates in their ranges: (0, 1) and (-1, 1)
    n, h = c.shape
    return (with_layout(gates, draw(st.sampled_from(LAYOUTS))), c, c_new, draw_array(draw, r, (n, h), dtype),
            draw_array(draw, r, (n, h), dtype))


CASES = {
    "relu_forward": _unary(), "relu_backward": _unary_backward("relu_forward"),
    "tanh_forward": _unary(), "tanh_backward": _unary_backward("tanh_forward"),
    "sigmoid_forward": _unary(), "sigmoid_backward": _unary_backward("sigmoid_forward"),
    "exp_forward": _unary(), "log_forward": _unary("positive"),
    "linear_forward": _linear_forward, "linear_backward": _linear_backward, "sum_rows": _sum_rows,
    "softmax_xent_forward": _softmax_xent_forward, "softmax_xent_backward": _softmax_xent_backward,
    "mse_forward": _mse_forward, "mse_backward": _mse_backward,
    "batchnorm_train_forward": _batchnorm_train_forward, "batchnorm_eval_forward": _batchnorm_eval_forward,
    "batchnorm_backward": _batchnorm_backward,
    "linear_relu_forward": _linear_forward, "linear_relu_backward": _linear_relu_backward,
    "batchnorm_relu_train_forward": _batchnorm_train_forward, "batchnorm_relu_backward": _batchnorm_relu_backward,
    "adam_step_": _adam_step_, "sgd_step_": _sgd_step_,
    "conv2d_forward": _conv2d_forward, "conv2d_backward": _conv2d_backward,
    "maxpool2d_forward": _maxpool2d_forward, "maxpool2d_backward": _maxpool2d_backward,
    "avgpool2d_forward": _avgpool2d_forward, "avgpool2d_backward": _avgpool2d_backward,
    "lstm_gates_forward": _lstm_gates_forward, "lstm_gates_backward": _lstm_gates_backward,
}


def test_every_kernel_has_a_parity_case():
    assert set(CASES) == set(REF), (f"kernels without a parity case: {sorted(set(REF) - set(CASES))}; "
                                    f"cases for missing kernels: {sorted(set(CASES) - set(REF))}")


def _copy(args):
    return [a.copy() if isinstance(a, np.ndarray) else a for a in args]


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


KERNEL_VERSIONS = [(name, vid, impl) for name in sorted(CASES) if name in CPU for vid, impl in implementations(name)]


@pytest.mark.parametrize("name,version,impl", KERNEL_VERSIONS,
                         ids=[f"{n}-{v}" if v else n for n, v, _ in KERNEL_VERSIONS])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@settings(SETTINGS, derandomize=True)  # the same examples every run: numba compiles each layout mix once, then caches
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_kernel_parity(name, version, impl, dtype, data, seed):
    args = CASES[name](data.draw, np.random.default_rng(seed), dtype)
    ref_args, cpu_args = _copy(args), list(args)
    before = _copy(args)
    expected = _as_tuple(REF[name](*ref_args))
    got = _as_tuple(impl(*cpu_args))
    assert len(got) == len(expected)
    for k, (g, e) in enumerate(zip(got, expected)):
        if e is None:
            assert g is None, f"{name} output {k}: reference gives None, cpu gives {type(g).__name__}"
            continue
        g, e = np.asarray(g), np.asarray(e)
        assert g.shape == e.shape and g.dtype == e.dtype, f"{name} output {k}: cpu {g.dtype}{g.shape}, " \
                                                            f"reference {e.dtype}{e.shape}"
        assert_close(g, e, dtype, f"{name} output {k}")
    if name.endswith("_"):  # in place: compare what was updated
        for k, (a, ra) in enumerate(zip(cpu_args, ref_args)):
            if isinstance(a, np.ndarray):
                assert_close(a, ra, dtype, f"{name} argument {k} after the in-place update")
    else:  # kernels never modify their inputs
        for k, (a, b) in enumerate(zip(cpu_args, before)):
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(a, b, err_msg=f"cpu.{name} modified its argument {k}")
        for k, (a, b) in enumerate(zip(ref_args, before)):
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(a, b, err_msg=f"reference.{name} modified its argument {k}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", ["adam_step_", "sgd_step_"])
def test_in_place_kernels_several_steps(name, dtype):
    """Ten updates in a row: state (m, v, momentum buffer) carried between calls stays in agreement."""
    r = np.random.default_rng(5)
    shape = (7, 3)
    p_ref = r.standard_normal(shape).astype(dtype)
    state_ref = [np.zeros(shape, dtype), np.zeros(shape, dtype)]
    p_cpu, state_cpu = p_ref.copy(), _copy(state_ref)
    s = lambda v: scalar(dtype, v)  # noqa: E731
    for t in range(1, 11):
        g = r.standard_normal(shape).astype(dtype)
        if name == "adam_step_":
            rest = (s(1e-2), s(0.9), s(0.999), s(1e-8), s(1 - 0.9 ** t), s(1 - 0.999 ** t), s(0.01))
            reference.adam_step_(p_ref, g, *state_ref, *rest)
            cpu.adam_step_(p_cpu, g, *state_cpu, *rest)
        else:
            rest = (s(0.1), s(0.9), s(0.01), True)
            reference.sgd_step_(p_ref, g, state_ref[0], *rest)
            cpu.sgd_step_(p_cpu, g, state_cpu[0], *rest)
    assert_close(p_cpu, p_ref, dtype, "parameters after 10 steps")
    for a, b in zip(state_cpu, state_ref):
        assert_close(a, b, dtype, "optimizer state after 10 steps")


@pytest.mark.parametrize("name", ["adam_step_", "sgd_step_"])
def test_in_place_kernels_update_non_contiguous_parameters(name):
    r = np.random.default_rng(0)
    p = with_layout(r.standard_normal((4, 3)), "strided")
    g = r.standard_normal((4, 3))
    if name == "adam_step_":
        args = (g, np.zeros((4, 3)), np.zeros((4, 3)), 0.1, 0.9, 0.999, 1e-8, 0.1, 0.001, 0.0)
    else:
        args = (g, np.zeros((4, 3)), 0.1, 0.0, 0.0, False)
    p_ref = p.copy()
    getattr(reference, name)(p_ref, *_copy(args))
    getattr(cpu, name)(p, *_copy(args))
    np.testing.assert_allclose(p, p_ref, rtol=1e-12)


def test_relu_propagates_nan_like_the_reference():
    x = np.array([np.nan, -1.0, 2.0])
    np.testing.assert_array_equal(cpu.relu_forward(x), reference.relu_forward(x))
    y, g = np.array([0.0, 1.0]), np.array([np.nan, np.nan])
    np.testing.assert_array_equal(cpu.relu_backward(y, g), reference.relu_backward(y, g))


def test_fused_relu_kernels_propagate_nan_like_the_reference():
    x, W = np.array([[np.nan, 1.0], [-1.0, 2.0]]), np.eye(2)
    for b in (None, np.array([0.5, -3.0])):
        np.testing.assert_array_equal(cpu.linear_relu_forward(x, W, b), reference.linear_relu_forward(x, W, b))
    y, g = np.array([[0.0, 1.0], [2.0, 0.0]]), np.full((2, 2), np.nan)
    for got, want in zip(cpu.linear_relu_backward(x, W, y, g, True, True, True),
                         reference.linear_relu_backward(x, W, y, g, True, True, True)):
        np.testing.assert_array_equal(got, want)
    xb = np.array([[np.nan, 1.0], [0.0, 2.0], [1.0, 0.5]])
    one, zero, eps = np.ones(2), np.zeros(2), np.float64(1e-5)
    for got, want in zip(cpu.batchnorm_relu_train_forward(xb, one, zero, eps),
                         reference.batchnorm_relu_train_forward(xb, one, zero, eps)):
        np.testing.assert_allclose(got, want, rtol=1e-12)   # NaN where the reference has NaN (equal_nan)
    for got, want in zip(cpu.batchnorm_train_forward(xb, one, zero, eps),
                         reference.batchnorm_train_forward(xb, one, zero, eps)):
        np.testing.assert_allclose(got, want, rtol=1e-12)   # the NaN column's mean, variance, outputs stay NaN


BATCH_STATS = {
    "numba v1": lambda x, g, b, eps: cpu.batchnorm_train_forward(x, g, b, eps, _version=1),
    "numba v2": lambda x, g, b, eps: cpu.batchnorm_train_forward(x, g, b, eps, _version=2),
    "numba fused relu": lambda x, g, b, eps: cpu.batchnorm_relu_train_forward(x, g, b, eps),
    "numpy": lambda x, g, b, eps: reference.batchnorm_train_forward(x, g, b, eps),
}


@pytest.mark.parametrize("kernel", list(BATCH_STATS))
@pytest.mark.parametrize("mean,std", [(1e4, 1.0), (-3e4, 0.5), (1e3, 1e-2)])
def test_batch_norm_statistics_stay_exact_far_from_zero(kernel, mean, std):
    """float64, |mean| / std up to 1e5: the one-pass statistics must not cancel (E[x^2] - E[x]^2 lost 8 digits at
    mean 1e4, std 1). The oracle is the two-pass formula in extended precision (np.longdouble)."""
    r = np.random.default_rng(7)
    x = mean + std * r.standard_normal((256, 16))
    one, zero, eps = np.ones(16), np.zeros(16), np.float64(1e-5)
    out = BATCH_STATS[kernel](x, one, zero, eps)
    y, mu, var, invstd = (out[0], *out[-3:])
    xl = x.astype(np.longdouble)
    exact_mu = xl.mean(axis=0)
    exact_var = ((xl - exact_mu) ** 2).mean(axis=0)
    exact_invstd = 1 / np.sqrt(exact_var + eps)
    exact_y = (xl - exact_mu) * exact_invstd
    if kernel == "numba fused relu":
        exact_y = np.maximum(exact_y, 0)
    np.testing.assert_allclose(mu, exact_mu.astype(np.float64), rtol=1e-14)
    np.testing.assert_allclose(var, exact_var.astype(np.float64), rtol=1e-13)
    np.testing.assert_allclose(invstd, exact_invstd.astype(np.float64), rtol=1e-13)
    np.testing.assert_allclose(y, exact_y.astype(np.float64), rtol=0, atol=1e-13 * abs(mean) / std)


def test_batch_norm_statistics_nan_in_a_later_row_stays_nan():
    x = np.array([[1.0, 1.0], [2.0, np.nan], [4.0, 0.5]])   # NaN away from row 0 (the shift of the one-pass sums)
    one, zero, eps = np.ones(2), np.zeros(2), np.float64(1e-5)
    for kernel in ("numba v2", "numba fused relu"):
        got, want = BATCH_STATS[kernel](x, one, zero, eps), BATCH_STATS["numpy"](x, one, zero, eps)
        for a, b in zip(got[-3:], want[-3:]):
            np.testing.assert_allclose(a, b, rtol=1e-12)      # column 1: NaN mean, variance, invstd in both


# ---- the ops on both backends, with broadcast and non-contiguous operands --------------------------------------------
def _run(fn, arrays, backend):
    """Value and input gradients of fn on one backend (upstream gradient: a fixed random array)."""
    with use_backend(backend):
        tensors = [Tensor(a, requires_grad=True) for a in arrays]
        out = fn(*tensors)
        u = np.random.default_rng(1).standard_normal(out.shape).astype(out.dtype)
        out.backward(u)
        return out.data, [t.grad for t in tensors]


def _n(r, d, *shape):
    return r.standard_normal(shape).astype(d)


def _pos(r, d, *shape):
    return r.uniform(0.5, 2.0, shape).astype(d)


OP_CASES = {
    # operands that broadcast against each other, and zero-stride broadcast views as inputs
    "add_broadcast": (ops.add, lambda r, d: [_n(r, d, 4, 1), _n(r, d, 3)]),
    "mul_broadcast_view": (ops.mul, lambda r, d: [np.broadcast_to(_n(r, d, 3), (4, 3)), _n(r, d, 4, 1)]),
    "div_broadcast": (ops.div, lambda r, d: [_n(r, d, 2, 3, 4), _pos(r, d, 3, 1)]),
    "relu_broadcast_view": (ops.relu, lambda r, d: [np.broadcast_to(_n(r, d, 1, 5), (3, 5))]),
    "tanh_transposed": (ops.tanh, lambda r, d: [_n(r, d, 5, 3).T]),
    "sigmoid_strided": (ops.sigmoid, lambda r, d: [_n(r, d, 6, 8)[::2, 1::3]]),
    "exp_transposed": (ops.exp, lambda r, d: [_n(r, d, 5, 3).T]),
    "log_strided": (ops.log, lambda r, d: [_pos(r, d, 6, 8)[::3, ::2]]),
    "linear_transposed": (ops.linear, lambda r, d: [_n(r, d, 3, 5).T, _n(r, d, 4, 3).T, _n(r, d, 8)[::2]]),
    "linear_broadcast_x": (ops.linear, lambda r, d: [np.broadcast_to(_n(r, d, 3), (4, 3)), _n(r, d, 3, 2)]),
    "cross_entropy_transposed": (lambda z: ops.cross_entropy(z, np.array([0, 2, 1, 2])),
                                 lambda r, d: [_n(r, d, 3, 4).T]),
    "cross_entropy_broadcast_view": (lambda z: ops.cross_entropy(z, np.array([0, 2, 1])),
                                     lambda r, d: [np.broadcast_to(_n(r, d, 4), (3, 4))]),
    "mse_broadcast_view": (ops.mse_loss, lambda r, d: [_n(r, d, 4, 3), np.broadcast_to(_n(r, d, 3), (4, 3))]),
    "batch_norm_train_strided": (lambda x, g, b: ops.batch_norm(x, g, b),
                                 lambda r, d: [well_conditioned_batch(r, 10, 4, d)[::2, ::-1], _n(r, d, 8)[::2],
                                               _n(r, d, 4)]),
    "linear_relu_strided": (ops.linear_relu, lambda r, d: [_n(r, d, 6, 5)[::2], _n(r, d, 4, 5).T, _n(r, d, 4)]),
    "batch_norm_relu_train_strided": (lambda x, g, b: ops.batch_norm_relu(x, g, b),
                                      lambda r, d: [well_conditioned_batch(r, 10, 4, d)[::2, ::-1], _n(r, d, 8)[::2],
                                                    _n(r, d, 4)]),
    "batch_norm_relu_eval_transposed": (lambda x, g, b: ops.batch_norm_relu(x, g, b, np.full(3, 0.2, x.dtype),
                                                                            np.full(3, 1.5, x.dtype), training=False),
                                        lambda r, d: [_n(r, d, 3, 5).T, _n(r, d, 3), _n(r, d, 3)]),
    "batch_norm_eval_transposed": (lambda x, g, b: ops.batch_norm(x, g, b, np.full(3, 0.2, x.dtype),
                                                                  np.full(3, 1.5, x.dtype), training=False),
                                   lambda r, d: [_n(r, d, 3, 5).T, _n(r, d, 3), _n(r, d, 3)]),
    "batch_norm_eval_broadcast_view": (lambda x, g, b: ops.batch_norm(x, g, b, np.full(3, 0.2, x.dtype),
                                                                      np.full(3, 1.5, x.dtype), training=False),
                                       lambda r, d: [np.broadcast_to(_n(r, d, 3), (4, 3)), _n(r, d, 3),
                                                     _n(r, d, 3)]),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", sorted(OP_CASES))
def test_ops_agree_across_backends(name, dtype):
    fn, make = OP_CASES[name]
    arrays = make(np.random.default_rng(3), dtype)
    value_cpu, grads_cpu = _run(fn, arrays, "numba")
    value_ref, grads_ref = _run(fn, arrays, "numpy")
    assert value_cpu.dtype == value_ref.dtype == dtype
    assert_close(value_cpu, value_ref, dtype, f"{name} value")
    for k, (a, b) in enumerate(zip(grads_cpu, grads_ref)):
        assert a.dtype == b.dtype == dtype
        assert_close(a, b, dtype, f"{name} gradient of input {k}")

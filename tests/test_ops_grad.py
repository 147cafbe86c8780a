"""Gradients of every op in minidni/ops.py, checked two ways in float64 on both kernel backends.

For each case: the full Jacobian by central differences over every input element (`gradcheck`), and the
random-direction identity <u, J v> = <J^T u, v> (`jvp_vjp_check`); each with contiguous, transposed and strided
inputs. Inputs are kept away from kinks (relu at 0) and singularities (log and division near 0). Hypothesis then
draws random small shapes, axes and indices for the ops whose behaviour depends on them.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import LAYOUTS, SETTINGS, away_from, gradcheck, jvp_vjp_check, with_layout
from minidni import Tensor, ops


def normal(*shape):
    return lambda r: r.standard_normal(shape)


def positive(*shape):
    return lambda r: r.uniform(0.5, 2.0, shape)


def nonzero(*shape):
    """|x| in [0.5, 2] with a random sign: safe denominators."""
    return lambda r: r.uniform(0.5, 2.0, shape) * r.choice([-1.0, 1.0], shape)


def kinkless(*shape):
    return lambda r: away_from(r.standard_normal(shape), 0.0, 0.05)


def separated(r, shape):
    """Distinct values at least 0.1 apart in random order: no ties, so max pooling is differentiable there."""
    n = int(np.prod(shape))
    return (r.permutation(n) * 0.1 - 0.05 * n + r.uniform(0, 0.02, n)).reshape(shape)


LABELS = np.array([0, 3, 1, 1, 2])
RUN_MEAN, RUN_VAR = np.array([0.3, -0.2, 0.1]), np.array([0.5, 1.5, 2.0])
MASK = np.array([[True, False, True, False, True], [False, False, True, True, False],
                 [True, True, False, False, False], [False, True, False, True, True]])


def _bn_train_with_stats(x, g, b):
    rm, rv = np.zeros(3), np.ones(3)  # updated in place, must not affect the output
    return ops.batch_norm(x, g, b, rm, rv, training=True, momentum=0.3)


# (id, fn(*tensors) -> Tensor, input makers)
CASES = [
    # ---- broadcasting arithmetic ----
    ("add_34_4", ops.add, [normal(3, 4), normal(4)]),
    ("add_31_14", ops.add, [normal(3, 1), normal(1, 4)]),
    ("add_234_31", ops.add, [normal(2, 3, 4), normal(3, 1)]),
    ("add_same", ops.add, [normal(3, 4), normal(3, 4)]),
    ("add_0d_3", ops.add, [normal(), normal(3)]),
    ("add_python_scalar", lambda x: 2.5 + x + 1.0, [normal(2, 3)]),
    ("sub_34_4", ops.sub, [normal(3, 4), normal(4)]),
    ("sub_31_14", ops.sub, [normal(3, 1), normal(1, 4)]),
    ("sub_234_31", ops.sub, [normal(2, 3, 4), normal(3, 1)]),
    ("rsub_scalar", lambda x: 1.5 - x, [normal(2, 3)]),
    ("mul_34_4", ops.mul, [normal(3, 4), normal(4)]),
    ("mul_31_14", ops.mul, [normal(3, 1), normal(1, 4)]),
    ("mul_234_31", ops.mul, [normal(2, 3, 4), normal(3, 1)]),
    ("mul_self", lambda x: x * x, [normal(3, 4)]),
    ("mul_scalar", lambda x: 3.0 * x * 0.5, [normal(3, 4)]),
    ("div_34_4", ops.div, [normal(3, 4), nonzero(4)]),
    ("div_31_14", ops.div, [normal(3, 1), nonzero(1, 4)]),
    ("div_234_31", ops.div, [normal(2, 3, 4), nonzero(3, 1)]),
    ("div_same", ops.div, [normal(3, 4), nonzero(3, 4)]),
    ("rdiv_scalar", lambda x: 2.0 / x, [nonzero(2, 3)]),
    ("div_scalar", lambda x: x / 3.0, [normal(2, 3)]),
    ("neg", ops.neg, [normal(2, 3)]),
    # ---- matrix products ----
    ("matmul", ops.matmul, [normal(3, 4), normal(4, 5)]),
    ("matmul_outer", ops.matmul, [normal(3, 1), normal(1, 4)]),
    ("matmul_operator", lambda a, b: a @ b, [normal(2, 3), normal(3, 2)]),
    ("linear_bias", ops.linear, [normal(4, 3), normal(3, 5), normal(5)]),
    ("linear_no_bias", ops.linear, [normal(4, 3), normal(3, 5)]),
    # ---- elementwise nonlinearities ----
    ("relu", ops.relu, [kinkless(3, 4)]),
    ("tanh", ops.tanh, [normal(3, 4)]),
    ("sigmoid", ops.sigmoid, [lambda r: 3 * r.standard_normal((3, 4))]),
    ("exp", ops.exp, [normal(3, 4)]),
    ("log", ops.log, [positive(3, 4)]),
    # ---- reductions ----
    *[(f"{name}_axis{axis}_keep{keep}", (lambda f, a, k: lambda x: f(x, axis=a, keepdims=k))(f, axis, keep),
       [normal(2, 3, 4)])
      for name, f in (("sum", ops.sum), ("mean", ops.mean))
      for axis in (None, 0, 1, -1, (0, 2), (-1, 0))
      for keep in (False, True)],
    # ---- shapes ----
    ("reshape_64", lambda x: x.reshape(6, 4), [normal(2, 3, 4)]),
    ("reshape_flat", lambda x: x.reshape(-1), [normal(2, 3, 4)]),
    ("reshape_432", lambda x: ops.reshape(x, (4, 3, 2)), [normal(2, 3, 4)]),
    ("transpose_default", lambda x: ops.transpose(x), [normal(2, 3, 4)]),
    ("transpose_102", lambda x: x.transpose(1, 0, 2), [normal(2, 3, 4)]),
    ("transpose_201", lambda x: x.transpose((2, 0, 1)), [normal(2, 3, 4)]),
    ("transpose_negative", lambda x: x.transpose(1, -1, 0), [normal(2, 3, 4)]),
    ("T", lambda x: x.T, [normal(3, 4)]),
    ("concat_axis0", lambda a, b, c: ops.concat([a, b, c], axis=0), [normal(2, 3), normal(1, 3), normal(4, 3)]),
    ("concat_axis1", lambda a, b: ops.concat([a, b], axis=1), [normal(2, 1), normal(2, 3)]),
    ("concat_axis_neg", lambda a, b: ops.concat([a, b], axis=-1), [normal(2, 3, 1), normal(2, 3, 2)]),
    ("getitem_slices", lambda x: x[1:, ::2], [normal(4, 5)]),
    ("getitem_int", lambda x: x[1], [normal(4, 5)]),
    ("getitem_int_col", lambda x: x[:, 2], [normal(4, 5)]),
    ("getitem_neg_int_slice", lambda x: x[-1, 1:3], [normal(4, 5)]),
    ("getitem_reverse", lambda x: x[::-1, 3:0:-2], [normal(4, 5)]),
    ("getitem_newaxis_ellipsis", lambda x: x[..., None, 1], [normal(2, 3, 4)]),
    ("getitem_fancy_repeats", lambda x: x[[0, 0, 2, 0]], [normal(4, 5)]),
    ("getitem_fancy_pairs", lambda x: x[[0, 2, 0, 0], [1, 1, 1, 4]], [normal(4, 5)]),
    ("getitem_fancy_array", lambda x: x[np.array([[3, 3], [1, 3]])], [normal(4, 5)]),
    ("getitem_mixed", lambda x: x[1:3, [0, 0, 4]], [normal(4, 5)]),
    ("getitem_mask", lambda x: x[MASK], [normal(4, 5)]),
    ("getitem_scalar", lambda x: x[2, 3], [normal(4, 5)]),
    ("getitem_tensor_index", lambda x: x[Tensor(np.array([1, 1, 0]))], [normal(3, 2)]),
    # ---- losses ----
    ("cross_entropy", lambda z: ops.cross_entropy(z, LABELS), [normal(5, 4)]),
    ("cross_entropy_large_logits", lambda z: ops.cross_entropy(z * 30.0, LABELS), [normal(5, 4)]),
    ("cross_entropy_one_row", lambda z: ops.cross_entropy(z, [2]), [normal(1, 3)]),
    ("mse_loss", ops.mse_loss, [normal(3, 4), normal(3, 4)]),
    ("mse_loss_1d", ops.mse_loss, [normal(5), normal(5)]),
    ("mse_loss_sum", lambda a, b: ops.mse_loss(a, b, reduction="sum"), [normal(3, 4), normal(3, 4)]),
    # ---- batch norm ----
    ("batch_norm_train", lambda x, g, b: ops.batch_norm(x, g, b), [normal(6, 3), normal(3), normal(3)]),
    ("batch_norm_train_two_rows", lambda x, g, b: ops.batch_norm(x, g, b), [normal(2, 3), normal(3), normal(3)]),
    ("batch_norm_train_stats", _bn_train_with_stats, [normal(5, 3), normal(3), normal(3)]),
    ("batch_norm_eval", lambda x, g, b: ops.batch_norm(x, g, b, RUN_MEAN.copy(), RUN_VAR.copy(), training=False),
     [normal(4, 3), normal(3), normal(3)]),
    # ---- fused layers (the same math as the two ops in a row) ----
    ("linear_relu", ops.linear_relu, [normal(4, 3), normal(3, 5), normal(5)]),
    ("linear_relu_no_bias", ops.linear_relu, [normal(4, 3), normal(3, 5)]),
    ("batch_norm_relu_train", lambda x, g, b: ops.batch_norm_relu(x, g, b), [normal(6, 3), normal(3), normal(3)]),
    ("batch_norm_relu_train_stats", lambda x, g, b: ops.batch_norm_relu(x, g, b, np.zeros(3), np.ones(3)),
     [normal(5, 3), normal(3), normal(3)]),
    ("batch_norm_relu_eval", lambda x, g, b: ops.batch_norm_relu(x, g, b, RUN_MEAN.copy(), RUN_VAR.copy(),
                                                                 training=False), [normal(4, 3), normal(3), normal(3)]),
    # ---- convolution and max pooling (NCHW) ----
    ("conv2d", ops.conv2d, [normal(2, 2, 4, 3), normal(3, 2, 2, 2), normal(3)]),
    ("conv2d_no_bias", ops.conv2d, [normal(1, 2, 4, 4), normal(2, 2, 3, 3)]),
    ("conv2d_stride_padding", lambda x, w, b: ops.conv2d(x, w, b, stride=(2, 1), padding=(1, 0)),
     [normal(2, 1, 5, 4), normal(2, 1, 3, 2), normal(2)]),
    ("conv2d_same", lambda x, w: ops.conv2d(x, w, padding="same"), [normal(1, 2, 3, 4), normal(2, 2, 3, 3)]),
    ("conv2d_stride2_pad1", lambda x, w: ops.conv2d(x, w, stride=2, padding=1), [normal(1, 1, 5, 5), normal(2, 1, 3, 3)]),
    ("max_pool2d", ops.max_pool2d, [lambda r: separated(r, (2, 2, 4, 4))]),
    ("max_pool2d_overlapping", lambda x: ops.max_pool2d(x, kernel=(3, 2), stride=(1, 2)),
     [lambda r: separated(r, (1, 2, 5, 5))]),
    ("max_pool2d_uneven", lambda x: ops.max_pool2d(x, kernel=2), [lambda r: separated(r, (1, 1, 5, 3))]),
    # ---- 0-d results flowing into more ops (numpy turns 0-d arithmetic into scalars) ----
    ("scalar_mul", lambda x: x.sum() * 2.0, [normal(3, 2)]),
    ("scalar_neg", lambda x: -x.mean(), [normal(3, 2)]),
    ("scalar_div", lambda x, y: x.sum() / y.sum(), [normal(3, 2), positive(2)]),
    ("scalar_exp_log", lambda x: (x * x).mean().exp() + x.sum().sigmoid().log(), [normal(3, 2)]),
    ("scalar_relu_tanh", lambda x: (x.sum() + 10.0).relu().tanh(), [normal(3, 2)]),
    # ---- a small network: everything together ----
    ("mlp", lambda x, w1, g, b, w2, b2: ops.cross_entropy(
        ops.linear(ops.tanh(ops.batch_norm(ops.linear(x, w1), g, b)), w2, b2), LABELS),
     [normal(5, 3), normal(3, 4), normal(4), normal(4), normal(4, 4), normal(4)]),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name,fn,makers", CASES, ids=[c[0] for c in CASES])
def test_op_gradients(name, fn, makers, layout, backend):
    r = np.random.default_rng(zlib.crc32(name.encode()))
    inputs = [with_layout(m(r), layout) for m in makers]
    gradcheck(fn, inputs)
    jvp_vjp_check(fn, inputs, r)


OPS_WITH_GRADIENT_TESTS = {"add", "sub", "mul", "div", "neg", "astype", "matmul", "linear", "relu", "tanh", "sigmoid",
                           "exp", "log", "sum", "mean", "reshape", "transpose", "concat", "getitem", "cross_entropy",
                           "mse_loss", "batch_norm", "conv2d", "max_pool2d", "linear_relu", "batch_norm_relu",
                           "avg_pool2d",            # conv2d and the pools: gradient checks in tests/test_conv.py
                           "lstm_cell", "lstm"}     # through several time steps: tests/test_lstm.py


def test_every_public_op_has_a_gradient_test():
    """A new op in ops.py must get cases here: the public functions of ops.py are exactly the ones listed above."""
    public = {n for n, f in vars(ops).items() if callable(f) and not isinstance(f, type) and not n.startswith("_")
              and getattr(f, "__module__", None) == ops.__name__} - {"unbroadcast"}  # a helper, tested below
    assert public == OPS_WITH_GRADIENT_TESTS, (f"untested ops: {sorted(public - OPS_WITH_GRADIENT_TESTS)}; "
                                               f"listed but gone: {sorted(OPS_WITH_GRADIENT_TESTS - public)}")


@pytest.mark.parametrize("grad_shape,shape,expected", [
    ((3, 4), (4,), lambda g: g.sum(axis=0)),
    ((3, 4), (3, 1), lambda g: g.sum(axis=1, keepdims=True)),
    ((2, 3, 4), (3, 1), lambda g: g.sum(axis=(0, 2)).reshape(3, 1)),
    ((2, 3, 4), (), lambda g: g.sum()),
    ((2, 3, 4), (1, 1, 4), lambda g: g.sum(axis=(0, 1), keepdims=True)),
    ((2, 3), (2, 3), lambda g: g),
])
def test_unbroadcast(grad_shape, shape, expected):
    g = np.random.default_rng(0).standard_normal(grad_shape)
    out = ops.unbroadcast(g, shape)
    assert out.shape == shape
    np.testing.assert_allclose(out, expected(g), rtol=1e-12)


# ---- astype: float32 <-> float64, with exactly representable steps so the differences are exact ----------------------
@pytest.mark.parametrize("src,dst", [(np.float64, np.float32), (np.float32, np.float64)])
def test_astype_gradient(src, dst, backend):
    r = np.random.default_rng(0)
    x = (r.integers(-64, 64, (3, 4)) / 16).astype(src)  # multiples of 1/16: exact in both dtypes
    step = 2.0 ** -4

    def fn(t):
        y = t.astype(dst)
        assert y.dtype == dst
        return y * y  # not linear, still exact for these inputs and steps

    gradcheck(fn, [x], eps=step, rtol=1e-12, atol=1e-12)
    u = r.integers(-4, 5, (3, 4)) / 4
    v = {0: (r.integers(-4, 5, (3, 4)) / 4).astype(src)}
    jvp_vjp_check(fn, [x], r, eps=step, rtol=1e-12, atol=1e-12, u=u, v=v)


def test_astype_same_dtype_is_identity():
    x = Tensor(np.ones(3), requires_grad=True)
    assert x.astype(np.float64) is x


# ---- hypothesis: random shapes, axes, indices ------------------------------------------------------------------------
def _seeded(draw):
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


@st.composite
def broadcast_pair(draw):
    """Two shapes that broadcast together: a result shape, each operand dropping leading dims or setting some to 1."""
    out = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    shapes = []
    for _ in range(2):
        keep = draw(st.integers(0, len(out)))
        s = [1 if draw(st.booleans()) else n for n in out[len(out) - keep:]]
        shapes.append(tuple(s))
    return shapes


@SETTINGS
@given(shapes=broadcast_pair(), op=st.sampled_from(["add", "sub", "mul", "div"]), data=st.data())
def test_broadcast_arithmetic_hypothesis(shapes, op, data, backend):
    r = _seeded(data.draw)
    a = r.standard_normal(shapes[0])
    b = nonzero(*shapes[1])(r) if op == "div" else r.standard_normal(shapes[1])
    layout = data.draw(st.sampled_from(LAYOUTS))
    inputs = [with_layout(a, layout), with_layout(b, layout)]
    gradcheck(getattr(ops, op), inputs)
    jvp_vjp_check(getattr(ops, op), inputs, r)


@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=0, max_size=3), op=st.sampled_from(
    ["relu", "tanh", "sigmoid", "exp", "log", "neg"]), layout=st.sampled_from(LAYOUTS), data=st.data())
def test_unary_hypothesis(shape, op, layout, data, backend):
    r = _seeded(data.draw)
    x = {"relu": kinkless, "log": positive}.get(op, normal)(*shape)(r)
    inputs = [with_layout(x, layout)]
    gradcheck(getattr(ops, op), inputs)
    jvp_vjp_check(getattr(ops, op), inputs, r)


@st.composite
def shape_and_axis(draw):
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    nd = len(shape)
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none":
        axis = None
    elif kind == "int":
        axis = draw(st.integers(-nd, nd - 1))
    else:
        picked = draw(st.lists(st.integers(0, nd - 1), unique=True, min_size=0, max_size=nd))
        axis = tuple(a - nd if draw(st.booleans()) else a for a in picked)
    return shape, axis


@SETTINGS
@given(sa=shape_and_axis(), keepdims=st.booleans(), op=st.sampled_from(["sum", "mean"]),
       layout=st.sampled_from(LAYOUTS), data=st.data())
def test_reduction_hypothesis(sa, keepdims, op, layout, data, backend):
    shape, axis = sa
    r = _seeded(data.draw)
    fn = lambda x: getattr(ops, op)(x, axis=axis, keepdims=keepdims)  # noqa: E731
    inputs = [with_layout(r.standard_normal(shape), layout)]
    out = gradcheck(fn, inputs)
    np.testing.assert_allclose(out.data, getattr(np, op)(inputs[0], axis=axis, keepdims=keepdims), rtol=1e-12)
    jvp_vjp_check(fn, inputs, r)


def _linear_inputs(r, n, i, o, bias, layout):
    """x (n, i), W (i, o) and, with bias, b (o,): random, in the drawn memory layout."""
    return [with_layout(r.standard_normal(s), layout) for s in ((n, i), (i, o)) + (((o,),) if bias else ())]


def _batch_norm_inputs(r, n, c, layout):
    """Running mean and variance (c,), and [x (n, c), gamma (c,), beta (c,)] in the drawn memory layout."""
    mean, var = r.standard_normal(c), r.uniform(0.5, 2.0, c)
    return mean, var, [with_layout(r.standard_normal(s), layout) for s in ((n, c), (c,), (c,))]


@SETTINGS
@given(n=st.integers(1, 5), i=st.integers(1, 5), o=st.integers(1, 5), bias=st.booleans(),
       layout=st.sampled_from(LAYOUTS), data=st.data())
def test_linear_hypothesis(n, i, o, bias, layout, data, backend):
    r = _seeded(data.draw)
    inputs = _linear_inputs(r, n, i, o, bias, layout)
    out = gradcheck(ops.linear, inputs)
    np.testing.assert_allclose(out.data, inputs[0] @ inputs[1] + (inputs[2] if bias else 0), rtol=1e-12, atol=1e-12)
    jvp_vjp_check(ops.linear, inputs, r)


@SETTINGS
@given(n=st.integers(2, 6), c=st.integers(1, 4), training=st.booleans(), layout=st.sampled_from(LAYOUTS),
       data=st.data())
def test_batch_norm_hypothesis(n, c, training, layout, data, backend):
    r = _seeded(data.draw)
    mean, var, inputs = _batch_norm_inputs(r, n, c, layout)
    fn = lambda x, g, b: ops.batch_norm(x, g, b, mean.copy(), var.copy(), training=training)  # noqa: E731
    gradcheck(fn, inputs)
    jvp_vjp_check(fn, inputs, r)


@SETTINGS
@given(n=st.integers(1, 5), i=st.integers(1, 5), o=st.integers(1, 5), bias=st.booleans(),
       layout=st.sampled_from(LAYOUTS), data=st.data())
def test_linear_relu_hypothesis(n, i, o, bias, layout, data, backend):
    r = _seeded(data.draw)
    inputs = _linear_inputs(r, n, i, o, bias, layout)
    out = gradcheck(ops.linear_relu, inputs)
    expected = ops.relu(ops.linear(*inputs))                     # the unfused pair: the same numbers, bit for bit
    np.testing.assert_array_equal(out.data, expected.data)
    jvp_vjp_check(ops.linear_relu, inputs, r)


@SETTINGS
@given(n=st.integers(2, 6), c=st.integers(1, 4), training=st.booleans(), layout=st.sampled_from(LAYOUTS),
       data=st.data())
def test_batch_norm_relu_hypothesis(n, c, training, layout, data, backend):
    r = _seeded(data.draw)
    mean, var, inputs = _batch_norm_inputs(r, n, c, layout)
    fn = lambda x, g, b: ops.batch_norm_relu(x, g, b, mean.copy(), var.copy(), training=training)  # noqa: E731
    out = gradcheck(fn, inputs)
    expected = ops.relu(ops.batch_norm(*inputs, mean.copy(), var.copy(), training=training))
    np.testing.assert_array_equal(out.data, expected.data)
    jvp_vjp_check(fn, inputs, r)


@SETTINGS
@given(n=st.integers(1, 6), c=st.integers(2, 5), scale=st.sampled_from([0.1, 1.0, 10.0]),
       layout=st.sampled_from(LAYOUTS), data=st.data())
def test_cross_entropy_hypothesis(n, c, scale, layout, data, backend):
    r = _seeded(data.draw)
    labels = r.integers(0, c, n)
    fn = lambda z: ops.cross_entropy(z, labels)  # noqa: E731
    inputs = [with_layout(scale * r.standard_normal((n, c)), layout)]
    out = gradcheck(fn, inputs)
    z = inputs[0]
    m = z.max(axis=1, keepdims=True)
    expected = np.mean(m[:, 0] + np.log(np.exp(z - m).sum(axis=1)) - z[np.arange(n), labels])
    # log-sum-exp of entries ~|z| carries an absolute rounding error ~eps * |z| in any float64 evaluation (the op's
    # and this one's alike): a loss near 0 (a confident right answer at scale 10) is only good to that, not to 1e-12
    # of itself. rtol keeps the check strict where the loss is large.
    np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=8 * np.finfo(np.float64).eps * np.abs(z).max())
    jvp_vjp_check(fn, inputs, r)


@SETTINGS
@given(shape=st.tuples(st.integers(1, 4), st.integers(1, 4)), data=st.data())
def test_getitem_fancy_hypothesis(shape, data, backend):
    """Fancy indices with repeats scatter-add their gradients back."""
    r = _seeded(data.draw)
    rows = data.draw(st.lists(st.integers(-shape[0], shape[0] - 1), min_size=1, max_size=6))
    cols = data.draw(st.lists(st.integers(-shape[1], shape[1] - 1), min_size=len(rows), max_size=len(rows)))
    index = data.draw(st.sampled_from([(rows,), (rows, cols), (slice(None), cols[:1] * 2)]))
    fn = lambda x: x[index if len(index) > 1 else index[0]]  # noqa: E731
    inputs = [r.standard_normal(shape)]
    gradcheck(fn, inputs)
    jvp_vjp_check(fn, inputs, r)


@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data())
def test_transpose_hypothesis(shape, data, backend):
    r = _seeded(data.draw)
    nd = len(shape)
    perm = data.draw(st.permutations(range(nd)))
    axes = tuple(a - nd if data.draw(st.booleans()) else a for a in perm)  # negative axes too
    fn = lambda x: ops.transpose(x, axes)  # noqa: E731
    inputs = [r.standard_normal(shape)]
    out = gradcheck(fn, inputs)
    np.testing.assert_array_equal(out.data, np.transpose(inputs[0], axes))
    jvp_vjp_check(fn, inputs, r)


@SETTINGS
@given(n=st.integers(1, 2), c=st.integers(1, 2), o=st.integers(1, 2), kh=st.integers(1, 3), kw=st.integers(1, 3),
       sh=st.integers(1, 2), sw=st.integers(1, 2), extra_h=st.integers(0, 2), extra_w=st.integers(0, 2),
       bias=st.booleans(), layout=st.sampled_from(LAYOUTS), data=st.data())
def test_conv2d_hypothesis(n, c, o, kh, kw, sh, sw, extra_h, extra_w, bias, layout, data, backend):
    r = _seeded(data.draw)
    ph, pw = data.draw(st.integers(0, kh - 1)), data.draw(st.integers(0, kw - 1))
    shapes = [(n, c, kh + extra_h, kw + extra_w), (o, c, kh, kw)] + ([(o,)] if bias else [])
    inputs = [with_layout(r.standard_normal(s), layout) for s in shapes]
    fn = lambda *t: ops.conv2d(*t, stride=(sh, sw), padding=(ph, pw))  # noqa: E731
    gradcheck(fn, inputs)
    jvp_vjp_check(fn, inputs, r)


@SETTINGS
@given(n=st.integers(1, 2), c=st.integers(1, 2), kh=st.integers(1, 3), kw=st.integers(1, 3), sh=st.integers(1, 3),
       sw=st.integers(1, 3), extra_h=st.integers(0, 3), extra_w=st.integers(0, 3), layout=st.sampled_from(LAYOUTS),
       data=st.data())
def test_max_pool2d_hypothesis(n, c, kh, kw, sh, sw, extra_h, extra_w, layout, data, backend):
    r = _seeded(data.draw)
    inputs = [with_layout(separated(r, (n, c, kh + extra_h, kw + extra_w)), layout)]
    fn = lambda x: ops.max_pool2d(x, kernel=(kh, kw), stride=(sh, sw))  # noqa: E731
    gradcheck(fn, inputs)
    jvp_vjp_check(fn, inputs, r)

"""Tests of 2-D convolution and max pooling, and of the layers built on them (Conv2d, BatchNorm2d, MaxPool2d, Flatten).

These are the pieces of Jaderberg et al. 2016's CNN (Sec. 3.3 / appendix A: 5x5 convs with resolution-preserving
padding, batch norm, ReLU, max pooling) and of its conv synthesizers. What is checked:

  * full central-difference Jacobians (float64, every element) on both backends, and <u, J v> = <J^T u, v>;
  * Numba versions 1 (direct loop), 2 (im2col + BLAS), 3 (bands over worker threads) and 4 (several images per
    GEMM) against the NumPy reference on random shapes, strides, paddings and memory layouts; version 3 the same for
    any band size and worker count, version 4 for any block size and worker count, and its hand-off to version 3;
  * average pooling: gradient checks, the kernels against the reference, overlapping windows sharing gradients;
  * max pooling with inputs kept away from ties (finite differences need a unique max), and the tie rule itself;
  * error messages that name the op and the shapes;
  * a tiny CNN that overfits 16 random images; and, when PyTorch is installed, values and gradients against it.
"""
import inspect

import numpy as np
import pytest
from helpers import LAYOUTS, gradcheck, jvp_vjp_check, with_layout

import minidni as md
from minidni import nn, ops
from minidni.kernels import cpu, reference


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# (stride, padding, kernel (KH, KW)) at N=2, C=2, H=W=5, O=2
CONV_CASES = [
    (1, 0, (3, 3)),
    (1, 1, (3, 3)),
    (1, "same", (3, 3)),
    (2, 0, (3, 3)),
    (2, 1, (3, 3)),
    ((2, 1), (0, 1), (3, 2)),  # rectangular kernel, different strides and paddings per axis
]


def _conv_inputs(rng, kernel, n=2, c=2, o=2, h=5, w=5):
    return [rng.standard_normal((n, c, h, w)), rng.standard_normal((o, c) + kernel), rng.standard_normal(o)]


def _distinct(rng, shape):
    """Values 0.1 apart in random order: every pooling window has a unique max, far (0.1 >> eps) from a tie."""
    size = int(np.prod(shape))
    return (rng.permutation(size) * 0.1 - 0.05 * size).reshape(shape)


# ---- gradient checks, both backends (the `backend` fixture runs each test on "numba" and "numpy") --------------------
@pytest.mark.parametrize("stride,padding,kernel", CONV_CASES)
def test_conv2d_gradcheck(backend, rng, stride, padding, kernel):
    gradcheck(lambda x, W, b: ops.conv2d(x, W, b, stride=stride, padding=padding), _conv_inputs(rng, kernel))


def test_conv2d_gradcheck_no_bias_strided_input(backend, rng):
    x, W, _ = _conv_inputs(rng, (3, 3))
    gradcheck(lambda x, W: ops.conv2d(x, W, stride=2, padding=1), [with_layout(x, "strided"), W])


@pytest.mark.parametrize("stride,padding,kernel", CONV_CASES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv2d_jvp_vjp(backend, rng, stride, padding, kernel, layout):
    x, W, b = _conv_inputs(rng, kernel, n=2, c=3, o=4, h=7, w=6)
    jvp_vjp_check(lambda x, W, b: ops.conv2d(x, W, b, stride=stride, padding=padding),
                  [with_layout(x, layout), W, b], rng)


@pytest.mark.parametrize("kernel,stride", [(2, None), (3, 2), (2, 1), ((2, 3), (1, 2))])
def test_max_pool2d_gradcheck(backend, rng, kernel, stride):
    gradcheck(lambda x: ops.max_pool2d(x, kernel, stride), [_distinct(rng, (2, 2, 5, 5))])


@pytest.mark.parametrize("kernel,stride", [(2, None), (3, 2), (2, 1)])
def test_max_pool2d_jvp_vjp(backend, rng, kernel, stride):
    x = with_layout(_distinct(rng, (2, 3, 6, 7)), "transposed")
    jvp_vjp_check(lambda x: ops.max_pool2d(x, kernel, stride), [x], rng)


@pytest.mark.parametrize("kernel,stride", [(2, None), (3, 2), (2, 1), ((2, 3), (1, 2))])
def test_avg_pool2d_gradcheck(backend, rng, kernel, stride):
    gradcheck(lambda x: ops.avg_pool2d(x, kernel, stride), [rng.standard_normal((2, 2, 5, 5))])


@pytest.mark.parametrize("kernel,stride", [(3, 2), (2, 1)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_avg_pool2d_jvp_vjp(backend, rng, kernel, stride, layout):
    x = with_layout(rng.standard_normal((2, 3, 6, 7)), layout)
    jvp_vjp_check(lambda x: ops.avg_pool2d(x, kernel, stride), [x], rng)


def test_avg_pool2d_overlapping_windows_share_the_gradient(backend):
    x = md.Tensor(np.zeros((1, 1, 5, 5)), requires_grad=True)
    y = ops.avg_pool2d(x, 3, stride=2)  # windows at rows/columns 0-2 and 2-4 share row and column 2
    assert y.shape == (1, 1, 2, 2)
    y.sum().backward()
    share = np.array([1, 1, 2, 1, 1]) / 9  # how many windows cover each row (or column), times 1/9
    np.testing.assert_allclose(x.grad[0, 0], np.outer(share, share) * 9, rtol=1e-12)


def test_max_pool2d_ties_go_to_the_first_max(backend):
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = x[0, 0, 1, 0] = 1.0  # window (0, 0) holds two equal maxima: (1, 0) comes first in row-major order
    t = md.Tensor(x, requires_grad=True)
    ops.max_pool2d(t, 2).sum().backward()
    expected = np.zeros((4, 4))
    expected[1, 0] = 1  # the first max of the top-left window
    expected[0, 2] = expected[2, 0] = expected[2, 2] = 1  # all-zero windows: their first element
    np.testing.assert_array_equal(t.grad[0, 0], expected)


def test_max_pool2d_overlapping_windows_add_up(backend):
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 5.0  # the max of all four 2x2 windows at stride 1
    t = md.Tensor(x, requires_grad=True)
    ops.max_pool2d(t, 2, stride=1).sum().backward()
    assert t.grad[0, 0, 1, 1] == 4 and t.grad.sum() == 4


def test_max_pool2d_propagates_nan(backend):
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = np.nan
    y = ops.max_pool2d(md.Tensor(x), 2).data
    assert np.isnan(y[0, 0, 0, 0]) and not np.isnan(y[0, 0, 1:, 1:]).any()


def test_first_layer_computes_no_input_gradient(backend, rng):
    x, W, b = _conv_inputs(rng, (3, 3))
    Wt = md.Tensor(W, requires_grad=True)
    xt = md.Tensor(x)  # data: no gradient wanted
    ops.conv2d(xt, Wt, b, padding="same").sum().backward()
    assert xt.grad is None and Wt.grad.shape == W.shape


# ---- kernels: the Numba versions against the NumPy reference -----------------------------------------------------
def _random_conv_case(seed):
    r = np.random.default_rng(seed)
    n, c, o = r.integers(1, 4), r.integers(1, 4), r.integers(1, 5)
    kh, kw = r.integers(1, 5, size=2)
    stride = tuple(int(s) for s in r.integers(1, 4, size=2))
    padding = tuple(int(p) for p in r.integers(0, 3, size=2))
    h = max(1, kh - 2 * padding[0]) + r.integers(0, 6)
    w = max(1, kw - 2 * padding[1]) + r.integers(0, 6)
    return r, (n, c, h, w), (o, c, kh, kw), stride, padding


def _close(actual, expected, dtype, what):
    assert actual.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype}, expected {np.dtype(dtype)}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    tol = 1e-12 if np.dtype(dtype) == np.float64 else 1e-5  # relative to the largest value
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * max(1.0, float(np.abs(expected).max(initial=0))),
                               err_msg=what)


@pytest.mark.parametrize("version", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(8))
def test_conv2d_versions_match_reference(version, dtype, seed):
    r, xs, ws, stride, padding = _random_conv_case(seed)
    layout = LAYOUTS[seed % len(LAYOUTS)]
    x = with_layout(r.standard_normal(xs).astype(dtype), layout)
    W = r.standard_normal(ws).astype(dtype)
    b = r.standard_normal(ws[0]).astype(dtype)
    y = reference.conv2d_forward(x, W, b, stride, padding)
    _close(cpu.CONV2D_FORWARD_VERSIONS[version](x, W, b, stride, padding), y, dtype, f"v{version} forward")
    _close(cpu.CONV2D_FORWARD_VERSIONS[version](x, W, None, stride, padding),
           reference.conv2d_forward(x, W, None, stride, padding), dtype, f"v{version} forward without bias")
    g = with_layout(r.standard_normal(y.shape).astype(dtype), LAYOUTS[(seed + 1) % len(LAYOUTS)])
    expected = reference.conv2d_backward(x, W, g, stride, padding, True, True, True)
    got = cpu.CONV2D_BACKWARD_VERSIONS[version](x, W, g, stride, padding, True, True, True)
    for name, a, e in zip(("dx", "dW", "db"), got, expected):
        _close(a, e, dtype, f"v{version} {name}")
    assert cpu.CONV2D_BACKWARD_VERSIONS[version](x, W, g, stride, padding, False, True, False)[::2] == (None, None)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(6))
def test_max_pool2d_kernels_match_reference(dtype, seed):
    r = np.random.default_rng(seed)
    kernel = tuple(int(k) for k in r.integers(1, 4, size=2))
    stride = tuple(int(s) for s in r.integers(1, 4, size=2))
    shape = (int(r.integers(1, 3)), int(r.integers(1, 4)), kernel[0] + int(r.integers(0, 5)),
             kernel[1] + int(r.integers(0, 5)))
    x = with_layout(r.standard_normal(shape).astype(dtype), LAYOUTS[seed % len(LAYOUTS)])
    if seed % 2:
        x = np.round(x)  # many ties: the tie rule must agree too
    y, idx = reference.maxpool2d_forward(x, kernel, stride)
    y2, idx2 = cpu.maxpool2d_forward(x, kernel, stride)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(idx2, idx)
    g = r.standard_normal(y.shape).astype(dtype)
    dx = reference.maxpool2d_backward(g, idx, x.shape, kernel, stride)
    _close(cpu.maxpool2d_backward(g, idx, x.shape, kernel, stride), dx, dtype, "maxpool backward")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(6))
def test_avg_pool2d_kernels_match_reference(dtype, seed):
    r = np.random.default_rng(100 + seed)
    kernel = tuple(int(k) for k in r.integers(1, 4, size=2))
    stride = tuple(int(s) for s in r.integers(1, 4, size=2))
    shape = (int(r.integers(1, 4)), int(r.integers(1, 4)), kernel[0] + int(r.integers(0, 5)),
             kernel[1] + int(r.integers(0, 5)))
    x = with_layout(r.standard_normal(shape).astype(dtype), LAYOUTS[seed % len(LAYOUTS)])
    y = reference.avgpool2d_forward(x, kernel, stride)
    _close(cpu.avgpool2d_forward(x, kernel, stride), y, dtype, "avgpool forward")
    g = with_layout(r.standard_normal(y.shape).astype(dtype), LAYOUTS[(seed + 1) % len(LAYOUTS)])
    _close(cpu.avgpool2d_backward(g, x.shape, kernel, stride), reference.avgpool2d_backward(g, x.shape, kernel, stride),
           dtype, "avgpool backward")


def _blas_threads(n):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return threadpoolctl.threadpool_limits(limits=n, user_api="blas")


def _case_with_reference(case, seed):
    """From ((N, C, H, W), (O, KH, KW), stride, padding): a strided float32 x, W, b, an upstream gradient g, and the
    reference's (y, dx, dW, db) -- the inputs and the expected outputs of the version-vs-workers tests."""
    xs, (o, kh, kw), stride, padding = case
    r = np.random.default_rng(seed)
    x = with_layout(r.standard_normal(xs).astype(np.float32), "strided")
    W = r.standard_normal((o, xs[1], kh, kw)).astype(np.float32)
    b = r.standard_normal(o).astype(np.float32)
    y_ref = reference.conv2d_forward(x, W, b, stride, padding)
    g = r.standard_normal(y_ref.shape).astype(np.float32)
    dx_ref, dW_ref, db_ref = reference.conv2d_backward(x, W, g, stride, padding, True, True, True)
    return x, W, b, g, stride, padding, (y_ref, dx_ref, dW_ref, db_ref)


def _same_on_one_and_two_workers(version, x, W, b, g, stride, padding, expected, label):
    """Version `version` on one and on two BLAS threads (= workers): each output close to `expected` (y, dx, dW, db),
    and y and dx the same bits on both (each output has one writer; dW is summed per worker, so only close)."""
    results = []
    for threads in (1, 2):
        with _blas_threads(threads):
            y = cpu.CONV2D_FORWARD_VERSIONS[version](x, W, b, stride, padding)
            dx, dW, db = cpu.CONV2D_BACKWARD_VERSIONS[version](x, W, g, stride, padding, True, True, True)
        for what, a, e in zip(("y", "dx", "dW", "db"), (y, dx, dW, db), expected):
            _close(a, e, np.float32, f"v{version} {what}, {label}, {threads} threads")
        results.append((y, dx))
    (y1, dx1), (y2, dx2) = results
    np.testing.assert_array_equal(y2, y1)
    np.testing.assert_array_equal(dx2, dx1)


@pytest.mark.parametrize("case", [
    # (N, C, H, W), (O, KH, KW), stride, padding: the paper's 5x5 same layer; a rectangular, strided one
    ((5, 3, 11, 9), (4, 5, 5), (1, 1), (2, 2)),
    ((4, 2, 9, 10), (3, 3, 2), (2, 1), (1, 0)),
])
def test_conv2d_v3_bands_and_workers(monkeypatch, case):
    """Version 3 with bands of one output row and with whole images, on one and on two workers: the reference's
    numbers, and for a given band size the same bits on any number of workers for y and dx (each output has one
    writer and every GEMM runs on one BLAS thread; dW is summed per worker, so it is only close)."""
    x, W, b, g, stride, padding, expected = _case_with_reference(case, seed=7)
    monkeypatch.setattr(cpu, "SPLIT_MIN_FLOPS", 0)  # split even these tiny products
    for band_bytes in (1, 1 << 30):  # 1 byte: one output row per band
        monkeypatch.setattr(cpu, "CONV_BAND_BYTES", band_bytes)
        _same_on_one_and_two_workers(3, x, W, b, g, stride, padding, expected, f"band bytes {band_bytes}")


@pytest.mark.parametrize("case", [
    ((7, 3, 6, 6), (4, 5, 5), (1, 1), (2, 2)),      # the paper's 5x5 same layer on a small map; 7 images: a short block
    ((5, 2, 9, 10), (3, 3, 2), (2, 1), (1, 0)),    # rectangular, strided: dx through version 2's col2im
])
def test_conv2d_v4_blocks_and_workers(monkeypatch, case):
    """Version 4 with one image per GEMM, with blocks of 3 (the last one shorter) and of the whole batch, on one and
    on two workers: the reference's numbers, and for a given block size the same bits on any number of workers for
    y and dx (the blocks, not the images, are split, so a block holds the same images whatever the split)."""
    x, W, b, g, stride, padding, expected = _case_with_reference(case, seed=11)
    (n, c, _, _), (_, _, kh, kw) = x.shape, W.shape
    L = g.shape[2] * g.shape[3]                     # output pixels per image
    monkeypatch.setattr(cpu, "SPLIT_MIN_FLOPS", 0)
    for images in (1, 3, n):
        monkeypatch.setattr(cpu, "CONV_BLOCK_COLUMNS", images * L)
        assert cpu._images_per_block(n, c * kh * kw, L, 4) == images
        _same_on_one_and_two_workers(4, x, W, b, g, stride, padding, expected, f"{images} images a block")


def test_conv2d_v4_large_images_take_version_3s_bands(monkeypatch):
    """An image whose im2col block alone exceeds CONV_BAND_BYTES goes to version 3 (bands of output rows): the same
    numbers as the reference, through version 3's path."""
    r = np.random.default_rng(3)
    x, W = r.standard_normal((2, 2, 8, 8)).astype(np.float32), r.standard_normal((3, 2, 3, 3)).astype(np.float32)
    g = r.standard_normal((2, 3, 8, 8)).astype(np.float32)
    monkeypatch.setattr(cpu, "CONV_BAND_BYTES", 2 * 9 * 64 * 4 - 1)   # one image's block is 2*9 x 64 floats
    assert cpu._images_per_block(2, 18, 64, 4) == 0
    calls = []
    real3 = cpu._conv2d_forward_3
    monkeypatch.setattr(cpu, "_conv2d_forward_3", lambda *a: calls.append("v3") or real3(*a))
    _close(cpu.CONV2D_FORWARD_VERSIONS[4](x, W, None, (1, 1), (1, 1)),
           reference.conv2d_forward(x, W, None, (1, 1), (1, 1)), np.float32, "v4 -> v3 forward")
    for a, e in zip(cpu.CONV2D_BACKWARD_VERSIONS[4](x, W, g, (1, 1), (1, 1), True, True, True),
                    reference.conv2d_backward(x, W, g, (1, 1), (1, 1), True, True, True)):
        _close(a, e, np.float32, "v4 -> v3 backward")
    assert calls, "version 4 did not hand the large image to version 3"


def test_conv2d_v3_restores_blas_threads(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    monkeypatch.setattr(cpu, "SPLIT_MIN_FLOPS", 0)
    x, W = np.ones((4, 2, 6, 6), np.float32), np.ones((3, 2, 3, 3), np.float32)
    with _blas_threads(2):
        cpu.conv2d_backward(x, W, cpu.conv2d_forward(x, W, None, (1, 1), (1, 1)), (1, 1), (1, 1), True, True, False)
        counts = {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}
    assert counts == {2}


@pytest.mark.parametrize("threads", [1, 2])
def test_pool_kernels_split_over_workers(monkeypatch, threads):
    monkeypatch.setattr(cpu, "SPLIT_MIN_ELEMENTS", 0)
    r = np.random.default_rng(3)
    x = with_layout(r.standard_normal((5, 3, 9, 9)).astype(np.float32), "transposed")
    with _blas_threads(threads):
        y, idx = cpu.maxpool2d_forward(x, (3, 3), (2, 2))
        ya = cpu.avgpool2d_forward(x, (3, 3), (2, 2))
        g = r.standard_normal(y.shape).astype(np.float32)
        dx, dxa = cpu.maxpool2d_backward(g, idx, x.shape, (3, 3), (2, 2)), cpu.avgpool2d_backward(g, x.shape, (3, 3),
                                                                                                  (2, 2))
    y_ref, idx_ref = reference.maxpool2d_forward(x, (3, 3), (2, 2))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    _close(dx, reference.maxpool2d_backward(g, idx_ref, x.shape, (3, 3), (2, 2)), np.float32, "maxpool dx")
    _close(ya, reference.avgpool2d_forward(x, (3, 3), (2, 2)), np.float32, "avgpool y")
    _close(dxa, reference.avgpool2d_backward(g, x.shape, (3, 3), (2, 2)), np.float32, "avgpool dx")


def test_new_kernels_have_the_same_signatures():
    for name in ("conv2d_forward", "conv2d_backward", "maxpool2d_forward", "maxpool2d_backward", "avgpool2d_forward",
                 "avgpool2d_backward"):
        assert inspect.signature(getattr(cpu, name)) == inspect.signature(getattr(reference, name)), name
    for versions, public in ((cpu.CONV2D_FORWARD_VERSIONS, cpu.conv2d_forward),
                             (cpu.CONV2D_BACKWARD_VERSIONS, cpu.conv2d_backward)):
        for fn in versions.values():
            assert inspect.signature(fn) == inspect.signature(public)


# ---- shapes and errors -----------------------------------------------------------------------------------------------
def test_output_shapes():
    x = md.Tensor(np.zeros((2, 3, 7, 7), np.float32))
    assert ops.conv2d(x, np.zeros((4, 3, 5, 5), np.float32), padding="same").shape == (2, 4, 7, 7)  # the paper's layer
    assert ops.conv2d(x, np.zeros((4, 3, 3, 3), np.float32), stride=2).shape == (2, 4, 3, 3)
    assert ops.conv2d(x, np.zeros((4, 3, 3, 1), np.float32), stride=(2, 1), padding=(1, 0)).shape == (2, 4, 4, 7)
    assert ops.max_pool2d(x, 2).shape == (2, 3, 3, 3)
    assert ops.max_pool2d(x, 3, stride=2).shape == (2, 3, 3, 3)
    assert ops.avg_pool2d(x, 3, stride=2).shape == (2, 3, 3, 3)
    assert ops.avg_pool2d(x, (2, 3)).shape == (2, 3, 3, 2)


@pytest.mark.parametrize("call,error,match", [
    (lambda x: ops.conv2d(x, np.zeros((4, 2, 3, 3))), ValueError, r"conv2d: x has 3 channels .* W expects 2 input"),
    (lambda x: ops.conv2d(x, np.zeros((4, 3, 7, 7))), ValueError, r"conv2d: the 7x7 kernel is larger than the 5x6"),
    (lambda x: ops.conv2d(x, np.zeros((4, 3, 9, 3)), padding=1), ValueError,
     r"conv2d: the 9x3 kernel .*\(padded by \(1, 1\) to 7x8\)"),
    (lambda x: ops.conv2d(x, np.zeros((4, 3, 3)),), ValueError, r"conv2d: W must be 4-D \(C_out, C_in, KH, KW\)"),
    (lambda x: ops.conv2d(x[0], np.zeros((4, 3, 3, 3))), ValueError, r"conv2d: x must be 4-D \(N, C, H, W\)"),
    (lambda x: ops.conv2d(x, np.zeros((4, 3, 3, 3)), np.zeros(3)), ValueError, r"conv2d: bias must have shape \(4,\)"),
    (lambda x: ops.conv2d(x, np.zeros((4, 3, 2, 2)), padding="same"), ValueError, r"padding='same' needs .* odd"),
    (lambda x: ops.conv2d(x, np.zeros((4, 3, 3, 3)), stride=2, padding="same"), ValueError, r"'same' needs stride 1"),
    (lambda x: ops.conv2d(x, np.zeros((4, 3, 3, 3)), stride=0), ValueError, r"conv2d: stride must be an int >= 1"),
    (lambda x: ops.conv2d(x, np.zeros((4, 3, 3, 3)), padding=-1), ValueError, r"conv2d: padding must be an int >= 0"),
    (lambda x: ops.conv2d(x, np.zeros((4, 3, 3, 3), np.float32)), TypeError, r"conv2d: mixed dtypes"),
    (lambda x: ops.max_pool2d(x, 6), ValueError, r"max_pool2d: the 6x6 window is larger than the 5x6 input"),
    (lambda x: ops.max_pool2d(x, (2, 2, 2)), ValueError, r"max_pool2d: kernel must be an int >= 1 or a pair"),
    (lambda x: ops.max_pool2d(x[0], 2), ValueError, r"max_pool2d: x must be 4-D"),
    (lambda x: ops.avg_pool2d(x, 6), ValueError, r"avg_pool2d: the 6x6 window is larger than the 5x6 input"),
    (lambda x: ops.avg_pool2d(x, 2, stride=0), ValueError, r"avg_pool2d: stride must be an int >= 1"),
])
def test_errors_name_the_op_and_shapes(call, error, match):
    x = md.Tensor(np.zeros((2, 3, 5, 6)))
    with pytest.raises(error, match=match):
        call(x)


# ---- layers ----------------------------------------------------------------------------------------------------------
def test_conv2d_layer_init_and_parameters():
    layer = nn.Conv2d(3, 8, 5, rng=0)
    bound = 1 / np.sqrt(3 * 5 * 5)
    assert layer.weight.shape == (8, 3, 5, 5) and layer.bias.shape == (8,)
    assert np.abs(layer.weight.data).max() <= bound and np.abs(layer.bias.data).max() <= bound
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    assert nn.Conv2d(3, 8, 3, bias=False).bias is None
    assert layer(md.Tensor(np.zeros((1, 3, 6, 6), np.float32))).shape == (1, 8, 6, 6)  # "same" by default


def test_batchnorm2d_normalises_each_channel(backend, rng):
    bn = nn.BatchNorm2d(3, dtype=np.float64)
    x = rng.standard_normal((4, 3, 5, 5)) * np.array([1.0, 3.0, 0.5])[:, None, None] + 2.0
    y = bn(md.Tensor(x)).data
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, atol=1e-3)  # var / (var + eps)
    np.testing.assert_allclose(bn.running_mean, 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-12)
    bn.eval()
    assert bn(md.Tensor(x)).shape == x.shape
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3\): expects x of shape \(N, 3, H, W\)"):
        bn(md.Tensor(np.zeros((4, 2, 5, 5))))


def test_batchnorm2d_gradcheck(backend, rng):
    bn = nn.BatchNorm2d(2, dtype=np.float64)
    gradcheck(lambda x, gamma, beta: ops.transpose(
        ops.reshape(ops.batch_norm(ops.reshape(ops.transpose(x, (0, 2, 3, 1)), (-1, 2)), gamma, beta),
                    (2, 3, 3, 2)), (0, 3, 1, 2)),
        [rng.standard_normal((2, 2, 3, 3)), 1 + rng.random(2), rng.standard_normal(2)])
    # the layer's own forward: same function of x (train mode), gradient reaches weight and bias
    x = md.Tensor(rng.standard_normal((2, 2, 3, 3)), requires_grad=True)
    (bn(x) * md.Tensor(rng.standard_normal((2, 2, 3, 3)))).sum().backward()
    assert x.grad.shape == x.shape and bn.weight.grad.shape == (2,)


def test_tiny_cnn_overfits(backend):
    """Conv -> BatchNorm2d -> ReLU -> MaxPool -> Flatten -> Linear learns 16 random 1x8x8 images by heart."""
    r = np.random.default_rng(0)
    images = r.standard_normal((16, 1, 8, 8)).astype(np.float32)
    labels = r.integers(0, 4, size=16)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, rng=r), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(8 * 4 * 4, 4, rng=r))
    opt = md.optim.Adam(net.parameters(), lr=0.01)
    x = md.Tensor(images)
    losses = []
    for _ in range(100):
        loss = ops.cross_entropy(net(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.02, losses[::10]
    net.eval()
    assert (net(x).data.argmax(axis=1) == labels).mean() >= 0.9  # running statistics work in eval mode too


# ---- against PyTorch (float64) ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("stride,padding,kernel", CONV_CASES + [(1, "same", (5, 5))])
def test_conv2d_matches_torch(backend, rng, stride, padding, kernel):
    torch = pytest.importorskip("torch")
    x, W, b = _conv_inputs(rng, kernel, n=3, c=3, o=4, h=9, w=8)
    tensors = [md.Tensor(a, requires_grad=True) for a in (x, W, b)]
    y = ops.conv2d(*tensors, stride=stride, padding=padding)
    g = rng.standard_normal(y.shape)
    y.backward(g)
    tt = [torch.tensor(a, requires_grad=True) for a in (x, W, b)]
    ty = torch.nn.functional.conv2d(*tt, stride=stride, padding=padding)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    for t, tref in zip(tensors, tt):
        np.testing.assert_allclose(t.grad, tref.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel,stride", [(2, None), (3, 2), (2, 1), ((2, 3), (1, 2))])
def test_max_pool2d_matches_torch(backend, rng, kernel, stride):
    torch = pytest.importorskip("torch")
    x = np.round(rng.standard_normal((2, 3, 7, 6)), 1)  # rounded: ties happen, and must be broken as PyTorch does
    t = md.Tensor(x, requires_grad=True)
    y = ops.max_pool2d(t, kernel, stride)
    g = rng.standard_normal(y.shape)
    y.backward(g)
    tx = torch.tensor(x, requires_grad=True)
    ty, tidx = torch.nn.functional.max_pool2d(tx, kernel, stride, return_indices=True)
    ty.backward(torch.tensor(g))
    np.testing.assert_array_equal(y.data, ty.detach().numpy())
    pair = (lambda k: (k, k) if isinstance(k, int) else k)
    _, idx = md.kernels.active.maxpool2d_forward(x, pair(kernel), pair(stride if stride is not None else kernel))
    np.testing.assert_array_equal(idx, tidx.numpy())  # the same max chosen: PyTorch's indices are ours
    np.testing.assert_allclose(t.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel,stride", [(2, None), (3, 2), (2, 1), ((2, 3), (1, 2))])
def test_avg_pool2d_matches_torch(backend, rng, kernel, stride):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 7, 6))
    t = md.Tensor(x, requires_grad=True)
    y = ops.avg_pool2d(t, kernel, stride)
    g = rng.standard_normal(y.shape)
    y.backward(g)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.avg_pool2d(tx, kernel, stride)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(t.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_batchnorm2d_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((4, 3, 5, 5))
    g = rng.standard_normal(x.shape)
    bn = nn.BatchNorm2d(3, dtype=np.float64)
    t = md.Tensor(x, requires_grad=True)
    y = bn(t)
    y.backward(g)
    tbn = torch.nn.BatchNorm2d(3).double()
    tx = torch.tensor(x, requires_grad=True)
    ty = tbn(tx)
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(t.grad, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.weight.grad, tbn.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.running_mean, tbn.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, tbn.running_var.numpy(), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(8))
def test_pool_versions_agree_bit_for_bit(dtype, seed):
    # version 2 reorders the loops but not the additions: the same bits as version 1 (ties, NaN, overlapping and
    # gapped windows, any layout), and both within rounding of the reference
    r = np.random.default_rng(200 + seed)
    kernel = tuple(int(k) for k in r.integers(1, 5, size=2))
    stride = tuple(int(s) for s in r.integers(1, 5, size=2))
    shape = (int(r.integers(1, 4)), int(r.integers(1, 4)), kernel[0] + int(r.integers(0, 7)),
             kernel[1] + int(r.integers(0, 7)))
    x = with_layout(r.standard_normal(shape).astype(dtype), LAYOUTS[seed % len(LAYOUTS)])
    if seed % 2:
        x = np.round(x)
    y, idx = cpu.maxpool2d_forward(x, kernel, stride)
    g = with_layout(r.standard_normal(y.shape).astype(dtype), LAYOUTS[(seed + 1) % len(LAYOUTS)])
    dx = {v: cpu.MAXPOOL2D_BACKWARD_VERSIONS[v](g, idx, x.shape, kernel, stride) for v in (1, 2)}
    ya = {v: cpu.AVGPOOL2D_FORWARD_VERSIONS[v](x, kernel, stride) for v in (1, 2)}
    dxa = {v: cpu.AVGPOOL2D_BACKWARD_VERSIONS[v](g, x.shape, kernel, stride) for v in (1, 2)}
    for got in (dx, ya, dxa):
        np.testing.assert_array_equal(got[2], got[1])
    _close(dx[2], reference.maxpool2d_backward(g, idx, x.shape, kernel, stride), dtype, "maxpool v2 dx")
    _close(ya[2], reference.avgpool2d_forward(x, kernel, stride), dtype, "avgpool v2 y")
    _close(dxa[2], reference.avgpool2d_backward(g, x.shape, kernel, stride), dtype, "avgpool v2 dx")

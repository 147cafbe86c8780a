"""Numba CPU kernels: the same functions as `kernels/reference.py`, written as explicit loops and JIT-compiled.

Every kernel opens with the loop it computes; the reference is its specification and `tests/test_kernels.py` checks
them against each other on random shapes (non-contiguous and broadcast inputs included).

Choices, each measured on the 2-core development machine (numbers in benchmarks/results/, `benchmarks/bench_engine.py`):
  * Matrix products stay NumPy (`np.matmul` -> OpenBLAS) *between* jitted kernels. `np.dot` inside `@njit` would
    need SciPy as a dependency (numba reaches BLAS through it) and gives no speed over calling BLAS from Python:
    a 256x256 GEMM is ~100 us, the Python call ~1 us. Nor does splitting a step's products over the cores
    ourselves (`np.dot` in a `prange(2)` kernel, one BLAS thread each): the backward pair dx, dW ran 23% faster,
    whole training steps 4-7% slower (benchmarks/bench_gemm_split.py, docs/engine-speed.md).
  * `nogil=True`: kernels release the GIL, so the DNI concurrent runner's threads run them at the same time.
  * No `parallel=True`: with BLAS already using both cores, numba's OpenMP/TBB threads fight BLAS's threads
    (7 vs 223 steps/s seen with a spinning OpenMP layer); these kernels are memory-bound and short, so the parallel
    speed-up is small, and a serial kernel is safe to call from several threads (the workqueue layer is not).
  * `error_model='numpy'`: no Python-style ZeroDivision checks in the inner loops (1367 -> 184 us for Adam over 465k
    parameters with float32 constants).
  * `cache=True`: compiled machine code is stored next to this file, so only the very first run pays the JIT.
  * Scalars arrive already cast to the arrays' dtype (see `ops.py`/`optim.py`), so float32 loops stay float32.
  * Transcendentals (exp, log, tanh) are NumPy's SIMD ufuncs, not jitted loops: numba calls the scalar libm
    function per element (no SVML here), which measured 6-50x slower at 65k float32 elements (tanh 930 vs 18 us,
    exp 155 vs 25 us). Sigmoid takes exp(-|x|) from NumPy and fuses the rest in a jitted loop.
  * Loops run over the flattened (raveled) array for elementwise kernels and row-major (n, j) for (N, C) kernels,
    so memory is walked in order.
"""
import functools

import numpy as np
from numba import njit

NAME = "numba"

jit = njit(nogil=True, cache=True, error_model="numpy")


def _flat(x):
    """A contiguous 1-D view (a copy only if x is not contiguous)."""
    return np.ascontiguousarray(x).reshape(-1)


def _c2(x):
    return np.ascontiguousarray(x)


# ---- elementwise activations ---------------------------------------------------------------------------------------
@jit
def _relu_forward(x, y):
    # for i: y[i] = max(x[i], 0)   (written so that a NaN passes through, as np.maximum does)
    zero = x.dtype.type(0)
    for i in range(x.size):
        y[i] = zero if x[i] < zero else x[i]


@jit
def _relu_backward(y, g, dx):
    # for i: dx[i] = g[i] * [y[i] > 0]   (g * 0, not 0, so a NaN gradient is not hidden)
    zero = y.dtype.type(0)
    for i in range(y.size):
        dx[i] = g[i] if y[i] > zero else g[i] * zero


@jit
def _tanh_backward(y, g, dx):
    one = y.dtype.type(1)
    for i in range(y.size):
        dx[i] = g[i] * (one - y[i] * y[i])


@jit
def _sigmoid_from_exp(x, e, y):
    # e[i] = exp(-|x[i]|) computed by NumPy; then y = 1/(1+e) for x >= 0, e/(1+e) for x < 0 (never overflows)
    one = x.dtype.type(1)
    for i in range(x.size):
        num = one if x[i] >= 0 else e[i]
        y[i] = num / (one + e[i])


@jit
def _sigmoid_backward(y, g, dx):
    one = y.dtype.type(1)
    for i in range(y.size):
        dx[i] = g[i] * y[i] * (one - y[i])


def _unary(kernel, x):
    xf = _flat(x)
    y = np.empty_like(xf)
    kernel(xf, y)
    return y.reshape(x.shape)


def _unary_backward(kernel, y, g):
    yf, gf = _flat(y), _flat(g)
    dx = np.empty_like(yf)
    kernel(yf, gf, dx)
    return dx.reshape(y.shape)


def relu_forward(x):
    return _unary(_relu_forward, x)


def relu_backward(y, g):
    return _unary_backward(_relu_backward, y, g)


def tanh_forward(x):
    return np.tanh(x)  # NumPy's SIMD tanh: ~18 us vs ~930 us for a scalar-libm loop at 65k float32 (see above)


def tanh_backward(y, g):
    return _unary_backward(_tanh_backward, y, g)


def sigmoid_forward(x):
    xf = _flat(x)
    e = np.abs(xf)
    np.negative(e, out=e)
    np.exp(e, out=e)  # NumPy's SIMD exp, in place
    y = np.empty_like(xf)
    _sigmoid_from_exp(xf, e, y)
    return y.reshape(x.shape)


def sigmoid_backward(y, g):
    return _unary_backward(_sigmoid_backward, y, g)


def exp_forward(x):
    return np.exp(x)


def log_forward(x):
    return np.log(x)


# ---- linear layer ---------------------------------------------------------------------------------------------------
@jit
def _add_row_(y, b):
    # for n, j: y[n, j] += b[j]
    n, c = y.shape
    for i in range(n):
        for j in range(c):
            y[i, j] += b[j]


@jit
def _sum_rows(g, out):
    # for j: out[j] = sum_n g[n, j]   (rows walked in memory order, one accumulator per column)
    n, c = g.shape
    for j in range(c):
        out[j] = 0
    for i in range(n):
        for j in range(c):
            out[j] += g[i, j]


def sum_rows(g):
    out = np.empty(g.shape[1], dtype=g.dtype)
    _sum_rows(_c2(g), out)
    return out


def linear_forward(x, W, b):
    """GEMM by BLAS, then the bias added in place by a jitted loop (no temporary)."""
    y = np.matmul(x, W)
    if b is not None:
        _add_row_(y, b)
    return y


def linear_backward(x, W, g, need_x, need_W, need_b):
    dx = np.matmul(g, W.T) if need_x else None
    dW = np.matmul(x.T, g) if need_W else None  # BLAS reads the transposes in place: no copies
    db = sum_rows(g) if need_b else None
    return dx, dW, db


# ---- fused layers: linear + ReLU, batch norm + ReLU ---------------------------------------------------------------
# The same math as the two ops in a row (kernels.reference writes it that way), with one pass over the (N, C) output
# instead of two: the ReLU is applied where the bias or the normalisation is written, and its backward (g [y > 0])
# is folded into the pass that reads g. nn.mlp(..., fused=True) builds its hidden layers from these.
@jit
def _add_row_relu_(y, b):
    # for n, j: y[n, j] = max(y[n, j] + b[j], 0)
    n, c = y.shape
    zero = y.dtype.type(0)
    for i in range(n):
        for j in range(c):
            v = y[i, j] + b[j]
            y[i, j] = zero if v < zero else v   # a NaN passes through, as in _relu_forward


@jit
def _relu_(y):
    # for i: y[i] = max(y[i], 0)
    zero = y.dtype.type(0)
    for i in range(y.size):
        if y[i] < zero:
            y[i] = zero


def linear_relu_forward(x, W, b):
    """GEMM by BLAS, then bias and ReLU in one in-place pass."""
    y = np.matmul(x, W)
    if b is not None:
        _add_row_relu_(y, b)
    else:
        _relu_(y.reshape(-1))
    return y


@jit
def _relu_backward_sum_rows(y, g, gm, db):
    # for n, j: gm[n, j] = g[n, j] [y[n, j] > 0];  db[j] = sum_n gm[n, j]
    n, c = g.shape
    zero = g.dtype.type(0)
    for j in range(c):
        db[j] = 0
    for i in range(n):
        for j in range(c):
            v = g[i, j] if y[i, j] > zero else g[i, j] * zero   # g * 0: a NaN in g is not hidden
            gm[i, j] = v
            db[j] += v


def linear_relu_backward(x, W, y, g, need_x, need_W, need_b):
    """g' = g [y > 0] and db = sum_n g' in one pass, then the two GEMMs on g'."""
    g = _c2(g)
    gm = np.empty_like(g)
    db = np.empty(g.shape[1], dtype=g.dtype)
    _relu_backward_sum_rows(_c2(y), g, gm, db)
    dx, dW, _ = linear_backward(x, W, gm, need_x, need_W, False)
    return dx, dW, (db if need_b else None)


# ---- losses -----------------------------------------------------------------------------------------------------------
@jit
def _softmax_xent_forward(z, labels, probs):
    # for each row n: m = max_k z[n,k]; s = sum_k exp(z[n,k]-m); loss += log s + m - z[n, y_n]; probs = exp(z-m)/s
    n, c = z.shape
    total = 0.0  # float64 accumulator
    for i in range(n):
        m = z[i, 0]
        for k in range(1, c):
            if z[i, k] > m:
                m = z[i, k]
        s = z.dtype.type(0)
        for k in range(c):
            e = np.exp(z[i, k] - m)
            probs[i, k] = e
            s += e
        inv = z.dtype.type(1) / s
        for k in range(c):
            probs[i, k] *= inv
        total += np.log(s) + m - z[i, labels[i]]
    return total / n


def softmax_xent_forward(logits, labels):
    z = _c2(logits)
    probs = np.empty_like(z)
    loss = _softmax_xent_forward(z, _c2(labels), probs)
    return np.asarray(loss, dtype=logits.dtype), probs


@jit
def _softmax_xent_backward(probs, labels, scale, d):
    # d[n, k] = scale * (probs[n, k] - [k == y_n]),  scale = g / N
    n, c = probs.shape
    one = probs.dtype.type(1)
    for i in range(n):
        for k in range(c):
            d[i, k] = scale * probs[i, k]
        d[i, labels[i]] = scale * (probs[i, labels[i]] - one)


def softmax_xent_backward(probs, labels, g):
    d = np.empty_like(probs)
    scale = probs.dtype.type(g / probs.shape[0])
    _softmax_xent_backward(probs, _c2(labels), scale, d)
    return d


@jit
def _mse_forward(a, b):
    total = 0.0
    for i in range(a.size):
        d = a[i] - b[i]
        total += d * d
    return total / a.size


def mse_forward(a, b):
    return np.asarray(_mse_forward(_flat(a), _flat(b)), dtype=a.dtype)


@jit
def _mse_backward(a, b, scale, d):
    for i in range(a.size):
        d[i] = scale * (a[i] - b[i])


def mse_backward(a, b, g):
    af, bf = _flat(a), _flat(b)
    d = np.empty_like(af)
    _mse_backward(af, bf, a.dtype.type(2 * g / a.size), d)
    return d.reshape(a.shape)


# ---- batch normalisation ---------------------------------------------------------------------------------------------
@jit
def _batchnorm_train_forward_1(x, gamma, beta, eps, y, xhat, mu, var, invstd):
    # version 1, three passes, as the math reads:
    # mu[j] = mean_n x[n,j]; var[j] = mean_n (x[n,j]-mu[j])^2; xhat = (x-mu)*invstd; y = gamma*xhat + beta
    n, c = x.shape
    acc = np.zeros(c)  # float64 accumulators for the statistics
    for i in range(n):
        for j in range(c):
            acc[j] += x[i, j]
    for j in range(c):
        mu[j] = acc[j] / n
        acc[j] = 0.0
    for i in range(n):
        for j in range(c):
            d = x[i, j] - mu[j]
            acc[j] += d * d
    for j in range(c):
        var[j] = acc[j] / n
        invstd[j] = 1.0 / np.sqrt(acc[j] / n + eps)
    for i in range(n):
        for j in range(c):
            h = (x[i, j] - mu[j]) * invstd[j]
            xhat[i, j] = h
            y[i, j] = gamma[j] * h + beta[j]


@jit
def _batch_stats_one_pass(x, eps, mu, var, invstd):
    # mu[j] = mean_n x[n, j]; var[j] = mean_n (x[n, j] - mu[j])^2; invstd[j] = 1 / sqrt(var[j] + eps), in ONE pass
    # over x, on data shifted by a sample of each column (K[j] = x[0, j]), with d = x - K:
    #     mu = K + mean_n d,    var = mean_n d^2 - (mean_n d)^2
    # Unshifted (K = 0), E[x^2] - E[x]^2 cancels when |mu| >> std: float64 with mu = 1e4, std = 1 lost 8 digits
    # (error 2e-8). Shifted, d is of the order of std and the subtraction loses next to nothing. The sums are
    # float64 (float32 input is converted exactly); the shift costs one subtraction per element.
    n, c = x.shape
    shift, s, ss = np.empty(c), np.zeros(c), np.zeros(c)
    for j in range(c):
        shift[j] = x[0, j]
    for i in range(n):
        for j in range(c):
            d = np.float64(x[i, j]) - shift[j]
            s[j] += d
            ss[j] += d * d
    for j in range(c):
        m = s[j] / n
        v = ss[j] / n - m * m
        if v < 0.0:  # rounding can make it slightly negative; written so that a NaN stays NaN, as in the reference
            v = 0.0
        mu[j] = shift[j] + m
        var[j] = v
        invstd[j] = 1.0 / np.sqrt(v + eps)


@jit
def _batchnorm_train_forward_2(x, gamma, beta, eps, y, xhat, mu, var, invstd):
    # version 2, two passes (~30% faster at 256x256): the statistics in one pass (_batch_stats_one_pass), then one
    # pass that writes xhat and y.
    n, c = x.shape
    _batch_stats_one_pass(x, eps, mu, var, invstd)
    for i in range(n):
        for j in range(c):
            h = (x[i, j] - mu[j]) * invstd[j]
            xhat[i, j] = h
            y[i, j] = gamma[j] * h + beta[j]


BATCHNORM_TRAIN_FORWARD_VERSIONS = {1: _batchnorm_train_forward_1, 2: _batchnorm_train_forward_2}


def batchnorm_train_forward(x, gamma, beta, eps, _version=2):
    x = _c2(x)
    y, xhat = np.empty_like(x), np.empty_like(x)
    c = x.shape[1]
    mu, var, invstd = (np.empty(c, dtype=x.dtype) for _ in range(3))
    BATCHNORM_TRAIN_FORWARD_VERSIONS[_version](x, gamma, beta, eps, y, xhat, mu, var, invstd)
    return y, xhat, mu, var, invstd


@jit
def _batchnorm_eval_forward(x, gamma, beta, mean, var, eps, y):
    n, c = x.shape
    scale = np.empty(c, dtype=x.dtype)
    for j in range(c):
        scale[j] = gamma[j] / np.sqrt(var[j] + eps)
    for i in range(n):
        for j in range(c):
            y[i, j] = (x[i, j] - mean[j]) * scale[j] + beta[j]


def batchnorm_eval_forward(x, gamma, beta, mean, var, eps):
    x = _c2(x)
    y = np.empty_like(x)
    _batchnorm_eval_forward(x, gamma, beta, mean, var, eps, y)
    return y


@jit
def _batchnorm_backward(g, xhat, gamma, invstd, need_x, dx, dgamma, dbeta):
    # dbeta = sum_n g; dgamma = sum_n g*xhat; dx = gamma*invstd/N * (N*g - dbeta - xhat*dgamma)
    n, c = g.shape
    for j in range(c):
        dbeta[j] = 0
        dgamma[j] = 0
    for i in range(n):
        for j in range(c):
            dbeta[j] += g[i, j]
            dgamma[j] += g[i, j] * xhat[i, j]
    if need_x:
        fn = g.dtype.type(n)
        for i in range(n):
            for j in range(c):
                dx[i, j] = gamma[j] * invstd[j] / fn * (fn * g[i, j] - dbeta[j] - xhat[i, j] * dgamma[j])


def batchnorm_backward(g, xhat, gamma, invstd, need_x):
    g = _c2(g)
    c = g.shape[1]
    dgamma, dbeta = np.empty(c, dtype=g.dtype), np.empty(c, dtype=g.dtype)
    dx = np.empty_like(g) if need_x else np.empty((0, c), dtype=g.dtype)
    _batchnorm_backward(g, xhat, gamma, invstd, need_x, dx, dgamma, dbeta)
    return (dx if need_x else None), dgamma, dbeta


@jit
def _batchnorm_relu_train_forward(x, gamma, beta, eps, y, mu, var, invstd):
    # batch norm version 2 (two passes), with the ReLU applied as y is written, and xhat NOT stored (the backward
    # recomputes it from x, bit for bit): one (N, C) array written instead of two.
    # y[n, j] = max(gamma[j] (x[n, j] - mu[j]) invstd[j] + beta[j], 0)
    n, c = x.shape
    zero = x.dtype.type(0)
    _batch_stats_one_pass(x, eps, mu, var, invstd)
    for i in range(n):
        for j in range(c):
            z = gamma[j] * ((x[i, j] - mu[j]) * invstd[j]) + beta[j]
            y[i, j] = zero if z < zero else z


def batchnorm_relu_train_forward(x, gamma, beta, eps):
    x = _c2(x)
    y = np.empty_like(x)
    c = x.shape[1]
    mu, var, invstd = (np.empty(c, dtype=x.dtype) for _ in range(3))
    _batchnorm_relu_train_forward(x, gamma, beta, eps, y, mu, var, invstd)
    return y, mu, var, invstd


@jit
def _batchnorm_relu_backward(g, x, y, mu, gamma, invstd, need_x, dx, dgamma, dbeta):
    # _batchnorm_backward with g' = g [y > 0] and xhat = (x - mu) invstd formed where they are read, never stored
    n, c = g.shape
    zero = g.dtype.type(0)
    for j in range(c):
        dbeta[j] = 0
        dgamma[j] = 0
    for i in range(n):
        for j in range(c):
            gi = g[i, j] if y[i, j] > zero else g[i, j] * zero
            dbeta[j] += gi
            dgamma[j] += gi * ((x[i, j] - mu[j]) * invstd[j])
    if need_x:
        fn = g.dtype.type(n)
        for i in range(n):
            for j in range(c):
                gi = g[i, j] if y[i, j] > zero else g[i, j] * zero
                xh = (x[i, j] - mu[j]) * invstd[j]
                dx[i, j] = gamma[j] * invstd[j] / fn * (fn * gi - dbeta[j] - xh * dgamma[j])


def batchnorm_relu_backward(g, x, y, mu, gamma, invstd, need_x):
    g = _c2(g)
    c = g.shape[1]
    dgamma, dbeta = np.empty(c, dtype=g.dtype), np.empty(c, dtype=g.dtype)
    dx = np.empty_like(g) if need_x else np.empty((0, c), dtype=g.dtype)
    _batchnorm_relu_backward(g, _c2(x), _c2(y), mu, gamma, invstd, need_x, dx, dgamma, dbeta)
    return (dx if need_x else None), dgamma, dbeta


# ---- optimizer updates, in place ---------------------------------------------------------------------------------------
@jit
def _adam_step_(p, g, m, v, lr, beta1, beta2, eps, bias1, bias2, weight_decay):
    # one pass over the parameter: for i: g' = g + wd p; m = b1 m + (1-b1) g'; v = b2 v + (1-b2) g'^2;
    #                                       p -= lr/bias1 * m / (sqrt(v)/sqrt(bias2) + eps)
    one = p.dtype.type(1)
    step = lr / bias1
    inv_sqrt_b2 = one / np.sqrt(bias2)
    c1, c2 = one - beta1, one - beta2
    for i in range(p.size):
        gi = g[i] + weight_decay * p[i]
        mi = beta1 * m[i] + c1 * gi
        vi = beta2 * v[i] + c2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= step * mi / (np.sqrt(vi) * inv_sqrt_b2 + eps)


def _updated_in_place(kernel, arrays, *args):
    """Run an in-place kernel on flat views; an array that is not contiguous is updated through a copy."""
    flats = [a.reshape(-1) if a.flags.c_contiguous else np.ascontiguousarray(a).reshape(-1) for a in arrays]
    kernel(*flats, *args)
    for a, f in zip(arrays, flats):
        if not a.flags.c_contiguous:
            np.copyto(a, f.reshape(a.shape))


def adam_step_(p, g, m, v, lr, beta1, beta2, eps, bias1, bias2, weight_decay):
    if p.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous and g.flags.c_contiguous:
        # the usual case, called once per parameter per step: straight to the kernel (~2 us of Python, not ~6)
        _adam_step_(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), lr, beta1, beta2, eps, bias1, bias2,
                    weight_decay)
        return
    _updated_in_place(lambda p_, m_, v_: _adam_step_(p_, _flat(g), m_, v_, lr, beta1, beta2, eps, bias1, bias2,
                                                     weight_decay), (p, m, v))


@jit
def _sgd_step_(p, g, buf, lr, momentum, weight_decay, nesterov):
    for i in range(p.size):
        gi = g[i] + weight_decay * p[i]
        if momentum != 0:
            buf[i] = momentum * buf[i] + gi
            gi = gi + momentum * buf[i] if nesterov else buf[i]
        p[i] -= lr * gi


def sgd_step_(p, g, buf, lr, momentum, weight_decay, nesterov):
    if p.flags.c_contiguous and buf.flags.c_contiguous and g.flags.c_contiguous:
        _sgd_step_(p.reshape(-1), g.reshape(-1), buf.reshape(-1), lr, momentum, weight_decay, nesterov)
        return
    _updated_in_place(lambda p_, b_: _sgd_step_(p_, _flat(g), b_, lr, momentum, weight_decay, nesterov), (p, buf))


# ---- 2-D convolution, NCHW (Jaderberg et al. 2016, Sec. 3.3: the CNN and its conv synthesizers) ---------------------
# Same arguments as the reference: x (N, C, H, W), W (O, C, KH, KW), b (O,) or None, stride = (sh, sw),
# padding = (ph, pw). Four versions, each tested against the reference (tests/test_conv.py):
#   version 1  the definition as a direct 7-deep loop: no extra memory, but no BLAS -- ~1-2 GFLOP/s.
#   version 2  im2col per image into one reused buffer + one BLAS GEMM per image, col2im for dx.
#   version 3  version 2 on one worker thread per core with a vectorised im2col; dx at stride 1 as a forward conv
#              of g with the flipped filters.
#   version 4  version 3 with an im2col on flat arrays and unsigned indices, and several images per GEMM on small
#              maps (the default; benchmarks/bench_conv.py).
def _out_size(size, k, stride, pad):
    return (size + 2 * pad - k) // stride + 1


def _bias_or_zeros(b, W):
    return b if b is not None else np.zeros(W.shape[0], dtype=W.dtype)


@jit
def _conv2d_direct_forward(x, W, b, sh, sw, ph, pw, y):
    # version 1, the definition:
    # for n, o, i, j:
    #     acc = b[o]
    #     for c, p, q:                                   (input channel, kernel row, kernel column)
    #         h, w = i*sh + p - ph, j*sw + q - pw         (the input pixel under kernel tap (p, q))
    #         if 0 <= h < H and 0 <= w < W:               (outside: zero padding, adds nothing)
    #             acc += x[n, c, h, w] * W[o, c, p, q]
    #     y[n, o, i, j] = acc
    # * acc is a float64 scalar, so a float32 sum over C*KH*KW taps does not lose digits.
    n_, c_, h_, w_ = x.shape
    o_, _, kh, kw = W.shape
    oh, ow = y.shape[2], y.shape[3]
    for n in range(n_):
        for o in range(o_):
            for i in range(oh):
                for j in range(ow):
                    acc = np.float64(b[o])
                    for c in range(c_):
                        for p in range(kh):
                            h = i * sh + p - ph
                            if h < 0 or h >= h_:
                                continue
                            for q in range(kw):
                                w = j * sw + q - pw
                                if 0 <= w < w_:
                                    acc += x[n, c, h, w] * W[o, c, p, q]
                    y[n, o, i, j] = acc


@jit
def _conv2d_direct_backward(x, W, g, sh, sw, ph, pw, need_x, need_W, dx, dW, db):
    # version 1: every product x[n,c,h,w] * W[o,c,p,q] of the forward loop sends g[n,o,i,j] back to both factors:
    # for n, o, i, j:
    #     db[o] += g[n, o, i, j]
    #     for c, p, q with (h, w) = (i*sh + p - ph, j*sw + q - pw) inside the image:
    #         dx[n, c, h, w] += g[n, o, i, j] * W[o, c, p, q]
    #         dW[o, c, p, q] += g[n, o, i, j] * x[n, c, h, w]
    # (dx, dW, db start at zero.)
    n_, c_, h_, w_ = x.shape
    o_, _, kh, kw = W.shape
    oh, ow = g.shape[2], g.shape[3]
    for n in range(n_):
        for o in range(o_):
            for i in range(oh):
                for j in range(ow):
                    gv = g[n, o, i, j]
                    db[o] += gv
                    for c in range(c_):
                        for p in range(kh):
                            h = i * sh + p - ph
                            if h < 0 or h >= h_:
                                continue
                            for q in range(kw):
                                w = j * sw + q - pw
                                if 0 <= w < w_:
                                    if need_x:
                                        dx[n, c, h, w] += gv * W[o, c, p, q]
                                    if need_W:
                                        dW[o, c, p, q] += gv * x[n, c, h, w]


def _conv2d_forward_1(x, W, b, stride, padding):
    n, c, h, w = x.shape
    o, _, kh, kw = W.shape
    y = np.empty((n, o, _out_size(h, kh, stride[0], padding[0]), _out_size(w, kw, stride[1], padding[1])), x.dtype)
    _conv2d_direct_forward(x, W, _bias_or_zeros(b, W), stride[0], stride[1], padding[0], padding[1], y)
    return y


def _conv2d_backward_1(x, W, g, stride, padding, need_x, need_W, need_b):
    dx, dW, db = np.zeros_like(x), np.zeros_like(W), np.zeros(W.shape[0], dtype=W.dtype)
    _conv2d_direct_backward(x, W, g, stride[0], stride[1], padding[0], padding[1], need_x, need_W, dx, dW, db)
    return (dx if need_x else None), (dW if need_W else None), (db if need_b else None)


@jit
def _im2col(xp, kh, kw, sh, sw, oh, ow, cols):
    # one padded image xp (C, Hp, Wp) -> cols (C*KH*KW, OH*OW), the "Caffe" layout:
    # for c, p, q, i, j:  cols[(c*KH + p)*KW + q, i*OW + j] = xp[c, i*sh + p, j*sw + q]
    # * the input is padded once beforehand, so the loop has no bounds checks;
    # * the innermost loop walks a row of xp and a row of cols in memory order (a plain copy when sw == 1).
    c_ = xp.shape[0]
    for c in range(c_):
        for p in range(kh):
            for q in range(kw):
                r = (c * kh + p) * kw + q
                for i in range(oh):
                    h = i * sh + p
                    base = i * ow
                    for j in range(ow):
                        cols[r, base + j] = xp[c, h, j * sw + q]


@jit
def _col2im_(dcols, kh, kw, sh, sw, oh, ow, dxp):
    # the transpose of _im2col, accumulating into dxp (C, Hp, Wp) in place (a pixel read by several windows gets
    # the sum of their gradients):
    # for c, p, q, i, j:  dxp[c, i*sh + p, j*sw + q] += dcols[(c*KH + p)*KW + q, i*OW + j]
    c_ = dxp.shape[0]
    for c in range(c_):
        for p in range(kh):
            for q in range(kw):
                r = (c * kh + p) * kw + q
                for i in range(oh):
                    h = i * sh + p
                    base = i * ow
                    for j in range(ow):
                        dxp[c, h, j * sw + q] += dcols[r, base + j]


def _pad_nchw(x, ph, pw):
    """A C-contiguous zero-padded copy (N, C, H + 2ph, W + 2pw); x itself (made contiguous) when there is no padding."""
    if ph == 0 and pw == 0:
        return _c2(x)
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    return xp


def _conv2d_forward_2(x, W, b, stride, padding):
    """Version 2: for each image n,  y[n] (O, OH*OW) = W (O, C*KH*KW) @ im2col(x[n]) (C*KH*KW, OH*OW)  + b.

    * one GEMM per image, written by BLAS straight into y[n]: the output is NCHW with no transpose;
    * the im2col buffer is allocated once and reused, so memory is C*KH*KW*OH*OW, not N times that
      (N=32, 128 -> 128 channels, 5x5, 28x28 in float32 would otherwise need 320 MB);
    * the Python loop over images costs ~2 us per image, next to a GEMM of ~0.3 GFLOP per image at paper size.
    """
    n, c, h, w = x.shape
    o, _, kh, kw = W.shape
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
    xp = _pad_nchw(x, ph, pw)
    Wm = _c2(W).reshape(o, c * kh * kw)
    cols = np.empty((c * kh * kw, oh * ow), dtype=x.dtype)
    y = np.empty((n, o, oh, ow), dtype=x.dtype)
    for i in range(n):
        _im2col(xp[i], kh, kw, sh, sw, oh, ow, cols)
        np.matmul(Wm, cols, out=y[i].reshape(o, oh * ow))
    if b is not None:
        y += b.reshape(o, 1, 1)
    return y


def _conv2d_backward_2(x, W, g, stride, padding, need_x, need_W, need_b):
    """Version 2, per image n with cols = im2col(x[n]) and G = g[n] as (O, OH*OW):
    dW += G cols^T,  dx[n] = col2im(W^T G),  db = sum of g over (n, i, j).

    * the same reused im2col buffer as the forward pass (recomputed rather than stored: memory over a few us);
    * W^T is a transposed view that BLAS reads in place;
    * col2im accumulates into one zero-padded dx, whose border is cut off at the end.
    """
    n, c, h, w = x.shape
    o, _, kh, kw = W.shape
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = g.shape[2], g.shape[3]
    ckk, L = c * kh * kw, oh * ow
    g = _c2(g)
    Wm = _c2(W).reshape(o, ckk)
    dW = dxp = None
    if need_W:
        xp = _pad_nchw(x, ph, pw)
        cols = np.empty((ckk, L), dtype=x.dtype)
        dWm, part = np.zeros((o, ckk), dtype=x.dtype), np.empty((o, ckk), dtype=x.dtype)
    if need_x:
        dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
        dcols = np.empty((ckk, L), dtype=x.dtype)
    for i in range(n):
        G = g[i].reshape(o, L)
        if need_W:
            _im2col(xp[i], kh, kw, sh, sw, oh, ow, cols)
            np.matmul(G, cols.T, out=part)
            dWm += part
        if need_x:
            np.matmul(Wm.T, G, out=dcols)
            _col2im_(dcols, kh, kw, sh, sw, oh, ow, dxp[i])
    if need_W:
        dW = dWm.reshape(W.shape)
    dx = None if dxp is None else np.ascontiguousarray(dxp[:, :, ph:ph + h, pw:pw + w])
    db = g.sum(axis=(0, 2, 3)) if need_b else None
    return dx, dW, db


# Version 3: version 2 with the images spread over one worker thread per BLAS thread, each worker running BLAS
# single-threaded, a vectorised im2col, and dx at stride 1 as a forward convolution (of g with the flipped, transposed
# filters) instead of col2im's read-modify-write. Why (measured, docs/engine-speed.md): in version 2 the im2col /
# col2im copies run on one core while the other waits, and im2col's computed 2-D indices kept numba from vectorising.
# An image whose im2col block exceeds CONV_BAND_BYTES is cut into bands of output rows; bands that fit the 512 KiB L2
# measured slower than whole images (the GEMMs get thin: 28 columns per row), so the limit is a share of the L3.
CONV_BAND_BYTES = 8 << 20     # im2col block per band: an 8 MiB share of this machine's 32 MiB L3
# Below these sizes a call runs in the calling thread: waking a worker costs ~0.1 ms on a quiet machine (more on a
# busy one), the time of a 10 MFLOP product or of one pass over 1 MB.
SPLIT_MIN_FLOPS = 20_000_000
SPLIT_MIN_ELEMENTS = 1 << 18
_blas = None                  # threadpoolctl's handles on the loaded BLAS libraries, found once
_pool = None                  # worker threads, created on first use


def _blas_libraries():
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # no thread control: version 3 runs in the calling thread
            _blas = []
        else:
            _blas = ThreadpoolController().select(user_api="blas").lib_controllers
    return _blas


def _run_split(work, n_items, worth_it=True, uses_blas=True):
    """Call work(lo, hi, part) for the k contiguous parts [lo, hi) of range(n_items), one worker per BLAS thread,
    with BLAS set to one thread meanwhile (k BLAS threads before = k single-threaded workers, so the cores are shared
    the same way and a caller that limited BLAS to one thread -- the concurrent DNI runner -- stays on one core).
    Returns the k results in part order. Part 0 runs in the calling thread; all of it when not `worth_it`."""
    global _pool
    libs = _blas_libraries()
    k = min(n_items, min((lib.get_num_threads() for lib in libs), default=1)) if worth_it else 1
    if k <= 1:
        return [work(0, n_items, 0)]
    if _pool is None or _pool._max_workers < k - 1:
        from concurrent.futures import ThreadPoolExecutor
        _pool = ThreadPoolExecutor(max_workers=k - 1, thread_name_prefix="minidni-kernels")
    cuts = [n_items * i // k for i in range(k + 1)]
    before = [lib.get_num_threads() for lib in libs] if uses_blas else []
    for lib in libs[:len(before)]:
        lib.set_num_threads(1)
    try:
        futures = [_pool.submit(work, cuts[i], cuts[i + 1], i) for i in range(1, k)]
        results = [work(cuts[0], cuts[1], 0)]
        return results + [f.result() for f in futures]
    finally:
        for lib, n in zip(libs, before):
            lib.set_num_threads(n)


@jit
def _im2col_band(xp, kh, kw, sh, sw, i0, i1, ow, cols):
    # output rows i0 <= i < i1 of one padded image xp (C, Hp, Wp) -> cols (C*KH*KW, (i1 - i0)*OW), _im2col's layout:
    # for c, p, q, i, j:  cols[(c*KH + p)*KW + q, (i - i0)*OW + j] = xp[c, i*sh + p, j*sw + q]
    # * the innermost loop copies between two 1-D views indexed by the loop counter alone: numba then knows every
    #   index is >= 0 (no negative-index wraparound test per element) and LLVM vectorises the copy -- 4x faster than
    #   _im2col's computed 2-D indices, measured at the paper's 64-channel layer (docs/engine-speed.md).
    c_ = xp.shape[0]
    for c in range(c_):
        for p in range(kh):
            for q in range(kw):
                row = cols[(c * kh + p) * kw + q]
                for i in range(i0, i1):
                    dst = row[(i - i0) * ow:(i - i0 + 1) * ow]
                    if sw == 1:
                        src = xp[c, i * sh + p, q:q + ow]
                        for j in range(ow):
                            dst[j] = src[j]
                    else:
                        src2 = xp[c, i * sh + p, q:q + sw * (ow - 1) + 1:sw]
                        for j in range(ow):
                            dst[j] = src2[j]


def _bands(ckk, oh, ow, itemsize):
    """Output rows per band: as many as keep the band's im2col block (C*KH*KW, rows*OW) within CONV_BAND_BYTES."""
    return max(1, min(oh, CONV_BAND_BYTES // (ckk * ow * itemsize)))


def _conv2d_forward_3(x, W, b, stride, padding):
    """Version 3: for each image n and band of output rows [i0, i1),
    y[n][:, i0*OW:i1*OW] (O, band) = W (O, C*KH*KW) @ im2col_band(x[n]) (C*KH*KW, band)  + b.

    * one band is usually the whole image (a 5 MB block at 64 channels on 28x28, read back from L3);
    * the images are split between the workers (`_run_split`); each has its own block, and writes its own images of y
      (BLAS writes straight into the strided band of y[n]), so the result does not depend on the number of workers.
    """
    n, c, h, w = x.shape
    o, _, kh, kw = W.shape
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
    ckk = c * kh * kw
    xp = _pad_nchw(x, ph, pw)
    Wm = _c2(W).reshape(o, ckk)
    y = np.empty((n, o, oh, ow), dtype=x.dtype)
    rows = _bands(ckk, oh, ow, x.itemsize)

    def work(lo, hi, part):
        buf = np.empty(ckk * rows * ow, dtype=x.dtype)
        for i in range(lo, hi):
            yi = y[i].reshape(o, oh * ow)
            for i0 in range(0, oh, rows):
                i1 = min(oh, i0 + rows)
                block = buf[:ckk * (i1 - i0) * ow].reshape(ckk, (i1 - i0) * ow)  # C-contiguous: a plain BLAS operand
                _im2col_band(xp[i], kh, kw, sh, sw, i0, i1, ow, block)
                np.matmul(Wm, block, out=yi[:, i0 * ow:i1 * ow])
            if b is not None:
                y[i] += b.reshape(o, 1, 1)

    _run_split(work, n, worth_it=2 * n * o * ckk * oh * ow >= SPLIT_MIN_FLOPS)
    return y


def _conv2d_backward_3(x, W, g, stride, padding, need_x, need_W, need_b):
    """Version 3, with the bands and workers of `_conv2d_forward_3`:

    dW = sum over images n and bands of  G_band (O, band) @ im2col_band(x[n])^T (band, C*KH*KW), one partial sum per
         worker, added in worker order (so dW's last bits depend on the number of BLAS threads, as a GEMM's do);
    dx   at stride 1:  dx = conv2d(g, W') with W'[c, o, p, q] = W[o, c, KH-1-p, KW-1-q] and padding (KH-1-ph, KW-1-pw)
         (each input pixel collects g W over the windows that read it: a correlation with the flipped filters), so
         it runs on `_conv2d_forward_3`; other strides (or padding wider than the kernel) use version 2's col2im.
    """
    n, c, h, w = x.shape
    o, _, kh, kw = W.shape
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = g.shape[2], g.shape[3]
    ckk, L = c * kh * kw, oh * ow
    g = _c2(g)
    dW = None
    if need_W:
        xp = _pad_nchw(x, ph, pw)
        rows = _bands(ckk, oh, ow, x.itemsize)

        def work(lo, hi, part):
            buf = np.empty(ckk * rows * ow, dtype=x.dtype)
            acc, prod = np.zeros((o, ckk), dtype=x.dtype), np.empty((o, ckk), dtype=x.dtype)
            for i in range(lo, hi):
                G = g[i].reshape(o, L)
                for i0 in range(0, oh, rows):
                    i1 = min(oh, i0 + rows)
                    block = buf[:ckk * (i1 - i0) * ow].reshape(ckk, (i1 - i0) * ow)
                    _im2col_band(xp[i], kh, kw, sh, sw, i0, i1, ow, block)
                    np.matmul(G[:, i0 * ow:i1 * ow], block.T, out=prod)
                    acc += prod
            return acc

        dW = _sum_in_order(_run_split(work, n, worth_it=2 * n * o * ckk * L >= SPLIT_MIN_FLOPS)).reshape(W.shape)
    dx = _conv2d_dx(x, W, g, stride, padding, _conv2d_forward_3) if need_x else None
    db = g.sum(axis=(0, 2, 3)) if need_b else None
    return dx, dW, db


def _sum_in_order(partials):
    """The workers' partial sums added in worker order (so the bits depend only on the split)."""
    total = partials[0]
    for p in partials[1:]:
        total += p
    return total


def _conv2d_dx(x, W, g, stride, padding, forward):
    """dx of versions 3 and 4: at stride 1 (padding narrower than the kernel) the forward convolution `forward` of g
    with the flipped, transposed filters W'[c, o, p, q] = W[o, c, KH-1-p, KW-1-q] and padding (KH-1-ph, KW-1-pw);
    otherwise version 2's col2im."""
    (kh, kw), (ph, pw) = W.shape[2:], padding
    if tuple(stride) == (1, 1) and ph < kh and pw < kw:
        W_flipped = np.ascontiguousarray(W.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])  # (C, O, KH, KW)
        return forward(g, W_flipped, None, (1, 1), (kh - 1 - ph, kw - 1 - pw))
    return _conv2d_backward_2(x, W, g, stride, padding, True, False, False)[0]


# Version 4: version 3 with two changes, both measured on the paper's small maps (docs/engine-speed.md):
#   * im2col over flat arrays with unsigned indices: numba skips the negative-index test of an unsigned index, so the
#     copy of each OW-long run vectorises even when OW is 6 (v3's 1-D views cost a slice object per run: at 6x6 its
#     im2col took longer than the GEMM it feeds);
#   * several images per GEMM when a map is small: an image of a 6x6 map gives a GEMM only 36 columns wide (and dW a
#     K of 36), whose fixed costs dominate; a block of nb images gives nb*36. The output of a block GEMM is (O, nb*L),
#     so it is copied back to NCHW (with the bias), and dW's G is gathered into (O, nb*L) the same way.
CONV_BLOCK_COLUMNS = 512      # images per GEMM: enough that a block has at least this many output positions


@jit
def _im2col_4(xp, n0, n1, kh, kw, sh, sw, oh, ow, cols):
    # images n0 <= n < n1 of the padded batch xp (N, C, Hp, Wp) -> cols (C*KH*KW, (n1 - n0)*OH*OW), image k of the
    # block in columns [k*L, (k+1)*L) with L = OH*OW, each in _im2col's layout:
    # for n, c, p, q, i, j:  cols[(c*KH + p)*KW + q, (n - n0)*L + i*OW + j] = xp[n, c, i*sh + p, j*sw + q]
    # * flat arrays and uint64 offsets: every index is known to be >= 0, so there is no wraparound test per element.
    c_, hp, wp = xp.shape[1], xp.shape[2], xp.shape[3]
    xf, cf = xp.ravel(), cols.ravel()
    L = oh * ow
    width = np.uint64(cols.shape[1])
    for n in range(n0, n1):
        for c in range(c_):
            for p in range(kh):
                for q in range(kw):
                    row = np.uint64((c * kh + p) * kw + q) * width + np.uint64((n - n0) * L)
                    for i in range(oh):
                        src = np.uint64(((n * c_ + c) * hp + i * sh + p) * wp + q)
                        dst = row + np.uint64(i * ow)
                        for j in range(ow):
                            cf[dst + np.uint64(j)] = xf[src + np.uint64(j * sw)]


def _images_per_block(n, ckk, L, itemsize):
    """Images per GEMM: enough for CONV_BLOCK_COLUMNS output positions, as few as keep the block within
    CONV_BAND_BYTES; 0 when one image alone exceeds it (then version 3's bands)."""
    if ckk * L * itemsize > CONV_BAND_BYTES:
        return 0
    return int(max(1, min(n, -(-CONV_BLOCK_COLUMNS // L), CONV_BAND_BYTES // (ckk * L * itemsize))))


def _conv2d_forward_4(x, W, b, stride, padding):
    """Version 4: for each block of nb images [n0, n0 + nb),
    Y (O, nb*L) = W (O, C*KH*KW) @ im2col_4(x[n0:n0+nb]) (C*KH*KW, nb*L),   y[n0 + k] = Y[:, k*L:(k+1)*L] + b.

    * nb = 1 (large maps): BLAS writes straight into y[n], as in versions 2 and 3;
    * the blocks (not the images) are split between the workers, each writing its own images of y: a block holds
      the same images on any number of workers, so y does not depend on it.
    """
    n, c, h, w = x.shape
    o, _, kh, kw = W.shape
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
    ckk, L = c * kh * kw, oh * ow
    nb = _images_per_block(n, ckk, L, x.itemsize)
    if nb == 0:
        return _conv2d_forward_3(x, W, b, stride, padding)
    xp = _pad_nchw(x, ph, pw)
    Wm = _c2(W).reshape(o, ckk)
    y = np.empty((n, o, oh, ow), dtype=x.dtype)
    bias = None if b is None else b.reshape(1, o, 1)

    def work(lo, hi, part):   # blocks lo <= j < hi, block j = images [j*nb, (j+1)*nb)
        buf = np.empty(ckk * nb * L, dtype=x.dtype)
        out = np.empty(o * nb * L, dtype=x.dtype) if nb > 1 else None
        for n0 in range(lo * nb, min(n, hi * nb), nb):
            k = min(nb, n - n0)
            block = buf[:ckk * k * L].reshape(ckk, k * L)
            _im2col_4(xp, n0, n0 + k, kh, kw, sh, sw, oh, ow, block)
            yk = y[n0:n0 + k].reshape(k, o, L)
            if k == 1:
                np.matmul(Wm, block, out=yk[0])
            else:
                Y = out[:o * k * L].reshape(o, k * L)
                np.matmul(Wm, block, out=Y)
                yk[...] = Y.reshape(o, k, L).transpose(1, 0, 2)
            if bias is not None:
                yk += bias

    _run_split(work, -(-n // nb), worth_it=2 * n * o * ckk * L >= SPLIT_MIN_FLOPS)
    return y


def _conv2d_backward_4(x, W, g, stride, padding, need_x, need_W, need_b):
    """Version 4, with the blocks and workers of `_conv2d_forward_4`:

    dW = sum over blocks of  G_block (O, nb*L) @ im2col_4(x[block])^T (nb*L, C*KH*KW), G_block[:, k*L:(k+1)*L] =
         g[n0 + k] (one partial sum per worker, added in worker order, as in version 3);
    dx   at stride 1 the forward conv of g with the flipped filters (version 3's identity) on `_conv2d_forward_4`;
         other strides use version 2's col2im.
    """
    n, c, h, w = x.shape
    o, _, kh, kw = W.shape
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = g.shape[2], g.shape[3]
    ckk, L = c * kh * kw, oh * ow
    nb = _images_per_block(n, ckk, L, x.itemsize)
    if nb == 0:
        return _conv2d_backward_3(x, W, g, stride, padding, need_x, need_W, need_b)
    g = _c2(g)
    dW = None
    if need_W:
        xp = _pad_nchw(x, ph, pw)
        gm = g.reshape(n, o, L)

        def work(lo, hi, part):
            buf = np.empty(ckk * nb * L, dtype=x.dtype)
            gbuf = np.empty(o * nb * L, dtype=x.dtype) if nb > 1 else None
            acc, prod = np.zeros((o, ckk), dtype=x.dtype), np.empty((o, ckk), dtype=x.dtype)
            first = True
            for n0 in range(lo * nb, min(n, hi * nb), nb):
                k = min(nb, n - n0)
                block = buf[:ckk * k * L].reshape(ckk, k * L)
                _im2col_4(xp, n0, n0 + k, kh, kw, sh, sw, oh, ow, block)
                if k == 1:
                    G = gm[n0]
                else:
                    G = gbuf[:o * k * L].reshape(o, k * L)
                    G.reshape(o, k, L)[...] = gm[n0:n0 + k].transpose(1, 0, 2)
                np.matmul(G, block.T, out=acc if first else prod)
                if not first:
                    acc += prod
                first = False
            return acc

        partials = _run_split(work, -(-n // nb), worth_it=2 * n * o * ckk * L >= SPLIT_MIN_FLOPS)
        dW = _sum_in_order(partials).reshape(W.shape)
    dx = _conv2d_dx(x, W, g, stride, padding, _conv2d_forward_4) if need_x else None
    db = g.sum(axis=(0, 2, 3)) if need_b else None
    return dx, dW, db


CONV2D_FORWARD_VERSIONS = {1: _conv2d_forward_1, 2: _conv2d_forward_2, 3: _conv2d_forward_3, 4: _conv2d_forward_4}
CONV2D_BACKWARD_VERSIONS = {1: _conv2d_backward_1, 2: _conv2d_backward_2, 3: _conv2d_backward_3,
                            4: _conv2d_backward_4}


def conv2d_forward(x, W, b, stride, padding):
    return _conv2d_forward_4(x, W, b, stride, padding)


def conv2d_backward(x, W, g, stride, padding, need_x, need_W, need_b):
    return _conv2d_backward_4(x, W, g, stride, padding, need_x, need_W, need_b)


# ---- 2-D max pooling, NCHW, no padding ------------------------------------------------------------------------------
@jit
def _maxpool2d_forward(x, kh, kw, sh, sw, y, argmax):
    # for n, c, i, j:
    #     y[n, c, i, j] = max_{p < kh, q < kw} x[n, c, i*sh + p, j*sw + q]
    #     argmax[n, c, i, j] = (i*sh + p) * W + (j*sw + q) of that max, the first one in row-major order on a tie
    # * "first max wins": a later element replaces the best only if strictly greater (or NaN); a NaN, once best,
    #   stays -- exactly np.argmax's rule, so a NaN propagates as in the reference.
    n_, c_, h_, w_ = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for n in range(n_):
        for c in range(c_):
            for i in range(oh):
                for j in range(ow):
                    h0, w0 = i * sh, j * sw
                    best = x[n, c, h0, w0]
                    at = h0 * w_ + w0
                    for p in range(kh):
                        for q in range(kw):
                            v = x[n, c, h0 + p, w0 + q]
                            if best == best and (v > best or v != v):
                                best = v
                                at = (h0 + p) * w_ + w0 + q
                    y[n, c, i, j] = best
                    argmax[n, c, i, j] = at


@jit
def _maxpool2d_backward(g, argmax, dx):
    # dx (N, C, H*W) starts at zero;  for n, c, i, j:  dx[n, c, argmax[n, c, i, j]] += g[n, c, i, j]
    n_, c_, oh, ow = g.shape
    for n in range(n_):
        for c in range(c_):
            for i in range(oh):
                for j in range(ow):
                    dx[n, c, argmax[n, c, i, j]] += g[n, c, i, j]


# Version 2 of the pool kernels: the same results bit for bit (the same additions in the same order for every
# element), rearranged so that LLVM vectorises them. Per output row, the window offsets (p, q) are the outer loops and
# the row's outputs j the inner one, over a row-long buffer of running sums: the j loop is a strided load and an add,
# where version 1's inner loops ran over the 3 taps of one window. Flat contiguous arrays with uint64 offsets skip
# numba's wraparound test per index. The backwards zero each plane of dx just before its scatter (np.empty, not
# np.zeros: the plane is in cache then). The max pool's forward stays version 1's: the same rearrangement with a
# running maximum and argmax (selects, no branch) measured 1.5x slower (docs/engine-speed.md).
@jit
def _maxpool2d_backward_2(gf, af, planes, hw, ohw, dxf):
    # per plane: dx[plane, :] = 0, then for k < OH*OW:  dx[plane, argmax[plane, k]] += g[plane, k]  (version 1's order)
    for plane in range(planes):
        base = np.uint64(plane * hw)
        for k in range(hw):
            dxf[base + np.uint64(k)] = 0
        src = np.uint64(plane * ohw)
        for k in range(ohw):
            dxf[base + np.uint64(af[src + np.uint64(k)])] += gf[src + np.uint64(k)]


# The pooling wrappers split the images between the workers of `_run_split` (each worker writes its own images, so
# the result is the same for any number of workers): a pass over memory that runs on one core is slower than
# PyTorch's two-threaded one.
def maxpool2d_forward(x, kernel, stride):
    n, c, h, w = x.shape
    oh, ow = _out_size(h, kernel[0], stride[0], 0), _out_size(w, kernel[1], stride[1], 0)
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    argmax = np.empty((n, c, oh, ow), dtype=np.int64)
    _run_split(lambda lo, hi, part: _maxpool2d_forward(x[lo:hi], kernel[0], kernel[1], stride[0], stride[1],
                                                       y[lo:hi], argmax[lo:hi]),
               n, x.size >= SPLIT_MIN_ELEMENTS, uses_blas=False)
    return y, argmax


def _maxpool2d_backward_v(g, argmax, x_shape, kernel, stride, version):
    n, c, h, w = x_shape
    expected = (n, c, _out_size(h, kernel[0], stride[0], 0), _out_size(w, kernel[1], stride[1], 0))
    assert g.shape == expected == argmax.shape, (g.shape, argmax.shape, expected)
    if version == 1:
        dx = np.zeros((n, c, h * w), dtype=g.dtype)

        def work(lo, hi, part):
            _maxpool2d_backward(g[lo:hi], argmax[lo:hi], dx[lo:hi])
    else:
        dx = np.empty((n, c, h * w), dtype=g.dtype)
        gc, ac, ohw = _c2(g), _c2(argmax), expected[2] * expected[3]

        def work(lo, hi, part):
            _maxpool2d_backward_2(gc[lo:hi].reshape(-1), ac[lo:hi].reshape(-1), (hi - lo) * c, h * w, ohw,
                                  dx[lo:hi].reshape(-1))
    _run_split(work, n, dx.size >= SPLIT_MIN_ELEMENTS, uses_blas=False)
    return dx.reshape(x_shape)


def maxpool2d_backward(g, argmax, x_shape, kernel, stride):
    return _maxpool2d_backward_v(g, argmax, x_shape, kernel, stride, 2)


# ---- 2-D average pooling, NCHW, no padding ---------------------------------------------------------------------------
@jit
def _avgpool2d_forward(x, kh, kw, sh, sw, y):
    # for n, c, i, j:  y[n, c, i, j] = (1 / (kh kw)) * sum_{p < kh, q < kw} x[n, c, i*sh + p, j*sw + q]
    # * the sum is taken first and scaled once (as the reference), in x's dtype
    n_, c_ = x.shape[0], x.shape[1]
    oh, ow = y.shape[2], y.shape[3]
    scale = x.dtype.type(1.0 / (kh * kw))
    for n in range(n_):
        for c in range(c_):
            for i in range(oh):
                for j in range(ow):
                    acc = x.dtype.type(0)
                    for p in range(kh):
                        for q in range(kw):
                            acc += x[n, c, i * sh + p, j * sw + q]
                    y[n, c, i, j] = acc * scale


@jit
def _avgpool2d_backward(g, kh, kw, sh, sw, dx):
    # dx starts at zero;  for n, c, i, j, p < kh, q < kw:  dx[n, c, i*sh + p, j*sw + q] += g[n, c, i, j] / (kh kw)
    n_, c_, oh, ow = g.shape
    scale = g.dtype.type(1.0 / (kh * kw))
    for n in range(n_):
        for c in range(c_):
            for i in range(oh):
                for j in range(ow):
                    share = g[n, c, i, j] * scale
                    for p in range(kh):
                        for q in range(kw):
                            dx[n, c, i * sh + p, j * sw + q] += share


@jit
def _avgpool2d_forward_2(xf, planes, h_, w_, kh, kw, sh, sw, oh, ow, yf):
    # version 1's sums, the taps (p, q) outer and the row's outputs j inner (the version 2 note above):
    #     acc[j] = 0;  for p < kh, q < kw, j < OW:  acc[j] += x[i*sh + p, j*sw + q];   y[i, j] = acc[j] / (kh kw)
    acc = np.empty(ow, dtype=xf.dtype)
    scale = xf.dtype.type(1.0 / (kh * kw))
    for plane in range(planes):
        base = np.uint64(plane * h_ * w_)
        for i in range(oh):
            for j in range(ow):
                acc[j] = 0
            for p in range(kh):
                for q in range(kw):
                    row = base + np.uint64((i * sh + p) * w_ + q)
                    for j in range(ow):
                        acc[j] += xf[row + np.uint64(j * sw)]
            out = np.uint64((plane * oh + i) * ow)
            for j in range(ow):
                yf[out + np.uint64(j)] = acc[j] * scale


@jit
def _avgpool2d_backward_2(gf, planes, h_, w_, kh, kw, sh, sw, oh, ow, dxf):
    # per plane: dx = 0, then version 1's additions in version 1's order. Version 1 adds, for i, j, p, q, the share
    # g[i, j] / (kh kw) into dx[i*sh + p, j*sw + q]; an element of dx receives its shares in the order of (i, j).
    # Here j runs inside (p, q) for each i; an element (r, col) gets one share per q from row i, from j = (col - q)/sw,
    # so running q downwards hands them over in ascending j, as version 1 does.
    share = np.empty(ow, dtype=gf.dtype)
    scale = gf.dtype.type(1.0 / (kh * kw))
    for plane in range(planes):
        base = np.uint64(plane * h_ * w_)
        for k in range(h_ * w_):
            dxf[base + np.uint64(k)] = 0
        for i in range(oh):
            src = np.uint64((plane * oh + i) * ow)
            for j in range(ow):
                share[j] = gf[src + np.uint64(j)] * scale
            for p in range(kh):
                for q in range(kw - 1, -1, -1):
                    row = base + np.uint64((i * sh + p) * w_ + q)
                    for j in range(ow):
                        dxf[row + np.uint64(j * sw)] += share[j]


def _avgpool2d_forward_v(x, kernel, stride, version):
    n, c, h, w = x.shape
    oh, ow = _out_size(h, kernel[0], stride[0], 0), _out_size(w, kernel[1], stride[1], 0)
    x = _c2(x)
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    if version == 1:
        def work(lo, hi, part):
            _avgpool2d_forward(x[lo:hi], kernel[0], kernel[1], stride[0], stride[1], y[lo:hi])
    else:
        def work(lo, hi, part):
            _avgpool2d_forward_2(x[lo:hi].reshape(-1), (hi - lo) * c, h, w, kernel[0], kernel[1], stride[0],
                                 stride[1], oh, ow, y[lo:hi].reshape(-1))
    _run_split(work, n, x.size >= SPLIT_MIN_ELEMENTS, uses_blas=False)
    return y


def _avgpool2d_backward_v(g, x_shape, kernel, stride, version):
    n, c, h, w = x_shape
    oh, ow = _out_size(h, kernel[0], stride[0], 0), _out_size(w, kernel[1], stride[1], 0)
    assert g.shape == (n, c, oh, ow), g.shape
    g = _c2(g)
    if version == 1:
        dx = np.zeros(x_shape, dtype=g.dtype)

        def work(lo, hi, part):
            _avgpool2d_backward(g[lo:hi], kernel[0], kernel[1], stride[0], stride[1], dx[lo:hi])
    else:
        dx = np.empty(x_shape, dtype=g.dtype)

        def work(lo, hi, part):
            _avgpool2d_backward_2(g[lo:hi].reshape(-1), (hi - lo) * c, h, w, kernel[0], kernel[1], stride[0],
                                  stride[1], oh, ow, dx[lo:hi].reshape(-1))
    _run_split(work, n, dx.size >= SPLIT_MIN_ELEMENTS, uses_blas=False)
    return dx


def avgpool2d_forward(x, kernel, stride):
    return _avgpool2d_forward_v(x, kernel, stride, 2)


def avgpool2d_backward(g, x_shape, kernel, stride):
    return _avgpool2d_backward_v(g, x_shape, kernel, stride, 2)


# Every version of the pools with the public signature, for the tests and bench_conv.py (the max pool's forward
# has one version: maxpool2d_forward).
MAXPOOL2D_BACKWARD_VERSIONS = {v: functools.partial(_maxpool2d_backward_v, version=v) for v in (1, 2)}
AVGPOOL2D_FORWARD_VERSIONS = {v: functools.partial(_avgpool2d_forward_v, version=v) for v in (1, 2)}
AVGPOOL2D_BACKWARD_VERSIONS = {v: functools.partial(_avgpool2d_backward_v, version=v) for v in (1, 2)}


# ---- LSTM gates and cell update (Jaderberg et al. 2016, Sec. 3.2: the recurrent core) -------------------------------
# Same arguments as the reference; the products x W_x, h W_h stay BLAS calls in ops.py. Three versions, all tested
# against the reference (tests/test_lstm.py); timings in docs/engine-speed.md (LSTM):
#   version 1  the definition: one loop over the (B, H) cells reading the four gate columns j, H + j, 2H + j, 3H + j
#              of a row together. Its exp and tanh are numba's scalar libm calls (~5-20 ns each): slow.
#   version 2  (float64) the transcendentals taken out to NumPy's SIMD tanh over whole arrays, with
#              sigmoid(z) = (1 + tanh(z / 2)) / 2: a jitted pass forms z (bias added, the sigmoid gates halved),
#              np.tanh over all 4H columns, a jitted pass finishes the gates and the cell update, np.tanh(c'),
#              h' = o tanh(c'). Backward: np.tanh(c'), then one jitted pass with no transcendental in it.
#   version 3  (float32, the default there) version 2 with tanh computed inside the jitted loops as a rational
#              function, x p(x^2) / q(x^2) (degrees 13 / 6) on [-7.9053, 7.9053], clamped outside: the approximation
#              Eigen uses for float32 tanh (its generic_fast_tanh_float coefficients). Pure arithmetic, so LLVM
#              vectorises the loops: ~6x faster than np.tanh. Within 3.6e-7 of the exact tanh (a few float32 ulps;
#              tested), so float32 results differ from the reference by rounding-level amounts.
@jit
def _sigmoid1(z, one):
    # sigmoid of one number without overflow: e = exp(-|z|) <= 1 (`one` is 1 in z's dtype, so float32 stays float32)
    e = np.exp(-abs(z))
    return one / (one + e) if z >= 0 else e / (one + e)


@jit
def _lstm_gates_forward_1(zx, zh, b, c, h_new, c_new, gates):
    # for n < B, j < H:  z_k = zx[n, kH + j] + zh[n, kH + j] + b[kH + j]  for the gates k = i, f, g, o
    #     i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g);  c_new = f c + i g;  h_new = o tanh(c_new)
    # * all four z are read before any gate is written, so `gates` may be the array zx (in place).
    B, H = c.shape
    one = c.dtype.type(1)
    for n in range(B):
        for j in range(H):
            zi = zx[n, j] + zh[n, j] + b[j]
            zf = zx[n, H + j] + zh[n, H + j] + b[H + j]
            zg = zx[n, 2 * H + j] + zh[n, 2 * H + j] + b[2 * H + j]
            zo = zx[n, 3 * H + j] + zh[n, 3 * H + j] + b[3 * H + j]
            i, f, g, o = _sigmoid1(zi, one), _sigmoid1(zf, one), np.tanh(zg), _sigmoid1(zo, one)
            cn = f * c[n, j] + i * g
            c_new[n, j] = cn
            h_new[n, j] = o * np.tanh(cn)
            gates[n, j], gates[n, H + j], gates[n, 2 * H + j], gates[n, 3 * H + j] = i, f, g, o


@jit
def _lstm_preactivation(zx, zh, b, z):
    # for n < B, j < 4H:  z[n, j] = (zx[n, j] + zh[n, j] + b[j]) * s_j,  s = 1/2 on the sigmoid gates i, f, o and
    # 1 on g, so that one tanh over the row gives tanh(z_i / 2), tanh(z_f / 2), tanh(z_g), tanh(z_o / 2).
    # * z may be zx (in place): each element is read, then written.
    B, H4 = z.shape
    H = H4 // 4
    half = z.dtype.type(0.5)
    for n in range(B):
        for j in range(2 * H):
            z[n, j] = (zx[n, j] + zh[n, j] + b[j]) * half
        for j in range(2 * H, 3 * H):
            z[n, j] = zx[n, j] + zh[n, j] + b[j]
        for j in range(3 * H, H4):
            z[n, j] = (zx[n, j] + zh[n, j] + b[j]) * half


@jit
def _lstm_cell_update(t, c, c_new):
    # t = tanh of the scaled pre-activations (B, 4H), rewritten in place into the gates:
    # for n, j < H:  i, f, o = (1 + t) / 2;  g = t;  c_new = f c + i g
    B, H = c.shape
    half = c.dtype.type(0.5)
    for n in range(B):
        for j in range(H):
            i = half + half * t[n, j]
            f = half + half * t[n, H + j]
            t[n, j] = i
            t[n, H + j] = f
            c_new[n, j] = f * c[n, j] + i * t[n, 2 * H + j]
        for j in range(3 * H, 4 * H):
            t[n, j] = half + half * t[n, j]


@jit
def _lstm_output(gates, tc, h_new):
    # for n, j < H:  h_new = o tanh(c_new)   (tc holds tanh(c_new); h_new may be tc)
    B, H = h_new.shape
    for n in range(B):
        for j in range(H):
            h_new[n, j] = gates[n, 3 * H + j] * tc[n, j]


def _lstm_gates_forward_2(zx, zh, b, c, h_new, c_new, gates):
    _lstm_preactivation(zx, zh, b, gates)
    np.tanh(gates, out=gates)
    _lstm_cell_update(gates, c, c_new)
    np.tanh(c_new, out=h_new)
    _lstm_output(gates, h_new, h_new)


@jit
def _tanh32(x):
    # tanh(x) ~ x p(x^2) / q(x^2) for |x| <= 7.9053 (clamped beyond, where float32 tanh is +-1 to 3.6e-7);
    # Horner's rule, float32 constants so the loop stays float32.
    x = min(max(x, np.float32(-7.90531110763549805)), np.float32(7.90531110763549805))
    x2 = x * x
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    return x * p / q


@jit
def _lstm_gates_forward_3(zx, zh, b, c, h_new, c_new, gates):
    # version 1's arithmetic (float32 only) with sigmoid(z) = (1 + tanh(z / 2)) / 2 and tanh = _tanh32, row by row:
    # first the 4H gates of row n (three loops over contiguous columns), then its H cells, while the row is in L1.
    # * each gate is read from zx before it is written, so `gates` may be the array zx (in place), but then LLVM's
    #   overlap check fails and the loops run scalar (5x slower): ops.py gives separate arrays.
    # * short loops that write one array: LLVM vectorises them (one loop over all seven arrays it did not).
    B, H = c.shape
    half = np.float32(0.5)
    for n in range(B):
        for j in range(2 * H):   # i, f
            gates[n, j] = half + half * _tanh32(half * (zx[n, j] + zh[n, j] + b[j]))
        for j in range(2 * H, 3 * H):   # g
            gates[n, j] = _tanh32(zx[n, j] + zh[n, j] + b[j])
        for j in range(3 * H, 4 * H):   # o
            gates[n, j] = half + half * _tanh32(half * (zx[n, j] + zh[n, j] + b[j]))
        for j in range(H):
            c_new[n, j] = gates[n, H + j] * c[n, j] + gates[n, j] * gates[n, 2 * H + j]
        for j in range(H):
            h_new[n, j] = gates[n, 3 * H + j] * _tanh32(c_new[n, j])


LSTM_DEFAULT_VERSION = 4       # version 3 below LSTM_SPLIT_MIN elements, split over the cores above


def _lstm_version(table, version, dtype):
    """The kernel to run: versions 3 and 4 are float32 only (float64 runs version 2 under those numbers); default
    LSTM_DEFAULT_VERSION for float32, 2 for float64."""
    if version is None or (version in (3, 4) and dtype != np.float32):
        version = LSTM_DEFAULT_VERSION if dtype == np.float32 else 2
    return table[version]


def lstm_gates_forward(zx, zh, b, c, out=None, _version=None):
    B, H = c.shape
    if out is None:
        out = (np.empty((B, H), c.dtype), np.empty((B, H), c.dtype), np.empty((B, 4 * H), c.dtype))
    kernel = _lstm_version(LSTM_GATES_FORWARD_VERSIONS, _version, c.dtype)
    kernel(_c2(zx), _c2(zh), _c2(b), _c2(c), *out)
    return out


@jit
def _lstm_gates_backward_1(gates, c, c_new, dh, dc, dz, dc_prev):
    # for n < B, j < H, with i, f, g, o = gates[n, j + kH] and tc = tanh(c_new[n, j]):
    #     dct = dc + dh o (1 - tc^2)
    #     dz_i = dct g i (1 - i),  dz_f = dct c f (1 - f),  dz_g = dct i (1 - g^2),  dz_o = dh tc o (1 - o)
    #     dc_prev = dct f
    # * dc is read before dc_prev is written, so dc_prev may be the array dc (in place).
    B, H = c.shape
    one = c.dtype.type(1)
    for n in range(B):
        for j in range(H):
            i, f, g, o = gates[n, j], gates[n, H + j], gates[n, 2 * H + j], gates[n, 3 * H + j]
            tc = np.tanh(c_new[n, j])
            d_h = dh[n, j]
            dct = dc[n, j] + d_h * o * (one - tc * tc)
            dz[n, j] = dct * g * i * (one - i)
            dz[n, H + j] = dct * c[n, j] * f * (one - f)
            dz[n, 2 * H + j] = dct * i * (one - g * g)
            dz[n, 3 * H + j] = d_h * tc * o * (one - o)
            dc_prev[n, j] = dct * f


@jit
def _lstm_gates_backward_tc(gates, c, tc, dh, dc, dz, dc_prev):
    # version 1's loop with tc = tanh(c_new) given (from np.tanh): plain arithmetic, vectorised
    B, H = c.shape
    one = c.dtype.type(1)
    for n in range(B):
        for j in range(H):
            i, f, g, o = gates[n, j], gates[n, H + j], gates[n, 2 * H + j], gates[n, 3 * H + j]
            t = tc[n, j]
            d_h = dh[n, j]
            dct = dc[n, j] + d_h * o * (one - t * t)
            dz[n, j] = dct * g * i * (one - i)
            dz[n, H + j] = dct * c[n, j] * f * (one - f)
            dz[n, 2 * H + j] = dct * i * (one - g * g)
            dz[n, 3 * H + j] = d_h * t * o * (one - o)
            dc_prev[n, j] = dct * f


def _lstm_gates_backward_2(gates, c, c_new, dh, dc, dz, dc_prev):
    _lstm_gates_backward_tc(gates, c, np.tanh(c_new), dh, dc, dz, dc_prev)


@jit
def _tanh32_(x, y):
    # for i: y[i] = _tanh32(x[i])   (flat float32 arrays)
    for i in range(x.size):
        y[i] = _tanh32(x[i])


def _lstm_gates_backward_3(gates, c, c_new, dh, dc, dz, dc_prev):
    # version 2 with tanh(c_new) by _tanh32 (float32 only)
    tc = np.empty_like(c_new)
    _tanh32_(c_new.reshape(-1), tc.reshape(-1))
    _lstm_gates_backward_tc(gates, c, tc, dh, dc, dz, dc_prev)


def lstm_gates_backward(gates, c, c_new, dh, dc, out=None, _version=None):
    B, H = c.shape
    if out is None:
        out = (np.empty((B, 4 * H), c.dtype), np.empty((B, H), c.dtype))
    kernel = _lstm_version(LSTM_GATES_BACKWARD_VERSIONS, _version, c.dtype)
    kernel(_c2(gates), _c2(c), _c2(c_new), _c2(dh), _c2(dc), *out)
    return out


# Version 4: version 3 with the rows split over the cores. Rows are independent, so each of k threads (one per BLAS
# thread, _run_split: none when a caller limited BLAS to one thread, as the concurrent DNI runner does) runs version
# 3 on a contiguous block of rows [lo, hi), the same arithmetic per element: bit for bit version 3's result. Split
# from LSTM_SPLIT_MIN elements per gate: measured (`bench_lstm.py --kernels`, 2 cores, us forward / backward), the
# split lost at (256, 256) (262 / 212 against version 3's 242 / 174) and (32, 1024), and won at (256, 1024)
# (658 / 514 against 971 / 694).
LSTM_SPLIT_MIN = 131072


def _lstm_gates_forward_4(zx, zh, b, c, h_new, c_new, gates):
    B, H = c.shape

    def rows(lo, hi, part):
        _lstm_gates_forward_3(zx[lo:hi], zh[lo:hi], b, c[lo:hi], h_new[lo:hi], c_new[lo:hi], gates[lo:hi])

    _run_split(rows, B, worth_it=B * H >= LSTM_SPLIT_MIN, uses_blas=False)


def _lstm_gates_backward_4(gates, c, c_new, dh, dc, dz, dc_prev):
    B, H = c.shape

    def rows(lo, hi, part):
        _lstm_gates_backward_3(gates[lo:hi], c[lo:hi], c_new[lo:hi], dh[lo:hi], dc[lo:hi], dz[lo:hi], dc_prev[lo:hi])

    _run_split(rows, B, worth_it=B * H >= LSTM_SPLIT_MIN, uses_blas=False)


LSTM_GATES_FORWARD_VERSIONS = {1: _lstm_gates_forward_1, 2: _lstm_gates_forward_2, 3: _lstm_gates_forward_3,
                               4: _lstm_gates_forward_4}
LSTM_GATES_BACKWARD_VERSIONS = {1: _lstm_gates_backward_1, 2: _lstm_gates_backward_2, 3: _lstm_gates_backward_3,
                                4: _lstm_gates_backward_4}

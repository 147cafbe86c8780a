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
    # mu[j] = mean_n x[n, j]; var[j] = mean_n x[n, j]^2 - mu[j]^2; invstd[j] = 1 / sqrt(var[j] + eps), in ONE pass:
    # sum x and sum x^2 accumulate together in float64, so E[x^2] - E[x]^2 does not suffer the cancellation it
    # would in float32.
    n, c = x.shape
    s, ss = np.zeros(c), np.zeros(c)
    for i in range(n):
        for j in range(c):
            v = np.float64(x[i, j])
            s[j] += v
            ss[j] += v * v
    for j in range(c):
        m = s[j] / n
        v = ss[j] / n - m * m
        if v < 0.0:  # rounding can make it slightly negative; written so that a NaN stays NaN, as in the reference
            v = 0.0
        mu[j] = m
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
# padding = (ph, pw). Two versions, both tested against the reference (tests/test_conv.py):
#   version 1  the definition as a direct 7-deep loop: no extra memory, but no BLAS -- ~1-2 GFLOP/s.
#   version 2  im2col per image into one reused buffer + one BLAS GEMM per image, col2im for dx (the default).
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


CONV2D_FORWARD_VERSIONS = {1: _conv2d_forward_1, 2: _conv2d_forward_2}
CONV2D_BACKWARD_VERSIONS = {1: _conv2d_backward_1, 2: _conv2d_backward_2}


def conv2d_forward(x, W, b, stride, padding):
    return _conv2d_forward_2(x, W, b, stride, padding)


def conv2d_backward(x, W, g, stride, padding, need_x, need_W, need_b):
    return _conv2d_backward_2(x, W, g, stride, padding, need_x, need_W, need_b)


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


def maxpool2d_forward(x, kernel, stride):
    n, c, h, w = x.shape
    oh, ow = _out_size(h, kernel[0], stride[0], 0), _out_size(w, kernel[1], stride[1], 0)
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    argmax = np.empty((n, c, oh, ow), dtype=np.int64)
    _maxpool2d_forward(x, kernel[0], kernel[1], stride[0], stride[1], y, argmax)
    return y, argmax


def maxpool2d_backward(g, argmax, x_shape, kernel, stride):
    n, c, h, w = x_shape
    expected = (n, c, _out_size(h, kernel[0], stride[0], 0), _out_size(w, kernel[1], stride[1], 0))
    assert g.shape == expected == argmax.shape, (g.shape, argmax.shape, expected)
    dx = np.zeros((n, c, h * w), dtype=g.dtype)
    _maxpool2d_backward(g, argmax, dx)
    return dx.reshape(x_shape)

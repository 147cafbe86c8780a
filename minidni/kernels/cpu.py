"""Numba CPU kernels: the same functions as `kernels/reference.py`, written as explicit loops and JIT-compiled.

Every kernel opens with the loop it computes; the reference is its specification and `tests/test_kernels.py` checks
them against each other on random shapes (non-contiguous and broadcast inputs included).

Choices, each measured on the 2-core development machine (numbers in benchmarks/results/, `benchmarks/bench_engine.py`):
  * Matrix products stay NumPy (`np.matmul` -> OpenBLAS) *between* jitted kernels. `np.dot` inside `@njit` would
    need SciPy as a dependency (numba reaches BLAS through it) and gives no speed over calling BLAS from Python:
    a 256x256 GEMM is ~100 us, the Python call ~1 us.
  * `nogil=True`: kernels release the GIL, so the DNI concurrent runner's threads run them at the same time.
  * No `parallel=True`: with BLAS already using both cores, numba's OpenMP/TBB threads fight BLAS's threads
    (7 vs 223 steps/s seen with a spinning OpenMP layer); these kernels are memory-bound and short, so the parallel
    speed-up is small, and a serial kernel is safe to call from several threads (the workqueue layer is not).
  * `error_model='numpy'`: no Python-style ZeroDivision checks in the inner loops (1367 -> 184 us for Adam over 465k
    parameters with float32 constants).
  * `cache=True`: compiled machine code is stored next to this file, so only the very first run pays the JIT.
  * Scalars arrive already cast to the arrays' dtype (see `ops.py`/`optim.py`), so float32 loops stay float32.
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
    # for i: y[i] = max(x[i], 0)
    zero = x.dtype.type(0)
    for i in range(x.size):
        y[i] = x[i] if x[i] > zero else zero


@jit
def _relu_backward(y, g, dx):
    # for i: dx[i] = g[i] if y[i] > 0 else 0
    zero = y.dtype.type(0)
    for i in range(y.size):
        dx[i] = g[i] if y[i] > zero else zero


@jit
def _tanh_forward(x, y):
    for i in range(x.size):
        y[i] = np.tanh(x[i])


@jit
def _tanh_backward(y, g, dx):
    one = y.dtype.type(1)
    for i in range(y.size):
        dx[i] = g[i] * (one - y[i] * y[i])


@jit
def _sigmoid_forward(x, y):
    # stable: for x >= 0, 1/(1+e^-x); for x < 0, e^x/(1+e^x)
    one = x.dtype.type(1)
    for i in range(x.size):
        if x[i] >= 0:
            y[i] = one / (one + np.exp(-x[i]))
        else:
            e = np.exp(x[i])
            y[i] = e / (one + e)


@jit
def _sigmoid_backward(y, g, dx):
    one = y.dtype.type(1)
    for i in range(y.size):
        dx[i] = g[i] * y[i] * (one - y[i])


@jit
def _exp(x, y):
    for i in range(x.size):
        y[i] = np.exp(x[i])


@jit
def _log(x, y):
    for i in range(x.size):
        y[i] = np.log(x[i])


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
    return _unary(_tanh_forward, x)


def tanh_backward(y, g):
    return _unary_backward(_tanh_backward, y, g)


def sigmoid_forward(x):
    return _unary(_sigmoid_forward, x)


def sigmoid_backward(y, g):
    return _unary_backward(_sigmoid_backward, y, g)


def exp_forward(x):
    return _unary(_exp, x)


def log_forward(x):
    return _unary(_log, x)


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
def _batchnorm_train_forward(x, gamma, beta, eps, y, xhat, mu, var, invstd):
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


def batchnorm_train_forward(x, gamma, beta, eps):
    x = _c2(x)
    y, xhat = np.empty_like(x), np.empty_like(x)
    c = x.shape[1]
    mu, var, invstd = (np.empty(c, dtype=x.dtype) for _ in range(3))
    _batchnorm_train_forward(x, gamma, beta, eps, y, xhat, mu, var, invstd)
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


def adam_step_(p, g, m, v, lr, beta1, beta2, eps, bias1, bias2, weight_decay):
    _adam_step_(p.reshape(-1), _flat(g), m.reshape(-1), v.reshape(-1),
                lr, beta1, beta2, eps, bias1, bias2, weight_decay)


@jit
def _sgd_step_(p, g, buf, lr, momentum, weight_decay, nesterov):
    for i in range(p.size):
        gi = g[i] + weight_decay * p[i]
        if momentum != 0:
            buf[i] = momentum * buf[i] + gi
            gi = gi + momentum * buf[i] if nesterov else buf[i]
        p[i] -= lr * gi


def sgd_step_(p, g, buf, lr, momentum, weight_decay, nesterov):
    _sgd_step_(p.reshape(-1), _flat(g), buf.reshape(-1), lr, momentum, weight_decay, nesterov)

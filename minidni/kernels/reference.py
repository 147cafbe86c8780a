"""The NumPy reference kernels: the executable specification of every kernel minidni runs.

Each function here is the plainest correct NumPy version of one piece of arithmetic. `kernels/cpu.py` implements
the same functions, with the same signatures, as Numba loops; the tests check the two agree. Ops in `minidni/ops.py`
call whichever backend is active (`minidni.kernels.active`), so reading this file tells you exactly what the fast
backend must compute.

Conventions: 2-D arrays are (N, C) = (batch, features); kernels never modify their inputs unless the name ends in
`_` (in place, for optimizer updates); scalars passed in are already of the arrays' dtype.
"""
import numpy as np

NAME = "numpy"


# ---- elementwise activations: y = f(x);  dx = g * f'(x), written with y where that is cheaper ---------------------
def relu_forward(x):
    """y = max(x, 0)"""
    return np.maximum(x, 0)


def relu_backward(y, g):
    """dx = g * [y > 0]"""
    return g * (y > 0)


def tanh_forward(x):
    """y = tanh(x)"""
    return np.tanh(x)


def tanh_backward(y, g):
    """dx = g * (1 - y^2)"""
    return g * (1 - y * y)


def sigmoid_forward(x):
    """y = 1 / (1 + exp(-x)), computed without overflow for large |x|"""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def sigmoid_backward(y, g):
    """dx = g * y * (1 - y)"""
    return g * y * (1 - y)


def exp_forward(x):
    return np.exp(x)


def log_forward(x):
    return np.log(x)


# ---- linear layer: y = x W + b ---------------------------------------------------------------------------------
def linear_forward(x, W, b):
    """y = x @ W + b.   x (N, I), W (I, O), b (O,) or None  ->  y (N, O)"""
    y = x @ W
    if b is not None:
        y += b
    return y


def linear_backward(x, W, g, need_x, need_W, need_b):
    """dx = g W^T,  dW = x^T g,  db = sum_n g[n]   (None for what is not needed)."""
    dx = g @ W.T if need_x else None
    dW = x.T @ g if need_W else None
    db = g.sum(axis=0) if need_b else None
    return dx, dW, db


# ---- losses --------------------------------------------------------------------------------------------------------
def softmax_xent_forward(logits, labels):
    """Mean cross-entropy of softmax(logits) against integer labels, and the softmax probabilities.

    loss = mean_n [ logsumexp(z_n) - z_n[y_n] ],  with logsumexp(z) = m + log sum_k exp(z_k - m), m = max_k z_k.
    """
    m = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - m)
    s = e.sum(axis=1, keepdims=True)
    probs = e / s
    n = logits.shape[0]
    picked = logits[np.arange(n), labels]
    loss = (np.log(s[:, 0]) + m[:, 0] - picked).astype(np.float64).mean()
    return np.asarray(loss, dtype=logits.dtype), probs


def softmax_xent_backward(probs, labels, g):
    """dlogits = g * (softmax(z) - onehot(y)) / N"""
    n = probs.shape[0]
    d = probs.copy()
    d[np.arange(n), labels] -= 1
    d *= g / n
    return d


def mse_forward(a, b):
    """loss = mean((a - b)^2) over all elements"""
    d = (a - b).astype(np.float64)
    return np.asarray((d * d).mean(), dtype=a.dtype)


def mse_backward(a, b, g):
    """da = 2 g (a - b) / size,  db = -da"""
    return (a - b) * (2 * g / a.size)


# ---- batch normalisation (Ioffe & Szegedy 2015), over the batch axis of (N, C) -----------------------------------------
def batchnorm_train_forward(x, gamma, beta, eps):
    """mu = mean_n x,  var = mean_n (x - mu)^2,  xhat = (x - mu) / sqrt(var + eps),  y = gamma xhat + beta.

    Returns y, xhat, mu, var (biased), invstd = 1 / sqrt(var + eps).
    """
    mu = x.mean(axis=0)
    var = ((x - mu) ** 2).mean(axis=0)
    invstd = (1 / np.sqrt(var + eps)).astype(x.dtype)
    xhat = (x - mu) * invstd
    return xhat * gamma + beta, xhat, mu, var, invstd


def batchnorm_eval_forward(x, gamma, beta, mean, var, eps):
    """y = gamma (x - running_mean) / sqrt(running_var + eps) + beta"""
    scale = gamma / np.sqrt(var + eps)
    return (x - mean) * scale + beta


def batchnorm_backward(g, xhat, gamma, invstd, need_x):
    """dbeta = sum_n g,  dgamma = sum_n g xhat,
    dx = gamma invstd / N * (N g - dbeta - xhat dgamma)   (the batch statistics depend on x too)."""
    n = g.shape[0]
    dbeta = g.sum(axis=0)
    dgamma = (g * xhat).sum(axis=0)
    dx = None
    if need_x:
        dx = (gamma * invstd / n) * (n * g - dbeta - xhat * dgamma)
    return dx, dgamma, dbeta


# ---- optimizer updates, in place -------------------------------------------------------------------------------------
def adam_step_(p, g, m, v, lr, beta1, beta2, eps, bias1, bias2, weight_decay):
    """One Adam step (Kingma & Ba 2015), PyTorch's formulation, in place on p, m, v.

    g' = g + wd p;  m = b1 m + (1-b1) g';  v = b2 v + (1-b2) g'^2;
    p -= lr / bias1 * m / (sqrt(v) / sqrt(bias2) + eps),   bias_k = 1 - b_k^t
    """
    if weight_decay:
        g = g + weight_decay * p
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * g * g
    denom = np.sqrt(v) / np.sqrt(bias2) + eps
    p -= (lr / bias1) * m / denom


def sgd_step_(p, g, buf, lr, momentum, weight_decay, nesterov):
    """SGD with (heavy-ball or Nesterov) momentum, in place:  buf = mu buf + g';  p -= lr (g' + mu buf if nesterov else buf)."""
    if weight_decay:
        g = g + weight_decay * p
    if momentum:
        buf *= momentum
        buf += g
        g = g + momentum * buf if nesterov else buf
    p -= lr * g

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


def sum_rows(g):
    """out[j] = sum_n g[n, j]: the column sums of (N, C), e.g. the bias gradient db of a linear layer."""
    return g.sum(axis=0)


def linear_backward(x, W, g, need_x, need_W, need_b):
    """dx = g W^T,  dW = x^T g,  db = sum_n g[n]   (None for what is not needed)."""
    dx = g @ W.T if need_x else None
    dW = x.T @ g if need_W else None
    db = g.sum(axis=0) if need_b else None
    return dx, dW, db


# ---- fused layers: a linear or batch-norm layer with its ReLU, in one op (the same math as the two ops in a row) ------
def linear_relu_forward(x, W, b):
    """y = max(x W + b, 0)"""
    return relu_forward(linear_forward(x, W, b))


def linear_relu_backward(x, W, y, g, need_x, need_W, need_b):
    """With g' = g [y > 0] (the ReLU's backward): dx = g' W^T,  dW = x^T g',  db = sum_n g'[n]."""
    return linear_backward(x, W, relu_backward(y, g), need_x, need_W, need_b)


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


def batchnorm_relu_train_forward(x, gamma, beta, eps):
    """y = max(gamma xhat + beta, 0) with xhat = (x - mu) invstd the batch-normalised x (see batchnorm_train_forward).

    Returns y, mu, var (biased), invstd -- not xhat: the backward recomputes it from x (one array less to store).
    """
    y, _, mu, var, invstd = batchnorm_train_forward(x, gamma, beta, eps)
    return relu_forward(y), mu, var, invstd


def batchnorm_relu_backward(g, x, y, mu, gamma, invstd, need_x):
    """batchnorm_backward of g' = g [y > 0] (the ReLU's backward), with xhat = (x - mu) invstd recomputed."""
    return batchnorm_backward(relu_backward(y, g), (x - mu) * invstd, gamma, invstd, need_x)


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


# ---- 2-D convolution, NCHW (Jaderberg et al. 2016, Sec. 3.3 / appendix A: the CNN and its conv synthesizers) -------
# x (N, C, H, W), weights W (O, C, KH, KW), bias b (O,) or None; stride = (sh, sw), padding = (ph, pw) are pairs of
# ints (ops.py turns 1 or "same" into pairs). Zero padding; the output has OH = (H + 2 ph - KH) // sh + 1 rows and
# OW = (W + 2 pw - KW) // sw + 1 columns. As in every deep-learning library this is a cross-correlation (no flip):
#     y[n, o, i, j] = b[o] + sum_{c, p, q} xpad[n, c, i sh + p, j sw + q] W[o, c, p, q]
def _out_size(size, k, stride, pad):
    """Number of positions of a window of k with the given stride over size + 2 pad (the floor, as PyTorch)."""
    return (size + 2 * pad - k) // stride + 1


def _pad2d(x, padding):
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def _windows(x, kh, kw, stride):
    """All (kh, kw) windows of x (N, C, H, W) at the given stride, as a view (N, C, OH, OW, kh, kw): no copy."""
    sh, sw = stride
    return np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]


def _im2col(x, kh, kw, stride, padding):
    """cols (N*OH*OW, C*KH*KW): row (n, i, j) holds the receptive field of output pixel (i, j) of image n."""
    win = _windows(_pad2d(x, padding), kh, kw, stride)  # (N, C, OH, OW, KH, KW)
    n, c, oh, ow = win.shape[:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw), (oh, ow)


def conv2d_forward(x, W, b, stride, padding):
    """y = im2col(x) W^T + b:  one row per output pixel times one column per filter, then back to NCHW.

    x (N, C, H, W), W (O, C, KH, KW), b (O,) or None  ->  y (N, O, OH, OW), C-contiguous.
    """
    n = x.shape[0]
    o, _, kh, kw = W.shape
    cols, (oh, ow) = _im2col(x, kh, kw, stride, padding)  # (N*OH*OW, C*KH*KW)
    y = cols @ W.reshape(o, -1).T  # (N*OH*OW, O)
    if b is not None:
        y += b
    return np.ascontiguousarray(y.reshape(n, oh, ow, o).transpose(0, 3, 1, 2))


def conv2d_backward(x, W, g, stride, padding, need_x, need_W, need_b):
    """With cols = im2col(x) and G = g as rows (N*OH*OW, O):
    dW = G^T cols,  db = sum of g over (n, i, j),  dx = col2im(G W): each row of G W is the gradient of one receptive
    field; col2im adds it back into the (padded) input positions it was read from, then the padding is cut off.
    """
    n, c, h, w = x.shape
    o, _, kh, kw = W.shape
    oh, ow = g.shape[2], g.shape[3]
    G = g.transpose(0, 2, 3, 1).reshape(n * oh * ow, o)  # (N*OH*OW, O)
    db = g.sum(axis=(0, 2, 3)) if need_b else None
    dW = None
    if need_W:
        cols, _ = _im2col(x, kh, kw, stride, padding)
        dW = (G.T @ cols).reshape(W.shape)
    dx = None
    if need_x:
        dcols = (G @ W.reshape(o, -1)).reshape(n, oh, ow, c, kh, kw)
        (sh, sw), (ph, pw) = stride, padding
        dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
        # col2im, one kernel offset at a time: tap (p, q) of window (i, j) read input pixel (i sh + p, j sw + q)
        for p in range(kh):
            for q in range(kw):
                hs, ws = slice(p, p + sh * (oh - 1) + 1, sh), slice(q, q + sw * (ow - 1) + 1, sw)
                dxp[:, :, hs, ws] += dcols[..., p, q].transpose(0, 3, 1, 2)  # (N, C, OH, OW)
        dx = np.ascontiguousarray(dxp[:, :, ph:ph + h, pw:pw + w])
    return dx, dW, db


# ---- 2-D max pooling, NCHW, no padding ------------------------------------------------------------------------------
def maxpool2d_forward(x, kernel, stride):
    """y[n, c, i, j] = max over the (kh, kw) window at (i sh, j sw) of x[n, c];  kernel = (kh, kw), stride = (sh, sw).

    Returns y (N, C, OH, OW) and argmax (N, C, OH, OW) int64: where in the H x W plane of x[n, c] the max sits,
    as the flat index h * W + w (PyTorch's `return_indices` convention). Ties go to the first maximum in row-major
    order within the window (np.argmax's rule; a NaN counts as the maximum, so it propagates).
    """
    kh, kw = kernel
    win = _windows(x, kh, kw, stride)  # (N, C, OH, OW, kh, kw)
    n, c, oh, ow = win.shape[:4]
    flat = win.reshape(n, c, oh, ow, kh * kw)
    k = np.argmax(flat, axis=-1)  # position inside the window
    y = np.take_along_axis(flat, k[..., None], axis=-1)[..., 0]
    rows = np.arange(oh)[:, None] * stride[0] + k // kw  # (N, C, OH, OW) by broadcasting
    cols = np.arange(ow) * stride[1] + k % kw
    return np.ascontiguousarray(y), (rows * x.shape[3] + cols).astype(np.int64)


def maxpool2d_backward(g, argmax, x_shape, kernel, stride):
    """dx[n, c, argmax[n, c, i, j]] += g[n, c, i, j]: each output's gradient goes to the element that was the max
    (added up when overlapping windows, stride < kernel, share a max); every other element gets 0."""
    n, c, h, w = x_shape
    expected = (n, c, _out_size(h, kernel[0], stride[0], 0), _out_size(w, kernel[1], stride[1], 0))
    assert g.shape == expected == argmax.shape, (g.shape, argmax.shape, expected)
    dx = np.zeros((n * c, h * w), dtype=g.dtype)
    np.add.at(dx, (np.arange(n * c)[:, None], argmax.reshape(n * c, -1)), g.reshape(n * c, -1))
    return dx.reshape(x_shape)



# ---- 2-D average pooling, NCHW, no padding (the paper's CNN pools by averaging after every layer but the first) ------
def avgpool2d_forward(x, kernel, stride):
    """y[n, c, i, j] = (1 / (kh kw)) sum over the (kh, kw) window at (i sh, j sw) of x[n, c]."""
    kh, kw = kernel
    win = _windows(x, kh, kw, stride)  # (N, C, OH, OW, kh, kw)
    return np.ascontiguousarray(win.sum(axis=(4, 5)) * x.dtype.type(1.0 / (kh * kw)))


def avgpool2d_backward(g, x_shape, kernel, stride):
    """dx[n, c, h, w] = (1 / (kh kw)) sum of g[n, c, i, j] over the windows (i, j) that contain (h, w): each window
    hands an equal share of its gradient to each of its kh kw inputs (shares add up where windows overlap)."""
    n, c, h, w = x_shape
    (kh, kw), (sh, sw) = kernel, stride
    oh, ow = _out_size(h, kh, sh, 0), _out_size(w, kw, sw, 0)
    assert g.shape == (n, c, oh, ow), (g.shape, (n, c, oh, ow))
    share = g * g.dtype.type(1.0 / (kh * kw))
    dx = np.zeros(x_shape, dtype=g.dtype)
    for p in range(kh):  # tap (p, q) of window (i, j) is input pixel (i sh + p, j sw + q)
        for q in range(kw):
            dx[:, :, p:p + sh * (oh - 1) + 1:sh, q:q + sw * (ow - 1) + 1:sw] += share
    return dx

# ---- LSTM gates and cell update (Hochreiter & Schmidhuber 1997; the recurrent core of Jaderberg et al. 2016, Sec. 3.2)
# Gate order i, f, g, o (PyTorch's). The products x W_x and h W_h (each (B, 4H)) come from BLAS; these kernels do
# everything between them: the bias, the four gate nonlinearities and the cell update, and their backward.
def lstm_gates_forward(zx, zh, b, c, out=None):
    """z = zx + zh + b  (B, 4H);  i, f, o = sigmoid(z_i, z_f, z_o),  g = tanh(z_g)  (each (B, H));
    c' = f c + i g;  h' = o tanh(c').

    Returns (h', c', gates), gates (B, 4H) the activated [i, f, g, o] that the backward needs. `out`, if given, is
    a tuple of three arrays (h', c', gates) of those shapes to write the results into (and return).
    """
    H = c.shape[1]
    z = zx + zh + b
    i, f = sigmoid_forward(z[:, :H]), sigmoid_forward(z[:, H:2 * H])
    g, o = np.tanh(z[:, 2 * H:3 * H]), sigmoid_forward(z[:, 3 * H:])
    c_new = f * c + i * g
    h_new = o * np.tanh(c_new)
    gates = np.concatenate([i, f, g, o], axis=1)
    if out is None:
        return h_new, c_new, gates
    for dst, src in zip(out, (h_new, c_new, gates)):
        np.copyto(dst, src)
    return out


def lstm_gates_backward(gates, c, c_new, dh, dc, out=None):
    """The backward of `lstm_gates_forward`, from dh = dL/dh' and dc = dL/dc' (both (B, H)):

        dc' = dc + dh o (1 - tanh(c')^2)            (the total gradient reaching the new cell)
        dz_i = dc' g i (1 - i),   dz_f = dc' c f (1 - f),   dz_g = dc' i (1 - g^2),   dz_o = dh tanh(c') o (1 - o)
        dc_prev = dc' f

    Returns (dz, dc_prev): dz (B, 4H) is the gradient of the pre-activation z (so also of zx, zh, and summed over
    rows, of b). `out`, if given, is (dz, dc_prev) to write into.
    """
    H = c.shape[1]
    i, f, g, o = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    tc = np.tanh(c_new)
    dc_total = dc + dh * o * (1 - tc * tc)
    dz = np.concatenate([dc_total * g * i * (1 - i), dc_total * c * f * (1 - f), dc_total * i * (1 - g * g),
                         dh * tc * o * (1 - o)], axis=1)
    dc_prev = dc_total * f
    if out is None:
        return dz, dc_prev
    for dst, src in zip(out, (dz, dc_prev)):
        np.copyto(dst, src)
    return out

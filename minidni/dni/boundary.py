"""The boundary interface of truncated BPTT with synthetic gradients, and the synthesizer's targets
(Jaderberg et al. 2016, arXiv v1 Sec. 3.2, appendix A.3).

Truncated BPTT cuts the unrolled RNN into windows of T steps. Window k starts from the state s_k = (h, c) that window
k-1 ended in, DETACHED: a fresh leaf, so its backward stops there. What it throws away is the gradient of every later
loss, dL_{>k} / ds_{k+1}. DNI puts a synthesizer at the cut and adds its prediction at the window's last state:

    backward of   L_k + <g_h, h_T> + <g_c, c_T>          (g_h, g_c) = scale * M(h_T)        `inject`

since d<g, s>/ds = g, the gradient reaching s_T is dL_k/ds_T + g_hat: the true gradient of the window plus the
synthetic one for everything after it.

The target for M at the window's START state s_k (the state M was asked about at window k-1's end) is the gradient
that reaches the start leaf in that same backward pass (`arrived_gradient`):

    bootstrapped:  g_k = dL_k/ds_k + (ds_T/ds_k)^T g_hat(s_T)     window k's own losses + the next prediction,
                                                                  carried back through the window
    true:          g_k = dL_{>=k}/ds_k                             from full BPTT (analysis and tests only)

Where the scale goes in the regression (`synthesizer_loss`, the option scale_target):

    scale_target=False   ||scale * M(s) - g||^2     the USED gradient predicts the whole future gradient; the fixed
                                                     point is g_hat = dL_future/ds (M's raw output is g / scale)
    scale_target=True    ||M(s) - g||^2             M predicts the arriving gradient and is used times 0.1, so the
                                                     bootstrap discounts: g_hat = sum_j scale^(j+1) (window k+j's
                                                     gradient), each window further ahead weighted 0.1 more

The paper's text says the prediction "is multiplied by 0.1 where it is used", i.e. at the boundary, and that M is
trained on the gradient arriving at the start state; read literally, M's raw output is the regressed quantity, which
is scale_target=True: a discounted target. The text does not settle it, so both are options (docs/results-rnn.md).
"""
from __future__ import annotations

from .. import ops
from ..device import CPU, device_of
from ..tensor import Tensor


def start_leaves(state):
    """The carried state (h, c) as fresh leaves that want their gradient: the window's cut. Returns (h0, c0)."""
    h, c = state
    h = h.data if isinstance(h, Tensor) else h
    c = c.data if isinstance(c, Tensor) else c
    return Tensor(h, requires_grad=True), Tensor(c, requires_grad=True)


def inject(h_T, c_T, g_h, g_c):
    """<g_h, h_T> + <g_c, c_T>: a scalar whose gradient w.r.t. (h_T, c_T) is exactly (g_h, g_c). Added to the window's
    loss, backward then carries the synthetic gradient back through the window with the true one."""
    if g_h.shape != h_T.shape or g_c.shape != c_T.shape:
        raise ValueError(f"inject: the synthetic gradient has shapes {g_h.shape}, {g_c.shape}; the state at the "
                         f"window's end has {h_T.shape}, {c_T.shape}")
    return ops.sum(h_T * Tensor(g_h)) + ops.sum(c_T * Tensor(g_c))


def arrived_gradient(h0, c0):
    """[dh0 | dc0] (B, 2H): the gradient that reached the window's start leaves -- the bootstrapped target."""
    dev = device_of(h0.data, CPU)
    dh = h0.grad if h0.grad is not None else dev.zeros(h0.shape, h0.dtype)
    dc = c0.grad if c0.grad is not None else dev.zeros(c0.shape, c0.dtype)
    return dev.concatenate([dh, dc], 1)


def synthesizer_loss(prediction, target, scale, scale_target, reduction="sum"):
    """The regression of M's raw output `prediction` (B, 2H) on `target` (B, 2H); see the module docstring."""
    if prediction.shape != target.shape:
        raise ValueError(f"synthesizer_loss: prediction {prediction.shape} and target {target.shape} must match")
    used = prediction if scale_target or scale == 1.0 else prediction * scale
    return ops.mse_loss(used, Tensor(target, dtype=prediction.dtype), reduction=reduction)

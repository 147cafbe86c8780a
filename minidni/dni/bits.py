"""The loss and the score of the bit-sequence tasks (Copy, Repeat Copy): per-bit logistic loss on the scored steps,
and bit errors per output step (Jaderberg et al. 2016, arXiv v1 Sec. 3.2: "solved" below 0.15 bits per output step).

    loss  = sum_{t, b, k} m_tb [ softplus(z_tbk) - y_tbk z_tbk ] / B       summed over steps and bits, mean over batch
    dz    = g m_tb (sigmoid(z_tbk) - y_tbk) / B

The bits are predicted independently (a sigmoid per channel), so the loss is the binary cross-entropy; summed over
time (not averaged), so each scored step carries the same weight however long the episode is, and the gradient a
window sends back does not shrink as the curriculum grows the episodes.

    bit errors per output step = (number of bits with [z > 0] != y on scored steps) / (number of scored steps)
"""
from __future__ import annotations

import numpy as np

from ..autograd import Function
from ..device import CPU
from ..tensor import Tensor


def _softplus(z):
    """log(1 + e^z), stable for large |z|: max(z, 0) + log1p(e^-|z|)."""
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


class MaskedBitLoss(Function):
    """Binary cross-entropy with logits, weighted by a mask over (step, batch); see the module docstring.

    logits z and targets y of shape (N, B, K) (N steps; one step is N = 1 with (1, B, K)), mask (N, B).
    """

    @staticmethod
    def forward(ctx, z, y, mask):
        B = z.shape[1]
        ctx.save_for_backward(z, y, mask)
        dev = ctx.device
        if dev is CPU:
            per_bit = _softplus(z.astype(np.float64)) - y * z                        # (N, B, K)
            loss = (per_bit * mask[:, :, None]).sum() / B
            return np.asarray(loss, dtype=z.dtype)
        # the same arithmetic in the same order through the device's primitives
        z64, u = dev.cast(z, np.float64), dev.unary
        softplus = dev.binary("add", u("relu", z64), u("log1p", u("exp", u("neg", u("abs", z64)))))
        per_bit = dev.binary("sub", softplus, dev.cast(dev.binary("mul", y, z), np.float64))  # NumPy's promotions
        m = dev.cast(dev.reshape(mask, tuple(mask.shape) + (1,)), np.float64)
        loss = dev.binary("div", dev.reduce("sum", dev.binary("mul", per_bit, m)), B)
        return dev.cast(loss, z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, y, mask = ctx.saved
        dev = ctx.device
        if dev is CPU:
            sig = 1.0 / (1.0 + np.exp(-z))
            dz = (g / z.shape[1]) * mask[:, :, None] * (sig - y)
            return dz.astype(z.dtype), None, None
        sig = dev.binary("div", 1.0, dev.binary("add", 1.0, dev.unary("exp", dev.unary("neg", z))))
        m = dev.reshape(mask, tuple(mask.shape) + (1,))
        dz = dev.binary("mul", dev.binary("mul", dev.binary("div", g, z.shape[1]), m), dev.binary("sub", sig, y))
        return dev.cast(dz, z.dtype), None, None


def bit_loss(logits, targets, mask):
    """MaskedBitLoss of logits (N, B, K) against arrays targets (N, B, K) and mask (N, B)."""
    targets, mask = Tensor(targets, dtype=logits.dtype), Tensor(mask, dtype=logits.dtype)    # (on logits' device)
    if targets.shape != logits.shape or tuple(mask.shape) != tuple(logits.shape)[:2]:
        raise ValueError(f"bit_loss: logits {logits.shape} need targets of the same shape and a mask of shape "
                         f"{tuple(logits.shape)[:2]}; got targets {targets.shape}, mask {mask.shape}")
    return MaskedBitLoss.apply(logits, targets, mask)


def bit_errors(logits, targets, mask):
    """(wrong bits on scored steps, number of scored steps): predicted bit = [logit > 0]. Arrays (N, B, K), (N, B)."""
    wrong = ((np.asarray(logits) > 0) != (np.asarray(targets) > 0.5)).sum(axis=2)      # (N, B)
    mask = np.asarray(mask) > 0
    return int(wrong[mask].sum()), int(mask.sum())


def bits_per_step(logits, targets, mask):
    """Average bit errors per scored output step (the curriculum's measure)."""
    wrong, steps = bit_errors(logits, targets, mask)
    return wrong / max(steps, 1)

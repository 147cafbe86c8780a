"""Aux ("DNI + Aux"): the core also predicts the synthetic gradient T steps ahead (Jaderberg et al. 2016, arXiv v1
Sec. 3.2, appendix A.3).

An extra linear output of the LSTM reads the state at a window's end, h_{kT}, and regresses on the synthetic gradient
the synthesizer gives T steps later, at the next window's end:

    a_k = h_{kT} A + b                       (B, 2H)
    L_aux = ||a_k - g_hat(h_{(k+1)T})||^2    loss weight 1; the target is a constant (no gradient into M)

The point is not the prediction itself but its gradient: L_aux backpropagates into the LSTM through window k-1 and
asks the state to carry what the future gradient will be -- a representation shaped by the future.

The target exists only after window k has run forward, so the learner keeps window k-1's graph until then
(recurrent_runner.py: the same retained graph lets the synthesizer loss reach the LSTM, synth_to_core=True). The
LSTM parameters have stepped once in between, so this gradient is one update stale; the activations are exact.
"""
from __future__ import annotations

import numpy as np

from .. import nn, ops
from ..device import CPU, device_of
from ..tensor import Tensor


class AuxHead(nn.Module):
    """a = h A + b: the core's prediction of the synthetic gradient (B, 2H) T steps later; A, b start at zero."""

    def __init__(self, hidden_size, dtype=np.float32, rng=None):
        super().__init__()
        self.hidden_size = int(hidden_size)
        self.linear = nn.Linear(self.hidden_size, 2 * self.hidden_size, dtype=dtype, rng=nn._rng(rng))
        # zero-initialised like the synthesizer's output: the first predictions are 0, near their tiny targets, so
        # L_aux starts small instead of swamping the task loss (a random start made it ~30x the task loss on Copy)
        self.linear.weight.data[...] = 0
        self.linear.bias.data[...] = 0

    def forward(self, h):
        return self.linear(h)                                  # (B, 2H)


def aux_target(g_h, g_c):
    """The Aux target: the synthetic gradient [g_h | g_c] used at the boundary T steps later, (B, 2H)."""
    return device_of(g_h, CPU).concatenate([g_h, g_c], 1)


def aux_loss(prediction, target, reduction="sum"):
    """||a - g_hat_{t+T}||^2 (reduction "sum", the paper's) or its mean over the entries."""
    return ops.mse_loss(prediction, Tensor(target, dtype=prediction.dtype), reduction=reduction)

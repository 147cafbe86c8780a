"""The synthesizer of an RNN: M(h_t) predicts the gradient of the FUTURE loss with respect to the state (h_t, c_t)
(Jaderberg et al. 2016, arXiv v1 Sec. 3.2 and appendix A.3).

    M(h) = relu(h W_1 + b_1) W_2 + b_2         (B, 2H): [g_hat_h | g_hat_c], the gradient for the output h and cell c
    used at the boundary:  scale * M(h)        (the paper: scale 0.1, "reliably leads to stable training")

It reads the LSTM output h_t only; one hidden ReLU layer as wide as the LSTM (hidden=None), or none (hidden=(): the
linear variant M(h) = h W + b); no batch norm. The output layer starts at ZERO, so the first synthetic gradients are 0
and a run starts as plain truncated BPTT. The same M serves every window end (shared over time).

`RecurrentOracle` is a stand-in that returns given gradients (e.g. the exact future gradient from full BPTT over the
whole episode): with it and scale 1 a truncated run must reproduce full BPTT (tests/test_rnn_dni.py).
"""
from __future__ import annotations

import numpy as np

from .. import nn
from ..autograd import no_grad
from ..device import CPU, device_of
from ..tensor import Tensor


class RecurrentSynthesizer(nn.Module):
    """M(h) -> (B, 2H), the predicted dL_future / d(h, c); see the module docstring.

    hidden_size   H, the width of the LSTM state
    hidden        widths of M's hidden layers: None means one layer of H (the paper's), () the linear variant
    scale         the factor on M's output where it is used as a gradient (0.1 in the paper)
    """

    def __init__(self, hidden_size, hidden=None, scale=0.1, dtype=np.float32, rng=None):
        super().__init__()
        self.hidden_size, self.scale = int(hidden_size), float(scale)
        self.hidden = (self.hidden_size,) if hidden is None else tuple(int(w) for w in hidden)
        self.net = nn.mlp(self.hidden_size, self.hidden, 2 * self.hidden_size, batch_norm=False, dtype=dtype,
                          rng=nn._rng(rng))
        out = self.net[-1]
        out.weight.data[...] = 0                           # g_hat = 0 at step 0: start as truncated BPTT
        out.bias.data[...] = 0

    def forward(self, h):
        """The raw prediction M(h), (B, 2H), differentiable (the synthesizer loss trains through it)."""
        if h.ndim != 2 or h.shape[1] != self.hidden_size:
            raise ValueError(f"RecurrentSynthesizer: expected h of shape (batch, {self.hidden_size}), got {h.shape}")
        return self.net(h)

    def synthetic_gradient(self, h, t=None):
        """scale * M(h) as two arrays (g_h, g_c), each (B, H): what the boundary injects. `t` (the time step) is
        ignored here; an oracle uses it."""
        with no_grad():
            g = self.net(Tensor(h)).data                  # (B, 2H)
        dev = device_of(g, CPU)
        if self.scale != 1.0:
            g = dev.binary("mul", g, self.scale)
        return dev.split(g, [self.hidden_size], 1)       # views g[:, :H], g[:, H:] on the cpu

    def __repr__(self):
        body = " -> ".join(["h", *(f"{w} ReLU" for w in self.hidden), f"[g_h, g_c] ({2 * self.hidden_size})"])
        return f"RecurrentSynthesizer({body}; output layer zero-initialised; used as {self.scale:g} * M(h))"


class RecurrentOracle:
    """A "synthesizer" that returns given gradients: grads[t] = (g_h, g_c) at time step t (the number of steps done).

    Unknown steps give zeros. It learns nothing (`trainable` is False); scale is 1: the gradients are used as given.
    """

    trainable = False
    scale = 1.0

    def __init__(self, grads):
        self.grads = dict(grads)

    def synthetic_gradient(self, h, t=None):
        if t not in self.grads:
            dev = device_of(h, CPU)
            return dev.zeros(h.shape, h.dtype), dev.zeros(h.shape, h.dtype)
        g_h, g_c = self.grads[t]
        if g_h.shape != h.shape or g_c.shape != h.shape:
            raise ValueError(f"RecurrentOracle: the gradients for step {t} have shapes {g_h.shape}, {g_c.shape}; "
                             f"the state has {h.shape}")
        return g_h, g_c

    def parameters(self):
        return []

    def __repr__(self):
        return f"RecurrentOracle(given gradients at steps {sorted(self.grads)})"

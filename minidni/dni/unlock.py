"""Complete unlock: synthetic INPUTS as well as synthetic gradients (Jaderberg et al. 2016, Sec. 2.3 and 3.4).

A synthetic gradient removes the update lock, but module j still waits for module j-1's output (the forward lock).
A synthetic-input model I_j predicts that output from the data alone,

    h_hat_{j-1} = I_j(x)            trained by  ||h_hat_{j-1} - h_{j-1}||^2  once module j-1 has produced h_{j-1},

so module j can run forward, and update with its synthetic gradient, on batch b at the same moment as every other
module. The `unlocked` schedule does exactly that: at tick b every module processes batch b at once (module 0 on x,
module j on I_j(x)); at tick b+1 each synthesizer M_i trains on its bootstrapped target and each I_j on the real
h_{j-1}. At test time the ordinary forward chain is used (the synthetic inputs are a training device).

I_j belongs to module j's worker (it feeds module j); its target h_{j-1} comes from module j-1's worker one tick
earlier, so the concurrent runner needs no extra care.
"""
from __future__ import annotations

import numpy as np

from .. import nn, ops
from ..autograd import no_grad
from ..tensor import Tensor
from .schedules import Schedule, _train_input, decoupled_batch


class SyntheticInput(nn.Module):
    """I(x) -> h_hat: a linear map or an MLP (hidden widths, Linear -> BatchNorm -> ReLU) from the flattened data."""

    def __init__(self, in_features, features, hidden=(), batch_norm=True, dtype=np.float32, rng=None):
        super().__init__()
        r = nn._rng(rng)
        self.in_features, self.features, self.hidden = int(in_features), int(features), tuple(hidden)
        self.net = nn.mlp(self.in_features, self.hidden, self.features, batch_norm=batch_norm, dtype=dtype, rng=r)

    def forward(self, x):
        return self.net(x.reshape(x.shape[0], -1) if x.ndim > 2 else x)

    def __repr__(self):
        body = " -> ".join([f"x ({self.in_features})", *(str(w) for w in self.hidden), f"h_hat ({self.features})"])
        return f"SyntheticInput({body})"


class InputModel:
    """Synthetic-input model I_j for module j, with its optimizer."""

    def __init__(self, model, optimizer, index=None):
        self.model, self.optimizer, self.index = model, optimizer, index

    def predict(self, x):
        """h_hat = I_j(x) as an array; no graph."""
        with no_grad():
            return self.model(Tensor(x)).data

    def train(self, x, h):
        """One optimizer step on mean((I_j(x) - h)^2); returns that loss."""
        loss = ops.mse_loss(self.model(Tensor(x)), Tensor(h))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()


def add_synthetic_inputs(net, in_features, widths=None, hidden=(), optimizer=None, dtype=None, rng=None):
    """Give `net` a synthetic-input model for each module j >= 1, predicting h_{j-1} (width widths[j-1]) from x.

    widths defaults to the synthesizers' widths (each synthesizer knows the width of the h it sits on); the optimizer
    factory defaults to Adam at the modules' learning rate.
    """
    if widths is None:
        widths = [s.features for s in net.synthesizers]
    if dtype is None:
        dtype = net.module_parameters()[0].dtype
    r = nn._rng(rng)
    models = [SyntheticInput(in_features, w, hidden, dtype=dtype, rng=r) for w in widths]
    from .net import adam

    net.set_synthetic_inputs(models, optimizer or adam(net.optimizers[0].lr))
    return net


class Unlocked(Schedule):
    """Forward and update unlocked: at tick b every module processes batch b (module j > 0 on I_j(x)).

    Tick b+1: M_i trains on batch b's target (bootstrap: the gradient module i+1 sent down at tick b), and I_{i+1} on
    the h_i module i produced at tick b.
    """

    name = "unlocked"

    def batch_events(self, b, n_modules, target="bootstrap"):
        events = decoupled_batch(b, n_modules, target, lambda i: b, lambda i: b if target == "true" else b + 1,
                                 unlocked=True)
        events += [_train_input(j, b, b + 1) for j in range(1, n_modules)]
        return events


def unlocked():
    return Unlocked()


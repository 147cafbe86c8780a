"""The decoupled interface between module i and module i+1: synthesizer M_i, its optimizer, and the local updates
(Jaderberg et al. 2016, Sec. 2; bootstrapping: Sec. 2.1-2.2; feed-forward use: Sec. 3.3).

Module i never waits for the loss. As soon as it has its output h_i it asks M_i for g_hat_i and updates:

    h_i = f_i(h_{i-1})                       the module's input h_{i-1} is a DETACHED leaf: its graph stays local
    g_hat_i = M_i(h_i [, y])
    h_i.backward(g_hat_i); optimizer_i.step()        backprop through module i only

M_i learns to predict the gradient by regression on a target g_i (the synthetic gradient loss of Sec. 2):

    L_M = ||g_hat_i - g_i||^2                the paper's; here by default divided by the B*D entries (loss="mean"),
                                             loss="sum" keeps the plain sum

Adam ignores a constant factor on a loss only while its gradients' RMS is well above its eps (1e-8), and synthetic
gradients are tiny: dL/dh of a batch-mean loss is ~1e-4 per entry. With the mean over B*D entries (65,536 at
B = D = 256) the gradients reaching the hidden layers of an MLP synthesizer are ~1e-9, below eps, so Adam's steps
there shrink 10x and more: those layers stay near their random start while the output layer learns at full rate.
loss="sum" lets them all learn at the set rate. On MNIST at the 20-epoch budget that was not better (DNI, MLP
synthesizer, validation error at 3 / 4 / 5 layers: sum 3.72 / 5.50 / 8.34%, mean 4.02 / 5.20 / 6.66%;
docs/results-mnist.md), so the mean stays the default; lesson 04 shows the effect in one step.

The target g_i is one of
  * "true":       dL/dh_i by backprop from the loss through every module above (costly; for analysis),
  * "bootstrap":  the paper's target (Sec. 2.1): the NEXT synthetic gradient carried back through module i+1,
                  g_i = (d h_{i+1} / d h_i)^T g_hat_{i+1}. It is free: it is the gradient that arrives at module i+1's
                  input leaf when module i+1 does its own update. The top module updates with the true loss, so
                  the last synthesizer's target is the true gradient, and the truth seeps down one interface per
                  step, like a temporal-difference target.

One forward of M is shared. In the per-batch schedules M_i's training step follows its prediction on the same h_i
with M_i unchanged in between, so `train` would recompute exactly the g_hat that `synthetic_gradient` just made.
`synthetic_gradient` therefore keeps its graph, and `train` reuses it when it is handed that very h array (and the
same labels) and M has not stepped or been reloaded since: the same numbers bit for bit (a test checks it), one
forward of M fewer -- a quarter of the paper's MLP synthesizer's cost. Otherwise (pipelined or delayed targets,
where M has moved on) `train` runs M again at its current parameters. A batch-norm synthesizer's running statistics
(never used in training, only in eval mode) are now updated once per batch instead of twice.

The two functions at the bottom do the module updates; the runner (runner.py) calls them for each event.
"""
from __future__ import annotations

import numpy as np

from .. import ops
from ..autograd import no_grad
from ..device import CPU, device_of
from ..tensor import Tensor
from .synthesizer import Oracle

SYNTH_LOSSES = ("mean", "sum")


class Interface:
    """Synthesizer M_i between module i and module i+1, and the optimizer that trains it.

    synthesizer   a Synthesizer (or an Oracle, which needs no optimizer)
    optimizer     an optimizer over synthesizer.parameters() (None for an Oracle)
    index         i, the module whose output h_i this interface sits on (for messages)
    loss          "mean": L_M = ||g_hat - g||^2 divided by the number of entries; "sum": the plain sum (the paper's)
    """

    def __init__(self, synthesizer, optimizer=None, index=None, loss="mean"):
        if optimizer is None and not isinstance(synthesizer, Oracle):
            raise ValueError(f"Interface {index}: a learned synthesizer needs an optimizer")
        if loss not in SYNTH_LOSSES:
            raise ValueError(f"Interface {index}: loss must be one of {SYNTH_LOSSES}, got {loss!r}")
        self.synthesizer, self.optimizer, self.index, self.loss = synthesizer, optimizer, index, loss
        self.steps = 0          # training steps M has taken through this interface
        self._kept = None       # (h, y, steps, training mode, g_hat Tensor) of the last prediction, for train()

    @property
    def conditioned(self):
        return bool(getattr(self.synthesizer, "conditioned", False))

    @property
    def learns(self):
        return self.optimizer is not None

    def synthetic_gradient(self, h, y=None):
        """g_hat = M(h [, y]) as an array of h's shape.

        For a learned synthesizer the graph of this forward is kept, so that `train(h, y, target)` on the same arrays
        can reuse it (see the module docstring); `forget()` drops it."""
        if isinstance(self.synthesizer, Oracle):  # it backprops through the modules above: needs grad mode on
            g_hat = self.synthesizer(Tensor(h), y).data
        elif self.learns:
            out = self.synthesizer(Tensor(h), y)             # with its graph (unless inside no_grad())
            self._kept = (h, y, self.steps, self.synthesizer.training, out) if out.requires_grad else None
            g_hat = out.data
        else:
            with no_grad():
                g_hat = self.synthesizer(Tensor(h), y).data
        assert g_hat.shape == h.shape, f"synthesizer {self.index}: g_hat {g_hat.shape} for h {h.shape}"
        return g_hat

    def _reusable(self, h, y):
        """The kept g_hat Tensor if it is M(h [, y]) at M's current parameters and mode, else None."""
        if self._kept is None:
            return None
        kh, ky, steps, training, out = self._kept
        same = kh is h and ky is y and steps == self.steps and training == self.synthesizer.training
        return out if same else None

    def forget(self):
        """Drop the kept prediction graph (call it after changing M's parameters other than through train)."""
        self._kept = None

    def train(self, h, y, target):
        """One optimizer step on L_M = mean((M(h [, y]) - target)^2) (or the sum, loss="sum"); returns L_M (0.0 for
        an Oracle).

        M(h [, y]) is the graph kept by the last `synthetic_gradient` call when that call saw these very arrays and
        M has not changed since; otherwise M runs again at its current parameters."""
        if not self.learns:
            return 0.0
        g_hat = self._reusable(h, y)
        self._kept = None                                         # used once: M is about to change
        if g_hat is None:
            g_hat = self.synthesizer(Tensor(h), y)               # (B, D), at the synthesizer's current parameters
        loss = ops.mse_loss(g_hat, Tensor(target), reduction=self.loss)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        return loss.item()

    def __repr__(self):
        loss = "" if self.loss == "mean" or not self.learns else " (loss: sum)"
        return f"Interface {self.index}: {self.synthesizer!r}{loss}"


def update_from_gradient(module, optimizer, inp, out, grad):
    """Backprop `grad` = dL/d(out) through this module only, step its optimizer; return dL/d(inp) (or None).

    `inp` is the module's detached input leaf; its .grad after the backward pass is what this module would send down
    to the module below -- a true gradient in locked backprop, the bootstrapped target in DNI.
    """
    module.zero_grad()
    out.backward(grad)
    optimizer.step()
    return inp.grad if inp.requires_grad else None


def update_from_loss(module, optimizer, inp, loss):
    """The top module: backprop the real loss through it, step; return dL/d(inp), the true gradient of its input."""
    module.zero_grad()
    loss.backward()
    optimizer.step()
    return inp.grad if inp.requires_grad else None


def gradient_agreement(synthetic, true):
    """How well g_hat matches g: cosine similarity and relative error ||g_hat - g|| / ||g|| (over the whole batch)."""
    synthetic, true = (device_of(a, CPU).to_host(a) for a in (synthetic, true))    # a diagnostic: on the host
    s, t = np.asarray(synthetic, dtype=np.float64).ravel(), np.asarray(true, dtype=np.float64).ravel()
    ns, nt = np.linalg.norm(s), np.linalg.norm(t)
    return {"cos": float(s @ t / (ns * nt)) if ns > 0 and nt > 0 else 0.0,
            "rel_err": float(np.linalg.norm(s - t) / nt) if nt > 0 else float("inf"),
            "norm_synthetic": float(ns), "norm_true": float(nt)}

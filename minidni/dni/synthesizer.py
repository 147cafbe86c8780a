"""Synthesizers: the models M that predict the gradient a module is waiting for (Jaderberg et al. 2016, Sec. 2).

    g_hat = M(h)            DNI
    g_hat = M(h, y)         cDNI: conditioned on the label y as well (Sec. 2, "conditional DNI")

h is the output of module i (shape (B, D)), and g_hat approximates dL/dh, the gradient the rest of the network would
send back after the loss is known. With g_hat in hand module i updates at once instead of waiting (update unlocking).

Architectures used in the feed-forward experiments (Sec. 3.3 and appendix A):
  * linear:  g_hat = h W + b
  * MLP:     hidden layers (the paper: two of 1024 units), each Linear -> BatchNorm -> ReLU, then a Linear output.
The output layer starts at ZERO, so g_hat = 0 at the first step: a module starts by not moving, rather than by
moving along a random direction. (Only the output layer is zeroed; the hidden layers keep their random init, or the
MLP could never leave zero.)

Conditioning: cDNI concatenates the one-hot label to the input, M([h, onehot(y)]). For the linear synthesizer that is
g_hat = h W + onehot(y) A + b: the label adds a learned vector per class. That is enough to represent the exact
gradient of a linear least-squares top layer (Czarnecki et al. 2017), and Sec. 3.3 found a linear cDNI enough on MNIST.

`ConvSynthesizer` is the same idea for convolutional feature maps (B, C, H, W): resolution-preserving 5x5 convolutions.

`Oracle` is a stand-in that returns the TRUE gradient (by running the modules above). It learns nothing; it exists
so tests and lessons can check that every update schedule reproduces backpropagation when its gradients are exact.
"""
from __future__ import annotations

import numpy as np

from .. import nn, ops
from ..tensor import Tensor


def one_hot(labels, n_classes, dtype=np.float32):
    """(B,) integer labels -> (B, n_classes) rows of zeros with a 1 at the label."""
    labels = np.asarray(labels.data if isinstance(labels, Tensor) else labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise TypeError(f"one_hot: labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"one_hot: labels must lie in [0, {n_classes - 1}], got values in "
                         f"[{labels.min()}, {labels.max()}]")
    out = np.zeros((labels.shape[0], n_classes), dtype=dtype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out


class Synthesizer(nn.Module):
    """M(h [, y]) -> g_hat with the shape of h (B, features).

    features      D, the width of the activation h whose gradient is predicted
    n_classes     None for DNI; the number of classes for cDNI (the label is fed as a one-hot vector)
    hidden        widths of the hidden layers: () is the linear synthesizer, (1024, 1024) the paper's MLP
    batch_norm    batch norm after each hidden Linear layer (the paper's MLP synthesizers use it)
    scale         g_hat = scale * M(...): a fixed factor on the prediction (1.0: none)
    """

    def __init__(self, features, n_classes=None, hidden=(), batch_norm=True, scale=1.0, dtype=np.float32, rng=None):
        super().__init__()
        where = f"Synthesizer({features!r}, n_classes={n_classes!r}, hidden={hidden!r})"
        self.features = nn.size_arg(features, "features (the width of h)", where)
        self.n_classes = None if n_classes is None else nn.size_arg(n_classes, "n_classes", where)
        self.hidden = tuple(nn.size_arg(w, "each hidden width", where) for w in hidden)
        self.batch_norm, self.scale = bool(batch_norm), float(scale)
        self.dtype = np.dtype(dtype)
        r = nn._rng(rng)
        width = self.features + (self.n_classes or 0)        # input: [h, onehot(y)]
        self.net = nn.mlp(width, self.hidden, self.features, batch_norm=batch_norm, dtype=dtype, rng=r)
        out = self.net[-1]
        out.weight.data[...] = 0                           # g_hat = 0 at step 0
        out.bias.data[...] = 0

    @property
    def conditioned(self):
        return self.n_classes is not None

    def forward(self, h, y=None):
        if h.ndim != 2 or h.shape[1] != self.features:
            raise ValueError(f"Synthesizer: expected h of shape (batch, {self.features}), got {h.shape}")
        x = h
        if self.conditioned:
            if y is None:
                raise ValueError("Synthesizer: this is a conditioned (cDNI) synthesizer; pass the labels y too")
            x = ops.concat([h, Tensor(one_hot(y, self.n_classes, h.dtype)).to(h.device)], axis=1)   # (B, D + C)
        g_hat = self.net(x)                                                             # (B, D)
        return g_hat * self.scale if self.scale != 1.0 else g_hat

    def __repr__(self):
        kind = "cDNI" if self.conditioned else "DNI"
        inp = f"[h ({self.features}), onehot(y) ({self.n_classes})]" if self.conditioned else f"h ({self.features})"
        body = " -> ".join([inp, *(str(w) for w in self.hidden), f"g_hat ({self.features})"])
        style = "linear" if not self.hidden else ("Linear-BN-ReLU" if self.batch_norm else "Linear-ReLU") + " hidden"
        scale = f", scale={self.scale:g}" if self.scale != 1.0 else ""
        return f"Synthesizer({kind}, {style}: {body}; output layer zero-initialised{scale})"


class ConvSynthesizer(nn.Module):
    """M(h [, y]) -> g_hat for convolutional feature maps h (B, C, H, W): resolution-preserving convolutions.

    The synthesizer of the paper's CNN experiments (Sec. 3.3, appendix A): 5x5 convolutions with "same" padding, so
    every layer keeps H x W; hidden layers are Conv -> BatchNorm2d -> ReLU, and the output Conv (C channels, the
    shape of h) starts at zero. For cDNI the one-hot label is tiled over H x W and stacked as n_classes extra input
    channels: [h, onehot(y)] along the channel axis.

    channels      C, the channels of h
    n_classes     None for DNI; the number of classes for cDNI
    hidden        channels of the hidden conv layers: () is a single (linear) conv; the paper's is (C, C)
    kernel_size   odd: 5 in the paper
    """

    def __init__(self, channels, n_classes=None, hidden=(), kernel_size=5, batch_norm=True, scale=1.0,
                 dtype=np.float32, rng=None):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"ConvSynthesizer: kernel_size must be odd to preserve the resolution, got {kernel_size}")
        self.channels, self.n_classes = int(channels), (None if n_classes is None else int(n_classes))
        self.hidden, self.kernel_size, self.batch_norm = tuple(int(w) for w in hidden), int(kernel_size), batch_norm
        self.scale, self.dtype = float(scale), np.dtype(dtype)
        r = nn._rng(rng)
        width, layers = self.channels + (self.n_classes or 0), []
        for w in self.hidden:
            layers.append(nn.Conv2d(width, w, kernel_size, padding="same", bias=not batch_norm, dtype=dtype, rng=r))
            if batch_norm:
                layers.append(nn.BatchNorm2d(w, dtype=dtype))
            layers.append(nn.ReLU())
            width = w
        out = nn.Conv2d(width, self.channels, kernel_size, padding="same", dtype=dtype, rng=r)
        out.weight.data[...] = 0                           # g_hat = 0 at step 0
        out.bias.data[...] = 0
        layers.append(out)
        self.net = nn.Sequential(*layers)

    @property
    def conditioned(self):
        return self.n_classes is not None

    def forward(self, h, y=None):
        if h.ndim != 4 or h.shape[1] != self.channels:
            raise ValueError(f"ConvSynthesizer: expected h of shape (batch, {self.channels}, H, W), got {h.shape}")
        x = h
        if self.conditioned:
            if y is None:
                raise ValueError("ConvSynthesizer: this is a conditioned (cDNI) synthesizer; pass the labels y too")
            n, _, height, width = h.shape
            planes = np.broadcast_to(one_hot(y, self.n_classes, h.dtype)[:, :, None, None],
                                     (n, self.n_classes, height, width))                  # (B, classes, H, W)
            x = ops.concat([h, Tensor(np.ascontiguousarray(planes)).to(h.device)], axis=1)
        g_hat = self.net(x)                                                              # (B, C, H, W)
        return g_hat * self.scale if self.scale != 1.0 else g_hat

    def __repr__(self):
        kind = "cDNI" if self.conditioned else "DNI"
        inp = f"[h ({self.channels} ch), onehot(y) ({self.n_classes} planes)]" if self.conditioned \
            else f"h ({self.channels} ch)"
        body = " -> ".join([inp, *(f"{w} ch" for w in self.hidden), f"g_hat ({self.channels} ch)"])
        k = self.kernel_size
        return f"ConvSynthesizer({kind}, {k}x{k} same-padding convs: {body}; output layer zero-initialised)"


class Oracle(nn.Module):
    """A "synthesizer" that returns the true gradient dL/dh_i, computed by the network it is bound to.

    It has no parameters and is never trained. `DNINet` binds it (`bind(net, index)`); asking it for g_hat runs the
    modules above i and the loss on (h, y), which is exactly what backpropagation would deliver -- so with oracles
    every decoupled schedule must reproduce backprop. For tests and lessons only: it is as slow as backprop.
    """

    conditioned = True  # it needs the labels (to compute the loss)

    def __init__(self):
        super().__init__()
        object.__setattr__(self, "_net", None)
        object.__setattr__(self, "_index", None)

    def bind(self, net, index):
        object.__setattr__(self, "_net", net)
        object.__setattr__(self, "_index", index)
        return self

    def forward(self, h, y=None):
        if self._net is None:
            raise RuntimeError("Oracle: not bound to a network; DNINet binds its oracles when it is built")
        return Tensor(self._net.true_gradient(self._index, h.data, y))

    def __repr__(self):
        return f"Oracle(true gradient dL/dh_{self._index} by backprop through the modules above)"

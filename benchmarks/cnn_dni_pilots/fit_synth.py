"""How well can a conv synthesizer predict the true gradient of the paper's CNN at all? A frozen-net probe (issue 14).

The synthesizer is the paper's for CNNs (Jaderberg et al. 2016, Sec. 3.1 and v1 appendix A.1: M(h_i [, y]) regresses
on dL/dh_i). In the CNN rows of Table 1 (docs/results-mnist.md) even the top synthesizer, whose target is the true gradient of the
readout, reaches a cosine of only 0.01 (DNI) / 0.08 (cDNI) with it at 3 layers. This script separates the
synthesizer's capacity from the chase: it trains the paper's CNN with backprop for `--pretrain` steps, freezes it
(batch norm on its running statistics), and then fits synthesizers on (h_i, dL/dh_i) pairs of fresh training batches,
with nothing else moving. It reports the cosine of g_hat with the true gradient on 512 held-out training images
(whole-batch, as the DNINet diagnostics compute it) every `--every` fit steps, and at the start how much of a batch's
squared gradient norm its 3 largest examples carry (a trained net's gradient lives in the few examples it gets wrong).

The variants (--variant):
  conv      the paper's synthesizer: two hidden 5x5 convs (batch norm, ReLU), a zero-initialised 5x5 conv; cDNI
  conv-dni  the same without the label planes
  conv-xy   conv plus two planes holding each pixel's row and column in [-1, 1] (not in the paper)
  linear    one dense layer over the flattened [h, onehot(y)] (a cDNI linear synthesizer as in the FCN experiments)

    OPENBLAS_NUM_THREADS=1 python benchmarks/cnn_dni_pilots/fit_synth.py --variant conv --lr 1e-4 --out runs/fit.jsonl

Every line of --out is one (variant, lr, cut, step) record; the pretrained net is cached in --cache, so several
processes can share it.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from minidni import nn, ops
from minidni.autograd import no_grad
from minidni.dni import DNINet
from minidni.dni.interface import gradient_agreement
from minidni.dni.synthesizer import ConvSynthesizer, Synthesizer
from minidni.experiments.feedforward import DniCnnConfig, build_modules, load_data
from minidni.optim import Adam
from minidni.tensor import Tensor
from minidni.train import Backprop


class CoordConvSynthesizer(nn.Module):
    """ConvSynthesizer over [h, row plane, column plane]: lets a translation-equivariant conv stack see where it is."""

    def __init__(self, channels, size, n_classes, rng):
        super().__init__()
        self.channels = channels
        # its output conv maps to channels + 2 planes; forward drops the two that answer the coordinate planes
        self.inner = ConvSynthesizer(channels + 2, n_classes, hidden=(channels, channels), rng=rng)
        r = np.linspace(-1, 1, size, dtype=np.float32)
        self.planes = np.stack(np.meshgrid(r, r, indexing="ij"))[None]          # (1, 2, H, W)

    def forward(self, h, y):
        n = h.shape[0]
        xy = Tensor(np.ascontiguousarray(np.broadcast_to(self.planes, (n, *self.planes.shape[1:]))))
        g = self.inner(ops.concat([h, xy], axis=1), y)
        return g[:, :self.channels]


class FlatSynthesizer(nn.Module):
    """A dense (linear) cDNI synthesizer over the flattened map: g_hat = reshape([flat(h), onehot(y)] W + b)."""

    def __init__(self, shape, n_classes, rng):
        super().__init__()
        self.shape = shape
        self.inner = Synthesizer(int(np.prod(shape)), n_classes, hidden=(), rng=rng)

    def forward(self, h, y):
        n = h.shape[0]
        return self.inner(h.reshape(n, -1), y).reshape(n, *self.shape)


def pretrain(config, steps, cache):
    """The paper's CNN (config.layers), as its DNI cut points (the blocks), trained with backprop for `steps` batches;
    cached as an npz of its state. Returns (model, blocks, training split)."""
    (xtr, ytr), _, _ = load_data("mnist", config, images=True)
    modules, _ = build_modules("cnn", config, (1, 28, 28), np.random.default_rng(0))
    model = nn.Sequential(*modules)
    if cache.exists():
        model.load_state_dict(dict(np.load(cache)))
        return model, modules, (xtr, ytr)
    learner = Backprop(model, Adam(model.parameters(), lr=config.lr))
    order = np.random.default_rng(1)
    t0 = time.time()
    for step in range(steps):
        idx = order.integers(0, len(xtr), config.batch_size)
        loss = learner.train_step(xtr[idx], ytr[idx])["loss"]
        if step % 100 == 0:
            print(f"pretrain {step}: loss {loss:.3f} ({time.time() - t0:.0f} s)", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **{k: np.asarray(v) for k, v in model.state_dict().items()})
    return model, modules, (xtr, ytr)


def features_and_grads(net, cut, x, y):
    """h = blocks[0..cut](x) and dL/dh (DNINet.true_gradient: backprop through the blocks above), in eval mode."""
    with no_grad():
        h = Tensor(x)
        for m in net.modules[:cut + 1]:
            h = m(h)
    h = np.ascontiguousarray(h.data)
    return h, net.true_gradient(cut, h, y)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", choices=("conv", "conv-dni", "conv-xy", "linear"), default="conv")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--cut", type=int, default=-1, help="which cut (module index; -1: the top one)")
    p.add_argument("--pretrain", type=int, default=1000)
    p.add_argument("--fit-steps", type=int, default=3000)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--loss", choices=("mean", "sum"), default="mean")
    p.add_argument("--cache", default="runs/fit-synth/cnn{layers}-bprop{pretrain}.npz")
    p.add_argument("--out", default="runs/fit-synth/fit.jsonl")
    a = p.parse_args()

    config = DniCnnConfig(layers=a.layers, batch_size=a.batch_size)
    cache = Path(a.cache.format(layers=a.layers, pretrain=a.pretrain))
    model, modules, (xtr, ytr) = pretrain(config, a.pretrain, cache)
    model.eval()
    net = DNINet(modules)                                       # for true_gradient only: nothing here trains it
    cut = a.cut if a.cut >= 0 else len(modules) - 2
    held = np.arange(len(xtr) - 512, len(xtr))                 # the last 512 training images, never fitted on
    pairs = [features_and_grads(net, cut, xtr[held[k:k + a.batch_size]], ytr[held[k:k + a.batch_size]])
             for k in range(0, len(held), a.batch_size)]            # in the units of a training batch's gradient
    hx, hg = np.concatenate([h for h, _ in pairs]), np.concatenate([g for _, g in pairs])
    energy = [np.sort((g.reshape(len(g), -1) ** 2).sum(1))[::-1] for _, g in pairs]
    top3 = np.mean([e[:3].sum() / e.sum() for e in energy])      # how few examples carry a batch's gradient
    print(f"cut {cut}: h {hx.shape[1:]}, rms(h) {np.sqrt(np.mean(hx ** 2)):.3g}, rms(dL/dh) "
          f"{np.sqrt(np.mean(hg ** 2)):.3g}, share of |dL/dh|^2 in a batch's top 3 examples {top3:.2f}", flush=True)
    shape = hx.shape[1:]
    rng = np.random.default_rng(0)
    synth = {"conv": lambda: ConvSynthesizer(shape[0], 10, hidden=(shape[0],) * 2, rng=rng),
             "conv-dni": lambda: ConvSynthesizer(shape[0], None, hidden=(shape[0],) * 2, rng=rng),
             "conv-xy": lambda: CoordConvSynthesizer(shape[0], shape[1], 10, rng),
             "linear": lambda: FlatSynthesizer(shape, 10, rng)}[a.variant]()
    opt = Adam(synth.parameters(), lr=a.lr)
    order = np.random.default_rng(2)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for step in range(a.fit_steps + 1):
        if step % a.every == 0:
            synth.eval()
            agree = gradient_agreement(synth(Tensor(hx), ytr[held]).data, hg)   # an unconditioned M ignores y
            synth.train()
            rec = {"variant": a.variant, "lr": a.lr, "layers": a.layers, "cut": cut, "pretrain": a.pretrain,
                   "loss": a.loss, "batch_size": a.batch_size, "step": step, "cos": agree["cos"],
                   "norm_ratio": agree["norm_synthetic"] / agree["norm_true"], "wall_s": round(time.time() - t0, 1)}
            print(json.dumps(rec), flush=True)
            with open(out, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
        if step == a.fit_steps:
            break
        idx = order.integers(0, len(xtr) - 512, a.batch_size)
        h, g = features_and_grads(net, cut, xtr[idx], ytr[idx])
        pred = synth(Tensor(h), ytr[idx])
        loss = ops.mse_loss(pred, Tensor(g), reduction=a.loss)
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()

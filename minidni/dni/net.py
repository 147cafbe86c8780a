"""A network cut into modules joined by decoupled interfaces, and the builders for the paper's MNIST nets
(Jaderberg et al. 2016, Sec. 2; feed-forward experiments Sec. 3.3, appendix A).

    h_0 = f_0(x)   --M_0-->   h_1 = f_1(h_0)   --M_1-->   ...   --M_{n-2}-->   logits = f_{n-1}(h_{n-2}),  L(logits, y)

`DNINet` holds the modules f_i (each an nn.Module with its own optimizer), the interfaces (synthesizer M_i on h_i and
its optimizer, interface.py), the loss, the target mode ("bootstrap" or "true") and the update schedule it trains with.
It is also a *learner* for `minidni.train.Trainer` (train_step / eval_step / set_lr / parameters / state_dict /
load_state_dict), so a DNI model trains with the same loop, logs and checkpoints as a backprop model:

    net = mnist_fcn(layers=4, synthesizer="linear", conditioned=True)       # DNI after every hidden layer
    out = net.train_step(x, y)       # {"loss": ..., "correct": ..., "synth_loss": ...}

For other ways of running a schedule (step by step, a whole pipelined run, worker threads) use dni.Runner /
dni.ConcurrentRunner on the same net.
"""
from __future__ import annotations

import numpy as np

from .. import nn, ops
from ..autograd import no_grad
from ..device import CPU, count_correct, device_of, get_device
from ..optim import Adam
from ..tensor import Tensor
from .interface import Interface
from .schedules import TARGETS, Schedule, dni
from .synthesizer import ConvSynthesizer, Oracle, Synthesizer


# layers that keep the feature / channel count of their input
_SHAPE_KEEPING = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.MaxPool2d, nn.AvgPool2d)


def output_width(module):
    """(what, width, layer) of a module's output when its layers say it for sure, else None: walking back from the
    last layer, shape-keeping layers (activations, pooling) are skipped and the first Linear ("features",
    out_features), Conv2d ("channels", out_channels) or batch norm decides; any other layer (Flatten, a custom
    module) means unknown."""
    layers = list(module) if isinstance(module, nn.Sequential) else [module]
    for layer in reversed(layers):
        if isinstance(layer, nn.Sequential):
            return output_width(layer)
        if isinstance(layer, nn.Linear):
            return "features", layer.out_features, layer
        if isinstance(layer, nn.Conv2d):
            return "channels", layer.out_channels, layer
        if isinstance(layer, nn.BatchNorm2d):
            return "channels", layer.num_features, layer
        if isinstance(layer, nn.BatchNorm1d):
            return "features", layer.num_features, layer
        if not isinstance(layer, _SHAPE_KEEPING):
            return None
    return None


def check_synthesizer_width(module, synth, i):
    """Refuse, at construction, a synthesizer M_i whose width differs from module i's output (it would fail only at
    the first step, deep in a matmul)."""
    if isinstance(synth, Synthesizer):
        what, width, make = "features", synth.features, "Synthesizer"
    elif isinstance(synth, ConvSynthesizer):
        what, width, make = "channels", synth.channels, "ConvSynthesizer"
    else:
        return
    out = output_width(module)
    if out is not None and out[0] == what and out[1] != width:
        raise ValueError(f"DNINet: synthesizer {i} predicts the gradient of {width} {what}, but module {i} outputs "
                         f"{out[1]} {what} (its last sized layer: {type(out[2]).__name__}({out[2].extra_repr()})). "
                         f"Build it as {make}({out[1]}, ...).")


def adam(lr=1e-3):
    """An optimizer factory: params -> Adam(params, lr)."""
    return lambda params: Adam(params, lr=lr)


class DNINet:
    """Modules f_0..f_{n-1} joined by n-1 decoupled interfaces.

    modules          list of nn.Module; module i maps h_{i-1} (x for i = 0) to h_i, the last one to the logits
    synthesizers     list of n-1 Synthesizers (or Oracles), M_i predicting dL/dh_i; None for a net trained only
                     with the `locked` schedule
    loss             loss(logits, y) -> scalar Tensor (default: softmax cross-entropy)
    optimizer        factory params -> optimizer, for each module (default Adam, lr 1e-3)
    synth_optimizer  factory for each synthesizer (default: the same as `optimizer`)
    synth_loss       "mean" of the squared error over the entries, or "sum" (the paper's ||g_hat - g||^2): interface.py
    target           "bootstrap" (the paper's) or "true": what each M_i regresses on (see interface.py)
    schedule         the update schedule `train_step` uses (default dni()); it must be per-batch
    synthetic_inputs list of n-1 models I_1..I_{n-1} predicting module j's input from x (complete unlock, unlock.py)
    input_optimizer  factory for each synthetic-input model (default: the same as `optimizer`)
    diagnose_every   in train_step, every this many batches, compare each g_hat_i with the true gradient (0: never)
    """

    def __init__(self, modules, synthesizers=None, *, loss=ops.cross_entropy, optimizer=None, synth_optimizer=None,
                 synth_loss="mean", target="bootstrap", schedule=None, synthetic_inputs=None, input_optimizer=None,
                 diagnose_every=0):
        self.modules = list(modules)
        n = len(self.modules)
        if n < 1:
            raise ValueError("DNINet: needs at least one module")
        if target not in TARGETS:
            raise ValueError(f"DNINet: target must be one of {TARGETS}, got {target!r}")
        if synthesizers is not None and len(synthesizers) != n - 1:
            raise ValueError(f"DNINet: {n} modules have {n - 1} interfaces between them, so {n - 1} synthesizers; "
                             f"got {len(synthesizers)}")
        optimizer = optimizer or adam()
        synth_optimizer = synth_optimizer or optimizer
        self.loss, self.target, self.diagnose_every = loss, target, int(diagnose_every)
        self.schedule = schedule if schedule is not None else dni()
        if not isinstance(self.schedule, Schedule):
            raise TypeError(f"DNINet: schedule must be a Schedule (e.g. dni.schedules.dni()), got {self.schedule!r}")
        self.optimizers = [optimizer(m.parameters()) for m in self.modules]
        self.interfaces = []
        for i, synth in enumerate(synthesizers or []):
            check_synthesizer_width(self.modules[i], synth, i)
            if isinstance(synth, Oracle):
                self.interfaces.append(Interface(synth.bind(self, i), None, i))
            else:
                self.interfaces.append(Interface(synth, synth_optimizer(synth.parameters()), i, loss=synth_loss))
        self.inputs = None
        if synthetic_inputs is not None:
            self.set_synthetic_inputs(synthetic_inputs, input_optimizer or optimizer)
        self._runner = None
        self._lr = self.optimizers[0].lr

    def set_synthetic_inputs(self, models, optimizer):
        """Attach I_1..I_{n-1}: inputs[j] predicts module j's input h_{j-1} from the data x (inputs[0] is None)."""
        from .unlock import InputModel

        if len(models) != len(self.modules) - 1:
            raise ValueError(f"DNINet: {len(self.modules)} modules need {len(self.modules) - 1} synthetic-input "
                             f"models (for modules 1..{len(self.modules) - 1}), got {len(models)}")
        self.inputs = [None] + [InputModel(m, optimizer(m.parameters()), j + 1) for j, m in enumerate(models)]

    # ---- the network as a function --------------------------------------------------------------------------------
    def __len__(self):
        return len(self.modules)

    @property
    def synthesizers(self):
        return [itf.synthesizer for itf in self.interfaces]

    def forward(self, x):
        """logits = f_{n-1}(... f_0(x)): the ordinary forward pass through every module."""
        h = x if isinstance(x, Tensor) else Tensor(x).to(self.device)
        for m in self.modules:
            h = m(h)
        return h

    __call__ = forward

    def train(self, mode=True):
        for m in self._all_modules():
            m.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def _all_modules(self):
        return [part for _, part in self.named_parts()]

    def true_gradient(self, i, h, y):
        """dL/dh_i: backprop from the loss through modules i+1..n-1 at their current parameters (h is an array).

        For the "true" target, the Oracle and the diagnostics. It leaves the net as it found it: the batch-norm
        running statistics of the modules above are restored, and their parameter gradients cleared.
        """
        above = self.modules[i + 1:]
        saved = [(buf, device_of(buf, CPU).copy(buf)) for m in above for _, buf in m.named_buffers()]
        inp = Tensor(h, requires_grad=True)
        out = inp
        for m in above:
            out = m(out)
        self.loss(out, y).backward()
        for buf, copy in saved:
            device_of(buf, CPU).assign(buf, copy)
        for m in above:
            m.zero_grad()
        assert inp.grad.shape == h.shape
        return inp.grad

    # ---- the learner interface of minidni.train.Trainer --------------------------------------------------------------
    def runner(self):
        """The streaming runner train_step feeds one batch at a time (created on first use)."""
        if self._runner is None:
            from .runner import Runner

            self._runner = Runner(self, self.schedule, diagnose_every=self.diagnose_every)
        return self._runner

    def train_step(self, x, y):
        """Run every event of one batch under `self.schedule`; return its loss, correct count and synthesizer loss."""
        if not self.schedule.per_batch:
            raise ValueError(f"DNINet.train_step: {self.schedule!r} keeps batches in flight between steps, so a step "
                             "has no loss of its own batch to report. Run it with dni.Runner(net, schedule, batches)"
                             ".run(), or train with a per-batch schedule (locked, dni, stochastic, delayed(0), "
                             "unlocked).")
        runner = self.runner()
        self.train()
        runner.feed(x, y, copy=False)   # the batch is finished before this call returns
        runner.flush()
        (rec,) = runner.log
        out = {"loss": rec["loss"], "correct": rec["correct"]}
        if runner.synth_log:
            out["synth_loss"] = float(np.mean([r["loss"] for r in runner.synth_log]))
        if runner.input_log:
            out["input_loss"] = float(np.mean([r["loss"] for r in runner.input_log]))
        runner.log.clear(), runner.synth_log.clear(), runner.input_log.clear()
        return out

    @no_grad()
    def eval_step(self, x, y):
        """Loss and correct count of the whole net on (x, y), batch norm on its running statistics; no update."""
        self.eval()
        logits = self.forward(x)
        out = {"loss": self.loss(logits, y).item(), "correct": count_correct(logits.data, y)}
        self.train()
        return out

    def evaluate(self, x, y, batch_size=1000):
        """Mean loss and accuracy over (x, y), in batches."""
        loss = correct = 0.0
        for k in range(0, len(y), batch_size):
            out = self.eval_step(x[k:k + batch_size], y[k:k + batch_size])
            loss += out["loss"] * len(y[k:k + batch_size])
            correct += out["correct"]
        return {"loss": loss / len(y), "accuracy": correct / len(y)}

    @property
    def diagnostics(self):
        """Records {batch, module, cos, rel_err, norm_synthetic, norm_true} written by train_step's runner."""
        return self._runner.diagnostics if self._runner is not None else []

    def _optimizers(self):
        yield from (("module", i, o) for i, o in enumerate(self.optimizers))
        yield from (("synth", i, itf.optimizer) for i, itf in enumerate(self.interfaces) if itf.optimizer)
        yield from (("input", j, im.optimizer) for j, im in enumerate(self.inputs or []) if im is not None)

    def set_lr(self, lr):
        """Set the modules' learning rate; synthesizers and input models keep their ratio to it."""
        scale = lr / self._lr if self._lr else 1.0
        for kind, _, opt in self._optimizers():
            opt.lr = lr if kind == "module" else opt.lr * scale
        self._lr = lr

    def parameters(self):
        """Every learned tensor: modules, synthesizers, synthetic-input models."""
        return [p for m in self._all_modules() for p in m.parameters()]

    def module_parameters(self):
        """The parameters of the network proper (what backprop would train), in module order."""
        return [p for m in self.modules for p in m.parameters()]

    def named_parts(self):
        """[(name, nn.Module)] for every part that learns, in order: the modules ("module0", ...), the synthesizers
        ("synth0", ... one per interface; Oracles included) and the synthetic-input models ("input1", ...). The names
        are the prefixes of `state_dict()`'s keys."""
        return ([(f"module{i}", m) for i, m in enumerate(self.modules)]
                + [(f"synth{i}", s) for i, s in enumerate(self.synthesizers)]
                + [(f"input{j}", im.model) for j, im in enumerate(self.inputs or []) if im is not None])

    @property
    def device(self):
        """The device of the modules' parameters (minidni.device): where train_step computes."""
        return self.modules[0].device

    def to(self, device):
        """Move every part (modules, synthesizers, synthetic-input models) and every optimizer's state to `device`."""
        dev = get_device(device)
        for _, part in self.named_parts():
            part.to(dev)
        for _, _, opt in self._optimizers():
            opt.to(dev)
        for itf in self.interfaces:
            itf.forget()                              # a kept prediction holds arrays of the old device
        return self

    def state_dict(self):
        """{name: array}: parameters, buffers, optimizer states and the batch counter (exact resumption).

        Only per-batch schedules are run by train_step, so between steps nothing is in flight.
        """
        state = {f"{name}/{k}": v for name, part in self.named_parts() for k, v in part.state_dict().items()}
        for kind, i, opt in self._optimizers():
            state.update({f"optim/{kind}{i}/{k}": v for k, v in opt.state_dict().items()})
        state["dni/batches"] = np.asarray(self._runner.n_fed if self._runner else 0)
        return state

    def load_state_dict(self, state):
        for name, part in self.named_parts():
            part.load_state_dict({k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + "/")})
        for kind, i, opt in self._optimizers():
            prefix = f"optim/{kind}{i}/"
            opt.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        self._lr = self.optimizers[0].lr
        for itf in self.interfaces:
            itf.forget()                              # a kept prediction was made at the old parameters
        self.runner().n_fed = int(state.get("dni/batches", 0))

    def __repr__(self):
        lines = [f"DNINet({len(self.modules)} modules, target={self.target}, schedule={self.schedule!r})"]
        for i, m in enumerate(self.modules):
            if self.inputs is not None and i > 0:
                lines.append(f"  synthetic input I_{i}: {self.inputs[i].model!r}")
            lines.append(f"  module {i}: " + repr(m).replace("\n", "\n    "))
            if i < len(self.interfaces):
                lines.append(f"  interface {i}: {self.interfaces[i].synthesizer!r}")
        return "\n".join(lines)


# ---- builders --------------------------------------------------------------------------------------------------------
def split_sequential(seq, cuts):
    """Cut an nn.Sequential before each index in `cuts`: split_sequential(S, [3, 6]) -> [S[0:3], S[3:6], S[6:]].

    The pieces share the layers (and parameters) of `seq`.
    """
    cuts = sorted(set(int(c) for c in cuts))
    if cuts and (cuts[0] <= 0 or cuts[-1] >= len(seq)):
        raise ValueError(f"split_sequential: cuts must lie in 1..{len(seq) - 1} for {len(seq)} layers, got {cuts}")
    edges = [0, *cuts, len(seq)]
    return [seq[a:b] for a, b in zip(edges[:-1], edges[1:])]


def mlp_modules(in_features, hidden, out_features, n_hidden, split_after=None, batch_norm=True, activation="relu",
                dtype=np.float32, rng=None, fused=False):
    """nn.mlp(...) cut into modules after the given hidden layers (0-based; default: after every hidden layer).

    hidden is one width repeated n_hidden times, or (n_hidden None) a sequence of widths, as in nn.mlp: a net with a
    narrow layer to cut at, `mlp_modules(784, (2048, 2048, 256, 2048, 2048), 10, None, split_after=[2])`.
    With the default, module k (k < n_hidden) is [Linear -> BatchNorm -> ReLU] of hidden layer k, and the last module
    is the output Linear layer. The parameters are initialised exactly as nn.mlp(..., rng=rng) would be, so a
    backprop baseline built with the same rng starts from the same weights. fused=True builds the hidden layers
    from the fused ops ([Linear -> BatchNormReLU] or [LinearReLU], see nn.mlp): the same numbers, bit for bit.
    """
    seq = nn.mlp(in_features, hidden, out_features, n_hidden, batch_norm=batch_norm, activation=activation,
                 dtype=dtype, rng=rng, fused=fused)
    if n_hidden is None:
        n_hidden = len(hidden)
    layer_ends = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LinearReLU, nn.BatchNormReLU)   # what closes a hidden layer
    ends = [k + 1 for k, layer in enumerate(seq) if isinstance(layer, layer_ends)]
    split_after = range(n_hidden) if split_after is None else split_after
    bad = [k for k in split_after if not 0 <= k < n_hidden]
    if bad:
        raise ValueError(f"mlp_modules: split_after names hidden layers 0..{n_hidden - 1}; got {bad}")
    return split_sequential(seq, [ends[k] for k in split_after])


def make_synthesizer(kind, features, n_classes=None, hidden=(1024, 1024), dtype=np.float32, rng=None):
    """'linear' | 'mlp' (hidden layers with batch norm and ReLU) | 'oracle' (the true gradient, for tests)."""
    if kind == "linear":
        return Synthesizer(features, n_classes, hidden=(), dtype=dtype, rng=rng)
    if kind == "mlp":
        return Synthesizer(features, n_classes, hidden=hidden, dtype=dtype, rng=rng)
    if kind == "oracle":
        return Oracle()
    raise ValueError(f"unknown synthesizer {kind!r}: choose 'linear', 'mlp' or 'oracle'")


def mnist_fcn(layers=4, hidden=256, synthesizer="linear", synth_hidden=(1024, 1024), conditioned=False,
              target="bootstrap", lr=1e-3, synth_lr=None, synth_loss="mean", schedule=None, batch_norm=True,
              dtype=np.float32, seed=0, in_features=784, n_classes=10, diagnose_every=0, fused=False):
    """The MNIST FCN of Sec. 3.3 with DNI after every hidden layer: `layers` weight layers (the paper: 3 to 6),
    layers - 1 hidden layers of `hidden` units (Linear -> BatchNorm -> ReLU), then the output layer, all trained with
    Adam. Each hidden layer is a module; a synthesizer sits on each hidden layer's output."""
    rng = np.random.default_rng(seed)
    n_hidden = layers - 1
    modules = mlp_modules(in_features, hidden, n_classes, n_hidden, batch_norm=batch_norm, dtype=dtype, rng=rng,
                          fused=fused)
    synths = [make_synthesizer(synthesizer, hidden, n_classes if conditioned else None, synth_hidden, dtype, rng)
              for _ in range(n_hidden)]
    return DNINet(modules, synths, optimizer=adam(lr), synth_optimizer=adam(synth_lr if synth_lr else lr),
                  synth_loss=synth_loss, target=target, schedule=schedule, diagnose_every=diagnose_every)

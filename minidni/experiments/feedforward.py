"""The feed-forward experiments of Jaderberg et al. 2016, Sec. 3.3 (Table 1; networks in appendix A): MNIST and
CIFAR-10, fully connected (FCN) and convolutional (CNN) nets, each trained four ways:

    no-bprop   only the output layer learns; every layer below keeps its random initialisation ("No Bprop" column:
               what the lower layers are worth when no learning signal reaches them)
    bprop      ordinary backpropagation (the baseline; mnist-fcn-bprop lives in mnist_fcn.py)
    dni        a synthesizer M_i(h_i) after every hidden layer; each layer updates with g_hat_i at once, and M_i
               regresses on the bootstrapped target (the next layer's synthetic gradient carried back through it)
    cdni       the same, with the label as an extra input: M_i(h_i, y) -- linear for the FCNs, which Sec. 3.3 found
               enough; the CNNs' synthesizers (DNI and cDNI) are the paper's three 5x5 conv layers

Every experiment is one registered recipe (`minidni list`). DNI runs also compare each g_hat_i with the true
gradient dL/dh_i every `diagnose_every` steps (cosine similarity and relative error ||g_hat - g|| / ||g||); the records
go into metrics.jsonl (split "synthetic_grad") and are drawn in synthetic_grad.png beside curves.png.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import nn
from ..autograd import no_grad
from ..config import ConfigError, TrainConfig, new_default, param
from ..data import BatchIterator, load_cifar10, load_mnist
from ..dni import DNINet, adam, mlp_modules
from ..dni.interface import SYNTH_LOSSES
from ..dni.schedules import TARGETS
from ..dni.synthesizer import ConvSynthesizer, Synthesizer
from ..optim import Adam
from ..tensor import Tensor
from ..train import METRICS, SUMMARY, Backprop, Trainer, count_correct
from . import register
from .mnist_fcn import MnistFcnConfig

SYNTH_PLOT = "synthetic_grad.png"
DIAGNOSTIC_SPLIT = "synthetic_grad"


# ---- the no-bprop learner ----------------------------------------------------------------------------------------------
class OutputLayerOnly(Backprop):
    """Train only the last layer of `model` (an nn.Sequential); the layers below never update.

    The features are computed under no_grad and handed to the output layer as a fresh leaf, so no gradient can reach
    the lower layers, and the optimizer holds only the output layer's parameters. (Batch norm below still normalises
    with the statistics of each batch and keeps running averages for evaluation, as in every other run: that is not
    learning, there is no gradient step.)
    """

    def __init__(self, model, lr=1e-3):
        self.features, self.head = model[:-1], model[-1]
        super().__init__(model, Adam(self.head.parameters(), lr=lr))

    def train_step(self, x, y):
        self.model.train()
        with no_grad():
            h = self.features(Tensor(x).to(self.device)).data   # (B, D): random, fixed features
        logits = self.head(Tensor(h))                          # only this layer is in the graph
        loss = self.loss(logits, y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "correct": count_correct(logits.data, y)}


# ---- configs ---------------------------------------------------------------------------------------------------------
def synth_loss_param():
    """The `synth_loss` setting every DNI config shares (interface.py explains the choice)."""
    return param("mean", "M's regression loss: 'mean' squared error, or 'sum' (||g_hat - g||^2, the paper's; Adam's "
                         "eps damps an MLP synthesizer's hidden layers less)", choices=SYNTH_LOSSES)


@dataclass
class DniFcnConfig(MnistFcnConfig):
    # Synthesizers. The paper's DNI synthesizer is an MLP with two hidden layers of 1024 units (batch norm, ReLU);
    # without the label, a linear map of h cannot tell which way the loss wants h to move. The gradient it predicts is
    # tiny (dL/dh of a batch-mean loss is ~1e-4 per entry), so the synthesizer's learning rate sets how noisy g_hat is.
    # On validation (3 layers, the full 20-epoch schedule): MLP 3e-5 4.02%, 1e-5 4.16%, 1e-4 4.36%; linear (1e-4,
    # the best linear rate in 8-epoch runs) 4.82%. With synth_loss="sum" (Adam's eps no longer damps the MLP's hidden
    # layers): 1e-4 4.20%, 3e-5 3.82%, 1e-5 3.72%, 3e-6 4.42% at 3 layers, but at 1e-5 5.50% / 8.34% at 4 / 5 layers
    # against 5.20% / 6.66% for the mean. See docs/results-mnist.md.
    synthesizer: str = param("mlp", "synthesizer M: 'linear' (g_hat = h W + b) or 'mlp' (synth_hidden layers)",
                             choices=("linear", "mlp"))
    synth_hidden: tuple[int, ...] = param((1024, 1024), "hidden widths of an 'mlp' synthesizer (the paper: 2 x 1024)",
                                          ge=1)
    synth_lr: float = param(3e-5, "Adam learning rate of the synthesizers (decays with lr)", gt=0.0)
    synth_scale: float = param(1.0, "g_hat = synth_scale * M(h [, y]): a fixed factor on the prediction", gt=0.0)
    synth_loss: str = synth_loss_param()
    target: str = param("bootstrap", "what M_i regresses on: 'bootstrap' (the paper) or 'true' (analysis)",
                        choices=TARGETS)
    diagnose_every: int = param(50, "compare g_hat with the true gradient every this many steps (0: never)", ge=0)


@dataclass
class CdniFcnConfig(DniFcnConfig):
    # Knowing the label, a LINEAR synthesizer is enough (the paper's cDNI; it can represent the gradient of a linear
    # top layer exactly), and a small learning rate pays: a quiet g_hat. On validation (3 and 6 layers, 8-epoch runs),
    # 1e-5 beat 3e-5, 3e-6 and 1e-6 (and 1e-4, 1e-3 by far).
    synthesizer: str = new_default(DniFcnConfig, "synthesizer", "linear")
    synth_lr: float = new_default(DniFcnConfig, "synth_lr", 1e-5)


@dataclass
class CnnConfig(TrainConfig):
    """The paper's CNN (v1 appendix A.1), 3 or 4 layers: layers - 1 blocks of [5x5 conv (64 filters on MNIST, 128 on
    CIFAR-10; size-preserving padding) -> BatchNorm -> ReLU -> 3x3 pool], max pooling after the first conv layer and
    average pooling after the others, then a Linear layer to the classes. The paper gives no pool stride; 2 here
    (28 -> 13 -> 6 -> 2 on MNIST, 32 -> 15 -> 7 -> 3 on CIFAR-10). The default budget is tiny: it shows the recipe
    runs end to end, not what it reaches (give --steps / --epochs for a real run). The earlier configuration (two
    128-filter layers, 2x2 max pools, constant lr) is `--set channels=128 --set pool=2 --set pooling="max" --set
    lr_gamma=1`."""

    layers: int = param(3, "weight layers (3 or 4): layers - 1 conv layers, then the output layer", ge=3, le=4)
    channels: int = param(64, "filters per conv layer (the paper: 64 on MNIST, 128 on CIFAR-10)", ge=1)
    kernel_size: int = param(5, "conv kernel size (odd; the paper: 5)", ge=1)
    pool: int = param(3, "pooling window after each conv layer (the paper: 3x3)", ge=1)
    pool_stride: int = param(2, "stride of the pooling windows (not in the paper; 2 about halves the resolution)", ge=1)
    pooling: str = param("paper", "'paper': a max pool after the first conv layer, average pools after the others; "
                                  "'max': max pools after every conv layer", choices=("paper", "max"))
    batch_norm: bool = param(True, "batch norm after each conv layer")
    # The paper divides the lr by 10 twice near the end (at 300k and 400k of 500k iterations); here at 1/2 and 3/4 of
    # the run (lr_decay_at), as the FCN configs do. At the table's 3,000 steps it lowered bprop's and cDNI's errors
    # (bprop at 4 layers 1.09% -> 0.66%, the paper's 0.6): docs/results-mnist.md.
    lr_gamma: float = param(0.1, "multiply lr (and the synthesizers' lr) by this at each decay point (1.0: no decay)",
                            gt=0.0, le=1.0)
    lr_decay_at: tuple[float, ...] = new_default(TrainConfig, "lr_decay_at", (0.5, 0.75))
    validation: int = param(5000, "training images held out for validation (fixed split, seed 0)", ge=1, le=50000)
    eval_subset: int = param(200, "evaluate on the first N validation / test images (0: all of them)", ge=0)
    data_dir: str = param("", "folder with the data set files ('': the default place)")
    verify_data: bool = param(True, "check the MNIST files' SHA-256 before use (false: --no-verify)")
    steps: int = new_default(TrainConfig, "steps", 10)
    batch_size: int = new_default(TrainConfig, "batch_size", 32)
    checkpoint_every: int = new_default(TrainConfig, "checkpoint_every", 0)
    log_every: int = new_default(TrainConfig, "log_every", 2)

    def check(self):
        super().check()
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"{type(self).__name__}.kernel_size must be odd (same padding); got {self.kernel_size}")


@dataclass
class DniCnnConfig(CnnConfig):
    # The paper's conv synthesizer: two hidden 5x5 convs (batch norm, ReLU), then a 5x5 conv to g_hat; cDNI adds the
    # label as 10 input planes. The rate: on validation with the earlier net and a one-conv synthesizer (MNIST, 1,000
    # steps of batch 32, 1,000 validation images): cDNI 1e-4 6.0%, 1e-5 4.7%; DNI 1e-4 5.8%, 1e-5 4.3% (backprop
    # 3.9%); not yet re-tuned for the paper's net. See docs/results-mnist.md.
    synth_hidden_layers: int = param(2, "hidden 5x5 conv layers of each synthesizer (the paper: 2; 0: one linear "
                                        "conv)", ge=0)
    synth_channels: int = param(0, "channels of each hidden synthesizer conv (0: as many as the layer it serves)",
                                ge=0)
    synth_lr: float = param(1e-5, "Adam learning rate of the synthesizers (decays with lr)", gt=0.0)
    synth_scale: float = param(1.0, "g_hat = synth_scale * M(h [, y])", gt=0.0)
    synth_loss: str = synth_loss_param()
    target: str = param("bootstrap", "what M_i regresses on: 'bootstrap' or 'true'", choices=TARGETS)
    diagnose_every: int = param(5, "compare g_hat with the true gradient every this many steps (0: never)", ge=0)


@dataclass
class Cifar10CnnConfig(CnnConfig):
    channels: int = param(128, "filters per conv layer (the paper: 128 on CIFAR-10)", ge=1)


@dataclass
class DniCifar10CnnConfig(DniCnnConfig):
    channels: int = param(128, "filters per conv layer (the paper: 128 on CIFAR-10)", ge=1)


@dataclass
class Cifar10FcnConfig(TrainConfig):
    layers: int = param(3, "weight layers (3..6): layers - 1 hidden layers, then the output layer", ge=3, le=6)
    hidden: int = param(1000, "units per hidden layer (the paper's CIFAR-10 FCN: 1000)", ge=1)
    batch_norm: bool = param(True, "batch norm after each hidden Linear layer")
    fused: bool = param(True, "build the hidden layers from the fused ops (nn.mlp(fused=True)): the same numbers bit "
                              "for bit, faster")
    validation: int = param(5000, "training images held out for validation (fixed split, seed 0)", ge=1, le=49000)
    data_dir: str = param("", "cifar-10-python.tar.gz, the cifar-10-batches-py folder, or a folder holding either "
                              "('': $MINIDNI_DATA)")
    epochs: int = new_default(TrainConfig, "epochs", 20)


@dataclass
class DniCifar10FcnConfig(Cifar10FcnConfig):
    synthesizer: str = param("linear", "synthesizer M: 'linear' or 'mlp'", choices=("linear", "mlp"))
    synth_hidden: tuple[int, ...] = param((1024, 1024), "hidden widths of an 'mlp' synthesizer", ge=1)
    synth_lr: float = param(1e-4, "Adam learning rate of the synthesizers (decays with lr)", gt=0.0)
    synth_scale: float = param(1.0, "g_hat = synth_scale * M(h [, y])", gt=0.0)
    synth_loss: str = synth_loss_param()
    target: str = param("bootstrap", "what M_i regresses on", choices=TARGETS)
    diagnose_every: int = param(50, "compare g_hat with the true gradient every this many steps (0: never)", ge=0)


# ---- data ------------------------------------------------------------------------------------------------------------
def load_data(dataset, config, images):
    """(train, val, test) Splits of `dataset` ("mnist" | "cifar10"): images (N, C, H, W) when `images`, else rows."""
    if dataset == "mnist":
        data = load_mnist(config.data_dir or None, validation=config.validation, seed=0,
                          verify=getattr(config, "verify_data", True))
        shape = (1, 28, 28)
    else:
        data = load_cifar10(config.data_dir or None, validation=config.validation, seed=0)
        shape = (3, 32, 32)
    splits = [data.train, data.val, data.test]
    subset = getattr(config, "eval_subset", 0)
    out = []
    for k, s in enumerate(splits):
        x, y = s.x, s.y
        if k > 0 and subset:
            x, y = x[:subset], y[:subset]
        x = x.reshape(len(x), *shape) if images else x.reshape(len(x), -1)
        out.append((np.ascontiguousarray(x), y))
    return out


# ---- networks --------------------------------------------------------------------------------------------------------
def cnn_blocks(config, in_channels, size, n_classes=10, rng=None):
    """The CNN of `CnnConfig` as `config.layers` modules (the cut points of DNI): layers - 1 conv blocks
    [Conv2d 5x5 same -> BatchNorm2d -> ReLU -> MaxPool2d (first block) or AvgPool2d (the others)], then
    [Flatten -> Linear]. Images are size x size."""
    blocks, c = [], in_channels
    for k in range(config.layers - 1):
        if size < config.pool:
            raise ConfigError(f"{type(config).__name__}: after {k} conv block(s) the maps are {size}x{size}, smaller "
                              f"than the {config.pool}x{config.pool} pool; use fewer layers or a smaller pool / stride")
        layers = [nn.Conv2d(c, config.channels, config.kernel_size, padding="same", bias=not config.batch_norm,
                            rng=rng)]
        if config.batch_norm:
            layers.append(nn.BatchNorm2d(config.channels))
        pool = nn.MaxPool2d if k == 0 or config.pooling == "max" else nn.AvgPool2d
        layers += [nn.ReLU(), pool(config.pool, config.pool_stride)]
        blocks.append(nn.Sequential(*layers))
        c, size = config.channels, (size - config.pool) // config.pool_stride + 1
    blocks.append(nn.Sequential(nn.Flatten(), nn.Linear(c * size * size, n_classes, rng=rng)))
    return blocks


def build_modules(arch, config, in_shape, rng):
    """The network's modules (one per DNI cut) and, for the synthesizers, the width / channels of each cut."""
    if arch == "fcn":
        in_features = int(np.prod(in_shape))
        modules = mlp_modules(in_features, config.hidden, 10, config.layers - 1, batch_norm=config.batch_norm,
                              rng=rng, fused=config.fused)
        return modules, [config.hidden] * (config.layers - 1)
    modules = cnn_blocks(config, in_shape[0], in_shape[1], rng=rng)
    return modules, [config.channels] * (len(modules) - 1)


def build_synthesizers(arch, config, widths, conditioned, rng):
    n_classes = 10 if conditioned else None
    if arch == "fcn":
        hidden = () if config.synthesizer == "linear" else config.synth_hidden
        return [Synthesizer(w, n_classes, hidden=hidden, scale=config.synth_scale, rng=rng) for w in widths]
    return [ConvSynthesizer(w, n_classes, hidden=(config.synth_channels or w,) * config.synth_hidden_layers,
                            kernel_size=config.kernel_size, scale=config.synth_scale, rng=rng) for w in widths]


def build_dni_net(arch, config, in_shape, conditioned, schedule=None, diagnose_every=None):
    """A DNINet: the net cut after every hidden layer (FCN) or conv block (CNN), a synthesizer at each cut."""
    rng = np.random.default_rng(config.seed)
    modules, widths = build_modules(arch, config, in_shape, rng)
    synths = build_synthesizers(arch, config, widths, conditioned, rng)
    return DNINet(modules, synths, optimizer=adam(config.lr), synth_optimizer=adam(config.synth_lr),
                  synth_loss=config.synth_loss, target=config.target, schedule=schedule,
                  diagnose_every=config.diagnose_every if diagnose_every is None else diagnose_every)


def build_learner(method, arch, config, in_shape, schedule=None):
    """The learner the Trainer drives for `method` in no-bprop | bprop | dni | cdni."""
    if method in ("dni", "cdni"):
        return build_dni_net(arch, config, in_shape, conditioned=(method == "cdni"), schedule=schedule)
    rng = np.random.default_rng(config.seed)
    model = nn.Sequential(*[layer for m in build_modules(arch, config, in_shape, rng)[0] for layer in m])
    if method == "no-bprop":
        return OutputLayerOnly(model, lr=config.lr)
    return Backprop(model, Adam(model.parameters(), lr=config.lr))


# ---- synthetic-gradient diagnostics ----------------------------------------------------------------------------------
def diagnostics_hook(trainer):
    """Trainer hook: move the DNINet's new diagnostic records (g_hat vs the true gradient) into metrics.jsonl."""
    records = getattr(trainer.learner, "diagnostics", None)
    if not records:
        return
    with open(trainer.out_dir / METRICS, "a") as fh:
        for r in records:
            step = r["batch"] + 1                              # batch b is the (b+1)-th update
            rec = {"step": step, "epoch": round(step / trainer.steps_per_epoch, 4), "split": DIAGNOSTIC_SPLIT,
                   "module": r["module"], "cos": r["cos"], "rel_err": r["rel_err"],
                   "norm_synthetic": r["norm_synthetic"], "norm_true": r["norm_true"]}
            trainer.records.append(rec)
            fh.write(json.dumps(rec) + "\n")
    records.clear()


def plot_synthetic_gradients(records, path, title=""):
    """Cosine similarity (left) and relative error (right, log scale) of g_hat_i against dL/dh_i, per module."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in records if r.get("split") == DIAGNOSTIC_SPLIT]
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_cos, ax_err = fig.subplots(1, 2)
    for m in sorted({r["module"] for r in rows}):
        mine = [r for r in rows if r["module"] == m]
        steps = [r["step"] for r in mine]
        ax_cos.plot(steps, [r["cos"] for r in mine], label=f"M_{m} (after layer {m + 1})")
        ax_err.plot(steps, [max(r["rel_err"], 1e-3) for r in mine], label=f"M_{m}")
    ax_cos.set(xlabel="step", ylabel="cos(g_hat, g)", title="cosine similarity to the true gradient", ylim=(-0.1, 1.0))
    ax_err.set(xlabel="step", ylabel="||g_hat - g|| / ||g||", title="relative error", yscale="log")
    for ax in (ax_cos, ax_err):
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return Path(path)


def synthetic_grad_summary(records):
    """{module: {cos, rel_err}} averaged over the last 5 diagnostics of each module (end-of-training agreement)."""
    rows = [r for r in records if r.get("split") == DIAGNOSTIC_SPLIT]
    out = {}
    for m in sorted({r["module"] for r in rows}):
        last = [r for r in rows if r["module"] == m][-5:]
        out[str(m)] = {"cos": round(float(np.mean([r["cos"] for r in last])), 4),
                       "rel_err": round(float(np.mean([r["rel_err"] for r in last])), 4)}
    return out


def add_to_summary(out_dir, **extra):
    """Merge `extra` into out_dir/summary.json; return the merged summary."""
    path = Path(out_dir) / SUMMARY
    summary = json.loads(path.read_text())
    summary.update(extra)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ---- the generic recipe ----------------------------------------------------------------------------------------------
def train(name, dataset, arch, method, config, out_dir, *, resume=False, quiet=False, hooks=(), schedule=None,
          learner=None):
    """Build data and learner, train with the Trainer, add the synthetic-gradient plot and numbers for DNI runs."""
    train_split, val, test = load_data(dataset, config, images=(arch == "cnn"))
    in_shape = train_split[0].shape[1:]
    learner = learner or build_learner(method, arch, config, in_shape, schedule=schedule)
    batches = BatchIterator(*train_split, config.batch_size, seed=config.seed, drop_last=True)
    is_dni = isinstance(learner, DNINet)
    trainer = Trainer(learner, batches, config, out_dir, val=val, test=test, experiment=name, quiet=quiet,
                      hooks=([diagnostics_hook] if is_dni else []) + list(hooks))
    summary = trainer.fit(resume=resume)
    extra = {"method": method, "dataset": dataset, "arch": arch}
    if is_dni and any(r.get("split") == DIAGNOSTIC_SPLIT for r in trainer.records):
        plot_synthetic_gradients(trainer.records, Path(out_dir) / SYNTH_PLOT, title=f"{name}: g_hat vs dL/dh")
        extra["synthetic_grad"] = synthetic_grad_summary(trainer.records)
        extra["files"] = {**summary["files"], "synthetic_grad": SYNTH_PLOT}
    summary = add_to_summary(out_dir, **extra)
    return summary


def _register(dataset, arch, method, config_cls, description):
    name = f"{dataset}-{arch}-{method}"

    @register(name, description, config_cls)
    def run(config, out_dir, *, resume=False, quiet=False, hooks=()):
        return train(name, dataset, arch, method, config, out_dir, resume=resume, quiet=quiet, hooks=hooks)

    return run


_WHAT = {"no-bprop": "only the output layer learns (the lower layers stay random)",
         "bprop": "trained by backprop",
         "dni": "DNI after every layer (bootstrapped synthetic gradients)",
         "cdni": "cDNI after every layer (linear synthesizers conditioned on the label)"}

# MNIST FCN (mnist-fcn-bprop is registered by mnist_fcn.py)
_register("mnist", "fcn", "no-bprop", MnistFcnConfig, "MNIST FCN (Table 1): " + _WHAT["no-bprop"])
_register("mnist", "fcn", "dni", DniFcnConfig, "MNIST FCN (Table 1): " + _WHAT["dni"])
_register("mnist", "fcn", "cdni", CdniFcnConfig, "MNIST FCN (Table 1): " + _WHAT["cdni"])
# MNIST and CIFAR-10 CNN
_CNN_WHAT = dict(_WHAT, cdni="cDNI after every layer (conv synthesizers conditioned on the label)")
for _method in ("no-bprop", "bprop", "dni", "cdni"):
    _register("mnist", "cnn", _method, DniCnnConfig if "dni" in _method else CnnConfig,
              "MNIST CNN, 3 or 4 layers (Table 1): " + _CNN_WHAT[_method] + "; tiny default budget")
for _method in ("bprop", "dni", "cdni"):
    _register("cifar10", "fcn", _method, DniCifar10FcnConfig if "dni" in _method else Cifar10FcnConfig,
              "CIFAR-10 FCN (Table 1; needs --data-dir): " + _WHAT[_method])
    _register("cifar10", "cnn", _method, DniCifar10CnnConfig if "dni" in _method else Cifar10CnnConfig,
              "CIFAR-10 CNN, 3 or 4 layers (Table 1; needs --data-dir): " + _CNN_WHAT[_method] +
              "; tiny default budget")

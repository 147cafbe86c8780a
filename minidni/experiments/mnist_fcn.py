"""MNIST with fully connected networks, trained by backpropagation: the baseline of Jaderberg et al. 2016, Sec. 3.3
(Table 1, "Bprop" rows; network in appendix A).

The network has `layers` weight layers: layers - 1 hidden layers of 256 units, each Linear -> BatchNorm -> ReLU, then
a Linear layer to the 10 classes (`minidni.nn.mlp(784, 256, 10, n_hidden=layers - 1)`). It is trained with Adam on
batches of 256. The paper reports 3 to 6 layers, so `layers` takes those values. The validation images are held out
from the 60,000 training images with a fixed seed (0), so every run is scored on the same validation set.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import TrainConfig, new_default, param
from ..data import BatchIterator, load_mnist
from ..nn import mlp
from ..optim import Adam
from ..train import Backprop, Trainer
from . import register

NAME = "mnist-fcn-bprop"


@dataclass
class MnistFcnConfig(TrainConfig):
    layers: int = param(3, "weight layers (the paper's 3..6): layers - 1 hidden layers, then the output layer",
                        ge=3, le=6)
    hidden: int = param(256, "units per hidden layer", ge=1)
    batch_norm: bool = param(True, "batch norm after each hidden Linear layer")
    fused: bool = param(True, "build the hidden layers from the fused ops (nn.mlp(fused=True)): the same numbers bit "
                              "for bit, faster")
    validation: int = param(5000, "training images held out for validation (fixed split, seed 0)", ge=1, le=50000)
    data_dir: str = param("", "folder with the four MNIST IDX files ('': $MINIDNI_DATA/mnist, else the packaged copy)")
    # Training defaults of this experiment. 20 epochs of 214 steps (55,000 images, batches of 256); lr 1e-3, divided
    # by 10 after epochs 10 and 15. Chosen on the validation error among: constant 1e-3, constant 3e-4, halving every
    # 2 epochs, and this (3 layers: 1.9% validation, 1.6% test error). The decay points are fractions of the run
    # (1/2 and 3/4: steps 2140 and 3210 of 4280), so --epochs, --steps and --batch-size move them along.
    epochs: int = new_default(TrainConfig, "epochs", 20)
    batch_size: int = new_default(TrainConfig, "batch_size", 256)
    lr: float = new_default(TrainConfig, "lr", 1e-3)
    lr_gamma: float = new_default(TrainConfig, "lr_gamma", 0.1)
    lr_decay_at: tuple[float, ...] = new_default(TrainConfig, "lr_decay_at", (0.5, 0.75))
    verify_data: bool = param(True, "check the data files' SHA-256 before use (false: --no-verify)")


@register(NAME, "MNIST, fully connected 784-256x(layers-1)-10 net with batch norm, trained by backprop "
                "(Sec. 3.3 baseline)", MnistFcnConfig)
def run(config, out_dir, *, resume=False, quiet=False, hooks=()):
    data = load_mnist(config.data_dir or None, validation=config.validation, seed=0, verify=config.verify_data)
    model = mlp(784, config.hidden, 10, n_hidden=config.layers - 1, batch_norm=config.batch_norm,
                rng=np.random.default_rng(config.seed), fused=config.fused)
    learner = Backprop(model, Adam(model.parameters(), lr=config.lr))
    batches = BatchIterator(data.train.x, data.train.y, config.batch_size, seed=config.seed, drop_last=True)
    trainer = Trainer(learner, batches, config, out_dir, val=data.val, test=data.test, experiment=NAME, quiet=quiet,
                      hooks=hooks)
    return trainer.fit(resume=resume)

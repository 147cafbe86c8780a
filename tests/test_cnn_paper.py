"""The paper's CNN (Jaderberg et al. 2016, v1 appendix A.1), as `mnist-cnn-*` and `cifar10-cnn-*` build it: checked
layer by layer for 3 and 4 layers on MNIST (64 filters, 28x28) and CIFAR-10 (128 filters, 32x32), with the paper's
conv synthesizers (two hidden 5x5 convs with batch norm and ReLU, then a zero-initialised 5x5 conv; cDNI adds the
label as 10 planes), and trained for a few DNI steps on a small version of it.
"""
import json

import numpy as np
import pytest

import minidni as md
from minidni import nn
from minidni.cli import main
from minidni.config import ConfigError, override
from minidni.dni.synthesizer import ConvSynthesizer
from minidni.experiments.feedforward import (Cifar10CnnConfig, CnnConfig, DniCifar10CnnConfig, DniCnnConfig,
                                             build_dni_net, cnn_blocks)

# dataset -> (config classes, image (C, H), filters, the maps' side after each conv block)
PAPER = {"mnist": ((CnnConfig, DniCnnConfig), (1, 28), 64, [13, 6, 2]),
         "cifar10": ((Cifar10CnnConfig, DniCifar10CnnConfig), (3, 32), 128, [15, 7, 3])}


def _kinds(block):
    return [type(layer).__name__ for layer in block]


@pytest.mark.parametrize("dataset", sorted(PAPER))
@pytest.mark.parametrize("layers", [3, 4])
def test_paper_cnn_layer_by_layer(dataset, layers):
    (config_cls, _), (c_in, size), filters, sides = PAPER[dataset]
    config = override(config_cls(), {"layers": layers})
    blocks = cnn_blocks(config, c_in, size, rng=np.random.default_rng(0))
    assert len(blocks) == layers  # layers - 1 conv blocks (the DNI cuts), then the output layer
    x = md.Tensor(np.random.default_rng(1).random((2, c_in, size, size), dtype=np.float32))
    c = c_in
    for k, block in enumerate(blocks[:-1]):
        pool = "MaxPool2d" if k == 0 else "AvgPool2d"  # max after the first layer, average after the rest
        assert _kinds(block) == ["Conv2d", "BatchNorm2d", "ReLU", pool]
        conv, bn, _, p = block
        assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding) == (c, filters, (5, 5), "same")
        assert conv.bias is None and bn.num_features == filters  # batch norm's shift replaces the bias
        assert (p.kernel_size, p.stride) == (3, 2)
        x = block(x)
        assert x.shape == (2, filters, sides[k], sides[k]), f"block {k}"
        c = filters
    assert _kinds(blocks[-1]) == ["Flatten", "Linear"]
    assert blocks[-1][1].weight.shape[0] == filters * sides[layers - 2] ** 2
    assert blocks[-1](x).shape == (2, 10)


@pytest.mark.parametrize("dataset", sorted(PAPER))
@pytest.mark.parametrize("conditioned", [False, True])
def test_paper_conv_synthesizers(dataset, conditioned):
    (_, dni_cls), (c_in, size), filters, _ = PAPER[dataset]
    net = build_dni_net("cnn", override(dni_cls(), {"layers": 4}), (c_in, size, size), conditioned)
    assert len(net.interfaces) == 3
    for itf in net.interfaces:
        synth = itf.synthesizer
        assert isinstance(synth, ConvSynthesizer) and synth.hidden == (filters, filters)
        kinds = _kinds(synth.net)
        assert kinds == ["Conv2d", "BatchNorm2d", "ReLU"] * 2 + ["Conv2d"]
        convs = [layer for layer in synth.net if isinstance(layer, nn.Conv2d)]
        assert convs[0].in_channels == filters + (10 if conditioned else 0)  # cDNI: the label as 10 planes
        assert all(cv.kernel_size == (5, 5) and cv.padding == "same" for cv in convs)
        assert convs[-1].out_channels == filters and not convs[-1].weight.data.any()  # g_hat = 0 at the start


def test_conditioning_planes_are_the_label():
    synth = ConvSynthesizer(2, n_classes=10, hidden=(), rng=0)
    seen = {}
    synth.net[0].forward = lambda x: seen.setdefault("x", x) * 1  # record the input of the first conv
    h = md.Tensor(np.zeros((3, 2, 4, 4), np.float32))
    synth(h, np.array([0, 7, 9]))
    planes = seen["x"].data[:, 2:]  # (3, 10, 4, 4)
    assert planes.shape == (3, 10, 4, 4)
    for n, label in enumerate([0, 7, 9]):
        assert (planes[n, label] == 1).all() and planes[n].sum() == 16  # the label's plane all ones, the rest zero


def test_the_earlier_configuration_stays_reachable():
    config = override(CnnConfig(), {"channels": 128, "pool": 2, "pooling": "max"})
    blocks = cnn_blocks(config, 1, 28)
    assert [_kinds(b)[-1] for b in blocks[:-1]] == ["MaxPool2d", "MaxPool2d"]
    assert blocks[-1][1].weight.shape[0] == 128 * 7 * 7
    with pytest.raises(ConfigError, match=r"after 2 conv block\(s\) the maps are 1x1, smaller than the 9x9 pool"):
        cnn_blocks(override(CnnConfig(), {"layers": 4, "pool": 9}), 1, 28)


def test_tiny_cnn_dni_trains_every_part():
    """A few cDNI steps on a 4-layer CNN of 4 filters: every conv layer and every synthesizer moves, the loss is finite.
    (Bootstrapping: M_i's target starts at zero until the true gradient has reached it from the top, one interface
    per step, and g_hat_i = 0 until then; hence 6 steps for 3 interfaces.)"""
    config = override(DniCnnConfig(), {"layers": 4, "channels": 4, "lr": 1e-2, "synth_lr": 1e-3, "diagnose_every": 0})
    net = build_dni_net("cnn", config, (1, 28, 28), conditioned=True)
    params = [p for m in net.modules for p in m.parameters()] + [p for i in net.interfaces
                                                                  for p in i.synthesizer.parameters()]
    before = [p.data.copy() for p in params]
    r = np.random.default_rng(0)
    x, y = r.random((8, 1, 28, 28), dtype=np.float32), r.integers(0, 10, 8)
    losses = [net.train_step(x, y)["loss"] for _ in range(6)]
    assert np.isfinite(losses).all()
    moved = [not np.array_equal(p.data, b) for p, b in zip(params, before)]
    assert all(moved), [p.shape for p, m in zip(params, moved) if not m]


def test_mnist_cnn_cdni_four_layers_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "mnist-cnn-cdni", "--layers", "4", "--out", str(out), "--steps", "2", "--batch-size", "8",
                 "--quiet", "--set", "channels=4", "--set", "eval_subset=16", "--set", "diagnose_every=1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["layers"] == 4 and summary["steps"] == 2 and set(summary["synthetic_grad"]) == {"0", "1",
                                                                                                             "2"}

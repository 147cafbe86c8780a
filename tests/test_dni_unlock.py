"""Complete unlock (Jaderberg et al. 2016, Sec. 2.3 / 3.4): synthetic inputs let every module run on batch b at once."""

import numpy as np
import pytest

from minidni.dni import Runner, SyntheticInput, adam, add_synthetic_inputs, mnist_fcn, unlocked
from minidni.dni import schedules as S
from minidni.tensor import Tensor


def data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 10)).astype(np.float32)
    return x, (x[:, :3].argmax(axis=1)).astype(np.int64)


def unlocked_net(**kw):
    net = mnist_fcn(layers=4, hidden=16, in_features=10, n_classes=3, lr=3e-3, conditioned=True,
                    schedule=unlocked(), **kw)
    return add_synthetic_inputs(net, in_features=10, optimizer=adam(1e-2), rng=3)


def test_every_module_runs_batch_b_in_tick_b():
    events = unlocked().events(3, 4)
    for e in events:
        if e.kind in ("forward", "forward_unlocked", "update_synthetic", "update_true"):
            assert e.tick == e.batch
        if e.kind in ("train_synth", "train_input"):
            assert e.tick == e.batch + 1
    assert {e.kind for e in events if e.module > 0 and e.kind.startswith("forward")} == {"forward_unlocked"}


def test_synthetic_input_shapes_and_repr():
    model = SyntheticInput(10, 16, hidden=(32,), rng=0)
    assert model(Tensor(np.ones((4, 10), np.float32))).shape == (4, 16)
    assert model(Tensor(np.ones((4, 2, 5), np.float32))).shape == (4, 16)     # images are flattened
    assert repr(model) == "SyntheticInput(x (10) -> 32 -> h_hat (16))"


def test_unlocked_training_learns_inputs_and_the_task():
    net = unlocked_net()
    assert "synthetic input I_1" in repr(net)
    x, y = data(512, 0)
    input_losses, losses = [], []
    for epoch in range(4):
        for k in range(0, 512, 32):
            out = net.train_step(x[k:k + 32], y[k:k + 32])
            input_losses.append(out["input_loss"])
            losses.append(out["loss"])
    assert np.mean(input_losses[-16:]) < 0.5 * np.mean(input_losses[:4])
    assert np.mean(losses[-16:]) < np.mean(losses[:16])
    assert net.evaluate(*data(256, 1))["accuracy"] > 0.45     # chance is 1/3; the real forward chain at test time


def test_unlocked_needs_synthetic_inputs():
    net = mnist_fcn(layers=3, hidden=8, in_features=10, n_classes=3, schedule=unlocked())
    with pytest.raises(ValueError, match="add_synthetic_inputs"):
        Runner(net, unlocked(), [data(8, 0)])
    S.check(unlocked().events(4, 3, "true"))

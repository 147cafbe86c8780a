"""DNINet: building the paper's nets, the learner interface the Trainer drives, exact checkpoint round trips."""

import numpy as np
import pytest

import minidni as md
from minidni import nn
from minidni.config import TrainConfig, override
from minidni.data import BatchIterator, Split
from minidni.dni import DNINet, Oracle, Synthesizer, mlp_modules, mnist_fcn, schedules as S, split_sequential
from minidni.train import Trainer


def blobs(n, seed, d=10, classes=3):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(0.0, 2.0, (classes, d))
    y = rng.integers(0, classes, n)
    return Split((centers[y] + rng.normal(0.0, 1.0, (n, d))).astype(np.float32), y.astype(np.int64))


def small_net(schedule=None, seed=0, **kw):
    return mnist_fcn(layers=4, hidden=16, in_features=10, n_classes=3, lr=1e-2, schedule=schedule, seed=seed, **kw)


def test_mlp_modules_split_nn_mlp_after_hidden_layers():
    mods = mlp_modules(10, 16, 3, n_hidden=3, rng=0)
    assert [len(m) for m in mods] == [3, 3, 3, 1]               # [Linear, BN, ReLU] x 3, then the output Linear
    ref = nn.mlp(10, 16, 3, n_hidden=3, rng=0)
    assert all(np.array_equal(a.data, b.data) for a, b in
               zip(ref.parameters(), [p for m in mods for p in m.parameters()]))
    two = mlp_modules(10, 16, 3, n_hidden=3, split_after=[1], rng=0)
    assert [len(m) for m in two] == [6, 4]
    with pytest.raises(ValueError, match="hidden layers 0..2"):
        mlp_modules(10, 16, 3, n_hidden=3, split_after=[3])
    with pytest.raises(ValueError, match="cuts"):
        split_sequential(ref, [0])


def test_mlp_modules_with_a_width_per_hidden_layer():
    """A narrow layer to cut at (the bottleneck net of bench_distributed.py): the modules hold nn.mlp's layers and
    weights for the same widths, and the cut's activation has the narrow width."""
    mods = mlp_modules(10, (16, 4, 12), 3, None, split_after=[1], rng=0)
    ref = nn.mlp(10, (16, 4, 12), 3, rng=0)
    assert [len(m) for m in mods] == [6, 4]
    assert all(np.array_equal(a.data, b.data) for a, b in
               zip(ref.parameters(), [p for m in mods for p in m.parameters()]))
    h = mods[0](md.Tensor(np.ones((5, 10), np.float32)))
    assert h.shape == (5, 4)
    with pytest.raises(ValueError, match="hidden layers 0..2"):
        mlp_modules(10, (16, 4, 12), 3, None, split_after=[3])


@pytest.mark.parametrize("batch_norm", [True, False], ids=["bn", "no_bn"])
def test_fused_mlp_modules_cut_at_the_same_layers_and_train_identically(batch_norm):
    fused = mlp_modules(10, 16, 3, n_hidden=3, batch_norm=batch_norm, rng=0, fused=True)
    assert [len(m) for m in fused] == ([2, 2, 2, 1] if batch_norm else [1, 1, 1, 1])
    two = mlp_modules(10, 16, 3, n_hidden=3, split_after=[1], batch_norm=batch_norm, rng=0, fused=True)
    assert [len(m) for m in two] == ([4, 3] if batch_norm else [2, 2])
    nets = [small_net(S.dni(), conditioned=True, batch_norm=batch_norm, fused=f) for f in (False, True)]
    r = np.random.default_rng(1)
    for _ in range(3):
        x, y = r.standard_normal((8, 10)).astype(np.float32), r.integers(0, 3, 8)
        outs = [net.train_step(x, y) for net in nets]
        assert outs[0] == outs[1]
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("schedule", [S.dni(), S.stochastic(0.5, seed=3)], ids=["dni", "stochastic"])
def test_reusing_the_synthesizer_forward_in_its_training_step_changes_no_number(schedule):
    """Interface.train reuses the graph synthetic_gradient built (same h, M unchanged): against a net whose
    interfaces always run M again, every parameter and Adam moment is bit-identical; only the synthesizers' batch-norm
    running statistics (used in eval mode only) were updated once per batch instead of twice."""
    nets = [small_net(schedule, synthesizer="mlp", synth_hidden=(12, 12)) for _ in range(2)]
    for itf in nets[1].interfaces:
        itf._reusable = lambda h, y: None
    r = np.random.default_rng(1)
    for _ in range(4):
        x, y = r.standard_normal((8, 10)).astype(np.float32), r.integers(0, 3, 8)
        assert nets[0].train_step(x, y) == nets[1].train_step(x, y)
    a, b = (net.state_dict() for net in nets)
    running = [k for k in a if k.startswith("synth") and "running" in k]
    assert running and set(a) == set(b)
    for k in a:
        if k not in running:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_load_state_dict_drops_the_kept_synthesizer_predictions():
    """A prediction kept for Interface.train was made at the old parameters: loading a state must drop it."""
    net = small_net()
    for itf in net.interfaces:
        itf.synthetic_gradient(np.ones((16, 16), np.float32))
    assert all(itf._kept is not None for itf in net.interfaces)
    net.load_state_dict(small_net(seed=4).state_dict())
    assert all(itf._kept is None for itf in net.interfaces)


def test_mnist_fcn_has_dni_after_every_hidden_layer():
    net = mnist_fcn(layers=3, hidden=32, synthesizer="mlp", synth_hidden=(64, 64), conditioned=True)
    assert len(net) == 3 and len(net.interfaces) == 2
    assert net.synthesizers[0].hidden == (64, 64) and net.synthesizers[0].conditioned
    assert "interface 1: Synthesizer(cDNI" in repr(net)
    with pytest.raises(ValueError, match="2 synthesizers"):
        DNINet(mlp_modules(10, 8, 3, 2), [Synthesizer(8)])
    with pytest.raises(ValueError, match="unknown synthesizer"):
        mnist_fcn(layers=3, synthesizer="cubic")


def test_train_step_reports_the_batch_and_learns():
    train = blobs(256, 1)
    net = small_net(conditioned=True)
    first = net.eval_step(train.x, train.y)["loss"]
    losses = []
    for epoch in range(6):
        for k in range(0, 256, 32):
            out = net.train_step(train.x[k:k + 32], train.y[k:k + 32])
            assert set(out) == {"loss", "correct", "synth_loss"} and 0 <= out["correct"] <= 32
            losses.append(out["loss"])
    assert net.evaluate(train.x, train.y, batch_size=100)["loss"] < 0.5 * first
    assert np.mean(losses[-8:]) < np.mean(losses[:8])


def test_train_step_refuses_schedules_with_batches_in_flight():
    net = small_net(schedule=S.pipelined())
    with pytest.raises(ValueError, match="in flight"):
        net.train_step(*blobs(8, 0))


def test_state_dict_resumes_exactly_and_set_lr_keeps_the_synthesizer_ratio():
    data = blobs(96, 2)
    batches = [(data.x[k:k + 16], data.y[k:k + 16]) for k in range(0, 96, 16)]
    a = small_net(schedule=S.stochastic(0.5, seed=1), synth_lr=1e-3)
    for x, y in batches[:3]:
        a.train_step(x, y)
    state = a.state_dict()
    assert int(state["dni/batches"]) == 3 and "optim/synth1/m.0" in state
    b = small_net(schedule=S.stochastic(0.5, seed=1), seed=5, synth_lr=1e-3)
    b.load_state_dict(state)
    for x, y in batches[3:]:
        assert a.train_step(x, y) == b.train_step(x, y)
    assert all(np.array_equal(p.data, q.data) for p, q in zip(a.parameters(), b.parameters()))
    a.set_lr(1e-3)
    assert a.optimizers[0].lr == 1e-3 and a.interfaces[0].optimizer.lr == pytest.approx(1e-4)


def test_the_trainer_trains_a_dni_net_and_resumes_bit_identically(tmp_path):
    train, val = blobs(192, 1), blobs(64, 2)

    def trainer(out, steps):
        cfg = override(TrainConfig(), {"steps": steps, "batch_size": 32, "lr": 1e-2, "log_every": 3,
                                       "checkpoint_every": 0, "eval_every": 6, "backend": "numpy"})
        batches = BatchIterator(train.x, train.y, cfg.batch_size, seed=cfg.seed, drop_last=True)
        return Trainer(small_net(conditioned=True), batches, cfg, out, val=val, experiment="dni-blobs", quiet=True)

    straight = trainer(tmp_path / "straight", 12)
    summary = straight.fit()
    assert summary["steps"] == 12 and summary["val_error"] is not None
    assert any("synth_loss" in r for r in straight.records)
    trainer(tmp_path / "split", 5).fit()
    resumed = trainer(tmp_path / "split", 12)
    resumed.fit(resume=True)
    sa, sb = straight.learner.state_dict(), resumed.learner.state_dict()
    assert sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_a_net_without_synthesizers_trains_locked():
    net = DNINet(mlp_modules(10, 8, 3, 2, rng=0), None, schedule=S.locked())
    out = net.train_step(*blobs(16, 0))
    assert set(out) == {"loss", "correct"}
    net = DNINet(mlp_modules(10, 8, 3, 2, rng=0), None)
    with pytest.raises(ValueError, match="no synthesizer"):
        net.train_step(*blobs(16, 0))


def test_oracle_net_is_bound_at_construction():
    net = DNINet(mlp_modules(10, 8, 3, 1, rng=0), [Oracle()])
    assert net.synthesizers[0]._net is net and "Oracle" in repr(net)

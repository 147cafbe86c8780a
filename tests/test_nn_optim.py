"""Modules and optimizers: parameter naming and order, train/eval, batch norm's running statistics, exact state_dict
round trips, SGD and Adam against hand-written NumPy updates, a small MLP that fits its data, and reproducibility
(bit-identical seeded runs; the two backends agree)."""
from __future__ import annotations

import numpy as np
import pytest

from minidni import Tensor, nn, ops, optim, use_backend


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(np.ones(2, dtype=np.float32))
        self.fc1 = nn.Linear(3, 4, rng=0)
        self.act = nn.ReLU()
        self.blocks = [nn.Linear(4, 4, bias=False, rng=1), nn.BatchNorm1d(4)]
        self.fc2 = nn.Linear(4, 2, rng=2)

    def forward(self, x):
        h = self.act(self.fc1(x))
        for b in self.blocks:
            h = b(h)
        return self.fc2(h) * self.scale


def test_parameter_names_and_order():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["scale", "fc1.weight", "fc1.bias", "blocks.0.weight", "blocks.1.weight", "blocks.1.bias",
                     "fc2.weight", "fc2.bias"]
    assert [n for n, _ in net.named_buffers()] == ["blocks.1.running_mean", "blocks.1.running_var"]
    assert net.parameters()[1] is net.fc1.weight
    assert net.num_parameters() == 2 + 12 + 4 + 16 + 4 + 4 + 8 + 2


def test_mlp_layout_and_names():
    model = nn.mlp(4, 16, 3, n_hidden=2, rng=0)
    assert [type(m).__name__ for m in model] == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU",
                                                 "Linear"]
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "1.weight", "1.bias", "3.weight", "4.weight",
                                                        "4.bias", "6.weight", "6.bias"]
    assert model[0].bias is None  # batch norm's shift replaces the bias
    assert model(Tensor(np.zeros((5, 4), np.float32))).shape == (5, 3)
    assert isinstance(model[1:3], nn.Sequential) and model[1:3][0] is model[1]


def test_train_eval_propagate_to_every_module():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    assert len(list(net.modules())) == 6


def test_zero_grad():
    net = Net()
    ops.mean(net(Tensor(np.ones((3, 3), np.float32)))).backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_parameter_is_contiguous_leaf():
    p = nn.Parameter(np.ones((3, 4)).T)
    assert p.is_leaf and p.requires_grad and p.data.flags.c_contiguous


# ---- batch norm ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_running_stats_and_eval(backend, dtype):
    r = np.random.default_rng(0)
    bn = nn.BatchNorm1d(3, momentum=0.2, eps=1e-3, dtype=dtype)
    bn.weight.data[:] = [1.5, -0.5, 2.0]
    bn.bias.data[:] = [0.1, 0.2, -0.3]
    mean, var = np.zeros(3), np.ones(3)
    for _ in range(4):
        x = (r.standard_normal((6, 3)) * [1.0, 2.0, 0.5] + [3.0, -1.0, 0.0]).astype(dtype)
        y = bn(Tensor(x))
        x64 = x.astype(np.float64)
        mu, biased = x64.mean(axis=0), x64.var(axis=0)
        expected = (x64 - mu) / np.sqrt(biased + 1e-3) * [1.5, -0.5, 2.0] + [0.1, 0.2, -0.3]
        tol = 1e-12 if dtype == np.float64 else 1e-5
        np.testing.assert_allclose(y.data, expected, rtol=tol, atol=tol)
        mean = 0.8 * mean + 0.2 * mu
        var = 0.8 * var + 0.2 * x64.var(axis=0, ddof=1)  # running variance is unbiased, as PyTorch
        np.testing.assert_allclose(bn.running_mean, mean, rtol=tol, atol=tol)
        np.testing.assert_allclose(bn.running_var, var, rtol=tol, atol=tol)
    assert bn.running_mean.dtype == dtype
    bn.eval()
    x = r.standard_normal((2, 3)).astype(dtype)
    before = bn.running_mean.copy(), bn.running_var.copy()
    y = bn(Tensor(x))
    expected = (x.astype(np.float64) - mean) / np.sqrt(var + 1e-3) * [1.5, -0.5, 2.0] + [0.1, 0.2, -0.3]
    np.testing.assert_allclose(y.data, expected, rtol=tol, atol=tol)
    np.testing.assert_array_equal(bn.running_mean, before[0])  # eval does not update the statistics
    np.testing.assert_array_equal(bn.running_var, before[1])
    y1 = bn(Tensor(x[:1]))  # eval works on a single row, and each row is normalised independently
    np.testing.assert_array_equal(y1.data, y.data[:1])


# ---- state dicts -------------------------------------------------------------------------------------------------------
def _train(model, x, labels, steps, opt):
    for _ in range(steps):
        opt.zero_grad()
        ops.cross_entropy(model(x), labels).backward()
        opt.step()


def test_state_dict_npz_round_trip_is_exact(tmp_path):
    r = np.random.default_rng(0)
    x, labels = Tensor(r.standard_normal((8, 4)).astype(np.float32)), r.integers(0, 3, 8)
    model = nn.mlp(4, 8, 3, n_hidden=2, rng=0)
    _train(model, x, labels, 3, optim.Adam(model.parameters(), lr=0.01))
    path = tmp_path / "model.npz"
    model.save(path)
    other = nn.mlp(4, 8, 3, n_hidden=2, rng=123)
    params_before = [p.data for p in other.parameters()]
    other.load(path)
    state, loaded = model.state_dict(), other.state_dict()
    assert list(state) == list(loaded)
    for k in state:
        assert loaded[k].dtype == state[k].dtype and loaded[k].shape == state[k].shape
        assert loaded[k].tobytes() == state[k].tobytes(), k  # bit-identical
    assert all(a is p.data for a, p in zip(params_before, other.parameters()))  # loaded in place
    for mode in ("train", "eval"):
        getattr(model, mode)()
        getattr(other, mode)()
        assert model(x).data.tobytes() == other(x).data.tobytes()


def test_state_dict_is_a_copy():
    model = nn.Linear(2, 2, rng=0)
    state = model.state_dict()
    state["weight"][:] = 99
    assert not np.any(model.weight.data == 99)


def test_load_state_dict_missing_and_unexpected_keys():
    model = nn.mlp(4, 8, 3, n_hidden=1, rng=0)
    state = model.state_dict()
    del state["1.running_var"]
    with pytest.raises(KeyError, match=r"missing keys \['1.running_var'\]"):
        model.load_state_dict(state)
    state = model.state_dict()
    state["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(KeyError, match="unexpected keys.*extra.weight"):
        model.load_state_dict(state)
    model.load_state_dict(state, strict=False)  # non-strict ignores the extra key


def test_load_state_dict_shape_and_dtype_mismatch():
    model = nn.mlp(4, 8, 3, n_hidden=1, rng=0)
    state = model.state_dict()
    state["0.weight"] = np.zeros((8, 4), np.float32)
    with pytest.raises(ValueError, match=r"0\.weight.*\(4, 8\).*\(8, 4\)"):
        model.load_state_dict(state)
    state = model.state_dict()
    state["3.bias"] = state["3.bias"].astype(np.float64)
    with pytest.raises(ValueError, match=r"3\.bias.*float32.*float64"):
        model.load_state_dict(state)


def test_refused_state_leaves_the_module_untouched():
    """Every entry is checked before anything is copied: a bad state must not half-load a model."""
    model = nn.mlp(4, 8, 3, n_hidden=1, rng=0)
    before = model.state_dict()
    state = nn.mlp(4, 8, 3, n_hidden=1, rng=1).state_dict()
    state["3.bias"] = np.zeros(5, np.float32)  # comes late in the dict: earlier entries were already fine
    with pytest.raises(ValueError, match=r"3\.bias"):
        model.load_state_dict(state)
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_optimizer_load_state_dict_checks_keys_shapes_and_dtypes():
    params = [nn.Parameter(np.zeros((3, 2))), nn.Parameter(np.zeros(2))]
    opt = optim.Adam(params)
    good = opt.state_dict()
    bad = dict(good, **{"m.0": np.zeros(1)})  # would broadcast silently into (3, 2)
    with pytest.raises(ValueError, match=r"m\.0.*\(3, 2\).*\(1,\)"):
        opt.load_state_dict(bad)
    bad = dict(good, **{"v.1": np.zeros(2, np.float32)})  # would be cast silently
    with pytest.raises(ValueError, match=r"v\.1.*float64.*float32"):
        opt.load_state_dict(bad)
    with pytest.raises(KeyError, match=r"missing keys \['m.0', 'm.1', 'v.0', 'v.1'\].*unexpected keys \['buf.0', 'buf.1'\]"):
        opt.load_state_dict(optim.SGD(params, momentum=0.9).state_dict())  # another optimizer's state
    with pytest.raises(KeyError, match=r"unexpected keys \['m.2'\]"):
        opt.load_state_dict(dict(good, **{"m.2": np.zeros(2)}))  # a state for more parameters
    assert opt.t == 0 and all(not m.any() for m in opt.m)  # nothing was loaded by the refused calls


# ---- optimizers against hand-written NumPy -------------------------------------------------------------------------------
def _quadratic_problem(r):
    """A float64 linear regression: two parameters, grads from the engine."""
    w = nn.Parameter(r.standard_normal((3, 2)))
    b = nn.Parameter(r.standard_normal(2))
    x, y = Tensor(r.standard_normal((5, 3))), Tensor(r.standard_normal((5, 2)))
    return [w, b], lambda: ops.mse_loss(ops.linear(x, w, b), y)


def _hand_sgd(p, g, state, lr, momentum, wd, nesterov):
    g = g + wd * p
    if momentum:
        state["buf"] = g.copy() if "buf" not in state else momentum * state["buf"] + g
        g = g + momentum * state["buf"] if nesterov else state["buf"]
    return p - lr * g


def _hand_adam(p, g, state, t, lr, b1, b2, eps, wd):
    g = g + wd * p
    state["m"] = b1 * state.get("m", 0) + (1 - b1) * g
    state["v"] = b2 * state.get("v", 0) + (1 - b2) * g * g
    m_hat, v_hat = state["m"] / (1 - b1 ** t), state["v"] / (1 - b2 ** t)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps)


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.0),
                                                  (0.5, False, 0.01), (0.0, False, 0.1)])
def test_sgd_matches_numpy(backend, momentum, nesterov, wd):
    params, loss_fn = _quadratic_problem(np.random.default_rng(1))
    opt = optim.SGD(params, lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    hand = [p.data.copy() for p in params]
    states = [{} for _ in params]
    for _ in range(6):
        opt.zero_grad()
        loss_fn().backward()
        grads = [p.grad.copy() for p in params]
        opt.step()
        hand = [_hand_sgd(h, g, s, 0.05, momentum, wd, nesterov) for h, g, s in zip(hand, grads, states)]
        for p, h in zip(params, hand):
            np.testing.assert_allclose(p.data, h, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_adam_matches_numpy(backend, wd):
    params, loss_fn = _quadratic_problem(np.random.default_rng(2))
    opt = optim.Adam(params, lr=0.02, betas=(0.8, 0.99), eps=1e-7, weight_decay=wd)
    hand = [p.data.copy() for p in params]
    states = [{} for _ in params]
    for t in range(1, 8):
        opt.zero_grad()
        loss_fn().backward()
        grads = [p.grad.copy() for p in params]
        opt.step()
        hand = [_hand_adam(h, g, s, t, 0.02, 0.8, 0.99, 1e-7, wd) for h, g, s in zip(hand, grads, states)]
        for p, h in zip(params, hand):
            np.testing.assert_allclose(p.data, h, rtol=1e-11, atol=1e-13)
    assert opt.t == 7


def test_optimizer_skips_parameters_without_grad(backend):
    a, b = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2))
    opt = optim.Adam([a, b], lr=0.1)
    (a * 2.0).sum().backward()
    opt.step()
    assert np.all(a.data < 1) and np.array_equal(b.data, np.ones(2))


def test_adam_counts_steps_per_parameter(backend):
    """A parameter without a gradient is skipped and its step count stays; when it joins, its bias correction starts
    at its own first step (the hand-written Adam, given each parameter's own t, is the oracle)."""
    r = np.random.default_rng(6)
    w, b = nn.Parameter(r.standard_normal((3, 2))), nn.Parameter(r.standard_normal(2))
    x, y = Tensor(r.standard_normal((5, 3))), Tensor(r.standard_normal((5, 2)))
    opt = optim.Adam([w, b], lr=0.02, betas=(0.8, 0.99), eps=1e-7)
    hand, states, counts = [w.data.copy(), b.data.copy()], [{}, {}], [0, 0]
    for step in range(7):
        use_b = step >= 3
        opt.zero_grad()
        out = ops.matmul(x, w)
        ops.mse_loss(out + b if use_b else out, y).backward()
        grads = [p.grad.copy() if p.grad is not None else None for p in (w, b)]
        opt.step()
        for k, g in enumerate(grads):
            if g is not None:
                counts[k] += 1
                hand[k] = _hand_adam(hand[k], g, states[k], counts[k], 0.02, 0.8, 0.99, 1e-7, 0.0)
        assert opt.steps == counts and opt.t == step + 1
        for p, h in zip((w, b), hand):
            np.testing.assert_allclose(p.data, h, rtol=1e-11, atol=1e-13)
    assert opt.steps == [7, 4]
    np.testing.assert_array_equal(opt.state_dict()["steps"], np.array([7, 4]))


def test_adam_state_dict_keeps_per_parameter_steps_and_reads_old_states():
    a, b = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(3))
    opt = optim.Adam([a, b])
    opt.steps, opt.t = [5, 2], 5
    state = opt.state_dict()
    opt2 = optim.Adam([nn.Parameter(np.ones(2)), nn.Parameter(np.ones(3))])
    opt2.load_state_dict(state)
    assert opt2.steps == [5, 2] and opt2.t == 5
    old = {k: v for k, v in state.items() if k != "steps"}   # saved before per-parameter counting: one global t
    opt2.load_state_dict(old)
    assert opt2.steps == [5, 5]
    with pytest.raises(ValueError, match=r"steps must hold one count >= 0 per parameter, shape \(2,\), got shape "
                                         r"\(3,\)"):
        opt2.load_state_dict(dict(state, steps=np.array([1, 2, 3])))
    assert opt2.steps == [5, 5]                                # a refused state changes nothing


def test_optimizer_argument_checks():
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="does not require grad"):
        optim.SGD([Tensor(np.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([nn.Parameter(np.ones(2))], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([nn.Parameter(np.ones(2))], betas=(1.0, 0.999))


@pytest.mark.parametrize("make_opt", [lambda ps: optim.Adam(ps, lr=0.01),
                                      lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True)],
                         ids=["adam", "sgd"])
def test_optimizer_state_dict_round_trip_resumes_bit_identically(tmp_path, make_opt):
    r = np.random.default_rng(3)
    x, labels = Tensor(r.standard_normal((8, 4)).astype(np.float32)), r.integers(0, 3, 8)
    model = nn.mlp(4, 8, 3, n_hidden=1, rng=0)
    opt = make_opt(model.parameters())
    _train(model, x, labels, 3, opt)
    model.save(tmp_path / "model.npz")
    np.savez(tmp_path / "opt.npz", **opt.state_dict())
    _train(model, x, labels, 4, opt)  # the uninterrupted run

    resumed = nn.mlp(4, 8, 3, n_hidden=1, rng=99).load(tmp_path / "model.npz")
    opt2 = make_opt(resumed.parameters())
    with np.load(tmp_path / "opt.npz") as f:
        opt2.load_state_dict({k: f[k] for k in f.files})
    assert opt2.t == 3 and opt2.lr == opt.lr
    _train(resumed, x, labels, 4, opt2)
    for (name, a), b in zip(model.named_parameters(), resumed.parameters()):
        assert a.data.tobytes() == b.data.tobytes(), name


# ---- training end to end ---------------------------------------------------------------------------------------------------
def _dataset(seed, n=32, dtype=np.float32):
    r = np.random.default_rng(seed)
    return Tensor(r.standard_normal((n, 4)).astype(dtype)), r.integers(0, 3, n)


def test_small_mlp_fits_a_tiny_dataset(backend):
    x, labels = _dataset(0)
    model = nn.mlp(4, 16, 3, n_hidden=2, rng=0)
    opt = optim.Adam(model.parameters(), lr=0.02)
    for _ in range(400):
        opt.zero_grad()
        loss = ops.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()
    assert loss.item() < 1e-3
    model.eval()
    assert np.array_equal(model(x).data.argmax(axis=1), labels)


def _run(backend, seed, steps, dtype=np.float32):
    with use_backend(backend):
        x, labels = _dataset(seed, dtype=dtype)
        model = nn.mlp(4, 16, 3, n_hidden=2, rng=seed, dtype=dtype)
        opt = optim.Adam(model.parameters(), lr=0.01)
        _train(model, x, labels, steps, opt)
        return model.state_dict()


def test_seeded_runs_are_bit_identical():
    a, b = _run("numba", 7, 15), _run("numba", 7, 15)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    c = _run("numba", 8, 15)
    assert not np.array_equal(a["0.weight"], c["0.weight"])


def test_manual_seed_makes_default_initialisation_reproducible():
    nn.manual_seed(5)
    a = nn.mlp(4, 8, 3, n_hidden=1).state_dict()
    nn.manual_seed(5)
    b = nn.mlp(4, 8, 3, n_hidden=1).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_backends_agree_after_training_steps():
    a, b = _run("numba", 11, 5, dtype=np.float64), _run("numpy", 11, 5, dtype=np.float64)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-9, atol=1e-11, err_msg=k)


def test_mlp_takes_a_sequence_of_hidden_widths():
    from minidni import nn

    net = nn.mlp(6, (5, 4), 3, batch_norm=False, rng=0)
    assert [p.shape for p in net.parameters()] == [(6, 5), (5,), (5, 4), (4,), (4, 3), (3,)]
    with pytest.raises(ValueError, match="not both"):
        nn.mlp(6, (5, 4), 3, n_hidden=2)
    with pytest.raises(ValueError, match="n_hidden"):
        nn.mlp(6, 5, 3)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["no_bn", "bn"])
def test_fused_mlp_trains_bit_identically_to_the_unfused_one(batch_norm, backend):
    """mlp(fused=True) swaps Linear -> [BatchNorm1d ->] ReLU for the fused modules: same init, same numbers."""
    r = np.random.default_rng(0)
    x, y = r.standard_normal((32, 12)).astype(np.float32), r.integers(0, 4, 32)
    nets = [nn.mlp(12, 8, 4, n_hidden=3, batch_norm=batch_norm, rng=1, fused=f) for f in (False, True)]
    kinds = [type(m).__name__ for m in nets[1]]
    assert kinds == (["Linear", "BatchNormReLU"] * 3 if batch_norm else ["LinearReLU"] * 3) + ["Linear"]
    opts = [optim.Adam(n.parameters(), lr=1e-2) for n in nets]
    for _ in range(4):
        for net, opt in zip(nets, opts):
            loss = ops.cross_entropy(net(Tensor(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    for (_, a), (_, b) in zip(nets[0].named_buffers(), nets[1].named_buffers()):
        np.testing.assert_array_equal(a, b)
    for net in nets:
        net.eval()
    np.testing.assert_array_equal(nets[0](Tensor(x)).data, nets[1](Tensor(x)).data)   # running statistics agree too


def test_fused_mlp_needs_relu():
    with pytest.raises(ValueError, match="fused=True.*tanh"):
        nn.mlp(4, 3, 2, n_hidden=1, activation="tanh", fused=True)

"""The same computations in minidni and in PyTorch (float64): values and gradients agree. Skipped without torch."""
from __future__ import annotations

import numpy as np
import pytest

from minidni import Tensor, nn, ops, optim

torch = pytest.importorskip("torch")
F = torch.nn.functional


def both(*arrays):
    """minidni leaves and torch leaves holding the same float64 values."""
    ours = [Tensor(np.array(a, dtype=np.float64), requires_grad=True) for a in arrays]
    theirs = [torch.tensor(np.array(a, dtype=np.float64), requires_grad=True) for a in arrays]
    return ours, theirs


def check(ours_out, theirs_out, ours, theirs, upstream):
    np.testing.assert_allclose(ours_out.data, theirs_out.detach().numpy(), rtol=1e-12, atol=1e-13)
    ours_out.backward(upstream)
    theirs_out.backward(torch.tensor(upstream))
    for k, (a, b) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(a.grad, b.grad.numpy(), rtol=1e-11, atol=1e-13, err_msg=f"gradient of input {k}")


@pytest.mark.parametrize("bias", [True, False])
def test_linear(backend, bias):
    r = np.random.default_rng(0)
    x, W, b = r.standard_normal((5, 3)), r.standard_normal((3, 4)), r.standard_normal(4)
    ours, theirs = both(x, W, b) if bias else both(x, W)
    y = ops.linear(*ours)
    yt = F.linear(theirs[0], theirs[1].T, theirs[2] if bias else None)  # torch stores W as (out, in)
    check(y, yt, ours, theirs, r.standard_normal((5, 4)))


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm(backend, training):
    r = np.random.default_rng(1)
    x, g, b = r.standard_normal((6, 3)) * 2 + 1, r.standard_normal(3), r.standard_normal(3)
    rm, rv = r.standard_normal(3), r.uniform(0.5, 2, 3)
    ours, theirs = both(x, g, b)
    rm_t, rv_t = torch.tensor(rm.copy()), torch.tensor(rv.copy())
    rm_o, rv_o = rm.copy(), rv.copy()
    y = ops.batch_norm(*ours, rm_o, rv_o, training=training, momentum=0.1, eps=1e-5)
    yt = F.batch_norm(theirs[0], rm_t, rv_t, theirs[1], theirs[2], training=training, momentum=0.1, eps=1e-5)
    check(y, yt, ours, theirs, r.standard_normal((6, 3)))
    np.testing.assert_allclose(rm_o, rm_t.numpy(), rtol=1e-12)  # running statistics move the same way
    np.testing.assert_allclose(rv_o, rv_t.numpy(), rtol=1e-12)


def test_cross_entropy(backend):
    r = np.random.default_rng(2)
    z, labels = 3 * r.standard_normal((7, 5)), r.integers(0, 5, 7)
    ours, theirs = both(z)
    check(ops.cross_entropy(ours[0], labels), F.cross_entropy(theirs[0], torch.tensor(labels)), ours, theirs,
          np.array(1.7))


def test_mse_loss(backend):
    r = np.random.default_rng(3)
    ours, theirs = both(r.standard_normal((4, 3)), r.standard_normal((4, 3)))
    check(ops.mse_loss(*ours), F.mse_loss(*theirs), ours, theirs, np.array(0.3))


def test_mlp_training_steps_match_torch(backend):
    """Five Adam steps of mlp(4, 8, 3, n_hidden=1) in both libraries, from the same initial weights."""
    r = np.random.default_rng(4)
    x, labels = r.standard_normal((10, 4)), r.integers(0, 3, 10)
    model = nn.mlp(4, 8, 3, n_hidden=1, dtype=np.float64, rng=0)
    state = model.state_dict()
    tmodel = torch.nn.Sequential(torch.nn.Linear(4, 8, bias=False), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                 torch.nn.Linear(8, 3)).double()
    with torch.no_grad():
        tmodel[0].weight.copy_(torch.tensor(state["0.weight"].T))
        tmodel[3].weight.copy_(torch.tensor(state["3.weight"].T))
        tmodel[3].bias.copy_(torch.tensor(state["3.bias"]))
    opt, topt = optim.Adam(model.parameters(), lr=0.01), torch.optim.Adam(tmodel.parameters(), lr=0.01)
    xt, lt = torch.tensor(x), torch.tensor(labels)
    for _ in range(5):
        opt.zero_grad()
        ops.cross_entropy(model(Tensor(x)), labels).backward()
        opt.step()
        topt.zero_grad()
        F.cross_entropy(tmodel(xt), lt).backward()
        topt.step()
    state = model.state_dict()
    pairs = {"0.weight": tmodel[0].weight.T, "1.weight": tmodel[1].weight, "1.bias": tmodel[1].bias,
             "1.running_mean": tmodel[1].running_mean, "1.running_var": tmodel[1].running_var,
             "3.weight": tmodel[3].weight.T, "3.bias": tmodel[3].bias}
    for k, v in pairs.items():
        np.testing.assert_allclose(state[k], v.detach().numpy(), rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_adam_counts_steps_per_parameter_like_torch(backend, wd):
    """Parameter b has no gradient for its first 4 steps (the Adam step skips it, as torch does): its first update
    must use the bias correction of step 1, not of step 5. Before per-parameter counting it was 42% off torch."""
    r = np.random.default_rng(5)
    w0, b0 = r.standard_normal((3, 2)), r.standard_normal(2)
    x, y = r.standard_normal((6, 3)), r.standard_normal((6, 2))
    w, b = nn.Parameter(w0.copy()), nn.Parameter(b0.copy())
    tw, tb = torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    opt = optim.Adam([w, b], lr=0.05, betas=(0.9, 0.999), weight_decay=wd)
    topt = torch.optim.Adam([tw, tb], lr=0.05, betas=(0.9, 0.999), weight_decay=wd)
    for step in range(9):
        use_b = step >= 4
        opt.zero_grad()
        out = ops.matmul(Tensor(x), w)
        ops.mse_loss(out + b if use_b else out, Tensor(y)).backward()
        opt.step()
        topt.zero_grad()
        tout = torch.tensor(x) @ tw
        F.mse_loss(tout + tb if use_b else tout, torch.tensor(y)).backward()
        topt.step()
        assert (b.grad is None) == (tb.grad is None) == (not use_b)
        np.testing.assert_allclose(w.data, tw.detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=f"w, step {step}")
        np.testing.assert_allclose(b.data, tb.detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=f"b, step {step}")
    assert opt.steps == [int(topt.state[tw]["step"]), int(topt.state[tb]["step"])] == [9, 5]

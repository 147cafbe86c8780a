"""The LSTM: `ops.lstm_cell` (one step), `ops.lstm` (a window in one op), `nn.LSTMCell`, `nn.LSTM` and their kernels.

Float64 gradient checks through several time steps with respect to every input (x at every step, the initial state
h0, c0, W_x, W_h, b), the <u, J v> check, the two variants against each other, the Numba kernels against the NumPy
reference, PyTorch's `nn.LSTM` with the weights copied (skipped without torch), and the error messages.
"""
from __future__ import annotations

import numpy as np
import pytest

from helpers import assert_close, gradcheck, jvp_vjp_check, with_layout
from minidni import Tensor, kernels, nn, ops
from minidni.kernels import reference

T, B, I, H = 4, 2, 3, 2


def _inputs(r, T=T, B=B, I=I, H=H, dtype=np.float64):
    return [r.standard_normal(s).astype(dtype) for s in ((T, B, I), (B, H), (B, H), (I, 4 * H), (H, 4 * H), (4 * H,))]


def _window_all(x, h0, c0, W_x, W_h, b):
    """Every result of a window as one tensor (T + 1, B, H): h_1..h_T, then c_T."""
    outputs, (h, c) = ops.lstm(x, h0, c0, W_x, W_h, b)
    return ops.concat([ops.reshape(o, (1,) + o.shape) for o in outputs + [c]], axis=0)


def _cells_all(x, h0, c0, W_x, W_h, b):
    """The same through T `lstm_cell` steps."""
    h, c, outs = h0, c0, []
    for t in range(x.shape[0]):
        h, c = ops.lstm_cell(x[t], h, c, W_x, W_h, b)
        outs.append(h)
    return ops.concat([ops.reshape(o, (1,) + o.shape) for o in outs + [c]], axis=0)


# ---- gradients ----------------------------------------------------------------------------------------------------
def test_lstm_cell_gradcheck(backend):
    r = np.random.default_rng(0)
    x, h, c, W_x, W_h, b = _inputs(r)
    gradcheck(lambda *a: ops.concat(list(ops.lstm_cell(*a)), axis=1), [x[0], h, c, W_x, W_h, b])


@pytest.mark.parametrize("fn", [_window_all, _cells_all], ids=["lstm", "lstm_cell-loop"])
def test_window_gradcheck_through_time(backend, fn):
    """The full Jacobian of h_1..h_T and c_T with respect to x (every step), h0, c0, W_x, W_h and b."""
    r = np.random.default_rng(1)
    gradcheck(fn, _inputs(r))


@pytest.mark.parametrize("fn", [_window_all, _cells_all], ids=["lstm", "lstm_cell-loop"])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_window_jvp_vjp(backend, fn, layout):
    r = np.random.default_rng(2)
    inputs = [with_layout(a, layout) for a in _inputs(r, T=6, B=3, I=4, H=5)]
    jvp_vjp_check(fn, inputs, r)


def test_gradient_only_at_the_final_state(backend):
    """A gradient injected at (h_T, c_T) alone (the DNI boundary) reaches h0, c0 and the weights: <u, J v> check."""
    r = np.random.default_rng(3)

    def final_state(*a):
        _, (h, c) = ops.lstm(*a)
        return ops.concat([h, c], axis=1)

    jvp_vjp_check(final_state, _inputs(r, T=5), r)


def test_some_outputs_unused_and_retain_graph(backend):
    """A loss on a few outputs only; backward twice with retain_graph adds up, exactly as two separate graphs do."""
    r = np.random.default_rng(4)
    arrays = _inputs(r)
    grads = []
    for twice in (False, True):
        ts = [Tensor(a, requires_grad=True) for a in arrays]
        outputs, (h, c) = ops.lstm(*ts)
        loss = (outputs[1] * outputs[1]).sum() + (c * 2.0).sum()
        loss.backward(retain_graph=twice)
        if twice:
            loss.backward()
        grads.append([t.grad for t in ts])
    for once, twice in zip(*grads):
        assert_close(twice, 2 * once, np.float64)


# ---- the two variants, the modules --------------------------------------------------------------------------------
def test_sequence_op_equals_cell_loop(backend):
    """ops.lstm and T lstm_cell steps: the same values and gradients (float32, the training dtype)."""
    r = np.random.default_rng(5)
    arrays = _inputs(r, T=5, B=4, I=3, H=6, dtype=np.float32)
    u = r.standard_normal((6, 4, 6)).astype(np.float32)
    results = []
    for fn in (_window_all, _cells_all):
        ts = [Tensor(a, requires_grad=True) for a in arrays]
        out = fn(*ts)
        out.backward(u)
        results.append([out.data] + [t.grad for t in ts])
    for k, (a, b) in enumerate(zip(*results)):
        assert_close(a, b, np.float32, what=f"result {k}")


@pytest.mark.parametrize("per_step", [False, True])
def test_nn_lstm_carries_state_and_matches_cell(backend, per_step):
    """nn.LSTM over two windows with the state carried (detached) equals nn.LSTMCell stepped by hand; x as a
    (T, B, I) Tensor and as a list of (B, I) Tensors give the same numbers."""
    r = np.random.default_rng(6)
    lstm = nn.LSTM(3, 5, rng=0, per_step=per_step)
    cell = nn.LSTMCell(3, 5, rng=0)
    for name in ("W_x", "W_h", "b"):
        assert np.array_equal(getattr(lstm, name).data, getattr(cell, name).data)
    assert [n for n, _ in lstm.named_parameters()] == ["W_x", "W_h", "b"]
    xs = r.standard_normal((2, 4, 2, 3)).astype(np.float32)   # 2 windows of T = 4
    state, cstate = None, None
    for w in range(2):
        outputs, (h, c) = lstm(Tensor(xs[w]), state)
        listed, (h2, _) = lstm([Tensor(s) for s in xs[w]], state)
        assert len(outputs) == 4 and outputs[-1] is h and np.array_equal(h.data, h2.data)
        for t in range(4):
            cstate = cell(Tensor(xs[w, t]), cstate)
            assert_close(outputs[t].data, cstate[0].data, np.float32)
            assert_close(listed[t].data, cstate[0].data, np.float32)
        assert_close(c.data, cstate[1].data, np.float32)
        state = (h.detach(), c.detach())


def test_initial_state_gradient_is_the_window_gradient(backend):
    """h0, c0 given as leaves with requires_grad=True get the gradient reaching the window's start (the bootstrapped
    DNI target), equal to the cell loop's."""
    r = np.random.default_rng(7)
    x = Tensor(r.standard_normal((3, 2, 4)))
    grads = []
    for per_step in (False, True):
        lstm = nn.LSTM(4, 3, rng=1, dtype=np.float64, per_step=per_step)
        h0 = Tensor(r.standard_normal((2, 3)) * 0 + 0.5, requires_grad=True)
        c0 = Tensor(np.full((2, 3), -0.3), requires_grad=True)
        outputs, (h, c) = lstm(x, (h0, c0))
        loss = sum((o * o).sum() for o in outputs) + (c * c).sum()
        loss.backward()
        grads.append((h0.grad, c0.grad, lstm.W_h.grad))
        assert x.grad is None   # x did not ask for a gradient
    for a, b in zip(*grads):
        assert_close(a, b, np.float64)


# ---- kernels: Numba against the NumPy reference ------------------------------------------------------------------
@pytest.mark.parametrize("version", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_gate_kernels_numba_match_reference(dtype, layout, version):
    """Every version of the Numba kernels (1: the plain loop, 2: transcendentals by NumPy, 3: float32 with a rational
    tanh, 4: version 3 with the rows split over the cores) against the reference."""
    from minidni.kernels import cpu

    if version in (3, 4) and dtype == np.float64:
        pytest.skip("versions 3 and 4 are float32 only")

    r = np.random.default_rng(8)
    b_, h_ = 5, 7
    zx, zh = (with_layout(3 * r.standard_normal((b_, 4 * h_)).astype(dtype), layout) for _ in range(2))
    bias = r.standard_normal(4 * h_).astype(dtype)
    c = with_layout(r.standard_normal((b_, h_)).astype(dtype), layout)
    dh, dc = (with_layout(r.standard_normal((b_, h_)).astype(dtype), layout) for _ in range(2))
    want = reference.lstm_gates_forward(zx, zh, bias, c)
    got = cpu.lstm_gates_forward(zx, zh, bias, c, _version=version)
    for name, a, e in zip(("h", "c", "gates"), got, want):
        assert a.dtype == dtype
        assert_close(a, e, dtype, what=f"forward {name}")
    want_b = reference.lstm_gates_backward(want[2], c, want[1], dh, dc)
    got_b = cpu.lstm_gates_backward(want[2], c, want[1], dh, dc, _version=version)
    for name, a, e in zip(("dz", "dc_prev"), got_b, want_b):
        assert a.dtype == dtype
        assert_close(a, e, dtype, what=f"backward {name}")


def test_gate_kernels_v4_split_over_rows_is_v3_bit_for_bit(monkeypatch):
    """Version 4 with the split forced (every size splits) on one and on two BLAS threads (= workers), odd row counts
    included: each row is computed by version 3's loop, so the bits are version 3's."""
    from threadpoolctl import threadpool_limits

    from minidni.kernels import cpu

    monkeypatch.setattr(cpu, "LSTM_SPLIT_MIN", 1)
    r = np.random.default_rng(9)
    for b_, h_ in ((1, 3), (5, 7), (64, 16)):
        zx, zh = (3 * r.standard_normal((b_, 4 * h_)).astype(np.float32) for _ in range(2))
        bias = r.standard_normal(4 * h_).astype(np.float32)
        c, dh, dc = (r.standard_normal((b_, h_)).astype(np.float32) for _ in range(3))
        want = cpu.lstm_gates_forward(zx, zh, bias, c, _version=3)
        want_b = cpu.lstm_gates_backward(want[2], c, want[1], dh, dc, _version=3)
        for threads in (1, 2):
            with threadpool_limits(threads, user_api="blas"):
                got = cpu.lstm_gates_forward(zx, zh, bias, c, _version=4)
                got_b = cpu.lstm_gates_backward(want[2], c, want[1], dh, dc, _version=4)
            for a, e in zip(got + got_b, want + want_b):
                np.testing.assert_array_equal(a, e)


def test_rational_tanh_is_float32_accurate():
    """Version 3's tanh: within 3.6e-7 of the exact tanh everywhere (float32 rounding near 1 is 6e-8), odd, and
    saturated (+-1 to that accuracy) beyond the clamp."""
    from minidni.kernels import cpu

    x = np.concatenate([np.linspace(-12, 12, 400_001), [-1e30, -50, 0.0, 1e-30, 50, 1e30]]).astype(np.float32)
    y = np.empty_like(x)
    cpu._tanh32_(x, y)
    exact = np.tanh(x.astype(np.float64))
    assert y.dtype == np.float32 and np.abs(y - exact).max() < 3.6e-7
    y_neg = np.empty_like(x)
    cpu._tanh32_(-x, y_neg)
    assert np.array_equal(y, -y_neg) and (y[x == 0] == 0).all()
    assert np.isfinite(y).all() and np.abs(y).max() <= 1


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
def test_gate_kernels_in_place(backend_name):
    """The sequence op writes the gates over zx and dc_prev over dc: the kernels allow exactly that aliasing."""
    r = np.random.default_rng(9)
    zx, zh = 2 * r.standard_normal((3, 8)), r.standard_normal((3, 8))
    bias = r.standard_normal(8)
    c, dh, dc = (r.standard_normal((3, 2)) for _ in range(3))
    h_new, c_new, gates = reference.lstm_gates_forward(zx, zh, bias, c)
    dz, dc_prev = reference.lstm_gates_backward(gates, c, c_new, dh, dc)
    with kernels.use_backend(backend_name):
        k = kernels.active
        buf, hb, cb = zx.copy(), np.empty((3, 2)), np.empty((3, 2))
        k.lstm_gates_forward(buf, zh, bias, c, out=(hb, cb, buf))
        dcb, dzb = dc.copy(), np.empty((3, 8))
        k.lstm_gates_backward(gates, c, c_new, dh, dcb, out=(dzb, dcb))
    for a, e in ((hb, h_new), (cb, c_new), (buf, gates), (dzb, dz), (dcb, dc_prev)):
        assert_close(a, e, np.float64)


def test_window_backend_parity():
    """The whole window op on both backends: the same values and gradients (float32)."""
    r = np.random.default_rng(10)
    arrays = _inputs(r, T=3, B=4, I=3, H=5, dtype=np.float32)
    results = {}
    for name in ("numpy", "numba"):
        with kernels.use_backend(name):
            ts = [Tensor(a, requires_grad=True) for a in arrays]
            out = _window_all(*ts)
            out.backward(np.ones(out.shape, np.float32))
            results[name] = [out.data] + [t.grad for t in ts]
    for k, (a, b) in enumerate(zip(results["numpy"], results["numba"])):
        assert_close(a, b, np.float32, what=f"result {k}")


def test_large_pre_activations_saturate_without_overflow(backend):
    """z of +-100 (float32): the gates saturate to 0 / 1 / +-1 with no NaN and no overflow warning."""
    z = np.tile(np.array([[100.0, -100.0]], np.float32), (2, 4))   # (2, 8): H = 2
    c = np.ones((2, 2), np.float32)
    with np.errstate(over="raise"):
        h, c_new, gates = kernels.active.lstm_gates_forward(z, np.zeros_like(z), np.zeros(8, np.float32), c)
    assert np.isfinite(h).all() and np.isfinite(gates).all()
    np.testing.assert_allclose(gates[0], [1, 0, 1, 0, 1, -1, 1, 0], rtol=0, atol=1e-30)   # sigmoid(-100) = 4e-44


# ---- errors --------------------------------------------------------------------------------------------------
def test_errors_name_the_op_and_the_shapes():
    r = np.random.default_rng(11)
    x, h, c, W_x, W_h, b = _inputs(r, dtype=np.float32)
    with pytest.raises(ValueError, match=r"lstm: W_x must have shape \(3, 8\)"):
        ops.lstm(x, h, c, W_x[:2], W_h, b)
    with pytest.raises(ValueError, match=r"lstm: x must be 3-D \(T, B, I\)"):
        ops.lstm(x[0], h, c, W_x, W_h, b)
    with pytest.raises(ValueError, match=r"lstm_cell: x must be 2-D \(B, I\)"):
        ops.lstm_cell(x, h, c, W_x, W_h, b)
    with pytest.raises(ValueError, match=r"lstm_cell: c must have shape \(2, 2\)"):
        ops.lstm_cell(x[0], h, c[:1], W_x, W_h, b)
    with pytest.raises(ValueError, match=r"lstm_cell: b must have shape \(8,\)"):
        ops.lstm_cell(x[0], h, c, W_x, W_h, b[:4])
    with pytest.raises(TypeError, match=r"lstm_cell \(h vs x\): mixed dtypes float32 and float64"):
        ops.lstm_cell(x[0], h.astype(np.float64), c, W_x, W_h, b)
    with pytest.raises(TypeError, match=r"lstm: x must be float32 or float64, got int64"):
        ops.lstm(np.zeros((2, 2, 3), np.int64), h, c, W_x, W_h, b)
    with pytest.raises(ValueError, match=r"lstm: x has no time steps"):
        ops.lstm(x[:0], h, c, W_x, W_h, b)
    with pytest.raises(ValueError, match=r"LSTM\(3, 0\): hidden_size must be a positive integer"):
        nn.LSTM(3, 0)
    with pytest.raises(ValueError, match=r"LSTMCell\(2.5, 4\): input_size must be a positive integer"):
        nn.LSTMCell(2.5, 4)
    lstm = nn.LSTM(3, 2, rng=0)
    with pytest.raises(ValueError, match=r"LSTM: x must be \(T, B, I\)"):
        lstm(Tensor(x[0]))
    with pytest.raises(TypeError, match=r"LSTM: state must be a pair"):
        lstm(Tensor(x), h)
    with pytest.raises(ValueError, match=r"LSTM: the steps of x must all have one shape"):
        lstm([Tensor(x[0]), Tensor(x[0, :1])])


# ---- PyTorch's nn.LSTM, weights copied, float64 ------------------------------------------------------------------
@pytest.mark.parametrize("per_step", [False, True])
def test_matches_torch_nn_lstm(backend, per_step):
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(12)
    t_, b_, i_, h_ = 5, 3, 4, 6
    ours = nn.LSTM(i_, h_, rng=0, dtype=np.float64, per_step=per_step)
    theirs = torch.nn.LSTM(i_, h_).double()
    with torch.no_grad():   # torch keeps W (4H, I) for gates i, f, g, o and two biases that add up
        theirs.weight_ih_l0.copy_(torch.tensor(ours.W_x.data.T))
        theirs.weight_hh_l0.copy_(torch.tensor(ours.W_h.data.T))
        theirs.bias_ih_l0.copy_(torch.tensor(ours.b.data * 0.25))
        theirs.bias_hh_l0.copy_(torch.tensor(ours.b.data * 0.75))
    x, h0, c0 = r.standard_normal((t_, b_, i_)), r.standard_normal((b_, h_)), r.standard_normal((b_, h_))
    u_out, u_h, u_c = r.standard_normal((t_, b_, h_)), r.standard_normal((b_, h_)), r.standard_normal((b_, h_))

    xo, ho, co = (Tensor(a.copy(), requires_grad=True) for a in (x, h0, c0))
    outputs, (h, c) = ours(xo, (ho, co))
    loss = sum((o * u_out[t]).sum() for t, o in enumerate(outputs)) + (h * u_h).sum() + (c * u_c).sum()
    loss.backward()

    xt, ht, ct = (torch.tensor(a.copy(), requires_grad=True) for a in (x, h0, c0))
    out_t, (hn, cn) = theirs(xt, (ht[None], ct[None]))
    loss_t = (out_t * torch.tensor(u_out)).sum() + (hn[0] * torch.tensor(u_h)).sum() + (cn[0] * torch.tensor(u_c)).sum()
    loss_t.backward()

    tol = dict(rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(np.stack([o.data for o in outputs]), out_t.detach().numpy(), **tol)
    np.testing.assert_allclose(c.data, cn[0].detach().numpy(), **tol)
    for name, a, e in (("x", xo.grad, xt.grad), ("h0", ho.grad, ht.grad), ("c0", co.grad, ct.grad),
                       ("W_x", ours.W_x.grad, theirs.weight_ih_l0.grad.T), ("W_h", ours.W_h.grad,
                       theirs.weight_hh_l0.grad.T), ("b", ours.b.grad, theirs.bias_ih_l0.grad),
                       ("b (hh)", ours.b.grad, theirs.bias_hh_l0.grad)):
        np.testing.assert_allclose(a, e.numpy(), err_msg=f"gradient of {name}", **tol)

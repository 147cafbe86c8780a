"""Temporal DNI pinned down (Jaderberg et al. 2016, arXiv v1 Sec. 3.2, appendix A.3): truncated BPTT with a synthetic
gradient at each window boundary, the bootstrapped target, Aux, and the schedule as data.

  * a synthesizer that always says 0 gives plain truncated BPTT, bit for bit;
  * an oracle that returns the exact future gradient (full BPTT over the episode) with scale 1 gives full BPTT's
    parameter gradients, and its bootstrapped targets are the true gradients at the window starts;
  * the bootstrapped target equals a hand computation on a tiny core;
  * the Aux target is the synthetic gradient used T steps later.

The core is nn.LSTM (any module with state (h, c) and the same call would do: see HandCore below).
Tiny shapes: the whole file runs in seconds.
"""
import numpy as np
import pytest

from minidni import nn, ops
from minidni.autograd import no_grad
from minidni.dni.aux import AuxHead
from minidni.dni.bits import bit_errors, bit_loss, bits_per_step
from minidni.dni.boundary import synthesizer_loss
from minidni.dni.recurrent_runner import RecurrentLearner
from minidni.dni.recurrent_synthesizer import RecurrentOracle, RecurrentSynthesizer
from minidni.dni.tbptt import tbptt
from minidni.optim import SGD
from minidni.tensor import Tensor

I, H, K, B = 3, 4, 2, 3


def make_core(input_size, hidden_size, rng=0, dtype=np.float32):
    return nn.LSTM(input_size, hidden_size, rng=rng, dtype=dtype)


def episode(n, seed, dtype=np.float32):
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, B, I)).astype(dtype)
    y = (r.random((n, B, K)) < 0.5).astype(dtype)
    mask = (r.random((n, B)) < 0.7).astype(dtype)
    return x, y, mask


def learner(method, T, synthesizer=None, dtype=np.float32, **kw):
    core = make_core(I, H, rng=0, dtype=dtype)
    readout = nn.Linear(H, K, dtype=dtype, rng=np.random.default_rng(1))
    aux = AuxHead(H, dtype=dtype, rng=np.random.default_rng(2)) if method == "dni-aux" else None
    return RecurrentLearner(core, readout, tbptt(T, method, kw.pop("synth_to_core", False)), synthesizer, aux, **kw)


def grads(lrn):
    return [None if p.grad is None else p.grad.copy() for p in lrn.core_parameters()]


# ---- the schedule is data ------------------------------------------------------------------------------------------
def test_schedule_events_per_window():
    kinds = lambda s, n: [e.short for e in s.events(n)]  # noqa: E731
    assert kinds(tbptt(3, "bptt"), 7) == ["W0", "X0", "P0", "W1", "X1", "P1", "W2", "X2", "P2"]
    # DNI: a synthetic gradient at every boundary but the episode's end; M trains at every window start but the first
    assert kinds(tbptt(3, "dni"), 7) == ["W0", "G0", "P0", "W1", "G1", "S1", "P1", "W2", "X2", "S2", "P2"]
    assert kinds(tbptt(3, "dni-aux"), 6) == ["W0", "G0", "P0", "W1", "X1", "S1", "A1", "P1"]
    for s in (tbptt(2, "bptt"), tbptt(2, "dni"), tbptt(2, "dni-aux"), tbptt(2, "dni", synth_to_core=True)):
        assert s.check(9) == len(s.events(9))
    assert tbptt(3, "dni").window(2, 7) == (6, 7)                              # the last window is shorter


def test_the_learner_steps_through_the_schedule():
    lrn = learner("dni-aux", 3, RecurrentSynthesizer(H, rng=0))
    x, y, m = episode(7, 0)
    ran = [event for event, store in lrn.steps(x, y, m)]
    assert ran == lrn.schedule.events(7)
    assert sorted(lrn.episode["target"]) == [1, 2] and sorted(lrn.episode["aux_target"]) == [1, 2]


def test_schedule_prints_and_draws(tmp_path):
    text = tbptt(2, "dni-aux").grid(6)
    assert "module 1" in text and "W0" in text and "S1" in text and "A2" in text
    assert "steps 5..6" in tbptt(2, "dni").describe(6, io=True)
    tbptt(2, "dni").draw(6, path=tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0
    with pytest.raises(ValueError, match="method"):
        tbptt(2, "nope")


# ---- the synthesizer and the losses ----------------------------------------------------------------------------------
def test_recurrent_synthesizer_starts_at_zero_and_scales():
    m = RecurrentSynthesizer(H, scale=0.1, rng=0)
    h = np.random.default_rng(0).normal(size=(B, H)).astype(np.float32)
    g_h, g_c = m.synthetic_gradient(h)
    assert g_h.shape == g_c.shape == (B, H) and not g_h.any() and not g_c.any()
    assert [layer.weight.shape for layer in m.net if hasattr(layer, "weight")] == [(H, H), (H, 2 * H)]
    assert [layer.weight.shape for layer in RecurrentSynthesizer(H, hidden=()).net if hasattr(layer, "weight")] == \
        [(H, 2 * H)]
    m.net[-1].bias.data[...] = np.arange(2 * H)
    g_h, g_c = m.synthetic_gradient(h)
    np.testing.assert_allclose(np.concatenate([g_h, g_c], 1), 0.1 * np.broadcast_to(np.arange(2 * H), (B, 2 * H)),
                               rtol=1e-6)


def test_synthesizer_loss_scale_in_target_or_not():
    pred = Tensor(np.array([[2.0, 4.0]]))
    target = np.array([[0.5, 0.0]])
    # unscaled target: the used gradient 0.1 * M regresses on g: (0.2 - 0.5)^2 + 0.4^2
    assert synthesizer_loss(pred, target, 0.1, False).item() == pytest.approx(0.09 + 0.16)
    # scaled target: M itself regresses on g (0.1 * M then predicts 0.1 g): (2 - 0.5)^2 + 4^2
    assert synthesizer_loss(pred, target, 0.1, True).item() == pytest.approx(2.25 + 16.0)


def test_bit_loss_and_errors_by_hand():
    z = np.array([[[2.0, -1.0]], [[0.5, 3.0]]], dtype=np.float64)                # (2 steps, 1 batch, 2 bits)
    y = np.array([[[1.0, 1.0]], [[0.0, 1.0]]])
    mask = np.array([[1.0], [0.0]])                                             # only step 0 is scored
    expected = np.log1p(np.exp(-2.0)) + np.log1p(np.exp(1.0))
    zt = Tensor(z, requires_grad=True)
    loss = bit_loss(zt, y, mask)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    sig = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(zt.grad, mask[:, :, None] * (sig - y))
    # step 0: bit 1 predicted 0 but is 1 -> one error; step 1 is not scored (it has two errors... one: 0.5 > 0 vs 0)
    assert bit_errors(z, y, mask) == (1, 1)
    assert bits_per_step(z, y, np.ones((2, 1))) == pytest.approx((1 + 1) / 2)


# ---- the algorithm ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [1, 3])
def test_zero_synthesizer_is_truncated_bptt_bit_for_bit(T):
    plain = learner("bptt", T)
    zero = learner("dni", T, RecurrentOracle({}))                  # always predicts 0
    unused = learner("dni", T, RecurrentSynthesizer(H, scale=0.0, rng=0))   # learns, but is used times 0
    for s in range(3):
        x, y, m = episode(7, s)
        outs = [lrn.train_episode(x, y, m) for lrn in (plain, zero, unused)]
        assert outs[0]["loss"] == outs[1]["loss"] == outs[2]["loss"]
    assert unused.episode["synth_loss"]                             # its synthesizer did train
    for a, b, c in zip(plain.core_parameters(), zero.core_parameters(), unused.core_parameters()):
        assert np.array_equal(a.data, b.data) and np.array_equal(a.data, c.data)


def full_bptt(lrn, x, y, m, T):
    """Full BPTT over the episode, window by window WITHOUT cutting the state: parameter gradients and, at every
    window boundary, the true gradient of the LATER windows' losses w.r.t. (h, c) (retain_grad on the handed state)."""
    n = x.shape[0]
    zeros = np.zeros((B, H), dtype=x.dtype)
    state, total, boundary = (Tensor(zeros), Tensor(zeros)), None, {}
    for k in range(lrn.schedule.n_windows(n)):
        t0, t1 = lrn.schedule.window(k, n)
        outs, (h, c) = lrn.core([Tensor(x[t]) for t in range(t0, t1)], state=state)
        state = (h + 0.0, c + 0.0)             # new nodes that only the later windows use: their grad is the future's
        state[0].retain_grad(), state[1].retain_grad()
        boundary[t1] = state
        logits = ops.reshape(lrn.readout(ops.concat(outs, axis=0)), (t1 - t0, B, K))
        loss = bit_loss(logits, y[t0:t1], m[t0:t1])
        total = loss if total is None else total + loss
    lrn.zero_grad()
    total.backward()
    return grads(lrn), {t: (s[0].grad, s[1].grad) for t, s in boundary.items()}


@pytest.mark.parametrize("T", [2, 3])
def test_oracle_with_scale_one_gives_full_bptt(T):
    x, y, m = episode(8, 5, np.float64)
    ref = learner("bptt", T, dtype=np.float64)
    true_grads, boundary = full_bptt(ref, x, y, m, T)
    oracle = RecurrentOracle({t: g for t, g in boundary.items() if t < x.shape[0]})
    lrn = learner("dni", T, oracle, dtype=np.float64, update=False)
    lrn.train_episode(x, y, m)
    for got, want in zip(grads(lrn), true_grads):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
    # the bootstrapped target at each window start is then the true gradient there
    for k, target in lrn.episode["target"].items():
        g_h, g_c = boundary[lrn.schedule.window(k - 1, x.shape[0])[1]]
        np.testing.assert_allclose(target, np.concatenate([g_h, g_c], 1), rtol=1e-10, atol=1e-13)
    # and truncated BPTT alone does throw gradient away
    plain = learner("bptt", T, dtype=np.float64, update=False)
    plain.train_episode(x, y, m)
    assert not all(np.allclose(a, b, rtol=1e-6) for a, b in zip(grads(plain), true_grads))


class HandCore(nn.Module):
    """h' = tanh(x a + h u),  c' = c w + h'   (H = 1): small enough to differentiate by hand."""

    hidden_size = 1

    def __init__(self, a, u, w):
        super().__init__()
        self.a, self.u = nn.Parameter(np.array([[a]])), nn.Parameter(np.array([[u]]))
        self.w = nn.Parameter(np.array([w]))

    def forward(self, xs, state):
        h, c = state
        outs = []
        for x in xs:
            h = ops.tanh(ops.matmul(x, self.a) + ops.matmul(h, self.u))
            c = c * self.w + h
            outs.append(h)
        return outs, (h, c)


def test_bootstrapped_target_by_hand():
    a, u, w, r, s = 0.7, -1.3, 0.6, 1.5, 0.1
    p, q, p0, q0 = 0.4, -0.8, 0.2, 0.3                       # the linear synthesizer M(h) = [h p + p0, h q + q0]
    x = np.array([[[0.9]], [[-0.4]], [[0.3]]])              # 3 steps, batch 1: windows of T = 1
    y = np.array([[[1.0]], [[-2.0]], [[0.5]]])
    readout = nn.Linear(1, 1, bias=False, dtype=np.float64)
    readout.weight.data[...] = r
    synth = RecurrentSynthesizer(1, hidden=(), scale=s, dtype=np.float64)
    synth.net[-1].weight.data[...] = [[p, q]]
    synth.net[-1].bias.data[...] = [p0, q0]
    linear_loss = lambda logits, targets, mask: ops.sum(logits * Tensor(targets))   # noqa: E731  L_t = y_t r h_t
    lrn = RecurrentLearner(HandCore(a, u, w), readout, tbptt(1, "dni"), synth, loss=linear_loss,
                           synth_optimizer=lambda params: SGD(params, lr=0.0), update=False)
    lrn.train_episode(x, y, np.ones((3, 1)))
    # window 0: s_1 from s_0 = 0;  window 1: s_2 from s_1, with the synthetic gradient at s_2
    h1 = np.tanh(x[0, 0, 0] * a)
    c1 = h1
    h2 = np.tanh(x[1, 0, 0] * a + h1 * u)
    g_h, g_c = s * (h2 * p + p0), s * (h2 * q + q0)
    # L_1 + g_h h2 + g_c c2 with c2 = c1 w + h2:  d/dh2 = y_1 r + g_h + g_c;  dh2/dh1 = (1 - h2^2) u;  dc2/dc1 = w
    target_h1 = (y[1, 0, 0] * r + g_h + g_c) * (1 - h2 ** 2) * u
    target_c1 = g_c * w
    np.testing.assert_allclose(lrn.episode["target"][1], [[target_h1, target_c1]], rtol=1e-12)
    np.testing.assert_allclose(np.concatenate(lrn.episode["synthetic"][1], 1), [[g_h, g_c]], rtol=1e-12)
    # the last window has nothing after it: its start's target is the gradient of its own loss only
    h3 = np.tanh(x[2, 0, 0] * a + h2 * u)
    np.testing.assert_allclose(lrn.episode["target"][2], [[y[2, 0, 0] * r * (1 - h3 ** 2) * u, 0.0]], rtol=1e-12)


def test_aux_target_is_the_synthetic_gradient_T_steps_later():
    T, n = 2, 7
    synth = RecurrentSynthesizer(H, scale=0.1, dtype=np.float64, rng=0)
    synth.net[-1].weight.data[...] = np.random.default_rng(3).normal(size=(H, 2 * H))
    lrn = learner("dni-aux", T, synth, dtype=np.float64, update=False,
                  synth_optimizer=lambda params: SGD(params, lr=0.0))        # neither core nor M move
    lrn.aux_head.linear.weight.data[...] = np.random.default_rng(4).normal(size=(H, 2 * H))   # it starts at 0
    x, y, m = episode(n, 1, np.float64)
    lrn.train_episode(x, y, m)
    with no_grad():                                                          # h_t of the whole episode
        zeros = Tensor(np.zeros((B, H)))
        hs, _ = lrn.core([Tensor(x[t]) for t in range(n)], state=(zeros, zeros))
    K_ = lrn.schedule.n_windows(n)
    assert sorted(lrn.episode["aux_target"]) == list(range(1, K_))
    for k, target in lrn.episode["aux_target"].items():
        t_later = lrn.schedule.window(k, n)[1]                               # s_k + T steps = window k's end
        if t_later == n:                                                     # the episode's end: nothing follows
            assert not target.any()
        else:
            np.testing.assert_allclose(target, np.concatenate(synth.synthetic_gradient(hs[t_later - 1].data), 1),
                                       rtol=1e-12)
    # the Aux loss reaches the core: its gradients differ from DNI without Aux
    plain = learner("dni", T, synth, dtype=np.float64, update=False, synth_optimizer=lambda ps: SGD(ps, lr=0.0))
    plain.train_episode(x, y, m)
    assert any(not np.allclose(g1, g2) for g1, g2 in zip(grads(plain), grads(lrn)))


def test_the_aux_weight_scales_the_aux_gradient_and_zero_turns_it_off():
    """aux_weight w: the core's gradient is DNI's plus w times the Aux part (float64, nothing moves)."""
    synth = RecurrentSynthesizer(H, scale=0.1, dtype=np.float64, rng=0)
    synth.net[-1].weight.data[...] = np.random.default_rng(3).normal(size=(H, 2 * H))
    x, y, m = episode(7, 1, np.float64)
    got = {}
    for method, w in (("dni", 1.0), ("dni-aux", 0.0), ("dni-aux", 1.0), ("dni-aux", 3.0)):
        lrn = learner(method, 2, synth, dtype=np.float64, update=False, aux_weight=w,
                      synth_optimizer=lambda ps: SGD(ps, lr=0.0))
        if lrn.aux_head is not None:
            lrn.aux_head.linear.weight.data[...] = np.random.default_rng(4).normal(size=(H, 2 * H))
        lrn.train_episode(x, y, m)
        got[method, w] = grads(lrn)[:3]                                   # the LSTM's W_x, W_h, b
    for a, b in zip(got["dni", 1.0], got["dni-aux", 0.0]):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-15)
    for a, one, three in zip(got["dni", 1.0], got["dni-aux", 1.0], got["dni-aux", 3.0]):
        assert not np.allclose(one, a)
        np.testing.assert_allclose(three - a, 3 * (one - a), rtol=1e-9, atol=1e-12)


def test_synth_units_episode_is_batch_units_times_B():
    """synth_units="episode": M predicts B times the batch loss's gradient. An M whose output layer is B times
    another's then injects the same gradient (B = 4, a power of two: the scaling is exact), so the core's gradients
    match bit for bit, while M's targets and the Aux targets are B times the batch-unit ones."""
    Bp = 4
    r = np.random.default_rng(5)
    x = r.normal(size=(7, Bp, I))
    y = (r.random((7, Bp, K)) < 0.5).astype(np.float64)
    m = np.ones((7, Bp))
    out = {}
    for method in ("dni", "dni-aux"):
        for units, factor in (("batch", 1.0), ("episode", float(Bp))):
            synth = RecurrentSynthesizer(H, scale=0.1, dtype=np.float64, rng=0)
            synth.net[-1].weight.data[...] = factor * np.random.default_rng(3).normal(size=(H, 2 * H))
            synth.net[-1].bias.data[...] = factor * np.random.default_rng(6).normal(size=2 * H)
            lrn = learner(method, 2, synth, dtype=np.float64, update=False, synth_units=units,
                          synth_optimizer=lambda ps: SGD(ps, lr=0.0))
            if lrn.aux_head is not None:
                lrn.aux_head.linear.weight.data[...] = np.random.default_rng(4).normal(size=(H, 2 * H))
            lrn.train_episode(x, y, m)
            out[method, units] = (grads(lrn), dict(lrn.episode["target"]), dict(lrn.episode["aux_target"]),
                                  dict(lrn.episode["synthetic"]))
    (g_b, t_b, _, s_b), (g_e, t_e, _, s_e) = out["dni", "batch"], out["dni", "episode"]
    for a, b in zip(g_b, g_e):
        assert np.array_equal(a, b)                                # the same gradient reached the core
    assert sorted(t_b) == sorted(t_e) and t_b
    for k in t_b:
        assert np.array_equal(t_e[k], Bp * t_b[k])                 # M's target in per-episode units
    assert sorted(s_b) == sorted(s_e) and s_b
    for k in s_b:                                                  # the used gradient, in batch units
        assert all(np.array_equal(u, v) for u, v in zip(s_b[k], s_e[k]))
    a_b, a_e = out["dni-aux", "batch"][2], out["dni-aux", "episode"][2]
    assert sorted(a_b) == sorted(a_e) and a_b
    for k in a_b:
        assert np.array_equal(a_e[k], Bp * a_b[k])                 # the Aux target in M's units


def test_synth_units_is_checked():
    with pytest.raises(ValueError, match="synth_units is 'batch' or 'episode'"):
        learner("dni", 2, RecurrentSynthesizer(H, rng=0), synth_units="example")
    with pytest.raises(ValueError, match="synth_units='batch'"):
        learner("dni", 2, RecurrentOracle({}), synth_units="episode")


def test_synth_to_core_sends_the_synthesizer_loss_into_the_lstm():
    x, y, m = episode(6, 2, np.float64)
    make = lambda to_core: learner("dni", 2, RecurrentSynthesizer(H, dtype=np.float64, rng=0),  # noqa: E731
                                   dtype=np.float64, update=False, synth_to_core=to_core)
    off, on = make(False), make(True)
    off.train_episode(x, y, m), on.train_episode(x, y, m)
    assert off.episode["synth_loss"] == pytest.approx(on.episode["synth_loss"])     # the same regression
    assert any(not np.allclose(a, b) for a, b in zip(grads(off), grads(on)))        # but on reaches the LSTM


def test_checkpoint_state_round_trip():
    x, y, m = episode(6, 0)
    a = learner("dni-aux", 2, RecurrentSynthesizer(H, rng=0))
    a.train_episode(x, y, m)
    b = learner("dni-aux", 2, RecurrentSynthesizer(H, rng=9))
    b.load_state_dict(a.state_dict())
    x, y, m = episode(6, 1)
    assert a.train_episode(x, y, m)["loss"] == b.train_episode(x, y, m)["loss"]
    np.testing.assert_allclose(a.predict(x), b.predict(x))                     # one forward over the whole episode
    assert a.predict(x).shape == (6, B, K)
    for p, q in zip(a.parameters(), b.parameters()):
        assert np.array_equal(p.data, q.data)


def test_errors_name_what_is_missing():
    with pytest.raises(ValueError, match="synthesizer"):
        learner("dni", 2)
    with pytest.raises(ValueError, match="Aux"):
        RecurrentLearner(make_core(I, H), nn.Linear(H, K), tbptt(2, "dni-aux"), RecurrentSynthesizer(H))

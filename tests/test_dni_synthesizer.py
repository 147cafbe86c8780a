"""Synthesizers and interfaces (Jaderberg et al. 2016, Sec. 2): zero start, conditioning, the synthetic-gradient loss,
and a linear cDNI that learns an exact gradient (Czarnecki et al. 2017)."""

import numpy as np
import pytest

from minidni import optim
from minidni.autograd import no_grad
from minidni.dni import ConvSynthesizer, Interface, Oracle, Synthesizer, gradient_agreement, one_hot
from minidni.tensor import Tensor


def test_one_hot():
    assert np.array_equal(one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        one_hot(np.array([3]), 3)


@pytest.mark.parametrize("hidden", [(), (16, 16)])
@pytest.mark.parametrize("n_classes", [None, 4])
def test_synthesizer_starts_at_zero_and_has_the_shape_of_h(hidden, n_classes):
    rng = np.random.default_rng(0)
    synth = Synthesizer(8, n_classes=n_classes, hidden=hidden, rng=1)
    h, y = rng.normal(size=(5, 8)).astype(np.float32), rng.integers(0, 4, 5)
    g_hat = synth(Tensor(h), y)
    assert g_hat.shape == h.shape and g_hat.dtype == np.float32
    assert np.array_equal(g_hat.data, np.zeros_like(h))
    assert synth.conditioned == (n_classes is not None)


def test_synthesizer_repr_reads_like_the_architecture():
    text = repr(Synthesizer(256, n_classes=10, hidden=(1024, 1024)))
    assert "cDNI" in text and "1024 -> 1024" in text and "onehot(y) (10)" in text and "zero" in text
    assert "linear" in repr(Synthesizer(256))


def test_conditioned_synthesizer_needs_labels():
    with pytest.raises(ValueError, match="conditioned"):
        Synthesizer(3, n_classes=2)(Tensor(np.ones((2, 3), np.float32)))


def test_output_scale_multiplies_the_prediction():
    rng = np.random.default_rng(0)
    a, b = Synthesizer(4, rng=3), Synthesizer(4, rng=3, scale=0.5)
    for s in (a, b):
        s.net[-1].weight.data[...] = np.arange(16, dtype=np.float32).reshape(4, 4)
    h = rng.normal(size=(3, 4)).astype(np.float32)
    assert np.allclose(b(Tensor(h)).data, 0.5 * a(Tensor(h)).data)


@pytest.mark.parametrize("loss", ["sum", "mean"])
def test_interface_trains_on_the_squared_error(loss):
    """One SGD step by hand: L = ||h W + b - g||^2, dW = 2 h^T (g_hat - g); with loss="mean" both are divided by
    the B*D entries."""
    rng = np.random.default_rng(0)
    synth = Synthesizer(3, dtype=np.float64, rng=0)
    W0 = rng.normal(size=(3, 3))
    synth.net[-1].weight.data[...] = W0
    itf = Interface(synth, optim.SGD(synth.parameters(), lr=0.1), loss=loss)
    h, g = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    value = itf.train(h, None, g)
    residual = h @ W0 - g
    n = 12 if loss == "mean" else 1
    assert np.isclose(value, (residual ** 2).sum() / n, rtol=1e-14)
    assert np.allclose(synth.net[-1].weight.data, W0 - 0.1 * 2 * h.T @ residual / n, rtol=1e-14)
    with pytest.raises(ValueError, match="loss must be one of"):
        Interface(synth, optim.SGD(synth.parameters(), lr=0.1), loss="l1")


def test_summed_loss_keeps_adam_above_its_eps_where_the_mean_does_not():
    """With a batch-mean task loss the targets are ~1e-4 per entry, and the mean over B*D entries leaves the
    gradients of an MLP synthesizer's hidden layers far below Adam's eps (1e-8), so Adam's steps there shrink; the
    sum (loss="sum") keeps them at full size."""
    rng = np.random.default_rng(0)
    B, D = 256, 256                                   # the paper's batch and width: 65,536 entries
    h, target = rng.normal(size=(B, D)).astype(np.float32), (1e-4 * rng.normal(size=(B, D))).astype(np.float32)
    moved = {}
    for loss in ("sum", "mean"):
        synth = Synthesizer(D, hidden=(16,), rng=0)
        synth.net[-1].weight.data[...] = rng.normal(size=(16, D)).astype(np.float32) * 1e-4   # a small readout
        first = synth.net[0].weight.data.copy()
        itf = Interface(synth, optim.Adam(synth.parameters(), lr=1e-3), loss=loss)
        itf.train(h, None, target)
        moved[loss] = np.abs(synth.net[0].weight.data - first).mean()
    assert moved["sum"] > 0.9e-3                      # Adam's first step is lr per entry when sqrt(v) >> eps
    assert moved["mean"] < 0.1 * moved["sum"]        # measured: 5e-5 against 1e-3


class CountingSynthesizer(Synthesizer):
    """A Synthesizer that counts its forward passes."""

    calls = 0

    def forward(self, h, y=None):
        self.calls += 1
        return super().forward(h, y)


def test_train_reuses_the_prediction_graph_on_the_same_h_and_matches_a_fresh_forward():
    """synthetic_gradient keeps its graph; train on the very same arrays reuses it: one forward of M, not two, and
    the step is bit for bit the one a fresh forward gives (MLP with batch norm, cDNI)."""
    rng = np.random.default_rng(0)
    h, y, target = rng.normal(size=(8, 5)).astype(np.float32), rng.integers(0, 3, 8), rng.normal(size=(8, 5))
    pair = [CountingSynthesizer(5, n_classes=3, hidden=(7,), rng=1) for _ in range(2)]
    itfs = [Interface(s, optim.Adam(s.parameters(), lr=1e-2)) for s in pair]
    for step in range(3):
        g0, g1 = (itf.synthetic_gradient(h, y) for itf in itfs)
        assert np.array_equal(g0, g1)
        itfs[1].forget()                                       # the reference: M runs again in train
        for itf in itfs:
            itf.train(h, y, target.astype(np.float32))
        a, b = (dict(itf.synthesizer.named_parameters()) for itf in itfs)
        assert all(np.array_equal(a[n].data, b[n].data) for n in a), f"step {step}"
    assert itfs[0].steps == itfs[1].steps == 3
    assert (pair[0].calls, pair[1].calls) == (3, 6)


def test_train_runs_m_again_when_the_kept_prediction_is_stale():
    rng = np.random.default_rng(0)
    h, g = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32)
    synth = CountingSynthesizer(4, hidden=(5,), rng=0)
    itf = Interface(synth, optim.SGD(synth.parameters(), lr=0.1))
    itf.synthetic_gradient(h)
    itf.train(h, None, g)
    assert synth.calls == 1                                    # reused
    itf.train(h, None, g)
    assert synth.calls == 2                                    # used once: M has stepped since
    itf.synthetic_gradient(h)
    itf.train(h.copy(), None, g)
    assert synth.calls == 4                                    # another array (pipelined: another batch's h)
    itf.synthetic_gradient(h)
    synth.eval()
    itf.train(h, None, g)
    assert synth.calls == 6                                    # another mode
    synth.train()
    with no_grad():
        itf.synthetic_gradient(h)                              # no graph to keep
    itf.train(h, None, g)
    assert synth.calls == 8


def test_oracle_needs_a_network_and_is_not_trained():
    with pytest.raises(RuntimeError, match="not bound"):
        Oracle()(Tensor(np.ones((2, 2))))
    itf = Interface(Oracle(), None, 0)
    assert not itf.learns and itf.train(np.ones((2, 2)), None, np.ones((2, 2))) == 0.0


def test_gradient_agreement():
    g = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert gradient_agreement(g, g)["cos"] == pytest.approx(1.0) and gradient_agreement(g, g)["rel_err"] == 0.0
    zero = gradient_agreement(np.zeros_like(g), g)
    assert zero["cos"] == 0.0 and zero["rel_err"] == 1.0
    assert gradient_agreement(-g, g)["cos"] == pytest.approx(-1.0)


def least_squares_gradient(h, y, V):
    """dL/dh of L = 0.5 ||h V - onehot(y)||^2 / N, by the engine's own backward pass."""
    ht = Tensor(h, requires_grad=True)
    r = ht @ Tensor(V) - Tensor(one_hot(y, V.shape[1], np.float64))
    ((r * r).sum() * (0.5 / len(h))).backward()
    return ht.grad


def test_linear_cdni_learns_the_exact_gradient_of_a_least_squares_top_layer():
    """For L = 0.5 ||h V - Y||^2 / N the gradient dL/dh = (h V - Y) V^T / N = h (V V^T / N) + onehot(y) (-V^T / N)
    is affine in (h, onehot(y)): a linear cDNI synthesizer can represent it exactly (Czarnecki et al. 2017), and
    regression on it drives the error to round-off. Without the label it cannot: Y is invisible to M(h)."""
    D, C, N = 6, 3, 32
    rng = np.random.default_rng(0)
    V = rng.normal(size=(D, C))
    with_label = Synthesizer(D, n_classes=C, dtype=np.float64, rng=1)
    without = Synthesizer(D, dtype=np.float64, rng=1)
    lr = 1.0                                            # on L_M averaged over the N*D entries
    conditioned = Interface(with_label, optim.SGD(with_label.parameters(), lr=lr))
    plain = Interface(without, optim.SGD(without.parameters(), lr=lr))
    for _ in range(600):
        h, y = rng.normal(size=(N, D)), rng.integers(0, C, N)
        g = least_squares_gradient(h, y, V)
        assert np.allclose(g, (h @ V - one_hot(y, C, np.float64)) @ V.T / N)   # the formula above
        conditioned.train(h, y, g)
        plain.train(h, y, g)
    h, y = rng.normal(size=(N, D)), rng.integers(0, C, N)
    g = least_squares_gradient(h, y, V)
    assert gradient_agreement(conditioned.synthetic_gradient(h, y), g)["rel_err"] < 1e-3
    assert gradient_agreement(plain.synthetic_gradient(h, y), g)["rel_err"] > 0.1


@pytest.mark.parametrize("n_classes", [None, 3])
def test_conv_synthesizer_preserves_the_resolution_and_starts_at_zero(n_classes):
    rng = np.random.default_rng(0)
    synth = ConvSynthesizer(4, n_classes=n_classes, hidden=(6,), kernel_size=5, dtype=np.float64, rng=1)
    h, y = rng.normal(size=(2, 4, 7, 7)), rng.integers(0, 3, 2)
    g_hat = synth(Tensor(h), y)
    assert g_hat.shape == h.shape and np.array_equal(g_hat.data, np.zeros_like(h))
    assert ("cDNI" if n_classes else "DNI") in repr(synth) and "5x5" in repr(synth)
    with pytest.raises(ValueError, match="odd"):
        ConvSynthesizer(4, kernel_size=4)
    with pytest.raises(ValueError, match="batch, 4, H, W"):
        synth(Tensor(np.ones((2, 4), np.float64)), y)


def test_conditioned_conv_synthesizer_sees_the_label_as_planes():
    """A single 1x1 conv with weight 1 from label plane k to output channel 0 outputs [y == k] everywhere."""
    synth = ConvSynthesizer(1, n_classes=3, kernel_size=1, dtype=np.float64)
    synth.net[-1].weight.data[0, 1 + 2, 0, 0] = 1.0          # input channels: [h, class 0, class 1, class 2]
    g_hat = synth(Tensor(np.zeros((3, 1, 2, 2))), np.array([2, 0, 2])).data
    assert np.array_equal(g_hat[:, 0, 0, 0], [1.0, 0.0, 1.0]) and np.all(g_hat == g_hat[:, :, :1, :1])


def test_conv_synthesizer_learns_a_local_linear_target():
    """Target g = 0.5 * h with its two channels swapped: one 3x3 conv represents it exactly; regression gets close."""
    rng = np.random.default_rng(0)
    synth = ConvSynthesizer(2, kernel_size=3, dtype=np.float64, rng=0)
    itf = Interface(synth, optim.Adam(synth.parameters(), lr=3e-2))
    losses = []
    for _ in range(150):
        h = rng.normal(size=(4, 2, 5, 5))
        losses.append(itf.train(h, None, 0.5 * h[:, ::-1]))      # channels swapped and halved
    assert losses[-1] < 0.01 * losses[0]

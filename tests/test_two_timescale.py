"""The two-timescale system (Jaderberg et al. 2016, arXiv v1 Sec. 3.3, appendix A.4): the digit streams' labels
counted by hand, the schedule's data flow, where B's gradient goes (end to end: the exact chain rule; DNI: the
synthetic gradient; no-grad: nowhere), and tiny runs of the three experiments with a resume that continues exactly."""
import json

import numpy as np
import pytest

from minidni.config import override
from minidni.data.digit_streams import DigitStreams, count_last, odd_counts, three_counts
from minidni.experiments import get
from minidni.experiments.two_timescale import TwoTimescale, TwoTimescaleLearner
from minidni.tensor import Tensor


# ---- the data -------------------------------------------------------------------------------------------------------
def test_labels_by_hand():
    d = np.array([3, 1, 2, 3, 3, 5, 0, 3, 8, 3])[:, None]            # one stream, T = 2
    # odd digits among the last 2: {3} {3,1} {1,2} {2,3} {3,3} {3,5} {5,0} {0,3} {3,8} {8,3}
    assert odd_counts(d, 2).ravel().tolist() == [1, 2, 1, 1, 2, 2, 1, 1, 1, 1]
    # 3s among the last 4: {3} {3,1} {3,1,2} {3,1,2,3} {1,2,3,3} {2,3,3,5} {3,3,5,0} {3,5,0,3} {5,0,3,8} {0,3,8,3}
    assert three_counts(d, 2).ravel().tolist() == [1, 1, 1, 2, 2, 2, 2, 2, 1, 2]
    # the same stream in two pieces, the first as history: the counts continue
    assert odd_counts(d[6:], 2, d[:6]).ravel().tolist() == [1, 1, 1, 1]
    assert three_counts(d[6:], 2, d[:6]).ravel().tolist() == [2, 2, 1, 2]
    assert count_last(np.ones((5, 1), bool), 3).ravel().tolist() == [1, 2, 3, 3, 3]


def test_streams_continue_and_tick_every_T():
    digits = np.array([3, 1, 2, 3, 3, 5, 0, 3, 8, 7])                # "image" i is digit digits[i]
    images = np.arange(10, dtype=np.float32)[:, None]
    s = DigitStreams(images, digits, T=2, batch_size=3, rng=np.random.default_rng(0))
    assert s.n_classes == (3, 5)
    x1, a1, b1, d1 = s.next(4)
    x2, a2, b2, d2 = s.next(2)
    d = np.concatenate([d1, d2])                                     # (6, 3): the whole stream so far
    assert np.array_equal(digits[x1[..., 0].astype(int)], d1)        # each step's image shows its digit
    for b in range(3):
        col = d[:, b].tolist()
        odd = [sum(v % 2 for v in col[max(0, t - 1):t + 1]) for t in range(6)]
        threes = [col[max(0, t - 3):t + 1].count(3) for t in (1, 3, 5)]   # B ticks after steps 2, 4, 6
        assert np.concatenate([a1, a2])[:, b].tolist() == odd
        assert np.concatenate([b1, b2])[:, b].tolist() == threes
    assert a1.max() <= 2 and np.concatenate([b1, b2]).max() <= 4
    with pytest.raises(ValueError, match="multiple of T"):
        s.next(3)


def test_streams_resume_exactly():
    images, digits = np.zeros((10, 1), np.float32), np.arange(10)
    s = DigitStreams(images, digits, T=3, batch_size=2, rng=np.random.default_rng(1))
    s.next(9)
    state = json.loads(json.dumps(s.state_dict()))
    t = DigitStreams(images, digits, T=3, batch_size=2, rng=np.random.default_rng(99))
    t.load_state_dict(state)
    for u, v in zip(s.next(9), t.next(9)):
        assert np.array_equal(u, v)


# ---- the schedule ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["bptt", "dni", "nograd"])
def test_schedule_data_flow(method):
    s = TwoTimescale(3, method)
    assert s.check(3) > 0
    updates_A = [e for e in s.window_events(0) if e.module == 0 and e.kind != "forward"]
    assert len(updates_A) == (1 if method == "bptt" else 3)          # A updates T times as often without BPTT
    assert s.span == (9 + 2 if method == "bptt" else 9)              # end to end, A waits for B's gradient
    assert "A " in s.grid(1) and ("M " in s.grid(1)) == (method == "dni")


# ---- the learner: where B's gradient goes ---------------------------------------------------------------------------
def tiny(name="two-timescale-dni", **values):
    base = dict(T=2, fcn=6, hidden=5, message=4, hidden_b=3, batch_size=4, steps=4, eval_every=2, eval_streams=4,
                eval_windows=1, log_every=2, checkpoint_every=2)
    return override(get(name).config(), {**base, **values})


def window(T=2, B=4, seed=0):
    r = np.random.default_rng(seed)
    d = r.integers(0, 10, (T * T, B))
    return r.random((T * T, B, 784)).astype(np.float32), odd_counts(d, T), three_counts(d, T)[T - 1::T]


def test_dni_updates_A_with_the_synthetic_gradient():
    learner = TwoTimescaleLearner(tiny(), "dni")
    G = np.random.default_rng(2).normal(size=(4, 4)).astype(np.float32)
    learner.M.forward = lambda h: Tensor(G)                            # a synthesizer that always says G
    seen = []
    for e, _ in learner.steps(*window()):
        if e.kind == "update_synthetic":
            # m = BN(z): d<G, m>/d(BN's shift) = sum over the batch of G; A's own loss does not reach the message
            seen.append(learner.A.message[1].bias.grad.copy())
            if len(seen) == 2:                                        # (M's own training would need a real M)
                break
    assert len(seen) == 2
    for grad in seen:                              # g_hat = synth_scale * M(m) / batch = 10 G / 4 (per example / B)
        np.testing.assert_allclose(grad, 10 * G.sum(axis=0) / 4, rtol=1e-6)
    assert set(learner.last["synthetic"]) == {0, 1} and np.allclose(learner.last["synthetic"][0], 10 * G / 4)


def test_bptt_sends_B_gradient_into_A():
    learner = TwoTimescaleLearner(tiny(name="two-timescale-bptt"), "bptt")
    for e, store in learner.steps(*window()):
        if e.kind == "backprop":
            expected = sum(store[("dmsg", k)].sum(axis=0) for k in (0, 1))
            np.testing.assert_allclose(learner.A.message[1].bias.grad, expected, rtol=1e-5, atol=1e-8)
            assert np.abs(expected).sum() > 0


def test_nograd_no_gradient_reaches_A_from_B():
    learner = TwoTimescaleLearner(tiny(name="two-timescale-nograd"), "nograd")
    before = {k: v.copy() for k, v in learner.A.message.state_dict().items() if not k.endswith(("mean", "var"))}
    for _ in range(2):
        for e, store in learner.steps(*window()):
            assert not any(key[0] == "dmsg" for key in store)        # B's update writes no gradient for A
            if e.module == 0 and e.kind != "forward":
                assert all(p.grad is None for p in learner.A.message.parameters())
    after = learner.A.message.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)   # the message layer never learns
    assert learner.A.cell.W_x.grad is not None                         # A itself learns from its own loss


# ---- tiny runs ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["two-timescale-bptt", "two-timescale-dni", "two-timescale-nograd"])
def test_a_run_writes_its_files(tmp_path, name):
    summary = get(name).run(tiny(name), tmp_path, quiet=True)
    for f in ("metrics.jsonl", "summary.json", "curves.png", "timeline.png", "timeline.txt", "checkpoint.npz",
              "config.toml"):
        assert (tmp_path / f).is_file(), f
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "test"] == [0, 2, 4]
    assert [r["steps_a"] for r in records if r["split"] == "train"] == [8, 16]   # T^2 = 4 steps of A per window
    assert summary["steps"] == 4 and 0 <= summary["test_acc_b"] <= 1


def test_resume_continues_exactly(tmp_path, monkeypatch):
    from minidni.experiments import two_timescale

    monkeypatch.setattr(two_timescale, "plot_runs", lambda *a, **k: None)   # the numbers only (plots: above)
    monkeypatch.setattr(two_timescale.TwoTimescale, "draw", lambda *a, **k: None)
    name = "two-timescale-dni"
    whole = get(name).run(tiny(), tmp_path / "whole", quiet=True)
    get(name).run(tiny(steps=2), tmp_path / "part", quiet=True)
    resumed = get(name).run(tiny(), tmp_path / "part", resume=True, quiet=True)
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if k != "wall_time_s"}  # noqa: E731
                          for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert strip(tmp_path / "whole") == strip(tmp_path / "part")
    assert (whole["test_acc_a"], whole["test_acc_b"]) == (resumed["test_acc_a"], resumed["test_acc_b"])
    with np.load(tmp_path / "whole" / "checkpoint.npz") as a, np.load(tmp_path / "part" / "checkpoint.npz") as b:
        for k in a.files:
            if k != "meta":
                assert np.array_equal(a[k], b[k]), k
    table = two_timescale.compare([tmp_path / "whole"]).splitlines()        # the docs' comparison table
    assert table[0].startswith("| method | A final | B final") and table[2].startswith("| dni | ")

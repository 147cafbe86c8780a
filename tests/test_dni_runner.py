"""Running schedules: exact agreement with backprop given exact gradients, the zero start, the bootstrapped target
by hand, the concurrent runner bit for bit, bounded memory, diagnostics and the trace."""

import numpy as np
import pytest

from minidni import nn, ops, optim
from minidni.dni import (ConcurrentRunner, ConvSynthesizer, DNINet, Oracle, Runner, Synthesizer, adam, mlp_modules,
                         one_hot, schedules as S, unlocked)
from minidni.dni.unlock import add_synthetic_inputs
from minidni.tensor import Tensor
from minidni.train import Backprop

F64 = np.float64
IN, HIDDEN, CLASSES, BATCH = 12, 8, 4, 16


def make_batches(n, seed=0, dtype=F64):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(BATCH, IN)).astype(dtype), rng.integers(0, CLASSES, BATCH)) for _ in range(n)]


def backprop_reference(batches, n_hidden, lr=1e-2):
    """Plain backprop on the same network (same init): the parameters every exact schedule must reproduce."""
    seq = nn.mlp(IN, HIDDEN, CLASSES, n_hidden, dtype=F64, rng=7)
    learner = Backprop(seq, optim.Adam(seq.parameters(), lr=lr))
    for x, y in batches:
        learner.train_step(x, y)
    return seq


def oracle_net(n_hidden, lr=1e-2):
    return DNINet(mlp_modules(IN, HIDDEN, CLASSES, n_hidden, dtype=F64, rng=7),
                  [Oracle() for _ in range(n_hidden)], optimizer=adam(lr))


def states(parts):
    """Every parameter, then every buffer (batch-norm statistics), of a list of modules, in order."""
    return ([p.data for part in parts for p in part.parameters()] +
            [b for part in parts for _, b in part.named_buffers()])


def assert_same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert np.array_equal(u, v)


@pytest.mark.parametrize("schedule", [S.locked(), S.dni(), S.stochastic(1.0, seed=4), S.delayed(2)], ids=repr)
def test_exact_gradients_reproduce_backprop_bit_for_bit(schedule):
    """With an Oracle at every interface, module i's update at batch b uses dL/dh_i computed by the modules above at
    their state before batch b -- exactly what backprop uses. (The runner's "dni" order updates module i before
    module i+1 has seen batch b, so nothing above has moved yet.) Parameters and batch-norm statistics agree exactly."""
    batches = make_batches(5)
    ref = backprop_reference(batches, n_hidden=3)
    net = oracle_net(n_hidden=3)
    Runner(net, schedule, batches).run()
    assert_same(states([ref]), states(net.modules))


def test_pipelined_with_an_oracle_is_exact_for_two_modules_and_stale_beyond():
    """At tick T module i works on batch T - i. With top-down order inside a tick, module 1 has just finished batch
    T - 1 when module 0 asks the oracle about batch T: exact for two modules. With more, the modules above lag
    further behind (module 2 has only seen batch T - 2): pipelining makes even true gradients stale."""
    batches = make_batches(5)
    net = oracle_net(n_hidden=1)
    Runner(net, S.pipelined(), batches).run()
    assert_same(states([backprop_reference(batches, 1)]), states(net.modules))
    net = oracle_net(n_hidden=3)
    Runner(net, S.pipelined(), batches).run()
    ref = backprop_reference(batches, 3)
    assert not all(np.allclose(a.data, b.data) for a, b in zip(ref.parameters(), net.module_parameters()))


def test_zero_synthesizer_leaves_the_lower_modules_unchanged_at_step_0():
    """g_hat = 0 at step 0, so Adam's first step is m/(sqrt(v) + eps) = 0/(0 + eps) = 0: modules below the top keep
    their parameters through batch 0; the top module (true loss) moves."""
    net = DNINet(mlp_modules(IN, HIDDEN, CLASSES, 2, dtype=F64, rng=7),
                 [Synthesizer(HIDDEN, CLASSES, dtype=F64, rng=1) for _ in range(2)], optimizer=adam(1e-2))
    before = [p.data.copy() for p in net.module_parameters()]
    runner = Runner(net, S.dni(), make_batches(2))
    runner.step()                                                    # forward(0, 0)
    inp, h = runner.store[("graph", 0, 0)]
    assert np.array_equal(net.interfaces[0].synthetic_gradient(h.data, make_batches(1)[0][1]), np.zeros_like(h.data))
    while runner.step().kind != "update_true":                       # to the end of batch 0's forwards and updates
        pass
    after = [p.data for p in net.module_parameters()]
    n_lower = len(net.modules[0].parameters()) + len(net.modules[1].parameters())
    assert all(np.array_equal(a, b) for a, b in zip(before[:n_lower], after[:n_lower]))
    assert not any(np.array_equal(a, b) for a, b in zip(before[n_lower:], after[n_lower:]))


def test_bootstrapped_target_by_hand():
    """Three modules, f_0 = relu(x W0 + c0), f_1 = relu(h0 W1 + c1), f_2 = h1 W2 + c2 (logits), linear synthesizers.

    Module 1 updates with g_hat_1 = h1 A1 + a1 and sends down the gradient at its input:
        target_0 = ((h1 A1 + a1) * [h0 W1 + c1 > 0]) W1^T            (W1 before its update)
    which is M_0's bootstrapped target. The top module sends down the true gradient:
        target_1 = ((softmax(h1 W2 + c2) - onehot(y)) / N) W2^T
    Then M_0 takes one SGD step on mean((h0 A0 + a0 - target_0)^2):
        A0 <- A0 - lr * 2 h0^T (h0 A0 + a0 - target_0) / (N D)
    """
    rng = np.random.default_rng(0)
    modules = [nn.Sequential(nn.Linear(IN, HIDDEN, dtype=F64, rng=1), nn.ReLU()),
               nn.Sequential(nn.Linear(HIDDEN, HIDDEN, dtype=F64, rng=2), nn.ReLU()),
               nn.Linear(HIDDEN, CLASSES, dtype=F64, rng=3)]
    synths = [Synthesizer(HIDDEN, dtype=F64) for _ in range(2)]
    for s in synths:
        s.net[-1].weight.data[...] = rng.normal(size=(HIDDEN, HIDDEN))
        s.net[-1].bias.data[...] = rng.normal(size=HIDDEN)
    lr = 0.1
    net = DNINet(modules, synths, optimizer=lambda p: optim.SGD(p, lr=0.05),
                 synth_optimizer=lambda p: optim.SGD(p, lr=lr))
    (x, y), = make_batches(1)
    W0, c0 = modules[0][0].weight.data.copy(), modules[0][0].bias.data.copy()
    W1, c1 = modules[1][0].weight.data.copy(), modules[1][0].bias.data.copy()
    W2, c2 = modules[2].weight.data.copy(), modules[2].bias.data.copy()
    A0, a0 = synths[0].net[-1].weight.data.copy(), synths[0].net[-1].bias.data.copy()
    A1, a1 = synths[1].net[-1].weight.data.copy(), synths[1].net[-1].bias.data.copy()

    h0 = np.maximum(x @ W0 + c0, 0)
    pre1 = h0 @ W1 + c1
    h1 = np.maximum(pre1, 0)
    target_0 = ((h1 @ A1 + a1) * (pre1 > 0)) @ W1.T
    z = h1 @ W2 + c2
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    target_1 = (p - one_hot(y, CLASSES, F64)) / BATCH @ W2.T

    runner = Runner(net, S.dni(), [(x, y)])
    seen = {}
    while (event := runner.step()) is not None:
        for key in (("dh", 0, 0), ("dh", 1, 0)):
            if key in runner.store:
                seen[key] = runner.store[key].copy()
        if event.kind == "train_synth" and event.module == 0:
            break
    assert np.allclose(seen[("dh", 0, 0)], target_0, rtol=1e-12, atol=1e-14)
    assert np.allclose(seen[("dh", 1, 0)], target_1, rtol=1e-12, atol=1e-14)
    residual = h0 @ A0 + a0 - target_0
    assert np.allclose(synths[0].net[-1].weight.data, A0 - lr * 2 * h0.T @ residual / (BATCH * HIDDEN), rtol=1e-12)
    assert np.allclose(synths[0].net[-1].bias.data, a0 - lr * 2 * residual.sum(0) / (BATCH * HIDDEN), rtol=1e-12)


def test_true_target_equals_the_backprop_gradient_and_leaves_the_net_untouched():
    net = DNINet(mlp_modules(IN, HIDDEN, CLASSES, 2, dtype=F64, rng=7),
                 [Synthesizer(HIDDEN, CLASSES, dtype=F64, rng=1) for _ in range(2)], target="true")
    (x, y), = make_batches(1)
    h0 = net.modules[0](Tensor(x)).data
    before = [a.copy() for a in states(net.modules[1:])]
    g = net.true_gradient(0, h0, y)
    assert_same(before, states(net.modules[1:]))        # batch-norm running statistics restored
    assert all(p.grad is None for p in net.module_parameters()[3:])
    h0t = Tensor(h0, requires_grad=True)
    ops.cross_entropy(net.modules[2](net.modules[1](h0t)), y).backward()
    assert np.array_equal(g, h0t.grad)


def dni_net(schedule, n_hidden=3, dtype=np.float32, synth_hidden=(16,), unlock=False):
    net = DNINet(mlp_modules(IN, HIDDEN, CLASSES, n_hidden, dtype=dtype, rng=7),
                 [Synthesizer(HIDDEN, CLASSES, hidden=synth_hidden, dtype=dtype, rng=10 + i) for i in range(n_hidden)],
                 optimizer=adam(1e-2), schedule=schedule)
    if unlock:
        add_synthetic_inputs(net, IN, rng=5)
    return net


@pytest.mark.parametrize("schedule", [S.pipelined(), S.dni(), unlocked()], ids=repr)
def test_concurrent_runner_is_bit_identical_to_the_sequential_runner(schedule):
    batches = make_batches(8, dtype=np.float32)
    unlock = schedule.name == "unlocked"
    seq_net, par_net = dni_net(schedule, unlock=unlock), dni_net(schedule, unlock=unlock)
    seq = Runner(seq_net, schedule, batches, blas_threads=1).run()   # the same BLAS thread count, see Runner
    with ConcurrentRunner(par_net, schedule, batches) as par:
        par.run()
    parts = lambda net: [part for _, part in net.named_parts()]  # noqa: E731 - modules, synthesizers, input models
    assert_same(states(parts(seq_net)), states(parts(par_net)))
    assert seq.log == par.log and seq.synth_log == par.synth_log
    assert {s.thread for s in par.trace.spans} == {f"dni-worker-{m}" for m in range(4)}
    assert not par.store and not seq.store


def test_concurrent_runner_refuses_what_would_race():
    with pytest.raises(ValueError, match="Oracle"):
        ConcurrentRunner(oracle_net(1), S.pipelined())
    net = DNINet(mlp_modules(IN, HIDDEN, CLASSES, 1, rng=7), [Synthesizer(HIDDEN)], target="true")
    with pytest.raises(ValueError, match="true"):
        ConcurrentRunner(net, S.pipelined())


def test_runner_frees_what_it_no_longer_needs():
    batches = make_batches(12, dtype=np.float32)
    for schedule, bound in ((S.dni(), 12), (S.delayed(3), 30), (S.pipelined(), 25)):
        runner = Runner(dni_net(schedule), schedule, batches)
        peak = 0
        while runner.step() is not None:
            peak = max(peak, len(runner.store))
        assert runner.store == {} and runner._refs == {}
        assert peak <= bound, (schedule, peak)        # independent of the number of batches
        assert len(runner.log) == 12 and runner.losses().shape == (12,)


def test_streaming_with_lazy_feeding_matches_the_planned_order():
    """step() feeds a batch only when nothing can run without it; the order equals schedule.events()."""
    schedule = S.pipelined()
    runner = Runner(dni_net(schedule), schedule, make_batches(5, dtype=np.float32))
    ran = []
    while (event := runner.step()) is not None:
        ran.append(event)
    assert ran == schedule.events(5, 4)


def test_hand_fed_batches_drain_one_event_at_a_time():
    """feed() by hand, then step(drain=True) runs what is left one event at a time, in the planned order."""
    schedule = S.pipelined()
    runner = Runner(dni_net(schedule), schedule)
    ran = []
    for x, y in make_batches(3, dtype=np.float32):
        runner.feed(x, y)
        while (event := runner.step()) is not None:
            ran.append(event)
    assert len(ran) < len(schedule.events(3, 4))          # the last batch waits for a next one that never comes
    while (event := runner.step(drain=True)) is not None:
        ran.append(event)
    assert ran == schedule.events(3, 4) and runner.store == {}


def test_diagnostics_compare_synthetic_and_true_gradients():
    net = oracle_net(2)
    runner = Runner(net, S.dni(), make_batches(4), diagnose_every=2).run()
    assert {(d["batch"], d["module"]) for d in runner.diagnostics} == {(0, 0), (0, 1), (2, 0), (2, 1)}
    assert all(d["cos"] == pytest.approx(1.0) and d["rel_err"] < 1e-12 for d in runner.diagnostics)
    # a linear cDNI learning from scratch: g_hat = 0 at step 0, then the top synthesizer (whose target is the true
    # gradient) lines up with the true gradient within a few dozen batches
    net = DNINet(mlp_modules(IN, HIDDEN, CLASSES, 3, dtype=F64, rng=7),
                 [Synthesizer(HIDDEN, CLASSES, dtype=F64, rng=10 + i) for i in range(3)], optimizer=adam(1e-3),
                 synth_optimizer=adam(1e-2))
    runner = Runner(net, S.dni(), make_batches(40), diagnose_every=1).run()
    first = [d for d in runner.diagnostics if d["batch"] == 0]
    assert len(first) == 3 and all(d["rel_err"] == 1.0 and d["cos"] == 0.0 for d in first)
    late = [d["cos"] for d in runner.diagnostics if d["batch"] >= 35 and d["module"] == 2]
    assert np.mean(late) > 0.6


def test_trace_records_who_was_busy_when(tmp_path):
    runner = Runner(dni_net(S.pipelined()), S.pipelined(), make_batches(4, dtype=np.float32)).run()
    assert len(runner.trace) == runner.events_run
    assert set(runner.trace.busy()) == {0, 1, 2, 3} and all(0 < u <= 1 for u in runner.trace.utilisation().values())
    assert set(runner.trace.by_kind()) == {"forward", "update_synthetic", "update_true", "train_synth"}
    runner.trace.draw(tmp_path / "trace.png")
    assert (tmp_path / "trace.png").stat().st_size > 1000


def hand_trace(spans):
    """A Trace from (kind, module, batch, start, end, thread) tuples, origin 0."""
    from minidni.dni.trace import Span, Trace
    from minidni.dni.schedules import Event

    trace = Trace(0.0)
    trace.spans = [Span(Event(k, m, b, 0), t0, t1, th) for k, m, b, t0, t1, th in spans]
    return trace


def test_trace_waits_measures_the_time_from_forward_to_update_from_above():
    # locked, two modules, one batch: F0 [0,1], F1 [1,2], L1 [2,3], B0 [3,4]; module 0 waits 2 s, module 1 none
    trace = hand_trace([("forward", 0, 0, 0, 1, "a"), ("forward", 1, 0, 1, 2, "a"),
                        ("update_true", 1, 0, 2, 3, "a"), ("backprop", 0, 0, 3, 4, "a"),
                        ("forward", 0, 1, 4, 5, "a"), ("forward", 1, 1, 5, 6, "a"),
                        ("update_true", 1, 1, 6.5, 7, "a"), ("backprop", 0, 1, 7, 8, "a")])
    assert trace.waits() == {0: 2.0 + 2.0, 1: 0.0 + 0.5}
    # a synthetic update is not waiting: under DNI only the top module (which needs the loss) has an entry
    dni_trace = hand_trace([("forward", 0, 0, 0, 1, "a"), ("update_synthetic", 0, 0, 1, 2, "a"),
                            ("forward", 1, 0, 2, 3, "a"), ("update_true", 1, 0, 3, 4, "a")])
    assert dni_trace.waits() == {1: 0.0}


def test_trace_overlap_counts_only_time_with_events_side_by_side():
    trace = hand_trace([("forward", 0, 0, 0.0, 2.0, "a"), ("forward", 1, 0, 1.0, 3.0, "b"),
                        ("forward", 2, 0, 1.5, 1.75, "c"), ("forward", 0, 1, 3.0, 4.0, "a")])
    assert trace.overlap() == pytest.approx(1.0)              # [1, 2]: a and b (touching spans at 3.0 do not count)
    assert trace.overlap(at_least=3) == pytest.approx(0.25)   # [1.5, 1.75]: a, b and c
    assert trace.overlap(at_least=1) == pytest.approx(4.0)    # time with anything running
    with pytest.raises(ValueError, match="at_least"):
        trace.overlap(at_least=0)


def test_runner_traces_waits_and_overlap():
    seq = Runner(dni_net(S.locked()), S.locked(), make_batches(3, dtype=np.float32)).run()
    waits = seq.trace.waits()
    assert set(waits) == {0, 1, 2, 3} and waits[0] > waits[1] > waits[2] > 0   # the lower, the longer it waits
    assert seq.trace.overlap() == 0.0                          # one event at a time
    dni_run = Runner(dni_net(S.dni()), S.dni(), make_batches(3, dtype=np.float32)).run()
    assert set(dni_run.trace.waits()) == {3}                   # only the top module updates from the loss


def test_named_parts_lists_every_learning_part_under_its_state_dict_name():
    net = dni_net(S.dni())
    names = [name for name, _ in net.named_parts()]
    assert names == ["module0", "module1", "module2", "module3", "synth0", "synth1", "synth2"]
    assert {key.split("/")[0] for key in net.state_dict() if not key.startswith(("optim", "dni"))} == set(names)
    assert [p for _, part in net.named_parts() for p in part.parameters()] == net.parameters()


def conv_layers(seed=7):
    """A tiny CNN as three modules: [conv-BN-ReLU], [conv-ReLU], [maxpool-flatten-linear] on (B, 1, 6, 6) images."""
    rng = np.random.default_rng(seed)
    return [nn.Sequential(nn.Conv2d(1, 3, 3, dtype=F64, rng=rng), nn.BatchNorm2d(3, dtype=F64), nn.ReLU()),
            nn.Sequential(nn.Conv2d(3, 3, 3, dtype=F64, rng=rng), nn.ReLU()),
            nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, CLASSES, dtype=F64, rng=rng))]


def image_batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(BATCH, 1, 6, 6)), rng.integers(0, CLASSES, BATCH)) for _ in range(n)]


def test_conv_modules_with_oracles_reproduce_backprop_and_conv_synthesizers_run_concurrently():
    """Nothing in the runner assumes 2-D activations: feature maps (B, C, H, W) flow the same way."""
    batches = image_batches(3)
    ref = nn.Sequential(*conv_layers())
    learner = Backprop(ref, optim.Adam(ref.parameters(), lr=1e-2))
    for x, y in batches:
        learner.train_step(x, y)
    net = DNINet(conv_layers(), [Oracle(), Oracle()], optimizer=adam(1e-2))
    Runner(net, S.dni(), batches).run()
    assert_same(states([ref]), states(net.modules))

    def conv_dni():
        return DNINet(conv_layers(), [ConvSynthesizer(3, CLASSES, hidden=(4,), kernel_size=5, dtype=F64, rng=i)
                                      for i in range(2)], optimizer=adam(1e-2))
    a, b = conv_dni(), conv_dni()
    Runner(a, S.pipelined(), batches, blas_threads=1).run()
    with ConcurrentRunner(b, S.pipelined(), batches) as runner:
        runner.run()
    assert_same(states([p for _, p in a.named_parts()]), states([p for _, p in b.named_parts()]))

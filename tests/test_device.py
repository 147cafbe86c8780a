"""Devices (minidni/device.py): Tensor.device / .to, Module.to with the optimizer's state, the error for two devices in
one op, the error for cuda without a GPU, and training on a device.

A GPU is not needed: `boxed` is a fake second device whose arrays are NumPy arrays in a box that refuses NumPy
arithmetic (no __array__, no operators; basic indexing gives views, as on numba.cuda arrays). Its backend offers what
ModuleDevice calls, exactly as minidni.kernels.gpu does (the primitives, to_device / to_host, and every kernel of
kernels.reference), so any op that still computes with NumPy directly on a device array fails here, and a training
step on it must equal the cpu's NumPy backend bit for bit.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minidni import device as devices
from minidni import kernels, nn, ops
from minidni.device import CPU, DeviceMismatch, DeviceUnavailable, ModuleDevice
from minidni.kernels import reference
from minidni.optim import SGD, Adam
from minidni.tensor import Tensor

ROOT = Path(__file__).resolve().parents[1]


# ---- the fake device ------------------------------------------------------------------------------------------------
class Box:
    """A 'device array': a NumPy array behind the attributes numba device arrays have, and nothing else."""

    __slots__ = ("a",)

    def __init__(self, a):
        self.a = a

    shape = property(lambda self: self.a.shape)
    dtype = property(lambda self: self.a.dtype)
    size = property(lambda self: self.a.size)
    ndim = property(lambda self: self.a.ndim)

    def reshape(self, *shape):
        return Box(self.a.reshape(*shape))

    def __getitem__(self, index):
        """Basic indexing gives a view, as numba.cuda device arrays do (a[t] of a (T, B, H) array is (B, H))."""
        if not isinstance(index, (int, slice)):
            raise TypeError(f"a boxed device array takes an int or a slice, got {type(index).__name__}")
        return Box(self.a[index])

    def copy_to_device(self, src):
        np.copyto(self.a, src.a if isinstance(src, Box) else src)

    def copy_to_host(self):
        return self.a.copy()

    def __array__(self, *args, **kwargs):
        raise TypeError("a boxed device array was used as a NumPy array: an op computed on the host")


def _unbox(v):
    if isinstance(v, Box):
        return v.a
    if isinstance(v, (tuple, list)):
        return type(v)(_unbox(x) for x in v)
    return v


def _box(v):
    if isinstance(v, np.ndarray):
        return Box(v if v.flags.c_contiguous else v.copy())   # (np.ascontiguousarray makes 0-d arrays 1-d)
    if isinstance(v, np.generic):
        return Box(np.asarray(v))
    if isinstance(v, tuple):
        return tuple(_box(x) for x in v)
    return v


class BoxedBackend:
    """ModuleDevice's backend over Box arrays, computed by NumPy: what minidni.kernels.gpu offers, minus the GPU.
    `calls` records every primitive and kernel called, by name."""

    NAME = "boxed"

    def __init__(self):
        self.calls, self.host_shapes = [], []           # host_shapes: the shape of everything to_host brought back
        for name in dir(reference):
            fn = getattr(reference, name)
            if callable(fn) and not name.startswith("_") and getattr(fn, "__module__", "") == reference.__name__:
                setattr(self, name, self._kernel(name, fn))

    def _kernel(self, name, fn):
        def run(*args, **kwargs):
            self.calls.append(name)
            for v in (*args, *kwargs.values()):
                assert not isinstance(v, np.ndarray) or v.ndim == 0, f"{name}: got a host array"
            out = fn(*_unbox(args), **{k: _unbox(v) for k, v in kwargs.items()})
            return _box(out) if not name.endswith("_") else None
        return run

    def _record(self, name):
        self.calls.append(name)

    def unary(self, op, x):
        self._record("unary")
        return _box(CPU.unary(op, x.a))

    def binary(self, op, a, b):
        self._record("binary")
        for v in (a, b):
            assert isinstance(v, (Box, int, float)), f"binary: got {type(v).__name__}"
        return _box(np.asarray(CPU.binary(op, _unbox(a), _unbox(b))))

    def reduce(self, op, x, axis, keepdims):
        self._record("reduce")
        return _box(CPU.reduce(op, x.a, axis, keepdims))

    def argmax(self, x, axis):
        self._record("argmax")
        return _box(x.a.argmax(axis=axis))

    def matmul(self, a, b, variant=3):
        self._record("matmul")
        return _box(np.matmul(a.a, b.a))

    def transpose(self, x, axes):
        self._record("transpose")
        return _box(np.transpose(x.a, axes))

    def take(self, x, idx, axis=0):
        self._record("take")
        return _box(np.take(x.a, idx.a, axis=axis))

    def scatter_add(self, out, idx, g, axis=0):
        self._record("scatter_add")
        CPU.scatter_add(out.a, idx.a, g.a, axis)

    def full(self, shape, value, dtype):
        self._record("full")
        return Box(np.full(shape, value, dtype=dtype))

    def copy(self, x):
        self._record("copy")
        return Box(x.a.copy())

    def where(self, cond, a, b):
        self._record("where")
        return _box(np.where(cond.a, _unbox(a), _unbox(b)))

    def cast(self, x, dtype):
        self._record("cast")
        return Box(x.a.astype(dtype))

    def slice_copy(self, x, index):
        self._record("slice_copy")
        assert isinstance(index, tuple)
        return Box(np.array(x.a[index], copy=True))

    def slice_add(self, out, index, g):
        self._record("slice_add")
        out.a[index] += g.a

    def concatenate(self, xs, axis):
        self._record("concatenate")
        return Box(np.concatenate([x.a for x in xs], axis=axis))

    def pad(self, x, pads):
        self._record("pad")
        return Box(np.pad(x.a, pads))

    def to_device(self, a):
        self._record("to_device")
        assert isinstance(a, np.ndarray)
        return Box(np.array(a, copy=True))

    def to_host(self, x):
        self._record("to_host")
        self.host_shapes.append(x.shape)
        return x.a.copy()

    def is_available(self):
        return True

    def why_unavailable(self):
        return ""


@pytest.fixture
def boxed():
    dev = devices.register(ModuleDevice("boxed", BoxedBackend(), (Box,)))
    try:
        with kernels.use_backend("numpy"):      # the boxed kernels are the NumPy reference: compare like with like
            yield dev
    finally:
        devices.unregister("boxed")


def _arrays_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)


# ---- Tensor.device and .to -------------------------------------------------------------------------------------------
def test_a_tensor_is_on_the_cpu_and_to_cpu_is_itself():
    t = Tensor(np.arange(6.0, dtype=np.float32).reshape(2, 3))
    assert t.device is CPU and t.to("cpu") is t and str(t.device) == "cpu"


def test_to_a_device_and_back_is_an_exact_round_trip(boxed):
    t = Tensor(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32), requires_grad=True, name="w")
    d = t.to("boxed")
    assert d.device is boxed and isinstance(d.data, Box) and d.requires_grad and d.name == "w"
    assert d.shape == (3, 4) and d.dtype == np.float32 and len(d) == 3
    back = d.to(CPU)
    assert back.device is CPU and np.array_equal(back.data, t.data) and back.data is not t.data
    assert np.array_equal(d.numpy(), t.data) and "device=boxed" in repr(d)


def test_only_leaves_move():
    x = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    y = x * 2
    with pytest.raises(RuntimeError, match="only leaves move"):
        y.to(ModuleDevice("other", BoxedBackend(), (Box,)))


def test_an_unknown_device_names_the_choices():
    with pytest.raises(ValueError, match="unknown device 'tpu'.*cpu.*cuda"):
        Tensor(np.ones(2)).to("tpu")


# ---- two devices in one op ------------------------------------------------------------------------------------------
def test_mixing_devices_in_one_op_names_both(boxed):
    a = Tensor(np.ones((2, 2), dtype=np.float32))
    b = Tensor(np.ones((2, 2), dtype=np.float32)).to("boxed")
    for f in (lambda: a + b, lambda: ops.matmul(b, a), lambda: ops.linear(a, b)):
        with pytest.raises(DeviceMismatch, match=r"input 0 is on (cpu|boxed) but input 1 is on (boxed|cpu)"):
            f()


def test_a_model_on_a_device_refuses_host_inputs(boxed):
    model = nn.Linear(3, 2).to("boxed")
    with pytest.raises(DeviceMismatch, match="cpu.*boxed|boxed.*cpu"):
        model(Tensor(np.ones((4, 3), dtype=np.float32)))


# ---- Module.to and the optimizer's state ----------------------------------------------------------------------------
def test_module_to_moves_parameters_buffers_and_the_optimizer_state(boxed):
    model = nn.mlp(4, 5, 3, n_hidden=1, rng=0)            # Linear, BatchNorm1d (buffers), ReLU, Linear
    opt = Adam(model.parameters(), lr=1e-2)
    params = model.parameters()
    x, y = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32), np.arange(6) % 3
    ops.cross_entropy(model(Tensor(x)), y).backward()
    opt.step()                                            # state on the cpu
    state_cpu = model.state_dict()
    assert model.to("boxed") is model and model.device is boxed
    assert model.parameters() == params                    # the same Parameter objects: the optimizer still holds them
    assert all(isinstance(p.data, Box) and isinstance(p.grad, Box) for p in params)
    assert all(isinstance(b, Box) for _, b in model.named_buffers())
    assert _arrays_equal(list(model.state_dict().values()), list(state_cpu.values()))   # host copies, same values
    assert all(isinstance(v, np.ndarray) for v in model.state_dict().values())
    opt.step()                                            # the moments follow their parameters
    assert all(isinstance(m, Box) for m in opt.m + opt.v)
    opt.to("cpu")
    assert all(isinstance(m, np.ndarray) for m in opt.m + opt.v)
    assert all(isinstance(v, np.ndarray) for v in opt.state_dict().values())


def test_an_optimizer_made_on_the_device_keeps_its_state_there(boxed):
    model = nn.Linear(3, 2, rng=0).to("boxed")
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert all(isinstance(b, Box) for b in opt.buf)
    opt.load_state_dict(opt.state_dict())                 # host state in, device buffers kept
    assert all(isinstance(b, Box) for b in opt.buf)


def test_state_dict_round_trip_across_devices(boxed, tmp_path):
    a = nn.mlp(4, 5, 3, n_hidden=1, rng=0)
    a.save(tmp_path / "a.npz")
    b = nn.mlp(4, 5, 3, n_hidden=1, rng=7).to("boxed")
    b.load(tmp_path / "a.npz")
    assert all(isinstance(p.data, Box) for p in b.parameters())
    assert _arrays_equal(list(b.state_dict().values()), list(a.state_dict().values()))


# ---- one training step on the device equals the cpu's -----------------------------------------------------------------
def _mlp_step(model, opt, x, y):
    logits = model(Tensor(x).to(model.device))
    loss = ops.cross_entropy(logits, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


@pytest.mark.parametrize("fused", [False, True])
def test_an_mlp_step_on_the_device_is_the_cpu_step_bit_for_bit(boxed, fused):
    x, y = np.random.default_rng(2).standard_normal((8, 6)).astype(np.float32), np.arange(8) % 4
    runs = []
    for where in ("cpu", "boxed"):
        model = nn.mlp(6, 7, 4, n_hidden=2, rng=3, fused=fused).to(where)
        opt = Adam(model.parameters(), lr=1e-2)
        losses = [_mlp_step(model, opt, x, y) for _ in range(2)]
        runs.append((losses, model.state_dict(), opt.state_dict()))
    (l0, s0, o0), (l1, s1, o1) = runs
    assert l0 == l1
    assert s0.keys() == s1.keys() and all(np.array_equal(s0[k], s1[k]) for k in s0)
    assert o0.keys() == o1.keys() and all(np.array_equal(o0[k], o1[k]) for k in o0)
    calls = set(boxed.kernels.calls)
    assert {"adam_step_", "softmax_xent_forward", "softmax_xent_backward", "to_device"} <= calls
    assert "to_host" in calls                             # the loss (and nothing else big) came back


def test_broadcasting_reductions_shapes_and_indexing_on_the_device(boxed):
    """The ops that were single NumPy calls, on the device: values and gradients equal the cpu's."""
    rng = np.random.default_rng(4)
    a0, b0 = rng.standard_normal((3, 4)), rng.standard_normal((4,))

    def graph(dev):
        a, b = Tensor(a0, requires_grad=True).to(dev), Tensor(b0, requires_grad=True).to(dev)
        y = (a * b - b / (a * a + 1.0)).exp().log()
        y = ops.concat([y, -a], axis=0)[1:5].transpose() + 2.0
        z = ops.reshape(y, (-1,)).sum() + y.mean(axis=0).sum() + ops.sum(y[np.array([0, 2, 0])], axis=(0, 1))
        z = z + ops.mse_loss(y, ops.reshape(y, (4, 4)) * 0.5, reduction="sum")
        z.backward()
        return z.item(), a.grad if dev == "cpu" else boxed.to_host(a.grad), \
            b.grad if dev == "cpu" else boxed.to_host(b.grad)

    cpu, dev = graph("cpu"), graph("boxed")
    assert cpu[0] == dev[0] and np.array_equal(cpu[1], dev[1]) and np.array_equal(cpu[2], dev[2])


def test_a_cnn_step_on_the_device_is_the_cpu_step(boxed):
    x = np.random.default_rng(5).standard_normal((2, 1, 6, 6)).astype(np.float32)
    y = np.array([0, 2])
    out = []
    for where in ("cpu", "boxed"):
        model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False, rng=0), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(2, 2, 3, rng=1), nn.AvgPool2d(3), nn.Flatten(), nn.Linear(2, 3, rng=2))
        model.to(where)
        opt = Adam(model.parameters(), lr=1e-2)
        out.append((_mlp_step(model, opt, x, y), model.state_dict()))
    assert out[0][0] == out[1][0] and all(np.array_equal(out[0][1][k], out[1][1][k]) for k in out[0][1])


@pytest.mark.parametrize("per_step", [False, True])
def test_an_lstm_window_on_the_device_is_the_cpu_window_bit_for_bit(boxed, per_step):
    """nn.LSTM (ops.lstm, or T ops.lstm_cell) forward and backward through every output, the final state and the
    initial state, on the device: the cpu's numbers exactly, through the device's LSTM gate kernels."""
    rng = np.random.default_rng(7)
    x0, h00, c00 = rng.standard_normal((3, 4, 5)), rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    gs = rng.standard_normal((3, 4, 6))
    out = []
    for where in ("cpu", "boxed"):
        lstm = nn.LSTM(5, 6, rng=1, dtype=np.float64, per_step=per_step).to(where)
        x, h0, c0 = (Tensor(a, requires_grad=True).to(where) for a in (x0, h00, c00))
        outs, (h, c) = lstm(x, state=(h0, c0))
        loss = sum((o * Tensor(g).to(where)).sum() for o, g in zip(outs, gs)) + (c * c).sum() + h.sum()
        loss.backward()
        host = (lambda a: a) if where == "cpu" else boxed.to_host
        out.append([loss.item()] + [host(t.grad) for t in (x, h0, c0, lstm.W_x, lstm.W_h, lstm.b)])
    assert out[0][0] == out[1][0] and _arrays_equal(out[0][1:], out[1][1:])
    assert {"lstm_gates_forward", "lstm_gates_backward"} <= set(boxed.kernels.calls)
    zero_state, _ = nn.LSTM(5, 6, rng=1).to("boxed")(Tensor(x0.astype(np.float32)).to("boxed"))
    assert zero_state[0].device is boxed           # the zero initial state is made on the parameters' device


def _recurrent_learner(method, where, T=2, synth_to_core=False):
    from minidni.dni.aux import AuxHead
    from minidni.dni.recurrent_runner import RecurrentLearner
    from minidni.dni.recurrent_synthesizer import RecurrentSynthesizer
    from minidni.dni.tbptt import tbptt

    core, readout = nn.LSTM(3, 4, rng=0), nn.Linear(4, 2, rng=1)
    synth = RecurrentSynthesizer(4, rng=2) if method != "bptt" else None
    aux = AuxHead(4, rng=3) if method == "dni-aux" else None
    learner = RecurrentLearner(core, readout, tbptt(T, method, synth_to_core), synth, aux,
                               optimizer=lambda ps: Adam(ps, lr=1e-2))
    if synth is not None:        # a synthesizer that says something: its zero-initialised output layer, nudged
        synth.net[-1].weight.data[...] = np.random.default_rng(4).standard_normal(synth.net[-1].weight.shape) * 0.1
    return learner.to(where)


@pytest.mark.parametrize("method,synth_to_core", [("bptt", False), ("dni", False), ("dni", True), ("dni-aux", False)])
def test_truncated_bptt_with_synthetic_gradients_on_the_device_is_the_cpu_run_bit_for_bit(boxed, method,
                                                                                          synth_to_core):
    """Copy-style episodes (bit loss, mask, synthesizer, Aux) and a PTB-style endless stream resumed from its
    checkpoint state, on the device: the cpu's losses, logits and parameters exactly."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 3, 3)).astype(np.float32)
    y, m = (rng.random((5, 3, 2)) < 0.5).astype(np.float32), (rng.random((5, 3)) < 0.7).astype(np.float32)
    runs = []
    for where in ("cpu", "boxed"):
        learner = _recurrent_learner(method, where, synth_to_core=synth_to_core)
        eps = [learner.train_episode(x, y, m) for _ in range(2)]
        out = [(e["loss"], e["synth_loss"], e["aux_loss"]) for e in eps] + [e["logits"] for e in eps]
        out.append(learner.predict(x))
        learner.start_stream(3)
        out += [learner.train_window(x[2 * k:2 * k + 2], y[2 * k:2 * k + 2], None)["loss"] for k in range(2)]
        saved = {**learner.state_dict(), **{f"stream/{k}": v for k, v in learner.stream_state().items()}}
        assert all(isinstance(v, np.ndarray) for v in saved.values()), "a checkpoint holds host arrays only"
        again = _recurrent_learner(method, where, synth_to_core=synth_to_core)
        again.load_state_dict({k: v for k, v in saved.items() if not k.startswith("stream/")})
        again.load_stream_state({k[7:]: v for k, v in saved.items() if k.startswith("stream/")})
        out.append(again.train_window(x[:2], y[:2], None)["loss"])
        out.append(learner.train_window(x[:2], y[:2], None)["loss"])
        runs.append((out, learner.state_dict()))
    (o0, s0), (o1, s1) = runs
    assert o0[:2] == o1[:2] and _arrays_equal(o0[2:5], o1[2:5]) and o0[5:] == o1[5:]
    assert o1[-1] == o1[-2]                                 # the resumed stream continues exactly
    assert s0.keys() == s1.keys() and all(np.array_equal(s0[k], s1[k]) for k in s0)
    assert {"lstm_gates_forward", "lstm_gates_backward"} <= set(boxed.kernels.calls)


def test_the_copy_and_ptb_experiments_run_on_the_device_as_on_the_cpu(boxed, tmp_path):
    """copy-dni-aux and ptb-dni-aux with device = the fake device: the cpu run's records and results exactly, and a
    sample from the model on the device is the cpu's text."""
    import json

    from minidni.config import override
    from minidni.experiments import get
    from minidni.experiments.ptb import build_learner, sample
    from minidni.data.ptb import CharVocab

    text = tmp_path / "text.txt"
    text.write_text("\n".join(" ".join(np.random.default_rng(k).choice(["the", "cat", "sat", "on", "mat"], 5))
                               for k in range(60)))
    runs = {
        "copy-dni-aux": dict(hidden=6, width=3, batch_size=4, T=2, steps=6, check_every=2, solved_bits=10.0,
                             log_every=2, checkpoint_every=0),           # every check solves: the curriculum moves
        "ptb-dni-aux": dict(text_file=str(text), hidden=6, batch_size=4, T=3, steps=6, eval_every=3, eval_count=0,
                            log_every=2, checkpoint_every=0, eval_batch_size=2, eval_window=5),
    }
    timing = {"wall_time_s", "train_time_s", "episodes_per_s", "chars_per_s"}
    for name, values in runs.items():
        got = []
        for where in ("cpu", "boxed"):
            cfg = override(get(name).config(), {**values, "backend": "numpy"})
            object.__setattr__(cfg, "device", where)     # not a config choice: the fake device only
            seen = set()
            hook = (lambda step, curriculum, learner: seen.add(learner.device.name)) if name.startswith("copy") \
                else (lambda step, learner: seen.add(learner.device.name))
            summary = get(name).run(cfg, tmp_path / f"{name}-{where}", quiet=True, hooks=[hook])
            assert seen == {where}
            records = [{k: v for k, v in json.loads(line).items() if k not in timing}
                       for line in (tmp_path / f"{name}-{where}" / "metrics.jsonl").read_text().splitlines()]
            keys = ("test_bpc", "best_val_bpc", "best_step") if name.startswith("ptb") else ("max_length", "level")
            got.append((records, [summary[k] for k in keys]))
        assert got[0] == got[1], name
    assert {"lstm_gates_forward", "lstm_gates_backward", "adam_step_"} <= set(boxed.kernels.calls)
    two = dict(T=2, fcn=8, hidden=6, message=4, hidden_b=5, synth_hidden=6, batch_size=4, steps=4, log_every=2,
               checkpoint_every=2, eval_every=2, eval_streams=4, eval_windows=1)
    for name in ("two-timescale-dni", "two-timescale-bptt"):
        got = []
        for where in ("cpu", "boxed"):
            cfg = override(get(name).config(), {**two, "backend": "numpy"})
            object.__setattr__(cfg, "device", where)
            seen = set()
            get(name).run(cfg, tmp_path / f"{name}-{where}", quiet=True,
                          hooks=[lambda w, stats, learner: seen.add(learner.device.name)])
            assert seen == {where}
            got.append([{k: v for k, v in json.loads(line).items() if k not in timing}
                        for line in (tmp_path / f"{name}-{where}" / "metrics.jsonl").read_text().splitlines()])
        assert got[0] == got[1], name
    vocab = CharVocab(sorted(set(text.read_text())))
    texts = []
    for where in ("cpu", "boxed"):
        learner = build_learner(override(get("ptb-dni").config(), {"hidden": 6}), "dni", len(vocab)).to(where)
        texts.append(sample(learner.core, learner.readout, vocab, chars=20, seed=3, prime="the "))
    assert texts[0] == texts[1] and len(texts[0]) == 20


def _dni_state(schedule, where, unlock=False):
    from minidni import dni
    from minidni.dni.net import mnist_fcn

    net = mnist_fcn(layers=3, hidden=6, in_features=5, n_classes=3, conditioned=True, synth_hidden=(4,),
                    synthesizer="mlp", seed=0, schedule=schedule)
    if unlock:
        dni.add_synthetic_inputs(net, 5, rng=1)
    net.to(where)
    rng = np.random.default_rng(6)
    outs = [net.train_step(rng.standard_normal((4, 5)).astype(np.float32), rng.integers(0, 3, 4)) for _ in range(2)]
    outs.append(net.eval_step(rng.standard_normal((4, 5)).astype(np.float32), np.arange(4) % 3))
    return outs, net.state_dict()


@pytest.mark.parametrize("kind", ["dni", "locked", "unlocked"])
def test_dni_schedules_on_the_device_are_the_cpu_run_bit_for_bit(boxed, kind):
    from minidni.dni import schedules, unlock

    schedule = {"dni": schedules.dni, "locked": schedules.locked, "unlocked": unlock.unlocked}[kind]
    (o0, s0), (o1, s1) = (_dni_state(schedule(), where, unlock=kind == "unlocked") for where in ("cpu", "boxed"))
    assert o0 == o1
    assert s0.keys() == s1.keys() and all(np.array_equal(s0[k], s1[k]) for k in s0)


@pytest.mark.parametrize("kind", ["mlp", "cdni", "unlocked"])
def test_only_logged_scalars_come_back_during_a_step(boxed, kind):
    """Tensors stay on the device for the whole training step: to_host sees only 0-d arrays (loss, correct count)."""
    from minidni import dni
    from minidni.dni.net import mnist_fcn
    from minidni.train import Backprop

    x, y = np.random.default_rng(8).standard_normal((4, 5)).astype(np.float32), np.array([0, 1, 2, 1])
    if kind == "mlp":
        model = nn.mlp(5, 6, 3, n_hidden=2, rng=0)
        learner = Backprop(model, Adam(model.parameters())).to("boxed")
    else:
        learner = mnist_fcn(layers=3, hidden=6, in_features=5, n_classes=3, conditioned=True, seed=0,
                            schedule=dni.unlocked() if kind == "unlocked" else None)
        if kind == "unlocked":
            dni.add_synthetic_inputs(learner, 5, rng=1)
        learner.to("boxed")
    boxed.kernels.host_shapes.clear()
    out = learner.train_step(x, y)
    assert boxed.kernels.host_shapes and all(shape == () for shape in boxed.kernels.host_shapes)
    assert isinstance(out["loss"], float) and isinstance(out["correct"], int)


def test_the_trainer_trains_on_the_device_from_the_config(boxed, tmp_path):
    """config.device moves the learner before the first step (here the fake device, accepted for the test)."""
    from minidni.config import TrainConfig
    from minidni.data import BatchIterator
    from minidni.train import Backprop, Trainer

    x, y = np.random.default_rng(7).standard_normal((16, 5)).astype(np.float32), np.arange(16) % 3
    config = TrainConfig(steps=3, batch_size=8, log_every=1, checkpoint_every=0, backend="numpy")
    object.__setattr__(config, "device", "boxed")         # not a config choice: the fake device only
    model = nn.mlp(5, 4, 3, n_hidden=1, rng=0)
    learner = Backprop(model, Adam(model.parameters()))
    batches = BatchIterator(x, y, 8, seed=0, drop_last=True)
    summary = Trainer(learner, batches, config, tmp_path, val=(x, y), quiet=True).fit()
    assert model.device is boxed and summary["steps"] == 3 and summary["device"] == "boxed"


# ---- cuda without a GPU -------------------------------------------------------------------------------------------------
def _no_gpu_here():
    try:
        from numba import cuda
        return not cuda.is_available()
    except ImportError:
        return True


needs_no_gpu = pytest.mark.skipif(not _no_gpu_here() or os.environ.get("NUMBA_ENABLE_CUDASIM") == "1",
                                  reason="this machine has a GPU (or the simulator is on): cuda is available")


@needs_no_gpu
def test_cuda_without_a_gpu_says_so_and_what_to_do():
    with pytest.raises(DeviceUnavailable) as err:
        Tensor(np.ones(2)).to("cuda")
    text = str(err.value)
    assert "device 'cuda'" in text and "--device cpu" in text and "NUMBA_ENABLE_CUDASIM=1" in text


@needs_no_gpu
def test_cli_device_cuda_without_a_gpu_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "minidni", "run", "mnist-fcn-bprop", "--device", "cuda", "--steps",
                           "1", "--out", str(tmp_path / "run"), "--quiet"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env={**os.environ, "NUMBA_ENABLE_CUDASIM": "0"})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minidni run: error: device 'cuda'") and "--device cpu" in lines[0]
    assert not (tmp_path / "run").exists()               # refused before anything was written


def test_device_is_a_config_field_and_a_flag():
    from minidni.cli import build_parser
    from minidni.config import ConfigError, TrainConfig

    assert TrainConfig().device == "cpu" and TrainConfig(device="cuda").device == "cuda"
    with pytest.raises(ConfigError, match="device must be one of 'cpu', 'cuda'"):
        TrainConfig(device="gpu")
    args = build_parser().parse_args(["run", "mnist-fcn-bprop", "--device", "cuda"])
    assert args.device == "cuda"


# ---- the real cuda backend under the simulator ------------------------------------------------------------------------
SIM_SCRIPT = r"""
import numpy as np
from minidni import kernels, nn, ops
from minidni.optim import Adam
from minidni.tensor import Tensor
from minidni.dni.net import mnist_fcn

def mlp(where):
    model = nn.mlp(5, 4, 3, n_hidden=1, rng=0).to(where)
    opt = Adam(model.parameters(), lr=1e-2)
    x, y = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32), np.array([0, 1, 2, 1])
    loss = ops.cross_entropy(model(Tensor(x).to(where)), y)
    opt.zero_grad(); loss.backward(); opt.step()
    return [loss.item()] + list(model.state_dict().values())

def dni(where):
    net = mnist_fcn(layers=3, hidden=4, in_features=5, n_classes=3, conditioned=True, seed=0).to(where)
    rng = np.random.default_rng(2)
    out = net.train_step(rng.standard_normal((4, 5)).astype(np.float32), rng.integers(0, 3, 4))
    return [out["loss"]] + list(net.state_dict().values())

def lstm(where):
    core, readout = nn.LSTM(3, 4, rng=0).to(where), nn.Linear(4, 3, rng=1).to(where)
    opt = Adam(core.parameters() + readout.parameters(), lr=1e-2)
    x, y = np.random.default_rng(3).standard_normal((3, 2, 3)).astype(np.float32), np.array([0, 1, 2, 1, 0, 2])
    outs, _ = core(Tensor(x).to(where))
    loss = ops.cross_entropy(readout(ops.concat(outs, axis=0)), y)
    opt.zero_grad(); loss.backward(); opt.step()
    return [loss.item()] + list(core.state_dict().values()) + list(readout.state_dict().values())

def copy(where):    # truncated BPTT with a synthesizer and Aux on Copy-style data: the bit loss, mask and boundary
    from minidni.dni.aux import AuxHead
    from minidni.dni.recurrent_runner import RecurrentLearner
    from minidni.dni.recurrent_synthesizer import RecurrentSynthesizer
    from minidni.dni.tbptt import tbptt
    synth = RecurrentSynthesizer(3, rng=2)
    synth.net[-1].weight.data[...] = 0.1
    learner = RecurrentLearner(nn.LSTM(2, 3, rng=0), nn.Linear(3, 2, rng=1), tbptt(2, "dni-aux"), synth,
                               AuxHead(3, rng=3)).to(where)
    r = np.random.default_rng(4)
    x, y = r.standard_normal((4, 2, 2)).astype(np.float32), (r.random((4, 2, 2)) < 0.5).astype(np.float32)
    out = learner.train_episode(x, y, np.ones((4, 2), np.float32))
    return [out["loss"], out["synth_loss"], out["aux_loss"], out["logits"]] + list(learner.state_dict().values())

with kernels.use_backend("numpy"):
    for name, f in (("mlp", mlp), ("dni", dni), ("lstm", lstm), ("copy", copy)):
        cpu, gpu = f("cpu"), f("cuda")
        for a, b in zip(cpu, gpu):
            np.testing.assert_allclose(np.asarray(b, dtype=np.float64), np.asarray(a, dtype=np.float64),
                                       rtol=1e-4, atol=1e-5)
        print(name, "ok")
"""


def _gpu_backend_ready():
    """minidni.kernels.gpu exists and has every function of the contract the plumbing calls."""
    path = ROOT / "minidni" / "kernels" / "gpu.py"
    if not path.is_file():
        return False, "minidni/kernels/gpu.py does not exist"
    text = path.read_text()
    needed = ["unary", "binary", "reduce", "argmax", "matmul", "transpose", "full", "copy", "cast", "slice_copy",
              "concatenate", "to_device", "to_host", "is_available", "linear_forward", "adam_step_",
              "softmax_xent_forward", "batchnorm_train_forward", "mse_forward"]
    missing = [n for n in needed if f"def {n}(" not in text]
    return (not missing), f"minidni/kernels/gpu.py lacks {', '.join(missing)}"


def test_one_step_on_cuda_under_the_simulator_matches_the_cpu():
    ready, why = _gpu_backend_ready()
    if not ready:
        pytest.skip(why)
    proc = subprocess.run([sys.executable, "-c", SIM_SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=280,
                          env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mlp ok" in proc.stdout and "dni ok" in proc.stdout and "lstm ok" in proc.stdout and "copy ok" in proc.stdout


def _real_gpu():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False
    try:
        from numba import cuda
        return cuda.is_available()
    except ImportError:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _real_gpu(), reason="needs a real CUDA GPU (benchmarks/gpu_check.sh runs pytest -m gpu)")
def test_one_step_on_a_real_gpu_matches_the_cpu():
    """The simulator test's MLP and cDNI steps on the GPU itself (numba.cuda device arrays, no simulator)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    script = SIM_SCRIPT + ("\nfrom minidni.device import get_device\n"
                           "assert 'DeviceNDArray' in get_device('cuda').array_types[0].__name__\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=200,
                          env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mlp ok" in proc.stdout and "dni ok" in proc.stdout and "lstm ok" in proc.stdout and "copy ok" in proc.stdout

"""The backward pass itself: accumulation at shared nodes, deep graphs, the second-backward rule, no_grad, detach,
retain_grad, error messages from a broken Function, the trace callback, and detect_anomaly."""
from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

import minidni as md
from minidni import Function, Tensor, no_grad, ops
from minidni.autograd import is_grad_enabled


def leaf(values, dtype=np.float64):
    return Tensor(np.array(values, dtype=dtype), requires_grad=True)


# ---- a node used more than once: its gradients add up -------------------------------------------------------------------
def test_square_by_self_multiplication(backend):
    a = leaf([1.5, -2.0, 3.0])
    (a * a).sum().backward()
    np.testing.assert_array_equal(a.grad, 2 * a.data)


def test_x_plus_x():
    x = leaf([[1.0, 2.0], [3.0, 4.0]])
    (x + x).sum().backward()
    np.testing.assert_array_equal(x.grad, np.full((2, 2), 2.0))


def test_diamond_graph(backend):
    """x -> y -> (relu path, tanh path) -> z: y is reached twice on the way back."""
    x = leaf([0.3, -0.7, 1.1])
    y = x * 2.0
    z = (y.relu() * 3.0 + y.tanh()).sum()
    z.backward()
    yv = 2 * x.data
    expected = 2.0 * (3.0 * (yv > 0) + (1 - np.tanh(yv) ** 2))
    np.testing.assert_allclose(x.grad, expected, rtol=1e-12)


def test_shared_intermediate_used_three_times():
    x = leaf([2.0])
    h = x * x  # h = x^2
    out = h * h + h + h.exp()  # x^4 + x^2 + e^(x^2)
    out.sum().backward()
    xv = 2.0
    np.testing.assert_allclose(x.grad, [4 * xv ** 3 + 2 * xv + 2 * xv * np.exp(xv ** 2)], rtol=1e-12)


def test_grad_accumulates_across_separate_backward_calls():
    """Two graphs built from the same leaf: the second backward adds to .grad (zero_grad starts afresh)."""
    x = leaf([1.0, 2.0])
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, 3.0 + 2 * x.data)
    x.zero_grad()
    assert x.grad is None


def test_gradients_do_not_alias():
    """a + b hands the same array to both inputs; each .grad must own its memory (in-place clipping of one grad
    must not change another, nor the caller's upstream gradient)."""
    a, b = leaf([[1.0, 2.0]]), leaf([[3.0, 4.0]])
    upstream = np.array([[1.0, 1.0]])
    (a + b).backward(upstream)
    assert a.grad is not b.grad and not np.shares_memory(a.grad, b.grad)
    assert not np.shares_memory(a.grad, upstream) and not np.shares_memory(b.grad, upstream)
    a.grad *= 0.5
    np.testing.assert_array_equal(b.grad, [[1.0, 1.0]])
    np.testing.assert_array_equal(upstream, [[1.0, 1.0]])
    # a view handed back by reshape/transpose/getitem is not kept as a view of someone else's array either
    x = leaf(np.arange(6.0).reshape(2, 3))
    y = leaf(np.arange(6.0))
    (x.reshape(6) + y).sum().backward()
    assert x.grad.shape == (2, 3) and not np.shares_memory(x.grad, y.grad)


def test_gradient_dtype_follows_the_input(backend):
    x = leaf([[0.5, -1.0]], dtype=np.float32)
    w = leaf([[1.0], [2.0]], dtype=np.float32)
    ops.matmul(x, w).relu().sum().backward()
    assert x.grad.dtype == np.float32 and w.grad.dtype == np.float32


# ---- scalars: numpy turns 0-d arithmetic into numpy scalars; the engine keeps arrays -------------------------------------
def test_zero_dimensional_arithmetic_backward():
    x = leaf([1.0, -2.0, 3.0])
    loss = x.sum() * 2.0 - x.mean() / 4.0 + (-x.sum())
    assert isinstance(loss.data, np.ndarray) and loss.shape == ()
    loss.backward()
    np.testing.assert_allclose(x.grad, np.full(3, 2.0 - 1 / 12 - 1.0), rtol=1e-12)
    assert isinstance(x.grad, np.ndarray)


def test_scalar_leaf():
    s = Tensor(np.array(3.0), requires_grad=True)
    (s * s * s).backward()
    assert isinstance(s.grad, np.ndarray) and s.grad.shape == ()
    assert s.grad == 27.0
    (s * 2.0).backward()  # accumulation of 0-d grads stays an array
    assert isinstance(s.grad, np.ndarray) and s.grad == 29.0


# ---- deep graphs: backward is iterative, not recursive ----------------------------------------------------------------
def test_ten_thousand_op_chain():
    x = leaf([1.0])
    y = x
    for _ in range(5_000):
        y = y * 1.0001
        y = y + 0.5
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0001 ** 5_000], rtol=1e-9)
    del y  # freeing a 10,000-deep graph must not overflow the stack either
    gc.collect()


def test_deep_chain_with_retain_graph_twice():
    x = leaf([2.0])
    y = x
    for _ in range(10_000):
        y = -y
    y.sum().backward(retain_graph=True)
    y.sum().backward()  # sum is a new node; the chain below it was retained
    np.testing.assert_array_equal(x.grad, [2.0])


# ---- the second-backward rule ---------------------------------------------------------------------------------------------
def test_second_backward_without_retain_graph_raises():
    x = leaf([1.0, 2.0])
    loss = (x * x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match=r"second time.*retain_graph=True"):
        loss.backward()
    np.testing.assert_array_equal(x.grad, 2 * x.data)  # not doubled


def test_second_backward_message_names_the_op():
    x = leaf([1.0, 2.0])
    loss = x.exp().sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="Sum"):
        loss.backward()


def test_retain_graph_adds_up():
    x = leaf([1.0, 2.0])
    loss = (x * x).sum()
    loss.backward(retain_graph=True)
    loss.backward(retain_graph=True)
    np.testing.assert_array_equal(x.grad, 4 * x.data)
    loss.backward()  # a third time, releasing the graph
    np.testing.assert_array_equal(x.grad, 6 * x.data)
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()


# ---- no_grad ------------------------------------------------------------------------------------------------------------
def test_no_grad_builds_no_graph(backend):
    x = leaf([1.0, -2.0])
    with no_grad():
        assert not is_grad_enabled()
        y = (x * 2.0).relu().sum()
    assert is_grad_enabled()
    assert not y.requires_grad and y.is_leaf and y._ctx is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_no_grad_nested_restores_state():
    with no_grad():
        with no_grad():
            pass
        assert not is_grad_enabled()
    assert is_grad_enabled()


def test_no_grad_restores_state_after_an_exception():
    with pytest.raises(ValueError):
        with no_grad():
            raise ValueError("boom")
    assert is_grad_enabled()


def test_no_grad_as_decorator():
    @no_grad()
    def predict(x):
        """Doc of predict."""
        return x * 3.0

    x = leaf([1.0])
    y = predict(x)
    assert not y.requires_grad and is_grad_enabled()
    assert predict.__name__ == "predict" and predict.__doc__ == "Doc of predict."
    assert (x * 3.0).requires_grad  # outside the decorated function, graphs are built again


def test_no_grad_is_thread_local():
    """A worker thread under no_grad does not switch gradients off in the main thread (and vice versa)."""
    entered, checked = threading.Event(), threading.Event()
    seen = {}

    def worker():
        x = leaf([1.0])
        with no_grad():
            entered.set()
            checked.wait(timeout=10)
            seen["worker_enabled"] = is_grad_enabled()
            seen["worker_requires_grad"] = (x * 2.0).requires_grad

    t = threading.Thread(target=worker)
    t.start()
    assert entered.wait(timeout=10)
    seen["main_enabled"] = is_grad_enabled()
    seen["main_requires_grad"] = (leaf([1.0]) * 2.0).requires_grad
    with no_grad():  # and the main thread's no_grad does not leak into the worker
        pass
    checked.set()
    t.join(timeout=10)
    assert seen == {"worker_enabled": False, "worker_requires_grad": False,
                    "main_enabled": True, "main_requires_grad": True}
    # a fresh thread starts with gradients enabled whatever the spawning thread's mode
    result = {}
    with no_grad():
        th = threading.Thread(target=lambda: result.setdefault("enabled", is_grad_enabled()))
        th.start()
        th.join()
    assert result["enabled"] is True


# ---- detach, retain_grad, leaves ---------------------------------------------------------------------------------------
def test_detach_stops_gradient_and_shares_memory():
    x = leaf([1.0, 2.0, 3.0])
    d = x.detach()
    assert not d.requires_grad and d.is_leaf and np.shares_memory(d.data, x.data)
    (x * d).sum().backward()  # d acts as a constant: d/dx (x * c) = c
    np.testing.assert_array_equal(x.grad, x.data)
    assert d.grad is None


def test_detach_of_a_non_leaf():
    x = leaf([1.0, 2.0])
    y = x * x
    z = (y.detach() * x).sum()  # = sum x^2 (const) * x  ->  dz/dx = x^2
    z.backward()
    np.testing.assert_array_equal(x.grad, x.data ** 2)


def test_retain_grad_keeps_non_leaf_gradient():
    x = leaf([1.0, -2.0])
    h = (x * 3.0).retain_grad()
    other = x * 4.0
    loss = (h * h + other).sum()
    loss.backward()
    np.testing.assert_allclose(h.grad, 2 * h.data)
    assert other.grad is None  # non-leaves keep no grad unless asked
    np.testing.assert_allclose(x.grad, 3 * 2 * h.data + 4.0)


def test_retain_grad_on_a_node_reached_twice():
    x = leaf([1.0, 2.0])
    h = (x * 2.0).retain_grad()
    (h + h * h).sum().backward()
    np.testing.assert_allclose(h.grad, 1 + 2 * h.data)


def test_is_leaf_and_op_name():
    x = leaf([1.0])
    y = x.exp()
    assert x.is_leaf and x.op == "" and not y.is_leaf and y.op == "Exp"


def test_int_tensor_cannot_require_grad():
    with pytest.raises(TypeError, match="float32 or float64"):
        Tensor(np.array([1, 2, 3]), requires_grad=True)


# ---- backward's own checks -------------------------------------------------------------------------------------------------
def test_backward_on_non_scalar_needs_a_gradient():
    y = leaf([[1.0, 2.0]]) * 2.0
    with pytest.raises(RuntimeError, match=r"scalar.*\(1, 2\).*backward\(grad\)"):
        y.backward()


def test_backward_gradient_of_wrong_shape_raises():
    y = leaf([[1.0, 2.0]]) * 2.0
    with pytest.raises(RuntimeError, match=r"\(2,\).*\(1, 2\)"):
        y.backward(np.ones(2))


def test_backward_on_tensor_without_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(2)).sum().backward()


class WrongShape(Function):
    """A deliberately broken op: its backward forgets to sum the broadcast axis back."""

    @staticmethod
    def forward(ctx, x):
        return np.broadcast_to(x, (4,) + x.shape).copy()

    @staticmethod
    def backward(ctx, g):
        return g  # shape (4, ...) for an input of shape (...)


class WrongDtype(Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return (g * 2).astype(np.float32)


def test_broken_function_shape_error_names_op_and_shapes():
    x = leaf([[1.0, 2.0, 3.0]])
    y = WrongShape.apply(x)
    assert y.shape == (4, 1, 3)
    with pytest.raises(RuntimeError) as info:
        y.sum().backward()
    msg = str(info.value)
    assert "WrongShape" in msg and "(4, 1, 3)" in msg and "(1, 3)" in msg


def test_broken_function_dtype_error():
    x = leaf([1.0])
    with pytest.raises(RuntimeError, match=r"WrongDtype.*float32.*float64"):
        WrongDtype.apply(x).sum().backward()


def test_function_gradient_not_needed_is_skipped():
    """A backward may return None for an input; a constant input never gets a .grad."""
    x, c = leaf([1.0, 2.0]), Tensor(np.array([3.0, 4.0]))
    (x * c).sum().backward()
    np.testing.assert_array_equal(x.grad, c.data)
    assert c.grad is None


# ---- trace: the order nodes are visited ------------------------------------------------------------------------------------
def test_trace_visits_root_first_and_each_node_before_its_inputs():
    x, w = leaf([[1.0, 2.0]]), leaf([[0.5], [-1.0]])
    h = ops.matmul(x, w)
    loss = (h.tanh() + h).sum()
    visited = []
    loss.backward(trace=lambda node, g: visited.append((node, np.array(g, copy=True))))
    nodes = [n for n, _ in visited]
    assert nodes[0] is loss and np.array_equal(visited[0][1], 1.0)
    assert len({id(n) for n in nodes}) == len(nodes)  # each node once, its gradient complete
    position = {id(n): k for k, n in enumerate(nodes)}
    for n in nodes:  # topological: every node before the inputs it was computed from
        for inp in (n._ctx.inputs if n._ctx is not None else ()):
            if inp.requires_grad:
                assert position[id(n)] < position[id(inp)]
    assert [n.op for n in nodes[:2]] == ["Sum", "Add"]
    h_grad = dict((id(n), g) for n, g in visited)[id(h)]
    np.testing.assert_allclose(h_grad, 1 + (1 - np.tanh(h.data) ** 2))  # both uses of h, already added up
    assert {id(x), id(w)} <= set(position)


def test_trace_of_a_chain_in_order():
    x = leaf([1.0])
    loss = x.exp().log().sum()
    names = []
    loss.backward(trace=lambda node, g: names.append(node.op or "leaf"))
    assert names == ["Sum", "Log", "Exp", "leaf"]


# ---- detect_anomaly ------------------------------------------------------------------------------------------------------
def test_detect_anomaly_names_the_op_that_made_a_nan(backend):
    x = leaf([1.0, -1.0])
    y = x * 2.0
    with md.detect_anomaly():
        with pytest.raises(FloatingPointError, match=r"Log\.forward produced NaN.*input 0 finite"):
            with np.errstate(invalid="ignore"):
                y.log()
    with np.errstate(invalid="ignore"):
        z = y.log()  # off again outside the block: no error, a NaN
    assert np.isnan(z.data[1])


def test_detect_anomaly_division_by_zero():
    a, b = leaf([1.0, 0.0]), leaf([1.0, 0.0])
    with md.detect_anomaly(), np.errstate(invalid="ignore", divide="ignore"):
        with pytest.raises(FloatingPointError, match="Div"):
            a / b


def test_detect_anomaly_says_when_the_input_was_already_bad():
    x = Tensor(np.array([np.nan, 1.0]))
    with md.detect_anomaly(), pytest.raises(FloatingPointError, match="already non-finite"):
        x * 2.0


def test_detect_anomaly_restores_after_exit():
    from minidni import autograd

    with md.detect_anomaly():
        with md.detect_anomaly():
            pass
        assert autograd._state.anomaly
    assert not autograd._state.anomaly

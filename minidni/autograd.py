"""Reverse-mode automatic differentiation: Function, Context, the backward pass, no_grad.

Every differentiable operation is a `Function` subclass with two static methods that sit side by side:

    forward(ctx, *arrays, **options)  -> array            (plain numpy arrays in, one array out)
    backward(ctx, grad_output)        -> one gradient per array input (or None where not needed)

`Function.apply(*tensors)` unwraps the tensors, runs `forward`, and -- when any input requires a gradient and
gradients are enabled -- wraps the result in a Tensor that remembers `ctx` (which holds the inputs, what forward
saved and the Function itself). That chain of contexts *is* the computation graph.

`backward(root)` walks the graph once in reverse topological order (found with an explicit stack, not recursion, so
a chain of 10,000 ops is fine), calls each node's `backward`, checks every returned gradient against the shape and
dtype of its input, and adds gradients that meet at a node used more than once (`a*a`: both uses contribute).

The rule for a second backward: after `backward()` the graph's saved arrays are released, so a second
`backward()` through the same graph raises a RuntimeError -- it never silently doubles gradients. Pass
`retain_graph=True` to keep the graph; then a second call *adds* to the leaves' `.grad` (as in PyTorch), which is
what you asked for. `zero_grad()` (or `tensor.grad = None`) starts afresh.

Devices: `apply` finds the one device all inputs live on (`ctx.device`; two devices is an error naming both), and
forward and backward compute with that device's primitives, so a graph lives on one device from start to end.

This is the mechanism behind Jaderberg et al. 2016, Sec. 1: "update locking" is exactly the fact that a layer's
gradient only exists after this backward walk has come down from the loss.
"""
from __future__ import annotations

import threading

import numpy as np

from .device import _BY_TYPE, CPU, DeviceMismatch, common_device, device_of

_state = threading.local()  # grad mode is per thread, so DNI worker threads can run no_grad independently


def is_grad_enabled() -> bool:
    return getattr(_state, "enabled", True)


class no_grad:
    """Context manager (and decorator) that disables graph building: results of ops have requires_grad=False."""

    def __enter__(self):
        self._prev = is_grad_enabled()
        _state.enabled = False

    def __exit__(self, *exc):
        _state.enabled = self._prev
        return False

    def __call__(self, fn):
        def wrapped(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)

        wrapped.__name__ = getattr(fn, "__name__", "wrapped")
        wrapped.__doc__ = getattr(fn, "__doc__", None)
        return wrapped


class detect_anomaly:
    """Context manager: check every op's output for NaN/inf and raise at the first op that produced one.

    Costs one pass over each output, so it is off by default; turn it on to find where a NaN was born.
    """

    def __enter__(self):
        self._prev = getattr(_state, "anomaly", False)
        _state.anomaly = True

    def __exit__(self, *exc):
        _state.anomaly = self._prev
        return False


def _check_anomaly(fn, arrays, out, dev=CPU):
    if np.dtype(out.dtype).kind == "f" and not dev.all_finite(out):
        sources = ", ".join(
            f"input {k} {'finite' if dev.all_finite(a) else 'already non-finite'}"
            for k, a in enumerate(arrays) if device_of(a) is dev and np.dtype(a.dtype).kind == "f"
        )
        raise FloatingPointError(f"detect_anomaly: {fn.__name__}.forward produced NaN or inf ({sources}).")


class Context:
    """What one application of a Function remembers for its backward pass.

    saved               arrays (or anything) stored by forward with `ctx.save_for_backward(...)`
    device              the Device every input lives on: forward and backward compute with its primitives
    needs_input_grad    one bool per tensor input: backward may skip gradients nobody needs
    inputs              the input Tensors (the graph's edges)
    fn                  the Function class, for printing and error messages
    """

    __slots__ = ("fn", "inputs", "needs_input_grad", "saved", "released", "device", "__dict__")

    def __init__(self, fn, inputs, needs_input_grad, device=CPU):
        self.fn, self.device = fn, device
        self.inputs = inputs
        self.needs_input_grad = needs_input_grad
        self.saved = ()
        self.released = False

    def save_for_backward(self, *values):
        self.saved = values

    def __repr__(self):
        return f"<ctx of {self.fn.__name__}>"


class Function:
    """Base class of every differentiable op. Subclasses define static `forward` and `backward`."""

    @staticmethod
    def forward(ctx, *arrays, **options):  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad_output):  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **options):
        """Run forward on the tensors' arrays and, if a gradient is needed, record the op in the graph."""
        from .tensor import Tensor

        arrays = [t.data for t in inputs]
        needs = [t.requires_grad for t in inputs]
        track = is_grad_enabled() and any(needs)
        dev = common_device(arrays, cls.__name__)
        ctx = Context(cls, inputs if track else (), tuple(needs), dev)
        out = cls.forward(ctx, *arrays, **options)
        if dev is CPU and not isinstance(out, np.ndarray):  # numpy turns 0-d results into scalars (np.float64)
            out = np.asarray(out)
        if getattr(_state, "anomaly", False):
            _check_anomaly(cls, arrays, out, dev)
        if not track:
            return Tensor._wrap(out, False, None)
        return Tensor._wrap(out, True, ctx)


def _toposort(root):
    """Nodes reachable from `root` that require grad, each after everything it feeds (reverse post-order).

    Iterative depth-first search with an explicit stack: (node, index of the next input to visit).
    """
    order, visited = [], {id(root)}
    stack = [(root, 0)]
    while stack:
        node, i = stack.pop()
        ctx = node._ctx
        inputs = ctx.inputs if ctx is not None else ()
        while i < len(inputs) and (not inputs[i].requires_grad or id(inputs[i]) in visited):
            i += 1
        if i < len(inputs):
            child = inputs[i]
            visited.add(id(child))
            stack.append((node, i + 1))
            stack.append((child, 0))
        else:
            order.append(node)  # all inputs done: post-order
    order.reverse()  # root first, leaves last
    return order


def _check_grad(ctx, k, grad, inp):
    on = _BY_TYPE.get(type(grad)) or device_of(grad)
    if on is not None and on is not ctx.device and not isinstance(grad, (int, float, np.generic)):
        raise DeviceMismatch(f"{ctx.fn.__name__}.backward returned a gradient on {on.name} for input {k}, which is on "
                             f"{ctx.device.name}: a backward computes on its op's device")
    is_array = isinstance(grad, np.ndarray) if ctx.device is CPU else ctx.device.owns(grad)
    if not is_array or grad.shape != inp.data.shape:
        got = getattr(grad, "shape", type(grad).__name__)
        raise RuntimeError(
            f"{ctx.fn.__name__}.backward returned a gradient of shape {got} for input {k}, "
            f"whose shape is {inp.data.shape}. A gradient must have its input's shape "
            f"(sum broadcast axes back with unbroadcast)."
        )
    if grad.dtype != inp.data.dtype:
        raise RuntimeError(
            f"{ctx.fn.__name__}.backward returned a {grad.dtype} gradient for input {k}, which is {inp.data.dtype}."
        )


def backward(root, grad=None, retain_graph=False, trace=None):
    """Backpropagate from `root`: fill `.grad` of every leaf tensor (and of tensors that called retain_grad()).

    grad          dL/droot; defaults to 1 for a scalar root
    retain_graph  keep saved arrays so backward can run through this graph again (gradients then accumulate)
    trace         optional callable(node, grad_output) called at each node, in the order visited (for lessons)
    """
    if not root.requires_grad:
        raise RuntimeError(
            "backward() called on a tensor that does not require grad: no input of the computation had "
            "requires_grad=True (or it was computed under no_grad / from detach())."
        )
    dev = device_of(root.data, CPU)   # apply saw to it that the whole graph lives on this one device
    if grad is None:
        if root.data.size != 1:
            raise RuntimeError(
                f"backward() without an argument needs a scalar (a loss); this tensor has shape {root.shape}. "
                "Pass the upstream gradient: t.backward(grad)."
            )
        grad = np.ones_like(root.data) if dev is CPU else dev.full(root.shape, 1, root.dtype)
    else:
        from .tensor import Tensor

        grad = grad.data if isinstance(grad, Tensor) else grad
        on = device_of(grad, CPU)
        if on is not dev:                   # a host array for a device root is copied over; other mixes are errors
            if on is not CPU:
                raise DeviceMismatch(f"backward(grad): grad is on {on.name}, the tensor on {dev.name}")
            grad = dev.from_host(np.asarray(grad, dtype=root.data.dtype))
        grad = np.asarray(grad, dtype=root.data.dtype) if dev is CPU else (
            grad if grad.dtype == root.dtype else dev.cast(grad, root.dtype))
        if grad.shape != root.data.shape:
            raise RuntimeError(f"backward(grad): grad has shape {grad.shape}, the tensor has shape {root.shape}.")

    grads = {id(root): grad}
    handed = {id(grad)}  # arrays that are, or may be, someone else's: never stored in .grad without a copy
    for node in _toposort(root):
        g = grads.pop(id(node), None)
        if g is None:
            continue
        if trace is not None:
            trace(node, g)
        ctx = node._ctx
        if ctx is None or node._retains_grad:  # a leaf, or asked to keep its grad
            # .grad must own its memory, so that an in-place edit of one .grad (clipping) reaches no other array.
            # A fresh array that no other tensor got is taken as it is (no copy in the hot path); a view, or an
            # array already handed out (a + b gives the same g to both), or one we pass on below, is copied.
            if node.grad is not None:
                node.grad = np.asarray(node.grad + g) if dev is CPU else dev.binary("add", node.grad, g)
            elif (g.base is None if dev is CPU else dev.owns_memory(g)) and id(g) not in handed and ctx is None:
                node.grad = g
            else:
                node.grad = g.copy() if dev is CPU else dev.copy(g)
            handed.add(id(node.grad))
            if ctx is None:
                continue
        if ctx.released:
            raise RuntimeError(
                f"backward through {ctx.fn.__name__} a second time: its saved arrays were released after the "
                "first backward(). Call backward(retain_graph=True) the first time if you mean to backpropagate "
                "twice (gradients then add up in .grad); otherwise recompute the forward pass."
            )
        in_grads = ctx.fn.backward(ctx, g)
        if not isinstance(in_grads, tuple):
            in_grads = (in_grads,)
        for k, (inp, ig) in enumerate(zip(ctx.inputs, in_grads)):
            if ig is None or not inp.requires_grad:
                continue
            if isinstance(ig, np.generic):  # a 0-d result of numpy arithmetic (g * b for a scalar loss)
                ig = np.asarray(ig)
            _check_grad(ctx, k, ig, inp)
            prev = grads.get(id(inp))
            # out of place: ig may alias another array; asarray keeps a 0-d sum an array
            grads[id(inp)] = ig if prev is None else (np.asarray(prev + ig) if dev is CPU
                                                      else dev.binary("add", prev, ig))
        if not retain_graph:
            ctx.saved = ()
            ctx.released = True

"""Tensor: a NumPy array, its gradient, and the Function application that produced it.

A Tensor is deliberately thin: `data` (an ndarray, float32 unless you ask for float64), `grad` (an ndarray of the
same shape, filled by `backward()`), `requires_grad`, and `_ctx`, the Context of the op that made it (None for a leaf:
data you created, or a parameter). The arithmetic operators and methods below only dispatch to the differentiable
ops in `minidni.ops`, where forward and backward live side by side.

Dtypes: Python numbers and lists become float32; a NumPy float32 or float64 array keeps its dtype (float64 is for
gradient checks); integer arrays stay integer (labels) and can never require a gradient. Ops refuse to mix float32
and float64 silently -- convert explicitly with `.astype()`. Anything that is not a real number (None, strings,
complex values: an object, str or complex array) is refused with a TypeError rather than turned into nan or 0.

Devices (`minidni.device`): `t.device` is where `data` lives -- cpu (a NumPy array) or cuda (a numba.cuda device
array); `t.to("cuda")` copies it there. Every op runs on its inputs' device and refuses inputs from two devices.
"""
from __future__ import annotations

import numpy as np

from . import autograd
from .device import CPU, device_of, get_device

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _as_array(data, dtype):
    dev = device_of(data)
    if dev is not None and dev is not CPU:  # an array on a device stays there
        return data if dtype is None or np.dtype(dtype) == data.dtype else dev.cast(data, dtype)
    arr = data if isinstance(data, np.ndarray) else np.asarray(data)
    if arr.dtype.kind not in "fiub":  # refuse None -> nan, "1" -> 1.0, 1+2j -> 1.0 rather than guess
        odd = [v for v in arr.flat if not isinstance(v, (int, float, np.number)) or isinstance(v, complex)][:1]
        what = f"; the first non-number is {odd[0]!r} ({type(odd[0]).__name__})" if odd else ""
        raise TypeError(
            f"Tensor: data must be real numbers (float, int or bool), got {type(data).__name__} of dtype "
            f"{arr.dtype}, shape {arr.shape}{what}. Pass numbers: replace None by a value (np.nan if you mean "
            "'missing'), convert strings with float(), take .real of complex values."
        )
    if dtype is not None:
        return np.asarray(arr, dtype=dtype)
    if isinstance(data, np.ndarray):
        if data.dtype in _FLOATS or data.dtype.kind in "iub":
            return data
        return data.astype(np.float32)
    if arr.dtype.kind in "iub" and not isinstance(data, (bool, int)) and arr.ndim > 0:
        return arr  # a list of ints: labels
    return arr.astype(np.float32)


class Tensor:
    __slots__ = ("data", "grad", "requires_grad", "_ctx", "_retains_grad", "name", "__weakref__")

    def __init__(self, data, requires_grad=False, dtype=None, name=None):
        if isinstance(data, Tensor):
            data = data.data
        self.data = _as_array(data, dtype)
        if requires_grad and self.data.dtype not in _FLOATS:
            raise TypeError(
                f"Tensor(requires_grad=True) needs float32 or float64 data, got {self.data.dtype}: "
                "only floating-point values have gradients."
            )
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._ctx = None
        self._retains_grad = False
        self.name = name

    @classmethod
    def _wrap(cls, array, requires_grad, ctx):
        """Fast constructor used by Function.apply: no dtype conversion, no checks."""
        t = cls.__new__(cls)
        t.data = array
        t.grad = None
        t.requires_grad = requires_grad
        t._ctx = ctx
        t._retains_grad = False
        t.name = None
        return t

    # ---- autodiff -------------------------------------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False, trace=None):
        """Fill `.grad` of the leaves this tensor depends on. See `minidni.autograd.backward` for the rules."""
        autograd.backward(self, grad, retain_graph=retain_graph, trace=trace)

    def retain_grad(self):
        """Keep `.grad` for this non-leaf tensor too (by default only leaves keep theirs)."""
        self._retains_grad = True
        return self

    def detach(self):
        """The same array, cut from the graph: gradients stop here. No copy is made."""
        return Tensor._wrap(self.data, False, None)

    def zero_grad(self):
        self.grad = None

    @property
    def is_leaf(self):
        return self._ctx is None

    @property
    def op(self):
        """Name of the Function that produced this tensor ('' for a leaf)."""
        return self._ctx.fn.__name__ if self._ctx is not None else ""

    # ---- array facts ------------------------------------------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    def __len__(self):
        return len(self.data) if self.device is CPU else self.data.shape[0]

    def numpy(self):
        """The data as a NumPy array: the array itself on the cpu, a host copy from a device."""
        return self.device.to_host(self.data)

    def item(self):
        return self.numpy().item()

    @property
    def device(self):
        """The Device holding `data` (minidni.device): cpu for a NumPy array."""
        return device_of(self.data, CPU)

    def to(self, device):
        """This tensor on `device` ('cpu', 'cuda' or a Device): itself if it is there already, else a copy (a leaf
        with the same requires_grad, name and, moved too, grad). Only leaves move: a result inside a graph would
        lose its gradient path, so move the inputs (or the model, `model.to(device)`) before computing."""
        dev, here = get_device(device), self.device
        if dev is here:
            return self
        if self._ctx is not None:
            raise RuntimeError(f"Tensor.to({dev.name!r}): this tensor is the result of {self.op} on {here.name}; "
                               "only leaves move between devices. Move the inputs or the model before computing "
                               "(or move t.detach())")
        moved = Tensor._wrap(dev.from_host(here.to_host(self.data)), self.requires_grad, None)
        moved.name = self.name
        if self.grad is not None:
            moved.grad = dev.from_host(here.to_host(self.grad))
        return moved

    def astype(self, dtype):
        from . import ops

        return ops.astype(self, dtype)

    def __repr__(self):
        extra = f", op={self.op}" if self._ctx is not None else (", requires_grad=True" if self.requires_grad else "")
        name = f", name={self.name!r}" if self.name else ""
        body = np.array2string(self.numpy(), precision=4, threshold=20, edgeitems=2)
        where = f", device={self.device.name}" if self.device is not CPU else ""
        return f"Tensor({body}, dtype={self.data.dtype}{where}{extra}{name})"

    # ---- operators: all defined in ops.py ---------------------------------------------------------------------
    def __add__(self, other):
        return _ops().add(self, other)

    def __radd__(self, other):
        return _ops().add(other, self)

    def __sub__(self, other):
        return _ops().sub(self, other)

    def __rsub__(self, other):
        return _ops().sub(other, self)

    def __mul__(self, other):
        return _ops().mul(self, other)

    def __rmul__(self, other):
        return _ops().mul(other, self)

    def __truediv__(self, other):
        return _ops().div(self, other)

    def __rtruediv__(self, other):
        return _ops().div(other, self)

    def __neg__(self):
        return _ops().neg(self)

    def __matmul__(self, other):
        return _ops().matmul(self, other)

    def __rmatmul__(self, other):
        return _ops().matmul(other, self)

    def __getitem__(self, index):
        return _ops().getitem(self, index)

    def relu(self):
        return _ops().relu(self)

    def tanh(self):
        return _ops().tanh(self)

    def sigmoid(self):
        return _ops().sigmoid(self)

    def exp(self):
        return _ops().exp(self)

    def log(self):
        return _ops().log(self)

    def sum(self, axis=None, keepdims=False):
        return _ops().sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return _ops().mean(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops().reshape(self, shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _ops().transpose(self, axes or None)

    @property
    def T(self):
        return _ops().transpose(self, None)


def _ops():
    from . import ops

    return ops


def tensor(data, requires_grad=False, dtype=None, name=None):
    """Shorthand for Tensor(...)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, name=name)

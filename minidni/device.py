"""Devices: where a tensor's array lives, and the small set of primitives every op's arithmetic goes through.

    x = Tensor(np.ones((2, 3)))            # x.device is cpu: the array is a NumPy ndarray
    y = x.to("cuda")                        # a copy in GPU memory (a numba.cuda device array)
    model.to("cuda")                        # every parameter and buffer; the optimizer's state follows on its next step

A `Device` offers a small set of primitives -- `unary`, `binary` (NumPy broadcasting), `reduce`, `argmax`,
`matmul`, `transpose`, `reshape`, `take` / `scatter_add`, `slice_copy` / `slice_add`, `concatenate`, `full`, `copy`,
`cast`, `where`, plus the transfers `from_host` / `to_host` -- and `kernels`, the module of heavy kernels with the
signatures of `minidni.kernels.reference` (linear, batch norm, softmax cross-entropy, conv, Adam, ...). `minidni.ops`
writes every forward and backward against these, so a new device implements one flat list of functions and no op
changes (tinygrad's and CMU needle's design; Jaderberg et al. 2016 is device-agnostic: the same DNI updates run
wherever the arrays are).

    cpu    NumPy arrays; the heavy kernels are the active CPU backend (`minidni.kernels.active`: Numba or the NumPy
           reference). Each primitive is the very NumPy call ops.py made before devices existed, so CPU numbers are
           bit-identical to those of a minidni without devices.
    cuda   numba.cuda device arrays; kernels and primitives from `minidni.kernels.gpu` (the numba.cuda kernels). It
           exists when a GPU is visible, or under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1 set before Python starts).

The import graph points one way: tensor -> device -> kernels. Kernels see arrays only, never a Tensor.
"""
from __future__ import annotations

import operator

import numpy as np

from . import kernels as _kernels


class DeviceUnavailable(RuntimeError):
    """A device was asked for that this machine cannot provide (cuda without a GPU and without the simulator)."""


class DeviceMismatch(RuntimeError):
    """One op was given arrays that live on two different devices."""


def _resolve_shape(shape, size, where):
    """`shape` with a -1 replaced by what makes it hold `size` elements; ValueError naming `where` if impossible."""
    shape = tuple(int(n) for n in shape)
    known = 1
    for n in shape:
        known *= n if n != -1 else 1
    if shape.count(-1) == 1 and known and size % known == 0:
        shape = tuple(size // known if n == -1 else n for n in shape)
    total = 1
    for n in shape:
        total *= n
    if shape.count(-1) or total != size or any(n < 0 for n in shape):
        raise ValueError(f"{where}: cannot reshape {size} elements into {shape}")
    return shape


# ---- the CPU: NumPy ---------------------------------------------------------------------------------------------------
_UNARY = {"neg": np.negative, "exp": np.exp, "log": np.log, "log1p": np.log1p, "sqrt": np.sqrt, "abs": np.abs, "square": np.square,
          "relu": lambda x: np.maximum(x, 0), "tanh": np.tanh, "sign": np.sign,
          "sigmoid": lambda x: _kernels.reference.sigmoid_forward(x)}
_BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv, "pow": operator.pow,
           "maximum": np.maximum, "minimum": np.minimum}
_COMPARE = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le, "eq": operator.eq}


class Device:
    """The CPU. Its primitives are NumPy calls; every other device implements the same methods on its own arrays."""

    name = "cpu"

    def __repr__(self):
        return f"device({self.name!r})"

    def __str__(self):
        return self.name

    @property
    def kernels(self):
        """The module of heavy kernels (the signatures of minidni.kernels.reference): here the active CPU backend."""
        return _kernels.active

    def owns(self, array):
        return isinstance(array, (np.ndarray, np.generic))

    # ---- transfers: the only places data crosses between host and device -----------------------------------------
    def from_host(self, array):
        return array

    def to_host(self, array):
        return array

    def host_copy(self, array):
        """A NumPy copy of `array` that shares nothing with it (for state_dict and checkpoints)."""
        return np.array(array, copy=True)

    def copy_from_host(self, dst, src):
        """In place: dst[...] = src (a NumPy array of dst's shape and dtype)."""
        np.copyto(dst, src)

    def assign(self, dst, src):
        """In place: dst[...] = src, both on this device."""
        np.copyto(dst, src)

    # ---- elementwise -------------------------------------------------------------------------------------------
    def unary(self, op, x):
        return _UNARY[op](x)

    def binary(self, op, a, b):
        """a (op) b with NumPy broadcasting; comparisons give 0/1 in a's dtype. a or b may be a Python number."""
        fn = _BINARY.get(op)
        if fn is not None:
            return fn(a, b)
        return _COMPARE[op](a, b).astype(getattr(a, "dtype", np.result_type(b)))

    def where(self, cond, a, b):
        return np.where(cond, a, b)

    def cast(self, x, dtype):
        return x.astype(dtype)

    # ---- reductions and products -------------------------------------------------------------------------------------
    def reduce(self, op, x, axis=None, keepdims=False):
        return np.asarray(getattr(x, op)(axis=axis, keepdims=keepdims))

    def argmax(self, x, axis):
        return x.argmax(axis=axis)

    def matmul(self, a, b):
        return np.matmul(a, b)

    # ---- shapes and memory -----------------------------------------------------------------------------------------------
    def reshape(self, x, shape):
        return x.reshape(shape)

    def transpose(self, x, axes):
        return np.transpose(x, axes)           # a view on the CPU; a contiguous copy on a device

    def broadcast_to(self, x, shape):
        """A new contiguous array of `shape` holding x broadcast (NumPy's rule)."""
        return np.broadcast_to(x, shape).copy()

    def full(self, shape, value, dtype):
        return np.full(shape, value, dtype=dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def empty(self, shape, dtype):
        """An array to be written over entirely (its values are undefined until then)."""
        return np.empty(shape, dtype=dtype)

    def copy(self, x):
        return x.copy()

    def owns_memory(self, x):
        """True when x is not a view of another array (so it may be kept as a .grad without a copy)."""
        return x.base is None

    def is_contiguous(self, x):
        return x.flags.c_contiguous

    def concatenate(self, xs, axis):
        return np.concatenate(xs, axis=axis)

    def split(self, x, splits, axis):
        return tuple(np.split(x, splits, axis=axis))

    def slice_copy(self, x, index):
        return np.asarray(x[index])

    def slice_add(self, out, index, g):
        out[index] += g

    def take(self, x, idx, axis=0):
        return np.take(x, idx, axis=axis)

    def scatter_add(self, out, idx, g, axis=0):
        np.add.at(out, (slice(None),) * axis + (idx,), g)

    def pad(self, x, pads):
        return np.pad(x, pads)

    def all_finite(self, x):
        """One bool on the host: is every element of x finite?"""
        return bool(np.isfinite(x).all())


CPU = Device()


# ---- a device whose arrays and functions come from a backend module (minidni.kernels.gpu) ---------------------------
class ModuleDevice(Device):
    """A device implemented by a module of host functions, as minidni.kernels.gpu is: the primitives (unary, binary,
    reduce, matmul, ..., to_device, to_host) and every kernel of minidni.kernels.reference, on its own array type.

    Operations the contract does not list are composed here from those it does (broadcast_to = x * ones, split =
    slice_copy per piece, all_finite = one scalar sum of 0 * x), so a backend writes only the contract's functions.
    """

    def __init__(self, name, backend, array_types):
        self.name, self.backend, self.array_types = name, backend, tuple(array_types)

    @property
    def kernels(self):
        return self.backend

    def owns(self, array):
        return isinstance(array, self.array_types)

    def from_host(self, array):
        return self.backend.to_device(np.ascontiguousarray(array))

    def to_host(self, array):
        return self.backend.to_host(array)

    def host_copy(self, array):
        return np.array(self.backend.to_host(array), copy=True)

    def copy_from_host(self, dst, src):
        self.assign(dst, self.from_host(np.asarray(src, dtype=dst.dtype)))

    def assign(self, dst, src):
        dst.copy_to_device(src)

    def unary(self, op, x):
        return self.backend.unary(op, x)

    def binary(self, op, a, b):
        a, b = (v.item() if isinstance(v, np.generic) else v for v in (a, b))   # NumPy numbers as Python numbers
        return self.backend.binary(op, a, b)

    def where(self, cond, a, b):
        return self.backend.where(cond, a, b)

    def cast(self, x, dtype):
        return self.backend.cast(x, np.dtype(dtype))

    def reduce(self, op, x, axis=None, keepdims=False):
        return self.backend.reduce(op, x, axis, keepdims)

    def argmax(self, x, axis):
        return self.backend.argmax(x, axis)

    def matmul(self, a, b):
        return self.backend.matmul(a, b)

    def reshape(self, x, shape):
        return x.reshape(_resolve_shape(shape, x.size, "reshape"))

    def transpose(self, x, axes):
        axes = tuple(reversed(range(len(x.shape)))) if axes is None else tuple(a % len(x.shape) for a in axes)
        return self.backend.transpose(x, axes)

    def broadcast_to(self, x, shape):
        return self.backend.binary("mul", x, self.backend.full(tuple(shape), 1, x.dtype))    # 1 * x == x, exactly

    def full(self, shape, value, dtype):
        return self.backend.full(tuple(shape), value, np.dtype(dtype))

    def zeros(self, shape, dtype):
        return self.full(shape, 0, dtype)

    def empty(self, shape, dtype):
        return self.zeros(shape, dtype)        # not in the contract: zeros are a valid empty array

    def copy(self, x):
        return self.backend.copy(x)

    def owns_memory(self, x):
        return False               # a device array may share memory with a reshape of it: always copy

    def is_contiguous(self, x):
        return True                # every primitive returns a contiguous array

    def concatenate(self, xs, axis):
        return self.backend.concatenate(list(xs), axis)

    def split(self, x, splits, axis):
        edges = [0, *(int(s) for s in splits), x.shape[axis]]
        return tuple(self.slice_copy(x, (slice(None),) * axis + (slice(a, b),)) for a, b in zip(edges, edges[1:]))

    def slice_copy(self, x, index):
        return self.backend.slice_copy(x, index if isinstance(index, tuple) else (index,))

    def slice_add(self, out, index, g):
        self.backend.slice_add(out, index if isinstance(index, tuple) else (index,), g)

    def take(self, x, idx, axis=0):
        return self.backend.take(x, idx, axis)

    def scatter_add(self, out, idx, g, axis=0):
        self.backend.scatter_add(out, idx, g, axis)

    def pad(self, x, pads):
        return self.backend.pad(x, tuple(tuple(p) for p in pads))

    def all_finite(self, x):
        total = self.backend.reduce("sum", self.backend.binary("mul", x, 0), None, False)   # nan unless all finite
        return bool(np.isfinite(self.backend.to_host(total)))


# ---- finding devices -----------------------------------------------------------------------------------------------
_DEVICES = {"cpu": CPU}
_BY_TYPE = {np.ndarray: CPU}         # array type -> device: one dict lookup finds an array's device


def register(device):
    """Make `device` known by its name (Tensor.to(name)) and by its array types (device_of). Returns it."""
    _DEVICES[device.name] = device
    for t in getattr(device, "array_types", ()):
        _BY_TYPE[t] = device
    return device


def unregister(name):
    """Forget the device called `name` (for tests that register a fake one)."""
    device = _DEVICES.pop(name, None)
    for t in getattr(device, "array_types", ()):
        _BY_TYPE.pop(t, None)


def _cuda():
    """The cuda device: minidni.kernels.gpu over numba.cuda device arrays. DeviceUnavailable says why not."""
    advice = ("Train on the CPU instead (--device cpu, or device = \"cpu\" in the config), run on a machine with an "
              "NVIDIA GPU and its driver, or set NUMBA_ENABLE_CUDASIM=1 before starting Python to run the CUDA "
              "kernels on numba's simulator (correct but very slow: for tests on tiny shapes)")
    try:
        from numba import cuda
    except ImportError as err:
        raise DeviceUnavailable(f"device 'cuda': numba.cuda cannot be imported ({err}). Install NVIDIA's numba-cuda "
                                f"package (pip install 'numba-cuda[cu12]'), or: {advice}") from None
    if not cuda.is_available():
        raise DeviceUnavailable(f"device 'cuda': no CUDA GPU is visible here (numba.cuda.is_available() is False: no "
                                f"NVIDIA GPU, or no driver). {advice}")
    try:
        from .kernels import gpu
    except ImportError as err:
        raise DeviceUnavailable(f"device 'cuda': its kernels (minidni.kernels.gpu) cannot be imported ({err}). "
                                f"{advice}") from None
    if not gpu.is_available():
        raise DeviceUnavailable(f"device 'cuda': {gpu.why_unavailable()} {advice}")
    from numba import config

    if config.ENABLE_CUDASIM:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray as array_type
    else:
        from numba.cuda.cudadrv.devicearray import DeviceNDArrayBase as array_type
    return ModuleDevice("cuda", gpu, (array_type,))


_FACTORIES = {"cuda": _cuda}


def get_device(device) -> Device:
    """The Device called `device` ('cpu', 'cuda', or a registered name), or `device` itself if it is one."""
    if isinstance(device, Device):
        return device
    name = str(device).strip().lower()
    found = _DEVICES.get(name)
    if found is not None:
        return found
    if name in _FACTORIES:
        return register(_FACTORIES[name]())
    raise ValueError(f"unknown device {device!r}: choose one of {', '.join(sorted({*_DEVICES, *_FACTORIES}))}")


def device_of(array, default=None):
    """The Device that holds `array` (NumPy arrays and numbers: cpu); `default` when no device knows its type."""
    found = _BY_TYPE.get(type(array))
    if found is not None:
        return found
    if isinstance(array, (np.ndarray, np.generic, int, float, bool)):
        return CPU
    for device in list(_DEVICES.values()):
        if device.owns(array):
            _BY_TYPE[type(array)] = device
            return device
    return default


def move(array, device):
    """`array` on `device`: the array itself if it is there already, else a copy made through the host."""
    here = device_of(array, CPU)
    return array if here is device else device.from_host(here.to_host(array))


def common_device(arrays, op):
    """The one device holding every array of `arrays` (the inputs of op `op`); DeviceMismatch naming both if two."""
    first = None
    for a in arrays:                  # the hot path of every op: one dict lookup per input
        dev = _BY_TYPE.get(type(a)) or device_of(a, CPU)
        if dev is not first:
            if first is not None:
                _mismatch(arrays, op)
            first = dev
    return first if first is not None else CPU


def _mismatch(arrays, op):
    devs = [device_of(a, CPU) for a in arrays]
    k = next(k for k, d in enumerate(devs) if d is not devs[0])
    raise DeviceMismatch(f"{op}: input 0 is on {devs[0].name} but input {k} is on {devs[k].name}; one op runs on "
                         f"one device. Move the tensors first: t.to({devs[0].name!r}) (or model.to({devs[0].name!r}) "
                         "for a whole model)")


def count_correct(logits, labels):
    """How many rows of logits (B, classes) put their largest value on the right label (B,): an int on the host.

    On a device, only this count comes back: argmax, compare and sum run where the logits are."""
    dev = device_of(logits, CPU)
    if dev is CPU:
        return int((logits.argmax(axis=1) == labels).sum())
    predicted = dev.cast(dev.argmax(logits, 1), np.float32)
    right = dev.binary("eq", predicted, dev.from_host(np.asarray(labels, dtype=np.float32)))
    return int(dev.to_host(dev.reduce("sum", right, None, False)))

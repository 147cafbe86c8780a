"""Neural-network building blocks: Module, Parameter, Linear, activations, BatchNorm1d, Sequential, and an MLP builder.

A Module owns Parameters (tensors that require grad) and buffers (arrays that are state but not learned, such as batch
norm's running statistics), and child Modules. It finds them by looking at its own attributes, so

    class Net(Module):
        def __init__(self):
            super().__init__()
            self.fc = Linear(784, 10)

makes `fc.weight` and `fc.bias` appear in `net.named_parameters()` as "fc.weight", "fc.bias". `state_dict()` returns
every parameter and buffer by name; `save(path)` / `load(path)` write and read them as .npz, exactly.
`to(device)` moves every parameter and buffer to a device ("cpu", "cuda"), in place; state_dict() always holds NumPy
arrays on the host, so a checkpoint written on one device loads on any other.

The feed-forward networks of Jaderberg et al. 2016 (Sec. 3.3, appendix A: fully connected layers of 256 units with
batch norm and ReLU) are `mlp(784, 256, 10, n_hidden=k)`.
"""
from __future__ import annotations

import numpy as np

from . import ops
from .device import CPU, device_of, get_device, move
from .tensor import Tensor

_seed_rng = np.random.default_rng(0)


def manual_seed(seed: int):
    """Seed the generator that initialises parameters when no `rng` is given (like torch.manual_seed)."""
    global _seed_rng
    _seed_rng = np.random.default_rng(seed)


def get_rng_state():
    """The state of the initialisation generator (a dict), for checkpoints."""
    return _seed_rng.bit_generator.state


def set_rng_state(state):
    """Restore a state returned by get_rng_state()."""
    _seed_rng.bit_generator.state = state


def _rng(rng):
    if rng is None:
        return _seed_rng
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def size_arg(value, name, where):
    """A layer size: a positive integer (a NumPy integer too; never a bool or a float), else a ValueError naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{where}: {name} must be a positive integer (a number of units), got {value!r}")
    return int(value)


class Parameter(Tensor):
    """A learnable tensor: always a leaf, always requires grad."""

    __slots__ = ()

    def __init__(self, data, dtype=None, name=None):
        super().__init__(data, requires_grad=True, dtype=dtype, name=name)
        if not self.data.flags.c_contiguous:
            self.data = np.ascontiguousarray(self.data)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Module:
    """Base class: holds Parameters, buffers and child Modules as attributes; `forward` says what it computes."""

    def __init__(self):
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_buffers", {})

    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- what the module holds -----------------------------------------------------------------------------------
    def _children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, v in enumerate(value):
                    if isinstance(v, Module):
                        yield f"{name}.{i}" if name != "_layers" else str(i), v

    def register_buffer(self, name, array):
        """Store an array that is state (saved, loaded) but not learned, reachable as self.<name>."""
        if "_buffers" not in vars(self):
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() before register_buffer")
        self._buffers[name] = array
        object.__setattr__(self, name, array)

    def named_parameters(self, prefix=""):
        """(name, Parameter) pairs in a fixed order: own parameters in definition order, then each child's."""
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
        for name, child in self._children():
            yield from child.named_parameters(prefix + name + ".")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        for name in self._buffers:
            yield prefix + name, getattr(self, name)
        for name, child in self._children():
            yield from child.named_buffers(prefix + name + ".")

    def modules(self):
        yield self
        for _, child in self._children():
            yield from child.modules()

    def num_parameters(self):
        return int(sum(p.size for p in self.parameters()))

    # ---- modes and gradients ---------------------------------------------------------------------------------------
    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # ---- devices ---------------------------------------------------------------------------------------------------------
    def to(self, device):
        """Move every parameter (with its grad) and buffer of this module and its children to `device`, in place:
        the Parameter objects stay the same, so an optimizer built on them keeps working (its state moves to the
        parameters' device at its next step, or at once with optimizer.to(device)). Returns self."""
        dev = get_device(device)
        for m in self.modules():
            for value in vars(m).values():
                if isinstance(value, Parameter):
                    _move_tensor(value, dev)
            for name in m._buffers:
                moved = move(getattr(m, name), dev)
                m._buffers[name] = moved
                object.__setattr__(m, name, moved)
        return self

    @property
    def device(self):
        """The device of this module's first parameter (cpu for a module without any)."""
        params = self.parameters()
        return params[0].device if params else CPU

    # ---- state -------------------------------------------------------------------------------------------------------------
    def state_dict(self):
        """{name: array copy} of every parameter and buffer, as NumPy arrays on the host (from any device)."""
        state = {name: p.data.copy() if p.device is CPU else _host_copy(p.data) for name, p in self.named_parameters()}
        state.update({name: _host_copy(b) for name, b in self.named_buffers()})
        return state

    def load_state_dict(self, state, strict=True):
        """Copy arrays from `state` into this module's parameters and buffers, in place (optimizers keep working)."""
        own = dict(self.named_parameters())
        own_buffers = dict(self.named_buffers())
        missing = [k for k in list(own) + list(own_buffers) if k not in state]
        unexpected = [k for k in state if k not in own and k not in own_buffers]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict into {type(self).__name__}: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
        pairs = []
        for name, value in state.items():
            target = own[name].data if name in own else own_buffers.get(name)
            if target is None:
                continue
            value = np.asarray(value)
            if value.shape != target.shape or value.dtype != target.dtype:
                raise ValueError(f"load_state_dict: {name} has shape {target.shape} and dtype {target.dtype} here, "
                                 f"but the state holds shape {value.shape}, dtype {value.dtype}")
            pairs.append((target, value))
        for target, value in pairs:  # all checked first: a refused state leaves the module untouched
            device_of(target, CPU).copy_from_host(target, value)

    def save(self, path):
        """Write the state dict to an .npz file (an exact round trip: load() restores every bit)."""
        np.savez(path, **self.state_dict())

    def load(self, path):
        with np.load(path) as f:
            self.load_state_dict({k: f[k] for k in f.files})
        return self

    # ---- printing -------------------------------------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        children = list(self._children())
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, child in children:
            lines += [f"  ({name}): " + repr(child).replace("\n", "\n  ")]
        return "\n".join(lines + [")"])


def _host_copy(array):
    return np.array(array, copy=True) if device_of(array, CPU) is CPU else device_of(array).host_copy(array)


def _move_tensor(t, dev):
    """Move a leaf tensor's data and grad to `dev`, in place (the object stays the same)."""
    t.data = move(t.data, dev)
    if t.grad is not None:
        t.grad = move(t.grad, dev)


class Linear(Module):
    """y = x W + b with W of shape (in, out). Initialised like PyTorch's nn.Linear: U(-1/sqrt(in), 1/sqrt(in))."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, rng=None):
        super().__init__()
        in_features = size_arg(in_features, "in_features", f"Linear({in_features!r}, {out_features!r})")
        out_features = size_arg(out_features, "out_features", f"Linear({in_features!r}, {out_features!r})")
        r = _rng(rng)
        bound = 1.0 / np.sqrt(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(r.uniform(-bound, bound, (in_features, out_features)).astype(dtype))
        self.bias = Parameter(r.uniform(-bound, bound, out_features).astype(dtype)) if bias else None

    def forward(self, x):
        return ops.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features} -> {self.out_features}, bias={self.bias is not None}"


class ReLU(Module):
    def forward(self, x):
        return ops.relu(x)


class Tanh(Module):
    def forward(self, x):
        return ops.tanh(x)


class Sigmoid(Module):
    def forward(self, x):
        return ops.sigmoid(x)


class Identity(Module):
    def forward(self, x):
        return x


class BatchNorm1d(Module):
    """Batch norm over the batch axis of (N, C): batch statistics while training, running statistics in eval()."""

    def __init__(self, num_features, momentum=0.1, eps=1e-5, dtype=np.float32):
        super().__init__()
        self.num_features, self.momentum, self.eps = num_features, momentum, eps
        self.weight = Parameter(np.ones(num_features, dtype=dtype))
        self.bias = Parameter(np.zeros(num_features, dtype=dtype))
        self.register_buffer("running_mean", np.zeros(num_features, dtype=dtype))
        self.register_buffer("running_var", np.ones(num_features, dtype=dtype))

    def forward(self, x):
        return ops.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                              training=self.training, momentum=self.momentum, eps=self.eps)

    def extra_repr(self):
        return f"{self.num_features}, momentum={self.momentum}, eps={self.eps}"


class LinearReLU(Linear):
    """y = max(x W + b, 0): a Linear layer and its ReLU as one fused op (`ops.linear_relu`).

    Same parameters and initialisation as Linear, and the same numbers as Linear -> ReLU (tests check they are
    bit-identical); one graph node and one pass over the output fewer. `mlp(..., fused=True)` uses it.
    """

    def forward(self, x):
        return ops.linear_relu(x, self.weight, self.bias)


class BatchNormReLU(BatchNorm1d):
    """max(batch_norm(x), 0): a BatchNorm1d and its ReLU as one fused op (`ops.batch_norm_relu`).

    Same parameters, buffers and numbers as BatchNorm1d -> ReLU. `mlp(..., batch_norm=True, fused=True)` uses it.
    """

    def forward(self, x):
        return ops.batch_norm_relu(x, self.weight, self.bias, self.running_mean, self.running_var,
                                   training=self.training, momentum=self.momentum, eps=self.eps)


class Sequential(Module):
    """Modules applied one after another; indexable and sliceable (a slice is a Sequential sharing the modules)."""

    def __init__(self, *modules):
        super().__init__()
        for k, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: item {k} is a {type(m).__name__}, not a Module")
        self._layers = list(modules)

    def forward(self, x):
        for m in self._layers:
            x = m(x)
        return x

    def __len__(self):
        return len(self._layers)

    def __iter__(self):
        return iter(self._layers)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Sequential(*self._layers[i])
        return self._layers[i]

    def append(self, module):
        self._layers.append(module)
        return self


_ACTIVATIONS = {"relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid}


def mlp(in_features, hidden, out_features, n_hidden=None, batch_norm=True, activation="relu", dtype=np.float32,
        rng=None, fused=False):
    """A fully connected net: [Linear -> BatchNorm1d -> activation] per hidden layer, then Linear(out_features).

    hidden is one width repeated n_hidden times (`mlp(784, 256, 10, n_hidden=3)`), or a sequence of widths
    (`mlp(256, (1024, 1024), 256)`, a synthesizer's shape; leave n_hidden out). With batch norm the hidden Linear
    layers have no bias (batch norm's shift replaces it). Jaderberg et al. 2016 use mlp(784, 256, 10, n_hidden=k)
    for the k+1 layer MNIST networks.

    fused=True (ReLU only) builds each hidden layer from the fused modules instead: [Linear -> BatchNormReLU] with
    batch norm, [LinearReLU] without. Same parameters, same initialisation, the same numbers (bit for bit), fewer
    graph nodes and memory passes; the Sequential is shorter, so its indices (and state_dict keys) differ.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"mlp: unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}")
    if fused and activation != "relu":
        raise ValueError(f"mlp: fused=True fuses the ReLU into the layer before it; activation={activation!r} has "
                         "no fused form (use fused=False)")
    if isinstance(hidden, (int, np.integer)):
        if n_hidden is None or n_hidden < 0:
            raise ValueError(f"mlp: n_hidden must be >= 0 (an int, with one hidden width), got {n_hidden}")
        widths = [int(hidden)] * n_hidden
    else:
        if n_hidden is not None:
            raise ValueError("mlp: give either a sequence of hidden widths or one width and n_hidden, not both")
        widths = [int(w) for w in hidden]
    r = _rng(rng)
    layers, width = [], in_features
    for w in widths:
        if fused and batch_norm:
            layers += [Linear(width, w, bias=False, dtype=dtype, rng=r), BatchNormReLU(w, dtype=dtype)]
        elif fused:
            layers.append(LinearReLU(width, w, dtype=dtype, rng=r))
        else:
            layers.append(Linear(width, w, bias=not batch_norm, dtype=dtype, rng=r))
            if batch_norm:
                layers.append(BatchNorm1d(w, dtype=dtype))
            layers.append(_ACTIVATIONS[activation]())
        width = w
    layers.append(Linear(width, out_features, dtype=dtype, rng=r))
    return Sequential(*layers)


# ---- convolutional layers (Jaderberg et al. 2016, Sec. 3.3 / appendix A: 5x5 convs of 128 filters with
# resolution-preserving padding, batch norm, ReLU, max pooling; the conv synthesizer is a 5x5 "same" conv) -----------
def _pair_of(v):
    return (v, v) if isinstance(v, (int, np.integer)) else tuple(v)


class Conv2d(Module):
    """y = conv2d(x, W, b) for x (N, in_channels, H, W), W (out_channels, in_channels, KH, KW).

    padding="same" (the default here) keeps H x W for odd kernels at stride 1. Initialised like PyTorch's nn.Conv2d:
    W and b uniform in +-1/sqrt(fan_in), fan_in = in_channels * KH * KW.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding="same", bias=True,
                 dtype=np.float32, rng=None):
        super().__init__()
        r = _rng(rng)
        kh, kw = _pair_of(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        self.stride, self.padding = stride, padding
        bound = 1.0 / np.sqrt(in_channels * kh * kw)
        self.weight = Parameter(r.uniform(-bound, bound, (out_channels, in_channels, kh, kw)).astype(dtype))
        self.bias = Parameter(r.uniform(-bound, bound, out_channels).astype(dtype)) if bias else None

    def forward(self, x):
        return ops.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self):
        kh, kw = self.kernel_size
        return (f"{self.in_channels} -> {self.out_channels}, kernel={kh}x{kw}, stride={self.stride}, "
                f"padding={self.padding!r}, bias={self.bias is not None}")


class MaxPool2d(Module):
    """Max over kernel x kernel windows moved by `stride` (default: the kernel size)."""

    def __init__(self, kernel_size=2, stride=None):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x):
        return ops.max_pool2d(x, self.kernel_size, self.stride)

    def extra_repr(self):
        return f"kernel={self.kernel_size}, stride={self.stride if self.stride is not None else self.kernel_size}"


class AvgPool2d(Module):
    """Mean over kernel x kernel windows moved by `stride` (default: the kernel size)."""

    def __init__(self, kernel_size=2, stride=None):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x):
        return ops.avg_pool2d(x, self.kernel_size, self.stride)

    extra_repr = MaxPool2d.extra_repr


class BatchNorm2d(BatchNorm1d):
    """Batch norm per channel of (N, C, H, W): statistics over the N*H*W values of each channel.

    No new kernel: (N, C, H, W) -> (N, H, W, C) -> (N*H*W, C) rows, the same batch_norm op as BatchNorm1d, and back.
    The running variance uses N*H*W - 1 in Bessel's correction, as PyTorch's BatchNorm2d does.
    """

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm2d({self.num_features}): expects x of shape (N, {self.num_features}, H, W), "
                             f"got {x.shape}")
        n, c, h, w = x.shape
        rows = ops.reshape(ops.transpose(x, (0, 2, 3, 1)), (n * h * w, c))  # (N*H*W, C)
        y = ops.batch_norm(rows, self.weight, self.bias, self.running_mean, self.running_var,
                           training=self.training, momentum=self.momentum, eps=self.eps)
        return ops.transpose(ops.reshape(y, (n, h, w, c)), (0, 3, 1, 2))  # (N, C, H, W)


class Flatten(Module):
    """(N, ...) -> (N, prod(...)): the bridge from conv feature maps to a Linear layer."""

    def forward(self, x):
        return ops.reshape(x, (x.shape[0], -1))


# ---- recurrent layers (Jaderberg et al. 2016, Sec. 3.2: the LSTM trained by truncated BPTT) ------------------------
def _lstm_parameters(module, input_size, hidden_size, rng, dtype):
    """W_x (I, 4H), W_h (H, 4H), b (4H,), gates i, f, g, o. PyTorch's initialisation: every weight U(-k, k) with
    k = 1/sqrt(H); PyTorch's two biases b_ih + b_hh are one bias here, so b is the sum of two such draws."""
    where = f"{type(module).__name__}({input_size!r}, {hidden_size!r})"
    input_size, hidden_size = size_arg(input_size, "input_size", where), size_arg(hidden_size, "hidden_size", where)
    r = _rng(rng)
    k = 1.0 / np.sqrt(hidden_size)
    module.input_size, module.hidden_size = input_size, hidden_size
    module.W_x = Parameter(r.uniform(-k, k, (input_size, 4 * hidden_size)).astype(dtype))
    module.W_h = Parameter(r.uniform(-k, k, (hidden_size, 4 * hidden_size)).astype(dtype))
    module.b = Parameter((r.uniform(-k, k, 4 * hidden_size) + r.uniform(-k, k, 4 * hidden_size)).astype(dtype))


def _lstm_state(module, state, batch, dtype):
    """(h, c) as Tensors; None means zeros (B, H), on the parameters' device."""
    if state is None:
        dev = module.W_x.device
        zeros = dev.zeros((batch, module.hidden_size), dtype)
        return Tensor(zeros), Tensor(zeros)
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise TypeError(f"{type(module).__name__}: state must be a pair (h, c) of (B, H) tensors or None, "
                        f"got {type(state).__name__}")
    return tuple(s if isinstance(s, Tensor) else Tensor(s) for s in state)


class LSTMCell(Module):
    """One LSTM step, gates i, f, g, o (the math is in `minidni/ops.py`, section LSTM):

        z = x W_x + h W_h + b;  i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g);  c' = f c + i g;  h' = o tanh(c')

    `cell(x (B, I), state=(h, c)) -> (h', c')`, state None meaning zeros. Parameters W_x (I, 4H), W_h (H, 4H), b (4H,).
    """

    def __init__(self, input_size, hidden_size, rng=None, dtype=np.float32):
        super().__init__()
        _lstm_parameters(self, input_size, hidden_size, rng, dtype)

    def forward(self, x, state=None):
        x = x if isinstance(x, Tensor) else Tensor(x)
        h, c = _lstm_state(self, state, x.shape[0] if x.ndim == 2 else 0, self.W_x.dtype)
        return ops.lstm_cell(x, h, c, self.W_x, self.W_h, self.b)

    def extra_repr(self):
        return f"{self.input_size} -> {self.hidden_size}"


class LSTM(Module):
    """An LSTM over a window of T steps: `lstm(x, state=None) -> (outputs, (h_T, c_T))`.

    x is a Tensor (T, B, I) or a list of T Tensors (B, I); `outputs` is the list h_1..h_T (B, H) (its last element is
    h_T); state (h_0, c_0) is a pair of (B, H) Tensors or None (zeros). Everything returned is differentiable with
    respect to x, the state and the parameters, so truncated BPTT can carry (h_T, c_T) into the next window (detached)
    and a gradient can be injected at the final state. The parameters are LSTMCell's, held directly: `lstm.W_x`
    (I, 4H), `lstm.W_h` (H, 4H), `lstm.b` (4H,).

    per_step=False runs the window as one op (`ops.lstm`: one input GEMM for all steps, one dW GEMM in the backward);
    per_step=True runs T `ops.lstm_cell` steps, the simple version (the same numbers, to rounding).
    """

    def __init__(self, input_size, hidden_size, rng=None, dtype=np.float32, per_step=False):
        super().__init__()
        _lstm_parameters(self, input_size, hidden_size, rng, dtype)
        self.per_step = per_step

    def forward(self, x, state=None):
        if isinstance(x, (list, tuple)):
            if not x:
                raise ValueError("LSTM: x is an empty list; a window needs T >= 1 steps")
            steps = [s if isinstance(s, Tensor) else Tensor(s) for s in x]
            if any(s.shape != steps[0].shape for s in steps):
                raise ValueError(f"LSTM: the steps of x must all have one shape (B, I), got "
                                 f"{sorted({s.shape for s in steps})}")
            first = steps[0]
        else:
            x = x if isinstance(x, Tensor) else Tensor(x)
            if x.ndim != 3:
                raise ValueError(f"LSTM: x must be (T, B, I) or a list of T (B, I) tensors, got shape {x.shape}")
            steps, first = None, x
        h, c = _lstm_state(self, state, tuple(first.shape)[-2] if first.ndim >= 2 else 0, self.W_x.dtype)
        if self.per_step:
            steps = steps if steps is not None else [x[t] for t in range(x.shape[0])]
            outputs = []
            for s in steps:
                h, c = ops.lstm_cell(s, h, c, self.W_x, self.W_h, self.b)
                outputs.append(h)
            return outputs, (h, c)
        if steps is not None:
            if any(s.requires_grad for s in steps):
                x = ops.concat([ops.reshape(s, (1,) + s.shape) for s in steps], axis=0)
            else:
                dev = first.device
                x = Tensor(dev.concatenate([dev.reshape(s.data, (1,) + s.shape) for s in steps], 0))
        return ops.lstm(x, h, c, self.W_x, self.W_h, self.b)

    def extra_repr(self):
        return f"{self.input_size} -> {self.hidden_size}" + (", per_step" if self.per_step else "")

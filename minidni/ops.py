"""The differentiable operations: each a Function with forward and backward side by side, its math in the docstring.

Notation: g is the gradient flowing in from above (dL/dy, shape of y); every backward returns one gradient per input,
with that input's shape (broadcasting is undone by `unbroadcast`). All arithmetic goes through `ctx.device`, the
Device the inputs live on (`minidni/device.py`): heavy kernels through `dev.kernels` (on the cpu the active backend,
Numba or the NumPy reference, see `minidni/kernels/`; on cuda `minidni.kernels.gpu`), the rest through its small set of
primitives (`dev.binary("add", a, b)`, `dev.reduce("sum", x, axis, keepdims)`, `dev.reshape`, `dev.matmul`, ...). On
the cpu each primitive is the NumPy call it names.

The public functions at the bottom (`add`, `linear`, `cross_entropy`, ...) accept Tensors, and also Python numbers
or arrays where that makes sense; they check dtypes and shapes and raise errors that name the op.

The ops a DNI network needs (Jaderberg et al. 2016, Sec. 2 and 3): linear layers, ReLU and batch norm for the
modules and synthesizers, softmax cross-entropy for the task loss, and the squared error ||g_hat - g||^2 that trains
a synthetic-gradient model.
"""
from __future__ import annotations

import threading

import numpy as np

from .autograd import Function
from .device import CPU, _resolve_shape, device_of
from .tensor import Tensor

_BASIC_INDEX = (int, np.integer, slice, type(None), type(Ellipsis))


# ---- helpers -----------------------------------------------------------------------------------------------------------
def unbroadcast(grad, shape, dev=CPU):
    """Sum `grad` down to `shape`, undoing NumPy broadcasting: y = a + b with a (3, 1), b (4,) gives y (3, 4);
    dL/da sums g over axis 1 (kept), dL/db sums g over axis 0 (dropped)."""
    if grad.shape == shape:
        return grad
    extra = len(grad.shape) - len(shape)
    axes = tuple(range(extra)) + tuple(i + extra for i, n in enumerate(shape) if n == 1 and grad.shape[i + extra] != 1)
    out = dev.reduce("sum", grad, axes, True) if axes else grad
    return dev.reshape(out, shape)


def _as_tensor(x, like: Tensor, op: str) -> Tensor:
    """Python numbers take the dtype of the other operand; arrays and tensors must already match it."""
    if isinstance(x, Tensor):
        t = x
    elif isinstance(x, (int, float, bool, np.number)) and not isinstance(x, np.ndarray):
        dev = like.device
        if dev is CPU:
            return Tensor._wrap(np.asarray(x, dtype=like.data.dtype), False, None)
        return Tensor._wrap(dev.full((), x, like.data.dtype), False, None)  # made on the device: no transfer
    else:
        t = Tensor(x)
    if t.data.dtype != like.data.dtype:
        raise TypeError(f"{op}: mixed dtypes {like.data.dtype} and {t.data.dtype}. minidni never converts silently; "
                        + _dtype_advice(like.data.dtype, t.data.dtype))
    return t


def _dtype_advice(a, b):
    """What to convert: an integer side (uint8 pixels, labels) to the float dtype of the other, never a float to an
    integer; of two floats, the second to the first; of two integers, both to float32."""
    floats = [d for d in (a, b) if d.kind == "f"]
    if len(floats) == 1:
        other = b if floats[0] == a else a
        return f"convert the {other} operand to {floats[0]} first, e.g. x.astype(np.{floats[0]})."
    if floats:
        return f"convert one side first, e.g. the {b} operand with x.astype(np.{a})."
    return f"convert both sides to a float dtype first, e.g. x.astype(np.float32) (or the {b} side to {a})."


def _one(x):
    """A unary op's input: a Tensor, or anything Tensor() accepts (an array, a list, a number)."""
    return x if isinstance(x, Tensor) else Tensor(x)


def _pair(a, b, op):
    if isinstance(a, Tensor):
        return a, _as_tensor(b, a, op)
    if isinstance(b, Tensor):
        return _as_tensor(a, b, op), b
    a = Tensor(a)
    return a, _as_tensor(b, a, op)


def _broadcast_shape(op, a, b):
    try:
        return np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(
            f"{op}: shapes {a.shape} and {b.shape} do not broadcast. Trailing dimensions must be equal or 1 "
            "(NumPy's broadcasting rule)."
        ) from None


# ---- arithmetic with broadcasting ------------------------------------------------------------------------------------
class Add(Function):
    """y = a + b;   da = unbroadcast(g),  db = unbroadcast(g)"""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a.shape, b.shape)
        return ctx.device.binary("add", a, b)

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.saved
        return unbroadcast(g, sa, ctx.device), unbroadcast(g, sb, ctx.device)


class Sub(Function):
    """y = a - b;   da = unbroadcast(g),  db = -unbroadcast(g)"""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a.shape, b.shape)
        return ctx.device.binary("sub", a, b)

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.saved
        dev = ctx.device
        return unbroadcast(g, sa, dev), dev.unary("neg", unbroadcast(g, sb, dev))


class Mul(Function):
    """y = a * b;   da = unbroadcast(g b),  db = unbroadcast(g a)"""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return ctx.device.binary("mul", a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        dev = ctx.device
        da = unbroadcast(dev.binary("mul", g, b), a.shape, dev) if ctx.needs_input_grad[0] else None
        db = unbroadcast(dev.binary("mul", g, a), b.shape, dev) if ctx.needs_input_grad[1] else None
        return da, db


class Div(Function):
    """y = a / b;   da = unbroadcast(g / b),  db = unbroadcast(-g a / b^2)"""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return ctx.device.binary("div", a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        dev = ctx.device
        da = unbroadcast(dev.binary("div", g, b), a.shape, dev) if ctx.needs_input_grad[0] else None
        if ctx.needs_input_grad[1]:   # -g a / b^2, in that order
            minus_ga = dev.binary("mul", dev.unary("neg", g), a)
            db = unbroadcast(dev.binary("div", minus_ga, dev.binary("mul", b, b)), b.shape, dev)
        else:
            db = None
        return da, db


class Neg(Function):
    """y = -x;   dx = -g"""

    @staticmethod
    def forward(ctx, x):
        return ctx.device.unary("neg", x)

    @staticmethod
    def backward(ctx, g):
        return ctx.device.unary("neg", g)


class AsType(Function):
    """y = x converted to another float dtype;   dx = g converted back"""

    @staticmethod
    def forward(ctx, x, dtype):
        ctx.save_for_backward(x.dtype)
        return ctx.device.cast(x, dtype)

    @staticmethod
    def backward(ctx, g):
        return ctx.device.cast(g, ctx.saved[0])


# ---- matrix products ---------------------------------------------------------------------------------------------------
class MatMul(Function):
    """y = a @ b  (a (N, K), b (K, M));   da = g b^T,  db = a^T g"""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return ctx.device.matmul(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        dev = ctx.device
        da = dev.matmul(g, dev.transpose(b, (1, 0))) if ctx.needs_input_grad[0] else None
        db = dev.matmul(dev.transpose(a, (1, 0)), g) if ctx.needs_input_grad[1] else None
        return da, db


class Linear(Function):
    """y = x W + b, fused  (x (N, I), W (I, O), b (O,));   dx = g W^T,  dW = x^T g,  db = sum_n g

    W is stored (in, out) so the forward GEMM reads both operands row by row. Gradients nobody needs are not computed:
    the first layer of a network skips dx, the largest product of its backward pass.
    """

    @staticmethod
    def forward(ctx, x, W, b=None):
        ctx.save_for_backward(x, W)
        return ctx.device.kernels.linear_forward(x, W, b)

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved
        need = ctx.needs_input_grad
        dx, dW, db = ctx.device.kernels.linear_backward(x, W, g, need[0], need[1], len(need) > 2 and need[2])
        return (dx, dW, db) if len(need) > 2 else (dx, dW)


# ---- elementwise nonlinearities (kernels: relu/tanh/sigmoid/exp/log _forward and _backward) ----------------------------
class ReLU(Function):
    """y = max(x, 0);   dx = g [y > 0]   (the kink x = 0 gets gradient 0)"""

    @staticmethod
    def forward(ctx, x):
        y = ctx.device.kernels.relu_forward(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        return ctx.device.kernels.relu_backward(ctx.saved[0], g)


class Tanh(Function):
    """y = tanh(x);   dx = g (1 - y^2)"""

    @staticmethod
    def forward(ctx, x):
        y = ctx.device.kernels.tanh_forward(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        return ctx.device.kernels.tanh_backward(ctx.saved[0], g)


class Sigmoid(Function):
    """y = 1 / (1 + e^-x);   dx = g y (1 - y)"""

    @staticmethod
    def forward(ctx, x):
        y = ctx.device.kernels.sigmoid_forward(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        return ctx.device.kernels.sigmoid_backward(ctx.saved[0], g)


class Exp(Function):
    """y = e^x;   dx = g y"""

    @staticmethod
    def forward(ctx, x):
        y = ctx.device.kernels.exp_forward(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        return ctx.device.binary("mul", g, ctx.saved[0])


class Log(Function):
    """y = log x;   dx = g / x"""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return ctx.device.kernels.log_forward(x)

    @staticmethod
    def backward(ctx, g):
        return ctx.device.binary("div", g, ctx.saved[0])


# ---- reductions ------------------------------------------------------------------------------------------------------------
def _expand(g, shape, axis, keepdims, dev):
    """Put the reduced axes back (size 1) so g broadcasts against the input shape."""
    if axis is None:
        return dev.reshape(g, (1,) * len(shape))
    if not keepdims:
        axes = {a % len(shape) for a in (axis if isinstance(axis, tuple) else (axis,))}
        return dev.reshape(g, tuple(1 if k in axes else n for k, n in enumerate(shape)))
    return g


class Sum(Function):
    """y = sum of x over `axis`;   dx = g broadcast back over the summed axes"""

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.save_for_backward(x.shape, axis, keepdims)
        return ctx.device.reduce("sum", x, axis, keepdims)

    @staticmethod
    def backward(ctx, g):
        shape, axis, keepdims = ctx.saved
        return ctx.device.broadcast_to(_expand(g, shape, axis, keepdims, ctx.device), shape)


class Mean(Function):
    """y = mean of x over `axis` (n elements each);   dx = g / n broadcast back"""

    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        y = ctx.device.reduce("mean", x, axis, keepdims)
        ctx.save_for_backward(x.shape, axis, keepdims, x.size // max(y.size, 1))
        return y

    @staticmethod
    def backward(ctx, g):
        shape, axis, keepdims, n = ctx.saved
        dev = ctx.device
        return dev.broadcast_to(dev.binary("div", _expand(g, shape, axis, keepdims, dev), n), shape)


# ---- shapes -------------------------------------------------------------------------------------------------------------------
class Reshape(Function):
    """y = x viewed with a new shape;   dx = g reshaped back"""

    @staticmethod
    def forward(ctx, x, shape):
        ctx.save_for_backward(x.shape)
        return ctx.device.reshape(x, shape)

    @staticmethod
    def backward(ctx, g):
        return ctx.device.reshape(g, ctx.saved[0])


class Transpose(Function):
    """y = x with axes permuted (reversed when axes is None);   dx = g with the inverse permutation"""

    @staticmethod
    def forward(ctx, x, axes=None):
        ndim = len(x.shape)
        axes = tuple(reversed(range(ndim))) if axes is None else tuple(axes)
        if ctx.device is not CPU and sorted(a % ndim if -ndim <= a < ndim else a for a in axes) != list(range(ndim)):
            raise ValueError(f"transpose: axes {axes} are not a permutation of the {ndim} axes of shape {x.shape}")
        y = ctx.device.transpose(x, axes)
        ctx.save_for_backward(tuple(int(a) for a in np.argsort([a % ndim for a in axes])))  # negative: from the end
        return y

    @staticmethod
    def backward(ctx, g):
        return ctx.device.transpose(g, ctx.saved[0])


class Concat(Function):
    """y = [x_1, x_2, ...] joined along `axis`;   dx_k = the slice of g that x_k filled"""

    @staticmethod
    def forward(ctx, *xs, axis=0):
        ctx.save_for_backward(axis, np.cumsum([x.shape[axis] for x in xs])[:-1])
        return ctx.device.concatenate(xs, axis)

    @staticmethod
    def backward(ctx, g):
        axis, splits = ctx.saved
        return ctx.device.split(g, splits, axis)


class GetItem(Function):
    """y = x[index];   dx = zeros with g scattered back into the indexed places (repeated indices add up)"""

    @staticmethod
    def forward(ctx, x, index):
        ctx.save_for_backward(x.shape, index)
        dev = ctx.device
        if dev is CPU:
            return np.asarray(x[index])
        if _is_row_gather(index):
            return dev.take(x, dev.from_host(np.asarray(index, dtype=np.int64)), 0)
        return dev.slice_copy(x, _device_index(index, x.shape))

    @staticmethod
    def backward(ctx, g):
        shape, index = ctx.saved
        dev = ctx.device
        dx = dev.zeros(shape, g.dtype)
        parts = index if isinstance(index, tuple) else (index,)
        if dev is not CPU and _is_row_gather(index):
            dev.scatter_add(dx, dev.from_host(np.asarray(index, dtype=np.int64)), g, 0)   # repeated rows add up
        elif dev is not CPU:
            dev.slice_add(dx, _device_index(index, shape), g)
        elif all(isinstance(p, _BASIC_INDEX) for p in parts):
            dx[index] = g  # a basic index never repeats an element
        else:
            np.add.at(dx, index, g)
        return dx


def _is_row_gather(index):
    """x[idx] with idx a 1-D array (or list) of integers: rows gathered along axis 0."""
    return isinstance(index, (np.ndarray, list)) and np.asarray(index).ndim == 1 and np.asarray(index).dtype.kind in "iu"


def _device_index(index, shape):
    """A basic index as a device's slice_copy takes it: a tuple of slices and ints (Ellipsis expanded, no None)."""
    parts = index if isinstance(index, tuple) else (index,)
    if not all(isinstance(p, (int, np.integer, slice, type(Ellipsis))) for p in parts) or parts.count(Ellipsis) > 1:
        raise NotImplementedError(f"getitem on a device: index {index!r} is not supported there; use slices and "
                                  "integers, or one 1-D integer array of rows (x[idx]), or compute on the cpu")
    if Ellipsis in parts:
        k = parts.index(Ellipsis)
        parts = parts[:k] + (slice(None),) * (len(shape) - len(parts) + 1) + parts[k + 1:]
    return tuple(int(p) if isinstance(p, np.integer) else p for p in parts)


# ---- losses ------------------------------------------------------------------------------------------------------------------
def _check_finite_loss(op, loss, *inputs, dev=CPU):
    if not (np.isfinite(loss) if dev is CPU else dev.all_finite(loss)):
        loss, inputs = dev.to_host(loss), [dev.to_host(x) for x in inputs]     # the error path only
        bad = ", ".join(f"input {k}: {int(np.size(x) - np.isfinite(x).sum())} non-finite of {np.size(x)}"
                        for k, x in enumerate(inputs))
        raise FloatingPointError(
            f"{op}: the loss is {float(loss)} ({bad}). NaN or inf reached the loss: a learning rate too high, a "
            "log of a non-positive number, or bad input data. minidni.detect_anomaly() names the first op "
            "that produced a non-finite value."
        )


class SoftmaxCrossEntropy(Function):
    """loss = mean_n [ log sum_k exp(z_nk) - z_n,y_n ], fused and stable (shifted by the row max);
    dz = g (softmax(z) - onehot(y)) / N"""

    @staticmethod
    def forward(ctx, logits, labels):
        loss, probs = ctx.device.kernels.softmax_xent_forward(logits, labels)
        _check_finite_loss("cross_entropy", loss, logits, dev=ctx.device)
        ctx.save_for_backward(probs, labels)
        return loss

    @staticmethod
    def backward(ctx, g):
        probs, labels = ctx.saved
        return ctx.device.kernels.softmax_xent_backward(probs, labels, g)


class MSE(Function):
    """Squared error of a against b over all N = a.size elements, averaged or summed:

        reduction="mean":  loss = sum (a - b)^2 / N      da = 2 g (a - b) / N,  db = -da
        reduction="sum":   loss = sum (a - b)^2          da = 2 g (a - b),      db = -da

    The kernels compute the mean; the sum is N times it, and its backward hands the kernel g N (2 g N / N = 2 g).
    """

    @staticmethod
    def forward(ctx, a, b, reduction="mean"):
        dev = ctx.device
        loss = dev.kernels.mse_forward(a, b)
        if reduction == "sum":
            loss = np.asarray(loss * a.size, dtype=a.dtype) if dev is CPU else dev.binary("mul", loss, a.size)
        _check_finite_loss("mse_loss", loss, a, b, dev=dev)
        ctx.save_for_backward(a, b)
        ctx.scale = a.size if reduction == "sum" else 1
        return loss

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        dev = ctx.device
        da = dev.kernels.mse_backward(a, b, g * ctx.scale if dev is CPU else dev.binary("mul", g, ctx.scale))
        return da, (dev.unary("neg", da) if ctx.needs_input_grad[1] else None)


# ---- batch normalisation -----------------------------------------------------------------------------------------------------
def _update_running_stats(running_mean, running_var, mu, var, n, momentum, dev=CPU):
    """In place: running <- (1 - momentum) running + momentum batch, the variance with Bessel's factor n / (n - 1)."""
    if dev is CPU:
        running_mean *= 1 - momentum
        running_mean += momentum * mu
        running_var *= 1 - momentum
        running_var += (momentum * n / max(n - 1, 1)) * var
        return
    for running, batch, factor in ((running_mean, mu, momentum), (running_var, var, momentum * n / max(n - 1, 1))):
        kept = dev.binary("mul", running, 1 - momentum)
        dev.assign(running, dev.binary("add", kept, dev.binary("mul", batch, factor)))


class BatchNorm(Function):
    """Batch norm over axis 0 of (N, C) (Ioffe & Szegedy 2015).

    training:  xhat = (x - mean_n x) / sqrt(var_n x + eps),  y = gamma xhat + beta
               dx = gamma invstd / N (N g - sum_n g - xhat sum_n g xhat),  dgamma = sum_n g xhat,  dbeta = sum_n g
               and running_mean/var (buffers, updated in place) move towards the batch statistics by `momentum`,
               the variance with Bessel's correction N/(N-1) as PyTorch does.
    eval:      y = gamma (x - running_mean) / sqrt(running_var + eps) + beta  -- an affine map of x.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5):
        eps = x.dtype.type(eps)
        if training:
            y, xhat, mu, var, invstd = ctx.device.kernels.batchnorm_train_forward(x, gamma, beta, eps)
            if running_mean is not None:
                _update_running_stats(running_mean, running_var, mu, var, x.shape[0], momentum, ctx.device)
            ctx.save_for_backward(True, xhat, gamma, invstd)
            return y
        ctx.save_for_backward(False, x, gamma, running_mean, running_var, eps)
        return ctx.device.kernels.batchnorm_eval_forward(x, gamma, beta, running_mean, running_var, eps)

    @staticmethod
    def backward(ctx, g):
        need = ctx.needs_input_grad
        if ctx.saved[0]:
            _, xhat, gamma, invstd = ctx.saved
            return ctx.device.kernels.batchnorm_backward(g, xhat, gamma, invstd, need[0])
        return _batchnorm_eval_backward(ctx.device, g, *ctx.saved[1:])


def _batchnorm_eval_backward(dev, g, x, gamma, mean, var, eps):
    """Eval mode is the affine map y = gamma (x - mean) invstd + beta: dx = g gamma invstd, dgamma = sum_n g xhat,
    dbeta = sum_n g."""
    invstd = dev.binary("div", 1, dev.unary("sqrt", dev.binary("add", var, eps)))
    xhat = dev.binary("mul", dev.binary("sub", x, mean), invstd)
    return (dev.binary("mul", g, dev.binary("mul", gamma, invstd)), dev.reduce("sum", dev.binary("mul", g, xhat), 0),
            dev.reduce("sum", g, 0))


# ---- fused layers: the same math as two ops in a row, one pass fewer over the (N, C) activations --------------------
class LinearReLU(Function):
    """y = max(x W + b, 0), fused;   with g' = g [y > 0]:  dx = g' W^T,  dW = x^T g',  db = sum_n g'

    Exactly `relu(linear(x, W, b))`: the kernels add the bias and clip in the pass that finishes the forward GEMM,
    and mask g while summing db, so the (N, out) activation is walked once per direction instead of twice, and the
    graph has one node instead of two. `nn.LinearReLU` and `nn.mlp(..., fused=True)` use it.
    """

    @staticmethod
    def forward(ctx, x, W, b=None):
        y = ctx.device.kernels.linear_relu_forward(x, W, b)
        ctx.save_for_backward(x, W, y)
        return y

    @staticmethod
    def backward(ctx, g):
        x, W, y = ctx.saved
        need = ctx.needs_input_grad
        dx, dW, db = ctx.device.kernels.linear_relu_backward(x, W, y, g, need[0], need[1], len(need) > 2 and need[2])
        return (dx, dW, db) if len(need) > 2 else (dx, dW)


class BatchNormReLU(Function):
    """y = max(gamma xhat + beta, 0), batch norm then ReLU fused (see `BatchNorm` for xhat and the statistics).

    training:  backward is BatchNorm's backward applied to g' = g [y > 0]; the kernel forms g' where it reads g
               instead of storing it. It saves x rather than xhat and recomputes xhat = (x - mu) invstd (bit for
               bit) where it needs it, so the forward writes one (N, C) array, not two. Running statistics are
               updated exactly as `BatchNorm` does.
    eval:      the affine map of the running statistics, then the ReLU (no fusion needed: nothing is saved twice).
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5):
        eps = x.dtype.type(eps)
        if not training:
            y = ctx.device.kernels.relu_forward(ctx.device.kernels.batchnorm_eval_forward(x, gamma, beta, running_mean,
                                                                                  running_var, eps))
            ctx.save_for_backward(False, y, x, gamma, running_mean, running_var, eps)
            return y
        y, mu, var, invstd = ctx.device.kernels.batchnorm_relu_train_forward(x, gamma, beta, eps)
        if running_mean is not None:
            _update_running_stats(running_mean, running_var, mu, var, x.shape[0], momentum, ctx.device)
        ctx.save_for_backward(True, x, y, mu, gamma, invstd)   # x, not xhat: the kernels recompute xhat from it
        return y

    @staticmethod
    def backward(ctx, g):
        if ctx.saved[0]:
            _, x, y, mu, gamma, invstd = ctx.saved
            return ctx.device.kernels.batchnorm_relu_backward(g, x, y, mu, gamma, invstd, ctx.needs_input_grad[0])
        _, y, *eval_saved = ctx.saved
        return _batchnorm_eval_backward(ctx.device, ctx.device.kernels.relu_backward(y, g), *eval_saved)


# ==== the public functional API ==================================================================================================
def add(a, b):
    a, b = _pair(a, b, "add")
    _broadcast_shape("add", a, b)
    return Add.apply(a, b)


def sub(a, b):
    a, b = _pair(a, b, "sub")
    _broadcast_shape("sub", a, b)
    return Sub.apply(a, b)


def mul(a, b):
    a, b = _pair(a, b, "mul")
    _broadcast_shape("mul", a, b)
    return Mul.apply(a, b)


def div(a, b):
    a, b = _pair(a, b, "div")
    _broadcast_shape("div", a, b)
    return Div.apply(a, b)


def neg(x):
    return Neg.apply(_one(x))


def astype(x, dtype):
    dtype = np.dtype(dtype)
    if dtype == x.dtype:
        return x
    if dtype.kind != "f":
        raise TypeError(f"astype: a differentiable tensor converts between float dtypes only, not to {dtype}")
    return AsType.apply(x, dtype=dtype)


def _need_2d(op, name, t, dim):
    if t.ndim != dim:
        raise ValueError(f"{op}: {name} must be {dim}-D, got shape {t.shape}")


def matmul(a, b):
    a, b = _pair(a, b, "matmul")
    _need_2d("matmul", "a", a, 2)
    _need_2d("matmul", "b", b, 2)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: inner dimensions differ: a is {a.shape}, b is {b.shape} "
                         f"({a.shape[1]} != {b.shape[0]})")
    return MatMul.apply(a, b)


def _linear_inputs(op, x, W, b):
    """The checked tensors (x, W) or (x, W, b) of a linear layer: 2-D x (N, in) and W (in, out), b of shape (out,)."""
    x, W = _pair(x, W, op)
    _need_2d(op, "x", x, 2)
    _need_2d(op, "W", W, 2)
    if x.shape[1] != W.shape[0]:
        raise ValueError(f"{op}: x has {x.shape[1]} features (shape {x.shape}) but W expects {W.shape[0]} "
                         f"(W has shape {W.shape}, stored as (in, out))")
    if b is None:
        return x, W
    b = _as_tensor(b, W, op)
    if b.shape != (W.shape[1],):
        raise ValueError(f"{op}: bias must have shape ({W.shape[1]},) to match W {W.shape}, got {b.shape}")
    return x, W, b


def linear(x, W, b=None):
    """y = x W + b for x (N, in), W (in, out), b (out,) or None."""
    return Linear.apply(*_linear_inputs("linear", x, W, b))


def linear_relu(x, W, b=None):
    """y = max(x W + b, 0): `relu(linear(x, W, b))` as one fused op (see `LinearReLU`)."""
    return LinearReLU.apply(*_linear_inputs("linear_relu", x, W, b))


def relu(x):
    return ReLU.apply(_one(x))


def tanh(x):
    return Tanh.apply(_one(x))


def sigmoid(x):
    return Sigmoid.apply(_one(x))


def exp(x):
    return Exp.apply(_one(x))


def log(x):
    return Log.apply(_one(x))


def sum(x, axis=None, keepdims=False):  # noqa: A001 - mirrors numpy
    return Sum.apply(_one(x), axis=axis, keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    return Mean.apply(_one(x), axis=axis, keepdims=keepdims)


def reshape(x, shape):
    x = _one(x)
    try:
        if x.device is CPU:
            x.data.reshape(shape)  # a view: checks the shape without copying
        else:
            shape = _resolve_shape(shape, x.size, "reshape")
    except ValueError:
        raise ValueError(f"reshape: cannot reshape {x.shape} ({x.size} elements) into {tuple(shape)}") from None
    return Reshape.apply(x, shape=tuple(shape))


def transpose(x, axes=None):
    return Transpose.apply(_one(x), axes=axes)


def concat(tensors, axis=0):
    tensors = list(tensors)
    if not tensors:
        raise ValueError("concat: needs at least one tensor")
    first = tensors[0] if isinstance(tensors[0], Tensor) else Tensor(tensors[0])
    tensors = [_as_tensor(t, first, "concat") for t in tensors]
    ax = axis % first.ndim
    for k, t in enumerate(tensors):
        if t.ndim != first.ndim or any(t.shape[i] != first.shape[i] for i in range(t.ndim) if i != ax):
            raise ValueError(f"concat along axis {axis}: tensor {k} has shape {t.shape}, tensor 0 has {first.shape}; "
                             "all dimensions but the concatenation axis must match")
    return Concat.apply(*tensors, axis=ax)


def getitem(x, index):
    if isinstance(index, Tensor):
        index = index.data
    return GetItem.apply(x, index=index)


def _labels(op, logits, labels):
    """Checked int64 labels on the host, one per row of logits, each in [0, classes)."""
    labels = labels.data if isinstance(labels, Tensor) else labels
    labels = np.asarray(labels) if device_of(labels, CPU) is CPU else device_of(labels).to_host(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{op}: labels must be integers (class indices), got dtype {labels.dtype}")
    n, c = logits.shape
    if labels.shape != (n,):
        raise ValueError(f"{op}: expected one label per row of logits, i.e. shape ({n},); got {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= c):
        bad = labels[(labels < 0) | (labels >= c)]
        raise ValueError(f"{op}: labels must lie in [0, {c - 1}] for {c} classes; found {bad[:5].tolist()}")
    return labels.astype(np.int64, copy=False)


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy of logits (N, C) against integer labels (N,) in [0, C)."""
    logits = _one(logits)
    _need_2d("cross_entropy", "logits", logits, 2)
    labels = _labels("cross_entropy", logits, labels)
    if logits.device is not CPU:
        labels = logits.device.from_host(labels)           # the labels go where the logits are
    return SoftmaxCrossEntropy.apply(logits, labels=labels)


def mse_loss(a, b, reduction="mean"):
    """Squared error of a against b over all elements: mean((a - b)^2), or with reduction="sum" the squared
    distance ||a - b||^2; a and b must have the same shape."""
    a, b = _pair(a, b, "mse_loss")
    if a.shape != b.shape:
        raise ValueError(f"mse_loss: shapes must match exactly (no broadcasting in a loss): {a.shape} vs {b.shape}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"mse_loss: reduction must be 'mean' or 'sum', got {reduction!r}")
    return MSE.apply(a, b, reduction=reduction)


def _check_batch_norm(op, x, gamma, beta, running_mean, running_var, training):
    x = _one(x)
    _need_2d(op, "x", x, 2)
    gamma = _as_tensor(gamma, x, op)
    beta = _as_tensor(beta, x, op)
    c = x.shape[1]
    if gamma.shape != (c,) or beta.shape != (c,):
        raise ValueError(f"{op}: x has shape {x.shape} ({c} features); gamma {gamma.shape} and beta "
                         f"{beta.shape} must be ({c},)")
    for name, stat in (("running_mean", running_mean), ("running_var", running_var)):
        # updated in place and read by the kernels without bounds checks: shape and dtype must be exact
        if stat is not None and (device_of(stat) is not x.device or stat.shape != (c,) or stat.dtype != x.dtype):
            raise ValueError(f"{op}: {name} must be a {x.dtype} array of shape ({c},) for x of shape "
                             f"{x.shape}; got {getattr(stat, 'dtype', type(stat).__name__)} "
                             f"{getattr(stat, 'shape', '')}")
    if training and x.shape[0] < 2:
        raise ValueError(f"{op}: training needs a batch of at least 2 rows to compute statistics, got {x.shape}")
    if not training and (running_mean is None or running_var is None):
        raise ValueError(f"{op}: eval mode needs running_mean and running_var")
    return x, gamma, beta


def batch_norm(x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5):
    """Batch normalisation of x (N, C) with scale gamma (C,) and shift beta (C,); see `BatchNorm`."""
    x, gamma, beta = _check_batch_norm("batch_norm", x, gamma, beta, running_mean, running_var, training)
    return BatchNorm.apply(x, gamma, beta, running_mean=running_mean, running_var=running_var,
                           training=training, momentum=momentum, eps=eps)


def batch_norm_relu(x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5):
    """max(batch_norm(x, ...), 0) as one fused op (see `BatchNormReLU`); the arguments are batch_norm's."""
    x, gamma, beta = _check_batch_norm("batch_norm_relu", x, gamma, beta, running_mean, running_var, training)
    return BatchNormReLU.apply(x, gamma, beta, running_mean=running_mean, running_var=running_var,
                               training=training, momentum=momentum, eps=eps)


# ==== convolution and pooling, NCHW (Jaderberg et al. 2016, Sec. 3.3 / appendix A: the CNN of 5x5 conv layers with
# resolution-preserving padding, batch norm, ReLU, a max pool after the first layer and average pools after the others;
# the conv synthesizers are 5x5 convs too) ===========================================================================
class Conv2d(Function):
    """2-D convolution (a cross-correlation, as in every deep-learning library) of x (N, C, H, W) with W (O, C, KH, KW),
    stride (sh, sw) and zero padding (ph, pw):

        y[n, o, i, j] = b[o] + sum_{c, p, q} W[o, c, p, q] xpad[n, c, i sh + p, j sw + q]

        dW[o, c, p, q] = sum_{n, i, j} g[n, o, i, j] xpad[n, c, i sh + p, j sw + q]
        db[o]          = sum_{n, i, j} g[n, o, i, j]
        dxpad[n, c, i sh + p, j sw + q] += g[n, o, i, j] W[o, c, p, q]   (then the padding is cut off)

    In matrix form (what the kernels compute), with cols = im2col(x) holding one receptive field per output pixel:
    y = cols W^T + b,  dW = g^T cols,  dx = col2im(g W): a linear layer applied at every position.
    """

    @staticmethod
    def forward(ctx, x, W, b=None, stride=(1, 1), padding=(0, 0)):
        ctx.save_for_backward(x, W, stride, padding)
        return ctx.device.kernels.conv2d_forward(x, W, b, stride, padding)

    @staticmethod
    def backward(ctx, g):
        x, W, stride, padding = ctx.saved
        need = ctx.needs_input_grad
        has_b = len(need) > 2
        dx, dW, db = ctx.device.kernels.conv2d_backward(x, W, g, stride, padding, need[0], need[1], has_b and need[2])
        return (dx, dW, db) if has_b else (dx, dW)


class MaxPool2d(Function):
    """Max pooling of x (N, C, H, W) over (kh, kw) windows moved by (sh, sw), no padding:

        y[n, c, i, j] = max_{p, q} x[n, c, i sh + p, j sw + q]
        dx[n, c, h, w] = sum of g[n, c, i, j] over the windows (i, j) whose max is x[n, c, h, w]

    The max's position is kept from the forward pass (argmax, an index into the H x W plane); on a tie the first
    maximum in row-major order takes the whole gradient (a subgradient, as in PyTorch).
    """

    @staticmethod
    def forward(ctx, x, kernel=(2, 2), stride=(2, 2)):
        y, argmax = ctx.device.kernels.maxpool2d_forward(x, kernel, stride)
        ctx.save_for_backward(argmax, x.shape, kernel, stride)
        return y

    @staticmethod
    def backward(ctx, g):
        argmax, x_shape, kernel, stride = ctx.saved
        return ctx.device.kernels.maxpool2d_backward(g, argmax, x_shape, kernel, stride)


class AvgPool2d(Function):
    """Average pooling of x (N, C, H, W) over (kh, kw) windows moved by (sh, sw), no padding (the paper's pool after
    every conv layer but the first):

        y[n, c, i, j]  = (1 / (kh kw)) sum_{p, q} x[n, c, i sh + p, j sw + q]
        dx[n, c, h, w] = (1 / (kh kw)) sum of g[n, c, i, j] over the windows (i, j) that contain (h, w)

    Linear in x, so the backward needs only the shapes: every input of a window gets an equal share of its gradient.
    """

    @staticmethod
    def forward(ctx, x, kernel=(2, 2), stride=(2, 2)):
        ctx.save_for_backward(x.shape, kernel, stride)
        return ctx.device.kernels.avgpool2d_forward(x, kernel, stride)

    @staticmethod
    def backward(ctx, g):
        x_shape, kernel, stride = ctx.saved
        return ctx.device.kernels.avgpool2d_backward(g, x_shape, kernel, stride)


def _int_pair(op, name, value, minimum):
    """1 -> (1, 1); (1, 2) -> (1, 2); anything else (or a value below `minimum`) is an error naming the op."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else value
    ok = isinstance(pair, (tuple, list)) and len(pair) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum for v in pair)
    if not ok:
        raise ValueError(f"{op}: {name} must be an int >= {minimum} or a pair of them (height, width), got {value!r}")
    return int(pair[0]), int(pair[1])


def _need_float_nchw(op, x, what="x"):
    if x.ndim != 4:
        raise ValueError(f"{op}: {what} must be 4-D (N, C, H, W), got shape {x.shape}; "
                         f"a single image needs a batch axis: x.reshape(1, C, H, W)")
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: {what} must be float32 or float64, got {x.dtype}")


def _check_window(op, x, k, stride, pad, kind):
    """Every output needs a whole window inside the (padded) input."""
    (h, w), (kh, kw) = x.shape[2:], k
    if h + 2 * pad[0] < kh or w + 2 * pad[1] < kw:
        padded = f" (padded by {pad} to {h + 2 * pad[0]}x{w + 2 * pad[1]})" if any(pad) else ""
        raise ValueError(f"{op}: the {kh}x{kw} {kind} is larger than the {h}x{w} input{padded} of x {x.shape}; "
                         f"use a smaller {kind}{', more padding' if kind == 'kernel' else ''} or a larger input")


def conv2d(x, W, b=None, stride=1, padding=0):
    """2-D convolution of x (N, C_in, H, W) with W (C_out, C_in, KH, KW) and optional bias b (C_out,); see `Conv2d`.

    stride    an int or (sh, sw), >= 1
    padding   an int or (ph, pw) of zeros on each side, or "same": (KH-1)/2, (KW-1)/2 so that the output keeps
              H x W (odd kernels, stride 1 -- the paper's resolution-preserving 5x5 layers)
    Output: (N, C_out, (H + 2 ph - KH) // sh + 1, (W + 2 pw - KW) // sw + 1).
    """
    x, W = _pair(x, W, "conv2d")
    _need_float_nchw("conv2d", x)
    if W.ndim != 4:
        raise ValueError(f"conv2d: W must be 4-D (C_out, C_in, KH, KW), got shape {W.shape}")
    o, c_in, kh, kw = W.shape
    if x.shape[1] != c_in:
        raise ValueError(f"conv2d: x has {x.shape[1]} channels (shape {x.shape}, NCHW) but W expects {c_in} input "
                         f"channels (W has shape {W.shape} = (C_out, C_in, KH, KW))")
    stride = _int_pair("conv2d", "stride", stride, 1)
    if isinstance(padding, str):
        if padding != "same":
            raise ValueError(f"conv2d: padding must be an int, a pair or 'same', got {padding!r}")
        if stride != (1, 1) or kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"conv2d: padding='same' needs stride 1 and an odd kernel, got stride {stride} and a "
                             f"{kh}x{kw} kernel; give the padding as numbers instead")
        padding = ((kh - 1) // 2, (kw - 1) // 2)
    else:
        padding = _int_pair("conv2d", "padding", padding, 0)
    _check_window("conv2d", x, (kh, kw), stride, padding, "kernel")
    if b is None:
        return Conv2d.apply(x, W, stride=stride, padding=padding)
    b = _as_tensor(b, W, "conv2d")
    if b.shape != (o,):
        raise ValueError(f"conv2d: bias must have shape ({o},), one per output channel of W {W.shape}; got {b.shape}")
    return Conv2d.apply(x, W, b, stride=stride, padding=padding)


def _pool_inputs(op, x, kernel, stride):
    """The checked (x, kernel, stride) of a pooling op: float NCHW, positive int pairs, the window inside the map;
    stride defaults to the kernel (windows that do not overlap)."""
    if not isinstance(x, Tensor):
        x = Tensor(x)
    _need_float_nchw(op, x)
    kernel = _int_pair(op, "kernel", kernel, 1)
    stride = kernel if stride is None else _int_pair(op, "stride", stride, 1)
    _check_window(op, x, kernel, (1, 1), (0, 0), "window")
    return x, kernel, stride


def max_pool2d(x, kernel=2, stride=None):
    """Max over (kh, kw) windows of x (N, C, H, W) moved by `stride` (default: the kernel, windows that do not
    overlap), no padding; output (N, C, (H - kh) // sh + 1, (W - kw) // sw + 1). See `MaxPool2d`."""
    x, kernel, stride = _pool_inputs("max_pool2d", x, kernel, stride)
    return MaxPool2d.apply(x, kernel=kernel, stride=stride)


def avg_pool2d(x, kernel=2, stride=None):
    """Mean over (kh, kw) windows of x (N, C, H, W) moved by `stride` (default: the kernel), no padding; output
    (N, C, (H - kh) // sh + 1, (W - kw) // sw + 1). See `AvgPool2d`."""
    x, kernel, stride = _pool_inputs("avg_pool2d", x, kernel, stride)
    return AvgPool2d.apply(x, kernel=kernel, stride=stride)


# ==== LSTM (Hochreiter & Schmidhuber 1997, with a forget gate; the recurrent core of Jaderberg et al. 2016, Sec. 3.2,
# whose Copy / Repeat Copy models are 256-unit LSTMs trained by truncated BPTT) ========================================
# Gate order i, f, g, o (PyTorch's). B batch, I input size, H hidden size, T time steps; W_x (I, 4H), W_h (H, 4H),
# b (4H,):
#     z = x_t W_x + h W_h + b                                                   (B, 4H)
#     i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o);  g = tanh(z_g)         (B, H) each
#     c' = f c + i g;   h' = o tanh(c')
# An LSTM step has two results, h' and c'. A Function returns one array, so the LSTM ops return them *packed* (stacked
# on axis 0) and `Unpack` nodes hand out the slices; their gradients are assembled in one buffer (see `Unpack`).
# Two variants, the same math (their numbers agree to rounding):
#   1. `LSTMCell`: one step, one node: two BLAS products, then the fused gate kernel; backward the fused gate
#      backward kernel and the four products dx, dh, dW_x, dW_h.
#   2. `LSTMSequence`: a whole window of T steps in one node: the input products of all T steps as ONE GEMM
#      (T B, I) x (I, 4H) before the loop, only h W_h inside it; backward runs the steps in reverse for dz_t and
#      dh_{t-1} = dz_t W_h^T, then takes dW_x, dW_h, db and dx for all steps at once, e.g.
#      dW_h = sum_t h_{t-1}^T dz_t = H_prev^T dZ, one (H, T B) x (T B, 4H) GEMM instead of T small ones.

_scratch = threading.local()   # per thread, so the DNI runner's worker threads never share one


def _scratch_array(name, shape, dtype, dev=CPU):
    """A reused array for a temporary that dies inside one forward or backward call (never saved, never returned):
    allocating the window's (T, B, 4H) temporaries afresh every call cost ~1000 page faults per training step.
    (On a device: a fresh array; its allocator caches memory already.)"""
    if dev is not CPU:
        return dev.empty(shape, dtype)
    a = getattr(_scratch, name, None)
    if a is None or a.shape != shape or a.dtype != dtype:
        a = np.empty(shape, dtype=dtype)
        setattr(_scratch, name, a)
    return a


def _matmul_into(dev, a, b, out):
    """out[...] = a @ b: written in place by BLAS on the CPU; on a device, its matmul, then a copy into out."""
    if dev is CPU:
        np.matmul(a, b, out=out)
    else:
        dev.assign(out, dev.matmul(a, b))
    return out


def _add_into(dev, a, b):
    """a + b, written over a on the CPU (a is ours to overwrite); a new array on a device."""
    if dev is CPU:
        a += b
        return a
    return dev.binary("add", a, b)


class _PackedGrad:
    """The gradient of a packed result, written slice by slice by the `Unpack` nodes that read it (one per backward)."""

    __slots__ = ("array",)

    def __init__(self):
        self.array = None


class Unpack(Function):
    """y = packed[k]: one result of an op that returns several stacked on axis 0;   dpacked[k] = g

    Backward writes g into one buffer shared by all Unpacks of the same packed array: the first to run creates it
    (zeros) and returns it as dpacked; the others only fill their slice and return None. The backward pass reaches the
    producing op after every consumer of its output, so by then the buffer is complete, and the producer releases it.
    (A plain `getitem` per slice would build a zero array of the full packed shape for every slice and add them up:
    O(T^2) memory traffic for a window of T steps.)
    """

    @staticmethod
    def forward(ctx, packed, k, slot):
        ctx.save_for_backward(tuple(packed.shape), k, slot)
        return ctx.device.slice_copy(packed, (k,))      # a view on the CPU, a copy on a device

    @staticmethod
    def backward(ctx, g):
        shape, k, slot = ctx.saved
        first = slot.array is None
        if first:
            slot.array = ctx.device.zeros(shape, g.dtype)
        ctx.device.slice_add(slot.array, (k,), g)
        return slot.array if first else None


def _unpack(packed, slot, n):
    return [Unpack.apply(packed, k=k, slot=slot) for k in range(n)]


class LSTMCell(Function):
    """One LSTM step (variant 1), packed result (2, B, H) = [h', c'] (the math is in the section comment above):

    forward:   zx = x W_x,  zh = h W_h  (BLAS);  h', c', gates = lstm_gates_forward(zx, zh, b, c)  (one fused kernel)
    backward:  dz, dc = lstm_gates_backward(gates, c, c', dh', dc')  (one fused kernel), then
               dx = dz W_x^T,  dh = dz W_h^T,  dW_x = x^T dz,  dW_h = h^T dz,  db = sum_n dz
    """

    @staticmethod
    def forward(ctx, x, h, c, W_x, W_h, b, slot):
        dev = ctx.device
        B, H = c.shape
        packed = dev.empty((2, B, H), c.dtype)
        gates = dev.empty((B, 4 * H), c.dtype)
        dev.kernels.lstm_gates_forward(dev.matmul(x, W_x), dev.matmul(h, W_h), b, c, out=(packed[0], packed[1], gates))
        ctx.save_for_backward(x, h, c, W_x, W_h, gates, packed[1], slot)
        return packed

    @staticmethod
    def backward(ctx, g):
        x, h, c, W_x, W_h, gates, c_new, slot = ctx.saved
        slot.array = None  # g is that buffer: this backward consumes it
        need = ctx.needs_input_grad
        dev = ctx.device
        dz, dc = dev.kernels.lstm_gates_backward(gates, c, c_new, g[0], g[1])
        dx = dev.matmul(dz, dev.transpose(W_x, None)) if need[0] else None
        dh = dev.matmul(dz, dev.transpose(W_h, None)) if need[1] else None
        dW_x = dev.matmul(dev.transpose(x, None), dz) if need[3] else None
        dW_h = dev.matmul(dev.transpose(h, None), dz) if need[4] else None
        db = dev.kernels.sum_rows(dz) if need[5] else None
        return dx, dh, (dc if need[2] else None), dW_x, dW_h, db


class LSTMSequence(Function):
    """T LSTM steps in one node (variant 2), packed result (T + 1, B, H) = [h_1, ..., h_T, c_T]:

    forward:   Zx = X W_x for all steps at once ((T B, I) x (I, 4H), one GEMM);  for t = 1..T:
               zh = h_{t-1} W_h (into one reused buffer);  h_t, c_t, gates_t = lstm_gates_forward(Zx_t, zh, b, c_{t-1})
    backward:  from the gradients dh_t of every output and dc_T of the last cell, for t = T..1:
               dz_t, dc_{t-1} = lstm_gates_backward(gates_t, c_{t-1}, c_t, dh_t + dz_{t+1} W_h^T, dc_t)
               then for the whole window:  dX = dZ W_x^T,  dW_x = X^T dZ,  dW_h = H_prev^T dZ,  db = sum dZ,
               dh_0 = dz_1 W_h^T,  dc_0  (dZ (T B, 4H) stacks the dz_t; H_prev (T B, H) stacks h_0..h_{T-1})
    """

    @staticmethod
    def forward(ctx, x, h0, c0, W_x, W_h, b, slot):
        dev = ctx.device
        T, B, I = x.shape
        H = h0.shape[1]
        # one array holds h_0, h_1..h_T and a copy of c_T: its rows 1..T+1 are the packed result, rows 0..T-1 H_prev
        hs = dev.empty((T + 2, B, H), h0.dtype)
        cs = dev.empty((T + 1, B, H), h0.dtype)
        dev.assign(hs[0], h0)
        dev.assign(cs[0], c0)
        zx = _scratch_array("lstm_zx", (T, B, 4 * H), h0.dtype, dev)
        _matmul_into(dev, dev.reshape(x, (T * B, I)), W_x, dev.reshape(zx, (T * B, 4 * H)))
        gates = dev.empty((T, B, 4 * H), h0.dtype)  # not over zx: the kernels vectorise only when outputs overlap no input
        zh = _scratch_array("lstm_zh", (B, 4 * H), h0.dtype, dev)
        for t in range(T):
            _matmul_into(dev, hs[t], W_h, zh)
            dev.kernels.lstm_gates_forward(zx[t], zh, b, cs[t], out=(hs[t + 1], cs[t + 1], gates[t]))
        dev.assign(hs[T + 1], cs[T])
        ctx.save_for_backward(x, W_x, W_h, hs, cs, gates, slot)
        return hs[1:]

    @staticmethod
    def backward(ctx, g):
        x, W_x, W_h, hs, cs, gates, slot = ctx.saved
        slot.array = None  # g is that buffer, ours to overwrite
        dev = ctx.device
        need = ctx.needs_input_grad
        T, B, I = x.shape
        H = hs.shape[2]
        W_hT = dev.transpose(W_h, None)
        dZ = _scratch_array("lstm_dZ", (T, B, 4 * H), g.dtype, dev)
        dc = dev.copy(g[T])  # dL/dc_T, then dL/dc_{t-1} as the loop walks back
        dh_back = dev.empty((B, H), g.dtype)  # dz_{t+1} W_h^T: the gradient reaching h_t through step t+1
        for t in reversed(range(T)):
            dh = g[t]
            if t < T - 1:
                dh = _add_into(dev, dh, dh_back)
            dev.kernels.lstm_gates_backward(gates[t], cs[t], cs[t + 1], dh, dc, out=(dZ[t], dc))   # dc in place
            if t > 0 or need[1]:
                _matmul_into(dev, dZ[t], W_hT, dh_back)
        dZ = dev.reshape(dZ, (T * B, 4 * H))
        dx = dev.reshape(dev.matmul(dZ, dev.transpose(W_x, None)), (T, B, I)) if need[0] else None
        dW_x = dev.matmul(dev.transpose(dev.reshape(x, (T * B, I)), None), dZ) if need[3] else None
        dW_h = dev.matmul(dev.transpose(dev.reshape(hs[:T], (T * B, H)), None), dZ) if need[4] else None
        db = dev.kernels.sum_rows(dZ) if need[5] else None
        return dx, (dh_back if need[1] else None), (dc if need[2] else None), dW_x, dW_h, db


def _check_lstm(op, x, h, c, W_x, W_h, b, x_dims):
    """The checked tensors of an LSTM op; x is (B, I) for a step (x_dims 2) or (T, B, I) for a window (x_dims 3)."""
    x = _one(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{op}: x must be float32 or float64, got {x.dtype}")
    names = ("h", "c", "W_x", "W_h", "b")
    h, c, W_x, W_h, b = (_as_tensor(t, x, f"{op} ({n} vs x)") for n, t in zip(names, (h, c, W_x, W_h, b)))
    layout = "(B, I)" if x_dims == 2 else "(T, B, I)"
    if x.ndim != x_dims:
        raise ValueError(f"{op}: x must be {x_dims}-D {layout}, got shape {x.shape}")
    _need_2d(op, "W_h", W_h, 2)
    H = W_h.shape[0]
    B, I = tuple(x.shape)[-2:]
    expected = {"W_x": (I, 4 * H), "W_h": (H, 4 * H), "b": (4 * H,), "h": (B, H), "c": (B, H)}
    for name, t in zip(names, (h, c, W_x, W_h, b)):
        if t.shape != expected[name]:
            raise ValueError(f"{op}: {name} must have shape {expected[name]} for x {x.shape} {layout} and hidden size "
                             f"H = {H} (from W_h, (H, 4H), gates i, f, g, o), got {t.shape}")
    return x, h, c, W_x, W_h, b


def lstm_cell(x, h, c, W_x, W_h, b):
    """One LSTM step: x (B, I), state h, c (B, H), W_x (I, 4H), W_h (H, 4H), b (4H,) -> (h', c'), both
    differentiable with respect to every input (see `LSTMCell` and the section comment for the math)."""
    x, h, c, W_x, W_h, b = _check_lstm("lstm_cell", x, h, c, W_x, W_h, b, 2)
    slot = _PackedGrad()
    h_new, c_new = _unpack(LSTMCell.apply(x, h, c, W_x, W_h, b, slot=slot), slot, 2)
    return h_new, c_new


def lstm(x, h0, c0, W_x, W_h, b):
    """T LSTM steps in one op: x (T, B, I), initial state h0, c0 (B, H) -> (outputs, (h_T, c_T)), `outputs` the list
    of h_1..h_T (B, H) (its last element is h_T itself). Every result is differentiable with respect to every input,
    so a gradient can enter at any h_t and at the final state. Same numbers as T `lstm_cell` steps (`LSTMSequence`)."""
    x, h0, c0, W_x, W_h, b = _check_lstm("lstm", x, h0, c0, W_x, W_h, b, 3)
    T = x.shape[0]
    if T == 0:
        raise ValueError(f"lstm: x has no time steps (shape {x.shape}); a window needs T >= 1")
    slot = _PackedGrad()
    results = _unpack(LSTMSequence.apply(x, h0, c0, W_x, W_h, b, slot=slot), slot, T + 1)
    return results[:T], (results[T - 1], results[T])

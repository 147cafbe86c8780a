"""The CUDA backend's host side: allocates outputs on the GPU, picks grids and blocks, launches `kernels/cuda.py`.

It implements every function of `kernels/reference.py` (same names, signatures and results, on numba.cuda device
arrays instead of ndarrays), plus the primitives the device plumbing (minidni/device.py) routes the rest of
`ops.py` through: unary, binary, reduce, argmax, matmul, transpose, take / scatter_add, slice_copy / slice_add,
concatenate, pad, full, copy, cast, where. All arrays in and out are C-contiguous device arrays; the only
host <-> device copies are `to_device` and `to_host`. The paper's networks (Jaderberg et al. 2016, Sec. 3) run on
these functions alone.

Importing this module never needs a GPU: `is_available()` says whether one (or the CUDA simulator,
NUMBA_ENABLE_CUDASIM=1) is there, and `why_unavailable()` says what is missing and what to do.

Launch sizes are module constants, read at every call, so tests can shrink them: the simulator runs one OS thread
per CUDA thread, so there blocks are small (32 threads, 8 x 8 tiles); on a GPU, 256-thread blocks.
The variant constants pick the kernel version; None means "the fastest for this shape".
"""
import functools

import numpy as np

NAME = "cuda"

try:
    from numba import config as _numba_config
    from numba import cuda

    from . import cuda as cu
    _IMPORT_ERROR = None
except Exception as error:  # numba-cuda missing or broken: the module still imports, is_available() says why
    cuda = cu = None
    _IMPORT_ERROR = error

SIMULATOR = bool(cuda is not None and getattr(_numba_config, "ENABLE_CUDASIM", 0))

THREADS = 32 if SIMULATOR else 256          # threads per block of the 1-D (grid-stride) kernels
MAX_BLOCKS = 2 if SIMULATOR else 1 << 16    # grid-stride loops cover the rest
MATMUL_BLOCK = 8 if SIMULATOR else 16       # v1: (MATMUL_BLOCK, MATMUL_BLOCK) threads, one per output
TILE = 8 if SIMULATOR else 16               # v2: (TILE, TILE) tiles in shared memory
V3_TILES = (8, 8, 4, 2, 2) if SIMULATOR else (128, 128, 8, 8, 8)  # v3: (bm, bn, bk, tm, tn)
REDUCE_THREADS = 8 if SIMULATOR else 256    # reduce v2: threads per output (a power of two)
COLUMN_BLOCK = (4, 4) if SIMULATOR else (32, 8)  # reduce v3, batch norm v2: (columns, threads per column) a block

MATMUL_VARIANT = 3      # 1 naive, 2 shared-memory tiles, 3 register-blocked tiles
SPLIT_K = None          # matmul: split K over this many slices (partial products summed); None: by shape
REDUCE_VARIANT = None   # 1 a thread per output, 2 a block per output, 3 column blocks; None: by shape
BATCHNORM_VARIANT = None  # 1 a thread per column, 2 column blocks (by threads per column); None: 2 for tall batches
ELEMENTWISE_VARIANT = None  # 1 strided (broadcasting) everywhere, 2 flat when shapes agree; None: 2 when it can


# ---- availability ---------------------------------------------------------------------------------------------------
_REASON = []  # why_unavailable's answer, found once (the driver query is not free and the answer does not change)


def why_unavailable():
    """One line: why the cuda backend cannot run here and what to do; None when it can."""
    if not _REASON:
        if cuda is None:
            _REASON.append(f"the cuda backend needs NVIDIA's numba-cuda package ({type(_IMPORT_ERROR).__name__}: "
                           f"{_IMPORT_ERROR}): pip install -e '.[cuda]'")
        elif SIMULATOR or cuda.is_available():
            _REASON.append(None)
        else:
            _REASON.append("no CUDA GPU found (numba.cuda.is_available() is False): run on a machine with an NVIDIA "
                           "GPU and driver, or set NUMBA_ENABLE_CUDASIM=1 before Python starts to use numba's (slow) "
                           "CUDA simulator")
    return _REASON[0]


def is_available():
    """True when kernels can run: a CUDA GPU, or the simulator."""
    return why_unavailable() is None


def _require():
    reason = why_unavailable()
    if reason is not None:
        raise RuntimeError(f"cuda backend unavailable: {reason}")


# ---- transfers and allocation ----------------------------------------------------------------------------------------
def to_device(a):
    """A host array (or anything np.asarray takes) copied to the GPU, C-contiguous."""
    _require()
    return cuda.to_device(np.ascontiguousarray(a))


def to_host(x):
    """A device array copied back to a new ndarray."""
    return x.copy_to_host()


def _empty(shape, dtype):
    return cuda.device_array(tuple(shape), dtype=np.dtype(dtype))


def _flat(x):
    return x.reshape(x.size)


@functools.lru_cache(maxsize=None)
def _dummy(ndim, dtype_name):
    """A 1-element array standing in for an absent optional argument (a kernel's arguments are all typed)."""
    return cuda.device_array((1,) * ndim, dtype=np.dtype(dtype_name))


def _dummy_like(x, ndim):
    return _dummy(ndim, np.dtype(x.dtype).name)


def _launch(kernel, n, *args):
    """kernel[blocks, THREADS](*args) with enough blocks for n items (at most MAX_BLOCKS: grid-stride loops)."""
    blocks = max(1, min(-(-n // THREADS), MAX_BLOCKS))
    kernel[blocks, THREADS](*args)


def _is_array(x):
    return hasattr(x, "shape") and hasattr(x, "copy_to_host")


def _contiguous_strides(shape):
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def _dims(values, fill):
    """A shape or strides tuple padded to cuda.MAX_DIMS (kernels take fixed-length tuples, passed by value)."""
    values = tuple(int(v) for v in values)
    if len(values) > cu.MAX_DIMS:
        raise ValueError(f"cuda backend: arrays of at most {cu.MAX_DIMS} axes, got {len(values)} ({values})")
    return values + (fill,) * (cu.MAX_DIMS - len(values))


def _prod(values):
    return int(np.prod(values, dtype=np.int64)) if len(values) else 1


def _gather(src, offset, strides, shape, dtype=None):
    """dst (shape, contiguous)[i] = src.flat[offset + i . strides]: transpose, slicing and broadcast in one kernel."""
    out = _empty(shape, dtype or src.dtype)
    if out.size:
        shape = shape or (1,)
        strides = strides or (0,)
        _launch(cu.gather_strided, out.size, _flat(src), int(offset), _dims(strides, 0), _dims(shape, 1),
                len(shape), _flat(out))
    return out


def _broadcast_strides(shape, out_shape):
    """Element strides that read a contiguous array of `shape` as if broadcast to `out_shape` (0 on new axes)."""
    strides = _contiguous_strides(shape)
    lead = len(out_shape) - len(shape)
    return tuple(0 if d < lead or shape[d - lead] == 1 and out_shape[d] != 1 else strides[d - lead]
                 for d in range(len(out_shape)))


# ---- elementwise primitives ------------------------------------------------------------------------------------------
def _op_code(table, op, what):
    try:
        return table[op]
    except KeyError:
        raise ValueError(f"cuda {what}: unknown op {op!r}; expected one of {', '.join(table)}") from None


def unary(op, x):
    """y = f_op(x) elementwise; op in neg, exp, log, log1p, sqrt, abs, square, relu, tanh, sigmoid, sign."""
    code = _op_code(cu.UNARY, op, "unary")
    y = _empty(x.shape, x.dtype)
    _launch(cu.unary_v1, x.size, code, _flat(x), _flat(y))
    return y


COMPARISONS = ("gt", "ge", "lt", "le", "eq")


def binary(op, a, b):
    """out = f_op(a, b) elementwise with NumPy broadcasting; a or b may be a Python scalar. op in add, sub, mul, div,
    pow, maximum, minimum, and the comparisons gt, ge, lt, le, eq (0 / 1 in a's dtype)."""
    code = _op_code(cu.BINARY, op, "binary")
    if not _is_array(a) and not _is_array(b):
        raise TypeError(f"cuda binary {op}: at least one operand must be a device array, got {type(a).__name__} "
                        f"and {type(b).__name__}")
    if not _is_array(b) or not _is_array(a):
        x, s, scalar_first = (a, b, 0) if _is_array(a) else (b, a, 1)
        calc = np.result_type(x.dtype, s)  # NumPy's rule: a Python scalar does not widen a float32 array
        out = _empty(x.shape, x.dtype if op in COMPARISONS else calc)
        _launch(cu.binary_scalar, x.size, code, _flat(x), calc.type(s), scalar_first, _flat(out))
        return out
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"cuda binary {op}: shapes {a.shape} and {b.shape} do not broadcast") from None
    out = _empty(shape, a.dtype if op in COMPARISONS else np.result_type(a.dtype, b.dtype))
    if out.size == 0:
        return out
    if a.shape == b.shape == shape and ELEMENTWISE_VARIANT != 1:
        _launch(cu.binary_v2, out.size, code, _flat(a), _flat(b), _flat(out))
    else:
        shape1 = shape or (1,)
        _launch(cu.binary_v1, out.size, code, _flat(a), _dims(_broadcast_strides(a.shape, shape1), 0),
                _flat(b), _dims(_broadcast_strides(b.shape, shape1), 0), _dims(shape1, 1), len(shape1), _flat(out))
    return out


def where(cond, a, b):
    """out = a where cond != 0 else b, all three broadcast together (a, b may be Python scalars)."""
    if not _is_array(a) and not _is_array(b):
        raise TypeError("cuda where: a or b must be a device array")
    dtype = np.result_type(*(x.dtype if _is_array(x) else x for x in (a, b)))
    a, b = (x if _is_array(x) else full((), x, dtype) for x in (a, b))
    if a.dtype != dtype:
        a = cast(a, dtype)
    if b.dtype != dtype:
        b = cast(b, dtype)
    try:
        shape = np.broadcast_shapes(cond.shape, a.shape, b.shape)
    except ValueError:
        raise ValueError(f"cuda where: shapes {cond.shape}, {a.shape}, {b.shape} do not broadcast") from None
    out = _empty(shape, dtype)
    if out.size:
        shape1 = shape or (1,)
        strides = [_dims(_broadcast_strides(x.shape, shape1), 0) for x in (cond, a, b)]
        _launch(cu.where_v1, out.size, _flat(cond), strides[0], _flat(a), strides[1], _flat(b), strides[2],
                _dims(shape1, 1), len(shape1), _flat(out))
    return out


def full(shape, value, dtype):
    """A new device array of `shape` filled with value."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    out = _empty(shape, dtype)
    if out.size:
        _launch(cu.fill, out.size, _flat(out), np.dtype(dtype).type(value))
    return out


def cast(x, dtype):
    """A copy of x converted to dtype."""
    out = _empty(x.shape, dtype)
    if out.size:
        _launch(cu.cast, out.size, _flat(x), _flat(out))
    return out


def copy(x):
    """A new device array equal to x."""
    return cast(x, x.dtype)


# ---- reductions ---------------------------------------------------------------------------------------------------
def _axes(axis, ndim, what):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    norm = []
    for a in axes:
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"cuda {what}: axis {a} is out of range for an array of {ndim} axes")
        norm.append(int(a) % max(ndim, 1))
    if len(set(norm)) != len(norm):
        raise ValueError(f"cuda {what}: repeated axis in {axis}")
    return tuple(sorted(norm))


def _as_akb(x, axes):
    """x as a contiguous (A, K, B) array whose middle axis K is the product of `axes` (a copy only when the reduced
    axes are not next to each other), and the shape of what is kept."""
    shape = x.shape
    kept = tuple(d for d in range(len(shape)) if d not in axes)
    if not axes:
        return x.reshape(_prod(shape), 1, 1)
    if axes == tuple(range(axes[0], axes[-1] + 1)):  # consecutive: a reshape
        return x.reshape(_prod(shape[:axes[0]]), _prod(shape[axes[0]:axes[-1] + 1]), _prod(shape[axes[-1] + 1:]))
    perm = kept + axes
    t = transpose(x, perm)
    return t.reshape(_prod([shape[d] for d in kept]), _prod([shape[d] for d in axes]), 1)


@functools.lru_cache(maxsize=None)
def _reduce_v2(threads, dtype_name):
    return cu.make_reduce_v2(threads, np.dtype(dtype_name))


@functools.lru_cache(maxsize=None)
def _reduce_v3(block, dtype_name):
    return cu.make_reduce_v3(*block, np.dtype(dtype_name))


def _reduce_variant(A, K, B):
    """v1 unless the rows are long: then a block per output (v2) for few outputs along the last axis, column blocks
    (v3) for reductions over a leading axis (K rows of B columns)."""
    if K < 64:
        return 1
    if B == 1:
        return 2 if A <= 64 else 1
    return 3 if A <= 65535 else 1  # v3's grid has A rows of blocks: CUDA allows 65535


def reduce(op, x, axis=None, keepdims=False):
    """op in sum, max, min, mean over `axis` (None: all; an int; a tuple of ints), as NumPy's x.op(axis, keepdims)."""
    code = _op_code(cu.REDUCE, op, "reduce")
    if op == "mean" and x.dtype.kind != "f" or op == "sum" and x.dtype.kind == "b":
        x = cast(x, np.float64 if op == "mean" else np.int64)  # NumPy's result dtypes for integer means, bool sums
    xs = x.reshape(1) if x.ndim == 0 else x
    axes = _axes(axis, xs.ndim, f"reduce {op}") if x.ndim else (0,)
    out_shape = tuple(1 if d in axes else n for d, n in enumerate(x.shape)) if keepdims else \
        tuple(n for d, n in enumerate(x.shape) if d not in axes)
    x3 = _as_akb(xs, axes)
    A, K, B = x3.shape
    if K == 0:
        if op in ("max", "min"):
            raise ValueError(f"cuda reduce {op}: zero-size reduction over axes {axes} of shape {x.shape}")
        return full(out_shape, 0 if op == "sum" else np.nan, x.dtype)
    out = _empty((A, B), x.dtype)
    variant = REDUCE_VARIANT or _reduce_variant(A, K, B)
    if variant == 2:
        _reduce_v2(REDUCE_THREADS, np.dtype(x.dtype).name)[A * B, REDUCE_THREADS](code, x3, out)
    elif variant == 3:
        bx, by = COLUMN_BLOCK
        _reduce_v3(COLUMN_BLOCK, np.dtype(x.dtype).name)[(-(-B // bx), A), (bx, by)](code, x3, out)
    else:
        _launch(cu.reduce_v1, A * B, code, x3, out)
    return out.reshape(out_shape) if out_shape else out.reshape(())


def argmax(x, axis=None):
    """int64 index of the first maximum along axis (None: of the flattened array), as np.argmax."""
    if axis is None:
        x3, out_shape = x.reshape(1, x.size, 1), ()
    else:
        (a,) = _axes(axis, x.ndim, "argmax")
        x3 = x.reshape(_prod(x.shape[:a]), x.shape[a], _prod(x.shape[a + 1:]))
        out_shape = x.shape[:a] + x.shape[a + 1:]
    if x3.shape[1] == 0:
        raise ValueError(f"cuda argmax: an empty axis (shape {x.shape}, axis {axis})")
    out = _empty((x3.shape[0], x3.shape[2]), np.int64)
    _launch(cu.argmax_v1, out.size, x3, out)
    return out.reshape(out_shape) if out_shape else out.reshape(())


# ---- matrix products -------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _matmul_v2(tile, dtype_name):
    return cu.make_matmul_v2(tile, np.dtype(dtype_name))


@functools.lru_cache(maxsize=None)
def _matmul_v3(tiles, dtype_name):
    return cu.make_matmul_v3(*tiles, np.dtype(dtype_name))


def _matmul(A, B, ta=False, tb=False, bias=None, relu=False, variant=None):
    """C = op(A) op(B) (+ bias) (ReLU), op a transpose when ta / tb: the kernels read the transpose in place."""
    if A.ndim != 2 or B.ndim != 2:
        raise ValueError(f"cuda matmul: expected 2-D @ 2-D, got shapes {A.shape} and {B.shape}")
    M, K = (A.shape[1], A.shape[0]) if ta else A.shape
    K2, N = (B.shape[1], B.shape[0]) if tb else B.shape
    if K != K2:
        raise ValueError(f"cuda matmul: inner dimensions differ: {A.shape}{'^T' if ta else ''} @ "
                         f"{B.shape}{'^T' if tb else ''} ({K} vs {K2})")
    if A.dtype != B.dtype:
        raise TypeError(f"cuda matmul: both operands must have one dtype, got {A.dtype} and {B.dtype}")
    C = _empty((M, N), A.dtype)
    if C.size == 0:
        return C
    if K == 0:
        return full((M, N), 0, A.dtype) if bias is None else \
            _matmul(full((M, 1), 0, A.dtype), full((1, N), 0, A.dtype), bias=bias, relu=relu, variant=variant)
    variant = variant or MATMUL_VARIANT
    dtype_name = np.dtype(A.dtype).name
    if variant == 1:
        kernel, (bm, bn), block = cu.matmul_v1, (MATMUL_BLOCK, MATMUL_BLOCK), (MATMUL_BLOCK, MATMUL_BLOCK)
    elif variant == 2:
        kernel, (bm, bn), block = _matmul_v2(TILE, dtype_name), (TILE, TILE), (TILE, TILE)
    elif variant == 3:
        bm, bn, bk, tm, tn = V3_TILES
        kernel, block = _matmul_v3(V3_TILES, dtype_name), (bm // tm) * (bn // tn)
    else:
        raise ValueError(f"cuda matmul: variant {variant!r}; expected 1 (naive), 2 (shared tiles) or 3 (registers)")
    grid_x, grid_y = -(-N // bn), -(-M // bm)
    has_bias = bias is not None
    slices = 1 if has_bias or relu else _split_k(K, grid_x * grid_y)
    kz = -(-K // slices)
    slices = -(-K // kz)
    out = C.reshape(1, M, N) if slices == 1 else _empty((slices, M, N), A.dtype)
    kernel[(grid_x, grid_y, slices), block](A, B, out, int(ta), int(tb), bias if has_bias else _dummy_like(A, 1),
                                            int(has_bias), int(relu), kz)
    if slices > 1:  # C = the sum of the partial products: one thread per element of C, coalesced over the slices
        _launch(cu.reduce_v1, M * N, cu.REDUCE["sum"], out.reshape(1, slices, M * N), C.reshape(1, M * N))
    return C


@functools.lru_cache(maxsize=None)
def _target_blocks():
    """Blocks that fill the GPU: two per multiprocessor (16 under the simulator, where it does not matter)."""
    if SIMULATOR:
        return 16
    return 2 * int(cuda.get_current_device().MULTIPROCESSOR_COUNT)


def _split_k(K, blocks):
    """How many slices of K a product with `blocks` output tiles gets: enough blocks to fill the GPU, each slice at
    least 256 long (SPLIT_K overrides)."""
    if SPLIT_K is not None:
        return max(1, min(int(SPLIT_K), K))
    if K < 512 or blocks >= _target_blocks():
        return 1
    return max(1, min(-(-_target_blocks() // blocks), K // 256))


def matmul(a, b, variant=3):
    """a @ b for 2-D device arrays; variant 1 naive, 2 shared-memory tiles, 3 register-blocked tiles."""
    return _matmul(a, b, variant=variant)


# ---- data movement primitives --------------------------------------------------------------------------------------
def transpose(x, axes=None):
    """A contiguous copy of x with its axes permuted (reversed when axes is None), as np.transpose(x, axes)."""
    axes = tuple(reversed(range(x.ndim))) if axes is None else tuple(int(a) % max(x.ndim, 1) for a in axes)
    if sorted(axes) != list(range(x.ndim)):
        raise ValueError(f"cuda transpose: axes {axes} are not a permutation of {x.ndim} axes")
    strides = _contiguous_strides(x.shape)
    return _gather(x, 0, tuple(strides[a] for a in axes), tuple(x.shape[a] for a in axes))


def _take_layout(x, idx, axis):
    axis = _axes(axis, x.ndim, "take")[0]
    A, K, B = _prod(x.shape[:axis]), x.shape[axis], _prod(x.shape[axis + 1:])
    return axis, (A, K, B), x.shape[:axis] + tuple(idx.shape) + x.shape[axis + 1:]


def _index_array(idx):
    return idx if idx.dtype == np.int64 else cast(idx, np.int64)


def take(x, idx, axis=0):
    """np.take(x, idx, axis): out[..., m, ...] = x[..., idx[m], ...], idx an integer device array of any shape."""
    axis, (A, K, B), out_shape = _take_layout(x, idx, axis)
    out = _empty(out_shape, x.dtype)
    if out.size:
        _launch(cu.take_v1, out.size, x.reshape(A, K, B), _flat(_index_array(idx)), out.reshape(A, idx.size, B))
    return out


def scatter_add(out, idx, g, axis=0):
    """take's adjoint, in place: out[..., idx[m], ...] += g[..., m, ...] (repeated indices add up). Returns out."""
    axis, (A, K, B), g_shape = _take_layout(out, idx, axis)
    if tuple(g.shape) != g_shape:
        raise ValueError(f"cuda scatter_add: g has shape {g.shape}, expected {g_shape} (out {out.shape}, idx "
                         f"{idx.shape}, axis {axis})")
    if g.size:
        _launch(cu.scatter_add_v1, g.size, out.reshape(A, K, B), _flat(_index_array(idx)), g.reshape(A, idx.size, B))
    return out


def _basic_index(shape, index, what):
    """(offset, strides, shape) in elements of the view x[index] of a contiguous x, for basic indexing: a tuple of
    slices and ints (an Ellipsis allowed once)."""
    index = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis for i in index):
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (len(shape) - len(index) + 1) + index[at + 1:]
    if len(index) > len(shape):
        raise IndexError(f"cuda {what}: {len(index)} indices for an array of {len(shape)} axes (shape {shape})")
    index = index + (slice(None),) * (len(shape) - len(index))
    strides = _contiguous_strides(shape)
    offset, view_strides, view_shape = 0, [], []
    for d, (i, n) in enumerate(zip(index, shape)):
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            offset += start * strides[d]
            view_strides.append(step * strides[d])
            view_shape.append(len(range(start, stop, step)))
        elif isinstance(i, (int, np.integer)):
            if not -n <= i < n:
                raise IndexError(f"cuda {what}: index {i} is out of bounds for axis {d} of size {n}")
            offset += (int(i) % n) * strides[d]
        else:
            raise TypeError(f"cuda {what}: basic indexing takes slices and ints, got {type(i).__name__} on axis {d}")
    return offset, tuple(view_strides), tuple(view_shape)


def slice_copy(x, index):
    """x[index] as a contiguous copy (basic indexing: a tuple of slices and ints)."""
    offset, strides, shape = _basic_index(x.shape, index, "slice_copy")
    return _gather(x, offset, strides, shape)


def _scatter(src, dst, offset, strides, accumulate):
    if src.size:
        shape = src.shape or (1,)
        _launch(cu.scatter_strided, src.size, _flat(src), _dims(shape, 1), len(shape), _flat(dst), int(offset),
                _dims(strides or (0,), 0), int(accumulate))


def slice_add(out, index, g):
    """out[index] += g, in place (the adjoint of slice_copy; g broadcast to out[index]'s shape). Returns out."""
    offset, strides, shape = _basic_index(out.shape, index, "slice_add")
    if tuple(g.shape) != shape:
        try:
            np.broadcast_shapes(g.shape, shape)
        except ValueError:
            raise ValueError(f"cuda slice_add: g of shape {g.shape} does not fit out[{index}] of shape {shape}") \
                from None
        g = _gather(g, 0, _broadcast_strides(g.shape, shape), shape)
    _scatter(g, out, offset, strides, accumulate=True)
    return out


def concatenate(xs, axis=0):
    """np.concatenate(xs, axis) for device arrays of one dtype."""
    xs = list(xs)
    if not xs:
        raise ValueError("cuda concatenate: need at least one array")
    axis = _axes(axis, xs[0].ndim, "concatenate")[0]
    rest = [x.shape[:axis] + x.shape[axis + 1:] for x in xs]
    if any(r != rest[0] for r in rest) or any(x.dtype != xs[0].dtype for x in xs):
        raise ValueError(f"cuda concatenate: shapes {[x.shape for x in xs]} (dtypes {[str(x.dtype) for x in xs]}) "
                         f"must agree except on axis {axis}")
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    out = _empty(shape, xs[0].dtype)
    strides = _contiguous_strides(shape)
    at = 0
    for x in xs:
        _scatter(x, out, at * strides[axis], strides, accumulate=False)
        at += x.shape[axis]
    return out


def pad(x, pads):
    """np.pad(x, pads) with zeros; pads like numpy's ((before, after), ...) per axis."""
    pads = [tuple(int(v) for v in p) for p in pads]
    if len(pads) != x.ndim or any(len(p) != 2 or min(p) < 0 for p in pads):
        raise ValueError(f"cuda pad: expected one (before, after) pair of non-negative ints per axis of {x.shape}, "
                         f"got {pads}")
    shape = tuple(n + b + a for n, (b, a) in zip(x.shape, pads))
    out = full(shape, 0, x.dtype)
    strides = _contiguous_strides(shape)
    _scatter(x, out, sum(b * s for (b, _), s in zip(pads, strides)), strides, accumulate=False)
    return out


# ---- the reference.py interface: elementwise activations -------------------------------------------------------------
def relu_forward(x):
    return unary("relu", x)


def relu_backward(y, g):
    return binary("relu_backward", y, g)


def tanh_forward(x):
    return unary("tanh", x)


def tanh_backward(y, g):
    return binary("tanh_backward", y, g)


def sigmoid_forward(x):
    return unary("sigmoid", x)


def sigmoid_backward(y, g):
    return binary("sigmoid_backward", y, g)


def exp_forward(x):
    return unary("exp", x)


def log_forward(x):
    return unary("log", x)


# ---- linear layers: the product with the bias (and ReLU) fused into its epilogue ------------------------------------
def linear_forward(x, W, b):
    """y = x W + b: one matmul launch, the bias added where each output is written."""
    return _matmul(x, W, bias=b)


def sum_rows(g):
    return reduce("sum", g, 0)


def linear_backward(x, W, g, need_x, need_W, need_b):
    """dx = g W^T, dW = x^T g (the transposes read in place), db = column sums of g."""
    dx = _matmul(g, W, tb=True) if need_x else None
    dW = _matmul(x, g, ta=True) if need_W else None
    db = sum_rows(g) if need_b else None
    return dx, dW, db


def linear_relu_forward(x, W, b):
    return _matmul(x, W, bias=b, relu=True)


def linear_relu_backward(x, W, y, g, need_x, need_W, need_b):
    return linear_backward(x, W, relu_backward(y, g), need_x, need_W, need_b)


# ---- losses --------------------------------------------------------------------------------------------------------
def _sum_all(x):
    """The sum of a 1-D array as a (1,) array: one block, whatever REDUCE_VARIANT says (a loss, a few thousand rows)."""
    out = _empty((1, 1), x.dtype)
    _reduce_v2(REDUCE_THREADS, np.dtype(x.dtype).name)[1, REDUCE_THREADS](cu.REDUCE["sum"], x.reshape(1, x.size, 1),
                                                                             out)
    return out.reshape(1)


def _mean_of(values64, n, dtype):
    """The mean of a float64 (n,) array as a 0-d array of dtype (the sum in float64, as the reference)."""
    loss = _empty((1,), dtype)
    _launch(cu.scale_cast, 1, _sum_all(values64), 1.0 / max(n, 1), loss)
    return loss.reshape(())


def _scalar_array(g, dtype):
    """dL/dloss as a (1,) device array of dtype: from a 0-d device array (no transfer) or a Python number."""
    if _is_array(g):
        g = g.reshape(1)
        return g if g.dtype == dtype else cast(g, dtype)
    return full((1,), g, dtype)


def softmax_xent_forward(logits, labels):
    n, c = logits.shape
    probs = _empty((n, c), logits.dtype)
    rows = _empty((n,), np.float64)
    _launch(cu.softmax_xent_forward_v1, n, logits, _index_array(labels), probs, rows)
    return _mean_of(rows, n, logits.dtype), probs


def softmax_xent_backward(probs, labels, g):
    d = _empty(probs.shape, probs.dtype)
    _launch(cu.softmax_xent_backward_v1, probs.size, probs, _index_array(labels), _scalar_array(g, probs.dtype), d)
    return d


def mse_forward(a, b):
    if a.shape != b.shape:
        raise ValueError(f"cuda mse_forward: shapes {a.shape} and {b.shape} differ")
    sq = _empty((a.size,), np.float64)
    _launch(cu.squared_diff_v1, a.size, _flat(a), _flat(b), sq)
    return _mean_of(sq, a.size, a.dtype)


def mse_backward(a, b, g):
    da = _empty(a.shape, a.dtype)
    _launch(cu.mse_backward_v1, a.size, _flat(a), _flat(b), _scalar_array(g, a.dtype), _flat(da))
    return da


# ---- batch normalisation ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _bn_v2(factory, block, dtype_name):
    return getattr(cu, factory)(*block, np.dtype(dtype_name))


def _bn_column_kernel(name, n, c, dtype):
    """The batch-norm column kernel `name` (v1: a thread per column) or its v2 (column blocks) with its launch."""
    if (BATCHNORM_VARIANT or (2 if n >= 64 else 1)) == 2:
        bx, by = COLUMN_BLOCK
        return _bn_v2(f"make_{name}_v2", COLUMN_BLOCK, np.dtype(dtype).name)[-(-c // bx), (bx, by)]
    return getattr(cu, f"{name}_v1")[max(1, min(-(-c // THREADS), MAX_BLOCKS)), THREADS]


def _bn_forward(x, gamma, beta, eps, relu, store_xhat):
    n, c = x.shape
    mu, var, invstd = (_empty((c,), x.dtype) for _ in range(3))
    _bn_column_kernel("batchnorm_stats", n, c, x.dtype)(x, np.dtype(x.dtype).type(eps), mu, var, invstd)
    y = _empty((n, c), x.dtype)
    xhat = _empty((n, c), x.dtype) if store_xhat else _dummy_like(x, 2)
    _launch(cu.batchnorm_apply_v1, n * c, x, mu, invstd, gamma, beta, xhat, y, int(store_xhat), int(relu))
    return y, xhat, mu, var, invstd


def batchnorm_train_forward(x, gamma, beta, eps):
    """Two kernels: the column statistics (two passes per column: a stable variance), then y and xhat."""
    return _bn_forward(x, gamma, beta, eps, relu=False, store_xhat=True)


def batchnorm_eval_forward(x, gamma, beta, mean, var, eps):
    y = _empty(x.shape, x.dtype)
    _launch(cu.batchnorm_eval_v1, x.size, x, gamma, beta, mean, var, np.dtype(x.dtype).type(eps), y)
    return y


def _bn_backward(g, src, y, mu, gamma, invstd, need_x, recompute, relu):
    c = g.shape[1]
    dgamma, dbeta = _empty((c,), g.dtype), _empty((c,), g.dtype)
    _bn_column_kernel("batchnorm_backward_sums", g.shape[0], c, g.dtype)(g, src, y, mu, invstd, int(recompute),
                                                                          int(relu), dgamma, dbeta)
    dx = None
    if need_x:
        dx = _empty(g.shape, g.dtype)
        _launch(cu.batchnorm_backward_dx_v1, g.size, g, src, y, mu, invstd, int(recompute), int(relu), gamma,
                dgamma, dbeta, dx)
    return dx, dgamma, dbeta


def batchnorm_backward(g, xhat, gamma, invstd, need_x):
    return _bn_backward(g, xhat, _dummy_like(g, 2), _dummy_like(g, 1), gamma, invstd, need_x,
                        recompute=False, relu=False)


def batchnorm_relu_train_forward(x, gamma, beta, eps):
    y, _, mu, var, invstd = _bn_forward(x, gamma, beta, eps, relu=True, store_xhat=False)
    return y, mu, var, invstd


def batchnorm_relu_backward(g, x, y, mu, gamma, invstd, need_x):
    return _bn_backward(g, x, y, mu, gamma, invstd, need_x, recompute=True, relu=True)


# ---- optimizer updates, in place -------------------------------------------------------------------------------------
def adam_step_(p, g, m, v, lr, beta1, beta2, eps, bias1, bias2, weight_decay):
    t = np.dtype(p.dtype).type
    _launch(cu.adam_step_v1, p.size, _flat(p), _flat(g), _flat(m), _flat(v), t(lr), t(beta1), t(beta2), t(eps),
            t(bias1), t(bias2), t(weight_decay))


def sgd_step_(p, g, buf, lr, momentum, weight_decay, nesterov):
    t = np.dtype(p.dtype).type
    _launch(cu.sgd_step_v1, p.size, _flat(p), _flat(g), _flat(buf), t(lr), t(momentum), t(weight_decay),
            int(bool(nesterov)))


# ---- convolution: im2col + the matmul kernels + col2im ---------------------------------------------------------------
def _conv_geometry(x, W, stride, padding):
    n, c, h, w = x.shape
    o, c2, kh, kw = W.shape
    if c != c2:
        raise ValueError(f"cuda conv2d: x has {c} channels (shape {x.shape}), W expects {c2} (shape {W.shape})")
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    return (n, c, o, kh, kw), (int(kh), int(kw), int(sh), int(sw), int(ph), int(pw), int(oh), int(ow))


def _im2col(x, dims, geom):
    n, c, _, kh, kw = dims
    oh, ow = geom[6], geom[7]
    cols = _empty((n * oh * ow, c * kh * kw), x.dtype)
    _launch(cu.im2col_v1, cols.size, x, *geom, cols)
    return cols


def conv2d_forward(x, W, b, stride, padding):
    (n, c, o, kh, kw), geom = _conv_geometry(x, W, stride, padding)
    oh, ow = geom[6], geom[7]
    rows = _matmul(_im2col(x, (n, c, o, kh, kw), geom), W.reshape(o, c * kh * kw), tb=True, bias=b)  # (N OH OW, O)
    return transpose(rows.reshape(n, oh, ow, o), (0, 3, 1, 2))


def conv2d_backward(x, W, g, stride, padding, need_x, need_W, need_b):
    (n, c, o, kh, kw), geom = _conv_geometry(x, W, stride, padding)
    oh, ow = geom[6], geom[7]
    G = transpose(g, (0, 2, 3, 1)).reshape(n * oh * ow, o)
    db = reduce("sum", G, 0) if need_b else None
    dW = _matmul(G, _im2col(x, (n, c, o, kh, kw), geom), ta=True).reshape(W.shape) if need_W else None
    dx = None
    if need_x:
        dcols = _matmul(G, W.reshape(o, c * kh * kw))  # (N OH OW, C KH KW)
        dx = _empty(x.shape, x.dtype)
        _launch(cu.col2im_v1, dx.size, dcols, *geom, dx)
    return dx, dW, db


# ---- pooling ---------------------------------------------------------------------------------------------------------
def _pool_shape(x_shape, kernel, stride):
    n, c, h, w = x_shape
    return n, c, (h - kernel[0]) // stride[0] + 1, (w - kernel[1]) // stride[1] + 1


def _pool_args(kernel, stride):
    return int(kernel[0]), int(kernel[1]), int(stride[0]), int(stride[1])


def maxpool2d_forward(x, kernel, stride):
    shape = _pool_shape(x.shape, kernel, stride)
    y, arg = _empty(shape, x.dtype), _empty(shape, np.int64)
    _launch(cu.maxpool2d_forward_v1, y.size, x, *_pool_args(kernel, stride), y, arg)
    return y, arg


def maxpool2d_backward(g, argmax, x_shape, kernel, stride):
    expected = _pool_shape(x_shape, kernel, stride)
    if tuple(g.shape) != expected or tuple(argmax.shape) != expected:
        raise ValueError(f"cuda maxpool2d_backward: g {g.shape} and argmax {argmax.shape} must have shape {expected}")
    dx = _empty(x_shape, g.dtype)
    _launch(cu.maxpool2d_backward_v1, dx.size, g, argmax, *_pool_args(kernel, stride), dx)
    return dx


def avgpool2d_forward(x, kernel, stride):
    y = _empty(_pool_shape(x.shape, kernel, stride), x.dtype)
    _launch(cu.avgpool2d_forward_v1, y.size, x, *_pool_args(kernel, stride), y)
    return y


def avgpool2d_backward(g, x_shape, kernel, stride):
    expected = _pool_shape(x_shape, kernel, stride)
    if tuple(g.shape) != expected:
        raise ValueError(f"cuda avgpool2d_backward: g has shape {g.shape}, expected {expected}")
    dx = _empty(x_shape, g.dtype)
    _launch(cu.avgpool2d_backward_v1, dx.size, g, *_pool_args(kernel, stride), dx)
    return dx


# ---- the LSTM cell's gates -------------------------------------------------------------------------------------------
def lstm_gates_forward(zx, zh, b, c, out=None):
    n, h = c.shape
    h_new, c_new, gates = out if out is not None else (_empty((n, h), c.dtype), _empty((n, h), c.dtype),
                                                       _empty((n, 4 * h), c.dtype))
    _launch(cu.lstm_gates_forward_v1, n * h, zx, zh, b, c, h_new, c_new, gates)
    return h_new, c_new, gates


def lstm_gates_backward(gates, c, c_new, dh, dc, out=None):
    n, h = c.shape
    dz, dc_prev = out if out is not None else (_empty((n, 4 * h), c.dtype), _empty((n, h), c.dtype))
    _launch(cu.lstm_gates_backward_v1, n * h, gates, c, c_new, dh, dc, dz, dc_prev)
    return dz, dc_prev

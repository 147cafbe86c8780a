"""numba.cuda kernels: the arithmetic of `kernels/reference.py` written for a GPU, one CUDA thread per output first.

Each kernel's docstring opens with the loop it computes; the launch code (grid and block sizes, output allocation,
the reference.py interface) is `kernels/gpu.py`. Numbered variants (llm.c style) sit side by side where speed
matters: v1 is the plain one-thread-per-output port, later versions add one trick each, and every version is checked
against the NumPy reference under the CUDA simulator (tests/test_cuda_kernels.py) and compiled to PTX for a real
GPU (tests/test_cuda_ptx.py). The paper's networks (Jaderberg et al. 2016, Sec. 3: MLPs, CNNs, LSTMs with
synthesizers) need nothing more than these.

How a kernel maps to the hardware (docs/gpu.md): a launch `kernel[blocks, threads](...)` starts blocks x threads
threads; `cuda.grid(1)` is this thread's global index. 1-D kernels walk their outputs with a *grid-stride loop*
(`for i in range(cuda.grid(1), n, cuda.gridsize(1))`), so any grid covers any size. Arrays come in C-contiguous and
are indexed flat; shapes and strides of up to MAX_DIMS axes travel as tuples padded to MAX_DIMS (passed by value,
no transfer). Scalars arrive already cast to the arrays' dtype, so float32 kernels compute in float32.

`PTX` lists every kernel with the argument types the PTX check compiles it for; `@kernel(...)` adds a kernel to it,
and the kernels built by a factory (tile sizes and dtype baked in) add themselves when the factory builds them.
"""
import math

import numba
import numpy as np
from numba import cuda, types

MAX_DIMS = 6  # arrays of up to this many axes (shapes / strides are padded tuples of this length)

PTX = {}  # name -> (python function, [argument types for the PTX check])


def kernel(*signatures):
    """@cuda.jit, lazily compiled per argument types, and recorded in PTX with `signatures`: functions of a numba
    float type (float32 or float64) giving the argument types to compile for."""
    def wrap(fn):
        PTX[fn.__name__] = (fn, signatures)
        return cuda.jit(fn)
    return wrap


device = cuda.jit(device=True)

# argument types for the PTX check
i64, f64 = types.int64, types.float64  # (f64: the float64 loss buffers)
DIMS = types.UniTuple(types.int64, MAX_DIMS)


def vec(f):
    return f[::1]


def mat(f):
    return f[:, ::1]


def arr3(f):
    return f[:, :, ::1]


def arr4(f):
    return f[:, :, :, ::1]


# ---- elementwise ops: op codes and the scalar functions they name ----------------------------------------------------
UNARY = {"neg": 0, "exp": 1, "log": 2, "sqrt": 3, "abs": 4, "square": 5, "relu": 6, "tanh": 7, "sigmoid": 8, "sign": 9,
         "log1p": 10}
BINARY = {"add": 0, "sub": 1, "mul": 2, "div": 3, "pow": 4, "maximum": 5, "minimum": 6,
          "gt": 7, "ge": 8, "lt": 9, "le": 10, "eq": 11,
          # the activations' backward passes, binary(op, y, g) with y the forward's output
          "relu_backward": 12, "tanh_backward": 13, "sigmoid_backward": 14}


@device
def sigmoid(x, one):
    """1 / (1 + exp(-x)) without overflow: exp(-|x|) never exceeds 1."""
    e = math.exp(-abs(x))
    return one / (one + e) if x >= 0 else e / (one + e)


@device
def apply_unary(op, x, one):
    zero = one - one
    if op == 0:
        return -x
    if op == 1:
        return math.exp(x)
    if op == 2:
        return math.log(x)
    if op == 3:
        return math.sqrt(x)
    if op == 4:
        return abs(x)
    if op == 5:
        return x * x
    if op == 6:
        return zero if x < zero else x  # a NaN passes through, as np.maximum(x, 0)
    if op == 7:
        return math.tanh(x)
    if op == 8:
        return sigmoid(x, one)
    if op == 10:
        return math.log1p(x)
    if x > zero:  # sign, NaN -> NaN
        return one
    if x < zero:
        return -one
    return x


@device
def apply_binary(op, a, b, one):
    zero = one - one
    if op == 0:
        return a + b
    if op == 1:
        return a - b
    if op == 2:
        return a * b
    if op == 3:
        return a / b
    if op == 4:
        return a ** b
    if op == 5:
        return a if (a >= b or a != a) else b  # NaN wins, as np.maximum
    if op == 6:
        return a if (a <= b or a != a) else b
    if op == 7:
        return one if a > b else zero
    if op == 8:
        return one if a >= b else zero
    if op == 9:
        return one if a < b else zero
    if op == 10:
        return one if a <= b else zero
    if op == 11:
        return one if a == b else zero
    if op == 12:
        return b if a > zero else b * zero  # g * [y > 0]; g * 0 keeps a NaN gradient visible
    if op == 13:
        return b * (one - a * a)
    return b * a * (one - a)


@device
def offset_of(i, shape, strides, ndim):
    """The position in a strided array of element i of a C-ordered array of `shape` (the unravel of i)."""
    off = 0
    for d in range(ndim - 1, -1, -1):
        off += (i % shape[d]) * strides[d]
        i //= shape[d]
    return off


@kernel(lambda f: (i64, vec(f), vec(f)))
def unary_v1(op, x, y):
    """for i: y[i] = f_op(x[i])"""
    one = y.dtype.type(1)
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        y[i] = apply_unary(op, x[i], one)


@kernel(lambda f: (i64, vec(f), DIMS, vec(f), DIMS, DIMS, i64, vec(f)))
def binary_v1(op, a, a_strides, b, b_strides, shape, ndim, out):
    """for every index (i_0, ..., i_d) of out:  out[i] = f_op(a[i . a_strides], b[i . b_strides]).

    One thread per output element; NumPy broadcasting is a stride of 0 along a broadcast axis, so the same
    unravel-and-dot serves every shape pair.
    """
    one = out.dtype.type(1)
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = apply_binary(op, a[offset_of(i, shape, a_strides, ndim)],
                              b[offset_of(i, shape, b_strides, ndim)], one)


@kernel(lambda f: (i64, vec(f), vec(f), vec(f)))
def binary_v2(op, a, b, out):
    """for i: out[i] = f_op(a[i], b[i])   (same shapes, both contiguous)

    v2 over v1: no index arithmetic at all; consecutive threads read consecutive addresses (coalesced).
    """
    one = out.dtype.type(1)
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = apply_binary(op, a[i], b[i], one)


@kernel(lambda f: (i64, vec(f), f, i64, vec(f)))
def binary_scalar(op, x, s, scalar_first, out):
    """for i: out[i] = f_op(x[i], s)   (or f_op(s, x[i]) when scalar_first): the scalar is a kernel argument."""
    one = out.dtype.type(1)
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        if scalar_first:
            out[i] = apply_binary(op, s, x[i], one)
        else:
            out[i] = apply_binary(op, x[i], s, one)


@kernel(lambda f: (vec(f), DIMS, vec(f), DIMS, vec(f), DIMS, DIMS, i64, vec(f)))
def where_v1(cond, c_strides, a, a_strides, b, b_strides, shape, ndim, out):
    """for every index i of out:  out[i] = a[i] if cond[i] != 0 else b[i]   (each operand broadcast by its strides)"""
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        if cond[offset_of(i, shape, c_strides, ndim)]:
            out[i] = a[offset_of(i, shape, a_strides, ndim)]
        else:
            out[i] = b[offset_of(i, shape, b_strides, ndim)]


# ---- copies, fills, casts: the data movement primitives -------------------------------------------------------------
@kernel(lambda f: (vec(f), i64, DIMS, DIMS, i64, vec(f)))
def gather_strided(src, offset, strides, shape, ndim, dst):
    """for every index i of dst (C order):  dst[i] = src[offset + i . strides]

    One kernel for transpose (permuted strides), basic slicing (offset, strides times steps), broadcast (stride 0)
    and making anything contiguous.
    """
    for i in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
        dst[i] = src[offset + offset_of(i, shape, strides, ndim)]


@kernel(lambda f: (vec(f), DIMS, i64, vec(f), i64, DIMS, i64))
def scatter_strided(src, shape, ndim, dst, offset, strides, accumulate):
    """for every index i of src (C order):  dst[offset + i . strides] (+)= src[i]

    The adjoint of gather_strided (slice_add, concatenate, pad). Positions are distinct for basic slices, so
    threads never write the same element: no atomics.
    """
    for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
        k = offset + offset_of(i, shape, strides, ndim)
        if accumulate:
            dst[k] += src[i]
        else:
            dst[k] = src[i]


@kernel(lambda f: (vec(f), f))
def fill(dst, value):
    """for i: dst[i] = value"""
    for i in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
        dst[i] = value


@kernel(lambda f: (vec(f), vec(types.float32)))
def cast(src, dst):
    """for i: dst[i] = dtype(src[i])   (also a plain copy when the dtypes agree)"""
    for i in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
        dst[i] = src[i]


@kernel(lambda f: (vec(f), f, vec(f)))
def scale_cast(src, factor, dst):
    """for i: dst[i] = dtype(src[i] * factor)   (a float64 sum turned into a mean of the arrays' dtype)"""
    for i in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
        dst[i] = src[i] * factor


@kernel(lambda f: (arr3(f), vec(i64), arr3(f)))
def take_v1(x, idx, out):
    """for a, m, b:  out[a, m, b] = x[a, idx[m], b]   (gather along the middle axis; idx < 0 counts from the end)"""
    A, M, B = out.shape
    K = x.shape[1]
    for t in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        a, rest = t // (M * B), t % (M * B)
        m, b = rest // B, rest % B
        k = idx[m]
        if k < 0:
            k += K
        out[a, m, b] = x[a, k, b]


@kernel(lambda f: (arr3(f), vec(i64), arr3(f)))
def scatter_add_v1(out, idx, g):
    """for a, m, b:  out[a, idx[m], b] += g[a, m, b]   (take's adjoint)

    A repeated index makes several threads add into the same element, so the add is atomic.
    """
    A, M, B = g.shape
    K = out.shape[1]
    for t in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        a, rest = t // (M * B), t % (M * B)
        m, b = rest // B, rest % B
        k = idx[m]
        if k < 0:
            k += K
        cuda.atomic.add(out, (a, k, b), g[a, m, b])


# ---- reductions over axes: x viewed as (A, K, B), K the reduced axes, out (A, B) ------------------------------------
REDUCE = {"sum": 0, "max": 1, "min": 2, "mean": 3}


@device
def fold(op, acc, v):
    """One more element v into a running result acc: sum (and mean's sum), or max / min where a NaN wins, as NumPy's."""
    if op == 0 or op == 3:
        return acc + v
    if op == 1:
        return v if (v > acc or v != v) else acc
    return v if (not (v >= acc) and acc == acc) else acc


@device
def combine(op, u, v):
    """Two partial results of a reduction into one (a NaN in either wins for max / min)."""
    if op == 0 or op == 3:
        return u + v
    if op == 1:
        return u if (u >= v or u != u) else v
    return u if (u <= v or u != u) else v


@kernel(lambda f: (i64, arr3(f), mat(f)))
def reduce_v1(op, x, out):
    """for a, b:  out[a, b] = reduce_k x[a, k, b]   (sum, max, min or mean; max/min propagate NaN as NumPy)

    One thread per output, walking K serially. Threads next to each other take neighbouring b, so a reduction over
    a leading axis (the column sums of an (N, C) gradient) reads memory coalesced.
    """
    A, K, B = x.shape
    for t in range(cuda.grid(1), A * B, cuda.gridsize(1)):
        a, b = t // B, t % B
        acc = x[a, 0, b]
        for k in range(1, K):
            v = x[a, k, b]
            acc = fold(op, acc, v)
        if op == 3:
            acc = acc / x.dtype.type(K)
        out[a, b] = acc


def make_reduce_v2(threads, dtype):
    """v2: one block per output, its threads each sum a strided share of K, then a tree in shared memory.

    for a, b:  out[a, b] = reduce_k x[a, k, b], with `threads` partial results combined in log2(threads) steps.
    Better than v1 when there are few outputs and long rows (a loss summed over the whole batch).
    """
    assert threads & (threads - 1) == 0, f"reduce_v2: threads must be a power of two, got {threads}"
    nb = numba.from_dtype(dtype)

    def reduce_v2(op, x, out):
        A, K, B = x.shape
        part = cuda.shared.array(threads, dtype=nb)
        tid = cuda.threadIdx.x
        o = cuda.blockIdx.x  # one block per output (a, b)
        a, b = o // B, o % B
        acc = x.dtype.type(0) if (op == 0 or op == 3) else x[a, 0, b]  # idle threads (tid >= K) keep this
        for k in range(tid, K, threads):
            v = x[a, k, b]
            acc = fold(op, acc, v)
        part[tid] = acc
        cuda.syncthreads()
        step = threads // 2
        while step > 0:
            if tid < step:
                part[tid] = combine(op, part[tid], part[tid + step])
            cuda.syncthreads()
            step //= 2
        if tid == 0:
            r = part[0]
            if op == 3:
                r = r / x.dtype.type(K)
            out[a, b] = r

    return _factory_kernel(reduce_v2, f"reduce_v2_t{threads}_{np.dtype(dtype).name}", (i64, arr3(nb), mat(nb)))


@device
def combine_rows(part, op, tx, ty, rows):
    """Fold the `rows` partial results part[0:rows, tx] of a block into part[0, tx] (a tree, one syncthreads a level;
    every thread of the block must call it)."""
    step = rows // 2
    while step > 0:
        if ty < step:
            part[ty, tx] = combine(op, part[ty, tx], part[ty + step, tx])
        cuda.syncthreads()
        step //= 2


def make_reduce_v3(bx, by, dtype):
    """v3: column blocks.  for a, b:  out[a, b] = reduce_k x[a, k, b], a (bx, by) block per bx neighbouring columns b:
    thread (tx, ty) folds rows k = ty, ty + by, ... of column b0 + tx, then the by partials meet in shared memory.

    For the column sums of a tall (N, C) array (bias gradients, batch statistics) v1 starts only C threads, each
    walking N rows one load at a time; v3 puts by threads on every column, reads stay coalesced along tx.
    """
    assert by & (by - 1) == 0, f"reduce_v3: by must be a power of two, got {by}"
    nb = numba.from_dtype(dtype)

    def reduce_v3(op, x, out):
        A, K, B = x.shape
        part = cuda.shared.array((by, bx), dtype=nb)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        a, b = cuda.blockIdx.y, cuda.blockIdx.x * bx + tx
        bc = b if b < B else B - 1  # threads past the last column fold a real column and discard it
        acc = x.dtype.type(0) if (op == 0 or op == 3) else x[a, 0, bc]
        for k in range(ty, K, by):
            v = x[a, k, bc]
            acc = fold(op, acc, v)
        part[ty, tx] = acc
        cuda.syncthreads()
        combine_rows(part, op, tx, ty, by)
        if ty == 0 and b < B:
            r = part[0, tx]
            if op == 3:
                r = r / x.dtype.type(K)
            out[a, b] = r

    return _factory_kernel(reduce_v3, f"reduce_v3_{bx}x{by}_{np.dtype(dtype).name}", (i64, arr3(nb), mat(nb)))


@kernel(lambda f: (arr3(f), mat(i64)))
def argmax_v1(x, out):
    """for a, b:  out[a, b] = the first k with x[a, k, b] maximal (a NaN counts as the maximum, as np.argmax)"""
    A, K, B = x.shape
    for t in range(cuda.grid(1), A * B, cuda.gridsize(1)):
        a, b = t // B, t % B
        best, at = x[a, 0, b], 0
        for k in range(1, K):
            if best != best:
                break
            v = x[a, k, b]
            if v > best or v != v:
                best, at = v, k
        out[a, b] = at


# ---- matrix products: C = op(A) op(B) (+ bias) (then ReLU), op = transpose or not ----------------------------------
# All three variants take the same arguments: ta / tb say A or B is stored transposed (so x^T g and g W^T need no
# copy), bias is added to every row when has_bias, and relu clips the result: the fused linear and linear + ReLU
# epilogues. A(i, k) = A[k, i] if ta else A[i, k].
# Split-K: C is (S, M, N) and block z of the grid sums only k in [z kz, (z + 1) kz), into C[z]; the host adds the S
# partial products (a reduction). With S = 1 that is the plain product. It gives a small output with a long K
# (dW = x^T g at a large batch: a few tiles of C, K = the batch) enough blocks to fill the GPU.
@device
def load(M, transposed, i, k, rows, cols):
    """Element (i, k) of op(M), with op(M) of shape (rows, cols); 0 outside it (the ragged edge of a tile)."""
    if i >= rows or k >= cols:
        return M.dtype.type(0)
    return M[k, i] if transposed else M[i, k]


@device
def epilogue(acc, bias, j, has_bias, relu):
    if has_bias:
        acc += bias[j]
    if relu and acc < 0:  # a NaN passes through
        acc = bias.dtype.type(0)  # (bias, real or a stand-in, has C's dtype)
    return acc


MATMUL_SIG = lambda f: (mat(f), mat(f), arr3(f), i64, i64, vec(f), i64, i64, i64)  # noqa: E731


@kernel(MATMUL_SIG)
def matmul_v1(A, B, C, ta, tb, bias, has_bias, relu, kz):
    """for i, j:  C[i, j] = sum_k A(i, k) B(k, j)  (+ bias[j]) (ReLU)

    One thread per output element (2-D grid: x along the columns j, y along the rows i). Every thread reads a whole
    row of A and column of B from global memory: 2 K loads per 2 K flops, so it is memory-bound.
    """
    j, i = cuda.grid(2)
    z = cuda.blockIdx.z
    M, N = C.shape[1], C.shape[2]
    K = A.shape[0] if ta else A.shape[1]
    k_lo = z * kz
    k_hi = min(k_lo + kz, K)
    if i < M and j < N:
        acc = C.dtype.type(0)
        for k in range(k_lo, k_hi):
            acc += load(A, ta, i, k, M, k_hi) * load(B, tb, k, j, k_hi, N)
        C[z, i, j] = epilogue(acc, bias, j, has_bias, relu)


def _factory_kernel(fn, name, signature):
    """Compile a kernel built by a factory (its sizes and dtype are closure constants) and record it in PTX."""
    fn.__name__ = fn.__qualname__ = name
    PTX[name] = (fn, (lambda f, s=signature: s,))
    return cuda.jit(fn)


def make_matmul_v2(tile, dtype):
    """v2: shared-memory tiles.  for each (tile x tile) block of C: for k0 in steps of tile: stage the A and B tiles
    in shared memory, then each thread adds its row of one times its column of the other.

    Block (tile, tile), one thread per output. Each global element is loaded once per tile instead of once per
    output: tile times less memory traffic. Two syncthreads per step: before the tiles are read, and before they
    are overwritten.
    """
    nb = numba.from_dtype(dtype)

    def matmul_v2(A, B, C, ta, tb, bias, has_bias, relu, kz):
        sA = cuda.shared.array((tile, tile), dtype=nb)
        sB = cuda.shared.array((tile, tile), dtype=nb)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        i = cuda.blockIdx.y * tile + ty
        j = cuda.blockIdx.x * tile + tx
        z = cuda.blockIdx.z
        M, N = C.shape[1], C.shape[2]
        K = A.shape[0] if ta else A.shape[1]
        k_lo = z * kz
        k_hi = min(k_lo + kz, K)
        acc = C.dtype.type(0)
        for k0 in range(k_lo, k_hi, tile):
            sA[ty, tx] = load(A, ta, i, k0 + tx, M, k_hi)
            sB[ty, tx] = load(B, tb, k0 + ty, j, k_hi, N)
            cuda.syncthreads()
            for kk in range(tile):
                acc += sA[ty, kk] * sB[kk, tx]
            cuda.syncthreads()
        if i < M and j < N:
            C[z, i, j] = epilogue(acc, bias, j, has_bias, relu)

    return _factory_kernel(matmul_v2, f"matmul_v2_t{tile}_{np.dtype(dtype).name}", MATMUL_SIG(nb))


def make_matmul_v3(bm, bn, bk, tm, tn, dtype):
    """v3: register blocking.  for each (bm x bn) block of C: for k0 in steps of bk: stage A[bm, bk] and B[bk, bn]
    in shared memory; each thread then accumulates a (tm x tn) patch of C in registers, from tm values of A and tn
    of B per k (tm + tn loads for tm tn multiply-adds).

    (bm / tm) (bn / tn) threads a block, each owning rows ty + r bm/tm and columns tx + c bn/tn of the block
    (strided, so neighbouring threads write neighbouring columns: coalesced stores). Shared loads are spread over
    all threads. The tile sizes are compile-time constants, so the patch lives in registers.
    """
    assert bm % tm == 0 and bn % tn == 0, f"matmul_v3: bm={bm} must be a multiple of tm={tm}, bn={bn} of tn={tn}"
    nb = numba.from_dtype(dtype)
    rows_t, cols_t = bm // tm, bn // tn  # threads along a block's rows and columns
    nthreads = rows_t * cols_t

    def matmul_v3(A, B, C, ta, tb, bias, has_bias, relu, kz):
        sA = cuda.shared.array((bk, bm), dtype=nb)  # A's tile stored k-major: sA[k, m]
        sB = cuda.shared.array((bk, bn), dtype=nb)
        acc = cuda.local.array((tm, tn), dtype=nb)
        ra = cuda.local.array(tm, dtype=nb)
        rb = cuda.local.array(tn, dtype=nb)
        tid = cuda.threadIdx.x
        tx, ty = tid % cols_t, tid // cols_t
        row0, col0 = cuda.blockIdx.y * bm, cuda.blockIdx.x * bn
        z = cuda.blockIdx.z
        M, N = C.shape[1], C.shape[2]
        K = A.shape[0] if ta else A.shape[1]
        k_lo = z * kz
        k_hi = min(k_lo + kz, K)
        for r in range(tm):
            for c in range(tn):
                acc[r, c] = 0
        for k0 in range(k_lo, k_hi, bk):
            for t in range(tid, bm * bk, nthreads):
                m, k = t // bk, t % bk
                sA[k, m] = load(A, ta, row0 + m, k0 + k, M, k_hi)
            for t in range(tid, bk * bn, nthreads):
                k, n = t // bn, t % bn
                sB[k, n] = load(B, tb, k0 + k, col0 + n, k_hi, N)
            cuda.syncthreads()
            for k in range(bk):
                for r in range(tm):
                    ra[r] = sA[k, ty + r * rows_t]
                for c in range(tn):
                    rb[c] = sB[k, tx + c * cols_t]
                for r in range(tm):
                    for c in range(tn):
                        acc[r, c] += ra[r] * rb[c]
            cuda.syncthreads()
        for r in range(tm):
            i = row0 + ty + r * rows_t
            for c in range(tn):
                j = col0 + tx + c * cols_t
                if i < M and j < N:
                    C[z, i, j] = epilogue(acc[r, c], bias, j, has_bias, relu)

    return _factory_kernel(matmul_v3, f"matmul_v3_{bm}x{bn}x{bk}_{tm}x{tn}_{np.dtype(dtype).name}", MATMUL_SIG(nb))


# ---- softmax cross-entropy and mean squared error --------------------------------------------------------------------
@kernel(lambda f: (mat(f), vec(i64), mat(f), vec(f64)))
def softmax_xent_forward_v1(z, labels, probs, row_loss):
    """for n:  m = max_k z[n, k];  s = sum_k exp(z[n, k] - m);  probs[n, k] = exp(z[n, k] - m) / s;
               row_loss[n] = log(s) + m - z[n, labels[n]]   (float64; the mean over n is a reduction)

    One thread per row (rows are short: the classes).
    """
    N, C = z.shape
    for n in range(cuda.grid(1), N, cuda.gridsize(1)):
        m = z[n, 0]
        for k in range(1, C):
            m = max(m, z[n, k])
        s = z.dtype.type(0)
        for k in range(C):
            e = math.exp(z[n, k] - m)
            probs[n, k] = e
            s += e
        for k in range(C):
            probs[n, k] /= s
        row_loss[n] = math.log(s) + m - z[n, labels[n]]


@kernel(lambda f: (mat(f), vec(i64), vec(f), mat(f)))
def softmax_xent_backward_v1(probs, labels, g, d):
    """for n, k:  d[n, k] = (probs[n, k] - [k == labels[n]]) * g / N   (g: a 1-element array, dL/dloss)"""
    N, C = probs.shape
    one = probs.dtype.type(1)
    scale = g[0] / g.dtype.type(N)
    for t in range(cuda.grid(1), N * C, cuda.gridsize(1)):
        n, k = t // C, t % C
        p = probs[n, k]
        if k == labels[n]:
            p -= one
        d[n, k] = p * scale


@kernel(lambda f: (vec(f), vec(f), vec(f64)))
def squared_diff_v1(a, b, out):
    """for i: out[i] = (float64(a[i]) - b[i])^2   (summed by a reduction for the mean squared error)"""
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        d = float(a[i]) - float(b[i])
        out[i] = d * d


@kernel(lambda f: (vec(f), vec(f), vec(f), vec(f)))
def mse_backward_v1(a, b, g, da):
    """for i: da[i] = (a[i] - b[i]) * (2 g / size)"""
    scale = g.dtype.type(2) * g[0] / g.dtype.type(a.size)
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        da[i] = (a[i] - b[i]) * scale


# ---- batch normalisation over the batch axis of (N, C) ---------------------------------------------------------------
@kernel(lambda f: (mat(f), f, vec(f), vec(f), vec(f)))
def batchnorm_stats_v1(x, eps, mu, var, invstd):
    """for c:  mu[c] = mean_n x[n, c];  var[c] = mean_n (x[n, c] - mu[c])^2;  invstd[c] = 1 / sqrt(var[c] + eps)

    One thread per column, two passes over it: the variance is a mean of squared deviations, never the cancelling
    E[x^2] - E[x]^2 (numerically stable when |mean| >> std).
    """
    N, C = x.shape
    for c in range(cuda.grid(1), C, cuda.gridsize(1)):
        s = x.dtype.type(0)
        for n in range(N):
            s += x[n, c]
        m = s / x.dtype.type(N)
        q = x.dtype.type(0)
        for n in range(N):
            d = x[n, c] - m
            q += d * d
        v = q / x.dtype.type(N)
        mu[c] = m
        var[c] = v
        invstd[c] = x.dtype.type(1) / math.sqrt(v + eps)


def make_batchnorm_stats_v2(bx, by, dtype):
    """v2: the statistics of bx columns per (bx, by) block, by threads per column (see make_reduce_v3): pass 1 sums
    each column into shared memory and makes the mean, pass 2 sums the squared deviations from it (still two passes:
    a stable variance)."""
    nb = numba.from_dtype(dtype)

    def batchnorm_stats_v2(x, eps, mu, var, invstd):
        N, C = x.shape
        part = cuda.shared.array((by, bx), dtype=nb)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        c = cuda.blockIdx.x * bx + tx
        cc = c if c < C else C - 1
        s = x.dtype.type(0)
        for n in range(ty, N, by):
            s += x[n, cc]
        part[ty, tx] = s
        cuda.syncthreads()
        combine_rows(part, 0, tx, ty, by)
        m = part[0, tx] / x.dtype.type(N)
        cuda.syncthreads()  # everyone has read the mean before part is reused
        q = x.dtype.type(0)
        for n in range(ty, N, by):
            d = x[n, cc] - m
            q += d * d
        part[ty, tx] = q
        cuda.syncthreads()
        combine_rows(part, 0, tx, ty, by)
        if ty == 0 and c < C:
            v = part[0, tx] / x.dtype.type(N)
            mu[c] = m
            var[c] = v
            invstd[c] = x.dtype.type(1) / math.sqrt(v + eps)

    return _factory_kernel(batchnorm_stats_v2, f"batchnorm_stats_v2_{bx}x{by}_{np.dtype(dtype).name}",
                           (mat(nb), nb, vec(nb), vec(nb), vec(nb)))


@kernel(lambda f: (mat(f), vec(f), vec(f), vec(f), vec(f), mat(f), mat(f), i64, i64))
def batchnorm_apply_v1(x, mu, invstd, gamma, beta, xhat, y, store_xhat, relu):
    """for n, c:  h = (x[n, c] - mu[c]) invstd[c];  y[n, c] = gamma[c] h + beta[c]  (ReLU if relu);  xhat[n, c] = h"""
    N, C = x.shape
    for t in range(cuda.grid(1), N * C, cuda.gridsize(1)):
        n, c = t // C, t % C
        h = (x[n, c] - mu[c]) * invstd[c]
        if store_xhat:
            xhat[n, c] = h
        v = h * gamma[c] + beta[c]
        if relu and v < 0:
            v = y.dtype.type(0)
        y[n, c] = v


@kernel(lambda f: (mat(f), vec(f), vec(f), vec(f), vec(f), f, mat(f)))
def batchnorm_eval_v1(x, gamma, beta, mean, var, eps, y):
    """for n, c:  y[n, c] = (x[n, c] - mean[c]) gamma[c] / sqrt(var[c] + eps) + beta[c]"""
    N, C = x.shape
    for t in range(cuda.grid(1), N * C, cuda.gridsize(1)):
        n, c = t // C, t % C
        y[n, c] = (x[n, c] - mean[c]) * (gamma[c] / math.sqrt(var[c] + eps)) + beta[c]


@device
def bn_grad_in(g, y, relu, n, c):
    """g[n, c], masked by the ReLU's [y > 0] when the layer was batch norm + ReLU."""
    v = g[n, c]
    if relu and not (y[n, c] > 0):
        v = v * g.dtype.type(0)  # g * 0, not 0: a NaN gradient stays visible
    return v


@device
def bn_xhat(src, mu, invstd, recompute, n, c):
    """xhat[n, c]: stored (src is xhat) or recomputed from src = x as (x - mu) invstd."""
    return (src[n, c] - mu[c]) * invstd[c] if recompute else src[n, c]


@kernel(lambda f: (mat(f), mat(f), mat(f), vec(f), vec(f), i64, i64, vec(f), vec(f)))
def batchnorm_backward_sums_v1(g, src, y, mu, invstd, recompute, relu, dgamma, dbeta):
    """for c:  dbeta[c] = sum_n g'[n, c];  dgamma[c] = sum_n g'[n, c] xhat[n, c]   (g' = g, or g [y > 0])"""
    N, C = g.shape
    for c in range(cuda.grid(1), C, cuda.gridsize(1)):
        sb = g.dtype.type(0)
        sg = g.dtype.type(0)
        for n in range(N):
            v = bn_grad_in(g, y, relu, n, c)
            sb += v
            sg += v * bn_xhat(src, mu, invstd, recompute, n, c)
        dbeta[c] = sb
        dgamma[c] = sg


def make_batchnorm_backward_sums_v2(bx, by, dtype):
    """v2: dbeta and dgamma of bx columns per (bx, by) block, by threads per column (see make_reduce_v3)."""
    nb = numba.from_dtype(dtype)

    def batchnorm_backward_sums_v2(g, src, y, mu, invstd, recompute, relu, dgamma, dbeta):
        N, C = g.shape
        sb_part = cuda.shared.array((by, bx), dtype=nb)
        sg_part = cuda.shared.array((by, bx), dtype=nb)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        c = cuda.blockIdx.x * bx + tx
        cc = c if c < C else C - 1
        sb = g.dtype.type(0)
        sg = g.dtype.type(0)
        for n in range(ty, N, by):
            v = bn_grad_in(g, y, relu, n, cc)
            sb += v
            sg += v * bn_xhat(src, mu, invstd, recompute, n, cc)
        sb_part[ty, tx] = sb
        sg_part[ty, tx] = sg
        cuda.syncthreads()
        combine_rows(sb_part, 0, tx, ty, by)
        combine_rows(sg_part, 0, tx, ty, by)
        if ty == 0 and c < C:
            dbeta[c] = sb_part[0, tx]
            dgamma[c] = sg_part[0, tx]

    return _factory_kernel(batchnorm_backward_sums_v2, f"batchnorm_backward_sums_v2_{bx}x{by}_{np.dtype(dtype).name}",
                           (mat(nb), mat(nb), mat(nb), vec(nb), vec(nb), i64, i64, vec(nb), vec(nb)))


@kernel(lambda f: (mat(f), mat(f), mat(f), vec(f), vec(f), i64, i64, vec(f), vec(f), vec(f), mat(f)))
def batchnorm_backward_dx_v1(g, src, y, mu, invstd, recompute, relu, gamma, dgamma, dbeta, dx):
    """for n, c:  dx[n, c] = gamma[c] invstd[c] / N (N g'[n, c] - dbeta[c] - xhat[n, c] dgamma[c])"""
    N, C = g.shape
    nf = g.dtype.type(N)
    for t in range(cuda.grid(1), N * C, cuda.gridsize(1)):
        n, c = t // C, t % C
        v = bn_grad_in(g, y, relu, n, c)
        h = bn_xhat(src, mu, invstd, recompute, n, c)
        dx[n, c] = (gamma[c] * invstd[c] / nf) * (nf * v - dbeta[c] - h * dgamma[c])


# ---- optimizer updates: one kernel, one pass, per parameter ----------------------------------------------------------
@kernel(lambda f: (vec(f), vec(f), vec(f), vec(f), f, f, f, f, f, f, f))
def adam_step_v1(p, g, m, v, lr, beta1, beta2, eps, bias1, bias2, weight_decay):
    """for i:  g' = g[i] + wd p[i];  m[i] = b1 m[i] + (1 - b1) g';  v[i] = b2 v[i] + (1 - b2) g'^2;
               p[i] -= lr / bias1 * m[i] / (sqrt(v[i]) / sqrt(bias2) + eps)

    Every array is read once and written once: one pass over memory where NumPy makes a dozen.
    """
    one = p.dtype.type(1)
    step = lr / bias1
    root2 = math.sqrt(bias2)
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        gi = g[i]
        if weight_decay != 0:
            gi += weight_decay * p[i]
        mi = beta1 * m[i] + (one - beta1) * gi
        vi = beta2 * v[i] + (one - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= step * mi / (math.sqrt(vi) / root2 + eps)


@kernel(lambda f: (vec(f), vec(f), vec(f), f, f, f, i64))
def sgd_step_v1(p, g, buf, lr, momentum, weight_decay, nesterov):
    """for i:  g' = g[i] + wd p[i];  buf[i] = mu buf[i] + g';  p[i] -= lr (g' + mu buf[i] if nesterov else buf[i])
    (without momentum: p[i] -= lr g')"""
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        gi = g[i]
        if weight_decay != 0:
            gi += weight_decay * p[i]
        if momentum != 0:
            b = momentum * buf[i] + gi
            buf[i] = b
            gi = gi + momentum * b if nesterov else b
        p[i] -= lr * gi


# ---- 2-D convolution as im2col + matmul, NCHW ------------------------------------------------------------------------
CONV_GEOM = (i64,) * 8  # kh, kw, sh, sw, ph, pw, oh, ow


@kernel(lambda f: (arr4(f),) + CONV_GEOM + (mat(f),))
def im2col_v1(x, kh, kw, sh, sw, ph, pw, oh, ow, cols):
    """for n, i, j, c, p, q:  cols[(n, i, j), (c, p, q)] = x[n, c, i sh + p - ph, j sw + q - pw]  (0 in the padding)

    One thread per element of cols; the product cols W^T is then a matmul kernel.
    """
    N, C, H, W = x.shape
    R, Q = cols.shape
    for t in range(cuda.grid(1), R * Q, cuda.gridsize(1)):
        r, col = t // Q, t % Q
        n, ij = r // (oh * ow), r % (oh * ow)
        i, j = ij // ow, ij % ow
        c, pq = col // (kh * kw), col % (kh * kw)
        p, q = pq // kw, pq % kw
        h, w = i * sh + p - ph, j * sw + q - pw
        if 0 <= h < H and 0 <= w < W:
            cols[r, col] = x[n, c, h, w]
        else:
            cols[r, col] = 0


@kernel(lambda f: (mat(f),) + CONV_GEOM + (arr4(f),))
def col2im_v1(dcols, kh, kw, sh, sw, ph, pw, oh, ow, dx):
    """for n, c, h, w:  dx[n, c, h, w] = sum over the taps (p, q) of windows (i, j) that read (h, w), i.e.
    i sh + p - ph = h and j sw + q - pw = w, of dcols[(n, i, j), (c, p, q)]

    One thread per input pixel *gathering* its taps, instead of one per tap scattering into dx: no two threads write
    the same element, so no atomics and a deterministic sum.
    """
    N, C, H, W = dx.shape
    for t in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        n, rest = t // (C * H * W), t % (C * H * W)
        c, hw = rest // (H * W), rest % (H * W)
        h, w = hw // W, hw % W
        acc = dx.dtype.type(0)
        for p in range(kh):
            hi = h + ph - p
            if hi < 0 or hi % sh != 0 or hi // sh >= oh:
                continue
            for q in range(kw):
                wj = w + pw - q
                if wj < 0 or wj % sw != 0 or wj // sw >= ow:
                    continue
                acc += dcols[(n * oh + hi // sh) * ow + wj // sw, (c * kh + p) * kw + q]
        dx[n, c, h, w] = acc


# ---- pooling, NCHW, no padding ---------------------------------------------------------------------------------------
POOL_GEOM = (i64,) * 4  # kh, kw, sh, sw


@kernel(lambda f: (arr4(f),) + POOL_GEOM + (arr4(f), arr4(i64)))
def maxpool2d_forward_v1(x, kh, kw, sh, sw, y, argmax):
    """for n, c, i, j:  y[n, c, i, j] = max_{p, q} x[n, c, i sh + p, j sw + q];  argmax = (its h) W + (its w)
    (first maximum in row-major order; a NaN counts as the maximum)"""
    N, C, OH, OW = y.shape
    W = x.shape[3]
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        nc, ij = t // (OH * OW), t % (OH * OW)
        n, c = nc // C, nc % C
        i, j = ij // OW, ij % OW
        best = x[n, c, i * sh, j * sw]
        at = i * sh * W + j * sw
        for p in range(kh):
            for q in range(kw):
                v = x[n, c, i * sh + p, j * sw + q]
                if best == best and (v > best or v != v):
                    best, at = v, (i * sh + p) * W + j * sw + q
        y[n, c, i, j] = best
        argmax[n, c, i, j] = at


@device
def window_range(h, k, s, out_size):
    """The windows i (stride s, size k) that contain position h: i0 <= i < i1."""
    i0 = 0 if h < k else (h - k) // s + 1
    i1 = min(h // s + 1, out_size)
    return i0, i1


@kernel(lambda f: (arr4(f), arr4(i64)) + POOL_GEOM + (arr4(f),))
def maxpool2d_backward_v1(g, argmax, kh, kw, sh, sw, dx):
    """for n, c, h, w:  dx[n, c, h, w] = sum of g[n, c, i, j] over the windows (i, j) containing (h, w) whose
    argmax is (h, w)   (a gather per input pixel: no atomics where overlapping windows share a max)"""
    N, C, H, W = dx.shape
    OH, OW = g.shape[2], g.shape[3]
    for t in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        nc, hw = t // (H * W), t % (H * W)
        n, c = nc // C, nc % C
        h, w = hw // W, hw % W
        i0, i1 = window_range(h, kh, sh, OH)
        j0, j1 = window_range(w, kw, sw, OW)
        acc = dx.dtype.type(0)
        for i in range(i0, i1):
            for j in range(j0, j1):
                if argmax[n, c, i, j] == hw:
                    acc += g[n, c, i, j]
        dx[n, c, h, w] = acc


@kernel(lambda f: (arr4(f),) + POOL_GEOM + (arr4(f),))
def avgpool2d_forward_v1(x, kh, kw, sh, sw, y):
    """for n, c, i, j:  y[n, c, i, j] = (1 / (kh kw)) sum_{p, q} x[n, c, i sh + p, j sw + q]"""
    N, C, OH, OW = y.shape
    share = y.dtype.type(1.0 / (kh * kw))
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        nc, ij = t // (OH * OW), t % (OH * OW)
        n, c = nc // C, nc % C
        i, j = ij // OW, ij % OW
        acc = y.dtype.type(0)
        for p in range(kh):
            for q in range(kw):
                acc += x[n, c, i * sh + p, j * sw + q]
        y[n, c, i, j] = acc * share


@kernel(lambda f: (arr4(f),) + POOL_GEOM + (arr4(f),))
def avgpool2d_backward_v1(g, kh, kw, sh, sw, dx):
    """for n, c, h, w:  dx[n, c, h, w] = (1 / (kh kw)) sum of g[n, c, i, j] over the windows (i, j) containing (h, w)"""
    N, C, H, W = dx.shape
    OH, OW = g.shape[2], g.shape[3]
    share = dx.dtype.type(1.0 / (kh * kw))
    for t in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        nc, hw = t // (H * W), t % (H * W)
        n, c = nc // C, nc % C
        h, w = hw // W, hw % W
        i0, i1 = window_range(h, kh, sh, OH)
        j0, j1 = window_range(w, kw, sw, OW)
        acc = dx.dtype.type(0)
        for i in range(i0, i1):
            for j in range(j0, j1):
                acc += g[n, c, i, j] * share
        dx[n, c, h, w] = acc


# ---- the LSTM cell's gates, fused (gate order i, f, g, o) ------------------------------------------------------------
@kernel(lambda f: (mat(f), mat(f), vec(f), mat(f), mat(f), mat(f), mat(f)))
def lstm_gates_forward_v1(zx, zh, b, c, h_new, c_new, gates):
    """for n, k (k < H):  z_* = zx[n, * H + k] + zh[n, * H + k] + b[* H + k] for * in i, f, g, o;
        i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g);  c_new = f c + i g;  h_new = o tanh(c_new);  gates = [i f g o]

    One thread per hidden unit of one row: all four gates and the cell update in one pass (4 reads of zx, zh
    instead of a dozen elementwise kernels).
    """
    N, H = c.shape
    one = c.dtype.type(1)
    for t in range(cuda.grid(1), N * H, cuda.gridsize(1)):
        n, k = t // H, t % H
        zi = zx[n, k] + zh[n, k] + b[k]
        zf = zx[n, H + k] + zh[n, H + k] + b[H + k]
        zg = zx[n, 2 * H + k] + zh[n, 2 * H + k] + b[2 * H + k]
        zo = zx[n, 3 * H + k] + zh[n, 3 * H + k] + b[3 * H + k]
        i, f, g, o = sigmoid(zi, one), sigmoid(zf, one), math.tanh(zg), sigmoid(zo, one)
        cn = f * c[n, k] + i * g
        c_new[n, k] = cn
        h_new[n, k] = o * math.tanh(cn)
        gates[n, k] = i
        gates[n, H + k] = f
        gates[n, 2 * H + k] = g
        gates[n, 3 * H + k] = o


@kernel(lambda f: (mat(f), mat(f), mat(f), mat(f), mat(f), mat(f), mat(f)))
def lstm_gates_backward_v1(gates, c, c_new, dh, dc, dz, dc_prev):
    """for n, k:  tc = tanh(c_new);  dc' = dc + dh o (1 - tc^2);
        dz_i = dc' g i (1 - i);  dz_f = dc' c f (1 - f);  dz_g = dc' i (1 - g^2);  dz_o = dh tc o (1 - o);
        dc_prev = dc' f"""
    N, H = c.shape
    one = c.dtype.type(1)
    for t in range(cuda.grid(1), N * H, cuda.gridsize(1)):
        n, k = t // H, t % H
        i, f, g, o = gates[n, k], gates[n, H + k], gates[n, 2 * H + k], gates[n, 3 * H + k]
        tc = math.tanh(c_new[n, k])
        dct = dc[n, k] + dh[n, k] * o * (one - tc * tc)
        dz[n, k] = dct * g * i * (one - i)
        dz[n, H + k] = dct * c[n, k] * f * (one - f)
        dz[n, 2 * H + k] = dct * i * (one - g * g)
        dz[n, 3 * H + k] = dh[n, k] * tc * o * (one - o)
        dc_prev[n, k] = dct * f

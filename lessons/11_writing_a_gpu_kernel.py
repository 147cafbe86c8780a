# %% [markdown]
# # Lesson 11: writing a GPU kernel
#
# Lesson 2 turned a loop into a Numba kernel for the CPU. A GPU runs the same arithmetic differently: instead of one
# core walking the loop, it starts thousands of **threads**, each computing one output (or a few). In this lesson we
# write kernels with `numba.cuda` the way `minidni/kernels/cuda.py` does:
#
# 1. the thread grid: blocks of threads, and how a thread finds out which one it is;
# 2. one thread per output: an elementwise op, then a matrix product;
# 3. shared-memory tiles: the same product, loading each number from memory a few times instead of many;
# 4. minidni's kernels: three matmul versions, each checked against the NumPy reference (`kernels/reference.py`).
#
# **No GPU? The simulator.** Numba ships a CUDA *simulator* that runs a kernel's threads as Python threads on the
# CPU. It must be switched on (`NUMBA_ENABLE_CUDASIM=1`) before numba is first imported, so the first cell below sets
# it when this machine has no NVIDIA GPU, before it imports numba or minidni (which imports numba). The simulator
# gives the same answers, slowly (one OS thread per CUDA thread), so shapes here are tiny and nothing is timed
# unless a real GPU runs the lesson. It also forgives mistakes a GPU would not (races, oversized blocks), which is
# why minidni also compiles every kernel for a real GPU in its tests (docs/gpu.md).
#
# Run it as a script (`python lessons/11_writing_a_gpu_kernel.py`) or as a notebook
# (`python lessons/make_notebooks.py`).

# %%
import os
import shutil
import sys

HAS_GPU = os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None
if not HAS_GPU and "NUMBA_ENABLE_CUDASIM" not in os.environ:
    if "numba" in sys.modules:
        raise RuntimeError("lesson 11: numba was imported before this cell, so the CUDA simulator can no longer be "
                           "switched on; restart the kernel (or run the lesson as a script) and run this cell first")
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before numba is imported: numba reads it once, at import

import numpy as np  # noqa: E402
from numba import cuda, float32  # noqa: E402

from minidni.kernels import gpu, reference  # noqa: E402
from minidni.lesson import heading  # noqa: E402

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
rng = np.random.default_rng(0)
heading("Lesson 11: writing a GPU kernel", level=1)
print("running on:", "numba's CUDA simulator (no GPU here)" if SIMULATOR else cuda.get_current_device().name)

# %% [markdown]
# ## 1. The thread grid
#
# A launch `kernel[blocks, threads_per_block](args)` starts `blocks x threads_per_block` threads, all running the
# same function. Threads are grouped in **blocks**: the threads of one block run on the same streaming
# multiprocessor, can share a small fast memory and can wait for each other; different blocks cannot. Each thread
# reads its position from `cuda.blockIdx.x` (which block), `cuda.threadIdx.x` (which thread in the block) and
# `cuda.blockDim.x` (threads per block). Its global index is
#
#     i = blockIdx.x * blockDim.x + threadIdx.x        (numba's shorthand: cuda.grid(1))
#
# A kernel returns nothing: it writes its results into arrays. Here each thread writes down who it is.

# %%
heading("1. The thread grid")


@cuda.jit
def who_am_i(block, thread, index):
    i = cuda.grid(1)
    block[i] = cuda.blockIdx.x
    thread[i] = cuda.threadIdx.x
    index[i] = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x


blocks, per_block = 3, 4
arrays = [cuda.device_array(blocks * per_block, dtype=np.int64) for _ in range(3)]
who_am_i[blocks, per_block](*arrays)
block, thread, index = (a.copy_to_host() for a in arrays)
print(f"launch [{blocks}, {per_block}]: {blocks * per_block} threads")
print("blockIdx.x :", block)
print("threadIdx.x:", thread)
print("global i   :", index)
assert (index == np.arange(blocks * per_block)).all() and (index == block * per_block + thread).all()

# %% [markdown]
# ## 2. One thread per output
#
# The simplest GPU kernel gives every output element its own thread: the body of the loop becomes the kernel, the
# loop itself disappears into the grid. Sizes are rarely a multiple of the block, so we launch enough blocks to cover
# `n` (`ceil(n / threads)`) and the threads past the end do nothing: the `if i < n` **bounds guard**. Without it, the
# last block would write past the array (the simulator raises an IndexError; a GPU silently corrupts memory).
#
# Here is `out = relu(a + b)` on 10 elements in blocks of 4: three blocks, the last one half idle.

# %%
heading("2. One thread per output")


@cuda.jit
def add_relu(a, b, out):
    # for i in range(n): out[i] = max(a[i] + b[i], 0)
    i = cuda.grid(1)
    if i < out.size:  # the bounds guard
        v = a[i] + b[i]
        out[i] = v if v > 0 else 0


n, threads = 10, 4
a, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
out = cuda.device_array(n, dtype=np.float32)
add_relu[(n + threads - 1) // threads, threads](cuda.to_device(a), cuda.to_device(b), out)
expected = reference.relu_forward(a + b)
np.testing.assert_array_equal(out.copy_to_host(), expected)
print(f"add_relu on {n} elements, {(n + threads - 1) // threads} blocks of {threads}: matches the reference")

# %% [markdown]
# minidni's elementwise kernels add one more habit, the **grid-stride loop**: `for i in range(cuda.grid(1), n,
# cuda.gridsize(1))`. A thread handles element i, then i + (all threads in the grid), and so on, so a grid of any
# size covers an array of any size (and the launch code can cap the number of blocks). This is the kernel behind
# `gpu.unary`:

# %%
import inspect  # noqa: E402

from minidni.kernels import cuda as kernels  # noqa: E402

print(inspect.getsource(kernels.unary_v1.py_func if hasattr(kernels.unary_v1, "py_func") else kernels.unary_v1.fn))
x = rng.standard_normal((3, 5)).astype(np.float32)
np.testing.assert_allclose(gpu.to_host(gpu.unary("tanh", gpu.to_device(x))), np.tanh(x), rtol=1e-6)
print("gpu.unary('tanh', x) matches np.tanh")

# %% [markdown]
# ## 3. A matrix product, one thread per output
#
# For `C = A B` with A (M, K) and B (K, N) the outputs form a 2-D grid, so we launch a 2-D grid of 2-D blocks:
# `cuda.grid(2)` gives the thread's (x, y) position. We let x run along the columns j and y along the rows i:
# threads next to each other in a block then read neighbouring elements of B and write neighbouring elements of C,
# which the memory system serves in one transaction (*coalesced* access).
#
# Each thread computes one dot product of length K: it reads 2K numbers from global memory (the GPU's large, slow
# memory) for 2K flops. That is the weakness of this version: every element of A is read N times, every element of
# B M times.

# %%
heading("3. A matrix product, one thread per output")


@cuda.jit
def matmul_naive(A, B, C):
    # for i, j: C[i, j] = sum_k A[i, k] B[k, j]
    j, i = cuda.grid(2)
    if i < C.shape[0] and j < C.shape[1]:
        acc = float32(0)
        for k in range(A.shape[1]):
            acc += A[i, k] * B[k, j]
        C[i, j] = acc


M, K, N = 6, 5, 7  # ragged: not multiples of the 4 x 4 block
A, B = rng.standard_normal((M, K)).astype(np.float32), rng.standard_normal((K, N)).astype(np.float32)
C = cuda.device_array((M, N), dtype=np.float32)
block = (4, 4)
grid = ((N + 3) // 4, (M + 3) // 4)  # (blocks along x = columns, blocks along y = rows)
matmul_naive[grid, block](cuda.to_device(A), cuda.to_device(B), C)
np.testing.assert_allclose(C.copy_to_host(), reference.linear_forward(A, B, None), rtol=1e-5, atol=1e-5)
print(f"naive matmul {A.shape} @ {B.shape}: grid {grid} of blocks {block}; matches reference.linear_forward")
print(f"global loads: {2 * K} per output, {2 * K * M * N} in all, for {M * K + K * N} distinct numbers")

# %% [markdown]
# ## 4. Shared-memory tiles
#
# Every block has a small **shared memory** (tens of KB, as fast as a cache) that all of its threads can read. The
# tiled product cuts A and B into T x T tiles. For each step along K, the block's T x T threads each copy *one*
# element of the A tile and one of the B tile into shared memory; then every thread adds up its row of the A tile
# times its column of the B tile, reading only shared memory. Each global element is now loaded once per tile:
# 2K / T loads per output instead of 2K.
#
# Two `cuda.syncthreads()` make it correct: the first waits until the whole tile is loaded before anyone reads it,
# the second until everyone has finished reading before the next tile overwrites it. Every thread of the block must
# reach both (so no early `return` for threads outside C: they load zeros instead, the padding of a ragged edge).
# Forget the second one and a GPU gives wrong answers only sometimes: a **race**, which the simulator (running
# threads in lock step) may well hide.

# %%
heading("4. Shared-memory tiles")
T = 4  # the tile: a compile-time constant, because shared arrays have a fixed size


@cuda.jit
def matmul_tiled(A, B, C):
    # for each T x T block of C: for k0 in range(0, K, T): load A[i, k0:k0+T], B[k0:k0+T, j] into shared memory,
    # then acc += sum_kk sA[ty, kk] sB[kk, tx]
    sA = cuda.shared.array((T, T), dtype=float32)
    sB = cuda.shared.array((T, T), dtype=float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    j, i = cuda.grid(2)
    M, K = A.shape
    N = B.shape[1]
    acc = float32(0)
    for k0 in range(0, K, T):
        sA[ty, tx] = A[i, k0 + tx] if i < M and k0 + tx < K else 0
        sB[ty, tx] = B[k0 + ty, j] if k0 + ty < K and j < N else 0
        cuda.syncthreads()  # the tiles are complete
        for kk in range(T):
            acc += sA[ty, kk] * sB[kk, tx]
        cuda.syncthreads()  # everyone is done with them
    if i < M and j < N:
        C[i, j] = acc


C2 = cuda.device_array((M, N), dtype=np.float32)
matmul_tiled[grid, (T, T)](cuda.to_device(A), cuda.to_device(B), C2)
np.testing.assert_allclose(C2.copy_to_host(), reference.linear_forward(A, B, None), rtol=1e-5, atol=1e-5)
steps = (K + T - 1) // T
print(f"tiled matmul, {T} x {T} tiles: {steps} steps along K; matches reference.linear_forward")
print(f"global loads per output: 2 per step x {steps} steps = {2 * steps} (vs {2 * K} naive, T = {T} times fewer "
      f"once K spans many tiles); minidni's v2 uses T = 16 on a GPU")

# %% [markdown]
# ## 5. minidni's kernels: three versions, one specification
#
# `minidni/kernels/cuda.py` keeps its matrix product in three numbered versions, llm.c style: **v1** is section 3's
# one thread per output, **v2** section 4's shared-memory tiles, and **v3** adds *register blocking*: each thread
# computes a small tm x tn patch of C, holding it in registers, so one value loaded from shared memory feeds tn (or
# tm) multiply-adds. All three take the transposes in place (so the backward's `g W^T` and `x^T g` need no copy) and
# fuse the linear layer's bias and ReLU into the store, the *epilogue*. Each is checked against the NumPy reference
# before anyone times it; under the simulator minidni uses small tiles (8 x 8), on a GPU 16 x 16 and 128 x 128
# (benchmarks/bench_gpu.py measures them against cuBLAS).

# %%
heading("5. minidni's kernels: three versions, one specification")
x = rng.standard_normal((13, 11)).astype(np.float32)   # several 8 x 8 tiles, none of them full
W = rng.standard_normal((11, 9)).astype(np.float32)
bias = rng.standard_normal(9).astype(np.float32)
expected = reference.linear_relu_forward(x, W, bias)
dx_, dW_, db_ = (gpu.to_device(v) for v in (x, W, bias))
for variant in (1, 2, 3):
    gpu.MATMUL_VARIANT = variant
    got = gpu.to_host(gpu.linear_relu_forward(dx_, dW_, db_))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    print(f"linear_relu_forward, matmul v{variant}: max |difference| from the reference "
          f"{np.abs(got - expected).max():.1e}")
gpu.MATMUL_VARIANT = 3
if not SIMULATOR:  # a real GPU: a glimpse of the speed (benchmarks/bench_gpu.py does it properly)
    import time

    n = 1024
    a_d = gpu.to_device(rng.standard_normal((n, n)).astype(np.float32))
    for variant in (1, 2, 3):
        gpu.matmul(a_d, a_d, variant=variant)
        cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            gpu.matmul(a_d, a_d, variant=variant)
        cuda.synchronize()
        print(f"  v{variant} at {n}^3: {2 * n ** 3 * 10 / (time.perf_counter() - t0) / 1e12:.2f} TFLOP/s")
print("every op of reference.py exists in kernels/gpu.py with the same signature; tests/test_cuda_kernels.py checks "
      "each against the reference under the simulator")

# %% [markdown]
# # Lesson 2: from a loop to a kernel
#
# Every op in `minidni/ops.py` hands its arithmetic to a **kernel**: a function on plain arrays. The kernels exist
# twice, with the same names and signatures:
#
# * `minidni/kernels/reference.py`: NumPy, the plainest correct version. It is the *specification*.
# * `minidni/kernels/cpu.py`: Numba. Each kernel is an explicit loop compiled to machine code (`@njit`).
#
# In this lesson we take one op, ReLU (forward and backward), and write it three ways: a plain Python loop, NumPy,
# and Numba. We check they agree exactly, time them, and see why each is as fast as it is. Then the same for an Adam
# update, where fusing many NumPy passes into one loop pays most, and a matrix product, which we leave to BLAS.
#
# Timings depend on the machine and on what else runs on it; the tables print what *this* run measured. Each time
# is the best of several runs, and a table whose runs spread widely says so: on a busy machine, read its ratios as
# rough, or rerun when the machine is quiet.
#
# Run it as a script (`python lessons/02_from_a_loop_to_a_kernel.py`) or as a notebook
# (`python lessons/make_notebooks.py`; docs/lessons.md).

# %%
import inspect
import time

import numpy as np
from numba import njit
from threadpoolctl import threadpool_limits

import minidni as md
from minidni.kernels import cpu, reference
from minidni.lesson import heading

rng = np.random.default_rng(0)
heading("Lesson 2: from a loop to a kernel", level=1)


def time_us(fn, *args, repeat=7):
    """Time fn(*args) with time.perf_counter: `repeat` runs, each of enough calls to last ~2 ms. Returns the
    microseconds per call of every run, fastest first. The best run is the estimate (other processes only ever add
    time); how far the others spread says how busy the machine was."""
    once = []
    for _ in range(3):  # also warms caches; the fastest call sets how many calls make one run
        t0 = time.perf_counter()
        fn(*args)
        once.append(time.perf_counter() - t0)
    number = max(1, int(2e-3 / max(min(once), 1e-7)))
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn(*args)
        runs.append((time.perf_counter() - t0) / number)
    return sorted(r * 1e6 for r in runs)


NOISY = 1.5  # a median run this many times the best: something else held the CPU while the row was timed


def spread(runs):
    """median / best of time_us's runs: about 1.0 on a quiet machine."""
    return float(np.median(runs)) / runs[0]


def table(title, rows, baseline, bytes_moved=None):
    """Print name | best microseconds | speed-up over `baseline` | median/best (| GB/s if bytes_moved is given), from
    {name: time_us(...)}, and say so when a row's runs spread too far to trust its ratio. Returns {name: best us}."""
    best = {name: runs[0] for name, runs in rows.items()}
    print(title)
    print(f"  {'version':34s} {'time (us)':>11s} {'speed-up':>9s} {'median/best':>11s}"
          + (f" {'GB/s':>7s}" if bytes_moved else ""))
    for name, us in best.items():
        line = f"  {name:34s} {us:11.1f} {best[baseline] / us:8.1f}x {spread(rows[name]):11.2f}"
        if bytes_moved:
            line += f" {bytes_moved / us / 1e3:7.2f}"
        print(line)
    noisy = [name for name, runs in rows.items() if spread(runs) > NOISY]
    if noisy:
        print(f"  noisy (median/best over {NOISY}): {'; '.join(noisy)}. Other work competed for the CPU: read these "
              "ratios as rough, or rerun on a quiet machine.")
    return best


def compare(rows, slow, fast):
    """One sentence on whether `fast` beat `slow` ({name: time_us(...)}), or that this run cannot tell: when the fast
    version's best run lost (on an idle machine it does not), or when the runs spread too far to trust the ratio."""
    ratio = rows[slow][0] / rows[fast][0]
    if ratio <= 1:
        return (f"too busy to tell: the best run of {fast} was not faster than {slow}. Its runs were starved of CPU "
                "by other work; rerun when the machine is quiet.")
    if max(spread(rows[slow]), spread(rows[fast])) > NOISY:
        return f"{fast} beat {slow} {ratio:.1f}x, but the runs spread widely (a busy machine): the ratio is rough."
    return f"{fast} is {ratio:.1f}x faster than {slow}."


# %% [markdown]
# ## 1. The op: ReLU
#
# $$y = \max(x, 0), \qquad \frac{\partial L}{\partial x} = g \cdot [y > 0]$$
#
# where $g = \partial L / \partial y$ arrives from above. The backward only needs the *output* `y` (where it is
# positive, so was `x`), which is what `ops.ReLU` saves. Written as the loop it is, over a flat array of N floats:

# %%
heading("1. The op: ReLU")


def relu_forward_loop(x):
    y = np.empty_like(x)
    for i in range(x.size):
        y[i] = x[i] if x[i] > 0 else 0
    return y


def relu_backward_loop(y, g):
    dx = np.empty_like(g)
    for i in range(y.size):
        dx[i] = g[i] if y[i] > 0 else 0
    return dx


# %% [markdown]
# ## 2. NumPy: the reference kernels
#
# NumPy runs each whole-array expression as one precompiled C loop. The reference kernels are one line each:

# %%
heading("2. NumPy: the reference kernels")
print(inspect.getsource(reference.relu_forward))
print(inspect.getsource(reference.relu_backward))

# %% [markdown]
# `g * (y > 0)` is *two* C loops: one writes a temporary boolean array `y > 0`, the next multiplies. Each pass reads
# and writes memory, and for an elementwise op memory traffic *is* the cost.
#
# ## 3. Numba: compile the loop
#
# `@njit` compiles a Python function to machine code the first time it is called with given argument types
# (float32 arrays here): the loop of section 1, now running at the speed of C, in one pass over memory. Here is the
# engine's kernel (its wrapper `cpu.relu_forward` flattens the input and allocates the output):

# %%
heading("3. Numba: compile the loop")
print(inspect.getsource(cpu._relu_forward.py_func))

# %% [markdown]
# And our own, written here. The first call pays the **JIT compile**; later calls run the cached machine code.
# (The engine's kernels are declared with `cache=True`, so their machine code is also saved to disk and later
# processes skip the compile.)

# %%
@njit
def relu_forward_numba(x):
    y = np.empty_like(x)
    zero = x.dtype.type(0)  # a float32 zero for float32 x (section 5 says why)
    for i in range(x.size):
        y[i] = x[i] if x[i] > zero else zero
    return y


@njit
def relu_backward_numba(y, g):
    dx = np.empty_like(g)
    zero = g.dtype.type(0)
    for i in range(y.size):
        dx[i] = g[i] if y[i] > zero else zero
    return dx


N = 20_000
x = rng.normal(size=N).astype(np.float32)  # (N,)
g = rng.normal(size=N).astype(np.float32)  # dL/dy, (N,)

t0 = time.perf_counter()
relu_forward_numba(x)
compile_fwd = time.perf_counter() - t0
t0 = time.perf_counter()
relu_backward_numba(x, g)
compile_bwd = time.perf_counter() - t0
print(f"first calls (JIT compile included): forward {compile_fwd * 1e3:.0f} ms, backward {compile_bwd * 1e3:.0f} ms")

# %% [markdown]
# ## 4. Same answers, different speeds
#
# ReLU has no rounding, so all versions must agree **exactly** (`np.array_equal`), forward and backward:

# %%
heading("4. Same answers, different speeds")
y = reference.relu_forward(x)
dx = reference.relu_backward(y, g)
for name, fwd, bwd in [("loop", relu_forward_loop, relu_backward_loop),
                       ("numba, engine", cpu.relu_forward, cpu.relu_backward),
                       ("numba, inline", relu_forward_numba, relu_backward_numba)]:
    same = np.array_equal(fwd(x), y) and np.array_equal(bwd(y, g), dx)
    print(f"{name:14s} equals the NumPy reference: {same}")
    assert same

# %% [markdown]
# Timings for forward + backward on N = 20,000 float32 values. The GB/s column is napkin math: the forward reads `x`
# and writes `y`, the backward reads `y` and `g` and writes `dx`: 5 x 4 bytes per element in all.

# %%
def forward_backward(fwd, bwd):
    def run(x, g):
        return bwd(fwd(x), g)
    return run


versions = {
    "Python loop": forward_backward(relu_forward_loop, relu_backward_loop),
    "NumPy (reference.py)": forward_backward(reference.relu_forward, reference.relu_backward),
    "Numba (cpu.py)": forward_backward(cpu.relu_forward, cpu.relu_backward),
    "Numba (inline)": forward_backward(relu_forward_numba, relu_backward_numba),
}
rows = {name: time_us(fn, x, g, repeat=3 if name == "Python loop" else 7) for name, fn in versions.items()}
table(f"ReLU forward + backward, N = {N:,}", rows, "Python loop", bytes_moved=5 * 4 * N)

# %% [markdown]
# The Python loop pays the interpreter for every element: fetch, box the float, compare, store. NumPy and Numba run
# the same comparison in compiled loops. At N = 20,000 the arrays fit in cache, and a fixed cost of a few
# microseconds per call (the Python call, allocating the output) is a visible part of the time; the engine's wrapper
# adds a little more than the inline kernel, because it flattens and reshapes so that any shape works.
#
# At a size where memory traffic dominates, NumPy's extra pass (the temporary `y > 0`) shows. The Python loop would
# take about a second here, so we leave it out:

# %%
N_big = 2_000_000
x_big = rng.normal(size=N_big).astype(np.float32)
g_big = rng.normal(size=N_big).astype(np.float32)
rows = {name: time_us(versions[name], x_big, g_big, repeat=3) for name in list(versions)[1:]}
table(f"ReLU forward + backward, N = {N_big:,}", rows, "NumPy (reference.py)", bytes_moved=5 * 4 * N_big)
print(compare(rows, "NumPy (reference.py)", "Numba (inline)"))

# %% [markdown]
# The op does not know which kernel it runs: `ops.ReLU` calls `kernels.active.relu_forward`. Switching the backend
# switches every op at once, and the graph, the gradients and the results stay the same:

# %%
xt = md.Tensor(x[:8].reshape(2, 4), requires_grad=True)
results = {}
for backend in ("numpy", "numba"):
    with md.use_backend(backend):
        xt.grad = None
        out = md.ops.relu(xt)
        out.backward(np.ones_like(out.data))
        results[backend] = (out.data, xt.grad)
print("tensor-level relu, value and gradient identical on both backends:",
      all(np.array_equal(a, b) for a, b in zip(results["numpy"], results["numba"])))

# %% [markdown]
# ## 5. Fusing an optimizer step: Adam
#
# An elementwise op that is one NumPy call gains little from Numba. The gain is large when an update is **many**
# NumPy calls, each a full pass over memory with temporaries. Adam (Kingma & Ba 2015) updates every parameter with
#
#     m = b1 m + (1 - b1) g          v = b2 v + (1 - b2) g^2
#     p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
#
# The NumPy reference does this in place, but every operator is still one pass: about a dozen over the parameter
# array. The Numba kernel reads `p, g, m, v` once and writes `p, m, v` once: 7 x 4 bytes per parameter.

# %%
heading("5. Fusing an optimizer step: Adam")
print("reference.adam_step_, after its docstring:" + inspect.getsource(reference.adam_step_).split('"""')[-1])
print(inspect.getsource(cpu._adam_step_.py_func))

# %% [markdown]
# Checked on a parameter of 465,000 float32 values (the size of the paper's 3-hidden-layer MNIST net,
# 784-256-256-256-10), three steps from the same start. Both kernels round in float32 but in a different order
# (`sqrt(v) / sqrt(bias2)` vs `sqrt(v) * (1 / sqrt(bias2))`), so they agree to float32 rounding, not bit for bit.

# %%
P = 465_000
f32 = np.float32
lr, b1, b2, eps, wd = f32(1e-3), f32(0.9), f32(0.999), f32(1e-8), f32(0.0)
p0 = rng.normal(size=P).astype(np.float32)
grads = [rng.normal(size=P).astype(np.float32) for _ in range(3)]


def adam_run(step_fn, steps=3):
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t in range(1, steps + 1):
        bias1, bias2 = f32(1 - b1 ** t), f32(1 - b2 ** t)
        step_fn(p, grads[t - 1], m, v, lr, b1, b2, eps, bias1, bias2, wd)
    return p, m, v


p_ref, m_ref, v_ref = adam_run(reference.adam_step_)
p_jit, m_jit, v_jit = adam_run(cpu.adam_step_)
diff = max(np.abs(p_ref - p_jit).max(), np.abs(m_ref - m_jit).max(), np.abs(v_ref - v_jit).max())
print(f"max |NumPy - Numba| over p, m, v after 3 steps: {diff:.1e}   (moved p by up to {np.abs(p_ref - p0).max():.1e})")
assert np.allclose(p_ref, p_jit, rtol=1e-6, atol=1e-7)

p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
bias1, bias2 = f32(1 - b1), f32(1 - b2)
rows = {name: time_us(fn, p, grads[0], m, v, lr, b1, b2, eps, bias1, bias2, wd)
        for name, fn in [("NumPy, in place (reference)", reference.adam_step_),
                         ("Numba, fused (cpu.py)", cpu.adam_step_)]}
table(f"one Adam step, {P:,} float32 parameters", rows, "NumPy, in place (reference)", bytes_moved=7 * 4 * P)
print(compare(rows, "NumPy, in place (reference)", "Numba, fused (cpu.py)"))

# %% [markdown]
# ## 6. Two details that decide a Numba kernel's speed: float32 constants, `error_model='numpy'`
#
# Here is the Adam loop as one would first port it. It gives the right answer, but compare it with the engine's:

# %%
heading("6. Two details that decide a Numba kernel's speed: float32 constants, `error_model='numpy'`")


def adam_first_port(p, g, m, v, lr, beta1, beta2, eps, bias1, bias2):
    step = lr / bias1
    inv_sqrt_b2 = 1 / np.sqrt(bias2)
    for i in range(p.size):
        mi = beta1 * m[i] + (1 - beta1) * g[i]
        vi = beta2 * v[i] + (1 - beta2) * g[i] * g[i]
        m[i] = mi
        v[i] = vi
        p[i] -= step * mi / (np.sqrt(vi) * inv_sqrt_b2 + eps)


# %% [markdown]
# * **float64 sneaks in.** Numba types a Python float as float64, and `1 - beta1` with the integer literal `1` gives
#   float64 even when `beta1` is float32. Then `(1 - beta1) * g[i]` is computed in float64 and converted back to
#   float32 on every store. A float64 loop does half as many elements per SIMD instruction, plus the conversions.
#   The engine passes scalars already cast to the parameter's dtype (`optim.py`) *and* writes its constants as
#   `one = p.dtype.type(1)`; the third and fourth rows below show that the first alone is not enough.
# * **`error_model='python'`** (Numba's default) makes `a / b` raise `ZeroDivisionError` when `b == 0`, as Python
#   does: a test and a branch before every division, and that branch keeps the loop from being vectorised.
#   `error_model='numpy'` gives IEEE results instead (`inf`, `nan`), as NumPy does; the engine's `jit` uses it.
#
# We compile the first port twice (one `njit` per error model; each new combination of argument types is one more
# compile) and time it against the engine's kernel. Every first call is a JIT compile, timed separately.

# %%
adam_python_errors = njit(adam_first_port)  # error_model='python' is the default
adam_numpy_errors = njit(error_model="numpy")(adam_first_port)
scalars64 = (1e-3, 0.9, 0.999, 1e-8, float(bias1), float(bias2))  # Python floats: float64 in Numba
scalars32 = (lr, b1, b2, eps, bias1, bias2)  # np.float32
variants = [
    ("1. first port, 'python', float64", adam_python_errors, scalars64),
    ("2. first port, 'numpy', float64", adam_numpy_errors, scalars64),
    ("3. first port, 'numpy', float32", adam_numpy_errors, scalars32),
    ("4. engine kernel, float32", cpu.adam_step_, scalars32 + (wd,)),
]
rows = {}
for name, fn, scalars in variants:
    t0 = time.perf_counter()
    fn(p, grads[0], m, v, *scalars)
    first_call_ms = (time.perf_counter() - t0) * 1e3
    rows[name] = time_us(fn, p, grads[0], m, v, *scalars)
    print(f"{name}: first call {first_call_ms:5.0f} ms" + ("  (compiled in section 5)" if fn is cpu.adam_step_ else ""))
table(f"one Adam step, {P:,} float32 parameters", rows, variants[0][0], bytes_moved=7 * 4 * P)
print(compare(rows, variants[2][0], variants[3][0]))

# %% [markdown]
# ## 7. Why matrix products stay in BLAS
#
# A linear layer is `y = x W + b`: a matrix product (GEMM) and a bias. The engine computes the GEMM with
# `np.matmul`, which calls OpenBLAS, and only writes Numba kernels for what comes before and after it (`cpu.py`:
# `linear_forward` adds the bias in place with a jitted loop). Why not one Numba loop for everything? A naive GEMM,
# even in the cache-friendly loop order i, k, j (the inner loop walks rows of `W` and `y` contiguously, and
# vectorises):

# %%
heading("7. Why matrix products stay in BLAS")


@njit(error_model="numpy")
def matmul_numba(a, b):
    n, k = a.shape
    c = np.zeros((n, b.shape[1]), dtype=a.dtype)
    for i in range(n):
        for kk in range(k):
            aik = a[i, kk]
            for j in range(b.shape[1]):
                c[i, j] += aik * b[kk, j]
    return c


n = 256
A = rng.normal(size=(n, n)).astype(np.float32)
B = rng.normal(size=(n, n)).astype(np.float32)
t0 = time.perf_counter()
C = matmul_numba(A, B)
print(f"matmul_numba first call (JIT compile): {(time.perf_counter() - t0) * 1e3:.0f} ms")
assert np.allclose(C, A @ B, rtol=1e-4, atol=1e-3)
LOOP = "Numba, naive i-k-j loop"
rows = {LOOP: time_us(matmul_numba, A, B)}
with threadpool_limits(limits=1, user_api="blas"):
    rows["np.matmul (OpenBLAS, 1 thread)"] = time_us(np.matmul, A, B)
rows["np.matmul (OpenBLAS, all threads)"] = time_us(np.matmul, A, B)
best = table(f"({n}, {n}) @ ({n}, {n}) float32", rows, LOOP)
for name, us in best.items():
    print(f"  {name:34s} {2 * n**3 / us / 1e3:6.1f} GFLOP/s   (2 n^3 = {2 * n**3 / 1e6:.0f} MFLOP)")
print(compare(rows, LOOP, min((name for name in best if name != LOOP), key=best.get)))  # the faster BLAS row

# %% [markdown]
# (A threaded BLAS on a machine busy with other work can stall, its threads waiting for each other while another
# process holds a core; one BLAS thread cannot, and it is what each worker of the concurrent DNI runner uses. The best
# of several runs shows what each can do; when even that does not put BLAS ahead, the cell above says the machine was
# too busy to tell, rather than draw the wrong conclusion.)
#
# A GEMM does $2n^3$ flops on $3n^2$ numbers: unlike ReLU it is **compute-bound**, and the fast versions reuse each
# number many times from registers and cache. BLAS gets there with blocking for each cache level, register tiles,
# FMA instructions and threads, tuned per CPU; a plain loop does not. Calling BLAS from Python costs about a
# microsecond, small next to the GEMM itself. (Numba can call BLAS inside `@njit` through `np.dot`, but only with
# SciPy installed, and it gains nothing over calling it from Python.)
#
# So the engine's rule: **GEMMs go to BLAS; the elementwise and row-wise work around them (bias, activations,
# softmax cross-entropy, batch norm, optimizer updates) goes to fused Numba loops**, which release the GIL
# (`nogil=True`) so that DNI's concurrent modules can run them in parallel threads.
#
# ## 8. Fusing two ops: batch norm and its ReLU
#
# Every hidden layer of the paper's MNIST net is Linear -> BatchNorm -> ReLU. As separate ops, the ReLU reads the
# batch norm's (N, C) output and writes another one, and its backward reads two more arrays; the graph has a node
# for each. `ops.batch_norm_relu` does both in one op: the clip happens in the loop that writes y, the mask
# `g [y > 0]` is formed in the loops that read g, and x is saved instead of xhat (the backward recomputes
# `xhat = (x - mu) * invstd`, bit for bit), so the forward writes one array instead of three.
# `nn.mlp(..., fused=True)` builds the net from these fused layers. It computes the same numbers:

# %%
heading("8. Fusing two ops: batch norm and its ReLU")
xb = rng.normal(size=(256, 256)).astype(np.float32)
gamma, beta = rng.uniform(0.5, 1.5, 256).astype(np.float32), rng.normal(size=256).astype(np.float32)
g_out = rng.normal(size=(256, 256)).astype(np.float32)


def two_ops(x):
    y = md.ops.relu(md.ops.batch_norm(x, gamma, beta))
    y.backward(g_out)
    return y


def fused_op(x):
    y = md.ops.batch_norm_relu(x, gamma, beta)
    y.backward(g_out)
    return y


xs = [md.Tensor(xb, requires_grad=True) for _ in range(2)]
ya, yb = two_ops(xs[0]), fused_op(xs[1])
assert np.array_equal(ya.data, yb.data) and np.array_equal(xs[0].grad, xs[1].grad)
print("batch_norm -> relu and batch_norm_relu: outputs and input gradients equal bit for bit")
xt = md.Tensor(xb, requires_grad=True)
rows = {"batch_norm, then relu (2 ops)": time_us(two_ops, xt), "batch_norm_relu (fused)": time_us(fused_op, xt)}
table("forward + backward, (256, 256) float32", rows, "batch_norm, then relu (2 ops)")
print(compare(rows, "batch_norm, then relu (2 ops)", "batch_norm_relu (fused)"))

# %% [markdown]
# In a whole training step the saving is smaller than here, because the GEMMs dominate: `benchmarks/bench_engine.py`
# times `nn.mlp(..., fused=True)` as the engine `minidni-numba-fused`.
#
# **Summary.** Write the loop first; it is the meaning of the op. NumPy runs it as one compiled pass per
# operator; Numba compiles your own loop, so several operators fuse into one pass. Check every fast version against
# the reference. Keep scalars in the arrays' dtype and use `error_model='numpy'`, or the loop silently runs slower.

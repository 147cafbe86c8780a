# %% [markdown]
# # Lesson 5: update schedules are data
#
# Who updates when is a choice. Backprop makes one choice (lesson 3); DNI allows many (Jaderberg et al. 2016, Sec. 2
# and 3.3: modules updated at once, sporadically, with delayed targets, or all busy at the same time on different
# batches). In `minidni` an **update schedule** is a list of events `(kind, module, batch, tick)` that can be printed,
# checked, drawn, and then executed by a runner. This lesson:
#
# 1. prints the five feed-forward schedules: `locked`, `dni`, `stochastic(p)`, `delayed(k)`, `pipelined`;
# 2. draws their timelines side by side;
# 3. checks that `stochastic(p)` updates each module with frequency $p$;
# 4. shows that with an **oracle** synthesizer (the true gradient) the decoupled schedules reproduce backprop bit for
#    bit, and that pipelining makes even true gradients stale;
# 5. runs a pipelined schedule with the sequential `Runner` and the threaded `ConcurrentRunner`: identical parameters,
#    and a wall-clock timeline of the workers.
#
# Run it as a script (`python lessons/05_update_schedules.py`) or as a notebook (`python lessons/make_notebooks.py`;
# docs/lessons.md). A notebook shows the figures under their cells; a script saves them in `./lesson-figures/` (or
# the folder named by `MINIDNI_LESSON_FIGURES`) and prints their paths.

# %%
import numpy as np
from matplotlib.figure import Figure
from threadpoolctl import threadpool_limits

from minidni import dni, nn, ops, optim
from minidni.data import load_mnist
from minidni.dni import schedules as S
from minidni.lesson import heading, show
from minidni.tensor import Tensor

heading("Lesson 5: update schedules are data", level=1)
threadpool_limits(limits=1, user_api="blas")   # tiny matrices; and bit-identical runs need equal BLAS thread counts
N_MODULES = 3

# %% [markdown]
# ## 1. Five schedules
#
# Letters in the grids: `F` forward, `U` update with the synthetic gradient, `L` top module: loss, backprop, update,
# `B` backprop a true gradient (locked only), `S` train synthesizer $M_i$; the number is the batch.
#
# * `locked`: backprop; one module at a time.
# * `dni`: each module updates in the tick of its own forward pass; $M_i$ trains two ticks later, when the
#   bootstrapped target has come down from module $i+1$.
# * `stochastic(p)`: as `dni`, but after its forward pass a module updates only with probability $p$ (the paper's
#   sporadic updates); a module that skipped leaves no target for the synthesizer below, so that `S` is skipped too.
# * `delayed(k)`: as `dni`, but $M_i$ trains on batch $b$ only $k$ batches later: its targets arrive late.
# * `pipelined`: at tick $T$ module $i$ works on batch $T - i$: every module busy in every tick.

# %%
heading("1. Five schedules")
SCHEDULES = [S.locked(), S.dni(), S.stochastic(p_update=0.5, seed=1), S.delayed(k=2), S.pipelined()]
for schedule in SCHEDULES:
    events = schedule.events(n_batches=4, n_modules=N_MODULES)
    S.check(events)                                  # the data flow holds: nothing read before it is written
    ticks = 1 + max(e.tick for e in events)
    print(schedule.grid(n_batches=4, n_modules=N_MODULES))
    print(f"-> {len(events)} events in {ticks} ticks; per_batch={schedule.per_batch}\n")

# %% [markdown]
# `per_batch` says whether one batch can be run to the end before the next is fed (what `DNINet.train_step` does);
# `delayed(k > 0)` and `pipelined` keep several batches in flight, so they are run with a `Runner` over a batch list.
#
# A schedule is plain data, so we can ask it questions. In `dni` a module's update sits in the tick of its forward
# pass; in `locked` it waits $2(M - 1 - i)$ ticks; in `pipelined` all modules work in every tick once the pipe is full:

# %%
def busy_share(events):
    """Fraction of (module, tick) slots in which the module has some event."""
    slots = {(e.module, e.tick) for e in events}
    ticks = {e.tick for e in events}
    return len(slots) / (N_MODULES * len(ticks))


for schedule in SCHEDULES:
    print(f"{schedule!r:32s} busy share of module-ticks over 20 batches: "
          f"{busy_share(schedule.events(20, N_MODULES)):.0%}")
assert busy_share(S.pipelined().events(20, N_MODULES)) > 0.9 > 0.5 > busy_share(S.locked().events(20, N_MODULES))

# %% [markdown]
# ## 2. The timelines side by side

# %%
heading("2. The timelines side by side")
fig = Figure(figsize=(11, 1.6 * len(SCHEDULES) + 1))   # matplotlib's object API: no pyplot, no global backend
for ax, schedule in zip(fig.subplots(len(SCHEDULES), 1, sharex=True), SCHEDULES):
    schedule.draw(n_batches=4, n_modules=N_MODULES, ax=ax)
fig.tight_layout()
show(fig, "05_schedules.png", dpi=100)

# %% [markdown]
# ## 3. Stochastic updates happen with frequency p
#
# The coin flips of batch $b$ come from `np.random.default_rng([seed, b])`: the same every time the schedule is asked,
# however it is run. Over many batches each module should update in a fraction $p$ of them, within the binomial
# standard error $\sqrt{p(1-p)/n}$.

# %%
heading("3. Stochastic updates happen with frequency p")
n = 1500
for p in (0.2, 0.5, 0.9):
    schedule = S.stochastic(p_update=p, seed=0)
    events = schedule.events(n, N_MODULES)
    counts = np.zeros(N_MODULES)
    for e in events:
        if e.kind in ("update_synthetic", "update_true"):
            counts[e.module] += 1
    freq, se = counts / n, np.sqrt(p * (1 - p) / n)
    print(f"p = {p}: update frequency per module {freq}, standard error {se:.4f}")
    assert np.all(np.abs(freq - p) < 4 * se)
    assert schedule.updates(7, N_MODULES) == schedule.updates(7, N_MODULES)          # reproducible coin flips

# %% [markdown]
# ## 4. With exact gradients, the decoupled schedules *are* backprop
#
# An `Oracle` is a stand-in synthesizer that returns the true gradient $\partial L/\partial h_i$ (it runs the modules
# above; it learns nothing and is as slow as backprop). In the `dni` order module $i$ updates on batch $b$ before
# any module above has seen batch $b$, so the oracle's gradient is computed at exactly the parameters backprop would
# use. Same initial weights, same batches, same Adam: the parameters must come out **bit-identical** to an ordinary
# backprop loop. (float64 and one BLAS thread, so that nothing but the order of operations could differ.)

# %%
heading("4. With exact gradients, the decoupled schedules *are* backprop")
mnist = load_mnist(validation=0)
x64, y_all = mnist.train.x[:32 * 8].astype(np.float64), mnist.train.y[:32 * 8]
batches = [(x64[k:k + 32], y_all[k:k + 32]) for k in range(0, len(y_all), 32)]        # 8 batches of 32


def backprop(n_hidden):
    seq = nn.mlp(784, 32, 10, n_hidden, dtype=np.float64, rng=7)
    opt = optim.Adam(seq.parameters(), lr=1e-3)
    for x, y in batches:
        loss = ops.cross_entropy(seq(Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.data for p in seq.parameters()]


def oracle_run(schedule, n_hidden):
    net = dni.DNINet(dni.mlp_modules(784, 32, 10, n_hidden, dtype=np.float64, rng=7),
                     [dni.Oracle() for _ in range(n_hidden)])
    dni.Runner(net, schedule, batches).run()
    return [p.data for p in net.module_parameters()]


reference = backprop(N_MODULES - 1)
for schedule in (S.locked(), S.dni(), S.stochastic(p_update=1.0), S.delayed(k=2), S.pipelined()):
    same = all(np.array_equal(a, b) for a, b in zip(reference, oracle_run(schedule, N_MODULES - 1)))
    print(f"{schedule!r:32s} with oracles == backprop, bit for bit: {same}")
    assert same == (schedule.name != "pipelined")

# %% [markdown]
# Every schedule but `pipelined` matches exactly. (`delayed` only delays the *synthesizers'* training, and an oracle
# does not train.) In the pipeline, module 0 works on batch $T$ while module 2 is still on batch $T - 2$: the oracle
# computes $\partial L/\partial h_0$ through modules that have not yet been updated on batches $T-1$ and $T-2$, so even
# the true gradient is stale. With two modules the lag is zero (within a tick the higher module runs first) and the
# pipeline is exact again:

# %%
reference2 = backprop(1)
assert all(np.array_equal(a, b) for a, b in zip(reference2, oracle_run(S.pipelined(), 1)))
print("pipelined, 2 modules, with an oracle == backprop, bit for bit: True")

# %% [markdown]
# ## 5. The same pipeline on worker threads
#
# `ConcurrentRunner` gives each module a worker thread and runs all of a tick's events at once, then waits for every
# worker (a barrier) before the next tick. `schedules.check` guarantees that no worker reads what another writes in
# the same tick, so each worker sees exactly what the sequential runner would show it: the result must be
# **bit-identical** to `Runner(..., blas_threads=1)`, synthesizers and batch-norm statistics included.

# %%
heading("5. The same pipeline on worker threads")
x32 = mnist.train.x[:64 * 30]
batches32 = [(x32[k:k + 64], mnist.train.y[k:k + 64]) for k in range(0, len(x32), 64)]    # 30 batches of 64


def pipelined_net():
    return dni.mnist_fcn(layers=N_MODULES, hidden=128, conditioned=True, lr=1e-3, seed=3)


def state(net):
    """Every array of the net: parameters and batch-norm statistics of modules and synthesizers, optimizer states."""
    return list(net.state_dict().values())


dni.Runner(pipelined_net(), S.pipelined(), batches32[:2], blas_threads=1).run()   # warm-up: compile the kernels
seq_net, par_net = pipelined_net(), pipelined_net()
seq = dni.Runner(seq_net, S.pipelined(), batches32, blas_threads=1).run()
with dni.ConcurrentRunner(par_net, S.pipelined(), batches32) as par:
    par.run()
identical = all(np.array_equal(a, b) for a, b in zip(state(seq_net), state(par_net)))
print(f"sequential vs concurrent: {len(state(seq_net))} arrays, all np.array_equal: {identical}")
print(f"losses equal: {np.array_equal(seq.losses(), par.losses())}; loss {seq.losses()[0]:.3f} -> "
      f"{seq.losses()[-1]:.3f}")
assert identical and seq.log == par.log and seq.synth_log == par.synth_log

# `Trace.overlap()` measures how long two or more events really ran at the same time (a sweep over the spans).
for name, r in (("sequential", seq), ("concurrent", par)):
    wall = max(s.end for s in r.trace.spans) - min(s.start for s in r.trace.spans)
    util = r.trace.utilisation()
    print(f"{name:10s}: {wall * 1e3:6.1f} ms wall-clock; utilisation per module " +
          ", ".join(f"{m}: {util[m]:.0%}" for m in sorted(util)) + f" (sum {sum(util.values()):.2f}); "
          f"two or more events at once for {r.trace.overlap() * 1e3:.1f} ms")
assert seq.trace.overlap() == 0.0                 # the sequential runner never overlaps
show(par.trace.draw(n_modules=N_MODULES, title="pipelined, ConcurrentRunner"), "05_pipelined_wallclock.png")
print("threads:", sorted({s.thread for s in par.trace.spans}))

# %% [markdown]
# In the wall-clock picture the boxes of different modules overlap where the workers ran at the same time (NumPy's
# BLAS and the Numba kernels release Python's GIL); the "at once" column measures how long. A utilisation sum above 1
# would mean more than one core's worth of work was done at once. How much faster the concurrent run is depends on the
# cores free on this machine at this moment, and on how much work a tick holds: with modules this small the barrier
# and the thread hand-offs can cost as much as they save, and on a busy machine the threads simply queue for a core.
# The equality of the parameters does not depend on any of that.
#
# **Summary.** A schedule is a list of events with reads and writes; `check` verifies its data flow, `grid` and
# `draw` show it. With exact gradients every per-batch schedule is backprop, bit for bit; the pipeline is not, because
# it computes gradients through modules that lag behind. And because a schedule says exactly what may run at once,
# running it on threads changes the timing, never the numbers.

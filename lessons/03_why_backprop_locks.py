# %% [markdown]
# # Lesson 3: why backprop locks
#
# Lesson 1 ended on one observation: the first layer gets its gradient *last*. This lesson makes that wait visible.
# Jaderberg et al. 2016 (*Decoupled Neural Interfaces using Synthetic Gradients*, Sec. 1) name three locks that
# backpropagation puts on a network cut into modules $f_0, f_1, \dots$:
#
# * **forward locking**: module $i$ cannot run forward on a batch until every module below it has run forward on it;
# * **update locking**: module $i$ cannot update until every module that depends on it has run forward (and the loss
#   has been computed);
# * **backward locking**: module $i$ cannot update until every module that depends on it has run forward *and backward*.
#
# We cut a small MNIST network into three modules, write plain backprop as an **update schedule** (a list of events:
# who does what, when), print it, draw it, check its data flow, run it, and measure how long each module sits idle.
#
# Run it as a script (`python lessons/03_why_backprop_locks.py`) or as a notebook (`python lessons/make_notebooks.py`;
# docs/lessons.md). A notebook shows the figures under their cells; a script saves them in `./lesson-figures/` (or
# the folder named by `MINIDNI_LESSON_FIGURES`) and prints their paths.

# %%
import numpy as np
from threadpoolctl import threadpool_limits

from minidni import dni
from minidni.data import load_mnist
from minidni.dni import schedules as S
from minidni.lesson import heading, show

heading("Lesson 3: why backprop locks", level=1)
N_MODULES = 3
# The matrices here are tiny: one BLAS thread is fastest (several fight over the cores for microseconds of work), and
# it is what each worker of the ConcurrentRunner uses, so the timings compare like with like.
threadpool_limits(limits=1, user_api="blas")

# %% [markdown]
# ## 1. A network in three modules
#
# `mlp_modules` builds an MLP (784 -> 64 -> 64 -> 10, each hidden layer Linear -> BatchNorm -> ReLU) and cuts it after
# every hidden layer. Module $i$ maps $h_{i-1}$ to $h_i$; the top module maps $h_1$ to the logits. A `DNINet` with no
# synthesizers can only be trained with the `locked` schedule: plain backprop.

# %%
heading("1. A network in three modules")
mnist = load_mnist(validation=0)
rng = np.random.default_rng(0)
pick = rng.choice(len(mnist.train.y), size=64 * 24, replace=False)
x_all, y_all = mnist.train.x[pick], mnist.train.y[pick]
batches = [(x_all[k:k + 64], y_all[k:k + 64]) for k in range(0, len(y_all), 64)]    # 24 batches of (64, 784)


def locked_net():
    modules = dni.mlp_modules(784, 64, 10, n_hidden=N_MODULES - 1, rng=0)
    return dni.DNINet(modules, synthesizers=None, schedule=S.locked())


net = locked_net()
print(net)

# %% [markdown]
# ## 2. Backprop as a list of events
#
# An event is `(kind, module, batch, tick)`. A *tick* is a time slot: events in the same tick could run at the same
# time on different machines; a later tick has to wait for an earlier one. Each event also says which values it
# **reads** and **writes**: `h[i,b]` is module $i$'s output on batch $b$, `graph[i,b]` the local graph that module
# $i$'s backward pass needs, `dh[i,b]` the gradient that arrives at $h_i$ from above.

# %%
heading("2. Backprop as a list of events")
locked = S.locked()
print(locked.describe(n_batches=1, n_modules=N_MODULES, io=True))

# %% [markdown]
# Read the `reads` column from the bottom up. Module 0's `backprop` at tick 4 reads `dh[0,0]`, written by module 1's
# backprop at tick 3, which reads `dh[1,0]`, written by the top module's loss at tick 2, which reads `h[1,0]` ...
# which reads `h[0,0]`, written by module 0 at tick 0. That chain is the lock: module 0 cannot update batch 0 before
# everything above has run forward **and** backward.
#
# `check` verifies the data flow of an ordered event list: every value is written before it is read, and never by
# another module in the same tick (two workers would race).

# %%
events = locked.events(n_batches=3, n_modules=N_MODULES)
print("events checked:", S.check(events))
print()
print(locked.grid(n_batches=3, n_modules=N_MODULES))

# %% [markdown]
# The grid has one row per module (top module first) and one column per tick: the "V" of backprop. Each batch takes
# $2M - 1 = 5$ ticks for $M = 3$ modules, and **in every tick exactly one module works**. Let us count.

# %%
ticks_per_batch = 2 * N_MODULES - 1
busy_modules = {}
for e in events:
    busy_modules.setdefault(e.tick, set()).add(e.module)
n_ticks = len(busy_modules)
assert n_ticks == 3 * ticks_per_batch
assert all(len(mods) == 1 for mods in busy_modules.values())       # never two modules at once

print(f"{'module':>6}  {'busy ticks':>10}  {'idle ticks':>10}  {'busy share':>10}  ticks from forward to own update")
for m in range(N_MODULES):
    busy = sum(m in mods for mods in busy_modules.values())
    fwd = next(e.tick for e in events if e.module == m and e.batch == 0 and e.kind == "forward")
    upd = next(e.tick for e in events if e.module == m and e.batch == 0 and e.kind in ("backprop", "update_true"))
    print(f"{m:>6}  {busy:>10}  {n_ticks - busy:>10}  {busy / n_ticks:>10.0%}  {upd - fwd}")
    assert upd - fwd == 2 * (N_MODULES - 1 - m)          # the wait grows with the distance to the loss

# %% [markdown]
# Module 0 holds its batch for $2(M-1) = 4$ ticks between its forward pass and its update: the activations and the
# local graph must be kept all that time, and the module's parameters cannot change. Each module works in 2 of 5
# ticks (the top module in 1, where it runs forward, loss and update back to back). With $M$ modules on $M$ machines,
# each machine would be busy at most $2/(2M-1)$ of the time.
#
# The same picture, drawn:

# %%
show(locked.draw(n_batches=3, n_modules=N_MODULES), "03_locked_schedule.png")   # the timeline by tick

# %% [markdown]
# ## 3. Running it: seconds instead of ticks
#
# A `Runner` executes the events one by one and records every event's real start and end in a `Trace`. First we
# make sure the schedule really *is* backprop: the same network trained with an ordinary loop (one `loss.backward()`
# over the whole model, one Adam step) must end with exactly the same parameters.

# %%
heading("3. Running it: seconds instead of ticks")
from minidni import nn, ops, optim
from minidni.tensor import Tensor

dni.Runner(locked_net(), locked, batches[:2]).run()   # warm-up: the first calls compile the Numba kernels
runner = dni.Runner(net, locked, batches).run()

reference = nn.mlp(784, 64, 10, N_MODULES - 1, rng=0)      # the same weights as mlp_modules(..., rng=0)
opt = optim.Adam(reference.parameters(), lr=1e-3)
for x, y in batches:
    loss = ops.cross_entropy(reference(Tensor(x)), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
same = all(np.array_equal(a.data, b.data) for a, b in zip(reference.parameters(), net.module_parameters()))
print(f"{runner.events_run} events run; loss {runner.losses()[0]:.3f} -> {runner.losses()[-1]:.3f}; "
      f"identical to an ordinary backprop loop: {same}")
assert same

# %% [markdown]
# Now the trace. `busy()` sums each module's event durations. The sequential runner does one thing at a time, so the
# interesting number is not the total idle time but the **locked** time, `waits()`: for each batch, the seconds between
# the end of module $i$'s forward pass and the start of its own update, when module $i$ has done its part and can only
# wait for the gradient to come back down.

# %%
def report(trace, title):
    wall = max(s.end for s in trace.spans) - min(s.start for s in trace.spans)
    busy, wait, util = trace.busy(), trace.waits(), trace.utilisation()
    print(f"{title}: {wall * 1e3:.1f} ms wall-clock for {len(trace)} events")
    print(f"  {'module':>6}  {'busy ms':>8}  {'idle ms':>8}  {'utilisation':>11}  {'waiting for its gradient ms':>27}")
    for m in range(N_MODULES):
        print(f"  {m:>6}  {busy[m] * 1e3:8.1f}  {(wall - busy[m]) * 1e3:8.1f}  {util[m]:11.0%}  {wait[m] * 1e3:27.1f}")
    return wall, busy, wait


_, _, wait = report(runner.trace, "locked, sequential Runner")
assert wait[0] > wait[1] > wait[N_MODULES - 1] >= 0.0     # the lower, the longer the wait
print("trace by kind (ms):", {k: round(v * 1e3, 1) for k, v in runner.trace.by_kind().items()})

# %% [markdown]
# ## 4. More workers do not help
#
# The `ConcurrentRunner` gives every module its own worker thread and runs all the events of a tick at once. For a
# DNI schedule that overlaps modules (lesson 5). For backprop there is only ever one event per tick, so the other
# workers just wait. The wall-clock timeline shows the staircase: one worker at a time.

# %%
heading("4. More workers do not help")
net2 = locked_net()
with dni.ConcurrentRunner(net2, locked, batches) as par:
    par.run()
report(par.trace, "locked, ConcurrentRunner (a worker thread per module)")
show(par.trace.draw(n_modules=N_MODULES, title="locked, ConcurrentRunner"), "03_locked_wallclock.png")
assert sum(par.trace.utilisation().values()) <= 1.05      # together they fill one core's worth of time, at most

# %% [markdown]
# The utilisations add up to (at most) one: three workers, the work of one. The schedule, not the machine, is the
# limit.
#
# ## 5. What a synthetic gradient changes
#
# If module $i$ had an estimate $\hat g_i$ of $\partial L / \partial h_i$ right after its forward pass, it could
# update at once (no update or backward lock) and hand its batch on. That is the `dni` schedule of the next lesson:
# `U` (update with the synthetic gradient) sits in the same tick as `F`, and each module is done with a batch two
# ticks after it starts, however deep the network. `S` trains the synthesizer once its target has arrived.

# %%
heading("5. What a synthetic gradient changes")
print(S.dni().grid(n_batches=3, n_modules=N_MODULES))
dni_events = S.dni().events(3, N_MODULES)
for m in range(N_MODULES):
    f = next(e.tick for e in dni_events if e.module == m and e.batch == 0 and e.kind == "forward")
    u = next(e.tick for e in dni_events if e.module == m and e.batch == 0 and e.kind.startswith("update"))
    assert u == f                                          # updates in the tick of its own forward pass

# %% [markdown]
# **Summary.** Backprop, written as events, is a V: forward up, loss, backward down. Each module works in two ticks
# out of $2M-1$ and must keep its activations while it waits; the lower the module, the longer the wait. Giving each
# module its own worker changes nothing, because the data flow allows only one event at a time. Removing the wait
# needs a gradient that is available *before* the layers above have run: a synthetic gradient.

# %% [markdown]
# # Lesson 12: modules on separate workers
#
# Decoupling exists so that modules need not wait for each other (Jaderberg et al. 2016, Sec. 1-2): with synthetic
# gradients, module $i$ can update while module $i+1$ is still busy, so the modules can live on separate cores,
# processes or machines. Lesson 5 ran a pipelined schedule on threads. This lesson:
#
# 1. runs one DNI net, one pipelined schedule and one stream of batches on three runners, the sequential `Runner`,
#    the threaded `ConcurrentRunner` and the `RayRunner` (an actor per module; skipped with a note when Ray is not
#    installed), and checks that they compute the same numbers, bit for bit;
# 2. measures what each event costs (`dni.profile_costs`);
# 3. feeds those costs to the **schedule simulator** (`dni.simulate`): a discrete-event model of workers and a network
#    link, checked against the runs we just timed;
# 4. asks it what DNI would buy on 8 machines, and draws the simulated timeline.
#
# Run it as a script (`python lessons/12_modules_on_separate_workers.py`) or as a notebook
# (`python lessons/make_notebooks.py`; docs/lessons.md).

# %%
import time

import numpy as np

from minidni import dni
from minidni.data import load_mnist
from minidni.dni import schedules as S
from minidni.lesson import heading, show

heading("Lesson 12: modules on separate workers", level=1)
mnist = load_mnist()
BATCH, N_BATCHES = 64, 24
x, y = mnist.train.x[:BATCH * N_BATCHES], mnist.train.y[:BATCH * N_BATCHES]
batches = [(x[k:k + BATCH], y[k:k + BATCH]) for k in range(0, len(x), BATCH)]


def make_net(layers=2, hidden=256, seed=0):
    """The MNIST FCN cut after every hidden layer: `layers` modules, a cDNI linear synthesizer on each cut."""
    return dni.mnist_fcn(layers=layers, hidden=hidden, conditioned=True, seed=seed)


def state(net):
    """Every array a run leaves behind: parameters, batch-norm statistics, optimizer moments."""
    return list(net.state_dict().values())


WARM = 2                      # batches each runner runs before the clock starts (Ray starts its actors then)


def wall_per_batch(runner):
    """Seconds per batch of the batches after the first WARM (runner.run(n) drains the pipeline at its end)."""
    runner.run(WARM)
    t = time.perf_counter()
    runner.run()
    return (time.perf_counter() - t) / (N_BATCHES - WARM)


# %% [markdown]
# ## 1. One net, three runners
#
# Two modules (784 -> 256 and 256 -> 10) with a synthesizer on the cut, the `pipelined` schedule: at tick $T$ module 0
# works on batch $T$ while module 1 works on batch $T-1$. The sequential runner runs the events one at a time with one
# BLAS thread; the thread runner gives each module a thread; the Ray runner gives each module an actor, a process of
# its own, and passes activations and gradients between them as object references. The schedule fixes what each
# worker sees, so all three must end with the same parameters, bit for bit.

# %%
heading("1. One net, three runners")
dni.Runner(make_net(), S.pipelined(), batches[:2], blas_threads=1).run()      # warm-up: compile the kernels
runs = {}
seq_net = make_net()
seq = dni.Runner(seq_net, S.pipelined(), batches, blas_threads=1)
runs["sequential"] = (seq_net, seq, wall_per_batch(seq))
conc_net = make_net()
with dni.ConcurrentRunner(conc_net, S.pipelined(), batches) as conc:
    runs["threads"] = (conc_net, conc, wall_per_batch(conc))

try:
    import ray
    from minidni.dni.ray_runner import RayRunner, start_local_ray
except ImportError as exc:
    ray = None
    print(f"note: the Ray part is skipped ({exc}); install it with pip install -e '.[distributed]'")
if ray is not None:
    ray_net = make_net()
    start_local_ray(num_cpus=2)   # a new local Ray, listening on 127.0.0.1 only
    try:
        with RayRunner(ray_net, S.pipelined(), batches, checkpoint_every=0) as ray_runner:
            runs["ray"] = (ray_net, ray_runner, wall_per_batch(ray_runner))
    finally:
        ray.shutdown()

for name, (net, runner, per_batch) in runs.items():
    same = all(np.array_equal(a, b) for a, b in zip(state(net), state(seq_net)))
    print(f"{name:<11} loss {runner.losses()[0]:.4f} -> {runner.losses()[-1]:.4f}   "
          f"{1e3 * per_batch:6.2f} ms per batch   parameters identical to the sequential run: {same}")
    assert same and np.array_equal(runner.losses(), seq.losses())

# %% [markdown]
# ## 2. What each event costs
#
# `profile_costs` runs a few batches of the real net with a `Runner` and averages, from its trace, how long each kind
# of event takes on each module: the forward pass, the update with the synthetic gradient (module 0) or the loss
# (module 1), and the synthesizer's training step. It also measures the runner's own bookkeeping per event. (It
# trains the net it is given, so we give it a fresh one.)

# %%
heading("2. What each event costs")
profile = dni.profile_costs(make_net(seed=1), S.pipelined(), batches, n_batches=8, warmup=2, blas_threads=1)
# (statistic="median" instead of the mean would ignore an event whose thread a busy machine descheduled)
print(profile)
print(f"bytes per transfer: h_0 and dh_0 are {BATCH} x 256 float32 = {profile.nbytes[('h', 0)]} bytes")

# %% [markdown]
# ## 3. The simulator, checked against the runs
#
# `dni.simulate(schedule, costs, n_workers, link)` lays the schedule's events out in time. An event starts when its
# worker is free and the keys it reads have arrived; a key that crosses from one worker to another costs the link's
# latency plus bytes / bandwidth; on one worker it is free. With `sync="tick"` it also models the thread runner's
# barrier after every tick. One worker is the sequential runner; two workers with the barrier are the thread runner.
# The timed runs fed 22 batches and drained the pipeline at the end (after 2 untimed ones, in one run of their
# own), so we simulate 22 batches and compare whole runs.
# This machine may be busy, so the two can differ by more than the model's error: the benchmark
# (`benchmarks/bench_distributed.py`) times longer, round-robin, and reports the spread.

# %%
heading("3. The simulator, checked against the runs")
models = {"sequential": dict(n_workers=1), "threads": dict(n_workers=2, sync="tick")}
if "ray" in runs:
    # issue 12's numbers for Ray on this machine: a call 0.7 ms, a 256 KB hop 1-2 ms (~0.3 GB/s over the call);
    # the driver's bookkeeping per event (the runner overhead above) is the serial cost of submitting it
    models["ray"] = dict(n_workers=2, link=dni.Link(latency=0.0, bandwidth=3e8), per_call=7e-4, dispatch=0.0,
                         submit=profile.overhead)
for name, kw in models.items():
    sim = dni.simulate(S.pipelined(), profile, n_batches=N_BATCHES - WARM, **kw)
    simulated, measured = sim.makespan / sim.n_batches, runs[name][2]
    print(f"{name:<11} measured {1e3 * measured:6.2f} ms per batch, simulated {1e3 * simulated:6.2f} "
          f"({simulated / measured - 1:+.0%})")
print(dni.simulate(S.pipelined(), profile, n_workers=2, sync="tick", n_batches=N_BATCHES - WARM))

# %% [markdown]
# ## 4. What would DNI buy on 8 machines?
#
# Now a net the runs above could not show: 8 modules of 256 units (the MNIST FCN with 8 weight layers), each on a
# machine of its own (one core, like one of ours), the machines joined by a 10 Gbit/s network with 50 us of latency.
# Locked backprop gains nothing from the extra machines, each module waits for the gradient to come back, and the
# link only adds to the wait. DNI's pipelined schedule keeps every machine busy on a batch of its own.

# %%
heading("4. What would DNI buy on 8 machines?")
schedules = {"locked": S.locked(), "dni": S.dni(), "pipelined": S.pipelined()}
costs8 = {name: dni.profile_costs(make_net(layers=8, seed=2), s, batches, n_batches=5, warmup=1, blas_threads=1,
                                  statistic="median") for name, s in schedules.items()}
one_machine = dni.simulate(S.locked(), costs8["locked"], n_workers=1).per_batch
link = dni.Link.gbit(10, latency=50e-6)
sims = {name: dni.simulate(s, costs8[name], n_workers=8, link=link, n_batches=10) for name, s in schedules.items()}
print(f"locked backprop on one machine: {1e3 * one_machine:.2f} ms per batch")
for name, sim in sims.items():
    print(f"{name:<10} on 8 machines: {1e3 * sim.per_batch:6.2f} ms per batch, {one_machine / sim.per_batch:.2f}x "
          f"locked on one machine; link {1e3 * sim.comm_seconds / sim.n_batches:.2f} ms per batch")
assert sims["pipelined"].per_batch < sims["locked"].per_batch
assert sims["locked"].trace.overlap() == 0.0        # update locking: never two modules at once
print(sims["pipelined"])
show(sims["pipelined"].draw(), "12_pipelined_8_machines.png")
show(sims["locked"].draw(), "12_locked_8_machines.png")

# %% [markdown]
# In the pipelined picture every row is busy once the pipeline has filled, and the grey lines (the activations going
# up and the gradients coming down) cross between them; in the locked picture one module works at a time. The
# speed-up is bounded by the busiest machine: here module 0, which also pays for its synthesizer and the first
# layer's 784 inputs. `benchmarks/bench_distributed.py` prints the same forecast for 2, 4 and 8 machines at 1, 10 and
# 100 Gbit/s and shows where the link eats the gain (docs/distributed.md).
#
# **Summary.** A schedule says what may run at once; any runner that follows it, one thread, several threads or
# several processes, computes the same numbers. How fast it runs depends on the costs and the link, and a small
# discrete-event simulation over the measured costs predicts it.

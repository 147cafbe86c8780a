# %% [markdown]
# # Lesson 6: complete unlock, synthetic inputs as well as synthetic gradients
#
# A synthetic gradient removes the **update** and **backward** locks (lessons 3-4): module $i$ updates as soon as it
# has run forward. It does not remove the **forward** lock: module $i$ still needs $h_{i-1}$, so it waits for every
# module below it. Jaderberg et al. 2016 (Sec. 2.3, experiments in Sec. 3.4) remove that lock too, with a second
# kind of model. A **synthetic input** $I_i$ predicts module $i$'s input from the data alone:
#
# $$\hat h_{i-1} = I_i(x), \qquad \text{trained on } \lVert \hat h_{i-1} - h_{i-1} \rVert^2
#   \text{ once module } i-1 \text{ has produced the real } h_{i-1}.$$
#
# With $I_i$ and $M_i$ in place, every module can run forward **and** update on batch $b$ at the same moment. At test
# time the ordinary forward chain is used: synthetic inputs are a training device.
#
# This lesson: the synthetic-input model, the `unlocked` schedule (printed, checked and drawn next to `dni`), one
# unlocked step by hand, and a small MNIST run that learns, with the concurrent runner's timeline.
#
# Run it as a script (`python lessons/06_complete_unlock.py`) or as a notebook (`python lessons/make_notebooks.py`;
# docs/lessons.md). A notebook shows the figures under their cells; a script saves them in `./lesson-figures/` (or
# the folder named by `MINIDNI_LESSON_FIGURES`) and prints their paths.

# %%
import numpy as np
from threadpoolctl import threadpool_limits

from minidni import dni, ops
from minidni.autograd import no_grad
from minidni.data import load_mnist
from minidni.dni import schedules as S
from minidni.lesson import heading, show
from minidni.tensor import Tensor

heading("Lesson 6: complete unlock, synthetic inputs as well as synthetic gradients", level=1)
threadpool_limits(limits=1, user_api="blas")   # tiny matrices: one BLAS thread is fastest on a shared machine
N_MODULES = 3

mnist = load_mnist(validation=0)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. A synthetic input
#
# `SyntheticInput(in_features, features)` is a linear map (or an MLP) from the flattened data to a prediction of an
# activation. `add_synthetic_inputs(net, 784)` gives a `DNINet` one for each module $j \ge 1$, predicting $h_{j-1}$;
# the widths are read from the synthesizers, which sit on the same activations.

# %%
heading("1. A synthetic input")


def unlocked_net(seed=0):
    net = dni.mnist_fcn(layers=N_MODULES, hidden=64, conditioned=True, lr=1e-3, synth_lr=1e-3, seed=seed,
                        schedule=dni.unlocked())
    return dni.add_synthetic_inputs(net, in_features=784, optimizer=dni.adam(1e-3), rng=seed + 1)


net = unlocked_net()
print(net)
x = mnist.train.x[:8]                                              # (8, 784)
h_hat = net.inputs[1].predict(x)                                   # I_1(x): module 1's input, predicted
print("I_1(x) shape", h_hat.shape, "(the shape of h_0, module 0's output)")
assert h_hat.shape == (8, 64)

# %% [markdown]
# ## 2. The unlocked schedule
#
# At tick $b$ **every** module processes batch $b$: module 0 on $x$ (`F`), module $j \ge 1$ on $I_j(x)$ (`f`), each
# updating with its synthetic gradient at once (`U`; the top module with the real loss, `L`). At tick $b + 1$ the
# models learn from what tick $b$ produced: $M_i$ on the bootstrapped target that module $i+1$ sent down (`S`), and
# $I_j$ on the real $h_{j-1}$ that module $j-1$ computed (`I`).

# %%
heading("2. The unlocked schedule")
unlocked = dni.unlocked()
print(unlocked.describe(n_batches=1, n_modules=N_MODULES, io=True))
print()
print(unlocked.grid(n_batches=4, n_modules=N_MODULES))
print()
print(S.dni().grid(n_batches=4, n_modules=N_MODULES))
events = unlocked.events(4, N_MODULES)
S.check(events)
for e in events:
    if e.kind in ("forward", "forward_unlocked", "update_synthetic", "update_true"):
        assert e.tick == e.batch                                   # all modules on batch b in tick b
print(f"\nticks for 4 batches: unlocked {1 + max(e.tick for e in events)}, "
      f"dni {1 + max(e.tick for e in S.dni().events(4, N_MODULES))}, "
      f"locked {1 + max(e.tick for e in S.locked().events(4, N_MODULES))}")

# %% [markdown]
# Read the `reads` column of the event list: module 1's forward at tick 0 reads only `batch[0]`, not `h[0,0]`. Nothing
# in tick 0 reads what another module writes in tick 0 (`check` would refuse it), so the three modules could run on
# three machines at once. The one-tick lag of `S` and `I` is the price: a model learns from batch $b$ only after
# batch $b$'s work is done.

# %%
show(dni.draw_timeline(events, n_modules=N_MODULES, title="unlocked()"), "06_unlocked_schedule.png")
show(S.dni().draw(4, N_MODULES), "06_dni_schedule.png")

# %% [markdown]
# ## 3. One unlocked step, by hand
#
# We run batch 0 and batch 1 with a `Runner` one event at a time and stop before $I_1$'s first training step on batch
# 0. Then we compute the synthetic-input loss ourselves: the mean of $(I_1(x) - h_0)^2$, with $h_0$ the real output of
# module 0 on batch 0, which the runner keeps in its store for exactly this purpose.

# %%
heading("3. One unlocked step, by hand")
batches = [(mnist.train.x[k:k + 64], mnist.train.y[k:k + 64]) for k in range(0, 128, 64)]
runner = dni.Runner(net, unlocked, batches, blas_threads=1)
while True:
    nxt = runner.pending()[0] if runner.pending() else None
    if nxt is not None and nxt.kind == "train_input" and nxt.module == 1:
        break
    event = runner.step()
    print(event)
x0, _ = runner.store[("batch", 0)]
h0 = runner.store[("h", 0, 0)]                                     # the real h_0 on batch 0, (64, 64)
by_hand = ops.mse_loss(net.inputs[1].model(Tensor(x0)), Tensor(h0)).item()
event = runner.step()
print(event, f"-> L_I = {runner.input_log[-1]['loss']:.5f}   (by hand: {by_hand:.5f})")
assert event.kind == "train_input" and np.isclose(runner.input_log[-1]["loss"], by_hand, rtol=1e-5)
runner.run()

# %% [markdown]
# ## 4. Training with everything unlocked
#
# 200 steps of 64 MNIST images with `net.train_step` (one batch through the `unlocked` schedule). We log the task
# loss, the synthesizers' loss $\lVert \hat g - g \rVert^2$ and the synthetic inputs' loss $\lVert \hat h - h\rVert^2$,
# and measure how close $I_1(x)$ is to the real $h_0$ on held-out images. Test accuracy uses the real forward chain.

# %%
heading("4. Training with everything unlocked")


def input_error(net, x):
    """||I_1(x) - h_0(x)|| / ||h_0(x)|| on images x, batch norm on its running statistics."""
    net.eval()
    with no_grad():
        h0 = net.modules[0](Tensor(x)).data
    h_hat = net.inputs[1].predict(x)
    net.train()
    return float(np.linalg.norm(h_hat - h0) / np.linalg.norm(h0))


STEPS, BATCH = 200, 64
pick = rng.choice(len(mnist.train.y), size=STEPS * BATCH, replace=False)
x_train, y_train = mnist.train.x[pick], mnist.train.y[pick]
x_test, y_test = mnist.test.x[:2000], mnist.test.y[:2000]

net = unlocked_net(seed=0)
print(f"before: test accuracy {net.evaluate(x_test, y_test)['accuracy']:.3f}, "
      f"I_1 relative error {input_error(net, x_test):.3f}")
log = []
for step, k in enumerate(range(0, STEPS * BATCH, BATCH)):
    log.append(net.train_step(x_train[k:k + BATCH], y_train[k:k + BATCH]))
    if step % 40 == 0 or step == STEPS - 1:
        window = log[-20:]
        print(f"step {step:4d}  loss {np.mean([r['loss'] for r in window]):.3f}  "
              f"synth loss {np.mean([r['synth_loss'] for r in window]):.2e}  "
              f"input loss {np.mean([r['input_loss'] for r in window]):.4f}")
acc, err = net.evaluate(x_test, y_test)["accuracy"], input_error(net, x_test)
print(f"after:  test accuracy {acc:.3f}, I_1 relative error {err:.3f}")
loss_first, input_first = np.mean([r["loss"] for r in log[:20]]), np.mean([r["input_loss"] for r in log[:20]])
loss_last, input_last = np.mean([r["loss"] for r in log[-20:]]), np.mean([r["input_loss"] for r in log[-20:]])
assert loss_last < 0.7 * loss_first and input_last < 0.5 * input_first and acc > 0.5

# %% [markdown]
# Both learn: the synthetic inputs chase the real activations (which move, as module 0 trains), and the network
# learns the task although no module ever waited for another. Early on the modules above train on inputs that are
# poor imitations of $h_{j-1}$; as $I_j$ improves their training inputs approach what the real chain feeds them at
# test time. The paper (Sec. 3.4) trains completely unlocked networks over full-length runs; a couple of hundred
# steps is only the start of that.
#
# ## 5. On worker threads
#
# The unlocked schedule, like the pipeline of lesson 5, runs on a `ConcurrentRunner`: one worker per module, all three
# busy on batch $b$ in tick $b$. The result is bit-identical to the sequential runner.

# %%
heading("5. On worker threads")
few = [(x_train[k:k + BATCH], y_train[k:k + BATCH]) for k in range(0, 20 * BATCH, BATCH)]
seq_net, par_net = unlocked_net(seed=5), unlocked_net(seed=5)
dni.Runner(seq_net, unlocked, few, blas_threads=1).run()
with dni.ConcurrentRunner(par_net, unlocked, few) as par:
    par.run()
seq_state, par_state = seq_net.state_dict(), par_net.state_dict()    # modules, M_i, I_j, batch norm, optimizers
same = seq_state.keys() == par_state.keys() and all(np.array_equal(seq_state[k], par_state[k]) for k in seq_state)
print(f"sequential vs concurrent, {len(seq_state)} arrays of state identical: {same}")
assert same
util = par.trace.utilisation()
print("utilisation per module:", {m: f"{u:.0%}" for m, u in sorted(util.items())})
show(par.trace.draw(n_modules=N_MODULES, title="unlocked, ConcurrentRunner"), "06_unlocked_wallclock.png")

# %% [markdown]
# **Summary.** Synthetic gradients unlock the update; synthetic inputs unlock the forward pass. With both, module $j$
# needs only the data and its two small models, $I_j$ for its input and $M_j$ for its gradient, each trained one tick
# later on what its neighbours actually produced. Every module works on batch $b$ in tick $b$, and the network still
# learns.

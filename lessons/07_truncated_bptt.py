# %% [markdown]
# # Lesson 7: truncated BPTT and the gradient it throws away
#
# An RNN is trained by backpropagation through time (BPTT): unroll it over the sequence, backprop the summed loss
# through every step. Over a long sequence that is too much memory and too long a wait, so in practice the unrolled
# net is cut into **windows of T steps** (truncated BPTT): window $k$ starts from the state the previous window ended
# in, *detached*, runs T steps, backprops its own losses, updates. The state still flows forward across the cut; the
# gradient does not flow back. Jaderberg et al. 2016 (arXiv v1 Sec. 3.2) start from exactly this cut: the gradient of
# every later loss with respect to the state at the cut is thrown away, so dependencies longer than T get no gradient.
# Lesson 8 puts a synthetic gradient at the cut.
#
# This lesson:
# 1. writes the truncated-BPTT schedule as data (`dni.tbptt`), like the feed-forward schedules of lesson 5;
# 2. measures, on a Copy episode, how much of the full-BPTT gradient each window size keeps;
# 3. shows the gradient that arrives at each cut -- the part truncation drops;
# 4. trains the same LSTM with T = 2 and with full BPTT on Copy, whose first output depends on an input N + 1 steps
#    back.

# %%
import time

import numpy as np
from threadpoolctl import threadpool_limits

from minidni import dni, nn, ops
from minidni.data.copy_tasks import copy_task
from minidni.dni.bits import bit_loss, bits_per_step
from minidni.lesson import heading
from minidni.optim import Adam
from minidni.tensor import Tensor

heading("Lesson 7: truncated BPTT and the gradient it throws away", level=1)
threadpool_limits(limits=1, user_api="blas")      # tiny matrices: one BLAS thread is fastest
N, WIDTH, H, B = 3, 3, 16, 32                     # Copy: 3 vectors of 3 bits; a 16-unit LSTM; 32 episodes a batch


def learner(T, method="bptt", seed=0, lr=3e-3, **kw):
    """An LSTM + per-step readout trained by tbptt(T, method), all seeded alike."""
    r = np.random.default_rng(seed)
    core, readout = nn.LSTM(WIDTH + 1, H, rng=r), nn.Linear(H, WIDTH, rng=r)
    synth = dni.RecurrentSynthesizer(H, rng=r) if method != "bptt" else None
    return dni.RecurrentLearner(core, readout, dni.tbptt(T, method), synth,
                                optimizer=lambda ps: Adam(ps, lr=lr), **kw)


# %% [markdown]
# ## 1. The schedule is data
#
# A Copy episode with N = 3 has 2N + 1 = 7 steps: three bit vectors, a delimiter, then three steps on which the net
# must write the vectors back. With T = 2 it is four windows. Each window is a forward pass `W`, a truncated backward
# `X` (the window's losses only) and an optimizer step `P`; the number is the window.

# %%
heading("1. The schedule is data")
episode = copy_task(B, rng=np.random.default_rng(0), width=WIDTH, length=N)
n_steps = episode.num_steps
schedule = dni.tbptt(2, "bptt")
print(schedule.grid(n_steps))
print(schedule.describe(n_steps))
schedule.check(n_steps)

# %% [markdown]
# ## 2. How much of the gradient survives the cuts
#
# With the optimizer steps switched off (`update=False`) the windows' gradients add up, so one episode gives the
# parameter gradient truncated BPTT follows, at fixed parameters. With T = n (one window) it IS full BPTT. The
# first output is at step N + 1 = 4 and needs the input of step 0: a dependency of 4 steps, longer than T = 1, 2, 3.

# %%
heading("2. How much of the gradient survives the cuts")


def episode_gradient(T):
    lrn = learner(T, update=False)
    lrn.train_episode(episode.inputs, episode.targets, episode.mask)
    return np.concatenate([p.grad.ravel() for p in lrn.core_parameters()])


full = episode_gradient(n_steps)
for T in (1, 2, 3, 4, n_steps):
    g = episode_gradient(T)
    cos = g @ full / np.linalg.norm(g) / np.linalg.norm(full)
    print(f"T = {T}: |g_T - g_full| / |g_full| = {np.linalg.norm(g - full) / np.linalg.norm(full):.3f}, "
          f"cosine {cos:.3f}")
assert np.allclose(episode_gradient(n_steps), full)

# %% [markdown]
# ## 3. What arrives at a cut
#
# Run the episode once more without cutting: window after window, but handing each window's final state on as a
# graph node (`h + 0.0`), whose gradient then holds only what the LATER windows send back. That is
# $\partial L_{>k} / \partial s$, the gradient truncated BPTT throws away at that cut -- and what a synthesizer at the
# cut will learn to predict (lesson 8).

# %%
heading("3. What arrives at a cut")
lrn = learner(2)
zeros = np.zeros((B, H), dtype=np.float32)
state, total, cuts = (Tensor(zeros), Tensor(zeros)), None, {}
for k in range(schedule.n_windows(n_steps)):
    t0, t1 = schedule.window(k, n_steps)
    outs, (h, c) = lrn.core([Tensor(episode.inputs[t]) for t in range(t0, t1)], state=state)
    state = (h + 0.0, c + 0.0)
    state[0].retain_grad(), state[1].retain_grad()
    cuts[t1] = state
    logits = ops.reshape(lrn.readout(ops.concat(outs, axis=0)), (t1 - t0, B, WIDTH))
    loss = bit_loss(logits, episode.targets[t0:t1], episode.mask[t0:t1])
    total = loss if total is None else total + loss
total.backward()
for t, (h, c) in cuts.items():
    if t < n_steps:
        print(f"cut after step {t}: |dL_later/dh| = {np.linalg.norm(h.grad):.4f}, "
              f"|dL_later/dc| = {np.linalg.norm(c.grad):.4f}  (truncated BPTT uses 0 here)")

# %% [markdown]
# ## 4. Training: T = 2 against full BPTT
#
# The same LSTM, the same batches, a few hundred updates. Full BPTT sees the 4-step dependency; T = 2 cannot learn
# to store the first vector for its first output except by accident. (Bits per output step: the average number of
# wrong bits per scored step; 0 is perfect, about WIDTH / 2 = 1.5 is guessing.)

# %%
heading("4. Training: T = 2 against full BPTT")
STEPS = 400


def train(T, steps=STEPS):
    lrn, rng, errors = learner(T), np.random.default_rng(1), []
    for _ in range(steps):
        b = copy_task(B, rng=rng, width=WIDTH, length=N)
        out = lrn.train_episode(b.inputs, b.targets, b.mask)
        errors.append(bits_per_step(out["logits"], b.targets, b.mask))
    return np.mean(errors[-50:])


t0 = time.perf_counter()
results = {T: train(T) for T in (2, n_steps)}
for T, err in results.items():
    print(f"T = {T}: {err:.3f} bits per output step over the last 50 batches")
print(f"({time.perf_counter() - t0:.1f} s)")
assert results[n_steps] < results[2], "full BPTT should learn the 4-step dependency better than T = 2"

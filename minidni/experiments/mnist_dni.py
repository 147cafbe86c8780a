"""MNIST DNI experiments beyond Table 1's grid (Jaderberg et al. 2016, Sec. 3.3-3.4), and the side-by-side comparison:

    mnist-dni-compare   backprop vs DNI vs cDNI on the 3-layer FCN at a small budget: one plot of their validation
                        error curves on the same axes, and comparison.json (the README's main job)
    mnist-async         cDNI with stochastic updates: each layer updates on a batch only with probability p
                        (Sec. 3.3, "asynchronous"); one run per p, results side by side
    mnist-pipeline      the pipelined schedule (layer i works on batch t while layer i+1 works on batch t-1), run with
                        dni.Runner or dni.ConcurrentRunner -- the Trainer feeds one batch at a time, so this recipe
                        drives the runner itself and writes the same metrics.jsonl / summary.json / curves.png /
                        checkpoint.npz (written where the pipeline drains, so --resume continues bit-identically)
    mnist-unlock        complete unlock (Sec. 2.3, 3.4): synthetic inputs I_j(x) as well as synthetic gradients, so
                        every layer processes batch b at the same tick

Composite recipes (compare, async) put each run in a subfolder and write comparison.json + comparison.png beside them;
their config.toml is written first, so an interrupted comparison resumes (finished sub-runs are read back, the
interrupted one continues from its checkpoint). They cannot be extended: they have no checkpoint of their own.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import kernels
from ..config import new_default, param, to_toml
from ..dni import ConcurrentRunner, Runner, Trace, add_synthetic_inputs, draw_timeline
from ..dni.schedules import pipelined, stochastic
from ..dni.trace import Span
from ..dni.unlock import unlocked
from ..progress import Progress, is_nested, nested, show_bar
from ..results import plot_curves
from ..train import (CHECKPOINT, CONFIG, CURVES, METRICS, SUMMARY, CheckpointError, Diverged, GracefulInterrupt,
                     check_divergence,
                     check_state, plan, read_checkpoint, rng_state, run_length, set_rng_state, versions,
                     write_checkpoint)
from . import get, register
from .feedforward import (DIAGNOSTIC_SPLIT, SYNTH_PLOT, CdniFcnConfig, add_to_summary, build_dni_net, load_data,
                          plot_synthetic_gradients, synthetic_grad_summary, train)
from .mnist_fcn import MnistFcnConfig

COMPARISON_JSON = "comparison.json"
COMPARISON_PNG = "comparison.png"
TIMELINE = "timeline.png"                    # the run, by wall-clock time (a window of its Trace)
SCHEDULE_TIMELINE = "timeline_schedule.png"  # the schedule, by tick


# ---- running several experiments and comparing them ----------------------------------------------------------------
def run_many(runs, out_dir, *, resume=False, quiet=False, desc="sub-runs"):
    """runs: list of (label, what, fit), fit(sub_dir, resume) training one run and returning its summary. Each run
    goes into out_dir/label; with `resume`, a finished run is read back and an interrupted one resumed.
    Unless quiet, a bar counts the sub-runs (i of n) and each sub-run's own bar of steps shows below it.
    Returns {label: summary}."""
    out = {}
    with Progress(len(runs), desc=desc, unit="run", enabled=not quiet, warmup=False) as bar, \
            (nested() if not quiet else contextlib.nullcontext()):
        for k, (label, what, fit) in enumerate(runs):
            sub = Path(out_dir) / label
            if resume and (sub / SUMMARY).is_file():
                out[label] = json.loads((sub / SUMMARY).read_text())
                if out[label].get("status", "finished") == "finished":
                    bar.update(k + 1)
                    continue
            bar.write(f"== {k + 1}/{len(runs)} {label}: {what} -> {sub}")
            out[label] = fit(sub, resume and (sub / CHECKPOINT).is_file())
            bar.update(k + 1)
    return out


def _experiment(name, cfg):
    """A run_many `fit` that runs the registered experiment `name` with `cfg`, quietly."""
    return lambda sub, again: get(name).run(cfg, sub, resume=again, quiet=True)


def plot_comparison(curves, path, title="", ylabel="validation error (%)"):
    """curves: {label: [(step, error in %), ...]} drawn on one axes (log scale)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for label, points in curves.items():
        if points:
            ax.plot(*zip(*points), marker=".", label=label)
    ax.set(xlabel="step", ylabel=ylabel, yscale="log", title=title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.savefig(path, dpi=100)
    return Path(path)


def val_curve(folder):
    """[(step, val error %)] of a run folder's metrics.jsonl."""
    path = Path(folder) / METRICS
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["step"], 100 * (1 - r["accuracy"])) for r in rows if r["split"] == "val"]


def write_comparison(name, out_dir, summaries, config, title, wall_s):
    """comparison.json, comparison.png and a summary.json for a composite run; returns that summary."""
    out_dir = Path(out_dir)
    rows = {label: {k: s.get(k) for k in ("experiment", "val_error", "test_error", "best_val_error", "steps",
                                          "epochs", "wall_time_s", "synthetic_grad")}
            for label, s in summaries.items()}
    first = next(iter(summaries.values()))
    per_epoch = (first.get("schedule") or {}).get("steps_per_epoch")
    length = run_length(first["steps"], per_epoch) if per_epoch else f"{first['steps']} steps"
    title = title.replace("{length}", length)
    (out_dir / COMPARISON_JSON).write_text(json.dumps({"experiment": name, "title": title, "runs": rows}, indent=2)
                                           + "\n")
    plot_comparison({label: val_curve(out_dir / label) for label in summaries}, out_dir / COMPARISON_PNG, title)
    summary = {"experiment": name, "status": "finished", "runs": rows, "steps": first["steps"],
               "epochs": first["epochs"], "val_error": None, "test_error": None, "wall_time_s": round(wall_s, 2),
               "backend": first["backend"], "config": config.to_dict(), "versions": versions(),
               "files": {"comparison": COMPARISON_JSON, "plot": COMPARISON_PNG}}
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / CONFIG).write_text(to_toml(config, header=f"{name}: the settings of this run"))
    return summary


def print_comparison(summary):
    for label, r in summary["runs"].items():
        test = "-" if r["test_error"] is None else f"{100 * r['test_error']:.2f}%"
        val = "-" if r["val_error"] is None else f"{100 * r['val_error']:.2f}%"
        print(f"  {label:<12} val error {val:>7}  test error {test:>7}  ({r['wall_time_s']:.1f} s)")


def run_comparison(name, runs, out_dir, config, title, *, resume, quiet):
    """Train `runs` one after another (run_many), then write and (unless quiet) print their comparison.

    config.toml is written first, so an interrupted comparison resumes with exactly its settings (minidni run
    --resume reads it)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        (out_dir / SUMMARY).unlink(missing_ok=True)
    (out_dir / CONFIG).write_text(to_toml(config, header=f"{name}: the settings of this run"))
    summaries = run_many(runs, out_dir, resume=resume, quiet=quiet, desc=name)
    summary = write_comparison(name, out_dir, summaries, config, title, time.perf_counter() - t0)
    if not quiet:
        print_comparison(summary)
    return summary


# ---- mnist-dni-compare -----------------------------------------------------------------------------------------------
@dataclass
class CompareConfig(MnistFcnConfig):
    # A small budget (about a minute on two cores): 5 epochs, lr / 10 after 3/5 and 4/5 of the run (epochs 3 and 4),
    # validation 10 times (every half epoch); both move with --steps / --epochs. The synthesizer settings are each
    # experiment's defaults (see `minidni show mnist-fcn-dni`).
    methods: tuple[str, ...] = param(("bprop", "dni", "cdni"), "which of mnist-fcn-{no-bprop,bprop,dni,cdni} to run",
                                     choices=("no-bprop", "bprop", "dni", "cdni"))
    epochs: int = new_default(MnistFcnConfig, "epochs", 5)
    lr_decay_at: tuple[float, ...] = new_default(MnistFcnConfig, "lr_decay_at", (0.6, 0.8))
    eval_count: int = new_default(MnistFcnConfig, "eval_count", 10)
    diagnose_every: int = param(25, "compare g_hat with the true gradient every this many steps (0: never)", ge=0)


def sub_config(name, config, **values):
    """`config`'s settings that experiment `name` knows, as that experiment's config (plus `values`)."""
    cls = get(name).config
    known = {k: v for k, v in config.to_dict().items() if k in cls.__dataclass_fields__}
    known.update(values)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in known.items()})


@register("mnist-dni-compare", "backprop vs DNI vs cDNI on the 3-layer MNIST FCN at a small budget: one plot, "
                               "one JSON", CompareConfig)
def run_compare(config, out_dir, *, resume=False, quiet=False, hooks=()):
    runs = [(m, f"mnist-fcn-{m}", _experiment(f"mnist-fcn-{m}", sub_config(f"mnist-fcn-{m}", config)))
            for m in config.methods]
    return run_comparison("mnist-dni-compare", runs, out_dir, config,
                          f"MNIST FCN, {config.layers} layers, {{length}}: validation error",
                          resume=resume, quiet=quiet)


# ---- mnist-async -----------------------------------------------------------------------------------------------------
@dataclass
class AsyncConfig(CdniFcnConfig):
    p_updates: tuple[float, ...] = param((1.0, 0.5, 0.2), "probabilities of a layer updating on a batch; one run "
                                                          "each", gt=0.0, le=1.0)


@register("mnist-async", "MNIST FCN, cDNI with stochastic updates (each layer updates with probability p): one run "
                         "per p, side by side", AsyncConfig)
def run_async(config, out_dir, *, resume=False, quiet=False, hooks=()):
    def fit(p):
        def one(sub, again):
            train("mnist-async", "mnist", "fcn", "cdni", config, sub, quiet=True,
                  schedule=stochastic(p, seed=config.seed), resume=again)
            return add_to_summary(sub, p_update=p)
        return one

    runs = [(f"p{p:g}", f"cDNI, p_update = {p:g}", fit(p)) for p in config.p_updates]
    return run_comparison("mnist-async", runs, out_dir, config,
                          f"MNIST FCN {config.layers} layers, cDNI, stochastic updates: validation error",
                          resume=resume, quiet=quiet)


# ---- mnist-pipeline --------------------------------------------------------------------------------------------------
@dataclass
class PipelineConfig(CdniFcnConfig):
    conditioned: bool = param(True, "cDNI synthesizers (the label as input)")
    runner: str = param("sequential", "'sequential' (dni.Runner, with diagnostics), 'concurrent' "
                                      "(dni.ConcurrentRunner: a worker thread per layer, no diagnostics) or 'ray' "
                                      "(dni.ray_runner.RayRunner: a Ray actor per layer, docs/distributed.md)",
                        choices=("sequential", "concurrent", "ray"))
    address: str = param("", "runner 'ray': HOST:PORT of a running Ray cluster's head ('': start a local Ray)")
    actor_checkpoint_every: int = param(50, "runner 'ray': gather every actor's state every N batches; a dead "
                                            "actor is restored from there (0: never)", ge=0)
    timeline_batches: int = param(6, "draw this many batches of the run (from batch 20 on) in timeline.png", ge=1)


def record(split, step, steps_per_epoch, loss, accuracy, lr, wall, **extra):
    return {"step": step, "epoch": round(step / steps_per_epoch, 4), "split": split, "loss": loss,
            "accuracy": accuracy, "lr": lr, "wall_time_s": round(wall, 3), **extra}


def draw_trace_window(trace, n_batches, n_modules, path, title, skip=20):
    """timeline.png: the spans of n_batches batches of a run's Trace, by wall-clock time, from batch `skip` on (the
    first batches include one-off costs such as compiling kernels); the time axis starts at the window's first event."""
    last = max((s.event.batch for s in trace.spans), default=0)
    first = max(0, min(skip, last + 1 - n_batches))
    spans = [s for s in trace.spans if first <= s.event.batch < first + n_batches]
    t0 = min((s.start for s in spans), default=0.0)
    window = Trace(0.0)
    window.spans = [Span(s.event, s.start - t0, s.end - t0, s.thread) for s in spans]
    fig = draw_timeline(window, path=path, n_modules=n_modules, title=f"{title}: batches {first}..{first + n_batches - 1}")
    import matplotlib.pyplot as plt

    plt.close(fig)


def draw_schedule(schedule, n_batches, n_modules, path, target):
    import matplotlib.pyplot as plt

    plt.close(schedule.draw(n_batches, n_modules, path=path, target=target))


class _PipelineState:
    """What a mnist-pipeline hook sees after each chunk: the step reached and the run folder (like a Trainer)."""

    def __init__(self, out_dir):
        self.out_dir, self.step = out_dir, 0


@register("mnist-pipeline", "MNIST FCN with cDNI on the pipelined schedule (all layers busy at once), via dni.Runner "
                            "/ ConcurrentRunner; timeline plots", PipelineConfig)
def run_pipeline(config, out_dir, *, resume=False, quiet=False, hooks=()):
    """The Trainer feeds one batch at a time, so this recipe drives the runner itself, in chunks: up to the next
    evaluation, lr decay point or checkpoint (train.plan), where the pipeline drains. At a chunk's end nothing is in
    flight, so checkpoint.npz (net, optimizers, batch position, RNG, records) resumes it bit-identically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        for name in (METRICS, SUMMARY, CURVES, CHECKPOINT):
            (out_dir / name).unlink(missing_ok=True)
    (x, y), val, test = load_data("mnist", config, images=False)
    from ..data import BatchIterator

    batches = BatchIterator(x, y, config.batch_size, seed=config.seed, drop_last=True)
    if len(batches) == 0:
        raise ValueError(f"mnist-pipeline: batch_size = {config.batch_size} is larger than the {len(y)} training "
                         "images, so an epoch holds no batch")
    schedule = plan(config, len(batches))
    per_epoch, total = schedule.steps_per_epoch, schedule.total_steps
    concurrent = config.runner != "sequential"          # the concurrent and Ray runners: no diagnostics
    net = build_dni_net("fcn", config, x.shape[1:], config.conditioned, schedule=pipelined(),
                        diagnose_every=0 if concurrent else config.diagnose_every).to(config.device)
    if config.runner == "ray":
        from ..dni.ray_runner import RayRunner

        with kernels.use_backend(config.backend):      # the actors take the backend active when they are made
            runner = RayRunner(net, pipelined(), batches, address=config.address or None,
                               checkpoint_every=config.actor_checkpoint_every, reuse_actors=False)
    else:
        runner_cls = ConcurrentRunner if concurrent else Runner
        runner = runner_cls(net, pipelined(), batches, diagnose_every=0 if concurrent else config.diagnose_every)
    records, history, step, wall0 = [], [{"event": "started", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}], 0, 0.0
    totals = {}                                          # the divergence check's reference
    if resume:
        meta, state = read_checkpoint(out_dir / CHECKPOINT)
        if meta.get("experiment") != "mnist-pipeline":
            raise CheckpointError(f"resume: {out_dir / CHECKPOINT} is a checkpoint of {meta.get('experiment')}, "
                                  "not of mnist-pipeline")
        check_state(state, net.state_dict(), out_dir / CHECKPOINT)
        if meta["step"] > total:
            raise CheckpointError(f"resume: {out_dir / CHECKPOINT} is at step {meta['step']}, beyond the {total} "
                                  "steps this config asks for")
        net.load_state_dict(state)
        batches.load_state_dict(meta["batches"])
        set_rng_state(meta["rng"])
        runner.n_fed = step = meta["step"]
        records, totals, wall0 = meta["records"], meta["totals"], meta["wall_time_s"]
        changes = {k: [meta["config"].get(k), v] for k, v in config.to_dict().items() if meta["config"].get(k, v) != v}
        history = meta.get("history", []) + [{"event": "extended" if changes.keys() & {"steps", "epochs"} else
                                              "resumed", "at_step": step,
                                              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                              **({"changes": changes} if changes else {})}]
    (out_dir / METRICS).write_text("".join(json.dumps(r) + "\n" for r in records))
    (out_dir / CONFIG).write_text(to_toml(config, header="mnist-pipeline: the settings of this run"))
    t0 = time.perf_counter() - wall0
    state_for_hooks = _PipelineState(out_dir)

    def write(rec):
        records.append(rec)
        with open(out_dir / METRICS, "a") as fh:
            fh.write(json.dumps(rec) + "\n")

    def save():
        write_checkpoint(out_dir / CHECKPOINT, net.state_dict(),
                         {"experiment": "mnist-pipeline", "step": step, "batches": batches.state_dict(),
                          "rng": rng_state(), "records": records, "totals": totals, "config": config.to_dict(),
                          "wall_time_s": time.perf_counter() - t0, "schedule": schedule.to_dict(),
                          "history": history})

    # chunks end at each evaluation, lr decay point and checkpoint: the pipeline drains there
    bounds = set(schedule.eval_steps) | set(schedule.lr_milestones) | {total}
    if schedule.lr_every:
        bounds |= set(range(schedule.lr_every, total, schedule.lr_every))
    if config.checkpoint_every:
        bounds |= set(range(config.checkpoint_every, total, config.checkpoint_every))
    bounds = sorted(b for b in bounds if step < b <= total)
    lr = schedule.lr_at(step, config.lr, config.lr_gamma)
    bar = Progress(total, initial=step, desc="mnist-pipeline", enabled=show_bar(quiet), leave=not is_nested())
    say = (lambda text: None) if quiet else bar.write
    if resume:
        say(f"resumed {out_dir} at step {step}")
    in_chunk, faults_seen = False, 0
    with kernels.use_backend(config.backend), GracefulInterrupt(say) as interrupt:
        try:
            for end in bounds:
                lr = schedule.lr_at(step, config.lr, config.lr_gamma)
                net.set_lr(lr)
                t_chunk, in_chunk = time.perf_counter(), True
                runner.run(end - step)
                in_chunk = False
                seconds = time.perf_counter() - t_chunk
                for fault in getattr(runner, "faults", [])[faults_seen:]:                # a Ray actor died
                    history.append({"event": "restored", "at_step": end, **fault})
                    say(f"the actor of module {fault['module']} died; restored from batch "
                        f"{fault['restored_to_batch']}")
                faults_seen = len(getattr(runner, "faults", []))
                log = sorted(runner.log, key=lambda r: r["batch"])
                for r in log:
                    check_divergence(totals, r["loss"], config.diverge_factor, r["batch"] + 1, "mnist-pipeline")
                n = sum(r["n"] for r in log)
                train_rec = record("train", end, per_epoch, sum(r["loss"] * r["n"] for r in log) / n,
                                   sum(r["correct"] for r in log) / n, lr, time.perf_counter() - t0,
                                   samples_per_s=round(n / seconds, 1))
                write(train_rec)
                runner.log.clear(), runner.synth_log.clear()
                for d in runner.diagnostics:
                    write({"step": d["batch"] + 1, "epoch": round((d["batch"] + 1) / per_epoch, 4),
                           "split": DIAGNOSTIC_SPLIT, **{k: d[k] for k in ("module", "cos", "rel_err",
                                                                          "norm_synthetic", "norm_true")}})
                runner.diagnostics.clear()
                step = end
                if step in schedule.eval_steps or step == total:
                    ev = net.evaluate(*val)
                    write(record("val", step, per_epoch, ev["loss"], ev["accuracy"], lr, time.perf_counter() - t0))
                    say(f"step {step} (epoch {step / per_epoch:.2f}): val error {100 * (1 - ev['accuracy']):.2f}%")
                if step == total or (config.checkpoint_every and step % config.checkpoint_every == 0):
                    save()
                bar.update(step, f"loss {train_rec['loss']:.4f} acc {100 * train_rec['accuracy']:.2f}%")
                state_for_hooks.step = step
                for hook in hooks:
                    hook(state_for_hooks)
                if interrupt.requested:
                    raise KeyboardInterrupt
            test_ev = net.evaluate(*test)
            write(record("test", step, per_epoch, test_ev["loss"], test_ev["accuracy"], lr, time.perf_counter() - t0))
        except KeyboardInterrupt:
            if in_chunk:                               # a second Ctrl-C inside a chunk: batches were in flight
                say(f"interrupted inside a chunk; {out_dir / CHECKPOINT} is left as it was")
            else:                                      # a chunk ends drained: this state resumes exactly
                save()
                say(f"interrupted after step {step}: saved {out_dir / CHECKPOINT}")
            raise
        except Diverged as err:
            summary = {"experiment": "mnist-pipeline", "status": "diverged", "diverged": err.info, "steps": step,
                       "config": config.to_dict(), "history": history, "backend": config.backend}
            (out_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
            raise
        finally:
            bar.close()
            if concurrent:
                runner.close()
    wall = time.perf_counter() - t0
    plot_curves(records, out_dir / CURVES, title="mnist-pipeline")
    draw_trace_window(runner.trace, config.timeline_batches, len(net), out_dir / TIMELINE,
                      f"mnist-pipeline ({config.runner} runner)")
    draw_schedule(pipelined(), config.timeline_batches, len(net), out_dir / SCHEDULE_TIMELINE, config.target)
    files = {"metrics": METRICS, "curves": CURVES, "timeline": TIMELINE, "schedule": SCHEDULE_TIMELINE,
             "checkpoint": CHECKPOINT}
    extra = {}
    if any(r["split"] == DIAGNOSTIC_SPLIT for r in records):
        plot_synthetic_gradients(records, out_dir / SYNTH_PLOT, title="mnist-pipeline: g_hat vs dL/dh")
        extra["synthetic_grad"] = synthetic_grad_summary(records)
        files["synthetic_grad"] = SYNTH_PLOT
    vals = [r for r in records if r["split"] == "val"]
    best = min(vals, key=lambda r: (-r["accuracy"], r["step"]))
    summary = {"experiment": "mnist-pipeline", "status": "finished", "steps": step, "epochs": round(step / per_epoch, 3),
               "val_error": 1 - vals[-1]["accuracy"], "test_error": 1 - test_ev["accuracy"],
               "best_val_error": 1 - best["accuracy"], "best_val_step": best["step"], "wall_time_s": round(wall, 2),
               "runner": config.runner, "utilisation": {str(k): round(v, 3)
                                                        for k, v in runner.trace.utilisation().items()},
               "seconds_by_kind": {k: round(v, 2) for k, v in runner.trace.by_kind().items()},
               "backend": config.backend, "config": config.to_dict(), "schedule": schedule.to_dict(),
               "history": history, "versions": versions(), "files": files, **extra}
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# ---- mnist-unlock ----------------------------------------------------------------------------------------------------
@dataclass
class UnlockConfig(CdniFcnConfig):
    conditioned: bool = param(True, "cDNI synthesizers (the label as input)")
    # I_j(x) with one hidden layer of 1024 (batch norm, ReLU): 1.82% validation error against 5.44% for a linear map of
    # the pixels, whose regression onto a ReLU layer's output stalls (docs/results-mnist.md).
    input_hidden: tuple[int, ...] = param((1024,), "hidden widths of each synthetic-input model I_j(x) (): linear",
                                          ge=1)
    timeline_batches: int = param(6, "draw this many batches of the run (from batch 20 on) in timeline.png", ge=1)


@register("mnist-unlock", "MNIST FCN, complete unlock: synthetic inputs I_j(x) and cDNI, every layer on batch b at "
                          "once (Sec. 2.3, 3.4)", UnlockConfig)
def run_unlock(config, out_dir, *, resume=False, quiet=False, hooks=()):
    net = build_dni_net("fcn", config, (784,), config.conditioned, schedule=unlocked())
    add_synthetic_inputs(net, 784, hidden=config.input_hidden, rng=np.random.default_rng(config.seed + 1))
    summary = train("mnist-unlock", "mnist", "fcn", "cdni" if config.conditioned else "dni", config, out_dir,
                    resume=resume, quiet=quiet, hooks=hooks, learner=net)
    out_dir = Path(out_dir)
    draw_trace_window(net.runner().trace, config.timeline_batches, len(net), out_dir / TIMELINE,
                      "mnist-unlock (sequential runner)")
    draw_schedule(unlocked(), config.timeline_batches, len(net), out_dir / SCHEDULE_TIMELINE, config.target)
    return add_to_summary(out_dir, files={**summary["files"], "timeline": TIMELINE, "schedule": SCHEDULE_TIMELINE})

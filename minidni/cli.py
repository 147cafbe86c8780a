"""The `minidni` command: list, show, run and report the experiments of the registry (minidni.experiments).

    minidni list                                          the experiments, one line each
    minidni show mnist-fcn-bprop --layers 4               the full config, as TOML (save it, edit it, pass --config)
    minidni run mnist-fcn-bprop --layers 3 --out runs/bprop3
    minidni run mnist-fcn-bprop --out runs/bprop3 --resume                 continue an interrupted run
    minidni run mnist-fcn-bprop --out runs/bprop3 --resume --extend --epochs 30     train a run for longer
    minidni report runs/                                  the summary table of every run below runs/
    minidni table mnist --layers 3 4 --epochs 20          Table 1's MNIST grid, run or collected, beside the paper

Settings are applied in this order, later ones winning: the experiment's defaults, the saved config.toml of the run
(with --resume), --config FILE, --set KEY=VALUE, then the named flags (--lr, --layers, ...). A wrong name or value
stops with a message that lists the valid choices, and exit code 2.

A resumed run uses exactly its saved settings: a flag that would change one is refused, naming each (only where the
data lives, --data-dir / --no-verify, and --checkpoint-every may change). Training a run for longer is the explicit
--extend (with --steps or --epochs); summary.json's `history` records it, and the lr decay points the run already
passed stay where they were (config.toml then lists them as lr_milestones).

Errors end in one line on stderr and a non-zero exit code (2: a setting or a command line, 1: the data, the files, the
run itself; 130: Ctrl-C). --debug, or the environment variable MINIDNI_DEBUG=1, shows the traceback as well.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

from . import __version__, kernels
from .config import ConfigError, load_toml, override, parse_value, to_toml
from .experiments import get, names
from .results import format_report
from .train import CHECKPOINT, CONFIG, RESUME_SAFE, SUMMARY, Diverged, read_checkpoint

# named flags -> config fields; each is applied only when given (default None)
FLAGS = {
    "steps": dict(type=int, metavar="N", help="train N steps (instead of epochs)"),
    "epochs": dict(type=int, metavar="N", help="train N passes over the training set"),
    "batch_size": dict(type=int, metavar="N", help="examples per training step"),
    "lr": dict(type=float, metavar="X", help="learning rate"),
    "seed": dict(type=int, metavar="N", help="seed of initialisation and batch order"),
    "backend": dict(choices=("numba", "numpy"), help="kernel backend"),
    "device": dict(choices=("cpu", "cuda"), help="where tensors live and ops run (cuda: an NVIDIA GPU)"),
    "layers": dict(type=int, metavar="N", help="number of layers (mnist-fcn-*: 3..6)"),
    "T": dict(type=int, metavar="N", help="truncation window of BPTT (copy-*, repeat-copy-*, ptb-*)"),
    "checkpoint_every": dict(type=int, metavar="N", help="save a checkpoint every N steps (0: end and Ctrl-C only)"),
    "runner": dict(choices=("sequential", "concurrent", "ray"), help="how mnist-pipeline runs its schedule (ray: "
                                                                     "a Ray actor per module, docs/distributed.md)"),
    "address": dict(metavar="HOST:PORT", help="with --runner ray: the Ray cluster's head (default: a local Ray)"),
    "data_dir": dict(metavar="DIR", help="folder holding the data set files"),
}
# settings that may change on --resume (train.RESUME_SAFE: where the data are, how often to checkpoint) and, with
# --extend, the length of the run
EXTEND = {"steps", "epochs"}


def _add_config_flags(parser):
    parser.add_argument("name", choices=names(), metavar="NAME", help="experiment: " + ", ".join(names()))
    parser.add_argument("--config", metavar="FILE", help="TOML file of settings (key = value lines)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="set any setting, e.g. --set lr_gamma=0.5 (repeatable; see `minidni show NAME`)")
    for field, kwargs in FLAGS.items():
        parser.add_argument("--" + field.replace("_", "-"), dest=field, default=None, **kwargs)
    parser.add_argument("--no-verify", dest="no_verify", action="store_true",
                        help="do not check the data files' SHA-256 (sets verify_data = false)")


def _add_debug_flag(parser, default):
    parser.add_argument("--debug", action="store_true", default=default,
                        help="on an error, show the traceback as well (or set MINIDNI_DEBUG=1)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="minidni", description="Train and report the experiments of Decoupled Neural Interfaces "
                                    "(Jaderberg et al. 2016) on the minidni engine.")
    parser.add_argument("--version", action="version", version=f"minidni {__version__}")
    _add_debug_flag(parser, False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = sub.add_parser("list", help="list the experiments, one line each")
    _add_debug_flag(listing, argparse.SUPPRESS)

    show = sub.add_parser("show", help="print an experiment's full config as TOML")
    _add_config_flags(show)
    _add_debug_flag(show, argparse.SUPPRESS)

    run = sub.add_parser("run", help="train an experiment",
                         description="Train an experiment; writes metrics.jsonl, summary.json, curves.png, "
                                     "config.toml and checkpoint.npz into --out.")
    _add_config_flags(run)
    run.add_argument("--out", metavar="DIR", help="output folder (default: runs/NAME/<date-time>)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its checkpoint, with exactly its saved settings")
    run.add_argument("--extend", action="store_true",
                     help="with --resume: train the run for longer (give --steps or --epochs); recorded in "
                          "summary.json's history")
    run.add_argument("--quiet", action="store_true", help="no progress bar and no final message")
    _add_debug_flag(run, argparse.SUPPRESS)

    report = sub.add_parser("report", help="summary table of the runs in a folder (and its subfolders)")
    report.add_argument("dir", metavar="DIR", help="a run folder, or a folder holding run folders")
    _add_debug_flag(report, argparse.SUPPRESS)

    sample = sub.add_parser("sample", help="text generated by a trained character model (a ptb-* run folder)",
                            description="Reads RUN_DIR/best.npz (the best validation's parameters and the vocabulary) "
                                        "and draws characters one at a time from the model.")
    sample.add_argument("run_dir", metavar="RUN_DIR", help="the folder of a ptb-* run")
    sample.add_argument("--chars", type=int, default=300, metavar="N", help="characters to generate (default 300)")
    sample.add_argument("--temperature", type=float, default=1.0, metavar="X",
                        help="divide the logits by X before the softmax: < 1 safer, > 1 wilder (default 1)")
    sample.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the draws (default 0)")
    sample.add_argument("--prime", default="", metavar="TEXT", help="text the model reads first (its characters "
                        "must be in the vocabulary); the output continues it")
    _add_debug_flag(sample, argparse.SUPPRESS)

    from .table import DATASETS, METHODS, NETS
    from .table_rnn import METHODS as COPY_METHODS

    table = sub.add_parser("table", help="run or collect the paper's MNIST FCN or CNN grid and print it beside Table 1",
                           description="Each cell is a run of mnist-NET-METHOD in DIR/METHOD-LAYERS/; finished runs "
                                       "are reused, interrupted ones resumed. Writes DIR/table.json and table.md.")
    table.add_argument("dataset", choices=DATASETS + ("copy", "rnn"), metavar="DATASET",
                       help="data set: " + ", ".join(DATASETS) + ", copy (Table 2's Copy / Repeat Copy grid, "
                            "minidni/table_rnn.py), or rnn (Copy, Repeat Copy and PTB)")
    table.add_argument("--net", choices=NETS, default="fcn", help="mnist: the FCN rows (default) or the CNN rows "
                       "(mnist-cnn-*, layers 3 and 4; default --out runs/table-mnist-cnn)")
    table.add_argument("--layers", type=int, nargs="+", default=None, metavar="N",
                       help="layer counts (FCN 3..6, the default all four; CNN 3 and 4)")
    table.add_argument("--methods", nargs="+", default=None, choices=METHODS + COPY_METHODS, metavar="M",
                       help="methods: " + ", ".join(METHODS) + " (copy: " + ", ".join(COPY_METHODS) + ")")
    table.add_argument("--T", dest="T", type=int, nargs="+", metavar="T", help="copy: truncation windows (default: "
                       "BPTT 2 3 4 5 8, DNI 2 3 4 5)")
    table.add_argument("--tasks", nargs="+", default=None, choices=("copy", "repeat-copy", "ptb"),
                       metavar="TASK", help="copy: the tasks (copy, repeat-copy); rnn: also ptb (default: all)")
    table.add_argument("--copy-out", metavar="DIR", help="rnn: folder of the Copy grid's runs (default: "
                       "runs/table-copy; --out is then the PTB runs' folder, default runs/table-ptb)")
    table.add_argument("--out", metavar="DIR", help="folder of the grid's runs (default: runs/table-DATASET)")
    mode = table.add_mutually_exclusive_group()
    mode.add_argument("--run", dest="run", action="store_true", default=True,
                      help="train the cells that have no result yet, then print (the default)")
    mode.add_argument("--collect", dest="run", action="store_false", help="only read the runs that exist")
    table.add_argument("--epochs", type=int, metavar="N", help="budget: N epochs per run (lr decay at 1/2 and 3/4)")
    table.add_argument("--steps", type=int, metavar="N", help="budget: N steps per run (lr decay at 1/2 and 3/4)")
    table.add_argument("--batch-size", type=int, metavar="N", help="examples per training step")
    table.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="set a setting in every run that has it, e.g. --set synth_lr=1e-6")
    table.add_argument("--verbose", action="store_true", help="also print each run's evaluations")
    table.add_argument("--quiet", action="store_true", help="no progress bars (only the table)")
    _add_debug_flag(table, argparse.SUPPRESS)
    return parser


def make_config(args, experiment, base=None):
    """The experiment's config with, in order, --config FILE, --set KEY=VALUE and the named flags applied."""
    cfg = base if base is not None else experiment.config()
    if args.config:
        cfg = override(cfg, load_toml(args.config), source=args.config)
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. --set lr_gamma=0.5")
        cfg = override(cfg, {key.strip(): parse_value(value.strip())}, source=f"--set {item}")
    flags = {f: getattr(args, f) for f in FLAGS if getattr(args, f) is not None}
    if "epochs" in flags and "steps" not in flags:
        flags["steps"] = 0  # --epochs alone means: train by epochs, even if a file set steps
    if getattr(args, "no_verify", False):
        if "verify_data" not in cfg.to_dict():
            raise ConfigError(f"--no-verify: {experiment.name} checks no data file hashes (it has no verify_data "
                              "setting)")
        flags["verify_data"] = False
    return override(cfg, flags, source="command line")


def cmd_list(args, parser):
    width = max(len(n) for n in names())
    for name in names():
        print(f"{name:<{width}}  {get(name).description}")
    return 0


def cmd_show(args, parser):
    experiment = get(args.name)
    cfg = make_config(args, experiment)
    print(to_toml(cfg, header=f"{experiment.name}: {experiment.description}\n"
                              f"Save as FILE, edit, then: minidni run {experiment.name} --config FILE"), end="")
    return 0


def saved_files(out):
    """The checkpoint.npz and summary.json files at or below `out`: what a run has saved (a comparison: in sub-runs)."""
    out = Path(out)
    if not out.is_dir():
        return []
    return sorted(p for name in (CHECKPOINT, SUMMARY) for p in out.rglob(name))


def saved_experiment(out):
    """The experiment whose run is in `out`, from the first line of its config.toml ("# NAME: ..."); None if unknown."""
    path = Path(out) / CONFIG
    if not path.is_file():
        return None
    first = path.read_text(errors="replace").split("\n", 1)[0]
    return first[1:].split(":", 1)[0].strip() if first.startswith("#") and ":" in first else None


def _differences(old, new, keys=None):
    return [k for k, v in new.to_dict().items() if (keys is None or k in keys) and old.to_dict().get(k) != v]


def freeze_lr_schedule(cfg, out):
    """For --extend: the lr decay points the run had (from its checkpoint's schedule), as absolute lr_milestones, so
    that a longer run does not move the decays it has already made (fractions of the run would)."""
    if cfg.lr_decay_every or cfg.lr_milestones or not cfg.lr_decay_at:
        return cfg
    meta, _ = read_checkpoint(out / CHECKPOINT)
    planned = meta.get("schedule") or {}
    milestones = planned.get("lr_milestones")
    if milestones is None:
        raise ConfigError(f"--extend: {out / CHECKPOINT} does not say where its lr decayed (an older checkpoint); "
                          "start a new, longer run instead")
    return override(cfg, {"lr_decay_at": (), "lr_milestones": tuple(milestones)}, source="--extend")


def check_resume(args, experiment, out, cfg, saved_cfg):
    """ConfigError unless `cfg` (saved settings + this command line) keeps every saved setting that must not change."""
    allowed = RESUME_SAFE | (EXTEND if args.extend else set())
    changed = [k for k in _differences(saved_cfg, cfg) if k not in allowed]
    if changed:
        what = "; ".join(f"{k} = {saved_cfg.to_dict()[k]!r} -> {cfg.to_dict()[k]!r}" for k in changed)
        extend = " (to train longer: --resume --extend --steps N)" if set(changed) <= EXTEND else ""
        raise ConfigError(f"--resume continues the run in {out} with exactly its saved settings, but this command "
                          f"line changes {what}. Drop {'this flag' if len(changed) == 1 else 'these flags'}{extend}, "
                          "or start a new run with another --out")
    if args.extend:
        if not _differences(saved_cfg, cfg, EXTEND):
            raise ConfigError(f"--extend: give the longer length, --steps N or --epochs N (the run has steps = "
                              f"{saved_cfg.steps}, epochs = {saved_cfg.epochs})")
        if not (out / CHECKPOINT).is_file():
            raise ConfigError(f"--extend: {experiment.name} in {out} is made of sub-runs with no checkpoint of its "
                              "own; it cannot be extended: start a new run with the longer --steps / --epochs")
        cfg = freeze_lr_schedule(cfg, out)
    return cfg


def resume_config(args, experiment, out):
    """The saved config of the run in `out` (its config.toml), checked to belong to `experiment`."""
    if not args.out:
        raise ConfigError("--resume needs --out DIR: the folder of the run to continue")
    if not saved_files(out):
        raise ConfigError(f"--resume: nothing was saved in {out} (no {CHECKPOINT} or {SUMMARY}), so there is "
                          "nothing to continue; drop --resume to start a new run there")
    owner = saved_experiment(out)
    if owner and owner != experiment.name:
        raise ConfigError(f"--resume: {out} holds a run of {owner}, not of {experiment.name}; continue it with: "
                          f"minidni run {owner} --out {out} --resume")
    if not (out / CONFIG).is_file():
        raise ConfigError(f"--resume: {out} has no {CONFIG}, so its settings are unknown; start a new run instead")
    try:
        return override(experiment.config(), load_toml(out / CONFIG), source=str(out / CONFIG))
    except ConfigError as err:
        first = str(err).split("\n", 1)[0]
        raise ConfigError(f"--resume: the saved settings do not fit {experiment.name}: {first}") from None


def cmd_run(args, parser):
    experiment = get(args.name)
    out = Path(args.out) if args.out else Path("runs") / args.name / time.strftime("%Y%m%d-%H%M%S")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder (it is created when missing)")
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: the folder {existing} is not writable; choose another --out")
    if args.extend and not args.resume:
        raise ConfigError("--extend goes with --resume: minidni run NAME --out DIR --resume --extend --steps N")
    if args.resume:
        saved_cfg = resume_config(args, experiment, out)
        cfg = check_resume(args, experiment, out, make_config(args, experiment, saved_cfg), saved_cfg)
    else:
        if saved_files(out):
            raise ConfigError(f"{out} already holds a run; add --resume to continue it, or choose another --out")
        cfg = make_config(args, experiment)
    if getattr(cfg, "device", "cpu") != "cpu":  # say it now, not after the data are loaded: DeviceUnavailable
        from .device import get_device

        get_device(cfg.device)

    try:
        summary = experiment.run(cfg, out, resume=args.resume, quiet=args.quiet)
    except KeyboardInterrupt:
        if saved_files(out):
            print(f"\ninterrupted. Continue with: minidni run {args.name} --out {out} --resume", file=sys.stderr)
        else:
            print(f"\ninterrupted before anything was saved in {out}; start again with: {_command_line(args)}",
                  file=sys.stderr)
        return 130
    except Diverged as err:
        kept = [str(p) for p in saved_files(out) if p.name == CHECKPOINT]
        keep = f"the last good checkpoint is kept ({kept[0]})" if kept else "no checkpoint was saved before it"
        print(f"minidni run: error: {err}; stopped, {keep}, summary.json says \"diverged\". Try a lower --lr",
              file=sys.stderr)
        return 1
    if not args.quiet:
        errors = ", ".join(f"{s} error {100 * summary[f'{s}_error']:.2f}%" for s in ("val", "test")
                           if summary.get(f"{s}_error") is not None)
        if summary.get("test_bpc") is not None:       # a character model (ptb-*): bits per character
            errors = (f"test {summary['test_bpc']:.3f} bits per character at the best validation "
                      f"({summary['best_val_bpc']:.3f}),")
        print(f"{experiment.name}: {errors + ' after' if errors else 'finished'} {summary['steps']} steps "
              f"({summary['epochs']:g} epochs) in {summary['wall_time_s']:.1f} s on {summary['backend']}")
        files = sorted(set(summary.get("files", {}).values()) | {SUMMARY, CONFIG})
        print(f"wrote {out}/: {', '.join(files)}")
    return 0


def cmd_report(args, parser):
    try:
        print(format_report(args.dir))
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    return 0


def cmd_sample(args, parser):
    from .experiments.ptb import sample_run

    if args.chars < 0 or not args.temperature > 0:
        raise ConfigError(f"sample: --chars must be >= 0 and --temperature > 0; got {args.chars}, {args.temperature}")
    try:
        text = sample_run(args.run_dir, chars=args.chars, temperature=args.temperature, seed=args.seed,
                          prime=args.prime)
    except ValueError as err:
        raise ConfigError(str(err).removeprefix("sample: ")) from None
    print(args.prime + text)
    return 0


def cmd_table(args, parser):
    from .table import METHODS, table

    if args.dataset == "copy":
        return _cmd_table_copy(args, args.out or "runs/table-copy")
    if args.dataset == "rnn":
        return _cmd_table_rnn(args)
    args.methods = args.methods or list(METHODS)
    try:
        table(args.dataset, layers=args.layers, methods=args.methods, out=args.out, run=args.run, epochs=args.epochs,
              steps=args.steps, batch_size=args.batch_size, sets=args.set, quiet=not args.verbose,
              progress=not args.quiet, net=args.net)
    except KeyboardInterrupt:
        print(f"\ninterrupted. Continue with: {_command_line(args)}  (finished cells are kept, the interrupted one "
              "resumes from its checkpoint)", file=sys.stderr)
        return 130
    return 0


def _cmd_table_copy(args, out):
    """`minidni table copy`: Table 2's Copy / Repeat Copy grid (minidni/table_rnn.py)."""
    from .table_rnn import METHODS, table_copy

    try:
        table_copy(tasks=args.tasks or ["copy", "repeat-copy"], methods=args.methods or METHODS, Ts=args.T, out=out, run=args.run,
                   steps=args.steps, sets=args.set, quiet=not args.verbose)
    except KeyboardInterrupt:
        print("\ninterrupted. Run the same command again: finished cells are kept, the interrupted one resumes from "
              "its checkpoint", file=sys.stderr)
        return 130
    return 0


def _cmd_table_rnn(args):
    """`minidni table rnn`: Table 2's Copy, Repeat Copy and PTB rows (minidni/table_rnn.py)."""
    from .table_rnn import METHODS, RNN_TASKS, table_rnn

    try:
        table_rnn(tasks=args.tasks or RNN_TASKS, methods=args.methods or METHODS, Ts=args.T, copy_out=args.copy_out,
                  ptb_out=args.out, run=args.run, steps=args.steps, sets=args.set, quiet=not args.verbose)
    except KeyboardInterrupt:
        print("\ninterrupted. Run the same command again: finished cells are kept, the interrupted one resumes from "
              "its checkpoint", file=sys.stderr)
        return 130
    return 0


def _command_line(args):
    """The command as the user typed it (to repeat it)."""
    return shlex.join(["minidni", *(sys.argv[1:] if args.argv is None else args.argv)])


COMMANDS = {"list": cmd_list, "show": cmd_show, "run": cmd_run, "report": cmd_report, "table": cmd_table,
            "sample": cmd_sample}


def one_line(err):
    """An exception as one line of text: its message with line breaks folded, or its kind when it has none."""
    if isinstance(err, MemoryError):
        what = " ".join(str(err).split()) or "an array did not fit"
        return (f"out of memory: {what}. The settings need more memory than this machine has; choose smaller ones "
                "(e.g. --set hidden=N, --batch-size N)")
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.strerror}: {err.filename}" + (" (is the output folder writable?)"
                                                    if isinstance(err, PermissionError) else "")
    text = " ".join(str(err).split())
    return text or type(err).__name__


def main(argv=None):
    """Entry point of the `minidni` console script; returns the exit code (argparse exits with 2 on bad usage).

    Every error ends in one line on stderr (see the module docstring); --debug or MINIDNI_DEBUG=1 adds the traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    debug = getattr(args, "debug", False) or os.environ.get("MINIDNI_DEBUG", "").strip() not in ("", "0")
    try:
        kernels.check_environment()
        return COMMANDS[args.command](args, parser)
    except ConfigError as err:
        if debug:
            traceback.print_exc()
        parser.exit(2, f"minidni {args.command}: error: {err}\n")
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"\nminidni {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the command line shows every failure as one line
        if debug:
            traceback.print_exc()
        print(f"minidni {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 1

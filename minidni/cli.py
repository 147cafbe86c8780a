"""The `minidni` command: list, show, run and report the experiments of the registry (minidni.experiments).

    minidni list                                          the experiments, one line each
    minidni show mnist-fcn-bprop --layers 4               the full config, as TOML (save it, edit it, pass --config)
    minidni run mnist-fcn-bprop --layers 3 --out runs/bprop3
    minidni run mnist-fcn-bprop --out runs/bprop3 --resume --epochs 30     continue a run (here: for longer)
    minidni report runs/                                  the summary table of every run below runs/
    minidni table mnist --layers 3 4 --epochs 20          Table 1's MNIST grid, run or collected, beside the paper

Settings are applied in this order, later ones winning: the experiment's defaults, the saved config.toml of the run
(with --resume), --config FILE, --set KEY=VALUE, then the named flags (--lr, --layers, ...). A wrong name or value
stops with a message that lists the valid choices, and exit code 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import __version__
from .config import ConfigError, load_toml, override, parse_value, to_toml
from .experiments import get, names
from .results import format_report
from .train import CHECKPOINT, CONFIG, METRICS, SUMMARY

# named flags -> config fields; each is applied only when given (default None)
FLAGS = {
    "steps": dict(type=int, metavar="N", help="train N steps (instead of epochs)"),
    "epochs": dict(type=int, metavar="N", help="train N passes over the training set"),
    "batch_size": dict(type=int, metavar="N", help="examples per training step"),
    "lr": dict(type=float, metavar="X", help="learning rate"),
    "seed": dict(type=int, metavar="N", help="seed of initialisation and batch order"),
    "backend": dict(choices=("numba", "numpy"), help="kernel backend"),
    "layers": dict(type=int, metavar="N", help="number of layers (mnist-fcn-*: 3..6)"),
    "checkpoint_every": dict(type=int, metavar="N", help="save a checkpoint every N steps (0: end and Ctrl-C only)"),
    "data_dir": dict(metavar="DIR", help="folder holding the data set files"),
}
# settings that may change on --resume without changing the trajectory of the run
RESUME_SAFE = {"steps", "epochs", "checkpoint_every", "log_every", "eval_every", "eval_test", "eval_batch_size",
               "data_dir"}


def _add_config_flags(parser):
    parser.add_argument("name", choices=names(), metavar="NAME", help="experiment: " + ", ".join(names()))
    parser.add_argument("--config", metavar="FILE", help="TOML file of settings (key = value lines)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="set any setting, e.g. --set lr_gamma=0.5 (repeatable; see `minidni show NAME`)")
    for field, kwargs in FLAGS.items():
        parser.add_argument("--" + field.replace("_", "-"), dest=field, default=None, **kwargs)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="minidni", description="Train and report the experiments of Decoupled Neural Interfaces "
                                    "(Jaderberg et al. 2016) on the minidni engine.")
    parser.add_argument("--version", action="version", version=f"minidni {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("list", help="list the experiments, one line each")

    show = sub.add_parser("show", help="print an experiment's full config as TOML")
    _add_config_flags(show)

    run = sub.add_parser("run", help="train an experiment",
                         description="Train an experiment; writes metrics.jsonl, summary.json, curves.png, "
                                     "config.toml and checkpoint.npz into --out.")
    _add_config_flags(run)
    run.add_argument("--out", metavar="DIR", help="output folder (default: runs/NAME/<date-time>)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.npz")
    run.add_argument("--quiet", action="store_true", help="no progress line and no final message")

    report = sub.add_parser("report", help="summary table of the runs in a folder (and its subfolders)")
    report.add_argument("dir", metavar="DIR", help="a run folder, or a folder holding run folders")

    from .table import DATASETS, METHODS

    table = sub.add_parser("table", help="run or collect the paper's MNIST FCN grid and print it beside Table 1",
                           description="Each cell is a run of mnist-fcn-METHOD in DIR/METHOD-LAYERS/; finished runs "
                                       "are reused, interrupted ones resumed. Writes DIR/table.json and table.md.")
    table.add_argument("dataset", choices=DATASETS, metavar="DATASET", help="data set: " + ", ".join(DATASETS))
    table.add_argument("--layers", type=int, nargs="+", default=[3, 4, 5, 6], metavar="N", help="layer counts (3..6)")
    table.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="M",
                       help="methods: " + ", ".join(METHODS))
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
    table.add_argument("--verbose", action="store_true", help="show each run's progress")
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


def cmd_run(args, parser):
    experiment = get(args.name)
    out = Path(args.out) if args.out else Path("runs") / args.name / time.strftime("%Y%m%d-%H%M%S")
    base = experiment.config()
    if args.resume:
        if not args.out:
            raise ConfigError("--resume needs --out DIR: the folder of the run to continue")
        if not (out / CHECKPOINT).is_file():
            raise ConfigError(f"--resume: there is no {CHECKPOINT} in {out}, so there is nothing to continue; "
                              f"drop --resume to start a new run there")
        if (out / CONFIG).is_file():
            base = override(base, load_toml(out / CONFIG), source=str(out / CONFIG))
    elif any((out / name).exists() for name in (CHECKPOINT, METRICS, SUMMARY)):
        raise ConfigError(f"{out} already holds a run; add --resume to continue it, or choose another --out")
    cfg = make_config(args, experiment, base)
    if args.resume:
        changed = [f"{k}: {v!r} -> {cfg.to_dict()[k]!r}" for k, v in base.to_dict().items()
                   if k not in RESUME_SAFE and cfg.to_dict()[k] != v]
        if changed:
            print(f"warning: resuming with changed settings ({'; '.join(changed)}); the result will differ from "
                  "an uninterrupted run", file=sys.stderr)

    try:
        summary = experiment.run(cfg, out, resume=args.resume, quiet=args.quiet)
    except KeyboardInterrupt:
        print(f"\ninterrupted. Continue with: minidni run {args.name} --out {out} --resume", file=sys.stderr)
        return 130
    except FileNotFoundError as err:
        print(f"minidni run: error: {err}", file=sys.stderr)
        return 1
    if not args.quiet:
        errors = ", ".join(f"{s} error {100 * summary[f'{s}_error']:.2f}%" for s in ("val", "test")
                           if summary.get(f"{s}_error") is not None)
        print(f"{experiment.name}: {errors} after {summary['steps']} steps ({summary['epochs']:g} epochs) "
              f"in {summary['wall_time_s']:.1f} s on {summary['backend']}")
        files = sorted(set(summary.get("files", {}).values()) | {SUMMARY, CONFIG})
        print(f"wrote {out}/: {', '.join(files)}")
    return 0


def cmd_report(args, parser):
    try:
        print(format_report(args.dir))
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    return 0


def cmd_table(args, parser):
    from .table import table

    table(args.dataset, layers=args.layers, methods=args.methods, out=args.out, run=args.run, epochs=args.epochs,
          steps=args.steps, batch_size=args.batch_size, sets=args.set, quiet=not args.verbose)
    return 0


COMMANDS = {"list": cmd_list, "show": cmd_show, "run": cmd_run, "report": cmd_report, "table": cmd_table}


def main(argv=None):
    """Entry point of the `minidni` console script; returns the exit code (argparse exits with 2 on bad usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args, parser)
    except ConfigError as err:
        parser.exit(2, f"minidni {args.command}: error: {err}\n")

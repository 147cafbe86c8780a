"""Reading and showing the results of runs: learning curves as a PNG, and the table that `minidni report` prints.

A run folder holds metrics.jsonl and, once finished, summary.json (see minidni.train). The plots use matplotlib's
object API (`Figure` + the Agg canvas), so drawing a PNG never touches pyplot's global state or needs a display.
"""
from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

from .train import CHECKPOINT, CURVES, METRICS, SUMMARY

_STYLE = {"train": dict(color="tab:blue", alpha=0.6), "val": dict(color="tab:orange", marker="."),
          "test": dict(color="tab:green", marker="o")}


def read_metrics(path):
    """The records of a metrics.jsonl file (a folder holding one, or the file itself), in order."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def plot_curves(records, path, title=""):
    """Loss (left) and error in % on a log scale (right) against training step, one line per split; saved as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_err = fig.subplots(1, 2)
    for split, style in _STYLE.items():
        rows = [r for r in records if r["split"] == split]
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        ax_loss.plot(steps, [r["loss"] for r in rows], label=split, **style)
        errors = [max(100 * (1 - r["accuracy"]), 1e-2) for r in rows]  # floor: log scale cannot show 0%
        ax_err.plot(steps, errors, label=split, **style)
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_err.set(xlabel="step", ylabel="error (%)", title="error (0% is drawn at 0.01%)", yscale="log")
    for ax in (ax_loss, ax_err):
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return Path(path)


# ---- minidni report --------------------------------------------------------------------------------------------------------
def find_runs(root):
    """Run folders at or below `root`: those holding a summary.json, a metrics.jsonl or a checkpoint.npz."""
    root = Path(root)
    found = set()
    for name in (SUMMARY, METRICS, CHECKPOINT):
        found.update(p.parent for p in root.rglob(name))
    return sorted(found)


COMPARISON_PNG = "comparison.png"   # what a composite run (mnist-dni-compare, mnist-async) draws instead of curves


def load_run(folder):
    """One row of the report: the summary if the run finished (or stopped), else what metrics.jsonl says so far.
    A file that cannot be read makes the row's status "damaged" (with `problem` saying which and why)."""
    folder = Path(folder)
    if (folder / SUMMARY).is_file():
        try:
            summary = json.loads((folder / SUMMARY).read_text())
            if not isinstance(summary, dict):
                raise ValueError(f"expected a JSON object, found {type(summary).__name__}")
        except (OSError, ValueError) as err:
            return _damaged(folder, SUMMARY, err)
        summary["folder"] = folder
        return summary
    try:
        records = read_metrics(folder) if (folder / METRICS).is_file() else []
        vals = [r for r in records if r["split"] == "val"]
        last = records[-1] if records else {}
        row = {"steps": last.get("step", 0), "epochs": last.get("epoch", 0),
               "val_error": 1 - vals[-1]["accuracy"] if vals and "accuracy" in vals[-1] else None, "wall_time_s": last.get("wall_time_s")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return _damaged(folder, METRICS, err)
    return {"folder": folder, "status": "unfinished", "experiment": "", "config": {}, "test_error": None,
            "backend": "", **row}


def _damaged(folder, name, err):
    return {"folder": folder, "status": "damaged", "problem": f"{name}: {type(err).__name__}: {err}",
            "experiment": "", "config": {}, "steps": "", "epochs": "", "val_error": None, "test_error": None,
            "wall_time_s": None, "backend": ""}


def plot_of(run):
    """The PNG a run's row points to: curves.png, or comparison.png for a comparison; None if there is none yet."""
    names = [CURVES, COMPARISON_PNG] + [v for v in (run.get("files") or {}).values()
                                        if isinstance(v, str) and v.endswith(".png")]
    return next((run["folder"] / n for n in names if (run["folder"] / n).is_file()), None)


def _pct(value):
    return "-" if value is None else f"{100 * value:.2f}"


def _clip(text, width):
    """`text` cut to `width` characters, keeping its end (the informative part of a path), marked by '..'."""
    text = str(text)
    return text if len(text) <= width else ".." + text[len(text) - width + 2:]


def _table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells):
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def fit_table(header, rows, width, drop_order=()):
    """The table as text no wider than `width`: columns named in `drop_order` are left out, in that order, until it
    fits; then the first column (the run's folder) is cut, keeping its end. Returns (text, dropped column names)."""
    rows = [[str(c) for c in r] for r in rows]

    def table_width(cols):
        return sum(max(len(x) for x in [header[c], *(r[c] for r in rows)]) for c in cols) + 2 * (len(cols) - 1)

    first = max(len(x) for x in [header[0], *(r[0] for r in rows)])
    if table_width(range(len(header))) > width and first > 28:    # a long folder name goes first (its end stays)
        rows = [[_clip(r[0], 28), *r[1:]] for r in rows]
    cols, dropped = list(range(len(header))), []
    for name in drop_order:
        if table_width(cols) <= width:
            break
        if name in header and header.index(name) in cols:
            cols.remove(header.index(name))
            dropped.append(name)
    excess = table_width(cols) - width
    if excess > 0:
        first = max(len(x) for x in [header[0], *(r[0] for r in rows)])
        keep = max(first - excess, 12)
        rows = [[_clip(r[0], keep), *r[1:]] for r in rows]
    return _table([header[c] for c in cols], [[r[c] for c in cols] for r in rows]), dropped


def format_report(root, width=None):
    """The summary table of every run under `root`, then where each run's plot is. The table is fitted to `width`
    columns (default: the terminal's width), leaving out the least telling columns first."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"report: {root} does not exist")
    width = width or shutil.get_terminal_size((100, 24)).columns
    runs = [load_run(folder) for folder in find_runs(root)]
    if not runs:
        raise FileNotFoundError(f"report: no runs under {root} (a run folder holds {SUMMARY} or {METRICS}); "
                                "start one with: minidni run NAME --out DIR")
    # settings that differ between the runs shown (the ones worth a column), at most four
    skip = {"backend", "checkpoint_every", "log_every", "eval_batch_size", "data_dir", "steps", "epochs"}
    configs = [r.get("config") if isinstance(r.get("config"), dict) else {} for r in runs]
    keys = sorted({k for c in configs for k in c} - skip)
    varying = [k for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1][:4]

    header = ["run", "experiment", *varying, "status", "steps", "epochs", "val err %", "test err %", "wall s",
              "backend"]
    rows = []
    for r, c in zip(runs, configs):
        name = str(r["folder"].relative_to(root)) if r["folder"] != root else root.name
        wall = r.get("wall_time_s")
        rows.append([name, r.get("experiment") or "?", *[_clip(json.dumps(c[k]) if isinstance(c.get(k), list)
                                                              else c.get(k, ""), 16) for k in varying],
                     r.get("status", "finished"), r.get("steps", ""), r.get("epochs", ""), _pct(r.get("val_error")),
                     _pct(r.get("test_error")), "-" if not isinstance(wall, (int, float)) else f"{wall:.1f}",
                     r.get("backend") or "-"])
    text, dropped = fit_table(header, rows, width,
                              drop_order=["backend", "epochs", *reversed(varying), "wall s", "steps", "experiment"])
    lines = [text]
    if dropped:
        lines += textwrap.wrap(f"(left out to fit {width} columns: {', '.join(dropped)})", width=max(width, 40))
    lines += ["", "plots:"]
    for r in runs:
        png = plot_of(r)
        if r.get("status") == "damaged":
            lines.append(f"  {r['folder']}: damaged, {r['problem']}")
        elif png is not None:
            lines.append(f"  {png}")
        else:
            lines.append(f"  {r['folder']}: no plot yet (the run has not finished)")
    return "\n".join(lines)

"""Reading and showing the results of runs: learning curves as a PNG, and the table that `minidni report` prints.

A run folder holds metrics.jsonl and, once finished, summary.json (see minidni.train). The plots use matplotlib's
object API (`Figure` + the Agg canvas), so drawing a PNG never touches pyplot's global state or needs a display.
"""
from __future__ import annotations

import json
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


def load_run(folder):
    """One row of the report: the summary if the run finished, else what metrics.jsonl says so far."""
    folder = Path(folder)
    if (folder / SUMMARY).is_file():
        summary = json.loads((folder / SUMMARY).read_text())
        summary["folder"] = folder
        return summary
    records = read_metrics(folder) if (folder / METRICS).is_file() else []
    vals = [r for r in records if r["split"] == "val"]
    return {"folder": folder, "status": "unfinished", "experiment": "", "config": {},
            "steps": records[-1]["step"] if records else 0, "epochs": records[-1]["epoch"] if records else 0,
            "val_error": 1 - vals[-1]["accuracy"] if vals else None, "test_error": None,
            "wall_time_s": records[-1]["wall_time_s"] if records else None, "backend": ""}


def _pct(value):
    return "-" if value is None else f"{100 * value:.2f}"


def _table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells):
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_report(root):
    """The summary table of every run under `root`, then where each run's plot is."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"report: {root} does not exist")
    runs = [load_run(folder) for folder in find_runs(root)]
    if not runs:
        raise FileNotFoundError(f"report: no runs under {root} (a run folder holds {SUMMARY} or {METRICS}); "
                                "start one with: minidni run NAME --out DIR")
    # settings that differ between the runs shown (the ones worth a column), at most four
    skip = {"backend", "checkpoint_every", "log_every", "eval_batch_size", "data_dir", "steps", "epochs"}
    keys = sorted({k for r in runs for k in r.get("config", {})} - skip)
    varying = [k for k in keys if len({json.dumps(r.get("config", {}).get(k)) for r in runs}) > 1][:4]

    header = ["run", "experiment", *varying, "status", "steps", "epochs", "val err %", "test err %", "wall s",
              "backend"]
    rows = []
    for r in runs:
        name = str(r["folder"].relative_to(root)) if r["folder"] != root else root.name
        wall = r.get("wall_time_s")
        rows.append([name, r.get("experiment") or "?", *[r.get("config", {}).get(k, "") for k in varying],
                     r.get("status", "finished"), r.get("steps", ""), r.get("epochs", ""), _pct(r.get("val_error")),
                     _pct(r.get("test_error")), "-" if wall is None else f"{wall:.1f}", r.get("backend") or "-"])
    lines = [_table(header, rows), "", "plots:"]
    for r in runs:
        png = r["folder"] / CURVES
        lines.append(f"  {png}" if png.is_file() else f"  {r['folder']}: no plot yet (the run has not finished)")
    return "\n".join(lines)

"""`minidni table mnist`: run (or collect) the grid of Table 1's MNIST FCN rows and print it beside the paper's numbers
(Jaderberg et al. 2016, Sec. 3.3, Table 1: % test error after 500k iterations of Adam, batch 256).

    minidni table mnist --layers 3 4 5 6 --out runs/table-mnist --epochs 20        run what is missing, then print
    minidni table mnist --out runs/table-mnist --collect                            only read the runs that exist

Each cell is one run of `mnist-fcn-{method}` in DIR/{method}-{layers}/. A finished run (summary.json) is reused, an
interrupted one resumed, so the command can be stopped and started again. The table is written to DIR/table.json and
DIR/table.md as well.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .config import ConfigError, override, parse_value
from .experiments import get
from .train import CHECKPOINT, SUMMARY

# Table 1 of the paper, MNIST FCN, % test error
PAPER = {"mnist": {3: {"no-bprop": 9.3, "bprop": 2.0, "dni": 1.9, "cdni": 2.2},
                   4: {"no-bprop": 12.6, "bprop": 1.8, "dni": 2.2, "cdni": 1.9},
                   5: {"no-bprop": 16.2, "bprop": 1.8, "dni": 3.4, "cdni": 1.7},
                   6: {"no-bprop": 21.4, "bprop": 1.8, "dni": 4.3, "cdni": 1.6}}}
PAPER_BUDGET = "500k iterations of Adam, batch 256"
METHODS = ("no-bprop", "bprop", "dni", "cdni")
TITLES = {"no-bprop": "No-Bprop", "bprop": "Bprop", "dni": "DNI", "cdni": "cDNI"}
DATASETS = tuple(PAPER)


def budget_overrides(cfg, epochs=None, steps=None, batch_size=None):
    """Settings for a budget: the length of the run, and lr decay (x lr_gamma) moved to 1/2 and 3/4 of it."""
    values = {}
    if batch_size is not None:
        values["batch_size"] = batch_size
    if epochs is None and steps is None:
        return values
    bs = values.get("batch_size", cfg.batch_size)
    per_epoch = (60000 - cfg.validation) // bs
    total = steps if steps else epochs * per_epoch
    values.update(steps=steps or 0, epochs=epochs or cfg.epochs, lr_decay_every=0,
                  lr_milestones=tuple(m for m in sorted({total // 2, 3 * total // 4}) if m >= 1))
    return values


def cell_config(method, layers, budget, sets):
    """The config of one cell: the experiment's defaults, the layer count, the budget, then the --set values that
    this experiment has (a --set no experiment of the grid knows is an error, raised by `table`)."""
    name = f"mnist-fcn-{method}"
    cfg = get(name).config()
    cfg = override(cfg, {"layers": layers}, source="--layers")
    cfg = override(cfg, budget_overrides(cfg, **budget), source="budget flags")
    known = {k: v for k, v in sets.items() if k in cfg.to_dict()}
    return name, override(cfg, known, source="--set")


def parse_sets(items):
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. --set synth_lr=1e-6")
        out[key.strip()] = parse_value(value.strip())
    return out


def collect(out_dir, layers, methods):
    """{(method, layers): summary or None} for the cells of the grid under out_dir."""
    cells = {}
    for n in layers:
        for m in methods:
            path = Path(out_dir) / f"{m}-{n}" / SUMMARY
            cells[(m, n)] = json.loads(path.read_text()) if path.is_file() else None
    return cells


def run_grid(out_dir, layers, methods, budget, sets, quiet=True, say=print):
    """Train every cell that has no summary.json yet (resuming from a checkpoint where there is one)."""
    for n in layers:
        for m in methods:
            folder = Path(out_dir) / f"{m}-{n}"
            if (folder / SUMMARY).is_file():
                continue
            name, cfg = cell_config(m, n, budget, sets)
            resume = (folder / CHECKPOINT).is_file()
            say(f"== {name} --layers {n} -> {folder}{' (resuming)' if resume else ''}")
            t0 = time.perf_counter()
            s = get(name).run(cfg, folder, resume=resume, quiet=quiet)
            say(f"   test error {100 * s['test_error']:.2f}%  ({time.perf_counter() - t0:.0f} s)")


def _pct(summary):
    return None if summary is None or summary.get("test_error") is None else round(100 * summary["test_error"], 2)


def build_table(dataset, cells, layers, methods):
    """The table as data: rows of {layers, method: {measured, paper}} plus the budget each run used."""
    rows = []
    for n in layers:
        row = {"layers": n}
        for m in methods:
            s = cells.get((m, n))
            row[m] = {"measured": _pct(s), "paper": PAPER[dataset][n][m],
                      "val": None if s is None or s.get("val_error") is None else round(100 * s["val_error"], 2),
                      "epochs": None if s is None else s.get("epochs"),
                      "wall_time_s": None if s is None else s.get("wall_time_s")}
        rows.append(row)
    budgets = sorted({f"{s['epochs']:g} epochs ({s['steps']} steps, batch {s['config']['batch_size']})"
                      for s in cells.values() if s is not None})
    return {"dataset": dataset, "what": "% test error, measured (paper)", "paper_budget": PAPER_BUDGET,
            "measured_budget": budgets, "methods": list(methods), "layers": list(layers), "rows": rows,
            "total_wall_time_s": round(sum(s.get("wall_time_s") or 0 for s in cells.values() if s), 1)}


def _cell(c):
    measured = "-" if c["measured"] is None else f"{c['measured']:.2f}"
    return f"{measured} ({c['paper']:.1f})"


def format_table(table, markdown=False):
    methods = table["methods"]
    header = ["layers", *(TITLES[m] for m in methods)]
    rows = [[str(r["layers"]), *(_cell(r[m]) for m in methods)] for r in table["rows"]]
    budget = "; ".join(table["measured_budget"]) or "no runs yet"
    title = (f"MNIST FCN, % test error: measured ({budget}) and, in brackets, the paper's "
             f"({table['paper_budget']}).")
    if markdown:
        lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([title, line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def table(dataset="mnist", layers=(3, 4, 5, 6), methods=METHODS, out=None, run=True, epochs=None, steps=None,
          batch_size=None, sets=(), quiet=True, say=print):
    """Run (if `run`) and collect the grid; print it; write table.json and table.md into `out`. Returns the table."""
    if dataset not in PAPER:
        raise ConfigError(f"table: unknown data set {dataset!r}; choose one of: {', '.join(DATASETS)}")
    bad = [n for n in layers if n not in PAPER[dataset]]
    if bad:
        raise ConfigError(f"table: the paper reports {dataset} with layers {sorted(PAPER[dataset])}; got {bad}")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"table: unknown method {bad[0]!r}; choose from: {', '.join(METHODS)}")
    sets = parse_sets(sets)
    unknown = [k for k in sets if not any(k in get(f"mnist-fcn-{m}").config().to_dict() for m in methods)]
    if unknown:
        raise ConfigError(f"--set {unknown[0]}: none of the experiments {', '.join('mnist-fcn-' + m for m in methods)}"
                          " has this setting (see `minidni show mnist-fcn-dni`)")
    out = Path(out or f"runs/table-{dataset}")
    budget = {"epochs": epochs, "steps": steps, "batch_size": batch_size}
    if run:
        out.mkdir(parents=True, exist_ok=True)
        run_grid(out, layers, methods, budget, sets, quiet=quiet, say=say)
    elif not out.is_dir():
        raise ConfigError(f"table --collect: {out} does not exist; run the grid first (drop --collect)")
    result = build_table(dataset, collect(out, layers, methods), layers, methods)
    (out / "table.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "table.md").write_text(format_table(result, markdown=True))
    say(format_table(result))
    say(f"wrote {out / 'table.json'} and {out / 'table.md'}")
    return result

"""`minidni table mnist`: run (or collect) the grid of Table 1's MNIST rows, FCN or CNN, and print it beside the paper's
numbers (Jaderberg et al. 2016, Sec. 3.3, Table 1: % test error after 500k iterations of Adam, batch 256).

    minidni table mnist --layers 3 4 5 6 --out runs/table-mnist --epochs 20        run what is missing, then print
    minidni table mnist --out runs/table-mnist --collect                            only read the runs that exist
    minidni table mnist --net cnn --layers 3 4 --steps 3000 --batch-size 32          the CNN rows (runs/table-mnist-cnn)

Each cell is one run of `mnist-{net}-{method}` in DIR/{method}-{layers}/. A finished run (summary.json) is reused, an
interrupted one resumed, so the command can be stopped (Ctrl-C) and started again with the same command. The budget
flags set the length of every run; its lr decays at 1/2 and 3/4 of it (lr_decay_at), turned into steps by
minidni.train.plan, as for `minidni run`. While it runs, a bar counts the cells and the running cell's bar its steps.
The table is written to DIR/table.json and DIR/table.md as well.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from .config import ConfigError, load_toml, override, parse_value
from .experiments import get
from .progress import Progress, nested
from .train import CHECKPOINT, CONFIG, RESUME_SAFE, SUMMARY, Diverged

# Table 1 of the paper, MNIST, % test error: the FCN rows, and the CNN rows by net
PAPER = {"mnist": {3: {"no-bprop": 9.3, "bprop": 2.0, "dni": 1.9, "cdni": 2.2},
                   4: {"no-bprop": 12.6, "bprop": 1.8, "dni": 2.2, "cdni": 1.9},
                   5: {"no-bprop": 16.2, "bprop": 1.8, "dni": 3.4, "cdni": 1.7},
                   6: {"no-bprop": 21.4, "bprop": 1.8, "dni": 4.3, "cdni": 1.6}}}
PAPER_NETS = {"fcn": PAPER, "cnn": {"mnist": {3: {"no-bprop": 0.9, "bprop": 0.8, "dni": 0.9, "cdni": 1.0},
                                              4: {"no-bprop": 2.8, "bprop": 0.6, "dni": 0.7, "cdni": 0.8}}}}
NETS = tuple(PAPER_NETS)
PAPER_BUDGET = "500k iterations of Adam, batch 256"
METHODS = ("no-bprop", "bprop", "dni", "cdni")
TITLES = {"no-bprop": "No-Bprop", "bprop": "Bprop", "dni": "DNI", "cdni": "cDNI"}
DATASETS = tuple(PAPER)


def budget_overrides(cfg, epochs=None, steps=None, batch_size=None):
    """Settings for a budget: the length of the run, with lr decay (x lr_gamma) at 1/2 and 3/4 of it. The steps
    these fall on are derived where every run derives them (minidni.train.plan), from the run's own length."""
    values = {}
    if batch_size is not None:
        values["batch_size"] = batch_size
    if epochs is None and steps is None:
        return values
    values.update(steps=steps or 0, epochs=epochs or cfg.epochs, lr_decay_every=0, lr_milestones=(),
                  lr_decay_at=(0.5, 0.75))
    return values


def cell_config(method, layers, budget, sets, net="fcn"):
    """The config of one cell: the experiment's defaults, the layer count, the budget, then the --set values that
    this experiment has (a --set no experiment of the grid knows is an error, raised by `table`)."""
    name = f"mnist-{net}-{method}"
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
            try:
                cells[(m, n)] = json.loads(path.read_text()) if path.is_file() else None
            except (OSError, ValueError):  # a damaged summary.json: the cell counts as missing
                cells[(m, n)] = None
    return cells


def check_same_settings(folder, name, cfg):
    """ConfigError when an interrupted cell would continue with other settings than it was started with."""
    saved = override(get(name).config(), load_toml(folder / CONFIG), source=str(folder / CONFIG)).to_dict()
    changed = [f"{k} = {saved[k]!r} -> {v!r}" for k, v in cfg.to_dict().items()
               if k not in RESUME_SAFE and saved.get(k) != v]
    if changed:
        raise ConfigError(f"table: the interrupted cell {folder} was started with other settings ({'; '.join(changed)})"
                          "; rerun with the flags it was started with to continue it, or remove the folder")


def run_grid(out_dir, layers, methods, budget, sets, quiet=True, say=print, progress=True, net="fcn"):
    """Train every cell that has no summary.json yet (resuming from a checkpoint where there is one).

    With `progress`, a bar counts the cells (i of n) and the running cell's bar of steps shows below it. A cell that
    diverges is reported and left (its summary.json says so); the grid goes on."""
    cells = [(n, m) for n in layers for m in methods]
    bar = Progress(len(cells), desc="table cells", unit="cell", enabled=progress, warmup=False)
    write = bar.write if progress else say
    with bar, (nested() if progress else contextlib.nullcontext()):
        for k, (n, m) in enumerate(cells):
            folder = Path(out_dir) / f"{m}-{n}"
            if (folder / SUMMARY).is_file():
                bar.update(k + 1)
                continue
            name, cfg = cell_config(m, n, budget, sets, net)
            resume = (folder / CHECKPOINT).is_file()
            if resume and (folder / CONFIG).is_file():
                check_same_settings(folder, name, cfg)
            write(f"== cell {k + 1}/{len(cells)}: {name} --layers {n} -> {folder}{' (resuming)' if resume else ''}")
            t0 = time.perf_counter()
            try:
                s = get(name).run(cfg, folder, resume=resume, quiet=quiet)
            except Diverged as err:
                write(f"   {err}; the cell is marked diverged")
            else:
                write(f"   test error {100 * s['test_error']:.2f}%  ({time.perf_counter() - t0:.0f} s)")
            bar.update(k + 1)


def _pct(summary):
    return None if summary is None or summary.get("test_error") is None else round(100 * summary["test_error"], 2)


def build_table(dataset, cells, layers, methods, net="fcn"):
    """The table as data: rows of {layers, method: {measured, paper}} plus the budget each run used."""
    paper = PAPER_NETS[net]
    rows = []
    for n in layers:
        row = {"layers": n}
        for m in methods:
            s = cells.get((m, n))
            row[m] = {"measured": _pct(s), "paper": paper[dataset][n][m],
                      "val": None if s is None or s.get("val_error") is None else round(100 * s["val_error"], 2),
                      "epochs": None if s is None else s.get("epochs"),
                      "wall_time_s": None if s is None else s.get("wall_time_s"),
                      **({"status": s["status"]} if s is not None and s.get("status", "finished") != "finished"
                         else {})}
        rows.append(row)
    budgets = sorted({f"{s['epochs']:g} epochs ({s['steps']} steps, batch {s['config']['batch_size']})"
                      for s in cells.values() if s is not None})
    return {"dataset": dataset, "net": net, "what": "% test error, measured (paper)", "paper_budget": PAPER_BUDGET,
            "measured_budget": budgets, "methods": list(methods), "layers": list(layers), "rows": rows,
            "total_wall_time_s": round(sum(s.get("wall_time_s") or 0 for s in cells.values() if s), 1)}


def _cell(c):
    measured = c.get("status") or ("-" if c["measured"] is None else f"{c['measured']:.2f}")
    return f"{measured} ({c['paper']:.1f})"


def format_table(table, markdown=False):
    methods = table["methods"]
    header = ["layers", *(TITLES[m] for m in methods)]
    rows = [[str(r["layers"]), *(_cell(r[m]) for m in methods)] for r in table["rows"]]
    budget = "; ".join(table["measured_budget"]) or "no runs yet"
    title = (f"MNIST {table.get('net', 'fcn').upper()}, % test error: measured ({budget}) and, in brackets, the paper's "
             f"({table['paper_budget']}).")
    return render_rows(title, header, rows, markdown)


def render_rows(title, header, rows, markdown=False):
    """A titled table of string cells: Markdown (for table.md), or aligned columns for a terminal."""
    if markdown:
        lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([title, line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def table(dataset="mnist", layers=None, methods=METHODS, out=None, run=True, epochs=None, steps=None,
          batch_size=None, sets=(), quiet=True, say=print, progress=False, net="fcn"):
    """Run (if `run`) and collect the grid; print it; write table.json and table.md into `out`. Returns the table.

    net: "fcn" (mnist-fcn-*) or "cnn" (mnist-cnn-*, the paper's CNN rows); layers None: every depth the paper
    reports for it (FCN 3..6, CNN 3 and 4).
    quiet: no messages from the runs themselves; progress: bars for the cells and each cell's steps."""
    if net not in PAPER_NETS:
        raise ConfigError(f"table: unknown net {net!r}; choose one of: {', '.join(NETS)}")
    paper = PAPER_NETS[net]
    if dataset not in paper:
        raise ConfigError(f"table: unknown data set {dataset!r}; choose one of: {', '.join(paper)}")
    layers = sorted(paper[dataset]) if layers is None else list(layers)
    bad = [n for n in layers if n not in paper[dataset]]
    if bad:
        raise ConfigError(f"table: the paper reports {dataset} {net.upper()}s with layers {sorted(paper[dataset])}; "
                          f"got {bad}")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"table: unknown method {bad[0]!r}; choose from: {', '.join(METHODS)}")
    sets = parse_sets(sets)
    unknown = [k for k in sets if not any(k in get(f"mnist-{net}-{m}").config().to_dict() for m in methods)]
    if unknown:
        raise ConfigError(f"--set {unknown[0]}: none of the experiments "
                          f"{', '.join(f'mnist-{net}-' + m for m in methods)} has this setting (see `minidni show "
                          f"mnist-{net}-dni`)")
    out = Path(out or f"runs/table-{dataset}" + ("" if net == "fcn" else f"-{net}"))
    budget = {"epochs": epochs, "steps": steps, "batch_size": batch_size}
    if run:
        out.mkdir(parents=True, exist_ok=True)
        run_grid(out, layers, methods, budget, sets, quiet=quiet, say=say, progress=progress, net=net)
    elif not out.is_dir():
        raise ConfigError(f"table --collect: {out} does not exist; run the grid first (drop --collect)")
    cells = collect(out, layers, methods)
    if not run and not any(cells.values()):
        raise ConfigError(f"table --collect: no runs of the grid in {out} (no "
                          f"{', '.join(f'{m}-{n}' for n in layers[:1] for m in methods[:2])}, ... folder with a "
                          f"{SUMMARY}); run the grid first (drop --collect)")
    result = build_table(dataset, cells, layers, methods, net)
    (out / "table.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "table.md").write_text(format_table(result, markdown=True))
    say(format_table(result))
    say(f"wrote {out / 'table.json'} and {out / 'table.md'}")
    return result

"""`minidni table copy`: run (or collect) the Copy / Repeat Copy grid of Table 2 and print it beside the paper's
numbers (Jaderberg et al. 2016, arXiv v1 Sec. 3.2, Table 2: the largest episode length solved by the curriculum,
N + 3 for Copy and N*R + 3 for Repeat Copy).

    minidni table copy --out runs/table-copy                       run what is missing (resuming), then print
    minidni table copy --out runs/table-copy --collect             only read what exists (unfinished runs marked *)
    minidni table copy --T 3 --methods bptt dni --tasks copy       a part of the grid

The grid: truncated BPTT at T = 2, 3, 4, 5, 8; DNI and DNI + Aux at T = 2, 3, 4, 5; for Copy and Repeat Copy. Each
cell is one run of `{task}-{method}` with --set T=..., in DIR/{task}-{method}-T{T}/. A finished run (summary.json) is
reused, an interrupted one resumed from its checkpoint, so the grid can be run in parts, in several sessions. The
budget (steps, LSTM size, batch) is the experiments' defaults unless --steps / --set change it; it is printed with the
table. The table is written to DIR/table.json and DIR/table.md.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .config import ConfigError, override
from .experiments import get
from .train import CHECKPOINT, METRICS, SUMMARY

TASKS = ("copy", "repeat-copy")
METHODS = ("bptt", "dni", "dni-aux")
GRID = {"bptt": (2, 3, 4, 5, 8), "dni": (2, 3, 4, 5), "dni-aux": (2, 3, 4, 5)}
TITLES = {"bptt": "BPTT", "dni": "DNI", "dni-aux": "DNI + Aux", "copy": "Copy", "repeat-copy": "Repeat Copy"}
# Table 2 of the paper (arXiv v1): max length solved; BPTT at T = 8 is not in it
PAPER = {"copy": {"bptt": {2: 7, 3: 8, 4: 10, 5: 8}, "dni": {2: 16, 3: 14, 4: 18, 5: 18},
                  "dni-aux": {2: 16, 3: 17, 4: 19, 5: 18}},
         "repeat-copy": {"bptt": {2: 7, 3: 5, 4: 19, 5: 23}, "dni": {2: 39, 3: 33, 4: 39, 5: 59},
                         "dni-aux": {2: 39, 3: 59, 4: 67, 5: 59}}}
PAPER_BUDGET = "LSTM 256, batch 256, Adam 7e-5; the length of training is not stated"


def cells(tasks=TASKS, methods=METHODS, Ts=None):
    """The (task, method, T) of the grid, in the order they run; Ts restricts the T values."""
    return [(task, m, T) for task in tasks for m in methods for T in GRID[m] if Ts is None or T in Ts]


def folder(out, task, method, T):
    return Path(out) / f"{task}-{method}-T{T}"


def cell_config(task, method, T, steps=None, sets=None):
    name = f"{task}-{method}"
    cfg = override(get(name).config(), {"T": T}, source="--T")
    if steps is not None:
        cfg = override(cfg, {"steps": steps}, source="--steps")
    return name, override(cfg, dict(sets or {}), source="--set")


def run_grid(out, grid, steps=None, sets=None, quiet=True, say=print):
    """Train every cell without a summary.json yet (resuming from a checkpoint where there is one)."""
    for task, method, T in grid:
        where = folder(out, task, method, T)
        if (where / SUMMARY).is_file():
            continue
        name, cfg = cell_config(task, method, T, steps, sets)
        resume = (where / CHECKPOINT).is_file()
        say(f"== {name} --set T={T} -> {where}{' (resuming)' if resume else ''}")
        t0 = time.perf_counter()
        s = get(name).run(cfg, where, resume=resume, quiet=quiet)
        say(f"   max length {s['max_length']} (N = {s['N']}, R = {s['R']}) after {s['steps']} steps "
            f"({time.perf_counter() - t0:.0f} s)")


def read_cell(where):
    """What a cell's folder says: the summary of a finished run, the last record of an unfinished one, or None."""
    where = Path(where)
    if (where / SUMMARY).is_file():
        s = json.loads((where / SUMMARY).read_text())
        return {"max_length": s["max_length"], "N": s["N"], "R": s["R"], "steps": s["steps"], "finished": True,
                "wall_time_s": s["wall_time_s"], "budget": _budget(s["config"], s["method"])}
    if (where / METRICS).is_file():
        lines = [json.loads(x) for x in (where / METRICS).read_text().splitlines() if x.strip()]
        if lines:
            r = lines[-1]
            solved = [x for x in lines if x["max_length"] == r["max_length"]]
            return {"max_length": r["max_length"], "N": None, "R": None, "steps": r["step"], "finished": False,
                    "wall_time_s": r["wall_time_s"], "budget": None, "first_step": solved[0]["step"]}
    return None


def _budget(c, method):
    """(the run's budget, the synthesizer's settings or None for BPTT) as text."""
    run = f"{c['steps']} batches of {c['batch_size']} episodes, LSTM {c['hidden']}, {c['width']}-bit vectors, " \
          f"Adam {c['lr']:g}"
    if method == "bptt":
        return run, None
    return run, (f"DNI: synthesizer Adam {c['synth_lr'] or c['lr']:g}, scale {c['scale']:g}, "
                 f"scale_target={str(c['scale_target']).lower()}")


def build_table(out, grid):
    rows = []
    for task, method, T in grid:
        c = read_cell(folder(out, task, method, T))
        rows.append({"task": task, "method": method, "T": T, "paper": PAPER[task][method].get(T), "measured": c})
    parts = [r["measured"]["budget"] for r in rows if r["measured"] and r["measured"]["budget"]]
    budgets = sorted({run for run, _ in parts}) + sorted({synth for _, synth in parts if synth})
    return {"what": "max episode length solved (N + 3 Copy, N*R + 3 Repeat Copy): measured (paper)",
            "paper_budget": PAPER_BUDGET, "measured_budget": budgets, "rows": rows,
            "missing": [f"{r['task']}-{r['method']} T={r['T']}" for r in rows
                        if not (r["measured"] and r["measured"]["finished"])],
            "total_wall_time_s": round(sum(r["measured"]["wall_time_s"] or 0 for r in rows if r["measured"]), 1)}


def _cell(row):
    m, p = row["measured"], row["paper"]
    paper = "-" if p is None else str(p)
    if m is None:
        return f"? ({paper})"
    extra = "" if m["finished"] else "*"
    nr = f" N={m['N']}" + (f",R={m['R']}" if row["task"] == "repeat-copy" else "") if m["N"] else ""
    return f"{m['max_length']}{extra}{nr} ({paper})"


def format_table(table, markdown=False):
    Ts = sorted({r["T"] for r in table["rows"]})
    header = ["task", "method", *(f"T={T}" for T in Ts)]
    lines_ = []
    for task in TASKS:
        for method in METHODS:
            rs = {r["T"]: r for r in table["rows"] if r["task"] == task and r["method"] == method}
            if rs:
                lines_.append([TITLES[task], TITLES[method], *(_cell(rs[T]) if T in rs else "" for T in Ts)])
    budget = "; ".join(table["measured_budget"]) or "no finished runs yet"
    title = (f"Table 2, max length solved: measured ({budget}) and, in brackets, the paper's ({table['paper_budget']})."
             " * = unfinished run (its value so far); ? = not run yet.")
    from .table import render_rows

    text = render_rows(title, header, lines_, markdown)
    if not markdown and table["missing"]:
        text += f"\nstill to run: {', '.join(table['missing'])}"
    return text


def parse_sets(items):
    from .table import parse_sets as parse

    return parse(items)


def table_copy(tasks=TASKS, methods=METHODS, Ts=None, out=None, run=True, steps=None, sets=(), quiet=True,
               say=print):
    """Run (if `run`) and collect the grid; print it; write table.json and table.md into `out`. Returns the table."""
    bad = [t for t in tasks if t not in TASKS] + [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"table copy: unknown task or method {bad[0]!r}; tasks {TASKS}, methods {METHODS}")
    grid = cells(tasks, methods, Ts)
    if not grid:
        raise ConfigError(f"table copy: no cell of the grid has T in {list(Ts)}; the grid's T values are {GRID}")
    out = Path(out or "runs/table-copy")
    sets = parse_sets(sets) if sets and not isinstance(sets, dict) else dict(sets or {})
    if run:
        out.mkdir(parents=True, exist_ok=True)
        run_grid(out, grid, steps, sets, quiet=quiet, say=say)
    elif not out.is_dir():
        raise ConfigError(f"table copy --collect: {out} does not exist; run the grid first (drop --collect)")
    result = build_table(out, grid)
    (out / "table.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "table.md").write_text(format_table(result, markdown=True))
    say(format_table(result))
    say(f"wrote {out / 'table.json'} and {out / 'table.md'}")
    return result

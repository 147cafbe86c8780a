"""`minidni table copy`: run (or collect) the Copy / Repeat Copy grid of Table 2 and print it beside the paper's
numbers (Jaderberg et al. 2016, arXiv v1 Sec. 3.2, Table 2: the largest episode length solved by the curriculum,
N + 3 for Copy and N*R + 3 for Repeat Copy). `minidni table rnn`: the same cells with Table 2's PTB row beside them
(test bits per character at the best validation; BPTT at T = 2, 3, 4, 5, 8, 20, DNI and DNI + Aux at T = 2..5, each
cell one run of ptb-{method} in PTB_DIR/ptb-{method}-T{T}/).

    minidni table copy --out runs/table-copy                       run what is missing (resuming), then print
    minidni table copy --out runs/table-copy --collect             only read what exists (unfinished runs marked *)
    minidni table copy --T 3 --methods bptt dni --tasks copy       a part of the grid
    minidni table rnn --out runs/table-ptb --copy-out runs/table-copy [--collect]     Copy, Repeat Copy and PTB

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
        result = (f"test BPC {s['test_bpc']:.3f} (best validation {s['best_val_bpc']:.3f})" if task == "ptb" else
                  f"max length {s['max_length']} (N = {s['N']}, R = {s['R']})")
        say(f"   {result} after {s['steps']} steps ({time.perf_counter() - t0:.0f} s)")


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


def _grid_rows(table, tasks, show):
    """(header, rows of strings): a row per (task, method) present, a column per T; show(row) -> a cell's text."""
    Ts = sorted({r["T"] for r in table["rows"]})
    header = ["task", "method", *(f"T={T}" for T in Ts)]
    lines_ = []
    for task in tasks:
        for method in METHODS:
            rs = {r["T"]: r for r in table["rows"] if r["task"] == task and r["method"] == method}
            if rs:
                lines_.append([TITLES[task], TITLES[method], *(show(rs[T]) if T in rs else "" for T in Ts)])
    return header, lines_


def format_table(table, markdown=False):
    header, lines_ = _grid_rows(table, TASKS, _cell)
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


# ---- `minidni table rnn`: Copy, Repeat Copy and PTB together -----------------------------------------------------------
PTB_GRID = {"bptt": (2, 3, 4, 5, 8, 20), "dni": (2, 3, 4, 5), "dni-aux": (2, 3, 4, 5)}
# Table 2 of the paper (arXiv v1), PTB bits per character (BPTT at T = 40 and DNI at T = 8 are left out of our grid)
PTB_PAPER = {"bptt": {2: 1.39, 3: 1.38, 4: 1.37, 5: 1.37, 8: 1.35, 20: 1.35},
             "dni": {2: 1.37, 3: 1.36, 4: 1.35, 5: 1.35}, "dni-aux": {2: 1.37, 3: 1.36, 4: 1.35, 5: 1.35}}
PTB_PAPER_BUDGET = "LSTM 1024, batch 256, Adam 7e-5, validation every 5k iterations; the length is not stated"
RNN_TASKS = TASKS + ("ptb",)
TITLES["ptb"] = "PTB (BPC)"


def rnn_cells(tasks=RNN_TASKS, methods=METHODS, Ts=None):
    """The (task, method, T) of `table rnn`: the Copy grid for copy / repeat-copy, PTB_GRID for ptb."""
    return [(task, m, T) for task in tasks for m in methods for T in (PTB_GRID if task == "ptb" else GRID)[m]
            if Ts is None or T in Ts]


def read_ptb_cell(where):
    """A PTB cell: test BPC at the best validation of a finished run; the best validation BPC so far of an
    unfinished one (its metrics.jsonl); None if nothing is there."""
    where = Path(where)
    if (where / SUMMARY).is_file():
        s = json.loads((where / SUMMARY).read_text())
        return {"bpc": s["test_bpc"], "best_val_bpc": s["best_val_bpc"], "steps": s["steps"], "finished": True,
                "train_chars": s["train_chars"], "wall_time_s": s["wall_time_s"],
                "budget": _ptb_budget(s["config"], s["method"])}
    if (where / METRICS).is_file():
        vals = [json.loads(x) for x in (where / METRICS).read_text().splitlines() if '"val"' in x]
        if vals:
            best = min(vals, key=lambda r: r["bpc"])
            return {"bpc": best["bpc"], "best_val_bpc": best["bpc"], "steps": vals[-1]["step"], "finished": False,
                    "train_chars": vals[-1]["chars"], "wall_time_s": vals[-1]["wall_time_s"], "budget": None}
    return None


def _ptb_budget(c, method):
    length = f"{c['steps']} windows" if c["steps"] else f"{c['train_chars']:,} characters"
    run = (f"PTB: {length} per run (windows of T characters x {c['batch_size']} rows), "
           f"LSTM {c['hidden']}, Adam {c['lr']:g}, validation on {c['valid_chars'] or 'all'} characters")
    if method == "bptt":
        return run, None
    return run, (f"PTB DNI: synthesizer Adam {c['synth_lr'] or c['lr']:g}, scale {c['scale']:g}, "
                 f"scale_target={str(c['scale_target']).lower()}")


def build_rnn_table(copy_out, ptb_out, grid):
    rows = []
    for task, method, T in grid:
        if task == "ptb":
            rows.append({"task": task, "method": method, "T": T, "paper": PTB_PAPER[method].get(T),
                         "measured": read_ptb_cell(folder(ptb_out, task, method, T))})
        else:
            rows.append({"task": task, "method": method, "T": T, "paper": PAPER[task][method].get(T),
                         "measured": read_cell(folder(copy_out, task, method, T))})
    parts = [r["measured"]["budget"] for r in rows if r["measured"] and r["measured"]["budget"]]
    budgets = sorted({run for run, _ in parts}) + sorted({synth for _, synth in parts if synth})
    return {"what": "Copy / Repeat Copy: max episode length solved; PTB: test bits per character at the best "
                    "validation; measured (paper)",
            "paper_budget": f"Copy: {PAPER_BUDGET}; PTB: {PTB_PAPER_BUDGET}", "measured_budget": budgets,
            "rows": rows, "copy_out": str(copy_out), "ptb_out": str(ptb_out),
            "missing": [f"{r['task']}-{r['method']} T={r['T']}" for r in rows
                        if not (r["measured"] and r["measured"]["finished"])],
            "total_wall_time_s": round(sum(r["measured"]["wall_time_s"] or 0 for r in rows if r["measured"]), 1)}


def _ptb_cell(row):
    m, p = row["measured"], row["paper"]
    paper = "-" if p is None else f"{p:.2f}"
    if m is None:
        return f"? ({paper})"
    return f"{m['bpc']:.3f}{'' if m['finished'] else '*'} ({paper})"


def format_rnn_table(table, markdown=False):
    header, lines_ = _grid_rows(table, RNN_TASKS, lambda row: (_ptb_cell if row["task"] == "ptb" else _cell)(row))
    budget = "; ".join(table["measured_budget"]) or "no finished runs yet"
    title = (f"Table 2: Copy / Repeat Copy max length solved, PTB test bits per character at the best validation. "
             f"Measured ({budget}) and, in brackets, the paper's ({table['paper_budget']}). * = unfinished run (its "
             "value so far; PTB: its best validation BPC); ? = not run yet.")
    from .table import render_rows

    text = render_rows(title, header, lines_, markdown)
    claim = table.get("data_claim")
    if claim:
        text += "\n" + claim["text"] + ("\n" if markdown else "")
    if not markdown and table["missing"]:
        text += f"\nstill to run: {', '.join(table['missing'])}"
    return text


def _val_records(where):
    path = Path(where) / METRICS
    if not path.is_file():
        return []
    return [r for r in (json.loads(x) for x in path.read_text().splitlines() if x.strip()) if r["split"] == "val"]


def data_claim(ptb_out, fast=("dni-aux", 5), slow=("bptt", 20)):
    """The paper's data claim at our budget: the characters and training time DNI + Aux at T = 5 needs to reach
    BPTT-at-T = 20's final validation BPC, against what BPTT at T = 20 needed to first reach it. None until both
    runs are finished."""
    runs = {m: Path(ptb_out) / f"ptb-{m[0]}-T{m[1]}" for m in (fast, slow)}
    if not all((w / SUMMARY).is_file() for w in runs.values()):
        return None
    vf, vs = _val_records(runs[fast]), _val_records(runs[slow])
    target = vs[-1]["bpc"]
    first = lambda vals: next((r for r in vals if r["bpc"] <= target), None)  # noqa: E731
    f, s = first(vf), first(vs)
    out = {"target_bpc": target, "slow": {"chars": s["chars"], "train_time_s": s["train_time_s"]},
           "fast": None if f is None else {"chars": f["chars"], "train_time_s": f["train_time_s"]}}
    if f is None:
        out["text"] = (f"data claim: DNI + Aux at T = 5 never reached BPTT-at-T = 20's final validation BPC "
                       f"{target:.3f} (its best: {min(r['bpc'] for r in vf):.3f})")
    else:
        out["text"] = (f"data claim: DNI + Aux at T = 5 reached BPTT-at-T = 20's final validation BPC {target:.3f} "
                       f"after {f['chars']:,} characters and {f['train_time_s']:.0f} s of training; BPTT at T = 20 "
                       f"after {s['chars']:,} and {s['train_time_s']:.0f} s ({100 * f['chars'] / s['chars']:.0f}% of "
                       f"the data, {s['train_time_s'] / max(f['train_time_s'], 1e-9):.2f}x as fast; the paper: 58%, 2x)")
    return out


def plot_ptb(ptb_out, grid):
    """PTB_DIR/curves.png: the validation BPC of every PTB cell that has one, against characters and training time."""
    from .experiments.ptb import plot_bpc

    runs = {f"{TITLES[m]} T={T}": _val_records(folder(ptb_out, task, m, T)) for task, m, T in grid}
    Ts = sorted({T for _, _, T in grid})
    dashes = {"bptt": "-", "dni": "--", "dni-aux": ":"}                    # a colour per T, a line style per method
    styles = {f"{TITLES[m]} T={T}": {"color": f"C{Ts.index(T) % 10}", "linestyle": dashes.get(m, "-")}
              for _, m, T in grid}
    runs = {k: v for k, v in runs.items() if v}
    if runs:
        plot_bpc(runs, Path(ptb_out) / "curves.png", title="PTB: validation bits per character", splits=("val",),
                 styles=styles)


def table_rnn(tasks=RNN_TASKS, methods=METHODS, Ts=None, copy_out=None, ptb_out=None, run=True, steps=None, sets=(),
              quiet=True, say=print):
    """Run (if `run`) what is missing of the Copy, Repeat Copy and PTB grids (resuming), collect them, print the table
    and write table.json and table.md into `ptb_out`. Returns the table."""
    bad = [t for t in tasks if t not in RNN_TASKS] + [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"table rnn: unknown task or method {bad[0]!r}; tasks {RNN_TASKS}, methods {METHODS}")
    grid = rnn_cells(tasks, methods, Ts)
    if not grid:
        raise ConfigError(f"table rnn: no cell has T in {list(Ts)}; the T values are {GRID} (Copy), "
                          f"{PTB_GRID} (PTB)")
    copy_out, ptb_out = Path(copy_out or "runs/table-copy"), Path(ptb_out or "runs/table-ptb")
    sets = parse_sets(sets) if sets and not isinstance(sets, dict) else dict(sets or {})
    known = {k for task, m, _ in grid for k in get(f"{task}-{m}").config().to_dict()}
    if set(sets) - known:
        raise ConfigError(f"--set {sorted(set(sets) - known)[0]}: no experiment of this grid has that setting "
                          "(see `minidni show ptb-dni`, `minidni show copy-dni`)")
    if run:
        for out, part in ((copy_out, [c for c in grid if c[0] != "ptb"]), (ptb_out, [c for c in grid if c[0] == "ptb"])):
            if part:
                out.mkdir(parents=True, exist_ok=True)
                for task, method, T in part:   # a --set only goes to the experiments that have the setting
                    cfg_keys = get(f"{task}-{method}").config().to_dict()
                    run_grid(out, [(task, method, T)], steps, {k: v for k, v in sets.items() if k in cfg_keys},
                             quiet=quiet, say=say)
    ptb_out.mkdir(parents=True, exist_ok=True)
    result = build_rnn_table(copy_out, ptb_out, grid)
    result["data_claim"] = data_claim(ptb_out)
    plot_ptb(ptb_out, [c for c in grid if c[0] == "ptb"])
    (ptb_out / "table.json").write_text(json.dumps(result, indent=2) + "\n")
    (ptb_out / "table.md").write_text(format_rnn_table(result, markdown=True))
    say(format_rnn_table(result))
    say(f"wrote {ptb_out / 'table.json'} and {ptb_out / 'table.md'}")
    return result

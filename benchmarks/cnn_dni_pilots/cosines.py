"""The synthetic-gradient agreement of DNI / cDNI runs, as docs/results-mnist.md tabulates it (issue 14).

How close each synthesizer's g_hat = M(h_i [, y]) (Jaderberg et al. 2016, Sec. 3.1) came to the true dL/dh_i, from
the diagnostics the DNINet writes to metrics.jsonl every `diagnose_every` steps (split "synthetic_grad").

For each run folder: the test error from summary.json, and per module the mean cosine of g_hat with the true gradient
and the median norm ratio |g_hat| / |g| over the `synthetic_grad` records of metrics.jsonl after step --after.

    python benchmarks/cnn_dni_pilots/cosines.py runs/table-mnist-cnn-slr1e-6/cdni-3 [more run folders] [--after 1000]
"""
import argparse
import json
from pathlib import Path

import numpy as np

from minidni.experiments.feedforward import DIAGNOSTIC_SPLIT
from minidni.results import read_metrics
from minidni.train import SUMMARY


def agreement(folder, after):
    """{module: (mean cosine, median norm ratio, records)} over the diagnostics after step `after`."""
    rows = [r for r in read_metrics(folder) if r.get("split") == DIAGNOSTIC_SPLIT and r["step"] > after]
    out = {}
    for m in sorted({r["module"] for r in rows}):
        mine = [r for r in rows if r["module"] == m]
        ratio = [r["norm_synthetic"] / r["norm_true"] for r in mine if r["norm_true"] > 0]
        out[m] = (float(np.mean([r["cos"] for r in mine])), float(np.median(ratio)), len(mine))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders (each with metrics.jsonl and summary.json)")
    ap.add_argument("--after", type=int, default=1000, help="use the records after this step (default 1000)")
    args = ap.parse_args()
    for run in args.runs:
        path = Path(run) / SUMMARY
        summary = json.loads(path.read_text()) if path.exists() else {}
        err = summary.get("test_error")
        cells = [f"module {m}: cos {c:.3f}, norm ratio {q:.2f} ({n} records)" for m, (c, q, n) in
                 agreement(run, args.after).items()]
        print(f"{run}: test error {'%.2f%%' % (100 * err) if err is not None else '-'}; " + "; ".join(cells))


if __name__ == "__main__":
    main()

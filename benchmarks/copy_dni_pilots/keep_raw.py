"""Keep the raw results of Copy / Repeat Copy runs in the repository: runs/ is not committed (checkpoints are large),
so this copies each run's config.toml, curriculum.json and summary.json (when they exist) and every `every`-th record
of metrics.jsonl (plus the last) to docs/raw/GRID/CELL/.

    python benchmarks/copy_dni_pilots/keep_raw.py runs/table-copy-7e-5-unscaled [more run folders] [--every 20]
"""
import argparse
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def keep(grid, every):
    grid = Path(grid)
    for cell in sorted(p for p in grid.iterdir() if (p / "metrics.jsonl").exists()):
        out = ROOT / "docs" / "raw" / grid.name / cell.name
        out.mkdir(parents=True, exist_ok=True)
        for name in ("config.toml", "curriculum.json", "summary.json"):
            if (cell / name).exists():
                shutil.copy(cell / name, out / name)
        lines = (cell / "metrics.jsonl").read_text().splitlines()
        kept = lines[::every] + ([lines[-1]] if lines and (len(lines) - 1) % every else [])
        (out / "metrics.jsonl").write_text("\n".join(kept) + "\n")
        print(f"{cell} -> {out.relative_to(ROOT)} ({len(kept)} of {len(lines)} records)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("grids", nargs="+", help="folders of run folders (e.g. runs/table-copy-7e-5-unscaled)")
    ap.add_argument("--every", type=int, default=20, help="keep every this many metrics records (default 20)")
    args = ap.parse_args()
    for g in args.grids:
        keep(g, args.every)

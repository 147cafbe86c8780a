"""Write every lesson (lessons/NN_*.py, Jupyter "percent" scripts) as a notebook, NN_*.ipynb.

    python lessons/make_notebooks.py                    # into lessons/notebooks/ (git-ignored)
    python lessons/make_notebooks.py --out ~/nb         # into a folder of your choice
    python lessons/make_notebooks.py --execute          # and run them, so they open with their outputs

The .py files stay the source: edit those, and convert again. Needs the dev install (`pip install -e '.[dev]'`:
jupytext converts, nbclient and ipykernel execute). See docs/lessons.md.
"""
import argparse
import importlib.util
import sys
from pathlib import Path

LESSONS_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = LESSONS_DIR / "notebooks"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def lesson_files(folder=LESSONS_DIR):
    """Every lesson, in order: the files named NN_*.py (so this script and helpers are not lessons)."""
    return sorted(folder.glob("[0-9][0-9]_*.py"))


def convert(lesson, out_dir):
    """Write `lesson` (a percent-format .py) as out_dir/<same name>.ipynb; returns that path."""
    import jupytext

    notebook = jupytext.read(lesson)
    notebook.metadata["kernelspec"] = KERNELSPEC  # open with the default Python kernel, without asking
    path = Path(out_dir) / (lesson.stem + ".ipynb")
    jupytext.write(notebook, path)
    return path


def execute(path, timeout_s=600):
    """Run the notebook at `path` in a fresh kernel, from its own folder, and save it with its outputs. A failing cell
    raises nbclient's CellExecutionError, which names the cell and the error. Returns the executed notebook."""
    import nbclient
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(notebook, timeout=timeout_s, kernel_name=KERNELSPEC["name"],
                            resources={"metadata": {"path": str(Path(path).parent)}}).execute()
    nbformat.write(notebook, path)
    return notebook


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write every lesson as a Jupyter notebook (.ipynb).")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--execute", action="store_true", help="also run each notebook and save its outputs")
    args = parser.parse_args(argv)
    needed = ["jupytext", "nbclient", "ipykernel"] if args.execute else ["jupytext"]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(f"make_notebooks.py: {', '.join(missing)} not installed; install the dev extra: "
                 "pip install -e '.[dev]'")
    args.out.mkdir(parents=True, exist_ok=True)
    for lesson in lesson_files():
        path = convert(lesson, args.out)
        if args.execute:
            execute(path)
        print(f"{lesson.name} -> {path}" + ("  (executed)" if args.execute else ""))


if __name__ == "__main__":
    main()

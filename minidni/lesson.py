"""Two helpers for the lessons in lessons/: headings for a lesson run as a script, and figures that show inline in a
notebook or land in a folder you can find when the lesson runs as a script.

A lesson is a Jupyter "percent" script (`# %%` code cells, `# %% [markdown]` prose): `python lessons/NN_*.py` runs it,
`python lessons/make_notebooks.py` turns it into a notebook (docs/lessons.md). A notebook shows the markdown titles
and the figures by itself; a script shows neither, so `heading` prints the title there and `show` saves the figure.
"""
import io
import os
import sys
from pathlib import Path

FIGURES_ENV = "MINIDNI_LESSON_FIGURES"  # where a lesson run as a script saves its figures
DEFAULT_FIGURES = "lesson-figures"  # ... when the variable is not set: relative to the current directory


def in_notebook():
    """True inside a Jupyter kernel; False for `python lesson.py` and for IPython in a terminal."""
    ipython = sys.modules.get("IPython")  # never imported by a plain script, so do not import it here
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def heading(text, level=2):
    """Print a markdown cell's title, `## text`, when running as a script. A notebook shows the cell itself."""
    if not in_notebook():
        print(f"\n{'#' * level} {text}")


def figure_dir():
    """The folder for a script's figures: $MINIDNI_LESSON_FIGURES, else ./lesson-figures; created when missing."""
    folder = Path(os.environ.get(FIGURES_ENV) or DEFAULT_FIGURES).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def show(fig, name, dpi=110):
    """Show a matplotlib figure under its cell in a notebook; in a script save it as figure_dir() / name and print
    the path. Returns the path written, or None in a notebook.

    The figures of minidni are drawn with matplotlib's object API (no pyplot, no global backend), which a notebook
    does not display by itself, so the notebook gets the PNG bytes.
    """
    if in_notebook():
        from IPython.display import Image, display

        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=dpi)
        display(Image(png.getvalue()))
        return None
    path = figure_dir() / name
    fig.savefig(path, dpi=dpi)
    print(f"figure: {path}")
    return path

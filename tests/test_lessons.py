"""The lessons (lessons/NN_*.py) run as plain scripts and as notebooks, and read like lessons in both.

A lesson asserts its own checks (gradients against finite differences, kernels against the reference), so a lesson
that runs clean also teaches correct numbers. New lessons are picked up by the glob. As a script, a lesson must print
its markdown titles (`minidni.lesson.heading`) and save its figures in the folder it is told
(`MINIDNI_LESSON_FIGURES`); as a notebook (lessons/make_notebooks.py) it must execute and show its figures inline.

Each lesson's script is started in the background when its fixture is set up, so it runs while the same lesson's
notebook executes: the two modes share the wall-clock time instead of adding up.
"""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from minidni import lesson as lesson_helpers

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))
SCRIPT_TIMEOUT_S = 300  # a lesson finishes in seconds at its default size; this only catches a hang (or a busy box)
CELL_TIMEOUT_S = 600


def markdown_titles(path):
    """The level-1 and level-2 titles of a lesson's markdown cells, in order: "# Lesson 1: ...", "## 1. ...", ..."""
    titles, in_markdown = [], False
    for line in path.read_text().splitlines():
        if line.startswith("# %%"):
            in_markdown = line.startswith("# %% [markdown]")
        elif in_markdown and re.match(r"# #{1,2} ", line):
            titles.append(line[2:])
    return titles


def draws_figures(path):
    return re.search(r"\bshow\(", path.read_text()) is not None


def load_make_notebooks():
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "lessons" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LessonRun:
    """A lesson whose script was started in the background: stdout/stderr go to files, figures to their own folder."""

    def __init__(self, path, folder):
        self.path, self.figures = path, folder / "figures"
        self.stdout_path, self.stderr_path = folder / "stdout.txt", folder / "stderr.txt"
        env = {**os.environ, "MPLBACKEND": "Agg", lesson_helpers.FIGURES_ENV: str(self.figures)}
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen([sys.executable, str(path)], cwd=ROOT, env=env, stdout=out, stderr=err)

    def finish(self):
        """Wait for the script; returns (returncode, stdout, stderr)."""
        code = self.proc.wait(timeout=SCRIPT_TIMEOUT_S)
        return code, self.stdout_path.read_text(), self.stderr_path.read_text()


@pytest.fixture(scope="module", params=LESSONS, ids=[p.name for p in LESSONS])
def lesson(request, tmp_path_factory):
    """One lesson, its script already running. Module scope makes pytest run both tests of a lesson back to back."""
    run = LessonRun(request.param, tmp_path_factory.mktemp(request.param.stem))
    yield run
    if run.proc.poll() is None:  # its test failed or was deselected before waiting: do not leave it running
        run.proc.kill()
        run.proc.wait()


def test_lesson_as_notebook(lesson, tmp_path):
    """Converted with make_notebooks.convert, the lesson executes in a fresh kernel; figures show inline (PNG outputs),
    nothing is saved to disk, and the headings are left to the markdown cells."""
    for module in ("jupytext", "nbclient", "ipykernel"):
        pytest.importorskip(module, reason=f"{module} is part of the dev install: pip install -e '.[dev]'")
    make_notebooks = load_make_notebooks()
    path = make_notebooks.convert(lesson.path, tmp_path)
    notebook = make_notebooks.execute(path, timeout_s=CELL_TIMEOUT_S)  # raises CellExecutionError on a failing cell

    assert any(cell.cell_type == "markdown" for cell in notebook.cells)
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    images = sum("image/png" in out.get("data", {}) for out in outputs)
    assert (images > 0) == draws_figures(lesson.path), f"{images} inline figures in {path.name}"
    assert "figure: " not in text and not (tmp_path / lesson_helpers.DEFAULT_FIGURES).exists()
    titles = set(markdown_titles(lesson.path))
    assert not [line for line in text.splitlines() if line in titles], "a notebook shows its headings as markdown"


def test_lesson_as_script(lesson):
    """Exit 0; print every markdown title in order; save figures only in the chosen folder and print each path; an
    intended error (lesson 01) is introduced as "expected", never shown as a traceback."""
    code, out, err = lesson.finish()
    assert code == 0, (f"{lesson.path.name} exited with code {code}.\n--- stdout (last 3000 chars) ---\n{out[-3000:]}\n"
                       f"--- stderr (last 3000 chars) ---\n{err[-3000:]}")
    assert "Traceback" not in out + err

    titles = markdown_titles(lesson.path)
    assert titles and titles[0].startswith("# Lesson ")
    printed = [line for line in out.splitlines() if line in set(titles)]
    assert printed == titles, (
        f"{lesson.path.name}: each markdown title must be printed exactly, in order, by heading() (docs/lessons.md).\n"
        f"missing: {[t for t in titles if t not in printed]}\n"
        f"headings printed that are no title: {[h for h in re.findall(r'^#{1,2} .+$', out, re.M) if h not in titles]}")

    saved = sorted(lesson.figures.glob("*")) if lesson.figures.exists() else []
    announced = sorted(Path(p) for p in re.findall(r"^figure: (.+)$", out, flags=re.M))
    assert announced == saved, f"printed {announced}, found {saved}"
    assert bool(saved) == draws_figures(lesson.path)
    assert all(p.suffix == ".png" and p.stat().st_size > 1000 for p in saved)

    if lesson.path.name.startswith("01_"):
        lines = out.splitlines()
        k = lines.index("expected: a second backward() over the same graph is refused, with this message:")
        assert lines[k + 1].startswith("    RuntimeError: backward through")
        assert [line for line in lines if "RuntimeError" in line] == [lines[k + 1]]


def test_make_notebooks_writes_every_lesson(tmp_path):
    """The one command: `python lessons/make_notebooks.py --out DIR` writes NN_*.ipynb for every lesson."""
    pytest.importorskip("jupytext", reason="jupytext is part of the dev install: pip install -e '.[dev]'")
    import nbformat

    out = tmp_path / "my notebooks"
    proc = subprocess.run([sys.executable, str(ROOT / "lessons" / "make_notebooks.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.glob("*.ipynb")) == [p.stem + ".ipynb" for p in LESSONS]
    for path in LESSONS:
        notebook = nbformat.read(out / (path.stem + ".ipynb"), as_version=4)
        assert notebook.metadata["kernelspec"]["name"] == "python3"
        first = notebook.cells[0]
        assert first.cell_type == "markdown" and first.source.startswith(markdown_titles(path)[0])
        assert str(out / (path.stem + ".ipynb")) in proc.stdout


def test_default_notebook_folder_is_git_ignored():
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "lessons/notebooks/" in ignored and f"{lesson_helpers.DEFAULT_FIGURES}/" in ignored
    assert load_make_notebooks().DEFAULT_OUT == ROOT / "lessons" / "notebooks"


def test_figure_folder_default_env_and_show(tmp_path, monkeypatch, capsys):
    """Outside a notebook: ./lesson-figures by default, $MINIDNI_LESSON_FIGURES when set; show() saves and prints."""
    from matplotlib.figure import Figure

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(lesson_helpers.FIGURES_ENV, raising=False)
    assert not lesson_helpers.in_notebook()
    assert lesson_helpers.figure_dir() == tmp_path / "lesson-figures"
    monkeypatch.setenv(lesson_helpers.FIGURES_ENV, str(tmp_path / "elsewhere"))
    fig = Figure()
    fig.subplots().plot([0, 1])
    path = lesson_helpers.show(fig, "line.png")
    assert path == tmp_path / "elsewhere" / "line.png" and path.stat().st_size > 1000
    lesson_helpers.heading("1. A section")
    assert capsys.readouterr().out == f"figure: {path}\n\n## 1. A section\n"


def test_drawing_a_timeline_leaves_the_backend_alone():
    """draw_timeline uses the object API: the backend a notebook (or the user) chose stays, and pyplot is not loaded."""
    code = ("import sys, matplotlib; matplotlib.use('svg'); from minidni.dni import schedules as S; "
            "fig = S.locked().draw(2, 2); print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules, "
            "len(fig.axes))")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["svg", "False", "1"]


def first_code_cell(path):
    """The source of a lesson's first code cell (its imports and helpers)."""
    cells = re.split(r"^# %%.*$", path.read_text(), flags=re.M)
    markers = re.findall(r"^# %%.*$", path.read_text(), flags=re.M)
    return next(src for marker, src in zip(markers, cells[1:]) if "[markdown]" not in marker)


def test_lesson02_timing_says_when_it_cannot_tell(capsys):
    """Lesson 02's verdicts: a clear ratio on quiet runs, "rough" on widely spread runs, and "too busy to tell" when the
    version that should win lost, instead of drawing the opposite conclusion (issue 13: BLAS timed 10x slower)."""
    helpers = {}
    exec(compile(first_code_cell(ROOT / "lessons" / "02_from_a_loop_to_a_kernel.py"), "lesson02", "exec"), helpers)
    compare, table, time_us = helpers["compare"], helpers["table"], helpers["time_us"]
    quiet = {"loop": [1400.0, 1410.0, 1420.0], "blas": [450.0, 455.0, 460.0]}
    assert compare(quiet, "loop", "blas") == "blas is 3.1x faster than loop."
    spread = {"loop": [1400.0, 1410.0, 1420.0], "blas": [450.0, 1300.0, 1500.0]}
    assert "rough" in compare(spread, "loop", "blas")
    starved = {"loop": [1435.0, 1440.0, 1450.0], "blas": [13379.0, 14000.0, 15000.0]}  # the numbers
    verdict = compare(starved, "loop", "blas")
    assert verdict.startswith("too busy to tell") and "x faster" not in verdict
    capsys.readouterr()
    assert table("t", spread, "loop") == {"loop": 1400.0, "blas": 450.0}
    assert "noisy (median/best over 1.5): blas." in capsys.readouterr().out
    runs = time_us(sum, range(10), repeat=4)
    assert len(runs) == 4 and runs == sorted(runs) and runs[0] > 0

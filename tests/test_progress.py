"""Progress on long jobs (issue 13, item 13): a tqdm bar whose rate starts after the first (compiling) step, plain
lines at every 10% when stderr is a file, nested bars for a table's cells and a comparison's sub-runs, and --quiet."""

import io
import time

from minidni.cli import main
from minidni.progress import Progress

TINY = ["--steps", "2", "--batch-size", "32", "--set", "hidden=8", "--set", "eval_batch_size=5000"]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_file_gets_one_line_per_10_percent():
    log = io.StringIO()
    with Progress(1000, desc="run", stream=log) as bar:
        for step in range(1, 1001):
            bar.update(step, f"loss {1 / step:.3f}")
    lines = log.getvalue().splitlines()
    assert 9 <= len(lines) <= 10 and "\r" not in log.getvalue()
    assert lines[-1].startswith("run: 100%") and "1000/1000" in lines[-1] and "loss 0.001" in lines[-1]


def test_the_rate_is_measured_after_the_first_step():
    for stream in (Terminal(), io.StringIO()):
        bar = Progress(100, stream=stream)
        time.sleep(0.4)                     # the first step: compiling kernels
        bar.update(1)
        for step in range(2, 51):
            bar.update(step)
        if bar.bar is not None:             # the terminal: tqdm's own clock restarted after step 1
            assert bar.bar.format_dict["elapsed"] < 0.3
            assert bar.bar.format_dict["initial"] == 1
        assert "<00:00" in bar.line()       # ETA from 49 fast steps: well under a second, not ~0.4 s x 50
        bar.close()


def test_quiet_prints_nothing(tmp_path, capsys):
    assert main(["run", "mnist-fcn-bprop", "--out", str(tmp_path / "run"), *TINY, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_table_shows_its_cells_then_their_steps(tmp_path, capsys):
    assert main(["table", "mnist", "--layers", "3", "--methods", "no-bprop", "bprop", "--out", str(tmp_path),
                 "--steps", "2", "--batch-size", "32", "--set", "hidden=8"]) == 0
    err = capsys.readouterr().err
    assert "== cell 1/2: mnist-fcn-no-bprop" in err and "== cell 2/2: mnist-fcn-bprop" in err
    assert "mnist-fcn-bprop: 100%" in err and "2/2" in err           # the cell's own bar of steps
    assert "table cells: 100%" in err                                 # the bar of cells


def test_compare_shows_its_sub_runs_then_their_steps(tmp_path, capsys):
    assert main(["run", "mnist-dni-compare", "--out", str(tmp_path / "c"), *TINY,
                 "--set", 'methods=["bprop", "cdni"]']) == 0
    err = capsys.readouterr().err
    assert "== 1/2 bprop" in err and "== 2/2 cdni" in err
    assert "mnist-fcn-cdni: 100%" in err and "mnist-dni-compare: 100%" in err

"""`minidni report` (issue 13, item 5): a damaged summary.json or metrics.jsonl marks its run and the report goes on;
a comparison (comparison.png) counts as finished; the table fits the terminal's width."""

import json

import pytest

from minidni.cli import main
from minidni.results import format_report


def finished_run(folder, experiment="mnist-fcn-bprop", **config):
    folder.mkdir(parents=True)
    cfg = {"layers": 3, "lr": 1e-3, "batch_size": 256, "synth_hidden": [1024, 1024], "synth_lr": 3e-5, **config}
    (folder / "summary.json").write_text(json.dumps({
        "experiment": experiment, "status": "finished", "steps": 4280, "epochs": 20.0, "val_error": 0.0191,
        "test_error": 0.0172, "wall_time_s": 123.4, "backend": "numba", "config": cfg,
        "files": {"curves": "curves.png"}}))
    (folder / "curves.png").write_bytes(b"\x89PNG")
    return folder


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    finished_run(root / "bprop-3")
    finished_run(root / "a-rather-long-folder-name-of-a-dni-run-with-many-layers", "mnist-fcn-dni", layers=6,
                 lr=3e-4, synth_lr=1e-5, synth_hidden=[256, 256])
    broken = root / "broken-summary"
    broken.mkdir()
    (broken / "summary.json").write_text('{"experiment": "mnist-fcn-bprop", "steps": 42')   # cut off mid-write
    bad_metrics = root / "bad-metrics"
    bad_metrics.mkdir()
    (bad_metrics / "metrics.jsonl").write_text('{"step": 1, "split": "train"}\n{"step": 2, "spl\n')
    compare = root / "compare"
    compare.mkdir()
    (compare / "summary.json").write_text(json.dumps({
        "experiment": "mnist-dni-compare", "status": "finished", "steps": 1070, "epochs": 5.0, "val_error": None,
        "test_error": None, "wall_time_s": 60.0, "backend": "numba", "config": {"layers": 3},
        "files": {"comparison": "comparison.json", "plot": "comparison.png"}}))
    (compare / "comparison.png").write_bytes(b"\x89PNG")
    return root


def test_damaged_files_mark_their_run_and_the_report_goes_on(runs):
    text = format_report(runs, width=200)
    rows = {line.split()[0]: line for line in text.splitlines()[2:] if line and not line.startswith(("plots", " "))}
    assert "damaged" in rows["broken-summary"] and "damaged" in rows["bad-metrics"]
    assert "finished" in rows["bprop-3"] and "1.72" in rows["bprop-3"]
    assert f"{runs / 'broken-summary'}: damaged, summary.json: JSONDecodeError" in text
    assert f"{runs / 'bad-metrics'}: damaged, metrics.jsonl: JSONDecodeError" in text


def test_a_comparison_is_finished_and_its_plot_is_listed(runs):
    text = format_report(runs, width=200)
    compare = next(line for line in text.splitlines() if line.startswith("compare "))
    assert "finished" in compare
    assert f"  {runs / 'compare' / 'comparison.png'}" in text.splitlines()
    assert "compare: no plot yet" not in text


def test_the_table_fits_80_columns(runs):
    text = format_report(runs, width=80)
    table = text.split("\n\nplots:")[0].splitlines()
    assert max(len(line) for line in table) <= 80, "\n".join(table)
    assert table[0].split()[:2] == ["run", "experiment"] and "test err %" in table[0]   # the telling columns stay
    assert "left out to fit 80 columns" in " ".join(table)
    assert format_report(runs, width=400).count("left out") == 0


def test_report_command_uses_the_terminal_width(runs, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["report", str(runs)]) == 0
    out = capsys.readouterr().out.split("\n\nplots:")[0]
    assert max(len(line) for line in out.splitlines()) <= 80


def test_an_unfinished_run_without_accuracy_is_unfinished_not_damaged(tmp_path):
    """A character model's validation records carry bits per character, not accuracy: the run is in progress."""
    from minidni.results import load_run

    run = tmp_path / "ptb-dni-T2"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"split": "val", "step": 50, "epoch": 0, "bpc": 2.4,
                                                   "wall_time_s": 3.0}) + "\n")
    row = load_run(run)
    assert row["status"] == "unfinished" and row["steps"] == 50 and row["val_error"] is None

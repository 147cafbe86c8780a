"""The DNI experiments of the registry (feedforward.py, mnist_dni.py) and `minidni table`: each runs a few steps through
the command line and leaves its files; the table collects runs and prints the paper's numbers; bad names list choices.
"""
import json

import numpy as np
import pytest

from minidni import nn
from minidni.cli import main
from minidni.data.cifar10 import write_cifar10_batches
from minidni.experiments.feedforward import OutputLayerOnly
from minidni.table import PAPER

from helpers import exit_code

TINY = ["--steps", "3", "--batch-size", "16", "--quiet", "--set", "eval_batch_size=5000"]
CNN = ["--steps", "2", "--batch-size", "8", "--quiet", "--set", "channels=4", "--set", "eval_subset=16"]


def records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def is_png(path):
    return path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name,extra", [
    ("mnist-fcn-no-bprop", []),
    ("mnist-fcn-dni", ["--layers", "4", "--set", "diagnose_every=1"]),
    ("mnist-fcn-cdni", ["--layers", "3", "--set", "diagnose_every=1"]),
    ("mnist-unlock", ["--set", "diagnose_every=1"]),
])
def test_fcn_experiments_write_results_and_plots(name, extra, tmp_path):
    out = tmp_path / name
    assert main(["run", name, "--out", str(out), *TINY, *extra]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and 0 <= summary["test_error"] <= 1
    assert is_png(out / "curves.png")
    if "dni" in name or name == "mnist-unlock":
        diag = [r for r in records(out) if r["split"] == "synthetic_grad"]
        assert {r["module"] for r in diag} == set(range(summary["config"]["layers"] - 1))
        assert all(-1 <= r["cos"] <= 1 and r["rel_err"] >= 0 for r in diag)
        assert is_png(out / "synthetic_grad.png") and set(summary["synthetic_grad"]) == {str(m) for m in
                                                                                          range(len(diag) // 3)}
    if name == "mnist-unlock":
        assert is_png(out / "timeline.png") and is_png(out / "timeline_schedule.png")


@pytest.mark.parametrize("method", ["no-bprop", "bprop", "dni", "cdni"])
def test_mnist_cnn_experiments_run(method, tmp_path):
    out = tmp_path / method
    assert main(["run", f"mnist-cnn-{method}", "--out", str(out), *CNN]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["config"]["channels"] == 4
    assert is_png(out / "curves.png")
    if "dni" in method:
        assert is_png(out / "synthetic_grad.png")


@pytest.mark.parametrize("runner", ["sequential", "concurrent"])
def test_pipeline_trains_with_a_runner_and_draws_its_timeline(runner, tmp_path):
    out = tmp_path / runner
    assert main(["run", "mnist-pipeline", "--out", str(out), "--steps", "6", "--batch-size", "16", "--quiet",
                 "--set", f"runner=\"{runner}\"", "--set", "eval_every=3", "--set", "diagnose_every=2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["runner"] == runner and 0 <= summary["test_error"] <= 1
    splits = [r["split"] for r in records(out)]
    assert splits.count("val") == 2 and splits.count("test") == 1
    assert ("synthetic_grad" in splits) == (runner == "sequential")
    for png in ("curves.png", "timeline.png", "timeline_schedule.png"):
        assert is_png(out / png)


def test_async_and_compare_put_runs_side_by_side(tmp_path, capsys):
    out = tmp_path / "async"
    assert main(["run", "mnist-async", "--out", str(out), "--steps", "3", "--batch-size", "16",
                 "--set", "p_updates=[1.0, 0.2]", "--set", "diagnose_every=0"]) == 0
    comparison = json.loads((out / "comparison.json").read_text())
    assert set(comparison["runs"]) == {"p1", "p0.2"} and is_png(out / "comparison.png")
    assert json.loads((out / "p0.2" / "summary.json").read_text())["p_update"] == 0.2
    assert "p0.2" in capsys.readouterr().out

    out = tmp_path / "compare"
    assert main(["run", "mnist-dni-compare", "--out", str(out), "--steps", "3", "--batch-size", "16", "--quiet",
                 "--set", "eval_every=3"]) == 0
    comparison = json.loads((out / "comparison.json").read_text())
    assert list(comparison["runs"]) == ["bprop", "dni", "cdni"] and is_png(out / "comparison.png")
    assert all(r["test_error"] is not None for r in comparison["runs"].values())


def test_no_bprop_moves_only_the_output_layer():
    model = nn.mlp(20, 16, 3, n_hidden=2, rng=np.random.default_rng(0))
    before = [p.data.copy() for p in model.parameters()]
    learner = OutputLayerOnly(model, lr=1e-2)
    rng = np.random.default_rng(1)
    for _ in range(3):
        learner.train_step(rng.random((8, 20)).astype(np.float32), rng.integers(0, 3, 8))
    head = {id(p) for p in model[-1].parameters()}
    for p, old in zip(model.parameters(), before):
        assert np.array_equal(p.data, old) != (id(p) in head)


def test_synth_loss_setting_reaches_every_interface():
    from minidni.config import ConfigError, override
    from minidni.experiments.feedforward import CdniFcnConfig, DniCnnConfig, build_dni_net

    assert CdniFcnConfig().synth_loss == DniCnnConfig().synth_loss == "mean"
    net = build_dni_net("fcn", override(CdniFcnConfig(), {"synth_loss": "sum", "hidden": 8}), (784,), True)
    assert [itf.loss for itf in net.interfaces] == ["sum", "sum"] and "(loss: sum)" in repr(net.interfaces[0])
    with pytest.raises(ConfigError, match="synth_loss"):
        override(CdniFcnConfig(), {"synth_loss": "l1"})


def test_cifar10_needs_data_and_runs_on_a_given_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MINIDNI_DATA", raising=False)
    assert exit_code(["run", "cifar10-fcn-dni", "--out", str(tmp_path / "none"), "--quiet"]) == 1
    assert "MINIDNI_DATA" in capsys.readouterr().err

    rng = np.random.default_rng(0)
    batches = {f"data_batch_{i}": (rng.integers(0, 256, (8, 3072)), rng.integers(0, 10, 8)) for i in range(1, 6)}
    batches["test_batch"] = (rng.integers(0, 256, (8, 3072)), rng.integers(0, 10, 8))
    folder = write_cifar10_batches(tmp_path / "cifar", batches)
    common = ["--data-dir", str(folder), "--steps", "2", "--batch-size", "8", "--set", "validation=8", "--quiet"]
    assert main(["run", "cifar10-fcn-cdni", "--out", str(tmp_path / "fcn"), *common, "--set", "hidden=8"]) == 0
    assert main(["run", "cifar10-cnn-dni", "--out", str(tmp_path / "cnn"), *common, "--set", "channels=2"]) == 0
    for run in ("fcn", "cnn"):
        assert json.loads((tmp_path / run / "summary.json").read_text())["dataset"] == "cifar10"


def fake_run(folder, test_error, epochs=20):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"test_error": test_error, "val_error": test_error, "steps": 4280,
                                                     "epochs": epochs, "wall_time_s": 1.0,
                                                     "config": {"batch_size": 256}}))


def test_table_collects_runs_and_prints_the_papers_numbers(tmp_path, capsys):
    fake_run(tmp_path / "bprop-3", 0.0171)
    fake_run(tmp_path / "cdni-3", 0.0202)
    assert main(["table", "mnist", "--layers", "3", "4", "--methods", "bprop", "cdni", "--out", str(tmp_path),
                 "--collect"]) == 0
    out = capsys.readouterr().out
    assert "1.71 (2.0)" in out and "2.02 (2.2)" in out and "- (1.8)" in out and "- (1.9)" in out
    assert "500k iterations" in out and "20 epochs" in out
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["rows"][0]["bprop"] == {"measured": 1.71, "paper": PAPER["mnist"][3]["bprop"], "val": 1.71,
                                         "epochs": 20, "wall_time_s": 1.0}
    assert table["rows"][1]["cdni"]["measured"] is None
    assert "| 3 | 1.71 (2.0) | 2.02 (2.2) |" in (tmp_path / "table.md").read_text()


def test_table_runs_missing_cells(tmp_path, capsys):
    assert main(["table", "mnist", "--layers", "3", "--methods", "no-bprop", "cdni", "--out", str(tmp_path),
                 "--steps", "4", "--batch-size", "32", "--set", "diagnose_every=0"]) == 0
    for cell in ("no-bprop-3", "cdni-3"):
        summary = json.loads((tmp_path / cell / "summary.json").read_text())
        assert summary["steps"] == 4 and summary["schedule"]["lr_milestones"] == [2, 3]  # 1/2 and 3/4 of the run
    assert "9.3" in capsys.readouterr().out


def test_the_cnn_rows_run_and_sit_beside_the_papers(tmp_path, capsys):
    """`table mnist --net cnn`: cells are mnist-cnn-* runs (the paper's CNN), the paper's CNN rows beside them."""
    out = tmp_path / "cnn"
    assert main(["table", "mnist", "--net", "cnn", "--layers", "3", "--methods", "bprop", "cdni", "--out", str(out),
                 "--quiet", "--steps", "2", "--batch-size", "8", "--set", "channels=4", "--set", "eval_subset=16",
                 "--set", "diagnose_every=0"]) == 0
    for cell in ("bprop-3", "cdni-3"):
        summary = json.loads((out / cell / "summary.json").read_text())
        assert summary["experiment"] == f"mnist-cnn-{cell[:-2]}" and summary["steps"] == 2
    text = capsys.readouterr().out
    assert "MNIST CNN" in text and "(0.8)" in text and "(1.0)" in text
    table = json.loads((out / "table.json").read_text())
    assert table["net"] == "cnn" and table["rows"][0]["bprop"]["paper"] == 0.8
    fake_run(tmp_path / "collected" / "dni-4", 0.0123)
    assert main(["table", "mnist", "--net", "cnn", "--out", str(tmp_path / "collected"), "--collect"]) == 0
    assert "1.23 (0.7)" in capsys.readouterr().out           # the default layers of the CNN rows: 3 and 4
    assert exit_code(["table", "mnist", "--net", "cnn", "--layers", "5", "--collect"]) != 0
    assert "[3, 4]" in capsys.readouterr().err


@pytest.mark.parametrize("argv,expect", [
    (["run", "mnist-fcn-nope"], "mnist-fcn-cdni"),
    (["table", "cifar"], "mnist"),
    (["table", "mnist", "--methods", "magic"], "cdni"),
    (["table", "mnist", "--layers", "7", "--collect"], "[3, 4, 5, 6]"),
    (["table", "mnist", "--set", "bogus=1", "--collect"], "bogus"),
])
def test_bad_names_list_the_choices(argv, expect, tmp_path, capsys):
    assert exit_code([*argv, *(["--out", str(tmp_path)] if argv[0] == "table" else [])]) == 2
    assert expect in capsys.readouterr().err

"""The `minidni` command: list, show, run (a few MNIST steps), resume, report, and its error messages."""

import json
import subprocess
import sys

import pytest

from minidni.cli import main
from minidni.config import load_toml
from minidni.experiments import get
from minidni.train import CHECKPOINT, CONFIG, CURVES, METRICS, SUMMARY

from helpers import exit_code

NAME = "mnist-fcn-bprop"
QUICK = ["--steps", "20", "--batch-size", "64", "--set", "eval_batch_size=5000", "--quiet"]



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One short MNIST run shared by the tests that read its outputs."""
    out = tmp_path_factory.mktemp("runs") / "bprop3"
    assert main(["run", NAME, "--out", str(out), *QUICK]) == 0
    return out


def test_run_writes_metrics_summary_and_plot(run_dir):
    summary = json.loads((run_dir / SUMMARY).read_text())
    assert summary["experiment"] == NAME and summary["steps"] == 20
    assert summary["config"]["batch_size"] == 64 and summary["config"]["layers"] == 3
    assert 0.0 <= summary["test_error"] <= 1.0 and 0.0 <= summary["val_error"] <= 1.0
    records = [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "val", "test"}
    assert (run_dir / CURVES).read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / CHECKPOINT).is_file()
    assert load_toml(run_dir / CONFIG)["steps"] == 20


def test_report_lists_the_run_and_its_plot(run_dir, capsys):
    assert main(["report", str(run_dir.parent)]) == 0
    out = capsys.readouterr().out
    assert "bprop3" in out and NAME in out and "test err %" in out
    assert str(run_dir / CURVES) in out


def test_run_refuses_to_overwrite_and_resume_continues(run_dir, tmp_path, capsys):
    assert exit_code(["run", NAME, "--out", str(run_dir), *QUICK]) == 2
    assert "--resume" in capsys.readouterr().err

    out = tmp_path / "resumed"
    assert main(["run", NAME, "--out", str(out), "--steps", "6", "--batch-size", "64", "--quiet"]) == 0
    # a longer run is the explicit --extend; the batch size comes from config.toml
    assert main(["run", NAME, "--out", str(out), "--resume", "--extend", "--steps", "10", "--quiet"]) == 0
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["steps"] == 10 and summary["config"]["batch_size"] == 64
    assert [h["event"] for h in summary["history"]] == ["started", "extended"]
    assert summary["history"][1]["at_step"] == 6 and summary["history"][1]["changes"]["steps"] == [6, 10]
    # the decays the 6-step run made (lr_decay_at 1/2, 3/4 of 6 steps: steps 3 and round(4.5) = 4) stay put
    assert summary["config"]["lr_milestones"] == [3, 4] and summary["config"]["lr_decay_at"] == []
    assert load_toml(out / CONFIG)["steps"] == 10


def test_list_and_show(capsys):
    assert main(["list"]) == 0
    assert NAME in capsys.readouterr().out
    assert main(["show", NAME, "--layers", "5"]) == 0
    shown = capsys.readouterr().out
    assert "layers = 5" in shown and "lr_milestones = " in shown


def test_show_output_is_a_config_file(tmp_path, capsys):
    main(["show", NAME])
    path = tmp_path / "cfg.toml"
    path.write_text(capsys.readouterr().out)
    assert load_toml(path) == get(NAME).config().to_dict()


def test_config_file_overrides_defaults_and_flags_override_the_file(tmp_path, capsys):
    path = tmp_path / "cfg.toml"
    path.write_text("layers = 4\nlr = 3e-4\n")
    main(["show", NAME, "--config", str(path), "--lr", "5e-4"])
    shown = load_toml_text(tmp_path, capsys.readouterr().out)
    assert shown["layers"] == 4 and shown["lr"] == 5e-4


def load_toml_text(tmp_path, text):
    path = tmp_path / "shown.toml"
    path.write_text(text)
    return load_toml(path)


@pytest.mark.parametrize("argv, message", [
    (["show", "mnist-nope"], "invalid choice: 'mnist-nope' (choose from "),
    (["run", "mnist-nope"], "invalid choice"),
    (["show", NAME, "--layers", "7"], "layers must be one of 3, 4, 5, 6; got 7"),
    (["show", NAME, "--lr", "-1"], "lr must be > 0.0"),
    (["show", NAME, "--backend", "cuda"], "invalid choice: 'cuda' (choose from 'numba', 'numpy')"),
    (["show", NAME, "--steps", "ten"], "invalid int value: 'ten'"),
    (["show", NAME, "--set", "lyers=4"], "no setting 'lyers'. Did you mean 'layers'?"),
    (["show", NAME, "--set", "layers=four"], "layers must be an integer; got 'four'"),
    (["run", NAME, "--resume"], "--resume needs --out"),
    (["report", "/nonexistent/runs"], "does not exist"),
    ([], "required"),
])
def test_bad_input_exits_2_with_a_clear_message(argv, message, capsys):
    assert exit_code(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_config_file(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("batch_size = true\n")
    assert exit_code(["show", NAME, "--config", str(path)]) == 2
    assert "batch_size must be an integer; got True" in capsys.readouterr().err


def test_console_entry_point_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "minidni", "list"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert NAME in done.stdout


def test_missing_data_is_reported_with_exit_code_1(tmp_path, capsys):
    argv = ["run", NAME, "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "no-mnist"), "--quiet"]
    assert exit_code(argv) == 1
    assert "MNIST file 'train-images-idx3-ubyte' not found" in capsys.readouterr().err

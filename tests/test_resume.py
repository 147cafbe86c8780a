"""Resuming what is not a plain Trainer run (issue 13, items 1-3): mnist-pipeline checkpoints at its drained chunk ends
and resumes bit-identically; an interrupted comparison resumes with exactly its saved settings."""

import json

import numpy as np
import pytest

from minidni.cli import main
from minidni.config import override
from minidni.experiments import EXPERIMENTS, Experiment, get
from minidni.train import CHECKPOINT, CONFIG, METRICS, SUMMARY, read_checkpoint

PIPELINE = {"steps": 6, "batch_size": 16, "eval_every": 2, "hidden": 16, "synth_hidden": (8,), "diagnose_every": 0,
            "eval_batch_size": 5000}


def numbers(folder):
    rows = [json.loads(line) for line in (folder / METRICS).read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("wall_time_s", "samples_per_s")} for r in rows]


def test_pipeline_resumes_bit_identically(tmp_path):
    # (the sequential runner: tests/test_dni_runner.py shows the concurrent one bit-identical to it)
    exp = get("mnist-pipeline")
    cfg = override(exp.config(), PIPELINE)
    exp.run(cfg, tmp_path / "straight", quiet=True)

    def interrupt_at_4(state):
        if state.step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        exp.run(cfg, tmp_path / "split", quiet=True, hooks=[interrupt_at_4])
    assert read_checkpoint(tmp_path / "split" / CHECKPOINT)[0]["step"] == 4
    assert not (tmp_path / "split" / SUMMARY).exists()
    summary = exp.run(cfg, tmp_path / "split", resume=True, quiet=True)

    _, straight = read_checkpoint(tmp_path / "straight" / CHECKPOINT)
    _, resumed = read_checkpoint(tmp_path / "split" / CHECKPOINT)
    assert straight.keys() == resumed.keys()
    for key in straight:                          # every parameter, buffer and Adam moment, bit for bit
        assert np.array_equal(straight[key], resumed[key]), key
    assert numbers(tmp_path / "split") == numbers(tmp_path / "straight")
    assert [h["event"] for h in summary["history"]] == ["started", "resumed"]


def test_pipeline_resume_through_the_cli_refuses_changed_settings(tmp_path, capsys):
    out = tmp_path / "pipe"
    tiny = ["--steps", "4", "--batch-size", "16", "--set", "hidden=16", "--set", "synth_hidden=[8]", "--quiet",
            "--set", "eval_every=2", "--set", "eval_batch_size=5000"]
    assert main(["run", "mnist-pipeline", "--out", str(out), *tiny]) == 0
    assert (out / CHECKPOINT).is_file()
    try:
        code = main(["run", "mnist-pipeline", "--out", str(out), "--resume", "--lr", "0.5"])
    except SystemExit as stop:
        code = stop.code
    assert code == 2 and "lr = 0.001 -> 0.5" in capsys.readouterr().err
    assert main(["run", "mnist-pipeline", "--out", str(out), "--resume", "--extend", "--steps", "6", "--quiet"]) == 0
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["steps"] == 6 and [h["event"] for h in summary["history"]][-1] == "extended"


def test_interrupted_comparison_resumes_with_its_saved_settings(tmp_path, monkeypatch, capsys):
    out = tmp_path / "compare"
    argv = ["run", "mnist-dni-compare", "--out", str(out), "--steps", "2", "--batch-size", "16", "--quiet",
            "--set", "hidden=8", "--set", "eval_batch_size=5000",
            "--set", 'methods=["bprop", "cdni"]']
    real = EXPERIMENTS["mnist-fcn-cdni"]

    def interrupted(config, out_dir, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setitem(EXPERIMENTS, "mnist-fcn-cdni", Experiment(real.name, real.description, real.config,
                                                                   interrupted))
    assert main(argv) == 130
    assert f"Continue with: minidni run mnist-dni-compare --out {out} --resume" in capsys.readouterr().err
    assert (out / CONFIG).is_file() and (out / "bprop" / SUMMARY).is_file()
    monkeypatch.setitem(EXPERIMENTS, "mnist-fcn-cdni", real)

    # no flags: the saved config.toml (2 steps, hidden 8) is used, not the defaults
    assert main(["run", "mnist-dni-compare", "--out", str(out), "--resume", "--quiet"]) == 0
    comparison = json.loads((out / "comparison.json").read_text())
    assert list(comparison["runs"]) == ["bprop", "cdni"]
    assert all(r["steps"] == 2 for r in comparison["runs"].values())
    assert "2 steps" in comparison["title"]                 # not the default "5 epochs"
    cdni = json.loads((out / "cdni" / SUMMARY).read_text())
    assert cdni["config"]["hidden"] == 8
    # a comparison has no checkpoint of its own: it cannot be extended
    try:
        code = main(["run", "mnist-dni-compare", "--out", str(out), "--resume", "--extend", "--steps", "4"])
    except SystemExit as stop:
        code = stop.code
    assert code == 2 and "cannot be extended" in capsys.readouterr().err


def test_table_refuses_to_continue_a_cell_with_another_budget(tmp_path, capsys):
    cell = tmp_path / "grid" / "bprop-3"
    tiny = ["--batch-size", "32", "--set", "hidden=8", "--quiet"]
    assert main(["table", "mnist", "--layers", "3", "--methods", "bprop", "--out", str(tmp_path / "grid"),
                 "--steps", "2", *tiny]) == 0
    (cell / SUMMARY).unlink()                              # as if interrupted: only the checkpoint is left
    try:
        code = main(["table", "mnist", "--layers", "3", "--methods", "bprop", "--out", str(tmp_path / "grid"),
                     "--steps", "4", *tiny])
    except SystemExit as stop:
        code = stop.code
    assert code == 2 and "steps = 2 -> 4" in capsys.readouterr().err

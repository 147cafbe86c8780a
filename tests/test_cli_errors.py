"""Every failure of the `minidni` command ends in one line on stderr and a non-zero exit code, never a traceback
(issue 13, items 7-8); --debug / MINIDNI_DEBUG=1 add the traceback. Each case runs through minidni.cli.main in-process,
on tiny settings (2 steps, 8 hidden units)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from minidni import kernels
from minidni.cli import main
from minidni.data.mnist import PACKAGED_DIR, TRAIN_IMAGES, write_idx
from minidni.train import CHECKPOINT, SUMMARY

from helpers import exit_code

NAME = "mnist-fcn-bprop"
TINY = ["--steps", "2", "--batch-size", "32", "--set", "hidden=8", "--set", "eval_batch_size=5000", "--quiet"]



@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-step run of mnist-fcn-bprop (3 layers, 8 hidden units)."""
    out = tmp_path_factory.mktemp("runs") / "bprop"
    assert main(["run", NAME, "--out", str(out), *TINY]) == 0
    return out


def copy_of(run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(run, out)
    return out


def mnist_folder(tmp_path, train_images):
    """A --data-dir holding the packaged MNIST files, with train-images replaced by the bytes `train_images`."""
    folder = tmp_path / "mnist"
    shutil.copytree(PACKAGED_DIR, folder)
    (folder / f"{TRAIN_IMAGES}.gz").unlink()
    (folder / TRAIN_IMAGES).write_bytes(train_images)
    return folder


def idx_bytes(tmp_path, array):
    return write_idx(tmp_path / "x.idx", array, compress=False).read_bytes()


def raise_in(monkeypatch, target, exc):
    def fail(*args, **kwargs):
        raise exc
    monkeypatch.setattr(target, fail)


# (name, argv(tmp_path, finished run) -> list, exit code, words the one line must hold, setup(monkeypatch, tmp_path))
CASES = [
    ("batch larger than the data set", lambda t, r: ["run", NAME, "--out", str(t / "o"), *TINY, "--batch-size",
                                                      "100000"], 1, ["batch_size = 100000 is larger"], None),
    ("directory as --config", lambda t, r: ["run", NAME, "--config", str(t), "--out", str(t / "o")], 2,
     ["is a folder"], None),
    ("binary file as --config", lambda t, r: ["show", NAME, "--config", str(t / "bin.toml")], 2,
     ["not a text file"], lambda m, t: (t / "bin.toml").write_bytes(b"\x00\xff\xfe\x80")),
    ("truncated MNIST file", lambda t, r: ["run", NAME, "--out", str(t / "o"), *TINY, "--data-dir",
                                           str(t / "mnist")], 1, ["truncated or corrupt"],
     lambda m, t: mnist_folder(t, (PACKAGED_DIR / f"{TRAIN_IMAGES}.gz").read_bytes()[:20000])),
    ("corrupted MNIST file", lambda t, r: ["run", NAME, "--out", str(t / "o"), *TINY, "--data-dir",
                                           str(t / "mnist")], 1, ["bad IDX magic"],
     lambda m, t: mnist_folder(t, b"this is not an IDX file")),
    ("wrong-type MNIST file", lambda t, r: ["run", NAME, "--out", str(t / "o"), *TINY, "--no-verify", "--data-dir",
                                            str(t / "mnist")], 1, ["expected uint8 data of shape (60000, 28, 28)"],
     lambda m, t: mnist_folder(t, idx_bytes(t, np.zeros(10, np.int16)))),
    ("hash mismatch", lambda t, r: ["run", NAME, "--out", str(t / "o"), *TINY, "--data-dir", str(t / "mnist")], 1,
     ["SHA-256 mismatch", "--no-verify"], lambda m, t: mnist_folder(t, idx_bytes(t, np.zeros((2, 28, 28), np.uint8)))),
    ("--resume into another experiment's folder", lambda t, r: ["run", "mnist-fcn-dni", "--out", str(r), "--resume"],
     2, ["holds a run of mnist-fcn-bprop", "minidni run mnist-fcn-bprop"], None),
    ("--resume with another layer count", lambda t, r: ["run", NAME, "--out", str(r), "--resume", "--layers", "4"],
     2, ["layers = 3 -> 4"], None),
    ("--resume with another lr", lambda t, r: ["run", NAME, "--out", str(r), "--resume", "--lr", "0.01"], 2,
     ["lr = 0.001 -> 0.01"], None),
    ("--resume that shortens", lambda t, r: ["run", NAME, "--out", str(r), "--resume", "--steps", "1"], 2,
     ["steps = 2 -> 1", "--extend"], None),
    ("--extend without --resume", lambda t, r: ["run", NAME, "--out", str(t / "o"), "--extend", "--steps", "9"], 2,
     ["--extend goes with --resume"], None),
    ("--out onto an existing file", lambda t, r: ["run", NAME, "--out", str(t / "file"), *TINY], 2, ["is a file"],
     lambda m, t: (t / "file").write_text("x")),
    ("output folder not writable", lambda t, r: ["run", NAME, "--out", str(t / "o"), *TINY], 2, ["not writable"],
     lambda m, t: m.setattr("minidni.cli.os.access", lambda path, mode: False)),
    ("writing fails with PermissionError", lambda t, r: ["run", NAME, "--out", str(t / "o"), *TINY], 1,
     ["Permission denied", "writable"],
     lambda m, t: raise_in(m, "minidni.train.Trainer.fit", PermissionError(13, "Permission denied",
                                                                            str(t / "o" / "config.toml")))),
    ("corrupted checkpoint", lambda t, r: ["run", NAME, "--out", str(t / "copy"), "--resume"], 1,
     ["not a readable checkpoint", "BadZipFile"], None),
    ("Ctrl-C during minidni table", lambda t, r: ["table", "mnist", "--layers", "3", "--methods", "bprop", "--out",
                                                  str(t / "grid"), "--steps", "2", "--quiet"], 130,
     ["Continue with: minidni table"], None),  # (the experiment raises KeyboardInterrupt: _ctrl_c_in_table)
    ("MINIDNI_BACKEND=bogus", lambda t, r: ["list"], 1, ["MINIDNI_BACKEND='bogus'", "numba, numpy"],
     lambda m, t: m.setattr(kernels, "active", kernels._UnknownBackend(
         "the environment variable MINIDNI_BACKEND='bogus' names no kernel backend: set it to one of numba, numpy, "
         "or unset it (default: numba)"))),
    ("out of memory (--set hidden=100000)", lambda t, r: ["run", NAME, "--out", str(t / "o"), *TINY, "--set",
                                                          "hidden=100000"], 1, ["out of memory", "--set hidden"],
     lambda m, t: raise_in(m, "minidni.experiments.mnist_fcn.mlp", MemoryError(
         "Unable to allocate 74.5 GiB for an array with shape (100000, 100000) and data type float64"))),
    ("bogus CIFAR-10 tarball", lambda t, r: ["run", "cifar10-fcn-bprop", "--out", str(t / "o"), "--data-dir",
                                             str(t / "cifar-10-python.tar.gz"), "--steps", "2", "--quiet"], 1,
     ["cannot read it as a tar archive", "--data-dir"],
     lambda m, t: (t / "cifar-10-python.tar.gz").write_bytes(b"not a tarball" * 100)),
    ("Ctrl-C during start-up", lambda t, r: ["run", NAME, "--out", str(t / "o"), *TINY], 130,
     ["interrupted before anything was saved"],
     lambda m, t: raise_in(m, "minidni.experiments.mnist_fcn.load_mnist", KeyboardInterrupt())),
    ("divergence", lambda t, r: ["run", NAME, "--out", str(t / "o"), *TINY, "--steps", "6", "--lr", "1e6"], 1,
     ["diverged at step", "lower --lr"], None),
    ("table --collect on an empty folder", lambda t, r: ["table", "mnist", "--out", str(t), "--collect"], 2,
     ["no runs of the grid"], None),
]


def _ctrl_c_in_table(monkeypatch):
    from minidni.experiments import EXPERIMENTS, Experiment

    real = EXPERIMENTS[NAME]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setitem(EXPERIMENTS, NAME, Experiment(real.name, real.description, real.config, interrupted))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_error_is_one_line_and_a_nonzero_exit(case, finished, tmp_path, monkeypatch, capsys):
    name, argv, code, words, setup = case
    monkeypatch.delenv("MINIDNI_DEBUG", raising=False)
    if name == "Ctrl-C during minidni table":
        _ctrl_c_in_table(monkeypatch)
    elif setup is not None:
        setup(monkeypatch, tmp_path)
    if name == "corrupted checkpoint":
        (copy_of(finished, tmp_path) / CHECKPOINT).write_bytes(b"PK\x03\x04 truncated")
    capsys.readouterr()
    assert exit_code(argv(tmp_path, finished)) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]
    if name == "Ctrl-C during start-up":
        assert "--resume" not in err


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    argv = ["run", NAME, "--out", str(tmp_path / "o"), *TINY, "--batch-size", "100000"]
    assert exit_code([*argv, "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("MINIDNI_DEBUG", "1")
    assert exit_code(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("minidni run: error: Trainer: batch_size")


def test_divergence_is_recorded_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    # an exploding lr: stopped, summary.json says so, the checkpoint is the last good one
    out2 = tmp_path / "o2"
    assert exit_code(["run", NAME, "--out", str(out2), *TINY, "--steps", "8", "--checkpoint-every", "1",
                      "--lr", "1e6"]) == 1
    summary = json.loads((out2 / SUMMARY).read_text())
    assert summary["status"] == "diverged" and summary["diverged"]["step"] >= 2
    step = summary["diverged"]["step"]
    assert summary["checkpoint_step"] == step - 1           # saved after every good step, not after the bad one
    loss = summary["diverged"]["loss"]
    assert loss == "nan" or loss == "inf" or loss > 100 * summary["diverged"]["reference_loss"]
    assert "diverged" in capsys.readouterr().err


def test_bogus_backend_in_a_fresh_process():
    env = {**os.environ, "MINIDNI_BACKEND": "bogus"}
    done = subprocess.run([sys.executable, "-m", "minidni", "list"], capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "minidni list: error: the environment variable MINIDNI_BACKEND='bogus' names no kernel backend: set it to "
        "one of numba, numpy, or unset it (default: numba)"]

"""The Trainer on a tiny synthetic data set: bit-identical resume, Ctrl-C checkpoints, the lr schedule, the files."""

import json
import signal

import numpy as np
import pytest

from minidni.config import TrainConfig, override
from minidni.data import BatchIterator, Split
from minidni.nn import mlp
from minidni.optim import Adam
from minidni.train import CHECKPOINT, CONFIG, CURVES, METRICS, SUMMARY, Backprop, Trainer, step_lr

STEPS_PER_EPOCH = 12  # 384 training examples in batches of 32


def blobs(n, seed):
    """Three Gaussian blobs in 8 dimensions: (x float32 (n, 8), y int64 (n,))."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(0.0, 2.0, (3, 8))
    y = rng.integers(0, 3, n)
    x = (centers[y] + rng.normal(0.0, 1.0, (n, 8))).astype(np.float32)
    return Split(x, y.astype(np.int64))


TRAIN, VAL, TEST = blobs(384, 1), blobs(128, 2), blobs(128, 3)


def make_trainer(out_dir, hooks=(), **settings):
    cfg = override(TrainConfig(), {"steps": 24, "batch_size": 32, "lr": 1e-2, "log_every": 4, "checkpoint_every": 0,
                                   "eval_every": 6, "backend": "numpy", **settings})
    model = mlp(8, 16, 3, n_hidden=2, batch_norm=True, rng=np.random.default_rng(cfg.seed))
    learner = Backprop(model, Adam(model.parameters(), lr=cfg.lr))
    batches = BatchIterator(TRAIN.x, TRAIN.y, cfg.batch_size, seed=cfg.seed, drop_last=True)
    return Trainer(learner, batches, cfg, out_dir, val=VAL, test=TEST, experiment="blobs", quiet=True, hooks=hooks)


def assert_same_state(a, b):
    sa, sb = a.learner.state_dict(), b.learner.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert np.array_equal(sa[key], sb[key]), key


def numbers(records):
    """The records without the timing fields, which legitimately differ between runs."""
    return [{k: v for k, v in r.items() if k not in ("samples_per_s", "wall_time_s")} for r in records]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_resume_is_bit_identical(tmp_path, backend):
    # decay inside both halves, and the resumed half crosses an epoch boundary (step 12)
    settings = {"backend": backend, "lr_gamma": 0.5, "lr_milestones": (7, 15)}
    straight = make_trainer(tmp_path / "straight", **settings)
    straight.fit()

    first = make_trainer(tmp_path / "split", **{**settings, "steps": 10})
    first.fit()
    second = make_trainer(tmp_path / "split", **settings)  # fresh objects: only the checkpoint carries state
    summary = second.fit(resume=True)

    assert summary["steps"] == straight.step == second.step == 24
    assert_same_state(straight, second)  # every parameter, batch-norm buffer and Adam moment, bit for bit

    def scheduled_val(trainer):  # (the 10-step run also evaluated at its end, step 10)
        return numbers([r for r in trainer.records if r["split"] == "val" and r["step"] % 6 == 0])

    assert scheduled_val(second) == scheduled_val(straight)


def test_ctrl_c_saves_a_checkpoint_and_resume_continues(tmp_path):
    straight = make_trainer(tmp_path / "straight")
    straight.fit()

    def interrupt_at_9(trainer):
        if trainer.step == 9:
            raise KeyboardInterrupt

    run = make_trainer(tmp_path / "run", hooks=[interrupt_at_9])
    with pytest.raises(KeyboardInterrupt):
        run.fit()
    assert (tmp_path / "run" / CHECKPOINT).is_file()
    assert not (tmp_path / "run" / SUMMARY).exists()
    with np.load(tmp_path / "run" / CHECKPOINT) as f:
        assert json.loads(str(f["meta"]))["step"] == 9

    resumed = make_trainer(tmp_path / "run")
    resumed.fit(resume=True)
    assert resumed.step == 24
    assert_same_state(straight, resumed)
    # metrics.jsonl holds each step's records once, as in the uninterrupted run
    lines = [json.loads(x) for x in (tmp_path / "run" / METRICS).read_text().splitlines()]
    assert numbers(lines) == numbers(straight.records)


def test_sigint_stops_after_the_current_step(tmp_path):
    def press_ctrl_c_at_5(trainer):
        if trainer.step == 5:
            signal.raise_signal(signal.SIGINT)  # the handler only sets a flag; the loop stops at the step boundary

    run = make_trainer(tmp_path, hooks=[press_ctrl_c_at_5])
    with pytest.raises(KeyboardInterrupt):
        run.fit()
    with np.load(tmp_path / CHECKPOINT) as f:
        assert json.loads(str(f["meta"]))["step"] == 5
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the trainer put the old handler back


def test_step_lr():
    assert [step_lr(s, 1.0, 0.5, every=10) for s in (0, 9, 10, 19, 20)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    assert [step_lr(s, 1.0, 0.1, milestones=(3, 5)) for s in (0, 2, 3, 4, 5, 100)] == \
           [1.0, 1.0, 0.1, 0.1, 0.1 ** 2, 0.1 ** 2]
    assert step_lr(50, 2e-3) == 2e-3  # gamma 1: constant


def test_trainer_applies_the_schedule(tmp_path):
    seen = []
    run = make_trainer(tmp_path, hooks=[lambda t: seen.append(t.learner.optimizer.lr)], steps=12, log_every=1,
                       lr=0.1, lr_gamma=0.5, lr_decay_every=5)
    run.fit()
    assert seen == [0.1] * 5 + [0.05] * 5 + [0.025] * 2  # the lr that step 1, 2, ... used
    train = [r for r in run.records if r["split"] == "train"]
    assert [r["lr"] for r in train] == seen


def test_metrics_summary_and_plot(tmp_path):
    summary = make_trainer(tmp_path, epochs=2, steps=0, eval_every=0).fit()
    records = [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()]
    for r in records:
        assert {"step", "epoch", "split", "loss", "accuracy", "lr", "samples_per_s", "wall_time_s"} <= r.keys()
        assert 0.0 <= r["accuracy"] <= 1.0 and np.isfinite(r["loss"])
    assert [r["step"] for r in records if r["split"] == "train"] == [4, 8, 12, 16, 20, 24]
    assert [r["step"] for r in records if r["split"] == "val"] == [12, 24]  # end of each epoch
    assert [r["step"] for r in records if r["split"] == "test"] == [24]     # test only at the end
    assert records[-1]["epoch"] == 2.0

    assert json.loads((tmp_path / SUMMARY).read_text()) == summary
    assert summary["steps"] == 2 * STEPS_PER_EPOCH and summary["epochs"] == 2.0
    assert summary["test_error"] == pytest.approx(1 - records[-1]["accuracy"])
    assert summary["val_error"] == pytest.approx(1 - records[-2]["accuracy"])
    assert summary["test_error"] < 0.2  # the blobs are easy
    assert summary["config"]["epochs"] == 2 and summary["backend"] == "numpy"
    assert {"python", "numpy", "numba", "minidni"} <= summary["versions"].keys()
    assert summary["wall_time_s"] > 0 and summary["num_parameters"] == 8 * 16 + 16 * 16 + 16 * 3 + 3 + 4 * 16
    assert (tmp_path / CURVES).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "epochs = 2" in (tmp_path / CONFIG).read_text()


def test_extra_numbers_from_a_learner_are_logged(tmp_path):
    """A learner may report more than loss and accuracy (a DNI learner: the synthesizers' losses)."""
    run = make_trainer(tmp_path, steps=8)
    inner = run.learner.train_step
    run.learner.train_step = lambda x, y: {**inner(x, y), "synthesizer_loss": 0.5}
    run.fit()
    train = [r for r in run.records if r["split"] == "train"]
    assert [r["synthesizer_loss"] for r in train] == [0.5, 0.5]


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        make_trainer(tmp_path).fit(resume=True)


# ---- the plan: one derivation of length, lr decay points and evaluation points ---------------------------------------
def test_plan_keeps_the_default_schedules_and_moves_them_with_the_budget():
    from minidni.experiments.mnist_dni import CompareConfig
    from minidni.experiments.mnist_fcn import MnistFcnConfig
    from minidni.train import plan

    p = plan(MnistFcnConfig(), 214)                       # 55,000 images in batches of 256
    assert p.total_steps == 4280 and p.lr_milestones == (2140, 3210) and p.eval_steps == tuple(range(214, 4281, 214))
    p = plan(override(MnistFcnConfig(), {"epochs": 5}), 214)
    assert p.lr_milestones == (535, 802)                  # 1/2 and 3/4 of 5 epochs, not the 20-epoch steps
    p = plan(CompareConfig(), 214)
    assert p.lr_milestones == (642, 856) and p.eval_steps == tuple(range(107, 1071, 107))
    p = plan(override(CompareConfig(), {"steps": 100}), 214)
    assert p.lr_milestones == (60, 80) and p.eval_steps == tuple(range(10, 101, 10))
    p = plan(override(CompareConfig(), {"batch_size": 128}), 429)
    assert p.total_steps == 2145 and p.lr_milestones == (1287, 1716) and len(p.eval_steps) == 10
    # absolute settings win over fractions, in the documented order
    assert plan(override(MnistFcnConfig(), {"lr_milestones": [7]}), 214).lr_milestones == (7,)
    assert plan(override(CompareConfig(), {"eval_every": 3, "steps": 9}), 214).eval_steps == (3, 6, 9)


def test_trainer_uses_the_plan(tmp_path):
    seen = []
    run = make_trainer(tmp_path, hooks=[lambda t: seen.append(t.learner.optimizer.lr)], steps=8, lr=0.1,
                       lr_gamma=0.5, lr_decay_at=(0.5,), eval_every=0, eval_count=2)
    summary = run.fit()
    assert seen == [0.1] * 4 + [0.05] * 4
    assert [r["step"] for r in run.records if r["split"] == "val"] == [4, 8]
    assert summary["schedule"]["lr_milestones"] == [4] and summary["schedule"]["eval_steps"] == [4, 8]


# ---- divergence ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e6])
def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, bad):
    from minidni.train import Diverged

    run = make_trainer(tmp_path, checkpoint_every=2)
    inner = run.learner.train_step
    run.learner.train_step = lambda x, y: {**inner(x, y), **({"loss": bad} if run.step == 6 else {})}
    with pytest.raises(Diverged, match="diverged at step 7"):
        run.fit()
    summary = json.loads((tmp_path / SUMMARY).read_text())
    assert summary["status"] == "diverged" and summary["diverged"]["step"] == 7
    assert summary["checkpoint_step"] == 6
    with np.load(tmp_path / CHECKPOINT) as f:
        assert json.loads(str(f["meta"]))["step"] == 6


def test_an_ordinary_loss_is_not_divergence(tmp_path):
    run = make_trainer(tmp_path, diverge_factor=1.5)       # the blobs' loss only falls
    assert run.fit()["status"] == "finished"
    run = make_trainer(tmp_path / "off", diverge_factor=0.0)
    inner = run.learner.train_step
    run.learner.train_step = lambda x, y: {**inner(x, y), **({"loss": 1e9} if run.step == 3 else {})}
    assert run.fit()["status"] == "finished"              # 0: only a non-finite loss stops


# ---- what a resume may and may not do ------------------------------------------------------------------------------
def test_resume_records_its_history_and_refuses_to_shorten(tmp_path):
    from minidni.train import CheckpointError

    make_trainer(tmp_path, steps=10).fit()
    with pytest.raises(CheckpointError, match="cannot be shortened"):
        make_trainer(tmp_path, steps=6).fit(resume=True)
    summary = make_trainer(tmp_path, steps=12).fit(resume=True)
    assert [h["event"] for h in summary["history"]] == ["started", "extended"]
    assert summary["history"][1]["changes"] == {"steps": [10, 12]} and summary["history"][1]["at_step"] == 10


def test_resume_refuses_a_checkpoint_of_another_network(tmp_path):
    from minidni.train import CheckpointError

    make_trainer(tmp_path, steps=4).fit()
    other = make_trainer(tmp_path)
    other.learner.model = mlp(8, 16, 3, n_hidden=3, batch_norm=True, rng=np.random.default_rng(0))  # one more layer
    with pytest.raises(CheckpointError, match="does not fit this network"):
        other.fit(resume=True)
    (tmp_path / CHECKPOINT).write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        make_trainer(tmp_path).fit(resume=True)

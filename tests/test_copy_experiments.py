"""Copy / Repeat Copy experiments (Jaderberg et al. 2016, arXiv v1 Sec. 3.2, appendix A.3): the curriculum against
hand-computed cases, the max length as the paper counts it, the files of a run, and a resume that continues exactly
(the curriculum included). Tiny LSTMs and a few batches: seconds."""
import json

import numpy as np
import pytest

from minidni.config import override
from minidni.experiments import get
from minidni.experiments.copy_rnn import Curriculum


def test_copy_curriculum_by_hand():
    c = Curriculum("copy", check_every=2, solved_bits=0.15)
    assert c.level == (1, 1) and c.max_solved() == (0, 0, 0)
    assert c.observe(1, 10) is False                      # not a check yet
    assert c.observe(0, 10) is True                       # (1 + 0) / 20 = 0.05 < 0.15: N = 1 solved
    assert c.level == (2, 1) and c.max_solved() == (1 + 3, 1, 1)
    c.observe(3, 10), c.observe(0, 10)                    # 3 / 20 = 0.15: not below, not solved
    assert c.level == (2, 1)
    c.observe(2, 10), c.observe(0, 10)                    # 0.10: solved; the counts restarted at the last check
    assert c.level == (3, 1) and c.max_solved() == (5, 2, 1)
    assert [s["step"] for s in c.state["solved"]] == [2, 6]


def test_repeat_copy_grows_N_and_R_in_turn():
    c = Curriculum("repeat-copy", check_every=1)
    levels = [c.level]
    for _ in range(5):
        c.observe(0, 5)
        levels.append(c.level)
    assert levels == [(1, 1), (2, 1), (2, 2), (3, 2), (3, 3), (4, 3)]
    assert c.max_solved() == (3 * 3 + 3, 3, 3)            # N * R + 3
    assert Curriculum.length("repeat-copy", 7, 8) == 59 and Curriculum.length("copy", 15, 1) == 18


def tiny(name, **values):
    cfg = get(name).config()
    base = dict(hidden=4, width=3, batch_size=4, steps=6, check_every=2, log_every=2, checkpoint_every=3,
                solved_bits=10.0, T=2)            # every check solves: the curriculum moves in a tiny run
    return override(cfg, {**base, **values})


@pytest.mark.parametrize("name", ["copy-dni", "repeat-copy-dni-aux", "copy-bptt"])
def test_a_run_writes_its_files(tmp_path, name):
    summary = get(name).run(tiny(name), tmp_path, quiet=True)
    for f in ("metrics.jsonl", "summary.json", "curriculum.json", "curriculum.png", "checkpoint.npz", "config.toml"):
        assert (tmp_path / f).is_file(), f
    curve = json.loads((tmp_path / "curriculum.json").read_text())
    assert summary["steps"] == 6 and len(curve["curve"]) == 3                  # a level solved every 2 batches
    assert summary["max_length"] == curve["curve"][-1][1]
    if name.startswith("copy"):
        assert (summary["N"], summary["max_length"]) == (3, 6)
    else:
        assert (summary["N"], summary["R"], summary["max_length"]) == (2, 2, 7)


def test_resume_continues_exactly(tmp_path):
    name = "repeat-copy-dni"
    whole = get(name).run(tiny(name), tmp_path / "whole", quiet=True)
    get(name).run(tiny(name, steps=4, checkpoint_every=0), tmp_path / "part", quiet=True)
    again = get(name).run(tiny(name), tmp_path / "part", resume=True, quiet=True)
    assert (again["max_length"], again["N"], again["R"], again["level"]) == \
        (whole["max_length"], whole["N"], whole["R"], whole["level"])
    timing = ("wall_time_s", "episodes_per_s")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timing} for r in rs]  # noqa: E731
    read = lambda d: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert strip(read(tmp_path / "whole")) == strip(read(tmp_path / "part"))
    with np.load(tmp_path / "whole" / "checkpoint.npz") as a, np.load(tmp_path / "part" / "checkpoint.npz") as b:
        for k in a.files:
            if k != "meta":
                assert np.array_equal(a[k], b[k]), k
        ma, mb = json.loads(str(a["meta"])), json.loads(str(b["meta"]))
        assert ma["curriculum"] == mb["curriculum"] and ma["data_rng"] == mb["data_rng"]


def test_the_T_flag(capsys):
    from minidni.cli import main

    assert main(["show", "copy-dni-aux", "--T", "5"]) == 0
    assert "\nT = 5 " in capsys.readouterr().out

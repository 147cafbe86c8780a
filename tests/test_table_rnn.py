"""`minidni table copy` (minidni/table_rnn.py): the grid of Table 2, run in parts and resumed, collected beside the
paper's numbers. Tiny cells (a 4-unit LSTM, a few batches): seconds."""
import json
import re

import pytest

from minidni.config import ConfigError
from minidni.table_rnn import GRID, PAPER, cells, format_table, table_copy

TINY = {"hidden": 4, "width": 3, "batch_size": 4, "check_every": 2, "log_every": 2, "solved_bits": 10.0}


def test_the_grid_is_the_papers():
    assert GRID["bptt"] == (2, 3, 4, 5, 8) and GRID["dni"] == GRID["dni-aux"] == (2, 3, 4, 5)
    assert len(cells()) == 2 * (5 + 4 + 4)
    assert PAPER["copy"]["dni-aux"][4] == 19 and PAPER["repeat-copy"]["dni-aux"][4] == 67


def test_run_collect_and_resume(tmp_path):
    said = []
    t = table_copy(tasks=("copy",), methods=("bptt", "dni"), Ts=(2,), out=tmp_path, steps=4, sets=TINY,
                   say=said.append)
    rows = {r["method"]: r for r in t["rows"]}
    assert rows["dni"]["paper"] == 16 and rows["bptt"]["paper"] == 7
    assert rows["dni"]["measured"]["finished"] and rows["dni"]["measured"]["max_length"] == 5   # N = 2 solved
    assert json.loads((tmp_path / "table.json").read_text())["missing"] == []
    assert "| Copy | DNI | 5 N=2 (16) |" in (tmp_path / "table.md").read_text()
    # a finished cell is reused, not rerun; a cell with only a checkpoint is resumed
    (tmp_path / "copy-bptt-T2" / "summary.json").unlink()
    said.clear()
    table_copy(tasks=("copy",), methods=("bptt", "dni"), Ts=(2,), out=tmp_path, steps=4, sets=TINY, say=said.append)
    assert [s for s in said if s.startswith("==")] == [f"== copy-bptt --set T=2 -> {tmp_path / 'copy-bptt-T2'} "
                                                       "(resuming)"]


def test_collect_shows_unfinished_and_missing(tmp_path):
    table_copy(tasks=("copy",), methods=("dni",), Ts=(3,), out=tmp_path, steps=4, sets=TINY, say=lambda s: None)
    (tmp_path / "copy-dni-T3" / "summary.json").unlink()       # as if interrupted: metrics.jsonl only
    t = table_copy(tasks=("copy",), methods=("dni", "dni-aux"), Ts=(3,), out=tmp_path, run=False, say=lambda s: None)
    text = format_table(t)
    assert "5* (14)" in text and "? (17)" in text and "still to run: copy-dni T=3, copy-dni-aux T=3" in text
    with pytest.raises(ConfigError, match="unknown task or method"):
        table_copy(methods=("nope",), out=tmp_path, run=False)


def test_the_command(tmp_path, capsys):
    from minidni.cli import main

    table_copy(tasks=("copy",), methods=("bptt",), Ts=(2,), out=tmp_path, steps=2, sets=TINY, say=lambda s: None)
    assert main(["table", "copy", "--collect", "--out", str(tmp_path), "--T", "2", "--tasks", "copy"]) == 0
    out = capsys.readouterr().out
    assert "Copy  BPTT" in out and "2 batches of 4 episodes, LSTM 4" in out


# ---- `minidni table rnn`: Copy, Repeat Copy and PTB -----------------------------------------------------------------------
def _ptb_sets(tmp_path):
    text = tmp_path / "tiny.txt"
    text.write_text("\n".join("the cat sat on the mat and ran" for _ in range(40)))
    return {"text_file": str(text), "hidden": 4, "batch_size": 2, "eval_count": 1, "eval_batch_size": 2,
            "eval_window": 5, "log_every": 2}


def test_table_rnn_grid_and_paper():
    from minidni.table_rnn import PTB_GRID, PTB_PAPER, rnn_cells

    assert PTB_GRID["bptt"] == (2, 3, 4, 5, 8, 20) and PTB_GRID["dni-aux"] == (2, 3, 4, 5)
    assert len(rnn_cells(tasks=("ptb",))) == 14 and len(rnn_cells()) == 26 + 14
    assert PTB_PAPER["bptt"][20] == 1.35 and PTB_PAPER["dni"][2] == 1.37 and PTB_PAPER["dni-aux"][5] == 1.35


def test_table_rnn_runs_what_is_missing_then_collects(tmp_path):
    from minidni.table_rnn import format_rnn_table, table_rnn

    said = []
    sets = {**TINY, **_ptb_sets(tmp_path)}
    t = table_rnn(tasks=("copy", "ptb"), methods=("dni",), Ts=(2,), copy_out=tmp_path / "copy",
                  ptb_out=tmp_path / "ptb", steps=4, sets=sets, say=said.append)
    assert [s.split(" -> ")[0] for s in said if s.startswith("==")] == ["== copy-dni --set T=2", "== ptb-dni --set T=2"]
    rows = {r["task"]: r for r in t["rows"]}
    summary = json.loads((tmp_path / "ptb" / "ptb-dni-T2" / "summary.json").read_text())
    assert rows["ptb"]["measured"]["bpc"] == summary["test_bpc"] and rows["ptb"]["paper"] == 1.37
    assert rows["copy"]["measured"]["max_length"] == 5 and t["missing"] == []
    md = (tmp_path / "ptb" / "table.md").read_text()
    assert f"| PTB (BPC) | DNI | {summary['test_bpc']:.3f} (1.37) |" in md and "| Copy | DNI | 5 N=2 (16) |" in md
    assert "PTB: 16 characters per run" not in md and "LSTM 4" in md
    # --collect: a finished cell is read, an unfinished one shows its best validation so far, a missing one '?'
    (tmp_path / "ptb" / "ptb-dni-T2" / "summary.json").unlink()
    said.clear()
    t = table_rnn(tasks=("ptb",), methods=("dni", "dni-aux"), Ts=(2,), ptb_out=tmp_path / "ptb", run=False,
                  say=said.append)
    text = format_rnn_table(t)
    assert f"{summary['best_val_bpc']:.3f}* (1.37)" in text and "? (1.37)" in text
    assert "still to run: ptb-dni T=2, ptb-dni-aux T=2" in text and not any(s.startswith("==") for s in said)


def test_table_rnn_command(tmp_path, capsys):
    from minidni.cli import main
    from minidni.table_rnn import table_rnn

    table_rnn(tasks=("ptb",), methods=("bptt",), Ts=(20,), ptb_out=tmp_path, steps=2, sets=_ptb_sets(tmp_path),
              say=lambda s: None)
    assert main(["table", "rnn", "--collect", "--out", str(tmp_path), "--copy-out", str(tmp_path / "none"),
                 "--T", "20", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"PTB \(BPC\) +BPTT +\? \(1\.39\) +\d\.\d{3} \(1\.35\)", out) and "? (7)" in out
    assert "PTB: 2 windows per run (windows of T characters x 2 rows), LSTM 4, Adam" in out
    with pytest.raises(ConfigError, match="no experiment of this grid"):
        table_rnn(tasks=("ptb",), ptb_out=tmp_path, run=False, sets={"nope": 1}, say=lambda s: None)


def test_the_data_claim_is_read_off_the_validation_records(tmp_path):
    from minidni.table_rnn import data_claim

    def fake(name, vals):
        where = tmp_path / name
        where.mkdir()
        (where / "summary.json").write_text("{}")
        (where / "metrics.jsonl").write_text("".join(
            json.dumps({"split": "val", "chars": c, "bpc": b, "train_time_s": t}) + "\n" for c, b, t in vals))

    assert data_claim(tmp_path) is None                                      # nothing finished yet
    fake("ptb-bptt-T20", [(100, 2.0, 10.0), (200, 1.6, 20.0), (300, 1.5, 30.0), (400, 1.5, 40.0)])
    fake("ptb-dni-aux-T5", [(100, 1.9, 20.0), (200, 1.5, 40.0), (300, 1.4, 60.0)])
    claim = data_claim(tmp_path)
    assert claim["target_bpc"] == 1.5 and claim["slow"] == {"chars": 300, "train_time_s": 30.0}
    assert claim["fast"] == {"chars": 200, "train_time_s": 40.0}
    assert "67% of the data, 0.75x as fast" in claim["text"]

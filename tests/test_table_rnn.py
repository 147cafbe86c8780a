"""`minidni table copy` (minidni/table_rnn.py): the grid of Table 2, run in parts and resumed, collected beside the
paper's numbers. Tiny cells (a 4-unit LSTM, a few batches): seconds."""
import json

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

"""benchmarks/bench_conv.py at a tiny size: it validates every kernel against the reference and PyTorch, then prints
one row per shape (conv versions 3 and 4, max and average pooling) and its JSON record."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_conv_smoke(tmp_path):
    pytest.importorskip("torch")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_conv.py"), "--batch", "2", "--samples", "1",
           "--versions", "3", "4", "--first", "2", "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if line.startswith("| mnist")]
    assert len(lines) == 4, res.stdout  # conv1, conv2, maxpool1, avgpool2
    assert "ratio v4" in res.stdout and "x |" in lines[0]
    (record,) = [json.loads(p.read_text()) for p in tmp_path.glob("conv-*.json")]
    assert [r["layer"].split(":")[0] for r in record["conv"]] == ["mnist conv1", "mnist conv2"]
    assert set(record["conv"][0]["ratio"]) == {"v3", "v4"} and len(record["pool"]) == 2

"""benchmarks/bench_conv.py at a tiny size: it validates every kernel against the reference and PyTorch, then prints
one row per shape (conv versions 2 and 3, max and average pooling)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_conv_smoke():
    pytest.importorskip("torch")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_conv.py"), "--batch", "2", "--samples", "1",
           "--versions", "2", "3", "--first", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if line.startswith("| mnist")]
    assert len(lines) == 4, res.stdout  # conv1, conv2, maxpool1, avgpool2
    assert "ratio v3" in res.stdout and "x |" in lines[0]

"""Runs the CUDA kernel tests (tests/test_cuda_kernels.py) under numba's CUDA simulator, in a fresh process.

The simulator must be switched on (NUMBA_ENABLE_CUDASIM=1) before numba is first imported, which this process has
long done, so the kernel tests get their own pytest process: that way the normal suite, and CI without a GPU, checks
every CUDA kernel against the NumPy reference. Measured: about 1 minute (docs/gpu.md).
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 600  # the suite takes ~1 min; this only catches a hang on a very busy machine


def test_cuda_kernels_under_the_simulator():
    pytest.importorskip("numba_cuda", reason="numba-cuda is not installed: pip install -e '.[cuda]'")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(ROOT / "tests" / "test_cuda_kernels.py")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    seconds = time.perf_counter() - started
    tail = "\n".join((run.stdout + run.stderr).strip().splitlines()[-40:])
    assert run.returncode == 0, f"the simulator tests failed (exit {run.returncode}, {seconds:.0f} s):\n{tail}"
    assert " passed" in tail and " skipped" not in tail.splitlines()[-1], tail
    print(f"simulator suite: {tail.splitlines()[-1]} ({seconds:.0f} s)")

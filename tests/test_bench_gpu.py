"""benchmarks/bench_gpu.py and gpu_check.sh without a GPU: they import, parse their arguments and stop with the reason
(the benchmark itself runs only on a GPU machine: benchmarks/gpu_check.sh, docs/gpu.md)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"


def run(*args, **env):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, **env})


def test_bench_gpu_help():
    res = run("--help")
    assert res.returncode == 0 and "--sizes" in res.stdout and "--batches" in res.stdout, res.stderr


def test_bench_gpu_without_a_gpu_says_why():
    pytest.importorskip("numba_cuda", reason="numba-cuda is not installed: pip install -e '.[cuda]'")
    from numba import cuda

    if cuda.is_available():
        pytest.skip("a GPU is present: bench_gpu.py would run")
    res = run()
    assert res.returncode == 1 and "bench_gpu.py needs a CUDA GPU: no CUDA GPU found" in res.stderr, res.stderr
    sim = run(NUMBA_ENABLE_CUDASIM="1")
    assert sim.returncode == 1 and "the simulator cannot be timed" in sim.stderr, sim.stderr


def test_gpu_check_script_is_valid_bash():
    res = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr

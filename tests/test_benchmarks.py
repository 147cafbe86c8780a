"""Smoke tests of the benchmark scripts: they run end to end at a tiny size (speed is never asserted here)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_engine_runs_and_writes_json(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_engine.py"), "--layers", "2", "--samples", "2",
           "--steps-per-sample", "2", "--warmup", "1", "--settle", "0", "--no-torch", "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "GEMM ceiling" in res.stdout and "minidni-numba" in res.stdout
    (path,) = tmp_path.glob("engine-*.json")
    data = json.loads(path.read_text())
    engines = {r["engine"] for r in data["results"]}
    assert engines == {"minidni-numba", "minidni-numba-fused", "minidni-numpy", "numpy-loop"}
    assert all(r["steps_per_s"] > 0 for r in data["results"])


def test_numpy_loop_baseline_trains():
    """The hand-written NumPy baseline is real training: its loss falls on a fixed batch."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_engine
    finally:
        sys.path.pop(0)
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((bench_engine.B, bench_engine.D_IN), dtype=np.float32)
    y = rng.integers(0, 10, bench_engine.B)
    for bn in (False, True):
        step = bench_engine.make_numpy_loop(1, bn, x, y)
        losses = [step() for _ in range(30)]
        assert losses[-1] < 0.5 * losses[0], (bn, losses[0], losses[-1])


@pytest.mark.parametrize("script", ["bench_kernels.py"])
def test_bench_kernels_validates_every_kernel(script):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "adam_step_" in res.stdout


def test_bench_gemm_split_runs():
    """The split-products benchmark at a tiny size; without SciPy it measures NumPy and threads only."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_gemm_split.py"), "--reps", "2", "--samples", "1",
           "--steps-per-sample", "2", "--settle", "0"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "numpy-2t" in res.stdout and "threads-1t" in res.stdout


def test_bench_dni_help():
    """bench_dni.py needs minutes even with --quick; here we only check it imports and parses its arguments."""
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_dni.py"), "--help"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "--quick" in res.stdout


def test_profile_step_accounts_for_every_kernel_call():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import profile_step
    finally:
        sys.path.pop(0)
    from minidni import kernels

    before = {n: getattr(kernels.active, n) for n in dir(kernels.active)}
    out = profile_step.profile(k=2, bn=True, fused=True, steps=3, warmup=1)
    assert {n: getattr(kernels.active, n) for n in dir(kernels.active)} == before   # the wrappers are removed
    calls = {name: n for name, (_, n) in out["kernels"].items()}
    # 2 hidden layers: 3 linear layers, 2 fused batch-norm+ReLU layers, one loss; Adam on 3 W + 1 b + 2 x (gamma, beta)
    assert calls["linear_forward"] == 3 and calls["batchnorm_relu_train_forward"] == 2
    assert calls["softmax_xent_forward"] == 1 and calls["adam_step_"] == 8
    assert out["plain_s"] > 0 and out["instrumented_s"] > 0
    assert out["page_faults"] >= 0


def test_profile_step_times_a_kernel_that_calls_another_once():
    """linear_relu_backward calls linear_backward: only the outer call is counted, so no time is counted twice."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import profile_step
    finally:
        sys.path.pop(0)
    out = profile_step.profile(k=2, bn=False, fused=True, steps=3, warmup=1)
    calls = {name: n for name, (_, n) in out["kernels"].items()}
    assert calls["linear_relu_backward"] == 2 and calls["linear_backward"] == 1   # the output layer's only
    assert sum(s for s, _ in out["kernels"].values()) < out["instrumented_s"]

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


def test_bench_lstm_runs_and_writes_json(tmp_path):
    """bench_lstm.py at a tiny size (hidden 16, T = 2): every engine trains, the JSON has one row per engine."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_lstm.py"), "--sizes", "copy", "--T", "2", "--hidden", "16",
           "--samples", "2", "--sample-s", "0", "--warmup", "1", "--settle", "0", "--ceiling-n", "256",
           "--threads", "1", "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "GEMM bound" in res.stdout and "minidni-cell" in res.stdout
    (path,) = tmp_path.glob("lstm-*.json")
    data = json.loads(path.read_text())
    engines = {r["engine"] for r in data["results"]}
    assert {"minidni", "minidni-cell"} <= engines <= {"minidni", "minidni-cell", "torch", "torch-cell"}
    assert all(r["steps_per_s"] > 0 and r["T"] == 2 and r["hidden"] == 16 for r in data["results"])


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


def _import_bench(name):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def test_every_engine_of_bench_engine_trains_in_float32():
    """The check each worker runs before it is timed; the numpy-loop once ran in float64 (np.sqrt(int) promotes)."""
    import numpy as np

    bench_engine = _import_bench("bench_engine")
    rng = np.random.default_rng(0)
    x, y = rng.random((bench_engine.B, bench_engine.D_IN), dtype=np.float32), rng.integers(0, 10, bench_engine.B)
    names = ["minidni-numba", "minidni-numba-fused", "minidni-numpy", "numpy-loop"]
    try:
        import torch  # noqa: F401
        names += ["torch", "torch-fused"]
    except ImportError:
        pass
    from minidni.kernels import get_backend, use_backend

    with use_backend(get_backend()):         # make_engine switches the global backend (one engine per worker process)
        for name in names:
            for bn in (False, True):
                step = bench_engine.make_engine(name, 1, bn, x, y)
                step()
                assert bench_engine.check_float32(name, step.arrays()) >= 10, name
    with pytest.raises(AssertionError, match=r"numpy-loop: every engine must train in float32.*w is float64"):
        bench_engine.check_float32("numpy-loop", {"w": np.ones(2), "b": np.ones(2, np.float32)})


def test_bench_dni_against_torch_dni_on_tiny_sizes(tmp_path):
    """minidni DNI and cDNI (linear and MLP synthesizers) against their PyTorch peers, in one run at a tiny size."""
    pytest.importorskip("torch")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_dni.py"), "--only", "dni", "--synths", "dni", "cdni-mlp",
           "--batch", "8", "--width", "16", "--layers", "2", "--synth-width", "16", "--samples", "2",
           "--sample-s", "0.01", "--settle", "0", "--torch-threads", "1", "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "minidni DNI vs PyTorch DNI" in res.stdout and "torch-cdni-mlp" in res.stdout
    (path,) = tmp_path.glob("dni-*.json")
    data = json.loads(path.read_text())
    assert set(data["vs_torch"]) == {"dni", "cdni-mlp"} and all(r > 0 for r in data["vs_torch"].values())
    rows = {r["config"]: r for r in data["results"]}
    assert set(rows) == {"locked", "dni", "cdni-mlp", "torch-dni", "torch-cdni-mlp"}


@pytest.mark.parametrize("kind", ["dni", "cdni", "dni-mlp", "cdni-mlp"])
def test_torch_dni_is_the_same_algorithm_as_minidni(kind):
    """bench_dni's PyTorch DNI, started from minidni's weights, trains to the same parameters (float64, 3 batches)."""
    torch = pytest.importorskip("torch")
    import numpy as np

    from minidni.dni import mnist_fcn

    bench_dni = _import_bench("bench_dni")
    bench_dni.configure(batch=6, width=5, layers=2, synth_width=7)
    try:
        net = mnist_fcn(layers=3, hidden=5, synthesizer="mlp" if kind.endswith("-mlp") else "linear",
                        synth_hidden=(7, 7), conditioned=kind.startswith("cdni"), dtype=np.float64, seed=1)
        peer = bench_dni.TorchDNI(kind)
    finally:
        bench_dni.configure()
    ours = [m for m in net.modules] + net.synthesizers
    theirs = peer.modules + peer.synths
    for a, b in zip(ours, theirs):
        b.double()
        pa, pb = a.parameters(), list(b.parameters())
        assert len(pa) == len(pb)
        with torch.no_grad():
            for p, q in zip(pa, pb):
                q.copy_(torch.from_numpy(p.data.T.copy() if p.ndim == 2 else p.data))
    peer.opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in peer.modules]   # over the float64 tensors
    peer.synth_opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in peer.synths]
    start = [[p.data.copy() for p in a.parameters()] for a in ours]
    rng = np.random.default_rng(2)
    for _ in range(3):
        x, y = rng.standard_normal((6, 784)), rng.integers(0, 10, 6)
        net.train_step(x, y)
        peer.step(torch.from_numpy(x), torch.from_numpy(y))
    for i, (a, b) in enumerate(zip(ours, theirs)):
        for p, q in zip(a.parameters(), b.parameters()):
            want = q.detach().numpy()
            np.testing.assert_allclose(p.data, want.T if p.ndim == 2 else want, rtol=1e-8, atol=1e-10,
                                       err_msg=f"part {i}")
        moved = max(np.abs(p.data - p0).max() for p, p0 in zip(a.parameters(), start[i]))
        assert moved > 1e-4, f"part {i} did not train: the comparison would be vacuous"


def test_bench_distributed_quick_runs_and_writes_json(tmp_path):
    """bench_distributed.py --quick on a tiny wide net (width 64) and a tiny bottleneck net (64-16-64-16), without Ray
    and the forecast: every configuration is measured and simulated, and the JSON has one row per configuration and
    net."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_distributed.py"), "--quick", "--nets", "wide", "bottleneck",
           "--no-ray", "--no-forecast", "--wide-width", "64", "--bottleneck-width", "16", "--samples", "1",
           "--profile-batches", "2", "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "pipe-ray: SKIPPED" in res.stdout and "worst simulator error" in res.stdout
    (path,) = tmp_path.glob("distributed-*.json")
    data = json.loads(path.read_text())
    configs = ["locked", "locked-1t", "pipe-seq", "pipe-conc"]
    assert [(r["net"], r["config"]) for r in data["results"]] == [(n, c) for n in ("wide", "bottleneck") for c in configs]
    assert data["bottleneck"] == "bottleneck:64:1:16" and "784-64-16-64-16-10" in res.stdout
    assert all(r["s_per_step"] > 0 and r["simulated_s_per_step"] > 0 for r in data["results"])


@pytest.mark.parametrize("variant", ["conv-xy", "linear"])
def test_cnn_fit_synth_probe_runs(tmp_path, variant):
    """The frozen-net synthesizer probe of issue 14 runs end to end and writes one record per scoring point."""
    out = tmp_path / "fit.jsonl"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "cnn_dni_pilots" / "fit_synth.py"), "--variant", variant,
           "--lr", "1e-4", "--pretrain", "2", "--fit-steps", "4", "--every", "2", "--batch-size", "8",
           "--cache", str(tmp_path / "net.npz"), "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "share of |dL/dh|^2" in res.stdout
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["step"] for r in recs] == [0, 2, 4]
    assert recs[0]["cos"] == 0.0 and recs[0]["norm_ratio"] == 0.0          # zero-initialised output layer
    assert recs[-1]["norm_ratio"] > 0 and -1.0 <= recs[-1]["cos"] <= 1.0
    assert (tmp_path / "net.npz").exists()


def test_cnn_cosines_summary(tmp_path):
    """cosines.py: mean cosine and median norm ratio per module over the records after --after, from a known file."""
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 5, "split": "train", "loss": 1.0}]
    for step, cos, ns in [(5, 0.9, 9.0), (10, 0.2, 1.0), (15, 0.4, 2.0), (20, 0.6, 4.0)]:
        rows.append({"step": step, "split": "synthetic_grad", "module": 0, "cos": cos, "norm_synthetic": ns,
                     "norm_true": 2.0})
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (run / "summary.json").write_text(json.dumps({"test_error": 0.0161}))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "cnn_dni_pilots" / "cosines.py"), str(run), "--after", "5"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    # records after step 5: cos 0.2, 0.4, 0.6 (mean 0.4); ratios 0.5, 1, 2 (median 1)
    assert "test error 1.61%" in res.stdout and "module 0: cos 0.400, norm ratio 1.00 (3 records)" in res.stdout

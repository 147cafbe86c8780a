"""GPU benchmark: the hand-written numba.cuda kernels (minidni/kernels/cuda.py) against the vendor libraries.

Needs a CUDA GPU (not the simulator); PyTorch with CUDA and CuPy are optional baselines, each row says when one is
missing. In one run, on one GPU, all in float32 (TF32 off in PyTorch, so cuBLAS does true fp32 FMAs):

  matmul     each variant (v1 naive, v2 shared-memory tiles, v3 register-blocked tiles) first checked against a
             float64 product, then timed at n^3 for n in 1024, 4096: TFLOP/s = 2 n^3 / time, and the ratio to
             cuBLAS fp32 (torch.matmul) and to CuPy (cupy.matmul). Target: v3 >= 50% of cuBLAS at 4096^3.
  fcn6       training steps/s of the paper's FCN-6 (Jaderberg et al. 2016, Sec. 3.3: 784 -> 5 x [256, batch norm,
             ReLU] -> 10, Adam) at batch 256 and 4096, minidni `Module.to("cuda")` against PyTorch CUDA eager.
             Target: >= 1.0x PyTorch at batch 4096; at 256 both are launch-bound (a step is ~100 small kernels).
  dni        steps/s of one cDNI step (dni.mnist_fcn, linear synthesizers; DNINet.train_step from a host batch)
             on the device (no PyTorch peer here).
  lstm       one LSTM training step (T steps of the cell, readout, cross-entropy, Adam) against torch.nn.LSTM
             (cuDNN) on the same shapes.

Times are CUDA-event times of many back-to-back calls after warm-up (JIT compile excluded), best of a few repeats.
Rows that cannot run (no torch, no --device plumbing yet) are recorded with the reason, never dropped silently.

    python benchmarks/bench_gpu.py                  # writes benchmarks/results/gpu-<host>-<date>.json
    python benchmarks/bench_gpu.py --quick --out DIR
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def require_gpu():
    """The numba.cuda module and the GPU's name, or exit with a one-line reason."""
    from minidni.kernels import gpu

    if gpu.SIMULATOR:
        sys.exit("bench_gpu.py: NUMBA_ENABLE_CUDASIM=1 is set; the simulator cannot be timed. Unset it and run on a "
                 "machine with an NVIDIA GPU.")
    reason = gpu.why_unavailable()
    if reason:
        sys.exit(f"bench_gpu.py needs a CUDA GPU: {reason}")
    from numba import cuda

    name = cuda.get_current_device().name
    return cuda, name.decode() if isinstance(name, bytes) else str(name)


def optional(module):
    """(module, None) or (None, why it is missing) for a baseline library with a usable GPU."""
    try:
        if module == "torch":
            import torch

            if not torch.cuda.is_available():
                return None, f"torch {torch.__version__} has no CUDA (CPU build or no driver)"
            torch.backends.cuda.matmul.allow_tf32 = False   # fp32 FMAs, as our kernels
            torch.backends.cudnn.allow_tf32 = False
            return torch, None
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        return cupy, None
    except Exception as error:  # ImportError, or a CuPy without a matching CUDA runtime
        return None, f"{module} unavailable ({type(error).__name__}: {error})"


# ---- timing ----------------------------------------------------------------------------------------------------------
def seconds_per_call(fn, sync, min_time=0.2, repeats=3):
    """Best over `repeats` of (wall time of `number` back-to-back calls, then a device synchronize) / number.
    A warm-up call first (compiles kernels, allocates); `number` is chosen so one repeat lasts ~min_time."""
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    once = max(time.perf_counter() - t0, 1e-6)
    number = max(1, int(min_time / once))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def row(table, **fields):
    table.append(fields)
    shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in fields.items()}
    print("  " + "  ".join(f"{k}={v}" for k, v in shown.items()), flush=True)


# ---- matmul ---------------------------------------------------------------------------------------------------------
def bench_matmul(cuda, sizes, rows, quick):
    from minidni.kernels import gpu

    torch, torch_why = optional("torch")
    cupy, cupy_why = optional("cupy")
    sync = cuda.synchronize
    for n in sizes:
        flops = 2.0 * n ** 3
        rng = np.random.default_rng(n)
        a_h, b_h = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
        a, b = gpu.to_device(a_h), gpu.to_device(b_h)
        check = slice(0, 256)  # validate a block of rows against float64 (the whole product on the host is slow)
        want = a_h[check].astype(np.float64) @ b_h.astype(np.float64)
        baseline = {}
        if torch is not None:
            ta, tb = torch.from_numpy(a_h).cuda(), torch.from_numpy(b_h).cuda()
            t = seconds_per_call(lambda: torch.matmul(ta, tb), torch.cuda.synchronize, repeats=2 if quick else 3)
            baseline["cublas"] = flops / t / 1e12
            row(rows, bench="matmul", n=n, engine="cublas-fp32 (torch)", tflops=baseline["cublas"], ms=t * 1e3)
        else:
            row(rows, bench="matmul", n=n, engine="cublas-fp32 (torch)", skipped=torch_why)
        if cupy is not None:
            ca, cb = cupy.asarray(a_h), cupy.asarray(b_h)
            t = seconds_per_call(lambda: cupy.matmul(ca, cb), cupy.cuda.Device().synchronize, repeats=2 if quick else 3)
            baseline["cupy"] = flops / t / 1e12
            row(rows, bench="matmul", n=n, engine="cupy", tflops=baseline["cupy"], ms=t * 1e3)
        else:
            row(rows, bench="matmul", n=n, engine="cupy", skipped=cupy_why)
        for variant in (1, 2, 3):
            got = gpu.to_host(gpu.matmul(a, b, variant=variant))[check]
            err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
            if not err < 1e-4:
                row(rows, bench="matmul", n=n, engine=f"minidni v{variant}", skipped=f"WRONG: max rel err {err:.2e}")
                continue
            t = seconds_per_call(lambda: gpu.matmul(a, b, variant=variant), sync, min_time=0.1 if n > 2048 else 0.2,
                                 repeats=2 if quick else 3)
            tflops = flops / t / 1e12
            ratios = {f"vs_{k}": tflops / v for k, v in baseline.items()}
            row(rows, bench="matmul", n=n, engine=f"minidni v{variant}", tflops=tflops, ms=t * 1e3, max_rel_err=err,
                **ratios)


# ---- training steps --------------------------------------------------------------------------------------------------
FCN_IN, FCN_HIDDEN, FCN_OUT, FCN_LAYERS = 784, 256, 10, 6  # FCN-6: 5 hidden layers + the output layer


def minidni_fcn6_step(batch):
    import minidni as md
    from minidni import nn, ops, optim

    model = nn.mlp(FCN_IN, FCN_HIDDEN, FCN_OUT, n_hidden=FCN_LAYERS - 1, rng=0).to("cuda")
    opt = optim.Adam(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    x = md.Tensor(rng.random((batch, FCN_IN), dtype=np.float32)).to("cuda")
    labels = md.Tensor(rng.integers(0, FCN_OUT, batch)).to("cuda")
    state = {}

    def step():
        loss = ops.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        state["loss"] = loss

    return step, lambda: float(state["loss"].numpy())


def torch_fcn6_step(torch, batch):
    torch.manual_seed(0)
    layers, width = [], FCN_IN
    for _ in range(FCN_LAYERS - 1):
        layers += [torch.nn.Linear(width, FCN_HIDDEN, bias=False), torch.nn.BatchNorm1d(FCN_HIDDEN), torch.nn.ReLU()]
        width = FCN_HIDDEN
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, FCN_OUT)).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch, FCN_IN, device="cuda")
    y = torch.randint(0, FCN_OUT, (batch,), device="cuda")
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bench_fcn6(cuda, batches, rows, quick):
    torch, torch_why = optional("torch")
    for batch in batches:
        ours = None
        try:
            step, loss = minidni_fcn6_step(batch)
            t = seconds_per_call(step, cuda.synchronize, min_time=0.5, repeats=2 if quick else 3)
            ours = 1 / t
            if not np.isfinite(loss()):
                raise FloatingPointError(f"loss is {loss()}")
            row(rows, bench="fcn6", batch=batch, engine="minidni cuda", steps_per_s=ours)
        except Exception as error:
            row(rows, bench="fcn6", batch=batch, engine="minidni cuda",
                skipped=f"needs Module.to('cuda') and ops on the device: {type(error).__name__}: {error}")
            traceback.print_exc(limit=3)
        if torch is None:
            row(rows, bench="fcn6", batch=batch, engine="torch cuda eager", skipped=torch_why)
            continue
        t = seconds_per_call(torch_fcn6_step(torch, batch), torch.cuda.synchronize, min_time=0.5,
                             repeats=2 if quick else 3)
        extra = {"minidni_vs_torch": ours * t} if ours else {}
        row(rows, bench="fcn6", batch=batch, engine="torch cuda eager", steps_per_s=1 / t, **extra)


def bench_dni(cuda, rows, quick, batch=256):
    try:
        from minidni.dni import mnist_fcn

        net = mnist_fcn(layers=4, hidden=256, synthesizer="linear", conditioned=True, seed=0).to("cuda")
        rng = np.random.default_rng(0)
        x, y = rng.random((batch, 784), dtype=np.float32), rng.integers(0, 10, batch)  # a host batch, as training
        t = seconds_per_call(lambda: net.train_step(x, y), cuda.synchronize, min_time=0.5, repeats=2 if quick else 3)
        row(rows, bench="dni", batch=batch, engine="minidni cuda (cDNI, 4 layers)", steps_per_s=1 / t,
            note="train_step copies the batch to the GPU and brings back the logged loss each step")
    except Exception as error:
        row(rows, bench="dni", batch=batch, engine="minidni cuda (cDNI, 4 layers)",
            skipped=f"needs DNINet.to('cuda'): {type(error).__name__}: {error}")
        traceback.print_exc(limit=3)


def bench_lstm(cuda, rows, quick, T=20, I=64, H=256, B=64):
    torch, torch_why = optional("torch")
    rng = np.random.default_rng(0)
    x_h = rng.standard_normal((T, B, I)).astype(np.float32)
    y_h = rng.integers(0, I, T * B)
    ours = None
    try:
        import minidni as md
        from minidni import nn, ops, optim

        lstm, readout = nn.LSTM(I, H, rng=0).to("cuda"), nn.Linear(H, I, rng=1).to("cuda")
        opt = optim.Adam(lstm.parameters() + readout.parameters(), lr=1e-3)
        x, y = md.Tensor(x_h).to("cuda"), md.Tensor(y_h).to("cuda")

        def step():
            outputs, _ = lstm(x)
            loss = ops.cross_entropy(readout(ops.concat(outputs, axis=0)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        ours = 1 / seconds_per_call(step, cuda.synchronize, min_time=0.5, repeats=2 if quick else 3)
        row(rows, bench="lstm", shape=f"T{T} I{I} H{H} B{B}", engine="minidni cuda", steps_per_s=ours)
    except Exception as error:
        row(rows, bench="lstm", shape=f"T{T} I{I} H{H} B{B}", engine="minidni cuda",
            skipped=f"needs nn.LSTM on the device: {type(error).__name__}: {error}")
        traceback.print_exc(limit=3)
    if torch is None:
        row(rows, bench="lstm", shape=f"T{T} I{I} H{H} B{B}", engine="torch cudnn", skipped=torch_why)
        return
    torch.manual_seed(0)
    tl, tr = torch.nn.LSTM(I, H).cuda(), torch.nn.Linear(H, I).cuda()
    topt = torch.optim.Adam(list(tl.parameters()) + list(tr.parameters()), lr=1e-3)
    tx, ty = torch.from_numpy(x_h).cuda(), torch.from_numpy(y_h).cuda()
    loss_fn = torch.nn.CrossEntropyLoss()

    def tstep():
        out, _ = tl(tx)
        loss = loss_fn(tr(out.reshape(T * B, H)), ty)
        topt.zero_grad(set_to_none=True)
        loss.backward()
        topt.step()

    t = seconds_per_call(tstep, torch.cuda.synchronize, min_time=0.5, repeats=2 if quick else 3)
    extra = {"minidni_vs_torch": ours * t} if ours else {}
    row(rows, bench="lstm", shape=f"T{T} I{I} H{H} B{B}", engine="torch cudnn", steps_per_s=1 / t, **extra)


def targets(rows):
    """The issue's two targets, read off the rows (None where a row is missing)."""
    def get(bench, engine, key, **match):
        for r in rows:
            if r["bench"] == bench and r["engine"] == engine and key in r and \
                    all(r.get(k) == v for k, v in match.items()):
                return r[key]
        return None

    v3 = get("matmul", "minidni v3", "vs_cublas", n=4096)
    fcn = get("fcn6", "torch cuda eager", "minidni_vs_torch", batch=4096)
    return {"matmul_v3_vs_cublas_4096": v3, "matmul_target_met": None if v3 is None else v3 >= 0.5,
            "fcn6_vs_torch_batch4096": fcn, "fcn6_target_met": None if fcn is None else fcn >= 1.0}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON (default: %(default)s)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096], help="matmul n (n^3 products)")
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 4096], help="FCN-6 batch sizes")
    parser.add_argument("--only", nargs="+", choices=["matmul", "fcn6", "dni", "lstm"],
                        default=["matmul", "fcn6", "dni", "lstm"])
    args = parser.parse_args(argv)
    cuda, gpu_name = require_gpu()
    print(f"GPU: {gpu_name}", flush=True)
    rows, started = [], time.time()
    if "matmul" in args.only:
        bench_matmul(cuda, args.sizes, rows, args.quick)
    if "fcn6" in args.only:
        bench_fcn6(cuda, args.batches, rows, args.quick)
    if "dni" in args.only:
        bench_dni(cuda, rows, args.quick)
    if "lstm" in args.only:
        bench_lstm(cuda, rows, args.quick)
    result = {"gpu": gpu_name, "host": platform.node(), "python": platform.python_version(),
              "numpy": np.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": time.time() - started,
              "argv": sys.argv[1:], "rows": rows, "targets": targets(rows)}
    try:
        import numba_cuda

        result["numba_cuda"] = numba_cuda.__version__
    except Exception:
        pass
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu-{platform.node()}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"targets: {result['targets']}\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

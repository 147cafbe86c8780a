"""Convolution and pooling benchmark: minidni's Numba kernels against torch.nn.functional at the layer shapes of the
paper's CNNs (Jaderberg et al. 2016, v1 appendix A.1: 5x5 convs with size-preserving padding, 64 filters on MNIST's
28x28, 128 on CIFAR-10's 32x32; a 3x3 max-pool after the first layer, 3x3 average pools after the others), float32.

llm.c style: every case is first checked against the NumPy reference (and torch), then timed. One sample is one
forward + backward: for a conv layer y = conv(x, W), dW and, except for the first layer (whose input is data), dx;
for a pool y = pool(x) and dx. The engines' samples are interleaved round-robin (ours, torch, ours, ...) so a burst
of load from another process hits both, and the table gives the best and the median of the samples with the ratio
torch time / our time on the best (>= 1: we are faster). GFLOP/s counts 2 flops per multiply-add of the forward and
of each gradient computed. Both engines get the same number of threads: torch.set_num_threads(BLAS threads).

    python benchmarks/bench_conv.py                    # every paper shape, batch 32, conv versions 3 and 4 (the
                                                       # default), pool versions 1 and 2
    python benchmarks/bench_conv.py --versions 2 3 4   # several versions side by side
    python benchmarks/bench_conv.py --batch 64 --samples 15 --only conv
    python benchmarks/bench_conv.py --only conv --first 0 --pieces     # the forward piece by piece, one core

Each run writes its rows to benchmarks/results/conv-HOST-STAMP.json (--out to change the folder).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from minidni.kernels import cpu, reference as ref

# (name, C_in, C_out, H): one 5x5 "same" conv layer of the paper's nets; first layers take data (no dx)
CONV_SHAPES = [
    ("mnist conv1", 1, 64, 28), ("mnist conv2", 64, 64, 13), ("mnist conv3", 64, 64, 6),
    ("mnist synth (cDNI in)", 74, 64, 13), ("issue 14 (64ch 28x28)", 64, 64, 28),
    ("cifar conv1", 3, 128, 32), ("cifar conv2", 128, 128, 15), ("cifar conv3", 128, 128, 7),
]
# (name, kind, C, H): the pools of the paper's nets, 3x3 windows at stride 2
POOL_SHAPES = [
    ("mnist maxpool1", "max", 64, 28), ("mnist avgpool2", "avg", 64, 13),
    ("cifar maxpool1", "max", 128, 32), ("cifar avgpool2", "avg", 128, 15),
]
POOL_K, POOL_S = (3, 3), (2, 2)
POOL_VERSIONS = (1, 2)


def blas_threads():
    from threadpoolctl import threadpool_info

    return max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=1)


def interleaved(fns, samples):
    """Time each fn `samples` times, round-robin; returns per fn (best, median) in milliseconds."""
    for fn in fns:
        fn()  # warm up (JIT, allocator, BLAS buffers)
    times = [[] for _ in fns]
    for _ in range(samples):
        for k, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return [(1e3 * min(t), 1e3 * float(np.median(t))) for t in times]


def close(a, b, what, rtol=2e-4):
    scale = max(1.0, float(np.abs(b).max()))
    err = float(np.abs(np.asarray(a, np.float64) - b).max())
    if err > rtol * scale:
        raise AssertionError(f"{what}: differs from the reference by {err:.3g} (scale {scale:.3g})")


def conv_cases(batch, versions, samples, torch, first=None):
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    rows = []
    for name, c, o, h in CONV_SHAPES[:first]:
        need_x = c > 3
        x = rng.standard_normal((batch, c, h, h), dtype=np.float32)
        W = (rng.standard_normal((o, c, 5, 5)) / np.sqrt(25 * c)).astype(np.float32)
        g = rng.standard_normal((batch, o, h, h), dtype=np.float32)
        st, pad = (1, 1), (2, 2)
        y_ref = ref.conv2d_forward(x, W, None, st, pad)
        dx_ref, dW_ref, _ = ref.conv2d_backward(x, W, g, st, pad, need_x, True, False)
        fns = []
        for v in versions:
            fwd, bwd = cpu.CONV2D_FORWARD_VERSIONS[v], cpu.CONV2D_BACKWARD_VERSIONS[v]
            close(fwd(x, W, None, st, pad), y_ref, f"{name} v{v} y")
            dx, dW, _ = bwd(x, W, g, st, pad, need_x, True, False)
            close(dW, dW_ref, f"{name} v{v} dW")
            if need_x:
                close(dx, dx_ref, f"{name} v{v} dx")
            fns.append(lambda fwd=fwd, bwd=bwd: (fwd(x, W, None, st, pad), bwd(x, W, g, st, pad, need_x, True, False)))
        xt = torch.from_numpy(x).requires_grad_(need_x)
        Wt = torch.from_numpy(W).requires_grad_(True)
        gt = torch.from_numpy(g)

        def torch_step():
            xt.grad = Wt.grad = None
            F.conv2d(xt, Wt, padding=2).backward(gt)

        torch_step()
        close(Wt.grad.numpy(), dW_ref, f"{name} torch dW")
        flops = 2 * batch * o * c * 25 * h * h * (3 if need_x else 2)
        times = interleaved(fns + [torch_step], samples)
        rows.append((f"{name}: x {batch}x{c}x{h}x{h}, W {o}x{c}x5x5{'' if need_x else ' (no dx)'}", flops, versions,
                     times))
    return rows


def pool_cases(batch, samples, torch, first=None):
    """Per paper pool: pool versions 1 and 2 (cpu.*POOL2D_*_VERSIONS; the max pool's forward has one) and torch,
    each checked against the reference first. Returns (name, bytes, (1, 2), [(best, median) per version + torch])."""
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    rows = []
    for name, kind, c, h in POOL_SHAPES[:first]:
        x = rng.standard_normal((batch, c, h, h), dtype=np.float32)
        oh = (h - POOL_K[0]) // POOL_S[0] + 1
        g = rng.standard_normal((batch, c, oh, oh), dtype=np.float32)
        fns = []
        if kind == "max":
            y_ref, idx = ref.maxpool2d_forward(x, POOL_K, POOL_S)
            dx_ref = ref.maxpool2d_backward(g, idx, x.shape, POOL_K, POOL_S)
            y, idx2 = cpu.maxpool2d_forward(x, POOL_K, POOL_S)
            close(y, y_ref, name)
            for v in POOL_VERSIONS:
                backward = cpu.MAXPOOL2D_BACKWARD_VERSIONS[v]
                close(backward(g, idx2, x.shape, POOL_K, POOL_S), dx_ref, f"{name} v{v} dx")

                def ours(backward=backward):
                    _, i = cpu.maxpool2d_forward(x, POOL_K, POOL_S)
                    backward(g, i, x.shape, POOL_K, POOL_S)
                fns.append(ours)
            op = F.max_pool2d
        else:
            y_ref = ref.avgpool2d_forward(x, POOL_K, POOL_S)
            dx_ref = ref.avgpool2d_backward(g, x.shape, POOL_K, POOL_S)
            for v in POOL_VERSIONS:
                forward, backward = cpu.AVGPOOL2D_FORWARD_VERSIONS[v], cpu.AVGPOOL2D_BACKWARD_VERSIONS[v]
                close(forward(x, POOL_K, POOL_S), y_ref, f"{name} v{v}")
                close(backward(g, x.shape, POOL_K, POOL_S), dx_ref, f"{name} v{v} dx")

                def ours(forward=forward, backward=backward):
                    forward(x, POOL_K, POOL_S)
                    backward(g, x.shape, POOL_K, POOL_S)
                fns.append(ours)
            op = F.avg_pool2d
        xt = torch.from_numpy(x).requires_grad_(True)
        gt = torch.from_numpy(g)

        def torch_step():
            xt.grad = None
            op(xt, POOL_K, POOL_S).backward(gt)

        torch_step()
        close(xt.grad.numpy(), dx_ref, f"{name} torch dx")
        nbytes = 4 * (2 * x.size + 2 * g.size)  # read x, write y; read g, write dx
        times = interleaved(fns + [torch_step], samples)
        rows.append((f"{name}: {kind} 3x3/2 of {batch}x{c}x{h}x{h}", nbytes, POOL_VERSIONS, times))
    return rows


def pieces(batch, samples, torch):
    """Where the forward goes on ONE core, at issue 14's shape (x batch x64x28x28, W 64x64x5x5) and at the small map
    of mnist conv3 (6x6): version 3's im2col of every image, version 4's (in its blocks), the GEMMs they feed (one per
    image; one per block), and PyTorch's forward on one thread, interleaved."""
    from threadpoolctl import threadpool_limits

    rows = []
    for n, c, o, h in ((batch, 64, 64, 28), (batch, 64, 64, 6)):
        rng = np.random.default_rng(2)
        x = rng.standard_normal((n, c, h, h), dtype=np.float32)
        W = rng.standard_normal((o, c, 5, 5), dtype=np.float32)
        xp, Wm, L = cpu._pad_nchw(x, 2, 2), W.reshape(o, -1), h * h
        nb = cpu._images_per_block(n, c * 25, L, 4)
        cols, y = np.empty((c * 25, h * h), np.float32), np.empty((n, o, h * h), np.float32)
        block, Y = np.empty((c * 25, nb * L), np.float32), np.empty((o, nb * L), np.float32)

        def im2col_3():
            for i in range(n):
                cpu._im2col_band(xp[i], 5, 5, 1, 1, 0, h, h, cols)

        def im2col_4():
            for n0 in range(0, n - nb + 1, nb):
                cpu._im2col_4(xp, n0, n0 + nb, 5, 5, 1, 1, h, h, block)

        def gemms_3():
            for i in range(n):
                np.matmul(Wm, cols, out=y[i])

        def gemms_4():
            for n0 in range(0, n - nb + 1, nb):
                np.matmul(Wm, block, out=Y)

        xt, Wt = torch.from_numpy(x), torch.from_numpy(W)
        torch.set_num_threads(1)
        with threadpool_limits(limits=1, user_api="blas"):
            t = interleaved([im2col_3, im2col_4, gemms_3, gemms_4,
                             lambda: torch.nn.functional.conv2d(xt, Wt, padding=2)], samples)
        flops = 2 * n * o * c * 25 * h * h
        full = n // nb * nb / n   # version 4's pieces cover the whole blocks only
        print(f"\none core, forward of x {n}x{c}x{h}x{h}, W {o}x{c}x5x5, {nb} images a block in v4 (best / median ms): "
              f"im2col v3 {t[0][0]:.2f} / {t[0][1]:.2f}, v4 {t[1][0] / full:.2f} / {t[1][1] / full:.2f}; GEMMs v3 "
              f"{t[2][0]:.2f} / {t[2][1]:.2f} ({flops / t[2][0] / 1e6:.0f} GFLOP/s), v4 {t[3][0] / full:.2f} / "
              f"{t[3][1] / full:.2f} ({full * flops / t[3][0] / 1e6:.0f} GFLOP/s); torch {t[4][0]:.2f} / {t[4][1]:.2f} "
              f"({flops / t[4][0] / 1e6:.0f} GFLOP/s)")
        rows.append({"shape": [n, c, h, h], "filters": o, "images_per_block": nb, "flops": flops,
                     "ms_best_median": {"im2col_v3": t[0], "im2col_v4": [v / full for v in t[1]], "gemms_v3": t[2],
                                        "gemms_v4": [v / full for v in t[3]], "torch_forward": t[4]}})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--samples", type=int, default=9)
    ap.add_argument("--versions", type=int, nargs="+", default=[3, 4], choices=sorted(cpu.CONV2D_FORWARD_VERSIONS))
    ap.add_argument("--only", choices=("conv", "pool"), default=None)
    ap.add_argument("--first", type=int, default=None, help="only the first N shapes of each table (a smoke test)")
    ap.add_argument("--pieces", action="store_true", help="also time the forward piece by piece on one core")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                    help="folder for the JSON results (default benchmarks/results)")
    args = ap.parse_args()
    import torch

    threads = blas_threads()
    torch.set_num_threads(threads)
    print(f"float32, batch {args.batch}, {threads} BLAS threads = torch threads, {args.samples} interleaved samples; "
          f"ms as best / median; ratio = torch best / ours best")
    record = {"batch": args.batch, "blas_threads": threads, "samples": args.samples, "versions": args.versions,
              "torch": torch.__version__, "platform": platform.platform(), "conv": [], "pool": [], "pieces": None}
    if hasattr(os, "getloadavg"):
        record["load_average_start"] = os.getloadavg()
    if args.only != "pool":
        print(f"\n| conv layer (forward + backward) | {' | '.join(f'v{v} ms' for v in args.versions)} | torch ms | "
              f"{' | '.join(f'v{v} GFLOP/s' for v in args.versions)} | torch GFLOP/s | "
              f"{' | '.join(f'ratio v{v}' for v in args.versions)} |")
        print("|---" * (3 * len(args.versions) + 3) + "|")
        for what, flops, versions, times in conv_cases(args.batch, args.versions, args.samples, torch,
                                                               args.first):
            ours, theirs = times[:-1], times[-1]
            print(f"| {what} | {' | '.join(f'{b:.2f} / {m:.2f}' for b, m in ours)} | {theirs[0]:.2f} / {theirs[1]:.2f}"
                  f" | {' | '.join(f'{flops / b / 1e6:.0f}' for b, _ in ours)} | {flops / theirs[0] / 1e6:.0f} | "
                  f"{' | '.join(f'{theirs[0] / b:.2f}x' for b, _ in ours)} |")
            record["conv"].append({"layer": what, "flops": flops, "ms_best_median": {
                **{f"v{v}": list(t) for v, t in zip(versions, ours)}, "torch": list(theirs)},
                "ratio": {f"v{v}": theirs[0] / b for v, (b, _) in zip(versions, ours)}})
    if args.only != "conv":
        print("\n| pool (forward + backward) | v1 ms | v2 ms | torch ms | v2 GB/s | torch GB/s | ratio v1 | ratio v2 |")
        print("|---" * 8 + "|")
        for what, nbytes, versions, times in pool_cases(args.batch, args.samples, torch, args.first):
            ours, (tb, tm) = times[:-1], times[-1]
            b2 = ours[-1][0]
            print(f"| {what} | {' | '.join(f'{b:.3f} / {m:.3f}' for b, m in ours)} | {tb:.3f} / {tm:.3f} | "
                  f"{nbytes / b2 / 1e6:.1f} | {nbytes / tb / 1e6:.1f} | {' | '.join(f'{tb / b:.2f}x' for b, _ in ours)} |")
            record["pool"].append({"pool": what, "bytes": nbytes, "ms_best_median": {
                **{f"v{v}": list(t) for v, t in zip(versions, ours)}, "torch": [tb, tm]},
                "ratio": {f"v{v}": tb / b for v, (b, _) in zip(versions, ours)}})
    if args.pieces:
        record["pieces"] = pieces(args.batch, args.samples, torch)
    if hasattr(os, "getloadavg"):
        record["load_average_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"conv-{platform.node() or 'host'}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

"""Where the time of one training step goes: every kernel call timed, the rest is Python.

The step is bench_engine.py's (Jaderberg et al. 2016, Sec. 3.3: the 784 -> 256 x k -> 10 MNIST net, batch 256, Adam)
on the active backend. We time `--steps` plain steps, then wrap every public function of `minidni.kernels.active`
(the *_forward / *_backward / *_step_ kernels, and sum_rows) with a timer and time as many again: the kernels' share
is what they measured, and "rest" is the step's own Python -- graph building, the backward loop, checks, dispatch.
The wrappers add ~1 us per call, so the instrumented step is a little slower than the plain one (both printed).
After warm-up it checks that the step trains in float32 (parameters, gradients, Adam moments, activations).

    python benchmarks/profile_step.py                      # 5 hidden layers, batch norm, plain modules
    python benchmarks/profile_step.py --fused --no-bn      # nn.mlp(..., fused=True), no batch norm
"""
from __future__ import annotations

import argparse
import collections
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))   # bench_engine.py, beside this file
from bench_engine import B, D_IN, D_OUT, check_float32, make_minidni  # noqa: E402


def make_step(k, bn, fused):
    """bench_engine.py's training step on the active backend: one call is one step."""
    from minidni import kernels

    rng = np.random.default_rng(0)
    x, y = rng.random((B, D_IN), dtype=np.float32), rng.integers(0, D_OUT, B)
    return make_minidni(k, bn, kernels.get_backend(), x, y, fused=fused)


def timed(step, n):
    t = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t) / n


def profile(k=5, bn=True, fused=False, steps=200, warmup=30):
    """{'plain_s', 'instrumented_s', 'kernels': {name: (seconds per step, calls per step)}, 'python_s',
    'page_faults' (minor faults per plain step)}."""
    from minidni import kernels

    step = make_step(k, bn, fused)
    timed(step, warmup)
    check_float32(f"minidni-{kernels.get_backend()}", step.arrays())   # it profiles float32 training, as benchmarked
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    plain = timed(step, steps)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    mod = kernels.active
    spent, calls = collections.defaultdict(float), collections.Counter()
    names = [n for n in dir(mod) if not n.startswith("_") and callable(getattr(mod, n))
             and (n.endswith(("_forward", "_backward", "_step_")) or n == "sum_rows")]
    originals = {n: getattr(mod, n) for n in names}

    depth = [0]   # a kernel that calls another (linear_relu_backward -> linear_backward) is timed once, outermost

    def wrap(name, fn):
        def timed_kernel(*args, **kwargs):
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    spent[name] += time.perf_counter() - t0
                    calls[name] += 1
        return timed_kernel

    try:
        for n, fn in originals.items():
            setattr(mod, n, wrap(n, fn))
        timed(step, 10)
        spent.clear(), calls.clear()
        instrumented = timed(step, steps)
    finally:
        for n, fn in originals.items():
            setattr(mod, n, fn)
    per_step = {n: (spent[n] / steps, calls[n] // steps) for n in sorted(spent, key=spent.get, reverse=True)}
    return {"plain_s": plain, "instrumented_s": instrumented, "kernels": per_step, "page_faults": faults,
            "python_s": instrumented - sum(s for s, _ in per_step.values())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=5, help="hidden layers k")
    ap.add_argument("--no-bn", action="store_true", help="no batch norm")
    ap.add_argument("--fused", action="store_true", help="nn.mlp(..., fused=True)")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args(argv)
    from minidni import kernels

    out = profile(args.layers, not args.no_bn, args.fused, args.steps)
    print(f"784-256x{args.layers}-10, batch norm {'off' if args.no_bn else 'on'}, fused {args.fused}, batch 256, Adam, "
          f"backend {kernels.get_backend()}: {out['plain_s'] * 1e3:.3f} ms per step "
          f"({out['instrumented_s'] * 1e3:.3f} ms with every kernel call timed)")
    for name, (sec, n) in out["kernels"].items():
        print(f"  {name:<30}{sec * 1e6:9.1f} us per step  ({n} calls)")
    print(f"  {'rest: Python':<30}{out['python_s'] * 1e6:9.1f} us per step")
    print(f"minor page faults per step: {out['page_faults']:.2f} (temporaries freed and re-allocated would show here)")


if __name__ == "__main__":
    main()

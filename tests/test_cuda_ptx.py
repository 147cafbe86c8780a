"""Every CUDA kernel compiles to PTX for a real GPU (compute capability 8.0), with no GPU present; and kernels/gpu.py
offers every reference.py function with the same signature, and imports (and explains itself) without a GPU.

The CUDA simulator (tests/test_cuda_kernels.py) runs kernels as Python, so it accepts what a GPU compiler rejects
(Python lists, return values from kernels, untyped code); compiling to PTX catches those. The kernels are collected
from kernels/cuda.py itself: each @cuda.jit kernel must be listed in cuda.PTX (the @kernel decorator does it) and
each factory (make_*) is built here at gpu.py's GPU sizes, so a new kernel cannot be left out. float32: the dtype
the benchmarks and training use (float64 compiles the same code; the simulator tests run both).
"""
from __future__ import annotations

import inspect
import os
import types

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("the PTX check needs the real CUDA target: run it without NUMBA_ENABLE_CUDASIM",
                allow_module_level=True)
pytest.importorskip("numba_cuda", reason="numba-cuda is not installed: pip install -e '.[cuda]'")

from numba import cuda, float32  # noqa: E402
from numba.cuda import dispatcher  # noqa: E402

from minidni.kernels import cuda as cu  # noqa: E402
from minidni.kernels import gpu, reference  # noqa: E402

# the factories at the sizes gpu.py launches on a GPU (these calls only build dispatchers: nothing compiles yet)
FACTORIES = {
    "make_matmul_v2": lambda: gpu._matmul_v2(gpu.TILE, "float32"),
    "make_matmul_v3": lambda: gpu._matmul_v3(gpu.V3_TILES, "float32"),
    "make_reduce_v2": lambda: gpu._reduce_v2(gpu.REDUCE_THREADS, "float32"),
    "make_reduce_v3": lambda: gpu._reduce_v3(gpu.COLUMN_BLOCK, "float32"),
    "make_batchnorm_stats_v2": lambda: gpu._bn_v2("make_batchnorm_stats_v2", gpu.COLUMN_BLOCK, "float32"),
    "make_batchnorm_backward_sums_v2": lambda: gpu._bn_v2("make_batchnorm_backward_sums_v2", gpu.COLUMN_BLOCK,
                                                          "float32"),
}
for build in FACTORIES.values():
    build()
KERNELS = sorted(cu.PTX)


def test_every_kernel_and_factory_is_checked():
    jitted = [name for name, obj in vars(cu).items()
              if isinstance(obj, dispatcher.CUDADispatcher) and not obj.targetoptions.get("device")]
    missing = [name for name in jitted if name not in cu.PTX]
    assert not missing, f"kernels not in cuda.PTX (decorate them with @kernel(...)): {missing}"
    factories = [name for name, obj in vars(cu).items() if name.startswith("make_") and inspect.isfunction(obj)]
    assert sorted(factories) == sorted(FACTORIES), f"factories in cuda.py {factories}; built here {sorted(FACTORIES)}"
    assert len(KERNELS) >= len(jitted) + len(FACTORIES)


@pytest.fixture(scope="module")
def target_cc80():
    """Device functions ask the current device for its compute capability while they compile; without a GPU there
    is none, so answer 8.0 (the target compile_ptx compiles for) for the duration of these tests."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dispatcher, "get_current_device", lambda: types.SimpleNamespace(compute_capability=(8, 0)))
        yield


@pytest.mark.parametrize("name", KERNELS)
def test_kernel_compiles_to_ptx(name, target_cc80):
    fn, signatures = cu.PTX[name]
    for signature in signatures:
        ptx, return_type = cuda.compile_ptx(fn, signature(float32), cc=(8, 0))
        assert ".entry" in ptx and str(return_type) == "none", f"{name}: not a kernel (returns {return_type})"
        assert ".target sm_80" in ptx


# ---- gpu.py: the reference interface, and life without a GPU -----------------------------------------------------
def public_functions(module):
    return {name: f for name, f in vars(module).items()
            if inspect.isfunction(f) and f.__module__ == module.__name__ and not name.startswith("_")}


REF, GPU = public_functions(reference), public_functions(gpu)
PRIMITIVES = ["unary", "binary", "reduce", "argmax", "matmul", "transpose", "take", "scatter_add", "full", "copy",
              "where", "cast", "slice_copy", "slice_add", "concatenate", "pad", "to_device", "to_host",
              "is_available", "why_unavailable"]


def test_gpu_defines_every_reference_kernel_and_the_primitives():
    assert gpu.NAME == "cuda"
    assert not set(REF) - set(GPU), f"missing from gpu.py: {sorted(set(REF) - set(GPU))}"
    assert not set(PRIMITIVES) - set(GPU), f"primitives missing from gpu.py: {sorted(set(PRIMITIVES) - set(GPU))}"


@pytest.mark.parametrize("name", sorted(REF))
def test_same_signature_as_reference(name):
    ref, dev = inspect.signature(REF[name]), inspect.signature(GPU[name])
    assert [(p.name, p.kind, p.default) for p in ref.parameters.values()] == \
        [(p.name, p.kind, p.default) for p in dev.parameters.values()], f"{name}: reference{ref} vs gpu{dev}"


def test_without_a_gpu_the_backend_says_what_to_do():
    if cuda.is_available():
        pytest.skip("a GPU is present")
    assert not gpu.is_available()
    reason = gpu.why_unavailable()
    assert "no CUDA GPU" in reason and "NUMBA_ENABLE_CUDASIM=1" in reason and "\n" not in reason
    with pytest.raises(RuntimeError, match="cuda backend unavailable: no CUDA GPU"):
        gpu.to_device(np.zeros(3))

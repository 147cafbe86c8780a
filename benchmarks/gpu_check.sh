#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (issue 11): the GPU tests (`pytest -m gpu`), then
# benchmarks/bench_gpu.py; about 5 minutes, well under 10. Everything it prints goes under $OUT (default
# ./gpu-check-out): nvidia-smi.txt, pytest-gpu.txt, bench_gpu.txt and the benchmark's gpu-*.json, which is also
# copied into benchmarks/results/. Run from the repository root:
#     OUT=/tmp/gpu-check bash benchmarks/gpu_check.sh
# PYTHON picks the interpreter (default .venv/bin/python). Exit status: 0 when the tests pass and the benchmark ran.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-out}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
unset NUMBA_ENABLE_CUDASIM   # the real GPU, never the simulator

{ nvidia-smi || echo "nvidia-smi not found"; } > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import numba_cuda, numba.cuda as c; print('numba-cuda', numba_cuda.__version__, 'gpu:', c.is_available())" \
    2>&1 | tee "$OUT/versions.txt"

start=$(date +%s)
timeout 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/ 2>&1 | tee "$OUT/pytest-gpu.txt"
tests_rc=${PIPESTATUS[0]}
echo "pytest -m gpu: exit $tests_rc, $(( $(date +%s) - start )) s" | tee -a "$OUT/pytest-gpu.txt"

start=$(date +%s)
timeout 300 "$PY" benchmarks/bench_gpu.py --out "$OUT" 2>&1 | tee "$OUT/bench_gpu.txt"
bench_rc=${PIPESTATUS[0]}
echo "bench_gpu.py: exit $bench_rc, $(( $(date +%s) - start )) s" | tee -a "$OUT/bench_gpu.txt"
cp "$OUT"/gpu-*.json benchmarks/results/ 2>/dev/null || true

[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]

#!/bin/bash
# A second seed (seed = 1) for the Copy T = 4 and T = 5 cells of the Adam 7e-5 grid, 200,000 batches each.
# Usage: bash copy_t45_seed1_queue.sh dni | bash ... bptt
set -u
export OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1
minidni table copy --out runs/table-copy-7e-5-seed1 --steps 200000 --set lr=7e-5 --set synth_lr=7e-5 \
  --set checkpoint_every=20000 --set seed=1 --methods "$1" --quiet --tasks copy --T 4 5

#!/bin/bash
# A second seed (seed = 1) for cells of the Adam 7e-5 grid (copy_grid_7e-5_queues.sh ran seed 0), 200,000 batches each,
# into runs/table-copy-7e-5-seed1. Usage (from the repository root): bash seed1_queue.sh TASK METHOD T [T ...]
#   bash benchmarks/copy_dni_pilots/seed1_queue.sh copy dni 3 4 5        bash ... copy bptt 3 4 5
#   bash benchmarks/copy_dni_pilots/seed1_queue.sh repeat-copy dni 4     bash ... repeat-copy bptt 4
set -u
export OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1
task=$1 method=$2
shift 2
minidni table copy --out runs/table-copy-7e-5-seed1 --steps 200000 --set lr=7e-5 --set synth_lr=7e-5 \
  --set checkpoint_every=20000 --set seed=1 --methods "$method" --quiet --tasks "$task" --T "$@"

#!/bin/bash
# The Copy / Repeat Copy grid at Adam 7e-5 (core and synthesizer), 200,000 batches a cell, as two queues that never
# touch the same cell. Usage: bash queues.sh A | bash queues.sh B   (from the repository root)
set -u
export OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1
T="minidni table copy --out runs/table-copy-7e-5 --steps 200000 --set lr=7e-5 --set synth_lr=7e-5 --set checkpoint_every=20000 --quiet"
if [ "$1" = A ]; then
  $T --tasks copy --T 2 3 4 5
  $T --tasks repeat-copy --methods dni-aux --T 4 5
  $T --tasks copy --T 8
else
  $T --tasks repeat-copy --methods bptt dni --T 2 3 4 5
  $T --tasks repeat-copy --methods dni-aux --T 2 3
  $T --tasks repeat-copy --T 8
fi

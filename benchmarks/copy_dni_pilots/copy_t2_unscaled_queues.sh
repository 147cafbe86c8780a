#!/bin/bash
# T = 2 with the unscaled target (scale_target=false: 0.1 M(h) regresses on the bootstrapped target, so the
# synthetic gradient predicts the whole future gradient instead of one discounted by 0.1 per window), Adam 7e-5 for
# the core and the synthesizer, 200,000 batches a cell; A: Copy, B: Repeat Copy; DNI then DNI + Aux.
# Usage: bash copy_t2_unscaled_queues.sh A | bash copy_t2_unscaled_queues.sh B   (from the repository root)
set -u
export OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1
task=$([ "$1" = A ] && echo copy || echo repeat-copy)
minidni table copy --out runs/table-copy-7e-5-unscaled --steps 200000 --set lr=7e-5 --set synth_lr=7e-5 \
  --set checkpoint_every=20000 --set scale_target=false --methods dni dni-aux --quiet --tasks $task --T 2

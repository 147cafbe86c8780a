#!/bin/bash
# The DNI and DNI + Aux cells of the Copy / Repeat Copy grid at Adam 7e-5 with the synthesizer in per-episode units
# (synth_units=episode), 200,000 batches a cell, as two queues (A: Copy, B: Repeat Copy), T = 2 first.
# BPTT does not depend on synth_units: its cells are those of copy_grid_7e-5_queues.sh.
# Usage: bash copy_grid_episode_queues.sh A | bash copy_grid_episode_queues.sh B   (from the repository root)
set -u
export OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1
T="minidni table copy --out runs/table-copy-7e-5-episode --steps 200000 --set lr=7e-5 --set synth_lr=7e-5 --set checkpoint_every=20000 --set synth_units=episode --methods dni dni-aux --quiet"
task=$([ "$1" = A ] && echo copy || echo repeat-copy)
for t in 2 3 4 5; do $T --tasks $task --T $t; done

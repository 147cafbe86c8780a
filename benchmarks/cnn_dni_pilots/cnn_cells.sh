#!/bin/bash
# One CNN table cell after another on one BLAS thread (issue 14; docs/results-mnist.md):
#   bash benchmarks/cnn_dni_pilots/cnn_cells.sh "METHOD LAYERS SYNTH_LR SEED" ...
# runs `minidni table mnist --net cnn` at the table's budget (3,000 steps of batch 32) into
# runs/table-mnist-cnn${TAG}-slrSYNTH_LR[-seedSEED]/METHOD-LAYERS/. Extra settings for every cell go in SETTINGS,
# e.g. TAG=-decay SETTINGS="--set lr_gamma=0.1" (the lr, and the synthesizers' with it, / 10 at 1/2 and 3/4).
# SYNTH_LR names the folder; no-bprop and bprop cells ignore it (so a folder can hold the whole table).
cd "$(dirname "$0")/../.." || exit 1
export OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1
for cell in "$@"; do
  set -- $cell
  method=$1 layers=$2 slr=$3 seed=$4
  out=runs/table-mnist-cnn${TAG}-slr$slr
  [ "$seed" != 0 ] && out=$out-seed$seed
  extra=()
  if [ "$method" = dni ] || [ "$method" = cdni ]; then extra=(--set "synth_lr=$slr"); fi
  .venv/bin/minidni table mnist --net cnn --layers "$layers" --methods "$method" --out "$out" --steps 3000 \
    --batch-size 32 --set eval_subset=0 --set eval_count=2 --set checkpoint_every=500 --set "seed=$seed" \
    "${extra[@]}" $SETTINGS --quiet
done

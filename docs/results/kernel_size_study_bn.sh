#!/usr/bin/env bash
# The BatchNorm-lag test of the kernel-size study (docs/results/kernel_size_study.md): each
# checkpoint scored with its running BatchNorm statistics and with them recomputed from 2,048
# training images (niff-analyze evaluate --recalibrate-bn). Every epoch of seed 0 of
# mlp_weight_decay=0.1 and of spec, then the final checkpoint of every finished run. Rerunning
# skips what is done; then docs/results/kernel_size_study_bn.py gathers the table and the figure.
set -uo pipefail
cd "$(dirname "$0")/../.."
S=runs/kernel_size_study
O=runs/bn_recalibration
mkdir -p "$O"
ev() { OMP_NUM_THREADS=1 .venv/bin/niff-analyze evaluate "$@" --recalibrate-bn 2048 -q; }
for arm in mlp_weight_decay=0.1 spec; do
  f=$O/epochs_${arm}_seed0.csv
  [ -f "$f" ] || ev $S/$arm/seed=0/epoch_0* -o "$f"
done
for run in $S/*/seed=*; do
  [ -f "$run/model.safetensors" ] || continue
  f=$O/final_$(basename "$(dirname "$run")")_$(basename "$run").csv
  [ -f "$f" ] || ev "$run" -o "$f"
done

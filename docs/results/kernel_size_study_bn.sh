#!/usr/bin/env bash
# The BatchNorm-lag test of the kernel-size study (docs/results/kernel_size_study.md): each
# checkpoint scored with its running BatchNorm statistics and with them recomputed from 2,048
# training images (niff-analyze evaluate --recalibrate-bn). Every epoch of seeds 0 and 1 of
# mlp_weight_decay=0.1, seed 0 of spec and of mlp_weight_decay=0.1,content_scale=0.5, then the
# final checkpoint of every finished run, and every epoch of the full-width confirmation once it has
# finished (runs/kernel_size_study_width64). Rerunning skips what is done; then
# docs/results/kernel_size_study_bn.py gathers the table and the figure.
set -uo pipefail
cd "$(dirname "$0")/../.."
S=runs/kernel_size_study
O=runs/bn_recalibration
mkdir -p "$O"
ev() { OMP_NUM_THREADS=1 .venv/bin/niff-analyze evaluate "$@" --recalibrate-bn 2048 -q; }
for run in mlp_weight_decay=0.1:0 spec:0 mlp_weight_decay=0.1:1 mlp_weight_decay=0.1_content_scale=0.5:0; do
  arm=${run%:*} seed=${run#*:}
  f=$O/epochs_${arm}_seed${seed}.csv
  [ -f "$f" ] || ev $S/$arm/seed=$seed/epoch_0* -o "$f"
done
for run in $S/*/seed=*; do
  [ -f "$run/model.safetensors" ] || continue
  f=$O/final_$(basename "$(dirname "$run")")_$(basename "$run").csv
  [ -f "$f" ] || ev "$run" -o "$f"
done
W=runs/kernel_size_study_width64/mlp_weight_decay=0.1
f=$O/width64_epochs_mlp_weight_decay=0.1_seed0.csv
if [ -f "$W/model.safetensors" ] && [ ! -f "$f" ]; then ev $W/epoch_0* -o "$f"; fi

#!/usr/bin/env bash
# The full-width confirmation of the kernel-size study (docs/results/kernel_size_study.md): the
# study's most localising arm, mlp_weight_decay=0.1, at the paper's width (64), 15 epochs, seed 0,
# the bundled default's recipe otherwise. The bundled default (resnet18_niff_fmnist) is the same
# run at mlp_weight_decay=0.002, so the two compare directly. Rerunning resumes from the last save.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=runs/kernel_size_study_width64/mlp_weight_decay=0.1
resume=()
if [ -f "$out/train_state.pt" ]; then resume=(--resume); fi
if [ -f "$out/model.safetensors" ]; then echo "finished: $out"; exit 0; fi
exec .venv/bin/niff-analyze train --model resnet18_niff --dataset fashion-mnist --epochs 15 --batch-size 128 \
  --mlp-weight-decay 0.1 --seed 0 --threads 1 --save-every-steps 50 --keep-epoch-checkpoints --quiet \
  --out "$out" "${resume[@]}" "$@"

#!/usr/bin/env bash
# The controlled kernel-size study (docs/results/kernel_size_study.md): eight arms x three seeds of
# the width-16 CIFAR-stem ResNet-18 NIFF on Fashion-MNIST, 15 epochs each (the matched-budget arm: 5).
# The last two arms: the paper's integrated MLP decay (150 CIFAR epochs at 0.002 ~ 15 epochs here at
# 0.0084) and the same integrated decay as mlp_weight_decay=0.1 in a third of the epochs. Rerunning it skips
# finished runs, resumes interrupted ones and regenerates docs/results/kernel_size_study.csv.
# On a SLURM cluster add e.g. --executor slurm --slurm-partition gpu --gpus-per-job 1 --parallel 18.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec .venv/bin/niff-analyze sweep --model resnet18_niff --width 16 --epochs 15 --batch-size 128 \
  --threads 1 --save-every-steps 50 --keep-epoch-checkpoints --quiet \
  --arm spec \
  --arm mlp_weight_decay=0.02 \
  --arm mlp_weight_decay=0.1 \
  --arm mlp_weight_decay=0.1,mlp_bias_decay=on \
  --arm content_scale=0.5 \
  --arm mlp_weight_decay=0.1,content_scale=0.5 \
  --arm mlp_weight_decay=0.0084 \
  --arm epochs=5,mlp_weight_decay=0.3 \
  --seeds 0,1,2 --parallel 2 --out runs/kernel_size_study \
  --table docs/results/kernel_size_study.csv "$@"

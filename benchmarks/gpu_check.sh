#!/usr/bin/env bash
# The GPU check: everything a lent GPU machine should tell us, in one call.
#
#   bash benchmarks/gpu_check.sh [--data DIR] [--out DIR] [--budget S] [--train-seconds S] [--cpu] [--dry-run]
#
# 1. records the machine (nvidia-smi, torch, the packages the toolkit imports);
# 2. installs this checkout over the machine's own torch (pip install --no-deps -e .; without
#    network, so without build isolation; if that fails, PYTHONPATH points at the checkout);
# 3. runs the tests that need CUDA (tests/gpu/) and the CPU-side precision tests;
# 4. runs the layer, train-step and train-loop benchmarks on CUDA (NIFF/baseline ratios);
# 5. trains on Fashion-MNIST for as long as the budget leaves, at most --train-seconds (8 min):
#    resnet18_niff (15 epochs), then resnet18 (the baseline's epoch time: the paper's Table A5
#    ratio), then the paper's other CIFAR-style architectures (resnet50_niff, densenet121_niff,
#    mobilenet_v2_niff, convnext_tiny_niff), 2 epochs each, each stopped when its share is used;
# 6. writes under OUT (at most 8 files, none in subfolders: what the device tool returns):
#    gpu_check.log, env.txt, tests.txt, bench.txt, training.csv, summary.json, runs.tar.gz
#    (metrics.csv, kernel_stats.csv, train_config.json and config.json of every run, no weights).
#
# Data: Fashion-MNIST's four .gz files, from --data DIR or $FMNIST_DIR, else
# /usr/share/datasets/fashion-mnist, else .gpu_data/fashion-mnist in the checkout (carried).
# Needs neither figures/ nor the bundled checkpoints. --budget (default 570 s) is the whole
# script's wall time; the device tool's limit for one command is 600 s.
#
# --cpu runs the same steps on the CPU, shrunk to seconds and without installing anything
# (tests/test_gpu_check.py runs it); --dry-run checks the arguments and the data and prints the
# plan without running anything. Bad arguments or missing data: one line on stderr, exit 2.
set -uo pipefail

usage() { echo "usage: bash benchmarks/gpu_check.sh [--data DIR] [--out DIR] [--budget S] [--train-seconds S] [--cpu] [--dry-run]" >&2; }
die() { echo "gpu_check: $*" >&2; exit 2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${FMNIST_DIR:-}"
OUTDIR="${OUT:-}"
BUDGET=570
TRAIN_SECONDS=480
MODE=cuda
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --data) [ $# -ge 2 ] || die "--data needs a folder"; DATA="$2"; shift 2 ;;
        --out) [ $# -ge 2 ] || die "--out needs a folder"; OUTDIR="$2"; shift 2 ;;
        --budget) [ $# -ge 2 ] || die "--budget needs seconds"; BUDGET="$2"; shift 2 ;;
        --train-seconds) [ $# -ge 2 ] || die "--train-seconds needs seconds"; TRAIN_SECONDS="$2"; shift 2 ;;
        --cpu) MODE=cpu; shift ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
for v in "$BUDGET" "$TRAIN_SECONDS"; do
    [[ "$v" =~ ^[0-9]+$ ]] || die "--budget and --train-seconds take whole seconds, got '$v'"
done
[ -n "$OUTDIR" ] || die "no output folder: pass --out DIR or set OUT"

# ---------------------------------------------------------------- data
FILES="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
has_data() { for f in $FILES; do [ -f "$1/$f" ] || return 1; done; return 0; }
if [ -n "$DATA" ]; then
    has_data "$DATA" || die "Fashion-MNIST not found in $DATA (needs $FILES)"
else
    for cand in /usr/share/datasets/fashion-mnist "$ROOT/.gpu_data/fashion-mnist"; do
        if has_data "$cand"; then DATA="$cand"; break; fi
    done
    [ -n "$DATA" ] || die "Fashion-MNIST not found in /usr/share/datasets/fashion-mnist or .gpu_data/fashion-mnist: carry it and pass --data DIR"
fi
DATA="$(cd "$DATA" && pwd)"

if [ "$MODE" = cuda ]; then
    PY="${PYTHON:-python3}"
    DEVICE=cuda
    BENCH="${GPU_CHECK_BENCHMARKS-layer train_step train_loop}"
    BENCH_FLAGS=""
    TESTS=(tests/gpu tests/test_precision.py tests/test_layer_perf.py)
    TRAIN_ARGS=(--batch-size 128)
    RUNS=("resnet18_niff 15 0.45" "resnet18 15 0.25" "resnet50_niff 2 0.3" "densenet121_niff 2 0.35"
          "mobilenet_v2_niff 2 0.5" "convnext_tiny_niff 2 1.0")
else  # the same steps, shrunk to seconds on the CPU (no GPU, nothing installed)
    PY="${PYTHON:-python3}"
    DEVICE=cpu
    BENCH="${GPU_CHECK_BENCHMARKS-layer}"
    BENCH_FLAGS="--quick --threads 1"
    TESTS=(tests/test_precision.py -m "not slow")
    TRAIN_ARGS=(--batch-size 16 --train-subset 64 --test-subset 32 --width 8 --threads 1)
    RUNS=("resnet18_niff 1 0.6" "resnet18 1 1.0")
fi

plan() {
    echo "gpu_check plan ($MODE): python $PY; data $DATA; out $OUTDIR; budget ${BUDGET}s, training at most ${TRAIN_SECONDS}s"
    [ "$MODE" = cuda ] && echo "  install: $PY -m pip install --no-deps --no-build-isolation -e $ROOT"
    echo "  tests: $PY -m pytest ${TESTS[*]}"
    echo "  benchmarks: $PY -m benchmarks $BENCH --device $DEVICE $BENCH_FLAGS"
    for r in "${RUNS[@]}"; do
        set -- $r
        echo "  train: $1, $2 epoch(s), at most a ${3} share of the training time left"
    done
}
if [ "$DRY" = 1 ]; then plan; exit 0; fi

mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
LOG="$OUTDIR/gpu_check.log"
WORK="$(mktemp -d)"
START=$SECONDS
left() { echo $(( BUDGET - (SECONDS - START) )); }
say() { echo "[gpu_check +$((SECONDS - START))s] $*" | tee -a "$LOG"; }
cd "$ROOT"
export FMNIST_DIR="$DATA" PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
: > "$LOG"
plan | tee -a "$LOG"

# ---------------------------------------------------------------- 1. the machine
say "1. machine"
{
    date -u
    uname -a
    command -v nvidia-smi >/dev/null && nvidia-smi
    "$PY" - <<'EOF'
import importlib, platform
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "| bf16", torch.cuda.is_bf16_supported())
for name in ("torchvision", "numpy", "scipy", "numba", "pandas", "click", "tqdm", "safetensors",
             "matplotlib", "PIL", "threadpoolctl", "submitit", "pytest"):
    try:
        print(f"{name} {getattr(importlib.import_module(name), '__version__', '?')}")
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        print(f"{name} MISSING ({type(exc).__name__})")
EOF
    "$PY" -c "from niff_analysis.train.precision import cpu_bf16_flags, cpu_model; print('cpu', cpu_model(), '| native bf16', cpu_bf16_flags())"
} > "$OUTDIR/env.txt" 2>&1
cat "$OUTDIR/env.txt" >> "$LOG"

# ---------------------------------------------------------------- 2. install
if [ "$MODE" = cuda ]; then
    say "2. pip install --no-deps -e . (over the machine's torch)"
    if "$PY" -m pip install -q --no-deps --no-build-isolation -e "$ROOT" >> "$LOG" 2>&1; then
        say "   installed"
    else
        say "   pip install failed (see above): running from the checkout through PYTHONPATH"
    fi
else
    say "2. install skipped (--cpu): running from the checkout through PYTHONPATH"
fi

# ---------------------------------------------------------------- 3. tests
if [ "$(left)" -ge 60 ]; then
    say "3. tests: ${TESTS[*]}"
    timeout -k 10 "$(( $(left) / 3 ))" "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" \
        > "$OUTDIR/tests.txt" 2>&1
    say "   pytest exit $? ($(tail -n 1 "$OUTDIR/tests.txt"))"
else
    say "3. tests skipped: $(left)s left of the budget"
fi

# ---------------------------------------------------------------- 4. benchmarks
if [ -n "${BENCH// /}" ] && [ "$(left)" -ge 60 ]; then
    say "4. benchmarks: $BENCH on $DEVICE"
    timeout -k 10 "$(( $(left) / 4 ))" "$PY" -m benchmarks $BENCH --device "$DEVICE" $BENCH_FLAGS \
        > "$OUTDIR/bench.txt" 2>&1
    say "   benchmarks exit $?"
else
    say "4. benchmarks skipped (${BENCH:-none named}; $(left)s left of the budget)"
fi

# ---------------------------------------------------------------- 5. training
TRAIN_LEFT=$(( $(left) - 30 ))
[ "$TRAIN_LEFT" -gt "$TRAIN_SECONDS" ] && TRAIN_LEFT=$TRAIN_SECONDS
TRAIN_END=$(( SECONDS + TRAIN_LEFT ))
say "5. training, ${TRAIN_LEFT}s"
for r in "${RUNS[@]}"; do
    set -- $r
    model=$1 epochs=$2 share=$3
    now_left=$(( TRAIN_END - SECONDS ))
    slot=$("$PY" -c "print(int($now_left * $share))")
    if [ "$slot" -lt 20 ]; then say "   $model: no time left"; continue; fi
    say "   $model: $epochs epoch(s), at most ${slot}s"
    timeout -s INT -k 15 "$slot" "$PY" -m niff_analysis train --model "$model" --dataset fashion-mnist \
        --data-dir "$DATA" --epochs "$epochs" --device "$DEVICE" --quiet "${TRAIN_ARGS[@]}" \
        --out "$WORK/runs/$model" >> "$LOG" 2>&1
    say "   $model: exit $?"
done

# ---------------------------------------------------------------- 6. summary
say "6. summary"
"$PY" - "$WORK/runs" "$OUTDIR" "$MODE" >> "$LOG" 2>&1 <<'EOF'
import json, sys
from pathlib import Path
import pandas as pd

runs, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
frames = []
for d in sorted(runs.glob("*")):
    if (d / "metrics.csv").is_file():
        m = pd.read_csv(d / "metrics.csv")
        m.insert(0, "model", d.name)
        tc = json.loads((d / "train_config.json").read_text()) if (d / "train_config.json").is_file() else {}
        m["precision_used"] = tc.get("precision_used")
        frames.append(m)
table = pd.concat(frames) if frames else pd.DataFrame()
table.to_csv(out / "training.csv", index=False)
summary = dict(mode=mode, runs={})
for model, m in (table.groupby("model") if len(table) else []):
    later = m["seconds"].iloc[1:] if len(m) > 1 else m["seconds"]  # the first epoch warms up
    summary["runs"][model] = dict(epochs=int(m["epoch"].max()), test_acc=float(m["test_acc"].iloc[-1]),
                                  seconds_per_epoch=float(later.median()), precision=m["precision_used"].iloc[0])
r = summary["runs"]
if "resnet18_niff" in r and "resnet18" in r:
    summary["niff_over_baseline_epoch_time"] = r["resnet18_niff"]["seconds_per_epoch"] / r["resnet18"]["seconds_per_epoch"]
tests = (out / "tests.txt").read_text().strip().splitlines() if (out / "tests.txt").is_file() else []
summary["tests"] = tests[-1] if tests else "not run"
bench = (out / "bench.txt").read_text().splitlines() if (out / "bench.txt").is_file() else []
summary["bench_lines"] = [l.strip() for l in bench if ("target" in l or "/ bf16" in l or l.startswith("#"))]
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
EOF
say "   summary exit $?"
if [ -d "$WORK/runs" ]; then
    (cd "$WORK" && find runs -name metrics.csv -o -name kernel_stats.csv -o -name train_config.json \
        -o -name config.json | grep -v "/init/" | tar -czf "$OUTDIR/runs.tar.gz" -T -)
fi
rm -rf "$WORK"
say "done in $((SECONDS - START))s: $(ls "$OUTDIR" | tr '\n' ' ')"

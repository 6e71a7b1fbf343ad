"""Benchmark: does ``--precision bf16`` learn what float32 learns?

Four one-epoch runs of ``resnet18_niff`` at ``--width 16`` on a Fashion-MNIST subset through
``niff-analyze train`` (fresh processes, two at a time): float32 and bf16 from seed 0, and float32
from seeds 1 and 2, which say how far runs differ that should be equal in distribution.

Tolerances, fixed before looking ("seed noise" is the larger of the two other seeds' differences
from seed 0):

* test accuracy: |bf16 − fp32| ≤ max(seed noise, 2 binomial standard errors of the test set,
  2·sqrt(p(1 − p)/n));
* kernel statistics (the trainer's records before and after the epoch, per NIFF layer): bf16
  and float32 start from the same initialisation, so |bf16 − fp32| after the epoch is the
  difference in what the epoch did to a statistic. Its noise is how differently the epoch changes
  the statistic from another seed: |(after − before) of seed s − (after − before) of seed 0| (the
  levels themselves differ between seeds mostly by their initialisations). For each statistic the
  median over layers of the first must not exceed the larger of the medians of the second. How far the epoch
  moved each statistic (|after − before| of the float32 run) is printed beside them.

The epoch times are one run each, not interleaved, on whatever else the machine is doing: the
side-by-side speed of bf16 is ``train_loop``'s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from niff_analysis.train.precision import cpu_bf16_flags, cpu_model

from . import show

RUNS = (("fp32", 0), ("bf16", 0), ("fp32", 1), ("fp32", 2))
NOISE_SEEDS = (1, 2)
STATS = (
    "mass3_mean",
    "mass5_mean",
    "mass9_mean",
    "k50_median",
    "k90_median",
    "sigma_x_median",
    "sigma_y_median",
    "gauss_ok",
)
FMNIST = "/usr/share/datasets/fashion-mnist"


def _train(
    out: Path,
    precision: str,
    seed: int,
    device: torch.device,
    train_subset: int,
    test_subset: int,
    data_dir: str | None,
) -> float:
    cmd = [
        sys.executable,
        "-m",
        "niff_analysis",
        "train",
        "--model",
        "resnet18_niff",
        "--width",
        "16",
        "--dataset",
        "fashion-mnist",
        "--epochs",
        "1",
        "--batch-size",
        "128",
        "--train-subset",
        str(train_subset),
        "--test-subset",
        str(test_subset),
        "--seed",
        str(seed),
        "--precision",
        precision,
        "--device",
        str(device),
        "--threads",
        str(torch.get_num_threads()),
        "--quiet",
        "--out",
        str(out),
    ]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"training failed: {res.stderr.strip()[-500:]}")
    return time.perf_counter() - t0


def run(
    quick: bool = False,
    device: torch.device = torch.device("cpu"),
    train_subset: int | None = None,
    test_subset: int | None = None,
    data_dir: str | None = None,
) -> pd.DataFrame:
    """Train the three runs; print accuracy, kernel statistics and the verdicts; return the runs."""
    import os

    train_subset = train_subset or (256 if quick else 25600)
    test_subset = test_subset or (128 if quick else 10000)
    data_dir = data_dir or os.environ.get("FMNIST_DIR") or (FMNIST if Path(FMNIST).is_dir() else None)
    if device.type == "cpu" and not cpu_bf16_flags():
        print(f"\n== precision: skipped, this CPU ({cpu_model()}) has no native bf16")
        return pd.DataFrame()
    rows, stats = [], {}
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
        outs = {r: Path(tmp) / f"{r[0]}_seed{r[1]}" for r in RUNS}
        walls = dict(
            zip(RUNS, pool.map(lambda r: _train(outs[r], *r, device, train_subset, test_subset, data_dir), RUNS))
        )
        for (precision, seed), out in outs.items():
            m = pd.read_csv(out / "metrics.csv").iloc[-1]
            used = json.loads((out / "train_config.json").read_text())["precision_used"]
            rows.append(
                dict(
                    precision=precision,
                    used=used,
                    seed=seed,
                    test_acc=m["test_acc"],
                    train_loss=m["train_loss"],
                    epoch_s=m["seconds"],
                    wall_s=walls[(precision, seed)],
                )
            )
            k = pd.read_csv(out / "kernel_stats.csv")
            stats[(precision, seed)] = {e: g.set_index(["layer", "stat"])["value"] for e, g in k.groupby("epoch")}
    frame = pd.DataFrame(rows)
    print(
        f"\n# precision: resnet18_niff --width 16, 1 epoch, {train_subset} training / {test_subset} test "
        f"images, batch 128, {device} "
        f"({cpu_model() if device.type == 'cpu' else torch.cuda.get_device_name(device)}), "
        f"{torch.get_num_threads()} threads"
    )
    show("precision: one epoch per run", frame, "{:.4g}")
    acc = {(r.precision, r.seed): r.test_acc for r in frame.itertuples()}
    d_bf16 = abs(acc[("bf16", 0)] - acc[("fp32", 0)])
    d_seed = max(abs(acc[("fp32", s)] - acc[("fp32", 0)]) for s in NOISE_SEEDS)
    p = acc[("fp32", 0)]
    se = float(np.sqrt(p * (1 - p) / test_subset))
    tol = max(d_seed, 2 * se)
    print(
        f"  test accuracy: |bf16 - fp32| = {d_bf16:.4f}; seed noise (largest |seed s - seed 0|) = {d_seed:.4f}; "
        f"2 SE = {2 * se:.4f}; tolerance {tol:.4f}: {'within' if d_bf16 <= tol else 'OUTSIDE'}"
    )
    f0, b0 = stats[("fp32", 0)], stats[("bf16", 0)]
    first, last = min(f0), max(f0)
    table = []
    for stat in STATS:
        at = lambda run, epoch: run[epoch].xs(stat, level="stat")  # noqa: E731, B023 - per-layer values, this stat
        change0 = at(f0, last) - at(f0, first)
        noise = [
            ((at(stats[("fp32", s)], last) - at(stats[("fp32", s)], first)) - change0).abs().median()
            for s in NOISE_SEEDS
        ]
        table.append(
            dict(
                stat=stat,
                fp32_value=at(f0, last).median(),
                moved_in_epoch=change0.abs().median(),
                bf16_vs_fp32=(at(b0, last) - at(f0, last)).abs().median(),
                **{f"seed{s}_noise": n for s, n in zip(NOISE_SEEDS, noise)},
                seed_noise=max(noise),
            )
        )
        n_layers = len(change0)
    kt = pd.DataFrame(table)
    kt["within"] = kt["bf16_vs_fp32"] <= kt["seed_noise"]
    show(
        f"precision: kernel statistics after the epoch, median over {n_layers} NIFF layers (|differences|)",
        kt,
        "{:.3g}",
    )
    print(f"  kernel statistics within seed noise: {int(kt['within'].sum())} of {len(kt)}")
    return frame

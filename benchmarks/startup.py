"""Benchmark 6: how fast the command line answers, next to ``python -c "import torch"``.

Each contender is a fresh interpreter (``subprocess``), timed round-robin. Targets:
``niff-analyze --help`` and ``--version`` within 0.5 s; ``models`` imports no torchvision.
"""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import torch

from niff_analysis.analysis.cost import median_ms, time_interleaved

from . import show, verdict

CONTENDERS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
    "niff-analyze --version": [sys.executable, "-m", "niff_analysis", "--version"],
    "niff-analyze --help": [sys.executable, "-m", "niff_analysis", "--help"],
    "niff-analyze models": [sys.executable, "-m", "niff_analysis", "models"],
}
TARGET_S = {"niff-analyze --version": 0.5, "niff-analyze --help": 0.5}


def run(quick: bool = False, device: torch.device = torch.device("cpu")) -> pd.DataFrame:
    def call(cmd):
        return lambda: subprocess.run(cmd, capture_output=True, check=True)

    times = time_interleaved({k: call(v) for k, v in CONTENDERS.items()}, repeats=2 if quick else 5, warmup=1)
    torch_ms = median_ms(times['python -c "import torch"'])
    rows = []
    for name in CONTENDERS:
        ms = median_ms(times[name])
        target = TARGET_S.get(name)
        rows.append(
            dict(
                command=name,
                median_ms=ms,
                min_ms=min(times[name]) * 1e3,
                vs_import_torch=ms / torch_ms,
                target="-" if target is None else f"<= {target * 1e3:.0f} ms",
                verdict="-" if target is None else verdict(ms / 1e3, target),
            )
        )
    df = pd.DataFrame(rows)
    show("Start-up: fresh interpreter per call, round-robin", df)
    return df

"""The files a run records as it trains: ``metrics.csv`` and ``kernel_stats.csv``."""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from ..analysis.kernels import extract_kernels
from ..analysis.stats import kernel_stats, read_kernel_stats, stats_csv
from ..errors import NiffError
from ..io import atomic_write


def write_metrics(path: Path, rows: list[dict]) -> None:
    """Write ``metrics.csv``: one row per finished epoch (rewritten whole after each)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue())


class StatsRecorder:
    """Writes ``kernel_stats.csv``: :func:`~niff_analysis.analysis.stats.kernel_stats` of the
    model being trained, one block of rows per recorded step (epoch = step / steps per epoch).

    The whole file is rewritten atomically at every record. On resume the rows after the
    resumed step are dropped (they were recorded after the state was saved), so a killed and
    resumed run writes the same file as an uninterrupted one.
    """

    def __init__(self, model: nn.Module, path: Path, steps: int, device: torch.device, enabled: bool):
        self.model, self.path, self.steps, self.device = model, path, steps, device
        self.enabled = enabled
        self.blocks: list[pd.DataFrame] = []

    def keep_until(self, until: int) -> None:
        """Keep the rows of an earlier run up to ``until``, the step its saved state holds."""
        if not (self.enabled and self.path.is_file()):
            return
        try:
            old = read_kernel_stats(self.path)
        except (ValueError, OSError, pd.errors.ParserError):
            return  # unreadable: recorded again from here on
        old = old[old["step"] <= until]
        self.blocks = [g for _, g in old.groupby("step", sort=True)]

    def record(self, global_step: int) -> float:
        """Record the statistics at ``global_step`` (once per step); returns the seconds taken."""
        if not self.enabled or any(int(b["step"].iloc[0]) == global_step for b in self.blocks):
            return 0.0
        t0 = time.time()
        try:
            df = kernel_stats(extract_kernels(self.model), device=self.device)
        except NiffError as exc:  # no analysable layer, or diverged weights: training goes on
            print(f"warning: kernel statistics at step {global_step} not recorded: {exc}", file=sys.stderr)
            self.enabled = False
            return 0.0
        df.insert(0, "step", global_step)
        df.insert(0, "epoch", global_step / self.steps)
        self.blocks.append(df)
        self.blocks.sort(key=lambda b: int(b["step"].iloc[0]))
        atomic_write(self.path, stats_csv(pd.concat(self.blocks, ignore_index=True)))
        return time.time() - t0

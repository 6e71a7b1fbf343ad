"""Recipe ablations: train several arms from one seed and compare their kernel statistics.

An *arm* is the base :class:`~niff_analysis.train.TrainConfig` with a few settings changed,
written ``name`` = ``key=value,key=value`` (``spec``: no change). Every arm trains into its own
folder under the sweep's folder with kernel statistics on, from the same seed and so the same
initialisation and data order; a finished arm is skipped and an interrupted one resumed, so
rerunning the same command continues a sweep. :func:`collect` joins the arms' ``metrics.csv``
and ``kernel_stats.csv`` into tidy tables for :func:`~niff_analysis.plotting.plot_sweep`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from ..analysis.stats import FILE_NAME as STATS_NAME
from ..analysis.stats import read_kernel_stats
from ..checkpoint import CONFIG_NAME
from ..errors import NiffError
from ..io import atomic_write
from .trainer import STATE_NAME, TrainConfig, train

#: Settings an arm may change, with their types.
ARM_KEYS = {"mlp_weight_decay": float, "mlp_lr_scale": float, "weight_decay": float, "lr": float,
            "label_smoothing": float, "momentum": float}
SWEEP_FILE = "sweep.json"


def parse_arm(text: str) -> tuple[str, dict]:
    """``"mlp_weight_decay=0.05,mlp_lr_scale=0.1"`` → (folder name, changes); ``"spec"`` → no change.

    Raises:
        NiffError: an unknown key or a value that is not a number.
    """
    text = text.strip()
    if text in ("spec", ""):
        return "spec", {}
    changes = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in ARM_KEYS:
            raise NiffError(f"--arm {text!r}: expected key=value pairs with keys from "
                            f"{', '.join(ARM_KEYS)} (or 'spec')")
        try:
            changes[key] = ARM_KEYS[key](value)
        except ValueError:
            raise NiffError(f"--arm {text!r}: {key} takes a number, got {value!r}") from None
    name = "_".join(f"{k}={v:g}" for k, v in changes.items())
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", name), changes


def run_sweep(base: TrainConfig, arms: Sequence[str], out: str) -> pd.DataFrame:
    """Train every arm (skipping finished ones, resuming interrupted ones); returns :func:`collect`.

    Args:
        base: the shared recipe; its ``out`` is ignored.
        arms: arm specifications (see :func:`parse_arm`).
        out: the sweep folder; arm ``name`` trains into ``out/name``.
    """
    parsed = [parse_arm(a) for a in arms]
    names = [n for n, _ in parsed]
    if not parsed:
        raise NiffError("a sweep needs at least one --arm")
    if len(set(names)) < len(names):
        raise NiffError(f"two arms have the same settings: {', '.join(names)}")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise NiffError(f"--out {out}: exists and is not a directory")
    configs = []
    for name, changes in parsed:
        cfg = dataclasses.replace(base, out=str(root / name), kernel_stats=True, **changes)
        cfg.validate()
        configs.append((name, changes, cfg))
    root.mkdir(parents=True, exist_ok=True)
    atomic_write(root / SWEEP_FILE, json.dumps(dict(
        arms={n: c for n, c, _ in configs},
        base={k: v for k, v in dataclasses.asdict(base).items() if k != "out"}), indent=2) + "\n")
    for name, _, cfg in configs:
        folder = Path(cfg.out)
        if (folder / CONFIG_NAME).is_file():
            continue  # finished: the trainer writes the run folder's config.json last
        train(cfg, resume=(folder / STATE_NAME).is_file())
    return collect(root, names)


def collect(root: str, arms: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """The kernel statistics of a sweep's arms, with each arm's test accuracy at every epoch.

    Returns:
        kernel_stats rows with a leading ``arm`` column, plus ``test_acc`` (the arm's test
        accuracy after that epoch; NaN for records between epochs and at initialisation).
    """
    root = Path(root)
    if arms is None:
        arms = list(json.loads((root / SWEEP_FILE).read_text())["arms"])
    frames = []
    for name in arms:
        folder = root / name
        if not (folder / STATS_NAME).is_file():
            continue
        hist = read_kernel_stats(folder)
        metrics = pd.read_csv(folder / "metrics.csv") if (folder / "metrics.csv").is_file() else None
        acc = {} if metrics is None else dict(zip(metrics["epoch"].astype(float), metrics["test_acc"]))
        hist["test_acc"] = hist["epoch"].map(acc)
        hist.insert(0, "arm", name)
        frames.append(hist)
    if not frames:
        raise NiffError(f"{root}: no arm has recorded kernel statistics yet")
    return pd.concat(frames, ignore_index=True)

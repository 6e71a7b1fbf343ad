"""Helpers the tests share: the real data set's folder, the tiny training recipe, reading a
checkpoint's weights, running the CLI in a fresh interpreter and recording the states a run saves.

Tests import them with ``from helpers import ...`` (``tests/`` is on ``sys.path`` under pytest's
default import mode); fixtures stay in ``conftest.py``, which pytest alone imports.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# FMNIST_DIR: where a machine without the Debian package keeps the data (benchmarks/gpu_check.sh).
FMNIST = Path(os.environ.get("FMNIST_DIR") or "/usr/share/datasets/fashion-mnist")
CLI = [sys.executable, "-m", "niff_analysis"]


def tiny_config(out, **changes):
    """The tiny recipe every trainer test shares: ResNet-18 NIFF, 32 real Fashion-MNIST
    images, batch 8, 2 epochs (8 steps), resumable state every 2 steps."""
    from niff_analysis.train import TrainConfig

    kw = dict(
        model="resnet18_niff",
        dataset="fashion-mnist",
        data_dir=str(FMNIST),
        out=str(out),
        epochs=2,
        batch_size=8,
        train_subset=32,
        test_subset=16,
        seed=0,
        threads=1,
        device="cpu",
        progress=False,
        save_every_steps=2,
    )
    kw.update(changes)
    return TrainConfig(**kw)


def load_weights(path) -> dict:
    """The tensors of a checkpoint directory's model.safetensors."""
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def run_cli(*args, timeout=300, **kw) -> subprocess.CompletedProcess:
    """``niff-analyze ARGS`` in a fresh interpreter (one thread)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env, **kw)


@contextlib.contextmanager
def recorded_states(folder: Path):
    """While active, copy every ``train_state.pt`` the trainer writes into ``folder``;
    yields the list of (epoch, step, copy path) it fills."""
    from niff_analysis.train import trainer

    snapshots, real_write = [], trainer.atomic_write

    def recording_write(path, data):
        result = real_write(path, data)
        if Path(path).name == trainer.STATE_NAME:
            st = torch.load(path, weights_only=True)
            copy = folder / f"state_{st['epoch']}_{st['step']}.pt"
            shutil.copy(path, copy)
            snapshots.append((st["epoch"], st["step"], copy))
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "atomic_write", recording_write)
        yield snapshots

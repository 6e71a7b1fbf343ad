"""DistributedDataParallel for real: ``torchrun --nproc_per_node=2`` on CPU with gloo.

The comparison runs in float64: in float32, BatchNorm's backward at initialisation is so
ill-conditioned that merely changing the summation order (1 vs 2 processes, or float32 vs
float64 in one process) moves some gradients by several per cent, which hides whether the two
set-ups compute the same function. In float64 rounding is ~1e-16 and the comparison is sharp.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from helpers import FMNIST, load_weights, tiny_config
from niff_analysis.models import create_model
from niff_analysis.train import trainer
from niff_analysis.train.distributed import GlobalBatchNorm, convert_batchnorm, state_fingerprint

pytestmark = pytest.mark.slow  # torchrun: not in `make test-fast`

# Global batch 4 = 2 ranks × 2 images, 2 steps (momentum in play on the second), float64.
SETTINGS = dict(epochs=1, batch_size=4, train_subset=8, test_subset=4, dtype="float64", save_every_steps=0)


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(tmp_path, fmnist_dir):
    single = tmp_path / "single"
    trainer.train(tiny_config(single, **SETTINGS))

    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "niff_analysis",
        "train",
        "--model",
        "resnet18_niff",
        "--data-dir",
        str(FMNIST),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--train-subset",
        "8",
        "--test-subset",
        "4",
        "--dtype",
        "float64",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(out),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]

    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    ddp, one = load_weights(out), load_weights(single)
    # Both ranks ended with bit-identical weights, and they are the weights rank 0 saved.
    assert config["replica_sha256"] == [state_fingerprint(ddp)] * 2
    # Two processes train the same model as one process with the same global batch.
    diff = max((ddp[k] - one[k]).abs().max().item() for k in one if one[k].is_floating_point())
    assert diff < 1e-10, diff
    assert all(torch.equal(ddp[k], one[k]) for k in one if not one[k].is_floating_point())
    # ...and training really moved the weights far beyond that tolerance.
    torch.manual_seed(0)
    init = create_model("resnet18_niff", **config["model_kwargs"]).double().state_dict()
    moved = max((one[k] - init[k]).abs().max().item() for k in one if one[k].is_floating_point())
    assert moved > 1e-3
    # Metrics are all-reduced: the same as the single process's.
    rows = [line.split(",")[:6] for line in (out / "metrics.csv").read_text().splitlines()]
    rows_one = [line.split(",")[:6] for line in (single / "metrics.csv").read_text().splitlines()]
    assert rows[0] == rows_one[0] and len(rows) == len(rows_one) == 2
    # Rank 0 alone records the kernel statistics; they are those of the single process's run.
    from niff_analysis.analysis import read_kernel_stats

    ks, ks_one = read_kernel_stats(out), read_kernel_stats(single)
    assert list(ks["step"]) == list(ks_one["step"]) and list(ks["stat"]) == list(ks_one["stat"])
    assert ((ks["value"] - ks_one["value"]).abs().fillna(0) < 1e-6).all()
    for a, b in zip(rows[1], rows_one[1]):
        assert float(a) == pytest.approx(float(b), rel=1e-9, abs=1e-12)


def test_global_batchnorm_is_batchnorm_outside_a_process_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(3)))
    model[1].running_mean.fill_(0.3)
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    converted = convert_batchnorm(model, torch.device("cpu"))
    assert isinstance(converted[1], GlobalBatchNorm) and isinstance(converted[3][0], GlobalBatchNorm)
    state = converted.state_dict()
    assert state.keys() == plain.keys() and all(torch.equal(state[k], plain[k]) for k in plain)
    x = torch.randn(4, 1, 6, 6)
    ref = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(3)))
    ref.load_state_dict(plain)
    assert torch.equal(converted(x), ref(x))
    assert torch.equal(converted.state_dict()["1.running_var"], ref.state_dict()["1.running_var"])

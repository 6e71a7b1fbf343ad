"""``niff-analyze evaluate``: a checkpoint's accuracy, as recorded and with its BatchNorm
statistics recomputed ("precise BN"), checked against independent computations."""

from __future__ import annotations

import hashlib
import json
import math

import pandas as pd
import pytest
import torch
from torch import nn

from helpers import run_cli
from niff_analysis.data import TensorDataset
from niff_analysis.train.batches import recalibrate_batchnorm, sample


def _images(n: int, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=gen)
    return TensorDataset(images, torch.arange(n) % 3, (0.3,), (0.4,), ("a", "b", "c"))


def _conv_bn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    model[1].running_mean.fill_(5.0)  # stale statistics, as a training run can leave them
    model[1].running_var.fill_(9.0)
    return model.eval()


def _conv_out(model: nn.Module, data: TensorDataset) -> torch.Tensor:
    x = (data.images.float() / 255 - 0.3) / 0.4
    with torch.no_grad():
        return torch.nn.functional.conv2d(x, model[0].weight, model[0].bias, padding=1)


def test_recalibration_in_one_batch_is_the_sample_mean_and_unbiased_variance():
    model, data = _conv_bn(), _images(40)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "tracked" not in k}
    used = recalibrate_batchnorm(model, data, 40, torch.device("cpu"), batch_size=64)
    assert used == 40
    y = _conv_out(model, data)  # every image is in the sample: the order does not matter
    torch.testing.assert_close(model[1].running_mean, y.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[1].running_var, y.var((0, 2, 3), unbiased=True), rtol=1e-5, atol=1e-6)
    assert not model.training, "the model's mode is restored"
    assert model[1].momentum == 0.1, "the momentum is restored"
    for k, v in weights.items():
        assert torch.equal(model.state_dict()[k], v), f"{k} changed"


def test_recalibration_over_equal_batches_averages_their_statistics():
    model, data = _conv_bn(), _images(40)
    recalibrate_batchnorm(model, data, 40, torch.device("cpu"), batch_size=20, seed=3)
    part = sample(data, 40, seed=3)  # the order the batches were drawn in
    y = _conv_out(model, part)
    means = torch.stack([y[:20].mean((0, 2, 3)), y[20:].mean((0, 2, 3))]).mean(0)
    variances = torch.stack([y[:20].var((0, 2, 3)), y[20:].var((0, 2, 3))]).mean(0)
    torch.testing.assert_close(model[1].running_mean, means, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[1].running_var, variances, rtol=1e-5, atol=1e-6)
    assert int(model[1].num_batches_tracked) == 2


def test_a_model_without_batchnorm_is_left_alone():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert recalibrate_batchnorm(model, _images(10), 10, torch.device("cpu")) == 0
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_sample_is_seeded_and_without_replacement():
    data = _images(30)
    a, b, c = sample(data, 12, seed=1), sample(data, 12, seed=1), sample(data, 12, seed=2)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    rows = {tuple(img.flatten().tolist()) for img in a.images}
    assert len(rows) == 12, "no image drawn twice"
    assert len(sample(data, 99).labels) == 30, "asking for more gives all of them"
    assert len(data.labels) == 30, "the caller's dataset is unchanged"


def test_proportion_interval_is_wilsons():
    from niff_analysis.analysis.uncertainty import proportion_interval

    k, n, z = 9289, 10000, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo, hi = proportion_interval(k, n)
    assert lo == pytest.approx(centre - half, abs=1e-9) and hi == pytest.approx(centre + half, abs=1e-9)
    assert all(math.isnan(v) for v in proportion_interval(0, 0))


def _sha(path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_evaluate_reproduces_the_recorded_accuracy_and_never_changes_the_checkpoint(reference_run, tmp_path):
    out = reference_run["out"]
    config = json.loads((out / "config.json").read_text())
    recorded, recorded_loss = config["test_acc"], config["test_loss"]
    before = _sha(out)
    target = tmp_path / "eval.csv"
    r = run_cli("evaluate", out, "--images", 16, "--recalibrate-bn", 24, "--batch-size", 8, "-o", target, "-q")
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(target)
    assert list(df["batchnorm"]) == ["running", "recalibrated"]
    running, recal = df.iloc[0], df.iloc[1]
    # the run evaluated its first 16 test images after its last epoch: the same number, by another path
    assert running["acc"] == recorded and running["recorded_acc"] == recorded
    assert running["loss"] == pytest.approx(recorded_loss, rel=1e-6)
    assert running["images"] == 16 and running["dataset"] == "fashion-mnist" and running["content_scale"] == 1.0
    assert running["acc_lo"] <= running["acc"] <= running["acc_hi"]
    assert recal["bn_images"] == 24 and math.isnan(recal["recorded_acc"])
    assert _sha(out) == before, "the checkpoint's weights file is never modified"
    params = json.loads((tmp_path / "meta.json").read_text())["outputs"]["eval.csv"]["parameters"]
    assert params["recalibrate_bn"] == 24 and not {"layers", "include_conv"} & set(params)
    # other images than the run's are not the recorded evaluation
    r = run_cli("evaluate", out, "--images", 8, "--format", "csv")
    assert r.returncode == 0, r.stderr
    assert pd.read_csv(pd.io.common.StringIO(r.stdout))["recorded_acc"].isna().all()


@pytest.mark.parametrize(
    "args, says",
    [
        (["--recalibrate-bn", "-1"], "--recalibrate-bn"),
        (["--content-scale", "0"], "--content-scale"),
        (["--images", "0"], "--images"),
        (["--dataset", "imagefolder"], "imagefolder needs --data-dir"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(reference_run, args, says):
    r = run_cli("evaluate", reference_run["out"], *args)
    assert r.returncode == 2, r.stderr
    assert says in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name, published", [("resnet18_niff_fmnist", 0.9289), ("resnet18_fmnist", 0.9450)])
def test_bundled_checkpoints_reproduce_their_published_test_accuracy(name, published, fmnist_dir):
    """The README's 92.89 % (NIFF default) and 94.50 % (baseline) on all 10,000 Fashion-MNIST
    test images, recomputed from the shipped weights (torchvision pins its weights' accuracy the same way)."""
    from niff_analysis.pipeline import run
    from niff_analysis.tables import Evaluate

    evaluate = Evaluate(data_dir=fmnist_dir)
    df = run([name], evaluate)[evaluate]
    assert list(df["images"]) == [10000]
    assert round(float(df["acc"].iloc[0]), 4) == published
    assert df["recorded_acc"].iloc[0] == published

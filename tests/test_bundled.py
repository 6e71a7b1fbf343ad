"""The bundled checkpoints are real trained models whose recorded accuracy can be reproduced."""

import pytest
import torch

from niff_analysis.checkpoint import BUNDLED_DIR, DEFAULT_CHECKPOINT, load_checkpoint
from niff_analysis.train import evaluate, load_fashion_mnist

pytestmark = pytest.mark.slow  # the bundled models on real images: not in `make test-fast`

BUNDLED = sorted(p for p in BUNDLED_DIR.iterdir() if (p / "config.json").is_file())


def test_default_checkpoint_is_the_niff_resnet18():
    model = load_checkpoint()
    meta = model.niff_checkpoint
    assert DEFAULT_CHECKPOINT in BUNDLED
    assert meta["architecture"] == "resnet18_niff" and meta["dataset"] == "fashion-mnist"
    assert meta["model_kwargs"]["in_chans"] == 1 and meta["model_kwargs"]["stem"] == "cifar"
    assert all(layer["fmap"] for layer in meta["layers"])
    assert 0.0 <= meta["test_acc"] <= 1.0


@pytest.mark.parametrize("path", BUNDLED, ids=[p.name for p in BUNDLED])
def test_recorded_accuracy_reproduces_on_real_test_images(path, fmnist_dir):
    """Accuracy on the first 2,000 real test images agrees with the recorded full-test-set
    accuracy (a sampling tolerance of 3 points), and is far above chance (10 %)."""
    torch.manual_seed(0)
    model = load_checkpoint(path)
    data = load_fashion_mnist(fmnist_dir, "test").subset(2000)
    _, acc = evaluate(model, data, torch.device("cpu"), batch_size=250)
    recorded = model.niff_checkpoint["test_acc"]
    assert abs(acc - recorded) < 0.03, (acc, recorded)
    assert acc > 0.5

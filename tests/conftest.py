"""Shared fixtures: the real data sets the tests use and one tiny reference training run.

Helpers that tests import themselves live in ``helpers.py``; slow tests carry
``@pytest.mark.slow`` (or a module's ``pytestmark``) on the test itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import FMNIST, recorded_states, tiny_config

# tests/gpu/ needs a CUDA GPU: it is collected only where one is present (benchmarks/gpu_check.sh
# runs it on a lent GPU machine); the CUDA code paths that can run on a CPU are tested on the CPU
# (tests/test_precision.py).
collect_ignore_glob = [] if torch.cuda.is_available() else ["gpu/*"]


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    if not (FMNIST / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.fail(f"Fashion-MNIST is missing from {FMNIST}: run `make data`")
    return FMNIST


@pytest.fixture(scope="session")
def cifar_pngs() -> list[tuple[Path, int]]:
    """The 20 real CIFAR-10 test images of the foolbox 3.3.4 wheel, with their labels
    (file names are ``cifar10_<index>_<label>.png``)."""
    import importlib.util

    spec = importlib.util.find_spec("foolbox")  # installed --no-deps: locate it, do not import it
    assert spec is not None, "foolbox==3.3.4 is missing: run `make venv`"
    files = sorted((Path(spec.origin).parent / "data").glob("cifar10_*.png"))
    assert len(files) == 20, "foolbox==3.3.4 ships 20 CIFAR-10 images (make venv installs it)"
    return [(f, int(f.stem.split("_")[2])) for f in files]


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, fmnist_dir):
    """One uninterrupted tiny run; also keeps a copy of every ``train_state.pt`` it wrote.

    Returns a dict: ``out`` (run folder), ``cfg``, ``snapshots`` (list of (epoch, step, path)).
    """
    from niff_analysis.train import trainer

    out = tmp_path_factory.mktemp("reference")
    cfg = tiny_config(out)
    with recorded_states(tmp_path_factory.mktemp("snapshots")) as snapshots:
        trainer.train(cfg)
    return dict(out=out, cfg=cfg, snapshots=snapshots)


@pytest.fixture(scope="session")
def baseline_checkpoint(tmp_path_factory) -> Path:
    """A plain ResNet-18 checkpoint (CIFAR stem, 1 channel, 10 classes) named like the bundled
    baseline. Structural tests of baseline analysis use it, so they do not depend on which
    trained checkpoints ship with the package."""
    from niff_analysis import create_model
    from niff_analysis.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_chans=1, stem="cifar")
    return save_checkpoint(
        model,
        tmp_path_factory.mktemp("baseline") / "resnet18_fmnist",
        dataset="fashion-mnist",
        epochs=0,
        seed=0,
        test_acc=None,
    )

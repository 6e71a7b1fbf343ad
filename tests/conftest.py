"""Shared fixtures: the real data sets the tests use and one tiny reference training run."""

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

# tests/gpu/ needs a CUDA GPU: it is collected only where one is present (benchmarks/gpu_check.sh
# runs it on a lent GPU machine); the CUDA code paths that can run on a CPU are tested on the CPU
# (tests/test_precision.py).
collect_ignore_glob = [] if torch.cuda.is_available() else ["gpu/*"]

# The slow tier beside the modules marked slow as a whole (training, torchrun, notebooks, fresh
# interpreters): tests that start processes, evaluate the bundled models on real images, build
# every registered model, or write full figure sets. `make test` runs them; `make test-fast`
# (-m "not slow") does not. Patterns are fnmatch'ed against the test's node id.
SLOW = [
    "tests/test_bundled.py::*",
    "*::test_entry_point*",
    "tests/test_plotting.py::test_cli_*",
    "tests/test_plotting.py::test_figures_are_written_as_a_unit",
    "tests/test_cli_analysis.py::test_one_label_rule_and_duplicates_analysed_once",
    "tests/test_imports.py::test_import_plain_convnext_and_a_converted_torchvision_state_dict",
    "tests/test_imports.py::test_converted_torchvision_model_is_a_first_class_checkpoint",
    "tests/test_models.py::test_every_model_forward_backward*",
    "tests/test_bad_inputs.py::test_corrupt_image_in_imagefolder_is_one_line*",
    "tests/test_bad_inputs.py::test_degenerate_*",
    "tests/test_erf_frequency.py::test_erf_command_on_the_bundled_checkpoints",
    "tests/test_erf_frequency.py::test_an_anti_hermitian_perturbation_changes_no_output",
    "tests/test_checkpoint.py::test_cli_import_reference_then_describe",
    "tests/test_checkpoint.py::test_round_trip_directory_and_single_file",
    "tests/test_checkpoint.py::test_import_reference_rejects_mismatches",
    "tests/test_analysis_gaussian.py::test_give_up_rules_keep_every_successful_fit_of_the_bundled_checkpoint",
    "tests/test_analysis_gaussian.py::test_equals_curve_fit_on_learned_kernels",
    "tests/test_claims.py::test_claims_command_*",
    "tests/test_claims.py::test_claims_pool_checkpoints_of_one_recipe_over_seeds",
]


def pytest_collection_modifyitems(config, items):
    import fnmatch

    for item in items:
        if any(fnmatch.fnmatchcase(item.nodeid, pattern) for pattern in SLOW):
            item.add_marker(pytest.mark.slow)


def tiny_config(out, **changes):
    """The tiny recipe every trainer test shares: ResNet-18 NIFF, 32 real Fashion-MNIST
    images, batch 8, 2 epochs (8 steps), resumable state every 2 steps."""
    from niff_analysis.train import TrainConfig

    kw = dict(model="resnet18_niff", dataset="fashion-mnist", data_dir=str(FMNIST), out=str(out),
              epochs=2, batch_size=8, train_subset=32, test_subset=16, seed=0, threads=1,
              device="cpu", progress=False, save_every_steps=2)
    kw.update(changes)
    return TrainConfig(**kw)


def load_weights(path) -> dict:
    """The tensors of a checkpoint directory's model.safetensors."""
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def run_cli(*args, timeout=300, **kw) -> subprocess.CompletedProcess:
    """``niff-analyze ARGS`` in a fresh interpreter (one thread)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env, **kw)


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
    return save_checkpoint(model, tmp_path_factory.mktemp("baseline") / "resnet18_fmnist",
                           dataset="fashion-mnist", epochs=0, seed=0, test_acc=None)

"""Datasets on real images: Fashion-MNIST idx files, CIFAR-10 pickle batches (written from the
20 real CIFAR-10 images of the foolbox wheel), ImageFolder trees; and one-line errors."""

from __future__ import annotations

import gzip
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

from niff_analysis.cli import main
from niff_analysis.errors import DataError
from niff_analysis.train.data import (
    CIFAR10_CLASSES,
    augment_batch,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_imagefolder,
)

IDX = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def _write_idx_folder(folder, images: np.ndarray, labels: np.ndarray, split="test"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / IDX[split][0]).write_bytes(_idx_bytes(images))
    (folder / IDX[split][1]).write_bytes(_idx_bytes(labels))
    return folder


# ----------------------------------------------------------------------------- Fashion-MNIST
def test_fashion_mnist_real_files_match_torchvision_reader(fmnist_dir, tmp_path):
    test = load_fashion_mnist(fmnist_dir, "test")
    assert test.images.shape == (10000, 1, 32, 32) and test.images.dtype == torch.uint8
    # Independent reader (torchvision's, on the gunzipped files).
    for name in IDX["test"]:
        (tmp_path / name[:-3]).write_bytes(gzip.decompress((fmnist_dir / name).read_bytes()))
    tv_images = read_sn3_pascalvincent_tensor(str(tmp_path / IDX["test"][0][:-3]))
    tv_labels = read_sn3_pascalvincent_tensor(str(tmp_path / IDX["test"][1][:-3]))
    assert torch.equal(test.images[:, 0, 2:30, 2:30], tv_images)
    assert torch.equal(test.labels, tv_labels.long())
    assert test.images[:, :, :2].sum() == 0 and test.images[:, :, :, 30:].sum() == 0  # zero padding
    assert torch.bincount(test.labels).tolist() == [1000] * 10  # the test set is balanced
    train = load_fashion_mnist(fmnist_dir, "train")
    assert len(train) == 60000 and train.classes[9] == "Ankle boot"


def test_fashion_mnist_folder_written_from_real_images(fmnist_dir, tmp_path):
    real = load_fashion_mnist(fmnist_dir, "test")
    images = real.images[:40, 0, 2:30, 2:30].numpy()
    labels = real.labels[:40].numpy()
    folder = _write_idx_folder(tmp_path / "fm", images, labels)
    small = load_dataset("fashion-mnist", folder, "test")
    assert torch.equal(small.images, real.images[:40]) and torch.equal(small.labels, real.labels[:40])
    with pytest.raises(DataError, match="lacks train-images-idx3-ubyte.gz"):
        load_fashion_mnist(folder, "train")


@pytest.mark.parametrize(
    "corrupt,match",
    [
        (lambda d: (d / IDX["test"][0]).write_bytes(b"\x1f\x8b garbage"), "cannot read idx file"),
        (
            lambda d: (d / IDX["test"][0]).write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + b"\x00" * 12)),
            "not an unsigned-byte idx file",
        ),
        (
            lambda d: (d / IDX["test"][0]).write_bytes(gzip.decompress((d / IDX["test"][0]).read_bytes())[:-5]),
            "cannot read idx file",
        ),
        (lambda d: (d / IDX["test"][1]).write_bytes(_idx_bytes(np.zeros(3, np.uint8))), "disagree"),
        (lambda d: (d / IDX["test"][1]).write_bytes(_idx_bytes(np.full(5, 11, np.uint8))), "labels .* go up to 11"),
    ],
)
def test_malformed_fashion_mnist_is_a_one_line_error(tmp_path, corrupt, match):
    folder = _write_idx_folder(tmp_path / "fm", np.zeros((5, 28, 28), np.uint8), np.arange(5, dtype=np.uint8))
    corrupt(folder)
    with pytest.raises(DataError, match=match) as err:
        load_fashion_mnist(folder, "test")
    assert "\n" not in str(err.value)


def test_missing_fashion_mnist_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_fashion_mnist(tmp_path / "nowhere", "test")


# ----------------------------------------------------------------------------- CIFAR-10
def _cifar_batch(items) -> bytes:
    """The official python-pickle batch format: dict of bytes keys, (N, 3072) uint8 R|G|B planes."""
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8) for p, _ in items]
    data = np.stack([a.transpose(2, 0, 1).reshape(-1) for a in arrays])
    return pickle.dumps(
        {
            b"batch_label": b"testing batch",
            b"labels": [lbl for _, lbl in items],
            b"data": data,
            b"filenames": [p.name.encode() for p, _ in items],
        },
        protocol=2,
    )


@pytest.fixture
def cifar_dir(tmp_path, cifar_pngs):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(_cifar_batch(cifar_pngs[:12]))
    (folder / "test_batch").write_bytes(_cifar_batch(cifar_pngs[12:]))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": []}))
    return folder


def _pixels(items):
    return torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p, _ in items])


def test_cifar10_folder_and_archive(cifar_dir, cifar_pngs, tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(cifar_dir, arcname="cifar-10-batches-py")
    for root in (cifar_dir, cifar_dir.parent, archive):
        train, test = load_cifar10(root, "train"), load_cifar10(root, "test")
        assert train.images.shape == (12, 3, 32, 32) and len(test) == 8
        assert torch.equal(train.images, _pixels(cifar_pngs[:12]))
        assert torch.equal(test.images, _pixels(cifar_pngs[12:]))
        assert train.labels.tolist() == [lbl for _, lbl in cifar_pngs[:12]]
        assert test.classes[3] == "cat"
    # cifar10_00_3.png is the first test image of CIFAR-10, a cat.
    assert cifar_pngs[0][0].name == "cifar10_00_3.png" and train.labels[0] == 3


def test_cifar10_errors(cifar_dir, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no data_batch_1"):
        load_cifar10(tmp_path / "empty", "train")
    (cifar_dir / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"expected uint8 \(N, 3072\)"):
        load_cifar10(cifar_dir, "test")
    (tmp_path / "bad.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(DataError, match="cannot read CIFAR-10 archive"):
        load_cifar10(tmp_path / "bad.tar.gz")


class _Hostile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_cifar10_pickles_cannot_run_code(cifar_dir, tmp_path):
    marker = tmp_path / "pwned"
    (cifar_dir / "data_batch_1").write_bytes(pickle.dumps({b"data": _Hostile(marker), b"labels": []}))
    with pytest.raises(DataError, match=r"refusing to load (io|builtins)\.open"):
        load_cifar10(cifar_dir, "train")
    assert not marker.exists()


# ----------------------------------------------------------------------------- ImageFolder
@pytest.fixture
def image_tree(tmp_path, cifar_pngs):
    """train/ and val/ with one folder per CIFAR-10 class that has two or more of the real
    images: the first of each goes to val/, the others to train/ (8 classes, 12 + 8 images)."""
    root = tmp_path / "tree"
    by_class: dict[int, list] = {}
    for png, label in cifar_pngs:
        by_class.setdefault(label, []).append(png)
    for label, pngs in by_class.items():
        if len(pngs) < 2:
            continue
        for i, png in enumerate(pngs):
            folder = root / ("val" if i == 0 else "train") / CIFAR10_CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.open(png).save(folder / png.name)
    return root


def test_imagefolder_tree_of_real_images(image_tree, cifar_pngs):
    train = load_imagefolder(image_tree, "train", image_size=24, seed=3)
    val = load_imagefolder(image_tree, "val", image_size=24)
    assert train.classes == val.classes and len(train.classes) == 8 and (len(train), len(val)) == (12, 8)
    for data in (train, val):
        folder = getattr(data, "folder", data)
        for i in range(len(data)):
            x, y = data[i]
            path = Path(folder.samples[i][0])
            assert x.shape == (3, 24, 24) and data.classes[y] == path.parent.name
            assert CIFAR10_CLASSES.index(path.parent.name) == int(path.stem.split("_")[2])
            # ImageNet normalisation of [0, 1] pixels
            mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
            std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
            pix = x * std + mean
            assert pix.min() >= -1e-5 and pix.max() <= 1 + 1e-5
    # Augmentation is a function of (seed, epoch, index): repeatable, and new each epoch.
    a = train[4][0]
    assert torch.equal(train[4][0], a)
    train.set_epoch(1)
    assert not torch.equal(train[4][0], a)
    train.set_epoch(0)
    assert torch.equal(train[4][0], a)
    assert not torch.equal(load_imagefolder(image_tree, "train", image_size=24, seed=4)[4][0], a)


def test_imagefolder_errors(image_tree, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_imagefolder(tmp_path / "none")
    (tmp_path / "only").joinpath("train", "a").mkdir(parents=True)
    with pytest.raises(DataError, match="has no val/ folder"):
        load_imagefolder(tmp_path / "only")
    (image_tree / "val" / "zebra").mkdir()
    with pytest.raises(DataError, match="different class folders"):
        load_imagefolder(image_tree, "train")
    (image_tree / "val" / "zebra").rmdir()
    (image_tree / "train" / "unicorn").mkdir()
    with pytest.raises(DataError, match="(?i)found no valid file|Couldn't find any class folder|unicorn"):
        load_imagefolder(image_tree, "train")


def test_imagefolder_non_square_size(image_tree):
    # The training crop takes (H, W); the evaluation resize has one side, so it says so in one line.
    train = load_imagefolder(image_tree, "train", image_size=(16, 24), seed=3)
    assert train[0][0].shape == (3, 16, 24)
    with pytest.raises(DataError, match=r"evaluation needs a square image size, not \(16, 24\)"):
        load_imagefolder(image_tree, "val", image_size=(16, 24))
    # A square (H, W), what trainer and evaluate hold from a model's input size, is the int itself
    # (Resize with one side keeps the aspect ratio; with two it would squash).
    for split in ("train", "val"):
        a = load_imagefolder(image_tree, split, image_size=(20, 20), seed=3)
        b = load_imagefolder(image_tree, split, image_size=20, seed=3)
        assert torch.equal(a[1][0], b[1][0]) and a[1][0].shape == (3, 20, 20)


# ----------------------------------------------------------------------------- augmentation, CLI
def test_augment_batch_is_pad_crop_flip(fmnist_dir):
    x = load_fashion_mnist(fmnist_dir, "test").images[:16]
    gen = torch.Generator().manual_seed(5)
    out = augment_batch(x, gen)
    gen = torch.Generator().manual_seed(5)  # redraw the same offsets and flips
    oy, ox = torch.randint(0, 9, (16,), generator=gen), torch.randint(0, 9, (16,), generator=gen)
    flip = torch.rand(16, generator=gen) < 0.5
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(16):
        crop = padded[i, :, oy[i] : oy[i] + 32, ox[i] : ox[i] + 32]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop)
    assert 0 < flip.sum() < 16


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--dataset", "cifar10"], "cifar10 needs --data-dir"),
        (
            ["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"],
            "CIFAR-10 path /nonexistent/cifar does not exist",
        ),
        (["--dataset", "imagefolder", "--data-dir", "/nonexistent/in100"], "ImageFolder root /nonexistent/in100"),
        (["--data-dir", "/nonexistent/fm"], "Fashion-MNIST folder /nonexistent/fm does not exist"),
    ],
)
def test_cli_bad_data_dir_is_one_line(tmp_path, args, expected):
    res = CliRunner().invoke(main, ["train", "--model", "resnet18", "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: ") and expected in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()

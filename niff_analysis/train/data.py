"""Datasets: Fashion-MNIST (idx .gz), CIFAR-10 (python pickle batches), ImageFolder trees.

Fashion-MNIST and CIFAR-10 are held in memory as uint8 tensors and augmented per batch with an
explicit ``torch.Generator`` (fast on CPU, deterministic for a seed, and identical whether the
global batch runs in one process or is split across DDP ranks).
"""

from __future__ import annotations

import gzip
import pickle
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError

FASHION_MNIST_DEFAULT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")
# Per-channel statistics of the training sets (computed from the data, SPEC §3 normalisation).
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


@dataclass
class TensorDataset:
    """Images (N, C, H, W) uint8 and labels (N,) int64 in memory, plus normalisation stats."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: Optional[int]) -> "TensorDataset":
        if n is None or n >= len(self):
            return self
        return TensorDataset(self.images[:n], self.labels[:n], self.mean, self.std, self.classes)


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte idx file")
        dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if data.size != int(np.prod(dims)):
            raise ValueError(f"expected {int(np.prod(dims))} values, found {data.size}")
        return data.reshape(dims)
    except (OSError, EOFError, ValueError, struct.error) as exc:
        raise DataError(f"cannot read idx file {path}: {exc}") from None


def load_fashion_mnist(root=FASHION_MNIST_DEFAULT, split: str = "train", pad_to: int = 32) -> TensorDataset:
    """Fashion-MNIST from a folder holding the four official idx ``.gz`` files, zero-padded
    from 28×28 to ``pad_to``×``pad_to``."""
    root = Path(root)
    img_name, lbl_name = FASHION_MNIST_FILES[split]
    missing = [n for n in (img_name, lbl_name) if not (root / n).is_file()]
    if missing:
        raise DataError(f"Fashion-MNIST folder {root} lacks {', '.join(missing)} "
                        f"(expected the four idx .gz files; apt-get install dataset-fashion-mnist)")
    images = _read_idx(root / img_name)
    labels = _read_idx(root / lbl_name)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"Fashion-MNIST {split} files in {root} disagree: images {images.shape}, "
                        f"labels {labels.shape}")
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    p = pad_to - x.shape[-1]
    if p > 0:
        x = F.pad(x, (p // 2, p - p // 2, p // 2, p - p // 2))
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)), *FASHION_MNIST_STATS,
                         FASHION_MNIST_CLASSES)


def _cifar_members(root: Path) -> dict[str, bytes]:
    """Raw batch files from a ``cifar-10-batches-py`` folder or the official ``.tar.gz``."""
    if root.is_file() and root.name.endswith((".tar.gz", ".tgz")):
        try:
            with tarfile.open(root) as tar:
                return {Path(m.name).name: tar.extractfile(m).read()
                        for m in tar.getmembers() if m.isfile()}
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"cannot read CIFAR-10 archive {root}: {exc}") from None
    if root.is_dir() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise DataError(f"CIFAR-10 path {root} is neither a cifar-10-batches-py folder nor a .tar.gz")
    return {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}


def load_cifar10(root, split: str = "train") -> TensorDataset:
    """CIFAR-10 from a ``cifar-10-batches-py`` folder (or its ``.tar.gz``).

    Reads whichever of ``data_batch_1..5`` (train) or ``test_batch`` (test) are present, so
    subsets and small fixtures in the official pickle format work too.
    """
    root = Path(root)
    members = _cifar_members(root)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    found = [n for n in names if n in members]
    if not found:
        raise DataError(f"CIFAR-10 at {root} has no {' / '.join(names)} "
                        "(expected the official cifar-10-batches-py pickle files)")
    xs, ys = [], []
    for n in found:
        try:
            d = pickle.loads(members[n], encoding="bytes")  # noqa: S301 - the official format
            data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(d[b"labels"], dtype=np.int64)
        except Exception as exc:  # any malformed pickle content
            raise DataError(f"CIFAR-10 file {n} in {root} is malformed: {exc}") from None
        if len(data) != len(labels):
            raise DataError(f"CIFAR-10 file {n} in {root} has {len(data)} images, {len(labels)} labels")
        xs.append(data)
        ys.append(labels)
    return TensorDataset(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)),
                         *CIFAR10_STATS, CIFAR10_CLASSES)


def augment_batch(x: torch.Tensor, gen: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Zero-pad ``pad`` + random crop back to size, and random horizontal flip (SPEC §3)."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (oy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * pad)
    out = xp.gather(2, rows)
    cols = (ox[:, None] + torch.arange(w)[None]).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    out = out.gather(3, cols)
    if flip:
        f = torch.rand(n, generator=gen) < 0.5
        out[f] = out[f].flip(-1)
    return out


def normalise(x_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    x = x_uint8.float().div_(255.0)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s


def load_imagefolder(root, split: str = "train", image_size: int = 224):
    """A torchvision ImageFolder for ``root/train`` or ``root/val`` with the standard ImageNet
    transforms (random-resized crop + flip for training, resize + centre crop for eval)."""
    import torchvision.datasets as tvd
    import torchvision.transforms as T

    folder = Path(root) / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise DataError(f"ImageFolder root {root} has no {folder.name}/ folder "
                        "(expected train/ and val/ with one sub-folder per class)")
    norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    if split == "train":
        tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    else:
        tf = T.Compose([T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(), norm])
    try:
        return tvd.ImageFolder(str(folder), transform=tf)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"ImageFolder {folder}: {exc}") from None


DATASETS = ("fashion-mnist", "cifar10", "imagefolder")


def load_dataset(name: str, root, split: str):
    """Dispatch on dataset name; returns a :class:`TensorDataset` or an ImageFolder."""
    if name == "fashion-mnist":
        return load_fashion_mnist(root or FASHION_MNIST_DEFAULT, split)
    if name == "cifar10":
        if root is None:
            raise DataError("cifar10 needs --data-dir pointing at cifar-10-batches-py or its .tar.gz")
        return load_cifar10(root, split)
    if name == "imagefolder":
        if root is None:
            raise DataError("imagefolder needs --data-dir with train/ and val/ class folders")
        return load_imagefolder(root, split)
    raise DataError(f"unknown dataset {name!r}; choose from {list(DATASETS)}")

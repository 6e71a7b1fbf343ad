"""Datasets: Fashion-MNIST (idx .gz), CIFAR-10 (python pickle batches), ImageFolder trees.

Fashion-MNIST and CIFAR-10 are held in memory as uint8 tensors and augmented per batch with an
explicit ``torch.Generator`` (fast on CPU, deterministic for a seed, and identical whether the
global batch runs in one process or is split across DDP ranks). ImageFolder trees are decoded
by DataLoader workers; their random transforms are seeded per sample from (seed, epoch,
index), which gives the same guarantees. CIFAR-10 pickles are unpickled with an allow-list
(numpy arrays and plain data only). Every problem with a data folder is a one-line
:class:`~niff_analysis.errors.DataError` naming what was expected.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._types import CIFAR_INPUT_SIZE, DEFAULT_INPUT_SIZE, Size
from .errors import DataError, SelectionError

FASHION_MNIST_DEFAULT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
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

    def subset(self, n: int | None) -> TensorDataset:
        if n is None or n >= len(self):
            return self
        return TensorDataset(self.images[:n], self.labels[:n], self.mean, self.std, self.classes)


def _read_idx(path: Path) -> np.ndarray:
    """One gzip-compressed idx file of unsigned bytes (the MNIST/Fashion-MNIST format)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
        if len(raw) < 4:
            raise ValueError("file is shorter than an idx header")
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
            raise ValueError("not an unsigned-byte idx file")
        dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if data.size != int(np.prod(dims)):
            raise ValueError(f"expected {int(np.prod(dims))} values, found {data.size}")
        return data.reshape(dims)
    except (OSError, EOFError, ValueError, struct.error) as exc:
        raise DataError(f"cannot read idx file {path}: {' '.join(str(exc).split())}") from None


def load_fashion_mnist(
    root=FASHION_MNIST_DEFAULT, split: str = "train", pad_to: int = 32, content_scale: float = 1.0
) -> TensorDataset:
    """Fashion-MNIST from a folder holding the official idx ``.gz`` files.

    Args:
        root: folder with ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
            ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``.
        split: ``"train"`` or ``"test"``.
        pad_to: images are zero-padded (centred) to ``pad_to``×``pad_to``.
        content_scale: the 28×28 garments are first shrunk by this (:func:`scale_content`), so
            at 0.5 they are 14×14 on the same ``pad_to``×``pad_to`` canvas.

    Raises:
        DataError: missing folder or files, unreadable files, images and labels that disagree.
    """
    root = Path(root)
    if split not in FASHION_MNIST_FILES:
        raise DataError(f"unknown split {split!r}; choose train or test")
    if not root.is_dir():
        raise DataError(
            f"Fashion-MNIST folder {root} does not exist (expected a folder with the four "
            "idx .gz files; apt-get install dataset-fashion-mnist)"
        )
    img_name, lbl_name = FASHION_MNIST_FILES[split]
    missing = [n for n in (img_name, lbl_name) if not (root / n).is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST folder {root} lacks {', '.join(missing)} "
            f"(expected the four idx .gz files; apt-get install dataset-fashion-mnist)"
        )
    images = _read_idx(root / img_name)
    labels = _read_idx(root / lbl_name)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"Fashion-MNIST {split} files in {root} disagree: images {images.shape}, "
            f"labels {labels.shape} (expected (N, H, W) images and N labels)"
        )
    if len(labels) and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(
            f"Fashion-MNIST labels in {root / lbl_name} go up to {labels.max()} "
            f"(expected 0..{len(FASHION_MNIST_CLASSES) - 1})"
        )
    x = scale_content(torch.from_numpy(images.copy()).unsqueeze(1), content_scale)
    ph, pw = pad_to - x.shape[-2], pad_to - x.shape[-1]
    if ph > 0 or pw > 0:
        ph, pw = max(ph, 0), max(pw, 0)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)), *FASHION_MNIST_STATS, FASHION_MNIST_CLASSES)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR-10 batches: numpy arrays and plain Python data only.

    The official batches are pickles; a hostile file could otherwise run code on load.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not a CIFAR-10 batch)")


def _cifar_members(root: Path) -> dict[str, bytes]:
    """Raw batch files from a ``cifar-10-batches-py`` folder or the official ``.tar.gz``."""
    wanted = {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch"}
    if root.is_file():
        try:
            with tarfile.open(root, "r:*") as tar:
                # extractfile returns None only for members that are not regular files (isfile filters them)
                return {
                    Path(m.name).name: tar.extractfile(m).read()  # type: ignore[union-attr]
                    for m in tar.getmembers()
                    if m.isfile() and Path(m.name).name in wanted
                }
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(
                f"cannot read CIFAR-10 archive {root}: {' '.join(str(exc).split())} (expected the official "
                "cifar-10-python.tar.gz or a cifar-10-batches-py folder)"
            ) from None
    if root.is_dir() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise DataError(
            f"CIFAR-10 path {root} does not exist (expected a cifar-10-batches-py folder "
            "or the cifar-10-python.tar.gz archive)"
        )
    return {p.name: p.read_bytes() for p in root.iterdir() if p.is_file() and p.name in wanted}


def _parse_cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
        if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
            raise ValueError("no b'data' / b'labels' entries")
        data = np.asarray(d[b"data"])
        labels = np.asarray(d[b"labels"], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    except Exception as exc:  # any malformed or hostile pickle content
        raise DataError(f"CIFAR-10 file {where} is malformed: {' '.join(str(exc).split())}") from None
    if len(data) != len(labels):
        raise DataError(f"CIFAR-10 file {where} has {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
        raise DataError(f"CIFAR-10 file {where} has labels outside 0..{len(CIFAR10_CLASSES) - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(root, split: str = "train", content_scale: float = 1.0) -> TensorDataset:
    """CIFAR-10 from a ``cifar-10-batches-py`` folder (or its ``.tar.gz``).

    Reads whichever of ``data_batch_1..5`` (train) or ``test_batch`` (test) are present, so
    subsets and small fixtures in the official pickle format work too. Only numpy arrays and
    plain data are unpickled.

    Raises:
        DataError: missing path, no batch of the split, malformed batches.
    """
    root = Path(root)
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; choose train or test")
    members = _cifar_members(root)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    found = [n for n in names if n in members]
    if not found:
        raise DataError(
            f"CIFAR-10 at {root} has no {' / '.join(names)} (expected the official cifar-10-batches-py pickle files)"
        )
    parts = [_parse_cifar_batch(members[n], f"{n} in {root}") for n in found]
    return TensorDataset(
        scale_content(torch.from_numpy(np.concatenate([p[0] for p in parts])), content_scale),
        torch.from_numpy(np.concatenate([p[1] for p in parts])),
        *CIFAR10_STATS,
        CIFAR10_CLASSES,
    )


def scale_content(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Shrink each image about its centre by ``scale`` on an unchanged, zero-filled canvas.

    Each H×W image is resized (bilinear, antialiased) to round(H·scale)×round(W·scale) and placed
    in the middle of a zero H×W canvas. Fashion-MNIST applies it to the 28×28 garments before
    they are padded to 32×32 (:func:`load_fashion_mnist`), so at ``scale`` 0.5 a garment is 14×14
    on the same 32×32 input; CIFAR-10 to its 32×32 images. Everything a model is built from
    (input size, feature maps, NIFF grids, initial kernels) stays as it was.

    Args:
        images: (N, C, H, W) uint8.
        scale: in (0, 1]; 1 returns ``images`` itself.

    Returns:
        (N, C, H, W) uint8.
    """
    if scale == 1:
        return images
    if not 0 < scale < 1:
        raise ValueError(f"content scale must be in (0, 1], got {scale}")
    n, c, h, w = images.shape
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    out = torch.zeros_like(images)
    for i in range(0, n, 4096):  # in chunks: the float copy of 60,000 images would take 245 MB
        small = F.interpolate(
            images[i : i + 4096].float(), size=(sh, sw), mode="bilinear", align_corners=False, antialias=True
        )
        top, left = (h - sh) // 2, (w - sw) // 2
        out[i : i + 4096, :, top : top + sh, left : left + sw] = small.round().clamp_(0, 255).to(torch.uint8)
    return out


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


class SeededImageFolder(torch.utils.data.Dataset):
    """An ImageFolder whose random transform of sample ``i`` in epoch ``e`` is seeded by
    (seed, e, i), so augmentation does not depend on worker count, rank count or resuming.

    Args:
        folder: a ``torchvision.datasets.ImageFolder`` without transform.
        transform: the (random) transform to apply.
        seed: run seed.
    """

    def __init__(self, folder, transform, seed: int = 0):
        self.folder, self.transform, self.seed, self.epoch = folder, transform, int(seed), 0
        self.classes = folder.classes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int):
        img, label = self.folder[i]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(i))
            return self.transform(img), label


def _read_image(path: str):
    """ImageFolder's loader, with an unreadable file reported as a :class:`DataError` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except UnidentifiedImageError:
        raise DataError(f"cannot read image {path}: not an image format PIL can decode") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or damaged files, I/O errors
        raise DataError(f"cannot read image {path}: {' '.join(str(exc).split())[:200]}") from None


def _image_folder(folder: Path):
    import torchvision.datasets as tvd

    try:
        return tvd.ImageFolder(str(folder), loader=_read_image)
    except (FileNotFoundError, RuntimeError, OSError) as exc:
        raise DataError(
            f"ImageFolder {folder}: {' '.join(str(exc).split())} (expected one sub-folder per class holding images)"
        ) from None


def load_imagefolder(root, split: str = "train", image_size: int | Size = DEFAULT_INPUT_SIZE, seed: int = 0):
    """``root/train`` or ``root/val`` with the standard ImageNet transforms.

    Training: random-resized crop + horizontal flip, seeded per sample (see
    :class:`SeededImageFolder`); evaluation: resize to ``image_size·256/224`` + centre crop.
    Both splits must have the same class folders (labels are folder indices). ``image_size``
    (H, W) crops a training split to that size; the evaluation split needs a square (an int, or
    an (H, W) with H = W).

    Raises:
        DataError: missing ``train/`` or ``val/``, empty class folders, differing classes, an
            (H, W) ``image_size`` for the evaluation split.
    """
    import torchvision.transforms as T

    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"ImageFolder root {root} does not exist (expected train/ and val/ with one sub-folder per class)"
        )
    missing = [n for n in ("train", "val") if not (root / n).is_dir()]
    if missing:
        raise DataError(
            f"ImageFolder root {root} has no {' and '.join(m + '/' for m in missing)} "
            "folder (expected train/ and val/ with one sub-folder per class)"
        )
    folder = _image_folder(root / ("train" if split == "train" else "val"))
    other = sorted(p.name for p in (root / ("val" if split == "train" else "train")).iterdir() if p.is_dir())
    if other != list(folder.classes):
        raise DataError(
            f"ImageFolder {root}: train/ and val/ have different class folders ({len(folder.classes)} vs {len(other)})"
        )
    norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    if isinstance(image_size, tuple) and image_size[0] == image_size[1]:
        image_size = image_size[0]  # one rule for callers that hold a model's (H, W)
    if split == "train":
        tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        return SeededImageFolder(folder, tf, seed)
    if isinstance(image_size, tuple):  # the resize below has one side: it is defined for squares only
        raise DataError(f"ImageFolder {root}: evaluation needs a square image size, not {image_size}")
    folder.transform = T.Compose([T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(), norm])
    return folder


DATASETS = ("fashion-mnist", "cifar10", "imagefolder")


def load_dataset(
    name: str,
    root,
    split: str,
    image_size: int | Size = DEFAULT_INPUT_SIZE,
    seed: int = 0,
    content_scale: float = 1.0,
):
    """Dispatch on dataset name; returns a :class:`TensorDataset` or an ImageFolder dataset.

    ``image_size`` and ``seed`` only concern ImageFolder trees, ``content_scale``
    (:func:`scale_content`) only the in-memory data sets.
    """
    if name == "fashion-mnist":
        return load_fashion_mnist(root or FASHION_MNIST_DEFAULT, split, content_scale=content_scale)
    if name == "cifar10":
        if root is None:
            raise DataError("cifar10 needs --data-dir pointing at cifar-10-batches-py or its .tar.gz")
        return load_cifar10(root, split, content_scale=content_scale)
    if content_scale != 1:
        raise DataError(f"content_scale applies to fashion-mnist and cifar10, not {name}")
    if name == "imagefolder":
        if root is None:
            raise DataError("imagefolder needs --data-dir with train/ and val/ class folders")
        return load_imagefolder(root, split, image_size=image_size, seed=seed)
    raise DataError(f"unknown dataset {name!r}; choose from {list(DATASETS)}")


def dataset_images(
    dataset: str, n: int, data_dir=None, image_size: int = CIFAR_INPUT_SIZE, content_scale: float = 1.0
) -> torch.Tensor:
    """The first ``n`` normalised test images of a dataset (as the trainer feeds them, the
    content shown at ``content_scale`` times its size: :func:`scale_content`).

    Raises:
        DataError: the dataset is not available.
        SelectionError: it has fewer than ``n`` test images (never silently fewer).
    """
    data = load_dataset(dataset, data_dir, "test", image_size=image_size, content_scale=content_scale)
    if n > len(data):
        raise SelectionError(f"asked for {n} images, but the {dataset} test set has {len(data)}")
    if isinstance(data, TensorDataset):
        return normalise(data.images[:n], data.mean, data.std)
    return torch.stack([data[i][0] for i in range(min(n, len(data)))])

"""The data side of a training run: the data sets, their seeded batches, and evaluation.

Determinism: the data order and augmentation of epoch e come from a generator seeded with
(seed, e), drawn for the *global* batch (ImageFolder samples are augmented with a per-sample
seed), so a run is reproducible on CPU, a resumed run equals an uninterrupted one, and N DDP
ranks (each taking its slice of the global batch) see exactly what one process would.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .._types import input_hw
from ..data import SeededImageFolder, TensorDataset, augment_batch, load_dataset, normalise
from .config import TrainConfig
from .distributed import dist_info


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of epoch ``epoch``'s data order and augmentation."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def first_samples(data, n: int | None):
    """The first ``n`` samples of a dataset (all of it for ``None``)."""
    if n is None or n >= len(data):
        return data
    if isinstance(data, TensorDataset):
        return data.subset(n)
    data = copy.copy(data)  # shallow copies: the caller's dataset keeps all its samples
    folder = data
    if isinstance(data, SeededImageFolder):
        folder = data.folder = copy.copy(data.folder)
    folder.samples = folder.imgs = folder.samples[:n]
    folder.targets = folder.targets[:n]
    return data


def evaluate(
    model: nn.Module, data, device: torch.device, batch_size: int = 512, label_smoothing: float = 0.0, workers: int = 2
) -> tuple[float, float]:
    """(mean loss, accuracy in [0, 1]) of ``model`` on a dataset (no augmentation).

    Inside a process group every rank evaluates its share and the sums are all-reduced.
    """
    rank, world = dist_info()
    dtype = next(model.parameters()).dtype
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
    with torch.no_grad():
        for x, y in eval_batches(data, batch_size, rank, world, workers):
            x, y = x.to(device, dtype), y.to(device)
            out = model(x)
            out = out if out.dtype == torch.float64 else out.float()
            sums[0] += F.cross_entropy(out, y, label_smoothing=label_smoothing, reduction="sum").item()
            sums[1] += (out.argmax(1) == y).sum().item()
            sums[2] += len(y)
    if world > 1:
        dist.all_reduce(sums)
    n = max(sums[2].item(), 1)
    return sums[0].item() / n, sums[1].item() / n


def eval_batches(data, batch_size, rank=0, world=1, workers=2):
    """(x, y) batches of this rank's share of ``data``, in order, normalised, not augmented."""
    if isinstance(data, TensorDataset):
        images, labels = data.images[rank::world], data.labels[rank::world]
        for i in range(0, len(labels), batch_size):
            yield normalise(images[i : i + batch_size], data.mean, data.std), labels[i : i + batch_size]
    else:
        part = torch.utils.data.Subset(data, range(rank, len(data), world))
        yield from torch.utils.data.DataLoader(part, batch_size=batch_size, num_workers=workers)


def sample(data, n: int, seed: int = 0):
    """``n`` samples of a dataset drawn without replacement by a generator seeded with ``seed``
    (all of them, in a seeded order, when it has fewer); the caller's dataset is not changed."""
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    if isinstance(data, TensorDataset):
        return TensorDataset(data.images[idx], data.labels[idx], data.mean, data.std, data.classes)
    return torch.utils.data.Subset(data, idx.tolist())


def recalibrate_batchnorm(
    model: nn.Module, data, n: int, device: torch.device, batch_size: int = 512, seed: int = 0, workers: int = 2
) -> int:
    """Replace every BatchNorm's running statistics, in place, by their plain average over
    ``n`` samples of ``data`` (:func:`sample`; normalised, not augmented), the trained weights
    unchanged ("precise BN"; :func:`torch.optim.swa_utils.update_bn` does the pass).

    During training the running statistics are an exponential average over the last ~10 steps'
    batches (momentum 0.1) of a network that was still changing; when its weights move fast
    (e.g. strong weight decay on filters whose scale BatchNorm removes) they can lag what the
    final weights produce, and evaluation in eval mode then measures the lag, not the weights.

    Returns:
        The number of samples used (0 when the model has no BatchNorm: nothing is changed).
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return 0
    from torch.optim.swa_utils import update_bn

    part = sample(data, n, seed)
    dtype = next(model.parameters()).dtype
    batches = (x.to(device, dtype) for x, _ in eval_batches(part, batch_size, workers=workers))
    update_bn(batches, model)
    return len(part)


def train_batches(data, cfg: TrainConfig, epoch: int, rank: int, world: int, start: int = 0):
    """Yield (step, x, y): this rank's slice of each global batch of ``epoch`` from step
    ``start`` on (drop-last). The order is a permutation drawn from the epoch's generator."""
    gen = epoch_generator(cfg.seed, epoch)
    n = len(data)
    perm = torch.randperm(n, generator=gen)
    starts = range(0, n - cfg.batch_size + 1, cfg.batch_size)
    if isinstance(data, TensorDataset):
        for i, s in enumerate(starts):
            idx = perm[s : s + cfg.batch_size]
            x = data.images[idx]
            if cfg.augment:
                x = augment_batch(x, gen)  # drawn even for skipped steps: keeps `gen` in step
            if i < start:
                continue
            x = normalise(x, data.mean, data.std)
            yield i, x[rank::world], data.labels[idx][rank::world]
    else:
        data.set_epoch(epoch)
        batches = [perm[s : s + cfg.batch_size][rank::world].tolist() for s in starts][start:]
        loader = torch.utils.data.DataLoader(data, batch_sampler=batches, num_workers=cfg.workers)
        for i, (x, y) in enumerate(loader, start):
            yield i, x, y


def load_data(cfg: TrainConfig) -> tuple:
    """(train set, test set, model kwargs): the data sets (first ``train_subset`` /
    ``test_subset`` samples) and ``cfg.model_kwargs`` with what the data decides filled in
    (classes, channels, stem, input size); ``cfg`` itself is not changed."""
    kw = cfg.model_kwargs
    h, w = input_hw(kw.get("input_size") or None, kw.get("stem"))
    train_data, test_data = (
        load_dataset(cfg.dataset, cfg.data_dir, s, image_size=(h, w), seed=cfg.seed, content_scale=cfg.content_scale)
        for s in ("train", "test")
    )
    train_data, test_data = first_samples(train_data, cfg.train_subset), first_samples(test_data, cfg.test_subset)
    kwargs = dict(kw)
    kwargs.setdefault("num_classes", len(train_data.classes))
    if isinstance(train_data, TensorDataset):
        kwargs.setdefault("in_chans", train_data.images.shape[1])
        kwargs.setdefault("stem", "cifar")
        kwargs.setdefault("input_size", list(train_data.images.shape[-2:]))
    else:
        kwargs.setdefault("in_chans", 3)
        kwargs.setdefault("input_size", [h, w])
    return train_data, test_data, kwargs

"""Training loop: one recipe object, one loop, single process or torchrun/DDP.

The CIFAR-10 recipe of SPEC §3 is the default for 32×32 data: SGD (momentum 0.9), cosine lr
from 0.02, weight decay 0.002, label smoothing 0.1, zero-pad-4 crop + horizontal flip,
per-channel normalisation. Other recipes are just other :class:`TrainConfig` values.

Determinism: the data order and augmentation of epoch e come from a generator seeded with
(seed, e), drawn for the *global* batch, so a run is reproducible on CPU, a resumed run
equals an uninterrupted one, and N DDP ranks (each taking its slice of the global batch) see
exactly what one process would.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..checkpoint import resolve_device, save_checkpoint
from ..errors import NiffError
from ..io import atomic_write
from ..models import create_model
from .data import TensorDataset, augment_batch, load_dataset, normalise

STATE_NAME = "train_state.pt"


@dataclass
class TrainConfig:
    """Everything that defines a training run (written to ``train_config.json``)."""

    model: str = "resnet18_niff"
    model_kwargs: dict = field(default_factory=dict)
    dataset: str = "fashion-mnist"
    data_dir: Optional[str] = None
    out: str = "runs/default"
    epochs: int = 150
    batch_size: int = 256
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 0.002
    label_smoothing: float = 0.1
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    amp: bool = True          # bf16/fp16 autocast on CUDA only; NIFF FFTs stay float32
    compile: bool = False
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    eval_batch_size: int = 512
    threads: Optional[int] = None
    progress: bool = True
    save_every_steps: int = 0  # also save resumable state every N steps (0: per epoch only)

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise NiffError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("train_subset", "test_subset"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise NiffError(f"{name} must be a positive integer, got {v}")
        if self.lr <= 0:
            raise NiffError(f"lr must be positive, got {self.lr}")


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _setup_distributed(device: torch.device) -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return _dist_info()


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * step / total))


def evaluate(model: nn.Module, data, device: torch.device, batch_size: int = 512,
             label_smoothing: float = 0.0) -> tuple[float, float]:
    """(mean loss, accuracy in [0, 1]) of ``model`` on a dataset (no augmentation)."""
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    with torch.no_grad():
        for x, y in _eval_batches(data, batch_size):
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss_sum += F.cross_entropy(out, y, label_smoothing=label_smoothing, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
    return loss_sum / max(total, 1), correct / max(total, 1)


def _eval_batches(data, batch_size):
    if isinstance(data, TensorDataset):
        for i in range(0, len(data), batch_size):
            yield normalise(data.images[i:i + batch_size], data.mean, data.std), data.labels[i:i + batch_size]
    else:
        yield from torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=2)


def _train_batches(data, cfg: TrainConfig, epoch: int, rank: int, world: int):
    """Yield this rank's slice of each global batch of epoch ``epoch`` (drop-last)."""
    gen = _epoch_generator(cfg.seed, epoch)
    n = len(data)
    if isinstance(data, TensorDataset):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n - cfg.batch_size + 1, cfg.batch_size):
            idx = perm[start:start + cfg.batch_size]
            x = data.images[idx]
            if cfg.augment:
                x = augment_batch(x, gen)
            x = normalise(x, data.mean, data.std)
            yield x[rank::world], data.labels[idx][rank::world]
    else:
        sampler = torch.utils.data.distributed.DistributedSampler(
            data, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
        sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size // world,
                                             sampler=sampler, num_workers=4, drop_last=True)
        yield from loader


def _steps_per_epoch(data, cfg: TrainConfig) -> int:
    return len(data) // cfg.batch_size


def _write_metrics(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue())


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train per ``cfg``; returns the final metrics row. Writes into ``cfg.out``:
    ``train_config.json``, ``metrics.csv``, ``train_state.pt`` (resumable state) and the final
    checkpoint (``config.json`` + ``model.safetensors``)."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    rank, world = _setup_distributed(device)
    if cfg.batch_size % world:
        raise NiffError(f"batch size {cfg.batch_size} is not divisible by {world} processes")
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    train_data = load_dataset(cfg.dataset, cfg.data_dir, "train")
    test_data = load_dataset(cfg.dataset, cfg.data_dir, "test")
    if isinstance(train_data, TensorDataset):
        train_data, test_data = train_data.subset(cfg.train_subset), test_data.subset(cfg.test_subset)
    if _steps_per_epoch(train_data, cfg) < 1:
        raise NiffError(f"training set has {len(train_data)} images, fewer than one batch of {cfg.batch_size}")
    kwargs = dict(cfg.model_kwargs)
    if isinstance(train_data, TensorDataset):
        kwargs.setdefault("in_chans", train_data.images.shape[1])
        kwargs.setdefault("num_classes", len(train_data.classes))
        kwargs.setdefault("stem", "cifar")
        kwargs.setdefault("input_size", list(train_data.images.shape[-2:]))
    else:
        kwargs.setdefault("num_classes", len(train_data.classes))
    cfg.model_kwargs = kwargs
    model = create_model(cfg.model, **kwargs).to(device)
    if world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type == "cuda" else model
    core = model
    decay = [p for n, p in core.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in core.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=cfg.lr, momentum=cfg.momentum)
    steps = _steps_per_epoch(train_data, cfg)
    total_steps = steps * cfg.epochs
    start_epoch, start_step, rows = 0, 0, []
    state_path = out / STATE_NAME
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        core.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, start_step, rows = state["epoch"], state["step"], state["rows"]
        torch.set_rng_state(state["rng"])
    elif resume:
        raise NiffError(f"--resume: no {STATE_NAME} in {out}")
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    step_model = torch.compile(model) if cfg.compile else model
    use_amp = cfg.amp and device.type == "cuda"
    is_main = rank == 0
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "train_config.json", json.dumps(
            dict(asdict(cfg), world_size=world, versions=dict(niff_analysis=__version__, torch=torch.__version__)),
            indent=2) + "\n")

    def save_state(epoch: int, step: int) -> None:
        if is_main:
            st = dict(model=core.state_dict(), optimizer=opt.state_dict(), epoch=epoch, step=step,
                      rows=rows, rng=torch.get_rng_state())
            atomic_write(state_path, lambda p: torch.save(st, p))

    from tqdm.auto import tqdm

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.time()
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = total = 0
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", file=sys.stderr,
                   disable=not (cfg.progress and is_main), leave=False)
        for i, (x, y) in enumerate(_train_batches(train_data, cfg, epoch, rank, world)):
            gstep = epoch * steps + i
            if epoch == start_epoch and i < start_step:
                continue  # fast-forward to the saved step (same data: generator is per epoch)
            for g in opt.param_groups:
                g["lr"] = _lr_at(cfg, gstep, total_steps)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                out_logits = step_model(x)
                # Each rank averages over its slice; DDP then averages ranks → global mean.
                loss = F.cross_entropy(out_logits.float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach().double().cpu() * len(y)
            correct += (out_logits.argmax(1) == y).sum().item()
            total += len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if cfg.save_every_steps and (i + 1) % cfg.save_every_steps == 0 and i + 1 < steps:
                save_state(epoch, i + 1)
        bar.close()
        start_step = 0
        stats = torch.tensor([loss_sum.item(), correct, total], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(stats)
        test_loss, test_acc = evaluate(core, test_data, device, cfg.eval_batch_size)
        rows.append(dict(epoch=epoch + 1, lr=round(_lr_at(cfg, (epoch + 1) * steps, total_steps), 8),
                         train_loss=stats[0].item() / max(stats[2].item(), 1),
                         train_acc=stats[1].item() / max(stats[2].item(), 1),
                         test_loss=test_loss, test_acc=test_acc, seconds=round(time.time() - t0, 2)))
        if is_main:
            _write_metrics(out / "metrics.csv", rows)
            print(f"epoch {epoch + 1}: train_loss {rows[-1]['train_loss']:.4f} "
                  f"train_acc {rows[-1]['train_acc']:.4f} test_acc {test_acc:.4f}", file=sys.stderr)
        save_state(epoch + 1, 0)
    final = rows[-1] if rows else {}
    if is_main:
        save_checkpoint(core, out, dataset=cfg.dataset, recipe=dict(
            epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
            weight_decay=cfg.weight_decay, label_smoothing=cfg.label_smoothing, augment=cfg.augment,
            schedule="cosine", optimizer="sgd"), epochs=cfg.epochs, seed=cfg.seed,
            test_acc=final.get("test_acc"), test_loss=final.get("test_loss"), world_size=world)
    if world > 1:
        dist.barrier()
    return final

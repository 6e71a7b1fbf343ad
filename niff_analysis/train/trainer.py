"""Training loop: one recipe object, one loop, single process or torchrun/DDP.

The CIFAR-10 recipe of SPEC §3 is the default for 32×32 data: SGD (momentum 0.9), cosine lr
from 0.02, weight decay 0.002, label smoothing 0.1, zero-pad-4 crop + horizontal flip,
per-channel normalisation. Other recipes are just other :class:`TrainConfig` values.

Determinism: the data order and augmentation of epoch e come from a generator seeded with
(seed, e), drawn for the *global* batch (ImageFolder samples are augmented with a per-sample
seed), so a run is reproducible on CPU, a resumed run equals an uninterrupted one, and N DDP
ranks (each taking its slice of the global batch) see exactly what one process would. Under
DDP every BatchNorm normalises over the global batch (``SyncBatchNorm`` on GPUs,
:class:`~niff_analysis.train.distributed.GlobalBatchNorm` on CPU), so N processes train the
same model as one process up to float rounding.

Resumable state (``train_state.pt``, read with ``weights_only=True``) holds the model,
optimizer (momentum buffers), epoch and step within the epoch (the cosine lr is a function of
the global step), the metrics so far, the partial sums of the interrupted epoch, the RNG
states and the recipe it was made with (a resume with another recipe is refused).
"""

from __future__ import annotations

import copy
import csv
import ctypes
import io
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..analysis.kernels import extract_kernels
from ..analysis.stats import FILE_NAME as STATS_NAME
from ..analysis.stats import kernel_stats, read_kernel_stats, stats_csv
from ..checkpoint import CONFIG_NAME, TRAIN_STATE_NAME, initial_model, resolve_device, save_checkpoint
from ..errors import NiffError
from ..io import atomic_write
from ..layers.niff import _NIFFBase
from ..models import niff_layers
from .data import SeededImageFolder, TensorDataset, augment_batch, load_dataset, normalise
from .distributed import convert_batchnorm, dist_info, gather_objects, setup_distributed, state_fingerprint

STATE_NAME = TRAIN_STATE_NAME  # checkpoint.load_checkpoint reads it as a model too
STATE_FORMAT = 2
# Settings that change the trained weights; a resume must use the same values.
RECIPE_KEYS = ("model", "model_kwargs", "dataset", "epochs", "batch_size", "lr", "momentum",
               "weight_decay", "label_smoothing", "augment", "seed", "train_subset", "dtype",
               "mlp_weight_decay", "mlp_lr_scale")
# What a state saved before a key existed was made with (the key's default behaviour).
RECIPE_DEFAULTS = {"mlp_weight_decay": None, "mlp_lr_scale": 1.0}
INIT_DIR = "init"  # checkpoint.load_initial looks for this folder
DTYPES = {"float32": torch.float32, "float64": torch.float64}


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
    mlp_weight_decay: Optional[float] = None  # weight decay of the frequency-MLP weights (None: weight_decay)
    mlp_lr_scale: float = 1.0  # the frequency MLPs' lr is lr × this (weights and biases)
    label_smoothing: float = 0.1
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    amp: bool = True          # bf16 (fp16 + GradScaler where bf16 is missing) autocast on CUDA only
    compile: bool = False
    train_subset: Optional[int] = None
    test_subset: Optional[int] = None
    eval_batch_size: int = 512
    threads: Optional[int] = None
    progress: bool = True
    save_every_steps: int = 0  # also save resumable state every N steps (0: per epoch only)
    sync_bn: bool = True       # under DDP, BatchNorm statistics over the global batch
    workers: int = 4           # DataLoader workers (ImageFolder only)
    dtype: str = "float32"     # "float64": CPU reference runs (exact DDP/resume comparisons)
    kernel_stats: bool = True  # record kernel_stats.csv at init, every epoch (and every N steps)
    kernel_stats_every_steps: int = 0
    keep_epoch_checkpoints: bool = False  # also keep OUT/epoch_NNN/ after every epoch
    overwrite: bool = False    # train afresh into an out folder that holds another run

    def validate(self) -> None:
        """Raise :class:`NiffError` on values no run can use."""
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise NiffError(f"out {self.out} exists and is not a directory")
        if int(self.epochs) < 0:
            raise NiffError(f"epochs must be zero or positive, got {self.epochs}")
        for name in ("batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise NiffError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("train_subset", "test_subset", "threads"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise NiffError(f"{name} must be a positive integer, got {v}")
        for name in ("save_every_steps", "workers", "kernel_stats_every_steps"):
            if int(getattr(self, name)) < 0:
                raise NiffError(f"{name} must be zero or positive, got {getattr(self, name)}")
        if not self.lr > 0:
            raise NiffError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.label_smoothing < 1:
            raise NiffError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay < 0 or self.momentum < 0 or (self.mlp_weight_decay or 0) < 0:
            raise NiffError("weight_decay, mlp_weight_decay and momentum must be non-negative")
        if not self.mlp_lr_scale > 0:
            raise NiffError(f"mlp_lr_scale must be positive, got {self.mlp_lr_scale}")
        from ..models.registry import parse_name

        if parse_name(self.model)[1] in ("baseline", "sep") and self.model_kwargs.get("mlp") is not None:
            raise NiffError(f"{self.model} has no NIFF layers: an MLP setting would be recorded but "
                            "never used; drop --mlp")
        if self.dtype not in DTYPES:
            raise NiffError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    def recipe(self) -> dict:
        """The settings that determine the weights (compared on ``--resume``), JSON-normalised."""
        return json.loads(json.dumps({k: getattr(self, k) for k in RECIPE_KEYS}))


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """SGD parameter groups: weights decay, biases and norm parameters do not; the parameters
    of the frequency MLPs form groups of their own, with ``mlp_weight_decay`` on their weights
    and the lr scaled by ``mlp_lr_scale`` (``lr_scale`` in each group)."""
    mlp = {id(p) for m in model.modules() if isinstance(m, _NIFFBase)
           for p in list(m.real.parameters()) + list(m.imag.parameters())}
    mlp_wd = cfg.weight_decay if cfg.mlp_weight_decay is None else cfg.mlp_weight_decay
    spec = [(False, True, cfg.weight_decay, 1.0), (False, False, 0.0, 1.0),
            (True, True, mlp_wd, cfg.mlp_lr_scale), (True, False, 0.0, cfg.mlp_lr_scale)]
    groups = []
    for is_mlp, decays, wd, scale in spec:
        params = [p for p in model.parameters() if (id(p) in mlp) == is_mlp and (p.ndim > 1) == decays]
        if params or not is_mlp:  # the two MLP groups exist only where there are MLPs
            groups.append(dict(params=params, weight_decay=wd, lr_scale=scale,
                               name=("mlp_" if is_mlp else "") + ("decay" if decays else "no_decay")))
    return groups


def _checkpoint_meta(cfg: TrainConfig, epochs: int, row: Optional[dict] = None) -> dict:
    """What every checkpoint of a run records (init/, epoch_NNN/ and the final one)."""
    row = row or {}
    recipe = dict(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
                  weight_decay=cfg.weight_decay, label_smoothing=cfg.label_smoothing, augment=cfg.augment,
                  schedule="cosine", optimizer="sgd",
                  mlp_weight_decay=cfg.weight_decay if cfg.mlp_weight_decay is None else cfg.mlp_weight_decay,
                  mlp_lr_scale=cfg.mlp_lr_scale)
    return dict(dataset=cfg.dataset, recipe=recipe, epochs=epochs, seed=cfg.seed,
                test_acc=row.get("test_acc"), test_loss=row.get("test_loss"))


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * step / total))


# --------------------------------------------------------------------------- data
def _first(data, n: Optional[int]):
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


def evaluate(model: nn.Module, data, device: torch.device, batch_size: int = 512,
             label_smoothing: float = 0.0, workers: int = 2) -> tuple[float, float]:
    """(mean loss, accuracy in [0, 1]) of ``model`` on a dataset (no augmentation).

    Inside a process group every rank evaluates its share and the sums are all-reduced.
    """
    rank, world = dist_info()
    dtype = next(model.parameters()).dtype
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
    with torch.no_grad():
        for x, y in _eval_batches(data, batch_size, rank, world, workers):
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


def _eval_batches(data, batch_size, rank=0, world=1, workers=2):
    if isinstance(data, TensorDataset):
        images, labels = data.images[rank::world], data.labels[rank::world]
        for i in range(0, len(labels), batch_size):
            yield normalise(images[i:i + batch_size], data.mean, data.std), labels[i:i + batch_size]
    else:
        part = torch.utils.data.Subset(data, range(rank, len(data), world))
        yield from torch.utils.data.DataLoader(part, batch_size=batch_size, num_workers=workers)


def _train_batches(data, cfg: TrainConfig, epoch: int, rank: int, world: int, start: int = 0):
    """Yield (step, x, y): this rank's slice of each global batch of ``epoch`` from step
    ``start`` on (drop-last). The order is a permutation drawn from the epoch's generator."""
    gen = _epoch_generator(cfg.seed, epoch)
    n = len(data)
    perm = torch.randperm(n, generator=gen)
    starts = range(0, n - cfg.batch_size + 1, cfg.batch_size)
    if isinstance(data, TensorDataset):
        for i, s in enumerate(starts):
            idx = perm[s:s + cfg.batch_size]
            x = data.images[idx]
            if cfg.augment:
                x = augment_batch(x, gen)  # drawn even for skipped steps: keeps `gen` in step
            if i < start:
                continue
            x = normalise(x, data.mean, data.std)
            yield i, x[rank::world], data.labels[idx][rank::world]
    else:
        data.set_epoch(epoch)
        batches = [perm[s:s + cfg.batch_size][rank::world].tolist() for s in starts][start:]
        loader = torch.utils.data.DataLoader(data, batch_sampler=batches, num_workers=cfg.workers)
        for i, (x, y) in enumerate(loader, start):
            yield i, x, y


def _load_data(cfg: TrainConfig):
    kw = cfg.model_kwargs
    size = kw.get("input_size") or (32 if kw.get("stem") == "cifar" else 224)
    size = tuple(size) if isinstance(size, (list, tuple)) else int(size)
    train_data = load_dataset(cfg.dataset, cfg.data_dir, "train", image_size=size, seed=cfg.seed)
    test_data = load_dataset(cfg.dataset, cfg.data_dir, "test", image_size=size, seed=cfg.seed)
    train_data, test_data = _first(train_data, cfg.train_subset), _first(test_data, cfg.test_subset)
    kwargs = dict(kw)
    kwargs.setdefault("num_classes", len(train_data.classes))
    if isinstance(train_data, TensorDataset):
        kwargs.setdefault("in_chans", train_data.images.shape[1])
        kwargs.setdefault("stem", "cifar")
        kwargs.setdefault("input_size", list(train_data.images.shape[-2:]))
    else:
        kwargs.setdefault("in_chans", 3)
        kwargs.setdefault("input_size", [size, size] if isinstance(size, int) else list(size))
    return train_data, test_data, kwargs


def _write_metrics(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue())


# --------------------------------------------------------------------------- resume
def _load_state(path: Path, cfg: TrainConfig) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign file, reported in one line
        raise NiffError(f"--resume: cannot read {path}: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "epoch", "step", "rows"} <= set(state):
        raise NiffError(f"--resume: {path} is not a niff-analysis training state")
    diff = _recipe_diff(state, cfg)
    if diff:
        raise NiffError(f"--resume: {path} was made with {diff}; resume with the same recipe or use a new --out")
    return state


def _recipe_diff(state: dict, cfg: TrainConfig) -> str:
    """How a saved state's recipe differs from ``cfg``'s, in words ("" when it does not)."""
    saved = state.get("recipe")  # absent in format-1 states
    if saved is None:
        return ""
    now = cfg.recipe()
    saved = {k: saved.get(k, RECIPE_DEFAULTS.get(k)) for k in RECIPE_KEYS}
    diff = [k for k in RECIPE_KEYS if saved[k] != now.get(k)]
    if not diff:
        return ""
    k = diff[0]
    return f"{k}={saved[k]!r}, this run has {k}={now.get(k)!r} ({len(diff)} setting(s) differ)"


def _refuse_other_run(out: Path, cfg: TrainConfig) -> None:
    """A fresh run must not silently replace what an out folder holds."""
    held = [n for n in (STATE_NAME, CONFIG_NAME, "metrics.csv", STATS_NAME) if (out / n).is_file()]
    if not held:
        return
    if (out / STATE_NAME).is_file():
        try:
            diff = _recipe_diff(torch.load(out / STATE_NAME, map_location="cpu", weights_only=True), cfg)
        except Exception:  # noqa: BLE001 - unreadable: it is still somebody's run
            diff = "an unreadable train_state.pt"
        if diff:
            raise NiffError(f"--out {out} holds another run (made with {diff}); use a new --out, or "
                            "--overwrite to replace it")
        raise NiffError(f"--out {out} holds a run of this recipe: --resume continues it "
                        "(--overwrite starts it again)")
    raise NiffError(f"--out {out} holds a run ({', '.join(held)}); use a new --out, or --overwrite to replace it")


def _check_compile(cfg: TrainConfig, model: nn.Module, device: torch.device) -> None:
    if cfg.compile and device.type != "cuda" and niff_layers(model):
        raise NiffError("--compile needs a CUDA device for NIFF models: on CPU, TorchInductor "
                        "generates no code for their complex FFTs, so compiling takes minutes and "
                        "the result runs slower than eager; drop --compile")


# --------------------------------------------------------------------------- kernel statistics
class _StatsRecorder:
    """Writes ``kernel_stats.csv``: :func:`~niff_analysis.analysis.stats.kernel_stats` of the
    model being trained, one block of rows per recorded step (epoch = step / steps per epoch).

    The whole file is rewritten atomically at every record. On resume the rows after the
    resumed step are dropped (they were recorded after the state was saved), so a killed and
    resumed run writes the same file as an uninterrupted one.
    """

    def __init__(self, model: nn.Module, path: Path, steps: int, device: torch.device, enabled: bool):
        self.model, self.path, self.steps, self.device = model, path, steps, device
        self.enabled = enabled
        self.blocks: list[pd.DataFrame] = []

    def keep_until(self, until: int) -> None:
        """Keep the rows of an earlier run up to ``until``, the step its saved state holds."""
        if not (self.enabled and self.path.is_file()):
            return
        try:
            old = read_kernel_stats(self.path)
        except (ValueError, OSError, pd.errors.ParserError):
            return  # unreadable: recorded again from here on
        old = old[old["step"] <= until]
        self.blocks = [g for _, g in old.groupby("step", sort=True)]

    def record(self, global_step: int) -> float:
        """Record the statistics at ``global_step`` (once per step); returns the seconds taken."""
        if not self.enabled or any(int(b["step"].iloc[0]) == global_step for b in self.blocks):
            return 0.0
        t0 = time.time()
        try:
            df = kernel_stats(extract_kernels(self.model), device=self.device)
        except NiffError as exc:  # no analysable layer, or diverged weights: training goes on
            print(f"warning: kernel statistics at step {global_step} not recorded: {exc}", file=sys.stderr)
            self.enabled = False
            return 0.0
        df.insert(0, "step", global_step)
        df.insert(0, "epoch", global_step / self.steps)
        self.blocks.append(df)
        self.blocks.sort(key=lambda b: int(b["step"].iloc[0]))
        atomic_write(self.path, stats_csv(pd.concat(self.blocks, ignore_index=True)))
        return time.time() - t0


# --------------------------------------------------------------------------- training
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of handing it back to the OS.

    A CPU training step allocates and frees many tensors of tens of MB. By default glibc
    serves those with fresh ``mmap`` pages and unmaps them on free, so every step pays the
    page faults again: measured here (2 cores, batch 128, 32×32, 10 resnet18_niff steps) the
    run took 66 s with 41 s of system time before and 42 s after (benchmarks/README.md). The
    setting is process-wide and only raises the resident memory that stays mapped (a few GB at
    most).

    Returns:
        Whether the allocator was changed (False off glibc, e.g. macOS or Windows).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        # M_MMAP_MAX = -4: never serve a request with its own mmap; M_TRIM_THRESHOLD = -1:
        # do not return the top of the heap unless 2 GB or more are free there.
        return bool(libc.mallopt(-4, 0)) and bool(libc.mallopt(-1, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train per ``cfg``; returns the final metrics row.

    Writes into ``cfg.out``: ``train_config.json``, ``metrics.csv``, ``train_state.pt``
    (resumable state) and the final checkpoint (``config.json`` + ``model.safetensors``).
    Under torchrun (``WORLD_SIZE`` > 1) each process trains its slice of every global batch
    with DistributedDataParallel; only rank 0 writes files.

    Raises:
        NiffError: bad settings, unusable data (:class:`DataError`), an unusable resume state.
    """
    cfg.validate()
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device, own_group = setup_distributed(resolve_device(cfg.device))
    if device.type == "cpu":
        keep_freed_memory()
    try:
        return _train(cfg, resume, device)
    finally:
        torch.set_num_threads(threads)  # a library call leaves the caller's setting alone
        if own_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, resume: bool, device: torch.device) -> dict:
    rank, world = dist_info()
    is_main = rank == 0
    if cfg.batch_size % world:
        raise NiffError(f"batch size {cfg.batch_size} is not divisible by {world} processes")
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    train_data, test_data, cfg.model_kwargs = _load_data(cfg)
    steps = len(train_data) // cfg.batch_size
    if steps < 1:
        raise NiffError(f"training set has {len(train_data)} images, fewer than one batch of {cfg.batch_size}")
    dtype = DTYPES[cfg.dtype]
    core = initial_model(cfg.model, cfg.model_kwargs, cfg.seed).to(device=device, dtype=dtype)
    _check_compile(cfg, core, device)
    state_path = out / STATE_NAME
    state = None
    if resume:
        if not state_path.is_file():
            raise NiffError(f"--resume: no {STATE_NAME} in {out}")
        state = _load_state(state_path, cfg)  # refuses another recipe before anything is written
    elif not cfg.overwrite:
        _refuse_other_run(out, cfg)
    kstats = _StatsRecorder(core, out / STATS_NAME, steps, device, enabled=cfg.kernel_stats and is_main)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume or not (out / INIT_DIR / CONFIG_NAME).is_file():
            save_checkpoint(core, out / INIT_DIR, **_checkpoint_meta(cfg, 0))
    if state is not None:
        kstats.keep_until(int(state.get("global_step", int(state["epoch"]) * steps + int(state["step"]))))
    kstats.record(0)  # before any step (a resumed run recomputes it only when its file lacks it)
    if world > 1 and cfg.sync_bn:
        core = kstats.model = convert_batchnorm(core, device)
    opt = torch.optim.SGD(param_groups(core, cfg), lr=cfg.lr, momentum=cfg.momentum)
    use_amp = cfg.amp and device.type == "cuda" and dtype == torch.float32
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    # fp16 needs loss scaling against gradient underflow; bf16 (and no autocast) do not.
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    total_steps = steps * cfg.epochs
    start_epoch, start_step, rows = 0, 0, []
    carried = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count of a resumed epoch
    if state is not None:
        core.load_state_dict(state["model"])
        try:
            opt.load_state_dict(state["optimizer"])
        except ValueError as exc:
            raise NiffError(f"--resume: {state_path}: optimizer state does not fit this run ({exc})") from None
        start_epoch, start_step, rows = int(state["epoch"]), int(state["step"]), list(state["rows"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if is_main and state.get("epoch_sums") is not None:
            carried = state["epoch_sums"].to(torch.float64)
    model = core
    if world > 1:
        model = nn.parallel.DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None)
    step_model = torch.compile(model) if cfg.compile else model
    if is_main:
        atomic_write(out / "train_config.json", json.dumps(
            dict(asdict(cfg), world_size=world, versions=dict(niff_analysis=__version__, torch=torch.__version__)),
            indent=2) + "\n")

    def save_state(epoch: int, step: int, sums: torch.Tensor) -> None:
        if world > 1:  # every rank calls this; the saved partial sums are global
            sums = sums.clone()
            dist.all_reduce(sums)
        if is_main:
            st = dict(format=STATE_FORMAT, model=core.state_dict(), optimizer=opt.state_dict(),
                      epoch=epoch, step=step, global_step=epoch * steps + step, rows=rows,
                      rng=torch.get_rng_state(), epoch_sums=sums, recipe=cfg.recipe(),
                      scaler=scaler.state_dict() if scaler.is_enabled() else None)
            if device.type == "cuda":
                st["cuda_rng"] = torch.cuda.get_rng_state(device)
            atomic_write(state_path, lambda p: torch.save(st, p))

    from tqdm.auto import tqdm

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.time()
        first = start_step if epoch == start_epoch else 0
        sums = carried if epoch == start_epoch else torch.zeros(3, dtype=torch.float64)
        bar = tqdm(total=steps, initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}", file=sys.stderr,
                   disable=not (cfg.progress and is_main), leave=False)
        for i, x, y in _train_batches(train_data, cfg, epoch, rank, world, start=first):
            for g in opt.param_groups:
                g["lr"] = _lr_at(cfg, epoch * steps + i, total_steps) * g.get("lr_scale", 1.0)
            x, y = x.to(device, dtype, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits = step_model(x)
            # Each rank averages over its slice; DDP then averages ranks → global mean.
            # Loss in float32 at least (autocast may give bf16/fp16 logits), float64 stays.
            loss = F.cross_entropy(logits if logits.dtype == torch.float64 else logits.float(), y,
                                   label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sums += torch.tensor([loss.item() * len(y), (logits.argmax(1) == y).sum().item(), len(y)],
                                 dtype=torch.float64)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            every = cfg.kernel_stats_every_steps
            if every and (epoch * steps + i + 1) % every == 0 and i + 1 < steps:
                kstats.record(epoch * steps + i + 1)  # before the state save: a resume keeps it
            if cfg.save_every_steps and (i + 1) % cfg.save_every_steps == 0 and i + 1 < steps:
                save_state(epoch, i + 1, sums)
        bar.close()
        stats = sums.clone()
        if world > 1:
            dist.all_reduce(stats)
        test_loss, test_acc = evaluate(core, test_data, device, cfg.eval_batch_size, workers=cfg.workers)
        rows.append(dict(epoch=epoch + 1, lr=round(_lr_at(cfg, (epoch + 1) * steps, total_steps), 8),
                         train_loss=stats[0].item() / max(stats[2].item(), 1),
                         train_acc=stats[1].item() / max(stats[2].item(), 1),
                         test_loss=test_loss, test_acc=test_acc, seconds=round(time.time() - t0, 2)))
        rows[-1]["stats_seconds"] = round(kstats.record((epoch + 1) * steps), 2)
        if is_main:
            _write_metrics(out / "metrics.csv", rows)
            print(f"epoch {epoch + 1}: train_loss {rows[-1]['train_loss']:.4f} "
                  f"train_acc {rows[-1]['train_acc']:.4f} test_acc {test_acc:.4f}", file=sys.stderr)
            if cfg.keep_epoch_checkpoints:
                save_checkpoint(core, out / f"epoch_{epoch + 1:03d}", **_checkpoint_meta(cfg, epoch + 1, rows[-1]))
        save_state(epoch + 1, 0, torch.zeros(3, dtype=torch.float64))
    final = rows[-1] if rows else {}
    if cfg.epochs == 0:  # the final checkpoint is the initialisation: say how good it is
        test_loss, test_acc = evaluate(core, test_data, device, cfg.eval_batch_size, workers=cfg.workers)
        final = dict(test_acc=test_acc, test_loss=test_loss)
    extra = {}
    if world > 1:
        prints = gather_objects(state_fingerprint(core.state_dict()))
        extra["replica_sha256"] = prints
        if is_main and len(set(prints)) > 1:
            print("warning: DDP replicas ended with different weights", file=sys.stderr)
    if is_main:
        save_checkpoint(core, out, **_checkpoint_meta(cfg, cfg.epochs, final), world_size=world, **extra)
    if world > 1:
        dist.barrier()
    return final

"""Training loop: one recipe object, one loop, single process or torchrun/DDP.

The CIFAR-10 recipe of SPEC §3 is the default for 32×32 data: SGD (momentum 0.9), cosine lr
from 0.02, weight decay 0.002, label smoothing 0.1, zero-pad-4 crop + horizontal flip,
per-channel normalisation. Other recipes are just other :class:`TrainConfig` values.

A run is reproducible and resumes exactly: the data order and augmentation are seeded per
epoch (:mod:`niff_analysis.train.batches`) and ``train_state.pt`` holds everything a resumed
run needs (:mod:`niff_analysis.train.state`). Under DDP every BatchNorm normalises over the
global batch (``SyncBatchNorm`` on GPUs, :class:`~niff_analysis.train.distributed.GlobalBatchNorm`
on CPU), so N processes train the same model as one process up to float rounding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..analysis.stats import FILE_NAME as STATS_NAME
from ..checkpoint import CONFIG_NAME, check_model_fits, initial_model, save_checkpoint
from ..device import resolve_device
from ..errors import NiffError
from ..io import atomic_write, write_failure
from ..layers.memory import ensure_freed_memory_kept, keep_freed_memory  # noqa: F401 - re-exported
from ..layers.niff import NIFFLayer
from ..models import niff_layers
from ..runs import DIVERGED_NAME, INIT_DIR, clear_run, holds_run, refuse_foreign, run_lock
from .batches import evaluate, load_data, train_batches
from .config import TrainConfig
from .distributed import convert_batchnorm, dist_info, gather_objects, setup_distributed, state_fingerprint
from .precision import resolve_precision
from .records import StatsRecorder, write_metrics
from .state import STATE_FORMAT, STATE_NAME, load_state, refuse_other_run, saved_recipe_diff, unstarted


class TrainingDiverged(NiffError):
    """The loss (or the weights) became NaN or Inf: training stopped, the last finite state kept."""


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal (SIGINT, SIGTERM) under :func:`stop_on_signals`.

    Attributes:
        signum: the signal.
        saved: (epoch, step) of the state saved when it stopped, or None when it stopped at once.
    """

    def __init__(self, signum: int, saved: tuple[int, int] | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.saved = signum, saved


def saved_position(epoch: int, step: int) -> str:
    """Where a saved state stands, for people: ``epoch`` epochs done and ``step`` steps into the next."""
    return (
        f"at step {step} of epoch {epoch + 1}"
        if step
        else (f"at the end of epoch {epoch}" if epoch else "at the start")
    )


def interrupted_message(exc: KeyboardInterrupt, state: Path, go_on: str, start_again: str | None = None) -> str:
    """One line saying which signal stopped a run, what it kept and how to go on.

    Args:
        exc: the interruption (:class:`Interrupted` carries the signal and the state saved at the
            stop; a plain ``KeyboardInterrupt`` counts as SIGINT).
        state: the run's ``train_state.pt``.
        go_on: how to continue from a saved state (e.g. "the same command with --resume
            continues it").
        start_again: what to do when nothing was saved yet (default: ``go_on``).
    """
    name = signal.Signals(getattr(exc, "signum", signal.SIGINT)).name
    saved = getattr(exc, "saved", None)
    if saved:
        return f"interrupted by {name}: the state {saved_position(*saved)} is saved in {state}; {go_on}"
    if state.is_file():
        return f"interrupted by {name}: its last saved state is {state}; {go_on}"
    return f"interrupted by {name} before the first saved state: {start_again or go_on}"


class _Stop:
    """What :func:`stop_on_signals`' handler asked for: the pending signal, and whether the run
    is inside its steps (where it can stop at the next step boundary with its state saved)."""

    signum: int | None = None
    graceful: bool = False


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """While active, SIGINT and SIGTERM (what Ctrl-C, ``timeout``, ``kill`` and SLURM send) stop a
    single-process training run at the next step boundary, with its state saved, by raising
    :class:`Interrupted` (a ``KeyboardInterrupt``). A second signal, one outside the training
    steps, and any signal under DDP stop at once. The previous handlers are restored afterwards;
    outside the main thread this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:  # a forked DataLoader worker: the training process decides
            return
        if _Stop.graceful and _Stop.signum is None:
            _Stop.signum = signum
            print(
                f"{signal.Signals(signum).name}: stopping after this step with the state saved "
                "(send it again to stop at once)",
                file=sys.stderr,
            )
            return
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _Stop.signum, _Stop.graceful = None, False


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """SGD parameter groups: weights decay, biases and norm parameters do not; the parameters
    of the frequency MLPs form groups of their own, with ``mlp_weight_decay`` on their weights
    (and on their biases with ``mlp_bias_decay``) and the lr scaled by ``mlp_lr_scale``
    (``lr_scale`` in each group)."""
    mlp = {
        id(p)
        for m in model.modules()
        if isinstance(m, NIFFLayer)
        for p in list(m.real.parameters()) + list(m.imag.parameters())
    }
    mlp_wd = cfg.weight_decay if cfg.mlp_weight_decay is None else cfg.mlp_weight_decay
    spec = [
        (False, True, cfg.weight_decay, 1.0),
        (False, False, 0.0, 1.0),
        (True, True, mlp_wd, cfg.mlp_lr_scale),
        (True, False, mlp_wd if cfg.mlp_bias_decay else 0.0, cfg.mlp_lr_scale),
    ]
    groups = []
    for is_mlp, decays, wd, scale in spec:
        params = [p for p in model.parameters() if (id(p) in mlp) == is_mlp and (p.ndim > 1) == decays]
        if params or not is_mlp:  # the two MLP groups exist only where there are MLPs
            groups.append(
                dict(
                    params=params,
                    weight_decay=wd,
                    lr_scale=scale,
                    name=("mlp_" if is_mlp else "") + ("decay" if decays else "no_decay"),
                )
            )
    return groups


def _checkpoint_meta(cfg: TrainConfig, epochs: int, row: dict | None = None, precision: str = "fp32") -> dict:
    """What every checkpoint of a run records (init/, epoch_NNN/ and the final one); ``precision``
    is the resolved one (:class:`~niff_analysis.train.precision.Precision`'s name)."""
    row = row or {}
    recipe = dict(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        label_smoothing=cfg.label_smoothing,
        augment=cfg.augment,
        schedule="cosine",
        optimizer="sgd",
        mlp_weight_decay=cfg.weight_decay if cfg.mlp_weight_decay is None else cfg.mlp_weight_decay,
        mlp_lr_scale=cfg.mlp_lr_scale,
    )
    if cfg.mlp_bias_decay:  # recorded only when set: checkpoints of the default recipe stay as they were
        recipe["mlp_bias_decay"] = True
    if cfg.content_scale != 1.0:
        recipe["content_scale"] = cfg.content_scale
    if precision not in ("fp32", "fp64"):  # what the steps computed in, when not the parameters' dtype
        recipe["precision"] = precision
    return dict(
        dataset=cfg.dataset,
        recipe=recipe,
        epochs=epochs,
        seed=cfg.seed,
        test_acc=row.get("test_acc"),
        test_loss=row.get("test_loss"),
    )


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * step / total))


def _check_compile(cfg: TrainConfig, model: nn.Module, device: torch.device) -> None:
    if cfg.compile and device.type != "cuda" and niff_layers(model):
        raise NiffError(
            "--compile needs a CUDA device for NIFF models: on CPU, TorchInductor "
            "generates no code for their complex FFTs, so compiling takes minutes and "
            "the result runs slower than eager; drop --compile"
        )


# --------------------------------------------------------------------------- training
def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train per ``cfg``; returns the final metrics row.

    Writes into ``cfg.out``: ``train_config.json``, ``metrics.csv``, ``train_state.pt``
    (resumable state) and the final checkpoint (``config.json`` + ``model.safetensors``).
    Under torchrun (``WORLD_SIZE`` > 1) each process trains its slice of every global batch
    with DistributedDataParallel; only rank 0 writes files. ``cfg`` is not changed.

    A non-finite loss (or weights) stops the run (:class:`TrainingDiverged`, ``diverged.json``
    in ``cfg.out``); what was saved before stays. While it trains, ``cfg.out`` is locked
    (:func:`~niff_analysis.runs.run_lock`).

    Raises:
        NiffError: bad settings, unusable data (:class:`DataError`), an unusable resume state,
            a folder another process trains (:class:`~niff_analysis.runs.RunLockedError`), a
            diverged run (:class:`TrainingDiverged`).
    """
    cfg.validate()
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device, own_group = setup_distributed(resolve_device(cfg.device))
    if device.type == "cpu":
        ensure_freed_memory_kept()  # glibc keeps freed memory (NIFF_KEEP_FREED_MEMORY=0: not)
    try:
        # One process trains a run folder at a time: a second train or --resume is refused.
        with run_lock(cfg.out) if dist_info()[0] == 0 else contextlib.nullcontext():
            return _train(cfg, resume, device)
    finally:
        torch.set_num_threads(threads)  # a library call leaves the caller's setting alone
        if own_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, resume: bool, device: torch.device) -> dict:
    run = _Run(cfg, resume, device)
    run.restore()
    _Stop.graceful = run.world == 1  # under DDP the ranks could not agree on the step to stop at
    try:
        run.start()
        for epoch in range(run.start_epoch, run.cfg.epochs):
            run.train_epoch(epoch)
            if _Stop.signum is not None and epoch + 1 < run.cfg.epochs:  # the epoch end saved the state
                raise Interrupted(_Stop.signum, (epoch + 1, 0))
    finally:
        _Stop.graceful = False
    return run.finish()


class _Run:
    """One training run in this process, in the order :func:`_train` calls its steps.

    Building it loads the data, builds the model, reads (or refuses) the resume state before
    anything is written, starts ``init/`` and ``kernel_stats.csv`` and builds the optimizer;
    :meth:`restore`, :meth:`start`, :meth:`train_epoch` per epoch and :meth:`finish` follow.
    The order of these steps is the order the RNG is drawn in: keep it, or resumed and
    uninterrupted runs stop being equal.

    ``self.cfg`` is a copy of the caller's config with the model kwargs the data decides
    filled in: ``train_config.json``, the saved and compared recipe and the model use it.
    """

    def __init__(self, cfg: TrainConfig, resume: bool, device: torch.device):
        self.rank, self.world = dist_info()
        self.is_main = self.rank == 0
        if cfg.batch_size % self.world:
            raise NiffError(f"batch size {cfg.batch_size} is not divisible by {self.world} processes")
        self.device, self.out = device, Path(cfg.out)
        self.state_path = self.out / STATE_NAME
        # Before the data is read or anything written: a refused --precision costs nothing.
        self.precision = resolve_precision(cfg.precision, cfg.amp, device, getattr(torch, cfg.dtype))
        torch.manual_seed(cfg.seed)
        self.train_data, self.test_data, model_kwargs = load_data(cfg)
        self.cfg = cfg = dataclasses.replace(cfg, model_kwargs=model_kwargs)
        self.steps = len(self.train_data) // cfg.batch_size
        if self.steps < 1:
            raise NiffError(f"training set has {len(self.train_data)} images, fewer than one batch of {cfg.batch_size}")
        self.total_steps = self.steps * cfg.epochs
        self.dtype = getattr(torch, cfg.dtype)
        check_model_fits(cfg.model, cfg.model_kwargs, copies=3, dtype=self.dtype)  # weights, gradients, momentum
        self.core = initial_model(cfg.model, cfg.model_kwargs, cfg.seed).to(device=device, dtype=self.dtype)
        _check_compile(cfg, self.core, device)
        self.saved_at: tuple[int, int] | None = None  # (epoch, step) of the last state on disk
        self.state = self._read_state(resume)
        self.kstats = self._start_records()
        self._build_optimizer()

    def _read_state(self, resume: bool) -> dict | None:
        """The state to resume from (None for a fresh run); refusals come before any write."""
        if resume:
            if self.cfg.overwrite:
                raise NiffError("--resume continues a run and --overwrite replaces it: choose one")
            if not self.state_path.is_file():
                if holds_run(self.out) and unstarted(self.out) and not saved_recipe_diff(self.out, self.cfg):
                    # Stopped before its first saved state: nothing to continue, so it starts again.
                    if self.is_main:
                        print(
                            f"note: {self.out} holds no saved state yet; training starts from the beginning",
                            file=sys.stderr,
                        )
                    return None
                raise NiffError(f"--resume: no {STATE_NAME} in {self.out}")
            state = load_state(self.state_path, self.cfg)
            self.saved_at = (int(state["epoch"]), int(state["step"]))
            return state
        if self.cfg.overwrite:
            refuse_foreign(self.out)  # --overwrite replaces a run, never other files
        else:
            refuse_other_run(self.out, self.cfg)
        return None

    def _start_records(self) -> StatsRecorder:
        """Write ``init/`` (unless a resumed run has it) and the step-0 kernel statistics."""
        cfg, out, state = self.cfg, self.out, self.state
        kstats = StatsRecorder(
            self.core, out / STATS_NAME, self.steps, self.device, enabled=cfg.kernel_stats and self.is_main
        )
        if self.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if cfg.overwrite:  # the previous run goes first: two runs never mix in one folder
                clear_run(out)
            (out / DIVERGED_NAME).unlink(missing_ok=True)  # a resumed run is trained again
            if state is None or not (out / INIT_DIR / CONFIG_NAME).is_file():
                save_checkpoint(self.core, out / INIT_DIR, **_checkpoint_meta(cfg, 0, None, self.precision.name))
        if state is not None:
            kstats.keep_until(int(state.get("global_step", int(state["epoch"]) * self.steps + int(state["step"]))))
        kstats.record(0)  # before any step (a resumed run recomputes it only when its file lacks it)
        return kstats

    def _build_optimizer(self) -> None:
        """Global-batch BatchNorm under DDP, the SGD optimizer, autocast and the loss scaler."""
        cfg, device = self.cfg, self.device
        if self.world > 1 and cfg.sync_bn:
            self.core = self.kstats.model = convert_batchnorm(self.core, device)
        self.opt = torch.optim.SGD(param_groups(self.core, cfg), lr=cfg.lr, momentum=cfg.momentum)
        # fp16 needs loss scaling against gradient underflow; bf16 (and no autocast) do not. The
        # scaler is made for the run's device type, so its bookkeeping also runs on the CPU (tested).
        self.scaler = torch.amp.GradScaler(
            device.type if device.type in ("cuda", "cpu") else "cuda", enabled=self.precision.loss_scaling
        )
        self.start_epoch, self.start_step = 0, 0
        self.rows: list[dict] = []  # the metrics rows, one per finished epoch
        self.carried = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count of a resumed epoch

    def restore(self) -> None:
        """Resume state → model, optimizer, position, metrics, RNG, loss scaler, epoch sums."""
        state, self.state = self.state, None  # not kept for the whole run: it holds a model
        if state is None:
            return
        self.core.load_state_dict(state["model"])
        try:
            self.opt.load_state_dict(state["optimizer"])
        except ValueError as exc:
            raise NiffError(f"--resume: {self.state_path}: optimizer state does not fit this run ({exc})") from None
        self.start_epoch, self.start_step, self.rows = int(state["epoch"]), int(state["step"]), list(state["rows"])
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.is_main and state.get("epoch_sums") is not None:
            self.carried = state["epoch_sums"].to(torch.float64)

    def start(self) -> None:
        """Wrap the model for the steps (DDP, torch.compile) and write ``train_config.json``."""
        cfg, device = self.cfg, self.device
        self.model = self.core
        if self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.core, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.step_model = torch.compile(self.model) if cfg.compile else self.model
        if self.is_main:
            atomic_write(
                self.out / "train_config.json",
                json.dumps(
                    dict(
                        asdict(cfg),
                        world_size=self.world,
                        precision_used=self.precision.name,
                        versions=dict(niff_analysis=__version__, torch=torch.__version__),
                    ),
                    indent=2,
                )
                + "\n",
            )

    def save_state(self, epoch: int, step: int, sums: torch.Tensor) -> None:
        """Write ``train_state.pt`` at ``step`` of ``epoch`` (every rank calls this)."""
        self._check_weights(epoch * self.steps + step - 1)  # never save a state that holds NaN
        if self.world > 1:  # the saved partial sums are global
            sums = sums.clone()
            dist.all_reduce(sums)
        if self.is_main:
            scaler = self.scaler
            st = dict(
                format=STATE_FORMAT,
                model=self.core.state_dict(),
                optimizer=self.opt.state_dict(),
                epoch=epoch,
                step=step,
                global_step=epoch * self.steps + step,
                rows=self.rows,
                rng=torch.get_rng_state(),
                epoch_sums=sums,
                recipe=self.cfg.recipe(),
                scaler=scaler.state_dict() if scaler.is_enabled() else None,
            )
            if self.device.type == "cuda":
                st["cuda_rng"] = torch.cuda.get_rng_state(self.device)
            state_path = self.state_path  # the write audit of the tests names the line below
            try:
                atomic_write(state_path, lambda p: torch.save(st, p))
            except RuntimeError as exc:  # torch reports a full disk as "unexpected pos …"
                failure = write_failure(state_path, exc, kept=f"the previous {STATE_NAME} is kept")
                if failure is exc:
                    raise
                raise failure from None
        self.saved_at = (epoch, step)

    def _check_weights(self, global_step: int) -> None:
        """Stop with :class:`TrainingDiverged` when a weight or a BatchNorm statistic became
        NaN/Inf by ``global_step``."""
        tensors = {
            k: v for k, v in [*self.core.named_parameters(), *self.core.named_buffers()] if v.is_floating_point()
        }
        flags = torch.stack([torch.isfinite(v.detach()).all() for v in tensors.values()])
        if not bool(flags.all()):  # one device sync per check
            first = list(tensors)[int((~flags).nonzero()[0])]
            self._diverged(global_step, f"NaN/Inf appeared in the model (e.g. {first})")

    def _diverged(self, global_step: int, what: str) -> NoReturn:
        """Record where the run diverged (``diverged.json``) and stop it; nothing after the last
        finite state is saved."""
        epoch, batch = divmod(global_step, self.steps)
        where = f"{what} at step {global_step + 1} (epoch {epoch + 1}, batch {batch + 1} of {self.steps})"
        if self.saved_at is not None:
            kept = f"its last finite state, {saved_position(*self.saved_at)}, stays in {self.state_path}"
        else:
            kept = f"no state was saved before it ({self.out / INIT_DIR} holds the initialisation)"
        if self.is_main:
            atomic_write(
                self.out / DIVERGED_NAME,
                json.dumps(
                    dict(
                        message=where,
                        step=global_step + 1,
                        epoch=epoch + 1,
                        batch=batch + 1,
                        last_state=None
                        if self.saved_at is None
                        else dict(epoch=self.saved_at[0], step=self.saved_at[1]),
                    ),
                    indent=1,
                )
                + "\n",
            )
        raise TrainingDiverged(
            f"training diverged: {where}; {kept}; change the recipe (e.g. a lower --lr) and "
            "train again with --overwrite"
        )

    def train_epoch(self, epoch: int) -> None:
        """The steps of ``epoch`` (from the resumed step on), then :meth:`_end_epoch`."""
        from tqdm.auto import tqdm

        cfg, steps = self.cfg, self.steps
        self.model.train()
        t0 = time.time()
        resumed = epoch == self.start_epoch
        first = self.start_step if resumed else 0
        sums = self.carried if resumed else torch.zeros(3, dtype=torch.float64)
        bar = tqdm(
            total=steps,
            initial=first,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            file=sys.stderr,
            disable=not (cfg.progress and self.is_main),
            leave=False,
        )
        for i, x, y in train_batches(self.train_data, cfg, epoch, self.rank, self.world, start=first):
            loss = self._step(epoch * steps + i, x, y, sums)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            every = cfg.kernel_stats_every_steps
            if every and (epoch * steps + i + 1) % every == 0 and i + 1 < steps:
                self.kstats.record(epoch * steps + i + 1)  # before the state save: a resume keeps it
            if cfg.save_every_steps and (i + 1) % cfg.save_every_steps == 0 and i + 1 < steps:
                self.save_state(epoch, i + 1, sums)
            if _Stop.signum is not None and i + 1 < steps:  # SIGINT/SIGTERM: stop here, state saved
                if self.saved_at != (epoch, i + 1):
                    self.save_state(epoch, i + 1, sums)
                bar.close()
                raise Interrupted(_Stop.signum, (epoch, i + 1))
        bar.close()
        self._end_epoch(epoch, sums, t0)

    def _step(self, global_step: int, x: torch.Tensor, y: torch.Tensor, sums: torch.Tensor) -> float:
        """One optimizer step on this rank's slice; adds (loss sum, correct, count) to ``sums``."""
        cfg, opt, scaler = self.cfg, self.opt, self.scaler
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, global_step, self.total_steps) * g.get("lr_scale", 1.0)
        x, y = x.to(self.device, self.dtype, non_blocking=True), y.to(self.device, non_blocking=True)
        with self.precision.context(self.device):
            logits = self.step_model(x)
        # Each rank averages over its slice; DDP then averages ranks → global mean.
        # Loss in float32 at least (autocast may give bf16/fp16 logits), float64 stays.
        loss = F.cross_entropy(
            logits if logits.dtype == torch.float64 else logits.float(), y, label_smoothing=cfg.label_smoothing
        )
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        value = loss.item()
        if not math.isfinite(value):  # nothing after this step is saved: the last finite state stays
            self._diverged(global_step, f"the loss is {value}")
        sums += torch.tensor([value * len(y), (logits.argmax(1) == y).sum().item(), len(y)], dtype=torch.float64)
        return value

    def _end_epoch(self, epoch: int, sums: torch.Tensor, t0: float) -> None:
        """Evaluate, add the metrics row, record statistics, write files, save the state."""
        cfg, steps, rows = self.cfg, self.steps, self.rows
        self._check_weights((epoch + 1) * steps - 1)  # before any metric of NaN weights is written
        stats = sums.clone()
        if self.world > 1:
            dist.all_reduce(stats)
        test_loss, test_acc = evaluate(self.core, self.test_data, self.device, cfg.eval_batch_size, workers=cfg.workers)
        rows.append(
            dict(
                epoch=epoch + 1,
                lr=round(_lr_at(cfg, (epoch + 1) * steps, self.total_steps), 8),
                train_loss=stats[0].item() / max(stats[2].item(), 1),
                train_acc=stats[1].item() / max(stats[2].item(), 1),
                test_loss=test_loss,
                test_acc=test_acc,
                seconds=round(time.time() - t0, 2),
            )
        )
        rows[-1]["stats_seconds"] = round(self.kstats.record((epoch + 1) * steps), 2)
        if self.is_main:
            write_metrics(self.out / "metrics.csv", rows)
            print(
                f"epoch {epoch + 1}: train_loss {rows[-1]['train_loss']:.4f} "
                f"train_acc {rows[-1]['train_acc']:.4f} test_acc {test_acc:.4f}",
                file=sys.stderr,
            )
            if cfg.keep_epoch_checkpoints:
                save_checkpoint(
                    self.core,
                    self.out / f"epoch_{epoch + 1:03d}",
                    **_checkpoint_meta(cfg, epoch + 1, rows[-1], self.precision.name),
                )
        self.save_state(epoch + 1, 0, torch.zeros(3, dtype=torch.float64))

    def finish(self) -> dict:
        """The final checkpoint (for ``--epochs 0`` the initialisation, evaluated); returns its row."""
        cfg, core, world = self.cfg, self.core, self.world
        final = self.rows[-1] if self.rows else {}
        if cfg.epochs == 0:  # the final checkpoint is the initialisation: say how good it is
            test_loss, test_acc = evaluate(core, self.test_data, self.device, cfg.eval_batch_size, workers=cfg.workers)
            final = dict(test_acc=test_acc, test_loss=test_loss)
        extra = {}
        if world > 1:  # every rank's weights, to show the replicas stayed equal
            prints = gather_objects(state_fingerprint(core.state_dict()))
            extra["replica_sha256"] = prints
            if self.is_main and len(set(prints)) > 1:
                print("warning: DDP replicas ended with different weights", file=sys.stderr)
        if self.is_main:
            save_checkpoint(
                core,
                self.out,
                **_checkpoint_meta(cfg, cfg.epochs, final, self.precision.name),
                world_size=world,
                **extra,
            )
        if world > 1:
            dist.barrier()
        return final

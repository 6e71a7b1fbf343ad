"""The recipe of a training run: :class:`TrainConfig`, everything ``train_config.json`` records."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import NiffError

#: The dtypes a run may train in, by torch's names (``getattr(torch, name)``); names, not torch
#: dtypes, so that the recipe (and the command line's options built from it) imports no torch.
DTYPES = ("float32", "float64")
# Settings that change the trained weights; a resume must use the same values.
RECIPE_KEYS = (
    "model",
    "model_kwargs",
    "dataset",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "label_smoothing",
    "augment",
    "seed",
    "train_subset",
    "dtype",
    "mlp_weight_decay",
    "mlp_lr_scale",
    "mlp_bias_decay",
    "content_scale",
    "precision",
)


@dataclass
class TrainConfig:
    """Everything that defines a training run (written to ``train_config.json``)."""

    model: str = "resnet18_niff"
    model_kwargs: dict = field(default_factory=dict)
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    out: str = "runs/default"
    epochs: int = 150
    batch_size: int = 256
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 0.002
    mlp_weight_decay: float | None = None  # weight decay of the frequency-MLP weights (None: weight_decay)
    mlp_lr_scale: float = 1.0  # the frequency MLPs' lr is lr × this (weights and biases)
    # Decay the frequency-MLP biases too (at the MLP weights' rate). Off, as in the paper's code:
    # decaying only the weights pulls each MLP towards its constant output bias, a flat spectrum.
    mlp_bias_decay: bool = False
    # Scale every image's content by this about the image centre on the unchanged canvas
    # (zero-filled): the maps, the NIFF grids and the initial kernels stay the same, only the size
    # of what the network sees changes (train and test alike; augmentation follows).
    content_scale: float = 1.0
    label_smoothing: float = 0.1
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 (fp16 + GradScaler where bf16 is missing) autocast on CUDA only
    # "auto": float32 on the CPU, the amp setting on CUDA; "fp32"; "bf16": bf16 autocast on a CPU
    # with native bf16 or a GPU (FFTs and frequency MLPs stay float32). See train/precision.py.
    precision: str = "auto"
    compile: bool = False
    train_subset: int | None = None
    test_subset: int | None = None
    eval_batch_size: int = 512
    threads: int | None = None
    progress: bool = True
    save_every_steps: int = 0  # also save resumable state every N steps (0: per epoch only)
    sync_bn: bool = True  # under DDP, BatchNorm statistics over the global batch
    workers: int = 4  # DataLoader workers (ImageFolder only)
    dtype: str = "float32"  # "float64": CPU reference runs (exact DDP/resume comparisons)
    kernel_stats: bool = True  # record kernel_stats.csv at init, every epoch (and every N steps)
    kernel_stats_every_steps: int = 0
    keep_epoch_checkpoints: bool = False  # also keep OUT/epoch_NNN/ after every epoch
    overwrite: bool = False  # replace the run an out folder holds (its files are removed first)

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
        if not 0 < self.content_scale <= 1:
            raise NiffError(f"content_scale must be in (0, 1], got {self.content_scale}")
        if not self.mlp_lr_scale > 0:
            raise NiffError(f"mlp_lr_scale must be positive, got {self.mlp_lr_scale}")
        from ..models.registry import parse_name

        if parse_name(self.model)[1] in ("baseline", "sep"):
            # Settings of NIFF layers would be recorded in config.json but never used.
            unused = [
                option
                for option, used in (
                    ("--mlp", self.model_kwargs.get("mlp") is not None),
                    ("--mode", self.model_kwargs.get("mode", "circular") != "circular"),
                    ("--mlp-weight-decay", self.mlp_weight_decay is not None),
                    ("--mlp-lr-scale", self.mlp_lr_scale != 1.0),
                    ("--mlp-bias-decay", bool(self.mlp_bias_decay)),
                    ("niff_on_1x1", bool(self.model_kwargs.get("niff_on_1x1"))),
                )
                if used
            ]
            if unused:
                setting = "an MLP setting" if unused[0].startswith("--mlp") else "a NIFF setting"
                raise NiffError(
                    f"{self.model} has no NIFF layers: {setting} would be recorded but never used; drop {unused[0]}"
                )
        if self.dtype not in DTYPES:
            raise NiffError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        from .precision import PRECISIONS

        if self.precision not in PRECISIONS:
            raise NiffError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision == "bf16" and self.dtype != "float32":
            raise NiffError(f"precision bf16 autocasts float32 parameters; this run has dtype {self.dtype}")

    def recipe(self) -> dict:
        """The settings that determine the weights (compared on ``--resume``), JSON-normalised."""
        return json.loads(json.dumps({k: getattr(self, k) for k in RECIPE_KEYS}))

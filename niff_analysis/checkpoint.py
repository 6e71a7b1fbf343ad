"""Self-describing checkpoints: ``config.json`` + ``model.safetensors`` in a directory, or a
single ``.safetensors`` file carrying the same config in its metadata.

``config.json`` records everything needed to rebuild the model (registry name and keyword
arguments), the feature-map size of every NIFF layer, and the training provenance (dataset,
recipe, seed, final test accuracy, versions). Training state for ``--resume`` lives apart, in
``train_state.pt``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save, save_file  # noqa: F401
from torch import nn

from . import __version__
from .errors import CheckpointError, NiffError
from .io import atomic_write, file_sha256
from .models import create_model, niff_layers

FORMAT = "niff-analysis-checkpoint"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
BUNDLED_DIR = Path(__file__).parent / "checkpoints"
DEFAULT_CHECKPOINT = BUNDLED_DIR / "resnet18_niff_fmnist"

PathLike = Union[str, os.PathLike]


def layer_table(model: nn.Module) -> list[dict]:
    """Per NIFF layer (filters and pointwise): name, kind, channels and feature-map size."""
    return [dict(name=n, kind=m.kind, in_channels=m.in_channels, out_channels=m.out_channels,
                 fmap=list(m.fmap) if m.fmap is not None else None)
            for n, m in niff_layers(model, include_pointwise=True)]


def model_config(model: nn.Module) -> dict:
    """The part of a checkpoint config that rebuilds ``model``."""
    cfg = getattr(model, "niff_config", None)
    if cfg is None:
        raise CheckpointError("model was not built by create_model(); it has no niff_config to save")
    kw = {k: v for k, v in cfg.items() if k != "name"}
    return dict(format=FORMAT, format_version=FORMAT_VERSION, architecture=cfg["name"],
                model_kwargs=kw, num_params=sum(p.numel() for p in model.parameters()),
                layers=layer_table(model))


def save_checkpoint(model: nn.Module, path: PathLike, **metadata) -> Path:
    """Write ``model`` as a checkpoint directory (or a single ``.safetensors`` file).

    Extra keyword arguments (dataset, recipe, epochs, seed, test_acc, …) are stored in the
    config. Both files are written atomically; the weights first, so a config never points at
    missing weights.
    """
    path = Path(path)
    config = model_config(model)
    config.update(metadata)
    config["versions"] = dict(niff_analysis=__version__, torch=torch.__version__)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        atomic_write(path, save(tensors, metadata={"niff_config": json.dumps(config)}))
        return path
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / WEIGHTS_NAME, save(tensors))
    atomic_write(path / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return path


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    return tensors, meta


def read_config(path: PathLike) -> dict:
    """The config of a checkpoint directory or single-file checkpoint, validated."""
    path = Path(path)
    if path.is_dir():
        cfg_path = path / CONFIG_NAME
        if not cfg_path.is_file():
            raise CheckpointError(f"{path}: directory holds no {CONFIG_NAME} (not a checkpoint)")
        try:
            cfg = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{cfg_path}: corrupt JSON ({exc})") from None
    elif path.suffix == ".safetensors":
        _, meta = _read_safetensors(path)
        if "niff_config" not in meta:
            raise CheckpointError(f"{path}: safetensors file carries no niff_config metadata")
        try:
            cfg = json.loads(meta["niff_config"])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: corrupt niff_config metadata ({exc})") from None
    else:
        raise CheckpointError(f"{path}: not a checkpoint directory or .safetensors file")
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(f"{path}: config is not a {FORMAT} config")
    if "architecture" not in cfg or not isinstance(cfg.get("model_kwargs"), dict):
        raise CheckpointError(f"{path}: config lacks architecture/model_kwargs")
    return cfg


def _check_finite(state: dict, path) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: weights contain NaN/Inf in {len(bad)} tensor(s), e.g. {bad[0]}")


def load_state_into(model: nn.Module, state: dict, source) -> None:
    """Load a state dict strictly, turning key/shape mismatches into a one-line error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or extra or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", extra), ("wrong-shaped", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} key(s) (e.g. {keys[0]})")
        raise CheckpointError(f"{source}: state dict does not match the model: {'; '.join(parts)}")
    _check_finite(state, source)
    model.load_state_dict(state)


def load_checkpoint(path: Optional[PathLike] = None, device: str = "cpu") -> nn.Module:
    """Rebuild the exact model of a checkpoint with no other information.

    Args:
        path: checkpoint directory or ``.safetensors`` file; ``None`` is the bundled default.
        device: ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``.

    Returns:
        The model in eval mode; ``model.niff_checkpoint`` holds the config plus ``path`` and
        ``sha256`` of the weights.

    Raises:
        CheckpointError: missing, corrupt, foreign, inconsistent or non-finite checkpoints.
    """
    from .models.registry import UnknownModelError

    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    cfg = read_config(path)
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    if not weights.is_file():
        raise CheckpointError(f"{path}: {WEIGHTS_NAME} is missing")
    state, _ = _read_safetensors(weights)
    try:
        model = create_model(cfg["architecture"], **cfg["model_kwargs"])
    except UnknownModelError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (TypeError, ValueError, NiffError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild {cfg['architecture']!r}: {exc}") from None
    load_state_into(model, state, path)
    recorded = {d["name"]: d.get("fmap") for d in cfg.get("layers", [])}
    for d in layer_table(model):
        if d["name"] in recorded and recorded[d["name"]] != d["fmap"]:
            raise CheckpointError(f"{path}: layer {d['name']} runs at {d['fmap']} but the checkpoint "
                                  f"records {recorded[d['name']]}")
    model.niff_checkpoint = dict(cfg, path=str(path), sha256=file_sha256(weights))
    model.eval()
    return model.to(resolve_device(device))


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → cuda, then mps, then cpu; otherwise the named device (checked to exist)."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise NiffError(f"unknown device {device!r}; choose auto, cpu, cuda or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NiffError("device cuda requested but CUDA is not available")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise NiffError("device mps requested but MPS is not available")
    return torch.device(device)

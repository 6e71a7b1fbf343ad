"""Self-describing checkpoints: ``config.json`` + ``model.safetensors`` in a directory, or a
single ``.safetensors`` file carrying the same config in its metadata. Checkpoints of the
authors' public code (``.pt``/``.pth`` dicts with the state dict under ``model``, SPEC §6)
are imported by :func:`import_reference_checkpoint`; pickles are only ever read with
``torch.load(weights_only=True)``.

``config.json`` records everything needed to rebuild the model (registry name and keyword
arguments), the feature-map size of every NIFF layer, and the training provenance (dataset,
recipe, seed, final test accuracy, versions). Training state for ``--resume`` lives apart, in
``train_state.pt``.
"""

from __future__ import annotations

import hashlib
import json
import re
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
PICKLE_SUFFIXES = (".pt", ".pth", ".pth.tar", ".ckpt")
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
    blob = save(tensors)
    # Two files cannot be replaced in one step: the config names its weights' hash, so a crash
    # between the two writes is detected on load instead of pairing new weights with an old config.
    config["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    atomic_write(path / WEIGHTS_NAME, blob)
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
        for label, keys in (("missing", missing), ("unexpected", extra)):
            if keys:
                parts.append(f"{len(keys)} {label} key(s) (e.g. {keys[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} wrong-shaped key(s) (e.g. {k}: checkpoint "
                         f"{tuple(state[k].shape)}, model {tuple(own[k].shape)})")
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
    if path.is_file() and path.name.endswith(PICKLE_SUFFIXES):
        raise CheckpointError(f"{path}: a PyTorch .pt/.pth file carries no niff-analysis config; import "
                              "it with import_reference_checkpoint(path, architecture) or "
                              "`niff-analyze import-reference PATH --model NAME --out DIR`")
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
    sha = file_sha256(weights)
    if cfg.get("weights_sha256") not in (None, sha):
        raise CheckpointError(f"{path}: {WEIGHTS_NAME} does not match the hash its config records "
                              "(an interrupted save, or files from two checkpoints)")
    model.niff_checkpoint = dict(cfg, path=str(path), sha256=sha)
    model.eval()
    return model.to(resolve_device(device))


def initial_model(architecture: str, model_kwargs: dict, seed: int) -> nn.Module:
    """The model a training run with this seed starts from (what its ``init/`` checkpoint holds).

    The global RNG is seeded for the build and restored afterwards, so the caller's state is
    untouched and the result depends only on the arguments.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(architecture, **model_kwargs)


def load_initial(path: Optional[PathLike] = None, device: str = "cpu") -> Optional[nn.Module]:
    """The untrained model a trained checkpoint's run started from, or ``None`` if unknown.

    The run folder's ``init/`` checkpoint when there is one (also for ``epoch_NNN/`` checkpoints
    inside a run folder); otherwise the model rebuilt from the architecture, keyword arguments
    and seed that a checkpoint of the trainer records (the trainer builds its model the same
    way, :func:`initial_model`). ``None`` for an initialisation itself and for checkpoints
    that record no training run (imported, or saved by hand).
    """
    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    cfg = read_config(path)
    if not cfg.get("epochs"):
        return None
    folder = path if path.is_dir() else path.parent
    for run in (folder, folder.parent):
        if (run / "init" / CONFIG_NAME).is_file() and (run / "init").resolve() != folder.resolve():
            return load_checkpoint(run / "init", device=device)
    if cfg.get("seed") is None or "recipe" not in cfg:
        return None
    model = initial_model(cfg["architecture"], cfg["model_kwargs"], int(cfg["seed"]))
    model.niff_checkpoint = dict(cfg, path=f"{path} (initialisation rebuilt from seed {cfg['seed']})",
                                 sha256=None, epochs=0, test_acc=None, test_loss=None)
    return model.eval().to(resolve_device(device))


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


# --------------------------------------------------------------------------- reference import
def read_torch_pickle(path: PathLike):
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never code.

    ``argparse.Namespace`` is also allowed (the reference training script stores its arguments
    as one); it only carries attributes.

    Raises:
        CheckpointError: unreadable file or one that needs arbitrary unpickling.
    """
    import argparse

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure is one line for the user
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch colours its message
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            raise CheckpointError(f"{path}: refusing to unpickle {found.group(1)}: the file holds code, "
                                  "not only tensors (read with torch.load(weights_only=True))") from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot be read with torch.load(weights_only=True) "
                              f"({first[:160]}); only tensors and plain containers are loaded") from None


def reference_key_map(model: nn.Module) -> dict[str, str]:
    """Our state-dict key → the key the authors' public code (GeJulia/NIFF) uses for it.

    Their layers: a split NIFF conv ``N`` is ``nn.Sequential(FreqConv_DW_fft, FreqConv_1x1_ifft)``,
    so its MLPs are ``N.0.mlp_real.layer_mpl{k}`` / ``N.0.mlp_imag.layer_mpl{k}`` (1×1 Conv2d,
    weights (out, in, 1, 1)) and its channel mixing ``N.1.mlp`` (a bias-free ``nn.Linear``); a
    depthwise NIFF ``N`` has ``N.mlp_real`` / ``N.mlp_imag``; a frequency 1×1 ``N`` is ``N.mlp``.
    Every other key (stems, BatchNorm, classifier) is the torchvision name in both.
    """
    from .layers import DepthwiseNIFF, FreqPointwise, FullNIFF, SplitNIFF

    mapping: dict[str, str] = {}
    inside_split: set[str] = set()
    for name, m in model.named_modules():
        if isinstance(m, FullNIFF):
            raise CheckpointError(f"layer {name} is a full NIFF layer; the reference code has none to import")
        if isinstance(m, DepthwiseNIFF):
            base = f"{name}.0" if isinstance(m, SplitNIFF) else name
            for ours, theirs in (("real", "mlp_real"), ("imag", "mlp_imag")):
                linears = [i for i, layer in enumerate(getattr(m, ours)) if isinstance(layer, nn.Linear)]
                for k, i in enumerate(linears, 1):
                    for p in ("weight", "bias"):
                        mapping[f"{name}.{ours}.{i}.{p}"] = f"{base}.{theirs}.layer_mpl{k}.{p}"
            if isinstance(m, SplitNIFF):
                mapping[f"{name}.pointwise.weight"] = f"{name}.1.mlp.weight"
                inside_split.add(f"{name}.pointwise")
        elif isinstance(m, FreqPointwise) and name not in inside_split:
            mapping[f"{name}.weight"] = f"{name}.mlp.weight"
    for key in model.state_dict():
        mapping.setdefault(key, key)
    return mapping


def _reference_to_ours(model: nn.Module, state: dict) -> None:
    """Rewrite the NIFF tensors of a mapped reference state dict so our layers compute exactly
    what theirs did. Two differences of their forward pass are folded into the weights:

    * Grid: their axis of odd length N holds ``arange(-N/2, N/2)`` (half-integers), ours the
      integers −(N−1)/2 … (N−1)/2 (SPEC §2), i.e. theirs = ours − 1/2. The first MLP layer is
      affine, so W·(c − s) + b = W·c + (b − W·s): subtracting W·s from its bias is exact.
    * Channel order: they call ``fftshift``/``ifftshift`` without ``dim``, which also rolls the
      batch and channel axes. The batch roll cancels, but their filter (MLP output) k and
      their 1×1 weight [o, i] act on our input channel c = k − Cin//2 and output channel
      o − Cout//2 (mod C). Rolling those rows/columns back is a pure permutation.
    """
    from .layers import DepthwiseNIFF, SplitNIFF

    for name, m in model.named_modules():
        if not isinstance(m, DepthwiseNIFF):
            continue
        cin = m.in_channels
        for ours in ("real", "imag"):
            idx = [i for i, layer in enumerate(getattr(m, ours)) if isinstance(layer, nn.Linear)]
            for p in ("weight", "bias"):
                key = f"{name}.{ours}.{idx[-1]}.{p}"
                state[key] = torch.roll(state[key], -(cin // 2), dims=0)
            if m.fmap is not None:
                h, w = m.filter_size()
                # grid column 0 is the horizontal frequency (along W), column 1 the vertical one.
                shift = torch.tensor([0.5 * (w % 2), 0.5 * (h % 2)], dtype=torch.float64)
                wkey, bkey = f"{name}.{ours}.{idx[0]}.weight", f"{name}.{ours}.{idx[0]}.bias"
                state[bkey] = (state[bkey].double() - state[wkey].double() @ shift).to(state[bkey].dtype)
        if isinstance(m, SplitNIFF):
            key = f"{name}.pointwise.weight"
            state[key] = torch.roll(state[key], (-(m.out_channels // 2), -(cin // 2)), dims=(0, 1))


def import_reference_checkpoint(path: PathLike, architecture: str, key: str = "model",
                                **model_kwargs) -> nn.Module:
    """Load a checkpoint of the authors' public code into our model of the same architecture.

    Args:
        path: ``.pt``/``.pth`` file: a dict with the state dict under ``key`` (their training
            script's format), or a bare state dict. Read with ``weights_only=True``; a
            ``module.`` prefix (saved from DDP) is stripped.
        architecture: registered model name, e.g. ``"resnet18_niff"``.
        key: dict entry that holds the state dict (``"model"``; ``"model_ema"`` for EMA weights).
        **model_kwargs: :func:`~niff_analysis.models.create_model` arguments (num_classes, …)
            matching the checkpoint; their ImageNet models are the defaults.

    Returns:
        The model in eval mode, ``model.niff_checkpoint`` describing it and its source; save it
        in our format with :func:`save_checkpoint`.

    Raises:
        CheckpointError: unreadable file, no state dict, keys or shapes that do not match.
    """
    from .models.registry import UnknownModelError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    obj = read_torch_pickle(path)
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
        theirs = obj[key]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        theirs = obj
    else:
        found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: no state dict under {key!r} (found {found})")
    theirs = {k[len("module."):] if k.startswith("module.") else k: v
              for k, v in theirs.items() if isinstance(v, torch.Tensor)}
    try:
        model = create_model(architecture, **model_kwargs)
    except UnknownModelError as exc:
        raise CheckpointError(str(exc)) from None
    except (TypeError, ValueError, NiffError) as exc:
        raise CheckpointError(f"cannot build {architecture!r}: {exc}") from None
    own = model.state_dict()
    mapping = reference_key_map(model)
    missing = [f"{src} (for {ours})" for ours, src in mapping.items() if src not in theirs]
    unexpected = sorted(set(theirs) - set(mapping.values()))
    wrong = [src for ours, src in mapping.items() if src in theirs and theirs[src].numel() != own[ours].numel()]
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {label} (e.g. {v[0]})" for label, v in
                 (("missing key(s)", missing), ("unexpected key(s)", unexpected),
                  ("wrong-sized tensor(s)", wrong)) if v]
        raise CheckpointError(f"{path}: not a reference checkpoint of {architecture} with these "
                              f"settings: {'; '.join(parts)}")
    state = {ours: theirs[src].reshape(own[ours].shape).to(own[ours].dtype) for ours, src in mapping.items()}
    _reference_to_ours(model, state)
    load_state_into(model, state, path)
    model.niff_checkpoint = dict(model_config(model), path=str(path), sha256=file_sha256(path),
                                 imported_from="GeJulia/NIFF reference checkpoint")
    model.eval()
    return model

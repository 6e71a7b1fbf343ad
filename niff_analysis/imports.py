"""Bring foreign checkpoints in: plain state dicts of any model we can build, and checkpoints of
the authors' public NIFF code (GeJulia/NIFF, SPEC §6). Pickles are only ever read with
``torch.load(weights_only=True)``; save the result with
:func:`~niff_analysis.checkpoint.save_checkpoint`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ._types import PathLike
from .checkpoint import CheckpointConfig, load_state_into, model_config, rebuild_model, torch_load_reason
from .errors import CheckpointError
from .io import file_sha256


def read_torch_pickle(path: PathLike):
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never code.

    ``argparse.Namespace`` is also allowed (the reference training script stores its arguments
    as one); it only carries attributes.

    Raises:
        CheckpointError: unreadable file or one that needs arbitrary unpickling.
    """
    import argparse
    import warnings

    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols on stderr
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure is one line for the user
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch colours its message
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            raise CheckpointError(
                f"{path}: refusing to unpickle {found.group(1)}: the file holds code, "
                "not only tensors (read with torch.load(weights_only=True))"
            ) from None
        raise CheckpointError(
            f"{path}: cannot be read with torch.load(weights_only=True) "
            f"({torch_load_reason(exc)}); only tensors and plain containers are loaded"
        ) from None


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


STATE_KEYS = ("state_dict", "model", "model_state_dict", "model_ema", "module", "net")
_REFERENCE_MLP = re.compile(r"^(.*)\.mlp_real\.layer_mpl(\d+)\.weight$")


def read_state_dict(path: PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a state dict saved in a file, ``module.`` prefixes (DDP) stripped.

    Args:
        path: ``.safetensors``, or a pickle (``.pt``/``.pth``/``.bin``/``.ckpt``) read with
            ``weights_only=True``: a bare state dict, or a dict holding one.
        key: the dict entry holding the state dict; by default the first of
            :data:`STATE_KEYS` that holds one, else the file itself.

    Raises:
        CheckpointError: unreadable file, code in the pickle, or no state dict found.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from .checkpoint import read_safetensors

        obj, _ = read_safetensors(path)
    else:
        obj = read_torch_pickle(path)

    def tensors_only(d):
        return isinstance(d, dict) and d and all(isinstance(v, torch.Tensor) for v in d.values())

    if key is not None:
        if not isinstance(obj, dict) or not isinstance(obj.get(key), dict):
            found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"{path}: no state dict under {key!r} (found {found})")
        state = obj[key]
    elif tensors_only(obj):
        state = obj
    else:
        state = next((obj[k] for k in STATE_KEYS if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
        if state is None:
            found = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(
                f"{path}: no state dict found (looked for a bare one and under "
                f"{', '.join(STATE_KEYS)}; found {found}); name it with --key"
            )
    return {
        k[len("module.") :] if k.startswith("module.") else k: v
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
    }


def is_reference_state(state: dict) -> bool:
    """Whether a state dict has the authors' NIFF layout (``….mlp_real.layer_mpl1.weight``)."""
    return any(_REFERENCE_MLP.match(k) for k in state)


def reference_mlp(state: dict) -> dict | None:
    """The MLP of a reference state dict, read from its tensor shapes: the hidden sizes of the
    first NIFF layer's real MLP (their code uses one MLP shape throughout, SiLU between layers)."""
    layers: dict[str, dict[int, torch.Tensor]] = {}
    for k, v in state.items():
        m = _REFERENCE_MLP.match(k)
        if m:
            layers.setdefault(m[1], {})[int(m[2])] = v
    if not layers:
        return None
    first = layers[sorted(layers)[0]]
    hidden = [int(first[i].shape[0]) for i in sorted(first)][:-1]
    return dict(hidden=hidden, activation="silu")


def _reference_fit(model: nn.Module, theirs: dict) -> tuple[dict, list, list, list]:
    own = model.state_dict()
    mapping = reference_key_map(model)
    missing = [f"{src} (for {ours})" for ours, src in mapping.items() if src not in theirs]
    unexpected = sorted(set(theirs) - set(mapping.values()))
    wrong = [src for ours, src in mapping.items() if src in theirs and theirs[src].numel() != own[ours].numel()]
    return mapping, missing, unexpected, wrong


def import_reference_checkpoint(path: PathLike, architecture: str, key: str = "model", **model_kwargs) -> nn.Module:
    """Load a checkpoint of the authors' public code into our model of the same architecture.

    Their MLP sizes are read from the tensor shapes unless ``mlp`` is given, and NIFF on 1×1
    maps (their ResNet-18 at 32×32) is chosen when their keys have it.

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
    path = Path(path)
    theirs = read_state_dict(path, None if key == "model" else key)  # "model" is looked for anyway
    return _from_reference_state(path, theirs, architecture, model_kwargs)


def _from_reference_state(path: Path, theirs: dict, architecture: str, model_kwargs: dict) -> nn.Module:
    kwargs = dict(model_kwargs)
    if kwargs.get("mlp") is None and reference_mlp(theirs) is not None:
        kwargs["mlp"] = reference_mlp(theirs)
    model = rebuild_model(path, architecture, kwargs, None)
    mapping, missing, unexpected, wrong = _reference_fit(model, theirs)
    if any(_REFERENCE_MLP.match(k) for k in unexpected) and not kwargs.get("niff_on_1x1"):
        retry = rebuild_model(path, architecture, dict(kwargs, niff_on_1x1=True), None)
        fit = _reference_fit(retry, theirs)
        if not any(fit[1:]):
            model, (mapping, missing, unexpected, wrong) = retry, fit
    if missing or unexpected or wrong:
        parts = [
            f"{len(v)} {label} (e.g. {v[0]})"
            for label, v in (
                ("missing key(s)", missing),
                ("unexpected key(s)", unexpected),
                ("wrong-sized tensor(s)", wrong),
            )
            if v
        ]
        raise CheckpointError(
            f"{path}: not a reference checkpoint of {architecture} with these settings: {'; '.join(parts)}"
        )
    own = model.state_dict()
    state = {ours: theirs[src].reshape(own[ours].shape).to(own[ours].dtype) for ours, src in mapping.items()}
    _reference_to_ours(model, state)
    load_state_into(model, state, path)
    labelled = CheckpointConfig.of(
        dict(model_config(model), imported_from="GeJulia/NIFF reference checkpoint"),
        path=str(path),
        sha256=file_sha256(path),
    )
    model.niff_checkpoint = labelled  # type: ignore[assignment]  # nn.Module.__setattr__ is typed for tensors and modules only
    model.eval()
    return model


def import_state_dict(
    path: PathLike, architecture: str, key: str | None = None, factory: str | None = None, **model_kwargs
) -> nn.Module:
    """Load a state dict saved by anyone into the model it belongs to.

    Args:
        path: the file (see :func:`read_state_dict`).
        architecture: a registered name (``resnet18``, ``resnet18_niff``, ``convnext_tiny``, …)
            or a builder (``torchvision:NAME``, ``package.module:function``; see
            :func:`~niff_analysis.models.build_model`).
        key: dict entry holding the state dict (default: found automatically).
        factory: for a ``package.module:function`` builder, the same string: you agree to run it.
        **model_kwargs: arguments of :func:`~niff_analysis.models.create_model`, or for a
            builder ``builder_kwargs``, ``input_size``, ``in_chans``, ``niff``.

    A state dict of the authors' NIFF code is recognised by its keys and imported by
    :func:`import_reference_checkpoint`'s rules.

    Raises:
        CheckpointError: unreadable file, no state dict, a model that cannot be built, or keys
            and shapes that do not match it.
    """
    path = Path(path)
    state = read_state_dict(path, key)
    if is_reference_state(state):
        return _from_reference_state(path, state, architecture, model_kwargs)
    model = rebuild_model(path, architecture, model_kwargs, factory)
    has_mlps = any(".real." in k for k in state)
    if has_mlps != any(".real." in k for k in model.state_dict()):
        hint = (
            "the weights are of a NIFF model, the model built is not"
            if has_mlps
            else "the model built is a NIFF model, the weights are not"
        )
        fix = (
            "--niff split|full (torchvision/factory) or a *_niff name"
            if has_mlps
            else "the plain model name or no --niff"
        )
        raise CheckpointError(f"{path}: {hint}; use {fix}")
    load_state_into(model, state, path)
    labelled = CheckpointConfig.of(
        dict(model_config(model), imported_from=f"state dict ({path.name})"), path=str(path), sha256=file_sha256(path)
    )
    model.niff_checkpoint = labelled  # type: ignore[assignment]  # nn.Module.__setattr__ is typed for tensors and modules only
    model.eval()
    return model

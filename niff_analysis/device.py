"""Where models run: the one rule that turns a device name into a ``torch.device``."""

from __future__ import annotations

import torch

from .errors import NiffError


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

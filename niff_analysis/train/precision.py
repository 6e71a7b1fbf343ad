"""What a training step computes in (``--precision``): float32, or bf16 autocast on the CPU or a GPU.

* ``auto`` (default): float32 on the CPU (and MPS); on CUDA the ``amp`` setting decides, as it
  always has: bf16 autocast where the GPU supports bf16, float16 with loss scaling where not,
  float32 with ``--no-amp``.
* ``fp32``: no autocast anywhere.
* ``bf16``: bf16 autocast on a CPU with native bf16 instructions (x86 ``avx512_bf16`` or
  ``amx_bf16``, Arm ``bf16``) or a CUDA GPU that supports it; refused elsewhere, since emulated
  bf16 is slower than float32 and the run would only lose precision.

Autocast runs convolutions, linears and matmuls in the lower precision; the NIFF layers switch
it off around their FFTs and frequency MLPs, which stay in float32 (cuFFT in half precision
supports only power-of-two sizes). The weights, the optimizer, the loss and the evaluation stay
in float32.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass

import torch

from ..errors import NiffError

PRECISIONS = ("auto", "fp32", "bf16")
# /proc/cpuinfo flags of native bf16 arithmetic: x86 (AVX512-BF16, AMX-BF16) and Arm (FEAT_BF16).
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The CPU's native bf16 instruction-set flags, e.g. ``["avx512_bf16"]``; [] when it has none.

    Read from ``/proc/cpuinfo`` (the ``flags`` line on x86, ``Features`` on Arm); where that file
    is missing, torch's own AVX512-BF16 and AMX probes answer.

    Args:
        cpuinfo: the text of /proc/cpuinfo (tests pass their own); None reads the file.
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            present = set(value.split())
            return [f for f in BF16_FLAGS if f in present]
    found = []
    probes = (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx_bf16", "_is_amx_tile_supported"))
    for flag, probe in probes:  # no /proc/cpuinfo (e.g. macOS): torch's x86 probes
        fn = getattr(torch.cpu, probe, None)
        if fn is not None and fn():
            found.append(flag)
    return found


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@dataclass(frozen=True)
class Precision:
    """A resolved precision: its name, the autocast dtype (None: no autocast), loss scaling."""

    name: str
    autocast: torch.dtype | None = None
    loss_scaling: bool = False

    def context(self, device: torch.device):
        """The autocast context of a training step's forward pass on ``device``."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast)


def resolve_precision(precision: str, amp: bool, device: torch.device, dtype: torch.dtype) -> Precision:
    """What ``--precision`` means for a run on ``device`` with parameters of ``dtype``.

    Raises:
        NiffError: bf16 asked for where it is not native (a CPU without bf16 instructions, a
            GPU without bf16, MPS), or with float64 parameters; an unknown name.
    """
    if precision not in PRECISIONS:
        raise NiffError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if dtype != torch.float32:
        if precision == "bf16":
            raise NiffError(f"--precision bf16 autocasts float32 parameters; this run has {dtype}")
        return Precision("fp64" if dtype == torch.float64 else str(dtype).replace("torch.", ""))
    if precision == "fp32":
        return Precision("fp32")
    if precision == "bf16":
        if device.type == "cpu":
            if not cpu_bf16_flags():
                raise NiffError(
                    f"--precision bf16: this CPU ({cpu_model()}) has no native bf16 "
                    f"instructions ({', '.join(BF16_FLAGS)}); use --precision fp32"
                )
        elif device.type == "cuda":
            if not torch.cuda.is_bf16_supported():
                raise NiffError(
                    f"--precision bf16: {torch.cuda.get_device_name(device)} does not "
                    "support bf16; use --precision auto (float16 with loss scaling) or fp32"
                )
        else:
            raise NiffError(f"--precision bf16 runs on the CPU or a CUDA GPU, not on {device.type}")
        return Precision("bf16", torch.bfloat16)
    if device.type == "cuda" and amp:  # auto: the amp setting, as before --precision existed
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", torch.bfloat16)
        return Precision("fp16", torch.float16, loss_scaling=True)  # fp16 gradients underflow unscaled
    return Precision("fp32")

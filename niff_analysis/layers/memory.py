"""The glibc allocator setting that CPU training with NIFF layers needs.

A CPU training step allocates and frees many tensors of tens of MB. By default glibc serves
each request above its mmap threshold (at most 32 MB) with fresh ``mmap`` pages and unmaps them
on free, so every step pays the page faults again. A NIFF layer allocates more such buffers than
a 3×3 convolution (the spectrum, the filtered spectrum, the FFTs' work arrays), and measured on
2 cores at batch 128, 32×32, resnet18_niff paid 1.8× for it and resnet18 1.15×
(``benchmarks/README.md``). :func:`keep_freed_memory` asks glibc to keep freed memory for reuse.

The NIFF layers apply it themselves on their first forward pass on the CPU
(:func:`ensure_freed_memory_kept`), so a user's own training loop runs as fast as the toolkit's
trainer. The setting is process-wide: it only raises the memory that stays mapped (the peak of a
step, a few GB at most). Set the environment variable ``NIFF_KEEP_FREED_MEMORY=0`` before the
first forward pass to leave the allocator alone (the trainer honours it too).
"""

from __future__ import annotations

import ctypes
import os

ENV_VAR = "NIFF_KEEP_FREED_MEMORY"
_OFF = ("0", "false", "no", "off")

_decided: bool | None = None  # None until the first call in this process


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of handing it back to the OS.

    Measured here (2 cores, batch 128, 32×32, 10 resnet18_niff training steps) the trainer's run
    took 66 s with 41 s of system time before and 42 s after (benchmarks/README.md).

    Returns:
        Whether the allocator was changed (False off glibc, e.g. macOS, Windows or musl).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        # M_MMAP_MAX = -4: never serve a request with its own mmap; M_TRIM_THRESHOLD = -1:
        # do not return the top of the heap unless 2 GB or more are free there.
        return bool(libc.mallopt(-4, 0)) and bool(libc.mallopt(-1, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def opted_out() -> bool:
    """Whether ``NIFF_KEEP_FREED_MEMORY`` asks to leave the allocator alone (0, false, no, off)."""
    return os.environ.get(ENV_VAR, "").strip().lower() in _OFF


def ensure_freed_memory_kept() -> bool:
    """Apply :func:`keep_freed_memory` once per process unless the user opted out.

    Called by every NIFF layer's CPU forward pass and by the trainer; after the first call it
    only returns the first call's answer.

    Returns:
        Whether the setting is in force (False when opted out or not on glibc).
    """
    global _decided
    if _decided is None:
        _decided = False if opted_out() else keep_freed_memory()
    return _decided

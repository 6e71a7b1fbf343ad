"""Benchmark 1: one depthwise frequency-filter layer, forward + backward.

Contenders, all with C filters as large as the H×W map except the 3×3 conv:

* ``ours``: :class:`~niff_analysis.layers.DepthwiseNIFF` (``big`` MLP, rfft2 on the Hermitian
  part of the MLP filter, training mode);
* ``reference``: the straightforward formulation (complex ``fft2``, ``fftshift``, the same MLPs
  evaluated every call, ``ifftshift``, ``ifft2``, real part), written here;
* ``lower_bound``: a global filter, ``rfft2`` times complex weights stored directly, ``irfft2``
  (what ours costs without the MLP);
* ``conv3x3``: a 3×3 depthwise conv;
* ``fmap_conv``: a depthwise spatial conv with a kernel as large as the map, circular padding.
  Its cost is exactly linear in the batch and at (32, 64, 56) one call takes minutes on two
  CPU cores, so it runs on 1/8 of the batch and its time is scaled by the batch ratio
  (column ``fmap_conv_batch``).

Targets: ours ≤ 1.15× lower_bound, reference ≥ 2× ours, fmap_conv ≥ 10× ours.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from niff_analysis.analysis.cost import circular_same_conv, median_ms, time_interleaved
from niff_analysis.layers import DepthwiseNIFF, build_mlp, frequency_grid

from . import show, verdict

CONFIGS = ((32, 64, 56), (128, 64, 32), (32, 256, 14))  # (batch, channels, size)
QUICK_DIVISOR = 8  # --quick divides the batch by this
FMAP_DIVISOR = 8  # the fmap-sized conv runs on batch / this, its time scaled back up


class ReferenceNIFF(nn.Module):
    """Straightforward NIFF: complex fft2 of the real input, centred product, ifft2, real part."""

    def __init__(self, channels: int, mlp_config):
        super().__init__()
        self.real = build_mlp(mlp_config, channels)
        self.imag = build_mlp(mlp_config, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        grid = frequency_grid(h, w, device=x.device)
        filt = torch.complex(self.real(grid).T.reshape(-1, h, w), self.imag(grid).T.reshape(-1, h, w))
        spec = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
        return torch.fft.ifft2(torch.fft.ifftshift(spec * filt, dim=(-2, -1))).real


class GlobalFilter(nn.Module):
    """Lower bound: complex rfft2-domain weights stored directly (no MLP, no symmetrisation)."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, size, size // 2 + 1, dtype=torch.cfloat))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(x) * self.weight, s=x.shape[-2:])


class FmapConv(nn.Module):
    """Depthwise spatial conv with a feature-map-sized kernel and circular padding."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, 1, size, size) / size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return circular_same_conv(x, self.weight)


def contenders(channels: int, size: int, device: torch.device) -> dict[str, nn.Module]:
    """The five layers, the reference sharing ours' MLP weights (so their outputs agree)."""
    ours = DepthwiseNIFF(channels, mlp="big")
    ref = ReferenceNIFF(channels, ours.mlp_config)
    ref.load_state_dict({k: v for k, v in ours.state_dict().items() if k.startswith(("real.", "imag."))})
    layers = dict(
        ours=ours,
        reference=ref,
        lower_bound=GlobalFilter(channels, size),
        conv3x3=nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
        fmap_conv=FmapConv(channels, size),
    )
    return {k: m.to(device).train() for k, m in layers.items()}


def _step(layer: nn.Module, x: torch.Tensor):
    def fn():
        for p in layer.parameters():
            p.grad = None
        x.grad = None
        layer(x).sum().backward()

    return fn


def run(
    quick: bool = False, device: torch.device = torch.device("cpu"), repeats: int | None = None, configs=CONFIGS
) -> pd.DataFrame:
    """Time all contenders per configuration; return one row per configuration (ms and ratios)."""
    repeats = repeats or (3 if quick else 7)
    rows = []
    for batch, channels, size in configs:
        if quick:
            batch = max(1, batch // QUICK_DIVISOR)
        torch.manual_seed(0)
        layers = contenders(channels, size, device)
        x = torch.randn(batch, channels, size, size, device=device, requires_grad=True)
        with torch.no_grad():  # sanity: ours and the reference compute the same filter
            err = (layers["ours"](x) - layers["reference"](x)).abs().max().item()
        fmap_batch = max(1, batch // FMAP_DIVISOR)
        x_small = x[:fmap_batch].detach().clone().requires_grad_(True)
        fns = {name: _step(layer, x_small if name == "fmap_conv" else x) for name, layer in layers.items()}
        times = time_interleaved(fns, repeats=repeats, warmup=1, device=device, max_seconds=2.0 if quick else 10.0)
        ms = {name: median_ms(t) for name, t in times.items()}
        ms["fmap_conv"] *= batch / fmap_batch
        rows.append(
            dict(
                batch=batch,
                channels=channels,
                size=size,
                **{f"{k}_ms": v for k, v in ms.items()},
                fmap_conv_batch=fmap_batch,
                ours_over_lower_bound=ms["ours"] / ms["lower_bound"],
                reference_over_ours=ms["reference"] / ms["ours"],
                fmap_conv_over_ours=ms["fmap_conv"] / ms["ours"],
                ours_over_conv3x3=ms["ours"] / ms["conv3x3"],
                max_abs_diff_vs_reference=err,
            )
        )
    frame = pd.DataFrame(rows)
    show(f"layer: depthwise filter, forward+backward on {device}", frame)
    for r in frame.itertuples():
        cfg = f"({r.batch}, {r.channels}, {r.size})"
        print(
            f"  {cfg}: ours/lower_bound {r.ours_over_lower_bound:.2f} (target <= 1.15: "
            f"{verdict(r.ours_over_lower_bound, 1.15)}); reference/ours {r.reference_over_ours:.2f} "
            f"(>= 2: {verdict(r.reference_over_ours, 2, False)}); fmap_conv/ours "
            f"{r.fmap_conv_over_ours:.1f} (>= 10: {verdict(r.fmap_conv_over_ours, 10, False)})"
        )
    return frame

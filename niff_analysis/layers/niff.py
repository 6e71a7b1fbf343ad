"""Neural Implicit Frequency Filter layers (SPEC §2).

Every layer here filters a real feature map with a filter as large as the map. The filter is
never stored: two coordinate MLPs (``real``, ``imag``) produce it on the centred integer
frequency grid of whatever size the input has. The forward pass uses ``rfft2``/``irfft2`` on
the Hermitian part of the filter, which gives exactly the result of the complex ``fft2``
formulation (for real inputs only the Hermitian part matters) at about half the FFT cost.

Layer kinds: :class:`DepthwiseNIFF`, :class:`SplitNIFF` (depthwise NIFF + 1×1, the paper's
default), :class:`FullNIFF` (Cin·Cout filters, Eq. 3–5) and :class:`FreqPointwise` (bias-free
1×1 channel mixing, exact in either domain).

Convolution modes (the paper's ablations): ``"circular"`` (default, Eq. 1), ``"linear"``
(input and spatial kernel zero-padded to 2H×2W, Appendix D) and ``"pad-zero"``,
``"pad-reflect"``, ``"pad-circular"`` (input padded by its own size to 2H×2W, filtered with a
2H×2W filter, centre cropped, Appendix G).

On the CPU the first forward pass of any NIFF layer sets glibc's allocator to keep freed memory
(:mod:`niff_analysis.layers.memory`; ``NIFF_KEEP_FREED_MEMORY=0`` opts out): without it every
training step page-faults its large FFT buffers in afresh.
"""

from __future__ import annotations

import warnings
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .._types import Size, SizeLike, as_hw
from . import memory
from .mlp import MLPSpec, build_mlp, resolve_mlp

CONV_MODES = ("circular", "linear", "pad-zero", "pad-reflect", "pad-circular")


# --------------------------------------------------------------------------- grids and FFTs
_GRID_CACHE: dict[tuple, torch.Tensor] = {}


def centred_frequencies(n: int) -> torch.Tensor:
    """The n integer DFT frequencies of one axis, DC in the middle: fftshift(fftfreq(n, 1/n))."""
    return torch.fft.fftshift(torch.fft.fftfreq(n, 1.0 / n, dtype=torch.float64))


def frequency_grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Centred coordinate grid of shape (h·w, 2), row-major over (row, column).

    Column 0 is the horizontal frequency u (varies along W), column 1 the vertical frequency v.
    Cached per (h, w, device, dtype); it is never a parameter or buffer, so it cannot go stale
    after ``.to()`` and never enters a state dict.
    """
    key = (int(h), int(w), str(torch.device(device) if device is not None else "cpu"), dtype)
    grid = _GRID_CACHE.get(key)
    if grid is None:
        # A grid made under inference_mode could not be saved for backward later.
        with torch.inference_mode(False), torch.no_grad():
            v, u = torch.meshgrid(centred_frequencies(h), centred_frequencies(w), indexing="ij")
            grid = torch.stack([u, v], dim=-1).reshape(-1, 2).to(device=device, dtype=dtype)
        _GRID_CACHE[key] = grid
    return grid


def centred_to_kernel(w_centred: torch.Tensor) -> torch.Tensor:
    """Centred frequency response → centred real spatial kernel (SPEC §4).

    k = fftshift(real(ifft2(ifftshift(W)))); the centre pixel (H//2, W//2) is the origin.
    """
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(w_centred, dim=dims)).real, dim=dims)


def kernel_to_centred(kernel: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`centred_to_kernel`: centred spatial kernel → centred frequency response."""
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(kernel, dim=dims)), dim=dims)


def hermitian_half(w_uncentred: torch.Tensor) -> torch.Tensor:
    """Hermitian part (W(f) + conj(W(−f)))/2 on the rfft half-plane, shape (..., H, W//2+1)."""
    w_neg = torch.roll(torch.flip(w_uncentred, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    half = w_uncentred.shape[-1] // 2 + 1
    return 0.5 * (w_uncentred[..., :half] + w_neg[..., :half].conj())


_INDEX_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _half_plane_indices(h: int, w: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the centred (h·w, 2) grid holding f and −f for each rfft2 bin f.

    For uncentred DFT indices (i, j), j ≤ w//2, ``pos`` is the centred row of (i, j) and ``neg``
    the centred row of (−i mod h, −j mod w); ifftshift maps uncentred index i to centred
    (i + h//2) mod h. Cached per (h, w, device).
    """
    key = (int(h), int(w), str(torch.device(device) if device is not None else "cpu"))
    idx = _INDEX_CACHE.get(key)
    if idx is None:
        with torch.inference_mode(False):
            i = torch.arange(h).unsqueeze(1)
            j = torch.arange(w // 2 + 1).unsqueeze(0)
            pos = ((i + h // 2) % h) * w + (j + w // 2) % w
            neg = ((-i) % h + h // 2) % h * w + ((-j) % w + w // 2) % w
            idx = (pos.reshape(-1).to(device), neg.reshape(-1).to(device))
        _INDEX_CACHE[key] = idx
    return idx


_MPS_WARNED = False


def _fft_call(fn, x: torch.Tensor, **kw) -> torch.Tensor:
    """Run an FFT, falling back to the CPU (once warned) where the device lacks the op."""
    global _MPS_WARNED
    if x.device.type != "mps":
        return fn(x, **kw)
    try:
        return fn(x, **kw)
    except (RuntimeError, NotImplementedError):  # pragma: no cover - needs an MPS device
        if not _MPS_WARNED:
            # No stacklevel: the caller is torch's module machinery, so this line is the useful place.
            warnings.warn("FFT not available on MPS for this op; running it on the CPU", RuntimeWarning)  # noqa: B028
            _MPS_WARNED = True
        return fn(x.cpu(), **kw).to(x.device)


class _HermitianFilter(torch.autograd.Function):
    """``irfft2(rfft2(x) * filt, s)`` with a backward pass of two half-plane FFTs.

    ``filt`` must be the rfft2 half-spectrum of a real kernel (Hermitian: every bin whose
    mirror −f also lies in the half-plane holds conj(filt(−f))), which :meth:`NIFFLayer._half_filters`
    guarantees. The map x ↦ y is then the circular convolution with that real kernel, whose
    adjoint has the spectrum conj(filt): the input gradient is ``irfft2(rfft2(gy) * conj(filt))``.
    Autograd's own backward of ``rfft2`` instead zero-fills a full (…, H, W) complex buffer and runs
    a full complex inverse FFT on it, and its ``irfft2`` backward copies the spectrum once more.

    The filter gradient is autograd's, bit for bit: ``rfft2(gy)/(H·W)`` times conj(rfft2(x)),
    summed to the filter's shape, with the bins counted twice whose mirror lies outside the
    half-plane (columns 1 … W − W//2 − 1). The input gradient equals autograd's up to rounding
    (its relative difference was 1.4e-7 in float32; ``tests/test_layer_perf.py`` checks it).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, filt: torch.Tensor, size: Size) -> torch.Tensor:
        spec = _fft_call(torch.fft.rfft2, x)
        y = _fft_call(torch.fft.irfft2, spec * filt, s=size)
        # The spectrum is kept only for the filter's gradient (absent for frozen filters); x too,
        # to recompute it with a graph when a double backward needs one.
        keep = ctx.needs_input_grad[1]
        ctx.save_for_backward(x if keep else None, spec if keep else None, filt)
        ctx.size = size
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, spec, filt = ctx.saved_tensors
        if spec is not None and torch.is_grad_enabled():  # create_graph: the filter gradient's
            spec = _fft_call(torch.fft.rfft2, x)  # dependence on x must be recorded too
        # norm="forward": the 1/(H·W) of irfft2's adjoint, applied inside the FFT as autograd does.
        g = _fft_call(torch.fft.rfft2, gy, norm="forward")
        gx = gf = None
        if ctx.needs_input_grad[1]:
            gf = (g * spec.conj()).sum_to_size(filt.shape)
            twice = ctx.size[-1] - g.shape[-1]  # bins 1 … W − (W//2 + 1) have their mirror outside
            if twice > 0:
                gf[..., 1 : 1 + twice] *= 2
        if ctx.needs_input_grad[0]:
            # In place unless a double backward records this pass (create_graph): the product above
            # saved g for its own backward then.
            prod = g * filt.conj() if torch.is_grad_enabled() else g.mul_(filt.conj())
            gx = _fft_call(torch.fft.irfft2, prod, s=ctx.size, norm="forward")
        return gx, gf, None


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # cuFFT in half precision supports only power-of-two sizes: run FFTs in float32 at least.
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- pointwise
class FreqPointwise(nn.Module):
    """Bias-free 1×1 convolution over channels, exact in the spatial or the frequency domain.

    The FFT is linear, so a real channel-mixing matrix applied to the spectrum (real and
    imaginary parts alike) equals the same matrix applied in space. ``domain`` picks where a
    standalone forward runs; :class:`SplitNIFF` calls :meth:`mix_spectrum` directly.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        groups: channel groups, as in ``nn.Conv2d``.
        channels_last: input is (N, H, W, C), as for the pointwise linears of ConvNeXt.
        domain: ``"spatial"`` (default, cheaper) or ``"frequency"``.
    """

    kind = "pointwise"

    def __init__(
        self, in_channels: int, out_channels: int, groups: int = 1, channels_last: bool = False, domain: str = "spatial"
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError("in_channels and out_channels must be divisible by groups")
        if domain not in ("spatial", "frequency"):
            raise ValueError(f"domain must be 'spatial' or 'frequency', got {domain!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.channels_last, self.domain = channels_last, domain
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, 1, 1))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Conv2d's default
        self.fmap: Size | None = None
        self.layer_name: str | None = None

    def mix_spectrum(self, spec: torch.Tensor) -> torch.Tensor:
        """Apply the channel mixing to a complex (N, C, H, W') spectrum."""
        n, c, h, wf = spec.shape
        flat = torch.view_as_real(spec).reshape(n, c, h, 2 * wf)
        out = F.conv2d(flat, self.weight.to(flat.dtype), groups=self.groups)
        return torch.view_as_complex(out.reshape(n, -1, h, wf, 2).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            if self.groups != 1:
                raise NotImplementedError("channels_last FreqPointwise supports groups=1 only")
            return F.linear(x, self.weight.flatten(1))
        if self.domain == "spatial":
            return F.conv2d(x, self.weight, groups=self.groups)
        dtype = x.dtype
        with torch.autocast(x.device.type, enabled=False):
            xc = x.to(_compute_dtype(dtype))
            spec = _fft_call(torch.fft.rfft2, xc)
            y = _fft_call(torch.fft.irfft2, self.mix_spectrum(spec), s=xc.shape[-2:])
        return y.to(dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, groups={self.groups}, "
            f"channels_last={self.channels_last}, fmap={self.fmap}"
        )


# --------------------------------------------------------------------------- NIFF base
class NIFFLayer(nn.Module):
    """The base of every NIFF filter layer (:class:`DepthwiseNIFF`, :class:`SplitNIFF`,
    :class:`FullNIFF`): the MLP pair, filter evaluation, padding modes and the FFT round trip.

    ``isinstance(m, NIFFLayer)`` is how the rest of the toolkit finds the layers whose filters
    are learned in the frequency domain (:class:`FreqPointwise` is not one: it has no filter).
    """

    kind = "base"
    # Set by every subclass (declared here so code holding a NIFFLayer can read them).
    in_channels: int
    out_channels: int

    def __init__(self, n_filters: int, mlp: MLPSpec, mode: str):
        super().__init__()
        if mode not in CONV_MODES:
            raise ValueError(f"unknown convolution mode {mode!r}; choose from {list(CONV_MODES)}")
        self.mlp_config = resolve_mlp(mlp)
        self.mode = mode
        self.n_filters = n_filters
        self.real = build_mlp(self.mlp_config, n_filters)
        self.imag = build_mlp(self.mlp_config, n_filters)
        self.fmap: Size | None = None  # feature-map size the layer runs at (set by conversion)
        self.layer_name: str | None = None
        # Eval-mode cache of the rfft2 filters: (key, snapshot of the MLP parameters, filters).
        self._filter_cache: tuple | None = None

    def _apply(self, fn, *args, **kwargs):
        self._filter_cache = None  # .to() / .half() / .cuda() make new parameter tensors
        return super()._apply(fn, *args, **kwargs)

    # ---- filter evaluation -------------------------------------------------------------
    def filter_size(self, size: SizeLike | None = None) -> Size:
        """Grid size of the learned filter for a feature map of ``size`` (default: ``fmap``)."""
        h, w = self._size(size)
        return (2 * h, 2 * w) if self.mode.startswith("pad-") else (h, w)

    def _size(self, size: SizeLike | None) -> Size:
        if size is None:
            if self.fmap is None:
                raise ValueError("this layer has no recorded feature-map size; pass size=(H, W)")
            size = self.fmap
        return as_hw(size, "feature-map size")

    def _mlp_weight(self) -> torch.Tensor:
        """The first MLP layer's weight: the device and dtype the filters are evaluated in."""
        return cast(nn.Linear, self.real[0]).weight  # build_mlp starts with a Linear

    def _mlp_response(self, h: int, w: int) -> torch.Tensor:
        """Raw MLP output on the h×w grid: complex (n_filters, h, w), centred."""
        p = self._mlp_weight()
        grid = frequency_grid(h, w, device=p.device, dtype=p.dtype)
        cdt = _compute_dtype(p.dtype)
        re = self.real(grid).to(cdt).T.reshape(-1, h, w)
        im = self.imag(grid).to(cdt).T.reshape(-1, h, w)
        return torch.complex(re, im)

    def frequency_response(self, size: SizeLike | None = None) -> torch.Tensor:
        """The learned filters W as the MLPs give them: complex, centred (DC at H//2, W//2).

        ``size`` is the feature-map size (default: the recorded ``fmap``); for the padding modes
        the filter lives on the padded 2H×2W grid. Shape (C, H, W) or (Cout, Cin, H, W).
        """
        with torch.autocast(self._mlp_weight().device.type, enabled=False):
            return self._shape_filters(self._mlp_response(*self.filter_size(size)))

    def spatial_kernels(self, size: SizeLike | None = None) -> torch.Tensor:
        """Real, centred spatial kernels k = fftshift(real(ifft2(ifftshift(W)))) (SPEC §4)."""
        return centred_to_kernel(self.frequency_response(size))

    def _shape_filters(self, w: torch.Tensor) -> torch.Tensor:
        return w

    def _half_filters(self, h: int, w: int) -> torch.Tensor:
        """Filters to multiply the rfft2 half-spectrum with, for an h×w input."""
        if self.mode == "linear":
            k = self.spatial_kernels((h, w))
            # Kernel origin (centre) to index 0 of a 2h×2w zero grid: linear, not circular, conv.
            k2 = F.pad(k, (0, w, 0, h))
            k2 = torch.roll(k2, shifts=(-(h // 2), -(w // 2)), dims=(-2, -1))
            return torch.fft.rfft2(k2)
        fh, fw = self.filter_size((h, w))
        # Same values as hermitian_half(ifftshift(W)), bit for bit, without its roll/flip
        # copies: the shift and the negation f → −f are permutations of grid points, applied
        # as index gathers along the points axis of the MLP output.
        p = self._mlp_weight()
        grid = frequency_grid(fh, fw, device=p.device, dtype=p.dtype)
        pos, neg = _half_plane_indices(fh, fw, p.device)
        cdt = _compute_dtype(p.dtype)
        # Gathering from a complex (C, points) tensor keeps every intermediate, and the gradient
        # reaching the MLPs, in the layout it had before: reductions and products round alike.
        wc = torch.complex(self.real(grid).to(cdt).T, self.imag(grid).to(cdt).T)
        half = 0.5 * (wc.index_select(1, pos) + wc.index_select(1, neg).conj())
        return self._shape_filters(half.reshape(-1, fh, fw // 2 + 1))

    def _filters_for_forward(self, h: int, w: int) -> torch.Tensor:
        """:meth:`_half_filters`, cached in eval mode when no gradient can flow to the MLPs.

        The MLPs run on the whole grid on every call, which dominates small inputs. In eval
        mode with gradients off (or frozen MLPs) the filters are a pure function of the MLP
        parameters and the grid, so they are reused while the parameters compare exactly equal
        to a snapshot (this catches optimizer steps, ``load_state_dict`` and writes through
        ``.data`` alike). The cache is a plain attribute: never in the state dict.
        """
        params = [p for mlp in (self.real, self.imag) for p in mlp.parameters()]
        if self.training or (torch.is_grad_enabled() and any(p.requires_grad for p in params)):
            self._filter_cache = None
            return self._half_filters(h, w)
        # inference_mode(False): an inference tensor could not be saved for a later backward
        # (e.g. an attack differentiating a frozen model with respect to its input).
        with torch.inference_mode(False), torch.no_grad():
            snapshot = torch.cat([p.detach().reshape(-1) for p in params])
        key = (h, w, self.mode, snapshot.device, snapshot.dtype)
        cache = self._filter_cache
        if cache is not None and cache[0] == key and torch.equal(cache[1], snapshot):
            return cache[2]
        with torch.inference_mode(False), torch.no_grad():
            filt = self._half_filters(h, w)
        self._filter_cache = (key, snapshot, filt)
        return filt

    # ---- forward -----------------------------------------------------------------------
    def _multiply(self, spec: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _filter(self, xc: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
        """The real map ``xc`` filtered: irfft2 of :meth:`_multiply` of its rfft2, at its size."""
        spec = _fft_call(torch.fft.rfft2, xc)
        return _fft_call(torch.fft.irfft2, self._multiply(spec, filt), s=xc.shape[-2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected a (N, C, H, W) input, got shape {tuple(x.shape)}")
        if x.device.type == "cpu":
            memory.ensure_freed_memory_kept()  # once per process; a flag check after that
        dtype = x.dtype
        h, w = x.shape[-2:]
        with torch.autocast(x.device.type, enabled=False):
            xc = x.to(_compute_dtype(dtype))
            if self.mode == "linear":
                xc = F.pad(xc, (0, w, 0, h))
            elif self.mode.startswith("pad-"):
                pad_mode = {"pad-zero": "constant", "pad-reflect": "reflect", "pad-circular": "circular"}[self.mode]
                if pad_mode == "reflect" and min(h, w) < 2:
                    pad_mode = "replicate"  # reflect needs at least two pixels
                xc = F.pad(xc, (w // 2, w - w // 2, h // 2, h - h // 2), mode=pad_mode)
            y = self._filter(xc, self._filters_for_forward(h, w))
            if self.mode == "linear":
                y = y[..., :h, :w]
            elif self.mode.startswith("pad-"):
                y = y[..., h // 2 : h // 2 + h, w // 2 : w // 2 + w]
        return y.to(dtype)


class DepthwiseNIFF(NIFFLayer):
    """Depthwise NIFF: FFT → multiply channel c by its own W_c → inverse FFT. No bias.

    Args:
        channels: channels filtered (input = output).
        mlp: MLP preset name (``big``, ``small``, ``cifar``, ``tiny``), hidden sizes, or config.
        mode: convolution mode, one of :data:`CONV_MODES`.
    """

    kind = "depthwise"

    def __init__(self, channels: int, mlp: MLPSpec = "big", mode: str = "circular"):
        super().__init__(channels, mlp, mode)
        self.in_channels = self.out_channels = channels

    def _multiply(self, spec, filt):
        return spec * filt

    def _filter(self, xc, filt):
        # The Hermitian filters of every mode (the linear mode's come from a real kernel too).
        return _HermitianFilter.apply(xc, filt, tuple(xc.shape[-2:]))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, mode={self.mode}, fmap={self.fmap}"


class SplitNIFF(DepthwiseNIFF):
    """The paper's default NIFF: depthwise NIFF on Cin channels, then a bias-free 1×1 Cin→Cout.

    One FFT before and one inverse FFT after. The 1×1 runs on the spectrum when it reduces
    channels (fewer inverse FFTs) and in space otherwise; both are exact.
    """

    kind = "split"

    def __init__(
        self, in_channels: int, out_channels: int, mlp: MLPSpec = "big", mode: str = "circular", groups: int = 1
    ):
        super().__init__(in_channels, mlp, mode)
        self.out_channels = out_channels
        self.pointwise = FreqPointwise(in_channels, out_channels, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.out_channels < self.in_channels:
            return super().forward(x)  # mixing inside _multiply, on the spectrum
        return self.pointwise(super().forward(x))

    def _multiply(self, spec, filt):
        out = spec * filt
        return self.pointwise.mix_spectrum(out) if self.out_channels < self.in_channels else out

    def _filter(self, xc, filt):
        if self.out_channels < self.in_channels:  # the 1×1 mixes the spectrum: autograd's path
            return NIFFLayer._filter(self, xc, filt)
        return super()._filter(xc, filt)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, mode={self.mode}, fmap={self.fmap}"


class FullNIFF(NIFFLayer):
    """Full NIFF ("NIFF 2D conv", Eq. 3–5): y_o = F⁻¹(Σ_i F(x_i) ⊙ W_{o,i}).

    One MLP pair outputs Cin·Cout complex values per frequency (output o, input i at index
    o·Cin + i).
    """

    kind = "full"

    def __init__(self, in_channels: int, out_channels: int, mlp: MLPSpec = "tiny", mode: str = "circular"):
        super().__init__(in_channels * out_channels, mlp, mode)
        self.in_channels, self.out_channels = in_channels, out_channels

    def _shape_filters(self, w):
        return w.reshape(self.out_channels, self.in_channels, *w.shape[-2:])

    def _multiply(self, spec, filt):
        return torch.einsum("bihw,oihw->bohw", spec, filt)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, mode={self.mode}, fmap={self.fmap}"

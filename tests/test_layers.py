"""NIFF layer math (SPEC §2): every variant equals an explicit spatial computation built from
its own spatial kernels with torch conv2d; rfft2 path equals the complex fft2 path."""

import pytest
import torch
import torch.nn.functional as F

from niff_analysis.layers import (
    CONV_MODES,
    DepthwiseNIFF,
    FreqPointwise,
    FullNIFF,
    SplitNIFF,
    centred_frequencies,
    centred_to_kernel,
    frequency_grid,
    kernel_to_centred,
    resolve_mlp,
)

SIZES = [(8, 8), (7, 7), (6, 9), (9, 4)]  # even, odd, and non-square both ways


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def spatial_conv(x, k, pad_mode):
    """True convolution (not correlation) of x with centred kernels k via conv2d.

    k: (Cout, Cin, h, w) with origin at (h//2, w//2). 'circular' wraps around, 'zeros' is a
    linear convolution with zero padding ("same" output aligned at the kernel centre).
    """
    h, w = k.shape[-2:]
    kf = torch.flip(k, (-2, -1))  # convolution = correlation with the flipped kernel
    cy, cx = h - 1 - h // 2, w - 1 - w // 2  # where the origin lands after the flip
    pads = (cx, w - 1 - cx, cy, h - 1 - cy)
    xp = F.pad(x, pads, mode="circular") if pad_mode == "circular" else F.pad(x, pads)
    return F.conv2d(xp, kf)


def depthwise_as_dense(k):
    """(C, h, w) depthwise kernels → (C, C, h, w) block-diagonal dense kernels."""
    c = k.shape[0]
    dense = torch.zeros(c, c, *k.shape[-2:], dtype=k.dtype)
    dense[torch.arange(c), torch.arange(c)] = k
    return dense


def make(kind, mode="circular", cin=3, cout=5, mlp="cifar"):
    torch.manual_seed(0)
    if kind == "depthwise":
        layer = DepthwiseNIFF(cin, mlp=mlp, mode=mode)
    elif kind == "split":
        layer = SplitNIFF(cin, cout, mlp=mlp, mode=mode)
    else:
        layer = FullNIFF(cin, cout, mlp="tiny", mode=mode)
    return layer.double()


def dense_kernels(layer, size):
    k = layer.spatial_kernels(size)
    if isinstance(layer, FullNIFF):
        return k
    k = depthwise_as_dense(k)
    if isinstance(layer, SplitNIFF):
        pw = layer.pointwise.weight[:, :, 0, 0].to(k.dtype)  # 1×1 after the depthwise filter
        k = torch.einsum("oc,cihw->oihw", pw, k)
    return k


@pytest.mark.parametrize("kind", ["depthwise", "split", "full"])
@pytest.mark.parametrize("size", SIZES)
def test_circular_equals_circular_conv2d(kind, size):
    layer = make(kind)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    ref = spatial_conv(x, dense_kernels(layer, size), "circular")
    assert rel_err(layer(x), ref) <= 1e-4


@pytest.mark.parametrize("kind", ["depthwise", "split", "full"])
@pytest.mark.parametrize("size", SIZES)
def test_linear_equals_zero_padded_conv2d(kind, size):
    layer = make(kind, mode="linear")
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    # Zero-padding the input to 2H×2W and cropping makes the FFT product a linear convolution.
    ref = spatial_conv(x, dense_kernels(layer, size), "zeros")
    assert rel_err(layer(x), ref) <= 1e-4
    # ... and it really differs from the circular result (the test can fail).
    assert rel_err(make(kind)(x), ref) > 1e-3


@pytest.mark.parametrize("pad", ["zero", "reflect", "circular"])
@pytest.mark.parametrize("size", SIZES)
def test_padding_modes_equal_padded_circular_conv(pad, size):
    layer = make("split", mode=f"pad-{pad}")
    h, w = size
    assert layer.filter_size(size) == (2 * h, 2 * w)
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    torch_mode = {"zero": "constant", "reflect": "reflect", "circular": "circular"}[pad]
    xp = F.pad(x, (w // 2, w - w // 2, h // 2, h - h // 2), mode=torch_mode)
    full = spatial_conv(xp, dense_kernels(layer, size), "circular")  # kernels live on 2H×2W
    ref = full[..., h // 2 : h // 2 + h, w // 2 : w // 2 + w]
    assert rel_err(layer(x), ref) <= 1e-4


@pytest.mark.parametrize("size", SIZES)
def test_rfft_path_equals_complex_fft2_formulation(size):
    layer = make("depthwise").float()
    x = torch.randn(4, 3, *size)
    w = layer.frequency_response(size)  # raw MLP output, not Hermitian-projected
    ref = torch.fft.ifft2(torch.fft.fft2(x) * torch.fft.ifftshift(w, dim=(-2, -1))).real
    assert rel_err(layer(x), ref) <= 1e-5


def test_coordinates_are_centred_integers_and_recomputed_per_size():
    assert centred_frequencies(4).tolist() == [-2, -1, 0, 1]
    assert centred_frequencies(5).tolist() == [-2, -1, 0, 1, 2]
    g = frequency_grid(3, 4)
    assert g.shape == (12, 2) and not g.requires_grad
    assert g[:, 0].reshape(3, 4)[0].tolist() == [-2, -1, 0, 1]  # u varies along W
    assert g[:, 1].reshape(3, 4)[:, 0].tolist() == [-1, 0, 1]  # v varies along H
    layer = DepthwiseNIFF(2, mlp="small")
    names = [n for n, _ in layer.named_parameters()] + [n for n, _ in layer.named_buffers()]
    assert not any("grid" in n for n in names)
    assert layer(torch.randn(1, 2, 5, 7)).shape == (1, 2, 5, 7)
    assert layer(torch.randn(3, 2, 12, 10)).shape == (3, 2, 12, 10)


def test_constant_unit_response_is_identity():
    layer = DepthwiseNIFF(4, mlp="cifar")
    with torch.no_grad():  # W = 1 + 0j everywhere: last layer outputs its bias only
        layer.real[-1].weight.zero_()
        layer.real[-1].bias.fill_(1.0)
        layer.imag[-1].weight.zero_()
        layer.imag[-1].bias.zero_()
    x = torch.randn(2, 4, 7, 10)
    assert torch.allclose(layer(x), x, atol=1e-5)
    k = layer.spatial_kernels((7, 10))
    delta = torch.zeros(7, 10)
    delta[7 // 2, 10 // 2] = 1
    assert torch.allclose(k, delta.expand_as(k), atol=1e-6)


@pytest.mark.parametrize("size", SIZES)
def test_planted_3x3_kernel_comes_back_at_the_centre(size):
    h, w = size
    k3 = torch.randn(3, 3, dtype=torch.float64)
    k = torch.zeros(h, w, dtype=torch.float64)
    k[h // 2 - 1 : h // 2 + 2, w // 2 - 1 : w // 2 + 2] = k3
    back = centred_to_kernel(kernel_to_centred(k))
    assert torch.allclose(back, k, atol=1e-12)
    assert torch.allclose(back[h // 2 - 1 : h // 2 + 2, w // 2 - 1 : w // 2 + 2], k3, atol=1e-12)
    # Dropping the inner ifftshift (the reference code's bug) would not give it back.
    wrong = torch.fft.fftshift(torch.fft.ifft2(kernel_to_centred(k)).real)
    assert not torch.allclose(wrong, k, atol=1e-6)


def test_planted_kernel_acts_like_conv2d_through_the_layer_math():
    # A 3×3 kernel turned into W and applied by the FFT product equals conv2d with it.
    h, w = 9, 6
    k = torch.zeros(1, h, w, dtype=torch.float64)
    k[0, h // 2 - 1 : h // 2 + 2, w // 2 - 1 : w // 2 + 2] = torch.randn(3, 3, dtype=torch.float64)
    x = torch.randn(2, 1, h, w, dtype=torch.float64)
    wc = torch.fft.ifftshift(kernel_to_centred(k), dim=(-2, -1))
    y = torch.fft.ifft2(torch.fft.fft2(x) * wc).real
    assert rel_err(y, spatial_conv(x, k[None], "circular")) <= 1e-10


@pytest.mark.parametrize("kind", ["depthwise", "split", "full"])
@pytest.mark.parametrize("mode", CONV_MODES)
def test_gradients_reach_every_parameter(kind, mode):
    layer = make(kind, mode=mode).float()
    layer(torch.randn(2, 3, 6, 7)).square().sum().backward()
    for name, p in layer.named_parameters():
        if name.startswith("imag.") and name.endswith(f"{len(layer.imag) - 1}.bias"):
            continue  # a constant imaginary response is anti-Hermitian: exactly no effect
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_dtype_conversion_and_two_resolutions():
    layer = SplitNIFF(3, 4, mlp="small")
    x = torch.randn(2, 3, 8, 8)
    y32 = layer(x)
    layer64 = layer.to(torch.float64)
    y64 = layer64(x.double())
    assert y64.dtype == torch.float64 and torch.allclose(y64.float(), y32, atol=1e-4)
    assert layer64(torch.randn(1, 3, 16, 12, dtype=torch.float64)).shape == (1, 4, 16, 12)
    half = SplitNIFF(3, 4, mlp="small").to(torch.bfloat16)
    out = half(torch.randn(2, 3, 7, 7, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_fft_runs_in_float32_under_autocast():
    layer = DepthwiseNIFF(3, mlp="small")
    x = torch.randn(2, 3, 7, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.float32
    assert torch.allclose(y, layer(x), atol=1e-5)


def test_frequency_pointwise_equals_spatial_1x1_in_both_domains():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 4, 1, bias=False, groups=2)
    pw_s = FreqPointwise(6, 4, groups=2)
    pw_f = FreqPointwise(6, 4, groups=2, domain="frequency")
    with torch.no_grad():
        pw_s.weight.copy_(conv.weight)
        pw_f.weight.copy_(conv.weight)
    x = torch.randn(2, 6, 7, 10)
    assert torch.allclose(pw_s(x), conv(x), atol=1e-6)
    assert torch.allclose(pw_f(x), conv(x), atol=1e-5)
    cl = FreqPointwise(6, 4, channels_last=True)
    xl = torch.randn(2, 5, 5, 6)
    assert torch.allclose(cl(xl), xl @ cl.weight[:, :, 0, 0].T, atol=1e-6)


def test_split_niff_mixes_in_either_domain_identically():
    torch.manual_seed(1)
    for cin, cout in ((6, 3), (3, 6)):  # reduce: 1×1 on the spectrum; expand: in space
        layer = SplitNIFF(cin, cout, mlp="cifar").double()
        x = torch.randn(2, cin, 6, 5, dtype=torch.float64)
        ref = spatial_conv(x, dense_kernels(layer, (6, 5)), "circular")
        assert rel_err(layer(x), ref) <= 1e-10


def test_response_and_kernels_without_forward_and_shapes():
    full = FullNIFF(2, 3)
    assert full.frequency_response((5, 6)).shape == (3, 2, 5, 6)
    assert full.spatial_kernels((5, 6)).dtype == torch.float32
    layer = DepthwiseNIFF(4, mlp="big")
    with pytest.raises(ValueError, match="feature-map size"):
        layer.spatial_kernels()
    layer.fmap = (7, 5)
    assert layer.spatial_kernels().shape == (4, 7, 5)
    assert torch.is_complex(layer.frequency_response())


def test_mlp_presets_match_the_paper():
    def n_params(preset, c):
        layer = DepthwiseNIFF(c, mlp=preset)
        return sum(p.numel() for p in layer.real.parameters())

    assert n_params("big", 64) == 2 * 16 + 16 + 16 * 128 + 128 + 128 * 32 + 32 + 32 * 64 + 64
    assert n_params("small", 10) == 2 * 8 + 8 + 8 * 4 + 4 + 4 * 10 + 10
    assert n_params("cifar", 10) == 2 * 32 + 32 + 32 * 10 + 10
    assert resolve_mlp([5, 7]).hidden == (5, 7)
    assert isinstance(DepthwiseNIFF(2, mlp="cifar").real[1], torch.nn.ReLU)
    assert isinstance(DepthwiseNIFF(2, mlp="big").real[1], torch.nn.SiLU)
    with pytest.raises(ValueError, match="unknown MLP preset"):
        resolve_mlp("huge")
    with pytest.raises(ValueError, match="unknown convolution mode"):
        DepthwiseNIFF(2, mode="spiral")

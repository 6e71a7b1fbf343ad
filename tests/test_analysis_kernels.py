"""extract_kernels: NIFF layers on their recorded grids, plain convs checked against torch conv2d."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from niff_analysis.analysis import extract_kernels, stage_of
from niff_analysis.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from niff_analysis.errors import NiffError, SelectionError
from niff_analysis.layers import centred_to_kernel
from niff_analysis.models import niff_layers, to_niff


@pytest.fixture(scope="module")
def bundled():
    torch.manual_seed(0)
    return load_checkpoint(None)


def small_cnn(variant="split", size=(12, 10)):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 3, 3, padding=1),
    )
    return to_niff(model, input_size=size, variant=variant, mlp="cifar", in_chans=2)


def test_bundled_kernels_equal_layer_spatial_kernels_at_recorded_fmap(bundled):
    lks = extract_kernels(bundled)
    layers = dict(niff_layers(bundled))
    assert [lk.name for lk in lks] == list(layers)
    recorded = {d["name"]: d["fmap"] for d in bundled.niff_checkpoint["layers"]}
    with torch.no_grad():
        for lk in lks:
            mod = layers[lk.name]
            assert bundled.get_submodule(lk.name) is mod
            assert list(lk.fmap) == recorded[lk.name] == list(mod.fmap)
            assert lk.kind == mod.kind == "split"
            assert lk.stage == lk.name.split(".")[0]
            assert lk.kernels.dtype == torch.float32 and lk.kernels.device.type == "cpu"
            assert lk.kernels.shape == (mod.in_channels, *mod.fmap)
            torch.testing.assert_close(lk.kernels, mod.spatial_kernels().float(), rtol=0, atol=0)
            torch.testing.assert_close(lk.response, mod.frequency_response().to(torch.complex64))
            torch.testing.assert_close(centred_to_kernel(lk.response), lk.kernels, rtol=1e-5, atol=1e-6)


def test_path_and_default_agree(bundled):
    a = extract_kernels(None, layers="layer4.1.*")
    b = extract_kernels(str(DEFAULT_CHECKPOINT), layers="layer4.1.*")
    c = extract_kernels(bundled, layers="layer4.1.*")
    assert [x.name for x in a] == ["layer4.1.conv1", "layer4.1.conv2"]
    for x, y, z in zip(a, b, c):
        assert torch.equal(x.kernels, y.kernels) and torch.equal(x.kernels, z.kernels)


def test_selection(bundled):
    assert [lk.name for lk in extract_kernels(bundled, layers=["layer3.0*", "layer4.0*"])] == [
        "layer3.0.conv2",
        "layer4.0.conv2",
    ]
    with pytest.raises(SelectionError) as err:
        extract_kernels(bundled, layers="nothing*")
    msg = str(err.value)
    assert "nothing*" in msg and "layer1.0.conv1" in msg and "\n" not in msg


def test_non_square_and_full_niff():
    split = small_cnn("split")
    lks = extract_kernels(split)
    assert [(lk.name, lk.kind, lk.fmap) for lk in lks] == [
        ("0", "split", (12, 10)),
        ("2", "depthwise", (12, 10)),
        ("6", "split", (6, 5)),
    ]
    assert lks[0].kernels.shape == (2, 12, 10) and lks[2].kernels.shape == (6, 6, 5)
    full = small_cnn("full")
    lks = extract_kernels(full)
    first = lks[0]
    assert first.kind == "full" and first.kernels.shape == (4, 2, 12, 10)
    torch.testing.assert_close(first.kernels, full.get_submodule("0").spatial_kernels().float())


def circular_apply(kern, x):
    """y_o = Σ_i x_i ⊛ k_oi (circular) with centred kernels (Cout, Cin, H, W)."""
    spec = torch.fft.fft2(x)
    filt = torch.fft.fft2(torch.fft.ifftshift(kern, dim=(-2, -1)))
    return torch.fft.ifft2(torch.einsum("bihw,oihw->bohw", spec, filt)).real


# Taps of the 5×5 conv with dilation 2 (layer "1": offsets −4, −2, 0, 2, 4 on each axis) that a
# centred H×W grid (offsets −(H//2) … H−1−H//2) cannot hold, counted by hand: 9×9 holds them all;
# 10×8 holds 5 rows × 4 columns (offset 4 > 3 on the 8-wide axis), 25 − 20 = 5 dropped; 7×12 holds
# 3 rows (±4 > 3) × 5 columns, 25 − 15 = 10 dropped. The 3×3 convs fit every grid here.
DROPPED_TAPS = {(9, 9): {}, (10, 8): {"1": 5}, (7, 12): {"1": 10}}


@pytest.mark.parametrize("h,w", [(9, 9), (10, 8), (7, 12)])
def test_plain_conv_embedding_acts_like_conv2d(h, w):
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1),
        nn.Conv2d(5, 5, 5, padding=4, dilation=2),
        nn.Conv2d(5, 5, 3, padding=1, groups=5),
        nn.Conv2d(5, 2, 1),
    )
    lks = extract_kernels(model, input_size=(h, w))
    assert [(lk.name, lk.kind, lk.fmap) for lk in lks] == [
        ("0", "conv", (h, w)),
        ("1", "conv", (h, w)),
        ("2", "conv", (h, w)),
    ]
    assert lks[0].kernels.shape == (5, 3, h, w) and lks[2].kernels.shape == (5, h, w)
    assert all(lk.response is None for lk in lks)
    for lk in lks:
        conv = model.get_submodule(lk.name)
        reach = max(conv.padding)  # size-preserving: padding = dilation·(k−1)/2
        kern = (
            lk.kernels if lk.kernels.dim() == 4 else torch.diag_embed(lk.kernels.permute(1, 2, 0)).permute(2, 3, 0, 1)
        )  # depthwise → diagonal (C, C, H, W)
        fits = reach <= min(h // 2, (h - 1) - h // 2, w // 2, (w - 1) - w // 2)
        assert lk.extra["dropped_taps"] == DROPPED_TAPS[(h, w)].get(lk.name, 0)
        assert (lk.extra["dropped_taps"] == 0) == fits
        assert (kern.ne(0).sum() == conv.weight.ne(0).sum()) == fits
        if h <= 2 * reach or w <= 2 * reach:
            continue
        # Zero input near the border: zero-padded and circular convolution then agree exactly.
        x = torch.zeros(2, conv.in_channels, h, w)
        x[..., reach : h - reach, reach : w - reach] = torch.randn(2, conv.in_channels, h - 2 * reach, w - 2 * reach)
        expected = F.conv2d(x, conv.weight.detach(), None, 1, conv.padding, conv.dilation, conv.groups)
        torch.testing.assert_close(circular_apply(kern, x), expected, rtol=1e-4, atol=1e-5)


def test_include_conv_and_baseline(baseline_checkpoint):
    lks = extract_kernels(small_cnn("split"), include_conv=True)
    assert [lk.kind for lk in lks] == ["split", "depthwise", "split"]  # every stride-1 conv became NIFF
    base = load_checkpoint(baseline_checkpoint)
    lks = extract_kernels(base, layers="layer[14].0.conv*")
    assert [(lk.name, lk.fmap, tuple(lk.kernels.shape)) for lk in lks] == [
        ("layer1.0.conv1", (32, 32), (64, 64, 32, 32)),
        ("layer1.0.conv2", (32, 32), (64, 64, 32, 32)),
        ("layer4.0.conv2", (4, 4), (512, 512, 4, 4)),
    ]  # layer4.0.conv1 is strided: not a stride-1 conv
    w = base.get_submodule("layer1.0.conv1").weight.detach()
    # Cross-correlation weights become a convolution kernel: flipped about the centre.
    torch.testing.assert_close(lks[0].kernels[:, :, 15:18, 15:18], w.flip(-1, -2))
    assert lks[0].kernels.abs().sum() == pytest.approx(w.abs().sum().item(), rel=1e-5)
    niff = extract_kernels(None, layers="conv1", include_conv=True)
    assert [(lk.name, lk.kind, lk.stage) for lk in niff] == [("conv1", "conv", "conv1")]  # the stem: its own stage


def test_errors():
    plain = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1))
    with pytest.raises(NiffError, match="input_size"):
        extract_kernels(plain)
    model = small_cnn()
    model.get_submodule("0").fmap = None
    with pytest.raises(NiffError, match="feature-map size"):
        extract_kernels(model, layers="0")
    with pytest.raises(NiffError):
        extract_kernels(42)
    with pytest.raises(SelectionError, match="none"):
        extract_kernels(nn.Sequential(nn.Conv2d(1, 2, 1)), input_size=4)


def test_stage_names():
    assert stage_of("layer3.1.conv2") == "layer3"
    assert stage_of("features.denseblock2.denselayer4.conv2") == "denseblock2"
    assert stage_of("stages.2.blocks.0.conv_dw") == "stages.2"
    assert stage_of("features.3.conv.1.0") is None
    assert stage_of("conv1") is None

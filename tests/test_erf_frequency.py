"""Effective receptive fields and frequency profiles, checked against answers known in closed
form or computed independently (scipy, the kernels extract_kernels reports)."""

from __future__ import annotations

import io
import json
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from scipy.signal import convolve2d
from torch import nn

from niff_analysis.analysis import effective_receptive_fields, erf_area_ratios, extract_kernels, frequency_profile
from niff_analysis.analysis.frequency import radial_bins
from niff_analysis.checkpoint import DEFAULT_CHECKPOINT
from niff_analysis.cli import main
from niff_analysis.errors import SelectionError
from niff_analysis.layers import DepthwiseNIFF


def test_stacked_box_convs_have_the_binomial_erf():
    """k stacked 3×3 box convs (linear, no bias): the ERF after stage k is the k-fold
    autoconvolution of the box, exactly its (2k+1)×(2k+1) support."""
    convs = OrderedDict()
    for k in (1, 2, 3):
        conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        nn.init.constant_(conv.weight, 1 / 9)
        convs[f"layer{k}"] = conv
    model = nn.Sequential(convs)
    images = torch.randn(6, 1, 15, 15, generator=torch.Generator().manual_seed(0))
    maps = effective_receptive_fields(model, images, batch_size=4)
    box = np.full((3, 3), 1 / 9)
    expected = np.array([[1.0]])
    for k in (1, 2, 3):
        expected = convolve2d(expected, box)
        full = np.zeros((15, 15))
        r = k  # support radius
        full[7 - r : 7 + r + 1, 7 - r : 7 + r + 1] = expected
        np.testing.assert_allclose(maps[f"layer{k}"] / len(images), full, atol=1e-12)
    ratios = erf_area_ratios(maps, thresholds=(100,))
    assert list(ratios["side"]) == [3.0, 5.0, 7.0]
    assert ratios["area_ratio"].tolist() == pytest.approx([9 / 225, 25 / 225, 49 / 225])
    assert model.training  # the caller's mode is restored


def _one_conv(seed=0):
    """One 3×3 conv, 2 → 3 channels, with a bias, in float64: ∂out[c, 4, 4] / ∂x[i, 3 + m, 3 + n]
    = w[c, i, m, n] (a cross-correlation), so its ERF can be written down."""
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64))
        conv.bias.copy_(torch.tensor([0.3, -0.2, 0.0], dtype=torch.float64))
    images = torch.randn(7, 2, 9, 9, generator=g, dtype=torch.float64)
    return nn.Sequential(OrderedDict(layer1=conv)), conv.weight.detach().numpy(), conv.bias.detach().numpy(), images


def _side(m, t):
    """The smallest odd centred square (the full map last) whose share of the map's sum is ≥ t %."""
    h, w = m.shape
    for s in list(range(1, max(h, w) + 1, 2)) + [max(h, w)]:
        r = (s - 1) // 2
        if (
            m[max(0, h // 2 - r) : h // 2 + r + 1, max(0, w // 2 - r) : w // 2 + r + 1].sum()
            >= t / 100 * m.sum() - 1e-12
        ):
            return float(s)
    return float("nan")


def test_both_protocols_on_one_conv_by_hand():
    """luo: Σ over images and input channels of |Σ_c w[c, i]| (the raw outputs' gradient does
    not depend on the image); replknet: per image only the channels whose central output is
    positive count, negative gradients are dropped per input channel, the mean over images is
    taken, then log10(1 + x). Both written out here from the weights and images."""
    model, w, b, images = _one_conv()
    x = images.numpy()
    luo = np.zeros((9, 9))
    luo[3:6, 3:6] = len(x) * np.abs(w.sum(0)).sum(0)
    rep = np.zeros((9, 9))
    for img in x:
        out = (w * img[None, :, 3:6, 3:6]).sum((1, 2, 3)) + b  # the three central outputs
        grad = (w * (out > 0)[:, None, None, None]).sum(0)  # (2, 3, 3): only positive outputs pass relu
        rep[3:6, 3:6] += np.maximum(grad, 0).sum(0)
    rep = np.log10(1 + rep / len(x))
    masks = np.array([(w * img[None, :, 3:6, 3:6]).sum((1, 2, 3)) + b > 0 for img in x])
    assert 0 < masks.sum() < masks.size and len({tuple(m) for m in masks}) > 1  # relu on the output matters
    maps = {
        p: effective_receptive_fields(model, images, batch_size=3, protocol=p)["layer1"] for p in ("luo", "replknet")
    }
    np.testing.assert_allclose(maps["luo"], luo, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(maps["replknet"], rep, rtol=1e-12, atol=1e-12)
    assert not np.allclose(maps["replknet"] / maps["replknet"].max(), luo / luo.max())
    for p, expected in (("luo", luo), ("replknet", rep)):
        ratios = erf_area_ratios({"layer1": maps[p]}, thresholds=(5, 20, 50, 99), protocol=p)
        assert list(ratios.columns) == ["stage", "protocol", "threshold", "side", "area_ratio"]
        assert set(ratios["protocol"]) == {p}
        assert ratios["side"].tolist() == [_side(expected, t) for t in (5, 20, 50, 99)]
    with pytest.raises(SelectionError, match="unknown ERF protocol 'bogus'"):
        effective_receptive_fields(model, images, protocol="bogus")


def test_replknet_protocol_of_two_stacked_box_filters():
    """Two 3×3 box convs on positive images: every output is positive and every gradient too, so
    RepLKNet's protocol gives log10(1 + the full convolution of the two boxes) after layer2 and
    log10(1 + box) after layer1, exactly."""
    convs = OrderedDict()
    for k in (1, 2):
        convs[f"layer{k}"] = nn.Conv2d(1, 1, 3, padding=1, bias=False).double()
        nn.init.constant_(convs[f"layer{k}"].weight, 1 / 9)
    model = nn.Sequential(convs)
    images = torch.rand(5, 1, 11, 11, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.1
    maps = effective_receptive_fields(model, images, protocol="replknet")
    box = np.full((3, 3), 1 / 9)
    for k, kernel in ((1, box), (2, convolve2d(box, box))):
        expected = np.zeros((11, 11))
        expected[5 - k : 5 + k + 1, 5 - k : 5 + k + 1] = np.log10(1 + kernel)
        np.testing.assert_allclose(maps[f"layer{k}"], expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("size", [(16, 16), (15, 12)])
def test_a_niff_layer_has_its_kernel_flipped_as_erf(size):
    torch.manual_seed(0)
    layer = DepthwiseNIFF(1, mlp="small")
    layer.fmap = size
    model = nn.Sequential(OrderedDict(layer1=layer)).double()
    (lk,) = extract_kernels(model, layers="layer1")
    k = lk.kernels[0].double().numpy()
    h, w = size
    maps = effective_receptive_fields(model, torch.randn(1, 1, h, w, dtype=torch.float64))
    # ∂y[c]/∂x[c - j] = k[j]: the map at pixel i holds the kernel at offset c - i (circularly).
    rows = (2 * (h // 2) - np.arange(h)) % h
    cols = (2 * (w // 2) - np.arange(w)) % w
    np.testing.assert_allclose(maps["layer1"], np.abs(k[np.ix_(rows, cols)]), rtol=1e-5, atol=1e-7)


def test_frequency_profile_of_a_constant_response_is_flat():
    """W = 0.6 − 0.8i everywhere: the real constant is Hermitian and acts (a delta kernel of
    weight 0.6), the imaginary constant is anti-Hermitian and does not, so the profile of the
    filter that acts is 0.6 (|W| of the raw output would read |0.6 − 0.8i| = 1)."""
    layer = DepthwiseNIFF(3, mlp="small")
    layer.fmap = (9, 12)
    with torch.no_grad():
        for mlp, value in ((layer.real, 0.6), (layer.imag, -0.8)):
            mlp[-1].weight.zero_()
            mlp[-1].bias.fill_(value)
    (lk,) = extract_kernels(nn.Sequential(OrderedDict(layer1=layer)))
    prof = frequency_profile([lk])
    np.testing.assert_allclose(prof[["mean", "q25", "q75"]].to_numpy(), 0.6, rtol=1e-5)
    assert prof["radius"].iloc[0] == 0 and prof["radius"].max() == pytest.approx(np.sqrt(2), abs=0.1)
    idx, radius = radial_bins(9, 12)
    assert idx.shape == (108,) and radius[1] == pytest.approx(1 / 6)


@pytest.mark.slow  # the bundled models on real images
def test_erf_command_on_the_bundled_checkpoints(tmp_path):
    res = CliRunner().invoke(
        main, ["erf", "niff_analysis/checkpoints", "--images", "4", "--untrained", "--format", "csv", "-q"]
    )
    assert res.exit_code == 0, res.output
    df = pd.read_csv(io.StringIO(res.stdout))
    assert list(df.columns) == ["checkpoint", "stage", "protocol", "threshold", "side", "area_ratio"]
    assert set(df["protocol"]) == {"luo"}
    assert set(df["checkpoint"]) == {
        "resnet18_fmnist",
        "resnet18_fmnist@init",
        "resnet18_niff_fmnist",
        "resnet18_niff_fmnist@init",
    }
    for _, g in df.groupby(["checkpoint", "stage"]):
        assert g.sort_values("threshold")["side"].is_monotonic_increasing
    assert np.allclose(df["area_ratio"], df["side"] ** 2 / 32**2)
    out = tmp_path / "erf.csv"
    res = CliRunner().invoke(main, ["erf", "--images", "4", "--protocol", "replknet", "-q", "-o", str(out)])
    assert res.exit_code == 0, res.output
    rep = pd.read_csv(out)
    assert set(rep["protocol"]) == {"replknet"} and len(rep) == 16
    meta = json.loads((tmp_path / "meta.json").read_text())
    params = meta["outputs"]["erf.csv"]["parameters"]
    assert params["protocol"] == "replknet"
    # erf's own --layers (not given: its stages) is what is recorded, not a kernel selection it never made
    assert params["layers"] is None and "include_conv" not in params
    # The logarithm spreads the map: no stage's 50 % side is smaller than luo's on the same images.
    luo = df[(df["checkpoint"] == "resnet18_niff_fmnist") & (df["threshold"] == 50)]["side"].to_numpy()
    assert (rep[rep["threshold"] == 50]["side"].to_numpy() >= luo).all()
    res = CliRunner().invoke(main, ["erf", "--protocol", "bogus"])
    assert res.exit_code == 2 and "Invalid value for '--protocol'" in res.output
    res = CliRunner().invoke(main, ["erf", "--thresholds", "0,50"])
    assert res.exit_code == 2 and "--thresholds must lie in (0, 100]" in res.output
    res = CliRunner().invoke(main, ["erf", "--layers", "nope*", "--images", "2"])
    assert res.exit_code == 2 and "no module matches" in res.output


def test_kernels_radial_view():
    res = CliRunner().invoke(main, ["kernels", "--view", "radial", "--layers", "layer4.*", "--format", "csv", "-q"])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(io.StringIO(res.stdout))
    assert set(df["layer"]) == {"layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"}
    assert (df["q25"] <= df["q75"]).all() and (df["n_channels"] == 512).all()


# --------------------------------------------------------------------------- the filter that acts
@pytest.mark.parametrize("size", [(6, 8), (7, 5), (4, 9), (1, 6)])
def test_hermitian_part_on_the_centred_grid(size):
    """W_h is Hermitian, W − W_h anti-Hermitian (both checked with an independent index rule on
    the integer frequencies, which maps the Nyquist row of an even size to itself), and W_h is
    the DFT of the real kernel real(F⁻¹(W)) for even and odd sizes alike."""
    from niff_analysis.analysis.frequency import hermitian_part
    from niff_analysis.layers.niff import centred_frequencies, centred_to_kernel, kernel_to_centred

    h, w = size
    g = torch.Generator().manual_seed(h * 10 + w)
    W = torch.complex(
        torch.randn(3, h, w, generator=g, dtype=torch.float64), torch.randn(3, h, w, generator=g, dtype=torch.float64)
    )
    Wh = hermitian_part(W)
    fy, fx = centred_frequencies(h).long().tolist(), centred_frequencies(w).long().tolist()

    def at(a, i, j):  # the value at frequency (−fy[i], −fx[j]), found by its integer frequency
        return a[
            :,
            next(r for r in range(h) if (fy[r] + fy[i]) % h == 0),
            next(c for c in range(w) if (fx[c] + fx[j]) % w == 0),
        ]

    for i in range(h):
        for j in range(w):
            torch.testing.assert_close(at(Wh, i, j), Wh[:, i, j].conj(), rtol=0, atol=1e-15)
            torch.testing.assert_close(at(W - Wh, i, j), -(W - Wh)[:, i, j].conj(), rtol=0, atol=1e-15)
    torch.testing.assert_close(kernel_to_centred(centred_to_kernel(W)), Wh, rtol=0, atol=1e-12)


def test_frequency_profile_equals_an_independent_radial_profile_of_fft_k(tmp_path):
    """`kernels --view radial` equals the radial profile of |FFT(k)| computed here with numpy
    from the kernels `kernels --output` writes (binned by |f| / f_Nyquist rounded to the grid's
    step, module docstring), to 1e-6; and it is not the profile of |W| of the raw MLP output."""
    out = tmp_path / "k.npz"
    runner = CliRunner()
    res = runner.invoke(main, ["kernels", "--output", str(out), "--responses", "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["kernels", "--view", "radial", "--format", "csv", "-q"])
    assert res.exit_code == 0, res.output
    prof = pd.read_csv(io.StringIO(res.stdout))
    arrays = np.load(out)
    layers = [k for k in arrays.files if "@" not in k]
    assert set(prof["layer"]) == set(layers) and len(layers) == 13
    raw_differs = []
    for name in layers:
        k = arrays[name].astype(np.float64)
        c, h, w = k.shape
        spec = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(k, axes=(1, 2))), axes=(1, 2)))
        raw = np.abs(arrays[name + "@real"] + 1j * arrays[name + "@imag"].astype(np.float64))
        ys, xs = np.meshgrid(np.arange(h) - h // 2, np.arange(w) - w // 2, indexing="ij")
        step = np.rint(np.sqrt((ys / (h / 2)) ** 2 + (xs / (w / 2)) ** 2) * max(h, w) / 2).astype(int)
        d = prof[prof["layer"] == name].sort_values("radius")
        expected, expected_raw = [], []
        for b in sorted(set(step.ravel())):
            per_channel = spec[:, step == b].mean(1)
            expected.append([b / (max(h, w) / 2), per_channel.mean(), *np.percentile(per_channel, [25, 75])])
            expected_raw.append(raw[:, step == b].mean(1).mean())
        np.testing.assert_allclose(
            d[["radius", "mean", "q25", "q75"]].to_numpy(), np.array(expected), rtol=1e-6, atol=1e-9
        )
        assert (d["n_channels"] == c).all()
        raw_differs.append(np.abs(np.array(expected_raw) - d["mean"].to_numpy()).max())
    assert min(raw_differs) > 1e-3  # the raw |W| reads otherwise in every layer


def _anti_hermitian_pair(tmp_path):
    """The bundled default, and a copy whose every NIFF layer's W gains i·c_ch at every frequency
    (c_ch from 0.5 to 1.5 over the channels, added to the last bias of the imaginary MLP):
    A(f) = i·c = −conj(A(−f)), anti-Hermitian."""
    from niff_analysis.checkpoint import load_checkpoint, read_config, save_checkpoint
    from niff_analysis.layers.niff import NIFFLayer

    meta = {
        k: v
        for k, v in read_config(DEFAULT_CHECKPOINT).items()
        if k in ("dataset", "epochs", "seed", "recipe", "test_acc")
    }
    model = load_checkpoint(None)
    original = save_checkpoint(model, tmp_path / "original", **meta)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, NIFFLayer):
                bias = m.imag[-1].bias
                bias.add_(torch.linspace(0.5, 1.5, len(bias)))
    return original, save_checkpoint(model, tmp_path / "perturbed", **meta)


@pytest.mark.slow  # a full forward pass of a model
def test_an_anti_hermitian_perturbation_changes_no_output(tmp_path):
    """Adding an anti-Hermitian part to W changes no layer output and no result of any command
    (kernels, mass, frequency profile, PCA of the kernels, Gaussian fits, receptive fields, the
    weight PCA of the Hermitian part) beyond float rounding; only the raw weight PCA sees it."""
    from niff_analysis.checkpoint import load_checkpoint
    from niff_analysis.layers.niff import NIFFLayer

    a, b = _anti_hermitian_pair(tmp_path)
    ma, mb = load_checkpoint(a), load_checkpoint(b)
    outs = {}
    for key, m in (("a", ma), ("b", mb)):
        store = outs[key] = {}
        hooks = [
            mod.register_forward_hook(lambda _m, _i, o, n=n, s=store: s.__setitem__(n, o))
            for n, mod in m.named_modules()
            if isinstance(mod, NIFFLayer)
        ]
        x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            store["logits"] = m(x)
        for hk in hooks:
            hk.remove()
    assert len(outs["a"]) == 14
    for n, y in outs["a"].items():
        torch.testing.assert_close(outs["b"][n], y, rtol=1e-4, atol=1e-5 * float(y.abs().max()))
    # The raw W does change: by i·c_ch at every frequency of channel ch.
    (wa,), (wb,) = (
        [mod.frequency_response() for n, mod in m.named_modules() if n == "layer1.0.conv1"] for m in (ma, mb)
    )
    shift = 1j * torch.linspace(0.5, 1.5, len(wa))[:, None, None].expand_as(wa)
    torch.testing.assert_close((wb - wa).detach(), shift.to(wa.dtype), rtol=0, atol=1e-5)
    calls = iter(range(100))

    def run(ckpt, *args, suffix="csv"):
        out = tmp_path / f"{ckpt.name}_{next(calls)}.{suffix}"
        res = CliRunner().invoke(main, [args[0], str(ckpt), *args[1:], "-q", "--output", str(out)])
        assert res.exit_code == 0, res.output
        return np.load(out) if suffix == "npz" else pd.read_csv(out)

    ka, kb = run(a, "kernels", suffix="npz"), run(b, "kernels", suffix="npz")
    for name in ka.files:
        scale = np.abs(ka[name]).max()
        np.testing.assert_allclose(kb[name], ka[name], rtol=0, atol=1e-6 * scale)
    some = "layer1.0.conv1,layer2.1.conv2,layer4.1.conv1"
    for args, value_cols in [
        (("mass", "--layers", some), ["mass_ratio"]),
        (("mass", "--layers", some, "--view", "sizes"), ["size_50", "size_90", "size_95"]),
        (("kernels", "--view", "radial"), ["mean", "q25", "q75"]),
        (("pca", "--layers", some), ["explained_variance_ratio"]),
        (("pca", "--layers", some, "--weights", "--response", "hermitian"), ["explained_variance_ratio"]),
        (
            ("gaussian", "--layers", "layer2.1.conv2,layer4.1.conv1"),
            ["sigma_x", "sigma_y", "sigma_x_moment", "sigma_y_moment"],
        ),
        (("erf", "--images", "4"), ["side", "area_ratio"]),
    ]:
        da, db = run(a, *args), run(b, *args)
        ids = [c for c in da.columns if c not in value_cols and da[c].dtype == object]
        assert da[ids].equals(db[ids]), args
        if "success" in da.columns:  # failed fits sit in flat valleys where rounding moves them far
            assert da["success"].equals(db["success"]) and da["success"].sum() > 200
            da, db = da[da["success"]], db[db["success"]]
        np.testing.assert_allclose(
            db[value_cols].to_numpy(float), da[value_cols].to_numpy(float), rtol=1e-4, atol=1e-6, err_msg=str(args)
        )
    # The components of the kernel PCA agree too (the first three, well separated).
    ca = run(a, "pca", "--layers", some, "--components", "3", suffix="npz")
    cb = run(b, "pca", "--layers", some, "--components", "3", suffix="npz")
    for name in ca.files:
        np.testing.assert_allclose(cb[name], ca[name], rtol=0, atol=1e-4)
    # The raw weight PCA decomposes the MLP output, as the authors did: it sees the inert part.
    wa_, wb_ = (run(c, "pca", "--layers", some, "--weights") for c in (a, b))
    assert set(wa_["response"]) == {"raw"}
    imag = wa_["part"] == "imag"
    assert np.allclose(wa_.loc[~imag, "explained_variance"], wb_.loc[~imag, "explained_variance"], rtol=1e-4)
    assert not np.allclose(wa_.loc[imag, "explained_variance"], wb_.loc[imag, "explained_variance"], rtol=1e-2)

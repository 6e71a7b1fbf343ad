"""Kernel mass ratio (Eq. 6): known answers, properties, and a naive reference implementation."""

import numpy as np
import pytest
import torch

from niff_analysis.analysis import (
    LayerKernels,
    effective_sizes,
    extract_kernels,
    kernel_mass,
    mass_ratios,
    mass_summary,
    window_sizes,
)

SIZES = [(1, 1), (2, 2), (4, 4), (5, 5), (7, 7), (8, 8), (9, 9), (8, 16), (7, 12), (16, 5), (3, 10)]


def naive_ratios(k: np.ndarray) -> tuple[list[int], list[float]]:
    """Eq. 6 written out with slices: odd windows s centred on (H//2, W//2), full kernel last."""
    h, w = k.shape
    cy, cx = h // 2, w // 2
    a = np.abs(k)
    total = a.sum()
    windows, ratios, s = [], [], 1
    while True:
        r = (s - 1) // 2
        win = a[max(cy - r, 0) : cy + r + 1, max(cx - r, 0) : cx + r + 1]
        full = win.size == a.size
        windows.append(min(s, max(h, w)) if full else s)
        ratios.append(win.sum() / total)
        if full:
            return windows, ratios
        s += 2


def layer(kern, name="l", stage=None, fmap=None):
    kern = torch.as_tensor(kern, dtype=torch.float32)
    return LayerKernels(
        name=name, kind="depthwise", fmap=fmap or tuple(kern.shape[-2:]), stage=stage, kernels=kern, response=None
    )


@pytest.mark.parametrize("h,w", SIZES)
def test_matches_naive_slicing(h, w):
    rng = np.random.default_rng(h * 100 + w)
    k = rng.normal(size=(5, h, w))
    windows, ratios = mass_ratios(torch.from_numpy(k))
    for i in range(5):
        ref_w, ref_r = naive_ratios(k[i])
        assert list(windows) == ref_w
        np.testing.assert_allclose(ratios[i], ref_r, rtol=1e-12)


@pytest.mark.parametrize("h,w", SIZES)
def test_delta_has_mass_one_at_window_one(h, w):
    k = torch.zeros(1, h, w)
    k[0, h // 2, w // 2] = -3.0  # absolute values: the sign must not matter
    windows, ratios = mass_ratios(k)
    assert windows[0] == 1
    assert np.all(ratios[0] == 1.0)


def test_windows_odd_centred_and_full_last():
    assert list(window_sizes(32, 32)) == list(range(1, 32, 2)) + [32]
    assert list(window_sizes(33, 33)) == list(range(1, 34, 2))
    assert list(window_sizes(8, 16)) == list(range(1, 16, 2)) + [16]
    assert list(window_sizes(4, 4)) == [1, 3, 4]
    # A single pixel at Chebyshev distance d from the centre enters exactly at window 2d+1.
    for h, w in [(8, 8), (9, 7), (6, 11)]:
        for i in range(h):
            for j in range(w):
                k = torch.zeros(1, h, w)
                k[0, i, j] = 1.0
                windows, ratios = mass_ratios(k)
                d = max(abs(i - h // 2), abs(j - w // 2))
                expected = np.where(np.arange(len(windows)) >= d, 1.0, 0.0)
                np.testing.assert_array_equal(ratios[0], expected)
                assert windows[d] == min(2 * d + 1, max(h, w))


@pytest.mark.parametrize("n,sx,sy", [(33, 2.0, 2.0), (32, 1.5, 4.0), (16, 0.7, 0.7)])
def test_gaussian_kernel_analytic_curve(n, sx, sy):
    # A sampled separable Gaussian: the mass in a square window is the product of 1-D sums.
    idx = np.arange(n) - n // 2
    gx, gy = np.exp(-(idx**2) / (2 * sx**2)), np.exp(-(idx**2) / (2 * sy**2))
    k = np.outer(gy, gx)
    windows, ratios = mass_ratios(torch.from_numpy(k)[None])
    for s, r in zip(windows, ratios[0]):
        half = (s - 1) // 2 if s % 2 else n
        inside = np.abs(idx) <= half
        expected = gy[inside].sum() * gx[inside].sum() / (gy.sum() * gx.sum())
        assert r == pytest.approx(expected, rel=1e-12)


def test_properties_on_random_kernels():
    rng = np.random.default_rng(0)
    for h, w in SIZES:
        k = torch.from_numpy(rng.standard_cauchy(size=(20, h, w)))
        _, ratios = mass_ratios(k)
        assert np.all(np.diff(ratios, axis=1) >= -1e-15)
        assert np.all(ratios[:, -1] == 1.0)
        assert np.all((ratios >= 0) & (ratios <= 1))


def test_zero_kernel_is_nan_not_an_error():
    k = torch.zeros(2, 5, 5)
    k[1, 2, 2] = 1
    df = kernel_mass([layer(k)])
    assert df[df.channel == 0].mass_ratio.isna().all()
    assert (df[df.channel == 1].mass_ratio == 1).all()
    sizes = effective_sizes(df)
    assert np.isnan(sizes.loc[0, "size_50"]) and sizes.loc[1, "size_50"] == 1
    summ = mass_summary(df)
    assert (summ["n"] == 1).all() and (summ["mean"] == 1).all()


def test_long_form_columns_and_full_layer_channels():
    k = torch.zeros(2, 3, 7, 7)  # (Cout, Cin, H, W)
    k[1, 2, 0, 0] = 1.0
    for o in range(2):
        for i in range(3):
            if (o, i) != (1, 2):
                k[o, i, 3, 3] = 1.0
    df = kernel_mass([LayerKernels("blk.conv", "full", (7, 7), "blk", k)])
    assert list(df.columns) == ["measure", "layer", "stage", "fmap_h", "fmap_w", "channel", "window", "mass_ratio"]
    assert (df["measure"] == "l1").all() and df.attrs["measure"] == "l1"
    assert sorted(df.channel.unique()) == list(range(6))
    corner = df[df.channel == 1 * 3 + 2]  # channel = o * Cin + i
    assert corner.mass_ratio.tolist() == [0, 0, 0, 1]
    assert (df[(df.channel != 5) & (df.window == 1)].mass_ratio == 1).all()


def test_summary_and_sizes_against_pandas_by_hand():
    rng = np.random.default_rng(1)
    layers = [
        layer(rng.normal(size=(6, 9, 9)) * np.exp(-np.add.outer(*[np.arange(9) ** 2] * 2) / 20), name="a", stage="s1"),
        layer(rng.normal(size=(4, 8, 8)), name="b", stage=None),
    ]
    df = kernel_mass(layers)
    summ = mass_summary(df)
    for (name, win), grp in df.groupby(["layer", "window"]):
        row = summ[(summ.layer == name) & (summ.window == win)].iloc[0]
        assert row["mean"] == pytest.approx(np.mean(grp.mass_ratio))
        assert row["std"] == pytest.approx(np.std(grp.mass_ratio, ddof=1))
        assert row["n"] == len(grp)
    assert summ[summ.layer == "b"].stage.isna().all()  # unknown stage kept, not dropped
    sizes = effective_sizes(df, quantiles=(0.5, 0.9, 0.95, 1.0))
    assert list(sizes.columns[-4:]) == ["size_50", "size_90", "size_95", "size_100"]
    for _, row in sizes.iterrows():
        grp = df[(df.layer == row.layer) & (df.channel == row.channel)]
        for q, col in [(0.5, "size_50"), (0.9, "size_90"), (0.95, "size_95"), (1.0, "size_100")]:
            assert row[col] == grp[grp.mass_ratio >= q - 1e-12].window.min()
    assert (sizes.size_100 == sizes.groupby("layer").size_100.transform("max")).all()


@pytest.fixture(scope="module")
def bundled_kernels():
    return extract_kernels(None)


def test_bundled_checkpoint_mass(bundled_kernels):
    df = kernel_mass(bundled_kernels)
    assert set(df.layer) == {lk.name for lk in bundled_kernels}
    assert len(df) == sum(lk.flat.shape[0] * len(window_sizes(*lk.size)) for lk in bundled_kernels)
    g = df.groupby(["layer", "channel"], sort=False)
    assert (g.mass_ratio.diff().dropna() >= -1e-12).all()
    last = g.tail(1)
    assert (last.mass_ratio == 1.0).all() and (last.window == last.fmap_h).all()
    assert (g.head(1).window == 1).all()
    summ = mass_summary(df)
    assert (summ.n == summ.layer.map({lk.name: lk.flat.shape[0] for lk in bundled_kernels})).all()


def test_mass_table_massless_kernels_and_kernel_table():
    """The tables `niff-analyze mass` and `kernels` print, from the library: per layer the mean
    ratio at windows 1…9 (full-size value where the kernel is smaller), sizes, and the all-zero
    kernels named."""
    from niff_analysis.analysis import kernel_table, mass_table, massless_kernels

    rng = np.random.default_rng(0)
    big = rng.standard_normal((3, 11, 11))
    small = rng.standard_normal((2, 5, 5))
    small[1] = 0  # one kernel without mass
    layers = [layer(big, "a", "s1"), layer(small, "b", "s2")]
    mass = kernel_mass(layers)
    table = mass_table(mass)
    assert list(table.layer) == ["a", "b"] and list(table.kernels) == [3, 1]  # kernels with mass
    for w in (1, 3, 5, 9):
        expect = mass[(mass.layer == "a") & (mass.window == w)].mass_ratio.mean()
        assert table.loc[0, f"mass_w{w}"] == pytest.approx(expect, abs=5e-4)
    # b's kernels are 5×5: its 9×9 "window" covers the whole kernel, the non-zero one's mass 1.
    assert table.loc[1, "mass_w9"] == 1.0 and table.loc[1, "mass_w5"] == 1.0
    sizes = effective_sizes(mass)
    assert table.loc[0, "size_90"] == pytest.approx(sizes[sizes.layer == "a"].size_90.mean(), abs=5e-4)
    zero = massless_kernels(mass)
    assert zero.to_dict("records") == [dict(measure="l1", layer="b", massless=1, kernels=2)]
    assert massless_kernels(kernel_mass(layers[:1])).empty
    kt = kernel_table(layers)
    assert kt[["layer", "kernel_h", "n_kernels"]].values.tolist() == [["a", 11, 3], ["b", 5, 2]]
    assert kt.l1_mean[1] == pytest.approx(np.abs(small).sum((1, 2)).mean(), rel=1e-5)

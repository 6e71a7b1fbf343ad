"""PCA eigenkernels and weight PCA, against sklearn's exact solver."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from niff_analysis.analysis import LayerKernels, extract_kernels, pca_eigenkernels, weight_pca
from niff_analysis.analysis.pca import fix_signs
from niff_analysis.errors import SelectionError


@pytest.fixture(scope="module")
def bundled_kernels():
    return extract_kernels(None)


def layer(kern, name="l", response=None):
    kern = torch.as_tensor(kern, dtype=torch.float32)
    return LayerKernels(
        name=name, kind="depthwise", fmap=tuple(kern.shape[-2:]), stage="s", kernels=kern, response=response
    )


def assert_matches_sklearn(x: np.ndarray, comps: np.ndarray, ratio: np.ndarray, var: np.ndarray):
    k = len(comps)
    ref = PCA(n_components=k, svd_solver="full").fit(x.astype(np.float64))
    np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(var, ref.explained_variance_, rtol=1e-9, atol=1e-12)
    flat = comps.reshape(k, -1)
    signs = np.sign(np.sum(flat * ref.components_, axis=1))
    assert np.all(signs != 0)
    np.testing.assert_allclose(flat, ref.components_ * signs[:, None], atol=1e-8)


def test_rank_one_kernels_explain_everything():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(7, 7))
    kern = rng.normal(size=(40, 1, 1)) * base + 0.0
    res = pca_eigenkernels([layer(kern)], n_components=4)
    ratio = res.table.explained_variance_ratio.to_numpy()
    assert ratio[0] == pytest.approx(1.0, abs=1e-6)
    assert np.all(ratio[1:] < 1e-6)
    comp = res.components["l"][0]
    unit = base / np.linalg.norm(base)
    expected = unit if unit.flat[np.argmax(np.abs(unit))] > 0 else -unit
    np.testing.assert_allclose(comp, expected, atol=1e-5)


@pytest.mark.parametrize("n,h,w,k", [(50, 6, 6, 6), (9, 5, 7, 20), (300, 4, 4, 6), (64, 16, 16, 3)])
def test_equals_sklearn_full_up_to_sign(n, h, w, k):
    rng = np.random.default_rng(n + h)
    kern = rng.normal(size=(n, h, w)) * np.linspace(0.1, 2, h * w).reshape(h, w)
    res = pca_eigenkernels([layer(kern)], n_components=k)
    assert res.components["l"].shape == (min(k, n, h * w), h, w)
    t = res.table
    x = torch.as_tensor(kern, dtype=torch.float32).double().numpy().reshape(n, -1)
    assert_matches_sklearn(
        x, res.components["l"], t.explained_variance_ratio.to_numpy(), t.explained_variance.to_numpy()
    )
    np.testing.assert_allclose(t.cumulative_variance_ratio, np.cumsum(t.explained_variance_ratio))
    np.testing.assert_allclose(res.means["l"], x.mean(0).reshape(h, w))


def test_bundled_layers_equal_sklearn_and_are_deterministic(bundled_kernels):
    chosen = [lk for lk in bundled_kernels if lk.name in ("layer1.0.conv1", "layer3.1.conv2", "layer4.1.conv2")]
    a = pca_eigenkernels(chosen)
    b = pca_eigenkernels(chosen)
    assert list(a.table.columns[:6]) == ["layer", "stage", "fmap_h", "fmap_w", "component", "explained_variance_ratio"]
    for lk in chosen:
        assert np.array_equal(a.components[lk.name], b.components[lk.name])  # bit for bit
        t = a.table[a.table.layer == lk.name]
        assert t.component.tolist() == list(range(6))
        x = lk.flat.reshape(len(lk.flat), -1).double().numpy()
        assert_matches_sklearn(
            x, a.components[lk.name], t.explained_variance_ratio.to_numpy(), t.explained_variance.to_numpy()
        )


def test_sign_rule():
    comps = np.array([[0.1, -0.9, 0.3], [0.5, 0.2, -0.5], [0.0, 0.0, 0.0]])
    fixed = fix_signs(comps)
    np.testing.assert_array_equal(fixed[0], -comps[0])
    np.testing.assert_array_equal(fixed[1], comps[1])  # tie: the first largest entry decides
    np.testing.assert_array_equal(fixed[2], comps[2])
    rng = np.random.default_rng(3)
    res = pca_eigenkernels([layer(rng.normal(size=(30, 5, 5)))])
    for c in res.components["l"]:
        assert c.flat[np.argmax(np.abs(c))] > 0


def test_degenerate_layers_do_not_raise():
    same = np.ones((10, 4, 4))
    res = pca_eigenkernels([layer(same, "same"), layer(np.ones((1, 3, 3)), "single")])
    assert res.table.explained_variance_ratio.isna().all()
    assert np.all(res.components["same"] == 0) and res.components["single"].shape == (1, 3, 3)
    with pytest.raises(SelectionError):
        pca_eigenkernels([layer(same)], n_components=0)


def test_weight_pca_parts_and_errors(bundled_kernels):
    chosen = [lk for lk in bundled_kernels if lk.name in ("layer2.1.conv1", "layer4.0.conv2")]
    res = weight_pca(chosen, n_components=5)
    assert set(res.table.part) == {"real", "imag"}
    assert set(res.components) == {(lk.name, p) for lk in chosen for p in ("real", "imag")}
    for lk in chosen:
        for part, values in (("real", lk.response.real), ("imag", lk.response.imag)):
            t = res.table[(res.table.layer == lk.name) & (res.table.part == part)]
            x = values.reshape(len(values), -1).double().numpy()
            assert_matches_sklearn(
                x,
                res.components[(lk.name, part)],
                t.explained_variance_ratio.to_numpy(),
                t.explained_variance.to_numpy(),
            )
    plain = layer(np.ones((3, 5, 5)), "conv1")
    with pytest.raises(SelectionError, match="conv1 is a plain convolution.*layer2.1.conv1"):
        weight_pca([plain, chosen[0]])


def test_weight_pca_of_the_hermitian_part(bundled_kernels):
    """--response hermitian decomposes (W(f) + conj(W(−f)))/2, computed here on the uncentred
    grid with numpy's own index rule; its real part is even and its imaginary part odd in f, so
    every component is too. The raw default is recorded as such."""
    chosen = [lk for lk in bundled_kernels if lk.name in ("layer2.1.conv1", "layer4.0.conv2")]
    res = weight_pca(chosen, n_components=4, response="hermitian")
    assert set(res.table.response) == {"hermitian"}
    assert set(weight_pca(chosen[:1], n_components=2).table.response) == {"raw"}
    for lk in chosen:
        h, w = lk.size
        u = np.fft.ifftshift(lk.response.numpy().astype(np.complex128), axes=(1, 2))
        neg = u[:, (-np.arange(h)) % h][:, :, (-np.arange(w)) % w]
        wh = np.fft.fftshift(0.5 * (u + neg.conj()), axes=(1, 2))
        for part, values in (("real", wh.real), ("imag", wh.imag)):
            t = res.table[(res.table.layer == lk.name) & (res.table.part == part)]
            comps = res.components[(lk.name, part)]
            assert_matches_sklearn(
                values.reshape(len(values), -1),
                comps,
                t.explained_variance_ratio.to_numpy(),
                t.explained_variance.to_numpy(),
            )
            mirrored = np.fft.fftshift(
                np.fft.ifftshift(comps, axes=(1, 2))[:, (-np.arange(h)) % h][:, :, (-np.arange(w)) % w], axes=(1, 2)
            )
            np.testing.assert_allclose(mirrored, comps if part == "real" else -comps, atol=1e-8)
    with pytest.raises(SelectionError, match="response must be one of raw, hermitian"):
        weight_pca(chosen, response="acting")

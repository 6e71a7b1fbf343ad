"""PCA eigenkernels (SPEC §4, paper §6) and PCA of the multiplication weights (Appendix B.3).

Per layer the kernels are flattened to rows of a matrix X (N kernels × H·W pixels), centred by
their mean, and decomposed with an exact SVD (LAPACK ``gesdd`` through ``scipy.linalg.svd``, the
solver of ``sklearn.decomposition.PCA(svd_solver="full")``) on one BLAS thread, so results never
change from run to run. Explained variances are S²/(N−1), their ratios S²/ΣS² over all
components. Each component's sign is fixed so that its largest-magnitude entry (the first one, on
ties) is positive.

A layer whose kernels are all identical (or a single kernel) has no variance: its ratios are
NaN and its components zero, never an error. Kernels holding NaN or Inf are refused
(:class:`~niff_analysis.errors.NiffError`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.linalg
import torch
from threadpoolctl import threadpool_limits

from ..errors import SelectionError
from .kernels import LayerKernels, require_finite
from .schema import COMPONENT, FMAP_H, FMAP_W, LAYER, LAYER_COLUMNS, PART, keys, layer_columns


@dataclass
class PCAResult:
    """PCA per layer.

    Attributes:
        table: one row per (layer[, part], component): layer, stage, fmap_h, fmap_w, [part,]
            component (0-based), explained_variance_ratio, explained_variance,
            cumulative_variance_ratio, n_kernels.
        components: layer (or (layer, part)) → (k, H, W) array of the leading components.
        means: the same keys → (H, W) mean kernel that was subtracted.
    """

    table: pd.DataFrame
    components: dict[Hashable, np.ndarray] = field(default_factory=dict)
    means: dict[Hashable, np.ndarray] = field(default_factory=dict)


def fix_signs(components: np.ndarray) -> np.ndarray:
    """Flip each row so that its largest-|value| entry (first on ties) is positive."""
    idx = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(len(components)), idx])
    signs[signs == 0] = 1.0
    return components * signs[:, None]


def pca(x: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact PCA of the rows of ``x``.

    Returns:
        (components (k, D), explained_variance (k,), explained_variance_ratio (k,), mean (D,)),
        with k = min(n_components, N, D).
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    mean = x.mean(axis=0)
    k = min(n_components, n, d)
    # One BLAS thread: the bits then do not depend on the machine's core count, and these small
    # SVDs gain nothing from threads (which thrash when the cores are busy).
    with threadpool_limits(limits=1, user_api="blas"):
        _, s, vt = scipy.linalg.svd(x - mean, full_matrices=False, lapack_driver="gesdd")
    var = s**2 / max(n - 1, 1)
    total = var.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = var / total if total > 0 else np.full_like(var, np.nan)
    comps = fix_signs(vt[:k]) if total > 0 else np.zeros((k, d))
    return comps, var[:k], ratio[:k], mean


def _rows(lk: LayerKernels, part: str | None, comps, var, ratio) -> pd.DataFrame:
    cols = layer_columns(lk)
    if part is not None:
        cols[PART] = part
    cols.update(
        {COMPONENT: np.arange(len(comps))},
        explained_variance_ratio=ratio,
        explained_variance=var,
        cumulative_variance_ratio=np.cumsum(ratio),
        n_kernels=lk.flat.shape[0],
    )
    return pd.DataFrame(cols)


def _check_n(n_components: int) -> None:
    if int(n_components) < 1:
        raise SelectionError(f"n_components must be a positive integer, got {n_components}")


def _finish(frames: list[pd.DataFrame], comps: dict, means: dict) -> PCAResult:
    table = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=LAYER_COLUMNS + [COMPONENT, "explained_variance_ratio"])
    )
    return PCAResult(table=table, components=comps, means=means)


def pca_eigenkernels(kernels: Sequence[LayerKernels], n_components: int = 6) -> PCAResult:
    """Leading principal components of each layer's spatial kernels (the paper shows six).

    Args:
        kernels: layers from :func:`extract_kernels`.
        n_components: components kept per layer (fewer where the layer has fewer kernels or
            pixels).

    Returns:
        A :class:`PCAResult` keyed by layer name; components are (k, H, W) arrays.

    Raises:
        SelectionError: ``n_components`` < 1.
        NiffError: a layer's kernels hold NaN or Inf.
    """
    _check_n(n_components)
    require_finite(kernels, "PCA")
    frames, comps, means = [], {}, {}
    for lk in kernels:
        h, w = lk.size
        c, var, ratio, mean = pca(lk.flat.reshape(len(lk.flat), -1).double().numpy(), n_components)
        comps[lk.name] = c.reshape(-1, h, w)
        means[lk.name] = mean.reshape(h, w)
        frames.append(_rows(lk, None, c, var, ratio))
    return _finish(frames, comps, means)


WEIGHT_RESPONSES = ("raw", "hermitian")


def weight_pca(kernels: Sequence[LayerKernels], n_components: int = 6, response: str = "raw") -> PCAResult:
    """PCA of the learned frequency weights, real and imaginary parts separately (App. B.3).

    The centred responses of each layer are decomposed like kernels. ``response="raw"`` (the
    default) takes W as the MLPs produce it, as the authors' analysis does; its anti-Hermitian
    part A(f) = −conj(A(−f)) never acts on a real input (SPEC §2), so this PCA describes the
    MLP's output, not only the filter. ``response="hermitian"`` takes the part that acts,
    W_h(f) = (W(f) + conj(W(−f)))/2 (:func:`~niff_analysis.analysis.frequency.hermitian_part`):
    its real part is even and its imaginary part odd in f. The table has a ``part`` column in
    {"real", "imag"} and a ``response`` column naming the choice; components are keyed
    (layer, part).

    Raises:
        SelectionError: a layer has no frequency response (a plain convolution), or ``response``
            is neither "raw" nor "hermitian".
        NiffError: a layer's kernels or responses hold NaN or Inf.
    """
    from .frequency import hermitian_part

    _check_n(n_components)
    if response not in WEIGHT_RESPONSES:
        raise SelectionError(f"response must be one of {', '.join(WEIGHT_RESPONSES)}, got {response!r}")
    plain = [lk.name for lk in kernels if lk.response is None]
    if plain:
        niff = [lk.name for lk in kernels if lk.response is not None]
        raise SelectionError(
            f"weight PCA needs NIFF frequency responses; {', '.join(plain)} "
            f"{'is a plain convolution' if len(plain) == 1 else 'are plain convolutions'} "
            f"(NIFF layers here: {', '.join(niff) if niff else 'none'})"
        )
    require_finite(kernels, "weight PCA")
    frames, comps, means = [], {}, {}
    for lk in kernels:
        h, w = lk.size
        assert lk.response is not None  # refused above: every layer here has a response
        resp = lk.response.to(torch.complex128)
        if response == "hermitian":
            resp = hermitian_part(resp)
        resp = resp.reshape(-1, h * w)
        for part, values in (("real", resp.real), ("imag", resp.imag)):
            c, var, ratio, mean = pca(values.numpy(), n_components)
            comps[(lk.name, part)] = c.reshape(-1, h, w)
            means[(lk.name, part)] = mean.reshape(h, w)
            rows = _rows(lk, part, c, var, ratio)
            rows.insert(rows.columns.get_loc(PART) + 1, "response", response)
            frames.append(rows)
    return _finish(frames, comps, means)


def pca_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per layer (and part, and checkpoint when present) of a PCA table: the explained-
    variance ratio of each component that every row has (``evr_0``, ``evr_1``, …: no column is
    empty where a layer has fewer kernels or pixels than components asked for), the number of
    components kept (``n_components``) and the ratio they explain together (``evr_total``)."""
    by = keys(table, LAYER, PART, FMAP_H, FMAP_W, "n_kernels")
    if table.empty:
        return pd.DataFrame(columns=by + ["n_components", "evr_total"])
    g = table.groupby(by, sort=False, dropna=False)
    out = g.size().rename("n_components").reset_index()
    out["evr_total"] = g["explained_variance_ratio"].sum(min_count=1).to_numpy()
    common = int(out["n_components"].min())
    wide = table[table[COMPONENT] < common].pivot_table(
        index=by, columns=COMPONENT, values="explained_variance_ratio", sort=False, dropna=False
    )
    wide.columns = [f"evr_{int(c)}" for c in wide.columns]
    return out.merge(wide.reset_index(), on=by, how="left")[by + list(wide.columns) + ["n_components", "evr_total"]]


def capped_layers(table: pd.DataFrame, n_components: int) -> pd.DataFrame:
    """Layers (and parts) of a PCA table that kept fewer than ``n_components`` components
    (their rank: fewer kernels or pixels), with the number kept."""
    by = keys(table, LAYER, PART)
    if table.empty:
        return pd.DataFrame(columns=by + ["n_components"])
    kept = table.groupby(by, sort=False).size().rename("n_components").reset_index()
    return kept[kept["n_components"] < n_components].reset_index(drop=True)


def pca_warnings(table: pd.DataFrame, n_components: int) -> list[str]:
    """What a reader of a PCA table must be told: layers without variance (all kernels alike:
    NaN ratios, zero components) and layers that kept fewer than ``n_components`` components."""
    out = []
    flat = table[table["explained_variance_ratio"].isna()]
    if not flat.empty:
        names = [
            "@".join(map(str, k)) if isinstance(k, tuple) else str(k)
            for k in flat.groupby(keys(flat, LAYER, PART), sort=False).size().index
        ]
        out.append(
            f"no variance (all kernels identical) in {', '.join(names)}; explained-variance "
            "ratios are NaN and components zero there"
        )
    capped = capped_layers(table, n_components)
    if not capped.empty:
        kept = capped["n_components"]
        total = table.groupby(keys(table, LAYER, PART), sort=False).ngroups
        span = f"{kept.min()}" + ("" if kept.min() == kept.max() else f"-{kept.max()}")
        out.append(
            f"{len(capped)} of {total} layers have fewer than {n_components} components (fewer "
            f"kernels or pixels); kept {span} there"
        )
    return out

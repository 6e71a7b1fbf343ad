"""Everything the figures are drawn from (:class:`FigureData`), computed through the runner by
:func:`analyse` (``plotting.report`` only draws)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from .._types import PathLike
from ..analysis import (
    LayerKernels,
    PCAResult,
    effective_sizes,
    gaussian_fit,
    gaussian_summary,
    kernel_mass,
    mass_summary,
    pca_eigenkernels,
    weight_pca,
)
from ..analysis.mass import massless_warning
from ..analysis.pca import pca_warnings
from ..analysis.schema import with_checkpoint
from ..errors import DataError, NiffError, SelectionError
from ..runs import run_file
from .find import Found, discover
from .load import Loaded, select_kernels
from .runner import Analysis, Item, run

COST_SIZES = (7, 14, 28, 56, 112)


@dataclass
class FigureData:
    """Everything the figures are drawn from; tables carry a leading ``checkpoint`` column.

    Attributes:
        labels: checkpoint labels, in the order given.
        kernels: label → the analysed :class:`~niff_analysis.analysis.LayerKernels`.
        mass_summary: Eq. 6 mean/std per layer and window.
        effective_sizes: smallest window with 50/90/95 % mass, per kernel.
        gaussian: per-kernel 2-D Gaussian fits.
        gaussian_summary: σx, σy per layer (:func:`~niff_analysis.analysis.gaussian_summary`).
        eigenkernels: label → PCA of the spatial kernels.
        weight_pca: label → PCA of the frequency weights (NIFF checkpoints only).
        cost: FLOPs and measured times per feature-map size.
        sources, hashes: label → resolved path and weights hash.
        parameters: the settings of the analysis (recorded in the figures' ``meta.json``).
        mass_scale: per checkpoint, measure, layer and window the mean mass ratio of a delta, of
            seeded white noise on the layer's map and of the initialisation
            (:func:`~niff_analysis.analysis.references.mass_scale`).
        measures: the measures the mass tables hold, in order (the first is the effective-size
            figure's).
        untrained_mass_summary: Eq. 6 mean/std of each checkpoint's initialisation (its run's
            ``init/``, or rebuilt from the recorded seed; see
            :func:`~niff_analysis.checkpoint.load_initial`), labelled with the trained
            checkpoint's label; empty when none is known.
        history: each checkpoint's ``kernel_stats.csv`` (statistics during training), where it
            has one.
        frequency, untrained_frequency: radial profiles of |FFT(k)| (the filter that acts, the
            Hermitian part of W) of the NIFF layers, trained and at initialisation.
        erf_maps, erf: effective receptive fields per stage (label → stage → map; label
            ``<name>@init`` for the initialisation) and their area ratios, where the
            checkpoint's dataset is available; ``parameters["erf_protocol"]`` and the table's
            ``protocol`` column say how they were measured.
        notes: what was skipped and why, and warnings (kernels without mass, PCA without
            variance).
    """

    labels: list[str]
    kernels: dict[str, list[LayerKernels]]
    mass_summary: pd.DataFrame
    effective_sizes: pd.DataFrame
    gaussian: pd.DataFrame
    gaussian_summary: pd.DataFrame
    eigenkernels: dict[str, PCAResult]
    weight_pca: dict[str, PCAResult]
    cost: pd.DataFrame
    sources: dict[str, str] = field(default_factory=dict)
    hashes: dict[str, str | None] = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    untrained_mass_summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    frequency: pd.DataFrame = field(default_factory=pd.DataFrame)
    untrained_frequency: pd.DataFrame = field(default_factory=pd.DataFrame)
    erf_maps: dict = field(default_factory=dict)
    erf: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list = field(default_factory=list)
    mass_scale: pd.DataFrame = field(default_factory=pd.DataFrame)
    measures: list = field(default_factory=lambda: ["l1"])


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _tagged_pca(result: PCAResult, label: str) -> PCAResult:
    result.table = with_checkpoint(result.table, label)
    return result


def analyse(
    checkpoints: Sequence[PathLike | None] = (None,),
    layers: str | Sequence[str] = "*",
    device: str = "cpu",
    max_kernels: int | None = 1024,
    n_components: int = 6,
    cost_sizes: Sequence[int] = COST_SIZES,
    measure_cost: bool = True,
    progress: Callable[[str], None] | None = None,
    factory: str | None = None,
    erf_images: int = 50,
    data_dir: PathLike | None = None,
    measure: str = "l1",
    erf_protocol: str = "luo",
    strict: bool = False,
    found: Found | None = None,
) -> FigureData:
    """Run every analysis the figures need, once per checkpoint.

    Args:
        checkpoints: checkpoint paths (:func:`find_checkpoints`); ``None`` is the bundled default.
        layers: fnmatch glob(s) on layer names.
        device: where checkpoints are loaded and MLPs/fits run.
        max_kernels: analyse at most this many kernels per layer (evenly spaced sample); None
            for all.
        n_components: principal components per layer.
        cost_sizes: feature-map sizes of the cost figure; empty to skip it.
        measure_cost: also time the layers (otherwise FLOPs only).
        progress: called with a short message before each step.
        factory: the user factory you allow to build a checkpoint's model.
        erf_images: test images of the checkpoint's dataset for the receptive fields (0: skip).
        data_dir: that dataset's folder (Fashion-MNIST: the Debian package's by default).
        measure: ``"l1"``, ``"energy"`` or ``"both"``: the measure(s) of the mass ratio and the
            effective sizes (the tables carry a ``measure`` column; the mass-ratio and history
            figures draw one row of panels per measure).
        erf_protocol: how the receptive fields are measured, ``"luo"`` or ``"replknet"``
            (:mod:`~niff_analysis.analysis.erf`); recorded in the parameters and the table.
        strict: stop at the first checkpoint of a folder that cannot be analysed (otherwise it
            is skipped, with a note).
        found: :func:`discover`'s answer for ``checkpoints``, if the caller has it.

    Raises:
        NiffError: a checkpoint named directly cannot be analysed, or none can.
    """
    from ..analysis.cost import cost_table
    from ..analysis.erf import effective_receptive_fields, erf_area_ratios
    from ..analysis.frequency import frequency_profile
    from ..analysis.mass import MEASURES, check_measure
    from ..analysis.references import NOISE_KERNELS, NOISE_SEED, mass_scale
    from ..analysis.schema import MEASURE
    from ..analysis.stats import FILE_NAME as STATS_NAME
    from ..analysis.stats import read_kernel_stats
    from ..analysis.uncertainty import RESAMPLES

    say = progress or (lambda msg: None)
    data = FigureData(
        labels=[],
        kernels={},
        mass_summary=pd.DataFrame(),
        effective_sizes=pd.DataFrame(),
        gaussian=pd.DataFrame(),
        gaussian_summary=pd.DataFrame(),
        eigenkernels={},
        weight_pca={},
        cost=pd.DataFrame(),
        parameters=dict(
            layers=layers,
            max_kernels=max_kernels,
            n_components=n_components,
            cost_sizes=list(cost_sizes),
            measure_cost=measure_cost,
            measure=measure,
            bootstrap=RESAMPLES,
            noise_kernels=NOISE_KERNELS,
            noise_seed=NOISE_SEED,
            erf_protocol=erf_protocol,
        ),
    )
    t: dict[str, list[pd.DataFrame]] = {
        k: [] for k in ("mass", "sizes", "gauss", "gsum", "untrained", "history", "freq", "freq0", "erf", "scale")
    }
    measures = list(MEASURES) if measure == "both" else [check_measure(measure)]
    images: dict = {}
    found = found if found is not None else discover(list(checkpoints) or [None])
    data.notes += found.skipped_lines()

    def skip(label: str, exc: NiffError) -> None:
        data.notes.append(f"skipped {label}: {exc}")
        say(data.notes[-1])

    class FigureTables(Analysis):
        """Every table of the figures, one checkpoint at a time (collected in ``data``)."""

        def compute(self, item: Item) -> None:
            label, meta = item.label, item.meta
            lks = data.kernels[label] = item.kernels
            data.labels.append(label)
            data.sources[label], data.hashes[label] = str(meta.path or item.checkpoint.path), meta.sha256
            has_niff = any(lk.response is not None for lk in lks)
            say(f"{label}: mass ratio, effective sizes ({', '.join(measures)})")
            for measure_i in measures:
                m = kernel_mass(lks, measure_i)
                if measure_i == measures[0]:
                    data.notes += [f"{label}: {w}" for w in filter(None, [massless_warning(m)])]
                t["mass"].append(with_checkpoint(mass_summary(m, RESAMPLES), label))
                t["sizes"].append(with_checkpoint(effective_sizes(m), label))
            say(f"{label}: PCA")
            data.eigenkernels[label] = _tagged_pca(pca_eigenkernels(lks, n_components=n_components), label)
            data.notes += [f"{label}: {w}" for w in pca_warnings(data.eigenkernels[label].table, n_components)]
            if has_niff:
                data.weight_pca[label] = _tagged_pca(
                    weight_pca([lk for lk in lks if lk.response is not None], n_components=n_components), label
                )
            say(f"{label}: Gaussian fits")
            g = gaussian_fit(lks, device=device)
            t["gauss"].append(with_checkpoint(g, label))
            t["gsum"].append(with_checkpoint(gaussian_summary(g), label))
            if has_niff:
                t["freq"].append(with_checkpoint(frequency_profile(lks), label))
            init, init_lks = item.checkpoint.initial(device=device), None
            if init is not None:
                say(f"{label}: mass ratio at initialisation")
                init_lks = select_kernels(
                    Loaded(label, item.path, init), layers=layers, include_conv=not has_niff, max_kernels=max_kernels
                ).kernels
                for measure_i in measures:
                    t["untrained"].append(with_checkpoint(mass_summary(kernel_mass(init_lks, measure_i)), label))
                if has_niff:
                    t["freq0"].append(with_checkpoint(frequency_profile(init_lks), label))
            if erf_images:
                key = (meta.dataset, meta.input_size, meta.content_scale)
                try:
                    if key not in images:
                        images[key] = item.checkpoint.images(erf_images, data_dir)
                except (DataError, SelectionError) as exc:
                    data.notes.append(f"{label}: receptive fields skipped ({exc}; see --erf-images)")
                    say(data.notes[-1])
                else:
                    say(f"{label}: effective receptive fields ({len(images[key])} images)")
                    for lab, model in [(label, item.model)] + ([(f"{label}@init", init)] if init is not None else []):
                        data.erf_maps[lab] = effective_receptive_fields(model, images[key], protocol=erf_protocol)
                        t["erf"].append(
                            with_checkpoint(erf_area_ratios(data.erf_maps[lab], protocol=erf_protocol), lab)
                        )
            say(f"{label}: the scale (delta, white noise, initialisation)")
            for measure_i in measures:
                scale = mass_scale(lks, measure_i, init_lks)
                scale.insert(0, MEASURE, measure_i)
                t["scale"].append(with_checkpoint(scale, label))
            stats_file = run_file(data.sources[label], STATS_NAME)
            if stats_file.is_file():
                try:
                    t["history"].append(with_checkpoint(read_kernel_stats(stats_file), label))
                except (ValueError, OSError, pd.errors.ParserError) as exc:  # an extra: the figures go on
                    data.notes.append(f"{label}: kernel statistics left out ({' '.join(str(exc).split())})")
                    say(data.notes[-1])

    run(
        analyses=FigureTables(),
        found=found,
        layers=layers,
        max_kernels=max_kernels,
        device=device,
        factory=factory,
        strict=strict,
        skip=skip,
        log_selection=False,
        announce=lambda label: say(f"{label}: kernels"),
    )
    if not data.labels:
        raise NiffError("no checkpoint could be analysed: " + "; ".join(data.notes[-3:]))
    if cost_sizes:
        say("cost: FLOPs" + (" and timings" if measure_cost else ""))
        data.cost = cost_table(
            sizes=tuple(cost_sizes), channels=64, batch=8, measure=measure_cost, repeats=5, max_seconds=0.5
        )
    data.mass_summary, data.effective_sizes = _concat(t["mass"]), _concat(t["sizes"])
    data.gaussian, data.gaussian_summary = _concat(t["gauss"]), _concat(t["gsum"])
    data.untrained_mass_summary, data.history = _concat(t["untrained"]), _concat(t["history"])
    data.mass_scale, data.measures = _concat(t["scale"]), measures
    data.frequency, data.untrained_frequency, data.erf = _concat(t["freq"]), _concat(t["freq0"]), _concat(t["erf"])
    return data

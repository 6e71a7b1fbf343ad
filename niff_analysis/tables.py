"""The tables of the analysis commands: one :class:`~niff_analysis.pipeline.Analysis` per command
(``describe``, ``kernels``, ``mass``, ``pca``, ``gaussian``, ``history``, ``erf``, ``claims``), computed by
:func:`~niff_analysis.pipeline.run` on each checkpoint and combined into what the command prints.
The command line parses its options into one of these, runs it and renders the result; a
script can do the same::

    from niff_analysis.pipeline import run
    from niff_analysis.tables import Mass

    mass = Mass(view="summary")
    table, note = run(["resnet18_niff_fmnist"], mass)[mass]

``table=True`` asks for the view for people (per-layer summaries, intervals as text) instead of
the long form; ``arrays=True`` (kernels, pca) for the arrays a ``.npz`` file holds.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Sequence
from typing import cast

import numpy as np
import pandas as pd
import torch

from ._types import PathLike
from .analysis import (
    effective_receptive_fields,
    effective_sizes,
    erf_area_ratios,
    frequency_profile,
    gaussian_fit,
    gaussian_summary,
    kernel_mass,
    kernel_table,
    mass_summary,
    mass_table,
    pca_eigenkernels,
    pca_summary,
    weight_pca,
)
from .analysis.claims import paper_claims, pool_seeds
from .analysis.erf import PROTOCOL
from .analysis.mass import MEASURES, massless_warning
from .analysis.pca import pca_warnings
from .analysis.schema import CHECKPOINT, FMAP_H, FMAP_W, LAYER, STAGE, THRESHOLD, with_checkpoint
from .analysis.stats import ANY, STATS, counts_as_integers, history_table
from .analysis.uncertainty import RESAMPLES, seed_interval, with_interval_text
from .errors import NiffError, SelectionError
from .pipeline import Analysis, Item, Results, seed_groups


def measures_of(measure: str) -> tuple[str, ...]:
    """The measures ``measure`` names (``"both"``: every one)."""
    return tuple(MEASURES) if measure == "both" else (measure,)


def _key(label: str, name: str, several: bool) -> str:
    return f"{label}/{name}" if several else name


def _initial_or_note(item: Item) -> list | None:
    init = item.initial_kernels()
    if init is None:
        item.log(f"note: {item.label}: no initialisation known (not trained by this toolkit): no init reference")
    return init


def structure(model) -> dict:
    """What ``describe`` shows of any model: its parameter count, its NIFF layers, its plain
    convolutions (which ones the analyses take, and why not the others) and, for a converted
    model, the convolutions its conversion kept."""
    from .analysis.kernels import conv_inventory
    from .checkpoint import layer_table

    info: dict = dict(num_params=int(sum(p.numel() for p in model.parameters())), layers=layer_table(model))
    info["convs"] = conv_inventory(model)
    report = getattr(model, "niff_conversion", None)
    if report is not None:
        info["kept"] = report.kept
    return info


def describe_registered(name: str, **kwargs) -> dict:
    """``describe`` of a registered model name, built with ``kwargs`` (a model, no checkpoint).

    Raises:
        UnknownModelError: ``name`` is not registered (the message names the bundled checkpoints too).
    """
    from .checkpoint import bundled_checkpoints
    from .models import ModelConfig, create_model
    from .models.registry import UnknownModelError

    try:
        model = create_model(name, **kwargs)
    except UnknownModelError as exc:
        names = ", ".join(bundled_checkpoints())
        raise UnknownModelError(f"{exc} (or a bundled checkpoint: {names})" if names else str(exc)) from None
    return dict(
        architecture=name,
        source="registry",
        model_kwargs=dict(cast(ModelConfig, model.niff_config)),
        **structure(model),
    )


class Describe(Analysis):
    """``describe``: a checkpoint's identity (architecture, path, weights hash, model settings and
    what it records of its training), the kernel statistics its run recorded, and its
    :func:`structure`. Nothing expensive is computed."""

    needs = "model"

    def compute(self, item: Item) -> dict:
        from .analysis.stats import FILE_NAME as STATS_NAME
        from .analysis.stats import read_kernel_stats
        from .runs import run_file

        meta = item.meta
        info: dict = dict(
            architecture=meta.architecture,
            source="checkpoint",
            path=meta.path,
            sha256=meta.sha256,
            model_kwargs=meta.model_kwargs,
        )
        for key in ("dataset", "epochs", "seed", "test_acc", "test_loss", "recipe", "versions"):
            if key in meta.record:  # what the checkpoint records, as it records it
                info[key] = meta.record[key]
        stats_file = run_file(meta.path or item.checkpoint.path, STATS_NAME)
        if stats_file.is_file():
            try:
                steps = read_kernel_stats(stats_file).groupby("step")["epoch"].first()
            except (ValueError, OSError) as exc:  # an extra: the description goes on
                item.warn(f"kernel statistics left out: {' '.join(str(exc).split())}")
            else:
                info["kernel_stats"] = dict(
                    file=str(stats_file), records=len(steps), epochs=[round(float(e), 3) for e in steps]
                )
        return dict(info, **structure(item.model))


class Kernels(Analysis):
    """``kernels``: per layer its kind, feature map, kernel shape, count and mean L1 norm
    (``view="layers"``), or the radial profile of each NIFF layer's frequency response that acts
    (``view="radial"``); with ``arrays`` the kernels themselves, one array per layer keyed by its
    module name (``CHECKPOINT/layer`` for several checkpoints; ``responses`` adds each NIFF
    layer's raw frequency response as ``<layer>@real`` and ``<layer>@imag``)."""

    def __init__(self, view: str = "layers", arrays: bool = False, responses: bool = False, table: bool = False):
        self.view, self.arrays, self.responses, self.table = view, arrays, responses, table

    def compute(self, item: Item) -> list:
        return item.kernels

    def combine(self, results: Results) -> pd.DataFrame | dict[str, np.ndarray]:
        per = results.of(self)
        if self.arrays:
            several, arrays = len(per) > 1, {}
            for label, lks in per.items():
                for lk in lks:
                    arrays[_key(label, lk.name, several)] = lk.kernels.numpy()
                    if self.responses and lk.response is not None:
                        arrays[_key(label, lk.name, several) + "@real"] = lk.response.real.numpy()
                        arrays[_key(label, lk.name, several) + "@imag"] = lk.response.imag.numpy()
            return arrays
        if self.view == "radial":
            df = pd.concat(
                [with_checkpoint(frequency_profile(lks), label) for label, lks in per.items()], ignore_index=True
            )
            if df.empty:
                raise SelectionError("--view radial needs NIFF layers (frequency responses); none selected")
            return df.round(4) if self.table else df
        return pd.concat([with_checkpoint(kernel_table(lks), label) for label, lks in per.items()], ignore_index=True)


class Mass(Analysis):
    """``mass``: the mass ratio (Eq. 6) of every kernel and window (``view="ratios"``), its
    per-layer summary with intervals and the scale (delta, white noise, initialisation;
    ``"summary"``), or each kernel's effective sizes (``"sizes"``), under each measure
    ``measure`` names. :meth:`combine` gives (table, note): the note is printed after it."""

    def __init__(self, view: str = "ratios", measure: str = "l1", resamples: int = RESAMPLES, table: bool = False):
        self.view, self.measure, self.resamples, self.table = view, measure, resamples, table

    def compute(self, item: Item) -> tuple[list, list]:
        from .analysis.references import mass_scale

        label, lks = item.label, item.kernels
        t0, frames, scales = time.perf_counter(), [], []
        init = _initial_or_note(item) if self.view == "summary" else None
        for m in measures_of(self.measure):
            frames.append(with_checkpoint(kernel_mass(lks, m), label))
            if self.view == "summary":
                scales.append(with_checkpoint(mass_scale(lks, m, init), label).assign(measure=m))
            for w in filter(None, [massless_warning(frames[-1])]):
                item.warn(f"{label}: {w}")
        item.log(f"{label}: {sum(len(f) for f in frames)} mass ratios in {time.perf_counter() - t0:.2f} s")
        return frames, scales

    def combine(self, results: Results) -> tuple[pd.DataFrame, str]:
        per = results.of(self).values()
        mass = pd.concat([f for frames, _ in per for f in frames], ignore_index=True)
        note = ""
        if self.view == "summary":
            df = mass_summary(mass, self.resamples)
            df = df.merge(
                pd.concat([s for _, scales in per for s in scales], ignore_index=True),
                on=[CHECKPOINT, "measure", LAYER, "window"],
                how="left",
            )
            if "init" not in df.columns:
                df["init"] = np.nan
            if self.table:
                df = with_interval_text(df.drop(columns=["std"]).round(4), digits=3)
        elif self.table:
            df = mass_table(mass, self.resamples)
            if (df[[FMAP_H, FMAP_W]].max(axis=1) < 9).any():
                note = (
                    "(mass_wS of a layer whose kernels are smaller than S×S is that of the whole kernel, "
                    "1.0: the window covers all of it)\n"
                )
            df = with_interval_text(df, digits=3)
        elif self.view == "sizes":
            df = effective_sizes(mass)
        else:
            df = mass
        return df, note


class Pca(Analysis):
    """``pca``: PCA eigenkernels per layer, or with ``weights`` the PCA of the frequency weights
    (``response`` ``"raw"`` or ``"hermitian"``; NIFF layers only); with ``arrays`` the components
    (``<layer>@real``/``@imag`` for the weights)."""

    def __init__(
        self,
        components: int = 6,
        weights: bool = False,
        response: str = "raw",
        arrays: bool = False,
        table: bool = False,
    ):
        self.components, self.weights, self.response, self.arrays, self.table = (
            components,
            weights,
            response,
            arrays,
            table,
        )
        self.niff_only = "weight PCA (--weights)" if weights else None

    def compute(self, item: Item):
        label, lks = item.label, item.kernels
        t0 = time.perf_counter()
        res = (
            weight_pca(lks, self.components, response=self.response)
            if self.weights
            else pca_eigenkernels(lks, self.components)
        )
        item.log(f"{label}: PCA of {len(lks)} layers in {time.perf_counter() - t0:.2f} s")
        for w in pca_warnings(res.table, self.components):
            item.warn(f"{label}: {w}")
        return res

    def combine(self, results: Results) -> pd.DataFrame | dict[str, np.ndarray]:
        per = results.of(self)
        if self.arrays:
            several, arrays = len(per) > 1, {}
            for label, res in per.items():
                for key, comp in res.components.items():
                    name = f"{key[0]}@{key[1]}" if isinstance(key, tuple) else key
                    arrays[_key(label, name, several)] = comp
            return arrays
        df = pd.concat([with_checkpoint(res.table, label) for label, res in per.items()], ignore_index=True)
        return pca_summary(df).round(4) if self.table else df


#: The columns of ``gaussian``'s table for people (each with its interval where it has one).
GAUSSIAN_TABLE = [
    "checkpoint",
    "layer",
    "fmap_h",
    "fmap_w",
    "sigma_x_median",
    "sigma_y_median",
    "sigma_ratio_mean",
    "sigma_ratio_median",
    "sigma_x_moment_median",
    "sigma_y_moment_median",
    "n_ok",
    "n_censored",
    "n",
]


class Gaussian(Analysis):
    """``gaussian``: a 2-D Gaussian fit to |k| of every kernel (``view="fits"``) or their
    per-layer summary (``"summary"``; the table for people always shows the summary)."""

    def __init__(
        self,
        view: str = "fits",
        max_iter: int = 200,
        resamples: int = RESAMPLES,
        progress: bool = False,
        table: bool = False,
    ):
        self.view, self.max_iter, self.resamples, self.progress, self.table = view, max_iter, resamples, progress, table

    def compute(self, item: Item) -> pd.DataFrame:
        t0 = time.perf_counter()
        fits = gaussian_fit(item.kernels, max_iter=self.max_iter, progress=self.progress)  # always on the CPU
        item.log(
            f"{item.label}: {len(fits)} Gaussian fits, {int(fits['success'].sum())} ok, "
            f"in {time.perf_counter() - t0:.1f} s on the CPU"
        )
        return with_checkpoint(fits, item.label)

    def combine(self, results: Results) -> pd.DataFrame:
        fits = pd.concat(list(results.of(self).values()), ignore_index=True)
        df = fits if not self.table and self.view == "fits" else gaussian_summary(fits, self.resamples)
        if self.table:  # for people: medians of the fits, the moment σ, and what they stand for
            keep = [k for c in GAUSSIAN_TABLE for k in (c, f"{c}_lo", f"{c}_hi")]
            df = with_interval_text(df[[c for c in keep if c in df.columns]], digits=3)
        return df


class History(Analysis):
    """``history``: the kernel statistics each run recorded during training (its
    ``kernel_stats.csv``), of the layers matching ``item.layers``, under ``measure``; runs of one
    recipe from several seeds pooled into their mean over seeds (``per_seed`` keeps each run).

    Raises:
        SelectionError: an unknown statistic in ``stats`` (on construction).
    """

    needs = "history"

    def __init__(
        self,
        stats: Sequence[str] | None = None,
        measure: str = "l1",
        per_seed: bool = False,
        layers_text: str = "*",
        stats_text: str | None = None,
        table: bool = False,
    ):
        wanted = list(stats) if stats is not None else list(STATS)
        unknown = [s for s in wanted if s not in STATS]
        if unknown or not wanted:
            raise SelectionError(
                f"--stats: unknown statistic {unknown[0] if unknown else stats_text!r}; choose from {', '.join(STATS)}"
            )
        self.stats, self.measure, self.per_seed, self.layers_text, self.table = (
            wanted,
            measure,
            per_seed,
            layers_text,
            table,
        )

    def compute(self, item: Item) -> tuple[pd.DataFrame, PathLike]:
        (df, stats_file), label, patterns = item.recorded(), item.label, item.layers
        patterns = [patterns] if isinstance(patterns, str) else patterns
        in_layers = df[LAYER].map(lambda n: any(fnmatch.fnmatchcase(n, p) for p in patterns))
        if not in_layers.any():
            raise SelectionError(
                f"{label}: no layer matches {self.layers_text!r}; available layers: "
                f"{', '.join(dict.fromkeys(df[LAYER]))}"
            )
        measures = measures_of(self.measure)
        for m in measures:
            if not (df["measure"] == m).any():
                item.warn(f"{label}: no {m} statistics (recorded before kernel_stats.csv held both measures)")
        keep = in_layers & df["stat"].isin(self.stats) & df["measure"].isin(list(measures) + [ANY])
        return with_checkpoint(df[keep], label), stats_file.parent

    def combine(self, results: Results) -> pd.DataFrame:
        per = results.of(self)
        frames = {label: frame for label, (frame, _) in per.items()}
        groups = seed_groups([(label, folder) for label, (_, folder) in per.items()])
        grouped = {m for g in groups for m in g.members}
        out = [f for label, f in frames.items() if self.per_seed or label not in grouped]
        ids = ["epoch", "step", LAYER, "stage", "measure", "stat"]
        for g in groups:
            pooled = pd.concat([frames[m] for m in g.members], ignore_index=True)
            rows = []
            for key, part in pooled.groupby(ids, sort=False, dropna=False):
                mean, lo, hi = seed_interval(part["value"])
                rows.append((g.label, *key, mean, len(part), lo, hi))
            out.append(pd.DataFrame(rows, columns=[CHECKPOINT, *ids, "value", "n_seeds", "lo", "hi"]))
            results.log(f"{g.label}: mean over {len(g.members)} runs (seeds {', '.join(map(str, g.seeds))})")
        df = pd.concat(out, ignore_index=True)
        if df.empty:
            raise SelectionError(
                f"no statistic {', '.join(self.stats)} under measure {self.measure} in {', '.join(frames)}"
            )
        if groups:
            df["n_seeds"] = df["n_seeds"].fillna(1).astype(int)
        if self.table:
            df = history_table(df, self.stats, self.measure).round(3)
            if groups:
                df = with_interval_text(df, digits=3)
            return df
        return counts_as_integers(df)


class Erf(Analysis):
    """``erf``: the effective receptive field of each stage (or the modules ``layers`` names)
    over ``images`` test images of each checkpoint's dataset (or ``dataset``), as the side of
    the smallest centred square holding each threshold's share of it; ``untrained`` measures
    each checkpoint's initialisation too (label ``<name>@init``). The table for people has one
    column per threshold."""

    needs = "model"

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        images: int = 50,
        dataset: str | None = None,
        data_dir: PathLike | None = None,
        thresholds: Sequence[float] = (20, 30, 50, 99),
        untrained: bool = False,
        protocol: str = "luo",
        table: bool = False,
    ):
        self.layers, self.n_images, self.dataset, self.data_dir = layers, images, dataset, data_dir
        self.thresholds, self.untrained, self.protocol, self.table = list(thresholds), untrained, protocol, table
        self._images: dict = {}  # the test images of each dataset and size, loaded once per run

    def compute(self, item: Item) -> list[pd.DataFrame]:
        label, model, meta = item.label, item.model, item.meta
        name = self.dataset or meta.dataset
        if name is None:
            raise NiffError(f"{label}: the checkpoint records no dataset; pass --dataset")
        key = (name, str(self.data_dir), meta.input_size, meta.content_scale if name == meta.dataset else 1.0)
        if key not in self._images:
            try:
                self._images[key] = item.checkpoint.images(self.n_images, self.data_dir, dataset=name)
            except SelectionError as exc:
                raise SelectionError(f"--images: {exc}") from None
        images = self._images[key]
        todo = [(label, model)]
        if self.untrained:
            init = item.checkpoint.initial(device=str(item.device))
            if init is None:
                item.warn(f"{label}: no initialisation known (not trained by this toolkit); --untrained skipped")
            else:
                todo.append((f"{label}@init", init))
        frames = []
        for lab, m in todo:
            t0 = time.perf_counter()
            try:
                maps = effective_receptive_fields(m, images, layers=self.layers, protocol=self.protocol)
            except NiffError as exc:
                raise type(exc)(f"{label}: {exc}") from None
            item.log(
                f"{lab}: ERF ({self.protocol} protocol) of {len(maps)} stages from {len(images)} images in "
                f"{time.perf_counter() - t0:.1f} s"
            )
            frames.append(with_checkpoint(erf_area_ratios(maps, self.thresholds, protocol=self.protocol), lab))
        return frames

    def combine(self, results: Results) -> pd.DataFrame:
        df = pd.concat([f for frames in results.of(self).values() for f in frames], ignore_index=True)
        if self.table:
            df = df.pivot_table(
                index=[CHECKPOINT, STAGE, PROTOCOL], columns=THRESHOLD, values="side", sort=False
            ).reset_index()
            df.columns = [f"side_{c:g}%" if isinstance(c, float) else c for c in df.columns]
        return df


class Claims(Analysis):
    """``claims``: the paper's claims about learned kernel sizes, measured on every NIFF layer
    (a baseline's plain convolutions) under each measure ``measure`` names, with the delta,
    white-noise and initialisation references; checkpoints of one recipe that differ only in
    their seed pooled (``per_seed`` keeps each run); ``untrained`` adds each initialisation as a
    checkpoint of its own."""

    def __init__(
        self,
        measure: str = "both",
        resamples: int = RESAMPLES,
        untrained: bool = False,
        per_seed: bool = False,
        table: bool = False,
    ):
        self.measure, self.resamples, self.untrained, self.per_seed, self.table = (
            measure,
            resamples,
            untrained,
            per_seed,
            table,
        )

    def compute(self, item: Item) -> tuple[int | None, dict[str, pd.DataFrame]]:
        init = item.initial_kernels()
        if init is None:
            item.warn(
                f"{item.label}: no initialisation known (not trained by this toolkit): no init column"
                + ("; --untrained skipped" if self.untrained else "")
            )
        todo = [(item.label, item.kernels, init)]
        if self.untrained and init is not None:
            todo.append((f"{item.label}@init", init, None))
        tables = {}
        for label, lks, ref in todo:
            t0 = time.perf_counter()
            tables[label] = paper_claims(
                lks, init=ref, measures=measures_of(self.measure), resamples=self.resamples, device=str(item.device)
            )
            item.log(f"{label}: {len(tables[label])} claim rows in {time.perf_counter() - t0:.1f} s")
        return item.meta.epochs, tables

    def combine(self, results: Results) -> pd.DataFrame:
        per = results.of(self)
        tables = {label: t for _, own in per.values() for label, t in own.items()}
        trained = {label: epochs for label, (epochs, _) in per.items()}
        groups = seed_groups([(label, path) for label, path in results.found.checkpoints if label in trained], trained)
        grouped = {m for g in groups for m in g.members}
        frames = [
            with_checkpoint(t, label)
            for label, t in tables.items()
            if self.per_seed or label.removesuffix("@init") not in grouped
        ]
        for g in groups:
            frames.append(with_checkpoint(pool_seeds([tables[m] for m in g.members]), g.label))
            results.log(f"{g.label}: mean over {len(g.members)} runs (seeds {', '.join(map(str, g.seeds))})")
            inits = [tables[f"{m}@init"] for m in g.members if f"{m}@init" in tables]
            if inits:
                frames.append(with_checkpoint(pool_seeds(inits), f"{g.label}@init"))
        df = pd.concat(frames, ignore_index=True)
        if "n_seeds" in df.columns:
            df["n_seeds"] = df["n_seeds"].fillna(1).astype(int)
        if self.table:
            df = with_interval_text(df.rename(columns={"lo": "value_lo", "hi": "value_hi"}), digits=3)
            for col in ("delta", "noise", "init"):
                df[col] = df[col].map(lambda v: f"{v:.3g}")
        return df


class Evaluate(Analysis):
    """``evaluate``: each checkpoint's loss and accuracy on a split of its dataset (or
    ``dataset``) shown as it was trained on (the recipe's content scale, or ``content_scale``),
    with the accuracy's 95 % Wilson interval over the images; ``recalibrate`` > 0 adds the same
    after its BatchNorm statistics are recomputed from that many training images
    (:func:`~niff_analysis.train.batches.recalibrate_batchnorm`, on a copy: the checkpoint's
    weights and statistics are never changed). ``recorded_acc`` is the test accuracy the run
    recorded, where the evaluation is the one it recorded (its dataset, content scale and whole
    test split, no recalibration; NaN otherwise)."""

    needs = "model"

    def __init__(
        self,
        dataset: str | None = None,
        data_dir: PathLike | None = None,
        split: str = "test",
        content_scale: float | None = None,
        images: int | None = None,
        recalibrate: int = 0,
        batch_size: int = 512,
        seed: int = 0,
        table: bool = False,
    ):
        self.dataset, self.data_dir, self.split, self.content_scale = dataset, data_dir, split, content_scale
        self.images = images
        self.recalibrate, self.batch_size, self.seed, self.table = recalibrate, batch_size, seed, table
        self._data: dict = {}  # each (dataset, split, content scale, input size) loaded once per run

    def _load(self, name: str, split: str, scale: float, size: tuple[int, int]):
        from .data import load_dataset

        key = (name, split, scale, size)
        if key not in self._data:
            self._data[key] = load_dataset(name, self.data_dir, split, image_size=size, content_scale=scale)
        return self._data[key]

    def compute(self, item: Item) -> list[dict]:
        import copy

        from .analysis.uncertainty import proportion_interval
        from .runs import read_train_config
        from .train.batches import evaluate, first_samples, recalibrate_batchnorm

        label, meta = item.label, item.meta
        name = self.dataset or meta.dataset
        if name is None:
            raise SelectionError(f"{label}: the checkpoint records no dataset; pass --dataset")
        recorded_scale = meta.content_scale if name == meta.dataset else 1.0  # as the run saw its own data
        scale = recorded_scale if self.content_scale is None else self.content_scale
        data = self._load(name, self.split, scale, meta.input_size)
        run = read_train_config(item.path) if item.path is not None else None
        recorded_images = None if run is None else run.get("test_subset")

        def first(n: int | None) -> int | None:  # None: the whole split
            return None if n is None or n >= len(data) else n

        as_recorded = (
            name == meta.dataset
            and scale == recorded_scale
            and self.split == "test"
            and first(self.images) == first(recorded_images)
        )
        data = first_samples(data, first(self.images))
        todo = [("running", item.model, 0)]
        if self.recalibrate:
            model = copy.deepcopy(item.model)  # the loaded model may serve other analyses
            t0 = time.perf_counter()
            used = recalibrate_batchnorm(
                model,
                self._load(name, "train", scale, meta.input_size),
                self.recalibrate,
                torch.device(item.device),
                self.batch_size,
                self.seed,
            )
            if used:
                item.log(
                    f"{label}: BatchNorm statistics recomputed from {used} training images "
                    f"in {time.perf_counter() - t0:.1f} s"
                )
                todo.append(("recalibrated", model, used))
            else:
                item.warn(f"{label}: no BatchNorm layer; nothing to recalibrate")
        rows = []
        for bn, model, used in todo:
            t0 = time.perf_counter()
            loss, acc = evaluate(model, data, torch.device(item.device), self.batch_size)
            n = len(data)
            lo, hi = proportion_interval(round(acc * n), n)
            item.log(
                f"{label}: {self.split} accuracy {acc:.4f} ({bn} BatchNorm statistics) "
                f"in {time.perf_counter() - t0:.1f} s"
            )
            rows.append(
                {
                    CHECKPOINT: label,
                    "epochs": meta.epochs,
                    "dataset": name,
                    "split": self.split,
                    "content_scale": scale,
                    "images": n,
                    "batchnorm": bn,
                    "bn_images": used,
                    "loss": loss,
                    "acc": acc,
                    "acc_lo": lo,
                    "acc_hi": hi,
                    "recorded_acc": meta.test_acc if as_recorded and bn == "running" else math.nan,
                }
            )
        return rows

    def combine(self, results: Results) -> pd.DataFrame:
        df = pd.DataFrame([row for rows in results.of(self).values() for row in rows])
        if self.table:
            df = with_interval_text(df.drop(columns=["dataset", "split", "images"]), digits=4)
        return df

"""The one runner: ``run(checkpoints, analyses)`` finds, loads and selects, computes each
:class:`Analysis` on every checkpoint and combines the results."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .._types import PathLike
from ..analysis import LayerKernels
from ..checkpoint import Checkpoint, CheckpointConfig
from ..errors import NiffError
from ..io import file_sha256
from .find import Found, discover
from .load import Loaded, initial_kernels, load_checkpoints, select_kernels
from .seeds import load_histories


@dataclass
class Item:
    """One checkpoint as an :class:`Analysis` sees it (:func:`run`).

    Attributes:
        label: its name in every table.
        path: as given (``None``: the bundled default).
        loaded: the loaded checkpoint (``None`` for an analysis of recorded statistics; read it
            through :attr:`model`, :attr:`meta` and :attr:`checkpoint`).
        selected: its selected kernels (for an analysis that needs kernels; read them as
            :attr:`kernels`).
        history: the kernel statistics its run recorded, and ``stats_file`` the file (for an
            analysis of recorded statistics; read them with :meth:`recorded`).
        device: where its model runs.
        layers, max_kernels: how its kernels were selected (its initialisation's are selected
            the same way, :meth:`initial_kernels`).
        log, warn: where an analysis says what it did, and what a user must know.
    """

    label: str
    path: Path | None
    loaded: Loaded | None = None
    selected: list[LayerKernels] | None = None
    history: pd.DataFrame | None = None
    stats_file: Path | None = None
    device: str | torch.device = "cpu"
    layers: str | Sequence[str] = "*"
    max_kernels: int | None = None
    log: Callable[[str], None] = field(default=lambda msg: None, repr=False)
    warn: Callable[[str], None] = field(default=lambda msg: None, repr=False)
    _initial: list | None = field(default=None, repr=False)

    def _loaded(self) -> Loaded:
        if self.loaded is None:  # an analysis that reads a model must say needs = "model" or "kernels"
            raise RuntimeError(f"{self.label}: no model was loaded for this analysis (its `needs`)")
        return self.loaded

    @property
    def kernels(self) -> list[LayerKernels]:
        """Its selected kernels (an analysis with ``needs = "kernels"``)."""
        if self.selected is None:
            raise RuntimeError(f"{self.label}: no kernels were selected for this analysis (its `needs`)")
        return self.selected

    @property
    def model(self) -> nn.Module:
        return self._loaded().model

    @property
    def meta(self) -> CheckpointConfig:
        return self._loaded().meta

    @property
    def checkpoint(self) -> Checkpoint:
        """The checkpoint it was loaded from (its initialisation and test images)."""
        source = self._loaded().checkpoint
        if source is None:  # the runner loads every item from a checkpoint
            raise RuntimeError(f"{self.label}: loaded without its checkpoint")
        return source

    def recorded(self) -> tuple[pd.DataFrame, Path]:
        """The kernel statistics its run recorded and their file (``needs = "history"``)."""
        if self.history is None or self.stats_file is None:
            raise RuntimeError(f"{self.label}: no recorded statistics were read for this analysis (its `needs`)")
        return self.history, self.stats_file

    def initial_kernels(self) -> list[LayerKernels] | None:
        """The initialisation's kernels of the selected layers (:func:`initial_kernels`), or
        ``None`` when no initialisation is known; computed once."""
        if self._initial is None:
            self._initial = [
                initial_kernels(
                    self._loaded(),
                    self.kernels,
                    layers=self.layers,
                    max_kernels=self.max_kernels,
                    device=str(self.device),
                )
            ]
        return self._initial[0]


class Analysis:
    """What :func:`run` computes: :meth:`compute` once per checkpoint, in order, then
    :meth:`combine` over all of them.

    Attributes:
        needs: ``"kernels"`` (the selected kernels of the loaded model), ``"model"`` (the loaded
            model) or ``"history"`` (the kernel statistics a run recorded; runs without their
            final checkpoint count).
        niff_only: the name of an analysis that needs NIFF layers: selecting a plain
            convolution is then an error.
    """

    needs = "kernels"
    niff_only: str | None = None

    def compute(self, item: Item):
        """The result of one checkpoint."""
        raise NotImplementedError

    def combine(self, results: Results):
        """The result of the whole run (default: label → each checkpoint's result)."""
        return results.of(self)


@dataclass
class Results:
    """What :func:`run` computed.

    Attributes:
        found: the checkpoints found (:func:`discover`).
        labels: the checkpoints analysed, in order (without those skipped).
        provenance: label, path, weights hash (and architecture) of each, for ``meta.json``.
        skipped: the labels of the checkpoints skipped.
        per_checkpoint: per analysis (in the order given), label → its result.
        combined: per analysis, :meth:`Analysis.combine`'s result.
        log, warn: where :meth:`Analysis.combine` says what it did, and what a user must know.
    """

    found: Found
    labels: list[str] = field(default_factory=list)
    provenance: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    per_checkpoint: list[dict] = field(default_factory=list)
    combined: list = field(default_factory=list)
    analyses: list = field(default_factory=list, repr=False)
    log: Callable[[str], None] = field(default=lambda msg: None, repr=False)
    warn: Callable[[str], None] = field(default=lambda msg: None, repr=False)

    def of(self, analysis: Analysis) -> dict:
        """label → the result of ``analysis`` for that checkpoint."""
        return self.per_checkpoint[self._index(analysis)]

    def __getitem__(self, analysis: Analysis):
        """The combined result of ``analysis``."""
        return self.combined[self._index(analysis)]

    def _index(self, analysis: Analysis) -> int:
        return next(i for i, a in enumerate(self.analyses) if a is analysis)


def run(
    checkpoints: Sequence[PathLike | None] = (),
    analyses: Analysis | Sequence[Analysis] = (),
    *,
    layers: str | Sequence[str] = "*",
    include_conv: bool = False,
    max_kernels: int | None = None,
    device: str | torch.device = "cpu",
    factory: str | None = None,
    strict: bool = False,
    found: Found | None = None,
    log: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
    skip: Callable[[str, NiffError], None] | None = None,
    non_finite: Callable[[str, NiffError], None] | None = None,
    log_selection: bool = True,
    announce: Callable[[str], None] | None = None,
    wrap: Callable[[Iterator, int], Iterator] | None = None,
) -> Results:
    """The one path from command-line arguments to results: find the checkpoints
    (:func:`discover`), load each (:func:`load_checkpoints`), select its kernels
    (:func:`select_kernels`), run every analysis on it, then combine each analysis's results.
    The figure set (:func:`analyse`) and every analysis command take it.

    Of a folder of checkpoints, one that cannot be loaded or whose kernels cannot be selected
    is skipped (``skip`` is told; ``strict``: the error stops the run); one named directly
    always stops it.

    Args:
        checkpoints: paths as a user gives them (none: the bundled default).
        analyses: what to compute (one, or several computed on each checkpoint in turn).
        layers, include_conv, max_kernels: the kernel selection (:func:`select_kernels`).
        device: where the models are loaded.
        factory: the user factory you allow to build a checkpoint's model.
        strict: stop at the first checkpoint of a folder that cannot be analysed.
        found: :func:`discover`'s answer for ``checkpoints`` (``runs_in_progress=True`` for an
            analysis of recorded statistics), if the caller has it.
        log: receives what was done (the selection's notes and summary with ``log_selection``).
        warn: receives what a user must know (skipped checkpoints, through ``skip``'s default).
        skip: called with (label, error) for each checkpoint skipped (default: a warning).
        non_finite: called with (label, error) for a checkpoint whose weights hold NaN/Inf,
            which is then analysed all the same (default: such a checkpoint cannot be loaded).
        announce: called with each checkpoint's label before its kernels are selected.
        wrap: wraps the iteration over the checkpoints (e.g. a progress bar), given their number.

    Returns:
        The :class:`Results`; without any checkpoint analysed its ``labels`` are empty (the
        caller says why).

    Raises:
        NiffError: a checkpoint named directly cannot be analysed (or any, with ``strict``), or
            an analysis fails.
    """
    analyses = [analyses] if isinstance(analyses, Analysis) else list(analyses)
    say, warn = log or (lambda msg: None), warn or (lambda msg: None)
    history = any(a.needs == "history" for a in analyses)
    if found is None:
        found = discover(tuple(checkpoints), runs_in_progress=history)
    res = Results(found, per_checkpoint=[{} for _ in analyses], analyses=analyses, log=say, warn=warn)

    def skipped(label: str, exc: NiffError) -> None:
        res.skipped.append(label)
        (skip or (lambda lab, e: warn(f"skipped {lab}: {e}")))(label, exc)

    def item(label: str, path: Path | None, **fields) -> Item:
        return Item(label, path, device=device, layers=layers, max_kernels=max_kernels, log=say, warn=warn, **fields)

    items: Iterator[tuple[Item, dict]]
    if history:
        items = (
            (
                item(label, path, history=df, stats_file=path),
                dict(label=label, path=str(path), sha256=file_sha256(path)),
            )
            for label, path, df in load_histories(strict=strict, warn=warn, found=found)
        )
    else:
        items = _loaded_items(
            found,
            analyses,
            item,
            str(device),
            include_conv,
            factory,
            strict,
            skipped,
            non_finite,
            log_selection,
            announce,
        )
    if wrap is not None:
        items = wrap(items, len(found.checkpoints))
    for one, provenance in items:
        res.labels.append(one.label)
        res.provenance.append(provenance)
        for i, analysis in enumerate(analyses):
            res.per_checkpoint[i][one.label] = analysis.compute(one)
    if res.labels:
        res.combined = [a.combine(res) for a in analyses]
    return res


def _loaded_items(
    found: Found,
    analyses: list[Analysis],
    make: Callable[..., Item],
    device: str,
    include_conv: bool,
    factory: str | None,
    strict: bool,
    skipped: Callable[[str, NiffError], None],
    non_finite: Callable[[str, NiffError], None] | None,
    log_selection: bool,
    announce: Callable[[str], None] | None,
) -> Iterator[tuple[Item, dict]]:
    """(item, provenance) of each checkpoint that loads and whose kernels can be selected
    (``make`` builds an item with the run's settings)."""
    needs_kernels = any(a.needs == "kernels" for a in analyses)
    niff_only = next((a.niff_only for a in analyses if a.niff_only), None)
    for ck in load_checkpoints(
        device=device, factory=factory, found=found, strict=strict, skip=skipped, non_finite=non_finite
    ):
        item = make(ck.label, ck.path, loaded=ck)
        if needs_kernels:
            if announce is not None:
                announce(ck.label)
            try:
                sel = select_kernels(
                    ck,
                    layers=item.layers,
                    include_conv=include_conv,
                    max_kernels=item.max_kernels,
                    niff_only=niff_only,
                )
            except NiffError as exc:
                if not found.tolerates(ck.path, strict):
                    raise
                skipped(ck.label, exc)
                continue
            if log_selection:
                for note in sel.notes:
                    item.log(f"note: {note}")
                item.log(sel.summary(item.max_kernels))
            item.selected = sel.kernels
        yield item, ck.provenance()

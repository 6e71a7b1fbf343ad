"""Loading the checkpoints found (:func:`load_checkpoints`) and selecting their kernels
(:func:`select_kernels`, :func:`initial_kernels`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from torch import nn

from .._types import PathLike
from ..analysis import LayerKernels, extract_kernels, subsample
from ..checkpoint import Checkpoint, CheckpointConfig, NonFiniteWeightsError
from ..errors import NiffError, SelectionError
from .find import Found, discover


@dataclass
class Loaded:
    """A loaded checkpoint under its label.

    Attributes:
        label: its name in every table (:func:`find_checkpoints`).
        path: as given (``None``: the bundled default).
        model: the model, with ``niff_checkpoint`` (its
            :class:`~niff_analysis.checkpoint.CheckpointConfig`) attached.
        checkpoint: the :class:`~niff_analysis.checkpoint.Checkpoint` it was loaded from (its
            initialisation and test images); ``None`` for a model that is no checkpoint's own
            (an initialisation).
    """

    label: str
    path: Path | None
    model: nn.Module
    checkpoint: Checkpoint | None = None

    @property
    def meta(self) -> CheckpointConfig:
        return cast(CheckpointConfig, self.model.niff_checkpoint)  # nn.Module attributes are typed as tensors

    def provenance(self) -> dict:
        """label, resolved path, weights hash and architecture: what ``meta.json`` records."""
        return dict(label=self.label, path=self.meta.path, sha256=self.meta.sha256, architecture=self.meta.architecture)


def load_checkpoints(
    checkpoints: Sequence[PathLike | None] = (),
    device: str = "cpu",
    factory: str | None = None,
    found: Found | list[tuple[str, Path | None]] | None = None,
    strict: bool = False,
    skip: Callable[[str, NiffError], None] | None = None,
    non_finite: Callable[[str, NiffError], None] | None = None,
) -> Iterator[Loaded]:
    """Load each checkpoint :func:`discover` finds in ``checkpoints``, in order.

    Args:
        checkpoints: paths as a user gives them (none: the bundled default).
        device: where the models are loaded.
        factory: the user factory you allow to build a checkpoint's model
            (:func:`~niff_analysis.checkpoint.load_checkpoint`).
        found: :func:`discover`'s (or :func:`find_checkpoints`') answer for ``checkpoints``,
            if the caller has it.
        strict: stop at the first checkpoint of a folder that cannot be loaded, instead of
            skipping it.
        skip: called with (label, error) for each checkpoint skipped.
        non_finite: called with (label, error) for a checkpoint whose weights hold NaN/Inf,
            which is then loaded all the same (to describe a diverged run); by default such a
            checkpoint cannot be loaded.

    Raises:
        NiffError: a checkpoint named directly cannot be loaded (or any, with ``strict``).
    """
    if found is None:
        found = discover(tuple(checkpoints))
    elif not isinstance(found, Found):
        found = Found(checkpoints=list(found))
    for label, path in found.checkpoints:
        try:
            source = Checkpoint.open(path, factory=factory)
            try:
                model = source.model(device=str(device))
            except NonFiniteWeightsError as exc:
                if non_finite is None:
                    raise
                non_finite(label, exc)
                model = source.model(device=str(device), allow_non_finite=True)
        except NiffError as exc:
            if not found.tolerates(path, strict):
                raise
            (skip or (lambda *a: None))(label, exc)
            continue
        yield Loaded(label, path, model, source)


@dataclass
class Selection:
    """The kernels chosen from one checkpoint, and what a user should know about the choice.

    Attributes:
        checkpoint: where they come from.
        kernels: one :class:`~niff_analysis.analysis.LayerKernels` per selected layer.
        total: kernels before sampling (``max_kernels``).
        seconds: time to extract (and sample) them.
        notes: informational messages (e.g. a baseline analysed through its plain convolutions).
    """

    checkpoint: Loaded
    kernels: list[LayerKernels]
    total: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.checkpoint.label

    def summary(self, max_kernels: int | None = None) -> str:
        """One line: layers, kernels (and the sample they were cut to), time."""
        n = sum(lk.flat.shape[0] for lk in self.kernels)
        sampled = f" (sampled from {self.total}: at most {max_kernels} per layer)" if n < self.total else ""
        return f"{self.label}: {len(self.kernels)} layers, {n} kernels{sampled} ({self.seconds:.1f} s to extract)"


def select_kernels(
    ck: Loaded,
    layers: str | Sequence[str] = "*",
    include_conv: bool = False,
    max_kernels: int | None = None,
    niff_only: str | None = None,
) -> Selection:
    """Extract a checkpoint's kernels (:func:`~niff_analysis.analysis.extract_kernels`) and sample
    layers with more than ``max_kernels`` of them (:func:`~niff_analysis.analysis.subsample`).

    A checkpoint without NIFF layers (a baseline) gives its plain stride-1 k×k convolutions.

    Args:
        niff_only: name of an analysis that needs NIFF layers; then selecting a plain
            convolution is an error.

    Raises:
        SelectionError, NiffError: no layer matches, non-finite kernels, or a plain convolution
            where ``niff_only`` needs NIFF layers; the message starts with the label.
    """
    t0 = time.perf_counter()
    try:
        lks = extract_kernels(ck.model, layers=layers, include_conv=include_conv)
    except NiffError as exc:  # no match, non-finite kernels, …: say which checkpoint
        raise type(exc)(f"{ck.label}: {exc}") from None
    total = sum(lk.flat.shape[0] for lk in lks)
    lks = subsample(lks, max_kernels)
    plain = [lk.name for lk in lks if lk.kind == "conv"]
    if niff_only and plain:
        verb = "is a plain convolution" if len(plain) == 1 else "are plain convolutions"
        what = "it has no NIFF layers" if len(plain) == len(lks) else f"{', '.join(plain)} {verb}"
        raise SelectionError(
            f"{ck.label}: {niff_only} needs NIFF layers, but {what} (selected: {', '.join(lk.name for lk in lks)})"
        )
    notes = []
    if lks and len(plain) == len(lks) and not include_conv:
        notes.append(f"{ck.label} has no NIFF layers; analysing its plain convolutions")
    return Selection(ck, lks, total, time.perf_counter() - t0, notes)


def initial_kernels(
    ck: Loaded,
    kernels: Sequence[LayerKernels],
    layers: str | Sequence[str] = "*",
    max_kernels: int | None = None,
    device: str = "cpu",
) -> list[LayerKernels] | None:
    """The initialisation's kernels of the layers in ``kernels`` (``ck``'s selection), selected
    and sampled the same way (:meth:`~niff_analysis.checkpoint.Checkpoint.initial`: the run's
    ``init/`` or the model rebuilt from the recorded seed); ``None`` when no initialisation is
    known, or it cannot be loaded.
    """
    try:
        init = (ck.checkpoint or Checkpoint.open(ck.path)).initial(device=device)
    except NiffError:  # e.g. a broken init/: no reference, no error (the analysis goes on without)
        return None
    if init is None:
        return None
    names = {lk.name for lk in kernels}
    plain = any(lk.kind == "conv" for lk in kernels)
    sel = select_kernels(Loaded(ck.label, ck.path, init), layers=layers, include_conv=plain, max_kernels=max_kernels)
    return [lk for lk in sel.kernels if lk.name in names]

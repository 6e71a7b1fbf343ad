"""Checkpoints → labelled, loaded kernels → analyses → provenance: the one path that every
analysis command, ``figures`` and the notebooks take.

* :func:`run` is that path: ``run(checkpoints, analyses)`` finds, loads and selects, computes
  each :class:`Analysis` on every checkpoint and combines the results (the commands' analyses
  are in :mod:`niff_analysis.tables`);
* :func:`find_checkpoints` turns command-line arguments into ``(label, path)`` pairs by one
  rule (folders of checkpoints expand, the same resolved path counts once, clashing names fall
  back to the paths given);
* :func:`load_checkpoints` loads them, each with its provenance;
* :func:`select_kernels` extracts and samples a checkpoint's kernels and says what it chose;
* :func:`analyse` runs every analysis the figures need through :func:`run` (``plotting.report``
  only draws);
* :mod:`niff_analysis.provenance` writes a result with its ``meta.json`` entry.

Nothing here prints: what a user should be told comes back as notes and warnings.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import pandas as pd
import torch
from torch import nn

from ._types import PathLike
from .analysis import (
    LayerKernels,
    PCAResult,
    effective_sizes,
    extract_kernels,
    gaussian_fit,
    gaussian_summary,
    kernel_mass,
    mass_summary,
    pca_eigenkernels,
    subsample,
    weight_pca,
)
from .analysis.mass import massless_warning
from .analysis.pca import pca_warnings
from .analysis.schema import with_checkpoint
from .checkpoint import (
    CONFIG_NAME,
    DEFAULT_CHECKPOINT,
    Checkpoint,
    CheckpointConfig,
    NonFiniteWeightsError,
    check_readable_path,
    load_checkpoint,
    resolve_checkpoint,
)
from .errors import CheckpointError, DataError, NiffError, SelectionError
from .io import file_sha256
from .runs import TRAIN_STATE_NAME, WEIGHTS_NAME, holds_run, read_diverged, unfinished_reason

COST_SIZES = (7, 14, 28, 56, 112)
SWEEP_FILE = "sweep.json"  # what marks a study folder (niff_analysis.train.sweep.SWEEP_FILE)
TRAIN_CONFIG = "train_config.json"


# --------------------------------------------------------------------------- finding, loading
def checkpoint_label(path: Optional[PathLike]) -> str:
    """Short name of a checkpoint: its directory name or file stem (bundled default if None)."""
    p = Path(os.path.normpath(Path(path) if path is not None else DEFAULT_CHECKPOINT))
    return p.stem if p.suffix == ".safetensors" else p.name


def _real(path: PathLike) -> Path:
    return Path(os.path.realpath(path))


def overlaps(a: PathLike, b: PathLike) -> bool:
    """Whether two paths are the same or one lies inside the other (symbolic links resolved)."""
    a, b = _real(a), _real(b)
    return a == b or a in b.parents or b in a.parents


def input_folders(path: Optional[PathLike]) -> list[Path]:
    """What a command reading the checkpoint ``path`` reads from: the checkpoint (its folder, for
    the files inside one), and the run folder around it (``init/``, ``epoch_NNN/``)."""
    p = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if p.is_file() and p.name in (WEIGHTS_NAME, TRAIN_STATE_NAME):
        p = p.parent
    found = [p]
    if p.is_dir() and holds_run(p.parent) and p.parent != p:
        found.append(p.parent)
    return found


def refuse_output_in_inputs(output: PathLike, inputs: Sequence[PathLike], option: str = "--output") -> None:
    """No command writes into what it reads: refuse an output that is an input, lies inside one,
    or (an output folder) holds one.

    Raises:
        NiffError: naming the output and the input.
    """
    for i in inputs:
        if not overlaps(output, i):
            continue
        out_r, in_r = _real(output), _real(i)
        how = "is" if out_r == in_r else ("lies inside" if in_r in out_r.parents else "holds")
        raise NiffError(
            f"{option} {output} {how} {i}, an input of this command; a command never writes into "
            "its inputs: write it elsewhere"
        )


@dataclass
class Found:
    """What :func:`discover` finds in command-line arguments.

    Attributes:
        checkpoints: (label, path) per checkpoint, in order (path ``None``: the bundled default).
        in_folders: resolved paths of those found by expanding a folder: one that cannot be
            analysed is skipped with a warning (unless the command is asked to be strict).
        skipped: (entry, why) of the entries of expanded folders that are no checkpoints.
        inputs: every path the command reads (the arguments and the checkpoints' folders), which
            no output may lie in (:func:`refuse_output_in_inputs`).
    """

    checkpoints: list[tuple[str, Optional[Path]]] = field(default_factory=list)
    in_folders: set[str] = field(default_factory=set)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)

    def tolerates(self, path: Optional[Path], strict: bool = False) -> bool:
        """Whether an error of ``path`` skips it instead of stopping the command."""
        return not strict and path is not None and str(_real(path)) in self.in_folders

    def skipped_lines(self) -> list[str]:
        return [f"skipped {p}: {why}" for p, why in self.skipped]


def _why_not_a_checkpoint(folder: Path) -> str:
    reason = unfinished_reason(folder)
    if reason:
        return reason[len(f"{folder}: ") :] if reason.startswith(f"{folder}: ") else reason
    for pattern in ("*", "*/*", "*/*/*"):  # a folder of runs, or a sweep (OUT/<arm>/seed=<n>/)
        inner = sorted(c for c in folder.glob(pattern) if c.is_dir() and ((c / CONFIG_NAME).is_file() or holds_run(c)))
        if inner:
            return (
                f"a folder of checkpoints or runs ({len(inner)}, e.g. {inner[0].relative_to(folder)}); name it "
                "to analyse them"
            )
    return f"not a checkpoint (no {CONFIG_NAME})"


def discover(args: Sequence[Optional[PathLike]] = (), runs_in_progress: bool = False) -> Found:
    """(label, path) per checkpoint of command-line arguments, with what was skipped and why: the
    one rule every command and the figures use.

    A folder without ``config.json`` stands for the checkpoints in it (sorted); its entries that
    are no checkpoints (runs without a final checkpoint, folders of runs, other folders) are
    skipped and listed in :attr:`Found.skipped`; hidden entries and plain files are ignored.
    ``None`` and no arguments at all are the bundled default (path ``None``); a name such as
    ``resnet18_fmnist`` that is no path is the bundled checkpoint of that name. The same
    resolved path given twice is analysed once. A study folder of ``niff-analyze sweep``
    (``sweep.json``) stands for its finished runs (arms in order). Labels are folder names (file
    stems for ``.safetensors``; ``<arm>/seed=<n>`` for a study's runs, or ``<arm>`` where it has
    no seed folders), or the paths as given where two names clash.

    Args:
        runs_in_progress: runs without a final checkpoint count as found (``history`` reads
            what they recorded so far).

    Raises:
        CheckpointError: a path that cannot be read (missing, a symbolic-link loop), a run
            without a final checkpoint named directly (the message names its
            ``train_state.pt``), or a folder that neither is a checkpoint nor holds any.
    """
    result = Found()
    if not args:
        args = (None,)
    paths: list[Optional[Path]] = []
    study: dict[Path, str] = {}  # runs of a study folder: labelled <arm>/seed=<n>
    for arg in args:
        if arg is None:
            paths.append(None)
            result.inputs.append(DEFAULT_CHECKPOINT)
            continue
        p = resolve_checkpoint(arg)
        check_readable_path(p)
        result.inputs.append(p)
        if p.is_dir() and not (p / CONFIG_NAME).is_file():
            if holds_run(p):  # a run without its final checkpoint
                if runs_in_progress:
                    paths.append(p)
                    continue
                raise CheckpointError(unfinished_reason(p))
            found = []
            if (p / SWEEP_FILE).is_file():  # a study: its runs, arms in order, labelled <arm>/seed=<n>
                from .train.sweep import is_finished, runs

                for _, _, folder in runs(str(p)):
                    if is_finished(folder) or (runs_in_progress and holds_run(folder)):
                        found.append(folder)
                    else:
                        result.skipped.append((folder, _why_not_a_checkpoint(folder)))
                study.update({f: str(f.relative_to(p)) for f in found})
            else:
                for c in sorted(p.iterdir()):
                    if c.name.startswith("."):
                        continue
                    if (
                        (c.is_dir() and (c / CONFIG_NAME).is_file())
                        or (c.is_file() and c.suffix == ".safetensors")
                        or (runs_in_progress and c.is_dir() and holds_run(c))
                    ):
                        found.append(c)
                    elif c.is_dir():
                        result.skipped.append((c, _why_not_a_checkpoint(c)))
            if not found:
                why = f" ({'; '.join(result.skipped_lines()[-3:])})" if result.skipped else ""
                raise CheckpointError(f"{p}: neither a checkpoint (no {CONFIG_NAME}) nor a folder of checkpoints{why}")
            result.in_folders.update(str(_real(c)) for c in found)
            paths += found
        else:
            paths.append(p)  # load_checkpoint says what is wrong with it, if anything
    unique, seen = [], set()
    for p in paths:
        key = str(_real(p if p is not None else DEFAULT_CHECKPOINT))
        if key not in seen:
            seen.add(key)
            unique.append(p)
    names = [study.get(p) or checkpoint_label(p) for p in unique]
    if len(set(names)) < len(names):
        names = [str(p if p is not None else DEFAULT_CHECKPOINT) for p in unique]
    result.checkpoints = list(zip(names, unique))
    for p in unique:
        result.inputs += input_folders(p)
    return result


def find_checkpoints(args: Sequence[Optional[PathLike]] = ()) -> list[tuple[str, Optional[Path]]]:
    """(label, path) per checkpoint: :func:`discover`'s checkpoints (the one rule every command
    and the figures use).

    Raises:
        CheckpointError: as :func:`discover`.
    """
    return discover(args).checkpoints


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
    path: Optional[Path]
    model: nn.Module
    checkpoint: Optional[Checkpoint] = None

    @property
    def meta(self) -> CheckpointConfig:
        return self.model.niff_checkpoint

    def provenance(self) -> dict:
        """label, resolved path, weights hash and architecture: what ``meta.json`` records."""
        return dict(label=self.label, path=self.meta.path, sha256=self.meta.sha256, architecture=self.meta.architecture)


def load_checkpoints(
    checkpoints: Sequence[Optional[PathLike]] = (),
    device: str = "cpu",
    factory: Optional[str] = None,
    found: Optional[Union[Found, list[tuple[str, Optional[Path]]]]] = None,
    strict: bool = False,
    skip: Optional[Callable[[str, NiffError], None]] = None,
    non_finite: Optional[Callable[[str, NiffError], None]] = None,
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

    def summary(self, max_kernels: Optional[int] = None) -> str:
        """One line: layers, kernels (and the sample they were cut to), time."""
        n = sum(lk.flat.shape[0] for lk in self.kernels)
        sampled = f" (sampled from {self.total}: at most {max_kernels} per layer)" if n < self.total else ""
        return f"{self.label}: {len(self.kernels)} layers, {n} kernels{sampled} ({self.seconds:.1f} s to extract)"


def select_kernels(
    ck: Loaded,
    layers: Union[str, Sequence[str]] = "*",
    include_conv: bool = False,
    max_kernels: Optional[int] = None,
    niff_only: Optional[str] = None,
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
    layers: Union[str, Sequence[str]] = "*",
    max_kernels: Optional[int] = None,
    device: str = "cpu",
) -> Optional[list[LayerKernels]]:
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


def run_recipe(path: Optional[PathLike]) -> Optional[tuple[str, int]]:
    """(the recipe of the training run a checkpoint or run folder comes from, without its seed;
    the seed), from its ``train_config.json`` (in the folder or, for ``epoch_NNN/`` and
    ``init/``, its parent); ``None`` when there is none. Two runs with equal recipes differ only
    in their seed (settings a run recorded before they existed count with their defaults)."""
    import json

    from .train.config import RECIPE_KEYS
    from .train.state import RECIPE_DEFAULTS

    folder = Path(path) if path is not None else DEFAULT_CHECKPOINT
    folder = folder if folder.is_dir() else folder.parent
    for f in (folder / TRAIN_CONFIG, folder.parent / TRAIN_CONFIG):
        if f.is_file():
            try:
                cfg = json.loads(f.read_text())
            except (OSError, ValueError):
                return None
            if not isinstance(cfg, dict) or cfg.get("seed") is None:
                return None
            recipe = {k: cfg.get(k, RECIPE_DEFAULTS.get(k)) for k in RECIPE_KEYS if k != "seed"}
            return json.dumps(recipe, sort_keys=True), int(cfg["seed"])
    return None


@dataclass
class SeedGroup:
    """Checkpoints of one recipe trained from different seeds (:func:`seed_groups`).

    Attributes:
        label: the group's name in tables: the member labels without their ``seed=N`` part where
            that leaves one name (``spec/seed=0`` … → ``spec``), else the labels joined by ``+``.
        members: the members' checkpoint labels.
        seeds: their seeds, in the same order.
    """

    label: str
    members: list[str]
    seeds: list[int]


def _group_label(members: list[tuple[str, Optional[Path]]]) -> str:
    import re

    stripped = {re.sub(r"[/_-]?seed[=_-]?\d+$", "", label) for label, _ in members}
    if len(stripped) == 1 and next(iter(stripped)):
        return next(iter(stripped))
    parents = {Path(p).parent.name if p is not None else "" for _, p in members}
    if len(stripped) == 1 and len(parents) == 1 and next(iter(parents)):
        return next(iter(parents))  # an arm folder: seed=0, seed=1, … under it
    return "+".join(label for label, _ in members)


def seed_groups(
    found: Sequence[tuple[str, Optional[Path]]], trained: Optional[dict[str, object]] = None
) -> list[SeedGroup]:
    """The checkpoints among ``found`` (``(label, path)``, :func:`find_checkpoints`) that share a
    recipe and differ in their seed: one group per recipe with at least two distinct seeds.

    Args:
        found: the checkpoints.
        trained: label → how far each was trained (e.g. its epochs), when checkpoints of one run
            at different epochs must not be pooled.
    """
    by_recipe: dict = {}
    for label, path in found:
        rs = run_recipe(path)
        if rs is None:
            continue
        key = (rs[0], None if trained is None else str(trained.get(label)))
        by_recipe.setdefault(key, []).append((label, path, rs[1]))
    groups = []
    for members in by_recipe.values():
        seeds = [m[2] for m in members]
        if len(set(seeds)) < 2:
            continue
        groups.append(SeedGroup(_group_label([(m[0], m[1]) for m in members]), [m[0] for m in members], seeds))
    return groups


def load_histories(
    checkpoints: Sequence[Optional[PathLike]] = (),
    strict: bool = False,
    warn: Optional[Callable[[str], None]] = None,
    found: Optional[Found] = None,
) -> list[tuple[str, Path, pd.DataFrame]]:
    """(label, file, table) of the kernel statistics (``kernel_stats.csv``) each checkpoint, or
    run without its final checkpoint yet (in progress, interrupted, diverged), carries
    (:func:`~niff_analysis.analysis.stats.read_kernel_stats`).

    A checkpoint whose weights hold NaN/Inf, or a run that diverged, is still read, with a
    warning. Of a folder of runs, one that cannot be read is skipped with a warning unless
    ``strict``.

    Args:
        warn: receives the warnings (skipped entries, diverged runs).
        found: :func:`discover`'s answer (with ``runs_in_progress=True``), if the caller has it.

    Raises:
        NiffError: not a checkpoint, no statistics, or a file that is not a statistics table.
    """
    from .analysis.stats import FILE_NAME, read_kernel_stats

    warn = warn or (lambda msg: None)
    found = found if found is not None else discover(tuple(checkpoints), runs_in_progress=True)
    for line in found.skipped_lines():
        warn(line)
    out = []
    for label, path in found.checkpoints:
        folder = Path(path) if path is not None else DEFAULT_CHECKPOINT
        try:
            if folder.is_dir() and not (folder / CONFIG_NAME).is_file():  # a run without its checkpoint
                diverged = read_diverged(folder)
                if diverged is not None:
                    warn(
                        f"{label}: training diverged ({diverged.get('message', '')}); these are the "
                        "statistics it recorded before"
                    )
            else:
                try:
                    load_checkpoint(folder)  # a clear error for anything that is not a checkpoint
                except NonFiniteWeightsError as exc:
                    warn(f"{exc} (training diverged?); showing the statistics it recorded")
            stats_file = (folder if folder.is_dir() else folder.parent) / FILE_NAME
            if not stats_file.is_file():
                raise NiffError(
                    f"{label}: no {FILE_NAME} (trained before kernel statistics were "
                    "recorded, or with --no-kernel-stats)"
                )
            try:
                out.append((label, stats_file, read_kernel_stats(stats_file)))
            except (ValueError, OSError, pd.errors.ParserError) as exc:
                text = " ".join(str(exc).split())
                raise NiffError(text if text.startswith(str(stats_file)) else f"{stats_file}: {text}") from None
        except NiffError as exc:
            if not found.tolerates(path, strict):
                raise
            warn(f"skipped {label}: {exc}")
    if not out:
        raise NiffError("no run with readable kernel statistics was found (see the warnings above)")
    return out


# --------------------------------------------------------------------------- the one runner
@dataclass
class Item:
    """One checkpoint as an :class:`Analysis` sees it (:func:`run`).

    Attributes:
        label: its name in every table.
        path: as given (``None``: the bundled default).
        loaded: the loaded checkpoint (``None`` for an analysis of recorded statistics).
        kernels: its selected kernels (for an analysis that needs kernels).
        history: the kernel statistics its run recorded, and ``stats_file`` the file (for an
            analysis of recorded statistics).
        device: where its model runs.
        layers, max_kernels: how its kernels were selected (its initialisation's are selected
            the same way, :meth:`initial_kernels`).
        log, warn: where an analysis says what it did, and what a user must know.
    """

    label: str
    path: Optional[Path]
    loaded: Optional[Loaded] = None
    kernels: Optional[list[LayerKernels]] = None
    history: Optional[pd.DataFrame] = None
    stats_file: Optional[Path] = None
    device: Union[str, torch.device] = "cpu"
    layers: Union[str, Sequence[str]] = "*"
    max_kernels: Optional[int] = None
    log: Callable[[str], None] = field(default=lambda msg: None, repr=False)
    warn: Callable[[str], None] = field(default=lambda msg: None, repr=False)
    _initial: Optional[list] = field(default=None, repr=False)

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    @property
    def meta(self) -> CheckpointConfig:
        return self.loaded.meta

    @property
    def checkpoint(self) -> Optional[Checkpoint]:
        return self.loaded.checkpoint

    def initial_kernels(self) -> Optional[list[LayerKernels]]:
        """The initialisation's kernels of the selected layers (:func:`initial_kernels`), or
        ``None`` when no initialisation is known; computed once."""
        if self._initial is None:
            self._initial = [
                initial_kernels(
                    self.loaded, self.kernels, layers=self.layers, max_kernels=self.max_kernels, device=str(self.device)
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
    niff_only: Optional[str] = None

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
    checkpoints: Sequence[Optional[PathLike]] = (),
    analyses: Union[Analysis, Sequence[Analysis]] = (),
    *,
    layers: Union[str, Sequence[str]] = "*",
    include_conv: bool = False,
    max_kernels: Optional[int] = None,
    device: Union[str, torch.device] = "cpu",
    factory: Optional[str] = None,
    strict: bool = False,
    found: Optional[Found] = None,
    log: Optional[Callable[[str], None]] = None,
    warn: Optional[Callable[[str], None]] = None,
    skip: Optional[Callable[[str, NiffError], None]] = None,
    non_finite: Optional[Callable[[str, NiffError], None]] = None,
    log_selection: bool = True,
    announce: Optional[Callable[[str], None]] = None,
    wrap: Optional[Callable[[Iterator, int], Iterator]] = None,
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

    kw = dict(device=device, layers=layers, max_kernels=max_kernels, log=say, warn=warn)
    if history:
        items = (
            (
                Item(label, path, history=df, stats_file=path, **kw),
                dict(label=label, path=str(path), sha256=file_sha256(path)),
            )
            for label, path, df in load_histories(strict=strict, warn=warn, found=found)
        )
    else:
        items = _loaded_items(
            found, analyses, kw, include_conv, factory, strict, skipped, non_finite, log_selection, announce
        )
    if wrap is not None:
        items = wrap(items, len(found.checkpoints))
    for item, provenance in items:
        res.labels.append(item.label)
        res.provenance.append(provenance)
        for i, analysis in enumerate(analyses):
            res.per_checkpoint[i][item.label] = analysis.compute(item)
    if res.labels:
        res.combined = [a.combine(res) for a in analyses]
    return res


def _loaded_items(
    found: Found,
    analyses: list[Analysis],
    kw: dict,
    include_conv: bool,
    factory: Optional[str],
    strict: bool,
    skipped: Callable[[str, NiffError], None],
    non_finite: Optional[Callable[[str, NiffError], None]],
    log_selection: bool,
    announce: Optional[Callable[[str], None]],
) -> Iterator[tuple[Item, dict]]:
    """(item, provenance) of each checkpoint that loads and whose kernels can be selected."""
    needs_kernels = any(a.needs == "kernels" for a in analyses)
    niff_only = next((a.niff_only for a in analyses if a.niff_only), None)
    say = kw["log"]
    for ck in load_checkpoints(
        device=str(kw["device"]), factory=factory, found=found, strict=strict, skip=skipped, non_finite=non_finite
    ):
        item = Item(ck.label, ck.path, ck, **kw)
        if needs_kernels:
            if announce is not None:
                announce(ck.label)
            try:
                sel = select_kernels(
                    ck,
                    layers=kw["layers"],
                    include_conv=include_conv,
                    max_kernels=kw["max_kernels"],
                    niff_only=niff_only,
                )
            except NiffError as exc:
                if not found.tolerates(ck.path, strict):
                    raise
                skipped(ck.label, exc)
                continue
            if log_selection:
                for note in sel.notes:
                    say(f"note: {note}")
                say(sel.summary(kw["max_kernels"]))
            item.kernels = sel.kernels
        yield item, ck.provenance()


# --------------------------------------------------------------------------- the figure set
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
    hashes: dict[str, Optional[str]] = field(default_factory=dict)
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
    checkpoints: Sequence[Optional[PathLike]] = (None,),
    layers: Union[str, Sequence[str]] = "*",
    device: str = "cpu",
    max_kernels: Optional[int] = 1024,
    n_components: int = 6,
    cost_sizes: Sequence[int] = COST_SIZES,
    measure_cost: bool = True,
    progress: Optional[Callable[[str], None]] = None,
    factory: Optional[str] = None,
    erf_images: int = 50,
    data_dir: Optional[PathLike] = None,
    measure: str = "l1",
    erf_protocol: str = "luo",
    strict: bool = False,
    found: Optional[Found] = None,
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
    from .analysis.cost import cost_table
    from .analysis.erf import effective_receptive_fields, erf_area_ratios
    from .analysis.frequency import frequency_profile
    from .analysis.mass import MEASURES, check_measure
    from .analysis.references import NOISE_KERNELS, NOISE_SEED, mass_scale
    from .analysis.schema import MEASURE
    from .analysis.stats import FILE_NAME as STATS_NAME
    from .analysis.stats import read_kernel_stats
    from .analysis.uncertainty import RESAMPLES

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
    t = {k: [] for k in ("mass", "sizes", "gauss", "gsum", "untrained", "history", "freq", "freq0", "erf", "scale")}
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
            ck, label = item.loaded, item.label
            lks = data.kernels[label] = item.kernels
            data.labels.append(label)
            data.sources[label], data.hashes[label] = ck.meta.path, ck.meta.sha256
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
            init, init_lks = ck.checkpoint.initial(device=device), None
            if init is not None:
                say(f"{label}: mass ratio at initialisation")
                init_lks = select_kernels(
                    Loaded(label, ck.path, init), layers=layers, include_conv=not has_niff, max_kernels=max_kernels
                ).kernels
                for measure_i in measures:
                    t["untrained"].append(with_checkpoint(mass_summary(kernel_mass(init_lks, measure_i)), label))
                if has_niff:
                    t["freq0"].append(with_checkpoint(frequency_profile(init_lks), label))
            if erf_images:
                key = (ck.meta.dataset, ck.meta.input_size)
                try:
                    if key not in images:
                        images[key] = ck.checkpoint.images(erf_images, data_dir)
                except (DataError, SelectionError) as exc:
                    data.notes.append(f"{label}: receptive fields skipped ({exc}; see --erf-images)")
                    say(data.notes[-1])
                else:
                    say(f"{label}: effective receptive fields ({len(images[key])} images)")
                    for lab, model in [(label, ck.model)] + ([(f"{label}@init", init)] if init is not None else []):
                        data.erf_maps[lab] = effective_receptive_fields(model, images[key], protocol=erf_protocol)
                        t["erf"].append(
                            with_checkpoint(erf_area_ratios(data.erf_maps[lab], protocol=erf_protocol), lab)
                        )
            say(f"{label}: the scale (delta, white noise, initialisation)")
            for measure_i in measures:
                scale = mass_scale(lks, measure_i, init_lks)
                scale.insert(0, MEASURE, measure_i)
                t["scale"].append(with_checkpoint(scale, label))
            stats_file = Path(data.sources[label]) / STATS_NAME
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

"""Runs as a recipe and a seed: runs that differ only in their seed grouped (:func:`seed_groups`),
and the kernel statistics runs recorded during training (:func:`load_histories`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .._types import PathLike
from ..checkpoint import (
    CONFIG_NAME,
    DEFAULT_CHECKPOINT,
    NonFiniteWeightsError,
    load_checkpoint,
)
from ..errors import NiffError
from ..runs import read_diverged, read_train_config, run_file
from .find import Found, discover


def run_recipe(path: PathLike | None) -> tuple[str, int] | None:
    """(the recipe of the training run a checkpoint or run folder comes from, without its seed;
    the seed), from its ``train_config.json`` (in the folder or, for ``epoch_NNN/`` and
    ``init/``, its parent); ``None`` when there is none. Two runs with equal recipes differ only
    in their seed (settings a run recorded before they existed count with their defaults)."""
    import json

    from ..train.config import RECIPE_KEYS
    from ..train.state import RECIPE_DEFAULTS

    cfg = read_train_config(Path(path) if path is not None else DEFAULT_CHECKPOINT)
    if cfg is None or cfg.get("seed") is None:
        return None
    recipe = {k: cfg.get(k, RECIPE_DEFAULTS.get(k)) for k in RECIPE_KEYS if k != "seed"}
    return json.dumps(recipe, sort_keys=True), int(cfg["seed"])


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


def _group_label(members: list[tuple[str, Path | None]]) -> str:
    import re

    stripped = {re.sub(r"[/_-]?seed[=_-]?\d+$", "", label) for label, _ in members}
    if len(stripped) == 1 and next(iter(stripped)):
        return next(iter(stripped))
    parents = {Path(p).parent.name if p is not None else "" for _, p in members}
    if len(stripped) == 1 and len(parents) == 1 and next(iter(parents)):
        return next(iter(parents))  # an arm folder: seed=0, seed=1, … under it
    return "+".join(label for label, _ in members)


def seed_groups(found: Sequence[tuple[str, Path | None]], trained: dict[str, object] | None = None) -> list[SeedGroup]:
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
    checkpoints: Sequence[PathLike | None] = (),
    strict: bool = False,
    warn: Callable[[str], None] | None = None,
    found: Found | None = None,
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
    from ..analysis.stats import FILE_NAME, read_kernel_stats

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
            stats_file = run_file(folder, FILE_NAME)
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

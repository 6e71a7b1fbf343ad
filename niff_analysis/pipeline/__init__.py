"""Checkpoints → labelled, loaded kernels → analyses → provenance: the one path that every
analysis command, ``figures`` and the notebooks take.

* :func:`run` is that path: ``run(checkpoints, analyses)`` finds, loads and selects, computes
  each :class:`Analysis` on every checkpoint and combines the results (the commands' analyses
  are in :mod:`niff_analysis.tables`; the runner is :mod:`.runner`);
* :func:`discover` / :func:`find_checkpoints` turn command-line arguments into ``(label, path)``
  pairs by one rule (folders of checkpoints expand, the same resolved path counts once,
  clashing names fall back to the paths given; :mod:`.find`);
* :func:`load_checkpoints` loads them, each with its provenance, and :func:`select_kernels`
  extracts and samples a checkpoint's kernels and says what it chose (:mod:`.load`);
* :func:`seed_groups` groups runs that differ only in their seed, and :func:`load_histories`
  reads what runs recorded during training (:mod:`.seeds`);
* :func:`analyse` runs every analysis the figures need through :func:`run` (:mod:`.figures`;
  ``plotting.report`` only draws);
* :mod:`niff_analysis.provenance` writes a result with its ``meta.json`` entry.

Nothing here prints: what a user should be told comes back as notes and warnings.
"""

from ..runs import TRAIN_CONFIG_NAME as TRAIN_CONFIG
from .figures import COST_SIZES, FigureData, analyse
from .find import (
    SWEEP_FILE,
    Found,
    checkpoint_label,
    discover,
    find_checkpoints,
    input_folders,
    overlaps,
    refuse_output_in_inputs,
)
from .load import Loaded, Selection, initial_kernels, load_checkpoints, select_kernels
from .runner import Analysis, Item, Results, run
from .seeds import SeedGroup, load_histories, run_recipe, seed_groups

__all__ = [
    "COST_SIZES",
    "SWEEP_FILE",
    "TRAIN_CONFIG",
    "Analysis",
    "FigureData",
    "Found",
    "Item",
    "Loaded",
    "Results",
    "SeedGroup",
    "Selection",
    "analyse",
    "checkpoint_label",
    "discover",
    "find_checkpoints",
    "initial_kernels",
    "input_folders",
    "load_checkpoints",
    "load_histories",
    "overlaps",
    "refuse_output_in_inputs",
    "run",
    "run_recipe",
    "seed_groups",
    "select_kernels",
]

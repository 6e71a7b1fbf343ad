"""The identifier columns of every analysis table, spelled once.

Every table the analyses return starts with the identifier columns that apply to it, in the
order of :data:`ID_ORDER` (``checkpoint`` first when checkpoints are compared), followed by its
values. Group-bys, joins and the figures use these names, so tables of one run join on them.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

CHECKPOINT = "checkpoint"  # the label of the checkpoint (pipeline.find_checkpoints' rule)
MEASURE = "measure"  # what a pixel's mass is: "l1" (|k|, Eq. 6), "energy" (k²); "any" where none applies
EPOCH, STEP = "epoch", "step"  # kernel statistics recorded during training
LAYER, STAGE = "layer", "stage"  # module name; the group it belongs to (layer1 … layer4)
FMAP_H, FMAP_W = "fmap_h", "fmap_w"  # the feature map the layer runs at (= kernel size of NIFF)
PART = "part"  # "real" / "imag" of a weight PCA
CHANNEL = "channel"  # kernel index within the layer (o·Cin + i for dense ones)
WINDOW = "window"  # odd window size s of Eq. 6
COMPONENT = "component"  # principal component index
THRESHOLD = "threshold"  # share of a receptive field's contribution (%)

#: The columns that say which layer a row belongs to.
LAYER_COLUMNS = [LAYER, STAGE, FMAP_H, FMAP_W]
#: Every identifier column, in the order tables carry them.
ID_ORDER = [CHECKPOINT, MEASURE, EPOCH, STEP, LAYER, STAGE, PART, FMAP_H, FMAP_W, CHANNEL, WINDOW, COMPONENT, THRESHOLD]


def layer_columns(lk) -> dict:
    """The :data:`LAYER_COLUMNS` values of one :class:`~niff_analysis.analysis.LayerKernels`."""
    return {LAYER: lk.name, STAGE: lk.stage, FMAP_H: lk.fmap[0], FMAP_W: lk.fmap[1]}


def keys(df: pd.DataFrame, *wanted: Sequence[str]) -> list[str]:
    """The group-by keys of ``df``: ``checkpoint`` and ``measure`` (where present) and the
    identifier columns among ``wanted`` (default: all) that ``df`` has, in table order.

    Extra names in ``wanted`` that are not identifiers (e.g. ``n_kernels``) are kept after them.
    """
    names = [n for group in wanted for n in ([group] if isinstance(group, str) else group)] or ID_ORDER
    names = [CHECKPOINT, MEASURE] + names
    ids = [c for c in ID_ORDER if c in names and c in df.columns]
    return ids + [c for c in names if c not in ID_ORDER and c in df.columns]


def with_checkpoint(df: pd.DataFrame, label: str) -> pd.DataFrame:
    """A copy of ``df`` with ``checkpoint = label`` as its first column (replacing any)."""
    df = df.drop(columns=CHECKPOINT) if CHECKPOINT in df.columns else df.copy()
    df.insert(0, CHECKPOINT, label)
    return df

"""The resumable state of a training run (``train_state.pt``) and the checks around it.

The state, read with ``weights_only=True``, holds the model, optimizer (momentum buffers),
epoch and step within the epoch (the cosine lr is a function of the global step), the metrics
so far, the partial sums of the interrupted epoch, the RNG states and the recipe it was made
with: a resume with another recipe is refused, and so is a fresh run into a folder that holds
another run. The trainer writes it (:mod:`niff_analysis.train.trainer`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoint import CONFIG_NAME, TRAIN_STATE_NAME, torch_load_reason
from ..errors import NiffError
from ..runs import DIVERGED_NAME, INIT_DIR, METRICS_NAME, STATS_NAME, TRAIN_CONFIG_NAME, read_diverged
from .config import RECIPE_KEYS, TrainConfig

STATE_NAME = TRAIN_STATE_NAME  # checkpoint.load_checkpoint reads it as a model too
STATE_FORMAT = 2
# What a state saved before a key existed was made with (the key's default behaviour).
RECIPE_DEFAULTS = {
    "mlp_weight_decay": None,
    "mlp_lr_scale": 1.0,
    "mlp_bias_decay": False,
    "content_scale": 1.0,
    "precision": "auto",
}


def load_state(path: Path, cfg: TrainConfig) -> dict:
    """The state at ``path``, checked to be a training state of ``cfg``'s recipe.

    Raises:
        NiffError: an unreadable file, not a training state, or one of another recipe.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign file, reported in one line
        raise NiffError(f"--resume: cannot read {path}: {torch_load_reason(exc)}") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "epoch", "step", "rows"} <= set(state):
        raise NiffError(f"--resume: {path} is not a niff-analysis training state")
    diff = recipe_diff(state, cfg)
    if diff:
        raise NiffError(f"--resume: {path} was made with {diff}; resume with the same recipe or use a new --out")
    return state


def recipe_diff(state: dict, cfg: TrainConfig) -> str:
    """How a saved state's recipe differs from ``cfg``'s, in words ("" when it does not)."""
    saved = state.get("recipe")  # absent in format-1 states
    if saved is None:
        return ""
    now = cfg.recipe()
    saved = {k: saved.get(k, RECIPE_DEFAULTS.get(k)) for k in RECIPE_KEYS}
    diff = [k for k in RECIPE_KEYS if saved[k] != now.get(k)]
    if not diff:
        return ""
    k = diff[0]
    return f"{k}={saved[k]!r}, this run has {k}={now.get(k)!r} ({len(diff)} setting(s) differ)"


def saved_recipe_diff(out: Path, cfg: TrainConfig) -> str:
    """How the recipe in ``out``'s ``train_config.json`` differs from ``cfg``'s ("" when it does
    not, or when there is no readable file)."""
    try:
        saved = json.loads((out / TRAIN_CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return ""
    return recipe_diff(dict(recipe=saved), cfg) if isinstance(saved, dict) else ""


def unstarted(out: Path) -> bool:
    """Whether ``out`` holds only the start of a run: no step was saved (no state, no metrics, no
    checkpoint), so starting it again loses nothing (``init/``, ``train_config.json`` and the
    step-0 kernel statistics are written again, identically for the same recipe)."""
    return not any((out / n).is_file() for n in (STATE_NAME, CONFIG_NAME, METRICS_NAME, DIVERGED_NAME))


def refuse_other_run(out: Path, cfg: TrainConfig) -> None:
    """A fresh run must not silently replace what an out folder holds.

    A run of the same recipe that was stopped before its first saved state is no run to keep:
    it starts again.

    Raises:
        NiffError: ``out`` holds a run's files (its state, config, metrics or kernel statistics).
    """
    held = [n for n in (STATE_NAME, CONFIG_NAME, METRICS_NAME, STATS_NAME, TRAIN_CONFIG_NAME) if (out / n).is_file()]
    if (out / INIT_DIR / CONFIG_NAME).is_file():
        held.append(INIT_DIR)
    if not held:
        return
    diverged = read_diverged(out)
    if diverged is not None:
        raise NiffError(
            f"--out {out} holds a run whose training diverged ({diverged.get('message', '')}); "
            "use --overwrite to train it again (e.g. with a lower --lr), or a new --out"
        )
    if unstarted(out):
        diff = saved_recipe_diff(out, cfg)
        if not diff:
            return  # stopped before anything was saved: start it again
        raise NiffError(
            f"--out {out} holds the start of another run (made with {diff}); use a new --out, or "
            "--overwrite to replace it"
        )
    if (out / STATE_NAME).is_file():
        try:
            diff = recipe_diff(torch.load(out / STATE_NAME, map_location="cpu", weights_only=True), cfg)
        except Exception:  # noqa: BLE001 - unreadable: it is still somebody's run
            diff = "an unreadable train_state.pt"
        if diff:
            raise NiffError(
                f"--out {out} holds another run (made with {diff}); use a new --out, or --overwrite to replace it"
            )
        raise NiffError(f"--out {out} holds a run of this recipe: --resume continues it (--overwrite starts it again)")
    raise NiffError(f"--out {out} holds a run ({', '.join(held)}); use a new --out, or --overwrite to replace it")

"""From command-line arguments to (label, path) per checkpoint: the one rule every command and
the figures use (:func:`discover`), and the refusal of an output inside any input."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._types import PathLike
from ..checkpoint import (
    CONFIG_NAME,
    DEFAULT_CHECKPOINT,
    check_readable_path,
    resolve_checkpoint,
)
from ..errors import CheckpointError, NiffError
from ..runs import TRAIN_STATE_NAME, WEIGHTS_NAME, holds_run, unfinished_reason

SWEEP_FILE = "sweep.json"  # what marks a study folder (niff_analysis.train.sweep.SWEEP_FILE)


# --------------------------------------------------------------------------- finding, loading
def checkpoint_label(path: PathLike | None) -> str:
    """Short name of a checkpoint: its directory name or file stem (bundled default if None)."""
    p = Path(os.path.normpath(Path(path) if path is not None else DEFAULT_CHECKPOINT))
    return p.stem if p.suffix == ".safetensors" else p.name


def _real(path: PathLike) -> Path:
    return Path(os.path.realpath(path))


def overlaps(a: PathLike, b: PathLike) -> bool:
    """Whether two paths are the same or one lies inside the other (symbolic links resolved)."""
    a, b = _real(a), _real(b)
    return a == b or a in b.parents or b in a.parents


def input_folders(path: PathLike | None) -> list[Path]:
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

    checkpoints: list[tuple[str, Path | None]] = field(default_factory=list)
    in_folders: set[str] = field(default_factory=set)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    inputs: list[Path] = field(default_factory=list)

    def tolerates(self, path: Path | None, strict: bool = False) -> bool:
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


def discover(args: Sequence[PathLike | None] = (), runs_in_progress: bool = False) -> Found:
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
    paths: list[Path | None] = []
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
                from ..train.sweep import is_finished, runs

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
    unique: list[Path | None] = []
    seen: set[str] = set()
    for q in paths:
        key = str(_real(q if q is not None else DEFAULT_CHECKPOINT))
        if key not in seen:
            seen.add(key)
            unique.append(q)
    names = [(study.get(q) if q is not None else None) or checkpoint_label(q) for q in unique]
    if len(set(names)) < len(names):
        names = [str(q if q is not None else DEFAULT_CHECKPOINT) for q in unique]
    result.checkpoints = list(zip(names, unique))
    for q in unique:
        result.inputs += input_folders(q)
    return result


def find_checkpoints(args: Sequence[PathLike | None] = ()) -> list[tuple[str, Path | None]]:
    """(label, path) per checkpoint: :func:`discover`'s checkpoints (the one rule every command
    and the figures use).

    Raises:
        CheckpointError: as :func:`discover`.
    """
    return discover(args).checkpoints

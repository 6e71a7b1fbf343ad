"""Provenance: the ``meta.json`` that every output folder carries.

* An analysis result (``niff-analyze mass -o out/mass.csv`` and the like) gets an entry in its
  folder's ``meta.json`` (format ``niff-analysis-meta``): command, time, versions, parameters,
  checkpoints with their hashes, rows and the file's hash (:func:`write_output`).
* A figure set (``niff-analyze figures --out DIR``) is described as a whole by ``DIR/meta.json``
  (format ``niff-analysis-figures``), whose file list says which files a later run may replace
  (:func:`manifest_files`; written by :func:`niff_analysis.plotting.write_figures`).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable
from pathlib import Path

from . import __version__
from ._types import PathLike
from .errors import NiffError
from .io import atomic_write, directory_lock, file_sha256

META_NAME = "meta.json"
META_FORMAT = "niff-analysis-meta"
FIGURES_FORMAT = "niff-analysis-figures"


def _versions() -> dict:
    """The toolkit's and torch's versions, as every ``meta.json`` records them."""
    import torch  # lazily: the CLI starts without torch (benchmarks/README.md, start-up)

    return dict(niff_analysis=__version__, torch=torch.__version__)


def read_meta(meta_path: Path) -> dict:
    """The ``meta.json`` of an output folder (an empty one if there is none).

    Raises:
        NiffError: the file exists and is not one of ours (it is never overwritten).
    """
    if not meta_path.exists():
        return dict(format=META_FORMAT, outputs={})
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT or not isinstance(meta.get("outputs"), dict):
        raise NiffError(f"{meta_path} exists and is not a niff-analysis metadata file; choose another output folder")
    return meta


def record_output(output: PathLike, entry: dict) -> None:
    """Set ``entry`` as the ``meta.json`` record of ``output`` (a file in the same folder).

    The read-modify-write runs under a lock on the folder, so processes writing outputs into one
    folder at once keep each other's entries; the file itself is replaced atomically.
    """
    output = Path(output)
    meta_path = output.parent / META_NAME
    with directory_lock(output.parent):
        meta = read_meta(meta_path)
        meta["outputs"][output.name] = entry
        atomic_write(meta_path, json.dumps(meta, indent=1, default=str) + "\n")


def write_output(
    output: PathLike,
    content: str | bytes | Callable[[Path], None],
    command: str,
    parameters: dict,
    checkpoints: list[dict],
    rows: int,
) -> Path:
    """Write one result file atomically and record its provenance in ``meta.json`` beside it.

    Args:
        content: the text or bytes, or a function writing the file at the path it is given.
        command, parameters, checkpoints, rows: what the entry records (with the toolkit and
            torch versions, the time and the file's hash).

    Raises:
        NiffError: ``meta.json`` there is not ours (checked before anything is written).
    """
    path = Path(output)
    read_meta(path.parent / META_NAME)  # refuse before writing anything
    atomic_write(path, content)
    record_output(
        path,
        dict(
            command=command,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            versions=_versions(),
            parameters=parameters,
            checkpoints=checkpoints,
            rows=rows,
            sha256=file_sha256(path),
        ),
    )
    return path


def manifest_files(out: Path) -> list[str]:
    """The files an earlier figure run wrote into ``out`` (its manifest's list), if any."""
    try:
        meta = json.loads((out / META_NAME).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(meta, dict) or meta.get("format") != FIGURES_FORMAT:
        return []
    return [f for f in meta.get("files", []) if isinstance(f, str) and "/" not in f and f != META_NAME]


def figures_manifest(checkpoints: list[dict], parameters: dict, files: list[str]) -> str:
    """The text of a figure set's ``meta.json``: versions, the checkpoints (label, path,
    sha256), the parameters and the files written (which :func:`manifest_files` reads back)."""
    return (
        json.dumps(
            dict(
                format=FIGURES_FORMAT, versions=_versions(), checkpoints=checkpoints, parameters=parameters, files=files
            ),
            indent=1,
        )
        + "\n"
    )

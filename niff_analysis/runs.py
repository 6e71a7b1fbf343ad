"""Run folders: which files a training run writes, who is writing them (the lock), and what
state a run is in.

A run folder (``niff-analyze train --out RUN``) holds ``train_config.json``, ``init/``,
``kernel_stats.csv``, ``metrics.csv``, ``train_state.pt`` while it trains, the final checkpoint
(``config.json`` + ``model.safetensors``, written last) when it is done, and ``epoch_NNN/`` on
request. While a process trains it, ``train.lock`` names that process (PID, host, start time),
so a second ``train`` or ``--resume`` on the same folder is refused instead of silently racing
the first. The lock is an ``flock`` on that file as well: the operating system releases it when
the process dies, even on SIGKILL, so a lock left by a dead process is recognised as stale and
taken over. A run stopped by a non-finite loss leaves ``diverged.json`` saying where.

``--overwrite`` (``train``, ``import``) moves a previous run's files aside before anything new is
written and deletes them, so two runs never mix; a folder that also holds files no run wrote is
refused instead of emptied.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from ._types import PathLike
from .errors import NiffError

try:  # POSIX; elsewhere the lock falls back to the PID check alone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # a missing module, tested with `fcntl is None` where used

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TRAIN_STATE_NAME = "train_state.pt"
TRAIN_CONFIG_NAME = "train_config.json"
METRICS_NAME = "metrics.csv"
STATS_NAME = "kernel_stats.csv"  # the statistics recorded while training (analysis.stats)
INIT_DIR = "init"
LOCK_NAME = "train.lock"
DIVERGED_NAME = "diverged.json"
_EPOCH_DIR = re.compile(r"^epoch_\d{3,}$")
_ASIDE_PREFIX = ".overwritten."
RUN_FILES = (
    CONFIG_NAME,
    WEIGHTS_NAME,
    TRAIN_STATE_NAME,
    TRAIN_CONFIG_NAME,
    METRICS_NAME,
    STATS_NAME,
    LOCK_NAME,
    DIVERGED_NAME,
)


class RunLockedError(NiffError):
    """Another process is writing the run folder."""


# --------------------------------------------------------------------------- what a folder holds
def is_run_entry(name: str) -> bool:
    """Whether an entry of a run folder was written by a run (and ``--overwrite`` may remove it):
    the run's files, ``init/``, ``epoch_NNN/``, and the hidden temporary files of interrupted
    writes and overwrites."""
    return (
        name in RUN_FILES
        or name == INIT_DIR
        or bool(_EPOCH_DIR.match(name))
        or (name.startswith(".") and name.endswith(".tmp"))
        or name.startswith(_ASIDE_PREFIX)
    )


def holds_run(folder: PathLike) -> bool:
    """Whether ``folder`` holds the files of a training run or a checkpoint (finished or not)."""
    folder = Path(folder)
    return folder.is_dir() and (
        any((folder / n).is_file() for n in RUN_FILES if n != LOCK_NAME) or (folder / INIT_DIR / CONFIG_NAME).is_file()
    )


def foreign_entries(folder: PathLike) -> list[str]:
    """The visible entries of ``folder`` that no run wrote (hidden ones are left alone)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and not is_run_entry(p.name))


def refuse_foreign(folder: PathLike, option: str = "--out") -> None:
    """``--overwrite`` replaces runs, nothing else.

    Raises:
        NiffError: ``folder`` holds files that no run wrote (they would be lost).
    """
    foreign = foreign_entries(folder)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise NiffError(
            f"{option} {folder} holds files that are not a run's ({shown}); --overwrite replaces "
            "only a run: move them, or choose another folder"
        )


def clear_run(folder: PathLike, keep: tuple[str, ...] = (LOCK_NAME,)) -> int:
    """Remove a previous run's files from ``folder`` (all of :func:`is_run_entry` but ``keep``).

    The entries are first renamed into one hidden folder (each rename is atomic), then that
    folder is deleted: an interruption leaves whole old entries or none, never a mix inside one,
    and a later overwrite removes what is left. Returns how many entries were removed.
    """
    folder = Path(folder)
    aside = move_aside(folder, keep)
    n = len(list(aside.iterdir())) if aside is not None else 0
    discard(aside)
    for p in folder.glob(f"{_ASIDE_PREFIX}*"):  # left by an earlier, interrupted overwrite
        shutil.rmtree(p, ignore_errors=True)
    return n


def move_aside(folder: PathLike, keep: tuple[str, ...] = (LOCK_NAME,)) -> Path | None:
    """Rename a run's entries of ``folder`` into a new hidden folder inside it; returns that
    folder (``None`` when there was nothing to move). :func:`restore` undoes it, :func:`discard`
    deletes it."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    entries = [
        p
        for p in folder.iterdir()
        if is_run_entry(p.name) and p.name not in keep and not p.name.startswith(_ASIDE_PREFIX)
    ]
    if not entries:
        return None
    aside = folder / f"{_ASIDE_PREFIX}{uuid.uuid4().hex[:8]}"
    aside.mkdir()
    for p in entries:
        os.replace(p, aside / p.name)
    return aside


def restore(aside: Path | None, folder: PathLike) -> None:
    """Move the entries :func:`move_aside` put away back into ``folder`` (where nothing new took
    their name), then delete the hidden folder."""
    if aside is None:
        return
    for p in aside.iterdir():
        target = Path(folder) / p.name
        if not target.exists():
            os.replace(p, target)
    discard(aside)


def discard(aside: Path | None) -> None:
    """Delete a folder :func:`move_aside` made."""
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def run_file(checkpoint: PathLike, name: str) -> Path:
    """Where the file ``name`` that a training run writes beside its checkpoint lies for
    ``checkpoint``: in its folder (a single-file checkpoint's folder), or, for a run's ``init/``
    and ``epoch_NNN/`` that do not hold it, in the run folder above them. The path is returned
    whether or not the file exists."""
    p = Path(checkpoint)
    folder = p if p.is_dir() else p.parent
    if not (folder / name).is_file() and (folder.name == INIT_DIR or _EPOCH_DIR.match(folder.name)):
        return folder.parent / name
    return folder / name


def read_train_config(path: PathLike) -> dict | None:
    """The ``train_config.json`` of the training run a checkpoint or run folder comes from
    (:func:`run_file`); ``None`` when there is none or it is not a JSON object."""
    f = run_file(path, TRAIN_CONFIG_NAME)
    if not f.is_file():
        return None
    try:
        cfg = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def read_diverged(folder: PathLike) -> dict | None:
    """What ``diverged.json`` of a run says (``None``: the run did not diverge, or says nothing)."""
    try:
        info = json.loads((Path(folder) / DIVERGED_NAME).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def run_status(folder: PathLike) -> str:
    """What a run without its final checkpoint is doing, in a few words (diverged, training now,
    or stopped)."""
    diverged = read_diverged(folder)
    if diverged is not None:
        return f"training diverged, {diverged.get('message', 'a non-finite loss')}"
    holder = lock_holder(folder)
    if holder is not None:
        return f"training is in progress: {_holder_text(holder)}"
    return "training is in progress elsewhere or was interrupted"


def unfinished_reason(folder: PathLike) -> str | None:
    """Why a run folder is not a checkpoint yet, in one sentence naming its ``train_state.pt``;
    ``None`` when ``folder`` is a checkpoint or holds no run at all."""
    folder = Path(folder)
    if (folder / CONFIG_NAME).is_file() or not holds_run(folder):
        return None
    state = folder / TRAIN_STATE_NAME
    if state.is_file():
        return (
            f"{folder}: the run has no final checkpoint ({run_status(folder)}); its last saved state is "
            f"{state}: analyse that file, or finish the run with `niff-analyze train ... --resume`"
        )
    return (
        f"{folder}: the run has no final checkpoint and no saved state yet ({run_status(folder)}; {state} "
        f"does not exist); its initialisation is {folder / INIT_DIR}"
    )


def last_saved(folder: PathLike) -> Path:
    """What stands for a run without its final checkpoint: its last saved training state, or its
    initialisation while it has saved none."""
    state = Path(folder) / TRAIN_STATE_NAME
    return state if state.is_file() else Path(folder) / INIT_DIR


# --------------------------------------------------------------------------- the lock
def _host() -> str:
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    except OSError:
        return True
    return True


def _read_info(fd: int) -> dict | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536)
        info = json.loads(raw.decode()) if raw.strip() else None
    except (OSError, ValueError, UnicodeDecodeError):
        return {}  # a lock file we cannot read: somebody's, details unknown
    return info if isinstance(info, dict) or info is None else {}


def _holder_text(info: dict) -> str:
    if not info:
        return "a process whose lock file cannot be read"
    return (
        f"{info.get('command', 'a process')}, process {info.get('pid', '?')} on {info.get('host', '?')}"
        f" since {info.get('started', '?')}"
    )


def _try_flock(fd: int, exclusive: bool = True) -> bool | None:
    """True: locked now; False: another open file holds it; None: no locks here."""
    if fcntl is None:  # pragma: no cover - Windows
        return None
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:  # a filesystem without locks (some network mounts)
        return None


def _is_stale(info: dict, flocked: bool | None) -> bool:
    """A lock file's holder is gone: on this host, nobody holds the flock (or, without flocks,
    its PID is not alive). A holder on another host cannot be checked from here."""
    if not info:
        return flocked is True  # unreadable but unlocked: a crash while writing it
    if info.get("host") != _host():
        # Only the same SLURM job, requeued onto another node (a preempted or timed-out sweep job
        # that submitit resubmits keeps its job id), can tell that this holder is gone.
        job = os.environ.get("SLURM_JOB_ID")
        return bool(job) and info.get("job") == job
    if flocked is True:
        return True
    pid = info.get("pid")
    return not (isinstance(pid, int) and _pid_alive(pid))


def locked_message(folder: Path, info: dict) -> str:
    """The one line that refuses a folder whose lock ``info`` (the lock file's content) holds."""
    path = folder / LOCK_NAME
    if info and info.get("host") not in (None, _host()):
        return (
            f"{folder} is in use by {_holder_text(info)} (another host: whether it still runs cannot be "
            f"checked from here); if it does not, delete {path}"
        )
    return f"{folder} is in use by {_holder_text(info)}; wait for it to finish, or stop it first"


def lock_holder(folder: PathLike) -> dict | None:
    """Who holds the lock of ``folder`` now (its lock file's content), or ``None`` when nobody
    does (no lock file, or a stale one)."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        flocked = _try_flock(fd, exclusive=False)
        info = _read_info(fd) or {}
        if flocked is False:
            return info
        return None if _is_stale(info, flocked) else info
    finally:
        os.close(fd)


def _acquire(folder: Path, command: str) -> int:
    path = folder / LOCK_NAME
    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            flocked = _try_flock(fd)
            for _ in range(5):  # lock_holder's brief shared look is no holder: try again shortly
                if flocked is not False:
                    break
                time.sleep(0.02)
                flocked = _try_flock(fd)
            if flocked is False:
                raise RunLockedError(locked_message(folder, _read_info(fd) or {}))
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if not same:  # released and removed between our open and our lock: take the new one
                os.close(fd)
                continue
            info = _read_info(fd)
            if info is not None and not _is_stale(info, flocked):
                raise RunLockedError(locked_message(folder, info))
            mine = dict(
                pid=os.getpid(),
                host=_host(),
                command=command,
                started=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            )
            if os.environ.get("SLURM_JOB_ID"):
                mine["job"] = os.environ["SLURM_JOB_ID"]
            line = json.dumps(mine)
            os.ftruncate(fd, 0)
            os.pwrite(fd, (line + "\n").encode(), 0)
            os.fsync(fd)
            return fd
        except BaseException:
            os.close(fd)
            raise
    raise RunLockedError(f"{path}: the lock keeps changing hands; try again")


def _release(folder: Path, fd: int) -> None:
    path = folder / LOCK_NAME
    try:
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            os.unlink(path)  # while still holding it: nobody can take a lock on a file being removed
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def run_lock(folder: PathLike, command: str = "niff-analyze train") -> Iterator[Path]:
    """Hold the lock of run folder ``folder`` (created if missing) for the duration.

    Args:
        folder: the run folder.
        command: what the lock file says holds it.

    Raises:
        RunLockedError: a live process holds it (the message names it), or one on another host.
    """
    folder = Path(folder)
    created = [p for p in [folder, *folder.absolute().parents] if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = _acquire(folder, command)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield folder / LOCK_NAME
    finally:
        _release(folder, fd)
        _remove_empty(created)


def _remove_empty(created: list[Path]) -> None:
    """Remove the folders a failed command created, if they stayed empty (innermost first)."""
    for p in created:
        try:
            p.rmdir()
        except OSError:
            break

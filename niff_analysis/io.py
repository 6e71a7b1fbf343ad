"""Atomic file writing: every file the toolkit writes goes to a temporary name first and is
renamed into place, so a crash never leaves a half-written file that would later load.

The temporary file is hidden (``.NAME.XXXX.tmp``) and lives beside the target, so the final
``os.replace`` is a same-filesystem rename. Its content is flushed to disk (``fsync``) before the
rename, so even a power loss leaves either the old or the new file, never a torn one. An
exception during the write removes the temporary file and leaves any previous file untouched;
only a hard kill (SIGKILL, power loss) can leave a stray hidden ``.tmp`` file behind.

Files several processes update in place (``meta.json`` beside analysis outputs) are
read-modified-written under :func:`directory_lock`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # this module imports nothing of the package: it runs alone (tests/test_atomic_writes.py)
    from ._types import PathLike

try:  # POSIX; elsewhere directory_lock degrades to no locking
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # a missing module, tested with `fcntl is None` where used


@functools.lru_cache(maxsize=1)
def process_umask() -> int:
    """The process umask, read once at the first write (not at import, and without setting it
    where /proc tells: setting it to read it back races with threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it, briefly
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)  # writable: some platforms refuse fsync on read-only handles
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every platform/filesystem can)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    Whatever is written to the temporary path is fsynced before the rename. On an exception the
    temporary file is removed and ``path`` keeps its previous content (if any).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # name the file the user asked for, not our temporary one
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync(tmp)  # before the chmod: a umask may leave the final mode read-only
        os.chmod(tmp, 0o666 & ~process_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:  # a failed write names the file asked for (never our temporary name)
        if exc.errno is not None and (exc.filename is None or Path(exc.filename) == tmp):
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: PathLike, data: bytes | str | Callable[[Path], None]) -> Path:
    """Write bytes, text, or whatever ``data(tmp_path)`` writes, atomically to ``path``."""
    with atomic_path(path) as tmp:
        if callable(data):
            data(tmp)
        elif isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
    return Path(path)


@contextlib.contextmanager
def directory_lock(folder: PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder`` (``flock`` on the directory itself).

    Processes that read-modify-write a shared file of that folder (e.g. ``meta.json``) do it
    inside this lock, so concurrent updates are serialised instead of losing each other's
    entries. No lock file is created. Where ``fcntl`` or the filesystem offers no locks, this
    only yields (concurrent updates may then lose entries, as without it).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a filesystem without locks (some network mounts): go on unlocked
            pass
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def write_failure(path: PathLike, exc: BaseException, kept: str = "") -> BaseException:
    """The ``OSError`` a failed ``torch.save`` stands for: torch reports a full disk as
    ``[enforce fail at inline_container.cc] unexpected pos …`` or ``file write failed``, with no
    errno. Other errors are returned unchanged.

    Args:
        kept: what survived, added to the message (e.g. "the previous train_state.pt is kept").
    """
    text = " ".join(str(exc).split())
    if isinstance(exc, RuntimeError) and ("unexpected pos" in text or "file write failed" in text):
        return OSError(errno.ENOSPC, "No space left on device" + (f" ({kept})" if kept else ""), str(path))
    return exc


def check_writable(folder: PathLike) -> None:
    """Refuse a folder (existing, or to be made) where no file can be created, before any work.

    Raises:
        PermissionError, OSError: with ``folder`` (or the folder it would be made in) named.
    """
    folder = Path(folder)
    probe = folder if folder.exists() else next((p for p in folder.absolute().parents if p.exists()), Path("."))
    fd, name = tempfile.mkstemp(prefix=".niff-write-test.", dir=probe)  # really create one: root ignores modes
    os.close(fd)
    os.unlink(name)


def file_sha256(path: PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

"""Nothing lost: every file the toolkit writes goes through ``niff_analysis.io`` (temporary name,
fsync, rename). A failure mid-write leaves the previous file intact and no partial or temporary
file behind; a hard kill mid-write leaves the previous file intact.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from click.testing import CliRunner

matplotlib.use("Agg")

import niff_analysis.io as nio  # noqa: E402
from niff_analysis.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from niff_analysis.cli import main  # noqa: E402
from niff_analysis.io import atomic_write, file_sha256  # noqa: E402
from niff_analysis.models import create_model  # noqa: E402
from niff_analysis.plotting import save_figure  # noqa: E402
from niff_analysis.plotting.style import new_figure  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SMALL = "layer4.1.conv2"

# ------------------------------------------------------------------------------ the write monitor
# What the toolkit does on disk, observed (Python audit events): every file a command opens for
# writing must be a temporary name (atomic_write's ``.NAME.XXXX.tmp``, a file inside the figure
# set's ``.partial`` folder, or the empty probe that checks a folder is writable), and every file
# it leaves behind must have been renamed into place.
_EVENTS: list | None = None
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _audit(event, args):
    if _EVENTS is None:
        return
    if event == "open":
        path, mode, flags = args
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
        if writes and isinstance(path, (str, bytes, os.PathLike)):
            _EVENTS.append(("write", Path(os.fsdecode(path)).absolute()))
    elif event == "os.rename":  # os.rename and os.replace
        _EVENTS.append(("rename", Path(os.fsdecode(args[1])).absolute()))


sys.addaudithook(_audit)  # hooks cannot be removed; this one is idle unless _EVENTS is a list


class WriteMonitor:
    """Record writes and renames under ``root`` while active; :meth:`direct_writes` names every
    file that was written in place or appeared without a rename."""

    def __init__(self, root: Path):
        self.root, self.events = Path(root).absolute(), []

    def __enter__(self):
        global _EVENTS
        self.before = {p for p in self.root.rglob("*") if p.is_file()}
        _EVENTS = self.events
        return self

    def __exit__(self, *exc):
        global _EVENTS
        _EVENTS = None

    def direct_writes(self) -> list[str]:
        mine = [(kind, p) for kind, p in self.events if self.root in p.parents]
        bad = [
            f"opened for writing: {p}"
            for kind, p in mine
            if kind == "write"
            and not (p.name.startswith(".") and p.name.endswith(".tmp"))
            and not p.name.startswith(".niff-write-test.")  # figures' writability probe, removed
            and p.name != "train.lock"  # a run folder's lock: held open while writing, then removed
            and not any(q.name.endswith(".partial") for q in p.parents)
        ]
        renamed = {p for kind, p in mine if kind == "rename"}
        after = {p for p in self.root.rglob("*") if p.is_file()}
        # A file inside a folder renamed into place as a whole (a figure set) was renamed with it.
        bad += [
            f"appeared without a rename: {p}"
            for p in sorted(after - self.before - renamed)
            if not renamed & set(p.parents)
        ]
        return bad


def test_the_monitor_catches_direct_writes(tmp_path):
    with WriteMonitor(tmp_path) as mon:
        (tmp_path / "a.txt").write_text("x")  # in place
        np.save(tmp_path / "b.npy", np.zeros(2))
        atomic_write(tmp_path / "c.txt", "fine")
        with open(tmp_path / "d.bin", "ab") as f:
            f.write(b"x")
        _write_plain(tmp_path / "e.bin", b"x")  # os.open with O_CREAT
    found = "\n".join(mon.direct_writes())
    for name in ("a.txt", "b.npy", "d.bin", "e.bin"):
        assert f"opened for writing: {tmp_path / name}" in found
    assert "c.txt" not in found
    with WriteMonitor(tmp_path) as mon:
        os.link(tmp_path / "c.txt", tmp_path / "f.txt")  # a file that no Python open() wrote
    assert mon.direct_writes() == [f"appeared without a rename: {tmp_path / 'f.txt'}"]


@pytest.mark.parametrize(
    "args",
    [
        ["mass", "--layers", SMALL, "-q", "-o", "{d}/m.csv"],
        ["kernels", "--layers", SMALL, "-q", "--responses", "-o", "{d}/k.npz"],
        ["pca", "--layers", SMALL, "-q", "-o", "{d}/p.npz"],
        ["gaussian", "--layers", SMALL, "-q", "--view", "summary", "-o", "{d}/g.json"],
        ["history", "-q", "-o", "{d}/h.txt"],
        ["claims", "-q", "-o", "{d}/c.csv"],
        [
            "figures",
            "--layers",
            SMALL,
            "--max-kernels",
            "16",
            "--erf-images",
            "0",
            "--cost-sizes",
            "none",
            "--format",
            "png,svg",
            "-q",
            "--out",
            "{d}/figs",
        ],
    ],
    ids=lambda a: a[0],
)
def test_commands_write_only_through_atomic_renames(tmp_path, args):
    with WriteMonitor(tmp_path) as mon:
        res = CliRunner().invoke(main, [a.format(d=tmp_path) for a in args])
    assert res.exit_code == 0, res.output
    assert {p for p in tmp_path.rglob("*") if p.is_file()}, "the command wrote nothing"
    assert mon.direct_writes() == []


def test_checkpoints_and_imports_write_only_through_atomic_renames(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet18_niff", num_classes=10, in_chans=1, stem="cifar", input_size=16)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with WriteMonitor(tmp_path / "out") as mon:
        save_checkpoint(model, tmp_path / "out" / "ckpt")
        save_checkpoint(model, tmp_path / "out" / "single.safetensors")
        res = CliRunner().invoke(
            main,
            [
                "import",
                str(tmp_path / "sd.pt"),
                "--model",
                "resnet18_niff",
                "--num-classes",
                "10",
                "--in-chans",
                "1",
                "--stem",
                "cifar",
                "--input-size",
                "16",
                "--out",
                str(tmp_path / "out" / "imp"),
            ],
        )
    assert res.exit_code == 0, res.output
    assert mon.direct_writes() == []


# ------------------------------------------------------------------------------ failure mid-write
@pytest.fixture
def half_then_fail(monkeypatch):
    """Make Path.write_bytes / write_text (what atomic_write uses) write half, then fail with
    ENOSPC: a disk filling up mid-write. Returns the list of paths it hit."""
    hits = []

    def partial(real):
        def write(self, data, *args, **kwargs):
            hits.append(Path(self))
            real(self, data[: len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device (injected)")

        return write

    monkeypatch.setattr(Path, "write_bytes", partial(Path.write_bytes))
    monkeypatch.setattr(Path, "write_text", partial(Path.write_text))
    return hits


def _only(folder: Path) -> set[str]:
    """Names in a folder, temporary files included (they start with a dot)."""
    return {p.name for p in folder.iterdir()}


@pytest.mark.parametrize("kind", ["bytes", "text", "callable"])
def test_failure_mid_write_keeps_the_previous_file(tmp_path, kind, half_then_fail):
    target = tmp_path / "out.dat"
    data = {"bytes": b"N" * 10_000, "text": "N" * 10_000}.get(kind)
    if kind == "callable":

        def data(tmp):  # e.g. torch.save / np.savez into the temporary path
            with open(tmp, "wb") as f:
                f.write(b"N" * 5_000)
            raise OSError(errno.ENOSPC, "injected")

    # No previous file: nothing at all is left.
    with pytest.raises(OSError):
        atomic_write(target, data)
    assert _only(tmp_path) == set()
    # A previous file (written around the patched Path methods): it survives byte for byte.
    _write_plain(target, b"old content\n")
    with pytest.raises(OSError):
        atomic_write(target, data)
    assert target.read_bytes() == b"old content\n"
    assert _only(tmp_path) == {"out.dat"}
    if kind != "callable":
        assert half_then_fail and half_then_fail[-1].name.startswith(".out.dat.")  # a temp name


def _write_plain(path: Path, data: bytes) -> Path:
    """Write without Path.write_bytes (which the failure fixtures patch)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


def test_checkpoint_save_failure_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    kw = dict(num_classes=10, in_chans=1, stem="cifar", input_size=16)
    torch.manual_seed(0)
    old = create_model("resnet18_niff", **kw)
    new = create_model("resnet18_niff", **kw)
    for path in (tmp_path / "ckpt", tmp_path / "single.safetensors"):
        save_checkpoint(old, path, note="old")
        before = {p.name: p.read_bytes() for p in ([path] if path.is_file() else path.iterdir())}
        with monkeypatch.context() as mp:
            real = Path.write_bytes
            # the lambda runs within this iteration (the context undoes the patch)
            mp.setattr(
                Path,
                "write_bytes",
                lambda self, data: (
                    real(self, data[: len(data) // 2]),  # noqa: B023
                    _raise(errno.ENOSPC),
                )[1],
            )
            with pytest.raises(OSError, match="injected"):
                save_checkpoint(new, path, note="new")
        after = {p.name: p.read_bytes() for p in ([path] if path.is_file() else path.iterdir())}
        assert after == before
        assert not [p for p in tmp_path.rglob(".*.tmp")]
        loaded = load_checkpoint(path)
        assert loaded.niff_checkpoint["note"] == "old"
        for k, v in old.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v)


def _raise(code):
    raise OSError(code, "injected")


@pytest.fixture(scope="module")
def cached_default():
    from niff_analysis.checkpoint import Checkpoint

    model = load_checkpoint(None)
    with pytest.MonkeyPatch.context() as mp:  # every command loads through Checkpoint.model
        mp.setattr(Checkpoint, "model", lambda self, device="cpu", allow_non_finite=False: model)
        yield


@pytest.mark.parametrize("output", ["a.csv", "a.json", "a.txt", "k.npz"])
def test_cli_output_failure_keeps_previous_output_and_meta(tmp_path, output, cached_default):
    out = tmp_path / output
    command = "kernels" if output.endswith(".npz") else "mass"
    args = [command, "--layers", SMALL, "-o", str(out), "-q"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.stderr
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {output, "meta.json"}

    real_write_text, real_savez = Path.write_text, np.savez

    def half_text(self, data, *a, **k):
        real_write_text(self, data[: len(data) // 2], *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    def half_savez(f, **arrays):
        real_savez(f, **arrays)
        f.truncate(f.tell() // 2)
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "write_text", half_text)
        mp.setattr(np, "savez", half_savez)
        res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and res.stderr == f"error: disk full writing {out}: No space left on device (injected)\n"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["outputs"][output]["sha256"] == file_sha256(out)


def test_meta_write_failure_keeps_previous_meta(tmp_path, cached_default):
    args = ["mass", "--layers", SMALL, "-q", "-o"]
    assert CliRunner().invoke(main, [*args, str(tmp_path / "a.csv")]).exit_code == 0
    meta_before = (tmp_path / "meta.json").read_bytes()
    real = Path.write_text

    def fail_meta(self, data, *a, **k):
        if self.name.startswith(".meta.json."):
            real(self, data[:10], *a, **k)
            raise OSError(errno.EIO, "injected")
        return real(self, data, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "write_text", fail_meta)
        res = CliRunner().invoke(main, [*args, str(tmp_path / "b.csv")])
    assert res.exit_code != 0 and res.stderr.startswith("error: ")
    assert (tmp_path / "meta.json").read_bytes() == meta_before  # still valid, still a's entry
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_figure_failure_keeps_previous_figure(tmp_path, half_then_fail):
    fig = new_figure((2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    stem = tmp_path / "fig"
    _write_plain(tmp_path / "fig.png", b"previous png")
    with pytest.raises(OSError, match="injected"):
        save_figure(fig, stem, formats=("png",))
    assert (tmp_path / "fig.png").read_bytes() == b"previous png"
    assert _only(tmp_path) == {"fig.png"}


def test_content_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        nio.os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd))[1]
    )
    monkeypatch.setattr(nio.os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b))[1])
    atomic_write(tmp_path / "x.txt", "hello")
    kinds = [e[0] for e in events]
    assert kinds[:2] == ["fsync", "replace"] and events[0][1] == events[1][1]  # the temp file, then rename
    assert (tmp_path / "x.txt").read_text() == "hello"


# ------------------------------------------------------------------------------ a hard kill mid-write
KILLER = """
import importlib.util, os, signal, sys
spec = importlib.util.spec_from_file_location("nio", sys.argv[1])
nio = importlib.util.module_from_spec(spec); spec.loader.exec_module(nio)
def half_then_die(tmp):
    with open(tmp, "wb") as f:
        f.write(b"NEW" * 100_000)
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
nio.atomic_write(sys.argv[2], half_then_die)
"""


@pytest.mark.slow
def test_sigkill_mid_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "table.csv"
    atomic_write(target, "old,complete\n1,2\n")
    io_py = importlib.util.find_spec("niff_analysis.io").origin  # loaded alone: no torch import
    proc = subprocess.run([sys.executable, "-c", KILLER, io_py, str(target)], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_text() == "old,complete\n1,2\n"
    # What a kill cannot clean up is a hidden temporary file, never the target name.
    stray = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(stray) == 1 and re.fullmatch(r"\.table\.csv\..+\.tmp", stray[0])

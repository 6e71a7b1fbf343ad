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

import niff_analysis.cli.analysis as cli_analysis  # noqa: E402
import niff_analysis.io as nio  # noqa: E402
from niff_analysis.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from niff_analysis.cli import main  # noqa: E402
from niff_analysis.io import atomic_write, file_sha256  # noqa: E402
from niff_analysis.models import create_model  # noqa: E402
from niff_analysis.plotting import save_figure  # noqa: E402
from niff_analysis.plotting.style import new_figure  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SMALL = "layer4.1.conv2"

# ------------------------------------------------------------------------------ the audit
# Calls that write a file. Each match outside niff_analysis/io.py must be listed in ALLOWED, with
# the reason it is safe; a new direct write fails this test and points at niff_analysis.io.
WRITERS = re.compile(
    r"\bopen\([^)]*['\"][wax]\+?b?['\"]"            # open(path, "w"/"wb"/"a"/"x")
    r"|\.write_(text|bytes)\("                        # Path.write_text / write_bytes
    r"|\.to_(csv|json|parquet|pickle|excel|html|feather)\((?!\s*\)|\s*\w+\s*=)"  # to_csv(path, …)
    r"|\.savefig\("                                   # matplotlib
    r"|\bnp\.save(z|z_compressed|txt)?\("             # numpy
    r"|\btorch\.save\(|\bsave_file\("                 # torch, safetensors
    r"|\b(json|pickle)\.dump\("                       # json/pickle to a file object
    r"|\bshutil\.(copy\w*|move)\(|\bos\.(rename|replace)\("
)
ALLOWED = {
    ("niff_analysis/cli/analysis.py", 'with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name'):
        "writes the temporary path atomic_write hands it",
    ("niff_analysis/cli/analysis.py", "np.savez(f, **arrays)"): "into that temporary file",
    ("niff_analysis/plotting/style.py", "fig.savefig(buf, format=fmt, metadata=meta)"):
        "renders into memory; atomic_write writes the bytes",
    ("niff_analysis/train/trainer.py", "atomic_write(state_path, lambda p: torch.save(st, p))"):
        "torch.save into atomic_write's temporary path",
    ("niff_analysis/plotting/report.py", "os.replace(tmp / name, out / name)"):
        "moves files atomic_write wrote (and fsynced) in the figure set's temporary folder into place",
}


def _code_lines(path: Path):
    """(line number, stripped line) of code, skipping comment lines and docstring bodies."""
    in_doc = False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        s = line.strip()
        quotes = s.count('"""') + s.count("'''")
        if in_doc:
            in_doc = quotes % 2 == 0
            continue
        if s.startswith(('"""', "'''")):
            in_doc = quotes % 2 == 1
            continue
        if s and not s.startswith("#"):
            yield n, s


def test_every_write_goes_through_niff_analysis_io():
    found, direct = set(), []
    for folder in ("niff_analysis", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "niff_analysis/io.py":
                continue
            for n, line in _code_lines(path):
                if WRITERS.search(line):
                    if (rel, line) in ALLOWED:
                        found.add((rel, line))
                    else:
                        direct.append(f"{rel}:{n}: {line}")
    assert not direct, "write these through niff_analysis.io.atomic_write:\n" + "\n".join(direct)
    assert found == set(ALLOWED), f"stale ALLOWED entries: {set(ALLOWED) - found}"


def test_the_audit_catches_direct_writes():
    for line in ('open(path, "w")', "df.to_csv(out / 'x.csv', index=False)", "fig.savefig(path)",
                 "np.savez(path, **a)", "torch.save(sd, path)", "p.write_text(s)", "json.dump(d, f)"):
        assert WRITERS.search(line), line
    for line in ("df.to_csv(index=False)", "df.to_json(orient='records')", 'open(path, "rb")',
                 "json.dumps(d)", "torch.load(p)"):
        assert not WRITERS.search(line), line


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
            mp.setattr(Path, "write_bytes", lambda self, data: (real(self, data[: len(data) // 2]),
                                                                 _raise(errno.ENOSPC))[1])
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
    model = load_checkpoint(None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli_analysis, "load_checkpoint", lambda path=None, device="cpu", factory=None: model)
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
    assert res.exit_code == 1 and res.stderr == "error: [Errno 28] No space left on device (injected)\n"
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
    monkeypatch.setattr(nio.os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                     real_fsync(fd))[1])
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

"""Analyses run at once into the same output folder keep every result and every meta.json entry."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from niff_analysis.cli import main
from niff_analysis.io import atomic_write, file_sha256
from niff_analysis.provenance import META_NAME, record_output

pytestmark = pytest.mark.slow  # parallel processes: not in `make test-fast`

ENTRY = Path(sys.executable).parent / "niff-analyze"
LAYERS = "layer4.*"


def test_two_analyses_into_one_folder_at_once(tmp_path):
    out = tmp_path / "results"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    commands = {"a.csv": ["mass", "--view", "summary"], "b.csv": ["gaussian"]}
    procs = {
        name: subprocess.Popen(
            [str(ENTRY), *args, "--layers", LAYERS, "-o", str(out / name), "-q"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name, args in commands.items()
    }
    # Meanwhile, the same analyses in this process: what each file must hold.
    expected = {}
    for name, args in commands.items():
        res = CliRunner().invoke(main, [*args, "--layers", LAYERS, "--format", "csv", "-q"])
        assert res.exit_code == 0, res.stderr
        expected[name] = pd.read_csv(io.StringIO(res.stdout))
    for p in procs.values():
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0 and stdout == "" and stderr == "", stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "b.csv", META_NAME]  # no temp files
    meta = json.loads((out / META_NAME).read_text())
    assert set(meta["outputs"]) == set(commands)
    for name, args in commands.items():
        got = pd.read_csv(out / name)
        pd.testing.assert_frame_equal(got, expected[name], rtol=1e-9)
        entry = meta["outputs"][name]
        assert entry["command"] == args[0] and entry["rows"] == len(got)
        assert entry["sha256"] == file_sha256(out / name)


def _writer(folder: str, worker: int, entries: int) -> None:
    """One process: write its own outputs into ``folder`` and record each in meta.json."""
    for i in range(entries):
        name = f"w{worker}_{i}.txt"
        atomic_write(Path(folder) / name, f"{worker},{i}\n")
        record_output(Path(folder) / name, dict(worker=worker, i=i))


def test_concurrent_meta_updates_lose_no_entry(tmp_path):
    # Many processes updating meta.json in a tight loop: without the folder lock, their
    # read-modify-write cycles overlap and entries vanish.
    workers, entries = 4, 25
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, entries)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    meta = json.loads((tmp_path / META_NAME).read_text())
    expected = {f"w{w}_{i}.txt": dict(worker=w, i=i) for w in range(workers) for i in range(entries)}
    assert meta["outputs"] == expected
    assert len(list(tmp_path.iterdir())) == workers * entries + 1  # no temp files left


def _overwrite(path: str, byte: bytes, times: int) -> None:
    for _ in range(times):
        atomic_write(path, byte * 200_000)


def test_concurrent_writes_of_one_file_never_interleave(tmp_path):
    # Readers of a file that several processes rewrite see one complete version, never a mix.
    path = tmp_path / "shared.csv"
    atomic_write(path, b"0" * 200_000)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_overwrite, args=(str(path), b, 30)) for b in (b"A", b"B", b"C")]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs) or reads < 50:
        data = path.read_bytes()
        assert len(data) == 200_000 and len(set(data)) == 1
        reads += 1
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert [q.name for q in tmp_path.iterdir()] == ["shared.csv"]


def test_meta_json_that_is_not_ours_is_refused_before_writing(tmp_path):
    (tmp_path / META_NAME).write_text('{"something": "else"}\n')
    res = CliRunner().invoke(main, ["mass", "--layers", "layer4.1.conv2", "-q", "-o", str(tmp_path / "a.csv")])
    assert res.exit_code == 2
    assert res.stderr == (
        f"error: {tmp_path / META_NAME} exists and is not a niff-analysis metadata file; choose another output folder\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [META_NAME]
    assert (tmp_path / META_NAME).read_text() == '{"something": "else"}\n'


def test_record_output_replaces_only_its_entry(tmp_path):
    for name in ("x.csv", "y.csv"):
        atomic_write(tmp_path / name, "1\n")
        record_output(tmp_path / name, dict(v=1))
    record_output(tmp_path / "x.csv", dict(v=2))
    meta = json.loads((tmp_path / META_NAME).read_text())
    assert meta["outputs"] == {"x.csv": dict(v=2), "y.csv": dict(v=1)}
    assert meta["format"] == "niff-analysis-meta"

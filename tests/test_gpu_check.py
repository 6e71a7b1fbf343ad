"""``benchmarks/gpu_check.sh`` (issue 30): what runs without a GPU. Its plan and its one-line
refusals, and the whole script in ``--cpu`` mode (every step shrunk to seconds, nothing
installed), checked for the files the device tool brings back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def _run(*args, env=None, timeout=60):
    environ = {k: v for k, v in os.environ.items() if k not in ("OUT", "FMNIST_DIR")}
    environ.update(PYTHON=sys.executable, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=environ, timeout=timeout
    )


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, fmnist_dir):
    res = _run("--dry-run", "--out", tmp_path / "out", "--data", fmnist_dir)
    assert res.returncode == 0, res.stderr
    plan = res.stdout
    assert "pip install --no-deps --no-build-isolation -e" in plan and "tests/gpu" in plan
    assert "benchmarks layer train_step train_loop --device cuda" in plan
    models = [line.split()[1].rstrip(",") for line in plan.splitlines() if line.strip().startswith("train:")]
    assert models == [
        "resnet18_niff",
        "resnet18",
        "resnet50_niff",
        "densenet121_niff",
        "mobilenet_v2_niff",
        "convnext_tiny_niff",
    ]
    assert not (tmp_path / "out").exists()
    # The data is found through FMNIST_DIR too, and OUT is the device tool's variable.
    res = _run("--dry-run", env=dict(OUT=str(tmp_path / "o"), FMNIST_DIR=str(fmnist_dir)))
    assert res.returncode == 0 and f"data {fmnist_dir}" in res.stdout and f"out {tmp_path / 'o'}" in res.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bogus"], "unknown argument '--bogus'"),
        (["--budget", "ten"], "take whole seconds"),
        (["--data"], "--data needs a folder"),
        (["--dry-run"], "no output folder"),
        (["--dry-run", "--out", "o", "--data", "/nonexistent"], "Fashion-MNIST not found in /nonexistent"),
    ],
)
def test_bad_arguments_are_one_line(args, message):
    res = _run(*args)
    assert res.returncode == 2
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_cpu_mode_runs_every_step_and_writes_what_the_device_tool_returns(tmp_path, fmnist_dir):
    out = tmp_path / "out"
    res = _run("--cpu", "--out", out, "--data", fmnist_dir, "--train-seconds", "240", timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    # The device tool returns at most 8 files, no deeper than 2 folders: all of them sit in OUT.
    assert files == sorted(
        ["gpu_check.log", "env.txt", "tests.txt", "bench.txt", "training.csv", "summary.json", "runs.tar.gz"]
    )
    assert all((out / f).is_file() for f in files)
    assert "passed" in (out / "tests.txt").read_text().splitlines()[-1]
    assert "ours/lower_bound" in (out / "bench.txt").read_text()
    env = (out / "env.txt").read_text()
    assert "torch" in env and "native bf16" in env
    table = pd.read_csv(out / "training.csv")
    assert sorted(table["model"].unique()) == ["resnet18", "resnet18_niff"]
    assert set(table["epoch"]) == {1} and table["test_acc"].between(0, 1).all()
    assert set(table["precision_used"]) == {"fp32"}
    summary = json.loads((out / "summary.json").read_text())
    runs = summary["runs"]
    ratio = runs["resnet18_niff"]["seconds_per_epoch"] / runs["resnet18"]["seconds_per_epoch"]
    assert summary["niff_over_baseline_epoch_time"] == pytest.approx(ratio)
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = set(tar.getnames())
    for model in ("resnet18", "resnet18_niff"):
        assert {f"runs/{model}/metrics.csv", f"runs/{model}/train_config.json", f"runs/{model}/config.json"} <= names
    assert not any(n.endswith(".safetensors") or "/init/" in n for n in names)


@pytest.mark.slow
def test_budget_too_short_skips_steps_but_still_summarises(tmp_path, fmnist_dir):
    out = tmp_path / "out"
    res = _run(
        "--cpu", "--out", out, "--data", fmnist_dir, "--budget", "20", env=dict(GPU_CHECK_BENCHMARKS=""), timeout=300
    )
    assert res.returncode == 0, res.stderr
    log = (out / "gpu_check.log").read_text()
    assert "3. tests skipped" in log and "4. benchmarks skipped" in log
    assert "resnet18_niff: no time left" in log
    assert json.loads((out / "summary.json").read_text())["runs"] == {}

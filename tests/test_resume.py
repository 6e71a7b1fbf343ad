"""``--resume``: a run continued from any saved state ends exactly like an uninterrupted one,
also after a hard SIGKILL of a real ``niff-analyze train`` process in the middle of an epoch."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch

from helpers import CLI, FMNIST, load_weights, run_cli, tiny_config
from niff_analysis.errors import NiffError
from niff_analysis.train import trainer

pytestmark = pytest.mark.slow  # training runs, killed and resumed: not in `make test-fast`


def _assert_same_weights(a, b):
    wa, wb = load_weights(a), load_weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _metrics(path):
    with open(path / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k not in ("seconds", "stats_seconds")} for row in csv.DictReader(f)]


def _snapshot(reference_run, epoch, step):
    return next(p for e, s, p in reference_run["snapshots"] if (e, s) == (epoch, step))


def test_reference_run_saved_mid_epoch_and_epoch_end_states(reference_run):
    # 4 steps per epoch, state every 2 steps and at each epoch end.
    assert [(e, s) for e, s, _ in reference_run["snapshots"]] == [(0, 2), (1, 0), (1, 2), (2, 0)]


@pytest.mark.parametrize("epoch,step", [(1, 0), (1, 2)])
def test_resume_from_saved_state_equals_uninterrupted_run(tmp_path, reference_run, epoch, step):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(_snapshot(reference_run, epoch, step), out / trainer.STATE_NAME)
    trainer.train(tiny_config(out), resume=True)
    _assert_same_weights(out, reference_run["out"])
    # The partial sums of an interrupted epoch are saved too: metrics match as well.
    assert _metrics(out) == _metrics(reference_run["out"])


def test_resume_reads_states_without_the_newer_fields(tmp_path, reference_run):
    """States of the first format (no recipe, no partial epoch sums) still resume exactly."""
    st = torch.load(_snapshot(reference_run, 1, 2), weights_only=True)
    for key in ("format", "recipe", "epoch_sums", "global_step", "scaler"):
        st.pop(key, None)
    out = tmp_path / "old"
    out.mkdir()
    torch.save(st, out / trainer.STATE_NAME)
    trainer.train(tiny_config(out), resume=True)
    _assert_same_weights(out, reference_run["out"])


def test_resume_reads_states_saved_before_the_precision_key(tmp_path, reference_run):
    """A state whose recipe has no ``precision`` (saved before ``--precision`` existed) was made
    in today's default and resumes a default run exactly."""
    st = torch.load(_snapshot(reference_run, 1, 2), weights_only=True)
    assert st["recipe"].pop("precision") == "auto"
    out = tmp_path / "before"
    out.mkdir()
    torch.save(st, out / trainer.STATE_NAME)
    trainer.train(tiny_config(out), resume=True)
    _assert_same_weights(out, reference_run["out"])


def test_resume_refuses_another_recipe_and_bad_states(tmp_path, reference_run):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(_snapshot(reference_run, 1, 2), out / trainer.STATE_NAME)
    with pytest.raises(NiffError, match=r"made with lr=0\.02, this run has lr=0\.05"):
        trainer.train(tiny_config(out, lr=0.05), resume=True)
    with pytest.raises(NiffError, match="batch_size"):
        trainer.train(tiny_config(out, batch_size=16), resume=True)
    (out / trainer.STATE_NAME).write_bytes(b"not a state")
    with pytest.raises(NiffError, match="cannot read"):
        trainer.train(tiny_config(out), resume=True)
    with pytest.raises(NiffError, match="no train_state.pt"):
        trainer.train(tiny_config(tmp_path / "empty"), resume=True)


@pytest.mark.slow
def test_resume_after_sigkill_mid_epoch(tmp_path, reference_run):
    """Kill a real CLI training process right after it saved a mid-epoch state, resume it
    with ``--resume`` in a new process, and get bit-identical weights."""
    cfg = reference_run["cfg"]
    out = tmp_path / "killed"
    args = [
        "train",
        "--model",
        cfg.model,
        "--dataset",
        cfg.dataset,
        "--data-dir",
        FMNIST,
        "--epochs",
        cfg.epochs,
        "--batch-size",
        cfg.batch_size,
        "--train-subset",
        cfg.train_subset,
        "--test-subset",
        cfg.test_subset,
        "--seed",
        cfg.seed,
        "--threads",
        1,
        "--device",
        "cpu",
        "--save-every-steps",
        cfg.save_every_steps,
        "--quiet",
        "--out",
        out,
    ]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(
        [*CLI, *map(str, args)], stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    state_path, killed_at = out / trainer.STATE_NAME, None
    deadline = time.time() + 240
    try:
        while proc.poll() is None and time.time() < deadline:
            if state_path.is_file():
                st = torch.load(state_path, weights_only=True)
                if st["step"] > 0:  # a mid-epoch state: kill the process now, without warning
                    os.kill(proc.pid, signal.SIGKILL)
                    killed_at = (st["epoch"], st["step"])
                    break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait()
        log.close()
    assert killed_at is not None, (tmp_path / "first.log").read_text()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.safetensors").exists()  # it really died before finishing
    st = torch.load(state_path, weights_only=True)
    assert st["step"] > 0 and st["epoch"] < cfg.epochs

    res = run_cli(*args, "--resume")
    assert res.returncode == 0, res.stderr
    _assert_same_weights(out, reference_run["out"])
    assert _metrics(out) == _metrics(reference_run["out"])
    assert (out / "kernel_stats.csv").read_text() == (reference_run["out"] / "kernel_stats.csv").read_text()

"""Nothing lost, nothing silent (issue 27): each numbered case of the issue through the CLI.

Inputs are never written into or overwritten, runs that diverge or run concurrently are caught,
runs have a lifecycle (a lock while they train, a graceful stop on SIGINT and SIGTERM, a restart
when nothing was saved yet), configs are read strictly, folders of runs say what they skip.
Tests that train or start processes are marked slow; every training uses the tiny recipe of
``helpers.tiny_config`` (32 images, batch 8).
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from helpers import CLI, FMNIST, load_weights, run_cli
from niff_analysis.checkpoint import BUNDLED_DIR, DEFAULT_CHECKPOINT, read_config, save_checkpoint
from niff_analysis.cli import main
from niff_analysis.errors import CheckpointError
from niff_analysis.models import create_model
from niff_analysis.runs import LOCK_NAME, RunLockedError, lock_holder, run_lock

SMALL = "layer4.1.conv2"  # 2×2 at input 16, 4×4 at 32: every analysis of it is instant
# The tiny recipe of helpers.tiny_config (the reference run), through the CLI.
TINY = [
    "--model",
    "resnet18_niff",
    "--dataset",
    "fashion-mnist",
    "--data-dir",
    str(FMNIST),
    "--epochs",
    "2",
    "--batch-size",
    "8",
    "--train-subset",
    "32",
    "--test-subset",
    "16",
    "--seed",
    "0",
    "--threads",
    "1",
    "--device",
    "cpu",
    "--quiet",
]


# ------------------------------------------------------------------------------ helpers
def invoke(*args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def one_error(res, *fragments: str, code: int = 2) -> str:
    """Exit ``code``, nothing on stdout, one stderr line 'error: …' holding every fragment."""
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == code, (res.exit_code, res.output)
    assert res.stdout == "" and "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes (to prove nothing changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


_SMALL_MODEL = dict(num_classes=10, in_chans=1, stem="cifar", input_size=16)


@pytest.fixture(scope="module")
def tiny_ck(tmp_path_factory) -> Path:
    """A small checkpoint (input 16) with the bundled run's kernel_stats.csv and metrics.csv."""
    torch.manual_seed(0)
    ck = save_checkpoint(
        create_model("resnet18_niff", **_SMALL_MODEL),
        tmp_path_factory.mktemp("ck") / "small",
        dataset="fashion-mnist",
        epochs=1,
        seed=0,
    )
    for name in ("kernel_stats.csv", "metrics.csv"):
        shutil.copy(DEFAULT_CHECKPOINT / name, ck / name)
    return ck


def copy_ck(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def fake_run(folder: Path, ck: Path, state: bool = True) -> Path:
    """A run folder without its final checkpoint: init/, train_config.json, kernel_stats.csv and
    (``state``) a train_state.pt, as a run in progress or interrupted leaves it."""
    folder.mkdir(parents=True)
    shutil.copytree(ck, folder / "init")
    shutil.copy(ck / "kernel_stats.csv", folder / "kernel_stats.csv")
    (folder / "train_config.json").write_text(json.dumps(dict(model="resnet18_niff", seed=0)))
    if state:
        (folder / "train_state.pt").write_bytes(b"state")
    return folder


# ------------------------------------------------------------------------------ 1: outputs into inputs
def test_01_no_output_is_written_into_an_input(tiny_ck, tmp_path):
    ck = copy_ck(tiny_ck, tmp_path / "ck")
    before = snapshot(ck)
    cases = [
        (["mass", ck, "--layers", SMALL, "-q", "-o", ck / "config.json"], "--output"),
        (["mass", ck, "--layers", SMALL, "-q", "-o", ck / "sub" / "m.csv"], "lies inside"),
        (["mass", ck / "model.safetensors", "--layers", SMALL, "-q", "-o", ck / "m.csv"], "lies inside"),
        (["history", ck, "-q", "-o", ck / "kernel_stats.csv"], "lies inside"),
        (["claims", ck, "-q", "-o", ck / "c.csv"], "lies inside"),
        (["figures", ck, "--out", ck / "figs", "--cost-sizes", "none", "-q"], "--out"),
        (["figures", ck, "--out", tmp_path, "--cost-sizes", "none", "-q"], "holds"),  # would swap the input away
        (["mass", tmp_path, "--layers", SMALL, "-q", "-o", tmp_path / "m.csv"], "lies inside"),  # a folder of them
    ]
    for args, fragment in cases:
        one_error(invoke(*args), fragment, "an input of this command")
        assert snapshot(ck) == before  # the checkpoint is intact, nothing was added
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "meta.json").exists()
    # Beside the checkpoint is fine.
    res = invoke("mass", ck, "--layers", SMALL, "-q", "-o", tmp_path / "out" / "m.csv")
    assert res.exit_code == 0, res.output


def test_01_a_run_folder_is_an_input_of_its_init_and_epoch_checkpoints(tiny_ck, tmp_path):
    run = copy_ck(tiny_ck, tmp_path / "run")
    shutil.copytree(tiny_ck, run / "init")
    one_error(invoke("mass", run / "init", "--layers", SMALL, "-q", "-o", run / "m.csv"), "lies inside")
    assert not (run / "m.csv").exists()


# ------------------------------------------------------------------------------ 2: import into a run
@pytest.fixture(scope="module")
def state_dict_file(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("sd") / "mine.pth"
    torch.save(create_model("resnet18_niff", **_SMALL_MODEL).state_dict(), path)
    return path


IMPORT = ["--model", "resnet18_niff", "--num-classes", "10", "--in-chans", "1", "--stem", "cifar", "--input-size", "16"]


def test_02_import_refuses_a_non_empty_folder_and_overwrite_replaces_the_whole_run(tiny_ck, state_dict_file, tmp_path):
    run = fake_run(tmp_path / "run", tiny_ck, state=True)
    for name in ("config.json", "model.safetensors", "metrics.csv"):
        shutil.copy(tiny_ck / name, run / name)
    (run / "epoch_001").mkdir()
    before = snapshot(run)
    one_error(invoke("import", state_dict_file, *IMPORT, "--out", run), "is not empty; use --overwrite")
    assert snapshot(run) == before
    res = invoke("import", state_dict_file, *IMPORT, "--out", run, "--overwrite")
    assert res.exit_code == 0, res.output
    # Only the imported checkpoint is left: no init/, metrics or statistics of the old run to mix in.
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "model.safetensors"]
    weights = load_weights(run)
    saved = torch.load(state_dict_file, weights_only=True)
    assert all(torch.equal(weights[k], v) for k, v in saved.items())
    assert read_config(run)["imported_from"].startswith("state dict")
    # A single-file target is not replaced silently either.
    single = tmp_path / "one.safetensors"
    assert invoke("import", state_dict_file, *IMPORT, "--out", single).exit_code == 0
    stamp = single.read_bytes()
    one_error(invoke("import", state_dict_file, *IMPORT, "--out", single), "exists; use --overwrite")
    assert single.read_bytes() == stamp


def test_02_overwrite_never_deletes_files_no_run_wrote(tiny_ck, state_dict_file, tmp_path):
    out = copy_ck(tiny_ck, tmp_path / "out")
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    one_error(
        invoke("import", state_dict_file, *IMPORT, "--out", out, "--overwrite"),
        "holds files that are not a run's (notes.txt)",
    )
    assert snapshot(out) == before
    # The file being imported inside --out: refused before anything (--overwrite would remove it).
    inside = tmp_path / "inside"
    inside.mkdir()
    shutil.copy(state_dict_file, inside / "mine.pth")
    one_error(
        invoke("import", inside / "mine.pth", *IMPORT, "--out", inside, "--overwrite"), "holds the file being imported"
    )
    assert (inside / "mine.pth").read_bytes() == state_dict_file.read_bytes()


def test_02_a_failed_import_puts_the_previous_run_back(tiny_ck, state_dict_file, tmp_path, monkeypatch):
    import niff_analysis.checkpoint as checkpoint  # what `import` saves with, looked up when it runs

    out = copy_ck(tiny_ck, tmp_path / "out")
    before = snapshot(out)

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    monkeypatch.setattr(checkpoint, "save_checkpoint", disk_full)
    res = invoke("import", state_dict_file, *IMPORT, "--out", out, "--overwrite")
    one_error(res, "disk full", "No space left on device (injected)", code=1)
    assert snapshot(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------ 3: divergence
@pytest.mark.slow
def test_03_a_diverging_run_stops_keeps_its_last_finite_state_and_stays_readable(tmp_path):
    out = tmp_path / "div"
    res = invoke("train", *TINY, "--lr", "1000", "--save-every-steps", "1", "--out", out)
    line = one_error(res, "training diverged: ", " at step ")
    # With lr 1000 the BatchNorm statistics overflow one step before the loss does.
    assert "the loss is nan" in line or "NaN/Inf appeared in the model (e.g. " in line
    assert "its last finite state, at step " in line and str(out / "train_state.pt") in line
    info = json.loads((out / "diverged.json").read_text())
    assert line.split("at step ")[1].startswith(str(info["step"]))
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()
    assert not (out / LOCK_NAME).exists()
    # What was saved is finite, and from the step before the non-finite loss.
    st = torch.load(out / "train_state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in st["model"].values() if v.is_floating_point())
    assert st["epoch"] * 4 + st["step"] == info["step"] - 1
    # describe and history still open it, with a warning; the analyses refuse it naming the state.
    res = invoke("describe", out)
    assert res.exit_code == 0 and res.stderr.startswith("warning: ") and "training diverged" in res.stderr
    assert f"path: {out / 'train_state.pt'}" in res.stdout
    res = invoke("history", out, "--stats", "mass3_mean", "--format", "csv")
    assert res.exit_code == 0 and "training diverged" in res.stderr, res.output
    assert len(pd.read_csv(io.StringIO(res.stdout))) > 0
    one_error(invoke("mass", out), "no final checkpoint", str(out / "train_state.pt"))
    # A fresh run into it says what happened; --overwrite trains it again.
    one_error(invoke("train", *TINY, "--lr", "1000", "--out", out), "training diverged", "--overwrite")


def test_03_describe_and_history_open_a_checkpoint_with_nan_weights(tiny_ck, tmp_path):
    """A diverged run written before this check (a final checkpoint of NaN weights)."""
    import hashlib

    from safetensors.torch import load_file, save_file

    ck = copy_ck(tiny_ck, tmp_path / "nan")
    state = load_file(str(ck / "model.safetensors"))
    state["fc.weight"][0, 0] = float("nan")
    save_file(state, str(ck / "model.safetensors"))
    cfg = json.loads((ck / "config.json").read_text())
    cfg["weights_sha256"] = hashlib.sha256((ck / "model.safetensors").read_bytes()).hexdigest()
    (ck / "config.json").write_text(json.dumps(cfg))
    res = invoke("describe", ck)
    assert res.exit_code == 0 and "warning: " in res.stderr and "NaN/Inf" in res.stderr, res.output
    res = invoke("history", ck, "--stats", "mass3_mean", "-q")
    assert res.exit_code == 0 and "NaN/Inf" in res.stderr, res.output
    one_error(invoke("mass", ck, "-q"), "weights contain NaN/Inf")


# ------------------------------------------------------------------------------ 4, 5: the lock
def test_04_a_locked_run_folder_is_refused_for_train_and_resume(tmp_path, state_dict_file):
    out = tmp_path / "run"
    with run_lock(out):
        info = json.loads((out / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        for extra in ([], ["--resume"], ["--overwrite"]):
            one_error(
                invoke("train", *TINY, "--out", out, *extra),
                f"{out} is in use by niff-analyze train",
                f"process {os.getpid()}",
            )
        one_error(
            invoke("import", state_dict_file, *IMPORT, "--out", out, "--overwrite"),
            f"{out} is in use by niff-analyze train",
        )
        assert lock_holder(out)["pid"] == os.getpid()
    assert not out.exists()  # made for the lock, left empty: removed again
    assert lock_holder(out) is None


def test_04_stale_locks_are_recognised(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps(dict(pid=dead.pid, host=socket.gethostname(), command="x")))
    assert lock_holder(out) is None  # its process is gone: stale
    with run_lock(out):
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (out / LOCK_NAME).exists()
    # Another host's lock cannot be checked from here: refused, with how to clear it.
    (out / LOCK_NAME).write_text(json.dumps(dict(pid=1, host="elsewhere.example", command="niff-analyze train")))
    with pytest.raises(RunLockedError, match=r"another host.*delete .*train\.lock"):
        with run_lock(out):
            pass
    assert (out / LOCK_NAME).is_file()  # not taken, not removed
    # Unless it is this very SLURM job's, requeued onto another node (submitit resubmits with the same id).
    (out / LOCK_NAME).write_text(json.dumps(dict(pid=1, host="node17", command="niff-analyze train", job="4242")))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with run_lock(out):
        assert json.loads((out / LOCK_NAME).read_text())["job"] == "4242"
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    (out / LOCK_NAME).write_text(json.dumps(dict(pid=1, host="node17", command="niff-analyze train", job="4242")))
    with pytest.raises(RunLockedError, match="another host"):
        with run_lock(out):
            pass


@pytest.mark.slow
def test_04_05_a_second_train_or_resume_while_one_trains_is_refused(tmp_path, reference_run):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [*CLI, "train", *TINY, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    try:
        deadline = time.time() + 240
        while not (out / LOCK_NAME).is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert (out / LOCK_NAME).is_file(), first.communicate()
        for extra in ([], ["--resume"]):
            one_error(
                invoke("train", *TINY, "--out", out, *extra), "is in use by niff-analyze train", f"process {first.pid}"
            )
        stdout, stderr = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
    assert "checkpoint in" in stdout and not (out / LOCK_NAME).exists()
    ref, got = load_weights(reference_run["out"]), load_weights(out)  # the first run, undisturbed
    assert all(torch.equal(ref[k], got[k]) for k in ref)


@pytest.mark.slow
def test_04_a_sweep_rerun_does_not_start_a_second_process_on_a_training_run(tmp_path):
    """A sweep job on a run another process trains fails with the lock's line; the sweep says so."""
    args = [
        "--model",
        "resnet18_niff",
        "--data-dir",
        str(FMNIST),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--train-subset",
        "8",
        "--test-subset",
        "8",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--quiet",
    ]
    out = tmp_path / "sweep"
    with run_lock(out / "spec" / "seed=0"):
        res = invoke("sweep", *args, "--arm", "spec", "--out", out)
    assert res.exit_code == 2, res.output
    lines = res.stderr.splitlines()
    failed = [ln for ln in lines if ln.startswith("spec seed 0 failed:")]
    assert len(failed) == 1 and "is in use by niff-analyze train" in failed[0], res.stderr
    assert lines[-1].startswith("error: 1 run(s) failed") and "Traceback" not in res.stderr
    assert not (out / "spec" / "seed=0" / "init").exists()  # the job trained nothing


# ------------------------------------------------------------------------------ 6, 7: interrupted runs
@pytest.mark.slow
def test_06_a_run_stopped_before_its_first_saved_state_starts_again(tmp_path, monkeypatch):
    from niff_analysis.train import trainer

    out = tmp_path / "run"

    def killed(self, epoch):  # stopped in epoch 1, before any state was saved
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(trainer._Run, "train_epoch", killed)
        res = invoke("train", *TINY, "--epochs", "1", "--out", out)
    one_error(res, "before the first saved state: the same command starts the run again", code=130)
    assert {p.name for p in out.iterdir()} == {"init", "kernel_stats.csv", "train_config.json"}
    # Another recipe is still refused; --resume and the same command start it again.
    one_error(invoke("train", *TINY, "--epochs", "1", "--lr", "0.05", "--out", out), "holds the start of another run")
    res = invoke("train", *TINY, "--epochs", "1", "--out", out, "--resume")
    assert res.exit_code == 0 and "training starts from the beginning" in res.stderr, res.output
    assert (out / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_07_sigterm_and_sigint_save_the_state_and_resume_exactly(tmp_path, reference_run, signum):
    """Without --save-every-steps: the signal itself saves the state at the next step boundary."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [*CLI, "train", *TINY, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    try:
        deadline = time.time() + 240
        while not (out / "train_config.json").is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)  # written just before the first step
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: interrupted by {signal.Signals(signum).name}: the state at step ")
    assert f"is saved in {out / 'train_state.pt'}; the same command with --resume continues it" in last
    assert "Traceback" not in stderr and not (out / "config.json").exists() and not (out / LOCK_NAME).exists()
    st = torch.load(out / "train_state.pt", weights_only=True)
    assert (st["epoch"], st["step"]) != (0, 0)
    res = run_cli("train", *TINY, "--out", out, "--resume")
    assert res.returncode == 0, res.stderr
    ref, got = load_weights(reference_run["out"]), load_weights(out)
    assert all(torch.equal(ref[k], got[k]) for k in ref)  # bit-identical to the uninterrupted run


# ------------------------------------------------------------------------------ 8: --overwrite
@pytest.mark.slow
def test_08_train_overwrite_removes_the_whole_previous_run(tiny_ck, tmp_path):
    out = fake_run(tmp_path / "run", tiny_ck)
    for name in ("config.json", "model.safetensors", "metrics.csv"):
        shutil.copy(tiny_ck / name, out / name)
    for e in ("epoch_001", "epoch_002"):
        shutil.copytree(tiny_ck, out / e)
    res = invoke("train", *TINY, "--model", "resnet18", "--epochs", "1", "--out", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "init",
        "kernel_stats.csv",
        "metrics.csv",
        "model.safetensors",
        "train_config.json",
        "train_state.pt",
    ]
    assert read_config(out)["architecture"] == "resnet18" and read_config(out / "init")["architecture"] == "resnet18"
    assert len(pd.read_csv(out / "metrics.csv")) == 1


def test_08_overwrite_refuses_files_no_run_wrote(tiny_ck, tmp_path):
    out = fake_run(tmp_path / "run", tiny_ck)
    (out / "my_notes.txt").write_text("keep me")
    before = snapshot(out)
    one_error(invoke("train", *TINY, "--out", out, "--overwrite"), "holds files that are not a run's (my_notes.txt)")
    one_error(invoke("train", *TINY, "--out", out, "--overwrite", "--resume"), "choose one")
    assert snapshot(out) == before


# ------------------------------------------------------------------------------ 9: strict configs
@pytest.mark.parametrize(
    "edit,fragment",
    [
        (
            lambda c: c["model_kwargs"]["mlp"].update(activaton="relu"),
            "config field model_kwargs.mlp.activaton is unknown",
        ),
        (lambda c: c.update(format_version=99), "config format_version 99 is newer than this niff-analysis"),
        (lambda c: c.update(format_version="1"), "config field format_version must be an integer"),
        (lambda c: c.update(datset="fashion-mnist"), "config field datset is unknown"),
        (lambda c: c["recipe"].update(learning_rate=0.1), "config field recipe.learning_rate is unknown"),
        (lambda c: c["layers"][0].update(size=3), "config field layers[0].size is unknown"),
        (lambda c: c["model_kwargs"].update(widht=16), "config field model_kwargs.widht is unknown"),
    ],
)
def test_09_configs_are_read_strictly(edit, fragment, tmp_path):
    ck = copy_ck(DEFAULT_CHECKPOINT, tmp_path / "ck")
    cfg = json.loads((ck / "config.json").read_text())
    edit(cfg)
    (ck / "config.json").write_text(json.dumps(cfg))
    one_error(invoke("mass", ck, "--layers", SMALL, "-q"), str(ck), fragment)
    one_error(invoke("describe", ck), fragment)


def test_09_every_field_the_toolkit_writes_is_read(tmp_path):
    """The bundled checkpoints and the knobs of the study (width, MLP bias decay, content scale)."""
    for name in ("resnet18_niff_fmnist", "resnet18_fmnist"):
        assert invoke("describe", BUNDLED_DIR / name).exit_code == 0
    model = create_model("resnet18_niff", num_classes=10, in_chans=1, stem="cifar", input_size=16, width=16)
    recipe = dict(
        epochs=1,
        batch_size=8,
        lr=0.02,
        momentum=0.9,
        weight_decay=0.002,
        label_smoothing=0.1,
        augment=True,
        schedule="cosine",
        optimizer="sgd",
        mlp_weight_decay=0.1,
        mlp_lr_scale=1.0,
        mlp_bias_decay=True,
        content_scale=0.5,
    )
    ck = save_checkpoint(
        model,
        tmp_path / "ck",
        dataset="fashion-mnist",
        recipe=recipe,
        epochs=1,
        seed=0,
        test_acc=0.5,
        test_loss=1.0,
        world_size=2,
        replica_sha256=["a", "b"],
        note="knobs",
    )
    assert read_config(ck)["model_kwargs"]["width"] == 16
    assert invoke("describe", ck).exit_code == 0
    with pytest.raises(CheckpointError, match="config field colour is unknown"):
        save_checkpoint(model, tmp_path / "bad", colour="red")  # never written, so never unreadable
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_09_checkpoints_the_trainer_writes_are_read(reference_run):
    for folder in (reference_run["out"], reference_run["out"] / "init"):
        assert read_config(folder)["format_version"] == 1


def test_09_a_misspelled_mlp_key_in_a_training_state_is_refused(tmp_path):
    from niff_analysis.layers.mlp import resolve_mlp

    with pytest.raises(ValueError, match="unknown MLP setting 'activaton'; an MLP takes hidden, activation"):
        resolve_mlp(dict(hidden=[8], activaton="relu"))


# ------------------------------------------------------------------------------ 10: figures as a unit
FIG = [
    "--layers",
    "layer3.1.conv2",
    "--max-kernels",
    "8",
    "--erf-images",
    "0",
    "--cost-sizes",
    "none",
    "--format",
    "png",
    "-q",
]


def test_10_figures_of_checkpoints_with_the_same_folder_name(tiny_ck, tmp_path, monkeypatch):
    a = copy_ck(tiny_ck, tmp_path / "lc" / "a" / "run")
    b = copy_ck(tiny_ck, tmp_path / "lc" / "b" / "run")
    out = tmp_path / "figs"
    from niff_analysis.plotting import report

    real = report.iter_figures

    def fails_late(data, *args, **kw):
        gen = real(data, *args, **kw)
        for _ in range(3):
            yield next(gen)
        raise OSError(errno.EIO, "injected failure")

    monkeypatch.setattr(report, "iter_figures", fails_late)
    res = invoke("figures", a, b, "--out", out, *FIG)
    one_error(res, "injected failure", code=1)
    assert not out.exists()  # nothing half-written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(report, "iter_figures", real)
    res = invoke("figures", a, b, "--out", out, *FIG)
    assert res.exit_code == 0, res.output
    names = {p.name for p in out.iterdir()}
    assert "meta.json" in names and all("/" not in n for n in names)
    safe = {f"raw_kernels_{str(p).lstrip('/').replace('/', '_')}.png" for p in (a, b)}
    assert safe <= names, names
    meta = json.loads((out / "meta.json").read_text())
    assert sorted(meta["files"]) == sorted(names - {"meta.json"})
    assert [c["label"] for c in meta["checkpoints"]] == [str(a), str(b)]


def test_10_safe_file_names_are_distinct():
    from niff_analysis.plotting.report import file_labels

    got = file_labels(["lc/a/run", "lc/a_run", "../x", "résumé", "ok-1.2"])
    assert got == {"lc/a/run": "lc_a_run", "lc/a_run": "lc_a_run-2", "../x": "x", "résumé": "r_sum", "ok-1.2": "ok-1.2"}


# ------------------------------------------------------------------------------ 11, 12: unfinished runs, folders
def test_11_a_run_without_final_checkpoint_is_an_error_naming_its_state(tiny_ck, tmp_path):
    run = fake_run(tmp_path / "run", tiny_ck, state=True)
    for command in ("mass", "claims", "kernels", "pca", "gaussian"):
        one_error(
            invoke(command, run, "-q"),
            f"{run}: the run has no final checkpoint",
            f"its last saved state is {run / 'train_state.pt'}",
        )
    one_error(invoke("figures", run, "--out", tmp_path / "figs", *FIG), str(run / "train_state.pt"))
    early = fake_run(tmp_path / "early", tiny_ck, state=False)
    one_error(invoke("mass", early, "-q"), "no saved state yet", f"{early / 'train_state.pt'} does not exist")
    # With the lock of a live process, it says the run is in progress.
    with run_lock(run):
        one_error(invoke("mass", run, "-q"), "training is in progress: niff-analyze train, process")
    assert not (tmp_path / "figs").exists()


def test_12_a_folder_of_runs_reports_what_it_skipped_and_why(tiny_ck, tmp_path):
    from niff_analysis.checkpoint import save_checkpoint as save

    runs = tmp_path / "runs"
    copy_ck(tiny_ck, runs / "a_good")
    fake_run(runs / "b_interrupted", tiny_ck)
    copy_ck(tiny_ck, runs / "c_sweep" / "spec" / "seed=0")
    (runs / "d_empty").mkdir()
    nan = copy_ck(tiny_ck, runs / "e_nan")
    from safetensors.torch import load_file

    state = load_file(str(nan / "model.safetensors"))
    model = create_model("resnet18_niff", **_SMALL_MODEL)
    state["fc.weight"][0, 0] = float("nan")
    model.load_state_dict(state)
    shutil.rmtree(nan)
    save(model, nan, dataset="fashion-mnist", epochs=1, seed=0)
    shutil.copy(tiny_ck / "kernel_stats.csv", nan / "kernel_stats.csv")
    (runs / "notes.txt").write_text("not a checkpoint: ignored")
    res = invoke("mass", runs, "--layers", SMALL, "--format", "csv", "-q")
    assert res.exit_code == 0, res.output
    assert set(pd.read_csv(io.StringIO(res.stdout))["checkpoint"]) == {"a_good"}
    warnings = res.stderr.splitlines()
    assert all(w.startswith("warning: skipped ") for w in warnings) and len(warnings) == 4, res.stderr
    text = "\n".join(warnings)
    assert f"skipped {runs / 'b_interrupted'}: the run has no final checkpoint" in text
    assert f"skipped {runs / 'c_sweep'}: a folder of checkpoints or runs (1, e.g. spec/seed=0); name it" in text
    assert f"skipped {runs / 'd_empty'}: not a checkpoint (no config.json)" in text
    assert "skipped e_nan: " in text and "NaN/Inf" in text
    # Asked to be strict, the bad run stops the command; named directly, it always does.
    res = invoke("mass", runs, "--layers", SMALL, "-q", "--strict")
    assert res.exit_code == 2 and res.stdout == "" and res.stderr.splitlines()[:-1] == warnings[:3]
    assert res.stderr.splitlines()[-1].startswith(f"error: {runs / 'e_nan'}: weights contain NaN/Inf")
    one_error(invoke("mass", nan, "--layers", SMALL, "-q"), "NaN/Inf")
    # The same rule for history (runs in progress count there) and the figures.
    res = invoke("history", runs, "--stats", "mass3_mean", "--format", "csv", "-q")
    assert res.exit_code == 0, res.output
    assert set(pd.read_csv(io.StringIO(res.stdout))["checkpoint"]) == {"a_good", "b_interrupted", "e_nan"}
    res = invoke("figures", runs, "--out", tmp_path / "figs", *FIG)
    assert res.exit_code == 0, res.output
    assert "warning: skipped e_nan" in res.stderr and f"warning: skipped {runs / 'c_sweep'}" in res.stderr


# ------------------------------------------------------------------------------ 13, 14: kernel_stats.csv
def _stats_copy(tiny_ck, tmp_path, edit) -> Path:
    ck = copy_ck(tiny_ck, tmp_path / "ck")
    text = (ck / "kernel_stats.csv").read_text()
    (ck / "kernel_stats.csv").write_text(edit(text))
    return ck


@pytest.mark.parametrize(
    "edit,fragment",
    [
        (lambda t: t.replace(",0.2", ",abc", 1), "row 2 has a non-numeric value 'abc"),
        (lambda t: t[: len(t) - 40], "the last row is cut off"),
        (lambda t: "\n".join(t.splitlines()[:-3]) + "\n", "(a truncated file)"),
        (lambda t: t.replace("epoch,step", "epoc,step", 1), "missing column 'epoch'"),
    ],
    ids=["non-numeric", "cut-row", "missing-rows", "foreign"],
)
def test_13_a_bad_kernel_stats_file_is_one_line_naming_it(tiny_ck, tmp_path, edit, fragment):
    ck = _stats_copy(tiny_ck, tmp_path, edit)
    one_error(invoke("history", ck, "-q"), str(ck / "kernel_stats.csv"), fragment)


def test_14_describe_and_figures_go_on_without_a_corrupt_kernel_stats_file(tiny_ck, tmp_path):
    ck = _stats_copy(tiny_ck, tmp_path, lambda t: t.replace(",0.2", ",abc", 1))
    res = invoke("describe", ck)
    assert res.exit_code == 0 and "kernel_stats" not in res.stdout, res.output
    assert res.stderr.startswith("warning: kernel statistics left out: ") and str(ck / "kernel_stats.csv") in res.stderr
    res = invoke("figures", ck, "--out", tmp_path / "figs", *FIG)
    assert res.exit_code == 0, res.output
    assert f"note: ck: kernel statistics left out ({ck / 'kernel_stats.csv'}" in res.stderr
    assert not (tmp_path / "figs" / "kernel_history.png").exists() and (tmp_path / "figs" / "mass_ratio.png").exists()


# ------------------------------------------------------------------------------ 15, 16: disk full, unwritable
@pytest.mark.slow
def test_15_a_full_disk_during_training_says_so_and_keeps_the_state(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def fills_up(obj, f, *a, **k):  # the second state save hits a full disk, as torch reports it
        calls.append(f)
        if len(calls) == 2:
            with open(f, "wb") as fh:
                fh.write(b"PK partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4416 vs 4312")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", fills_up)
    res = invoke("train", *TINY, "--save-every-steps", "2", "--out", out)
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    lines = res.stderr.splitlines()  # the epoch's line, then the error
    assert len(lines) == 2 and lines[0].startswith("epoch 1: train_loss "), res.stderr
    assert lines[-1] == (
        f"error: disk full writing {out / 'train_state.pt'}: No space left on device (the previous "
        "train_state.pt is kept)"
    )
    monkeypatch.setattr(torch, "save", real_save)
    st = torch.load(out / "train_state.pt", weights_only=True)
    assert (st["epoch"], st["step"]) == (0, 2)  # the first save, intact
    assert not [p for p in out.iterdir() if p.name.startswith(".")] and not (out / LOCK_NAME).exists()


def test_16_an_unwritable_output_is_refused_before_any_work(monkeypatch, tmp_path):
    from niff_analysis.checkpoint import Checkpoint

    def never(*a, **k):
        raise AssertionError("the checkpoint was opened before the output was checked")

    monkeypatch.setattr(Checkpoint, "open", never)  # every command opens its checkpoints through it
    for command in ("mass", "history", "claims"):
        line = one_error(
            invoke(command, "-q", "-o", "/proc/self/niff/out.csv"),
            "--output /proc/self/niff/out.csv: cannot write there",
        )
        assert ".tmp" not in line
    from niff_analysis.io import atomic_write

    with pytest.raises(OSError) as info:  # a failing write names the file asked for, not a temporary one
        atomic_write("/proc/self/niff-out.csv", "x")
    assert info.value.filename == "/proc/self/niff-out.csv" and ".tmp" not in str(info.value)


# ------------------------------------------------------------------------------ 17, 18, 19: one-liners
def test_17_a_pickle_that_is_no_state_dict_is_one_clean_line(tmp_path):
    import pickle

    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": [1, 2]}, protocol=4))
    text = tmp_path / "text.pt"
    text.write_text("hello world\n")
    for path, reason in ((plain, "(Unsupported operand 149)"), (text, "(not a file torch.save wrote")):
        line = one_error(
            invoke("import", path, "--model", "resnet18_niff", "--out", tmp_path / "o"),
            f"{path}: cannot be read with torch.load(weights_only=True) {reason}",
        )
        assert "Re-running" not in line and "torch.)" not in line
    assert not (tmp_path / "o").exists()


def test_18_a_symlink_loop_is_bad_input(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for command in ("mass", "describe", "history"):
        one_error(invoke(command, tmp_path / "a"), f"{tmp_path / 'a'}: a loop of symbolic links")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    one_error(invoke("mass", tmp_path / "dangling"), "a symbolic link to a missing file")


@pytest.mark.parametrize("option", ["--input-size", "--num-classes", "--in-chans"])
def test_19_describe_refuses_model_options_for_a_checkpoint(option, tiny_ck):
    one_error(invoke("describe", tiny_ck, option, "64"), f"{option} applies to registered model names")
    assert invoke("describe", "resnet18_niff", "--stem", "cifar", "--input-size", "64").exit_code == 0


# ------------------------------------------------------------------------------ 20-24: options
def test_20_an_arm_key_given_twice_is_refused(tmp_path):
    one_error(invoke("sweep", *TINY, "--arm", "lr=0.1,lr=0.2", "--out", tmp_path / "s"), "lr is given twice")
    assert not (tmp_path / "s").exists()


def test_21_erf_refuses_more_images_than_the_test_set_has(tiny_ck):
    one_error(
        invoke("erf", tiny_ck, "--images", "100000", "--data-dir", FMNIST, "-q"),
        "--images: asked for 100000 images, but the fashion-mnist test set has 10000",
    )


def test_22_a_model_too_large_for_memory_is_refused_before_it_is_built(tmp_path, monkeypatch):
    import niff_analysis.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "available_memory", lambda: 16 * 10**9)  # the same answer on any machine
    line = one_error(
        invoke("train", *TINY, "--mlp", "20000,20000", "--out", tmp_path / "big"),
        "resnet18_niff with these settings has",
        "more than the 16 GB of memory available here",
    )
    assert "G parameters" in line and "--mlp" in line
    assert not (tmp_path / "big").exists()


def test_23_history_takes_a_comma_list_of_layers():
    res = invoke(
        "history", "--layers", "layer1.0.conv1,layer4.1.conv2", "--stats", "mass3_mean", "--format", "csv", "-q"
    )
    assert res.exit_code == 0, res.output
    assert set(pd.read_csv(io.StringIO(res.stdout))["layer"]) == {"layer1.0.conv1", "layer4.1.conv2"}


@pytest.mark.parametrize(
    "option",
    [["--mode", "linear"], ["--mlp-weight-decay", "0.1"], ["--mlp-lr-scale", "2"], ["--mlp-bias-decay"]],
    ids=lambda o: o[0],
)
def test_24_niff_settings_on_a_baseline_are_refused(option, tmp_path):
    one_error(
        invoke("train", *TINY, "--model", "resnet18", *option, "--out", tmp_path / "o"),
        "resnet18 has no NIFF layers",
        f"drop {option[0]}",
    )
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ 25: factories
def test_25_factories_outside_user_packages_are_refused_and_never_suggested(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # tests/factories.py: a user package
    marker = tmp_path / "PAYLOAD_RAN"
    model = create_model("resnet18_niff", **_SMALL_MODEL)
    ck = save_checkpoint(model, tmp_path / "ck")
    cfg = json.loads((ck / "config.json").read_text())
    evil = dict(
        cfg,
        architecture="os:system",
        model_kwargs=dict(builder_kwargs=dict(command=f"touch {marker}"), input_size=[16, 16], in_chans=1, niff=None),
    )
    (ck / "config.json").write_text(json.dumps(evil))
    line = one_error(invoke("mass", ck, "-q"), "refusing the factory 'os:system'")
    assert "--factory os:system" not in line
    one_error(invoke("mass", ck, "-q", "--factory", "os:system"), "refusing the factory 'os:system'")
    for name in (
        "builtins:exec",
        "subprocess:run",
        "shutil:rmtree",
        "sys:exit",
        "numpy:load",
        "niff_analysis.cli:main",
        "factories:_private",
        "factories:sneaky",
    ):
        evil["architecture"] = name
        (ck / "config.json").write_text(json.dumps(evil))
        one_error(invoke("mass", ck, "-q", "--factory", name), f"refusing the factory '{name}'")
    assert not marker.exists()
    # A user factory is named as information, never as a command to copy.
    evil["architecture"] = "factories:tiny_cnn"
    (ck / "config.json").write_text(json.dumps(evil))
    line = one_error(invoke("mass", ck, "-q"), "built by the user factory 'factories:tiny_cnn', which runs code")
    assert "--factory factories:tiny_cnn" not in line


# ------------------------------------------------------------------------------ 26: bundled names
def test_26_bundled_checkpoints_have_names_every_command_accepts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # away from the repository
    for name in ("resnet18_niff_fmnist", "resnet18_fmnist"):
        res = invoke("mass", name, "--layers", "layer4.1.conv2", "--format", "csv", "-q")
        assert res.exit_code == 0, res.output
        assert set(pd.read_csv(io.StringIO(res.stdout))["checkpoint"]) == {name}
        res = invoke("describe", name, "--format", "json")
        assert res.exit_code == 0 and json.loads(res.stdout)["path"] == str(BUNDLED_DIR / name)
        res = invoke("history", name, "--layers", "layer4.1.conv2", "--stats", "mass3_mean", "-q")
        assert res.exit_code == 0, res.output
    res = invoke("describe", "resnet9000_fmnist")
    one_error(res, "unknown model 'resnet9000_fmnist'", "bundled checkpoint: resnet18_fmnist, resnet18_niff_fmnist")
    # A folder of that name here is what the name means here.
    local = copy_ck(BUNDLED_DIR / "resnet18_fmnist", tmp_path / "resnet18_fmnist")
    res = invoke("describe", "resnet18_fmnist", "--format", "json")
    assert json.loads(res.stdout)["path"] == "resnet18_fmnist" and local.is_dir()

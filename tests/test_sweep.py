"""``niff-analyze sweep``: recipe arms x seeds, resumable, run through submitit, gathered and summarised."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from helpers import FMNIST, load_weights, tiny_config
from niff_analysis.cli import main
from niff_analysis.errors import NiffError
from niff_analysis.train.sweep import (
    arm_changes,
    collect,
    compare_arms,
    final_table,
    parse_arm,
    parse_seeds,
    seed_summary,
)

pytestmark = pytest.mark.slow  # training sweeps: not in `make test-fast`

ARGS = [
    "--model",
    "resnet18_niff",
    "--data-dir",
    str(FMNIST),
    "--epochs",
    "1",
    "--batch-size",
    "8",
    "--train-subset",
    "16",
    "--test-subset",
    "16",
    "--threads",
    "1",
    "--device",
    "cpu",
    "--quiet",
]


def test_parse_arm():
    assert parse_arm("spec") == ("spec", {})
    assert parse_arm("mlp_weight_decay=0.05,mlp-lr-scale=10") == (
        "mlp_weight_decay=0.05_mlp_lr_scale=10",
        {"mlp_weight_decay": 0.05, "mlp_lr_scale": 10.0},
    )
    assert parse_arm("mlp_weight_decay=0.1,mlp_bias_decay=on,content_scale=0.5,epochs=3") == (
        "mlp_weight_decay=0.1_mlp_bias_decay=1_content_scale=0.5_epochs=3",
        {"mlp_weight_decay": 0.1, "mlp_bias_decay": True, "content_scale": 0.5, "epochs": 3},
    )
    for bad, msg in (
        ("seed=3", "keys from"),
        ("lr=fast", "lr takes a number"),
        ("lr", "keys from"),
        ("lr=0.1,lr=0.2", "lr is given twice"),
        ("mlp_bias_decay=maybe", "on or off"),
        ("epochs=1.5", "an integer"),
    ):
        with pytest.raises(NiffError, match=msg):
            parse_arm(bad)


def test_arm_changes_inverts_parse_arm():
    for text in (
        "spec",
        "mlp_weight_decay=0.0084",
        "weight_decay=0.001,mlp_weight_decay=1e-5",  # weight_decay inside mlp_weight_decay's name
        "mlp_weight_decay=0.1,mlp_bias_decay=on,content_scale=0.5,epochs=3",
    ):
        name, changes = parse_arm(text)
        assert arm_changes(name) == changes
    for bad in ("init", "delta", "white noise", "mlp_weight_decay=x", "epochs=5_extra", "lr=0.1_"):
        with pytest.raises(NiffError, match="not the folder name"):
            arm_changes(bad)


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("3-5") == [3, 4, 5] and parse_seeds("7") == [7]
    for bad in ("a", "1,1", "", "-1"):
        with pytest.raises(NiffError, match="--seeds"):
            parse_seeds(bad)


def test_seed_summary_is_a_t_interval_over_seeds():
    from scipy import stats

    v = [0.5, 0.6, 0.7]
    final = pd.DataFrame(
        dict(
            arm="a",
            seed=[0, 1, 2],
            epoch=1,
            stage="layer1",
            measure="l1",
            stat="mass9_mean",
            value=v,
            test_acc=[0.8, 0.9, 1.0],
        )
    )
    s = seed_summary(final).set_index("stat")
    lo, hi = stats.t.interval(0.95, 2, loc=0.6, scale=stats.sem(v))
    assert s.loc["mass9_mean", "n_seeds"] == 3 and abs(s.loc["mass9_mean", "mean"] - 0.6) < 1e-12
    assert abs(s.loc["mass9_mean", "lo"] - lo) < 1e-12 and abs(s.loc["mass9_mean", "hi"] - hi) < 1e-12
    assert abs(s.loc["test_acc", "mean"] - 0.9) < 1e-12


def test_compare_arms_pairs_seeds():
    from scipy import stats

    ref, arm = [2.0, 4.0, 8.0], [1.0, 2.2, 3.6]
    rows = [
        dict(arm=a, seed=s, epoch=1, stage="layer1", measure="l1", stat="k90_mean", value=v, test_acc=0.9)
        for a, vals in (("ref", ref), ("half", arm))
        for s, v in enumerate(vals)
    ]
    rows.append(
        dict(arm="half", seed=7, epoch=1, stage="layer1", measure="l1", stat="k90_mean", value=9.0, test_acc=0.9)
    )  # a seed the reference lacks is left out
    c = compare_arms(pd.DataFrame(rows), "half", "ref").iloc[0]
    ratios = [a / r for a, r in zip(arm, ref)]
    lo, hi = stats.t.interval(0.95, 2, loc=sum(ratios) / 3, scale=stats.sem(ratios))
    assert c["n_seeds"] == 3 and abs(c["ratio"] - sum(ratios) / 3) < 1e-12
    assert abs(c["lo"] - lo) < 1e-12 and abs(c["hi"] - hi) < 1e-12 and abs(c["reference"] - 14 / 3) < 1e-12


def test_sweep_trains_arms_by_seeds_through_submitit_and_resumes(tmp_path, fmnist_dir):
    out = tmp_path / "sweep"
    arms = ["--arm", "spec", "--arm", "mlp_weight_decay=0.5,mlp_lr_scale=10"]
    cmd = [
        "sweep",
        *ARGS,
        *arms,
        "--seeds",
        "0,1",
        "--parallel",
        "2",
        "--out",
        str(out),
        "--table",
        str(tmp_path / "table.csv"),
    ]
    res = CliRunner().invoke(main, cmd, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    names = ["spec", "mlp_weight_decay=0.5_mlp_lr_scale=10"]
    for f in (
        "sweep.csv",
        "sweep.png",
        "sweep.pdf",
        "sweep.json",
        "sweep_final.csv",
        "sweep_summary.csv",
        "study.png",
        "study.pdf",
    ):
        assert (out / f).is_file()
    assert any((out / "_jobs").iterdir())  # the runs went through submitit's local executor
    for seed in (0, 1):
        a, b = (load_weights(out / n / f"seed={seed}" / "init") for n in names)
        assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same initialisation
        fa, fb = (load_weights(out / n / f"seed={seed}") for n in names)
        assert not torch.equal(fa["layer1.0.conv1.real.0.weight"], fb["layer1.0.conv1.real.0.weight"])
    s0, s1 = (load_weights(out / "spec" / f"seed={s}" / "init") for s in (0, 1))
    assert not torch.equal(s0["conv1.weight"], s1["conv1.weight"])  # another seed, another start
    table = pd.read_csv(out / "sweep.csv")
    assert list(table["arm"].unique()) == names and set(table["seed"]) == {0, 1} and set(table["step"]) == {0, 2}
    assert table[table["step"] == 2]["test_acc"].notna().all() and table[table["step"] == 0]["test_acc"].isna().all()
    pd.testing.assert_frame_equal(collect(out), table, check_dtype=False)
    final = pd.read_csv(out / "sweep_final.csv")
    assert list(final.columns) == ["arm", "seed", "epoch", "stage", "measure", "stat", "value", "test_acc"]
    assert set(final["measure"]) == {"l1", "energy", "any"} and set(final[final["arm"] != "init"]["epoch"]) == {1}
    assert len(final.drop_duplicates(["arm", "seed"])) == 4 + 2  # and each seed's initialisation
    init = final[final["arm"] == "init"]
    assert set(init["seed"]) == {0, 1} and set(init["epoch"]) == {0} and init["test_acc"].isna().all()
    pd.testing.assert_frame_equal(final, pd.read_csv(tmp_path / "table.csv"))
    pd.testing.assert_frame_equal(final_table(out), final, check_dtype=False, atol=1e-9)
    summary = pd.read_csv(out / "sweep_summary.csv")
    trained = summary[summary["arm"] != "init"]
    assert (trained["n_seeds"] == 2).all() and (trained["lo"] <= trained["mean"]).all()
    # Rerunning skips the finished runs (their checkpoints are not rewritten).
    stamp = (out / names[0] / "seed=0" / "model.safetensors").stat().st_mtime_ns
    res = CliRunner().invoke(main, cmd, catch_exceptions=False)
    assert res.exit_code == 0 and (out / names[0] / "seed=0" / "model.safetensors").stat().st_mtime_ns == stamp
    # A sweep of some of the study's arms (e.g. to train those first) keeps the others in the study.
    recorded = (out / "sweep.json").read_text()
    some = [*cmd[: cmd.index("--arm")], "--arm", "spec", "--seeds", "1", *cmd[cmd.index("--parallel") :]]
    res = CliRunner().invoke(main, some, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (out / "sweep.json").read_text() == recorded
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "table.csv"), final)
    # One of another base recipe is refused before anything is written.
    other = [*some[: some.index("--out")], "--lr", "0.05", *some[some.index("--out") :]]
    res = CliRunner().invoke(main, other)
    assert res.exit_code == 2 and "holds a study of another base recipe (lr 0.02 → 0.05)" in res.output
    assert (out / "sweep.json").read_text() == recorded
    # A seed whose runs have only started (init/ written, no final checkpoint) gives no init row:
    # the initialisation is the reference of the seeds that have an arm to compare with it.
    for n in names:
        (out / n / "seed=1" / "config.json").unlink()
    part = final_table(out)
    assert set(part["seed"]) == {0} and set(part[part["arm"] == "init"]["seed"]) == {0}


def test_a_failed_run_is_reported_and_the_others_finish(tmp_path, fmnist_dir):
    out = tmp_path / "sweep"
    (out / "momentum=0.9" / "seed=0").mkdir(parents=True)  # an unreadable state: that run fails
    (out / "momentum=0.9" / "seed=0" / "train_state.pt").write_text("not a state")
    res = CliRunner().invoke(
        main, ["sweep", *ARGS, "--arm", "momentum=0.9", "--arm", "momentum=0.8", "--out", str(out)]
    )
    assert res.exit_code == 2 and "1 run(s) failed" in res.output and "momentum=0.9 seed 0" in res.output
    assert (out / "momentum=0.8" / "seed=0" / "config.json").is_file()  # the other run finished
    assert "Traceback" not in res.output.splitlines()[-1]


def test_the_slurm_path_runs_as_a_job_array_on_submitits_local_cluster(tmp_path, fmnist_dir):
    from niff_analysis.cli.train import train_config
    from niff_analysis.train.sweep import Executor, run_sweep

    base = train_config(
        str(tmp_path),
        model_name="resnet18_niff",
        num_classes=None,
        in_chans=None,
        input_size=None,
        stem=None,
        mlp=None,
        mode="circular",
        width=8,
        compile_=None,
        quiet=True,
        data_dir=str(FMNIST),
        epochs=1,
        batch_size=8,
        train_subset=16,
        test_subset=16,
        threads=1,
        device="cpu",
    )
    lines = []
    ex = Executor(kind="slurm", cluster="local", parallel=2, slurm=dict(slurm_partition="gpu", cpus_per_task=1))
    assert run_sweep(base, ["spec", "lr=0.1"], str(tmp_path / "s"), seeds=[0], executor=ex, echo=lines.append) == []
    assert sum("submitted" in ln for ln in lines) == 2 and sum("finished" in ln for ln in lines) == 2
    assert len(final_table(tmp_path / "s").drop_duplicates(["arm", "seed"])) == 2 + 1  # and the initialisation


def test_the_slurm_submission_file_carries_the_options(tmp_path, monkeypatch):
    from niff_analysis.train.sweep import Executor

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{__import__('os').environ['PATH']}")
    ex = Executor(
        kind="slurm",
        parallel=3,
        timeout_min=90,
        slurm=dict(slurm_partition="gpu", gpus_per_node=1, cpus_per_task=8, mem_gb=32),
    ).make(tmp_path)
    text = ex._executor._make_submission_file_text("python job.py", "uid")
    for line in (
        "--partition=gpu",
        "--gpus-per-node=1",
        "--cpus-per-task=8",
        "--mem=32GB",
        "--time=90",
        "--job-name=niff-sweep",
    ):
        assert f"#SBATCH {line}" in text
    assert ex._executor.parameters["array_parallelism"] == 3
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(NiffError, match="--executor slurm: .*srun"):
        Executor(kind="slurm").make(tmp_path / "x")


def test_slurm_options_need_the_slurm_executor(tmp_path):
    res = CliRunner().invoke(
        main, ["sweep", *ARGS, "--arm", "spec", "--slurm-partition", "gpu", "--out", str(tmp_path / "s")]
    )
    assert res.exit_code == 2 and "--slurm-partition applies to --executor slurm" in res.output


def test_sweep_bad_arms_are_one_line(tmp_path):
    for arms, msg in (
        (["spec", "spec"], "two arms have the same settings"),
        (["momentum=x"], "momentum takes a number"),
        (["lr=0.1,lr=0.2"], "lr is given twice"),
    ):
        res = CliRunner().invoke(
            main, ["sweep", *ARGS, *sum((["--arm", a] for a in arms), []), "--out", str(tmp_path / "s")]
        )
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output
        assert not (tmp_path / "s").exists()


def test_a_second_sweep_on_the_same_study_is_refused(tmp_path):
    """One sweep per study folder: the second gets one line naming the first, and trains nothing."""
    from niff_analysis.runs import run_lock

    study = tmp_path / "study"
    with run_lock(study, command="niff-analyze sweep"):
        res = CliRunner().invoke(main, ["sweep", *ARGS, "--arm", "spec", "--out", str(study)])
    assert res.exit_code == 2, res.output
    assert "is in use by niff-analyze sweep" in res.output and "Traceback" not in res.output
    assert not (study / "spec").exists()


def test_sigint_stops_a_sweep_job_with_its_state_saved_and_the_sweep_resumes_it(tmp_path, fmnist_dir):
    """Ctrl-C reaches a local sweep's jobs: each stops after its step with the state saved (not at
    its last periodic save), says so in one line, and the next run_job finishes it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    # The trainer tests' tiny recipe, without periodic saves: only the signal can save mid-run.
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from helpers import tiny_config; from niff_analysis.train.sweep import run_job\n"
        f"try:\n    run_job(tiny_config({str(out)!r}, save_every_steps=0))\n"
        "except Exception as e:\n    print(e, file=sys.stderr); sys.exit(3)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    try:
        deadline = time.time() + 240
        while not (out / "train_config.json").is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, stderr
    assert "interrupted by SIGINT: the state at step" in stderr and "the same sweep command resumes it" in stderr
    st = torch.load(out / "train_state.pt", weights_only=True)
    assert (st["epoch"], st["step"]) != (0, 0)  # saved by the signal: no periodic saves in this recipe
    from niff_analysis.train.sweep import is_finished, run_job

    run_job(tiny_config(out, save_every_steps=0))
    assert is_finished(out)

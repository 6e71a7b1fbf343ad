"""pipeline.run: the one path from checkpoints to results that the figures and every analysis
command take (finding, loading, selecting, computing, combining, skipping)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from niff_analysis.analysis import extract_kernels, kernel_mass
from niff_analysis.analysis.schema import with_checkpoint
from niff_analysis.checkpoint import BUNDLED_DIR, DEFAULT_CHECKPOINT, load_checkpoint
from niff_analysis.errors import CheckpointError, NiffError
from niff_analysis.io import file_sha256
from niff_analysis.pipeline import Analysis, run
from niff_analysis.tables import Mass


class Count(Analysis):
    """How many kernels each checkpoint's selection holds, and in which order they came."""

    def __init__(self, needs="kernels"):
        self.needs, self.seen = needs, []

    def compute(self, item):
        self.seen.append(item.label)
        return None if item.selected is None else sum(lk.flat.shape[0] for lk in item.kernels)


def test_every_checkpoint_of_a_folder_in_order_with_its_provenance():
    count = Count()
    res = run([BUNDLED_DIR], count, max_kernels=8)
    labels = ["resnet18_fmnist", "resnet18_niff_fmnist"]
    assert res.labels == labels and count.seen == labels and res.skipped == []
    for label in labels:  # what the runner selected is what the library selects directly
        lks = extract_kernels(load_checkpoint(BUNDLED_DIR / label))
        assert res[count][label] == sum(min(lk.flat.shape[0], 8) for lk in lks)
    assert [p["sha256"] for p in res.provenance] == [file_sha256(BUNDLED_DIR / n / "model.safetensors") for n in labels]


def test_analyses_run_in_turn_and_combine_sees_them_all():
    class Total(Count):
        def combine(self, results):
            return sum(results.of(self).values())

    a, b, model_only = Count(), Total(), Count(needs="model")
    res = run([DEFAULT_CHECKPOINT], [a, b, model_only], layers="layer4.*")
    label = DEFAULT_CHECKPOINT.name
    assert res[a] == {label: res[b]} and res[b] > 0
    assert res[model_only] == {label: res[a][label]}  # kernels are selected once, for whoever needs them


def test_a_table_equals_the_library_computed_directly():
    mass = Mass(view="ratios", measure="energy")
    df, note = run([DEFAULT_CHECKPOINT], mass, layers=["layer4.*"])[mass]
    lks = extract_kernels(load_checkpoint(DEFAULT_CHECKPOINT), layers=["layer4.*"])
    expected = with_checkpoint(kernel_mass(lks, "energy"), DEFAULT_CHECKPOINT.name)
    pd.testing.assert_frame_equal(df, expected)
    assert note == "" and len(df) > 0


def test_a_broken_checkpoint_of_a_folder_is_skipped_unless_strict(tmp_path):
    folder = tmp_path / "runs"
    shutil.copytree(DEFAULT_CHECKPOINT, folder / "good")
    shutil.copytree(DEFAULT_CHECKPOINT, folder / "broken")
    (folder / "broken" / "model.safetensors").write_bytes(b"not weights")
    warnings, count = [], Count()
    res = run([folder], count, warn=warnings.append, max_kernels=2)
    assert res.labels == ["good"] and res.skipped == ["broken"] and count.seen == ["good"]
    assert len(warnings) == 1 and warnings[0].startswith("skipped broken: ") and "safetensors" in warnings[0]
    with pytest.raises(CheckpointError, match="broken"):
        run([folder], Count(), strict=True)
    with pytest.raises(CheckpointError, match="broken"):  # named directly: always an error
        run([folder / "broken"], Count())


def test_no_checkpoint_left_is_an_empty_result_and_an_analysis_error_stops_the_run(tmp_path):
    (tmp_path / "only").mkdir()
    shutil.copytree(DEFAULT_CHECKPOINT, tmp_path / "only" / "a")
    (tmp_path / "only" / "a" / "config.json").write_text("{")
    res = run([tmp_path / "only"], Count(), warn=lambda msg: None)
    assert res.labels == [] and res.skipped == ["a"] and res.combined == []

    class Fails(Analysis):
        def compute(self, item):
            raise NiffError(f"{item.label}: cannot")

    with pytest.raises(NiffError, match="cannot"):
        run([DEFAULT_CHECKPOINT], Fails(), layers="layer4.1.*")


# --------------------------------------------------------------------------- describe
def test_describe_goes_through_the_runner_and_the_cli_prints_what_it_returns():
    import json

    from click.testing import CliRunner

    from niff_analysis.cli import main
    from niff_analysis.tables import Describe

    describe = Describe()
    (info,) = run([DEFAULT_CHECKPOINT], describe)[describe].values()
    assert info["sha256"] == file_sha256(DEFAULT_CHECKPOINT / "model.safetensors")
    assert info["num_params"] == sum(p.numel() for p in load_checkpoint(DEFAULT_CHECKPOINT).parameters())
    assert [row["name"] for row in info["layers"]][:2] == ["layer1.0.conv1", "layer1.0.conv2"]
    assert info["kernel_stats"]["records"] == 61
    printed = json.loads(CliRunner().invoke(main, ["describe", str(DEFAULT_CHECKPOINT), "--format", "json"]).stdout)
    assert printed == json.loads(json.dumps(info))


def test_weights_holding_nan_load_only_when_the_caller_says_how_to_warn(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    from niff_analysis.checkpoint import NonFiniteWeightsError

    shutil.copytree(DEFAULT_CHECKPOINT, tmp_path / "nan")
    weights = tmp_path / "nan" / "model.safetensors"
    state = load_file(weights)
    state["fc.weight"][0, 0] = float("nan")
    save_file(state, weights, metadata={"format": "pt"})
    config = json.loads((tmp_path / "nan" / "config.json").read_text())  # bad contents, saved whole
    config["weights_sha256"] = file_sha256(weights)
    (tmp_path / "nan" / "config.json").write_text(json.dumps(config))
    with pytest.raises(NonFiniteWeightsError):
        run([tmp_path / "nan"], Count(needs="model"))
    told = []
    res = run([tmp_path / "nan"], Count(needs="model"), non_finite=lambda label, exc: told.append((label, str(exc))))
    assert res.labels == ["nan"] and len(told) == 1 and told[0][0] == "nan" and "NaN/Inf" in told[0][1]


def test_describe_names_one_checkpoint_not_a_folder_of_them():
    from click.testing import CliRunner

    from niff_analysis.cli import main

    res = CliRunner().invoke(main, ["describe", str(BUNDLED_DIR)])
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.strip() == (
        f"error: {BUNDLED_DIR} is a folder of 2 checkpoints (resnet18_fmnist, resnet18_niff_fmnist); "
        "describe one of them"
    )


def test_an_analysis_reading_what_its_needs_did_not_ask_for_is_told_so():
    class Confused(Analysis):
        needs = "model"

        def compute(self, item):
            return item.kernels

    with pytest.raises(RuntimeError, match="no kernels were selected for this analysis"):
        run([DEFAULT_CHECKPOINT], Confused())


def test_a_runs_files_are_found_beside_its_checkpoints(tmp_path):
    """``runs.run_file``: one rule for the files a run writes beside its checkpoints (its
    statistics, its train_config.json), used by describe, history, figures and evaluate."""
    from niff_analysis.runs import read_train_config, run_file

    run = tmp_path / "run"
    for sub in ("init", "epoch_003", "other"):
        (run / sub).mkdir(parents=True)
    (run / "kernel_stats.csv").write_text("x")
    (run / "train_config.json").write_text('{"seed": 4, "test_subset": null}')
    assert run_file(run, "kernel_stats.csv") == run / "kernel_stats.csv"
    assert run_file(run / "init", "kernel_stats.csv") == run / "kernel_stats.csv"
    assert run_file(run / "epoch_003", "kernel_stats.csv") == run / "kernel_stats.csv"
    assert run_file(run / "model.safetensors", "kernel_stats.csv") == run / "kernel_stats.csv"
    # a folder that is no part of a run keeps its own (missing) file
    assert run_file(run / "other", "kernel_stats.csv") == run / "other" / "kernel_stats.csv"
    # a file the sub-folder holds itself wins
    (run / "epoch_003" / "kernel_stats.csv").write_text("y")
    assert run_file(run / "epoch_003", "kernel_stats.csv") == run / "epoch_003" / "kernel_stats.csv"
    assert read_train_config(run / "epoch_003") == {"seed": 4, "test_subset": None}
    assert read_train_config(run / "other") is None
    (run / "train_config.json").write_text("[1, 2]")
    assert read_train_config(run) is None, "not a JSON object"

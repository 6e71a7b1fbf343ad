"""Bad inputs: every one is refused with one clear line on stderr and a non-zero exit (CLI), or a
clear exception (Python API), never a traceback; degenerate kernels give defined values or
flagged rows, never exceptions.

Most CLI cases run in-process through CliRunner; a few run the installed ``niff-analyze`` for real
(in parallel, since each start imports torch) to prove nothing else reaches stderr.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from sklearn.decomposition import PCA

matplotlib.use("Agg")

from niff_analysis.analysis import (  # noqa: E402
    LayerKernels,
    effective_sizes,
    extract_kernels,
    gaussian_fit,
    gaussian_summary,
    kernel_mass,
    mass_summary,
    pca_eigenkernels,
    subsample,  # noqa: E402
    weight_pca,
)
from niff_analysis.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from niff_analysis.cli import main  # noqa: E402
from niff_analysis.errors import CheckpointError, DataError, NiffError, SelectionError  # noqa: E402
from niff_analysis.imports import import_reference_checkpoint, read_torch_pickle  # noqa: E402
from niff_analysis.layers.niff import centred_to_kernel  # noqa: E402
from niff_analysis.models import create_model  # noqa: E402
from niff_analysis.pipeline import FigureData  # noqa: E402
from niff_analysis.plotting import (  # noqa: E402
    plot_effective_size,
    plot_eigenkernels,
    plot_kernel_magnitude,
    plot_mass_ratio,
    plot_raw_kernels,
    plot_sigma,
    plot_weight_pca,
)
from niff_analysis.plotting.report import write_figures  # noqa: E402
from niff_analysis.train import TrainConfig, train  # noqa: E402
from niff_analysis.train.data import load_dataset  # noqa: E402

ENTRY = Path(sys.executable).parent / "niff-analyze"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
FMNIST_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]
SMALL = "layer4.1.conv2"  # 2×2 at input 16: every command on it is instant
# A tiny training run: it fails on its bad input long before any step would run.
TRAIN = [
    "train",
    "--model",
    "resnet18",
    "--stem",
    "cifar",
    "--input-size",
    "16",
    "--epochs",
    "1",
    "--batch-size",
    "2",
    "--train-subset",
    "4",
    "--test-subset",
    "2",
    "--workers",
    "0",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--quiet",
]


# ------------------------------------------------------------------------------ helpers
class Payload:
    """Pickles as a call of ``exec`` that creates ``marker``: code that must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_error(res, *fragments: str) -> str:
    """Non-zero exit, nothing on stdout, exactly one stderr line 'error: …' holding fragments."""
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code not in (0, None), res.stdout
    assert res.stdout == ""
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def assert_usage_error(res, option: str, fragment: str) -> str:
    """Click's usage error: exit 2, 'Usage:' and 'Try … --help' lines, one 'Error:' line."""
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == 2 and res.stdout == "" and "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 3, res.stderr
    assert lines[0].startswith("Usage: ") and lines[1].startswith("Try ") and "--help" in lines[1]
    assert lines[2].startswith("Error: ") and option in lines[2] and fragment in lines[2], lines[2]
    return lines[2]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder: Path, change) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    change(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


def _edit_weights(folder: Path, change) -> None:
    state = {k: v.clone() for k, v in load_file(str(folder / "model.safetensors")).items()}
    change(state)
    save_file(state, str(folder / "model.safetensors"))
    # Keep the config's weights hash consistent: these cases model bad *contents*, saved whole.
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if "weights_sha256" in cfg:
        cfg["weights_sha256"] = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        cfg_path.write_text(json.dumps(cfg))


def _mlp_key(layer: str, part: str, which: str) -> str:
    """State-dict key of a NIFF layer's first ('first') or last ('last') MLP Linear weight."""
    model = _MODEL
    seq = getattr(model.get_submodule(layer), part)
    idx = [i for i, m in enumerate(seq) if isinstance(m, torch.nn.Linear)]
    return f"{layer}.{part}.{idx[0] if which == 'first' else idx[-1]}"


_MODEL = create_model("resnet18_niff", num_classes=10, in_chans=1, stem="cifar", input_size=16)


@pytest.fixture(scope="module")
def ck(tmp_path_factory) -> dict[str, Path]:
    """A small valid checkpoint and one broken variant of it per case (name → path)."""
    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    good = save_checkpoint(_MODEL, root / "good")
    single = save_checkpoint(_MODEL, root / "single.safetensors")
    raw = (good / "model.safetensors").read_bytes()
    c = {"good": good}

    c["truncated"] = _copy(good, root / "truncated")
    (c["truncated"] / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    c["truncated_single"] = root / "truncated.safetensors"
    c["truncated_single"].write_bytes(single.read_bytes()[:100_000])
    c["corrupt_config"] = _copy(good, root / "corrupt_config")
    (c["corrupt_config"] / "config.json").write_text('{"format": "niff-analysis-checkpoint", "arch')
    c["config_not_object"] = _copy(good, root / "config_not_object")
    (c["config_not_object"] / "config.json").write_text("[1, 2, 3]\n")
    c["foreign_safetensors"] = root / "foreign.safetensors"
    save_file({"w": torch.ones(2)}, str(c["foreign_safetensors"]))
    c["unknown_model"] = _copy(good, root / "unknown_model")
    _edit_config(c["unknown_model"], lambda cfg: cfg.update(architecture="resnet9000_niff"))
    c["bad_model_kwargs"] = _copy(good, root / "bad_model_kwargs")
    _edit_config(c["bad_model_kwargs"], lambda cfg: cfg["model_kwargs"].update(depth=7))
    c["missing_key"] = _copy(good, root / "missing_key")
    _edit_weights(c["missing_key"], lambda s: s.pop("fc.weight"))
    c["extra_key"] = _copy(good, root / "extra_key")
    _edit_weights(c["extra_key"], lambda s: s.update({"head.extra": torch.ones(3)}))
    c["wrong_shape"] = _copy(good, root / "wrong_shape")
    _edit_weights(c["wrong_shape"], lambda s: s.update({"fc.weight": torch.ones(5, 512)}))
    c["empty_weights"] = _copy(good, root / "empty_weights")
    (c["empty_weights"] / "model.safetensors").write_bytes(b"")
    c["empty_config"] = _copy(good, root / "empty_config")
    (c["empty_config"] / "config.json").write_text("")
    c["empty_single"] = root / "empty.safetensors"
    c["empty_single"].write_bytes(b"")
    c["empty_pt"] = root / "empty.pt"
    c["empty_pt"].write_bytes(b"")
    c["no_weights"] = _copy(good, root / "no_weights")
    (c["no_weights"] / "model.safetensors").unlink()
    c["empty_dir"] = root / "empty_dir"
    c["empty_dir"].mkdir()
    c["nonexistent"] = root / "does-not-exist"
    key = _mlp_key("layer1.0.conv1", "real", "first") + ".weight"
    for name, value in (("nan", float("nan")), ("inf", float("-inf"))):
        c[name] = _copy(good, root / name)
        _edit_weights(c[name], lambda s, v=value: s[key].__setitem__((0, 0), v))
    # Finite weights whose MLP output overflows float32: the kernels become Inf/NaN.
    c["overflow"] = _copy(good, root / "overflow")
    _edit_weights(c["overflow"], lambda s: s[key].fill_(3e38))

    # Pickled code: as a .pt file, and disguised as safetensors weights.
    c["marker"] = root / "PAYLOAD_RAN"
    c["pickle_code"] = root / "hostile.pt"
    torch.save({"model": {"fc.weight": torch.ones(1)}, "args": Payload(c["marker"])}, c["pickle_code"])
    c["pickle_as_safetensors"] = _copy(good, root / "pickle_as_safetensors")
    shutil.copy(c["pickle_code"], c["pickle_as_safetensors"] / "model.safetensors")

    # Degenerate kernels: layer3.1.conv2 all zero, layer3.1.conv1 a single centred pixel
    # (constant response 1 → delta kernel), both 4×4 at input 16.
    def degenerate(s):
        for part in ("real", "imag"):
            w, b = _mlp_key("layer3.1.conv2", part, "last"), _mlp_key("layer3.1.conv1", part, "last")
            s[w + ".weight"].zero_(), s[w + ".bias"].zero_()
            s[b + ".weight"].zero_(), s[b + ".bias"].fill_(1.0 if part == "real" else 0.0)

    c["degenerate"] = _copy(good, root / "degenerate")
    _edit_weights(c["degenerate"], degenerate)
    return c


# (case, fragment of the CheckpointError message); the CLI line carries the same text.
CHECKPOINT_CASES = [
    ("truncated", "not a readable safetensors file"),
    ("truncated_single", "not a readable safetensors file"),
    ("corrupt_config", "corrupt JSON"),
    ("config_not_object", "config is not a niff-analysis-checkpoint config"),
    ("foreign_safetensors", "carries no niff_config metadata"),
    ("pickle_code", "carries no niff-analysis config; import it"),
    ("pickle_as_safetensors", "not a readable safetensors file"),
    ("unknown_model", "unknown model 'resnet9000_niff'"),
    ("bad_model_kwargs", "config field model_kwargs.depth is unknown (a misspelled key?)"),
    ("missing_key", "1 missing key(s) (e.g. fc.weight)"),
    ("extra_key", "1 unexpected key(s) (e.g. head.extra)"),
    ("wrong_shape", "1 wrong-shaped key(s) (e.g. fc.weight: checkpoint (5, 512), model (10, 512))"),
    ("empty_weights", "not a readable safetensors file"),
    ("empty_config", "corrupt JSON"),
    ("empty_single", "not a readable safetensors file"),
    ("empty_pt", "carries no niff-analysis config"),
    ("no_weights", "model.safetensors is missing"),
    ("empty_dir", "holds no config.json"),
    ("nonexistent", "no such file or directory"),
    ("nan", "weights contain NaN/Inf in 1 tensor(s)"),
    ("inf", "weights contain NaN/Inf in 1 tensor(s)"),
]


# ------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("case,message", CHECKPOINT_CASES, ids=[c for c, _ in CHECKPOINT_CASES])
def test_checkpoint_api_raises_checkpoint_error(ck, case, message):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ck[case])
    assert message in str(info.value) and str(ck[case]) in str(info.value)
    assert "\n" not in str(info.value)
    assert not ck["marker"].exists()


@pytest.mark.parametrize("command", ["mass", "describe"])
@pytest.mark.parametrize("case,message", CHECKPOINT_CASES, ids=[c for c, _ in CHECKPOINT_CASES])
def test_checkpoint_cli_one_line(ck, case, message, command, tmp_path):
    # A folder that holds no checkpoint may also be a folder *of* checkpoints to every command of
    # the runner (describe too).
    if case == "empty_dir":
        message = "neither a checkpoint (no config.json) nor a folder of checkpoints"
    extra = ["--layers", SMALL, "--quiet", "-o", tmp_path / "out.csv"] if command == "mass" else []
    if command == "describe" and case in ("nan", "inf"):  # a diverged run is described, with a warning
        res = invoke(command, ck[case], *extra)
        assert res.exit_code == 0 and res.stderr.startswith(f"warning: {ck[case]}: {message}"), res.output
        return
    assert_error(invoke(command, ck[case], *extra), message)
    assert not any(tmp_path.iterdir())  # no output, no meta.json, no temp file
    assert not ck["marker"].exists()


@pytest.mark.parametrize("command", ["kernels", "pca", "gaussian", "figures"])
@pytest.mark.parametrize("case", ["truncated", "pickle_code", "nan", "wrong_shape"])
def test_checkpoint_cli_every_command(ck, case, command, tmp_path):
    message = dict(CHECKPOINT_CASES)[case]
    extra = ["--out", tmp_path / "figs", "--cost-sizes", "none"] if command == "figures" else []
    assert_error(invoke(command, ck[case], "--layers", SMALL, "--quiet", *extra), message)
    assert not (tmp_path / "figs").exists()


def test_overflowing_weights_are_refused_not_printed_as_nan(ck, tmp_path):
    model = load_checkpoint(ck["overflow"])  # every weight is finite …
    with pytest.raises(NiffError, match=r"layer layer1\.0\.conv1: 64 of 64 kernels contain NaN or Inf"):
        extract_kernels(model, layers="layer1.0.conv1")  # … but the kernels are not
    for command, extra in (
        ("mass", ["--format", "csv"]),
        ("kernels", ["--format", "csv"]),
        ("pca", []),
        ("gaussian", ["--format", "json"]),
        ("figures", ["--out", tmp_path / "figs", "--cost-sizes", "none"]),
    ):
        line = assert_error(
            invoke(command, ck["overflow"], "--layers", "layer1.*", "-q", *extra),
            "overflow: layer layer1.0.conv1: 64 of 64 kernels contain NaN or Inf",
        )
        assert "nan" not in line.lower().replace("nan or inf", "")
    assert not (tmp_path / "figs").exists()


@pytest.mark.parametrize("analysis", [kernel_mass, pca_eigenkernels, weight_pca])
def test_non_finite_kernels_refused_by_the_analyses(analysis):
    k = torch.randn(3, 5, 5)
    k[1, 2, 2] = float("nan")
    resp = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(k, dim=(-2, -1))), dim=(-2, -1))
    lk = LayerKernels("broken", "depthwise", (5, 5), None, k, resp.to(torch.complex64))
    with pytest.raises(NiffError, match=r"layer broken: 1 of 3 kernels contain NaN or Inf"):
        analysis([lk])
    # The Gaussian fit flags them instead (one row per kernel, success False).
    fits = gaussian_fit([lk])
    assert fits.loc[1, "status"] == "non-finite kernel" and not fits.loc[1, "success"]


def test_pickled_code_never_runs(ck, tmp_path):
    marker, hostile = ck["marker"], ck["pickle_code"]
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_torch_pickle(hostile)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        import_reference_checkpoint(hostile, "resnet18_niff")
    assert_error(
        invoke("import", hostile, "--model", "resnet18_niff", "--out", tmp_path / "imp"), "refusing to unpickle"
    )
    assert not (tmp_path / "imp").exists()
    # As a --resume state of a training run.
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(hostile, run / "train_state.pt")
    assert_error(invoke(*TRAIN, "--data-dir", FMNIST, "--out", run, "--resume"), "--resume: cannot read")
    # As a CIFAR-10 batch.
    cifar = tmp_path / "cifar"
    cifar.mkdir()
    shutil.copy(hostile, cifar / "data_batch_1")
    with pytest.raises(DataError, match="malformed"):
        load_dataset("cifar10", cifar, "train")
    assert_error(
        invoke(*TRAIN, "--dataset", "cifar10", "--data-dir", cifar, "--out", tmp_path / "o"),
        "CIFAR-10 file data_batch_1",
        "malformed",
    )
    assert not marker.exists()
    # The payload is real: unpickled without weights_only, the same kind of file runs its code.
    proof = tmp_path / "proof.pt"
    torch.save({"args": Payload(tmp_path / "ran")}, proof)
    torch.load(proof, weights_only=False)
    assert (tmp_path / "ran").exists()


# ------------------------------------------------------------------------------ selections, options
@pytest.mark.parametrize(
    "args,message",
    [
        (["mass", "--layers", "nothing*"], "good: no layer matches 'nothing*'; available layers: layer1.0.conv1"),
        (["pca", "--layers", "conv1"], "no layer matches 'conv1'"),
        (["figures", "--layers", "nothing*", "--cost-sizes", "none"], "good: no layer matches 'nothing*'"),
        (["figures", "--layers", ",", "--cost-sizes", "none"], "--layers is empty"),
        (["figures", "--format", "gif"], "unknown --format gif; choose from pdf, png, svg"),
        (["figures", "--cost-sizes", "a,b"], "--cost-sizes takes comma-separated integers or 'none'"),
        (["figures", "--cost-sizes", "1"], "--cost-sizes must be at least 2"),
    ],
)
def test_bad_selection_on_checkpoint_is_one_line(ck, args, message, tmp_path):
    if args[0] == "figures":
        args = [*args, "--out", tmp_path / "figs"]
    assert_error(invoke(args[0], ck["good"], *args[1:], "--quiet"), message)
    assert not (tmp_path / "figs").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["describe", "resnet9000"], "unknown model 'resnet9000'; available: convnext_tiny"),
        (
            ["describe", "resnet18_niff", "--input-size", "8"],
            "input size 8x8 is too small for the model's downsampling: layer3.0.conv1",
        ),
        (["describe", "resnet18_niff", "--stem", "imagenet", "--input-size", "16"], "too small"),
        ([*TRAIN, "--input-size", "4", "--out", "{tmp}/o", "--data-dir", str(FMNIST)], "input size 4x4 is too small"),
        ([*TRAIN, "--workers", "-1", "--out", "{tmp}/o"], "workers must be zero or positive, got -1"),
        ([*TRAIN, "--save-every-steps", "-1", "--out", "{tmp}/o"], "save_every_steps must be zero or positive"),
        ([*TRAIN, "--lr", "-1", "--out", "{tmp}/o"], "lr must be positive, got -1.0"),
        ([*TRAIN, "--mlp-lr-scale", "0", "--out", "{tmp}/o"], "mlp_lr_scale must be positive, got 0.0"),
        ([*TRAIN, "--mlp-weight-decay", "-1", "--out", "{tmp}/o"], "mlp_weight_decay and momentum must be"),
        (
            [*TRAIN, "--kernel-stats-every-steps", "-2", "--out", "{tmp}/o"],
            "kernel_stats_every_steps must be zero or positive, got -2",
        ),
        ([*TRAIN, "--mlp", "0", "--out", "{tmp}/o"], "MLP hidden sizes must be positive, got [0]"),
        ([*TRAIN, "--mlp", "1,x", "--out", "{tmp}/o"], "--mlp: expected a preset name or sizes like 16,64"),
        ([*TRAIN, "--mlp", "gigantic", "--out", "{tmp}/o"], "unknown MLP preset 'gigantic'"),
        ([*TRAIN, "--out", "{tmp}/o", "--resume"], "--resume: no train_state.pt in"),
        ([*TRAIN, "--out", "{tmp}/file"], "--out {tmp}/file: exists and is not a directory"),
        (
            ["mass", "-q", "-o", "{tmp}/file/x.csv"],
            "--output {tmp}/file/x.csv: {tmp}/file exists and is not a directory",
        ),
    ],
)
def test_bad_parameters_are_one_line(args, message, tmp_path):
    (tmp_path / "file").write_text("a file, not a folder\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert_error(invoke(*args), message.replace("{tmp}", str(tmp_path)))
    assert not (tmp_path / "o").exists()
    assert (tmp_path / "file").read_text() == "a file, not a folder\n"


@pytest.mark.parametrize(
    "args,option,message",
    [
        (["pca", "--components", "0"], "'--components'", "must be a positive integer, got 0"),
        (["pca", "-k", "-3"], "'--components'", "must be a positive integer, got -3"),
        (["pca", "-k", "many"], "'--components'", "'many' is not a valid integer"),
        (["gaussian", "--max-iter", "0"], "'--max-iter'", "must be a positive integer, got 0"),
        (["figures", "--out", "x", "--max-kernels", "0"], "'--max-kernels'", "got 0"),
        (["describe", "resnet18_niff", "--input-size", "0"], "'--input-size'", "got 0"),
        (["describe", "resnet18_niff", "--num-classes", "-1"], "'--num-classes'", "got -1"),
        (
            ["import-reference", "x.pt", "--model", "resnet18_niff", "--out", "o", "--in-chans", "0"],
            "'--in-chans'",
            "got 0",
        ),
        (["train", "--model", "resnet18", "--out", "o", "--epochs", "-1"], "'--epochs'", "got -1"),
        (["train", "--model", "resnet18", "--out", "o", "--batch-size", "-1"], "'--batch-size'", "got -1"),
        (["train", "--model", "resnet18", "--out", "o", "--train-subset", "0"], "'--train-subset'", "got 0"),
        (["train", "--model", "resnet18", "--out", "o", "--test-subset", "-5"], "'--test-subset'", "got -5"),
        (["train", "--model", "resnet18", "--out", "o", "--threads", "0"], "'--threads'", "got 0"),
        (["train", "--model", "resnet9000", "--out", "o"], "'--model'", "'resnet9000' is not one of"),
        (["train", "--model", "resnet18", "--out", "o", "--dataset", "mnist"], "'--dataset'", "'mnist' is not one of"),
        (["train", "--model", "resnet18", "--out", "o", "--mode", "wrap"], "'--mode'", "'wrap' is not one of"),
        (["train", "--model", "resnet18", "--out", "o", "--dtype", "float16"], "'--dtype'", "is not one of"),
        (["train", "--model", "resnet18"], "'--out'", "Missing option"),
        (["mass", "--device", "tpu"], "'--device'", "'tpu' is not one of 'auto', 'cpu', 'cuda', 'mps'"),
        (["mass", "--view", "bogus"], "'--view'", "'bogus' is not one of 'ratios', 'summary', 'sizes'"),
        (["mass", "--format", "xml"], "'--format'", "'xml' is not one of 'table', 'csv', 'json'"),
        (["mass", "-o", "x.xlsx"], "--output", "use a suffix of .csv, .json, .txt"),
        (["mass", "--format", "csv", "-o", "x.json"], "--format csv", "disagrees with the suffix"),
        (["describe", "resnet18", "--stem", "weird"], "'--stem'", "'weird' is not one of 'imagenet', 'cifar'"),
        (["models", "zzz*"], "zzz*", "no model matches"),
        (["mass", "--bogus"], "'--bogus'", "No such option"),
        (["frobnicate"], "'frobnicate'", "No such command"),
    ],
)
def test_bad_options_are_short_usage_errors(args, option, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(invoke(*args), option, message)
    assert not any(tmp_path.iterdir())


def test_bad_values_through_the_api(tmp_path):
    with pytest.raises(NiffError, match="unknown model 'resnet9000'"):
        create_model("resnet9000")
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        create_model("resnet18", num_classes=0)
    with pytest.raises(NiffError, match="input size 4x4 is too small for the model's downsampling"):
        create_model("resnet18_niff", stem="cifar", input_size=4)
    with pytest.raises(NiffError, match="input size 16x16 is too small"):
        create_model("resnet18_niff", stem="imagenet", input_size=16)
    lks = extract_kernels(_MODEL, layers=SMALL)
    with pytest.raises(SelectionError, match="no layer matches 'nothing'"):
        extract_kernels(_MODEL, layers="nothing")
    for bad in (0, -2):
        with pytest.raises(SelectionError, match=f"n_components must be a positive integer, got {bad}"):
            pca_eigenkernels(lks, n_components=bad)
        with pytest.raises(SelectionError, match=f"n_components must be a positive integer, got {bad}"):
            weight_pca(lks, n_components=bad)
        with pytest.raises(SelectionError, match=f"max_kernels must be a positive integer, got {bad}"):
            subsample(lks, bad)
    for field, value, message in (
        ("epochs", -1, "epochs must be zero or positive, got -1"),
        ("batch_size", -1, "batch_size must be a positive integer, got -1"),
        ("workers", -1, "workers must be zero or positive"),
    ):
        cfg = TrainConfig(model="resnet18", out=str(tmp_path / "o"), device="cpu", progress=False, **{field: value})
        with pytest.raises(NiffError, match=message):
            train(cfg)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ data folders
def _fmnist(root: Path, case: str) -> Path:
    d = root / f"fm_{case}"
    if case == "missing":
        return d
    d.mkdir()
    for name in FMNIST_FILES:
        raw = (FMNIST / name).read_bytes()
        if case == "partial" and name.startswith("t10k"):
            continue  # only the training half
        (d / name).write_bytes(raw[: len(raw) // 2] if case == "corrupt" else raw)
    return d


def _cifar(root: Path, case: str) -> Path:
    d = root / f"cifar_{case}"
    if case == "missing":
        return d
    if case == "corrupt":
        (d / "cifar-10-batches-py").mkdir(parents=True)
        (d / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"\x80\x04garbage")
        return d
    if case == "corrupt-archive":
        d = root / "cifar-10-python.tar.gz"
        d.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
        return d
    (d / "cifar-10-batches-py").mkdir(parents=True)  # partial: metadata but no batch
    (d / "cifar-10-batches-py" / "batches.meta").write_bytes(b"")
    return d


def _imagefolder(root: Path, case: str) -> Path:
    from PIL import Image

    d = root / f"if_{case}"
    if case == "missing":
        return d
    rng = np.random.default_rng(0)
    for split in ("train", "val") if case != "partial" else ("train",):
        for cls in ("a", "b"):
            (d / split / cls).mkdir(parents=True)
            if case == "empty-class":
                continue
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(d / split / cls / f"{i}.png")
    if case.startswith("corrupt"):
        (d / "train" / "a" / "0.png").write_bytes(b"\x89PNG truncated")
    return d


DATA_CASES = [
    ("fashion-mnist", _fmnist, "missing", "Fashion-MNIST folder {d} does not exist"),
    ("fashion-mnist", _fmnist, "partial", "Fashion-MNIST folder {d} lacks t10k-images-idx3-ubyte.gz"),
    ("fashion-mnist", _fmnist, "corrupt", "cannot read idx file {d}/train-images-idx3-ubyte.gz"),
    ("cifar10", _cifar, "missing", "CIFAR-10 path {d} does not exist"),
    ("cifar10", _cifar, "partial", "CIFAR-10 at {d} has no data_batch_1"),
    ("cifar10", _cifar, "corrupt", "CIFAR-10 file data_batch_1 in {d} is malformed"),
    ("cifar10", _cifar, "corrupt-archive", "cannot read CIFAR-10 archive {d}"),
    ("imagefolder", _imagefolder, "missing", "ImageFolder root {d} does not exist"),
    ("imagefolder", _imagefolder, "partial", "ImageFolder root {d} has no val/ folder"),
    ("imagefolder", _imagefolder, "empty-class", "ImageFolder {d}/train: Found no valid file"),
]


@pytest.mark.parametrize("dataset,make,case,message", DATA_CASES, ids=[f"{d}-{c}" for d, _, c, _ in DATA_CASES])
def test_bad_data_dir(dataset, make, case, message, tmp_path):
    d = make(tmp_path, case)
    message = message.format(d=d)
    with pytest.raises(DataError) as info:
        load_dataset(dataset, d, "train" if case != "partial" or dataset != "fashion-mnist" else "test")
    assert message in " ".join(str(info.value).split())
    assert_error(invoke(*TRAIN, "--dataset", dataset, "--data-dir", d, "--out", tmp_path / "run"), message)
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.slow  # data-loader worker processes
@pytest.mark.parametrize("workers", ["0", "1"])
def test_corrupt_image_in_imagefolder_is_one_line(tmp_path, workers):
    d = _imagefolder(tmp_path, "corrupt")
    bad = d / "train" / "a" / "0.png"
    # API: the dataset opens (images are decoded lazily); reading the bad sample names the file.
    data = load_dataset("imagefolder", d, "train", image_size=16)
    index = [s for s, _ in data.folder.samples].index(str(bad))
    with pytest.raises(DataError, match=re.escape(f"cannot read image {bad}")):
        data[index]
    # CLI: a DataLoader worker re-raises it with the worker's traceback in the message; the
    # user still sees one line naming the file, and no traceback.
    line = assert_error(
        invoke(*TRAIN, "--workers", workers, "--dataset", "imagefolder", "--data-dir", d, "--out", tmp_path / "run"),
        f"cannot read image {bad}",
    )
    assert 'File "' not in line and "worker.py" not in line
    assert not (tmp_path / "run" / "model.safetensors").exists()


# ------------------------------------------------------------------------------ degenerate kernels
def _layer(name: str, kernels: torch.Tensor) -> LayerKernels:
    """A depthwise-NIFF-like layer with exactly these spatial kernels (and their responses)."""
    k = kernels.float()
    resp = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(k, dim=(-2, -1))), dim=(-2, -1))
    assert torch.allclose(centred_to_kernel(resp).float(), k, atol=1e-6)
    return LayerKernels(
        name, "depthwise", tuple(k.shape[-2:]), "layer1", k, resp.to(torch.complex64), k.shape[0], k.shape[0]
    )


def _degenerate() -> dict[str, torch.Tensor]:
    n = 9
    delta = torch.zeros(4, n, n)
    delta[:, n // 2, n // 2] = 1.5
    corner = torch.zeros(4, n, n)
    corner[:, 0, 0] = 1.0
    return {
        "zero": torch.zeros(4, n, n),
        "single_pixel": delta,
        "corner_pixel": corner,
        "constant": torch.full((4, n, n), 0.25),
        "grid_1x1": torch.ones(3, 1, 1) * 2.0,
        "zero_1x1": torch.zeros(3, 1, 1),
        "grid_2x2": torch.arange(4.0).reshape(2, 2).repeat(3, 1, 1),
    }


def _naive_mass(k: np.ndarray, s: int) -> float:
    """Share of |k| in the centred s×s window by plain slicing (independent of mass_ratios)."""
    h, w = k.shape
    r = s // 2
    win = np.abs(k[max(h // 2 - r, 0) : h // 2 + r + 1, max(w // 2 - r, 0) : w // 2 + r + 1]).sum()
    return win / np.abs(k).sum()


@pytest.mark.slow  # every analysis
@pytest.mark.parametrize("case", list(_degenerate()))
def test_degenerate_kernels_through_every_analysis(case):
    k = _degenerate()[case]
    lk = _layer(case, k)
    zero = not bool(k.abs().sum())
    # Mass ratio: NaN exactly for the all-zero kernels (no mass), otherwise plain slicing.
    mass = kernel_mass([lk])
    assert len(mass) == k.shape[0] * len(mass.window.unique())
    for row in mass.itertuples():
        if zero:
            assert np.isnan(row.mass_ratio)
        else:
            assert row.mass_ratio == pytest.approx(_naive_mass(k[row.channel].numpy(), row.window))
    summ = mass_summary(mass)
    assert (summ["n"] == (0 if zero else k.shape[0])).all()
    sizes = effective_sizes(mass)
    assert len(sizes) == k.shape[0]
    assert sizes[["size_50", "size_90", "size_95"]].isna().all().all() == zero
    if case == "single_pixel":
        assert (sizes[["size_50", "size_90", "size_95"]] == 1).all().all()
    if case == "constant":  # 9×9: windows hold 1, 9, 25, 49, 81 of 81 pixels
        assert sizes.size_50.eq(7).all() and sizes.size_90.eq(9).all()
    # PCA: identical kernels have no variance: NaN ratios and zero components, like sklearn's 0/0.
    for result in (pca_eigenkernels([lk]), weight_pca([lk])):
        assert len(result.table) and result.table.explained_variance_ratio.isna().all()
        for comps in result.components.values():
            assert comps.size and np.all(comps == 0)
    # Gaussian fits: one flagged row per kernel, never an exception.
    fits = gaussian_fit([lk])
    assert len(fits) == k.shape[0] and not fits.success.any()
    expected = {
        "zero": {"zero kernel"},
        "single_pixel": {"undersampled"},
        "corner_pixel": {"undersampled", "centre outside"},
        "constant": {"constant kernel"},
        "grid_1x1": {"constant kernel"},
        "zero_1x1": {"zero kernel"},
        "grid_2x2": {"too few pixels"},
    }
    assert set(fits.status) <= expected[case]
    if case in ("constant", "grid_1x1"):
        assert (fits.amplitude == 0).all() and fits.offset.to_numpy() == pytest.approx(float(k.flatten()[0]))
    summary = gaussian_summary(fits)
    assert summary.n.tolist() == [k.shape[0]] and summary.n_ok.tolist() == [0]
    assert summary.sigma_x_mean.isna().all()


@pytest.mark.slow  # every analysis
def test_degenerate_mixed_layer_pca_matches_sklearn():
    k = _degenerate()
    mixed = torch.cat([k["zero"], k["single_pixel"], k["constant"], k["corner_pixel"]])
    res = pca_eigenkernels([_layer("mixed", mixed)], n_components=3)
    ref = PCA(n_components=3, svd_solver="full").fit(mixed.reshape(len(mixed), -1).double().numpy())
    np.testing.assert_allclose(res.table.explained_variance_ratio, ref.explained_variance_ratio_, atol=1e-10)
    mine = res.components["mixed"].reshape(3, -1)  # rank 3: compare the spanned subspaces
    np.testing.assert_allclose(mine.T @ mine, ref.components_.T @ ref.components_, atol=1e-8)


@pytest.mark.slow  # every figure
def test_degenerate_kernels_through_every_plot(tmp_path, monkeypatch):
    import niff_analysis.plotting.report as report

    lks = [_layer(name, k) for name, k in _degenerate().items()]
    mass = kernel_mass(lks)
    summ, sizes = mass_summary(mass), effective_sizes(mass)
    fits = gaussian_fit(lks)
    gsum = gaussian_summary(fits)
    pca, wpca = pca_eigenkernels(lks), weight_pca(lks)
    # The whole figure set and its tables, drawn from them; every plotting function must run.
    called = set()
    for fn in (
        plot_mass_ratio,
        plot_effective_size,
        plot_sigma,
        plot_eigenkernels,
        plot_weight_pca,
        plot_raw_kernels,
        plot_kernel_magnitude,
    ):
        monkeypatch.setattr(report, fn.__name__, lambda *a, _fn=fn, **k: (called.add(_fn.__name__), _fn(*a, **k))[1])
    tag = lambda df: df.assign(checkpoint="deg")[["checkpoint", *df.columns]]  # noqa: E731
    pca.table, wpca.table = tag(pca.table), tag(wpca.table)
    data = FigureData(
        labels=["deg"],
        kernels={"deg": lks},
        mass_summary=tag(summ),
        effective_sizes=tag(sizes),
        gaussian=tag(fits),
        gaussian_summary=tag(gsum),
        eigenkernels={"deg": pca},
        weight_pca={"deg": wpca},
        cost=pd.DataFrame(),
    )
    paths = write_figures(data, tmp_path / "figs", formats=("png",))
    assert called == {
        "plot_mass_ratio",
        "plot_effective_size",
        "plot_sigma",
        "plot_eigenkernels",
        "plot_weight_pca",
        "plot_raw_kernels",
        "plot_kernel_magnitude",
    }
    names = {p.name for p in paths}
    assert {
        "mass_ratio.png",
        "gaussian_sigma.png",
        "weight_pca.png",
        "raw_kernels.png",
        "mass_summary.csv",
        "gaussian_fits.csv",
    } <= names
    assert all(p.stat().st_size > 0 for p in paths)
    # The tables hold the flags: zero kernels fail as "zero kernel", their sizes are NaN.
    written = pd.read_csv(tmp_path / "figs" / "gaussian_fits.csv")
    assert set(written[written.layer == "zero"].status) == {"zero kernel"}
    written = pd.read_csv(tmp_path / "figs" / "effective_sizes.csv")
    assert written[written.layer == "zero"].size_90.isna().all()
    assert (written[written.layer == "single_pixel"].size_90 == 1).all()


@pytest.mark.slow  # every command
def test_degenerate_checkpoint_through_the_cli(ck, tmp_path):
    """A checkpoint with all-zero (layer3.1.conv2) and single-pixel (layer3.1.conv1) kernels."""
    deg = ck["degenerate"]
    lks = {lk.name: lk for lk in extract_kernels(load_checkpoint(deg), layers="layer3.1.*")}
    assert not lks["layer3.1.conv2"].kernels.any()
    assert (lks["layer3.1.conv1"].kernels[:, 2, 2] == 1).all() and lks["layer3.1.conv1"].kernels.abs().sum() == 256
    # mass: NaN rows for the zero kernels are printed, but never silently (even with --quiet).
    res = invoke("mass", deg, "--layers", "layer3.1.*", "--format", "csv", "--quiet")
    assert res.exit_code == 0 and res.exception is None
    df = pd.read_csv(io.StringIO(res.stdout))
    assert df[df.layer == "layer3.1.conv2"].mass_ratio.isna().all()
    assert (df[df.layer == "layer3.1.conv1"].mass_ratio == 1).all()
    assert res.stderr == (
        "warning: degenerate: 256 all-zero kernel(s) have no mass; their mass ratios "
        "and sizes are NaN: layer3.1.conv2 (256 of 256)\n"
    )
    # pca: warned, NaN ratios; gaussian: flagged rows; figures: written.
    res = invoke("pca", deg, "--layers", "layer3.1.*", "--format", "csv", "--quiet")
    assert (
        res.exit_code == 0
        and "warning: degenerate: no variance (all kernels identical) in layer3.1.conv1, layer3.1.conv2" in res.stderr
    )
    assert pd.read_csv(io.StringIO(res.stdout)).explained_variance_ratio.isna().all()
    res = invoke("gaussian", deg, "--layers", "layer3.1.*", "--format", "csv", "--quiet")
    assert res.exit_code == 0 and res.stderr == ""
    fits = pd.read_csv(io.StringIO(res.stdout))
    assert set(fits[fits.layer == "layer3.1.conv2"].status) == {"zero kernel"}
    assert set(fits[fits.layer == "layer3.1.conv1"].status) == {"undersampled"} and not fits.success.any()
    res = invoke(
        "figures",
        deg,
        "--layers",
        "layer3.1.*",
        "--out",
        tmp_path / "figs",
        "--format",
        "png",
        "--cost-sizes",
        "none",
        "--quiet",
    )
    assert res.exit_code == 0 and res.exception is None, res.stderr
    assert (tmp_path / "figs" / "mass_ratio.png").stat().st_size > 0


# ------------------------------------------------------------------------------ the real entry point
@pytest.fixture(scope="module")
def entry_runs(ck, tmp_path_factory):
    """A few bad inputs through the installed ``niff-analyze``, started together (each start
    imports torch, which dominates)."""
    tmp = tmp_path_factory.mktemp("entry")
    bad_image = _imagefolder(tmp, "corrupt") / "train" / "a" / "0.png"
    cases = {
        "truncated": ["mass", ck["truncated"], "--layers", SMALL],
        "pickle_code": ["import", ck["pickle_code"], "--model", "resnet18_niff", "--out", tmp / "imp"],
        "corrupt_image": [
            *TRAIN,
            "--workers",
            "1",
            "--dataset",
            "imagefolder",
            "--data-dir",
            bad_image.parents[2],
            "--out",
            tmp / "run",
        ],
    }
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("NIFF_DEBUG", None)
    procs = {
        k: subprocess.Popen(
            [str(ENTRY), *map(str, a)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp
        )
        for k, a in cases.items()
    }
    out = {}
    for k, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        out[k] = (p.returncode, stdout, stderr)
    return out, {"corrupt_image": bad_image}


@pytest.mark.slow  # fresh interpreters
@pytest.mark.parametrize(
    "case,message",
    [
        ("truncated", "error: {truncated}/model.safetensors: not a readable safetensors file"),
        ("pickle_code", "error: {pickle_code}: refusing to unpickle"),
        ("corrupt_image", "error: cannot read image {corrupt_image}: not an image format PIL can decode"),
    ],
)
def test_entry_point_prints_no_traceback(entry_runs, ck, case, message):
    runs, paths = entry_runs
    code, stdout, stderr = runs[case]
    assert code != 0 and stdout == ""
    assert "Traceback" not in stderr and 'File "' not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.format(**{k: str(v) for k, v in {**ck, **paths}.items()}))
    assert not ck["marker"].exists()

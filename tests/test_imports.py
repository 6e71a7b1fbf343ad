"""Any CNN's checkpoint in: models built from torchvision or a user's factory (saved, reloaded,
analysed), state dicts saved by anyone (``niff-analyze import``), the authors' layouts without
flags, and the files inside a run folder."""

from __future__ import annotations

import io
import json
import shutil

import pandas as pd
import pytest
import torch
import torchvision
from click.testing import CliRunner

import factories
from niff_analysis.checkpoint import load_checkpoint, save_checkpoint
from niff_analysis.cli import main
from niff_analysis.errors import CheckpointError
from niff_analysis.imports import import_state_dict, reference_key_map
from niff_analysis.layers import DepthwiseNIFF
from niff_analysis.models import BuilderError, build_model, create_model, niff_layers


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow  # builds, saves and analyses a torchvision model
def test_converted_torchvision_model_is_a_first_class_checkpoint(tmp_path):
    model = build_model("torchvision:resnet34", dict(num_classes=10), input_size=32, niff=dict(mlp="small"))
    assert len(niff_layers(model)) > 20
    path = save_checkpoint(model, tmp_path / "r34")
    again = load_checkpoint(path)
    assert _same_weights(model, again)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), again(x))
    res = _cli("mass", path, "--layers", "layer3.5.*", "--format", "csv", "-q")
    assert res.exit_code == 0, res.output
    assert set(pd.read_csv(io.StringIO(res.stdout))["layer"]) == {"layer3.5.conv1", "layer3.5.conv2"}
    res = _cli(
        "figures",
        path,
        "--out",
        tmp_path / "figs",
        "--layers",
        "layer3.0.conv2",
        "--max-kernels",
        "8",
        "--cost-sizes",
        "none",
        "--format",
        "png",
        "-q",
    )
    assert res.exit_code == 0, res.output and (tmp_path / "figs" / "mass_ratio.png").is_file()
    with pytest.raises(BuilderError, match="no classification model 'resnet9000'"):
        build_model("torchvision:resnet9000")


def test_a_user_factory_runs_only_when_named(tmp_path, monkeypatch):
    name = "factories:tiny_cnn"
    with pytest.raises(BuilderError, match="runs code"):
        build_model(name, input_size=16)
    model = build_model(name, dict(width=4), input_size=16, factory=name)
    path = save_checkpoint(model, tmp_path / "mine")
    with pytest.raises(CheckpointError, match=r"built by the user factory 'factories:tiny_cnn', which runs code"):
        load_checkpoint(path)
    assert _same_weights(load_checkpoint(path, factory=name), model)
    res = _cli("mass", path)
    # Named, never offered as a command to run: the name comes from the file being loaded.
    assert res.exit_code == 2 and "'factories:tiny_cnn', which runs code" in res.output
    assert "--factory factories:tiny_cnn" not in res.output
    res = _cli("mass", path, "--factory", name, "--format", "csv", "-q")
    assert res.exit_code == 0, res.output
    layers = set(pd.read_csv(io.StringIO(res.stdout), dtype={"layer": str})["layer"])
    assert layers == {"0", "2", "4"}  # the 5×5 depthwise and both 3×3 convs
    # A config that names any other callable is refused, and the callable never runs.
    cfg = json.loads((path / "config.json").read_text())
    for evil, message in (("os:system", "refusing the factory 'os:system'"), ("factories:record_call", "runs code")):
        cfg["architecture"] = evil
        (path / "config.json").write_text(json.dumps(cfg))
        res = _cli("mass", path)
        assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1
        res = _cli("mass", path, "--factory", name)  # naming another factory does not allow this one
        assert res.exit_code == 2
    assert factories.CALLED == []


@pytest.mark.slow  # builds ConvNeXt and a torchvision model
def test_import_plain_convnext_and_a_converted_torchvision_state_dict(tmp_path):
    torch.save(torchvision.models.convnext_tiny(num_classes=10).state_dict(), tmp_path / "cnx.pth")
    res = _cli(
        "import",
        tmp_path / "cnx.pth",
        "--model",
        "convnext_tiny",
        "--num-classes",
        10,
        "--input-size",
        64,
        "--out",
        tmp_path / "cnx",
    )
    assert res.exit_code == 0, res.output
    res = _cli("gaussian", tmp_path / "cnx", "--layers", "features.1.*", "--format", "csv", "-q")
    assert res.exit_code == 0, res.output
    fits = pd.read_csv(io.StringIO(res.stdout))
    assert len(fits) == 3 * 96 and set(fits["fmap_h"]) == {16}  # ConvNeXt's 7×7 depthwise kernels
    res = _cli("describe", tmp_path / "cnx", "--format", "json")
    assert json.loads(res.stdout)["architecture"] == "convnext_tiny"

    model = build_model("torchvision:resnet18", dict(num_classes=10), input_size=32, niff=dict(mlp="small"))
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3}, tmp_path / "r18.pt")
    res = _cli(
        "import",
        tmp_path / "r18.pt",
        "--model",
        "torchvision:resnet18",
        "--niff",
        "split",
        "--mlp",
        "8,4",
        "--num-classes",
        10,
        "--input-size",
        32,
        "--out",
        tmp_path / "r18",
    )
    assert res.exit_code == 0, res.output
    assert _same_weights(load_checkpoint(tmp_path / "r18"), model)
    res = _cli(
        "import", tmp_path / "r18.pt", "--model", "torchvision:resnet18", "--num-classes", 10, "--out", tmp_path / "bad"
    )
    assert res.exit_code == 2 and "the weights are of a NIFF model" in res.output
    assert not (tmp_path / "bad").exists()
    res = _cli("import", tmp_path / "r18.pt", "--model", "resnet18", "--key", "nope", "--out", tmp_path / "bad")
    assert res.exit_code == 2 and "no state dict under 'nope'" in res.output


def test_the_authors_resnet18_at_32px_imports_without_flags(tmp_path):
    """Their ResNet-18 at 32×32 (ImageNet stem, so layer4 runs on 1×1 maps): the `small` MLP and
    NIFF on layer4's 1×1 maps; both are read from the keys."""
    ours = create_model("resnet18_niff", num_classes=10, input_size=32, mlp="small", niff_on_1x1=True)
    assert any(n.startswith("layer4.1") for n, _ in niff_layers(ours))
    theirs = {src: ours.state_dict()[key] for key, src in reference_key_map(ours).items()}
    torch.save({"model": theirs}, tmp_path / "their_r18.pth")
    res = _cli(
        "import",
        tmp_path / "their_r18.pth",
        "--model",
        "resnet18_niff",
        "--num-classes",
        10,
        "--input-size",
        32,
        "--out",
        tmp_path / "imp",
    )
    assert res.exit_code == 0, res.output
    got = load_checkpoint(tmp_path / "imp")
    assert got.niff_config["mlp"]["hidden"] == [8, 4] and got.niff_config.get("niff_on_1x1") is True
    assert [n for n, _ in niff_layers(got)] == [n for n, _ in niff_layers(ours)]
    assert isinstance(got.layer4[1].conv1, DepthwiseNIFF)


def test_files_inside_a_run_folder_stand_for_its_model(reference_run, tmp_path):
    out = reference_run["out"]
    for target in (out / "model.safetensors", out / "train_state.pt"):
        res = _cli("mass", target, "--view", "summary", "--format", "csv", "-q")
        assert res.exit_code == 0, (target, res.output)
        # the file stands for its run folder: the run's init/ is the initialisation reference
        assert pd.read_csv(io.StringIO(res.stdout))["init"].notna().all(), target
    # The training state holds the final weights of the finished run.
    assert _same_weights(load_checkpoint(out / "train_state.pt"), load_checkpoint(out))
    bad = tmp_path / "train_state.pt"
    bad.write_bytes(b"junk")
    res = _cli("mass", bad)
    assert res.exit_code == 2 and "cannot read the training state" in res.output


def test_import_state_dict_api_reads_safetensors(tmp_path):
    from safetensors.torch import save_file

    model = create_model("resnet18", num_classes=10, in_chans=1, stem="cifar")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    got = import_state_dict(tmp_path / "w.safetensors", "resnet18", num_classes=10, in_chans=1, stem="cifar")
    assert _same_weights(got, model)
    shutil.rmtree(tmp_path)

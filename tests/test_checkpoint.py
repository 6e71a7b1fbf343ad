"""Checkpoints: round trips, pickle safety, import of the authors' reference checkpoints,
and the training metadata ``describe`` reports."""

from __future__ import annotations

import argparse
import csv
import json
import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from click.testing import CliRunner

from niff_analysis.checkpoint import load_checkpoint, read_config, save_checkpoint
from niff_analysis.cli import main
from niff_analysis.errors import CheckpointError
from niff_analysis.imports import import_reference_checkpoint, read_torch_pickle, reference_key_map
from niff_analysis.models import create_model


def _outputs(model, seed=0):
    x = torch.randn(
        2,
        model.niff_config["in_chans"],
        *model.niff_config["input_size"],
        generator=torch.Generator().manual_seed(seed),
    )
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.slow  # a training run
def test_round_trip_directory_and_single_file(tmp_path, reference_run):
    trained = load_checkpoint(reference_run["out"])
    for target in (tmp_path / "ckpt", tmp_path / "one.safetensors"):
        save_checkpoint(trained, target, dataset="fashion-mnist", note="copy")
        again = load_checkpoint(target)
        assert torch.equal(_outputs(trained), _outputs(again))
        a, b = trained.state_dict(), again.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        cfg = read_config(target)
        assert cfg["architecture"] == "resnet18_niff" and cfg["note"] == "copy"
        assert cfg["layers"] == trained.niff_checkpoint["layers"]


def test_pt_files_are_not_checkpoints_and_point_to_the_importer(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"model": create_model("resnet18", num_classes=10).state_dict()}, path)
    with pytest.raises(CheckpointError, match="niff-analyze import PATH"):
        load_checkpoint(path)


class _Hostile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))  # would create a file if ever unpickled


def test_pickles_are_read_weights_only(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pt"
    torch.save({"model": {}, "payload": _Hostile(marker)}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_torch_pickle(path)
    with pytest.raises(CheckpointError):
        import_reference_checkpoint(path, "resnet18_niff")
    assert not marker.exists()
    # Their training script stores its arguments as an argparse.Namespace: that is allowed.
    ok = tmp_path / "ok.pt"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1), "epoch": 3}, ok)
    assert read_torch_pickle(ok)["args"].lr == 0.1


# ----------------------------------------------------------------------------- reference import
def _their_split_forward(x, sd, prefix, n, act=F.silu):
    """The published forward of ``nn.Sequential(FreqConv_DW_fft, FreqConv_1x1_ifft)``
    (GeJulia/NIFF fft_big.py / fft_small.py), re-implemented: MLP of 1×1 convs on the mask
    ``arange(-n/2, n/2)``, ``fftshift``/``ifftshift`` over *all* dims, Linear on real/imag."""
    c = torch.arange(-(n / 2), n / 2, dtype=x.dtype)
    mask = torch.cat([c[None, :].repeat(n, 1).unsqueeze(0), c[:, None].repeat(1, n).unsqueeze(0)], 0)

    def mlp(kind):
        h, k = mask.unsqueeze(0), 1
        while f"{prefix}.0.mlp_{kind}.layer_mpl{k}.weight" in sd:
            if k > 1:
                h = act(h)
            h = F.conv2d(
                h,
                sd[f"{prefix}.0.mlp_{kind}.layer_mpl{k}.weight"].to(x.dtype),
                sd[f"{prefix}.0.mlp_{kind}.layer_mpl{k}.bias"].to(x.dtype),
            )
            k += 1
        return h

    spec = torch.fft.fftshift(torch.fft.fft2(x))
    spec = torch.complex(mlp("real"), mlp("imag")) * spec
    lin = sd[f"{prefix}.1.mlp.weight"].to(x.dtype)
    spec = spec.permute(0, 2, 3, 1)
    spec = torch.complex(spec.real @ lin.T, spec.imag @ lin.T).permute(0, 3, 1, 2)
    return torch.fft.ifft2(torch.fft.ifftshift(spec)).real


def _their_resnet18_state(num_classes=10) -> dict:
    """A state dict laid out like their ResNet-18 (resnet_fft_splitconv.py): every stride-1 3×3
    conv is ``Sequential(FreqConv_DW_fft, FreqConv_1x1_ifft)`` with the `big` MLP; the rest
    keeps torchvision's names. Random values, so every tensor is distinguishable."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in torchvision.models.resnet18(num_classes=num_classes).state_dict().items():
        m = re.fullmatch(r"(layer(\d)\.(\d)\.conv(\d))\.weight", k)
        if m and not (m[2] != "1" and m[3] == "0" and m[4] == "1"):  # not the strided conv1
            cout, cin = v.shape[:2]
            sizes = [2, 16, 128, 32, cin]
            for kind in ("real", "imag"):
                for j in range(4):
                    sd[f"{m[1]}.0.mlp_{kind}.layer_mpl{j + 1}.weight"] = (
                        torch.randn(sizes[j + 1], sizes[j], 1, 1, generator=g) * 0.3
                    )
                    sd[f"{m[1]}.0.mlp_{kind}.layer_mpl{j + 1}.bias"] = torch.randn(sizes[j + 1], generator=g) * 0.1
            sd[f"{m[1]}.1.mlp.weight"] = torch.randn(cout, cin, generator=g) * 0.1
        elif k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(v.shape, generator=g)
    return sd


@pytest.fixture(scope="module")
def reference_checkpoint(tmp_path_factory):
    theirs = _their_resnet18_state()
    path = tmp_path_factory.mktemp("ref") / "checkpoint-best.pth"
    # Their training script (ConvNeXt's) saves model/optimizer/epoch/args; DDP adds `module.`.
    torch.save(
        {
            "model": {f"module.{k}": v for k, v in theirs.items()},
            "epoch": 299,
            "args": argparse.Namespace(model="resnet18", lr=4e-3),
        },
        path,
    )
    return path, theirs


def test_import_reference_resnet18_matches_their_forward(reference_checkpoint):
    path, theirs = reference_checkpoint
    model = import_reference_checkpoint(path, "resnet18_niff", num_classes=10).double()
    ours = model.state_dict()
    for key in (
        "conv1.weight",
        "layer2.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "fc.weight",
        "layer3.1.bn2.running_var",
        "layer4.1.bn1.num_batches_tracked",
    ):
        assert torch.equal(ours[key], theirs[key].to(ours[key].dtype)), key
    # Every NIFF layer of the model computes exactly what their layer computes: even maps
    # (layer1, 56×56) and odd maps (layer4, 7×7: half-integer grid folded into the bias).
    for name, size in (("layer1.0.conv1", 56), ("layer3.1.conv2", 14), ("layer4.1.conv2", 7)):
        layer = model.get_submodule(name)
        assert tuple(layer.fmap) == (size, size)
        x = torch.randn(
            2, layer.in_channels, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(size)
        )
        expected = _their_split_forward(x, {k: v.double() for k, v in theirs.items()}, name, size)
        # Float32 weights: the folded odd-size biases are rounded to float32 (~1e-7 relative);
        # without the grid fold and channel rolls the layers differ by O(1).
        err = (layer(x) - expected).abs().max() / expected.abs().max()
        assert err < (1e-12 if size % 2 == 0 else 1e-6), (name, err.item())
    assert model.niff_checkpoint["imported_from"].startswith("GeJulia/NIFF")


def test_import_reference_densenet_layer_with_fewer_outputs_than_inputs(tmp_path):
    """DenseNet's 3×3 (128 → 32) on an odd map: channel rolls differ for inputs and outputs."""
    kw = dict(num_classes=10, input_size=96)  # maps 24, 12, 6, 3: block 4 is odd-sized
    ref = create_model("densenet121_niff", **kw)
    own = ref.state_dict()
    g = torch.Generator().manual_seed(1)
    theirs = {}
    for ours_key, their_key in reference_key_map(ref).items():
        t = own[ours_key]
        shape = t.shape
        if ".mlp_" in their_key and their_key.endswith("weight"):
            shape = (*t.shape, 1, 1)  # their MLP layers are 1×1 convolutions
        elif their_key.endswith(".mlp.weight"):
            shape = t.shape[:2]  # their channel mixing is an nn.Linear
        theirs[their_key] = t.clone() if not t.is_floating_point() else torch.randn(shape, generator=g) * 0.3
    path = tmp_path / "densenet.pt"
    torch.save(theirs, path)  # a bare state dict works too
    model = import_reference_checkpoint(path, "densenet121_niff", **kw).double()
    name = "features.denseblock4.denselayer1.conv2"
    layer = model.get_submodule(name)
    assert (layer.in_channels, layer.out_channels, tuple(layer.fmap)) == (128, 32, (3, 3))
    x = torch.randn(3, 128, 3, 3, dtype=torch.float64, generator=g)
    expected = _their_split_forward(x, {k: v.double() for k, v in theirs.items()}, name, 3)
    err = (layer(x) - expected).abs().max() / expected.abs().max()
    assert err < 1e-6, err.item()


@pytest.mark.slow  # a training run
def test_import_reference_rejects_mismatches(tmp_path, reference_checkpoint):
    path, theirs = reference_checkpoint
    with pytest.raises(CheckpointError, match=r"missing key\(s\)"):
        import_reference_checkpoint(path, "resnet50_niff", num_classes=10)
    with pytest.raises(CheckpointError, match="wrong-sized"):
        import_reference_checkpoint(path, "resnet18_niff", num_classes=100)
    with pytest.raises(CheckpointError, match="no state dict under 'model_ema'"):
        import_reference_checkpoint(path, "resnet18_niff", key="model_ema", num_classes=10)
    with pytest.raises(CheckpointError, match="unknown model"):
        import_reference_checkpoint(path, "resnet19_niff")


@pytest.mark.slow  # a training run and the CLI
def test_cli_import_reference_then_describe(tmp_path, reference_checkpoint):
    path, _ = reference_checkpoint
    out = tmp_path / "imported"
    runner = CliRunner()
    res = runner.invoke(
        main, ["import-reference", str(path), "--model", "resnet18_niff", "--num-classes", "10", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    model = load_checkpoint(out)
    assert torch.equal(_outputs(model), _outputs(import_reference_checkpoint(path, "resnet18_niff", num_classes=10)))
    info = json.loads(runner.invoke(main, ["describe", str(out), "--format", "json"]).stdout)
    assert info["architecture"] == "resnet18_niff" and info["model_kwargs"]["num_classes"] == 10
    bad = runner.invoke(
        main, ["import-reference", str(tmp_path / "none.pt"), "--model", "resnet18_niff", "--out", str(tmp_path / "x")]
    )
    assert bad.exit_code != 0 and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("error:") and "Traceback" not in bad.stderr


def test_describe_reports_training_metadata(reference_run):
    res = CliRunner().invoke(main, ["describe", str(reference_run["out"]), "--format", "json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    cfg = reference_run["cfg"]
    assert info["dataset"] == "fashion-mnist" and info["epochs"] == cfg.epochs and info["seed"] == cfg.seed
    assert 0.0 <= info["test_acc"] <= 1.0
    with open(reference_run["out"] / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    assert info["test_acc"] == pytest.approx(float(last["test_acc"]))
    assert info["recipe"]["lr"] == cfg.lr and info["recipe"]["schedule"] == "cosine"


def test_weights_from_another_save_are_detected(tmp_path):
    """A crash between the two atomic writes of a directory checkpoint (new weights, old
    config) is caught by the weights hash the config records."""
    from niff_analysis import create_model
    from niff_analysis.checkpoint import load_checkpoint, save_checkpoint
    from niff_analysis.errors import CheckpointError

    torch.manual_seed(0)
    a = save_checkpoint(create_model("resnet18_niff", num_classes=3, in_chans=1, stem="cifar"), tmp_path / "a")
    b = save_checkpoint(create_model("resnet18_niff", num_classes=3, in_chans=1, stem="cifar"), tmp_path / "b")
    load_checkpoint(a)
    (a / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="does not match the hash"):
        load_checkpoint(a)

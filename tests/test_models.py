"""Model zoo by conversion (issue 3): paper-exact parameter counts, forward/backward on every
registered model, conversion of unseen CNNs, and the describe CLI."""

import json

import pytest
import torch
import torchvision.models as tvm
from click.testing import CliRunner
from torch import nn

from niff_analysis import create_model, list_models, to_niff, to_separated
from niff_analysis.cli import main
from niff_analysis.layers import DepthwiseNIFF, FreqPointwise, FullNIFF
from niff_analysis.models import ConversionError, UnknownModelError, niff_layers


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# The paper's Table 2 (ImageNet-1k, 1000 classes) and Table A1 (ImageNet-100): every row the
# registry can build. Values are copied from the paper, never used by the code itself.
PAPER_COUNTS = [
    ("resnet18", 1000, 11_689_512),
    ("resnet18_niff_full", 1000, 21_127_320),
    ("resnet18_sep", 1000, 3_327_400),
    ("resnet18_niff", 1000, 3_660_360),
    ("resnet50", 1000, 25_557_032),
    ("resnet50_niff_full", 1000, 33_778_328),
    ("resnet50_sep", 1000, 18_275_688),
    ("resnet50_niff", 1000, 18_605_000),
    ("resnet101", 1000, 44_549_160),
    ("resnet101_sep", 1000, 28_394_088),
    ("resnet101_niff", 1000, 29_187_432),
    ("densenet121", 1000, 7_978_856),
    ("densenet121_niff_full", 1000, 10_119_752),
    ("densenet121_sep", 1000, 6_145_128),
    ("densenet121_niff", 1000, 6_159_512),
    ("convnext_tiny", 1000, 28_589_128),
    ("convnext_tiny_niff", 1000, 28_890_664),
    ("mobilenet_v2", 1000, 3_504_872),
    ("mobilenet_v2_niff", 1000, 3_512_560),
    ("resnet18_niff", 100, 3_198_660),
    ("resnet18_niff_full", 100, 20_665_620),
    ("resnet101_niff_full", 100, 60_954_180),
    ("densenet121_niff", 100, 5_237_012),
    ("mobilenet_v2_niff", 100, 2_359_660),
    ("mobilenet_v3_small", 100, 1_620_356),
]


@pytest.mark.parametrize("name,classes,expected", PAPER_COUNTS)
def test_parameter_counts_match_the_paper(name, classes, expected):
    # A NIFF layer's parameters (its MLP) do not depend on the map size, only on which layers
    # are converted, and at 64 px every map is still ≥ 2×2 as at 224 px (the test below):
    # the dry forward at 64 px is ~12× cheaper.
    assert n_params(create_model(name, num_classes=classes, input_size=64)) == expected


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18_niff_full", "densenet121_niff", "convnext_tiny_niff", "mobilenet_v2_niff"])
def test_parameter_counts_do_not_depend_on_the_input_size(name):
    models = {size: create_model(name, num_classes=10, input_size=size) for size in (64, 224)}
    assert n_params(models[64]) == n_params(models[224])
    kinds = {size: [type(m).__name__ for m in model.modules()] for size, model in models.items()}
    assert kinds[64] == kinds[224]  # the same layers converted


def test_cifar_resnet18_baseline_count():
    assert n_params(create_model("resnet18", num_classes=10, stem="cifar")) == 11_173_962


def test_registry_listing_and_wildcards():
    names = list_models()
    for arch in (
        "resnet18",
        "resnet50",
        "resnet101",
        "densenet121",
        "convnext_tiny",
        "mobilenet_v2",
        "mobilenet_v3_small",
    ):
        assert arch in names and f"{arch}_niff" in names
    assert list_models("resnet*_niff") == ["resnet101_niff", "resnet18_niff", "resnet50_niff"]
    assert "convnext_tiny_niff_full" not in names  # the paper has no such variant
    assert list_models("nothing*") == []
    with pytest.raises(UnknownModelError, match="unknown model 'resnet19'"):
        create_model("resnet19")


@pytest.mark.slow  # every registered model
@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_chans=2, input_size=64)
    x = torch.randn(2, 2, 64, 64)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    # On maps of size ≤ 2 every frequency is its own negative, so the Hermitian part of the
    # filter is real and the imaginary MLP provably has no effect: exactly zero gradient there.
    no_imag = {n for n, m in niff_layers(model) if max(m.fmap) <= 2}
    scale = max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None)
    for pname, p in model.named_parameters():
        layer, _, rest = pname.partition(".imag.")
        if rest and (layer in no_imag or rest.endswith(f"{len(model.get_submodule(layer).imag) - 1}.bias")):
            # ... and a constant imaginary response (last imag bias) is anti-Hermitian: no
            # effect, so its gradient is zero up to float rounding.
            assert p.grad is None or p.grad.abs().max() <= 1e-5 * scale, pname
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_layers_know_their_name_and_feature_map():
    model = create_model("resnet50_niff", num_classes=10, input_size=(64, 96))
    layers = dict(niff_layers(model, include_pointwise=True))
    assert layers["layer1.0.conv2"].fmap == (16, 24)
    assert "layer1.0.conv2.pointwise" not in layers  # part of the split layer
    assert layers["layer1.0.conv2"].pointwise.layer_name == "layer1.0.conv2.pointwise"
    assert layers["layer4.2.conv2"].fmap == (2, 3)
    assert isinstance(layers["layer1.0.conv1"], FreqPointwise)  # bottleneck 1×1
    assert isinstance(layers["layer1.0.downsample.0"], FreqPointwise)  # stride-1 shortcut
    assert isinstance(model.layer2[0].downsample[0], nn.Conv2d)  # strided shortcut kept
    assert isinstance(model.layer2[0].conv2, nn.Conv2d)  # torchvision: stride on the 3×3, kept
    layers["layer1.0.conv2.pointwise"] = layers["layer1.0.conv2"].pointwise
    for name, layer in layers.items():
        assert layer.layer_name == name and model.get_submodule(name) is layer


def test_rules_per_architecture():
    mb = create_model("mobilenet_v2_niff", input_size=64)
    kinds = {type(m) for _, m in niff_layers(mb, include_pointwise=True)}
    assert kinds == {DepthwiseNIFF, FreqPointwise}
    cx = create_model("convnext_tiny_niff", input_size=64)
    block = cx.features[1][0].block
    assert isinstance(block[0], DepthwiseNIFF) and isinstance(block[3], FreqPointwise)
    assert block[3].channels_last
    full = create_model("resnet18_niff_full", input_size=64)
    assert all(isinstance(m, FullNIFF) for _, m in niff_layers(full))
    assert create_model("resnet18_niff", stem="cifar").layer1[0].conv1.mlp_config.hidden == (32,)


def test_pointwise_conversion_is_an_identity():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 4, 1, groups=4, bias=False),
    ).eval()
    x = torch.randn(2, 3, 16, 12)
    ref = net(x)
    to_niff(net, (16, 12))
    assert isinstance(net[2], FreqPointwise) and isinstance(net[0], nn.Conv2d)
    assert torch.allclose(net(x), ref, atol=1e-6)
    assert len(net.niff_conversion.replaced) == 2 and net.niff_conversion.kept[0]["reason"] == "strided"


def test_separated_baseline_structure():
    model = to_separated(tvm.resnet18(weights=None), 64)
    sep = model.layer1[0].conv1
    assert isinstance(sep, nn.Sequential) and sep[0].groups == 64 and sep[0].bias is None
    assert sep[1].kernel_size == (1, 1) and sep[1].bias is None


@pytest.mark.parametrize("name", ["efficientnet_b0", "regnet_x_400mf", "shufflenet_v2_x0_5"])
def test_converts_cnns_it_has_never_seen(name):
    model = getattr(tvm, name)(weights=None).eval()
    to_niff(model, 64)
    report = model.niff_conversion
    assert report.replaced and "replaced" in str(report)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_conversion_refuses_clearly():
    with pytest.raises(ConversionError, match="input size 8x8 is too small"):
        to_niff(tvm.resnet18(weights=None), 8)  # too small for the downsampling
    with pytest.raises(ConversionError, match="layer3.0.conv1"):
        create_model("resnet18", input_size=8)  # baselines are checked too
    with pytest.raises(ConversionError, match="no convolution could be converted"):
        to_niff(nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.Flatten()), 32)
    with pytest.raises(ConversionError, match="unknown NIFF variant"):
        to_niff(tvm.resnet18(weights=None), 64, variant="diagonal")


def test_describe_json_structure():
    res = CliRunner().invoke(main, ["describe", "resnet50_niff", "--format", "json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["architecture"] == "resnet50_niff"
    assert info["num_params"] == 18_605_000 and isinstance(info["num_params"], int)
    kinds = {layer["kind"] for layer in info["layers"]}
    assert kinds == {"split", "pointwise"}
    first = info["layers"][0]
    assert set(first) >= {"name", "kind", "in_channels", "out_channels", "fmap"}
    l1 = next(layer for layer in info["layers"] if layer["name"] == "layer1.0.conv2")
    assert l1["fmap"] == [56, 56] and l1["in_channels"] == 64


def test_models_and_describe_cli_errors():
    runner = CliRunner()
    res = runner.invoke(main, ["models", "--format", "json"])
    assert res.exit_code == 0 and "densenet121_niff" in [r["name"] for r in json.loads(res.output)]
    res = runner.invoke(main, ["describe", "resnet19"])
    assert res.exit_code != 0 and "unknown model 'resnet19'" in res.output
    res = runner.invoke(main, ["describe", "resnet18_niff", "--input-size", "8"])
    assert res.exit_code != 0 and "input size 8x8" in res.output
    res = runner.invoke(main, ["describe", "resnet18_niff", "--num-classes", "0"])
    assert res.exit_code != 0 and "positive" in res.output


def test_describe_lists_which_plain_convs_are_analysed_and_why_not():
    """A plain CNN's describe names every conv the analyses take, and the reason for each they
    skip; the analysed ones are exactly the layers extract_kernels returns."""
    from niff_analysis.analysis import extract_kernels

    runner = CliRunner()
    res = runner.invoke(main, ["describe", "resnet18", "--stem", "cifar", "--input-size", "32", "--format", "json"])
    assert res.exit_code == 0, res.output
    convs = {c["name"]: c for c in json.loads(res.output)["convs"]}
    model = create_model("resnet18", stem="cifar", input_size=32)
    assert [n for n, c in convs.items() if c["analysed"]] == [lk.name for lk in extract_kernels(model)]
    assert convs["layer1.0.conv1"] == dict(
        name="layer1.0.conv1",
        kernel="3x3",
        stride="1",
        groups=1,
        kind="dense",
        fmap=[32, 32],
        analysed=True,
        reason=None,
    )
    assert convs["layer2.0.conv1"]["reason"] == "stride 2 (input and output maps differ)"
    assert convs["layer2.0.downsample.0"]["reason"] == "1x1 (no spatial extent)"
    assert len(convs) == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())

    res = runner.invoke(main, ["describe", "resnet18", "--stem", "cifar", "--input-size", "32"])
    assert "(no NIFF layers)" in res.output
    assert "plain convolutions: 14 of 20 analysed by every analysis command (3 1x1 convs" in res.output
    assert "layer3.0.conv1" in res.output and "1x1 (no spatial extent)" not in res.output
    res = runner.invoke(main, ["describe", "resnet18_niff", "--stem", "cifar", "--input-size", "32"])
    # Its stem conv is converted too; the strided convs stay plain, on maps the dry forward records.
    assert "plain convolutions: 0 of 6 analysed with --include-conv" in res.output
    assert "layer4.0.conv1    3x3      2       1 dense   8x8       no stride 2" in res.output

"""The knobs of the controlled kernel-size study: model width, MLP bias decay, content scale."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import tiny_config
from niff_analysis import create_model
from niff_analysis.checkpoint import initial_model, load_checkpoint, save_checkpoint
from niff_analysis.errors import NiffError
from niff_analysis.train.batches import load_data
from niff_analysis.train.data import load_fashion_mnist, scale_content
from niff_analysis.train.trainer import param_groups

CIFAR = dict(num_classes=10, in_chans=1, stem="cifar", input_size=32)


@pytest.mark.parametrize("name", ["resnet18_niff", "resnet18"])
def test_width_64_is_todays_model_bit_for_bit(name):
    torch.manual_seed(0)
    today = create_model(name, **CIFAR)
    torch.manual_seed(0)
    wide = create_model(name, **CIFAR, width=64)
    a, b = today.state_dict(), wide.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert "width" not in wide.niff_config  # configs of the paper's width are unchanged


def test_width_64_loads_the_bundled_default_unchanged():
    model = load_checkpoint()
    rebuilt = initial_model("resnet18_niff", dict(model.niff_checkpoint["model_kwargs"], width=64), 0)
    assert set(rebuilt.state_dict()) == set(model.state_dict())
    assert all(rebuilt.state_dict()[k].shape == v.shape for k, v in model.state_dict().items())


@pytest.mark.parametrize("width", [16, 8])
def test_narrow_resnet_scales_every_stage_and_round_trips(width, tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet18_niff", **CIFAR, width=width)
    assert model.conv1.out_channels == width and model.bn1.num_features == width
    for i, stage in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
        assert stage[-1].bn2.num_features == width * 2**i
    assert model.fc.in_features == 8 * width
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    # The stem and classifier are initialised as torchvision's ResNet initialises them.
    assert torch.equal(model.bn1.weight, torch.ones(width)) and torch.equal(model.bn1.bias, torch.zeros(width))
    save_checkpoint(model, tmp_path / "ck", epochs=0)
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["model_kwargs"]["width"] == width
    again = load_checkpoint(tmp_path / "ck")
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())


def test_bottleneck_resnet_takes_a_width():
    model = create_model("resnet50", num_classes=10, in_chans=3, stem="cifar", width=16)
    assert model.fc.in_features == 8 * 16 * 4 and model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_width_is_refused_where_it_means_nothing():
    with pytest.raises(ValueError, match="ResNets only"):
        create_model("mobilenet_v2_niff", num_classes=10, width=16)
    with pytest.raises(ValueError, match="positive integer"):
        create_model("resnet18", width=0)


def test_mlp_bias_decay_puts_the_mlp_biases_under_the_mlp_weight_decay(tmp_path):
    model = create_model("resnet18_niff", **CIFAR, width=8)
    mlp_bias = {id(p) for n, p in model.named_parameters() if (".real." in n or ".imag." in n) and p.ndim == 1}
    for flag, expected in ((False, 0.0), (True, 0.1)):
        groups = param_groups(model, tiny_config(tmp_path, mlp_weight_decay=0.1, mlp_bias_decay=flag))
        g = next(g for g in groups if g["name"] == "mlp_no_decay")
        assert {id(p) for p in g["params"]} == mlp_bias and g["weight_decay"] == expected
        other = next(g for g in groups if g["name"] == "no_decay")  # BatchNorm and fc biases never decay
        assert other["weight_decay"] == 0.0


def test_scale_content_halves_the_garment_on_the_same_canvas(fmnist_dir):
    images = load_fashion_mnist(fmnist_dir, "test").images[:64]
    small = load_fashion_mnist(fmnist_dir, "test", content_scale=0.5).images[:64]
    assert small.shape == images.shape == (64, 1, 32, 32) and small.dtype == torch.uint8
    raw = images[:, :, 2:30, 2:30]
    assert scale_content(raw, 1.0) is raw

    def extent(x):  # rows and columns holding any ink, over the batch
        ink = (x > 0).any(0)[0]
        r, c = np.flatnonzero(ink.any(1).numpy()), np.flatnonzero(ink.any(0).numpy())
        return (r[0], r[-1] + 1), (c[0], c[-1] + 1)

    assert extent(images) == ((2, 30), (2, 30)) and extent(small) == ((9, 23), (9, 23))
    # About a quarter of the ink, and the same pixels as torch's own antialiased resize.
    assert 0.23 < small.double().sum() / images.double().sum() < 0.27
    ref = torch.nn.functional.interpolate(raw.float(), size=(14, 14), mode="bilinear", antialias=True)
    assert torch.equal(small[:, :, 9:23, 9:23], ref.round().clamp(0, 255).to(torch.uint8))
    # The same on a canvas that is not padded afterwards (CIFAR-10's 32x32 images).
    assert extent(scale_content(torch.full((1, 3, 32, 32), 200, dtype=torch.uint8), 0.5)) == ((8, 24), (8, 24))


def test_content_scale_changes_the_data_but_not_the_model(tmp_path, fmnist_dir):
    a, b = tiny_config(tmp_path / "a"), tiny_config(tmp_path / "b", content_scale=0.5)
    (ta, _, ka), (tb, _, kb) = load_data(a), load_data(b)
    assert ka == kb and ta.images.shape == tb.images.shape and not torch.equal(ta.images, tb.images)
    assert torch.equal(tb.images, load_fashion_mnist(fmnist_dir, "train", content_scale=0.5).images[:32])
    ma, mb = initial_model(a.model, ka, 0), initial_model(b.model, kb, 0)
    assert all(torch.equal(ma.state_dict()[k], v) for k, v in mb.state_dict().items())
    with pytest.raises(NiffError, match="content_scale must be in"):
        tiny_config(tmp_path / "c", content_scale=1.5).validate()


def test_knobs_are_recipe_keys_recorded_in_the_checkpoint(tmp_path, fmnist_dir):
    from niff_analysis.train import train

    cfg = tiny_config(
        tmp_path / "run",
        epochs=1,
        model_kwargs=dict(width=8),
        mlp_bias_decay=True,
        content_scale=0.5,
        mlp_weight_decay=0.1,
    )
    train(cfg)
    conf = json.loads((tmp_path / "run" / "config.json").read_text())
    assert conf["recipe"]["mlp_bias_decay"] is True and conf["recipe"]["content_scale"] == 0.5
    assert conf["model_kwargs"]["width"] == 8
    state = torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)
    assert state["recipe"]["mlp_bias_decay"] is True and state["recipe"]["content_scale"] == 0.5
    # A resume with another content scale is refused (it would train another recipe).
    from niff_analysis.train import trainer

    with pytest.raises(NiffError, match="content_scale"):
        trainer.train(
            tiny_config(
                tmp_path / "run",
                epochs=1,
                model_kwargs=dict(width=8),
                mlp_bias_decay=True,
                content_scale=0.25,
                mlp_weight_decay=0.1,
            ),
            resume=True,
        )
    # The default recipe records neither key, so today's checkpoints stay as they are.
    train(tiny_config(tmp_path / "plain", epochs=1, model_kwargs=dict(width=8)))
    plain = json.loads((tmp_path / "plain" / "config.json").read_text())["recipe"]
    assert "mlp_bias_decay" not in plain and "content_scale" not in plain
    assert load_file(str(tmp_path / "plain" / "model.safetensors"))["conv1.weight"].shape[0] == 8


def test_a_checkpoint_is_measured_on_its_images_as_it_saw_them(tmp_path, fmnist_dir):
    """The ERF's images and evaluate's test set of a --content-scale run show the content at its
    scale (another dataset than its own at scale 1); evaluate reproduces what the run recorded."""

    from niff_analysis.checkpoint import Checkpoint
    from niff_analysis.data import dataset_images
    from niff_analysis.pipeline import run
    from niff_analysis.tables import Erf, Evaluate
    from niff_analysis.train import train

    train(tiny_config(tmp_path / "half", epochs=1, model_kwargs=dict(width=8), content_scale=0.5))
    train(tiny_config(tmp_path / "full", epochs=1, model_kwargs=dict(width=8)))
    half, full = Checkpoint.open(tmp_path / "half"), Checkpoint.open(tmp_path / "full")
    assert half.config.content_scale == 0.5 and full.config.content_scale == 1.0
    assert torch.equal(half.images(4), dataset_images("fashion-mnist", 4, content_scale=0.5))
    assert torch.equal(full.images(4), dataset_images("fashion-mnist", 4))
    assert not torch.equal(half.images(4), full.images(4))
    # both in one run (full first): the ERF's image cache keeps the two scales apart
    erf = Erf(images=2, thresholds=[50, 99], layers=["layer1"])
    run([tmp_path / "full", tmp_path / "half"], erf)
    cached = list(erf._images.values())  # the images each was measured on, loaded once per kind
    assert len(cached) == 2 and torch.equal(cached[0], full.images(2)) and torch.equal(cached[1], half.images(2))
    ev = Evaluate(images=16, data_dir=fmnist_dir)
    out = run([tmp_path / "half", tmp_path / "full"], ev)[ev].set_index("checkpoint")
    assert list(out["content_scale"]) == [0.5, 1.0]
    recorded = {n: json.loads((tmp_path / n / "config.json").read_text())["test_loss"] for n in ("half", "full")}
    for name in ("half", "full"):
        assert out.loc[name, "loss"] == pytest.approx(recorded[name], rel=1e-6)
        assert out.loc[name, "recorded_acc"] == out.loc[name, "acc"]

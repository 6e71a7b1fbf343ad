"""A checkpoint's typed identity (CheckpointConfig, ModelConfig) and the Checkpoint object:
read once, equal to what the files record, and the one source of the model, its
initialisation and its test images."""

from __future__ import annotations

import json

import pytest
import torch

from niff_analysis.checkpoint import (
    DEFAULT_CHECKPOINT,
    Checkpoint,
    CheckpointConfig,
    initial_model,
    load_checkpoint,
    load_initial,
    save_checkpoint,
)
from niff_analysis.data import load_fashion_mnist
from niff_analysis.errors import CheckpointError, DataError
from niff_analysis.io import file_sha256
from niff_analysis.models import ModelConfig, build_model, create_model


def _recorded(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_typed_identity_is_what_the_config_records():
    raw = _recorded(DEFAULT_CHECKPOINT)
    cfg = CheckpointConfig.read(DEFAULT_CHECKPOINT)
    kw = raw["model_kwargs"]
    assert cfg.architecture == raw["architecture"] and cfg.model_kwargs == kw
    assert cfg.input_size == tuple(kw["input_size"]) and isinstance(cfg.input_size, tuple)
    assert (cfg.in_chans, cfg.stem, cfg.mlp, cfg.mode) == (kw["in_chans"], kw["stem"], kw["mlp"], kw["mode"])
    assert (cfg.dataset, cfg.seed, cfg.epochs) == (raw["dataset"], raw["seed"], raw["epochs"])
    assert cfg.recipe == raw["recipe"]
    assert cfg.test_acc == raw["test_acc"] and cfg.test_loss == raw["test_loss"]
    assert cfg.fmaps == {d["name"]: tuple(d["fmap"]) for d in raw["layers"]} and cfg.fmaps
    assert cfg.provenance["versions"] == raw["versions"] and cfg.path == str(DEFAULT_CHECKPOINT)
    # As a mapping it is the recorded config plus path and sha256 (the dict of earlier versions).
    assert dict(cfg) == dict(raw, path=str(DEFAULT_CHECKPOINT), sha256=None)


def test_a_loaded_model_carries_its_identity_with_the_weights_hash():
    ck = Checkpoint.open(DEFAULT_CHECKPOINT)
    assert ck.config.sha256 == file_sha256(DEFAULT_CHECKPOINT / "model.safetensors")
    model = ck.model()
    meta = model.niff_checkpoint
    assert isinstance(meta, CheckpointConfig) and meta.sha256 == ck.config.sha256
    assert meta["sha256"] == meta.sha256 and meta["test_acc"] == _recorded(DEFAULT_CHECKPOINT)["test_acc"]
    assert _same_weights(model, load_checkpoint(DEFAULT_CHECKPOINT))
    assert model.niff_config == meta.model and dict(model.niff_config)["name"] == meta.architecture
    # The weights file of a checkpoint folder stands for the folder.
    assert Checkpoint.open(DEFAULT_CHECKPOINT / "model.safetensors").path == DEFAULT_CHECKPOINT


def test_a_wrong_type_is_refused_once_naming_the_field(tmp_path):
    raw = _recorded(DEFAULT_CHECKPOINT)
    for key, value in (("seed", "zero"), ("epochs", 1.5), ("dataset", 3), ("recipe", [1]), ("test_acc", "high")):
        with pytest.raises(CheckpointError, match=f"config field {key} must be"):
            CheckpointConfig.parse(dict(raw, **{key: value}), "hand-edited")
    with pytest.raises(CheckpointError, match="config field seeed is unknown"):
        CheckpointConfig.parse(dict(raw, seeed=0), "hand-edited")
    assert CheckpointConfig.parse(dict(raw), "fine").seed == raw["seed"]


def test_initial_is_the_model_the_run_started_from(tmp_path):
    ck = Checkpoint.open(DEFAULT_CHECKPOINT)
    cfg = ck.config
    init = ck.initial()
    assert _same_weights(init, initial_model(cfg.architecture, cfg.model_kwargs, cfg.seed))
    assert init.niff_checkpoint.epochs == 0 and init.niff_checkpoint.sha256 is None
    assert init.niff_checkpoint.path.endswith(f"(initialisation rebuilt from seed {cfg.seed})")
    assert _same_weights(load_initial(DEFAULT_CHECKPOINT), init)
    # A run folder's own init/ is preferred, and an initialisation has none itself.
    run = tmp_path / "run"
    other = create_model(cfg.architecture, **cfg.model_kwargs)
    save_checkpoint(other, run / "init", dataset=cfg.dataset, epochs=0, seed=cfg.seed)
    save_checkpoint(ck.model(), run, dataset=cfg.dataset, epochs=cfg.epochs, seed=cfg.seed, recipe=cfg.recipe)
    assert _same_weights(Checkpoint.open(run).initial(), other)
    assert Checkpoint.open(run / "init").initial() is None
    # Saved by hand (no recipe): no run is known.
    save_checkpoint(ck.model(), tmp_path / "hand", epochs=3)
    assert Checkpoint.open(tmp_path / "hand").initial() is None


def test_images_are_the_recorded_datasets_test_images_as_the_trainer_normalises_them(fmnist_dir, tmp_path):
    ck = Checkpoint.open(DEFAULT_CHECKPOINT)
    got = ck.images(5, fmnist_dir)
    test = load_fashion_mnist(fmnist_dir, "test")
    assert ck.config.dataset == "fashion-mnist" and got.shape == (5, 1, *ck.config.input_size)
    mean, std = torch.tensor(test.mean).view(1, -1, 1, 1), torch.tensor(test.std).view(1, -1, 1, 1)
    expected = (test.images[:5].float() / 255 - mean) / std
    assert torch.allclose(got, expected, atol=1e-6)
    save_checkpoint(ck.model(), tmp_path / "nodata")
    with pytest.raises(DataError, match="records no dataset"):
        Checkpoint.open(tmp_path / "nodata").images(5)


def test_model_config_reads_registry_and_builder_models_alike():
    reg = create_model("resnet18_niff", num_classes=10, in_chans=1, stem="cifar", input_size=(16, 24))
    cfg = reg.niff_config
    assert isinstance(cfg, ModelConfig) and not cfg.is_builder
    assert (cfg.input_size, cfg.in_chans, cfg.num_classes, cfg.stem, cfg.mode) == ((16, 24), 1, 10, "cifar", "circular")
    assert cfg["input_size"] == [16, 24] and "width" not in cfg  # the mapping earlier versions attached
    torch.manual_seed(0)
    rebuilt = cfg.build()
    torch.manual_seed(0)
    assert _same_weights(
        rebuilt, create_model("resnet18_niff", num_classes=10, in_chans=1, stem="cifar", input_size=(16, 24))
    )
    tv = build_model("torchvision:resnet18", dict(num_classes=7), input_size=32, niff=dict(mlp="small"))
    tcfg = tv.niff_config
    assert tcfg.is_builder
    assert (tcfg.input_size, tcfg.num_classes, tcfg.stem, tcfg.mode) == ((32, 32), 7, None, "circular")
    assert tcfg.mlp == tcfg.kwargs["niff"]["mlp"] and tcfg.in_chans is None
    # The one default: a registered model without a recorded size runs at its stem's.
    assert ModelConfig("resnet18", {"stem": "cifar"}).input_size == (32, 32)
    assert ModelConfig("resnet18", {}).input_size == (224, 224)
    # A plain dict attribute (a model set up by hand, as earlier versions did) is read as one.
    plain = torch.nn.Conv2d(1, 1, 3)
    plain.niff_config = {"name": "resnet18", "input_size": [8, 8]}
    assert ModelConfig.of(plain) == ModelConfig("resnet18", {"input_size": [8, 8]})
    assert ModelConfig.of(torch.nn.Conv2d(1, 1, 3)) is None


def test_a_model_config_owns_its_arguments():
    kwargs = {"num_classes": 10, "mlp": {"hidden": [8]}}
    cfg = ModelConfig("resnet18_niff", kwargs)
    kwargs["mlp"]["hidden"].append(4)
    kwargs["num_classes"] = 3
    assert cfg.kwargs == {"num_classes": 10, "mlp": {"hidden": [8]}}
    with pytest.raises(AttributeError):
        cfg.architecture = "resnet50"

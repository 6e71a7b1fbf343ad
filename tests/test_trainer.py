"""The trainer: determinism, metrics and config files, every data set end to end, the
mixed-precision and compile wiring, and one-line errors."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from helpers import load_weights, recorded_states, tiny_config
from niff_analysis.checkpoint import load_checkpoint
from niff_analysis.cli import main
from niff_analysis.errors import NiffError
from niff_analysis.models import create_model
from niff_analysis.train import TrainConfig, evaluate, load_fashion_mnist, train
from niff_analysis.train.batches import first_samples as _first
from niff_analysis.train.batches import train_batches as _train_batches
from niff_analysis.train.data import TensorDataset, load_imagefolder, normalise
from test_data import _cifar_batch, image_tree  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow  # training runs: not in `make test-fast`


def test_same_seed_same_weights(tmp_path, reference_run):
    train(tiny_config(tmp_path / "again"))
    a, b = load_weights(tmp_path / "again"), load_weights(reference_run["out"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_data_order_is_seeded_and_split_across_ranks():
    data = TensorDataset(
        torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 1, 4, 4).clone(),
        torch.arange(40),
        (0.0,),
        (1.0,),
        tuple("abcdefghij"),
    )
    cfg = TrainConfig(batch_size=8, seed=0, augment=False)

    def order(seed, epoch, rank=0, world=1, start=0):
        cfg.seed = seed
        return [y.tolist() for _, _, y in _train_batches(data, cfg, epoch, rank, world, start)]

    assert order(0, 0) == order(0, 0) and order(0, 0) != order(1, 0) and order(0, 0) != order(0, 1)
    full = order(0, 3)
    assert len(full) == 5 and sorted(sum(full, [])) == list(range(40))
    for r0, r1, whole in zip(order(0, 3, 0, 2), order(0, 3, 1, 2), full):
        assert sorted(r0 + r1) == sorted(whole) and len(r0) == len(r1) == 4
    assert order(0, 3, start=2) == full[2:]


def test_metrics_and_config_files(reference_run):
    out, cfg = reference_run["out"], reference_run["cfg"]
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "epoch",
        "lr",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "seconds",
        "stats_seconds",
    ]
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    # cosine schedule over 8 steps: the lr after epoch 1 (step 4) is half of 0.02, then 0
    assert float(rows[0]["lr"]) == pytest.approx(0.5 * 0.02 * (1 + math.cos(math.pi * 4 / 8)))
    assert float(rows[1]["lr"]) == pytest.approx(0.0, abs=1e-12)
    for r in rows:
        assert 0 <= float(r["train_acc"]) <= 1 and 0 <= float(r["test_acc"]) <= 1
        assert float(r["train_loss"]) > 0 and float(r["test_loss"]) > 0
    written = json.loads((out / "train_config.json").read_text())
    assert written["model_kwargs"] == {"num_classes": 10, "in_chans": 1, "stem": "cifar", "input_size": [32, 32]}
    assert written["world_size"] == 1 and written["lr"] == cfg.lr and "torch" in written["versions"]
    # evaluate() agrees with a hand-written accuracy on the same 16 test images
    model = load_checkpoint(out)
    test = load_fashion_mnist(cfg.data_dir, "test").subset(cfg.test_subset)
    loss, acc = evaluate(model, test, torch.device("cpu"))
    with torch.no_grad():
        logits = model(normalise(test.images, test.mean, test.std))
    assert acc == pytest.approx((logits.argmax(1) == test.labels).float().mean().item())
    assert loss == pytest.approx(F.cross_entropy(logits, test.labels).item(), rel=1e-5)
    assert acc == pytest.approx(float(rows[-1]["test_acc"]))


def test_train_leaves_the_callers_config_alone(reference_run):
    """The model kwargs filled in from the data are recorded (train_config.json above, the
    recipe a resume compares) without writing them into the caller's TrainConfig."""
    out, cfg = reference_run["out"], reference_run["cfg"]
    assert cfg.model_kwargs == {} and cfg == tiny_config(out)
    filled = {"num_classes": 10, "in_chans": 1, "stem": "cifar", "input_size": [32, 32]}
    assert torch.load(out / "train_state.pt", weights_only=True)["recipe"]["model_kwargs"] == filled
    given = dict(stem="cifar")
    cfg = tiny_config(out.parent / "kwargs", epochs=0, train_subset=8, model_kwargs=given)
    train(cfg)
    assert cfg.model_kwargs is given and given == dict(stem="cifar")
    assert json.loads((out.parent / "kwargs" / "train_config.json").read_text())["model_kwargs"] == filled


def test_cifar10_training_end_to_end(tmp_path, cifar_pngs):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(_cifar_batch(cifar_pngs[:12]))
    (folder / "test_batch").write_bytes(_cifar_batch(cifar_pngs[12:]))
    final = train(
        TrainConfig(
            model="resnet18",
            dataset="cifar10",
            data_dir=str(folder),
            out=str(tmp_path / "o"),
            epochs=1,
            batch_size=4,
            threads=1,
            device="cpu",
            progress=False,
        )
    )
    model = load_checkpoint(tmp_path / "o")
    assert model.niff_config["in_chans"] == 3 and model.niff_config["stem"] == "cifar"
    assert model.niff_checkpoint["dataset"] == "cifar10" and final["epoch"] == 1


def test_imagefolder_training_is_deterministic_and_resumes_exactly(tmp_path, image_tree):  # noqa: F811
    def cfg(out, **kw):
        return TrainConfig(
            **{
                **dict(
                    model="resnet18",
                    dataset="imagefolder",
                    data_dir=str(image_tree),
                    out=str(out),
                    model_kwargs=dict(input_size=16, stem="cifar"),
                    epochs=2,
                    batch_size=4,
                    workers=0,
                    threads=1,
                    device="cpu",
                    progress=False,
                    save_every_steps=1,
                ),
                **kw,
            }
        )

    (tmp_path / "snaps").mkdir()
    with recorded_states(tmp_path / "snaps") as snaps:
        train(cfg(tmp_path / "a"))
    train(cfg(tmp_path / "b", workers=2))  # worker processes do not change the augmentation
    a, b = load_weights(tmp_path / "a"), load_weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    full = load_imagefolder(image_tree, "train", image_size=16)
    part = _first(full, 5)
    assert len(part) == 5 and len(full) == 12 and part[4][1] == full[4][1]
    model = load_checkpoint(tmp_path / "a")
    assert model.niff_config["num_classes"] == 8 and model.niff_config["input_size"] == [16, 16]
    mid = next(p for e, s, p in snaps if (e, s) == (1, 2))  # 12 images / 4 = 3 steps per epoch
    (tmp_path / "c").mkdir()
    shutil.copy(mid, tmp_path / "c" / "train_state.pt")
    train(cfg(tmp_path / "c"), resume=True)
    c = load_weights(tmp_path / "c")
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_niff_ffts_stay_float32_under_autocast(monkeypatch):
    """The trainer's mixed precision is torch.autocast; NIFF layers must still FFT in float32.
    CPU autocast (bfloat16) exercises the same code path as CUDA's."""
    seen = []
    real = torch.fft.rfft2

    def spy(x, *a, **kw):
        seen.append(x.dtype)
        return real(x, *a, **kw)

    monkeypatch.setattr(torch.fft, "rfft2", spy)
    model = create_model("resnet18_niff", num_classes=10, in_chans=1, stem="cifar", input_size=32).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        full = model(x)
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x)
    assert seen and set(seen) == {torch.float32}
    assert half.dtype == torch.bfloat16
    assert torch.allclose(half.float(), full, rtol=0.1, atol=0.1 * full.abs().max().item())


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--compile", "--device", "cpu"], "--compile needs a CUDA device"),
        (["--lr", "-1"], "lr must be positive"),
        (["--label-smoothing", "1.5"], "label_smoothing must be in [0, 1)"),
        (["--train-subset", "4"], "fewer than one batch of 8"),
        (["--mlp", "1x"], "expected a preset name or sizes"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, fmnist_dir, args, expected):
    res = CliRunner().invoke(
        main,
        [
            "train",
            "--model",
            "resnet18_niff",
            "--data-dir",
            str(fmnist_dir),
            "--batch-size",
            "8",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "o"),
            "--test-subset",
            "8",
            *args,
        ],
    )
    assert res.exit_code == 2, res.output
    assert expected in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_config_validation():
    for bad in (
        dict(epochs=-1),
        dict(batch_size=-2),
        dict(dtype="float16"),
        dict(workers=-1),
        dict(save_every_steps=-3),
        dict(threads=0),
        dict(mlp_lr_scale=0),
        dict(mlp_weight_decay=-0.1),
        dict(kernel_stats_every_steps=-1),
    ):
        with pytest.raises(NiffError):
            TrainConfig(**bad).validate()


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path):
    from niff_analysis.errors import NiffError
    from niff_analysis.train import TrainConfig, train

    afile = tmp_path / "afile"
    afile.write_text("keep me")
    with pytest.raises(NiffError, match="exists and is not a directory"):
        train(TrainConfig(out=str(afile), epochs=1, batch_size=8, train_subset=8, test_subset=8))
    assert afile.read_text() == "keep me"


def test_cpu_training_keeps_freed_memory_on_glibc():
    """The allocator setting behind the faster CPU steps (benchmarks/README.md, section 2) takes
    effect on Linux/glibc; the seeded-determinism tests above run with it on."""
    import platform

    from niff_analysis.train.trainer import keep_freed_memory

    assert keep_freed_memory() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")

"""``--precision`` (issue 30): what each setting resolves to on each device, the one-line refusals,
the recipe key (old states still resume), and training runs in bf16 and, through the code path
CUDA takes without bf16, in float16 with the loss scaler, both on the CPU."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from helpers import load_weights, recorded_states, tiny_config
from niff_analysis.cli import main
from niff_analysis.cli.train import sweep_cmd, train_cmd
from niff_analysis.errors import NiffError
from niff_analysis.train import TrainConfig, trainer
from niff_analysis.train import precision as prec
from niff_analysis.train.state import recipe_diff

X86 = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sha2 bf16 i8mm\n"
OLD = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"
CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_bf16_flags_from_cpuinfo():
    assert prec.cpu_bf16_flags(X86) == ["avx512_bf16"]
    assert prec.cpu_bf16_flags(ARM) == ["bf16"]
    assert prec.cpu_bf16_flags(OLD) == []
    amx = OLD.replace("avx512bw", "avx512bw amx_tile amx_bf16 avx512_bf16")
    assert prec.cpu_bf16_flags(amx) == ["avx512_bf16", "amx_bf16"]


def test_bf16_flags_of_this_machine_agree_with_torchs_probe():
    """Independent of our parsing: torch's own AVX512-BF16 probe (x86)."""
    flags = prec.cpu_bf16_flags()
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is not None and "flags" in open("/proc/cpuinfo").read():
        assert ("avx512_bf16" in flags) == probe()


@pytest.mark.parametrize(
    "precision, amp, device, bf16_gpu, expected",
    [
        ("auto", True, CPU, None, ("fp32", None, False)),
        ("fp32", True, CPU, None, ("fp32", None, False)),
        ("bf16", True, CPU, None, ("bf16", torch.bfloat16, False)),
        ("auto", True, CUDA, True, ("bf16", torch.bfloat16, False)),  # CUDA keeps its bf16 default
        ("auto", True, CUDA, False, ("fp16", torch.float16, True)),  # ... fp16 + loss scaling without bf16
        ("auto", False, CUDA, True, ("fp32", None, False)),  # --no-amp
        ("fp32", True, CUDA, True, ("fp32", None, False)),
        ("bf16", False, CUDA, True, ("bf16", torch.bfloat16, False)),
    ],
)
def test_resolution(monkeypatch, precision, amp, device, bf16_gpu, expected):
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    got = prec.resolve_precision(precision, amp, device, torch.float32)
    assert (got.name, got.autocast, got.loss_scaling) == expected


def test_refusals_are_one_line(monkeypatch):
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda: [])
    monkeypatch.setattr(prec, "cpu_model", lambda: "Old CPU")
    with pytest.raises(NiffError, match=r"this CPU \(Old CPU\) has no native bf16") as err:
        prec.resolve_precision("bf16", True, CPU, torch.float32)
    assert "\n" not in str(err.value)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Old GPU")
    with pytest.raises(NiffError, match="Old GPU does not support bf16"):
        prec.resolve_precision("bf16", True, CUDA, torch.float32)
    with pytest.raises(NiffError, match="not on mps"):
        prec.resolve_precision("bf16", True, torch.device("mps"), torch.float32)
    with pytest.raises(NiffError, match="float64"):
        prec.resolve_precision("bf16", True, CPU, torch.float64)
    with pytest.raises(NiffError, match="precision must be one of"):
        prec.resolve_precision("fp8", True, CPU, torch.float32)
    assert prec.resolve_precision("auto", True, CUDA, torch.float64).name == "fp64"  # no autocast of float64
    with pytest.raises(NiffError, match="precision must be one of"):
        TrainConfig(precision="half").validate()
    with pytest.raises(NiffError, match="dtype float64"):
        TrainConfig(precision="bf16", dtype="float64").validate()


def test_context_autocasts_convolutions_and_leaves_niff_ffts_in_float32(monkeypatch):
    """The autocast the trainer enters (the same code CUDA runs, on the CPU): convolutions in
    bf16, the NIFF layer's FFT input in float32."""
    from niff_analysis.models import create_model

    seen = []
    real = torch.fft.rfft2
    monkeypatch.setattr(torch.fft, "rfft2", lambda x, *a, **k: seen.append(x.dtype) or real(x, *a, **k))
    model = create_model("resnet18_niff", num_classes=10, in_chans=1, stem="cifar", width=8)
    outs = []
    model.conv1.register_forward_hook(lambda m, i, o: outs.append(o.dtype))
    with prec.Precision("bf16", torch.bfloat16).context(CPU):
        logits = model(torch.randn(2, 1, 32, 32))
    assert outs == [torch.bfloat16] and logits.dtype == torch.bfloat16
    assert seen and set(seen) == {torch.float32}
    with prec.Precision("fp32").context(CPU):
        assert model(torch.randn(2, 1, 32, 32)).dtype == torch.float32


def test_option_in_train_and_sweep_and_a_recipe_key():
    assert {p.name for p in train_cmd.params} >= {"precision"} and {p.name for p in sweep_cmd.params} >= {"precision"}
    cfg = TrainConfig(precision="bf16")
    assert cfg.recipe()["precision"] == "bf16"
    # A state saved before the key existed was made in today's default: it resumes a default run.
    old_state = dict(recipe={k: v for k, v in TrainConfig().recipe().items() if k != "precision"})
    assert recipe_diff(old_state, TrainConfig()) == ""
    assert recipe_diff(old_state, cfg).startswith("precision='auto', this run has precision='bf16'")


def test_cli_refuses_bf16_without_native_support_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda: [])
    res = CliRunner().invoke(
        main,
        [
            "train",
            "--model",
            "resnet18_niff",
            "--precision",
            "bf16",
            "--device",
            "cpu",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code == 2, res.output
    assert "has no native bf16" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # refused before the data is read or anything written


# --------------------------------------------------------------------------- training runs
def _run(out, **changes):
    cfg = tiny_config(out, epochs=1, model_kwargs=dict(width=8), **changes)
    folder = out.parent / f"{out.name}_states"
    folder.mkdir()
    with recorded_states(folder) as states:
        trainer.train(cfg)
    return cfg, states


@pytest.mark.slow
def test_bf16_training_records_its_precision_and_resumes_exactly(tmp_path, fmnist_dir, monkeypatch):
    """Runs on any CPU: where bf16 is not native the check is bypassed, so the arithmetic is
    torch's emulation; the code path is the same."""
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    cfg, states = _run(tmp_path / "bf16", precision="bf16")
    tc = json.loads((tmp_path / "bf16" / "train_config.json").read_text())
    assert tc["precision"] == "bf16" and tc["precision_used"] == "bf16"
    for ckpt in ("bf16", "bf16/init"):
        assert json.loads((tmp_path / ckpt / "config.json").read_text())["recipe"]["precision"] == "bf16"
    # bf16 trained something else than float32 from the same seed, but not something unrelated.
    _run(tmp_path / "fp32")
    a, b, init = (load_weights(tmp_path / d) for d in ("bf16", "fp32", "fp32/init"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    keys = [k for k in a if a[k].is_floating_point()]
    flat = lambda w: torch.cat([w[k].flatten() for k in keys])  # noqa: E731
    # The two runs differ by a small part of how far training moved the weights (0.06 here).
    assert (flat(a) - flat(b)).norm() < 0.25 * (flat(b) - flat(init)).norm()
    plain = json.loads((tmp_path / "fp32" / "config.json").read_text())
    assert "precision" not in plain["recipe"]  # default checkpoints stay as they were
    assert json.loads((tmp_path / "fp32" / "train_config.json").read_text())["precision_used"] == "fp32"
    # Resume from the mid-epoch state: the same weights as the uninterrupted bf16 run.
    mid = next(p for e, s, p in states if (e, s) == (0, 2))
    (tmp_path / "again").mkdir()
    shutil.copy(mid, tmp_path / "again" / trainer.STATE_NAME)
    trainer.train(tiny_config(tmp_path / "again", epochs=1, model_kwargs=dict(width=8), precision="bf16"), resume=True)
    c = load_weights(tmp_path / "again")
    assert all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(NiffError, match="precision='bf16', this run has precision='auto'"):
        trainer.train(tiny_config(tmp_path / "again", epochs=1, model_kwargs=dict(width=8)), resume=True)


@pytest.mark.slow
def test_loss_scaler_bookkeeping_runs_and_resumes_on_the_cpu(tmp_path, fmnist_dir, monkeypatch):
    """CUDA without bf16 trains in float16 with a GradScaler. The same code runs here on the CPU
    (CPU autocast does float16 too): the scaler scales, its state is saved and a resumed run
    continues with it, ending with the uninterrupted run's weights."""
    fp16 = prec.Precision("fp16", torch.float16, loss_scaling=True)
    monkeypatch.setattr(trainer, "resolve_precision", lambda *a: fp16)
    scaled = []
    real_scale = torch.amp.GradScaler.scale
    monkeypatch.setattr(
        torch.amp.GradScaler, "scale", lambda self, loss: scaled.append(self.get_scale()) or real_scale(self, loss)
    )
    _, states = _run(tmp_path / "run")
    # 4 steps, each scaled: 65536 at first, halved after any step whose gradients overflowed.
    assert len(scaled) == 4 and scaled[0] == 65536.0
    assert all(b in (a, a / 2) for a, b in zip(scaled, scaled[1:]))
    final = torch.load(tmp_path / "run" / trainer.STATE_NAME, weights_only=True)["scaler"]
    assert final is not None and final["scale"] in (scaled[-1], scaled[-1] / 2)
    mid = next(p for e, s, p in states if (e, s) == (0, 2))
    mid_scaler = torch.load(mid, weights_only=True)["scaler"]
    assert mid_scaler["scale"] in (scaled[1], scaled[1] / 2)  # saved after step 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["recipe"]["precision"] == "fp16"
    (tmp_path / "again").mkdir()
    shutil.copy(mid, tmp_path / "again" / trainer.STATE_NAME)
    scaled.clear()
    trainer.train(tiny_config(tmp_path / "again", epochs=1, model_kwargs=dict(width=8)), resume=True)
    assert scaled[0] == mid_scaler["scale"]  # the restored scale, not a fresh 65536
    a, c = load_weights(tmp_path / "run"), load_weights(tmp_path / "again")
    assert all(torch.equal(a[k], c[k]) for k in a)

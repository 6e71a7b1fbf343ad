"""What only a CUDA GPU can show (issue 30): the layers, the trainer's mixed precision and the
Gaussian fits of CUDA-resident kernels against the CPU. Collected only where CUDA is present (tests/conftest.py);
``benchmarks/gpu_check.sh`` runs this file on a lent GPU machine."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from helpers import load_weights, recorded_states, tiny_config
from niff_analysis.layers import CONV_MODES, DepthwiseNIFF, FullNIFF, SplitNIFF
from niff_analysis.layers.niff import NIFFLayer
from niff_analysis.models import create_model
from niff_analysis.train import precision as prec
from niff_analysis.train import trainer

CUDA = torch.device("cuda")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float().cpu() - b.float().cpu()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def _layer(kind: str, mode: str):
    torch.manual_seed(0)
    return {
        "depthwise": lambda: DepthwiseNIFF(4, mlp="big", mode=mode),
        "split": lambda: SplitNIFF(4, 6, mlp="cifar", mode=mode),
        "split_mixing": lambda: SplitNIFF(6, 4, mlp="cifar", mode=mode),
        "full": lambda: FullNIFF(4, 3, mlp="tiny", mode=mode),
    }[kind]()


@pytest.mark.parametrize("kind", ["depthwise", "split", "split_mixing", "full"])
@pytest.mark.parametrize("mode", CONV_MODES)
@pytest.mark.parametrize("size", [(8, 8), (7, 7), (14, 14), (6, 9)])
def test_layers_on_cuda_equal_the_cpu(kind, mode, size):
    """cuFFT against MKL/pocketfft: outputs, input and parameter gradients to 1e-4 (float32)."""
    cpu = _layer(kind, mode)
    gpu = _layer(kind, mode).to(CUDA)
    cin = 6 if kind == "split_mixing" else 4
    x = torch.randn(3, cin, *size)
    r = torch.randn(cpu(x).shape)
    grads = []
    for layer, dev in ((cpu, "cpu"), (gpu, CUDA)):
        xi = x.to(dev).requires_grad_(True)
        y = layer(xi)
        (y * r.to(dev)).sum().backward()
        grads.append((y.detach(), xi.grad, {n: p.grad for n, p in layer.named_parameters()}))
    (y0, gx0, gp0), (y1, gx1, gp1) = grads
    assert _rel(y1, y0) <= 1e-4 and _rel(gx1, gx0) <= 1e-4
    for name, g in gp0.items():
        if g is not None and g.abs().max() > 0:
            assert _rel(gp1[name], g) <= 1e-4, name


@pytest.mark.parametrize("size", [(28, 28), (14, 14), (7, 7), (32, 32)])
def test_hermitian_filter_on_cuda_equals_autograds_path(size):
    layer = _layer("depthwise", "circular").to(CUDA)
    x = torch.randn(8, 4, *size, device=CUDA)
    out = []
    for autograd_path in (False, True):
        layer.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        if autograd_path:
            layer._filter = lambda xc, filt: NIFFLayer._filter(layer, xc, filt)
        y = layer(xi)
        layer.__dict__.pop("_filter", None)
        y.square().sum().backward()
        out.append((y.detach(), xi.grad, [p.grad.clone() for p in layer.parameters()]))
    (y, gx, gp), (y_ref, gx_ref, gp_ref) = out
    assert _rel(y, y_ref) <= 1e-6 and _rel(gx, gx_ref) <= 1e-5
    assert all(_rel(a, b) <= 1e-5 for a, b in zip(gp, gp_ref))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_ffts_stay_float32_under_cuda_autocast_at_non_power_of_two_sizes(monkeypatch, dtype):
    """cuFFT in half precision takes only power-of-two sizes; on 28×28 input the maps are 28, 14,
    7 and 4: every FFT must get float32, forward and backward."""
    seen = []
    real = torch.fft.rfft2
    monkeypatch.setattr(torch.fft, "rfft2", lambda x, *a, **k: seen.append(x.dtype) or real(x, *a, **k))
    model = create_model("resnet18_niff", num_classes=10, in_chans=1, stem="cifar", input_size=28).to(CUDA)
    x = torch.randn(4, 1, 28, 28, device=CUDA)
    with torch.autocast("cuda", dtype=dtype):
        logits = model(x)
    assert logits.dtype == dtype
    torch.nn.functional.cross_entropy(logits.float(), torch.arange(4, device=CUDA)).backward()
    assert seen and set(seen) == {torch.float32}
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _flat(w: dict, keys) -> torch.Tensor:
    return torch.cat([w[k].flatten().double() for k in keys])


def _train(out, **changes):
    folder = out.parent / f"{out.name}_states"
    folder.mkdir()
    cfg = tiny_config(out, epochs=1, device="cuda", model_kwargs=dict(width=16), **changes)
    with recorded_states(folder) as states:
        trainer.train(cfg)
    return states


def test_trainer_on_cuda_defaults_to_bf16_and_resumes(tmp_path, fmnist_dir):
    """--precision auto on a GPU with bf16: bf16 autocast, recorded; a resumed run ends close to
    the uninterrupted one (cuDNN and cuFFT need not be bit-reproducible: within 5 % of how far
    training moved the weights)."""
    assert torch.cuda.is_bf16_supported()
    states = _train(tmp_path / "run")
    tc = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert tc["precision"] == "auto" and tc["precision_used"] == "bf16"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["recipe"]["precision"] == "bf16"
    mid = next(p for e, s, p in states if (e, s) == (0, 2))
    assert torch.load(mid, weights_only=True)["scaler"] is None  # bf16 needs no loss scaling
    (tmp_path / "again").mkdir()
    shutil.copy(mid, tmp_path / "again" / trainer.STATE_NAME)
    trainer.train(tiny_config(tmp_path / "again", epochs=1, device="cuda", model_kwargs=dict(width=16)), resume=True)
    a, c, init = (load_weights(tmp_path / d) for d in ("run", "again", "run/init"))
    keys = [k for k in a if a[k].is_floating_point()]
    assert (_flat(a, keys) - _flat(c, keys)).norm() <= 0.05 * (_flat(a, keys) - _flat(init, keys)).norm()


def test_trainer_on_cuda_fp16_with_loss_scaling(tmp_path, fmnist_dir, monkeypatch):
    """A GPU without bf16 trains in float16 with CUDA's GradScaler; its state is saved."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    states = _train(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["precision_used"] == "fp16"
    scaler = torch.load(next(p for e, s, p in states if (e, s) == (0, 2)), weights_only=True)["scaler"]
    assert scaler is not None and scaler["scale"] > 0


def test_trainer_on_cuda_fp32_and_bf16_explicitly(tmp_path, fmnist_dir):
    _train(tmp_path / "fp32", precision="fp32")
    _train(tmp_path / "bf16", precision="bf16")
    for name in ("fp32", "bf16"):
        assert json.loads((tmp_path / name / "train_config.json").read_text())["precision_used"] == name
    assert prec.resolve_precision("fp32", True, CUDA, torch.float32).autocast is None


def test_gaussian_fits_of_cuda_kernels_equal_those_of_cpu_kernels():
    """The Gaussian fits run compiled on the CPU whatever the kernels' device: CUDA kernels give
    the table the same kernels on the CPU give, bit for bit (there is no CUDA solver)."""
    import pandas as pd

    from niff_analysis.analysis.gaussian import fit_gaussians
    from test_analysis_gaussian import _noisy_kernels

    kern = _noisy_kernels(300)
    cpu = fit_gaussians(kern)
    gpu = fit_gaussians(kern.to(CUDA))
    assert int(cpu["success"].sum()) > 100
    pd.testing.assert_frame_equal(cpu, gpu, check_exact=True)

"""The speed changes in niff_analysis/layers/niff.py (issues 7 and 30) keep the results exact:
the gathered Hermitian half-filters, the eval-mode filter cache, the hand-written backward of the
FFT filter (against autograd's, torch's conv2d and finite differences) and the allocator setting
the layers apply on their first CPU forward pass."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from niff_analysis.layers import CONV_MODES, DepthwiseNIFF, FullNIFF, SplitNIFF, hermitian_half, memory
from niff_analysis.layers.niff import NIFFLayer, _HermitianFilter


def make(kind, mode="circular"):
    torch.manual_seed(0)
    if kind == "depthwise":
        return DepthwiseNIFF(3, mlp="big", mode=mode)
    if kind == "split":
        return SplitNIFF(3, 5, mlp="cifar", mode=mode)
    return FullNIFF(3, 2, mlp="tiny", mode=mode)


@pytest.mark.parametrize("kind", ["depthwise", "split", "full"])
@pytest.mark.parametrize("size", [(8, 8), (7, 7), (6, 9), (9, 4), (1, 1)])
def test_half_filters_equal_hermitian_half_exactly(kind, size):
    """Row gathers instead of roll/flip: bit-for-bit the documented Hermitian part."""
    layer = make(kind, mode="pad-zero" if size == (6, 9) else "circular")
    fh, fw = layer.filter_size(size)
    with torch.no_grad():
        ref = hermitian_half(torch.fft.ifftshift(layer.frequency_response(size), dim=(-2, -1)))
        got = layer._half_filters(*size)
    assert got.shape == ref.shape == (*ref.shape[:-2], fh, fw // 2 + 1)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("kind", ["depthwise", "split", "full"])
def test_eval_cache_gives_identical_outputs_and_is_reused(kind):
    layer = make(kind)
    x = torch.randn(2, 3, 7, 6)
    train_out = layer(x).detach()
    layer.eval()
    with torch.no_grad():
        a = layer(x)
        cached = layer._filter_cache[2]
        b = layer(x)
    assert layer._filter_cache[2] is cached  # second call reused the filters
    with torch.inference_mode():
        c = layer(x)
    assert torch.equal(a, train_out) and torch.equal(b, a) and torch.equal(c, a)
    assert not any("cache" in k for k in layer.state_dict())


def test_eval_cache_follows_parameter_changes():
    layer = make("depthwise").eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        before = layer(x)
        layer.real[0].weight.data.mul_(1.5)  # a write through .data bumps no version counter
        after = layer(x)
    layer.train()
    expected = layer(x).detach()
    assert torch.equal(after, expected) and not torch.equal(after, before)
    # load_state_dict and a size change are seen too.
    other = make("depthwise")
    other.real[-1].bias.data.add_(1.0)
    layer.load_state_dict(other.state_dict())
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), other(x), rtol=0, atol=0)
        assert layer(torch.randn(1, 3, 5, 4)).shape == (1, 3, 5, 4)


def test_no_cache_when_gradients_reach_the_mlps():
    layer = make("split").eval()  # eval, but grad enabled and parameters trainable
    x = torch.randn(2, 3, 6, 6)
    for _ in range(2):
        layer(x).sum().backward()
    assert layer._filter_cache is None
    assert layer.real[0].weight.grad is not None


def test_frozen_model_input_gradients_after_inference_mode():
    """A cache filled under inference_mode must still work for an input-gradient pass."""
    layer = make("depthwise").eval()
    for p in layer.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 3, 6, 6)
    with torch.inference_mode():
        layer(x)
    for _ in range(2):
        xi = x.clone().requires_grad_(True)
        layer(xi).square().sum().backward()
        assert torch.isfinite(xi.grad).all()


# --------------------------------------------------------------------------- the FFT filter's backward
def _outputs_and_grads(layer, x, autograd_path: bool):
    """Output, input gradient and parameter gradients of ``sum(y * r)`` for a fixed random r;
    ``autograd_path`` runs the filter as autograd differentiates rfft2 → product → irfft2."""
    layer.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_(True)
    if autograd_path:
        layer._filter = lambda xc, filt: NIFFLayer._filter(layer, xc, filt)
    try:
        y = layer(xi)
    finally:
        layer.__dict__.pop("_filter", None)
    r = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    (y * r).sum().backward()
    return y.detach(), xi.grad, {n: p.grad for n, p in layer.named_parameters()}


@pytest.mark.parametrize("kind", ["depthwise", "split"])
@pytest.mark.parametrize("mode", CONV_MODES)
@pytest.mark.parametrize("size", [(8, 8), (7, 7), (6, 9), (9, 4), (2, 2), (1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hermitian_filter_equals_autograd_path(kind, mode, size, dtype):
    """Same outputs; same parameter gradients (the filter gradient is autograd's formula);
    input gradients equal to rounding (1e-5 relative in float32, 1e-12 in float64)."""
    layer = make(kind, mode).to(dtype)
    x = torch.randn(4, 3, *size, dtype=dtype)
    y, gx, gp = _outputs_and_grads(layer, x, autograd_path=False)
    y_ref, gx_ref, gp_ref = _outputs_and_grads(layer, x, autograd_path=True)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.equal(y, y_ref)
    assert ((gx - gx_ref).abs().max() / gx_ref.abs().max()).item() <= tol
    for name, g in gp_ref.items():
        if g is None:
            assert gp[name] is None, name
            continue
        scale = max(g.abs().max().item(), 1e-30)
        assert (gp[name] - g).abs().max().item() <= tol * scale, name


def test_split_niff_that_mixes_in_the_spectrum_keeps_autograds_path():
    layer = SplitNIFF(5, 3, mlp="cifar")
    calls = []
    original = _HermitianFilter.apply
    try:
        _HermitianFilter.apply = staticmethod(lambda *a: calls.append(1) or original(*a))
        layer(torch.randn(2, 5, 6, 6)).sum().backward()
        assert not calls  # the 1×1 runs on the product: no Hermitian-filter shortcut
        make("split")(torch.randn(2, 3, 6, 6)).sum().backward()
        assert len(calls) == 1
    finally:
        _HermitianFilter.apply = original


@pytest.mark.parametrize("size", [(6, 6), (5, 7), (4, 3)])
def test_hermitian_filter_gradcheck(size):
    """Finite differences (float64) against the hand-written backward, both inputs."""
    torch.manual_seed(0)
    layer = DepthwiseNIFF(2, mlp="cifar").double()
    with torch.no_grad():
        filt = layer._half_filters(*size)
    x = torch.randn(3, 2, *size, dtype=torch.float64, requires_grad=True)
    filt.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: _HermitianFilter.apply(a, b, size), (x, filt))


def test_hermitian_filter_double_backward():
    """Gradients of gradients (e.g. a gradient penalty) go through the hand-written backward."""
    torch.manual_seed(0)
    layer = DepthwiseNIFF(2, mlp="cifar").double()
    with torch.no_grad():
        filt = layer._half_filters(5, 6)
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    filt.requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda a, b: _HermitianFilter.apply(a, b, (5, 6)), (x, filt))


@pytest.mark.parametrize("size", [(8, 8), (7, 5)])
def test_input_gradient_equals_conv2d_gradient(size):
    """Independent check: the layer's input gradient equals torch's conv2d autograd through the
    same spatial kernels (circular padding, a true convolution)."""
    layer = DepthwiseNIFF(3, mlp="cifar").double()
    k = layer.spatial_kernels(size).detach()
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 3, *size, dtype=torch.float64)
    (gx,) = torch.autograd.grad((layer(x) * r).sum(), x)
    h, w = size
    kf = torch.flip(k, (-2, -1))[:, None]
    cy, cx = h - 1 - h // 2, w - 1 - w // 2
    x2 = x.detach().clone().requires_grad_(True)
    ref = F.conv2d(F.pad(x2, (cx, w - 1 - cx, cy, h - 1 - cy), mode="circular"), kf, groups=3)
    (gx_ref,) = torch.autograd.grad((ref * r).sum(), x2)
    assert ((gx - gx_ref).abs().max() / gx_ref.abs().max()).item() <= 1e-10


def test_frozen_filter_saves_no_spectrum():
    """Only the input needs a gradient (e.g. receptive fields of a frozen model): the spectrum
    is not kept for the backward pass."""
    layer = make("depthwise")
    with torch.no_grad():
        filt = layer._half_filters(6, 6)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    y = _HermitianFilter.apply(x, filt, (6, 6))
    saved = y.grad_fn.saved_tensors
    assert saved[0] is None and saved[1] is None and saved[2].shape == filt.shape
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------- the allocator setting
def test_first_cpu_forward_keeps_freed_memory_once(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "_decided", None)
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    layer = make("split")
    for _ in range(3):
        layer(torch.randn(1, 3, 5, 5))
    assert calls == [1] and memory.ensure_freed_memory_kept() is True


@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_opting_out_leaves_the_allocator_alone(monkeypatch, value):
    calls = []
    monkeypatch.setattr(memory, "_decided", None)
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setenv(memory.ENV_VAR, value)
    make("depthwise")(torch.randn(1, 3, 5, 5))
    assert calls == [] and memory.ensure_freed_memory_kept() is False


_MMAP_PROBE = textwrap.dedent("""
    import ctypes, json, torch
    from niff_analysis.layers import DepthwiseNIFF
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Info
    DepthwiseNIFF(2, mlp="tiny")(torch.randn(1, 2, 4, 4))
    before = libc.mallinfo2().hblkhd
    big = torch.ones(16 * 2**20)  # 64 MB: above glibc's largest mmap threshold (32 MB)
    print(json.dumps(dict(mmapped=libc.mallinfo2().hblkhd - before)))
""")


def _glibc_version() -> tuple[int, ...]:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    except (AttributeError, ValueError, OSError):
        return ()
    return tuple(int(v) for v in version.split(".")[:2]) if name == "glibc" else ()


@pytest.mark.slow
@pytest.mark.skipif(_glibc_version() < (2, 33), reason="mallinfo2 needs glibc >= 2.33")
@pytest.mark.parametrize("env, mapped", [(None, False), ("0", True)])
def test_a_niff_forward_stops_glibc_mapping_large_buffers(env, mapped):
    """Measured through glibc itself (mallinfo2's bytes in mmapped chunks), in a fresh process:
    after one NIFF forward pass a 64 MB tensor comes from the heap, unless opted out."""
    import json

    environ = {k: v for k, v in os.environ.items() if k != memory.ENV_VAR}
    if env is not None:
        environ[memory.ENV_VAR] = env
    out = subprocess.run(
        [sys.executable, "-c", _MMAP_PROBE], capture_output=True, text=True, env=environ, timeout=300, check=True
    )
    grown = json.loads(out.stdout.strip().splitlines()[-1])["mmapped"]
    assert (grown >= 64 * 2**20) is mapped, grown

"""The speed changes in niff_analysis/layers/niff.py (issue 7) keep the results exact:
the gathered Hermitian half-filters and the eval-mode filter cache."""

import pytest
import torch

from niff_analysis.layers import DepthwiseNIFF, FullNIFF, SplitNIFF, hermitian_half


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

"""Distributed helpers: process-group setup and batch norm over the global batch.

Under DistributedDataParallel each rank sees a slice of the global batch. Plain BatchNorm would
normalise every slice by its own statistics, so N processes would train a different model than
one process with the same global batch. ``nn.SyncBatchNorm`` fixes that, but in torch 2.14 it
refuses CPU tensors ("expected input tensor to be on GPU"), so gloo/CPU runs use
:class:`GlobalBatchNorm` instead: the same maths written with two differentiable all-reduces
(sum, then sum of squared deviations) over the whole global batch. Its forward equals
``F.batch_norm`` on the concatenated global batch, its backward all-reduces the gradients of
the statistics (as SyncBatchNorm does), and running statistics are updated with the global
count, so every rank's model equals the single-process model up to float rounding.
"""

from __future__ import annotations

import hashlib
import os

import torch
import torch.distributed as dist
from torch import nn


def dist_info() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup_distributed(device: torch.device) -> tuple[torch.device, bool]:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), if not joined yet.

    Returns:
        The device this rank runs on (``cuda:LOCAL_RANK`` on GPUs) and whether this call
        created the process group (then the caller destroys it when done).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return device, False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return device, False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, True


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward also sums the incoming gradients over ranks.

    The global loss is the sum of the ranks' losses, so the gradient of a globally shared
    statistic is the sum of every rank's gradient of it.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum of ``x`` over all ranks."""
    return _AllReduceSum.apply(x)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the global batch of all ranks (CPU/gloo).

    Same parameters, buffers and state-dict keys as ``nn.BatchNorm2d``; in eval mode, or
    without a process group, it is exactly ``F.batch_norm``.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rank, world = dist_info()
        if not self.training or world == 1:
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=torch.float64)
        dist.all_reduce(count)
        n = count.item()
        # Two passes (mean, then squared deviations) for the same accuracy as F.batch_norm.
        mean = all_reduce_sum(x.sum(dims)) / n
        var = all_reduce_sum(((x - mean.view(shape)) ** 2).sum(dims)) / n
        if self.track_running_stats:
            tracked, running_mean, running_var = self.num_batches_tracked, self.running_mean, self.running_var
            # _BatchNorm registers these buffers (typed Optional) whenever it tracks running statistics
            assert tracked is not None and running_mean is not None and running_var is not None
            with torch.no_grad():
                tracked.add_(1)
                m = (1.0 / float(tracked)) if self.momentum is None else self.momentum
                running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                running_var.mul_(1 - m).add_(var.detach() * (n / max(n - 1, 1)), alpha=m)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm normalise over the global batch: ``nn.SyncBatchNorm`` on GPUs,
    :class:`GlobalBatchNorm` elsewhere (same state, same state-dict keys)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        ref = module.weight if module.affine else module.running_mean
        new = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if ref is not None:
            new = new.to(device=ref.device, dtype=ref.dtype)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = convert_batchnorm(child, device)
        if converted is not child:
            setattr(module, name, converted)
    return module


def state_fingerprint(state: dict) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and bytes (compares replicas)."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def gather_objects(obj) -> list:
    """``obj`` from every rank (a one-element list without a process group)."""
    _, world = dist_info()
    if world == 1:
        return [obj]
    out: list[object | None] = [None] * world
    dist.all_gather_object(out, obj)
    return out

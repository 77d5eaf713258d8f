"""Batch norm over every process of a torch.distributed group (SyncBatchNorm's
training step): statistics of the concatenated batch, each process holding its
part (any size, empty included).

Forward: ``norm_moments`` (one launch: this process's (count, mean, M2) per
channel), one all_gather of the (3, C) moments, ``norm_merge_moments`` (one
launch: the merge in rank order, running statistics with the global count,
num_batches_tracked), ``norm_apply`` (one launch, with the fused residual and
activation). Backward: ``norm_backward_reduce`` (one launch: this process's
weight and bias gradients, as torch's SyncBatchNorm, and the per-channel sums),
one all_reduce of the (2, C) sums, ``norm_backward_dx`` (one launch, the count of
all processes read on the device). Deterministic: fixed-order merges, fp32.

On torch's path (``backend(x) == "torch"``: CPU without the interpreter,
float64) the same statistics are computed with torch ops and autograd, the
gather's backward all-reducing its gradient.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as TF

from .._library import _on_own_device
from .._runtime import backend
from ..activation import ACT_LEAKY_RELU, ACT_NONE, ACT_RELU
from ._plan import Geometry
from .ops import (_readable, kept_bias, mask_source, norm_apply, norm_backward_dx, norm_backward_reduce,
                  norm_merge_moments, norm_moments, saved_bias)

__all__ = ["sync_batch_norm", "SyncNormFunction"]


# torch 2.13 renamed all_gather_into_tensor (deprecated there) all_gather_single.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _gather(moments: torch.Tensor, group, world: int) -> torch.Tensor:
    """(world, 3, C): every process's (3, C) moments in rank order (one all_gather)."""
    out = moments.new_empty((world * moments.shape[0], moments.shape[1]))
    _all_gather_single(out, moments.contiguous(), group=group)
    return out.view(world, *moments.shape)


class SyncNormFunction(torch.autograd.Function):
    """y = act((x - mean) * rstd * weight + bias [+ residual]) with batch statistics
    over the group's processes; x: (N, C, *) (N may be 0 on some processes).
    First derivatives only (as torch's SyncBatchNorm)."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, running_mean, running_var, num_batches_tracked, eps: float,
                momentum, activation: int, negative_slope: float, group, world: int):
        C = x.shape[1]
        geom = Geometry(1, 1, C, False, True)
        x, residual = _readable(x, geom), _readable(residual, geom)
        moments = norm_moments(x, 1, 1, C)
        mean, rstd, count = norm_merge_moments(_gather(moments, group, world), running_mean, running_var,
                                               num_batches_tracked, 0.0 if momentum is None else momentum,
                                               momentum is None, eps)
        y = norm_apply(x, mean, rstd, weight, bias, residual, 1, 1, C, False, True, activation, negative_slope)
        kept, from_output = mask_source(residual, y, activation)
        ctx.save_for_backward(x, weight, kept_bias(ctx, bias, activation), kept, mean, rstd, count)
        ctx.args = (activation, negative_slope, from_output, group)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight, bias, residual, mean, rstd, count = ctx.saved_tensors     # residual: ``mask_source``'s
        bias = saved_bias(ctx, bias, x.device)
        activation, negative_slope, from_output, group = ctx.args
        need_x, need_weight, need_bias, need_residual = ctx.needs_input_grad[:4]
        C = x.shape[1]
        dy = _readable(dy, Geometry(1, 1, C, False, True))
        if x.numel():
            dx, dw, db, sums, g = norm_backward_reduce(dy, x, weight, bias, residual, mean, rstd, 1, 1, C, False,
                                                       True, activation, negative_slope, from_output, need_x,
                                                       need_weight, need_bias, need_residual)
        else:       # an empty batch here: nothing to sum, but the all-reduce needs this process
            dw = torch.zeros_like(weight) if need_weight else None
            db = torch.zeros_like(bias) if need_bias else None
            sums, g = torch.zeros((2, C), dtype=torch.float32, device=x.device), None
        if need_x:
            dist.all_reduce(sums, group=group)
            dx = (norm_backward_dx(dy, x, g, weight, bias, residual, mean, rstd, sums, count, 1, 1, C, False,
                                   activation, negative_slope, from_output) if x.numel() else torch.empty_like(x))
        g = dy if need_residual and g is None else g
        return dx, dw, db, g, *([None] * 9)


class _AllGatherMoments(torch.autograd.Function):
    """_gather with a gradient: a process's moments feed every process's statistics,
    so their gradient is the sum over processes of the gradients of its slot."""

    @staticmethod
    def forward(ctx, moments, group, world: int):
        ctx.group, ctx.rank = group, dist.get_rank(group)
        return _gather(moments, group, world)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank], None, None


def _sync_batch_norm_torch(x, weight, bias, residual, running_mean, running_var, num_batches_tracked, eps,
                           momentum, activation, negative_slope, group, world):
    """SyncNormFunction's forward in torch ops (torch's path), differentiated by autograd."""
    C = x.shape[1]
    dims, shape = [0, *range(2, x.dim())], (1, C) + (1,) * (x.dim() - 2)
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    n = x.numel() // C
    local_mean = xf.mean(dims) if n else xf.new_zeros(C)
    local_m2 = ((xf - local_mean.view(shape)) ** 2).sum(dims)
    moments = torch.stack([torch.full_like(local_mean, n), local_mean, local_m2])
    counts, means, m2s = _AllGatherMoments.apply(moments, group, world).unbind(1)
    count = counts.sum(0)
    mean = (counts * means).sum(0) / count
    m2 = (m2s + counts * (means - mean) ** 2).sum(0)
    if running_mean is not None:
        with torch.no_grad():
            if num_batches_tracked is not None:
                num_batches_tracked.add_(1)
            factor = 1.0 / num_batches_tracked if momentum is None else momentum   # a tensor: no host sync
            running_mean.copy_(running_mean * (1 - factor) + mean * factor)
            running_var.copy_(running_var * (1 - factor) + m2 / (count - 1).clamp(min=1) * factor)
    y = (xf - mean.view(shape)) * torch.rsqrt(m2 / count + eps).view(shape)
    if weight is not None:
        y = y * weight.view(shape)
    if bias is not None:
        y = y + bias.view(shape)
    if residual is not None:
        y = y + residual
    if activation == ACT_RELU.value:
        y = torch.relu(y)
    elif activation == ACT_LEAKY_RELU.value:
        y = TF.leaky_relu(y, negative_slope)
    return y.to(x.dtype)


# Collectives and their ordering stay eager: one graph break per layer. torch's lazy form of
# torch.compiler.disable, which imports torch._dynamo at the first call, not with nnlib (~1 s).
_eager = getattr(torch, "_disable_dynamo", torch.compiler.disable)


@_eager
def sync_batch_norm(x, running_mean, running_var, weight, bias, momentum, eps, group, world: int,
                    activation: int = ACT_NONE.value, negative_slope: float = 0.01, residual=None,
                    num_batches_tracked=None):
    """Training batch norm of x (N, C, *) with statistics over the ``world`` processes
    of ``group`` (arguments checked by the caller); momentum None: the cumulative
    average 1 / (num_batches_tracked + 1)."""
    args = (x, weight, bias, residual, running_mean, running_var, num_batches_tracked, float(eps), momentum,
            activation, float(negative_slope), group, world)
    if backend(x) == "torch":
        return _sync_batch_norm_torch(*args)
    return _on_own_device(SyncNormFunction.apply)(*args)    # its launchers are not Operators, which guard

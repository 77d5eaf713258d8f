"""``torch.nn`` drop-ins. Each subclasses its torch twin, so ``__init__``,
parameters, buffers and ``state_dict`` are torch's own; only ``forward`` changes."""
from __future__ import annotations

import functools
import inspect
import warnings

import torch
import torch.distributed as dist

from kernels.activation import ACTIVATIONS
from kernels.norm.sync import sync_batch_norm

from . import functional as F
from ._checks import (check_norm_dtype, check_norm_params, check_residual, check_writable, conv_activation,
                      norm_activation, pool_activation)

__all__ = ["ReLU", "LeakyReLU", "PReLU", "MaxPool2d", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm",
           "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "LayerNorm", "GroupNorm", "Conv2d"]


def traced_as_leaf(forward):
    """``forward``, except that torch.fx records a call of the module inside a traced
    model as one node (``call_module``), as it records torch.nn's own layers: its
    default tracer keeps only modules defined in torch.nn as leaves, and would trace
    into ours, whose checks branch on the input. Only where the node's call does what
    this call does: not for the root (which has no name to call), a module with
    forward hooks or pre-hooks (the tracer has run them already, the node would run
    them again), or a subclass whose own forward calls this one; those are traced
    into, and fail as before."""
    @functools.wraps(forward)
    def run(self, input, *args, **kwargs):
        if isinstance(input, torch.fx.Proxy) and type(self).forward is run and not hooked(self):
            name = input.tracer.path_of_module(self)
            if name:
                return input.tracer.create_proxy("call_module", name, (input, *args), kwargs)
        return forward(self, input, *args, **kwargs)
    return run


def hooked(module: torch.nn.Module) -> bool:
    """Whether a call of ``module`` runs forward hooks or pre-hooks, its own or global
    (weight_norm's among them): what a tracer's node or a fused layer would skip or
    run on what the module did not compute."""
    from torch.nn.modules import module as registry
    return bool(module._forward_hooks or module._forward_pre_hooks or registry._global_forward_hooks
                or registry._global_forward_pre_hooks)


# ---------------------------------------------------------------------------
# Activations

class ReLU(torch.nn.ReLU):
    @traced_as_leaf
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.relu(input, inplace=self.inplace)


class LeakyReLU(torch.nn.LeakyReLU):
    @traced_as_leaf
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(input, self.negative_slope, self.inplace)


class PReLU(torch.nn.PReLU):
    @traced_as_leaf
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.prelu(input, self.weight)


# ---------------------------------------------------------------------------
# Convolution

def _with_activation(extra: str, activation: str | None, negative_slope: float) -> str:
    """A module's extra_repr with its fused activation (and a leaky ReLU's slope) appended."""
    if activation is None:
        return extra
    slope = f", negative_slope={negative_slope}" if activation == "leaky_relu" else ""
    return f"{extra}, activation={activation!r}{slope}"


class Conv2d(torch.nn.Conv2d):
    """torch.nn.Conv2d plus keyword-only ``activation`` (None, "relu", "leaky_relu")
    and ``negative_slope``, fused into the convolution's epilogue. A non-zero
    ``padding_mode`` pads first (torch.nn.functional.pad: data movement, no
    arithmetic) and convolves with padding 0, as torch does."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *,
                 activation=None, negative_slope: float = 0.01):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        conv_activation(activation, negative_slope)
        self.activation, self.negative_slope = activation, negative_slope

    @traced_as_leaf
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(input, self.weight, self.bias)

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """torch's hook for subclasses and parametrizations: ``input`` convolved with
        ``weight`` and ``bias`` by this module's geometry, then its activation."""
        padding = self.padding
        if self.padding_mode != "zeros":
            input = torch.nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return F.conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups,
                        activation=self.activation, negative_slope=self.negative_slope)

    def extra_repr(self) -> str:
        return _with_activation(super().extra_repr(), self.activation, self.negative_slope)

# ---------------------------------------------------------------------------
# Pooling

class MaxPool2d(torch.nn.MaxPool2d):
    """torch.nn.MaxPool2d plus keyword-only ``activation=None`` or "relu",
    applied to the pooled values."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False,
                 ceil_mode: bool = False, *, activation=None):
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)
        pool_activation(activation)
        self.activation = activation

    @traced_as_leaf
    def forward(self, input: torch.Tensor):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices,
                            activation=self.activation)

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        return extra if self.activation is None else f"{extra}, activation={self.activation!r}"

# ---------------------------------------------------------------------------
# Normalization

class _ClassSignature:
    """``__signature__`` for inspect.signature of a class: its
    ``_constructor_signature``; None on an instance (whose signature is forward's)."""

    def __get__(self, instance, owner):
        return None if instance is not None else getattr(owner, "_constructor_signature", None)


class _FusedActivation:
    """Keyword-only ``activation=None | "relu" | "leaky_relu"`` and ``negative_slope``
    for the norm modules: stored, shown in the repr, passed to the functional. A
    subclass's signature is its torch.nn twin's with those two added."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        twin = next((base for base in cls.__mro__          # not a subclass made in torch.nn (parametrize's)
                     if base.__module__.startswith("torch.nn") and not issubclass(base, _FusedActivation)), None)
        cls._constructor_signature = None           # a subclass's own __init__ speaks for itself
        if twin is not None and cls.__init__ is _FusedActivation.__init__:
            params = list(inspect.signature(twin).parameters.values())
            extras = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
                      for name, default in (("activation", None), ("negative_slope", 0.01))]
            cut = next((i for i, p in enumerate(params) if p.kind == p.VAR_KEYWORD), len(params))
            cls._constructor_signature = inspect.Signature(params[:cut] + extras + params[cut:])

    __signature__ = _ClassSignature()

    def __init__(self, *args, activation=None, negative_slope: float = 0.01, **kwargs):
        super().__init__(*args, **kwargs)          # the torch.nn twin's __init__
        norm_activation(activation, negative_slope, type(self).__name__)
        self.activation = activation
        self.negative_slope = negative_slope

    def _act_kwargs(self) -> dict:
        return {"activation": self.activation, "negative_slope": self.negative_slope}

    def extra_repr(self) -> str:
        return _with_activation(super().extra_repr(), self.activation, self.negative_slope)


class _BatchNorm(_FusedActivation):
    """torch's _BatchNorm.forward with an optional ``residual`` added before the
    activation. num_batches_tracked moves in the statistics kernel, which also reads
    it for the cumulative average of momentum=None: no host synchronisation (CUDA
    graphs), and nothing moves when the call raises."""

    @traced_as_leaf
    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input_dim(input)
        tracking = self.training and self.track_running_stats and self.num_batches_tracked is not None
        momentum = self.momentum if tracking or self.momentum is not None else 0.0
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        keep_buffers = not self.training or self.track_running_stats
        return F.batch_norm(input, self.running_mean if keep_buffers else None,
                            self.running_var if keep_buffers else None, self.weight, self.bias,
                            use_batch_stats, momentum, self.eps, residual=residual,
                            num_batches_tracked=self.num_batches_tracked if tracking else None, **self._act_kwargs())


class BatchNorm1d(_BatchNorm, torch.nn.BatchNorm1d):
    """torch.nn.BatchNorm1d; keyword-only activation / negative_slope; forward(input, residual=None)."""


class BatchNorm2d(_BatchNorm, torch.nn.BatchNorm2d):
    """torch.nn.BatchNorm2d; keyword-only activation / negative_slope; forward(input, residual=None)."""


class BatchNorm3d(_BatchNorm, torch.nn.BatchNorm3d):
    """torch.nn.BatchNorm3d; keyword-only activation / negative_slope; forward(input, residual=None)."""


class SyncBatchNorm(_BatchNorm, torch.nn.SyncBatchNorm):
    """torch.nn.SyncBatchNorm: in training, batch statistics over every process of
    ``process_group`` (default: the world), each process normalising its own part of
    the batch (any size, empty included): one all_gather in the forward, one
    all_reduce in the backward (kernels.norm.sync). Otherwise (eval, no initialised
    group, or a group of one process) exactly BatchNorm, as torch. Keyword-only
    activation / negative_slope; forward(input, residual=None). Unlike torch's, it
    also runs on CPU (gloo); DistributedDataParallel refuses it in a CPU module when
    it is built, so there convert ``ddp.module`` in place after wrapping."""

    @traced_as_leaf
    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        if self.training and self.track_running_stats and self.num_batches_tracked is None:
            raise AssertionError("num_batches_tracked must not be None")       # as torch's
        group = self._sync_group()
        if group is None:
            return super().forward(input, residual)
        op = type(self).__name__
        check_norm_params(input, op, weight=self.weight, bias=self.bias, running_mean=self.running_mean,
                          running_var=self.running_var)
        check_residual(input, residual, op)
        check_norm_dtype(input, op)
        tracking = self.track_running_stats and self.num_batches_tracked is not None
        if tracking:        # the counter torch's module increments first
            check_writable(self.num_batches_tracked, op, "num_batches_tracked")
        return sync_batch_norm(input, self.running_mean if self.track_running_stats else None,
                               self.running_var if self.track_running_stats else None, self.weight, self.bias,
                               self.momentum if tracking or self.momentum is not None else 0.0, self.eps, group,
                               dist.get_world_size(group), ACTIVATIONS[self.activation], self.negative_slope,
                               residual, self.num_batches_tracked if tracking else None)

    def _sync_group(self):
        """The group to take statistics over, or None (torch's rule: training on batch
        statistics in an initialised group of more than one process)."""
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        if not (use_batch_stats and self.training and dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group or dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    @classmethod
    def convert_sync_batchnorm(cls, module: torch.nn.Module, process_group=None) -> torch.nn.Module:
        """torch's classmethod: every batch norm in ``module`` (torch's or nnlib's, and
        torch's SyncBatchNorm) becomes an nnlib SyncBatchNorm holding the same
        parameters and buffers (nnlib's fused activation kept); returns the module."""
        converted = module
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            converted = cls(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_group,
                            activation=getattr(module, "activation", None),
                            negative_slope=getattr(module, "negative_slope", 0.01))
            if module.affine:
                with torch.no_grad():
                    converted.weight = module.weight
                    converted.bias = module.bias
            converted.running_mean = module.running_mean
            converted.running_var = module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
            converted.training = module.training
            if hasattr(module, "qconfig"):
                converted.qconfig = module.qconfig
        for name, child in module.named_children():
            converted.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return converted


class _InstanceNorm(_FusedActivation):
    """torch's _InstanceNorm.forward, its checks copied with torch's messages (the
    input's rank, the num_features mismatch: ValueError with affine, else a
    warning; unbatched input), then nnlib's functional. Only public torch API is
    used, so the module does not depend on torch's private methods."""

    _unbatched_rank: int      # an unbatched input's rank: C plus the spatial dims

    @traced_as_leaf
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        rank = self._unbatched_rank
        if input.dim() not in (rank, rank + 1):
            raise ValueError(f"expected {rank}D or {rank + 1}D input (got {input.dim()}D input)")
        feature_dim = input.dim() - rank
        if input.size(feature_dim) != self.num_features:
            if self.affine:
                raise ValueError(f"expected input's size at dim={feature_dim} to match num_features"
                                 f" ({self.num_features}), but got: {input.size(feature_dim)}.")
            warnings.warn(f"input's size at dim={feature_dim} does not match num_features. You can silence this "
                          "warning by not passing in num_features, which is not used because affine=False",
                          stacklevel=2)
        unbatched = input.dim() == rank
        out = F.instance_norm(input.unsqueeze(0) if unbatched else input, self.running_mean, self.running_var,
                              self.weight, self.bias, self.training or not self.track_running_stats,
                              self.momentum if self.momentum is not None else 0.0, self.eps, **self._act_kwargs())
        return out.squeeze(0) if unbatched else out


class InstanceNorm1d(_InstanceNorm, torch.nn.InstanceNorm1d):
    """torch.nn.InstanceNorm1d; keyword-only activation / negative_slope."""

    _unbatched_rank = 2


class InstanceNorm2d(_InstanceNorm, torch.nn.InstanceNorm2d):
    """torch.nn.InstanceNorm2d; keyword-only activation / negative_slope."""

    _unbatched_rank = 3


class InstanceNorm3d(_InstanceNorm, torch.nn.InstanceNorm3d):
    """torch.nn.InstanceNorm3d; keyword-only activation / negative_slope."""

    _unbatched_rank = 4


class LayerNorm(_FusedActivation, torch.nn.LayerNorm):
    """torch.nn.LayerNorm; keyword-only activation / negative_slope."""

    @traced_as_leaf
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps, **self._act_kwargs())


class GroupNorm(_FusedActivation, torch.nn.GroupNorm):
    """torch.nn.GroupNorm; keyword-only activation / negative_slope."""

    @traced_as_leaf
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps, **self._act_kwargs())

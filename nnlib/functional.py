"""``torch.nn.functional``-compatible entry points: same names, same signatures,
same errors. Extensions (fused activation, residual) are keyword-only and off by
default. Each function checks its arguments, then runs the Triton path, or
torch's own function where ``nnlib.backend(input)`` is "torch".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import activation as _act
from kernels import pool as _pool
from kernels._runtime import backend, check_same_device

__all__ = ["relu", "relu_", "leaky_relu", "leaky_relu_", "prelu", "max_pool2d", "max_pool2d_with_indices"]


def _on_torch_path(*tensors) -> bool:
    return any(t is not None and backend(t) == "torch" for t in tensors)


# ---------------------------------------------------------------------------
# Activations

def _check_activation_input(input, op: str, allow_integer: bool = False) -> None:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{op}(): argument 'input' must be Tensor, not {type(input).__name__}")
    if input.dtype == torch.bool:
        raise RuntimeError(f"{op}(): Boolean inputs not supported for 'input'")
    if not input.is_floating_point() and not allow_integer:
        raise NotImplementedError(f"{op}(): 'input' of dtype {input.dtype} is not supported; "
                                  "use a floating-point tensor")


def relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """max(input, 0), any shape and dtype torch accepts; ``inplace`` writes input."""
    _check_activation_input(input, "relu", allow_integer=True)
    if _on_torch_path(input):
        return F.relu(input, inplace=inplace)
    return _act.ActivationFunction.apply(input, _act.ACTIVATIONS["relu"], 0.0, inplace)


def relu_(input: torch.Tensor) -> torch.Tensor:
    """In-place relu."""
    return relu(input, inplace=True)


def leaky_relu(input: torch.Tensor, negative_slope: float = 0.01, inplace: bool = False) -> torch.Tensor:
    """input where input > 0, else input * negative_slope; ``inplace`` writes input."""
    _check_activation_input(input, "leaky_relu")
    if _on_torch_path(input):
        return F.leaky_relu(input, negative_slope, inplace=inplace)
    return _act.ActivationFunction.apply(input, _act.ACTIVATIONS["leaky_relu"], float(negative_slope), inplace)


def leaky_relu_(input: torch.Tensor, negative_slope: float = 0.01) -> torch.Tensor:
    """In-place leaky_relu."""
    return leaky_relu(input, negative_slope, inplace=True)


def prelu(input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """input where input > 0, else weight[c] * input, c the channel (dim 1; one
    channel below rank 2). weight: (1,), a scalar, or (C,)."""
    _check_activation_input(input, "prelu")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"prelu(): argument 'weight' must be Tensor, not {type(weight).__name__}")
    check_same_device("prelu", input=input, weight=weight)
    if weight.dim() > 1:
        raise RuntimeError(f"prelu: Expected `weight` to be a scalar or 1D tensor, but got: ndim = {weight.dim()}")
    channels = input.shape[1] if input.dim() >= 2 else 1
    if weight.numel() != 1 and weight.numel() != channels:
        raise RuntimeError(f"prelu(): Mismatch of parameter numbers and input channel size. Found parameter "
                           f"numbers (weight) = {weight.numel()} and channel size (input.shape[1]) = {channels}.")
    if weight.dtype != input.dtype:
        raise RuntimeError(f"prelu(): Type promoting not supported: 'input' is {input.dtype} and "
                           f"'weight' is {weight.dtype}")
    if _on_torch_path(input):
        return F.prelu(input, weight)
    return _act.PReLUFunction.apply(input, weight)


# ---------------------------------------------------------------------------
# Convolution

# ---------------------------------------------------------------------------
# Pooling

_POOL_ARG_ERRORS = {
    "kernel_size": "max_pool2d: kernel_size must either be a single int, or a tuple of two ints",
    "stride": "max_pool2d: stride must either be omitted, a single int, or a tuple of two ints",
    "padding": "max_pool2d: padding must either be a single int, or a tuple of two ints",
    "dilation": "max_pool2d: dilation must be either a single int, or a tuple of two ints",
}


def _pool_pair(value, name: str) -> tuple[int, int]:
    """An int or a sequence of one or two ints as an (h, w) pair (torch's classes
    of error: TypeError for a non-int, RuntimeError for a wrong length)."""
    items = value if isinstance(value, (tuple, list, torch.Size)) else (value,)
    for item in items:
        if isinstance(item, (bool, float)) or not hasattr(item, "__index__"):
            raise TypeError(f"max_pool2d(): argument '{name}' must be tuple of ints, "
                            f"not {type(value).__name__}")
    if len(items) not in (1, 2):
        raise RuntimeError(_POOL_ARG_ERRORS[name])
    items = [int(item) for item in items]
    return (items[0], items[-1])


def _pool_activation(activation) -> int:
    """The kernels' code for max_pool2d's ``activation=`` (None or "relu")."""
    if activation not in (None, "relu"):
        raise ValueError(f"max_pool2d(): activation must be None or 'relu', got {activation!r}")
    return _act.activation_code(activation, "max_pool2d")


def _check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode) -> _pool.PoolParams:
    """torch's checks, in torch's order and with its exception classes."""
    kernel = _pool_pair(kernel_size, "kernel_size")
    stride = kernel if stride is None or (isinstance(stride, (tuple, list)) and not stride) \
        else _pool_pair(stride, "stride")
    padding = _pool_pair(padding, "padding")
    dilation = _pool_pair(dilation, "dilation")
    if input.dim() not in (3, 4):
        raise RuntimeError(f"max_pool2d(): expected a 3D or 4D (batch mode) 'input', got {input.dim()}D")
    for k, s, p, d in zip(kernel, stride, padding, dilation):
        if s == 0:
            raise RuntimeError("max_pool2d(): stride should not be zero")
        if p < 0:
            raise RuntimeError(f"max_pool2d(): pad must be non-negative, but got padding={padding}")
        if p > ((k - 1) * d + 1) // 2:
            raise RuntimeError(f"max_pool2d(): pad should be at most half of effective kernel size, but got "
                               f"padding={padding}, kernel_size={kernel} and dilation={dilation}")
    if min(kernel) <= 0:
        raise RuntimeError(f"max_pool2d(): kernel size should be greater than zero, but got kernel_size={kernel}")
    if min(stride) <= 0:
        raise RuntimeError(f"max_pool2d(): stride should be greater than zero, but got stride={stride}")
    if min(dilation) <= 0:
        raise RuntimeError(f"max_pool2d(): dilation should be greater than zero, but got dilation={dilation}")
    if 0 in input.shape[-3:]:
        raise RuntimeError(f"max_pool2d(): expected 'input' with non-zero C, H and W (optional 0 batch size), "
                           f"but got {list(input.shape)}")
    if any(p > k // 2 for k, p in zip(kernel, padding)):
        raise RuntimeError(f"max_pool2d(): pad should be smaller than or equal to half of kernel size, but got "
                           f"padding={padding}, kernel_size={kernel}")
    out = [_pool.output_shape(n, k, s, p, d, ceil_mode)
           for n, k, s, p, d in zip(input.shape[-2:], kernel, stride, padding, dilation)]
    if min(out) < 1:
        raise RuntimeError(f"max_pool2d(): given input size {list(input.shape[-2:])}, the calculated output "
                           f"size {out} is too small (kernel_size={kernel}, dilation={dilation})")
    return _pool.PoolParams(kernel, stride, padding, dilation)


def max_pool2d_with_indices(input: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode: bool = False, return_indices: bool = False, *, activation=None):
    """(output, indices): max over each window of (N, C, H, W) or (C, H, W) input,
    output (N, C, OH, OW) in input's memory format, indices int64 flat h*W + w
    within each plane (torch's choice among ties, NaN is the maximum).
    ``activation="relu"`` applies relu to the pooled values; indices are those of
    the maxima before it."""
    code = _pool_activation(activation)
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"max_pool2d(): argument 'input' must be Tensor, not {type(input).__name__}")
    if _on_torch_path(input) or input.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        out, indices = F.max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode, True)
        return (F.relu(out) if activation else out), indices
    params = _check_max_pool2d(input, kernel_size, stride, padding, dilation, bool(ceil_mode))
    return _pool.MaxPool2dFunction.apply(input, params, bool(ceil_mode), True, True, code)


def max_pool2d(input: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False, *, activation=None):
    """Max over each kernel_size window (stride defaults to kernel_size) of
    (N, C, H, W) or (C, H, W) input; output (N, C, OH, OW) in input's memory
    format, plus int64 indices when ``return_indices``. Keyword-only
    ``activation="relu"`` applies relu to the pooled values."""
    if return_indices:
        return max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode,
                                       activation=activation)
    code = _pool_activation(activation)
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"max_pool2d(): argument 'input' must be Tensor, not {type(input).__name__}")
    if _on_torch_path(input) or input.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        out = F.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode)
        return F.relu(out) if activation else out
    params = _check_max_pool2d(input, kernel_size, stride, padding, dilation, bool(ceil_mode))
    need_indices = torch.is_grad_enabled() and input.requires_grad
    return _pool.MaxPool2dFunction.apply(input, params, bool(ceil_mode), False, need_indices, code)[0]


# ---------------------------------------------------------------------------
# Normalization

"""``torch.nn.functional``-compatible entry points: same names, same signatures,
same errors. Extensions (fused activation, residual) are keyword-only and off by
default. Each function checks its arguments, then runs the Triton path, or
torch's own function where ``nnlib.backend(input)`` is "torch".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import activation as _act
from kernels._runtime import backend, check_same_device

__all__ = ["relu", "relu_", "leaky_relu", "leaky_relu_", "prelu"]


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

# ---------------------------------------------------------------------------
# Normalization

"""``torch.nn.functional``-compatible entry points: same names, same signatures,
torch's exception classes (README lists the corners where they differ).
Extensions (fused activation, residual) are keyword-only and off by default.
Each function checks its arguments (the checks live in ``nnlib._checks``), then
runs the Triton path, or torch's own function where ``nnlib.backend(input)``
is "torch" and under torch.func transforms, forward-mode AD and
``torch.jit.trace`` (``_on_torch_path``). Every other name of
``torch.nn.functional`` (softmax, linear, pad, ...) is torch's own, reached
through this module, which can so replace it wholesale (``import
nnlib.functional as F``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import forward_ad
from torch.overrides import handle_torch_function, has_torch_function_variadic

from kernels import activation as _act
from kernels import conv as _conv
from kernels import norm as _norm
from kernels import pool as _pool
from kernels._runtime import backend, check_same_device

from ._checks import (KERNEL_DTYPES, as_float32, check_activation_input, check_batch_norm, check_conv2d,
                      check_group_norm, check_inplace, check_instance_norm, check_layer_norm, check_max_pool2d,
                      check_writable, conv_activation, pool_activation, scalar, type_name)

__all__ = ["relu", "relu_", "leaky_relu", "leaky_relu_", "prelu", "max_pool2d", "max_pool2d_with_indices",
           "batch_norm", "instance_norm", "layer_norm", "group_norm", "conv2d"]


def _on_torch_path(input: torch.Tensor) -> bool:
    """True when ``input`` takes torch's path (see ``nnlib.backend``), or under a
    torch.func transform or forward-mode AD (torch's ops have batching and
    forward-derivative rules, nnlib's kernels none: a custom operator's tangent
    would silently be zero, its ``grad`` raises), or while ``torch.jit.trace``
    records (it reads sizes as tensors, and records torch's ops, which
    TorchScript and ONNX export know)."""
    return (backend(input) == "torch" or torch._C._are_functorch_transforms_active()
            or forward_ad._current_level >= 0 or torch.jit.is_tracing())


# ---------------------------------------------------------------------------
# torch.autocast: torch casts an op's floating inputs before the op runs, by a
# per-op policy; nnlib's ops cast the same way (meta and other devices take
# torch's path, which applies autocast itself).

_LOWER_PRECISION = "lower_precision"     # conv2d, prelu: autocast's dtype, CPU and CUDA
_FLOAT32_ON_CUDA = "float32_on_cuda"     # layer_norm, group_norm: float32 under CUDA autocast (_float32_norm)


def _out_of_graph(cast, uncast):
    """(what the kernels read, master) of a tensor autocast may have cast: a cast of
    one that takes a gradient is detached and the uncast tensor is its master (its
    gradient goes there, written by the kernels in its dtype, where torch casts the
    cast's gradient back; the op is the master's one consumer); else (cast, None)."""
    if cast is not uncast and uncast.requires_grad:
        return cast.detach(), uncast
    return cast, None


def _autocast_dtype(policy: str, input) -> torch.dtype | None:
    """The dtype torch.autocast casts the floating inputs of an op of ``policy`` to,
    when it is enabled for input's device; else None."""
    if not torch._C._is_any_autocast_enabled():
        return None
    device = input.device.type if isinstance(input, torch.Tensor) else None
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return None
    if policy == _LOWER_PRECISION:
        return torch.get_autocast_dtype(device)
    return torch.float32 if device == "cuda" else None


def _cast(t, dtype: torch.dtype):
    """t as autocast casts it: float32 / float16 / bfloat16 tensors only."""
    return t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype in KERNEL_DTYPES else t


def _autocast(policy: str, input, *others):
    """(input, *others) cast as torch.autocast casts an op of ``policy``."""
    dtype = _autocast_dtype(policy, input)
    if dtype is None:
        return (input, *others)
    return tuple(_cast(t, dtype) for t in (input, *others))


def _float32_norm(input, weight, bias):
    """(weight, bias, output dtype) of a layer or group norm, which CUDA autocast runs
    in float32: the parameters cast as torch casts them; a float16 / bfloat16 input
    is not (the kernels read it as it is and write a float32 output, and its
    gradient in its own dtype: the values of torch's cast copy), output dtype
    float32 then, else None (the input's)."""
    dtype = _autocast_dtype(_FLOAT32_ON_CUDA, input)
    if dtype is None:
        return weight, bias, None
    low = isinstance(input, torch.Tensor) and input.dtype in (torch.float16, torch.bfloat16)
    return _cast(weight, dtype), _cast(bias, dtype), dtype if low else None


# ---------------------------------------------------------------------------
# Activations

def relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """max(input, 0), any shape and dtype torch accepts; ``inplace`` writes input."""
    if has_torch_function_variadic(input):
        return handle_torch_function(relu, (input,), input, inplace=inplace)
    check_activation_input(input, "relu", allow_integer=True)
    if _on_torch_path(input):
        return F.relu(input, inplace=inplace)
    if inplace:
        check_inplace(input, "relu")
        return _act.activation_(input, _act.ACT_RELU.value, 0.0)
    return _act.activation_op(input, _act.ACT_RELU.value, 0.0)


def relu_(input: torch.Tensor) -> torch.Tensor:
    """In-place relu."""
    return relu(input, inplace=True)


def leaky_relu(input: torch.Tensor, negative_slope: float = 0.01, inplace: bool = False) -> torch.Tensor:
    """input where input > 0, else input * negative_slope; ``inplace`` writes input.
    torch's order of checks: argument types, in-place writability, dtype, the
    slope's conversion."""
    if has_torch_function_variadic(input):
        return handle_torch_function(leaky_relu, (input,), input, negative_slope, inplace=inplace)
    check_activation_input(input, "leaky_relu", check_dtype=False)
    slope = scalar(negative_slope, "leaky_relu", "negative_slope")
    if _on_torch_path(input):
        return F.leaky_relu(input, negative_slope, inplace=inplace)
    if inplace:
        check_inplace(input, "leaky_relu")
    check_activation_input(input, "leaky_relu")
    slope = as_float32(slope, "leaky_relu", "negative_slope")
    if inplace:
        return _act.activation_(input, _act.ACT_LEAKY_RELU.value, slope)
    return _act.activation_op(input, _act.ACT_LEAKY_RELU.value, slope)


def leaky_relu_(input: torch.Tensor, negative_slope: float = 0.01) -> torch.Tensor:
    """In-place leaky_relu."""
    return leaky_relu(input, negative_slope, inplace=True)


def prelu(input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """input where input > 0, else weight[c] * input, c the channel (dim 1; one
    channel below rank 2). weight: (1,), a scalar, or (C,)."""
    if has_torch_function_variadic(input, weight):
        return handle_torch_function(prelu, (input, weight), input, weight)
    check_activation_input(input, "prelu", check_dtype=False)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"prelu(): argument 'weight' must be Tensor, not {type_name(weight)}")
    uncast = weight
    input, weight = _autocast(_LOWER_PRECISION, input, weight)
    # torch's order: dtypes must agree, then shapes, then the dtype must be floating point.
    if weight.dtype != input.dtype:
        raise RuntimeError(f"prelu(): Type promoting not supported: 'input' is {input.dtype} and "
                           f"'weight' is {weight.dtype}")
    check_same_device("prelu", input=input, weight=weight)
    if weight.layout != torch.strided:
        raise RuntimeError(f"prelu(): 'weight' of layout {weight.layout} is not supported (a dense tensor only)")
    if weight.dim() > 1:
        raise RuntimeError(f"prelu: Expected `weight` to be a scalar or 1D tensor, but got: ndim = {weight.dim()}")
    channels = input.shape[1] if input.dim() >= 2 else 1
    if weight.numel() != 1 and weight.numel() != channels:
        raise RuntimeError(f"prelu(): Mismatch of parameter numbers and input channel size. Found parameter "
                           f"numbers (weight) = {weight.numel()} and channel size (input.shape[1]) = {channels}.")
    check_activation_input(input, "prelu")
    if _on_torch_path(input):
        return F.prelu(input, weight)
    return _act.prelu_op(input, *_out_of_graph(weight, uncast))


# ---------------------------------------------------------------------------
# Convolution

# The conv kernels index rows and columns in int32: row = q * stride - pad + tap * dilation
# and the like stay below 2**31, with a factor of two to spare, while the padded input is
# below this (it holds the dilated kernel, and check_conv2d leaves no stride past it).
_CONV_INT32_EXTENT = 2**30


def _conv_past_int32(input, pad) -> bool:
    """Whether a checked conv2d call's padded input reaches ``_CONV_INT32_EXTENT``
    (torch takes padding and dilation of 2**31 and more): torch's convolution runs it."""
    H, W = input.shape[-2:]
    return max(H + pad[0] + pad[2], W + pad[1] + pad[3]) >= _CONV_INT32_EXTENT


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
           dilation=1, groups=1, *, activation=None, negative_slope: float = 0.01) -> torch.Tensor:
    """2-D convolution of input (N, C, H, W) or (C, H, W) with weight
    (K, C/groups, kH, kW) and bias (K,): output (N, K, P, Q) (or (K, P, Q)) in the
    input's dtype (autocast's under torch.autocast), channels_last when input or
    weight is. torch's arguments (int or pair; padding 'valid' / 'same' too);
    ``activation`` None, "relu" or "leaky_relu" (with ``negative_slope``) is
    applied after the bias, in the kernel's epilogue."""
    if has_torch_function_variadic(input, weight, bias):
        return handle_torch_function(conv2d, (input, weight, bias), input, weight, bias, stride, padding, dilation,
                                     groups, activation=activation, negative_slope=negative_slope)
    code, slope = conv_activation(activation, negative_slope, getattr(input, "dtype", None))
    uncast_weight, uncast_bias = weight, bias
    input, weight, bias = _autocast(_LOWER_PRECISION, input, weight, bias)
    if isinstance(input, torch.Tensor) and (_on_torch_path(input) or input.dtype not in KERNEL_DTYPES):
        out = F.conv2d(input, weight, bias, stride, padding, dilation, groups)
        return _torch_epilogue(out, activation, slope)
    checked = check_conv2d((input, weight, bias), (stride, padding, dilation, groups))
    if _conv_past_int32(input, checked[1]):
        out = F.conv2d(input, weight, bias, stride, padding, dilation, groups)
        return _torch_epilogue(out, activation, slope)
    stride, pad, dilation, groups = checked
    weight, master_weight = _out_of_graph(weight, uncast_weight)
    bias, master_bias = _out_of_graph(bias, uncast_bias)
    x = input.unsqueeze(0) if input.dim() == 3 else input
    if x.shape[1] == 0:     # as torch's empty-input path: no input channels, no output channels either
        weight, bias, master_weight, master_bias = (None if t is None else t[:0]
                                                    for t in (weight, bias, master_weight, master_bias))
    if code == _act.ACT_LEAKY_RELU.value and slope < 0:
        # The fused backward reads the output's sign, which a negative slope flips:
        # convolve, then apply leaky_relu (a Triton kernel too) on its own.
        out = leaky_relu(_conv.conv2d(x, weight, bias, stride, pad, dilation, groups, 0, 0.01, master_weight,
                                      master_bias), slope)
    else:
        out = _conv.conv2d(x, weight, bias, stride, pad, dilation, groups, code, slope, master_weight, master_bias)
    return out.squeeze(0) if input.dim() == 3 else out


# ---------------------------------------------------------------------------
# Pooling

def max_pool2d_with_indices(input: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode: bool = False, return_indices: bool = False, *, activation=None):
    """(output, indices): max over each window of (N, C, H, W) or (C, H, W) input,
    output (N, C, OH, OW) in input's memory format, indices int64 flat h*W + w
    within each plane (torch's choice among ties, NaN is the maximum).
    ``activation="relu"`` applies relu to the pooled values; indices are those of
    the maxima before it."""
    if has_torch_function_variadic(input):
        return handle_torch_function(max_pool2d_with_indices, (input,), input, kernel_size, stride, padding,
                                     dilation, ceil_mode, return_indices, activation=activation)
    code = pool_activation(activation)
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"max_pool2d(): argument 'input' must be Tensor, not {type_name(input)}")
    if _on_torch_path(input) or input.dtype not in KERNEL_DTYPES:
        out, indices = F.max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode, True)
        return (F.relu(out) if activation else out), indices
    params = check_max_pool2d((input,), (kernel_size, stride, padding, dilation, ceil_mode))
    return _pool.max_pool2d_op(input, *params, ceil_mode, _pool.INDEX_FLAT, code)


def max_pool2d(input: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False, *, activation=None):
    """Max over each kernel_size window (stride defaults to kernel_size) of
    (N, C, H, W) or (C, H, W) input; output (N, C, OH, OW) in input's memory
    format, plus int64 indices when ``return_indices``. Keyword-only
    ``activation="relu"`` applies relu to the pooled values."""
    if has_torch_function_variadic(input):
        return handle_torch_function(max_pool2d, (input,), input, kernel_size, stride, padding, dilation, ceil_mode,
                                     return_indices, activation=activation)
    if return_indices:
        return max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode,
                                       activation=activation)
    code = pool_activation(activation)
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"max_pool2d(): argument 'input' must be Tensor, not {type_name(input)}")
    if _on_torch_path(input) or input.dtype not in KERNEL_DTYPES:
        out = F.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode)
        return F.relu(out) if activation else out
    params = check_max_pool2d((input,), (kernel_size, stride, padding, dilation, ceil_mode))
    index_mode = _pool.INDEX_LOCAL if torch.is_grad_enabled() and input.requires_grad else _pool.INDEX_NONE
    return _pool.max_pool2d_op(input, *params, ceil_mode, index_mode, code)[0]


# ---------------------------------------------------------------------------
# Normalization

def _torch_epilogue(out, activation, negative_slope, residual=None):
    """The keyword-only extras on torch's path: + residual, then the activation."""
    if residual is not None:
        out = out + residual
    if activation == "relu":
        out = F.relu(out)
    elif activation == "leaky_relu":
        out = F.leaky_relu(out, negative_slope)
    return out


def batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, training: bool = False,
               momentum: float | None = 0.1, eps: float = 1e-5, *, activation: str | None = None,
               negative_slope: float = 0.01, residual: torch.Tensor | None = None,
               num_batches_tracked: torch.Tensor | None = None) -> torch.Tensor:
    """Batch norm of input (N, C, *) (rank 2 to 5 and beyond, as torch) over (N, *) per
    channel. Training uses the batch statistics and updates running_mean /
    running_var (C,) in place (unbiased variance); eval uses them. Keyword-only:
    ``residual`` (input's shape) added after the affine, then ``activation`` ("relu" /
    "leaky_relu" with ``negative_slope``): the ResNet block tail in one pass;
    ``num_batches_tracked`` (a module's counter, training with running statistics):
    incremented with the running statistics, and ``momentum=None`` then means the
    cumulative average 1 / num_batches_tracked, read on the device (torch's module
    semantics without a host synchronisation)."""
    tensors = (input, running_mean, running_var, weight, bias, residual, num_batches_tracked)
    if has_torch_function_variadic(*tensors):
        return handle_torch_function(batch_norm, tensors, input, running_mean, running_var, weight, bias, training,
                                     momentum, eps, activation=activation, negative_slope=negative_slope,
                                     residual=residual, num_batches_tracked=num_batches_tracked)
    momentum, eps, code, slope = check_batch_norm(tensors, (training, momentum, eps, activation, negative_slope))
    if num_batches_tracked is not None:     # the counter torch's module increments first
        check_writable(num_batches_tracked, "batch_norm", "num_batches_tracked")
    if _on_torch_path(input):
        if num_batches_tracked is not None:     # as torch's module: count, then the factor (a host read)
            num_batches_tracked.add_(1)
            momentum = 1.0 / float(num_batches_tracked) if momentum is None else momentum
        out = F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
        return _torch_epilogue(out, activation, slope, residual)
    return _norm.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, code, slope,
                            residual, num_batches_tracked)


def instance_norm(input: torch.Tensor, running_mean: torch.Tensor | None = None,
                  running_var: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None, use_input_stats: bool = True, momentum: float = 0.1,
                  eps: float = 1e-5, *, activation: str | None = None,
                  negative_slope: float = 0.01) -> torch.Tensor:
    """Instance norm of input (N, C, *) over * per (sample, channel). With
    use_input_stats the running stats (C,), when given, move toward the batch
    average of the instance statistics; without it they normalize."""
    if has_torch_function_variadic(input, running_mean, running_var, weight, bias):
        return handle_torch_function(instance_norm, (input, running_mean, running_var, weight, bias), input,
                                     running_mean, running_var, weight, bias, use_input_stats, momentum, eps,
                                     activation=activation, negative_slope=negative_slope)
    momentum, eps, code, slope = check_instance_norm((input, running_mean, running_var, weight, bias),
                                                     (use_input_stats, momentum, eps, activation, negative_slope))
    if use_input_stats and running_mean is not None:
        check_writable(running_mean, "instance_norm", "running_mean")
        check_writable(running_var, "instance_norm", "running_var")
    if _on_torch_path(input):
        out = F.instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)
        return _torch_epilogue(out, activation, slope)
    return _norm.instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps,
                               code, slope)


def layer_norm(input: torch.Tensor, normalized_shape, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5, *, activation: str | None = None,
               negative_slope: float = 0.01) -> torch.Tensor:
    """Layer norm of input (*, *normalized_shape) over the trailing dims, weight and
    bias of shape normalized_shape (elementwise)."""
    if has_torch_function_variadic(input, weight, bias):
        return handle_torch_function(layer_norm, (input, weight, bias), input, normalized_shape, weight, bias, eps,
                                     activation=activation, negative_slope=negative_slope)
    weight, bias, dtype = _float32_norm(input, weight, bias)   # casts raise nothing: checks after
    shape, eps, code, slope = check_layer_norm((input, weight, bias),
                                               (normalized_shape, eps, activation, negative_slope))
    if _on_torch_path(input):       # torch's autocast casts input
        return _torch_epilogue(F.layer_norm(input, shape, weight, bias, eps), activation, slope)
    return _norm.layer_norm(input, shape, weight, bias, eps, code, slope, dtype)


def group_norm(input: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5, *, activation: str | None = None,
               negative_slope: float = 0.01) -> torch.Tensor:
    """Group norm of input (N, C, *) over (C / num_groups, *) per (sample, group),
    any num_groups dividing C; weight, bias (C,)."""
    if has_torch_function_variadic(input, weight, bias):
        return handle_torch_function(group_norm, (input, weight, bias), input, num_groups, weight, bias, eps,
                                     activation=activation, negative_slope=negative_slope)
    weight, bias, dtype = _float32_norm(input, weight, bias)   # casts raise nothing: checks after
    num_groups, eps, code, slope = check_group_norm((input, weight, bias),
                                                    (num_groups, eps, activation, negative_slope))
    if _on_torch_path(input):       # torch's autocast casts input
        return _torch_epilogue(F.group_norm(input, num_groups, weight, bias, eps), activation, slope)
    return _norm.group_norm(input, num_groups, weight, bias, eps, code, slope, dtype)


def __getattr__(name: str):
    """torch.nn.functional's functions that nnlib does not implement (``__all__``
    lists those it does)."""
    if not name.startswith("__"):
        try:
            return getattr(F, name)
        except AttributeError:
            pass
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

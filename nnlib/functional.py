"""``torch.nn.functional``-compatible entry points: same names, same signatures,
same errors. Extensions (fused activation, residual) are keyword-only and off by
default. Each function checks its arguments, then runs the Triton path, or
torch's own function where ``nnlib.backend(input)`` is "torch".
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from kernels import activation as _act
from kernels import conv as _conv
from kernels import norm as _norm
from kernels import pool as _pool
from kernels._library import tracing
from kernels._runtime import backend, check_same_device

__all__ = ["relu", "relu_", "leaky_relu", "leaky_relu_", "prelu", "max_pool2d", "max_pool2d_with_indices",
           "batch_norm", "instance_norm", "layer_norm", "group_norm", "conv2d"]


def _on_torch_path(input: torch.Tensor) -> bool:
    """True when ``input`` takes torch's path (see ``nnlib.backend``)."""
    return backend(input) == "torch"


# ---------------------------------------------------------------------------
# torch.autocast: torch casts an op's floating inputs before the op runs, by a
# per-op policy; nnlib's ops cast the same way (meta and other devices take
# torch's path, which applies autocast itself).

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)   # autocast's, and the kernels'
_LOWER_PRECISION = "lower_precision"     # conv2d, prelu: autocast's dtype, CPU and CUDA
_FLOAT32_ON_CUDA = "float32_on_cuda"     # layer_norm, group_norm: float32 under CUDA autocast


def _autocast(policy: str, input, *others):
    """(input, *others) cast as torch.autocast casts an op of ``policy`` when it
    is enabled for input's device; float32 / float16 / bfloat16 tensors only."""
    device = input.device.type if isinstance(input, torch.Tensor) else None
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return (input, *others)
    if policy == _LOWER_PRECISION:
        dtype = torch.get_autocast_dtype(device)
    elif device == "cuda":
        dtype = torch.float32
    else:
        return (input, *others)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype in _FLOAT_DTYPES else t
                 for t in (input, *others))


def _is_int(value) -> bool:
    """An int as torch's argument parser takes one: a Python or numpy integer (bool
    included), or an integer or bool tensor of one element."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not (value.is_floating_point() or value.is_complex())
    return not isinstance(value, float) and hasattr(value, "__index__")


# ---------------------------------------------------------------------------
# Activations

def _check_activation_input(input, op: str, allow_integer: bool = False, check_dtype: bool = True) -> None:
    """torch's classes: TypeError for a non-tensor; relu (``allow_integer``) takes
    integers but not bool (RuntimeError); the others take floating point only
    (NotImplementedError, bool included)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{op}(): argument 'input' must be Tensor, not {type(input).__name__}")
    if not check_dtype:
        return
    if allow_integer and input.dtype == torch.bool:
        raise RuntimeError(f"{op}(): Boolean inputs not supported for 'input'")
    if not input.is_floating_point() and not allow_integer:
        raise NotImplementedError(f"{op}(): 'input' of dtype {input.dtype} is not supported; "
                                  "use a floating-point tensor")


def _check_inplace(input: torch.Tensor, op: str) -> None:
    """What torch refuses before it writes ``input`` in place (RuntimeError): an
    element stored for several (a stride-0 dim), and under grad mode a leaf that
    requires grad or a view of one. The kernel must not run first: it would write.
    (While tracing, torch.compile's functionalization and autograd check these.)"""
    if tracing(input):
        return
    if input.numel() and any(stride == 0 and size > 1 for size, stride in zip(input.shape, input.stride())):
        raise RuntimeError(f"{op}(): unsupported operation: more than one element of the written-to tensor refers "
                           "to a single memory location. Please clone() the tensor before performing the operation.")
    if torch.is_grad_enabled() and input.requires_grad:
        if input.is_leaf:
            raise RuntimeError(f"{op}(): a leaf Variable that requires grad is being used in an in-place operation.")
        if input._is_view() and input._base.is_leaf:
            raise RuntimeError(f"{op}(): a view of a leaf Variable that requires grad is being used in an in-place "
                               "operation.")


def relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """max(input, 0), any shape and dtype torch accepts; ``inplace`` writes input."""
    _check_activation_input(input, "relu", allow_integer=True)
    if _on_torch_path(input):
        return F.relu(input, inplace=inplace)
    if inplace:
        _check_inplace(input, "relu")
        return _act.activation_(input, _act.ACT_RELU.value, 0.0)
    return _act.activation_op(input, _act.ACT_RELU.value, 0.0)


def relu_(input: torch.Tensor) -> torch.Tensor:
    """In-place relu."""
    return relu(input, inplace=True)


def _scalar(value, op: str, name: str):
    """A Scalar argument as torch's parser takes it: a Python or numpy number, or a
    0-d tensor that does not require grad (TypeError otherwise; OverflowError for
    an integer past int64). Returns the Python number."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad:
        value = value.item()
    if not isinstance(value, numbers.Number):
        raise TypeError(f"{op}(): argument '{name}' must be Number, not {type(value).__name__}")
    if isinstance(value, numbers.Integral) and not -2**63 <= value < 2**63:
        raise OverflowError(f"{op}(): argument '{name}' = {value} is too big to convert")
    return value


def _as_float32(value, op: str, name: str) -> float:
    """A Scalar converted to the float the kernels compute in, as torch converts it
    for float32 / float16 / bfloat16 tensors (RuntimeError for an imaginary part or
    a finite value past float32's range)."""
    if isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real):
        if value.imag:
            raise RuntimeError(f"{op}(): {name}={value} cannot be converted to type float without overflow")
        value = value.real
    value = float(value)
    if math.isfinite(value) and abs(value) > torch.finfo(torch.float32).max:
        raise RuntimeError(f"{op}(): {name}={value} cannot be converted to type float without overflow")
    return value


def leaky_relu(input: torch.Tensor, negative_slope: float = 0.01, inplace: bool = False) -> torch.Tensor:
    """input where input > 0, else input * negative_slope; ``inplace`` writes input.
    torch's order of checks: argument types, in-place writability, dtype, the
    slope's conversion."""
    _check_activation_input(input, "leaky_relu", check_dtype=False)
    slope = _scalar(negative_slope, "leaky_relu", "negative_slope")
    if _on_torch_path(input):
        return F.leaky_relu(input, negative_slope, inplace=inplace)
    if inplace:
        _check_inplace(input, "leaky_relu")
    _check_activation_input(input, "leaky_relu")
    slope = _as_float32(slope, "leaky_relu", "negative_slope")
    if inplace:
        return _act.activation_(input, _act.ACT_LEAKY_RELU.value, slope)
    return _act.activation_op(input, _act.ACT_LEAKY_RELU.value, slope)


def leaky_relu_(input: torch.Tensor, negative_slope: float = 0.01) -> torch.Tensor:
    """In-place leaky_relu."""
    return leaky_relu(input, negative_slope, inplace=True)


def prelu(input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """input where input > 0, else weight[c] * input, c the channel (dim 1; one
    channel below rank 2). weight: (1,), a scalar, or (C,)."""
    _check_activation_input(input, "prelu", check_dtype=False)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"prelu(): argument 'weight' must be Tensor, not {type(weight).__name__}")
    input, weight = _autocast(_LOWER_PRECISION, input, weight)
    # torch's order: dtypes must agree, then shapes, then the dtype must be floating point.
    if weight.dtype != input.dtype:
        raise RuntimeError(f"prelu(): Type promoting not supported: 'input' is {input.dtype} and "
                           f"'weight' is {weight.dtype}")
    check_same_device("prelu", input=input, weight=weight)
    if weight.dim() > 1:
        raise RuntimeError(f"prelu: Expected `weight` to be a scalar or 1D tensor, but got: ndim = {weight.dim()}")
    channels = input.shape[1] if input.dim() >= 2 else 1
    if weight.numel() != 1 and weight.numel() != channels:
        raise RuntimeError(f"prelu(): Mismatch of parameter numbers and input channel size. Found parameter "
                           f"numbers (weight) = {weight.numel()} and channel size (input.shape[1]) = {channels}.")
    _check_activation_input(input, "prelu")
    if _on_torch_path(input):
        return F.prelu(input, weight)
    return _act.prelu_op(input, weight)


# ---------------------------------------------------------------------------
# Convolution

def _int_items(value, op: str, name: str) -> tuple:
    """The items of an int or int-list argument; TypeError for anything else, as
    torch's parser (ints or one-element integer tensors; a bool only after the first)."""
    items = tuple(value) if isinstance(value, (tuple, list, torch.Size)) else (value,)
    if (items and isinstance(items[0], bool)) or not all(_is_int(i) for i in items):
        raise TypeError(f"{op}(): argument '{name}' must be tuple of ints, not {type(value).__name__}")
    return items


def _conv_pair(items: tuple, name: str) -> tuple[int, int]:
    """One or two ints as an (h, w) pair (RuntimeError for another length)."""
    if len(items) not in (1, 2):
        raise RuntimeError(f"conv2d(): expected {name} to be a single integer value or a list of 2 values to "
                           f"match the convolution dimensions, but got {name}={[int(i) for i in items]}")
    return int(items[0]), int(items[-1])


def _conv_activation(activation, negative_slope) -> int:
    """The kernels' code for conv2d's ``activation=`` (None, "relu", "leaky_relu")."""
    code = _act.activation_code(activation, "conv2d")
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)):
        raise TypeError(f"conv2d(): argument 'negative_slope' must be a number, not {type(negative_slope).__name__}")
    return code


def _check_conv2d(input, weight, bias, stride, padding, dilation, groups):
    """torch's checks and exception classes; returns (stride, (top, left, bottom,
    right) padding, dilation, groups)."""
    for name, t in (("input", input), ("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor) and (t is not None or name != "bias"):
            raise TypeError(f"conv2d(): argument '{name}' must be Tensor, not {type(t).__name__}")
    # Argument types first (TypeError), as torch's parser, then values and shapes.
    if isinstance(groups, bool) or not _is_int(groups):
        raise TypeError(f"conv2d(): argument 'groups' must be int, not {type(groups).__name__}")
    items = {name: _int_items(value, "conv2d", name) for name, value in (("stride", stride), ("padding", padding),
                                                              ("dilation", dilation))
             if not (name == "padding" and isinstance(value, str))}
    stride = _conv_pair(items["stride"], "stride")
    dilation = _conv_pair(items["dilation"], "dilation")
    groups = int(groups)
    if input.dim() not in (3, 4):
        raise RuntimeError(f"Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: "
                           f"{list(input.shape)}")
    if weight.dim() != 4:
        raise RuntimeError(f"conv2d(): expected 'weight' of 4 dimensions (out_channels, in_channels / groups, kH, "
                           f"kW), but got weight of size {list(weight.shape)}")
    if groups <= 0:
        raise RuntimeError("conv2d(): non-positive groups is not supported")
    if min(stride) <= 0:
        raise RuntimeError(f"conv2d(): non-positive stride is not supported, got stride={stride}")
    if min(dilation) <= 0:
        raise RuntimeError(f"conv2d(): non-positive dilation is not supported, got dilation={dilation}")
    kernel = tuple(weight.shape[2:])
    if isinstance(padding, str):
        if padding == "valid":
            pad = (0, 0, 0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise RuntimeError("conv2d(): padding='same' is not supported for strided convolutions")
            total = [d * (k - 1) for d, k in zip(dilation, kernel)]
            pad = (total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2)
        else:
            raise RuntimeError(f"conv2d(): Invalid padding string: {padding!r}")
    else:
        ph, pw = _conv_pair(items["padding"], "padding")
        if min(ph, pw) < 0:
            raise RuntimeError(f"conv2d(): negative padding is not supported, got padding={(ph, pw)}")
        pad = (ph, pw, ph, pw)
    check_same_device("conv2d", input=input, weight=weight, bias=bias)
    # torch sends an empty batch to its empty backend, before any backend checks the weight's dtype.
    if weight.dtype != input.dtype and not (input.dim() == 4 and input.shape[0] == 0):
        raise RuntimeError(f"conv2d(): Input type ({input.dtype}) and weight type ({weight.dtype}) should be the same")
    if bias is not None and bias.dtype != input.dtype:
        raise RuntimeError(f"conv2d(): Input type ({input.dtype}) and bias type ({bias.dtype}) should be the same")
    out_channels, group_channels = weight.shape[:2]
    if out_channels == 0:
        raise RuntimeError(f"Given groups={groups}, expected weight to be at least 1 at dimension 0, but got "
                           f"weight of size {list(weight.shape)} instead")
    if out_channels % groups:
        raise RuntimeError(f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
                           f"but got weight of size {list(weight.shape)} instead")
    if input.shape[-3] != group_channels * groups:
        raise RuntimeError(f"Given groups={groups}, weight of size {list(weight.shape)}, expected input"
                           f"{list(input.shape)} to have {group_channels * groups} channels, but got "
                           f"{input.shape[-3]} channels instead")
    if bias is not None and (bias.dim() != 1 or bias.numel() != out_channels):
        raise RuntimeError(f"Given weight of size {list(weight.shape)}, expected bias to be 1-dimensional with "
                           f"{out_channels} elements, but got bias of size {list(bias.shape)} instead")
    if 0 in input.shape[-2:]:
        raise RuntimeError(f"conv2d(): only zero batch or zero channel inputs are supported, but got input shape: "
                           f"{list(input.shape)}")
    padded = [input.shape[-2] + pad[0] + pad[2], input.shape[-1] + pad[1] + pad[3]]
    dilated = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    if padded[0] < dilated[0] or padded[1] < dilated[1]:
        raise RuntimeError(f"Calculated padded input size per channel: ({padded[0]} x {padded[1]}). Kernel size: "
                           f"({dilated[0]} x {dilated[1]}). Kernel size can't be greater than actual input size")
    return stride, pad, dilation, groups


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
           dilation=1, groups=1, *, activation=None, negative_slope: float = 0.01) -> torch.Tensor:
    """2-D convolution of input (N, C, H, W) or (C, H, W) with weight
    (K, C/groups, kH, kW) and bias (K,): output (N, K, P, Q) (or (K, P, Q)) in the
    input's dtype, channels_last when input or weight is. torch's arguments
    (int or pair; padding 'valid' / 'same' too); ``activation`` None, "relu" or
    "leaky_relu" (with ``negative_slope``) is applied after the bias, in the
    kernel's epilogue."""
    code = _conv_activation(activation, negative_slope)
    input, weight, bias = _autocast(_LOWER_PRECISION, input, weight, bias)
    if isinstance(input, torch.Tensor) and (_on_torch_path(input) or input.dtype not in _FLOAT_DTYPES):
        out = F.conv2d(input, weight, bias, stride, padding, dilation, groups)
        return _torch_epilogue(out, activation, negative_slope)
    stride, pad, dilation, groups = _check_conv2d(input, weight, bias, stride, padding, dilation, groups)
    x = input.unsqueeze(0) if input.dim() == 3 else input
    if code == _act.ACT_LEAKY_RELU.value and negative_slope < 0:
        # The fused backward reads the output's sign, which a negative slope flips:
        # convolve, then apply leaky_relu (a Triton kernel too) on its own.
        out = leaky_relu(_conv.conv2d(x, weight, bias, stride, pad, dilation, groups), negative_slope)
    else:
        out = _conv.conv2d(x, weight, bias, stride, pad, dilation, groups, code, float(negative_slope))
    return out.squeeze(0) if input.dim() == 3 else out


# ---------------------------------------------------------------------------
# Pooling

_POOL_ARG_ERRORS = {
    "kernel_size": "max_pool2d: kernel_size must either be a single int, or a tuple of two ints",
    "stride": "max_pool2d: stride must either be omitted, a single int, or a tuple of two ints",
    "padding": "max_pool2d: padding must either be a single int, or a tuple of two ints",
    "dilation": "max_pool2d: dilation must be either a single int, or a tuple of two ints",
}


def _pool_pair(items, name: str) -> tuple[int, int]:
    """One or two ints as an (h, w) pair (RuntimeError for another length)."""
    if len(items) not in (1, 2):
        raise RuntimeError(_POOL_ARG_ERRORS[name])
    items = [int(item) for item in items]
    return (items[0], items[-1])


def _check_flag(value, op: str, name: str) -> bool:
    """A bool argument: torch's parser takes only Python bools (TypeError)."""
    if not isinstance(value, bool):
        raise TypeError(f"{op}(): argument '{name}' must be bool, not {type(value).__name__}")
    return value


def _pool_activation(activation) -> int:
    """The kernels' code for max_pool2d's ``activation=`` (None or "relu")."""
    if activation not in (None, "relu"):
        raise ValueError(f"max_pool2d(): activation must be None or 'relu', got {activation!r}")
    return _act.activation_code(activation, "max_pool2d")


def _check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode) -> tuple[list[int], ...]:
    """torch's checks, in torch's order and with its exception classes: argument
    types first (TypeError), then lengths and values. Returns (kernel, stride,
    padding, dilation) as [h, w] lists."""
    default_stride = stride is None or (isinstance(stride, (tuple, list)) and not stride)
    items = {name: _int_items(value, "max_pool2d", name) for name, value in
             (("kernel_size", kernel_size), ("stride", kernel_size if default_stride else stride),
              ("padding", padding), ("dilation", dilation))}
    _check_flag(ceil_mode, "max_pool2d", "ceil_mode")
    kernel = _pool_pair(items["kernel_size"], "kernel_size")
    stride = kernel if default_stride else _pool_pair(items["stride"], "stride")
    padding = _pool_pair(items["padding"], "padding")
    dilation = _pool_pair(items["dilation"], "dilation")
    for name, pair in (("kernel_size", kernel), ("stride", stride), ("padding", padding), ("dilation", dilation)):
        if not all(-2**31 <= v < 2**31 for v in pair):     # torch narrows them to int first
            raise RuntimeError(f"max_pool2d(): {name}={list(pair)} cannot be converted to type int without overflow")
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
    return list(kernel), list(stride), list(padding), list(dilation)


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
    params = _check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode)
    return _pool.max_pool2d_op(input, *params, ceil_mode, _pool.INDEX_FLAT, code)


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
    params = _check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode)
    index_mode = _pool.INDEX_LOCAL if torch.is_grad_enabled() and input.requires_grad else _pool.INDEX_NONE
    return _pool.max_pool2d_op(input, *params, ceil_mode, index_mode, code)[0]


# ---------------------------------------------------------------------------
# Normalization

def _check_norm_input(input, op: str, attribute_error: bool = False) -> None:
    """A non-tensor input raises what torch raises: AttributeError where torch's
    Python code calls a method on it first (``attribute_error``), else TypeError."""
    if not isinstance(input, torch.Tensor):
        error = AttributeError if attribute_error else TypeError
        raise error(f"{op}(): argument 'input' must be Tensor, not {type(input).__name__}")


def _check_norm_dtype(input, op: str) -> None:
    """Floating-point input only; torch checks this last (NotImplementedError)."""
    if not input.is_floating_point():
        raise NotImplementedError(f"{op}(): not implemented for 'input' of dtype {input.dtype}")


def _check_eps(eps, op: str) -> float:
    """eps: a number or a one-element tensor, as torch's parser (TypeError)."""
    if isinstance(eps, torch.Tensor) and eps.numel() == 1:
        return float(eps)
    if not isinstance(eps, (int, float)):
        raise TypeError(f"{op}(): argument 'eps' must be float, not {type(eps).__name__}")
    return float(eps)


def _check_norm_params(input, op: str, any_dtype: tuple = (), **params) -> None:
    """Parameters and running stats: tensors on input's device, all of one floating
    dtype, which is input's or, for fp16 / bf16 input, float32 (mixed precision),
    as torch requires; the names in ``any_dtype`` may have any floating dtype."""
    given = {name: t for name, t in params.items() if t is not None}
    for name, t in given.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}(): argument '{name}' must be Tensor, not {type(t).__name__}")
    check_same_device(op, input=input, **given)
    for name in ("running_mean", "running_var"):
        if name in given and given[name].requires_grad and torch.is_grad_enabled():
            raise RuntimeError(f"{op}(): '{name}' requires grad, but running statistics are not "
                               "differentiable; pass a tensor that does not require grad")
    dtypes = {t.dtype for name, t in given.items() if name not in any_dtype}
    allowed = (input.dtype, torch.float32) if input.dtype in (torch.float16, torch.bfloat16) else (input.dtype,)
    if len(dtypes) > 1 or (dtypes and next(iter(dtypes)) not in allowed):
        found = ", ".join(f"'{name}' is {t.dtype}" for name, t in given.items())
        raise RuntimeError(f"{op}(): expected parameters and running stats of one dtype, {input.dtype} "
                           f"(input's) or torch.float32, but {found}")


def _check_numel(op: str, channels: int, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and t.numel() != channels:
            raise RuntimeError(f"{op}(): {name} should contain {channels} elements not {t.numel()}")


def _norm_activation(activation, negative_slope, op: str) -> int:
    code = _act.activation_code(activation, op)
    if code == _act.ACT_LEAKY_RELU.value and not isinstance(negative_slope, (int, float)):
        raise TypeError(f"{op}(): negative_slope must be a number, not {type(negative_slope).__name__}")
    return code


def _torch_epilogue(out, activation, negative_slope, residual=None):
    """The keyword-only extras on torch's path: + residual, then the activation."""
    if residual is not None:
        out = out + residual
    if activation == "relu":
        out = F.relu(out)
    elif activation == "leaky_relu":
        out = F.leaky_relu(out, negative_slope)
    return out


def _check_residual(input, residual, op: str) -> None:
    """The fused residual: a tensor of input's shape, dtype and device, or None."""
    if residual is None:
        return
    if not isinstance(residual, torch.Tensor):
        raise TypeError(f"{op}(): argument 'residual' must be Tensor, not {type(residual).__name__}")
    if residual.shape != input.shape or residual.dtype != input.dtype:
        raise RuntimeError(f"{op}(): residual must match input's shape {tuple(input.shape)} and dtype "
                           f"{input.dtype}, got {tuple(residual.shape)} and {residual.dtype}")
    check_same_device(op, input=input, residual=residual)


def _check_momentum(momentum, op: str) -> float:
    if not isinstance(momentum, (int, float)):
        raise TypeError(f"{op}(): argument 'momentum' must be float, not {type(momentum).__name__}")
    return float(momentum)


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
    op = "batch_norm"
    _check_norm_input(input, op, attribute_error=bool(training))
    _check_flag(training, op, "training")
    eps = _check_eps(eps, op)
    message = f"{op}(): expected input with at least 2 dims (N, C, *), got {input.dim()}D input"
    if training:
        if input.dim() == 0:
            raise IndexError(message)     # torch's classes: it indexes the missing dims
        count = input.shape[0]
        for n in input.shape[2:]:
            count *= n
        if count == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
    if input.dim() < 2 and input.numel():
        if training and running_mean is None and weight is None:
            raise IndexError(message)
        raise RuntimeError(message)
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    if num_batches_tracked is not None:
        if not isinstance(num_batches_tracked, torch.Tensor) or num_batches_tracked.numel() != 1:
            raise TypeError(f"{op}(): num_batches_tracked must be a one-element tensor")
        if not training:
            raise ValueError(f"{op}(): num_batches_tracked counts training calls; got training=False")
    if momentum is not None or num_batches_tracked is None:
        momentum = _check_momentum(momentum, op)
    if training and (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    if not training and (running_mean is None or running_var is None):
        missing = "running_mean" if running_mean is None else "running_var"
        raise RuntimeError(f"{missing} must be defined in evaluation mode")
    _check_norm_params(input, op, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    if input.dim() > 1:
        _check_numel(op, input.shape[1], weight=weight, bias=bias, running_mean=running_mean,
                     running_var=running_var)
    else:   # empty 1-D input: torch returns it (times weight[0], plus bias[0]) and checks nothing else
        for name, t in (("weight", weight), ("bias", bias)):
            if t is not None and t.numel() == 0:
                raise IndexError(f"{op}(): index 0 is out of bounds for {name} of size 0")
    code = _norm_activation(activation, negative_slope, op)
    _check_residual(input, residual, op)
    _check_norm_dtype(input, op)
    if _on_torch_path(input):
        if num_batches_tracked is not None:     # as torch's module: count, then the factor (a host read)
            num_batches_tracked.add_(1)
            momentum = 1.0 / float(num_batches_tracked) if momentum is None else momentum
        out = F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
        return _torch_epilogue(out, activation, negative_slope, residual)
    return _norm.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, code,
                            float(negative_slope), residual, num_batches_tracked)


def instance_norm(input: torch.Tensor, running_mean: torch.Tensor | None = None,
                  running_var: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None, use_input_stats: bool = True, momentum: float = 0.1,
                  eps: float = 1e-5, *, activation: str | None = None,
                  negative_slope: float = 0.01) -> torch.Tensor:
    """Instance norm of input (N, C, *) over * per (sample, channel). With
    use_input_stats the running stats (C,), when given, move toward the batch
    average of the instance statistics; without it they normalize."""
    op = "instance_norm"
    _check_norm_input(input, op, attribute_error=bool(use_input_stats))
    _check_flag(use_input_stats, op, "use_input_stats")
    eps = _check_eps(eps, op)
    if use_input_stats:
        count = 1
        for n in input.shape[2:]:
            count *= n
        if count == 1:
            raise ValueError(f"Expected more than 1 spatial element when training, got input size {input.size()}")
    if input.dim() < 2:
        raise RuntimeError(f"{op}(): expected input with at least 2 dims (N, C, *), got {input.dim()}D input")
    momentum = _check_momentum(momentum, op)
    if not use_input_stats and (running_mean is None or running_var is None):
        raise RuntimeError("Expected running_mean and running_var to be defined when use_input_stats is false")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    # torch's instance_norm repeats the running stats and copies them back: any dtype.
    _check_norm_params(input, op, ("running_mean", "running_var"), weight=weight, bias=bias,
                       running_mean=running_mean, running_var=running_var)
    _check_numel(op, input.shape[1], weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dim() > 1:
            raise RuntimeError(f"{op}(): {name} must be 1-D (C,), got shape {list(t.shape)}")
    code = _norm_activation(activation, negative_slope, op)
    _check_norm_dtype(input, op)
    if _on_torch_path(input):
        out = F.instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)
        return _torch_epilogue(out, activation, negative_slope)
    return _norm.instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps,
                               code, float(negative_slope))


def layer_norm(input: torch.Tensor, normalized_shape, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5, *, activation: str | None = None,
               negative_slope: float = 0.01) -> torch.Tensor:
    """Layer norm of input (*, *normalized_shape) over the trailing dims, weight and
    bias of shape normalized_shape (elementwise)."""
    op = "layer_norm"
    _check_norm_input(input, op)
    eps = _check_eps(eps, op)
    if isinstance(normalized_shape, int) or not all(isinstance(n, int) for n in normalized_shape):
        raise TypeError(f"{op}(): argument 'normalized_shape' must be tuple of ints, not "
                        f"{type(normalized_shape).__name__}")
    shape = list(normalized_shape)
    if not shape:
        raise RuntimeError("Expected normalized_shape to be at least 1-dimensional, i.e., containing at least one "
                           f"element, but got normalized_shape = {shape}")
    if input.dim() < len(shape) or list(input.shape[input.dim() - len(shape):]) != shape:
        raise RuntimeError(f"Given normalized_shape={shape}, expected input with shape [*, "
                           f"{', '.join(map(str, shape))}], but got input of size{list(input.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if isinstance(t, torch.Tensor) and list(t.shape) != shape:
            raise RuntimeError(f"Expected {name} to be of same shape as normalized_shape, but got {name} of shape "
                               f"{list(t.shape)} and normalized_shape = {shape}")
    input, weight, bias = _autocast(_FLOAT32_ON_CUDA, input, weight, bias)
    _check_norm_params(input, op, weight=weight, bias=bias)
    code = _norm_activation(activation, negative_slope, op)
    _check_norm_dtype(input, op)
    if _on_torch_path(input):
        return _torch_epilogue(F.layer_norm(input, shape, weight, bias, eps), activation, negative_slope)
    return _norm.layer_norm(input, shape, weight, bias, eps, code, float(negative_slope))


def group_norm(input: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5, *, activation: str | None = None,
               negative_slope: float = 0.01) -> torch.Tensor:
    """Group norm of input (N, C, *) over (C / num_groups, *) per (sample, group),
    any num_groups dividing C; weight, bias (C,)."""
    op = "group_norm"
    _check_norm_input(input, op, attribute_error=True)
    if isinstance(num_groups, (bool, float)) or not hasattr(num_groups, "__index__"):
        raise TypeError(f"{op}(): argument 'num_groups' must be int, not {type(num_groups).__name__}")
    num_groups = int(num_groups)
    eps = _check_eps(eps, op)
    if input.dim() < 2:
        raise RuntimeError(f"Expected at least 2 dimensions for input tensor but received {input.dim()}")
    count = input.shape[0] * input.shape[1] // num_groups
    for n in input.shape[2:]:
        count *= n
    if count == 1:
        raise ValueError("Expected more than 1 value per channel when training, got input size "
                         f"{[input.shape[0] * input.shape[1] // num_groups, num_groups, *input.shape[2:]]}")
    if num_groups <= 0:
        raise RuntimeError(f"Expected num groups to be greater than 0, got {num_groups}")
    if input.shape[1] % num_groups:
        raise RuntimeError("Expected number of channels in input to be divisible by num_groups, but got input of "
                           f"shape {list(input.shape)} and num_groups={num_groups}")
    for name, t in (("weight", weight), ("bias", bias)):
        if isinstance(t, torch.Tensor) and (t.dim() != 1 or t.numel() != input.shape[1]):
            raise RuntimeError(f"Expected {name} to be a vector of size equal to the number of channels in input, "
                               f"but got {name} of shape {list(t.shape)} and input of shape {list(input.shape)}")
    input, weight, bias = _autocast(_FLOAT32_ON_CUDA, input, weight, bias)
    _check_norm_params(input, op, weight=weight, bias=bias)
    code = _norm_activation(activation, negative_slope, op)
    _check_norm_dtype(input, op)
    if _on_torch_path(input):
        return _torch_epilogue(F.group_norm(input, num_groups, weight, bias, eps), activation, negative_slope)
    return _norm.group_norm(input, num_groups, weight, bias, eps, code, float(negative_slope))

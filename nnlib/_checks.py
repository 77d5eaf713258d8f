"""Argument checks and parsing shared by ``nnlib.functional`` and ``nnlib.layers``.

The rule: a bad argument raises the exception class torch raises for it (TypeError
from its argument parser, RuntimeError / ValueError / NotImplementedError from its
checks), with a message naming the argument, in torch's order, and before anything
is allocated or written. Each function here checks or parses; none computes.
Parsers return the parsed value (an int pair, a float, a kernel activation code).
"""
from __future__ import annotations

import functools
import math
import numbers
import sys
import threading

import torch

from kernels import activation as _act
from kernels import pool as _pool
from kernels._library import tracing
from kernels._runtime import PLAN_CACHE_SIZE, check_same_device


# ---------------------------------------------------------------------------
# Checks made once per call signature

_PLAIN_VALUES = (bool, int, float, str, type(None))


def call_key(tensors: tuple, values: tuple) -> tuple | None:
    """What a call's checks can read of its arguments, hashable: grad mode, each
    tensor's shape, dtype, device and requires_grad (None for None) and each
    value's type and value (a float's sign too). None when a tensor is not a
    plain strided Tensor or Parameter (a sparse one: its layout is checked) or
    a value not a bool, int, float, str, None or a tuple / list of plain ints
    (``_plain``; a tensor's value, an array's, can change between calls)."""
    key = [torch.is_grad_enabled()]
    for t in tensors:
        if t is None:
            key.append(None)
        elif (type(t) is torch.Tensor or type(t) is torch.nn.Parameter) and t.layout is torch.strided:
            key.append((t.shape, t.dtype, t.device, t.requires_grad))
        else:
            return None
    for value in values:
        kind = type(value)
        if kind is float:       # -0.0 apart from 0.0 (a check returns the value), every NaN alike
            value = (value, math.copysign(1.0, value)) if value == value else "nan"
        elif kind is tuple or kind is list:
            value = _plain(value)
            if value is None:
                return None
        elif kind not in _PLAIN_VALUES:
            return None
        key.append(kind)
        key.append(value)
    return tuple(key)


def checks_once(check):
    """``check(*tensors, *values)``, whose result (or exception) depends only on
    ``call_key(tensors, values)``, as ``checked(tensors, values)``: run once per
    distinct key, its result kept (the PLAN_CACHE_SIZE first kept until then,
    then the oldest dropped); run at every call that has no key or a symbolic
    size in it (a tracer's SymInt does not hash), and while torch.compile traces."""
    results: dict = {}
    storing = threading.Lock()

    @functools.wraps(check)
    def checked(tensors: tuple, values: tuple):
        key = None if torch.compiler.is_compiling() else call_key(tensors, values)
        if key is None:
            return check(*tensors, *values)
        try:
            result = results.get(key)
        except TypeError:       # a SymInt in a shape
            return check(*tensors, *values)
        if result is None:
            result = check(*tensors, *values)
            with storing:
                if len(results) >= PLAN_CACHE_SIZE:
                    del results[next(iter(results))]
                results[key] = result
        return result
    return checked


# ---------------------------------------------------------------------------
# Arguments as torch's parser takes them

def is_int(value) -> bool:
    """An int as torch's argument parser takes one: a Python or numpy integer (bool
    included), a symbolic one (a traced size), or an integer or bool tensor of one
    element."""
    if isinstance(value, (int, torch.SymInt)):      # first: Dynamo cannot trace hasattr on a symbolic one
        return True
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not (value.is_floating_point() or value.is_complex())
    return not isinstance(value, float) and hasattr(value, "__index__")


def int_items(value, op: str, name: str) -> tuple:
    """The items of an int or int-list argument; TypeError for anything else, as
    torch's parser (ints or one-element integer tensors; a bool only after the first)."""
    sequence = isinstance(value, (tuple, list, torch.Size))
    items = tuple(value) if sequence else (value,)
    if (items and isinstance(items[0], bool)) or not all(is_int(i) for i in items):
        raise TypeError(f"{op}(): argument '{name}' must be tuple of ints, not {type_name(value)}")
    if not all(-2**63 <= as_int(item) < 2**63 for item in items):       # torch's parser unpacks int64s
        raise (TypeError if sequence else ValueError)(f"{op}(): argument '{name}' = {value}: overflow when "
                                                      "unpacking long long")
    return items


def as_int(item):
    """An int argument's value (``is_int``) as an int; a symbolic one (a traced size,
    which int() would specialize to its value) as it is."""
    return item if isinstance(item, (int, torch.SymInt)) and not isinstance(item, bool) else int(item)


def type_name(value) -> str:
    """The type name torch's argument parser prints for most values: a static C
    type's full name ("numpy.bool", "torch.Size"), a Python class's or a
    builtin's bare name (also, unlike torch, for the few C types made at run time,
    such as functools.partial)."""
    t = type(value)
    if t.__flags__ & _HEAP_TYPE or t.__module__ == "builtins":
        return t.__name__
    return f"{t.__module__}.{t.__name__}"


_HEAP_TYPE = 1 << 9         # Py_TPFLAGS_HEAPTYPE: a class defined in Python


def check_flag(value, op: str, name: str) -> bool:
    """A bool argument: torch's parser takes only Python bools (TypeError)."""
    if not isinstance(value, bool):
        raise TypeError(f"{op}(): argument '{name}' must be bool, not {type_name(value)}")
    return value


def _numpy_number(value) -> bool:
    """Whether ``value`` is a numpy scalar bool, int, float or complex (only an
    imported numpy can have made one)."""
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.generic) and value.dtype.kind in "biufc"


def scalar(value, op: str, name: str):
    """A Scalar argument as torch's parser takes it: a Python or numpy bool, int,
    float or complex, or a 0-d tensor that does not require grad (TypeError
    otherwise: fractions, decimals, a numpy uint64 past int64; OverflowError for
    a Python int outside [-2**63, 2**64)). Returns the Python number."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad:
        value = value.item()
    if _numpy_number(value):
        value = value.item()
        if isinstance(value, int) and value >= 2**63:        # a uint64 past int64: torch's parser refuses it
            raise TypeError(f"{op}(): argument '{name}' must be Number, not an unsigned integer past int64")
    if not isinstance(value, (int, float, complex, torch.SymInt, torch.SymFloat, torch.SymBool)):
        raise TypeError(f"{op}(): argument '{name}' must be Number, not {type_name(value)}")
    if isinstance(value, int) and not -2**63 <= value < 2**64:
        raise OverflowError(f"{op}(): argument '{name}' = {value} is too big to convert")
    return value


_FLOAT32_MAX = torch.finfo(torch.float32).max


def as_float32(value, op: str, name: str) -> float:
    """A Scalar converted to the float the kernels compute in, as torch converts it
    for float32 / float16 / bfloat16 tensors (RuntimeError for an imaginary part or
    a finite value past float32's range)."""
    if isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real):
        if value.imag:
            raise RuntimeError(f"{op}(): {name}={value} cannot be converted to type float without overflow")
        value = value.real
    value = float(value)
    if _FLOAT32_MAX < abs(value) < math.inf:       # comparisons: a traced SymFloat takes them, not isfinite
        raise RuntimeError(f"{op}(): {name}={value} cannot be converted to type float without overflow")
    return value


# ---------------------------------------------------------------------------
# Activations

def check_activation_input(input, op: str, allow_integer: bool = False, check_dtype: bool = True) -> None:
    """torch's classes: TypeError for a non-tensor; relu (``allow_integer``) takes
    integers but not bool (RuntimeError); the others take floating point only
    (NotImplementedError, bool included)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{op}(): argument 'input' must be Tensor, not {type_name(input)}")
    if not check_dtype:
        return
    if allow_integer and input.dtype == torch.bool:
        raise RuntimeError(f"{op}(): Boolean inputs not supported for 'input'")
    if not input.is_floating_point() and not allow_integer:
        raise NotImplementedError(f"{op}(): 'input' of dtype {input.dtype} is not supported; "
                                  "use a floating-point tensor")


def check_inplace(input: torch.Tensor, op: str) -> None:
    """What torch refuses before it writes ``input`` in place (RuntimeError), in its
    order: under grad mode a view autograd cannot rebase (one made under no_grad
    is a leaf too: its origin is the message), a view of a leaf that requires
    grad, a leaf that requires grad; then what ``check_writable`` refuses. The
    kernel must not run first: it would write. (While tracing, torch.compile's
    functionalization and autograd check these.)"""
    if tracing(input):
        return
    if torch.is_grad_enabled() and input.requires_grad:
        if input._is_view():
            created = torch._C._autograd._get_creation_meta(input)
            if created != torch._C._autograd.CreationMeta.DEFAULT:
                raise RuntimeError(f"{op}(): the view comes from {_VIEW_ORIGINS[created.name]}; autograd does "
                                   "not allow it to be modified in place. Clone it first.")
            if input._base.is_leaf:
                raise RuntimeError(f"{op}(): a view of a leaf Variable that requires grad is being used in an "
                                   "in-place operation.")
        if input.is_leaf:
            raise RuntimeError(f"{op}(): a leaf Variable that requires grad is being used in an in-place operation.")
    check_writable(input, op, "input")


def check_writable(t: torch.Tensor | None, op: str, name: str) -> None:
    """A tensor (or None) that an op writes in place, refused as torch's in-place ops
    refuse it (RuntimeError), before anything is written: an inference tensor
    outside inference mode, then one element stored for several (a stride-0 dim)."""
    if t is None or tracing(t):
        return
    if t.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError(f"{op}(): '{name}' is an inference tensor: an in-place update outside InferenceMode "
                           "is not allowed. Clone it first, or run under torch.inference_mode().")
    strides = t.stride()
    if 0 in strides and t.numel() and any(stride == 0 and size > 1 for size, stride in zip(t.shape, strides)):
        raise RuntimeError(f"{op}(): unsupported operation: more than one element of the written-to tensor "
                           f"'{name}' refers to a single memory location. Please clone() the tensor before "
                           "performing the operation.")


# Views autograd does not let an in-place op rebase (torch's CreationMeta).
_VIEW_ORIGINS = {"MULTI_OUTPUT_NODE": "a function that returns several views (unbind, split, chunk)",
                 "IN_CUSTOM_FUNCTION": "a custom autograd.Function", "NO_GRAD_MODE": "no_grad mode",
                 "INFERENCE_MODE": "inference mode"}


# ---------------------------------------------------------------------------
# Convolution

def conv_pair(items: tuple, name: str) -> tuple[int, int]:
    """One or two ints as an (h, w) pair (RuntimeError for another length)."""
    if len(items) not in (1, 2):
        raise RuntimeError(f"conv2d(): expected {name} to be a single integer value or a list of 2 values to "
                           f"match the convolution dimensions, but got {name}={[int(i) for i in items]}")
    return int(items[0]), int(items[-1])


def conv_activation(activation, negative_slope, dtype=None) -> tuple[int, float]:
    """(the kernels' code, the slope) of conv2d's ``activation=`` (None, "relu",
    "leaky_relu") and ``negative_slope`` for an input of ``dtype`` (``fused_slope``)."""
    code = _act.activation_code(activation, "conv2d")
    return code, fused_slope(code, negative_slope, "conv2d", dtype)


def fused_slope(code: int, negative_slope, op: str, dtype) -> float:
    """A fused activation's slope as leaky_relu parses it for an input of ``dtype``:
    torch's Scalar (a number, a numpy number or a 0-d tensor: TypeError otherwise,
    OverflowError for an int past its range), then, for the float32 / float16 /
    bfloat16 inputs the kernels take, a float (RuntimeError past float32's range
    or for an imaginary part); for others (float64: torch's path) the Scalar as it
    is. Unused, 0.0, without a leaky_relu."""
    if code != _act.ACT_LEAKY_RELU.value:
        return 0.0
    value = scalar(negative_slope, op, "negative_slope")
    return as_float32(value, op, "negative_slope") if dtype in KERNEL_DTYPES else value


KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)     # what the kernels take (and autocast's)


def _conv_arg_types(stride, padding, dilation, groups) -> dict:
    """Argument types first (TypeError), as torch's parser: the int items of
    stride, padding (unless a string) and dilation."""
    if isinstance(groups, bool) or not is_int(groups):
        raise TypeError(f"conv2d(): argument 'groups' must be int, not {type_name(groups)}")
    return {name: int_items(value, "conv2d", name)
            for name, value in (("stride", stride), ("padding", padding), ("dilation", dilation))
            if not (name == "padding" and isinstance(value, str))}


def _check_conv_ranks(input_shape, weight_shape) -> None:
    if len(input_shape) not in (3, 4):
        raise RuntimeError(f"Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: "
                           f"{list(input_shape)}")
    if len(weight_shape) != 4:
        raise RuntimeError(f"conv2d(): expected 'weight' of 4 dimensions (out_channels, in_channels / groups, kH, "
                           f"kW), but got weight of size {list(weight_shape)}")


def _conv_arg_values(items: dict, padding, groups: int, kernel: tuple):
    """(stride, (top, left, bottom, right) padding, dilation, groups) from the int
    items (``_conv_arg_types``), checked as torch checks them (RuntimeError)."""
    stride = conv_pair(items["stride"], "stride")
    dilation = conv_pair(items["dilation"], "dilation")
    if groups <= 0:
        raise RuntimeError("conv2d(): non-positive groups is not supported")
    if min(stride) <= 0:
        raise RuntimeError(f"conv2d(): non-positive stride is not supported, got stride={stride}")
    if min(dilation) <= 0:
        raise RuntimeError(f"conv2d(): non-positive dilation is not supported, got dilation={dilation}")
    if isinstance(padding, str):
        if padding == "valid":
            pad = (0, 0, 0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise RuntimeError("conv2d(): padding='same' is not supported for strided convolutions")
            total = [d * (k - 1) for d, k in zip(dilation, kernel)]
            half = [t // 2 if t >= 0 else -(-t // 2) for t in total]     # C++'s division (a kernel of size 0)
            if min(half) < 0:
                raise RuntimeError(f"conv2d(): negative padding is not supported, got padding={tuple(half)}")
            pad = (half[0], half[1], total[0] - half[0], total[1] - half[1])
        else:
            raise RuntimeError(f"conv2d(): Invalid padding string: {padding!r}")
    else:
        ph, pw = conv_pair(items["padding"], "padding")
        if min(ph, pw) < 0:
            raise RuntimeError(f"conv2d(): negative padding is not supported, got padding={(ph, pw)}")
        pad = (ph, pw, ph, pw)
    return stride, pad, dilation, groups


def _plain(value):
    """``value`` as a hashable key when it is a plain int or a tuple / list of plain
    ints (no bool, tensor or numpy integer), else None."""
    if type(value) is int:
        return value
    if type(value) is tuple or type(value) is list:
        for item in value:
            if type(item) is not int:
                return None
        return tuple(value)
    return None


@checks_once
def check_conv2d(input, weight, bias, stride, padding, dilation, groups):
    """torch's checks and exception classes, in torch's order: the tensors' and
    arguments' types (TypeError), the ranks, the arguments' values, the devices,
    then sizes and dtypes (RuntimeError); returns (stride, (top, left, bottom,
    right) padding, dilation, groups)."""
    for name, t in (("input", input), ("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor) and (t is not None or name != "bias"):
            raise TypeError(f"conv2d(): argument '{name}' must be Tensor, not {type_name(t)}")
    items = _conv_arg_types(stride, padding, dilation, groups)
    _check_conv_ranks(input.shape, weight.shape)
    parsed = _conv_arg_values(items, padding, int(groups), tuple(weight.shape[2:]))
    check_same_device("conv2d", input=input, weight=weight, bias=bias)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.layout != input.layout:
            raise RuntimeError(f"conv2d(): Input type ({input.layout}) and {name} type ({t.layout}) should be the same")
    return _check_conv_shapes(input.shape, weight.shape, input.dtype, weight.dtype,
                              None if bias is None else bias.shape, None if bias is None else bias.dtype,
                              isinstance(padding, str), *parsed)


def _check_conv_shapes(input_shape, weight_shape, input_dtype, weight_dtype, bias_shape, bias_dtype,
                       string_padding: bool, stride, pad, dilation, groups):
    """check_conv2d's checks of sizes and dtypes (RuntimeError, in torch's order),
    after those of the arguments; returns its result."""
    # torch sends an empty batch to its empty backend before any backend checks the weight's dtype, and the
    # bias's too when padding is a string (its padding-mode path checks the bias only in a backend).
    empty_batch = len(input_shape) == 4 and input_shape[0] == 0
    if weight_dtype != input_dtype and not empty_batch:
        raise RuntimeError(f"conv2d(): Input type ({input_dtype}) and weight type ({weight_dtype}) should be the same")
    if bias_shape is not None and bias_dtype != input_dtype and not (empty_batch and string_padding):
        raise RuntimeError(f"conv2d(): Input type ({input_dtype}) and bias type ({bias_dtype}) should be the same")
    out_channels, group_channels = weight_shape[:2]
    kernel = tuple(weight_shape[2:])
    if out_channels == 0:
        raise RuntimeError(f"Given groups={groups}, expected weight to be at least 1 at dimension 0, but got "
                           f"weight of size {list(weight_shape)} instead")
    if out_channels % groups:
        raise RuntimeError(f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
                           f"but got weight of size {list(weight_shape)} instead")
    if input_shape[-3] != group_channels * groups:
        raise RuntimeError(f"Given groups={groups}, weight of size {list(weight_shape)}, expected input"
                           f"{list(input_shape)} to have {group_channels * groups} channels, but got "
                           f"{input_shape[-3]} channels instead")
    if bias_shape is not None and (len(bias_shape) != 1 or bias_shape[0] != out_channels):
        raise RuntimeError(f"Given weight of size {list(weight_shape)}, expected bias to be 1-dimensional with "
                           f"{out_channels} elements, but got bias of size {list(bias_shape)} instead")
    if 0 in input_shape[-2:]:
        raise RuntimeError(f"conv2d(): only zero batch or zero channel inputs are supported, but got input shape: "
                           f"{list(input_shape)}")
    padded = [input_shape[-2] + pad[0] + pad[2], input_shape[-1] + pad[1] + pad[3]]
    dilated = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    if padded[0] < dilated[0] or padded[1] < dilated[1]:
        raise RuntimeError(f"Calculated padded input size per channel: ({padded[0]} x {padded[1]}). Kernel size: "
                           f"({dilated[0]} x {dilated[1]}). Kernel size can't be greater than actual input size")
    if 0 in kernel:     # torch's empty-input path multiplies by the weight's first element; its backends refuse
        if 0 not in input_shape:
            raise RuntimeError(f"conv2d(): kernel size should be greater than zero, but got kernel_height: "
                               f"{kernel[0]} kernel_width: {kernel[1]}")
        if input_shape[-3]:
            raise IndexError(f"conv2d(): index 0 is out of range for the empty weight of size {list(weight_shape)}")
    # What cannot change the result is made small, so that any call torch takes fits the kernels' int32
    # arguments (torch takes a dilation of 2**31): the dilation of a one-tap axis becomes 1, the stride
    # of an axis with one output position at most its span of start positions (plain sizes only: a
    # tracer's symbolic ones would guard).
    if all(type(n) is int for n in (*kernel, *padded)):
        dilation = tuple(1 if k == 1 else d for d, k in zip(dilation, kernel))
        stride = tuple(min(s, p - d + 1) for s, p, d in zip(stride, padded, dilated))
    return stride, pad, dilation, groups


# ---------------------------------------------------------------------------
# Pooling

POOL_ARG_ERRORS = {
    "kernel_size": "max_pool2d: kernel_size must either be a single int, or a tuple of two ints",
    "stride": "max_pool2d: stride must either be omitted, a single int, or a tuple of two ints",
    "padding": "max_pool2d: padding must either be a single int, or a tuple of two ints",
    "dilation": "max_pool2d: dilation must be either a single int, or a tuple of two ints",
}


def pool_pair(items, name: str) -> tuple[int, int]:
    """One or two ints as an (h, w) pair (RuntimeError for another length)."""
    if len(items) not in (1, 2):
        raise RuntimeError(POOL_ARG_ERRORS[name])
    items = [int(item) for item in items]
    return (items[0], items[-1])


def pool_activation(activation) -> int:
    """The kernels' code for max_pool2d's ``activation=`` (None or "relu")."""
    if activation not in (None, "relu"):
        raise ValueError(f"max_pool2d(): activation must be None or 'relu', got {activation!r}")
    return _act.activation_code(activation, "max_pool2d")


@checks_once
def check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode) -> tuple[tuple[int, int], ...]:
    """torch's checks, in torch's order and with its exception classes: argument
    types first (TypeError), then lengths and values. Returns (kernel, stride,
    padding, dilation) as (h, w) pairs."""
    default_stride = stride is None or (isinstance(stride, (tuple, list)) and not stride)
    items = {name: int_items(value, "max_pool2d", name) for name, value in
             (("kernel_size", kernel_size), ("stride", kernel_size if default_stride else stride),
              ("padding", padding), ("dilation", dilation))}
    check_flag(ceil_mode, "max_pool2d", "ceil_mode")
    kernel = pool_pair(items["kernel_size"], "kernel_size")
    stride = kernel if default_stride else pool_pair(items["stride"], "stride")
    padding = pool_pair(items["padding"], "padding")
    dilation = pool_pair(items["dilation"], "dilation")
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
        effective = (k - 1) * d + 1
        if p > (effective // 2 if effective >= 0 else -(-effective // 2)):     # C++ division: toward zero
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
    return kernel, stride, padding, dilation


# ---------------------------------------------------------------------------
# Normalization

def check_norm_input(input, op: str, attribute_error: bool = False) -> None:
    """A non-tensor input raises what torch raises: AttributeError where torch's
    Python code calls a method on it first (``attribute_error``), else TypeError."""
    if not isinstance(input, torch.Tensor):
        error = AttributeError if attribute_error else TypeError
        raise error(f"{op}(): argument 'input' must be Tensor, not {type_name(input)}")


def check_norm_dtype(input, op: str) -> None:
    """Floating-point input of 2 bytes or more only (NotImplementedError, when torch
    dispatches on input's dtype: no norm of torch's takes a float8)."""
    if not input.is_floating_point() or input.element_size() == 1:
        raise NotImplementedError(f"{op}(): not implemented for 'input' of dtype {input.dtype}")


def _double(value, op: str, name: str) -> float:
    """A float argument as torch's parser takes it: a Python bool, int or float, a
    numpy scalar number (complex: its real part), or a 0-d tensor that does not
    require grad (TypeError otherwise; RuntimeError for a complex one with an
    imaginary part); returned as a float."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 and not value.requires_grad:
            if value.is_complex():
                if value.imag != 0:
                    raise RuntimeError(f"{op}(): {name}={value.item()} cannot be converted to type double "
                                       "without overflow")
                value = value.real
            return float(value)
    elif isinstance(value, (int, float)):
        return float(value)
    elif _numpy_number(value):
        return float(value.real)
    raise TypeError(f"{op}(): argument '{name}' must be float, not {type_name(value)}")


def check_eps(eps, op: str) -> float:
    """eps as torch's parser takes a float (TypeError)."""
    return _double(eps, op, "eps")


def check_momentum(momentum, op: str) -> float:
    """momentum as torch's parser takes a float (TypeError)."""
    return _double(momentum, op, "momentum")


_RUNNING_STATS = ("running_mean", "running_var")


def check_optional_tensors(op: str, **tensors) -> None:
    """Each a tensor or None (TypeError, as torch's argument parser raises before
    any other check of its C++ ops)."""
    for name, t in tensors.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}(): argument '{name}' must be Tensor, not {type_name(t)}")


def check_running_stats_grad(op: str, **stats) -> None:
    """Running statistics given do not require grad while grad mode is on (RuntimeError)."""
    for name, t in stats.items():
        if t is not None and t.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(f"{op}(): '{name}' requires grad, but running statistics are not "
                               "differentiable; pass a tensor that does not require grad")


def check_norm_params(input, op: str, any_dtype: tuple = (), input_dtype_first: bool = False,
                      stats_grad: bool = True, **params) -> None:
    """Parameters and running stats: tensors on input's device, all of one floating
    dtype, which is input's or, for fp16 / bf16 input, float32 (mixed precision),
    as torch requires, and running stats that do not require grad (unless not
    ``stats_grad``: the caller checks that later); the names in ``any_dtype`` may
    have any floating dtype. One pass accepts valid ones; anything else goes
    through the checks in torch's order, which raise. ``input_dtype_first`` (batch
    / instance norm, which torch dispatches on input's dtype before it compares the
    parameters'; every norm for a float8 input): a non-floating input raises
    NotImplementedError before the dtypes are compared."""
    device, grad = input.device, torch.is_grad_enabled() and stats_grad
    allowed = (input.dtype, torch.float32) if input.dtype in (torch.float16, torch.bfloat16) else (input.dtype,)
    dtype = None
    for name, t in params.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.device != device or \
                (grad and t.requires_grad and name in _RUNNING_STATS):
            break
        if name not in any_dtype:
            if t.dtype not in allowed or dtype not in (None, t.dtype):
                break
            dtype = t.dtype
    else:
        return
    given = {name: t for name, t in params.items() if t is not None}
    check_optional_tensors(op, **given)
    check_same_device(op, input=input, **given)
    if stats_grad:
        check_running_stats_grad(op, **{name: given.get(name) for name in _RUNNING_STATS})
    dtypes = {t.dtype for name, t in given.items() if name not in any_dtype}
    allowed = (input.dtype, torch.float32) if input.dtype in (torch.float16, torch.bfloat16) else (input.dtype,)
    if len(dtypes) > 1 or (dtypes and next(iter(dtypes)) not in allowed):
        if input_dtype_first or input.element_size() == 1:
            check_norm_dtype(input, op)
        found = ", ".join(f"'{name}' is {t.dtype}" for name, t in given.items())
        raise RuntimeError(f"{op}(): expected parameters and running stats of one dtype, {input.dtype} "
                           f"(input's) or torch.float32, but {found}")


def check_numel(op: str, channels: int, **tensors) -> None:
    """Each given tensor holds ``channels`` elements (RuntimeError)."""
    for name, t in tensors.items():
        if t is not None and t.numel() != channels:
            raise RuntimeError(f"{op}(): {name} should contain {channels} elements not {t.numel()}")


def check_running_stats_1d(op: str, running_mean, running_var, allow_0d: bool = False) -> None:
    """Running statistics given are 1-D (C,), or 0-D where ``allow_0d``: torch's
    batch norm indexes them as vectors, its instance norm repeats them and, with
    input statistics, copies back into them (RuntimeError), even where their
    elements would do."""
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and t.dim() != 1 and not (allow_0d and t.dim() == 0):
            raise RuntimeError(f"{op}(): {name} must be 1-D (C,), got shape {list(t.shape)}")


def norm_activation(activation, negative_slope, op: str, dtype=None) -> tuple[int, float]:
    """(the kernels' code, the slope) of a norm's ``activation=`` (None, "relu",
    "leaky_relu") and ``negative_slope`` for an input of ``dtype`` (``fused_slope``)."""
    code = _act.activation_code(activation, op)
    return code, fused_slope(code, negative_slope, op, dtype)


def check_residual(input, residual, op: str) -> None:
    """The fused residual: a tensor of input's shape, dtype and device, or None."""
    if residual is None:
        return
    if not isinstance(residual, torch.Tensor):
        raise TypeError(f"{op}(): argument 'residual' must be Tensor, not {type_name(residual)}")
    if residual.shape != input.shape or residual.dtype != input.dtype:
        raise RuntimeError(f"{op}(): residual must match input's shape {tuple(input.shape)} and dtype "
                           f"{input.dtype}, got {tuple(residual.shape)} and {residual.dtype}")
    check_same_device(op, input=input, residual=residual)


@checks_once
def check_batch_norm(input, running_mean, running_var, weight, bias, residual, num_batches_tracked, training,
                     momentum, eps, activation, negative_slope):
    """batch_norm's checks, in torch's order; returns (momentum: a float, or None for
    the cumulative average with ``num_batches_tracked``, eps, the activation's code,
    its slope)."""
    op = "batch_norm"
    # torch's Python reads a training input's batch size, then compares eps (the errors
    # Python raises for what does not compare), before its parser checks the types
    if training:
        check_norm_input(input, op, attribute_error=True)
        if input.dim() == 0:
            raise IndexError(f"{op}(): expected input with at least 2 dims (N, C, *), got 0D input")
        count = input.shape[0]
        for n in input.shape[2:]:
            count *= n
        if count == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    check_norm_input(input, op)
    check_flag(training, op, "training")
    eps = check_eps(eps, op)
    check_optional_tensors(op, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    if input.dim() < 2 and input.numel():
        # torch checks every given parameter's size against 0 channels (RuntimeError), and
        # the running stats of an eval call, before it indexes the missing dim (IndexError)
        message = f"{op}(): expected input with at least 2 dims (N, C, *), got {input.dim()}D input"
        given = [t for t in (weight, bias, running_mean, running_var) if t is not None]
        if input.dim() == 0 or any(t.numel() for t in given) or (
                not training and (running_mean is None or running_var is None)):
            raise RuntimeError(message)
        raise IndexError(message)
    if num_batches_tracked is not None:
        if not isinstance(num_batches_tracked, torch.Tensor) or num_batches_tracked.numel() != 1:
            raise TypeError(f"{op}(): num_batches_tracked must be a one-element tensor")
        if not training:
            raise ValueError(f"{op}(): num_batches_tracked counts training calls; got training=False")
    if momentum is not None or num_batches_tracked is None:
        momentum = check_momentum(momentum, op)
    if training and (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    if not training and (running_mean is None or running_var is None):
        missing = "running_mean" if running_mean is None else "running_var"
        raise RuntimeError(f"{missing} must be defined in evaluation mode")
    if input.dim() > 1:
        check_numel(op, input.shape[1], weight=weight, bias=bias, running_mean=running_mean,
                     running_var=running_var)
    else:   # empty 1-D input: torch returns it (times weight[0], plus bias[0]) and checks nothing else
        for name, t in (("weight", weight), ("bias", bias)):
            if t is not None and t.numel() == 0:
                raise IndexError(f"{op}(): index 0 is out of bounds for {name} of size 0")
    check_norm_params(input, op, input_dtype_first=True, weight=weight, bias=bias, running_mean=running_mean,
                      running_var=running_var)
    if input.numel():       # torch returns an empty batch before it reads the running stats
        check_running_stats_1d(op, running_mean, running_var)
    code, slope = norm_activation(activation, negative_slope, op, input.dtype)
    check_residual(input, residual, op)
    check_norm_dtype(input, op)
    return momentum, eps, code, slope


@checks_once
def check_instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps, activation,
                        negative_slope):
    """instance_norm's checks, in torch's order; returns (momentum, eps, the
    activation's code, its slope)."""
    op = "instance_norm"
    check_norm_input(input, op, attribute_error=bool(use_input_stats))
    check_flag(use_input_stats, op, "use_input_stats")
    eps = check_eps(eps, op)
    if use_input_stats:
        count = 1
        for n in input.shape[2:]:
            count *= n
        if count == 1:
            raise ValueError(f"Expected more than 1 spatial element when training, got input size {input.size()}")
    check_optional_tensors(op, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    momentum = check_momentum(momentum, op)
    if not use_input_stats and (running_mean is None or running_var is None):
        raise RuntimeError("Expected running_mean and running_var to be defined when use_input_stats is false")
    if input.dim() < 2:     # reached without use_input_stats only; torch indexes the missing dim
        raise IndexError(f"{op}(): expected input with at least 2 dims (N, C, *), got {input.dim()}D input")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    # torch's instance_norm repeats weight, bias and running stats per sample (more than
    # one dim raises), calls batch norm on them (sizes, then devices and dtypes: the
    # running stats any dtype) and copies the running stats' update back (a 0-d one
    # raises then).
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and t.dim() > 1:
            raise RuntimeError(f"{op}(): {name} must be 1-D (C,), got shape {list(t.shape)}")
    check_numel(op, input.shape[1], weight=weight, bias=bias, running_mean=running_mean, running_var=running_var)
    # Running stats that require grad are refused by the autograd of that batch norm,
    # which a non-floating input reaches only with a floating weight (else the input's
    # dtype raises first: below).
    floating_weight = weight is not None and weight.is_floating_point()
    check_norm_params(input, op, ("running_mean", "running_var"), input_dtype_first=True,
                      stats_grad=floating_weight, weight=weight, bias=bias, running_mean=running_mean,
                      running_var=running_var)
    check_running_stats_1d(op, running_mean, running_var, allow_0d=not use_input_stats)
    code, slope = norm_activation(activation, negative_slope, op, input.dtype)
    check_norm_dtype(input, op)
    check_running_stats_grad(op, running_mean=running_mean, running_var=running_var)
    return momentum, eps, code, slope


@checks_once
def check_layer_norm(input, weight, bias, normalized_shape, eps, activation, negative_slope):
    """layer_norm's checks, in torch's order, of tensors as autocast has cast them
    (a cast raises nothing); returns (normalized_shape as a tuple of ints, eps,
    the activation's code, its slope)."""
    op = "layer_norm"
    check_norm_input(input, op)
    eps = check_eps(eps, op)
    if not isinstance(normalized_shape, (tuple, list, torch.Size)):
        raise TypeError(f"{op}(): argument 'normalized_shape' must be tuple of ints, not "
                        f"{type_name(normalized_shape)}")
    shape = [as_int(n) for n in int_items(normalized_shape, op, "normalized_shape")]
    check_optional_tensors(op, weight=weight, bias=bias)
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
    check_norm_params(input, op, weight=weight, bias=bias)
    code, slope = norm_activation(activation, negative_slope, op, input.dtype)
    check_norm_dtype(input, op)
    return tuple(shape), eps, code, slope


@checks_once
def check_group_norm(input, weight, bias, num_groups, eps, activation, negative_slope):
    """group_norm's checks, in torch's order, of tensors as autocast has cast them
    (a cast raises nothing); returns (num_groups, eps, the activation's code, its
    slope)."""
    op = "group_norm"
    check_norm_input(input, op, attribute_error=True)
    if input.dim() < 2:
        raise RuntimeError(f"Expected at least 2 dimensions for input tensor but received {input.dim()}")
    # torch's Python divides by num_groups before its parser checks the type: the
    # same ZeroDivisionError for 0 or False, ValueError for one value per group.
    count = input.shape[0] * input.shape[1] // num_groups
    for n in input.shape[2:]:
        count *= n
    if count == 1:
        raise ValueError("Expected more than 1 value per channel when training, got input size "
                         f"{[input.shape[0] * input.shape[1] // num_groups, num_groups, *input.shape[2:]]}")
    if isinstance(num_groups, bool) or not is_int(num_groups):
        raise TypeError(f"{op}(): argument 'num_groups' must be int, not {type_name(num_groups)}")
    num_groups = as_int(num_groups)
    check_optional_tensors(op, weight=weight, bias=bias)
    eps = check_eps(eps, op)
    if num_groups <= 0:
        raise RuntimeError(f"Expected num groups to be greater than 0, got {num_groups}")
    if input.shape[1] % num_groups:
        raise RuntimeError("Expected number of channels in input to be divisible by num_groups, but got input of "
                           f"shape {list(input.shape)} and num_groups={num_groups}")
    for name, t in (("weight", weight), ("bias", bias)):
        if isinstance(t, torch.Tensor) and (t.dim() != 1 or t.numel() != input.shape[1]):
            raise RuntimeError(f"Expected {name} to be a vector of size equal to the number of channels in input, "
                               f"but got {name} of shape {list(t.shape)} and input of shape {list(input.shape)}")
    check_norm_params(input, op, weight=weight, bias=bias)
    code, slope = norm_activation(activation, negative_slope, op, input.dtype)
    check_norm_dtype(input, op)
    return num_groups, eps, code, slope

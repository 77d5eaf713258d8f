"""Compile cases of the norm kernels: the launches the primitives make for
ResNet-50-sized and transformer-sized calls, recorded on the meta device with
the GPU's tiling instead of launched, so that a case compiles exactly the
arguments a launch passes (integers equal to 1 as the constexpr Triton
specialises them to, integers divisible by 16 marked so, 16-byte aligned
pointers). SASS expectations: 128-bit global loads and stores wherever rows or
channels_last channels are contiguous and aligned."""
from __future__ import annotations

import contextlib

import torch

from .. import _runtime
from .._runtime import LAUNCH_OPTIONS, CompileCase, kernel_name, kernel_parameters
from ..activation import ACT_LEAKY_RELU, ACT_NONE, ACT_RELU
from . import ops

_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int32: "i32",
          torch.int64: "i64"}


@contextlib.contextmanager
def _recording(records: list):
    """Every launch inside (of any kernel) is recorded as (kernel, arguments by
    name) instead of run, and the norms plan for the GPU. Launch plans are built
    afresh inside and after, and bind no direct launch (which would go to the GPU
    past ``_run``: on a GPU machine, or with a CUDA build of torch and no GPU)."""
    def record(kernel, name, grid, args, options):
        records.append((kernel, {**dict(zip(kernel_parameters(kernel), args)), **options}))
    saved = _runtime._run, _runtime._DIRECT, ops.interpreting
    _runtime._run, _runtime._DIRECT, ops.interpreting = record, False, (lambda: False)
    _runtime.clear_plan_caches()
    try:
        yield
    finally:
        _runtime._run, _runtime._DIRECT, ops.interpreting = saved
        _runtime.clear_plan_caches()


def _constexpr_names(kernel) -> set:
    """The kernel's parameters annotated ``tl.constexpr``."""
    return {name for name, p in kernel_parameters(kernel).items() if "constexpr" in str(p.annotation)}


def _case(kernel, kwargs: dict, label: str, expect: dict) -> CompileCase:
    """A CompileCase of one recorded launch."""
    constexpr_names = _constexpr_names(kernel)
    signature, constexprs, divisible = {}, {}, []
    for name, value in kwargs.items():
        if name in ("num_warps", "num_stages", *LAUNCH_OPTIONS):      # options, not arguments
            continue
        if name in constexpr_names:
            constexprs[name] = value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _TYPES[value.dtype]
        elif isinstance(value, float):
            signature[name] = "fp32"
        elif value == 1:
            constexprs[name] = 1
        else:
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                divisible.append(name)
    return CompileCase(kernel, signature, constexprs, num_warps=kwargs.get("num_warps", 4), label=label,
                       divisible=tuple(divisible), expect=expect)


def _meta(shape, dtype, channels_last=False):
    fmt = torch.channels_last if channels_last and len(shape) == 4 else torch.contiguous_format
    return torch.empty(shape, dtype=dtype, device="meta", memory_format=fmt)


def _norm_calls(kind, shape, dtype, channels_last, variant):
    """Call the primitives of one norm call (forward and backward) on meta tensors;
    ``dtype``: x's, or (x's, the output's) (a layer or group norm under CUDA autocast)."""
    dtype, out_dtype = dtype if isinstance(dtype, tuple) else (dtype, None)
    pdt = torch.float32 if dtype != torch.float32 else dtype          # mixed precision parameters
    x = _meta(shape, dtype, channels_last)
    dy = _meta(shape, out_dtype or dtype, channels_last)
    if kind == "bn":
        C = shape[1]
        w, b = _meta((C,), pdt), _meta((C,), pdt)
        rm, rv = _meta((C,), pdt), _meta((C,), pdt)
        if variant == "sync":       # SyncBatchNorm: moments, the merge across 2 processes, dx of all processes' count
            mean, rstd, count = ops.norm_merge_moments(_meta((2, 3, C), torch.float32), rm, rv,
                                                       torch.empty((), dtype=torch.int64, device="meta"), 0.0, True,
                                                       1e-5)
            sums = _meta((2, C), torch.float32)
            ops.norm_backward_dx(dy, x, None, w, b, None, mean, rstd, sums, count, 1, 1, C, False, ACT_RELU.value,
                                 0.0, False)
            return
        if variant == "eval":
            y, mean, rstd = ops.norm_apply_running(x, rm, rv, w, b, None, 1, 1, True, 1e-5, ACT_RELU.value, 0.0)
            ops.norm_backward(dy, x, w, b, None, mean, rstd, 1, 1, C, False, False, ACT_RELU.value, 0.0, False,
                              True, True, True, False)
            return
        residual = _meta(shape, dtype, channels_last)
        nbt = torch.empty((), dtype=torch.int64, device="meta")
        mean, rstd = ops.norm_statistics(x, rm, rv, nbt, 1, 1, C, False, 0.0, True, 1e-5)
        y = ops.norm_apply(x, mean, rstd, w, b, residual, 1, 1, C, False, True, ACT_RELU.value, 0.0)
        # the ResNet block's tail: the backward reads the relu's mask from y
        ops.norm_backward(dy, x, w, b, y, mean, rstd, 1, 1, C, False, True, ACT_RELU.value, 0.0, True,
                          True, True, True, True)
        return
    if kind == "ln":
        lead, chan, groups, C = 1, len(shape) - 1, 1, 1
        for n in shape[1:]:
            C *= n
        w, b = _meta(shape[1:], pdt), _meta(shape[1:], pdt)
    else:
        lead, chan, C = 1, 1, shape[1]
        groups = variant if kind == "gn" else C
        w, b = _meta((C,), pdt), _meta((C,), pdt)
    act = ACT_LEAKY_RELU.value
    if kind == "in" and variant == "running":
        rm, rv = _meta((C,), pdt), _meta((C,), pdt)
        ops.norm_statistics(x, rm, rv, None, lead, chan, groups, True, 0.1, False, 1e-5)
        return
    if ops.single_read_fits(x, lead, chan, groups):
        y, mean, rstd = ops.norm_single_read(x, w, b, lead, chan, groups, kind == "gn", 1e-5, act, 0.1, out_dtype)
    else:
        mean, rstd = ops.norm_statistics(x, None, None, None, lead, chan, groups, True, 0.0, False, 1e-5)
        ops.norm_apply(x, mean, rstd, w, b, None, lead, chan, groups, True, kind == "gn", act, 0.1, out_dtype)
    ops.norm_backward(dy, x, w, b, None, mean, rstd, lead, chan, groups, True, True, act, 0.1, False,
                      True, True, True, False)


def _vector_expectations(kernel, kwargs) -> dict:
    """At least one 128-bit global load per activation-sized tensor a kernel streams
    in, one 128-bit store per tensor it streams out."""
    k = kwargs
    recomputed_residual = bool(k.get("HAS_RESIDUAL")) and k.get("ACTIVATION") != ACT_NONE.value
    loads, stores = {
        "_stats_kernel": (1, 0),
        "_normalize_kernel": (1 + k.get("HAS_RESIDUAL", 0), 1),
        "_bwd_reduce_kernel": (2 + recomputed_residual, k.get("WRITE_G", 0) + k.get("WRITE_DX", 0)),
        "_bwd_dx_kernel": (2 + (recomputed_residual and not k.get("READ_G")), 1),
        "_set_fwd_kernel": (1, 1),
        "_set_bwd_kernel": (2, 1),
    }[kernel_name(kernel)]
    return {"ldg128_at_least": int(loads), **({"stg128_at_least": int(stores)} if stores else {})}


_STATS, _REDUCE = "_stats_kernel", "_bwd_reduce_kernel"
_LOOPED = (_STATS, "_normalize_kernel", _REDUCE, "_bwd_dx_kernel")
_SET = ("_set_fwd_kernel", "_set_bwd_kernel")
BF16, FP32 = torch.bfloat16, torch.float32
AUTOCAST = (BF16, FP32)     # a bf16 x, float32 output and output gradient

# (label, kind, shape, dtype, channels_last, variant, kernels kept, vector expectations). Lean
# (one compile shard): bf16, with the SASS expectations where rows / channels are 16-byte
# aligned; fp32 for the kernel with the most registers; SyncBatchNorm's kernels with
# int64 offsets; group and layer norm under CUDA autocast.
_CALLS = [
    ("bn-nhwc", "bn", (32, 256, 56, 56), BF16, True, "train", _LOOPED, True),
    ("bn-nhwc", "bn", (32, 256, 56, 56), FP32, True, "train", (_REDUCE,), False),
    ("bn-nchw", "bn", (32, 64, 112, 112), BF16, False, "train", _LOOPED, True),
    ("bn-nhwc-eval", "bn", (32, 256, 56, 56), BF16, True, "eval", _LOOPED, True),
    ("bn-nhwc-sync-i64", "bn", (64, 256, 512, 512), BF16, True, "sync", ("_merge_kernel", "_bwd_dx_kernel"), False),
    ("gn-nhwc", "gn", (32, 256, 56, 56), BF16, True, 32, _LOOPED, True),
    ("gn-nchw", "gn", (32, 256, 56, 56), BF16, False, 32, (_STATS,), True),       # slices of a group
    ("ln-chw", "ln", (32, 64, 112, 112), BF16, False, None, (_REDUCE,), True),     # merges of wide slices
    ("in-nchw-running", "in", (32, 64, 56, 56), BF16, False, "running", (_STATS,), False),
    ("gn-nhwc-14x14", "gn", (32, 256, 14, 14), BF16, True, 32, _SET, True),
    ("ln-rows", "ln", (8192, 768), BF16, False, None, _SET, True),
    ("gn-nhwc", "gn", (32, 256, 56, 56), AUTOCAST, True, 32, _LOOPED[1:], True),
    ("ln-rows", "ln", (8192, 768), AUTOCAST, False, None, _SET, True),
]


def compile_cases() -> list[CompileCase]:
    cases = []
    for label, kind, shape, dtype, channels_last, variant, kept, aligned in _CALLS:
        records = []
        with _recording(records):
            _norm_calls(kind, shape, dtype, channels_last, variant)
        for kernel, kwargs in records:
            if kernel_name(kernel) in kept:
                types = ">".join(_TYPES[t] for t in dtype) if isinstance(dtype, tuple) else _TYPES[dtype]
                cases.append(_case(kernel, kwargs, f"{label},{types}",
                                   _vector_expectations(kernel, kwargs) if aligned else {}))
    return cases


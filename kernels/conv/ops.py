"""Host side of conv2d: which kernel runs, the launchers, and the registered operators.

Paths (``conv_paths``), with Cg = C/groups and Kg = K/groups:

* depthwise (Cg = Kg = 1, kernels up to ``DEPTHWISE_MAX_KERNEL`` on a side): the
  register-blocked kernels of ``_depthwise``, for all three passes;
* forward and weight gradient: implicit GEMM when Kg >= 16 (``FLAT`` columns
  when Cg < 16; an RGB stem's forward reads x and w as channels_last copies
  zero-padded to 4 channels: ``_flat_padding``), else the direct kernels;
* input gradient: implicit GEMM when Cg >= 16 and Kg >= 16, else direct;
* an implicit-GEMM pass ("gemm", not FLAT) of a 1x1 unpadded stride-1
  convolution whose operands have their pixels at stride 1 (NCHW), with at
  least ``PLANAR_MIN_PIXELS`` per image, runs on the planar kernels instead
  (``_planar``): per image and group a plain GEMM over the (channels, pixels)
  matrices;
* the three passes of such a convolution on channel-contiguous operands (16-byte
  channel rows, pixels at one stride), on tensor cores (16-bit, or fp32 as tf32):
  plain GEMMs over the (pixels, channels) matrices whose tiles come through
  tensor descriptors (``conv_pointwise_fwd`` / ``_dgrad`` / ``_wgrad``; TMA, so on
  a GPU from Hopper on; ``_descriptor_pixel_stride``).

Layouts: every kernel takes strides, so any input (contiguous, channels_last,
sliced, transposed, expanded gradients) runs without a copy, except the output
gradient of the weight-gradient GEMM, read pixel-linear (``_pixel_linear``: one
channels_last copy when it is not). On a GPU the implicit-GEMM
paths read channels_last: one copy of each operand that is not already
(input, weight, output gradient), so that tiles load channel-contiguous
16-byte vectors (``VEC``, checked by ``_vec``). Their outputs (y, and dx of a
stride-1 convolution) are written in the caller's layout: NCHW in place along
the pixels where 16-byte runs allow it (``PIXEL_VEC``, ``_gemm_output``), else
through a channels_last buffer copied once. The interpreter skips the copies
(not the stems' zero-padded ones), so the strided addressing is what CI tests.
The planar and depthwise kernels read NCHW in place on a GPU too. Whether the
copies beat reading NCHW in place (scalar gathers: 5x / 8x the main-loop
instructions per multiply-add in sm_90 SASS under triton 3.6 / 3.9, no spill)
waits for more than one shape: on an H200 (2026-11-30, bf16) a 3x3 NCHW forward
of 32x128x28x28 took 0.082 ms read in place, 0.091 with its copies (cuDNN
0.041); the conv benchmark times both (``read_in_place``). The stems' padded
copies were timed there too (``_flat_padding``).
The output is channels_last when torch suggests channels_last for the input or
the weight (``kernels._runtime.memory_format_of``), as torch does.

All of the above is decided once per layer's shapes, layouts and switches: each
pass's launcher is a launch plan, cached ("Launch plans" below).
"""
from __future__ import annotations

import contextlib
import functools
import math
import threading
from typing import NamedTuple

import torch
import triton
from torch.utils.flop_counter import flop_registry, register_flop_formula
from triton.runtime import _allocation as triton_allocation

from .._library import Operator, batched_by_autograd
from .._reduce import split_chunk, tickets
from .._runtime import (bind, bind_config, cdiv, dot_upcast, empty_like_strides, interpreting, kernel_parameters,
                        launch, memory_format_of, merge_dims, next_power_of_2, offsets_need_int64, persistent,
                        plan_cache, plan_float)
from ..activation import ACT_NONE
from ._depthwise import (_conv_depthwise_rows_kernel, _conv_dgrad_depthwise_kernel, _conv_dgrad_depthwise_rows_kernel,
                         _conv_fwd_depthwise_kernel, _conv_wgrad_depthwise_kernel, _conv_wgrad_depthwise_rows_kernel)
from ._direct import (_conv_bwd_epilogue_kernel, _conv_dgrad_direct_kernel, _conv_fwd_direct_kernel,
                      _conv_wgrad_direct_kernel)
from ._gemm import (_pad_channels_kernel, conv_dgrad_gemm, conv_fwd_flat, conv_fwd_gemm, conv_planar_dgrad,
                    conv_planar_fwd, conv_planar_wgrad, conv_pointwise_dgrad, conv_pointwise_fwd,
                    conv_pointwise_wgrad, conv_wgrad_flat, conv_wgrad_gemm)

GEMM_MIN_CHANNELS = 16
PLANAR_MIN_PIXELS = 128      # below, a planar tile (up to 256 pixels wide) is mostly empty: the
                             # implicit GEMM tiles N*H*W pixels instead (a guess until a GPU measures it)
DEPTHWISE_MAX_KERNEL = 7      # the depthwise kernels unroll a row of taps (S) and tile R*S taps (weight gradient)
MIN_SPLIT_STEPS = 8           # k-steps per split of a reduction on a GPU
# The direct kernels' pixel reductions (the depthwise and direct weight gradients, the
# bias / activation gradient: 4 warps, small tiles, a memory round trip per step) split
# for DIRECT_PROGRAMS_PER_SM programs an SM, where a GEMM's big programs take two: at
# two, an H200 (2026-11-30) ran a depthwise weight gradient (32x144x56x56, 3x3) as 264
# programs of 4 warps, 143 steps each, in 0.21 ms (cuDNN: 0.06).
DIRECT_PROGRAMS_PER_SM = 8
# The depthwise patch kernels (what the rows kernels below do not run: a strided input gradient past
# ``_units_fit``; every pass with DEPTHWISE_ROWS False) take tiles on a GPU, channels_last (NCHW: half the bytes):
# the forward's and input gradient's (sm_90, triton 3.6, bf16: 3x3 forward / input gradient at 8 KB 143 / 96
# registers a thread, 3 / 5 programs of 4 warps an SM, at 4 KB 108 / 72, at 2 KB 64 / 64; the 7x7 forward 186,
# 139, 88 registers and 5.5, 7.6, 8.6 instructions per FFMA: fewer the larger the tile), and the weight
# gradient's over its taps (R*S rounded up to a power of two), DEPTHWISE_WGRAD_CHANNEL_BYTES of channels wide,
# so that a layer's channels make several tiles (144 of 2 bytes: 9) for its splits.
DEPTHWISE_TILE_BYTES = 8192
DEPTHWISE_WGRAD_TILE_BYTES = 16384
DEPTHWISE_WGRAD_CHANNEL_BYTES = 32
# A depthwise convolution in any layout runs the rows kernels (``_depthwise_rows``): the forward and weight
# gradient at any stride and dilation (a row dilation by row sets, ``_row_walk``), the input gradient at
# stride (1, 1) and at any other by units of stride dx rows and columns where those carry at most
# DEPTHWISE_UNITS_MAX_SHIFTS tiles of dy (``_unit_shifts``: about R d / stride rows by S d / stride column
# shifts at dilation d; at 64, a 7x7 of stride 4 and dilation 5, one element a thread, sm_90 SASS: 184 / 198
# registers under triton 3.9 / 3.6, no spill; a 7x7 of stride 2 and dilation 2, 49 tiles: 139 / 168) and a unit
# holds at most DEPTHWISE_UNITS_MAX_PIXELS dx pixels (``_units_fit``; the patch kernel else). (TILE_Q, BLOCK_C)
# tiles of DEPTHWISE_ROW_TILE elements for a 3x3 (4 a thread: its nine weights, or the weight gradient's nine
# sums, in 36 registers; 5x5: 2 a thread, 7x7: 1), down ROWS output rows (the strided input gradient: units),
# ROWS chosen for DEPTHWISE_ROW_PROGRAMS_PER_SM programs an SM and at least DEPTHWISE_MIN_ROWS rows (a chunk
# of a row set loads min(STRIDE_H, R) input rows an output row and max(R - STRIDE_H, 0) more; the weight
# gradient splits its chunks as the direct kernels do). DEPTHWISE_ROWS False: those run the patch kernels
# instead, as before 2026-11-30 (for bench.sweep to time both: the rows kernels have not run on a GPU yet).
DEPTHWISE_ROWS = True
DEPTHWISE_UNITS_MAX_SHIFTS = 64
DEPTHWISE_UNITS_MAX_PIXELS = 16
DEPTHWISE_ROW_TILE = 512
DEPTHWISE_ROW_PROGRAMS_PER_SM = 16
DEPTHWISE_MIN_ROWS = 8


def conv_paths(in_channels: int, out_channels: int, groups: int, kernel_size) -> dict:
    """{"forward", "input_grad", "weight_grad"} -> "gemm", "gemm-flat", "depthwise" or
    "direct", for a kernel of ``kernel_size`` (R, S)."""
    cg, kg = in_channels // groups, out_channels // groups
    if cg == 1 and kg == 1 and max(kernel_size) <= DEPTHWISE_MAX_KERNEL:
        return dict.fromkeys(("forward", "input_grad", "weight_grad"), "depthwise")
    gemm = "gemm" if cg >= GEMM_MIN_CHANNELS else "gemm-flat"
    wide = kg >= GEMM_MIN_CHANNELS
    return {"forward": gemm if wide else "direct",
            "input_grad": "gemm" if wide and cg >= GEMM_MIN_CHANNELS else "direct",
            "weight_grad": gemm if wide else "direct"}


def output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int, dilation: int) -> int:
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def _allow_tf32(dtype: torch.dtype, tf32: bool) -> bool:
    """fp32 follows cuDNN's tf32 switch (``tf32``: its value, ``Switches``); fp16 /
    bf16 always use tensor cores."""
    return dtype != torch.float32 or tf32


def _for_dtype(kernels, dtype: torch.dtype):
    """The fp32-tuned or the fp16 / bf16-tuned twin of a ``_gemm.TunedGemm``."""
    return kernels.fp32 if dtype == torch.float32 else kernels.half


_copy_operands = True       # False inside read_in_place()


@contextlib.contextmanager
def read_in_place():
    """Inside, the implicit-GEMM passes read their operands as they come: no
    channels_last copies on a GPU, no zero-padded ones for a stem
    (``_flat_padding``). The benchmark's "in-place" rows time this alternative.
    Read when a call runs: a CUDA graph keeps what it captured."""
    global _copy_operands
    saved, _copy_operands = _copy_operands, False
    try:
        yield
    finally:
        _copy_operands = saved


class Operand(NamedTuple):
    """What a launch plan reads of a tensor: sizes, strides, dtype, device, and
    whether its data pointer is 16-byte aligned; part of the plan's key
    ("Launch plans"). Also the layout of a tensor a launch will allocate or copy
    (``channels_last``, ``padded``, ``empty_like``: fresh storage is aligned)."""
    shape: tuple
    strides: tuple
    dtype: torch.dtype
    device: torch.device
    aligned: bool

    @staticmethod
    def fields(t: torch.Tensor) -> tuple:
        """An Operand's fields for ``t``, as a plain tuple (a key part built at the
        cost of a tuple; ``Operand(*fields)`` when a plan is built)."""
        return t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16 == 0

    @staticmethod
    def of(t: torch.Tensor) -> "Operand":
        return Operand(*Operand.fields(t))

    @staticmethod
    def empty(shape, dtype: torch.dtype, device: torch.device, memory_format=torch.contiguous_format) -> "Operand":
        """A new tensor's layout, as ``torch.empty(shape, memory_format=...)`` gives it."""
        strides = torch.empty(shape, dtype=dtype, device="meta", memory_format=memory_format).stride()
        return Operand(tuple(shape), strides, dtype, device, True)

    def empty_like(self) -> "Operand":
        """The layout ``torch.empty_like`` gives a tensor of this one's
        (``kernels._runtime.empty_like_strides``; a meta tensor's would recompute
        size-1 dims' strides)."""
        return self._replace(strides=empty_like_strides(self.shape, self.strides), aligned=True)

    def allocator(self):
        """A function that allocates a tensor of exactly this layout (a plan's outputs
        and buffers: what it launches with is what it decided)."""
        return functools.partial(torch.empty_strided, self.shape, self.strides, dtype=self.dtype, device=self.device)

    def channels_last(self) -> "Operand":
        """The layout of ``t.contiguous(memory_format=torch.channels_last)``."""
        return Operand.empty(self.shape, self.dtype, self.device, torch.channels_last)

    def padded(self, pad_c: int) -> "Operand":
        """The layout of ``_padded_channels_last(t, pad_c)``."""
        if self.shape[1] == pad_c and self.is_channels_last():
            return self
        return Operand.empty((self.shape[0], pad_c, *self.shape[2:]), self.dtype, self.device, torch.channels_last)

    def stride(self) -> tuple:
        return self.strides

    def element_size(self) -> int:
        return self.dtype.itemsize

    def numel(self) -> int:
        return math.prod(self.shape)

    def is_contiguous(self, memory_format=torch.contiguous_format) -> bool:
        """The tensor's ``is_contiguous`` (torch's rule, asked of a meta tensor of this
        layout: plans are built once)."""
        meta = torch.empty_strided(self.shape, self.strides, dtype=self.dtype, device="meta")
        return meta.is_contiguous(memory_format=memory_format)

    def is_channels_last(self) -> bool:
        return self.is_contiguous(memory_format=torch.channels_last)


def _copied_to_channels_last(t, copy_operands: bool) -> bool:
    """Whether an implicit-GEMM pass reads ``t`` (a tensor or an Operand) through a
    channels_last copy: on a GPU, when it is not channels_last already, unless
    ``copy_operands`` is off (``read_in_place``; the interpreter reads every
    layout in place)."""
    return t.device.type == "cuda" and copy_operands and not t.is_contiguous(memory_format=torch.channels_last)


def _gemm_read(t: Operand, copy_operands: bool) -> Operand:
    """The layout in which an implicit-GEMM pass reads ``t``."""
    return t.channels_last() if _copied_to_channels_last(t, copy_operands) else t


def _read_copy(t: torch.Tensor, pad_c: int = 0) -> torch.Tensor:
    """The copy of ``t`` that a plan reads instead (``_gemm_read``, ``Operand.padded``):
    zero-padded to ``pad_c`` channels, or channels_last."""
    return _padded_channels_last(t, pad_c) if pad_c else t.contiguous(memory_format=torch.channels_last)


def _gemm_strides(t: Operand) -> tuple:
    """The strides an implicit-GEMM kernel gets for ``t``: those of its size-1 dims
    0. Any stride addresses a size-1 dim's one index, and torch leaves it free (a
    1x1 weight (K, C, 1, 1) has strides (C, 1, 1, 1), even as channels_last); 0
    keeps every row offset a multiple of ``VEC``, masked rows' too, so that such a
    tensor keeps its 16-byte vectors."""
    return tuple(0 if n == 1 else s for n, s in zip(t.shape, t.strides))


def _gemm_output(out: Operand, in_place: bool) -> tuple[Operand, int]:
    """(buffer, PIXEL_VEC) through which a GEMM pass writes ``out`` (N, C, H, W), the
    tensor it returns. With its pixels merged at stride 1 (NCHW) and ``in_place``,
    ``out`` itself and PIXEL_VEC = ``_pixel_vec(out)``: the epilogue stores along the
    pixels. Else PIXEL_VEC 0 and, in the interpreter, ``out`` (strided rows); on a
    GPU ``out`` when it is channels_last, or else a channels_last buffer (channel
    vectors) the caller copies into ``out``. A GPU takes the NCHW store only where
    it vectorizes (PIXEL_VEC > 1): a scalar one would scatter each warp's stores
    over as many channels."""
    pixel_vec = _pixel_vec(out) if in_place else 0
    if out.device.type != "cuda" or pixel_vec > 1 or out.is_channels_last():
        return out, pixel_vec
    return out.channels_last(), 0


def _pixel_vec(*tensors: Operand) -> int:
    """PIXEL_VEC of tensors (N, C, H, W) read or written along their pixels: 0 unless
    every one's H*W pixels merge at stride 1; then elements per 16 bytes when every
    pointer, H*W and the batch and channel strides are multiples of 16 bytes, else 1
    (also the VEC of the planar kernels, whose operands all have stride-1 pixels)."""
    vec = min(_layout_pixel_vec(t.shape, t.strides, t.element_size()) for t in tensors)
    return 1 if vec > 1 and not all(t.aligned for t in tensors) else vec


@functools.lru_cache(maxsize=4096)
def _layout_pixel_vec(shape: tuple, strides: tuple, element_size: int) -> int:
    """``_pixel_vec`` of an aligned tensor of this shape and these strides."""
    merged = merge_dims(shape[2:], strides[2:])
    if merged is None or merged[1] != 1:
        return 0
    vec = 16 // element_size
    return 1 if (shape[2] * shape[3]) % vec or strides[0] % vec or strides[1] % vec else vec


def _pixel_linear(t: Operand) -> bool:
    """Whether ``t`` (N, C, P, Q) has pixel (n, p, q) at ((n*P + p)*Q + q) * one
    stride (channels_last and its views), as the weight-gradient GEMM reads it."""
    return merge_dims((t.shape[0], t.shape[2], t.shape[3]), t.strides[:1] + t.strides[2:]) is not None


def _vec(tensors, counts) -> int:
    """VEC constexpr of the GEMM kernels: elements per 16 bytes when every tensor is
    channel-contiguous (dim 1) on a 16-byte aligned pointer with its other strides,
    and every channel count, multiples of it; else 1."""
    if not all(t.aligned for t in tensors):
        return 1
    vec = 16 // tensors[0].element_size()
    for t in tensors:
        strides = _gemm_strides(t)
        if strides[1] != 1 or any(s % vec for s in strides[:1] + strides[2:]):
            return 1
    return 1 if any(c % vec for c in counts) else vec


def _pixel_stride(t) -> int | None:
    """The one stride of the H*W pixels of ``t`` (N, C, H, W; a tensor or an
    Operand), or None when (H, W) do not merge into one."""
    merged = merge_dims(t.shape[2:], t.stride()[2:])
    return None if merged is None else merged[1]


def _planar(geo, *tensors) -> bool:
    """The planar path of a 1x1 unpadded stride-1 convolution of images of at least
    ``PLANAR_MIN_PIXELS`` pixels: every tensor has its H*W pixels at stride 1 (NCHW
    and its batch / channel slices), so that each image is a (channels, pixels)
    matrix the GEMM reads and writes in place."""
    return (geo.pointwise and geo.H * geo.W >= PLANAR_MIN_PIXELS
            and all(_pixel_stride(t) == 1 for t in tensors))


def _planar_grid_fits(geo) -> bool:
    """The planar forward / input gradient grids hold N * groups on axis 1."""
    return geo.N * geo.groups <= 65535


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _device_sms(device: torch.device) -> int:
    """The SM count of a CUDA ``device`` (the current device when it has no index)."""
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def split_count(programs_wanted: int, tiles: int, steps: int, min_steps: int, cap: int | None = None) -> int:
    """How many ranges each of ``tiles`` tiles splits its reduction of ``steps``
    k-steps into: enough for ``programs_wanted`` programs when the tile grid alone
    is smaller, each split keeping ``min_steps`` k-steps, at most ``cap``; >= 1."""
    splits = min(cdiv(programs_wanted, max(tiles, 1)), steps // min_steps)
    return max(1, splits if cap is None else min(splits, cap))


def _splits(device: torch.device, tiles: int, steps: int, cap: int | None = None, per_sm: int = 2,
            min_steps: int = MIN_SPLIT_STEPS) -> int:
    """``split_count`` for this device. GPU: ``per_sm`` programs per SM (a GEMM's: one
    wave at two resident programs per SM), at least ``min_steps`` k-steps per split
    (MIN_SPLIT_STEPS: a split's fp32 partial tile, written and read once, in L2,
    costs at most half the operand bytes it loads). The interpreter pays per
    program: no split (tests force splits to check them)."""
    if device.type != "cuda":
        return 1
    return split_count(per_sm * _device_sms(device), tiles, steps, min_steps, cap)


def _direct_splits(device: torch.device, tiles: int, steps: int, tile_elements: int,
                   step_rounds: int = 1) -> tuple[int, int]:
    """(splits, CHUNK) of a direct kernel's pixel reduction over ``steps`` steps of
    ``step_rounds`` memory round trips each (the rows kernel's: a strip's rows)
    for ``tiles`` fp32 tiles of ``tile_elements``: DIRECT_PROGRAMS_PER_SM programs
    an SM, whose tile's last program sums the splits CHUNK a load (``sum_splits``),
    at most sqrt(steps * step_rounds * CHUNK) of them (where the round trips a
    split runs meet the loads that sum the splits, splits / CHUNK), at least
    MIN_SPLIT_STEPS round trips a split, and each split's share of the steps
    (``_split_steps``: steps / splits rounded up) leaves none empty."""
    chunk = split_chunk(tile_elements)
    splits = _splits(device, tiles, steps, math.isqrt(steps * step_rounds * chunk), DIRECT_PROGRAMS_PER_SM,
                     cdiv(MIN_SPLIT_STEPS, step_rounds))
    return (cdiv(steps, cdiv(steps, splits)) if steps else splits), chunk     # no split left without a step


class _Workspace(NamedTuple):
    """The fp32 partials (``partials`` elements; 1: no split, so none is written)
    and the ticket counters of a launch that may split its reductions."""
    partials: int
    tickets: int

    def __call__(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.partials == 1:
            return _unsplit_workspace(device)
        return torch.empty(self.partials, dtype=torch.float32, device=device), tickets(device, self.tickets)


@functools.lru_cache(maxsize=None)
def _unsplit_workspace(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The (partials, tickets) arguments of a launch that does not split: never read
    or written (kept outside CUDA graph pools: ``persistent``)."""
    return (persistent(lambda: torch.empty(1, dtype=torch.float32, device=device), device),
            persistent(lambda: torch.empty(1, dtype=torch.int32, device=device), device))


def _split_plan(kernel, vec: int, device: torch.device, tiles, groups: int, steps, cap=None):
    """(grid, workspace) of a launch whose grid is (tiles(meta), groups, splits) and
    whose tiles reduce over steps(meta) k-steps (``cap(meta)`` bounds the splits):
    the splits of every config the launch tunes over, decided here (the grid looks
    them up by the config's blocks), and the fp32 partials sized for the largest
    need among them."""
    part_numel, ticket_count, splits = 1, 1, {}
    for config in kernel.nnlib_configs_for({"VEC": vec}):
        meta = config.kwargs
        blocks = meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_K"]
        splits[blocks] = _splits(device, tiles(meta) * groups, steps(meta), None if cap is None else cap(meta))
        if splits[blocks] > 1:
            programs = tiles(meta) * groups
            part_numel = max(part_numel, programs * splits[blocks] * meta["BLOCK_M"] * meta["BLOCK_N"])
            ticket_count = max(ticket_count, programs)

    def grid(meta):
        return tiles(meta), groups, splits[meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_K"]]
    return grid, _Workspace(part_numel, ticket_count)


_choosing = threading.Lock()      # serialises the autotuner's first launches (``_tuned_launch``)


def _tuned_launch(kernel, grid, **constexprs):
    """``run(*args)``: the launches of one launch plan's autotuned kernel on ``grid``
    (a function of the config's blocks) with the plan's ``constexprs``. They go
    through Triton's autotuner until one of them has run and the autotuner has
    chosen its config (the autotuner's key, the key arguments and the tensors'
    dtypes, is the same at every call of a plan), then through a launcher bound to
    that config (``bind_config``: arguments positional, the grid computed once):
    the autotuner's Python costs ~16 us a launch (a dict of all ~45 arguments and
    its key rebuilt each call; this CPU, the kernel's run stubbed), a bound launch
    under 1 us. The choice is taken under a lock from ``best_config``, which
    every launch of the kernel writes: reset first, so that a launch that did
    not run (a dry run, ``compile_ahead``) chooses nothing."""
    bound = []

    def run(*args):
        if bound:
            return bound[0](*args)
        with _choosing:
            kernel.best_config = None
            out = launch(kernel, grid, *args, **constexprs)
            config = kernel.best_config
            if config is not None and config.pre_hook is None and not bound:
                bound.append(bind_config(kernel, grid, len(args), constexprs, config))
        return out
    return run


def _plain_launch(kernel, grid: tuple, leading: int, **constexprs):
    """``run(*args)``: a plan's launches of the plain jitted ``kernel`` (4 warps) on
    ``grid``, its first ``leading`` arguments passed at each call (tensors, then the
    plan's own ints and the float slope: on a GPU only the tensors choose the
    compiled kernel), the constexprs bound once (``bind``)."""
    return bind(kernel, grid, tuple(kernel_parameters(kernel))[:leading], 4, **constexprs)


def _direct_tiles(channels: int, pixels: int, element_size: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) of the direct kernels over ``pixels`` rows: up to 32
    channels by pixels for a 2 KB tile on a GPU, 1024 elements of 2 bytes or 512 of
    4 (their strided 2-D gathers hold an int64 offset per element: 1024 fp32 ones
    took 128 registers and a spill in the input gradient on sm_80 under triton
    3.9); under the interpreter, which pays per element of a block, up to 64
    channels and 16x the 2-byte elements, at most ``pixels`` rounded up to a power
    of two."""
    if interpreting():
        block_n = min(next_power_of_2(max(channels, 1)), 64)
        return min(1024, 16384 // block_n, max(next_power_of_2(pixels), 16)), block_n
    block_n = min(next_power_of_2(max(channels, 1)), 32)
    return 2048 // element_size // block_n, block_n


def _depthwise_tiles(rows: int, cols: int, channels: int, channels_contiguous: bool, kernel_width: int,
                     element_size: int, taps: int | None = None,
                     interpreter: bool | None = None) -> tuple[int, int, int]:
    """(TILE_P, TILE_Q, BLOCK_C) of the depthwise kernels over ``rows`` x ``cols``
    pixels of ``element_size``-byte elements; ``taps``: the weight gradient's (R*S
    rounded up to a power of two; None: the forward or input gradient). On a GPU,
    when channels are contiguous (16-byte channel vectors): up to 64 channels by a
    patch up to 8 pixels wide, DEPTHWISE_TILE_BYTES of elements (8 KB: each thread
    holds four 16-byte channel vectors, 4 pixels of 8 channels, so that the weights
    it loads per tap serve several pixels' multiply-adds), half as many for kernels
    wider than 3 (their row of taps' loads would not fit the registers); the weight
    gradient's (taps, pixels, channels) tile holds DEPTHWISE_WGRAD_TILE_BYTES over
    its taps, DEPTHWISE_WGRAD_CHANNEL_BYTES of channels wide (a layer's channels
    make several tiles for its splits). Else (pixel rows are contiguous) 8 channels
    by a patch up to 32 pixels wide, half the bytes. The interpreter gets 16x 4096
    (NCHW: 2048) elements whatever the element size, 64 channels wide.
    ``interpreter``: the interpreter's tiles (None: when interpreting)."""
    scale = 16 if (interpreting() if interpreter is None else interpreter) else 1
    wgrad = taps is not None and taps > 1
    if scale > 1:
        elements = (4096 if channels_contiguous else 2048) * scale
        elements = 2 * elements // taps if wgrad else elements
    else:
        tile_bytes = DEPTHWISE_WGRAD_TILE_BYTES // taps if wgrad else DEPTHWISE_TILE_BYTES
        elements = (tile_bytes if channels_contiguous else tile_bytes // 2) // element_size
    if not wgrad and kernel_width > 3:
        elements //= 2
    widest = 64 if taps is None or scale > 1 else DEPTHWISE_WGRAD_CHANNEL_BYTES // element_size
    block_c = min(next_power_of_2(channels), widest if channels_contiguous else 8)
    pixels = max(elements // block_c, 1)
    tile_q = min(next_power_of_2(cols), scale * (8 if channels_contiguous else 32), pixels)
    tile_p = min(next_power_of_2(rows), max(pixels // tile_q, 1))
    return tile_p, tile_q, block_c


def _depthwise_rows(geo: ConvGeometry, pass_name: str) -> bool:
    """Whether a depthwise pass runs a rows kernel (any layout): the forward and the
    weight gradient always; the input gradient at stride (1, 1), and at other
    strides by units where those fit (``_units_fit``)."""
    if not DEPTHWISE_ROWS:
        return False
    return pass_name != "input_grad" or tuple(geo.stride) == (1, 1) or _units_fit(geo)


def _unit_shifts(geo: ConvGeometry) -> int:
    """The (TILE_Q, BLOCK_C) tiles of dy that the strided input gradient by units
    (``_conv_dgrad_depthwise_rows_kernel``) carries: M + 1 = dil_h (R - 1) //
    stride_h + 1 dy rows of T = dil_w (S - 1) // stride_w + 1 column shifts (the
    compiler drops the shifts no tap reads)."""
    (stride_h, stride_w), (dil_h, dil_w) = geo.stride, geo.dilation
    return (dil_h * (geo.R - 1) // stride_h + 1) * (dil_w * (geo.S - 1) // stride_w + 1)


def _units_fit(geo: ConvGeometry) -> bool:
    """Whether the strided input gradient runs by units: at most
    DEPTHWISE_UNITS_MAX_SHIFTS dy tiles (``_unit_shifts``) and DEPTHWISE_UNITS_MAX_PIXELS
    dx pixels a unit (stride_h x stride_w, each unrolled: a store and its taps)."""
    return (_unit_shifts(geo) <= DEPTHWISE_UNITS_MAX_SHIFTS
            and geo.stride[0] * geo.stride[1] <= DEPTHWISE_UNITS_MAX_PIXELS)


class _RowWalk(NamedTuple):
    """How a depthwise rows kernel walks ``out_rows`` rows (``_row_walk``)."""
    sub_stride: int     # STRIDE_H
    row_step: int
    rows: int           # ROWS
    tile_q: int
    block_c: int
    strips: int         # images x row sets x chunks x column strips: the programs (the weight gradient's steps)


def _row_walk(images: int, out_rows: int, cols: int, channels: int, stride_h: int, dil_h: int,
              device: torch.device, channels_contiguous: bool, taps: int) -> _RowWalk:
    """The row sets, tiles and strips of a rows kernel over ``images`` of
    ``out_rows`` x ``cols`` output pixels of row stride ``stride_h`` and row
    dilation ``dil_h``: with g = gcd(stride_h, dil_h), row set a < row_step (the
    output rows a + row_step k, row_step = dil_h / g) is a convolution of row
    stride STRIDE_H = stride_h / g and row dilation 1 on every dil_h-th input
    row; at most out_rows sets (past them they would be empty: one row a set)."""
    g = math.gcd(stride_h, dil_h)
    row_step = max(1, min(dil_h // g, out_rows))
    set_rows = cdiv(out_rows, row_step)
    rows, tile_q, block_c = _depthwise_row_tiles(images * row_step, set_rows, cols, channels, device,
                                                 channels_contiguous, taps)
    strips = images * row_step * cdiv(set_rows, rows) * cdiv(cols, tile_q)
    return _RowWalk(stride_h // g, row_step, rows, tile_q, block_c, strips)


def _depthwise_row_tiles(images: int, rows: int, cols: int, channels: int, device: torch.device,
                         channels_contiguous: bool = True, taps: int = 9,
                         interpreter: bool | None = None) -> tuple[int, int, int]:
    """(ROWS, TILE_Q, BLOCK_C) of the rows kernel of a kernel of ``taps`` over
    ``images`` of ``rows`` x ``cols`` output pixels: tiles of DEPTHWISE_ROW_TILE
    elements for a 3x3 (4 a thread), fewer for more taps (each thread holds its
    elements' taps: 5x5 2, 7x7 1), of the widths 8 to 64 of the contiguous axis
    (channels; without ``channels_contiguous``, columns, 8 to 128) the one that
    pads channels and columns least (the wider on a tie); ROWS for
    DEPTHWISE_ROW_PROGRAMS_PER_SM programs an SM, at least DEPTHWISE_MIN_ROWS. The
    interpreter (it pays per program): 16x the elements, every row in one program."""
    if interpreting() if interpreter is None else interpreter:
        block_c = min(next_power_of_2(channels), 64)
        return rows, min(next_power_of_2(cols), 16 * DEPTHWISE_ROW_TILE // block_c), block_c
    per_thread = min(4, 1 << (max(64 // taps, 1).bit_length() - 1))       # a power of two, at most 64 taps
    elements = DEPTHWISE_ROW_TILE * per_thread // 4

    def padded(width):
        other = min(next_power_of_2(cols if channels_contiguous else channels), elements // width)
        tile_q, block_c = (other, width) if channels_contiguous else (width, other)
        return cdiv(channels, block_c) * block_c * cdiv(cols, tile_q) * tile_q, -width, tile_q, block_c
    widths = (8, 16, 32, 64) if channels_contiguous else (8, 16, 32, 64, 128)
    extent = next_power_of_2(channels if channels_contiguous else cols)
    _, _, tile_q, block_c = min(padded(width) for width in widths if width <= max(extent, widths[0]))
    programs = max(images * cdiv(cols, tile_q) * cdiv(channels, block_c), 1)      # 0 images: an empty batch
    wanted = DEPTHWISE_ROW_PROGRAMS_PER_SM * (_device_sms(device) if device.type == "cuda" else 1)
    chunks = min(cdiv(rows, DEPTHWISE_MIN_ROWS), cdiv(wanted, programs))
    return cdiv(rows, max(chunks, 1)), tile_q, block_c


def _image_needs_int64(geo: ConvGeometry, *tensors) -> bool:
    """INDEX_64 of the depthwise kernels, the GEMM forward and weight gradient, the direct weight gradient: some
    offset inside one image of ``tensors`` (N, C, H, W; tensors or Operands) may
    not fit in int32, reach of the kernel past its edges included
    (``needs_int64``'s rule, one image at a time)."""
    reach_h, reach_w = geo.dilation[0] * geo.R + geo.pad[0], geo.dilation[1] * geo.S + geo.pad[1]
    return any(offsets_need_int64((t.shape[1], t.shape[2] + 2 * reach_h, t.shape[3] + 2 * reach_w), t.stride()[1:])
               for t in tensors)


def _step(stride: int, dilation: int) -> int:
    return stride // math.gcd(stride, dilation)


class ConvGeometry:
    """Shapes and arguments of one convolution: x (N, C, H, W), w (K, Cg, R, S),
    y (N, K, P, Q); padding (top, left, bottom, right)."""

    def __init__(self, x_shape, w_shape, stride, padding, dilation, groups):
        self.N, self.C, self.H, self.W = x_shape
        self.K, self.Cg, self.R, self.S = w_shape
        self.groups = groups
        self.Kg = self.K // groups
        self.stride, self.dilation = stride, dilation
        self.pad = padding
        self.P = output_size(self.H, self.R, stride[0], padding[0], padding[2], dilation[0])
        self.Q = output_size(self.W, self.S, stride[1], padding[1], padding[3], dilation[1])
        self.paths = conv_paths(self.C, self.K, groups, (self.R, self.S))
        self.pointwise = (self.R, self.S) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0, 0, 0)

    def dims(self):
        return self.N, self.H, self.W, self.P, self.Q

    def conv_args(self):
        """(stride_h, stride_w, pad_h, pad_w, dil_h, dil_w) as the kernels take them."""
        return (*self.stride, self.pad[0], self.pad[1], *self.dilation)


# ---------------------------------------------------------------------------
# Launch plans
#
# What a pass's launcher decides (path, operand copies, output buffer, tiles,
# VEC / PIXEL_VEC, descriptor path, split plan, the launch's scalar arguments)
# depends only on its operands' Operands, the convolution's arguments (for the
# bias / activation gradient: its flags and slope) and the switches
# (``Switches``: ``read_in_place``, cuDNN's tf32 flag for fp32), which the
# builders take as arguments and read nowhere else (besides ``interpreting()``,
# fixed for the process). A launch plan is those decisions as a function of the
# tensors: run(a, b, c, ...) allocates the output, makes the copies decided and
# launches. ``by_operands`` caches plans by all of that (its operands'
# ``Operand.fields``, the arguments, the switches; ``plan_cache``), so a call
# repeating a layer's shapes and layouts costs a key and a lookup before its
# launch.


class Switches(NamedTuple):
    """The global switches a plan follows, read once per call (part of its key):
    operand copies (off inside ``read_in_place``) and cuDNN's tf32 flag."""
    copy_operands: bool
    tf32: bool

    @staticmethod
    def now() -> tuple:
        """The switches now, as a plain tuple (a key part built at the cost of a
        tuple; ``Switches(*now)`` when a plan is built)."""
        return _copy_operands, torch._C._get_cudnn_allow_tf32()


def by_operands(build):
    """A pass's builder ``build(*Operands, switches, *extra)`` as ``cached(tensors,
    *extra)``: the launch plan for ``tensors`` and ``extra`` (hashable: the conv
    arguments (stride, padding, dilation, groups), flags), cached (``plan_cache``)
    under the tensors' ``Operand.fields``, ``extra`` and the switches now."""
    def build_from_fields(fields, switches, *extra):
        return build(*(Operand(*f) for f in fields), Switches(*switches), *extra)
    plans = plan_cache(build_from_fields)

    @functools.wraps(build)
    def cached(tensors, *extra):
        return plans(tuple([Operand.fields(t) for t in tensors]), Switches.now(), *extra)
    return cached


def _one_dtype(pass_name: str, a: Operand, b: Operand) -> None:
    """A pass with work to do has operands of one dtype (the kernels' dot products
    take one): an operator called with two (a weight's gradient in a master
    weight's dtype, not cast back) raises here, when its plan is built, not in a
    GPU compile."""
    if a.dtype != b.dtype:
        raise RuntimeError(f"conv2d {pass_name}: operands of two dtypes, {a.dtype} and {b.dtype}")


def _memory_format(*tensors):
    """torch's output layout: channels_last when the input or the weight suggests it
    (``kernels._runtime.memory_format_of``; tensors or Operands)."""
    return (torch.channels_last if any(memory_format_of(t.shape, t.stride()) == torch.channels_last for t in tensors)
            else torch.contiguous_format)


@by_operands
def _forward_plan(x: Operand, w: Operand, switches: Switches, conv: tuple, has_bias: bool, activation: int):
    """run(x, w, b, negative_slope) -> y = act(conv(x, w) + b): (N, K, P, Q) in x's
    dtype, channels_last when x or w is."""
    geo = geometry(x.shape, w.shape, *conv)
    fmt, shape = _memory_format(x, w), (geo.N, geo.K, geo.P, geo.Q)
    y = Operand.empty(shape, x.dtype, x.device, fmt)
    new_output = y.allocator()
    if 0 in shape:
        return lambda x, w, b, negative_slope: new_output()
    _one_dtype("forward", x, w)
    M = geo.N * geo.P * geo.Q
    common = dict(HAS_BIAS=has_bias, ACTIVATION=activation)
    path = geo.paths["forward"]
    if path in ("depthwise", "direct"):
        if path == "depthwise" and _depthwise_rows(geo, "forward"):
            walk = _row_walk(geo.N, geo.P, geo.Q, geo.K, geo.stride[0], geo.dilation[0], x.device,
                             x.strides[1] == 1, geo.R * geo.S)
            kernel = _conv_depthwise_rows_kernel
            grid = (walk.strips, cdiv(geo.K, walk.block_c))
            args = (geo.H, geo.W, geo.P, geo.Q, geo.K, walk.rows, *geo.conv_args(), walk.row_step, *x.strides,
                    w.strides[0], w.strides[2], w.strides[3], *y.strides)
            common.update(R=geo.R, S=geo.S, STRIDE_H=walk.sub_stride, FLIP=False, TILE_Q=walk.tile_q,
                          BLOCK_C=walk.block_c, INDEX_64=_image_needs_int64(geo, x, y))
        elif path == "depthwise":
            tile_p, tile_q, block_c = _depthwise_tiles(geo.P, geo.Q, geo.K, x.strides[1] == 1, geo.S,
                                                       x.element_size())
            kernel, grid = _conv_fwd_depthwise_kernel, (geo.N * cdiv(geo.P, tile_p) * cdiv(geo.Q, tile_q),
                                                        cdiv(geo.K, block_c))
            args = (geo.H, geo.W, geo.P, geo.Q, geo.K, *geo.conv_args(), *x.strides, w.strides[0], w.strides[2],
                    w.strides[3], *y.strides)
            common.update(R=geo.R, S=geo.S, TILE_P=tile_p, TILE_Q=tile_q, BLOCK_C=block_c,
                          INDEX_64=_image_needs_int64(geo, x, y))
        else:
            block_m, block_n = _direct_tiles(geo.K, M, x.element_size())
            kernel, grid = _conv_fwd_direct_kernel, (cdiv(M, block_m), cdiv(geo.K, block_n))
            args = (*geo.dims(), geo.K, geo.Cg, geo.Kg, geo.R, geo.S, *geo.conv_args(), *x.strides, *w.strides,
                    *y.strides)
            common.update(BLOCK_M=block_m, BLOCK_N=block_n)

        direct = _plain_launch(kernel, grid, 4 + len(args) + 1, **common)

        def run(x, w, b, negative_slope):
            y = new_output()
            direct(x, w, y if b is None else b.contiguous(), y, *args, negative_slope)
            return y
        return run
    if path == "gemm" and fmt == torch.contiguous_format and _planar(geo, x) and _planar_grid_fits(geo):
        planar = _planar_plan(conv_planar_fwd, w, x, y, geo, geo.Kg, geo.Cg, (w.strides[0], w.strides[1]),
                              has_bias, activation, switches.tf32)

        def run(x, w, b, negative_slope):
            y = new_output()
            planar(w, x, None if b is None else b.contiguous(), y, negative_slope)
            return y
        return run
    flat = path == "gemm-flat"
    pad_c = _flat_padding(geo, switches.copy_operands, x, True) if flat else 0
    x_read, w_read = ((x.padded(pad_c), w.padded(pad_c)) if pad_c else
                      (_gemm_read(x, switches.copy_operands), _gemm_read(w, switches.copy_operands)))
    y_buffer, pixel_vec = _gemm_output(y, True)
    y_vec = [] if pixel_vec else [y_buffer]     # VEC: the channel-contiguous tensors
    vec = (_vec(y_vec, [geo.Kg]) if y_vec else 1) if flat else _vec([x_read, w_read, *y_vec], [geo.Cg, geo.Kg])
    pixel_stride = None if flat else _descriptor_pixel_stride(geo, x_read, vec, switches.tf32)
    if pixel_stride is not None:        # 1x1: a plain GEMM, operands through tensor descriptors
        kernel = _for_dtype(conv_pointwise_fwd, x.dtype)
        args = (M, geo.P, geo.Q, geo.Cg, geo.Kg, pixel_stride, w_read.strides[0])
        common["FORWARD"] = True
    else:
        kernel = _for_dtype(conv_fwd_flat if flat else conv_fwd_gemm, x.dtype)
        args = (*geo.dims(), geo.Cg, geo.Kg, geo.R, geo.S, *geo.conv_args(), *_gemm_strides(x_read),
                *_gemm_strides(w_read))
        common.update(FLAT=flat, PAD_C=pad_c, INDEX_64=_image_needs_int64(geo, x_read))
    args += _gemm_strides(y_buffer)
    common.update(VEC=vec, PIXEL_VEC=pixel_vec, ALLOW_TF32=_allow_tf32(x.dtype, switches.tf32),
                  DOT_UPCAST=dot_upcast())

    def tiles(meta):
        return cdiv(M, meta["BLOCK_M"]) * cdiv(geo.Kg, meta["BLOCK_N"])

    def steps(meta):        # what a split divides: k-steps, or in FLAT mode column blocks of R k-steps each
        if flat:
            return cdiv(geo.S * (pad_c or geo.Cg), meta["BLOCK_K"])
        return geo.R * geo.S * cdiv(geo.Cg, meta["BLOCK_K"])
    grid, workspace = _split_plan(kernel, vec, x.device, tiles, geo.groups, steps)
    tuned_launch = _tuned_launch(kernel, grid, **common)
    descriptors = pixel_stride is not None
    buffered, new_buffer = y_buffer is not y, y_buffer.allocator()
    copy_x, copy_w = x_read is not x, w_read is not w

    def run(x, w, b, negative_slope):
        x = _read_copy(x, pad_c) if copy_x else x
        w = _read_copy(w, pad_c) if copy_w else w
        if descriptors:
            _use_descriptor_allocator(x.device)
        out = new_output()
        y = new_buffer() if buffered else out
        tuned_launch(x, w, y if b is None else b.contiguous(), y, *workspace(x.device), *args, negative_slope)
        return out.copy_(y) if buffered else out
    return run


def _flat_padding(geo: ConvGeometry, copy_operands: bool, x: Operand, forward: bool) -> int:
    """PAD_C of a FLAT forward or weight gradient (part of their launch plans'
    keys): 4 when x (and the forward's w) are to be read as channels_last tensors
    of 4 channels, the real ones (up to 4: RGB) zero-padded
    (``_padded_channels_last``; a caller's 4-channel channels_last tensors as they
    are), whose kernel rows load as aligned vectors through cp.async; unpadded, a
    3-channel row starts at any element and gathers one at a time. In sm_90 SASS
    (triton 3.9 / 3.6) the main loop takes 1.6x / 2.1x the instructions per
    k-step unpadded in the forward, 2.5x / 2x in the weight gradient (whose
    padded columns can take a third more tiles). Timed on an H200 (2026-11-30,
    ResNet-50's stem, bf16, batch 32): the forward is faster padded (0.091 ms
    against 0.184 read in place, channels_last; NCHW 0.145 against 0.196), the
    weight gradient slower (0.250 against 0.160): the forward pads in every
    layout, the weight gradient only a 4-channel channels_last x (no copy). 0
    (as they are) for groups, column dilation, more channels or without
    ``copy_operands`` (``read_in_place``)."""
    if geo.groups > 1 or geo.dilation[1] > 1 or geo.Cg > 4 or not copy_operands:
        return 0
    if not forward and x.padded(4) is not x:
        return 0
    return 4


def _padded_channels_last(t: torch.Tensor, pad_c: int) -> torch.Tensor:
    """t (N, C, H, W) copied to a channels_last (N, pad_c, H, W) whose channels past
    C are zero (a NaN-free filler for the multiply-adds with w's zero channels): one
    launch; t itself when it is that already."""
    return _padding_plan(t.shape, t.stride(), pad_c)(t)


@plan_cache
def _padding_plan(shape: tuple, strides: tuple, pad_c: int):
    """``run(t)`` of ``_padded_channels_last`` for t of this layout: the bound copy."""
    N, C, H, W = shape
    as_is = torch.empty_strided(shape, strides, device="meta").is_contiguous(memory_format=torch.channels_last)
    if C == pad_c and as_is:
        return lambda t: t
    # (the interpreter pays per element of a block: up to an image's pixels)
    block = max(min(8192, next_power_of_2(H * W)) if interpreting() else 512,
                next_power_of_2(cdiv(H * W, 65535)))     # grid axis 1 < 2**16
    copy = bind(_pad_channels_kernel, (N, cdiv(H * W, block)), ("src_ptr", "dst_ptr"), 4, HW=H * W, C=C, W=W,
                **dict(zip(("stride_n", "stride_c", "stride_h", "stride_w"), strides)), PAD_C=pad_c, BLOCK=block)

    def run(t):
        out = torch.empty((N, H, W, pad_c), dtype=t.dtype, device=t.device)
        copy(t, out)
        return out.permute(0, 3, 1, 2)
    return run


def _descriptor_pixel_stride(geo: ConvGeometry, a: Operand, vec: int, tf32: bool) -> int | None:
    """The one stride of the N*H*W pixels of ``a`` (x of a forward or a weight
    gradient, dy of an input gradient) when a 1x1 pass takes the tensor-descriptor
    GEMMs (``conv_pointwise_fwd`` / ``_dgrad`` / ``_wgrad``), else None. It takes
    them on tensor cores (16-bit, or fp32 as tf32) with 16-byte channel rows (VEC >
    1: the descriptors' alignment rules) and pixels at one stride that is a multiple
    of VEC; on a GPU, one with TMA (Hopper and later; before it the descriptors
    load as the implicit GEMM does)."""
    if not (geo.pointwise and vec > 1 and _allow_tf32(a.dtype, tf32)):
        return None
    if a.device.type == "cuda" and not _has_tma(a.device.index):
        return None
    merged = merge_dims((geo.N, geo.H, geo.W), a.stride()[:1] + a.stride()[2:])
    return merged[1] if merged is not None and merged[1] % vec == 0 else None


@functools.lru_cache(maxsize=None)
def _has_tma(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def _descriptor_scratch(size: int, alignment: int, stream) -> torch.Tensor:
    """Global memory for the tensor descriptors a kernel builds (torch allocations are
    512-byte aligned)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _use_descriptor_allocator(device: torch.device) -> None:
    """A GPU kernel that builds tensor descriptors takes their memory from triton's
    allocator, a context variable that starts unset in every thread (autograd's
    workers too): set ours where none is set."""
    if device.type == "cuda" and isinstance(triton_allocation._allocator.get(), triton_allocation.NullAllocator):
        triton.set_allocator(_descriptor_scratch)


@by_operands
def _input_grad_plan(dy: Operand, w: Operand, x_like: Operand, switches: Switches, conv: tuple):
    """run(dy, w, x_like) -> dx (N, C, H, W) in ``torch.empty_like(x_like)``'s layout:
    the transposed convolution of dy."""
    geo = geometry(x_like.shape, w.shape, *conv)
    if x_like.numel() == 0:
        return lambda dy, w, x_like: torch.empty_like(x_like)
    _one_dtype("input gradient", dy, w)
    dx = x_like.empty_like()
    new_output = dx.allocator()
    (stride_h, stride_w), (dil_h, dil_w) = geo.stride, geo.dilation
    steps_rs = (_step(stride_h, dil_h), _step(stride_w, dil_w))
    m_max = geo.N * cdiv(geo.H, stride_h) * cdiv(geo.W, stride_w)      # pixels of the largest phase
    phases_hw = (min(stride_h, geo.H), min(stride_w, geo.W))      # the phases that hold pixels
    phases = phases_hw[0] * phases_hw[1]
    path = geo.paths["input_grad"]
    if path == "depthwise" and _depthwise_rows(geo, "input_grad") and (stride_h, stride_w) != (1, 1):
        units_h, units_w = cdiv(geo.H + geo.pad[0], stride_h), cdiv(geo.W + geo.pad[1], stride_w)
        rows, tile_q, block_c = _depthwise_row_tiles(geo.N, units_h, units_w, geo.C, dy.device, dy.strides[1] == 1,
                                                     max(geo.R * geo.S, _unit_shifts(geo)))
        grid = (geo.N * cdiv(units_h, rows) * cdiv(units_w, tile_q), cdiv(geo.C, block_c))
        args = (geo.H, geo.W, geo.P, geo.Q, geo.C, rows, geo.pad[0], geo.pad[1], *dy.strides, w.strides[0],
                w.strides[2], w.strides[3], *dx.strides)
        units_launch = _plain_launch(_conv_dgrad_depthwise_rows_kernel, grid, 3 + len(args), R=geo.R, S=geo.S,
                                     STRIDE_H=stride_h, STRIDE_W=stride_w, DIL_H=dil_h, DIL_W=dil_w, TILE_Q=tile_q,
                                     BLOCK_C=block_c, INDEX_64=_image_needs_int64(geo, dy, dx))

        def run(dy, w, x_like):
            dx = new_output()
            units_launch(dy, w, dx, *args)
            return dx
        return run
    if path == "depthwise" and _depthwise_rows(geo, "input_grad"):
        # dx = dy convolved with the kernel turned by 180 degrees, padded by ((R - 1) dil - pad) rows and columns
        walk = _row_walk(geo.N, geo.H, geo.W, geo.C, 1, dil_h, dy.device, dy.strides[1] == 1, geo.R * geo.S)
        grid = (walk.strips, cdiv(geo.C, walk.block_c))
        args = (geo.P, geo.Q, geo.H, geo.W, geo.C, walk.rows, 1, 1, (geo.R - 1) * dil_h - geo.pad[0],
                (geo.S - 1) * dil_w - geo.pad[1], dil_h, dil_w, walk.row_step, *dy.strides, w.strides[0],
                w.strides[2], w.strides[3], *dx.strides, 0.0)
        rows_launch = _plain_launch(_conv_depthwise_rows_kernel, grid, 4 + len(args), R=geo.R, S=geo.S, STRIDE_H=1,
                                    FLIP=True, HAS_BIAS=False, ACTIVATION=ACT_NONE.value, TILE_Q=walk.tile_q,
                                    BLOCK_C=walk.block_c, INDEX_64=_image_needs_int64(geo, dy, dx))

        def run(dy, w, x_like):
            dx = new_output()
            rows_launch(dy, w, dx, dx, *args)
            return dx
        return run
    if path in ("depthwise", "direct"):
        if path == "depthwise":
            tile_p, tile_q, block_c = _depthwise_tiles(cdiv(geo.H, stride_h), cdiv(geo.W, stride_w), geo.C,
                                                       dy.strides[1] == 1, geo.S, dy.element_size())
            patches = cdiv(cdiv(geo.H, stride_h), tile_p) * cdiv(cdiv(geo.W, stride_w), tile_q)
            kernel, grid = _conv_dgrad_depthwise_kernel, (geo.N * phases * patches, cdiv(geo.C, block_c))
            args = (geo.H, geo.W, geo.P, geo.Q, geo.C, *geo.conv_args(), *phases_hw, *dy.strides, w.strides[0],
                    w.strides[2], w.strides[3], *dx.strides)
            constexprs = dict(R=geo.R, S=geo.S, TILE_P=tile_p, TILE_Q=tile_q, BLOCK_C=block_c,
                              INDEX_64=_image_needs_int64(geo, dy, dx))
        else:
            block_m, block_n = _direct_tiles(geo.C, m_max, dy.element_size())
            kernel, grid = _conv_dgrad_direct_kernel, (cdiv(m_max, block_m), cdiv(geo.C, block_n), phases)
            args = (*geo.dims(), geo.C, geo.Cg, geo.Kg, geo.R, geo.S, *geo.conv_args(), *steps_rs, phases_hw[1],
                    *dy.strides, *w.strides, *dx.strides)
            constexprs = dict(BLOCK_M=block_m, BLOCK_N=block_n)

        direct = _plain_launch(kernel, grid, 3 + len(args), **constexprs)

        def run(dy, w, x_like):
            dx = new_output()
            direct(dy, w, dx, *args)
            return dx
        return run
    if path == "gemm" and _planar(geo, dy, dx) and _planar_grid_fits(geo):
        planar = _planar_plan(conv_planar_dgrad, w, dy, dx, geo, geo.Cg, geo.Kg, (w.strides[1], w.strides[0]),
                              False, 0, switches.tf32)

        def run(dy, w, x_like):
            dx = new_output()
            planar(w, dy, None, dx, 0.0)
            return dx
        return run
    dy_read, w_read = _gemm_read(dy, switches.copy_operands), _gemm_read(w, switches.copy_operands)
    dx_buffer, pixel_vec = _gemm_output(dx, stride_h * stride_w == 1)
    vec = _vec([dy_read, w_read] + ([] if pixel_vec else [dx_buffer]), [geo.Cg, geo.Kg])
    pixel_stride = _descriptor_pixel_stride(geo, dy_read, vec, switches.tf32)
    kernel = _for_dtype(conv_dgrad_gemm if pixel_stride is None else conv_pointwise_dgrad, dy.dtype)
    taps = cdiv(geo.R, steps_rs[0]) * cdiv(geo.S, steps_rs[1])     # of the phase with the most

    def tiles(meta):
        return cdiv(m_max, meta["BLOCK_M"]) * cdiv(geo.Cg, meta["BLOCK_N"])

    def steps(meta):
        return taps * cdiv(geo.Kg, meta["BLOCK_K"])
    grid, workspace = _split_plan(kernel, vec, dy.device, tiles, geo.groups * phases, steps)
    common = dict(VEC=vec, PIXEL_VEC=pixel_vec, ALLOW_TF32=_allow_tf32(dy.dtype, switches.tf32),
                  DOT_UPCAST=dot_upcast())
    descriptors = pixel_stride is not None
    if descriptors:                     # 1x1: a plain GEMM, operands through tensor descriptors
        args = (m_max, geo.H, geo.W, geo.Cg, geo.Kg, pixel_stride, w_read.strides[0], *_gemm_strides(dx_buffer), 0.0)
        common.update(FORWARD=False, HAS_BIAS=False, ACTIVATION=0)
    else:
        args = (*geo.dims(), geo.Cg, geo.Kg, geo.R, geo.S, *geo.conv_args(), *steps_rs, *phases_hw,
                *_gemm_strides(dy_read), *_gemm_strides(w_read), *_gemm_strides(dx_buffer))
    copy_dy, copy_w, buffered = dy_read is not dy, w_read is not w, dx_buffer is not dx
    new_buffer = dx_buffer.allocator()
    tuned_launch = _tuned_launch(kernel, grid, **common)

    def run(dy, w, x_like):
        dy = _read_copy(dy) if copy_dy else dy
        w = _read_copy(w) if copy_w else w
        out = new_output()
        dx = new_buffer() if buffered else out
        if descriptors:
            _use_descriptor_allocator(dy.device)
            tuned_launch(dy, w, dx, dx, *workspace(dy.device), *args)
        else:
            tuned_launch(dy, w, dx, *workspace(dy.device), *args)
        return out.copy_(dx) if buffered else out
    return run


@by_operands
def _weight_grad_plan(dy: Operand, x: Operand, w_like: Operand, switches: Switches, conv: tuple,
                      dtype: torch.dtype | None):
    """run(dy, x, w_like) -> dw (K, Cg, R, S) in w_like's memory format, written in
    ``dtype`` (None: w_like's) by one launch: the reduction over the N*P*Q pixels is
    split (``_split_plan``) only as far as its fp32 partials, written and read once,
    stay below the bytes of dy and x."""
    geo = geometry(x.shape, w_like.shape, *conv)
    dw = Operand.empty(w_like.shape, dtype or w_like.dtype, w_like.device, _memory_format(w_like))
    new_output = dw.allocator()
    if w_like.numel() == 0:
        return lambda dy, x, w_like: new_output()
    _one_dtype("weight gradient", dy, x)
    pixels = geo.N * geo.P * geo.Q
    path = geo.paths["weight_grad"]
    if path in ("depthwise", "direct"):
        taps = next_power_of_2(geo.R * geo.S)
        if path == "depthwise" and _depthwise_rows(geo, "weight_grad"):
            walk = _row_walk(geo.N, geo.P, geo.Q, geo.C, geo.stride[0], geo.dilation[0], x.device,
                             x.strides[1] == 1, geo.R * geo.S)
            programs, block = cdiv(geo.C, walk.block_c), walk.block_c
            strip_rows = min(walk.sub_stride, geo.R) * (walk.rows - 1) + geo.R     # the input rows a strip loads
            splits, chunk = _direct_splits(x.device, programs, walk.strips, taps * block, strip_rows)
            kernel = _conv_wgrad_depthwise_rows_kernel
            args = (geo.N, geo.H, geo.W, geo.P, geo.Q, geo.C, walk.rows, *geo.conv_args(), walk.row_step,
                    *dy.strides, *x.strides, dw.strides[0], dw.strides[2], dw.strides[3])
            constexprs = dict(R=geo.R, S=geo.S, TAPS=taps, STRIDE_H=walk.sub_stride, TILE_Q=walk.tile_q,
                              BLOCK_C=block, INDEX_64=_image_needs_int64(geo, dy, x), CHUNK=chunk)
        elif path == "depthwise":
            tile_p, tile_q, block_c = _depthwise_tiles(geo.P, geo.Q, geo.C, x.strides[1] == 1, geo.S,
                                                       x.element_size(), taps)
            programs, block = cdiv(geo.C, block_c), block_c
            splits, chunk = _direct_splits(x.device, programs, geo.N * cdiv(geo.P, tile_p) * cdiv(geo.Q, tile_q),
                                           taps * block)
            kernel = _conv_wgrad_depthwise_kernel
            args = (*geo.dims(), geo.C, *geo.conv_args(), *dy.strides, *x.strides, dw.strides[0], dw.strides[2],
                    dw.strides[3])
            constexprs = dict(R=geo.R, S=geo.S, TAPS=taps, TILE_P=tile_p, TILE_Q=tile_q, BLOCK_C=block_c,
                              INDEX_64=_image_needs_int64(geo, dy, x), CHUNK=chunk)
        else:
            block_m, block = _direct_tiles(geo.K, pixels, x.element_size())
            programs = geo.Cg * cdiv(geo.K, block)
            splits, chunk = _direct_splits(x.device, programs, cdiv(pixels, block_m), taps * block)
            kernel = _conv_wgrad_direct_kernel
            args = (*geo.dims(), geo.K, geo.Cg, geo.Kg, geo.R, geo.S, *geo.conv_args(), *dy.strides, *x.strides,
                    *dw.strides)
            constexprs = dict(TAPS=taps, INDEX_64=_image_needs_int64(geo, x), BLOCK_M=block_m, BLOCK_N=block,
                              CHUNK=chunk)
        workspace = _Workspace(programs * splits * taps * block if splits > 1 else 1, programs)

        direct = _plain_launch(kernel, (programs, 1, splits), 5 + len(args), **constexprs)

        def run(dy, x, w_like):
            dw = new_output()
            direct(dy, x, dw, *workspace(x.device), *args)
            return dw
        return run
    if path == "gemm" and _planar(geo, dy, x):
        planar = _planar_wgrad_plan(dy, x, dw, geo, switches.tf32)

        def run(dy, x, w_like):
            dw = new_output()
            planar(dy, x, dw)
            return dw
        return run
    flat = path == "gemm-flat"
    pad_c = _flat_padding(geo, switches.copy_operands, x, False) if flat else 0
    dy_read = _gemm_read(dy, switches.copy_operands)
    dy_read = dy_read if _pixel_linear(dy_read) else dy.channels_last()
    x_read = x.padded(pad_c) if pad_c else _gemm_read(x, switches.copy_operands)
    cols = (pad_c or geo.Cg) * geo.R * geo.S if flat else geo.Cg
    taps = 1 if flat else geo.R * geo.S
    vec = _vec([dy_read], [geo.Kg]) if flat else _vec([dy_read, x_read], [geo.Cg, geo.Kg])
    pixel_stride = merge_dims((geo.N, geo.P, geo.Q), dy_read.strides[:1] + dy_read.strides[2:])[1]
    x_pixel_stride = None if flat or pixel_stride % vec else _descriptor_pixel_stride(geo, x_read, vec,
                                                                                       switches.tf32)
    descriptors = x_pixel_stride is not None
    kernel = _for_dtype(conv_wgrad_flat if flat else conv_pointwise_wgrad if descriptors else conv_wgrad_gemm,
                        x.dtype)
    input_bytes = (dy_read.numel() + x_read.numel()) * x.element_size()

    def tiles(meta):
        return cdiv(geo.Kg, meta["BLOCK_M"]) * cdiv(cols, meta["BLOCK_N"])

    def steps(meta):
        if flat:            # whole rows of QB <= BLOCK_K pixels (``_conv_wgrad_gemm_kernel``)
            row_pixels = min(geo.Q, meta["BLOCK_K"])
            return geo.N * cdiv(geo.P, meta["BLOCK_K"] // row_pixels) * cdiv(geo.Q, row_pixels)
        return cdiv(pixels, meta["BLOCK_K"])

    def cap(meta):          # partial bytes: splits x programs x tile x 4 bytes, written and read
        return input_bytes // (8 * tiles(meta) * geo.groups * taps * meta["BLOCK_M"] * meta["BLOCK_N"])
    grid, workspace = _split_plan(kernel, vec, x.device, tiles, geo.groups * taps, steps, cap)
    common = dict(VEC=vec, ALLOW_TF32=_allow_tf32(x.dtype, switches.tf32), DOT_UPCAST=dot_upcast())
    if descriptors:                     # 1x1: a plain GEMM, operands through tensor descriptors
        args = (pixels, geo.Cg, geo.Kg, pixel_stride, x_pixel_stride, dw.strides[0], dw.strides[1])
    else:
        args = (*geo.dims(), geo.Cg, geo.Kg, geo.R, geo.S, *geo.conv_args(), pixel_stride, dy_read.strides[1],
                *_gemm_strides(x_read), *dw.strides)
        common.update(FLAT=flat, PAD_C=pad_c, INDEX_64=_image_needs_int64(geo, x_read))
    copy_dy, copy_x = dy_read is not dy, x_read is not x
    tuned_launch = _tuned_launch(kernel, grid, **common)

    def run(dy, x, w_like):
        dy = _read_copy(dy) if copy_dy else dy
        x = _read_copy(x, pad_c) if copy_x else x
        if descriptors:
            _use_descriptor_allocator(x.device)
        dw = new_output()
        tuned_launch(dy, x, dw, *workspace(x.device), *args)
        return dw
    return run


def _planar_plan(tuned, w: Operand, src: Operand, out: Operand, geo: ConvGeometry, rows: int, reduction: int,
                 w_strides, has_bias: bool, activation: int, tf32: bool):
    """run(w, src, b, out, negative_slope): out = act(b + A_g @ src) per image and
    group on the planar path: the forward (``conv_planar_fwd``, src = x, A = w:
    ``rows`` = Kg, ``reduction`` = Cg, ``w_strides`` = (row, reduction) strides of
    w) or the input gradient (``conv_planar_dgrad``, src = dy, A = w transposed, no
    bias)."""
    pixels = geo.H * geo.W
    kernel = _for_dtype(tuned, src.dtype)
    args = (pixels, rows, reduction, geo.groups, geo.Kg * w.strides[0], *w_strides, src.strides[0], src.strides[1], 1,
            out.strides[0], out.strides[1], _pixel_stride(out))
    constexprs = dict(HAS_BIAS=has_bias, ACTIVATION=activation, VEC=_pixel_vec(src, out),
                      ALLOW_TF32=_allow_tf32(src.dtype, tf32), DOT_UPCAST=dot_upcast())

    def grid(meta):
        return cdiv(rows, meta["BLOCK_M"]) * cdiv(pixels, meta["BLOCK_N"]), geo.N * geo.groups

    tuned_launch = _tuned_launch(kernel, grid, **constexprs)

    def run(w, src, b, out, negative_slope):
        tuned_launch(w, src, out if b is None else b, out, *args, negative_slope)
    return run


def _planar_wgrad_plan(dy: Operand, x: Operand, dw: Operand, geo: ConvGeometry, tf32: bool):
    """run(dy, x, dw): dw (K, Cg, 1, 1) of a planar 1x1 convolution, one launch, the
    N*H*W pixels split (``_split_plan``) as far as the partials stay below the
    inputs' bytes."""
    pixels = geo.H * geo.W
    vec = _pixel_vec(dy, x)
    kernel = _for_dtype(conv_planar_wgrad, x.dtype)
    input_bytes = (dy.numel() + x.numel()) * x.element_size()

    def tiles(meta):
        return cdiv(geo.Kg, meta["BLOCK_M"]) * cdiv(geo.Cg, meta["BLOCK_N"])

    def steps(meta):
        return geo.N * cdiv(pixels, meta["BLOCK_K"])

    def cap(meta):
        return input_bytes // (8 * tiles(meta) * geo.groups * meta["BLOCK_M"] * meta["BLOCK_N"])
    grid, workspace = _split_plan(kernel, vec, x.device, tiles, geo.groups, steps, cap)
    args = (geo.N, pixels, geo.Cg, geo.Kg, dy.strides[0], dy.strides[1], 1, x.strides[0], x.strides[1], 1,
            dw.strides[0], dw.strides[1])
    constexprs = dict(VEC=vec, ALLOW_TF32=_allow_tf32(x.dtype, tf32), DOT_UPCAST=dot_upcast())

    tuned_launch = _tuned_launch(kernel, grid, **constexprs)

    def run(dy, x, dw):
        tuned_launch(dy, x, dw, *workspace(x.device), *args)
    return run


@by_operands
def _output_grad_plan(dy: Operand, saved: Operand, switches: Switches, activation: int, negative_slope: float,
                      bias_dtype: torch.dtype | None):
    """run(dy, saved) -> (g, db) of dy (N, K, P, Q) and ``saved`` (the forward's output
    y with an activation, else dy): g = dy * act'(y) (dy itself without an
    activation) and, when ``bias_dtype`` is given, db (K,) in it, summed over N*P*Q
    in fp32; one launch."""
    N, K, P, Q = dy.shape
    bias_grad = bias_dtype is not None
    g = dy.empty_like() if activation else dy
    new_g = g.allocator() if activation else None
    new_db = functools.partial(torch.empty, K, dtype=bias_dtype, device=dy.device)
    pixels = N * P * Q
    if K == 0 or (pixels == 0 and not bias_grad):
        return lambda dy, saved: (new_g() if activation else dy, new_db() if bias_grad else None)
    block_m, block_n = (512, 64) if interpreting() else (32, 32)
    k_tiles = cdiv(K, block_n)
    splits, chunk = _direct_splits(dy.device, k_tiles, cdiv(pixels, block_m), block_n)
    workspace = _Workspace(k_tiles * splits * block_n if splits > 1 else 1, k_tiles)
    args = (N, K, P, Q, float(negative_slope), *dy.strides, *saved.strides, *g.strides)
    epilogue = _plain_launch(_conv_bwd_epilogue_kernel, (k_tiles, 1, splits), 6 + len(args), ACTIVATION=activation,
                             HAS_BIAS=bias_grad, PIXEL_VEC=_pixel_vec(dy, saved, g), BLOCK_M=block_m,
                             BLOCK_N=block_n, CHUNK=chunk)

    def run(dy, saved):
        g = new_g() if activation else dy
        db = new_db() if bias_grad else None
        epilogue(dy, saved, g, dy if db is None else db, *workspace(dy.device), *args)
        return g, db
    return run


# ---------------------------------------------------------------------------
# Operators (kernels/_library.py)
#
# The three passes are bilinear and each one's derivatives are the other two:
# with F(x, w) the forward, D(g, w) the input gradient and W(g, x) the weight
# gradient, <u, D(g, w)> = <F(u, w), g> = <w, W(g, u)>. So every formula below
# calls the operators (not the bare launchers), and double backward (gradient
# penalties, Hessian-vector products) runs the same Triton kernels, to any order.
# The operators take schema types: stride / dilation as [h, w], padding as
# [top, left, bottom, right]; ConvGeometry is rebuilt from them (cached).

@plan_cache
def _geometry(x_shape, w_shape, stride, padding, dilation, groups) -> ConvGeometry:
    return ConvGeometry(x_shape, w_shape, stride, padding, dilation, groups)


def geometry(x_shape, w_shape, stride, padding, dilation, groups) -> ConvGeometry:
    """The ConvGeometry of a call, cached by its arguments (``plan_cache``)."""
    return _geometry(tuple(x_shape), tuple(w_shape), tuple(stride), tuple(padding), tuple(dilation), groups)


def conv2d_forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: list[int], padding: list[int],
                   dilation: list[int], groups: int, activation: int, negative_slope: float,
                   master_weight: torch.Tensor | None, master_bias: torch.Tensor | None) -> torch.Tensor:
    """act(conv(x, w) + b) of x (N, C, H, W): see ``_forward_plan``. ``master_weight``,
    ``master_bias``: the weight and bias that autocast's casts, made outside autograd,
    turned into w and b (read by nothing here): their gradients go to them, in their
    dtypes (see ``_forward_backward``)."""
    conv = (tuple(stride), tuple(padding), tuple(dilation), groups)
    plan = _forward_plan((x, w), conv, b is not None, activation)
    return plan(x, w, b, float(negative_slope))


def conv2d_input_grad(g: torch.Tensor, w: torch.Tensor, x_like: torch.Tensor, stride: list[int],
                      padding: list[int], dilation: list[int], groups: int) -> torch.Tensor:
    """D(g, w): the input gradient (N, C, H, W) of output gradient g (N, K, P, Q), in
    ``torch.empty_like(x_like)``'s layout (x_like gives shape and layout only)."""
    conv = (tuple(stride), tuple(padding), tuple(dilation), groups)
    return _input_grad_plan((g, w, x_like), conv)(g, w, x_like)


def conv2d_weight_grad(g: torch.Tensor, x: torch.Tensor, w_like: torch.Tensor, stride: list[int],
                       padding: list[int], dilation: list[int], groups: int, dtype: torch.dtype | None) -> torch.Tensor:
    """W(g, x): the weight gradient (K, C/groups, R, S) of output gradient g and input
    x, in w_like's memory format and in ``dtype`` (None: w_like's; w_like gives
    shape, layout and dtype only)."""
    conv = (tuple(stride), tuple(padding), tuple(dilation), groups)
    return _weight_grad_plan((g, x, w_like), conv, dtype)(g, x, w_like)


def conv2d_output_grad(dy: torch.Tensor, y: torch.Tensor | None, activation: int, negative_slope: float,
                       bias_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, db) of dy (N, K, P, Q) and the saved output y: g = dy * act'(y) (empty
    without an activation), db (K,) in ``bias_dtype`` (the bias's; empty without)."""
    saved = dy if y is None else y
    g, db = _output_grad_plan((dy, saved), activation, plan_float(negative_slope), bias_dtype)(dy, saved)
    empty = dy.new_empty(0)
    return (g if activation else empty), (empty if bias_dtype is None else db)


def _conv_args(ctx):
    return ctx.stride, ctx.padding, ctx.dilation, ctx.groups


def _save_conv_args(ctx, stride, padding, dilation, groups):
    ctx.stride, ctx.padding, ctx.dilation, ctx.groups = stride, padding, dilation, groups


def _forward_setup(ctx, inputs, output):
    x, w, b, stride, padding, dilation, groups, activation, negative_slope, master_weight, master_bias = inputs
    # The master weight is read only by a create_graph input gradient (its cast, made again in
    # the graph): kept for it, and then version-checked, only when x takes a gradient.
    ctx.save_for_backward(x, w, output if activation else None, master_weight if ctx.needs_input_grad[0] else None)
    _save_conv_args(ctx, stride, padding, dilation, groups)
    ctx.activation, ctx.negative_slope = activation, negative_slope
    ctx.bias_dtype = None if b is None else b.dtype
    ctx.master_dtypes = None if master_weight is None and master_bias is None else \
        tuple(None if t is None else t.dtype for t in (master_weight, master_bias))


def _forward_backward(ctx, dy):
    """The gradients of x, w and b; with a master weight or bias (autocast), its
    gradient is written in the master's dtype and goes to it (the cast that made w
    or b from it is not in the graph: no gradient cast). Under create_graph the
    input gradient reads the master's cast, made again in the graph, so that
    second derivatives reach the master."""
    x, w, y, master_weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    w_to_master = b_to_master = False
    if ctx.master_dtypes is not None:
        w_to_master, b_to_master = (dtype is not None and need
                                    for dtype, need in zip(ctx.master_dtypes, ctx.needs_input_grad[9:]))
        need_w, need_b = need_w or w_to_master, need_b or b_to_master
    need_db = need_b and ctx.bias_dtype is not None
    db = None
    if ctx.activation or need_db:       # reads dy and y in one layout (the forward's output)
        db_dtype = (ctx.master_dtypes[1] if b_to_master else ctx.bias_dtype) if need_db else None
        g, db = conv_output_grad_op(dy, y, ctx.activation, ctx.negative_slope, db_dtype)
        dy = g if ctx.activation else dy
        db = db if need_db else None
    if (need_x or need_w) and not batched_by_autograd(dy) and _copied_to_channels_last(dy, _copy_operands):
        geo = geometry(x.shape, w.shape, *_conv_args(ctx))
        if {geo.paths["input_grad"], geo.paths["weight_grad"]} & {"gemm", "gemm-flat"} and not _planar(geo, x, dy):
            dy = _read_copy(dy)         # one channels_last copy (on a GPU) serves both passes
    if need_x and w_to_master and torch.is_grad_enabled():
        w = master_weight.to(w.dtype)
    dx = conv_input_grad_op(dy, w, x, *_conv_args(ctx)) if need_x else None
    dw = conv_weight_grad_op(dy, x, w, *_conv_args(ctx), ctx.master_dtypes[0] if w_to_master else None) \
        if need_w else None
    return (dx, None if w_to_master else dw, None if b_to_master else db, None, None, None, None, None, None,
            dw if w_to_master else None, db if b_to_master else None)


def _gradient_setup(ctx, inputs, output):
    """D(g, w) saves (g, w); W(g, x) saves (g, x): the first two inputs (the third
    gives only a shape and a layout)."""
    first, second, _, stride, padding, dilation, groups = inputs[:7]
    ctx.save_for_backward(first, second)
    _save_conv_args(ctx, stride, padding, dilation, groups)


def _input_grad_backward(ctx, u):
    g, w = ctx.saved_tensors
    need_g, need_w = ctx.needs_input_grad[:2]
    dg = conv2d_op(u, w, None, *_conv_args(ctx), 0, 0.0, None, None) if need_g else None
    dw = conv_weight_grad_op(g, u, w, *_conv_args(ctx), None) if need_w else None
    return dg, dw, None, None, None, None, None


def _weight_grad_backward(ctx, v):
    """v: the gradient of dw, in dw's dtype (a master weight's under autocast: cast
    to g's, as autocast's cast of the weight differentiates)."""
    g, x = ctx.saved_tensors
    need_g, need_x = ctx.needs_input_grad[:2]
    v = v.to(g.dtype)
    dg = conv2d_op(x, v, None, *_conv_args(ctx), 0, 0.0, None, None) if need_g else None
    dx = conv_input_grad_op(g, v, x, *_conv_args(ctx)) if need_x else None
    return dg, dx, None, None, None, None, None, None


def _output_grad_setup(ctx, inputs, output):
    dy, y, activation, negative_slope, bias_dtype = inputs
    ctx.save_for_backward(y)
    ctx.activation, ctx.negative_slope, ctx.bias_grad = activation, negative_slope, bias_dtype is not None
    ctx.dy_shape, ctx.dy_dtype = dy.shape, dy.dtype


def _output_grad_backward(ctx, grad_g, grad_db):
    """Linear in dy; act' is piecewise constant, so y's gradient is zeros (torch's
    threshold_backward / leaky_relu_backward give zeros: after a gradient penalty the
    parameters before y hold zero gradients, not None)."""
    (y,) = ctx.saved_tensors
    total = grad_g if ctx.activation else None
    if ctx.bias_grad and grad_db is not None:
        N, K, P, Q = ctx.dy_shape
        spread = grad_db.to(ctx.dy_dtype).view(1, K, 1, 1).expand(N, K, P, Q)
        total = spread if total is None else total + spread
    if total is not None and ctx.activation:
        total = conv_output_grad_op(total, y, ctx.activation, ctx.negative_slope, None)[0]
    return total, torch.zeros_like(y) if ctx.activation and ctx.needs_input_grad[1] else None, None, None, None


def _forward_fake(x, w, b, stride, padding, dilation, groups, activation, negative_slope, master_weight,
                  master_bias):
    geo = geometry(x.shape, w.shape, stride, padding, dilation, groups)
    return torch.empty((geo.N, geo.K, geo.P, geo.Q), dtype=x.dtype, device=x.device,
                       memory_format=_memory_format(x, w))


def _output_grad_fake(dy, y, activation, negative_slope, bias_dtype):
    empty = dy.new_empty(0)
    return (torch.empty_like(dy) if activation else empty,
            empty if bias_dtype is None else dy.new_empty(dy.shape[1], dtype=bias_dtype))


conv2d_op = Operator("conv2d", conv2d_forward, fake=_forward_fake, setup_context=_forward_setup,
                     backward=_forward_backward)
conv_input_grad_op = Operator("conv2d_input_grad", conv2d_input_grad,
                              fake=lambda g, w, x_like, *args: torch.empty_like(x_like),
                              setup_context=_gradient_setup, backward=_input_grad_backward)
conv_weight_grad_op = Operator(
    "conv2d_weight_grad", conv2d_weight_grad,
    fake=lambda g, x, w_like, stride, padding, dilation, groups, dtype: torch.empty(
        w_like.shape, dtype=dtype or w_like.dtype, device=w_like.device, memory_format=_memory_format(w_like)),
    setup_context=_gradient_setup, backward=_weight_grad_backward)
conv_output_grad_op = Operator("conv2d_output_grad", conv2d_output_grad, fake=_output_grad_fake,
                               setup_context=_output_grad_setup, backward=_output_grad_backward)


# FLOP formulas for torch.utils.flop_counter.FlopCounterMode (a TorchDispatchMode: it
# sees our operators, ``kernels._library.modes_see_operators``): torch's own convolution
# formulas on the same shapes, so a model's forward and backward count what its torch
# twin's do. Shapes in, as torch's registry passes them (``out_shape``: the output).
_NO_OUTPUT_PADDING = [0, 0]


@register_flop_formula(torch.ops.nnlib.conv2d)
def _forward_flops(x, w, b, stride, padding, dilation, groups, *args, out_shape):
    return flop_registry[torch.ops.aten.convolution](x, w, b, stride, padding, dilation, False, _NO_OUTPUT_PADDING,
                                                     groups, out_val=out_shape)


@register_flop_formula(torch.ops.nnlib.conv2d_input_grad)
def _input_grad_flops(g, w, x_like, stride, padding, dilation, groups, *, out_shape):
    return flop_registry[torch.ops.aten.convolution_backward](
        g, x_like, w, None, stride, padding, dilation, False, _NO_OUTPUT_PADDING, groups, [True, False, False],
        out_val=(out_shape, None, None))


@register_flop_formula(torch.ops.nnlib.conv2d_weight_grad)
def _weight_grad_flops(g, x, w_like, stride, padding, dilation, groups, dtype, *, out_shape):
    return flop_registry[torch.ops.aten.convolution_backward](
        g, x, w_like, None, stride, padding, dilation, False, _NO_OUTPUT_PADDING, groups, [False, True, False],
        out_val=(None, out_shape, None))


def conv2d(x, w, b, stride, padding, dilation, groups, activation=0, negative_slope=0.01, master_weight=None,
           master_bias=None):
    """Checked arguments in (see ``nnlib.functional.conv2d``): x 4-D, padding a
    4-tuple (top, left, bottom, right); returns act(conv(x, w) + b). ``master_weight``,
    ``master_bias``: the tensors autocast cast to w and b, which then take w's and b's
    gradients in their own dtypes."""
    return conv2d_op(x, w, b, stride, padding, dilation, groups, activation, negative_slope, master_weight,
                     master_bias)

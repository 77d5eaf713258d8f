"""max_pool2d: a forward kernel that writes the pooled values and, when asked,
the argmax of each window; a backward kernel that gathers, for each input
element, the gradients of the windows whose argmax it is (deterministic, no
atomics); its transpose, a kernel that reads a tensor at each window's argmax
(for double backward); and their registered operators (``kernels._library``).

Semantics are torch's: windows scan rows then columns, the first maximum wins,
a NaN is the maximum (the last NaN of a window wins), a window of -inf keeps
its first in-bounds element, indices are flat ``h * W + w`` within a plane.

Indices come in two forms. ``return_indices=True`` gets torch's int64 flat
indices. Otherwise, when autograd needs them, the forward writes a compact
window-local code ``kh * KW + kw`` (int8 for kernels up to 127 taps), and -1
where the fused activation's gradient is zero, so the backward reads 1 byte per
output instead of 8 and never needs the input.

Layouts: both kernels read and write through strides (n, c, h, w), so
contiguous, channels_last and strided views run without a copy. Outputs take the
input's suggested memory format, as torch (channels_last in, channels_last out).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import triton
import triton.language as tl

from ._library import Operator
from ._runtime import (CompileCase, bind, cdiv, interpreting, kernel_parameters, memory_format_of, next_power_of_2,
                       offsets_need_int64, plan_cache, suggest_memory_format)
from .activation import activation_grad, activation_grad_op, apply_activation

__all__ = ["INDEX_NONE", "INDEX_LOCAL", "INDEX_FLAT", "output_shape", "max_pool2d_op", "max_pool2d_backward_op",
           "max_pool2d_gather_op", "COMPILE_CASES"]

INDEX_NONE, INDEX_LOCAL, INDEX_FLAT = 0, 1, 2


@triton.jit
def _plane_tile(positions, N, C, INDEX_64: tl.constexpr, MERGE_N: tl.constexpr, BLOCK_P: tl.constexpr,
                BLOCK_C: tl.constexpr):
    """The tile of program_id(0): (n, offs_p, offs_c, mask_p, mask_c), int64 when
    INDEX_64 (every offset derives from these). The grid covers N x channel blocks
    x position blocks of one plane (``positions`` = its height * width), n a
    scalar; with MERGE_N (small planes) it covers blocks of the N * C planes and
    n is a [BLOCK_C] vector like offs_c, so one program spans several samples."""
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
        positions = tl.cast(positions, tl.int64)        # (a plane of one position: an int)
    p_blocks = tl.cdiv(positions, BLOCK_P)
    offs_p = (pid % p_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    if MERGE_N:
        planes = (pid // p_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
        n = planes // C
        offs_c = planes % C
        mask_c = planes < N * C
    else:
        c_blocks = tl.cdiv(C, BLOCK_C)
        offs_c = ((pid // p_blocks) % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
        n = pid // (p_blocks * c_blocks)
        mask_c = offs_c < C
    return n, offs_p, offs_c, offs_p < positions, mask_c


@triton.jit
def _max_pool2d_fwd_kernel(x_ptr, y_ptr, idx_ptr, N, C, H, W, OH, OW,
                           stride_xn, stride_xc, stride_xh, stride_xw,
                           stride_yn, stride_yc, stride_yh, stride_yw,
                           pad_h, pad_w,
                           KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                           DH: tl.constexpr, DW: tl.constexpr, INDEX_MODE: tl.constexpr,
                           ACTIVATION: tl.constexpr, INDEX_64: tl.constexpr, MERGE_N: tl.constexpr,
                           BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """x: (N, C, H, W) through strides; y, idx: (N, C, OH, OW), both with the y
    strides. A program (``_plane_tile``) pools BLOCK_P output positions of
    OH*OW for BLOCK_C channels (planes with MERGE_N). idx gets nothing (INDEX_MODE 0), the local code
    kh*KW + kw or -1 where the activation's gradient is zero (1), or torch's
    flat h*W + w (2)."""
    n, offs_p, offs_c, mask_p, mask_c = _plane_tile(OH * OW, N, C, INDEX_64, MERGE_N, BLOCK_P, BLOCK_C)
    oh = offs_p // OW
    ow = offs_p % OW
    ih0 = oh * SH - pad_h
    iw0 = ow * SW - pad_w
    x_base = x_ptr + n * stride_xn + offs_c[None, :] * stride_xc

    best = tl.full((BLOCK_P, BLOCK_C), float("-inf"), tl.float32)
    # Until a value beats -inf, the index is the window's first in-bounds tap.
    kh_first = (tl.maximum(-ih0, 0) + DH - 1) // DH
    kw_first = (tl.maximum(-iw0, 0) + DW - 1) // DW
    if INDEX_MODE == 2:
        flat_first = (ih0 + kh_first * DH) * W + iw0 + kw_first * DW
        best_idx = tl.zeros((BLOCK_P, BLOCK_C), tl.int64) + flat_first[:, None]
    else:
        best_idx = tl.zeros((BLOCK_P, BLOCK_C), tl.int32) + (kh_first * KW + kw_first)[:, None]
    for kh in range(KH):
        ih = ih0 + kh * DH
        row_ok = mask_p & (ih >= 0) & (ih < H)
        for kw in range(KW):
            iw = iw0 + kw * DW
            ok = row_ok & (iw >= 0) & (iw < W)
            v = tl.load(x_base + (ih * stride_xh + iw * stride_xw)[:, None],
                        mask=ok[:, None] & mask_c[None, :], other=float("-inf")).to(tl.float32)
            take = (v > best) | (v != v)       # masked taps load -inf and never win
            best = tl.where(take, v, best)
            if INDEX_MODE == 2:
                best_idx = tl.where(take, (ih * W + iw).to(tl.int64)[:, None], best_idx)
            elif INDEX_MODE == 1:
                best_idx = tl.where(take, kh * KW + kw, best_idx)

    y = apply_activation(best, ACTIVATION, 0.0)
    mask = mask_p[:, None] & mask_c[None, :]
    y_offs = n * stride_yn + offs_c[None, :] * stride_yc + (oh * stride_yh + ow * stride_yw)[:, None]
    tl.store(y_ptr + y_offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    if INDEX_MODE == 1:
        # Windows whose gradient the activation zeroes get no argmax at all.
        dead = activation_grad(tl.full((BLOCK_P, BLOCK_C), 1.0, tl.float32), best, ACTIVATION, 0.0) == 0
        best_idx = tl.where(dead, -1, best_idx)
    if INDEX_MODE != 0:
        tl.store(idx_ptr + y_offs, best_idx.to(idx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _max_pool2d_bwd_kernel(grad_ptr, idx_ptr, grad_x_ptr, N, C, H, W, OH, OW,
                           stride_gn, stride_gc, stride_gh, stride_gw,
                           stride_in, stride_ic, stride_ih, stride_iw,
                           stride_dxn, stride_dxc, stride_dxh, stride_dxw,
                           pad_h, pad_w,
                           KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                           DH: tl.constexpr, DW: tl.constexpr, FLAT_INDEX: tl.constexpr,
                           INDEX_64: tl.constexpr, MERGE_N: tl.constexpr, BLOCK_P: tl.constexpr,
                           BLOCK_C: tl.constexpr):
    """grad, idx: (N, C, OH, OW) through strides; grad_x: (N, C, H, W) through
    strides. A program (``_plane_tile``) owns BLOCK_P input positions of H*W
    for BLOCK_C channels (planes with MERGE_N) and sums, in a fixed (kh, kw) order, the gradients of
    the windows that cover each element and name it as their argmax (idx the
    flat h*W + w if FLAT_INDEX, else the local code kh*KW + kw).

    Window row oh covers h through tap kh when oh*SH - pad_h + kh*DH == h: the
    candidates are oh = (h + pad_h) // SH - j for j < ((KH - 1) * DH) // SH + 1
    (j ascending: kh ascending), 2 rows of a 3x3 stride-2 window where its taps
    are 3, 1 of a 2x2 stride-2 one where they are 2; columns alike."""
    n, offs_p, offs_c, mask_p, mask_c = _plane_tile(H * W, N, C, INDEX_64, MERGE_N, BLOCK_P, BLOCK_C)
    h = offs_p // W
    w = offs_p % W
    grad_base = grad_ptr + n * stride_gn + offs_c[None, :] * stride_gc
    idx_base = idx_ptr + n * stride_in + offs_c[None, :] * stride_ic
    last_oh = (h + pad_h) // SH
    last_ow = (w + pad_w) // SW

    acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for j in range((KH - 1) * DH // SH + 1):
        oh = last_oh - j
        th = h + pad_h - oh * SH            # kh * DH where oh covers h
        row_ok = mask_p & (oh >= 0) & (oh < OH) & (th % DH == 0) & (th < KH * DH)
        for i in range((KW - 1) * DW // SW + 1):
            ow = last_ow - i
            tw = w + pad_w - ow * SW        # kw * DW
            ok = row_ok & (ow >= 0) & (ow < OW) & (tw % DW == 0) & (tw < KW * DW)
            m = ok[:, None] & mask_c[None, :]
            idx = tl.load(idx_base + (oh * stride_ih + ow * stride_iw)[:, None], mask=m, other=-1)
            if FLAT_INDEX:
                hit = m & (idx == (h * W + w)[:, None])
            else:
                hit = m & (idx == ((th // DH) * KW + tw // DW)[:, None])
            acc += tl.load(grad_base + (oh * stride_gh + ow * stride_gw)[:, None],
                           mask=hit, other=0.0).to(tl.float32)

    dx_offs = n * stride_dxn + offs_c[None, :] * stride_dxc + (h * stride_dxh + w * stride_dxw)[:, None]
    tl.store(grad_x_ptr + dx_offs, acc.to(grad_x_ptr.dtype.element_ty),
             mask=mask_p[:, None] & mask_c[None, :])


@triton.jit
def _max_pool2d_gather_kernel(src_ptr, idx_ptr, out_ptr, N, C, H, W, OH, OW,
                              stride_sn, stride_sc, stride_sh, stride_sw,
                              stride_in, stride_ic, stride_ih, stride_iw,
                              stride_on, stride_oc, stride_oh, stride_ow,
                              pad_h, pad_w,
                              KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                              DH: tl.constexpr, DW: tl.constexpr, FLAT_INDEX: tl.constexpr,
                              INDEX_64: tl.constexpr, MERGE_N: tl.constexpr, BLOCK_P: tl.constexpr,
                              BLOCK_C: tl.constexpr):
    """src: (N, C, H, W); idx, out: (N, C, OH, OW); all through strides.
    out = src at each window's argmax (idx flat h*W + w if FLAT_INDEX, else the
    local code kh*KW + kw), 0 where the backward above sends the window's
    gradient nowhere (idx -1, or an argmax that is not an in-bounds tap of the
    window: windows that lie wholly in the padding): its exact transpose, which
    double backward needs."""
    n, offs_p, offs_c, mask_p, mask_c = _plane_tile(OH * OW, N, C, INDEX_64, MERGE_N, BLOCK_P, BLOCK_C)
    oh = offs_p // OW
    ow = offs_p % OW
    mask = mask_p[:, None] & mask_c[None, :]
    idx = tl.load(idx_ptr + n * stride_in + offs_c[None, :] * stride_ic + (oh * stride_ih + ow * stride_iw)[:, None],
                  mask=mask, other=-1).to(tl.int64 if INDEX_64 or FLAT_INDEX else tl.int32)
    ih0 = (oh * SH - pad_h)[:, None]
    iw0 = (ow * SW - pad_w)[:, None]
    if FLAT_INDEX:
        h = idx // W
        w = idx % W
        th = h - ih0
        tw = w - iw0
        is_tap = (th >= 0) & (th % DH == 0) & (th < KH * DH) & (tw >= 0) & (tw % DW == 0) & (tw < KW * DW)
    else:
        h = ih0 + (idx // KW) * DH
        w = iw0 + (idx % KW) * DW
        is_tap = idx >= 0
    live = mask & is_tap & (h >= 0) & (h < H) & (w >= 0) & (w < W)
    v = tl.load(src_ptr + n * stride_sn + offs_c[None, :] * stride_sc + h * stride_sh + w * stride_sw,
                mask=live, other=0.0)
    tl.store(out_ptr + n * stride_on + offs_c[None, :] * stride_oc + (oh * stride_oh + ow * stride_ow)[:, None],
             v, mask=mask)


# ---------------------------------------------------------------------------
# Host launchers (each one a registered operator below). ``kernel``, ``stride``,
# ``padding``, ``dilation``: checked (h, w) pairs.

_TILE = 512                  # elements per program on a GPU
_NUM_WARPS = 8               # 2 elements per thread: no spills on sm_80 or sm_90
_CL_NUM_WARPS = 4            # channels_last forward tiles: 4 channels per thread (8-byte vectors in 2-byte types)
_INTERPRETER_TILE = 1 << 14  # the interpreter pays per program: one large tile


class _Tiling(NamedTuple):
    block_p: int
    block_c: int
    merge_n: bool
    programs: int
    num_warps: int


def _tiles(positions: int, batch: int, channels: int, channels_last: bool, vectors: bool = False) -> _Tiling:
    """The tiling of a grid over samples x channels x positions. channels_last tiles
    run along C first (contiguous); NCHW tiles along positions, adding channels
    when a plane is small. When one sample's planes fill less than a tile, a tile
    spans samples too (MERGE_N: blocks of the N * C planes). ``vectors`` (the
    forward): channels_last tiles on a GPU take 4 channels per thread, so that
    each tap loads one vector (8 bytes in 2-byte types, 16 in fp32; 8 channels
    spilled on sm_80; the backward's gathers would not vectorize)."""
    tile = _INTERPRETER_TILE if interpreting() else _TILE
    num_warps = _NUM_WARPS
    if channels_last and not interpreting():
        block_c = min(next_power_of_2(channels), 64)
        block_p = tile // block_c
        if vectors:
            num_warps = _CL_NUM_WARPS
    else:
        block_p = min(next_power_of_2(positions), tile)
        block_c = min(next_power_of_2(channels), tile // block_p)
    p_blocks = cdiv(positions, block_p)
    if batch > 1 and p_blocks == 1 and block_p * next_power_of_2(channels) < tile:
        block_c = min(tile // block_p, next_power_of_2(batch * channels))
        return _Tiling(block_p, block_c, True, cdiv(batch * channels, block_c), num_warps)
    return _Tiling(block_p, block_c, False, batch * cdiv(channels, block_c) * p_blocks, num_warps)


def _local_index_dtype(kernel) -> torch.dtype:
    taps = kernel[0] * kernel[1]
    return torch.int8 if taps <= 127 else torch.int16 if taps <= 32767 else torch.int32


def output_shape(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """torch's pooling output size: floor (or ceil) of the window count, where in
    ceil mode the last window must start inside the input or the left padding."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


class _Outputs(NamedTuple):
    """The forward's outputs: y's shape and memory format (x's), idx's dtype
    (None for ``INDEX_NONE``)."""
    y_shape: tuple
    memory_format: torch.memory_format
    idx_dtype: torch.dtype | None


def _outputs(shape, strides, kernel, stride, padding, dilation, ceil_mode: bool, index_mode: int) -> _Outputs:
    size = [output_shape(n, k, s, p, d, ceil_mode) for n, k, s, p, d in zip(shape[-2:], kernel, stride,
                                                                           padding, dilation)]
    idx_dtype = (None if index_mode == INDEX_NONE else torch.int64 if index_mode == INDEX_FLAT
                 else _local_index_dtype(kernel))
    return _Outputs((*shape[:-2], *size), memory_format_of(shape, strides), idx_dtype)


class _ForwardPlan(NamedTuple):
    """A forward launch, computed from the call's geometry once (cached)."""
    outputs: _Outputs
    launch: Callable         # launch(x, y, idx): the kernel, every other argument bound


_FWD_POINTERS = ("x_ptr", "y_ptr", "idx_ptr")
_BWD_POINTERS = ("grad_ptr", "idx_ptr", "grad_x_ptr")


def _named(kernel, sizes: tuple) -> dict:
    """The sizes, strides and padding a pool kernel takes after its three
    pointers, by parameter name."""
    return dict(zip(list(kernel_parameters(kernel))[3:], sizes))


@plan_cache
def _forward_plan(shape: tuple, strides: tuple, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple,
                  ceil_mode: bool, index_mode: int, activation: int) -> _ForwardPlan:
    outputs = _outputs(shape, strides, kernel, stride, padding, dilation, ceil_mode, index_mode)
    x4_shape, x4_strides = ((1, *shape), (0, *strides)) if len(shape) == 3 else (shape, strides)
    N, C, H, W = x4_shape
    OH, OW = outputs.y_shape[-2:]
    y4_strides = torch.empty((N, C, OH, OW), device="meta", memory_format=outputs.memory_format).stride()
    tiling = _tiles(OH * OW, N, C, outputs.memory_format == torch.channels_last, vectors=True)
    index_64 = offsets_need_int64(x4_shape, x4_strides) or offsets_need_int64((N, C, OH, OW), y4_strides)
    sizes = (N, C, H, W, OH, OW, *x4_strides, *y4_strides, *padding)
    run = bind(_max_pool2d_fwd_kernel, (tiling.programs,), _FWD_POINTERS, tiling.num_warps,
               **_named(_max_pool2d_fwd_kernel, sizes), KH=kernel[0], KW=kernel[1], SH=stride[0], SW=stride[1],
               DH=dilation[0], DW=dilation[1], INDEX_MODE=index_mode, ACTIVATION=activation, INDEX_64=index_64,
               MERGE_N=tiling.merge_n, BLOCK_P=tiling.block_p, BLOCK_C=tiling.block_c)
    return _ForwardPlan(outputs, run)


def _forward_buffers(x: torch.Tensor, outputs: _Outputs):
    """(y, idx) of the forward, allocated: y (N, C, OH, OW) (or unbatched) in x's
    memory format; idx of y's shape and strides (int64 flat indices, compact
    local codes) or empty (``INDEX_NONE``)."""
    y = torch.empty(outputs.y_shape, dtype=x.dtype, device=x.device, memory_format=outputs.memory_format)
    if outputs.idx_dtype is None:
        return y, torch.empty(0, dtype=torch.int64, device=x.device)
    return y, torch.empty_strided(y.shape, y.stride(), dtype=outputs.idx_dtype, device=x.device)


def max_pool2d_forward(x: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int],
                       dilation: list[int], ceil_mode: bool, index_mode: int,
                       activation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (N, C, H, W) or (C, H, W), any strides. Returns (y, idx) as
    ``_forward_buffers`` allocates them."""
    plan = _forward_plan(x.shape, x.stride(), tuple(kernel), tuple(stride), tuple(padding), tuple(dilation),
                         ceil_mode, index_mode, activation)
    y, idx = _forward_buffers(x, plan.outputs)
    if y.numel():
        plan.launch(x, y, y if plan.outputs.idx_dtype is None else idx)
    return y, idx


def _grad_buffer(grad: torch.Tensor, input_size: list[int], channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if len(input_size) == 3:
        return torch.empty(input_size, dtype=grad.dtype, device=grad.device)
    return torch.empty(input_size, dtype=grad.dtype, device=grad.device, memory_format=fmt)


def max_pool2d_backward(grad: torch.Tensor, idx: torch.Tensor, input_size: list[int], kernel: list[int],
                        stride: list[int], padding: list[int], dilation: list[int],
                        channels_last: bool) -> torch.Tensor:
    """grad, idx: (N, C, OH, OW) or (C, OH, OW), any strides; idx flat int64 or
    local codes. Returns the input gradient of ``input_size``, channels_last when
    asked."""
    grad_x = _grad_buffer(grad, input_size, channels_last)
    if grad_x.numel():
        if grad_x.dim() == 3:
            grad, idx, grad_x4 = grad.unsqueeze(0), idx.unsqueeze(0), grad_x.unsqueeze(0)
        else:
            grad_x4 = grad_x
        _backward_launch(idx.shape, grad.stride(), idx.stride(), idx.dtype == torch.int64, grad_x4.shape,
                         grad_x4.stride(), channels_last, tuple(kernel), tuple(stride), tuple(padding),
                         tuple(dilation))(grad, idx, grad_x4)
    return grad_x


@plan_cache
def _backward_launch(shape: tuple, grad_strides: tuple, idx_strides: tuple, flat_index: bool, x_shape: tuple,
                     x_strides: tuple, channels_last: bool, kernel: tuple, stride: tuple, padding: tuple,
                     dilation: tuple):
    """``launch(grad, idx, grad_x)`` of the backward kernel for these layouts (4-D:
    idx's shape, which grad has too, and grad_x's), every other argument bound."""
    N, C, OH, OW = shape
    H, W = x_shape[-2:]
    tiling = _tiles(H * W, N, C, channels_last)
    index_64 = (offsets_need_int64(shape, grad_strides) or offsets_need_int64(shape, idx_strides)
                or offsets_need_int64(x_shape, x_strides))
    sizes = (N, C, H, W, OH, OW, *grad_strides, *idx_strides, *x_strides, *padding)
    return bind(_max_pool2d_bwd_kernel, (tiling.programs,), _BWD_POINTERS, tiling.num_warps,
                **_named(_max_pool2d_bwd_kernel, sizes), KH=kernel[0], KW=kernel[1], SH=stride[0], SW=stride[1],
                DH=dilation[0], DW=dilation[1], FLAT_INDEX=flat_index, INDEX_64=index_64, MERGE_N=tiling.merge_n,
                BLOCK_P=tiling.block_p, BLOCK_C=tiling.block_c)


def max_pool2d_gather(src: torch.Tensor, idx: torch.Tensor, kernel: list[int], stride: list[int],
                      padding: list[int], dilation: list[int]) -> torch.Tensor:
    """src: (N, C, H, W) or (C, H, W); idx: (N, C, OH, OW) (or unbatched), flat
    int64 or local codes. Returns src at each window's argmax (0 where idx is
    -1), with idx's shape and strides."""
    out = torch.empty_strided(idx.shape, idx.stride(), dtype=src.dtype, device=src.device)
    if out.numel():
        src4, idx4, out4 = (t.unsqueeze(0) for t in (src, idx, out)) if src.dim() == 3 else (src, idx, out)
        _gather_launch(src4.shape, src4.stride(), idx4.shape, idx4.stride(), idx.dtype == torch.int64,
                       tuple(kernel), tuple(stride), tuple(padding), tuple(dilation))(src4, idx4, out4)
    return out


@plan_cache
def _gather_launch(shape: tuple, strides: tuple, idx_shape: tuple, idx_strides: tuple, flat_index: bool,
                   kernel: tuple, stride: tuple, padding: tuple, dilation: tuple):
    """``launch(src, idx, out)`` of the gather kernel for these 4-D layouts (src's;
    idx's, which out has too), every other argument bound."""
    N, C, H, W = shape
    OH, OW = idx_shape[-2:]
    tiling = _tiles(OH * OW, N, C, memory_format_of(idx_shape, idx_strides) == torch.channels_last)
    index_64 = offsets_need_int64(shape, strides) or offsets_need_int64(idx_shape, idx_strides)
    sizes = (N, C, H, W, OH, OW, *strides, *idx_strides, *idx_strides, *padding)
    return bind(_max_pool2d_gather_kernel, (tiling.programs,), ("src_ptr", "idx_ptr", "out_ptr"), tiling.num_warps,
                **_named(_max_pool2d_gather_kernel, sizes), KH=kernel[0], KW=kernel[1], SH=stride[0], SW=stride[1],
                DH=dilation[0], DW=dilation[1], FLAT_INDEX=flat_index, INDEX_64=index_64, MERGE_N=tiling.merge_n,
                BLOCK_P=tiling.block_p, BLOCK_C=tiling.block_c)


# ---------------------------------------------------------------------------
# Operators (kernels/_library.py). The backward (a gather by argmax) and
# max_pool2d_gather are each other's transpose, so their formulas call each
# other and double backward runs the same kernels.

def _forward_setup(ctx, inputs, output):
    x, kernel, stride, padding, dilation, ceil_mode, index_mode, activation = inputs
    y, idx = output
    ctx.mark_non_differentiable(idx)
    ctx.window = (kernel, stride, padding, dilation)
    ctx.activation, ctx.has_indices = activation, index_mode != INDEX_NONE
    ctx.input_size, ctx.channels_last = list(x.shape), suggest_memory_format(x) == torch.channels_last
    # Flat indices carry no activation mask: keep y to mask the gradient.
    ctx.save_for_backward(idx, y if index_mode == INDEX_FLAT and activation else None)


def _forward_backward(ctx, grad, _grad_idx):
    if not ctx.has_indices:
        raise RuntimeError("nnlib::max_pool2d ran without indices (index_mode 0): it has no gradient; "
                           "call it with INDEX_LOCAL or INDEX_FLAT when the input requires grad")
    idx, y = ctx.saved_tensors
    if y is not None:
        grad = activation_grad_op(grad, y, ctx.activation, 0.0)
    grad_x = max_pool2d_backward_op(grad, idx, ctx.input_size, *ctx.window, ctx.channels_last)
    return grad_x, None, None, None, None, None, None, None


def _backward_setup(ctx, inputs, output):
    _, idx, _, *window, _ = inputs
    ctx.window = window
    ctx.save_for_backward(idx)


def _backward_backward(ctx, grad_grad_x):
    (idx,) = ctx.saved_tensors
    return max_pool2d_gather_op(grad_grad_x, idx, *ctx.window), None, None, None, None, None, None, None


def _gather_setup(ctx, inputs, output):
    src, idx, *window = inputs
    ctx.window = window
    ctx.input_size, ctx.channels_last = list(src.shape), suggest_memory_format(src) == torch.channels_last
    ctx.save_for_backward(idx)


def _gather_backward(ctx, grad):
    (idx,) = ctx.saved_tensors
    grad_src = max_pool2d_backward_op(grad, idx, ctx.input_size, *ctx.window, ctx.channels_last)
    return grad_src, None, None, None, None, None


max_pool2d_op = Operator("max_pool2d", max_pool2d_forward,
                         fake=lambda x, *args: _forward_buffers(x, _outputs(x.shape, x.stride(), *args[:-1])),
                         setup_context=_forward_setup, backward=_forward_backward)
max_pool2d_backward_op = Operator(
    "max_pool2d_backward", max_pool2d_backward,
    fake=lambda grad, idx, input_size, k, s, p, d, channels_last: _grad_buffer(grad, input_size, channels_last),
    setup_context=_backward_setup, backward=_backward_backward)
max_pool2d_gather_op = Operator(
    "max_pool2d_gather", max_pool2d_gather,
    fake=lambda src, idx, k, s, p, d: torch.empty_strided(idx.shape, idx.stride(), dtype=src.dtype,
                                                          device=src.device),
    setup_context=_gather_setup, backward=_gather_backward)


# ---------------------------------------------------------------------------
# Compile cases

_STEM = ((3, 3), (2, 2), (1, 1))  # (kernel, stride, dilation) of ResNet-50's stem pool
_OTHER_POOLS = [((2, 2), (2, 2), (1, 1)), ((3, 3), (1, 1), (1, 1)), ((3, 3), (2, 2), (2, 2)),
                ((7, 5), (3, 2), (1, 3))]  # VGG, overlapping, dilated, wide and uneven


def _compile_cases():
    """Launch-like specialisations (unit strides as the constexpr 1 Triton makes
    of them, other strides and C multiples of 16; the channels_last forward over
    its 4 warps, with a vector per tap expected): every index mode and layout at the
    stem geometry in fp32 and bf16, fp16 at the other geometries, planes merged
    across samples (MERGE_N), int64 offsets once per kernel, the double
    backward's gather in each index form."""
    sizes = {"N": "i32", "C": "i32", "H": "i32", "W": "i32", "OH": "i32", "OW": "i32", "pad_h": "i32",
             "pad_w": "i32"}

    def case(kernel, dt, pool, channels_last, pointers, tensors, constexprs, label, int64=False, merge=False):
        block_p, block_c = (_TILE, 1) if not channels_last else (_TILE // 64, 64)
        if merge:
            block_p, block_c = 16, _TILE // 16
        num_warps, expect = _NUM_WARPS, {}
        if kernel is _max_pool2d_fwd_kernel and channels_last and not merge:
            num_warps = _CL_NUM_WARPS           # 4 channels per thread: one vector per tap (at least a row's)
            width = 128 if dt == "fp32" else 64
            expect = {f"ldg{width}_at_least": pool[0][1], f"stg{width}_at_least": 1}
        unit = "c" if channels_last else "w"
        signature = {**pointers, **sizes}
        fixed = {}
        for t in tensors:
            for axis in "nchw":
                if axis == unit:
                    fixed[f"stride_{t}{axis}"] = 1
                else:
                    signature[f"stride_{t}{axis}"] = "i64" if int64 else "i32"
        (kh, kw), (sh, sw), (dh, dw) = pool
        return CompileCase(kernel, signature,
                           {"KH": kh, "KW": kw, "SH": sh, "SW": sw, "DH": dh, "DW": dw, "INDEX_64": int64,
                            "MERGE_N": merge, "BLOCK_P": block_p, "BLOCK_C": block_c, **fixed, **constexprs},
                           num_warps=num_warps, expect=expect,
                           divisible=("C",) + tuple(k for k in signature if k.startswith("stride_")),
                           label=f"{label},{dt},{pool},{'cl' if channels_last else 'nchw'}"
                                 + (",int64" if int64 else "") + (",merged" if merge else ""))

    def forward(dt, pool, cl, index_mode, idx_t, act, **kw):
        return case(_max_pool2d_fwd_kernel, dt, pool, cl,
                    {"x_ptr": f"*{dt}", "y_ptr": f"*{dt}", "idx_ptr": f"*{idx_t}"}, "xy",
                    {"INDEX_MODE": index_mode, "ACTIVATION": act}, f"index={index_mode},act={act}", **kw)

    def backward(dt, pool, cl, idx_t, **kw):
        return case(_max_pool2d_bwd_kernel, dt, pool, cl,
                    {"grad_ptr": f"*{dt}", "idx_ptr": f"*{idx_t}", "grad_x_ptr": f"*{dt}"}, ("g", "i", "dx"),
                    {"FLAT_INDEX": idx_t == "i64"}, idx_t, **kw)

    def gather(dt, pool, cl, idx_t, **kw):
        return case(_max_pool2d_gather_kernel, dt, pool, cl,
                    {"src_ptr": f"*{dt}", "idx_ptr": f"*{idx_t}", "out_ptr": f"*{dt}"}, "sio",
                    {"FLAT_INDEX": idx_t == "i64"}, f"gather,{idx_t}", **kw)

    cases = []
    for dt in ("fp32", "bf16"):
        for cl in (False, True):
            cases += [forward(dt, _STEM, cl, INDEX_NONE, dt, 0), forward(dt, _STEM, cl, INDEX_LOCAL, "i8", 1),
                      forward(dt, _STEM, cl, INDEX_FLAT, "i64", 0),
                      backward(dt, _STEM, cl, "i8"), backward(dt, _STEM, cl, "i64")]
        cases += [gather(dt, _STEM, False, "i8"), gather(dt, _STEM, True, "i64")]
    cases += [forward("fp16", _STEM, False, INDEX_FLAT, "i64", 1, int64=True),
              backward("fp16", _STEM, False, "i8", int64=True), gather("fp16", _STEM, False, "i64", int64=True),
              forward("fp16", _STEM, False, INDEX_LOCAL, "i8", 1, merge=True),
              backward("fp16", _STEM, False, "i8", merge=True), gather("fp16", _STEM, False, "i8", merge=True)]
    for pool in _OTHER_POOLS:
        for cl in (False, True):
            cases += [forward("fp16", pool, cl, INDEX_LOCAL, "i8", 0), backward("fp16", pool, cl, "i8")]
    return cases


COMPILE_CASES = _compile_cases()

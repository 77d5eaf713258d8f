"""Implicit-GEMM convolution kernels: forward, input gradient (dgrad) and weight
gradient (wgrad), all on ``tl.dot`` with an fp32 accumulator.

Every tensor is read and written through its four strides, so NCHW,
channels_last and strided views need no copy here (the host side may still
make one channels_last copy on a GPU for coalesced loads; see ``ops.py``).
Shapes use one letter per axis: input x (N, C, H, W), weight w (K, C/G, R, S),
output y (N, K, P, Q); G groups, Cg = C/G and Kg = K/G channels per group.

* forward: M = N*P*Q output pixels, N = Kg output channels, reduction over
  (r, s, c). Blocked mode walks taps (r, s) and, inside each, blocks of
  BLOCK_K channels (Cg >= 16). ``FLAT`` mode (a handful of input channels: the
  RGB stem) walks blocks of the S*Cg (s, c) columns of a kernel row and,
  inside each, the kernel rows r, so few channels still fill the tiles and
  the column decode happens once per block. Given x and w channels_last with
  ``PAD_C`` channels, the real ones zero-padded (``_pad_channels_kernel``'s
  copies, or a caller's 4-channel tensors), a pixel's kernel row is one aligned
  run, loaded in vectors through cp.async (the weight gradient reads x so too).
* dgrad: dx(h, w) gathers dy(p, q) with p = (h + pad - r*dil) / stride. The
  pixels of one stride phase (h = a mod stride, a < min(stride, H): no phase
  without pixels, so a stride past the image costs no programs) see the same taps r,
  every ``step = stride / gcd(stride, dil)``-th starting at r0, so a program
  walks only the taps that reach its phase: no zero-inserted gradient, no
  wasted multiply-adds.
* wgrad: M = Kg, N = Cg per tap (or Cg*R*S in ``FLAT`` mode), reduction over
  the N*P*Q pixels.
* planar (1x1, stride 1, no padding, pixels at stride 1: NCHW): per image and
  group a plain GEMM, channels by pixels, for the forward and (w transposed) the
  input gradient; the weight gradient reduces over images and pixel blocks.
* pointwise (1x1, stride 1, no padding, channel-contiguous: channels_last): the
  three passes as plain GEMMs over the (pixels, channels) matrices, their
  operand tiles loaded through tensor descriptors (TMA on Hopper).

Main loops advance their position (tap, channel block, pixel) by additions
and selects, never by division, and add it to pointer tiles built before the
loop (the forward: multiples of a tap-row, a tap-column and a channel-block
step, each computed once before it, where it shows the compiler its 16-byte
alignment): the address arithmetic per k-step stays small next to the
tensor-core work. Offsets are int64 where they cross images (a batch may pass 2**31
elements) and int32 inside one image. Rows past the end of the tile get a position
far outside the image, so one bounds check per tap covers them.

Split reduction (grid axis 2): on a grid too small for the GPU the host
splits the reduction into ``tl.num_programs(2)`` ranges; each program writes
its fp32 tile to a workspace, and the program that takes the tile's last
ticket (an integer atomic) sums the splits in split order and runs the
epilogue (``kernels._reduce.sum_splits``): deterministic, no float atomics, one launch.

Each kernel is autotuned over config lists (``_tuned``): fp16 / bf16 tiles up to
128x256x64, fp32 tiles (twice the bytes, exact-fp32 FMA dots when tf32 is off)
and FLAT tiles (element-wise gathers), each with smaller tiles for ``VEC`` = 1:
every config compiles for sm_90 and sm_80 without register spills. ``VEC`` > 1
is the host's promise of 16-byte aligned channel rows, the hints that turn the
gathers into cp.async vectors; without it every gather is scalar and the
large tiles would spill.
"""
from __future__ import annotations

from typing import NamedTuple

import triton
import triton.language as tl

from .._reduce import sum_splits
from .._runtime import autotune, for_gpus
from ..activation import apply_activation


@triton.jit
def _tile_ids(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """Grouped ordering: GROUP_M row tiles share their column tiles in L2."""
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    return pid_m, pid_n


@triton.jit
def _next_step(block, col, row, blocks, cols):
    """The reduction walk's next step, without division: the channel block fastest
    (``blocks`` per tap), then the tap column, then the tap row."""
    block += 1
    next_tap = block == blocks
    block = tl.where(next_tap, 0, block)
    col = tl.where(next_tap, col + 1, col)
    next_row = col == cols
    col = tl.where(next_row, 0, col)
    row = tl.where(next_row, row + 1, row)
    return block, col, row


@triton.jit
def _mma(a, b, acc, ALLOW_TF32: tl.constexpr, DOT_UPCAST: tl.constexpr):
    """acc + a @ b on tensor cores (tf32 for fp32 operands when ALLOW_TF32, exact
    fp32 otherwise). DOT_UPCAST: fp32 operands for the interpreter's bf16 dot."""
    if DOT_UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if ALLOW_TF32:
        acc = tl.dot(a, b, acc, input_precision="tf32")
    else:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    return acc


@triton.jit
def _stride_phase(residue, size, pad, stride, dil, taps, step):
    """The input pixels h with (h + pad) % stride == residue and the taps that reach
    them. Returns (first pixel, count, first tap r0, number of taps, d0, dstep):
    pixel first + i*stride, tap r0 + t*step, meets output row i + d0 - t*dstep.
    A program of phase index a < min(stride, size) (a phase that holds pixels: the
    first is a) passes residue (a + pad) % stride. No tap reaches the phase:
    r0 = taps, no taps."""
    first = ((residue - pad) % stride + stride) % stride
    count = tl.cdiv(size - first, stride)
    r0 = taps
    # At most one t in [0, step) solves t*dil = residue (mod stride), and only t < taps is a tap: the loop
    # stops at taps (step reaches 2**29 with such a stride; t*dil stays below 2**30).
    for t in range(0, tl.minimum(step, taps)):
        r0 = tl.where((residue - t * dil) % stride == 0, t, r0)
    n_taps = tl.maximum(tl.cdiv(taps - r0, step), 0)
    d0 = (first + pad - r0 * dil) // stride      # exact whenever n_taps > 0
    dstep = step * dil // stride
    return first, count, r0, n_taps, d0, dstep


@triton.jit
def _in_range(i, n):
    """0 <= i < n, for int32 ``i`` and ``n >= 0``, in one unsigned compare (a negative
    i wraps above n): the tap masks of the main loops, one instruction per row each."""
    return i.to(tl.uint32, bitcast=True) < n


@triton.jit
def _offsets(index, stride, INDEX_64: tl.constexpr):
    """index * stride within one image: int32, or int64 with INDEX_64 (``index``
    may be an int: an argument a launch passed as 1)."""
    if INDEX_64:
        index = tl.cast(index, tl.int64)
    return index * stride


@triton.jit
def _aligned(base, offsets, VEC: tl.constexpr):
    """``base + offsets``: 1-D row or column starts of a channel-contiguous operand,
    promised 16-byte aligned when the host proved it (VEC > 1) so that loads and
    stores vectorize (a scalar layout would give each thread dozens of rows). The
    add happens here: the hint must sit on an op, not on a function argument, and
    on a 1-D tensor (triton 3.6 drops a 2-D hint)."""
    ptrs = base + offsets
    if VEC > 1:
        ptrs = tl.multiple_of(ptrs, 16)
    return ptrs


@triton.jit
def _split_steps(steps):
    """(first, end) k-steps of this program's split (grid axis 2) of ``steps``."""
    per_split = tl.cdiv(steps, tl.num_programs(2))
    first = tl.program_id(2) * per_split
    return first, tl.minimum(first + per_split, steps)


@triton.jit
def _planar_rows(base, offs_m, pixels, stride_n, PIXEL_VEC: tl.constexpr):
    """``base`` + the offsets of pixels ``offs_m`` = n * ``pixels`` + i (i < pixels)
    of a tensor whose pixels merge into one axis at stride 1 (NCHW): runs of
    ``PIXEL_VEC`` consecutive pixels, which the host proved 16-byte aligned when
    PIXEL_VEC > 1 (pixels and the batch stride multiples of it, aligned pointer),
    so that the stores along the pixels vectorize."""
    pixels = pixels // PIXEL_VEC * PIXEL_VEC     # == pixels: shows the compiler its divisibility
    return base + ((offs_m // pixels).to(tl.int64) * (stride_n // PIXEL_VEC * PIXEL_VEC) + offs_m % pixels)


@triton.jit
def _store_output(acc, b_ptr, y_ptr, offs_m, offs_k, M, P, Q, K_end,
                  stride_yn, stride_yc, stride_yh, stride_yw, negative_slope,
                  HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, VEC: tl.constexpr, PIXEL_VEC: tl.constexpr):
    """The forward epilogue: y[n, k, p, q] = act(acc + b[k]) for the tile of output
    pixels ``offs_m`` (< M) and channels ``offs_k`` (< K_end). The pixel decode is
    redone here so that nothing per row stays live across the main loop.
    PIXEL_VEC = 0: rows through the (n, h, w) strides, channel vectors of VEC;
    else y's pixels merge at stride 1 (``_planar_rows``: NCHW written in place)."""
    mask_k = offs_k < K_end
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)[None, :]
    acc = apply_activation(acc, ACTIVATION, negative_slope)
    if PIXEL_VEC > 0:
        y_rows = _planar_rows(y_ptr, offs_m, P * Q, stride_yn, PIXEL_VEC)
        y_cols = offs_k * (stride_yc // PIXEL_VEC * PIXEL_VEC)
        mask_m = offs_m < M // PIXEL_VEC * PIXEL_VEC
    else:
        y_rows = _aligned(y_ptr, (offs_m // (P * Q)).to(tl.int64) * stride_yn
                          + ((offs_m % (P * Q)) // Q).to(tl.int64) * stride_yh
                          + (offs_m % Q).to(tl.int64) * stride_yw, VEC)
        y_cols = offs_k * stride_yc
        mask_m = offs_m < M
    tl.store(y_rows[:, None] + y_cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_k[None, :])


# ---------------------------------------------------------------------------
# Autotune configs: H100-sized tiles (wgmma wants BLOCK_M 64/128 per warpgroup),
# 3-4 stages of cp.async pipelining; the interpreter gets one large tile.

def _cfg(bm, bn, bk, warps, stages, maxnreg=None):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                         num_warps=warps, num_stages=stages, maxnreg=maxnreg)


# 128x128x64 over 8 warps: on Hopper capped at 128 registers, so that two programs
# (2 x 96 KB of shared memory) share an SM; an A100's SM holds one, uncapped.
BIG_TILE = [for_gpus(_cfg(128, 128, 64, 8, 3, maxnreg=128), first=90),
            for_gpus(_cfg(128, 128, 64, 8, 3), last=89)]
FWD_CONFIGS = [
    *BIG_TILE,
    for_gpus(_cfg(128, 256, 64, 8, 3), first=90),          # spills on sm_80
    _cfg(128, 64, 64, 4, 4),
    _cfg(64, 64, 64, 4, 4),
]
DGRAD_CONFIGS = [
    *BIG_TILE,
    _cfg(128, 64, 64, 8, 4),
    _cfg(64, 64, 64, 4, 4),
]
WGRAD_CONFIGS = [
    *BIG_TILE,
    _cfg(128, 64, 64, 4, 4),
    _cfg(64, 64, 64, 4, 4),
]
# FLAT mode gathers one element at a time: smaller reduction blocks, 64 output
# channels (the stems') or 64 output channels by 128 columns for the weight gradient.
FLAT_FWD_CONFIGS = [
    _cfg(128, 64, 32, 8, 3),
    _cfg(64, 64, 32, 8, 3),
]
FLAT_WGRAD_CONFIGS = [
    _cfg(64, 128, 32, 8, 3),
    _cfg(64, 64, 32, 8, 3, maxnreg=168),
]
# fp32 tiles take twice the shared memory and registers (and exact fp32, FMA dots;
# ptxas caps an 8-warp program at 128 registers unless told, and a few would spill).
FP32_CONFIGS = [
    _cfg(128, 64, 16, 8, 3),
    _cfg(64, 64, 32, 8, 3, maxnreg=168),
]
FP32_FLAT_FWD_CONFIGS = [_cfg(64, 64, 16, 8, 3)]
FP32_FLAT_WGRAD_CONFIGS = [
    _cfg(64, 128, 16, 8, 3),
    _cfg(64, 64, 16, 8, 3),
]
# VEC = 1 (channel rows not 16-byte aligned: channel counts that are not a
# multiple of 8 for fp16 / bf16, of 4 for fp32): every gather is scalar, and the
# large tiles above spill; these compile without spills on sm_80 and sm_90 (and
# keep BLOCK_M >= 64, which wgmma needs). FLAT mode gathers anyway: its lists serve both.
UNALIGNED_CONFIGS = [
    _cfg(128, 64, 32, 8, 3),
    _cfg(64, 64, 32, 8, 3, maxnreg=168),
]
FP32_UNALIGNED_CONFIGS = [_cfg(64, 64, 16, 8, 3)]
FWD_INTERPRETER = _cfg(128, 64, 64, 4, 1)
DGRAD_INTERPRETER = _cfg(128, 64, 64, 4, 1)
WGRAD_INTERPRETER = _cfg(64, 64, 128, 4, 1)
FLAT_INTERPRETER = _cfg(128, 64, 64, 4, 1)
WGRAD_FLAT_INTERPRETER = _cfg(64, 64, 128, 4, 1)


class TunedGemm(NamedTuple):
    """One GEMM kernel autotuned twice: over the fp16 / bf16 tiles and over the fp32 tiles."""
    half: object
    fp32: object


def _tuned(kernel, configs, fp32_configs, key, interpreter_config, flat=False) -> TunedGemm:
    """``kernel`` autotuned over ``configs`` (fp16 / bf16) and ``fp32_configs``, each
    with its VEC = 1 alternative (FLAT mode: the same lists)."""
    unaligned = (configs, fp32_configs) if flat else (UNALIGNED_CONFIGS, FP32_UNALIGNED_CONFIGS)
    return TunedGemm(*(autotune(c, key, interpreter_config, alternatives=("VEC", {1: u}))(kernel)
                       for c, u in zip((configs, fp32_configs), unaligned)))


# ---------------------------------------------------------------------------
# Forward

@triton.jit
def _conv_fwd_gemm_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr, part_ptr, ticket_ptr,
        N, H, W, P, Q, Cg, Kg, R, S,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        stride_xn, stride_xc, stride_xh, stride_xw,
        stride_wk, stride_wc, stride_wr, stride_ws,
        stride_yn, stride_yc, stride_yh, stride_yw,
        negative_slope,
        HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, FLAT: tl.constexpr, VEC: tl.constexpr,
        PIXEL_VEC: tl.constexpr, ALLOW_TF32: tl.constexpr, DOT_UPCAST: tl.constexpr,
        PAD_C: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """x: (N, G*Cg, H, W); w: (G*Kg, Cg, R, S); b: (G*Kg,); y: (N, G*Kg, P, Q);
    all through strides; part / ticket: the split workspace (``sum_splits``).
    Program (tile, g, split): y = act(conv + b) over BLOCK_M output pixels and
    BLOCK_N output channels of group g; pad_h / pad_w are the top / left padding
    (the bottom / right padding only shows in P / Q). VEC > 1: the host proved
    x, w, y channel-contiguous with rows, Cg and Kg multiples of VEC elements
    (16 bytes) on 16-byte aligned pointers (FLAT: y only). PIXEL_VEC > 0: y is
    written with its pixels at stride 1 instead (``_store_output``; VEC then
    concerns x and w only). PAD_C > 0 (FLAT, one group, dil_w 1): x and w are
    channels_last with PAD_C channels, the real ones zero-padded (the host's
    copies, or a caller's 4-channel tensors). Offsets inside x's padded image (taps,
    channels) are int32, int64 with INDEX_64 (the host's ``_image_needs_int64``)."""
    g = tl.program_id(1)
    M = N * P * Q
    Kb = Kg // VEC * VEC                         # == Kg, written so that the compiler sees its divisibility
    pid_m, pid_n = _tile_ids(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(Kg, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_n = offs_n < Kb
    n = offs_m // (P * Q)
    p = (offs_m % (P * Q)) // Q
    q = offs_m % Q
    ih0 = tl.where(offs_m < M, p * stride_h - pad_h, -(1 << 30))     # rows past M: above the image
    iw0 = q * stride_w - pad_w
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FLAT:
        # Reduction over blocks of the S*C columns j = s*C + c of a kernel row (one
        # block for the stem), each decoded once with its column bounds and offsets,
        # then over the kernel rows r: a k-step adds a row offset and one row check.
        # PAD_C > 0: x and w are channels_last with PAD_C channels, the real ones
        # zero-padded (groups 1, column dilation 1), so that a pixel's kernel row is one
        # run of S*PAD_C elements from a PAD_C-aligned start: vector loads, cp.async.
        if PAD_C > 0:
            # (offsets written as multiples of PAD_C: the compiler sees the alignment)
            x_rows = x_ptr + (n.to(tl.int64) * (stride_xn // PAD_C * PAD_C)
                              + ih0.to(tl.int64) * (stride_xh // PAD_C * PAD_C) + iw0.to(tl.int64) * PAD_C)
            w_cols = w_ptr + offs_n.to(tl.int64) * (stride_wk // PAD_C * PAD_C)
            x_row_step = _offsets(dil_h, stride_xh, INDEX_64) // PAD_C * PAD_C
            w_row_step = stride_wr // PAD_C * PAD_C
            channels = PAD_C
        else:
            x_rows = x_ptr + (n.to(tl.int64) * stride_xn + (g * Cg).to(tl.int64) * stride_xc
                              + ih0.to(tl.int64) * stride_xh + iw0.to(tl.int64) * stride_xw)
            w_cols = w_ptr + (g * Kb + offs_n).to(tl.int64) * stride_wk
            x_row_step = _offsets(dil_h, stride_xh, INDEX_64)
            w_row_step = stride_wr
            channels = Cg
        row_cols = S * channels
        first, end = _split_steps(tl.cdiv(row_cols, BLOCK_K))       # splits over column blocks
        for col_block in range(first, end):
            j = col_block * BLOCK_K + offs_k
            s = j // channels
            # A^T (BLOCK_K, BLOCK_M): the lanes run along the pixels, or along j in
            # PAD_C-element vectors when PAD_C > 0.
            iw = iw0[None, :] + (s * dil_w)[:, None]
            mask_cols = (iw >= 0) & (iw < W) & (j < row_cols)[:, None]
            if PAD_C > 0:
                a_base = x_rows[None, :] + j[:, None]
                b_base = w_cols[None, :] + j[:, None]
            else:
                c = j % channels
                a_base = x_rows[None, :] + (_offsets(s * dil_w, stride_xw, INDEX_64)
                                            + _offsets(c, stride_xc, INDEX_64))[:, None]
                b_base = w_cols[None, :] + (s * stride_ws + c * stride_wc)[:, None]
            mask_b = (j < row_cols)[:, None] & mask_n[None, :]
            for r in range(0, R):
                ih = ih0 + r * dil_h
                # (signed compares: ``_in_range`` here spilled 8-24 bytes in an fp32 tile under 3.6)
                a = tl.load(a_base + r * x_row_step, mask=mask_cols & ((ih >= 0) & (ih < H))[None, :], other=0.0)
                b = tl.load(b_base + r * w_row_step, mask=mask_b, other=0.0)
                acc = _mma(tl.trans(a), b, acc, ALLOW_TF32, DOT_UPCAST)
    else:
        Cb = Cg // VEC * VEC
        x_rows = _aligned(x_ptr, n.to(tl.int64) * stride_xn + (g * Cb).to(tl.int64) * stride_xc
                          + ih0.to(tl.int64) * stride_xh + iw0.to(tl.int64) * stride_xw, VEC)
        a_base = x_rows[:, None] + _offsets(offs_k, stride_xc, INDEX_64)[None, :]
        w_cols = _aligned(w_ptr, (g * Kb + offs_n).to(tl.int64) * stride_wk, VEC)
        b_base = w_cols[None, :] + offs_k[:, None] * stride_wc
        # The steps of a tap row / column / channel block in x and w, multiples of VEC
        # (x // VEC * VEC == x: shows the compiler the 16-byte alignment, once, outside
        # the loop); offsets inside one padded image.
        x_row_step = _offsets(dil_h, stride_xh, INDEX_64) // VEC * VEC
        x_col_step = _offsets(dil_w, stride_xw, INDEX_64) // VEC * VEC
        x_c_step = _offsets(stride_xc, BLOCK_K, INDEX_64)       # a multiple of BLOCK_K >= VEC
        w_row_step = stride_wr // VEC * VEC
        w_col_step = stride_ws // VEC * VEC
        w_c_step = stride_wc * BLOCK_K
        # k-step position: tap (r, s) and channel block cb (first channel cb * BLOCK_K),
        # advanced by selects
        c_blocks = tl.cdiv(Cg, BLOCK_K)
        first, end = _split_steps(R * S * c_blocks)
        r = first // c_blocks // S
        s = first // c_blocks % S
        cb = first % c_blocks
        for _ in range(first, end):
            ih = ih0 + r * dil_h
            iw = iw0 + s * dil_w
            mask_rows = _in_range(ih, H) & _in_range(iw, W)
            mask_c = offs_k < Cb - cb * BLOCK_K
            a = tl.load(a_base + (r * x_row_step + s * x_col_step + cb * x_c_step),
                        mask=mask_rows[:, None] & mask_c[None, :], other=0.0)
            b = tl.load(b_base + (r * w_row_step + s * w_col_step + cb * w_c_step),
                        mask=mask_c[:, None] & mask_n[None, :], other=0.0)
            acc = _mma(a, b, acc, ALLOW_TF32, DOT_UPCAST)
            cb, s, r = _next_step(cb, s, r, c_blocks, S)

    done = tl.num_programs(2) == 1
    if not done:
        acc, done = sum_splits(acc, part_ptr, ticket_ptr, BLOCK_M, BLOCK_N)
    if done:
        _store_output(acc, b_ptr, y_ptr, pid_m * BLOCK_M + tl.arange(0, BLOCK_M), g * Kb + offs_n, M, P, Q,
                      g * Kb + Kb, stride_yn, stride_yc, stride_yh, stride_yw, negative_slope,
                      HAS_BIAS, ACTIVATION, VEC, PIXEL_VEC)


_FWD_KEY = ["N", "P", "Q", "Cg", "Kg", "R", "S", "VEC", "PIXEL_VEC", "PAD_C"]
conv_fwd_gemm = _tuned(_conv_fwd_gemm_kernel, FWD_CONFIGS, FP32_CONFIGS, _FWD_KEY, FWD_INTERPRETER)
conv_fwd_flat = _tuned(_conv_fwd_gemm_kernel, FLAT_FWD_CONFIGS, FP32_FLAT_FWD_CONFIGS, _FWD_KEY, FLAT_INTERPRETER,
                       flat=True)


@triton.jit
def _pad_channels_kernel(src_ptr, dst_ptr, HW, C, W, stride_n, stride_c, stride_h, stride_w,
                         PAD_C: tl.constexpr, BLOCK: tl.constexpr):
    """dst (N, H*W, PAD_C), contiguous = src (N, C, H, W) through its strides, its
    C <= PAD_C channels then zeros: the channels_last x (and w) with PAD_C
    channels of the FLAT passes. Program (n, block): BLOCK pixels of image n
    (int32 decode)."""
    n = tl.program_id(0).to(tl.int64)
    offs_p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    offs_c = tl.arange(0, PAD_C)
    pixel = (offs_p // W).to(tl.int64) * stride_h + (offs_p % W).to(tl.int64) * stride_w
    src = src_ptr + n * stride_n + pixel[:, None] + (offs_c.to(tl.int64) * stride_c)[None, :]
    mask_p = (offs_p < HW)[:, None]
    values = tl.load(src, mask=mask_p & (offs_c < C)[None, :], other=0.0)
    tl.store(dst_ptr + (n * HW + offs_p)[:, None] * PAD_C + offs_c[None, :], values, mask=mask_p)


# ---------------------------------------------------------------------------
# Input gradient

# Not specialised on a stride or a kernel size of 1 (they only set the phase count and
# the tap walk): specialised, a stride-1 launch's 128x64 tile compiled to 128 registers
# with 16 bytes of spill on sm_80 under triton 3.9, a 1x1 launch's fp32 one 8 on sm_90.
@triton.jit(do_not_specialize=["stride_h", "stride_w", "R", "S"])
def _conv_dgrad_gemm_kernel(
        dy_ptr, w_ptr, dx_ptr, part_ptr, ticket_ptr,
        N, H, W, P, Q, Cg, Kg, R, S,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, step_r, step_s, phases_h, phases_w,
        stride_dyn, stride_dyk, stride_dyp, stride_dyq,
        stride_wk, stride_wc, stride_wr, stride_ws,
        stride_dxn, stride_dxc, stride_dxh, stride_dxw,
        VEC: tl.constexpr, PIXEL_VEC: tl.constexpr, ALLOW_TF32: tl.constexpr, DOT_UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """dy: (N, G*Kg, P, Q); w: (G*Kg, Cg, R, S); dx: (N, G*Cg, H, W); all through
    strides; part / ticket: the split workspace. Program (tile, g*phases_h*phases_w
    + phase, split), phases_h = min(stride_h, H) (phases_w so): dx over BLOCK_M input
    pixels of one stride phase and BLOCK_N
    input channels of group g, a GEMM over (tap, output channel) with only the
    taps that reach the phase. step_r / step_s: stride / gcd(stride, dilation)
    per axis. VEC and PIXEL_VEC (dx's pixels at stride 1; stride 1 only: one
    phase) as in the forward."""
    pid_z = tl.program_id(1)
    num_phases = phases_h * phases_w
    g = pid_z // num_phases
    phase = pid_z % num_phases
    Cb = Cg // VEC * VEC
    Kb = Kg // VEC * VEC
    first_h, Hp, r0, n_r, dp0, dstep_h = _stride_phase((phase // phases_w + pad_h) % stride_h, H, pad_h, stride_h,
                                                       dil_h, R, step_r)
    first_w, Wp, s0, n_s, dq0, dstep_w = _stride_phase((phase % phases_w + pad_w) % stride_w, W, pad_w, stride_w,
                                                       dil_w, S, step_s)
    M = N * Hp * Wp
    num_m = tl.cdiv(N * tl.cdiv(H, stride_h) * tl.cdiv(W, stride_w), BLOCK_M)   # the largest phase
    pid_m, pid_n = _tile_ids(tl.program_id(0), num_m, tl.cdiv(Cg, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_n = offs_n < Cb
    HWp = tl.maximum(Hp * Wp, 1)
    Wp1 = tl.maximum(Wp, 1)
    n = offs_m // HWp
    p0 = tl.where(offs_m < M, (offs_m % HWp) // Wp1 + dp0, -(1 << 30))   # output row at the first tap
    q0 = offs_m % Wp1 + dq0
    dy_rows = _aligned(dy_ptr, n.to(tl.int64) * stride_dyn + (g * Kb).to(tl.int64) * stride_dyk
                       + p0.to(tl.int64) * stride_dyp + q0.to(tl.int64) * stride_dyq, VEC)
    a_base = dy_rows[:, None] + offs_k[None, :] * stride_dyk
    w_cols = _aligned(w_ptr, (g * Kb).to(tl.int64) * stride_wk + offs_n.to(tl.int64) * stride_wc
                      + (r0 * stride_wr + s0 * stride_ws), VEC)
    b_base = w_cols[None, :] + offs_k[:, None] * stride_wk

    # k-step position: tap (r0 + tr*step_r, s0 + ts*step_s) and channel block kb,
    # advanced by selects; the tap meets output pixel (p0 - tr*dstep_h, q0 - ts*dstep_w).
    # (The forward's hoisted steps spilled 8 bytes here at 128 registers under triton 3.9.)
    k_blocks = tl.cdiv(Kg, BLOCK_K)
    first, end = _split_steps(tl.where(pid_m * BLOCK_M < M, n_r * n_s * k_blocks, 0))
    tr = first // k_blocks // tl.maximum(n_s, 1)
    ts = first // k_blocks % tl.maximum(n_s, 1)
    kb = first % k_blocks
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(first, end):
        k0 = kb * BLOCK_K
        p = p0 - tr * dstep_h
        q = q0 - ts * dstep_w
        mask_rows = _in_range(p, P) & _in_range(q, Q)
        mask_k = offs_k < Kb - k0
        # (x // VEC * VEC == x here: it shows the compiler the 16-byte alignment)
        dy_tap = (tr * dstep_h).to(tl.int64) * stride_dyp + (ts * dstep_w).to(tl.int64) * stride_dyq
        a = tl.load(a_base + (k0 * stride_dyk - dy_tap) // VEC * VEC,
                    mask=mask_rows[:, None] & mask_k[None, :], other=0.0)
        w_tap = tr * step_r * stride_wr + ts * step_s * stride_ws + k0 * stride_wk
        b = tl.load(b_base + w_tap // VEC * VEC, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = _mma(a, b, acc, ALLOW_TF32, DOT_UPCAST)
        kb, ts, tr = _next_step(kb, ts, tr, k_blocks, n_s)

    done = tl.num_programs(2) == 1
    if not done:
        acc, done = sum_splits(acc, part_ptr, ticket_ptr, BLOCK_M, BLOCK_N)
    if done:
        # The pixel decode again (nothing per row lives across the loop).
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        if PIXEL_VEC > 0:
            dx_rows = _planar_rows(dx_ptr, offs_m, H * W, stride_dxn, PIXEL_VEC)
            dx_cols = (g * Cb + offs_n) * (stride_dxc // PIXEL_VEC * PIXEL_VEC)
            mask_m = offs_m < M // PIXEL_VEC * PIXEL_VEC
        else:
            ih = first_h + ((offs_m % HWp) // Wp1) * stride_h
            iw = first_w + (offs_m % Wp1) * stride_w
            dx_rows = _aligned(dx_ptr, (offs_m // HWp).to(tl.int64) * stride_dxn + ih.to(tl.int64) * stride_dxh
                               + iw.to(tl.int64) * stride_dxw, VEC)
            dx_cols = (g * Cb + offs_n) * stride_dxc
            mask_m = offs_m < M
        tl.store(dx_rows[:, None] + dx_cols[None, :], acc.to(dx_ptr.dtype.element_ty),
                 mask=mask_m[:, None] & mask_n[None, :])


conv_dgrad_gemm = _tuned(_conv_dgrad_gemm_kernel, DGRAD_CONFIGS, FP32_CONFIGS,
                         ["N", "H", "W", "Cg", "Kg", "R", "S", "stride_h", "stride_w", "VEC", "PIXEL_VEC"],
                         DGRAD_INTERPRETER)


# ---------------------------------------------------------------------------
# Weight gradient

# Not specialised on a stride, padding or dilation of 1 (the compile cases' runtime
# values are then exactly what a launch compiles): specialised, the 128x128 tile at 128
# registers spilled 16-48 bytes on sm_90 under triton 3.9 (and an fp32 FLAT tile on
# sm_80 under 3.6); they only move pixel offsets, outside the tensor-core work.
@triton.jit(do_not_specialize=["stride_h", "stride_w", "pad_h", "pad_w", "dil_h", "dil_w"])
def _conv_wgrad_gemm_kernel(
        dy_ptr, x_ptr, dw_ptr, part_ptr, ticket_ptr,
        N, H, W, P, Q, Cg, Kg, R, S,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        stride_dym, stride_dyk,
        stride_xn, stride_xc, stride_xh, stride_xw,
        stride_dwk, stride_dwc, stride_dwr, stride_dws,
        FLAT: tl.constexpr, VEC: tl.constexpr, ALLOW_TF32: tl.constexpr, DOT_UPCAST: tl.constexpr,
        PAD_C: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """dy: (N, G*Kg, P, Q) with pixel m = (n*P + p)*Q + q at m * stride_dym (channels_last);
    x: (N, G*Cg, H, W); dw: (G*Kg, Cg, R, S) in the weight dtype; through strides;
    part / ticket: the split workspace. Program (tile, g*R*S + tap, split) (FLAT:
    (tile, g, split)): dw = sum over the N*P*Q pixels of dy[k] * x[c shifted by
    the tap], for BLOCK_M output channels k and BLOCK_N input channels c (FLAT:
    BLOCK_N (r, s, c) columns), the pixels split over grid axis 2. VEC > 1: dy
    and x channel-contiguous and 16-byte aligned, as in the forward. PAD_C > 0
    (FLAT, one group): x is channels_last with PAD_C channels, the real ones
    zero-padded; dw gets the real ones. Offsets inside an image of x (FLAT: all;
    else its channels') are int32, int64 with INDEX_64 (the host's
    ``_image_needs_int64``); the pixels' are int64."""
    pid_z = tl.program_id(1)
    Kb = Kg // VEC * VEC
    if FLAT:
        g = pid_z
        Cb = Cg
        n_cols = R * S * (PAD_C if PAD_C > 0 else Cg)      # PAD_C > 0: x has PAD_C channels, Cg of them real
    else:
        g = pid_z // (R * S)
        Cb = Cg // VEC * VEC
        n_cols = Cb
    pid_m, pid_n = _tile_ids(tl.program_id(0), tl.cdiv(Kg, BLOCK_M), tl.cdiv(n_cols, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < Kb
    mask_n = offs_n < n_cols
    if FLAT:        # columns (r, s, c) of C channels: Cg, or PAD_C when padded
        channels = PAD_C if PAD_C > 0 else Cg
        c = offs_n % channels
        r = offs_n // channels // S
        s = (offs_n // channels) % S
    else:
        c = offs_n
        r = (pid_z % (R * S)) // S
        s = pid_z % S
    # the tap's pixel shift (per column in FLAT mode)
    shift_h = r * dil_h - pad_h
    shift_w = s * dil_w - pad_w
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FLAT:
        # The pixels by whole rows, so that a k-step moves scalars only: lane j is pixel
        # (p0 + j // QB, q0 + j % QB) of image n, QB = min(Q, BLOCK_K) columns of ROWS rows
        # (lanes past ROWS * QB idle), and each (lane, column)'s tap coordinates relative
        # to (p0, q0) are computed once. Columns past n_cols get a row no pixel reaches.
        QB = tl.minimum(Q, BLOCK_K)
        ROWS = BLOCK_K // QB
        q_blocks = tl.cdiv(Q, QB)
        image_steps = tl.cdiv(P, ROWS) * q_blocks
        first, end = _split_steps(N * image_steps)
        n = first // image_steps
        p0 = first % image_steps // q_blocks * ROWS
        q0 = first % q_blocks * QB
        lane_p = offs_k // QB
        lane_q = offs_k % QB
        lane_live = offs_k < ROWS * QB
        dy_cols = _aligned(dy_ptr, ((lane_p * Q + lane_q) * stride_dym).to(tl.int64), VEC)
        a_base = dy_cols[None, :] + (g * Kb + offs_m).to(tl.int64)[:, None] * stride_dyk
        ih_lane = (lane_p * stride_h)[:, None] + tl.where(mask_n, shift_h, -(1 << 30))[None, :]
        iw_lane = (lane_q * stride_w)[:, None] + shift_w[None, :]
        # x's offsets from ih and iw in the loop (held as a third lane tensor, they spilled fp32 tiles)
        if PAD_C > 0:   # rows of x_row pixels of PAD_C channels: the factors show runs of PAD_C aligned
            x_row = stride_xh // PAD_C
            x_col = c
        else:
            x_col = _offsets(g * Cb + c, stride_xc, INDEX_64)
        for _ in range(first, end):
            pixel_live = lane_live & (lane_p < P - p0) & (lane_q < Q - q0)
            m_start = (n * P + p0).to(tl.int64) * Q + q0
            a = tl.load(a_base + m_start * stride_dym // VEC * VEC,
                        mask=mask_m[:, None] & pixel_live[None, :], other=0.0)
            ih = ih_lane + p0 * stride_h
            iw = iw_lane + q0 * stride_w
            if PAD_C > 0:
                x_image = x_ptr + n.to(tl.int64) * (stride_xn // PAD_C) * PAD_C
                x_offs = (_offsets(ih, x_row, INDEX_64) + iw) * PAD_C + x_col[None, :]
            else:
                x_image = x_ptr + n.to(tl.int64) * stride_xn
                x_offs = _offsets(ih, stride_xh, INDEX_64) + _offsets(iw, stride_xw, INDEX_64) + x_col[None, :]
            b = tl.load(x_image + x_offs, mask=pixel_live[:, None] & _in_range(ih, H) & _in_range(iw, W), other=0.0)
            acc = _mma(a, b, acc, ALLOW_TF32, DOT_UPCAST)
            q0 += QB
            next_row = q0 >= Q
            q0 = tl.where(next_row, 0, q0)
            p0 = tl.where(next_row, p0 + ROWS, p0)
            next_image = p0 >= P
            p0 = tl.where(next_image, 0, p0)
            n = tl.where(next_image, n + 1, n)
    else:
        x_shift = (g * Cb).to(tl.int64) * stride_xc + shift_h.to(tl.int64) * stride_xh \
            + shift_w.to(tl.int64) * stride_xw
        dy_cols = _aligned(dy_ptr, (offs_k * stride_dym).to(tl.int64), VEC)
        a_base = dy_cols[None, :] + (g * Kb + offs_m).to(tl.int64)[:, None] * stride_dyk

        # k-step position: pixels m0 + offs_k of N*P*Q. dy is read at m * stride_dym; x
        # needs each pixel's (p, q) for the bounds and its offset x_pix, advanced by
        # BLOCK_K pixels with carries (q wraps into p, p into n).
        PQ = P * Q
        first, end = _split_steps(tl.cdiv(N * PQ, BLOCK_K))
        pixel_end = tl.minimum(end * BLOCK_K, N * PQ)
        m0 = first * BLOCK_K
        p = (m0 + offs_k) % PQ // Q
        q = (m0 + offs_k) % Q
        x_pix = ((m0 + offs_k) // PQ).to(tl.int64) * stride_xn + (p * stride_h).to(tl.int64) * stride_xh \
            + (q * stride_w).to(tl.int64) * stride_xw
        step_q = BLOCK_K % Q
        step_p = BLOCK_K // Q % P
        step_x = (BLOCK_K // PQ).to(tl.int64) * stride_xn + (step_p * stride_h).to(tl.int64) * stride_xh \
            + (step_q * stride_w).to(tl.int64) * stride_xw
        carry_q_x = (stride_h * stride_xh).to(tl.int64) - (Q * stride_w).to(tl.int64) * stride_xw   # q -= Q, p += 1
        carry_p_x = stride_xn - (P * stride_h).to(tl.int64) * stride_xh                             # p -= P, n += 1
        for _ in range(first, end):
            mask_k = m0 + offs_k < pixel_end
            a = tl.load(a_base + m0.to(tl.int64) * stride_dym // VEC * VEC,
                        mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            ih = p * stride_h + shift_h
            iw = q * stride_w + shift_w
            # (signed compares: ``_in_range`` here spilled 16 bytes at 128 registers under 3.9)
            mask_rows = mask_k & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x_rows = _aligned(x_ptr, x_pix + x_shift, VEC)
            b = tl.load(x_rows[:, None] + _offsets(offs_n, stride_xc, INDEX_64)[None, :],
                        mask=mask_rows[:, None] & mask_n[None, :], other=0.0)
            acc = _mma(a, b, acc, ALLOW_TF32, DOT_UPCAST)
            m0 += BLOCK_K
            q += step_q
            carry_q = q >= Q
            q = tl.where(carry_q, q - Q, q)
            p += step_p + carry_q.to(tl.int32)
            carry_p = p >= P
            p = tl.where(carry_p, p - P, p)
            x_pix += step_x + tl.where(carry_q, carry_q_x, 0) + tl.where(carry_p, carry_p_x, 0)

    done = tl.num_programs(2) == 1
    if not done:
        acc, done = sum_splits(acc, part_ptr, ticket_ptr, BLOCK_M, BLOCK_N)
    if done:
        dw_rows = dw_ptr + (g * Kb + offs_m).to(tl.int64) * stride_dwk
        dw_cols = c * stride_dwc + r * stride_dwr + s * stride_dws          # < Cg*R*S: int32
        tl.store(dw_rows[:, None] + dw_cols[None, :], acc.to(dw_ptr.dtype.element_ty),
                 mask=mask_m[:, None] & (mask_n & (c < Cg))[None, :])


_WGRAD_KEY = ["N", "P", "Q", "Cg", "Kg", "R", "S", "VEC", "PAD_C"]
conv_wgrad_gemm = _tuned(_conv_wgrad_gemm_kernel, WGRAD_CONFIGS, FP32_CONFIGS, _WGRAD_KEY, WGRAD_INTERPRETER)
conv_wgrad_flat = _tuned(_conv_wgrad_gemm_kernel, FLAT_WGRAD_CONFIGS, FP32_FLAT_WGRAD_CONFIGS, _WGRAD_KEY,
                         WGRAD_FLAT_INTERPRETER, flat=True)


# ---------------------------------------------------------------------------
# 1x1, stride 1, unpadded, on planar tensors (NCHW: the H*W pixels of a channel
# at stride 1): per image and group a plain GEMM, read and written in place.

@triton.jit
def _conv_planar_gemm_kernel(
        a_ptr, b_ptr, bias_ptr, out_ptr,
        HW, Mg, Kr, G,
        stride_ag, stride_am, stride_ak,
        stride_bn, stride_bc, stride_bp,
        stride_on, stride_oc, stride_op,
        negative_slope,
        HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, VEC: tl.constexpr,
        ALLOW_TF32: tl.constexpr, DOT_UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """out[n, g*Mg + m, p] = act(bias[g*Mg + m] + sum_k A_g[m, k] * b[n, g*Kr + k, p]) over
    the HW pixels p of each image; A_g[m, k] at a_ptr + g*stride_ag + m*stride_am +
    k*stride_ak. b: (N, G*Kr, HW), out: (N, G*Mg, HW), through strides (pixel
    strides 1 on the planar path). The forward is A = w (rows k, reduction c), the
    input gradient A = w transposed (rows c, reduction k) with no bias. Program
    (tile, n*G + g): BLOCK_M rows by BLOCK_N pixels of one image. VEC > 1: the
    host proved the pixel rows of b and out 16-byte aligned (HW and the strides
    multiples of VEC elements)."""
    pid_z = tl.program_id(1)
    n = pid_z // G
    g = pid_z % G
    HWb = HW // VEC * VEC                        # == HW, written so that the compiler sees its divisibility
    pid_m, pid_p = _tile_ids(tl.program_id(0), tl.cdiv(Mg, BLOCK_M), tl.cdiv(HWb, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_p = pid_p * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < Mg
    mask_p = offs_p < HWb
    a_ptrs = a_ptr + g.to(tl.int64) * stride_ag + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_rows = _aligned(b_ptr, n.to(tl.int64) * stride_bn + (g * Kr + offs_k).to(tl.int64) * (stride_bc // VEC * VEC),
                      VEC)
    b_ptrs = b_rows[:, None] + offs_p[None, :] * stride_bp
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, Kr, BLOCK_K):
        mask_k = offs_k < Kr - k0
        a = tl.load(a_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=mask_k[:, None] & mask_p[None, :], other=0.0)
        acc = _mma(a, b, acc, ALLOW_TF32, DOT_UPCAST)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += tl.cast(stride_bc // VEC * VEC, tl.int64) * BLOCK_K
    if HAS_BIAS:
        acc += tl.load(bias_ptr + g * Mg + offs_m, mask=mask_m, other=0.0).to(tl.float32)[:, None]
    acc = apply_activation(acc, ACTIVATION, negative_slope)
    out_rows = _aligned(out_ptr, n.to(tl.int64) * stride_on
                        + (g * Mg + offs_m).to(tl.int64) * (stride_oc // VEC * VEC), VEC)
    tl.store(out_rows[:, None] + offs_p[None, :] * stride_op, acc.to(out_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_p[None, :])


_PLANAR_KEY = ["HW", "Mg", "Kr", "VEC"]
conv_planar_fwd = _tuned(_conv_planar_gemm_kernel, FWD_CONFIGS, FP32_CONFIGS, _PLANAR_KEY, FWD_INTERPRETER)
conv_planar_dgrad = _tuned(_conv_planar_gemm_kernel, DGRAD_CONFIGS, FP32_CONFIGS, _PLANAR_KEY,
                           DGRAD_INTERPRETER)


@triton.jit
def _conv_planar_wgrad_kernel(
        dy_ptr, x_ptr, dw_ptr, part_ptr, ticket_ptr,
        N, HW, Cg, Kg,
        stride_dyn, stride_dyk, stride_dyp,
        stride_xn, stride_xc, stride_xp,
        stride_dwk, stride_dwc,
        VEC: tl.constexpr, ALLOW_TF32: tl.constexpr, DOT_UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """dw[g*Kg + m, c] = sum over images n and pixels p of dy[n, g*Kg + m, p] *
    x[n, g*Cg + c, p] (a 1x1 weight gradient). dy: (N, G*Kg, HW), x: (N, G*Cg, HW),
    dw: (G*Kg, Cg) in the weight dtype, through strides; part / ticket: the split
    workspace (``sum_splits``). Program (tile, g, split): BLOCK_M output by BLOCK_N
    input channels, reducing over its split of the N * cdiv(HW, BLOCK_K) pixel
    blocks (a block never crosses images). VEC as in ``_conv_planar_gemm_kernel``."""
    g = tl.program_id(1)
    HWb = HW // VEC * VEC
    pid_m, pid_n = _tile_ids(tl.program_id(0), tl.cdiv(Kg, BLOCK_M), tl.cdiv(Cg, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < Kg
    mask_n = offs_n < Cg
    dy_rows = _aligned(dy_ptr, (g * Kg + offs_m).to(tl.int64) * (stride_dyk // VEC * VEC), VEC)
    x_cols = _aligned(x_ptr, (g * Cg + offs_n).to(tl.int64) * (stride_xc // VEC * VEC), VEC)
    blocks = tl.cdiv(HWb, BLOCK_K)
    first, end = _split_steps(N * blocks)
    # k-step position: image n and first pixel p0, advanced by adds and a select
    n = (first // blocks).to(tl.int64)
    p0 = first % blocks * BLOCK_K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(first, end):
        pix = p0 + offs_k
        mask_k = pix < HWb
        a = tl.load(dy_rows[:, None] + (n * (stride_dyn // VEC * VEC) + pix * stride_dyp)[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(x_cols[None, :] + (n * (stride_xn // VEC * VEC) + pix * stride_xp)[:, None],
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = _mma(a, b, acc, ALLOW_TF32, DOT_UPCAST)
        p0 += BLOCK_K
        next_image = p0 >= HWb
        p0 = tl.where(next_image, 0, p0)
        n += next_image.to(tl.int64)
    done = tl.num_programs(2) == 1
    if not done:
        acc, done = sum_splits(acc, part_ptr, ticket_ptr, BLOCK_M, BLOCK_N)
    if done:
        dw_ptrs = dw_ptr + (g * Kg + offs_m).to(tl.int64)[:, None] * stride_dwk + offs_n[None, :] * stride_dwc
        tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


conv_planar_wgrad = _tuned(_conv_planar_wgrad_kernel, WGRAD_CONFIGS, FP32_CONFIGS, ["N", "HW", "Cg", "Kg", "VEC"],
                           WGRAD_INTERPRETER)


# ---------------------------------------------------------------------------
# 1x1, stride 1, unpadded, channel-contiguous (channels_last): per group a plain
# GEMM over the (pixels, channels) matrices, its operand tiles loaded through
# tensor descriptors (TMA on Hopper: no address arithmetic in the main loop).

@triton.jit
def _conv_pointwise_gemm_kernel(
        a_ptr, w_ptr, bias_ptr, out_ptr, part_ptr, ticket_ptr,
        M, P, Q, Cg, Kg,
        stride_am, stride_wk,
        stride_on, stride_oc, stride_oh, stride_ow,
        negative_slope,
        FORWARD: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, VEC: tl.constexpr,
        PIXEL_VEC: tl.constexpr, ALLOW_TF32: tl.constexpr, DOT_UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """out = act(bias + A_g @ B_g) over the M = N*P*Q pixels of each group g. FORWARD:
    A = x (N, G*Cg, P, Q), B_g = w_g transposed (reduction over the Cg input channels,
    Kg output columns); else the input gradient: A = dy (N, G*Kg, P, Q), B_g = w_g
    (reduction over Kg, Cg columns, no bias). A has its pixels merged at stride_am
    and channels at stride 1; w: (G*Kg, Cg, 1, 1), rows at stride_wk, channels at
    stride 1; out and the epilogue as in the forward (``_store_output``, with P, Q
    the image size); part / ticket: the split workspace. Program (tile, g, split).
    The host proved the descriptors' rules: 16-byte aligned pointers, stride_am,
    stride_wk, Cg and Kg (VEC > 1)."""
    g = tl.program_id(1)
    Cb = Cg // VEC * VEC                         # == Cg, Kg: shows the compiler the 16-byte group offsets
    Kb = Kg // VEC * VEC
    if FORWARD:
        reduction = Cb
        cols = Kb
    else:
        reduction = Kb
        cols = Cb
    pid_m, pid_n = _tile_ids(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(cols, BLOCK_N), GROUP_M)
    a_desc = tl.make_tensor_descriptor(a_ptr + g * reduction, shape=[M, reduction], strides=[stride_am, 1],
                                       block_shape=[BLOCK_M, BLOCK_K])
    w_group = w_ptr + (g * Kb).to(tl.int64) * stride_wk
    if FORWARD:                                  # tiles of w's (output channel, input channel) rows
        w_desc = tl.make_tensor_descriptor(w_group, shape=[Kb, Cb], strides=[stride_wk, 1],
                                           block_shape=[BLOCK_N, BLOCK_K])
    else:
        w_desc = tl.make_tensor_descriptor(w_group, shape=[Kb, Cb], strides=[stride_wk, 1],
                                           block_shape=[BLOCK_K, BLOCK_N])
    first, end = _split_steps(tl.cdiv(reduction, BLOCK_K))
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(first, end):
        a = a_desc.load([pid_m * BLOCK_M, kb * BLOCK_K])
        if FORWARD:
            b = tl.trans(w_desc.load([pid_n * BLOCK_N, kb * BLOCK_K]))
        else:
            b = w_desc.load([kb * BLOCK_K, pid_n * BLOCK_N])
        acc = _mma(a, b, acc, ALLOW_TF32, DOT_UPCAST)
    done = tl.num_programs(2) == 1
    if not done:
        acc, done = sum_splits(acc, part_ptr, ticket_ptr, BLOCK_M, BLOCK_N)
    if done:
        _store_output(acc, bias_ptr, out_ptr, pid_m * BLOCK_M + tl.arange(0, BLOCK_M),
                      g * cols + pid_n * BLOCK_N + tl.arange(0, BLOCK_N), M, P, Q, g * cols + cols,
                      stride_on, stride_oc, stride_oh, stride_ow, negative_slope,
                      HAS_BIAS, ACTIVATION, VEC, PIXEL_VEC)


_POINTWISE_KEY = ["M", "Cg", "Kg", "VEC", "PIXEL_VEC"]
conv_pointwise_fwd = _tuned(_conv_pointwise_gemm_kernel, FWD_CONFIGS, FP32_CONFIGS, _POINTWISE_KEY,
                            FWD_INTERPRETER)
conv_pointwise_dgrad = _tuned(_conv_pointwise_gemm_kernel, DGRAD_CONFIGS, FP32_CONFIGS, _POINTWISE_KEY,
                              DGRAD_INTERPRETER)


@triton.jit
def _conv_pointwise_wgrad_kernel(
        dy_ptr, x_ptr, dw_ptr, part_ptr, ticket_ptr,
        M, Cg, Kg,
        stride_dym, stride_xm, stride_dwk, stride_dwc,
        VEC: tl.constexpr, ALLOW_TF32: tl.constexpr, DOT_UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """dw[g*Kg + k, c] = sum over the M = N*H*W pixels m of dy[m, g*Kg + k] * x[m, g*Cg + c]
    (a 1x1 weight gradient). dy: (N, G*Kg, H, W), x: (N, G*Cg, H, W), each with its
    pixels merged at one stride and channels at stride 1; dw: (G*Kg, Cg) in the
    weight dtype; part / ticket: the split workspace. Program (tile, g, split):
    BLOCK_M output by BLOCK_N input channels over its split of the pixel blocks,
    both operands through tensor descriptors (rules as in
    ``_conv_pointwise_gemm_kernel``)."""
    g = tl.program_id(1)
    Cb = Cg // VEC * VEC
    Kb = Kg // VEC * VEC
    pid_m, pid_n = _tile_ids(tl.program_id(0), tl.cdiv(Kb, BLOCK_M), tl.cdiv(Cb, BLOCK_N), GROUP_M)
    dy_desc = tl.make_tensor_descriptor(dy_ptr + g * Kb, shape=[M, Kb], strides=[stride_dym, 1],
                                        block_shape=[BLOCK_K, BLOCK_M])
    x_desc = tl.make_tensor_descriptor(x_ptr + g * Cb, shape=[M, Cb], strides=[stride_xm, 1],
                                       block_shape=[BLOCK_K, BLOCK_N])
    first, end = _split_steps(tl.cdiv(M, BLOCK_K))
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for mb in range(first, end):
        a = tl.trans(dy_desc.load([mb * BLOCK_K, pid_m * BLOCK_M]))
        b = x_desc.load([mb * BLOCK_K, pid_n * BLOCK_N])
        acc = _mma(a, b, acc, ALLOW_TF32, DOT_UPCAST)
    done = tl.num_programs(2) == 1
    if not done:
        acc, done = sum_splits(acc, part_ptr, ticket_ptr, BLOCK_M, BLOCK_N)
    if done:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        dw_ptrs = dw_ptr + (g * Kb + offs_m).to(tl.int64)[:, None] * stride_dwk + offs_n[None, :] * stride_dwc
        tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=(offs_m < Kb)[:, None] & (offs_n < Cb)[None, :])


conv_pointwise_wgrad = _tuned(_conv_pointwise_wgrad_kernel, WGRAD_CONFIGS, FP32_CONFIGS, ["M", "Cg", "Kg", "VEC"],
                              WGRAD_INTERPRETER)

"""Depthwise convolution (groups = C = K: one input and one output channel per
group), register-blocked: the patch kernels (forward, input gradient and weight
gradient) and the rows kernels (below), which run every pass but a strided
input gradient whose units would unroll too far (``ops._units_fit``).

A program owns a (TILE_P, TILE_Q) patch of pixels of one image by BLOCK_C
channels. The kernel size (R, S) is a constexpr, so a row of taps unrolls: each
program loads each of its channels' R*S weights once, into registers, for all
its pixels, and every tap is one masked load of the shifted patch, whose
overlap with the other taps' patches the cache serves. In channels_last the channel axis is the
contiguous one and a thread's loads are 16-byte vectors of channels; in NCHW
the pixel axis is. Bounds are checked per patch row and per patch column, not
per element. Offsets within an image are int32 (int64 with ``INDEX_64``, which the
host sets when they may pass 2**31); an image's base offset is int64.

* forward: y[n, c, p, q] = act(b[c] + sum_rs x[n, c, p*sh - ph + r*dh, q*sw - pw + s*dw] w[c, r, s]).
* input gradient, per stride phase (as ``_gemm``'s dgrad): the pixels h = a + i*sh
  of phase a (a < min(sh, H)) see tap r only when (a + ph - r*dh) is a multiple of sh, and then
  dy row i + (a + ph - r*dh) / sh: a tap that misses the phase costs one scalar
  test, not a masked load.
* weight gradient: the taps are a tensor axis (TAPS = R*S rounded up to a power
  of two; 3x3: 8 taps on the axis and the ninth apart), so one pass over the
  pixels reads each block of dy once and gathers x for every tap in one load;
  the (TAPS, BLOCK_C) sums are split over grid axis 2 and reduced in fixed
  order (``sum_splits``).
* rows (any layout: the forward and the weight gradient at any stride and
  dilation, a row dilation by row sets; the input gradient at stride 1, as a
  forward of dy with the kernel turned by 180 degrees, and at other strides by
  units of stride dx rows and columns, any dilation): a program walks
  down a column strip, loading each input row's column shifts once for the
  output rows that read it (the patch kernels load each input element once per
  tap and convert it to fp32 each time: 1.5 instructions an element in bf16,
  more than its multiply-add).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..activation import apply_activation
from .._reduce import sum_splits
from ._gemm import _in_range, _offsets, _split_steps


@triton.jit
def _patch(pid, rows, cols, TILE_P: tl.constexpr, TILE_Q: tl.constexpr):
    """Program ``pid`` of a grid whose fastest part walks the (TILE_P, TILE_Q)
    patches of a rows x cols pixel grid: (pid // patches, the patch's row indices,
    its column indices)."""
    patches_q = tl.cdiv(cols, TILE_Q)
    patches = tl.cdiv(rows, TILE_P) * patches_q
    patch = pid % patches
    return (pid // patches, patch // patches_q * TILE_P + tl.arange(0, TILE_P),
            patch % patches_q * TILE_Q + tl.arange(0, TILE_Q))


@triton.jit
def _store_patch(out_ptr, acc, n, rows, cols, offs_c, mask_c, num_rows, num_cols,
                 stride_n, stride_c, stride_h, stride_w, INDEX_64: tl.constexpr):
    """out[n, offs_c, rows, cols] = acc (TILE_P, TILE_Q, BLOCK_C) in out's dtype,
    inside the num_rows x num_cols image and the channels of ``mask_c``."""
    ptrs = (out_ptr + n.to(tl.int64) * stride_n + _offsets(rows, stride_h, INDEX_64)[:, None, None]
            + _offsets(cols, stride_w, INDEX_64)[None, :, None] + _offsets(offs_c, stride_c, INDEX_64)[None, None, :])
    mask = (rows < num_rows)[:, None, None] & (cols < num_cols)[None, :, None] & mask_c[None, None, :]
    tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _conv_fwd_depthwise_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr,
        H, W, P, Q, C,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        stride_xn, stride_xc, stride_xh, stride_xw,
        stride_wc, stride_wr, stride_ws,
        stride_yn, stride_yc, stride_yh, stride_yw,
        negative_slope,
        R: tl.constexpr, S: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
        TILE_P: tl.constexpr, TILE_Q: tl.constexpr, BLOCK_C: tl.constexpr, INDEX_64: tl.constexpr):
    """x: (N, C, H, W); w: (C, 1, R, S); b: (C,); y: (N, C, P, Q); strides.
    Program (n * patches + patch, c_block): y over one (TILE_P, TILE_Q) patch of
    output pixels and BLOCK_C channels."""
    n, offs_p, offs_q = _patch(tl.program_id(0), P, Q, TILE_P, TILE_Q)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    x_img = x_ptr + n.to(tl.int64) * stride_xn
    x_chan = _offsets(offs_c, stride_xc, INDEX_64)[None, None, :]
    w_chan = w_ptr + offs_c * stride_wc
    acc = tl.zeros((TILE_P, TILE_Q, BLOCK_C), dtype=tl.float32)
    for r in range(R):
        ih = offs_p * stride_h + (r * dil_h - pad_h)
        row_ok = _in_range(ih, H)
        x_rows = x_img + _offsets(ih, stride_xh, INDEX_64)[:, None, None]
        for s in tl.static_range(S):
            iw = offs_q * stride_w + (s * dil_w - pad_w)
            mask = row_ok[:, None, None] & _in_range(iw, W)[None, :, None] & mask_c[None, None, :]
            xv = tl.load(x_rows + _offsets(iw, stride_xw, INDEX_64)[None, :, None] + x_chan, mask=mask, other=0.0)
            wv = tl.load(w_chan + (r * stride_wr + s * stride_ws), mask=mask_c, other=0.0)
            acc += xv.to(tl.float32) * wv.to(tl.float32)[None, None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, None, :]
    acc = apply_activation(acc, ACTIVATION, negative_slope)
    _store_patch(y_ptr, acc, n, offs_p, offs_q, offs_c, mask_c, P, Q, stride_yn, stride_yc, stride_yh, stride_yw,
                 INDEX_64)


@triton.jit
def _column_shifts(x_chan, iw, W, mask_c, stride_xw, dil_w, S: tl.constexpr, INDEX_64: tl.constexpr):
    """The offsets (within a row) and masks of a (TILE_Q, BLOCK_C) tile's S column
    shifts, columns iw + s dil_w of a W-wide input: (offsets, masks), tuples of S."""
    cols = ()
    oks = ()
    for s in tl.static_range(S):
        cols = cols + (x_chan + _offsets(iw + s * dil_w, stride_xw, INDEX_64)[:, None],)
        oks = oks + (_in_range(iw + s * dil_w, W)[:, None] & mask_c[None, :],)
    return cols, oks


@triton.jit
def _load_shifts(x_row, cols, oks, row_ok, S: tl.constexpr):
    """An input row's S column shifts (``_column_shifts``) as fp32, zeros outside: a tuple."""
    xs = ()
    for s in tl.static_range(S):
        xs = xs + (tl.load(x_row + cols[s], mask=oks[s] & row_ok, other=0.0).to(tl.float32),)
    return xs


@triton.jit
def _tap_row(acc, xs, ws, S: tl.constexpr):
    """acc + sum over s of xs[s] ws[s], a fused multiply-add each, in that order."""
    for s in tl.static_range(S):
        acc += xs[s] * ws[s]
    return acc


@triton.jit
def _tap_weights(w_chan, mask_c, stride_wr, stride_ws, R: tl.constexpr, S: tl.constexpr, FLIP: tl.constexpr):
    """An R x S kernel's taps w[c, r, s] as fp32 (1, BLOCK_C), or w[c, R - 1 - r, S - 1 -
    s] with FLIP: a tuple of R rows, each a tuple of S."""
    rows = ()
    for r in tl.static_range(R):
        row = ()
        for s in tl.static_range(S):
            tap = (R - 1 - r) * stride_wr + (S - 1 - s) * stride_ws if FLIP else r * stride_wr + s * stride_ws
            row = row + (tl.load(w_chan + tap, mask=mask_c, other=0.0).to(tl.float32)[None, :],)
        rows = rows + (row,)
    return rows


@triton.jit
def _strip(pid, rows, cols, ROWS, TILE_Q: tl.constexpr, row_step):
    """Program ``pid`` of a grid that walks, image by image and row set by row set
    (of ``rows`` rows, rows a + row_step k of set a < row_step), chunks of ROWS
    rows of a set by strips of TILE_Q of ``cols`` columns: (image, row set, the
    chunk's first k, column indices)."""
    strips = tl.cdiv(cols, TILE_Q)
    chunks = tl.cdiv(tl.cdiv(rows, row_step), ROWS)
    image_set = pid // (chunks * strips)
    return (image_set // row_step, image_set % row_step, (pid // strips) % chunks * ROWS,
            pid % strips * TILE_Q + tl.arange(0, TILE_Q))


@triton.jit
def _store_row(y_row, y_cols, mask, acc, bias, negative_slope, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr):
    """y_row[y_cols] = act(acc + bias) (TILE_Q, BLOCK_C) in y's dtype where ``mask``."""
    if HAS_BIAS:
        acc += bias
    acc = apply_activation(acc, ACTIVATION, negative_slope)
    tl.store(y_row + y_cols, acc.to(y_row.dtype.element_ty), mask=mask)


@triton.jit
def _repeat(value, n: tl.constexpr):
    """(value, ..., value): a tuple of n."""
    out = ()
    for i in tl.static_range(n):
        out = out + (value,)
    return out


@triton.constexpr_function
def _phases(stride, taps):
    """The row phases of a row stride that hold a tap row: min(stride, taps) (a
    stride of 2**29 is not unrolled)."""
    return min(stride, taps)


@triton.jit
def _step_row(x_img, x_top, dil_h, k, stride_xh, H, cols, oks, j, rows, one_row, R: tl.constexpr, S: tl.constexpr,
              STRIDE_H: tl.constexpr, phase: tl.constexpr, M: tl.constexpr, INDEX_64: tl.constexpr):
    """The S column shifts (``_load_shifts``) of the input row of row k of a row set
    (from x_top, every dil_h-th row) and ``phase`` that step j of a rows kernel
    loads: zeros outside the image's H rows and, when the rows it feeds reach
    only ``last`` < M steps back, past them (after the chunk's ``rows``)."""
    ih = x_top + dil_h * (STRIDE_H * k + phase)
    ok = _in_range(ih + one_row, H)
    last: tl.constexpr = (R - 1 - phase) // STRIDE_H
    if last < M:
        ok = ok & (j + one_row < rows + last)
    return _load_shifts(x_img + _offsets(ih, stride_xh, INDEX_64), cols, oks, ok, S)


@triton.jit
def _conv_depthwise_rows_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr,
        H, W, P, Q, C, ROWS,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, row_step,
        stride_xn, stride_xc, stride_xh, stride_xw,
        stride_wc, stride_wr, stride_ws,
        stride_yn, stride_yc, stride_yh, stride_yw,
        negative_slope,
        R: tl.constexpr, S: tl.constexpr, STRIDE_H: tl.constexpr, FLIP: tl.constexpr, HAS_BIAS: tl.constexpr,
        ACTIVATION: tl.constexpr, TILE_Q: tl.constexpr, BLOCK_C: tl.constexpr, INDEX_64: tl.constexpr):
    """An R x S depthwise convolution, each input row loaded once: x: (N, C, H,
    W); w: (C, 1, R, S); b: (C,); y: (N, C, P, Q); strides, padding, dilation
    (``stride_h`` = STRIDE_H g, ``dil_h`` = row_step g, g their greatest common
    divisor: output row a + row_step k reads input rows stride_h a - pad_h + dil_h
    (STRIDE_H k + r), so that each row set a < row_step is a convolution of row
    dilation 1 and row stride STRIDE_H on every dil_h-th row). Program
    (((n * row_step + a) * chunks + chunk) * strips + strip, c_block): y over
    ROWS rows k of row set a from chunk * ROWS, TILE_Q columns, BLOCK_C
    channels. The R*S weights stay in registers (tuples); each input row's S
    column shifts are loaded once and feed the output rows that read it. Step j
    loads the input rows of k = p0 + j, phase < STRIDE_H, R, which row p0 + j - m
    reads through tap row phase + STRIDE_H m; the rows' sums roll: the oldest,
    row p0 + j - M, is done and stored. The forward (y = act(conv + b)) and,
    with FLIP (the kernel turned by 180 degrees, stride 1, no bias or
    activation), a stride-1 input gradient (x: dy, y: dx)."""
    tl.static_assert(STRIDE_H == 1 or not FLIP)
    n, a, p0, offs_q = _strip(tl.program_id(0), P, Q, ROWS, TILE_Q, row_step)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    w = _tap_weights(w_ptr + offs_c * stride_wc, mask_c, stride_wr, stride_ws, R, S, FLIP)
    bias = tl.zeros((1, BLOCK_C), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    cols, oks = _column_shifts(_offsets(offs_c, stride_xc, INDEX_64)[None, :], offs_q * stride_w - pad_w, W, mask_c,
                               stride_xw, dil_w, S, INDEX_64)
    y_img = y_ptr + n.to(tl.int64) * stride_yn
    y_cols = (_offsets(offs_q, stride_yw, INDEX_64)[:, None] + _offsets(offs_c, stride_yc, INDEX_64)[None, :])
    y_ok = (offs_q < Q)[:, None] & mask_c[None, :]
    x_img = x_ptr + n.to(tl.int64) * stride_xn
    rows = tl.minimum(ROWS, tl.cdiv(P - a, row_step) - p0)
    x_top = stride_h * a - pad_h
    zeros = tl.zeros((TILE_Q, BLOCK_C), dtype=tl.float32)
    one_row = tl.zeros((1, 1), dtype=tl.int32)      # the row tests as tensors (the interpreter's & of a tensor
    M: tl.constexpr = (R - 1) // STRIDE_H           # and a scalar is not a mask)
    accs = _repeat(zeros, M + 1)                    # accs[m]: output row p0 + j - m
    for j in range(tl.where(rows > 0, rows + M, 0)):     # an empty chunk (a short row set's last) loads nothing
        for phase in tl.static_range(_phases(STRIDE_H, R)):
            xs = _step_row(x_img, x_top, dil_h, p0 + j, stride_xh, H, cols, oks, j, rows, one_row, R, S, STRIDE_H,
                           phase, M, INDEX_64)
            sums = ()
            for m in tl.static_range(M + 1):    # taps in the order of the other kernels
                if phase + STRIDE_H * m < R:
                    sums = sums + (_tap_row(accs[m], xs, w[phase + STRIDE_H * m], S),)
                else:
                    sums = sums + (accs[m],)
            accs = sums
        _store_row(y_img + _offsets(a + row_step * (p0 + j - M), stride_yh, INDEX_64), y_cols,
                   y_ok & (j + one_row >= M), accs[M], bias, negative_slope, HAS_BIAS, ACTIVATION)
        accs = (zeros,) + accs[:M]


@triton.constexpr_function
def _tap_index(offset, dilation, taps):
    """The tap r < ``taps`` (a kernel row or column) with r * ``dilation`` ==
    ``offset``, or -1 where there is none (compile-time integers)."""
    return offset // dilation if offset % dilation == 0 and offset // dilation < taps else -1


@triton.jit
def _unit_row(acc, ds, ws, b: tl.constexpr, STRIDE_W: tl.constexpr, DIL_W: tl.constexpr, S: tl.constexpr,
              T: tl.constexpr):
    """acc + the products that reach column b of a unit from a dy row's T column
    shifts ds and a kernel row's S taps ws: shift k through tap (b + STRIDE_W k) /
    DIL_W where that divides and is below S, each a fused multiply-add (triton
    3.9 leaves some of ``acc += x * w`` unfused here)."""
    for k in tl.static_range(T):
        if _tap_index(b + STRIDE_W * k, DIL_W, S) >= 0:
            acc = tl.fma(ds[k], ws[_tap_index(b + STRIDE_W * k, DIL_W, S)], acc)
    return acc


@triton.jit
def _conv_dgrad_depthwise_rows_kernel(
        dy_ptr, w_ptr, dx_ptr,
        H, W, P, Q, C, ROWS, pad_h, pad_w,
        stride_dyn, stride_dyc, stride_dyp, stride_dyq,
        stride_wc, stride_wr, stride_ws,
        stride_dxn, stride_dxc, stride_dxh, stride_dxw,
        R: tl.constexpr, S: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr, DIL_H: tl.constexpr,
        DIL_W: tl.constexpr, TILE_Q: tl.constexpr, BLOCK_C: tl.constexpr, INDEX_64: tl.constexpr):
    """The input gradient of an R x S depthwise convolution of stride (STRIDE_H,
    STRIDE_W) and dilation (DIL_H, DIL_W), each dy row loaded once: dy: (N, C, P,
    Q); w: (C, 1, R, S); dx: (N, C, H, W); strides. dx in units of STRIDE_H rows by
    STRIDE_W columns: unit (u, t) holds dx rows STRIDE_H u - pad_h + a and columns
    STRIDE_W t - pad_w + b, which dy rows u - m and columns t - k reach through tap
    ((a + STRIDE_H m) / DIL_H, (b + STRIDE_W k) / DIL_W) where those divide (units
    reach H + pad_h rows, W + pad_w columns: the rows and columns no tap reaches get
    zeros). Program (((n * chunks) + chunk) * strips + strip, c_block): ROWS unit
    rows by TILE_Q unit columns by BLOCK_C channels. Down a strip, each dy row's T
    column shifts (the compiler drops those no tap reads) are loaded once and kept
    (ds[m]: dy row u - m) for the M unit rows below that read them."""
    M: tl.constexpr = DIL_H * (R - 1) // STRIDE_H
    T: tl.constexpr = DIL_W * (S - 1) // STRIDE_W + 1
    units_h = tl.cdiv(H + pad_h, STRIDE_H)
    n, _, u0, offs_t = _strip(tl.program_id(0), units_h, tl.cdiv(W + pad_w, STRIDE_W), ROWS, TILE_Q, 1)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    w = _tap_weights(w_ptr + offs_c * stride_wc, mask_c, stride_wr, stride_ws, R, S, False)
    dy_cols, dy_oks = _column_shifts(_offsets(offs_c, stride_dyc, INDEX_64)[None, :], offs_t, Q, mask_c, stride_dyq,
                                     -1, T, INDEX_64)
    dx_cols, dx_oks = _column_shifts(_offsets(offs_c, stride_dxc, INDEX_64)[None, :], STRIDE_W * offs_t - pad_w, W,
                                     mask_c, stride_dxw, 1, STRIDE_W, INDEX_64)
    dy_img = dy_ptr + n.to(tl.int64) * stride_dyn
    dx_img = dx_ptr + n.to(tl.int64) * stride_dxn
    one_row = tl.zeros((1, 1), dtype=tl.int32)      # the row tests as tensors (as the rows kernel's)
    zeros = tl.zeros((TILE_Q, BLOCK_C), dtype=tl.float32)
    ds = ()                                         # ds[m]: dy row u0 - 1 - m; the last one is not read
    for m in tl.static_range(M):
        ds = ds + (_load_shifts(dy_img + _offsets(u0 - 1 - m, stride_dyp, INDEX_64), dy_cols, dy_oks,
                                _in_range(u0 - 1 - m + one_row, P), T),)
    ds = ds + (_repeat(zeros, T),)
    for i in range(tl.minimum(ROWS, units_h - u0)):
        u = u0 + i
        ds = (_load_shifts(dy_img + _offsets(u, stride_dyp, INDEX_64), dy_cols, dy_oks, _in_range(u + one_row, P),
                           T),) + ds[:M]
        for a in tl.static_range(STRIDE_H):
            h = STRIDE_H * u - pad_h + a
            dx_row = dx_img + _offsets(h, stride_dxh, INDEX_64)
            for b in tl.static_range(STRIDE_W):
                acc = zeros
                for m in tl.static_range(M + 1):
                    if _tap_index(a + STRIDE_H * m, DIL_H, R) >= 0:
                        acc = _unit_row(acc, ds[m], w[_tap_index(a + STRIDE_H * m, DIL_H, R)], b, STRIDE_W, DIL_W, S, T)
                tl.store(dx_row + dx_cols[b], acc.to(dx_row.dtype.element_ty),
                         mask=dx_oks[b] & _in_range(h + one_row, H))


@triton.jit
def _tap_products(accs, xs, d, S: tl.constexpr):
    """(accs[s] + xs[s] d for s < S): a dy row's products with an input row's S column shifts."""
    sums = ()
    for s in tl.static_range(S):
        sums = sums + (accs[s] + xs[s] * d,)
    return sums


@triton.jit
def _tap_sum(total, taps, k: tl.constexpr, acc):
    """``total`` (TAPS, BLOCK_C) with row k set to the column sums of ``acc`` (TILE_Q, BLOCK_C)."""
    return tl.where((taps == k)[:, None], tl.sum(acc, axis=0)[None, :], total)


@triton.jit
def _conv_wgrad_depthwise_rows_kernel(
        dy_ptr, x_ptr, dw_ptr, part_ptr, ticket_ptr,
        N, H, W, P, Q, C, ROWS,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, row_step,
        stride_dyn, stride_dyc, stride_dyp, stride_dyq,
        stride_xn, stride_xc, stride_xh, stride_xw,
        stride_dwc, stride_dwr, stride_dws,
        R: tl.constexpr, S: tl.constexpr, TAPS: tl.constexpr, STRIDE_H: tl.constexpr, TILE_Q: tl.constexpr,
        BLOCK_C: tl.constexpr, INDEX_64: tl.constexpr, CHUNK: tl.constexpr):
    """The weight gradient of an R x S depthwise convolution, each input row
    loaded once: dy: (N, C, P, Q); x: (N, C, H, W); dw: (C, 1, R, S) (the
    weight's dtype, or its master's under autocast); strides, padding, dilation
    and row sets as the forward's (``_conv_depthwise_rows_kernel``); part /
    ticket: the split workspace (``sum_splits``, CHUNK; TAPS: R*S rounded up to
    a power of two). Program (c_block, 0, split): dw for BLOCK_C channels, summed
    over its split of the strips, each ROWS rows of a row set of one image by
    TILE_Q columns. Down a strip, step j loads dy row p0 + j of the set and the
    input rows of the forward's step j, whose S column shifts meet the dy rows
    kept (ds[m]: row p0 + j - m) in the R*S sums of (TILE_Q, BLOCK_C) products,
    reduced over the columns at the end."""
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    x_chan = _offsets(offs_c, stride_xc, INDEX_64)[None, :]
    dy_chan = _offsets(offs_c, stride_dyc, INDEX_64)[None, :]
    one_row = tl.zeros((1, 1), dtype=tl.int32)      # the row tests as tensors (as the rows kernel's)
    zeros = tl.zeros((TILE_Q, BLOCK_C), dtype=tl.float32)
    M: tl.constexpr = (R - 1) // STRIDE_H           # tap row phase + STRIDE_H m: input row phase, dy row j - m
    accs = _repeat(_repeat(zeros, S), R)            # accs[r][s]: tap (r, s)
    first, end = _split_steps(N * row_step * tl.cdiv(tl.cdiv(P, row_step), ROWS) * tl.cdiv(Q, TILE_Q))
    for step in range(first, end):
        n, a, p0, offs_q = _strip(step, P, Q, ROWS, TILE_Q, row_step)
        cols, oks = _column_shifts(x_chan, offs_q * stride_w - pad_w, W, mask_c, stride_xw, dil_w, S, INDEX_64)
        dy_cols = dy_chan + _offsets(offs_q, stride_dyq, INDEX_64)[:, None]
        dy_ok = (offs_q < Q)[:, None] & mask_c[None, :]
        x_img = x_ptr + n.to(tl.int64) * stride_xn
        dy_img = dy_ptr + n.to(tl.int64) * stride_dyn
        rows = tl.minimum(ROWS, tl.cdiv(P - a, row_step) - p0)
        x_top = stride_h * a - pad_h
        ds = _repeat(zeros, M + 1)
        for j in range(tl.where(rows > 0, rows + M, 0)):     # an empty chunk loads nothing
            d = tl.load(dy_img + _offsets(a + row_step * (p0 + j), stride_dyp, INDEX_64) + dy_cols,
                        mask=dy_ok & (j + one_row < rows), other=0.0).to(tl.float32)
            ds = (d,) + ds[:M]
            for phase in tl.static_range(_phases(STRIDE_H, R)):
                xs = _step_row(x_img, x_top, dil_h, p0 + j, stride_xh, H, cols, oks, j, rows, one_row, R, S,
                               STRIDE_H, phase, M, INDEX_64)
                sums = ()
                for r in tl.static_range(R):
                    if r % STRIDE_H == phase:
                        sums = sums + (_tap_products(accs[r], xs, ds[r // STRIDE_H], S),)
                    else:
                        sums = sums + (accs[r],)
                accs = sums
    taps = tl.arange(0, TAPS)
    total = tl.zeros((TAPS, BLOCK_C), dtype=tl.float32)
    for r in tl.static_range(R):
        for s in tl.static_range(S):
            total = _tap_sum(total, taps, r * S + s, accs[r][s])
    done = tl.num_programs(2) == 1
    if not done:
        total, done = sum_splits(total, part_ptr, ticket_ptr, TAPS, BLOCK_C, CHUNK)
    if done:
        dw_ptrs = dw_ptr + (offs_c * stride_dwc)[None, :] + (taps // S * stride_dwr + taps % S * stride_dws)[:, None]
        tl.store(dw_ptrs, total.to(dw_ptr.dtype.element_ty), mask=(taps < R * S)[:, None] & mask_c[None, :])


@triton.jit
def _conv_dgrad_depthwise_kernel(
        dy_ptr, w_ptr, dx_ptr,
        H, W, P, Q, C,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, phases_h, phases_w,
        stride_dyn, stride_dyc, stride_dyp, stride_dyq,
        stride_wc, stride_wr, stride_ws,
        stride_dxn, stride_dxc, stride_dxh, stride_dxw,
        R: tl.constexpr, S: tl.constexpr,
        TILE_P: tl.constexpr, TILE_Q: tl.constexpr, BLOCK_C: tl.constexpr, INDEX_64: tl.constexpr):
    """dy: (N, C, P, Q); w: (C, 1, R, S); dx: (N, C, H, W); strides. Program
    (((n * phases + phase) * patches_i + i) * patches_j + j, c_block), phases =
    phases_h * phases_w (min(sh, H) * min(sw, W)): dx over a (TILE_P, TILE_Q) patch
    of the input pixels of one stride phase, (phase // phases_w + i * sh, phase %
    phases_w + j * sw), and BLOCK_C channels."""
    image_phase, offs_i, offs_j = _patch(tl.program_id(0), tl.cdiv(H, stride_h), tl.cdiv(W, stride_w),
                                         TILE_P, TILE_Q)
    num_phases = phases_h * phases_w
    phase = image_phase % num_phases
    n = image_phase // num_phases
    phase_h = phase // phases_w
    phase_w = phase % phases_w
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    dy_img = dy_ptr + n.to(tl.int64) * stride_dyn
    dy_chan = _offsets(offs_c, stride_dyc, INDEX_64)[None, None, :]
    w_chan = w_ptr + offs_c * stride_wc
    acc = tl.zeros((TILE_P, TILE_Q, BLOCK_C), dtype=tl.float32)
    for r in range(R):
        reach_h = phase_h + pad_h - r * dil_h              # a multiple of sh when tap r meets the phase
        if reach_h % stride_h == 0:
            p = offs_i + reach_h // stride_h
            row_ok = _in_range(p, P)
            dy_rows = dy_img + _offsets(p, stride_dyp, INDEX_64)[:, None, None]
            for s in tl.static_range(S):
                reach_w = phase_w + pad_w - s * dil_w
                if reach_w % stride_w == 0:
                    q = offs_j + reach_w // stride_w
                    mask = row_ok[:, None, None] & _in_range(q, Q)[None, :, None] & mask_c[None, None, :]
                    dyv = tl.load(dy_rows + _offsets(q, stride_dyq, INDEX_64)[None, :, None] + dy_chan,
                                  mask=mask, other=0.0)
                    wv = tl.load(w_chan + (r * stride_wr + s * stride_ws), mask=mask_c, other=0.0)
                    acc += dyv.to(tl.float32) * wv.to(tl.float32)[None, None, :]
    _store_patch(dx_ptr, acc, n, phase_h + offs_i * stride_h, phase_w + offs_j * stride_w, offs_c, mask_c, H, W,
                 stride_dxn, stride_dxc, stride_dxh, stride_dxw, INDEX_64)


@triton.jit
def _conv_wgrad_depthwise_kernel(
        dy_ptr, x_ptr, dw_ptr, part_ptr, ticket_ptr,
        N, H, W, P, Q, C,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        stride_dyn, stride_dyc, stride_dyp, stride_dyq,
        stride_xn, stride_xc, stride_xh, stride_xw,
        stride_dwc, stride_dwr, stride_dws,
        R: tl.constexpr, S: tl.constexpr, TAPS: tl.constexpr,
        TILE_P: tl.constexpr, TILE_Q: tl.constexpr, BLOCK_C: tl.constexpr, INDEX_64: tl.constexpr,
        CHUNK: tl.constexpr):
    """dy: (N, C, P, Q); x: (N, C, H, W); dw: (C, 1, R, S) in the weight dtype;
    strides; part / ticket: the split workspace (``sum_splits``, CHUNK). Program
    (c_block, 0, split): dw for BLOCK_C channels and every tap, summed over the
    (TILE_P, TILE_Q) output patches of its split of the N images' patches.
    TAPS = R*S rounded up to a power of two; when R*S is one more than half of it
    (3x3: 9 = 8 + 1), the tap axis holds the first TAPS / 2 taps and the last tap
    has an accumulator of its own, so that no lane multiplies a padded tap (not
    for a 1x1 kernel: one tap, no padding)."""
    LAST_APART: tl.constexpr = 2 * (R * S - 1) == TAPS
    GROUP: tl.constexpr = TAPS // 2 if LAST_APART else TAPS
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    taps = tl.arange(0, GROUP)
    tap_h = (taps // S * dil_h)[:, None]                   # [GROUP, 1] input offsets of each tap
    tap_w = (taps % S * dil_w)[:, None]
    tap_ok = (taps < R * S)[:, None]
    pix = tl.arange(0, TILE_P * TILE_Q)
    pix_p = pix // TILE_Q
    pix_q = pix % TILE_Q
    dy_chan = _offsets(offs_c, stride_dyc, INDEX_64)[None, :]
    x_chan = _offsets(offs_c, stride_xc, INDEX_64)[None, :]
    patches_q = tl.cdiv(Q, TILE_Q)
    patches = tl.cdiv(P, TILE_P) * patches_q
    first, end = _split_steps(N * patches)
    acc = tl.zeros((GROUP, TILE_P * TILE_Q, BLOCK_C), dtype=tl.float32)
    acc_last = tl.zeros((TILE_P * TILE_Q, BLOCK_C), dtype=tl.float32)
    for step in range(first, end):
        n = step // patches
        p = (step % patches) // patches_q * TILE_P + pix_p
        q = (step % patches) % patches_q * TILE_Q + pix_q
        pix_ok = (p < P) & (q < Q)
        dy_ptrs = (dy_ptr + n.to(tl.int64) * stride_dyn
                   + (_offsets(p, stride_dyp, INDEX_64) + _offsets(q, stride_dyq, INDEX_64))[:, None] + dy_chan)
        dyv = tl.load(dy_ptrs, mask=pix_ok[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
        x_img = x_ptr + n.to(tl.int64) * stride_xn
        ih0 = p * stride_h - pad_h
        iw0 = q * stride_w - pad_w
        ih = ih0[None, :] + tap_h                          # [GROUP, pixels]
        iw = iw0[None, :] + tap_w
        x_ok = tap_ok & pix_ok[None, :] & _in_range(ih, H) & _in_range(iw, W)
        x_ptrs = x_img + (_offsets(ih, stride_xh, INDEX_64) + _offsets(iw, stride_xw, INDEX_64))[:, :, None] \
            + x_chan[None, :, :]
        xv = tl.load(x_ptrs, mask=x_ok[:, :, None] & mask_c[None, None, :], other=0.0)
        acc += xv.to(tl.float32) * dyv[None, :, :]
        if LAST_APART:
            ih = ih0 + (R - 1) * dil_h
            iw = iw0 + (S - 1) * dil_w
            x_ok = pix_ok & _in_range(ih, H) & _in_range(iw, W)
            x_ptrs = x_img + (_offsets(ih, stride_xh, INDEX_64) + _offsets(iw, stride_xw, INDEX_64))[:, None] + x_chan
            xv = tl.load(x_ptrs, mask=x_ok[:, None] & mask_c[None, :], other=0.0)
            acc_last += xv.to(tl.float32) * dyv
    total = tl.sum(acc, axis=1)                            # [GROUP, BLOCK_C]
    if LAST_APART:                                         # rows GROUP.. of [TAPS, BLOCK_C]: the last tap, zeros
        last = tl.where((taps == 0)[:, None], tl.sum(acc_last, axis=0)[None, :], 0.0)
        total = tl.reshape(tl.permute(tl.join(total, last), (2, 0, 1)), (TAPS, BLOCK_C))
    done = tl.num_programs(2) == 1
    if not done:
        total, done = sum_splits(total, part_ptr, ticket_ptr, TAPS, BLOCK_C, CHUNK)
    if done:
        all_taps = tl.arange(0, TAPS)
        dw_ptrs = (dw_ptr + (offs_c * stride_dwc)[None, :]
                   + (all_taps // S * stride_dwr + all_taps % S * stride_dws)[:, None])
        tl.store(dw_ptrs, total.to(dw_ptr.dtype.element_ty), mask=(all_taps < R * S)[:, None] & mask_c[None, :])
